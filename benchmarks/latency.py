"""Latency and throughput of the engines against the research-code baseline, on this machine.

    python -m benchmarks.latency --engine ort --precision fp32 --device cpu \\
        --batch 1,8,32 --audio-seconds 3 --text-words 12 --out benchmarks/results/MACHINE

For each engine (and ``--engine`` / ``--precision`` may list several), batch size and
clip length (``--audio-seconds 1,3,10`` shows how latency grows with the audio):
per stage (decode, resample, tokenise, front-end, engine call, post-processing) and end
to end (``EmotionRecognizer.predict`` on the batch of encoded clips and texts): p50 / p90
/ p99 / min latency, throughput, real-time factor, peak resident and GPU memory. In the
same run, first, the same trained weights the usual research way (``benchmarks.baseline``:
librosa MFCC and a PyTorch eager forward per clip); then each engine, loaded one at a
time; the ratio of each engine to the baseline, and a check that both give the same
logits. A row measured while other processes took more than ``--max-other-cpu`` % of the
CPU is measured again after the machine quietens (``--retries``); each row records that
load, so a shared machine shows in the results. Writes
``latency.json`` (a ``machine`` object and flat ``results`` rows), ``latency.md`` and
``latency.png`` to ``--out`` (default ``benchmarks/results/<machine>/``).

``--profile cpu|desktop-gpu|jetson`` picks the engines, precisions, device and batch
sizes that matter on such a machine (``PROFILES``); ``--engine``, ``--precision``,
``--device`` and ``--batch`` given as well override the profile's.

An engine, device or precision that cannot run here (no GPU, no TensorRT, no such
graph in the model folder) is skipped with the reason printed and recorded; when
nothing at all could run, no files are written and the exit status is 1.
"""

from __future__ import annotations

import argparse
import gc
import shlex
import sys
import tempfile
import warnings
from collections.abc import Callable
from dataclasses import asdict, replace
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from benchmarks import report as rep
from benchmarks.machine import GpuMemory, TegraStats, code_version, loadavg, machine_info, machine_slug, thread_settings
from benchmarks.timing import FULL, QUICK, Budget, measure_quiet, no_sync
from benchmarks.workload import Workload, make_requests
from runtime.audio import decode, resample, to_mono_float
from runtime.engines.ort import SPIN_MODES, require_cuda_provider
from runtime.errors import EmotionError
from runtime.postprocess import postprocess
from runtime.recognizer import EmotionRecognizer
from runtime import cli
from runtime.spec import load_spec, resolve_model_dir

RESULTS_DIR = Path(__file__).resolve().parent / "results"
ENGINES = ("ort", "torch", "trt")
# What to measure on each kind of target; unset options fall back to DEFAULTS.
DEFAULTS = {"engine": "ort", "precision": "fp32", "device": "cpu", "batch": "1,8,32"}
PROFILES = {
    # a kiosk or call-centre box without a GPU: ONNX Runtime (the INT8 graph for
    # comparison) and PyTorch, the batch sizes of the CPU targets
    "cpu": {"engine": "ort,torch", "precision": "fp32,int8", "device": "cpu", "batch": "1,8,32"},
    # a desktop or server GPU: every engine at every precision, up to the batch-64 target
    "desktop-gpu": {"engine": "trt,torch,ort", "precision": "fp32,fp16,int8", "device": "cuda", "batch": "1,8,32,64"},
    # a Jetson (shared memory, a few streams): TensorRT at the precisions it is built for,
    # PyTorch-CUDA for comparison, small batches
    "jetson": {"engine": "trt,torch", "precision": "fp16,int8,fp32", "device": "cuda", "batch": "1,4,8,16"},
}


