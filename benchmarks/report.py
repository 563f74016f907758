"""Turn measured rows into ratios, target checks, ``latency.json``, a Markdown table and a
PNG plot.

Rows are flat dicts ``{engine, precision, device, batch, stage, p50_ms, p90_ms, p99_ms,
min_ms, throughput_per_s, ...}``; the baseline's rows have ``engine == "baseline"``. Each
row also names its ``audio_seconds`` (clip length); rows written before runs could sweep
clip lengths lack it, and are read as measured at the run's one length.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from runtime.trt_cache import atomic_write

SCHEMA = "emotech-latency/1"
E2E = "end_to_end"
STAGE_ORDER = ("decode", "resample", "prepare", "load", "tokenise", "tokenise_cold", "frontend", "infer", "postprocess")  # columns of the stage table
# the project's CPU latency targets (docs/benchmarks.md): ONNX Runtime FP32 on CPU
TARGET_ENGINE = ("ort", "fp32", "cpu")
TARGET_WORKLOAD = (3.0, 12)  # the targets' clip length (s) and transcript words
TARGETS = {
    "batch1_p50_speedup": 3.0,  # end-to-end p50 at batch 1, baseline / engine
    "batch32_throughput_ratio": 10.0,  # end-to-end utterances/s at batch 32, engine / baseline
    "frontend_speedup_per_clip": 3.0,  # MFCC per clip, librosa / engine front-end
    "tokenise_sentences_per_s": 50000.0,  # batched tokenisation
}


def find(rows: list[dict], **key) -> dict | None:
    for r in rows:
        if all(r.get(k) == v for k, v in key.items()):
            return r
    return None


def reference_length(lengths: list[float]) -> float:
    """The clip length the targets, the agreement check and the batch plots use: the
    targets' 3 s when it was measured, else the first one asked for."""
    return TARGET_WORKLOAD[0] if TARGET_WORKLOAD[0] in lengths else lengths[0]


def lengths_of(settings: dict) -> list[float]:
    """A run's clip lengths (a number in reports written before the sweep existed)."""
    x = settings.get("audio_seconds")
    return [float(v) for v in x] if isinstance(x, (list, tuple)) else [float(x)] if x is not None else []


def with_lengths(items: list[dict], settings: dict) -> list[dict]:
    """``items`` (result or ratio rows) each naming its clip length: rows written before
    the sweep existed lack it, and were all measured at their run's one length."""
    lengths = lengths_of(settings)
    if len(lengths) != 1:
        return items
    return [r if r.get("audio_seconds") is not None else {**r, "audio_seconds": lengths[0]} for r in items]


def at_length(rows: list[dict], seconds: float) -> list[dict]:
    """The rows measured at clip length ``seconds``."""
    return [r for r in rows if r.get("audio_seconds") == seconds]


def ratios(rows: list[dict]) -> list[dict]:
    """Each engine row against the baseline row of the same device, batch, clip length and stage."""
    out = []
    for r in rows:
        if r["engine"] == "baseline":
            continue
        b = find(rows, engine="baseline", device=r["device"], batch=r["batch"], stage=r["stage"], audio_seconds=r.get("audio_seconds"))
        if b is None:
            continue
        out.append(
            {
                "engine": r["engine"],
                "precision": r["precision"],
                "device": r["device"],
                "batch": r["batch"],
                "stage": r["stage"],
                "audio_seconds": r.get("audio_seconds"),
                "baseline_p50_ms": b["p50_ms"],
                "p50_ms": r["p50_ms"],
                "p50_speedup": round(b["p50_ms"] / r["p50_ms"], 2),
                "throughput_ratio": round(r["throughput_per_s"] / b["throughput_per_s"], 2),
            }
        )
    return out


