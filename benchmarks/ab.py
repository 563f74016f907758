"""End-to-end latency of two or more model folders, measured in one run, interleaved.

    python -m benchmarks.ab --model-dirs weights/emotech runs/new --batch 1,32 --rounds 7 \
        --out benchmarks/results/MACHINE/ab

The question is whether one model is slower than another on this machine, and a shared
machine's load drifts by more than the models differ. So the folders take turns: in each
round every folder (in an order that rotates from round to round) is loaded alone, measured
end to end (``EmotionRecognizer.predict`` on the same encoded clips and transcripts as
``benchmarks.latency``) at each batch size, and closed before the next one loads. The
result per folder and batch size is the median over rounds of each round's p50, and the
ratio of every folder to the first one is taken within each round, then summarised by its
median, minimum and maximum over the rounds: drift that hits both folders of a round
cancels in the ratio.

Writes ``ab.json`` and ``ab.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import gc
import json
import shlex
import sys
from dataclasses import asdict
from datetime import datetime, timezone
from functools import partial
from pathlib import Path

import numpy as np

from benchmarks.machine import code_version, loadavg, machine_info, machine_slug
from benchmarks.timing import Budget, measure
from benchmarks.workload import Workload, make_requests
from runtime import cli
from runtime.recognizer import EmotionRecognizer

ROUND_BUDGET = Budget(warmup_iters=3, warmup_time=0.3, min_iters=20, min_time=1.0, max_time=10.0, max_iters=500)


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m benchmarks.ab", __doc__)
    p.add_argument("--model-dirs", nargs="+", type=Path, required=True, metavar="DIR", help="model folders; ratios are against the first")
    p.add_argument("--engine", default="ort", choices=("ort", "torch"), help="CPU engine for every folder")
    p.add_argument("--precision", default="fp32", choices=("fp32", "int8"), help="graph variant of every folder")
    p.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--audio-seconds", type=float, default=3.0, help="length of each clip, seconds")
    p.add_argument("--text-words", type=int, default=12, help="words per transcript (0: audio only)")
    p.add_argument("--rounds", type=int, default=7, help="rounds; every folder is measured once per round")
    p.add_argument("--threads", type=int, default=None, help="intra-op threads per engine (default: the engine's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic clips and transcripts")
    p.add_argument("--out", type=Path, required=True, help="folder for ab.json and ab.md")
    return p


def measure_folder(model_dir: Path, args: argparse.Namespace, workloads: dict[int, tuple[list[bytes], list[str]]]) -> dict[int, float]:
    """Load one folder, measure its end-to-end p50 (ms) at every batch size, close it."""
    kwargs = {"threads": args.threads} if args.threads else {}
    rec = EmotionRecognizer.load(model_dir, engine=args.engine, precision=args.precision, device="cpu", max_batch=max(workloads), **kwargs)
    try:
        out = {}
        for batch, (clips, texts) in workloads.items():
            call = partial(rec.predict, audio=clips, text=texts if args.text_words else None)
            out[batch] = measure(call, ROUND_BUDGET).p50_ms
        return out
    finally:
        rec.close()
        gc.collect()


def summarise(names: list[str], per_round: list[dict[str, dict[int, float]]], batches: list[int]) -> list[dict]:
    """One row per folder and batch size: the median over rounds of the p50, and the ratio
    to the first folder (median, min, max over rounds)."""
    rows = []
    for name in names:
        for b in batches:
            p50s = np.array([r[name][b] for r in per_round])
            ratios = np.array([r[name][b] / r[names[0]][b] for r in per_round])
            rows.append({
                "model_dir": name, "batch": b, "p50_ms_median": float(np.median(p50s)), "p50_ms_min": float(p50s.min()),
                "p50_ms_max": float(p50s.max()), "ratio_to_first_median": float(np.median(ratios)),
                "ratio_to_first_min": float(ratios.min()), "ratio_to_first_max": float(ratios.max()),
            })  # fmt: skip
    return rows


def markdown(report: dict) -> str:
    m = report["machine"]
    lines = [
        "# End-to-end latency, model folders interleaved",
        "",
        f"`{report['command']}`",
        "",
        (
            f"Machine: {m['cpu'].get('model', '?')}, {m['cpu'].get('usable_cores', '?')} usable cores; "
            f"engine {report['settings']['engine']} {report['settings']['precision']}; {report['settings']['rounds']} rounds; "
            f"{report['settings']['audio_seconds']:g}-s clips, {report['settings']['text_words']} words; "
            f"load average {report['loadavg_start']} -> {report['loadavg_end']}; {report['started_utc']}."
        ),
        "",
        "| model folder | batch | p50 ms (median of rounds) | p50 range over rounds | ratio to the first (median) | ratio range |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for r in report["rows"]:
        lines.append(
            f"| `{r['model_dir']}` | {r['batch']} | {r['p50_ms_median']:.2f} | {r['p50_ms_min']:.2f}-{r['p50_ms_max']:.2f} "
            f"| {r['ratio_to_first_median']:.3f} | {r['ratio_to_first_min']:.3f}-{r['ratio_to_first_max']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else argv
    args = parser.parse_args(argv)
    try:
        batches = [int(b) for b in args.batch.split(",") if b.strip()]
        if not batches or min(batches) < 1:
            raise ValueError
    except ValueError:
        parser.error(f"--batch must be comma-separated positive integers, got {args.batch!r}")
    if args.rounds < 1:
        parser.error("--rounds must be at least 1")
    if len(args.model_dirs) < 2:
        parser.error("--model-dirs needs at least two folders to compare")
    for d in args.model_dirs:
        if not (d / "spec.json").is_file():
            parser.error(f"{d} is not a model folder (no spec.json)")
    names = [str(d) for d in args.model_dirs]
    workloads = {b: make_requests(Workload(b, args.audio_seconds, args.text_words, seed=args.seed)) for b in batches}
    started, load_start = datetime.now(timezone.utc).isoformat(timespec="seconds"), loadavg()
    per_round: list[dict[str, dict[int, float]]] = []
    for k in range(args.rounds):
        order = names[k % len(names) :] + names[: k % len(names)]
        measured = {name: measure_folder(Path(name), args, workloads) for name in order}
        per_round.append(measured)
        print(f"round {k + 1}/{args.rounds}: " + "; ".join(f"{n} " + ", ".join(f"b{b} {measured[n][b]:.2f} ms" for b in batches) for n in names), flush=True)
    info = machine_info()
    report = {
        "command": "python -m benchmarks.ab " + " ".join(shlex.quote(a) for a in argv),
        "code": code_version(),
        "machine_slug": machine_slug(info),
        "machine": info,
        "started_utc": started,
        "loadavg_start": load_start,
        "loadavg_end": loadavg(),
        "settings": {"engine": args.engine, "precision": args.precision, "batches": batches, "audio_seconds": args.audio_seconds,
                     "text_words": args.text_words, "rounds": args.rounds, "threads": args.threads, "seed": args.seed,
                     "budget_per_round": asdict(ROUND_BUDGET)},
        "per_round": [{n: {str(b): v for b, v in r[n].items()} for n in names} for r in per_round],
        "rows": summarise(names, per_round, batches),
    }  # fmt: skip
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ab.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / "ab.md").write_text(markdown(report))
    print(markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