def _csv(text: str, cast: Callable = str) -> list:
    return [cast(x.strip()) for x in text.split(",") if x.strip()]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m benchmarks.latency", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--profile", choices=tuple(PROFILES), default=None,
        help="preset engines, precisions, device and batch sizes for a kind of machine (the options below override it): "
        + "; ".join(f"{k}: " + " ".join(f"--{o} {v}" for o, v in opts.items()) for k, opts in PROFILES.items()),
    )  # fmt: skip
    p.add_argument("--engine", default=None, help=f"comma-separated engines from {', '.join(ENGINES)} (default: ort)")
    p.add_argument("--precision", default=None, help="comma-separated precisions: fp32, fp16, int8 (default: fp32)")
    p.add_argument(
        "--device", default=None, type=cli.device_arg, help="cpu, cuda or cuda:N: device for the engines and the baseline (default: cpu)"
    )
    p.add_argument("--batch", default=None, help="comma-separated batch sizes (default: 1,8,32)")
    p.add_argument(
        "--audio-seconds", default="3",
        help="comma-separated clip lengths in seconds, each measured at every batch size (default: 3; "
        "the CPU targets are read at 3 s with --text-words 12)",
    )  # fmt: skip
    p.add_argument("--text-words", type=int, default=12, help="words per transcript (default: 12)")
    p.add_argument("--input-rate", type=int, default=48000, help="sample rate the clips are sent at (default: 48000)")
    p.add_argument("--model-dir", type=Path, default=None, help="model folder (default: $EMOTECH_MODEL_DIR if set, else the bundled model)")
    p.add_argument(
        "--threads",
        type=int,
        default=None,
        help="intra-op threads of the ort and torch engines (default: their own choice; "
        "torch's setting is process-wide, so it applies to the baseline too)",
    )
    p.add_argument(
        "--ort-spin", choices=tuple(SPIN_MODES), default="during",
        help="how ONNX Runtime's intra-op threads wait for work (runtime.engines.ort.OrtEngine's spin; default: during)",
    )  # fmt: skip
    p.add_argument("--out", type=Path, default=None, help="output folder (default: benchmarks/results/<machine>)")
    p.add_argument("--quick", action="store_true", help="a few iterations per row: checks the harness, not the numbers")
    p.add_argument("--no-baseline", action="store_true", help="skip the librosa + PyTorch eager baseline")
    p.add_argument(
        "--baseline-blas-threads", type=int, default=1,
        help="BLAS threads for the baseline's librosa (default: 1, see benchmarks/baseline.py; 0: the library default)",
    )  # fmt: skip
    p.add_argument(
        "--max-other-cpu", type=float, default=10.0,
        help="re-measure a row while other processes used more than this %% of all cores during it (default: 10)",
    )  # fmt: skip
    p.add_argument(
        "--retries", type=int, default=3, help="re-measurements per row on a shared machine (default: 3; 0 with --quick)"
    )
    p.add_argument("--seed", type=int, default=0, help="workload seed (default: 0)")
    return p


def apply_profile(args: argparse.Namespace) -> None:
    """Fill ``--engine/--precision/--device/--batch`` left unset from ``--profile``, then
    from ``DEFAULTS``."""
    preset = PROFILES[args.profile] if args.profile else {}
    for key, default in DEFAULTS.items():
        if getattr(args, key) is None:
            setattr(args, key, preset.get(key, default))


