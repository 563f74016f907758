"""Smoke test of the latency harness (``python -m benchmarks.latency``) on the tiny model,
and unit tests of its statistics, target checks and machine parsing, so it cannot rot."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from benchmarks import report as rep
from benchmarks.machine import machine_info, machine_slug, parse_tegrastats, summarise_tegrastats
from benchmarks.timing import Budget, Stats, measure
from tests.helpers import requires_torch

ROW_KEYS = {"engine", "precision", "device", "batch", "stage", "p50_ms", "p90_ms", "p99_ms", "min_ms", "throughput_per_s"}
TEGRA_LINE = (
    "11-22-2026 02:00:00 RAM 2345/7620MB (lfb 4x4MB) SWAP 0/3810MB (cached 0MB) CPU [12%@729,8%@729,20%@1510,0%@729] "
    "EMC_FREQ 0% GR3D_FREQ 61% cpu@45.5C soc2@44.1C VDD_IN 5120mW/4980mW VDD_CPU_GPU_CV 1200mW/1100mW"
)


@requires_torch
def test_quick_run_writes_json_markdown_and_plot(tiny_model_dir, tmp_path, capsys):
    pytest.importorskip("librosa")
    from benchmarks.latency import main

    out = tmp_path / "res"
    argv = [
        "--model-dir",
        str(tiny_model_dir),
        "--batch",
        "1,2",
        "--audio-seconds",
        "0.5,1",
        "--text-words",
        "4",
        "--quick",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    report = json.loads((out / "latency.json").read_text())
    assert report["schema"] == rep.SCHEMA and report["command"].startswith("python -m benchmarks.latency --model-dir")
    assert {"cpu", "threads", "gpu", "jetson", "versions", "loadavg_start", "loadavg_end"} <= set(report["machine"])
    code = report["code"]  # the commit measured (absent outside a git checkout) and the start time
    assert code["started_utc"].endswith("+00:00") and ("commit" not in code or len(code["commit"]) == 40)
    rows = report["results"]
    assert all(ROW_KEYS <= set(r) for r in rows)
    got = {(r["engine"], r["batch"], r["audio_seconds"], r["stage"]) for r in rows}
    for b in (1, 2):
        for x in (0.5, 1.0):
            for stage in ("decode", "resample", "tokenise", "frontend", "infer", "postprocess", "end_to_end"):
                assert ("ort", b, x, stage) in got
            for stage in ("load", "tokenise", "frontend", "infer", "postprocess", "end_to_end"):
                assert ("baseline", b, x, stage) in got
    assert report["settings"]["audio_seconds"] == [0.5, 1.0]
    for r in rows:
        assert 0 < r["min_ms"] <= r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"]
        assert r["throughput_per_s"] > 0 and r["peak_rss_mb"] > 0 and r["n"] >= 1
        assert r["rtf"] == pytest.approx(r["p50_ms"] / (1e3 * r["audio_seconds"] * r["batch"]), rel=1e-3, abs=1e-6)
    e2e = [q for q in report["ratios"] if q["stage"] == "end_to_end"]
    assert {(q["batch"], q["audio_seconds"]) for q in e2e} == {(1, 0.5), (2, 0.5), (1, 1.0), (2, 1.0)}
    assert all(q["p50_speedup"] > 0 for q in e2e)
    # The baseline computes the same function as the engine: librosa MFCCs agree with the
    # graph's front-end to ~1e-3, which moves the tiny model's logits far less than 1e-2.
    (agree,) = report["agreement"]
    assert agree["items"] == 2 and agree["max_abs_logit_diff"] < 1e-2 and agree["same_label"] == 2
    assert report["targets"] == []  # quick runs never claim a target
    md = (out / "latency.md").read_text()
    assert f"Started {code['started_utc']}." in md
    assert "| ort | fp32 | cpu | 2 | 0.5 |" in md and "| ort | fp32 | cpu | 2 | 1 |" in md and "## Agreement with the baseline" in md
    sweep = md.split("## Clip length")[1].split("##")[0]  # one row per configuration, a column per length
    assert "| 0.5 s | 1 s |" in sweep and sweep.count("| ort | fp32 | cpu |") == 2 and sweep.count("| baseline |") == 2
    assert (out / "latency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert report["complete"] is True and "Partial" not in md
    # written whole (trt_cache.atomic_write), readable like any results file, no temporaries left
    assert all((out / n).stat().st_mode & 0o777 == 0o644 for n in ("latency.json", "latency.md"))
    assert sorted(p.name for p in out.iterdir()) == ["latency.json", "latency.md", "latency.png"]


@requires_torch
def test_a_run_cut_short_keeps_what_it_measured(tiny_model_dir):
    """``run`` hands out the report after the baseline and after each engine's rows at each
    batch size."""
    pytest.importorskip("librosa")
    from benchmarks.latency import build_parser, run

    args = build_parser().parse_args(["--model-dir", str(tiny_model_dir), "--engine", "ort,torch", "--batch", "1,2",
                                      "--audio-seconds", "0.5", "--text-words", "4", "--quick"])
    partials: list[dict] = []
    final = run(args, checkpoint=partials.append)
    engines = [sorted({r["engine"] for r in p["results"]}) for p in partials]
    assert [e for i, e in enumerate(engines) if i == 0 or e != engines[i - 1]] == [["baseline"], ["baseline", "ort"], ["baseline", "ort", "torch"]]
    # within an engine, a checkpoint after each batch size
    ort_batches = [sorted({r["batch"] for r in p["results"] if r["engine"] == "ort"}) for p in partials]
    assert [1] in ort_batches and [1, 2] in ort_batches
    assert all(p["complete"] is False for p in partials) and final["complete"] is True
    assert "**Partial" in rep.markdown({**partials[0], "command": "x"})


@requires_torch
def test_an_engine_that_fails_midway_keeps_its_rows_and_the_next_engine_runs(tiny_model_dir, monkeypatch):
    """A CUDA error or out-of-memory in one engine (here: torch at batch 2) is recorded, its
    batch-1 rows are kept, and the engines after it are still measured."""
    from benchmarks import latency

    real = latency.engine_rows

    def flaky(rec, precision, device, frontend, clips, *rest, **kw):
        if rec.engine.name == "torch" and len(clips) == 2:
            raise RuntimeError("CUDA error: out of memory")
        return real(rec, precision, device, frontend, clips, *rest, **kw)

    monkeypatch.setattr(latency, "engine_rows", flaky)
    args = latency.build_parser().parse_args(["--model-dir", str(tiny_model_dir), "--engine", "torch,ort", "--batch", "1,2",
                                              "--audio-seconds", "0.5", "--text-words", "4", "--quick", "--no-baseline"])  # fmt: skip
    report = latency.run(args)
    got = {(r["engine"], r["batch"]) for r in report["results"]}
    assert got == {("torch", 1), ("ort", 1), ("ort", 2)}
    (failed,) = [k for k in report["skipped"] if k["what"] == "engine torch fp32 on cpu"]
    assert "failed while measuring batch 2, 0.5-s clips" in failed["reason"] and "out of memory" in failed["reason"]
    assert all(r["engine_calls"] == 1 for r in report["results"])


def test_gpu_memory_per_row(monkeypatch):
    """PyTorch rows: the allocator's peak since the row started; other engines: the GPU's
    used memory after the row minus before the engine loaded."""
    from types import SimpleNamespace

    from benchmarks import machine

    device_used_mb = machine.device_used_mb
    readings = iter([(1000.0, "nvidia-smi"), (1600.5, "nvidia-smi")])
    monkeypatch.setattr(machine, "device_used_mb", lambda: next(readings))
    calls: list[str] = []
    cuda = SimpleNamespace(
        is_initialized=lambda: True, reset_peak_memory_stats=lambda: calls.append("reset"), max_memory_reserved=lambda: 300 * 2**20,
        empty_cache=lambda: calls.append("empty"), memory_reserved=lambda: 20 * 2**20,  # the baseline's weights
    )
    monkeypatch.setattr(machine, "_torch_cuda", lambda: SimpleNamespace(cuda=cuda))
    gpu = machine.GpuMemory()
    torch_peak = "peak of PyTorch's allocator during the row, less what it held before the engine loaded"
    assert gpu.row("baseline") == (300.0, torch_peak)  # the baseline's rows come before any engine
    gpu.mark()
    gpu.start_row()
    assert calls == ["empty", "reset"]
    assert gpu.row("torch") == (280.0, torch_peak)
    assert gpu.row("trt") == (600.5, "GPU memory used after the row minus before the engine loaded (nvidia-smi)")
    monkeypatch.setattr(machine, "_torch_cuda", lambda: None)
    assert gpu.row("torch") == (None, None)
    for out, want in (("[N/A]\n", None), (None, None), ("1234\n", (1234.0, "nvidia-smi")), ("WARNING: infoROM\n 77\n", (77.0, "nvidia-smi"))):
        monkeypatch.setattr(machine, "_run", lambda cmd, out=out: out)
        assert device_used_mb() == want


def test_gpu_info_reads_nvidia_smi_past_warnings(monkeypatch):
    from benchmarks import machine

    def fake_run(cmd):
        if "--query-gpu=name,driver_version,memory.total" in cmd:
            assert cmd[cmd.index("-i") + 1] == "GPU-abc"  # the GPU CUDA_VISIBLE_DEVICES names first
            return "WARNING: infoROM is corrupted at gpu 0000:01:00.0\nNVIDIA H200, 570.86.15, 143771 MiB\n"
        return "| NVIDIA-SMI 570.86.15   Driver Version: 570.86.15   CUDA Version: 12.8 |"

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-abc,GPU-def")
    monkeypatch.setattr(machine, "_run", fake_run)
    monkeypatch.setattr(machine, "_torch_cuda", lambda: None)
    info = machine.gpu_info()
    assert info == {"name": "NVIDIA H200", "driver": "570.86.15", "memory_total": "143771 MiB", "cuda_driver_api": "12.8"}
    monkeypatch.setattr(machine, "_run", lambda cmd: "[N/A]")
    assert machine.gpu_info() is None


def _has_gpu_stack() -> bool:
    try:
        import tensorrt  # noqa: F401

        return True
    except ImportError:
        pass
    import onnxruntime as ort

    return "CUDAExecutionProvider" in ort.get_available_providers()


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--engine", "trt", "--no-baseline"], "skipping engine trt fp32 on cuda"),
        (["--engine", "ort", "--device", "cuda"], "skipping engine ort fp32 on cuda"),
    ],
)
def test_unavailable_engine_or_device_is_skipped_with_a_message(tiny_model_dir, tmp_path, capsys, argv, message):
    from benchmarks.latency import main

    if _has_gpu_stack():
        pytest.skip("a GPU stack (TensorRT or onnxruntime-gpu) is installed here: the engine would run")
    out = tmp_path / "none"
    assert main(["--model-dir", str(tiny_model_dir), "--quick", "--out", str(out), *argv]) == 1
    err = capsys.readouterr().err
    assert message in err and "nothing was measured" in err
    assert not out.exists()


def test_bad_options_name_what_is_allowed(capsys):
    from benchmarks.latency import main

    bad = [(["--engine", "onnx"], "--engine"), (["--batch", "0"], "--batch"), (["--batch", "a"], "--batch"),
           (["--audio-seconds", "3,x"], "--audio-seconds"), (["--audio-seconds", "0"], "--audio-seconds"),
           (["--audio-seconds", "3,31"], "--audio-seconds 31: the model takes clips of 0.25 to 30 s")]  # fmt: skip
    for argv, word in bad:
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2 and word in capsys.readouterr().err


def test_measure_honours_the_budget_and_percentiles_are_ordered():
    calls = []
    stats = measure(
        lambda: calls.append(1), Budget(warmup_iters=2, warmup_time=0.0, min_iters=7, min_time=0.0, max_time=5.0, max_iters=7)
    )
    assert len(calls) == 9 and stats.n == 7
    s = Stats.from_samples([0.001 * i for i in range(1, 101)], peak_rss_mb=1.0)
    assert (s.min_ms, s.p50_ms, s.p99_ms) == pytest.approx((1.0, 50.5, 99.01))
    with pytest.raises(ValueError, match="min_iters"):
        Budget(min_iters=0)


def test_rows_measured_on_a_shared_machine_are_measured_again(monkeypatch):
    from benchmarks import timing

    loads = iter([80.0, 40.0, 3.0, 99.0])
    monkeypatch.setattr(timing, "measure", lambda fn, budget, sync: Stats.from_samples([0.001], 1.0, next(loads)))
    waits = []
    monkeypatch.setattr(timing, "wait_for_quiet", lambda pct, timeout: waits.append(pct))
    stats, attempts = timing.measure_quiet(lambda: None, Budget(max_other_pct=10.0, retries=3))
    assert (stats.other_cpu_pct, attempts, waits) == (3.0, 3, [10.0, 10.0])
    loads = iter([80.0, 40.0])
    stats, attempts = timing.measure_quiet(lambda: None, Budget(max_other_pct=10.0, retries=1))
    assert (stats.other_cpu_pct, attempts) == (40.0, 2)  # out of retries: kept, and its load is in the row


def _rows(
    e2e_base: float, e2e_ort: float, b32_base: float, b32_ort: float, fe_base: float, fe_ort: float, tok_tput: float
) -> list[dict]:
    def row(engine, batch, stage, p50, tput=None):
        return {"engine": engine, "precision": "fp32", "device": "cpu", "batch": batch, "stage": stage, "audio_seconds": 3.0,
                "p50_ms": p50, "throughput_per_s": tput if tput is not None else batch * 1e3 / p50}  # fmt: skip

    return [
        row("baseline", 1, "end_to_end", e2e_base), row("ort", 1, "end_to_end", e2e_ort),
        row("baseline", 32, "end_to_end", b32_base), row("ort", 32, "end_to_end", b32_ort),
        row("baseline", 32, "frontend", fe_base), row("ort", 32, "frontend", fe_ort),
        row("ort", 32, "tokenise", 0.5, tok_tput),
    ]  # fmt: skip


def test_targets_are_met_or_not_from_the_numbers():
    settings = {"audio_seconds": 3.0, "text_words": 12}
    rows = _rows(30.0, 9.0, 960.0, 90.0, 64.0, 16.0, 60000.0)
    got = {t["target"]: t for t in rep.targets(rows, rep.ratios(rows), settings)}
    assert got["batch1_p50_speedup"]["value"] == pytest.approx(3.33) and got["batch1_p50_speedup"]["met"]
    assert got["batch32_throughput_ratio"]["value"] == pytest.approx(10.67) and got["batch32_throughput_ratio"]["met"]
    assert got["frontend_speedup_per_clip"]["met"] and got["tokenise_sentences_per_s"]["met"]
    rows = _rows(30.0, 11.0, 960.0, 100.0, 64.0, 30.0, 40000.0)
    got = {t["target"]: t for t in rep.targets(rows, rep.ratios(rows), settings)}
    assert not any(t["met"] for t in got.values())
    assert rep.targets(rows, rep.ratios(rows), {"audio_seconds": [1.0], "text_words": 12}) == []
    # in a clip-length sweep only the 3-s rows count: 10-s rows that would meet every target change nothing
    met = [{**r, "audio_seconds": 10.0} for r in _rows(30.0, 9.0, 960.0, 90.0, 64.0, 16.0, 60000.0)]
    swept = rep.targets(rows + met, rep.ratios(rows + met), {"audio_seconds": [3.0, 10.0], "text_words": 12})
    assert [t["value"] for t in swept] == [t["value"] for t in got.values()] and not any(t["met"] for t in swept)
    # reports written before the sweep existed: one number, rows without the field
    old = [{k: v for k, v in r.items() if k != "audio_seconds"} for r in rows]
    assert len(rep.targets(old, rep.ratios(old), {"audio_seconds": 3.0, "text_words": 12})) == 4
    for r in old:
        r.update(p90_ms=r["p50_ms"], p99_ms=r["p50_ms"], min_ms=r["p50_ms"], rtf=0.01, peak_rss_mb=1.0)
    report = {"machine_slug": "m", "command": "c", "results": old, "ratios": rep.ratios(old), "targets": [],
              "settings": {"audio_seconds": 3.0, "text_words": 12, "input_rate": 48000, "sample_rate": 16000, "budget": "b"},
              "machine": {"cpu": {"model": "x", "usable_cores": 2, "logical_cores": 2, "memory_gb": 1}, "versions": {}, "threads": {}}}  # fmt: skip
    assert "| ort | fp32 | cpu | 1 | 3 | 11.00 |" in rep.markdown(report) and "| 2.73x |" in rep.markdown(report)  # its one length


def test_machine_info_and_slugs():
    info = machine_info()
    assert info["cpu"]["logical_cores"] >= 1 and info["versions"]["numpy"] == np.__version__
    slug = machine_slug(info)
    assert slug and slug == slug.lower() and " " not in slug
    jetson = {"jetson": {"module": "NVIDIA Jetson Orin Nano Developer Kit"}, "cpu": {}}
    assert machine_slug(jetson) == "nvidia-jetson-orin-nano-developer-kit"
    cpu = {
        "jetson": None,
        "gpu": {"name": "NVIDIA H100 80GB HBM3"},
        "cpu": {"model": "Intel(R) Xeon(R) Platinum 8480+ CPU @ 2.0GHz", "usable_cores": 16},
    }
    assert machine_slug(cpu) == "intel-xeon-platinum-8480-16c-h100-80gb-hbm3"


def test_tegrastats_lines_are_parsed():
    p = parse_tegrastats(TEGRA_LINE)
    assert p == {"ram_used_mb": 2345.0, "cpu_load_pct": 10.0, "gpu_load_pct": 61.0, "power_in_mw": 5120.0}
    s = summarise_tegrastats([TEGRA_LINE, TEGRA_LINE.replace("GR3D_FREQ 61%", "GR3D_FREQ 99%")])
    assert s["gpu_load_pct"] == {"mean": 80.0, "max": 99.0} and s["first_line"] == TEGRA_LINE and s["power_in_rail"] == "VDD_IN"
    # AGX Orin has no VDD_IN: its 5 V system input is the board's power
    agx = "RAM 5000/30536MB CPU [1%@729,2%@729] GR3D_FREQ 0% VDD_GPU_SOC 3187mW/3187mW VDD_CPU_CV 796mW/796mW VIN_SYS_5V0 4065mW/4065mW"
    assert parse_tegrastats(agx)["power_in_mw"] == 4065.0
    assert summarise_tegrastats([agx])["power_in_rail"] == "VIN_SYS_5V0"


def test_profile_attributes_kernel_time_to_model_parts(tiny_model_dir, tmp_path):
    from benchmarks.profile import PARTS, main

    report = main(["--model-dir", str(tiny_model_dir), "--batch", "1,2", "--audio-seconds", "0.5", "--text-words", "4", "--iters", "2", "--out", str(tmp_path)])
    assert [r["batch"] for r in report["results"]] == [1, 2]
    for r in report["results"]:
        parts = {x["name"] for x in r["parts"]}
        assert {"MFCC front-end", "audio 2-D CNN", "audio BiLSTM", "text block"} <= parts <= {p for _, p in PARTS} | {"fusion, masks and the rest"}
        assert abs(sum(x["share"] for x in r["parts"]) - 1) < 1e-3 and r["kernel_ms"] > 0
    saved = json.loads((tmp_path / "profile.json").read_text())
    assert saved["results"] == report["results"] and "## Batch 2" in (tmp_path / "profile.md").read_text()


@pytest.mark.parametrize(
    "node, part",
    [
        ("/mfcc/MatMul_1", "MFCC front-end"),
        ("/audio/cnn.1/cnn.1.0/Conv", "audio 2-D CNN"),
        ("/audio_blocks.2/pools.0/MaxPool", "audio 2-D CNN"),
        ("/audio_blocks.0/down.1/down.1.0/Conv", "audio strided 1-D convs"),
        ("/audio/lstm/fwd/LSTM", "audio BiLSTM"),
        ("/audio_blocks.1/lstm/bwd/LSTM", "audio BiLSTM"),
        ("/audio_blocks.1/Mul_3", "audio masks and pooling"),
        ("/text/lstm/fwd/LSTM", "text block"),
        ("/heads.0/heads.0.1/Gemm", "fusion, masks and the rest"),
        ("/audio_blockszz/Mul", "fusion, masks and the rest"),
    ],
)
def test_profile_parts_of_single_and_ensemble_node_names(node, part):
    from benchmarks.profile import part_of

    assert part_of(node) == part


def test_gpu_rows_script_checks_before_it_measures(tmp_path):
    """``benchmarks/gpu_rows.sh check`` names the missing package or GPU (exit 3) or says it
    is ready (exit 0, only with a CUDA GPU); a wrong call prints the usage (exit 2)."""
    import subprocess
    import sys

    from tests.helpers import REPO, has_torch

    script = REPO / "benchmarks" / "gpu_rows.sh"
    env = {"PATH": f"{Path(sys.executable).parent}:/usr/bin:/bin", "HOME": str(tmp_path)}
    done = subprocess.run(["bash", str(script), "check"], capture_output=True, text=True, env=env, timeout=120)
    if done.returncode == 0:  # only where PyTorch sees a GPU
        import torch

        assert torch.cuda.is_available() and "ready" in done.stdout
    else:
        assert done.returncode == 3, done.stderr
        assert "do not import here" in done.stderr or "sees no CUDA GPU" in done.stderr
        if has_torch():
            assert "do not import here: torch" not in done.stderr
    done = subprocess.run(["bash", str(script), "nonsense"], capture_output=True, text=True, env=env, timeout=30)
    assert done.returncode == 2 and "gpu_rows.sh run OUT_DIR" in done.stdout


def test_profiles_preset_what_is_not_given():
    from benchmarks.latency import PROFILES, build_parser, validate_args

    args = build_parser().parse_args(["--profile", "jetson", "--batch", "1,2"])
    validate_args(args)
    assert (args.engine, args.precision, args.device, args.batch) == ("trt,torch", "fp16,int8,fp32", "cuda", "1,2")
    args = build_parser().parse_args(["--profile", "desktop-gpu", "--engine", "torch"])
    validate_args(args)
    assert (args.engine, args.device, args.batch) == ("torch", "cuda", PROFILES["desktop-gpu"]["batch"])
    args = build_parser().parse_args([])
    validate_args(args)
    assert (args.engine, args.precision, args.device, args.batch) == ("ort", "fp32", "cpu", "1,8,32")
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--profile", "laptop"])


@requires_torch
def test_a_pruned_folder_skips_the_baseline_and_measures_the_engine(tiny_model_dir, tmp_path):
    import shutil

    pytest.importorskip("librosa")
    from benchmarks.latency import build_parser, run

    pruned = tmp_path / "model"
    shutil.copytree(tiny_model_dir, pruned)
    (pruned / "model.safetensors").unlink()
    args = build_parser().parse_args(["--model-dir", str(pruned), "--batch", "1", "--audio-seconds", "0.5", "--text-words", "4", "--quick"])
    report = run(args)
    assert {r["engine"] for r in report["results"]} == {"ort"}
    assert any("model.safetensors is missing" in s["reason"] for s in report["skipped"])


def test_ab_interleaves_folders_and_takes_ratios_within_rounds(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Two folders, two rounds: the order rotates, every folder is measured once per round,
    the first folder's ratio is exactly 1, and the summary is the median over rounds."""
    from benchmarks import ab

    order = []
    real = ab.measure_folder
    monkeypatch.setattr(ab, "ROUND_BUDGET", Budget(warmup_iters=1, warmup_time=0.0, min_iters=2, min_time=0.0, max_time=1.0, max_iters=3))
    monkeypatch.setattr(ab, "measure_folder", lambda d, args, w: order.append(d.name) or real(d, args, w))
    other = tmp_path / "other"
    shutil.copytree(tiny_model_dir, other)
    out = tmp_path / "ab"
    assert ab.main(["--model-dirs", str(tiny_model_dir), str(other), "--batch", "1,2", "--rounds", "2", "--out", str(out)]) == 0
    assert order == [tiny_model_dir.name, "other", "other", tiny_model_dir.name]
    report = json.loads((out / "ab.json").read_text())
    assert len(report["per_round"]) == 2 and {r["batch"] for r in report["rows"]} == {1, 2}
    first = [r for r in report["rows"] if r["model_dir"] == str(tiny_model_dir)]
    assert all(r["ratio_to_first_median"] == 1.0 for r in first)
    for r in report["rows"]:
        p50s = [rnd[r["model_dir"]][str(r["batch"])] for rnd in report["per_round"]]
        assert r["p50_ms_median"] == pytest.approx(float(np.median(p50s))) and r["p50_ms_min"] == min(p50s)
    assert "| model folder |" in (out / "ab.md").read_text()


def test_ab_refuses_what_it_cannot_compare(tiny_model_dir, tmp_path, capsys):
    from benchmarks import ab

    for argv, message in (
        (["--model-dirs", str(tiny_model_dir)], "at least two"),
        (["--model-dirs", str(tiny_model_dir), str(tmp_path)], "not a model folder"),
        (["--model-dirs", str(tiny_model_dir), str(tiny_model_dir), "--batch", "0"], "positive integers"),
        (["--model-dirs", str(tiny_model_dir), str(tiny_model_dir), "--rounds", "0"], "at least 1"),
    ):
        with pytest.raises(SystemExit) as e:
            ab.main([*argv, "--out", str(tmp_path / "x")])
        assert e.value.code == 2 and message in capsys.readouterr().err