def targets(rows: list[dict], ratio_rows: list[dict], settings: dict) -> list[dict]:
    """The project's CPU latency targets, each with the measured value and met / not met.

    Only evaluated for the ONNX Runtime FP32 CPU engine, on the rows at 3-s clips, when the
    texts had 12 words; a target whose rows were not measured in this run is left out.
    """
    seconds, words = TARGET_WORKLOAD
    if seconds not in lengths_of(settings) or settings.get("text_words") != words:
        return []
    rows, ratio_rows = (at_length(with_lengths(x, settings), seconds) for x in (rows, ratio_rows))
    eng, prec, dev = TARGET_ENGINE
    key = {"engine": eng, "precision": prec, "device": dev}
    out = []

    def add(name: str, value: float, detail: str) -> None:
        goal = TARGETS[name]
        out.append({"target": name, "goal": goal, "value": round(value, 2), "met": bool(value >= goal), "detail": detail})

    r = find(ratio_rows, batch=1, stage=E2E, **key)
    if r:
        add("batch1_p50_speedup", r["p50_speedup"], f"p50 {r['baseline_p50_ms']:.2f} ms baseline vs {r['p50_ms']:.2f} ms")
    r = find(ratio_rows, batch=32, stage=E2E, **key)
    if r:
        e, b = find(rows, batch=32, stage=E2E, **key), find(rows, engine="baseline", device=dev, batch=32, stage=E2E)
        add(
            "batch32_throughput_ratio",
            r["throughput_ratio"],
            f"{e['throughput_per_s']:.1f} vs {b['throughput_per_s']:.1f} utterances/s",
        )
    fronts = [r for r in ratio_rows if r["stage"] == "frontend" and all(r[k] == v for k, v in key.items())]
    if fronts:
        worst = min(fronts, key=lambda r: r["p50_speedup"])
        detail = ", ".join(
            f"batch {r['batch']}: {r['baseline_p50_ms'] / r['batch']:.3f} vs {r['p50_ms'] / r['batch']:.3f} ms/clip ({r['p50_speedup']}x)"
            for r in sorted(fronts, key=lambda r: r["batch"])
        )
        add("frontend_speedup_per_clip", worst["p50_speedup"], "worst batch size counts; " + detail)
    toks = [r for r in rows if r["stage"] == "tokenise" and all(r[k] == v for k, v in key.items())]
    if toks:
        best = max(toks, key=lambda r: r["batch"])
        cold = find(rows, **key, batch=best["batch"], stage="tokenise_cold")
        cold_note = f"; with the word cache emptied before each call: {cold['throughput_per_s']:.0f}/s" if cold else ""
        add("tokenise_sentences_per_s", best["throughput_per_s"], f"batch {best['batch']}, p50 {best['p50_ms']:.3f} ms{cold_note}")
    return out


def write_json(report: dict, out_dir: Path) -> Path:
    path = out_dir / "latency.json"
    atomic_write(path, (json.dumps(report, indent=1) + "\n").encode())  # a run stopped mid-write keeps the last whole file
    return path


def _machine_line(m: dict) -> str:
    cpu = m["cpu"]
    parts = [f"{cpu['model']}, {cpu['usable_cores']} usable cores ({cpu['logical_cores']} logical), {cpu['memory_gb']} GB"]
    if m.get("gpu"):
        g = m["gpu"]
        parts.append(f"GPU {g.get('name')} (driver {g.get('driver')}, CUDA {g.get('cuda_driver_api') or g.get('torch_cuda')})")
    if m.get("jetson"):
        j = m["jetson"]
        parts.append(f"Jetson {j.get('module')}, {j.get('l4t_release')}, power mode {j.get('power_mode')}")
    v = m["versions"]
    libs = ", ".join(f"{k} {v[k]}" for k in ("onnxruntime", "onnxruntime-gpu", "torch", "tensorrt", "librosa", "numpy") if k in v)
    parts.append(libs)
    return "; ".join(parts)


def _code_line(code: dict) -> str:
    """The commit measured (with any uncommitted changes) and when the run started."""
    changed = code.get("modified_files") or []
    extra = f", with uncommitted changes to {', '.join(changed)}" if changed else ""
    commit = f"commit {code['commit'][:12]}{extra}" if code.get("commit") else "not a git checkout"
    started = f" Started {code['started_utc']}." if code.get("started_utc") else ""
    return f"Code: {commit}.{started}"


def _seconds(x) -> str:
    return "" if x is None else f"{x:g}"