def validate_args(args: argparse.Namespace) -> None:
    """Raise ``ValueError`` naming the bad option."""
    apply_profile(args)
    bad = [e for e in _csv(args.engine) if e not in ENGINES]
    if bad or not _csv(args.engine):
        raise ValueError(f"--engine must list engines from {', '.join(ENGINES)}, got {args.engine!r}")
    bad = [p for p in _csv(args.precision) if p not in ("fp32", "fp16", "int8")]
    if bad or not _csv(args.precision):
        raise ValueError(f"--precision must list fp32, fp16 or int8, got {args.precision!r}")
    try:
        batches = _csv(args.batch, int)
    except ValueError as e:
        raise ValueError(f"--batch must be comma-separated integers, got {args.batch!r}") from e
    if not batches or min(batches) < 1:
        raise ValueError(f"--batch sizes must be >= 1, got {args.batch!r}")
    try:
        lengths = _csv(args.audio_seconds, float)
    except ValueError as e:
        raise ValueError(f"--audio-seconds must be comma-separated numbers, got {args.audio_seconds!r}") from e
    if not lengths or not all(np.isfinite(x) and x > 0 for x in lengths):
        raise ValueError(f"--audio-seconds must be positive, got {args.audio_seconds!r}")
    if args.baseline_blas_threads < 0:
        raise ValueError("--baseline-blas-threads must be >= 0")
    if args.retries < 0 or not 0 < args.max_other_cpu <= 100:
        raise ValueError("--retries must be >= 0 and --max-other-cpu in (0, 100]")
    if args.threads is not None and args.threads < 1:
        raise ValueError("--threads must be >= 1")
    Workload(1, lengths[0], args.text_words, args.input_rate)
    try:  # clip lengths the model refuses would fail only after the baseline's rows
        fe = load_spec(args.model_dir, verify=False).frontend
    except EmotionError:
        return  # the engines report an unusable folder, each with its reason
    outside = [x for x in lengths if not fe.min_audio_seconds <= x <= fe.max_audio_seconds]
    if outside:
        raise ValueError(
            f"--audio-seconds {', '.join(f'{x:g}' for x in outside)}: the model takes clips of "
            f"{fe.min_audio_seconds:g} to {fe.max_audio_seconds:g} s"
        )


# ---------------------------------------------------------------- front-end alone