def markdown(report: dict) -> str:
    m, s = report["machine"], report["settings"]
    lengths = lengths_of(s)
    rows = with_lengths(report["results"], s)
    lines = [
        f"# Latency: {report['machine_slug']}",
        "",
        f"Command: `{report['command']}`",
        "",
        *([_code_line(report["code"]), ""] if report.get("code") else []),
        *([] if report.get("complete", True) else ["**Partial: written while the run was still going (or after it was cut short); "
                                                    "rows and targets cover what had been measured.**", ""]),
        (
            f"Machine: {_machine_line(m)}. Threads: {json.dumps(m['threads'])}. "
            f"Load average (1/5/15 min) at start {m.get('loadavg_start')}, at end {m.get('loadavg_end')}."
        ),
        "",
        "Engines: " + "; ".join(", ".join(f"{k} {v}" for k, v in e.items()) for e in report.get("engines", [])) + ".",
        "",
        (
            f"Workload: {', '.join(map(_seconds, lengths))} s clips sent as {s['input_rate']} Hz 16-bit WAV (decoded and resampled to "
            f"{s['sample_rate']} Hz), {s['text_words']}-word transcripts. Each row: {s['budget']}. "
            "Stages are timed separately, each in its own loop; `end_to_end` is one `EmotionRecognizer.predict` call "
            "for the whole batch (baseline: the clips one after another; its librosa BLAS threads: "
            f"{s.get('baseline_blas_threads') or 'library default'}, PyTorch threads: default). Throughput = batch / mean latency; "
            "RTF = p50 / audio seconds in the batch; peak RSS is the whole process while the row ran."
        ),
        "",
    ]
    if report.get("targets"):
        lines += [
            "## Targets (ONNX Runtime FP32, CPU)",
            "",
            "| target | goal | measured | met | detail |",
            "|---|---|---|---|---|",
        ]
        for t in report["targets"]:
            lines.append(
                f"| {t['target']} | >= {t['goal']:g} | {t['value']:g} | {'yes' if t['met'] else '**no**'} | {t['detail']} |"
            )
        lines.append("")
    lines += [
        "## End to end",
        "",
        "| engine | precision | device | batch | clip s | p50 ms | p90 ms | p99 ms | min ms | utt/s | RTF | vs baseline p50 | vs baseline utt/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    rat = {_key(r) + (r["stage"],): r for r in with_lengths(report["ratios"], s)}
    for r in rows:
        if r["stage"] != E2E:
            continue
        q = rat.get(_key(r) + (r["stage"],))
        sp = f"{q['p50_speedup']}x" if q else ""
        tr = f"{q['throughput_ratio']}x" if q else ""
        lines.append(
            f"| {r['engine']} | {r['precision']} | {r['device']} | {r['batch']} | {_seconds(r.get('audio_seconds'))} | {r['p50_ms']:.2f} | {r['p90_ms']:.2f} | "
            f"{r['p99_ms']:.2f} | {r['min_ms']:.2f} | {r['throughput_per_s']:.1f} | {r['rtf']:.4f} | {sp} | {tr} |"
        )
    if len(lengths) > 1:
        lines += ["", *clip_length_table(rows, rat, lengths)]
    lines += ["", "## Stages (p50 ms for the whole batch)", ""]
    present = {r["stage"] for r in rows}
    stages = [st for st in STAGE_ORDER if st in present] + sorted(present - set(STAGE_ORDER) - {E2E})
    lines += [
        "| engine | precision | device | batch | clip s | "
        + " | ".join(stages)
        + " | end_to_end | peak RSS MB | GPU MB | other procs' CPU % (max) |",
        "|---" * (len(stages) + 9) + "|",
    ]
    groups = list(dict.fromkeys(_key(r) for r in rows))
    for g in groups:
        sel = {r["stage"]: r for r in rows if _key(r) == g}
        cells = [f"{sel[st]['p50_ms']:.3f}" if st in sel else "" for st in stages]
        e2e = f"{sel[E2E]['p50_ms']:.2f}" if E2E in sel else ""
        rss = max(r["peak_rss_mb"] for r in sel.values())
        gpu = [r["gpu_mem_mb"] for r in sel.values() if r.get("gpu_mem_mb") is not None]
        other = max(r.get("other_cpu_pct", 0.0) for r in sel.values())
        lines.append(
            f"| {' | '.join(map(str, g[:4]))} | {_seconds(g[4])} | "
            + " | ".join(cells)
            + f" | {e2e} | {rss:.0f} | {max(gpu) if gpu else ''} | {other:.0f} |"
        )
    lines += [
        "",
        (
            "Engine stages: `decode` and `resample` are timed one clip after another; `prepare` is what `predict` does "
            "before batching (decode, resample, checks, silence trimming) for all clips on the recognizer's threads; "
            "`tokenise_cold` empties the tokenizer's word cache before each call; "
            "`frontend` is the MFCC graph alone on the engine's backend (inside `infer` in a real call); "
            "`infer` is the engine calls `predict` makes for the batch (MFCC + network; one call unless a CPU engine's batch holds more "
            "than `EmotionRecognizer.max_call_audio_seconds` of padded audio). Baseline stages: `load` is `librosa.load` (decode + resample), "
            "`frontend` is `librosa.feature.mfcc` + CMVN, `infer` is the PyTorch eager forward, each per clip. "
            "The last column is the CPU other processes used while the rows ran (% of all cores): rows measured "
            "while it was well above 0 shared the machine."
        ),
        "",
    ]
    split = sorted({(r["engine"], r["precision"], r["device"], r["batch"], r.get("audio_seconds"), r["engine_calls"]) for r in rows if r.get("engine_calls", 1) > 1})
    if split:
        lines += [
            "Batches that `predict` ran as several engine calls: "
            + "; ".join(f"{e} {p} {d} batch {b} ({_seconds(x)}-s clips): {n} calls" for e, p, d, b, x, n in split),
            "",
        ]
    methods = sorted({r["gpu_mem_method"] for r in rows if r.get("gpu_mem_method")})
    if methods:
        lines += ["GPU MB: " + "; ".join(methods) + ".", ""]
    if report.get("agreement"):
        lines += ["## Agreement with the baseline", ""]
        for a in report["agreement"]:
            clip = f" ({_seconds(a['audio_seconds'])}-s clips)" if a.get("audio_seconds") is not None else ""
            lines.append(
                f"- {a['engine']} {a['precision']} {a['device']}{clip}: max |logit difference| {a['max_abs_logit_diff']:.2e} over {a['items']} items, same label for {a['same_label']}/{a['items']}"
            )
        lines.append("")
    if report.get("skipped"):
        lines += ["## Skipped", ""] + [f"- {k['what']}: {k['reason']}" for k in report["skipped"]] + [""]
    if m.get("tegrastats"):
        lines += ["## tegrastats", "", "```", json.dumps(m["tegrastats"], indent=1), "```", ""]
    return "\n".join(lines)


def _key(r: dict) -> tuple:
    """What a row was measured on: engine, precision, device, batch, clip length."""
    return r["engine"], r["precision"], r["device"], r["batch"], r.get("audio_seconds")


def clip_length_table(rows: list[dict], rat: dict, lengths: list[float]) -> list[str]:
    """End-to-end p50 at each clip length, side by side (with the ratio to the baseline),
    and the cost of one more second of audio (least-squares slope of p50 over length)."""
    cols = sorted(lengths)
    lines = [
        "## Clip length (end to end, p50 ms per batch; ratio to the baseline in brackets)",
        "",
        "| engine | precision | device | batch | " + " | ".join(f"{_seconds(x)} s" for x in cols) + " | ms per extra audio second per clip |",
        "|---" * (len(cols) + 5) + "|",
    ]
    e2e = [r for r in rows if r["stage"] == E2E]
    for g in dict.fromkeys(_key(r)[:4] for r in e2e):
        at = {r.get("audio_seconds"): r for r in e2e if _key(r)[:4] == g}
        cells = []
        for x in cols:
            r = at.get(x)
            q = rat.get(g + (x, E2E))
            cells.append("" if r is None else f"{r['p50_ms']:.2f}" + (f" ({q['p50_speedup']}x)" if q else ""))
        pts = [(x, at[x]["p50_ms"] / g[3]) for x in cols if x in at]
        slope = ""
        if len(pts) > 1:
            xs, ys = (np.array(v, dtype=float) for v in zip(*pts))
            slope = f"{np.polyfit(xs, ys, 1)[0]:.3f}"
        lines.append(f"| {' | '.join(map(str, g))} | " + " | ".join(cells) + f" | {slope} |")
    return lines


def write_markdown(report: dict, out_dir: Path) -> Path:
    path = out_dir / "latency.md"
    atomic_write(path, markdown(report).encode())
    return path


PLOT_STAGES = ("audio prep", "MFCC", "tokenise", "model", "postprocess")


def stage_breakdown(rows: list[dict], engine: str, precision: str, device: str, batch: int) -> dict[str, float]:
    """Additive ms-per-clip split of one configuration for the stacked bars.

    Engines run the MFCC inside the graph: ``model`` is ``infer`` minus the separately
    measured ``frontend`` (floored at 0)."""
    sel = {
        r["stage"]: r["p50_ms"] / batch
        for r in rows
        if (r["engine"], r["precision"], r["device"], r["batch"]) == (engine, precision, device, batch)
    }
    if engine == "baseline":
        return {
            "audio prep": sel.get("load", 0.0),
            "MFCC": sel.get("frontend", 0.0),
            "tokenise": sel.get("tokenise", 0.0),
            "model": sel.get("infer", 0.0),
            "postprocess": sel.get("postprocess", 0.0),
        }
    mfcc = sel.get("frontend", 0.0)
    return {
        # ``prepare`` is what predict() spends before batching (decode, resample, checks,
        # trimming, on the recognizer's threads); older runs only have decode + resample.
        "audio prep": sel["prepare"] if "prepare" in sel else sel.get("decode", 0.0) + sel.get("resample", 0.0),
        "MFCC": mfcc,
        "tokenise": sel.get("tokenise", 0.0),
        "model": max(sel.get("infer", 0.0) - mfcc, 0.0),
        "postprocess": sel.get("postprocess", 0.0),
    }


def write_plot(report: dict, out_dir: Path) -> Path:
    """Latency vs batch and where the time goes, at the reference clip length; with several
    clip lengths, a third panel: end-to-end ms per clip vs clip length."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    lengths = lengths_of(report["settings"])
    ref = reference_length(lengths) if lengths else None
    every = with_lengths(report["results"], report["settings"])
    rows = every if ref is None else at_length(every, ref)
    configs = list(dict.fromkeys((r["engine"], r["precision"], r["device"]) for r in rows))
    sweep = len(lengths) > 1
    fig, axes = plt.subplots(1, 3 if sweep else 2, figsize=(19 if sweep else 13, 5))
    ax1, ax2 = axes[0], axes[1]
    for cfg in configs:
        pts = sorted(
            (r["batch"], r["p50_ms"], r["p90_ms"])
            for r in rows
            if (r["engine"], r["precision"], r["device"]) == cfg and r["stage"] == E2E
        )
        if not pts:
            continue
        xs, p50, p90 = zip(*pts)
        line = ax1.plot(xs, p50, marker="o", label=" ".join(cfg) + " p50")[0]
        ax1.plot(xs, p90, linestyle=":", color=line.get_color(), label=" ".join(cfg) + " p90")
    ax1.set_xscale("log", base=2)
    batches = sorted({r["batch"] for r in rows})
    ax1.set_xticks(batches, [str(b) for b in batches])
    ax1.set_yscale("log")
    ax1.set_xlabel("batch size")
    ax1.set_ylabel("end-to-end latency per batch (ms)")
    ax1.set_title("Latency vs batch" + (f" ({ref:g}-s clips)" if sweep else ""))
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=7)

    bars = [
        (cfg, b)
        for cfg in configs
        for b in sorted({r["batch"] for r in rows if (r["engine"], r["precision"], r["device"]) == cfg})
    ]
    bottoms = [0.0] * len(bars)
    for stage in PLOT_STAGES:
        vals = [stage_breakdown(rows, *cfg, b)[stage] for cfg, b in bars]
        ax2.bar(range(len(bars)), vals, bottom=bottoms, label=stage)
        bottoms = [x + y for x, y in zip(bottoms, vals)]
    ax2.set_xticks(range(len(bars)), [f"{cfg[0]}\n{cfg[1]}\n{cfg[2]}\nb{b}" for cfg, b in bars], fontsize=6)
    ax2.set_ylabel("ms per clip (p50 of each stage / batch)")
    ax2.set_title("Where the time goes" + (f" ({ref:g}-s clips)" if sweep else ""))
    ax2.legend(fontsize=7)

    if sweep:
        ax3 = axes[2]
        e2e = [r for r in every if r["stage"] == E2E]
        colours = {cfg: f"C{i % 10}" for i, cfg in enumerate(configs)}  # one per configuration, as in the first panel
        for g in dict.fromkeys(_key(r)[:4] for r in e2e):
            if g[3] not in (min(batches), max(batches)) or g[:3] not in colours:
                continue
            pts = sorted((r["audio_seconds"], r["p50_ms"] / g[3]) for r in e2e if _key(r)[:4] == g and r.get("audio_seconds") is not None)
            if pts:
                xs, ys = zip(*pts)
                style = "-" if g[3] == min(batches) else "--"
                ax3.plot(xs, ys, marker="o", linestyle=style, color=colours[g[:3]], label=f"{' '.join(g[:3])} b{g[3]}")
        ax3.set_xscale("log")
        ax3.set_yscale("log")
        ax3.set_xticks(sorted(lengths), [f"{x:g}" for x in sorted(lengths)])
        ax3.set_xlabel("clip length (s)")
        ax3.set_ylabel("end-to-end p50 per clip (ms)")
        ax3.set_title("Latency vs clip length (smallest and largest batch)")
        ax3.grid(True, which="both", alpha=0.3)
        ax3.legend(fontsize=7)
    clips = ", ".join(f"{x:g}" for x in lengths) if lengths else "?"
    fig.suptitle(f"{report['machine_slug']}: {clips} s clip + {report['settings']['text_words']}-word text", fontsize=10)
    fig.tight_layout()
    path = out_dir / "latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