def export_frontend(cfg, path: Path) -> Path:
    """The MFCC front-end alone as ONNX (``audio, audio_lengths -> mfcc, frame_lengths``),
    built from ``export.frontend`` like the fused graph. Needs PyTorch."""
    import torch

    from export.frontend import MFCC
    from export.onnx import OPSET

    sr = cfg.sample_rate
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            MFCC(cfg).eval(), (torch.zeros(2, sr), torch.tensor([sr, sr // 2])), str(path), input_names=["audio", "audio_lengths"],
            output_names=["mfcc", "frame_lengths"], opset_version=OPSET, dynamo=False,
            dynamic_axes={"audio": {0: "batch", 1: "samples"}, "audio_lengths": {0: "batch"}, "mfcc": {0: "batch", 1: "frames"}},
        )  # fmt: skip
    return path


def frontend_runner(
    engine: str, rec: EmotionRecognizer, device: str, threads: int | None, tmp: Path, spin: str = "during"
) -> tuple[Callable, Callable] | str:
    """``(run(audio, lengths), sync)`` for the MFCC graph alone on the engine's backend,
    or the reason it cannot be measured here. The graph is exported from
    ``export.frontend`` (needs PyTorch), the code every engine's fused graph is built from."""
    try:
        import torch

        from export.frontend import MFCC
    except ImportError as e:
        return f"needs PyTorch to build the front-end graph ({e})"
    module = MFCC(rec.spec.frontend).eval()
    if engine == "torch":
        module = module.to(device)
        sync = torch.cuda.synchronize if device == "cuda" else no_sync

        def run_torch(audio: np.ndarray, lengths: np.ndarray) -> object:
            with torch.inference_mode():
                return module(torch.from_numpy(audio).to(device), torch.from_numpy(lengths).to(device))

        return run_torch, sync
    if engine != "ort":
        return f"the front-end alone is not built for engine {engine!r} (it runs inside the fused engine)"
    import onnxruntime as ort

    path = export_frontend(rec.spec.frontend, tmp / "frontend.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    for key, value in SPIN_MODES[spin].items():  # as the engine's session
        opts.add_session_config_entry(key, value)
    providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
    sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
    if device == "cuda":
        try:
            require_cuda_provider(sess, "the front-end graph alone")
        except EmotionError as e:
            return str(e)
    return (lambda audio, lengths: sess.run(None, {"audio": audio, "audio_lengths": lengths})), no_sync


# ---------------------------------------------------------------- measured rows


def measure_row(
    engine: str, precision: str, device: str, batch: int, stage: str, fn: Callable, sync: Callable, budget: Budget, seconds: float,
    gpu: GpuMemory | None = None,
) -> dict:
    """Measure one row (re-measured while the machine was shared, see ``--max-other-cpu``) and print it."""
    if gpu is not None and device == "cuda":
        gpu.start_row()
    stats, attempts = measure_quiet(fn, budget, sync)
    row = make_row(engine, precision, device, batch, stage, stats, seconds)
    if gpu is not None and device == "cuda":
        row["gpu_mem_mb"], row["gpu_mem_method"] = gpu.row(engine)
    row["attempts"] = attempts
    print(_row_line(row), flush=True)
    return row


def make_row(engine: str, precision: str, device: str, batch: int, stage: str, stats, audio_seconds: float) -> dict:
    """One flat result row (the schema ``latency.json`` promises, plus the clip length and
    detail fields)."""
    d = asdict(stats)
    return {
        "engine": engine,
        "precision": precision,
        "device": device,
        "batch": batch,
        "stage": stage,
        "audio_seconds": audio_seconds,
        "p50_ms": round(d["p50_ms"], 4),
        "p90_ms": round(d["p90_ms"], 4),
        "p99_ms": round(d["p99_ms"], 4),
        "min_ms": round(d["min_ms"], 4),
        "throughput_per_s": round(batch * 1e3 / d["mean_ms"], 2),
        "mean_ms": round(d["mean_ms"], 4),
        "std_ms": round(d["std_ms"], 4),
        "n": d["n"],
        "rtf": round(d["p50_ms"] / (1e3 * audio_seconds * batch), 6),
        "peak_rss_mb": round(d["peak_rss_mb"], 1),
        "other_cpu_pct": round(d["other_cpu_pct"], 1),
        "gpu_mem_mb": None,  # filled in by measure_row on a GPU (GpuMemory)
    }


def engine_rows(
    rec: EmotionRecognizer,
    precision: str,
    device: str,
    frontend,
    clips: list[bytes],
    texts: list[str],
    budget: Budget,
    seconds: float,
    gpu: GpuMemory | None = None,
) -> list[dict]:
    """Every stage of one engine at one batch size, then end to end. Each row names the
    number of engine calls ``predict`` makes of the batch (``engine_calls``)."""
    sr, batch, name = rec.sample_rate, len(clips), rec.engine.name
    decoded = [decode(c) for c in clips]
    mono = [resample(to_mono_float(s), rate, sr) for s, rate in decoded]
    items = [rec.prepare(m, t, sample_rate=sr) for m, t in zip(mono, texts)]
    # the engine calls predict() makes of the batch (long clips: several, see EmotionRecognizer.calls)
    feeds = [rec.build_feed([items[i] for i in idx]) for idx in rec.calls(items)]
    feed = rec.build_feed(items)  # all of it at once, for post-processing
    logits = rec.engine.infer(feed)
    durations = [m.size / sr for m in mono]
    stages: list[tuple[str, Callable, Callable]] = [
        ("decode", lambda: [decode(c) for c in clips], no_sync),
        ("resample", lambda: [resample(to_mono_float(s), rate, sr) for s, rate in decoded], no_sync),
        ("prepare", lambda: rec.prepare_many([(c, None, None, None) for c in clips]), no_sync),
        ("tokenise", lambda: rec.encoder.encode(texts), no_sync),
        ("tokenise_cold", lambda: (rec.encoder.clear_cache(), rec.encoder.encode(texts)), no_sync),
    ]
    if not isinstance(frontend, str):
        run, sync = frontend
        stages.append(("frontend", lambda: [run(f["audio"], f["audio_lengths"]) for f in feeds], sync))
    stages += [
        ("infer", lambda: [rec.engine.infer(f) for f in feeds], no_sync),
        (
            "postprocess",
            lambda: postprocess(logits, rec.labels, feed["has_audio"], feed["has_text"], rec.spec.temperature, durations),
            no_sync,
        ),
        (rep.E2E, lambda: rec.predict(audio=clips, text=texts), no_sync),
    ]
    rows = [measure_row(name, precision, device, batch, stage, fn, sync, budget, seconds, gpu) for stage, fn, sync in stages]
    return [{**r, "engine_calls": len(feeds)} for r in rows]


def baseline_rows(
    base, device: str, clips: list[bytes], texts: list[str], budget: Budget, seconds: float, gpu: GpuMemory | None = None
) -> list[dict]:
    """The baseline's stages (each a loop over the clips) and end to end."""
    ys = [base.load(c) for c in clips]
    feats = [base.features(y) for y in ys]
    ids = [base.tokenise(t) for t in texts]
    logits = [base.forward(f, i) for f, i in zip(feats, ids)]
    stages = [
        ("load", lambda: [base.load(c) for c in clips], no_sync),
        ("tokenise", lambda: [base.tokenise(t) for t in texts], no_sync),
        ("frontend", lambda: [base.features(y) for y in ys], no_sync),
        ("infer", lambda: [base.forward(f, i) for f, i in zip(feats, ids)], base.sync),
        ("postprocess", lambda: [base.postprocess(z) for z in logits], no_sync),
        (rep.E2E, lambda: base.predict(clips, texts), base.sync),
    ]
    return [measure_row("baseline", "fp32", device, len(clips), stage, fn, sync, budget, seconds, gpu) for stage, fn, sync in stages]


def agreement(rec: EmotionRecognizer, precision: str, device: str, base, clips: list[bytes], texts: list[str]) -> dict:
    """Max |logit| difference and label agreement between an engine and the baseline."""
    items = [rec.prepare(c, t) for c, t in zip(clips, texts)]
    ours = rec.engine.infer(rec.build_feed(items))
    ref = base.logits(clips, texts)
    return {
        "engine": rec.engine.name,
        "precision": precision,
        "device": device,
        "items": len(clips),
        "max_abs_logit_diff": float(np.abs(ours - ref).max()),
        "same_label": int((ours.argmax(1) == ref.argmax(1)).sum()),
    }


def _row_line(r: dict) -> str:
    return (
        f"{r['engine']:>8} {r['precision']} {r['device']} b{r['batch']:<3} {r['audio_seconds']:g} s {r['stage']:<12} p50 {r['p50_ms']:9.3f} ms  "
        f"p90 {r['p90_ms']:9.3f}  p99 {r['p99_ms']:9.3f}  min {r['min_ms']:9.3f}  {r['throughput_per_s']:10.1f}/s  n={r['n']}  "
        f"other procs {r['other_cpu_pct']:.0f}% CPU"
    )


# ---------------------------------------------------------------- the run


def engine_device(engine: str, device: str) -> str:
    """The device an engine's rows are labelled with: TensorRT always runs on the GPU."""
    return "cuda" if engine == "trt" else device


def engine_configs(args: argparse.Namespace) -> list[tuple[str, str]]:
    return [(e, p) for e in _csv(args.engine) for p in _csv(args.precision)]


def load_engine(
    args: argparse.Namespace, engine: str, precision: str, batches: list[int], skipped: list[dict]
) -> EmotionRecognizer | None:
    """One engine, or None (recorded in ``skipped``) when it cannot run here."""
    what = f"engine {engine} {precision} on {engine_device(engine, args.device)}"
    kwargs = {"threads": args.threads} if engine in ("ort", "torch") and args.threads else {}
    if engine == "ort":
        kwargs["spin"] = args.ort_spin
    try:
        return EmotionRecognizer.load(
            args.model_dir, engine=engine, precision=precision, device=args.device, max_batch=max(batches), **kwargs
        )
    except (EmotionError, ValueError, ImportError) as e:  # cannot run here: the message says why
        print(f"skipping {what}: {e}", file=sys.stderr)
        skipped.append({"what": what, "reason": str(e)})
        return None
    except Exception as e:  # noqa: BLE001 - a CUDA / pycuda / TensorRT failure: go on with the other engines
        print(f"skipping {what}: loading failed: {e!r}", file=sys.stderr)
        skipped.append({"what": what, "reason": f"loading failed: {e!r}"})
        return None


def load_baseline(args: argparse.Namespace, skipped: list[dict]):
    if args.no_baseline:
        return None
    try:
        from benchmarks.baseline import Baseline

        return Baseline(args.model_dir, args.device, blas_threads=args.baseline_blas_threads or None)
    except (ImportError, RuntimeError, EmotionError) as e:
        print(f"skipping the baseline on {args.device}: {e}", file=sys.stderr)
        skipped.append({"what": f"baseline on {args.device}", "reason": str(e)})
        return None


def run(args: argparse.Namespace, checkpoint: Callable[[dict], None] | None = None) -> dict:
    """Measure everything ``args`` asks for; returns the report (not yet written).
    ``checkpoint`` gets the report so far (``complete: False``) after the baseline and after
    each engine's rows at each batch size and clip length, so a run cut short keeps what it
    measured. An engine that fails while loading or measuring (a CUDA error, out of GPU
    memory) is recorded in ``skipped`` with what it had measured kept, and the run goes on
    to the next engine."""
    validate_args(args)
    batches = _csv(args.batch, int)
    lengths = list(dict.fromkeys(_csv(args.audio_seconds, float)))
    budget = QUICK if args.quick else replace(FULL, max_other_pct=args.max_other_cpu, retries=args.retries)
    skipped: list[dict] = []
    base = load_baseline(args, skipped)
    info = machine_info()
    code = {**(code_version() or {}), "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    rows: list[dict] = []
    agree: list[dict] = []
    described: list[dict] = []
    sample_rate = None
    sizes = [(b, x) for x in lengths for b in batches]
    workloads = {(b, x): make_requests(Workload(b, x, args.text_words, args.input_rate, args.seed)) for b, x in sizes}

    def assemble(complete: bool) -> dict:
        return _report(args, budget, batches, lengths, code, dict(info), list(rows), list(described), list(agree), list(skipped), sample_rate, complete)
    gpu = GpuMemory() if args.device == "cuda" else None
    with tempfile.TemporaryDirectory() as tmp, TegraStats() as tegra:
        if base is not None:
            for batch, seconds in sizes:
                rows += baseline_rows(base, args.device, *workloads[batch, seconds], budget, seconds, gpu)
            if checkpoint and rows:
                checkpoint(assemble(False))
        # One engine loaded at a time: idle sessions of other engines in the same process
        # (their thread pools) were measured to double an engine's batch-1 latency.
        for engine, precision in engine_configs(args):
            if gpu is not None:
                gpu.mark()
            rec = load_engine(args, engine, precision, batches, skipped)
            if rec is None:
                continue
            dev = engine_device(engine, args.device)
            step = "loading its front-end stage"
            try:
                sample_rate = rec.sample_rate
                fe = frontend_runner(engine, rec, args.device, args.threads, Path(tmp), spin=args.ort_spin)
                if isinstance(fe, str):
                    skipped.append({"what": f"frontend stage of {engine} {precision}", "reason": fe})
                described.append({**rec.engine.describe(), **({"frontend_stage": "not measured"} if isinstance(fe, str) else {})})
                info["threads"] = thread_settings()  # live settings once an engine has set them
                for batch, seconds in sizes:
                    step = f"measuring batch {batch}, {seconds:g}-s clips"
                    rows += engine_rows(rec, precision, dev, fe, *workloads[batch, seconds], budget, seconds, gpu)
                    if checkpoint:
                        checkpoint(assemble(False))
                if base is not None:
                    step = "comparing its logits with the baseline's"
                    ref = rep.reference_length(lengths)
                    agree.append({**agreement(rec, precision, dev, base, *workloads[max(batches), ref]), "audio_seconds": ref})
            except Exception as e:  # noqa: BLE001 - one engine's failure must not lose the others' rows
                what = f"engine {engine} {precision} on {dev}"
                print(f"{what} failed while {step}: {e!r}; going on with the next engine", file=sys.stderr)
                skipped.append({"what": what, "reason": f"failed while {step}: {e!r} (rows measured before it are kept)"})
            finally:
                try:
                    rec.close()
                except Exception as e:  # noqa: BLE001
                    print(f"closing engine {engine} {precision} failed: {e!r}", file=sys.stderr)
                del rec
                fe = None
                gc.collect()
            if checkpoint and rows:
                checkpoint(assemble(False))
        info["tegrastats"] = tegra.summary()
    info["loadavg_end"] = loadavg()
    report = assemble(True)
    if base is not None:
        base.close()
    return report


def _report(args, budget, batches, lengths, code, info, rows, described, agree, skipped, sample_rate, complete: bool) -> dict:
    """The report of what ``run`` has measured so far."""
    settings = {
        "profile": args.profile, "engines": _csv(args.engine), "precisions": _csv(args.precision), "device": args.device, "batches": batches,
        "audio_seconds": lengths, "text_words": args.text_words, "input_rate": args.input_rate,
        "sample_rate": sample_rate, "model_dir": str(args.model_dir),
        "threads": args.threads, "ort_spin": args.ort_spin, "quick": args.quick, "seed": args.seed, "baseline_blas_threads": args.baseline_blas_threads,
        "budget": ("quick: " if args.quick else "") + ", ".join(f"{k}={v}" for k, v in asdict(budget).items()),
    }  # fmt: skip
    ratio_rows = rep.ratios(rows)
    report = {
        "schema": rep.SCHEMA,
        "command": "",  # filled in by main()
        "code": code,
        "machine_slug": machine_slug(info),
        "machine": info,
        "settings": settings,
        "engines": described,
        "results": rows,
        "ratios": ratio_rows,
        "targets": rep.targets(rows, ratio_rows, settings) if not args.quick else [],
        "agreement": agree,
        "skipped": skipped,
        "complete": complete,
    }
    return report


def write(report: dict, out: Path | None, plot: bool = True) -> Path:
    out = out or RESULTS_DIR / report["machine_slug"]
    out.mkdir(parents=True, exist_ok=True)
    rep.write_json(report, out)
    rep.write_markdown(report, out)
    if plot:
        rep.write_plot(report, out)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    args.model_dir = resolve_model_dir(args.model_dir)
    command = "python -m benchmarks.latency " + " ".join(shlex.quote(a) for a in argv)
    try:
        # checkpoints draw no plot: matplotlib would add ~50 MB to the peak RSS of the rows after them
        report = run(args, checkpoint=lambda partial: write({**partial, "command": command}, args.out, plot=False))
    except ValueError as e:
        parser.error(str(e))
    report["command"] = command
    if not report["results"]:
        print(
            "nothing was measured, no files written: " + "; ".join(f"{s['what']}: {s['reason']}" for s in report["skipped"]),
            file=sys.stderr,
        )
        return 1
    out = write(report, args.out)
    print(f"wrote {out / 'latency.json'}, latency.md, latency.png")
    for t in report["targets"]:
        print(f"target {t['target']}: {t['value']} (goal >= {t['goal']}) {'met' if t['met'] else 'NOT met'}: {t['detail']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
