"""Where an ONNX Runtime engine call spends its time: per part of the model and per op.

    python -m benchmarks.profile --batch 1,32 --out benchmarks/results/<machine>

Runs the shipped fused graph (or ``--model-dir``) with ONNX Runtime's own profiler on the
same requests as ``benchmarks.latency`` (3-s clips sent as 48 kHz WAV, 12-word texts,
decoded and batched by ``EmotionRecognizer``), and sums kernel time by part of the model
(the node-name prefixes the exporter gives each module) and by op type. Writes
``profile.json`` and ``profile.md``. Profiling adds a little overhead per node, so the
shares matter here, not the absolute milliseconds (``benchmarks.latency`` measures those).
"""

from __future__ import annotations

import collections
import json
import re
import tempfile
from pathlib import Path

from benchmarks.machine import machine_info
from benchmarks.workload import Workload, make_requests
from runtime import EmotionRecognizer, cli
from runtime.spec import package_versions

# Node-name prefix -> part of the model, first match wins (names come from export/model.py
# and export/merged.py: a single EmoTech's audio block and an exported ensemble's merged one
# are /audio/, an unmerged ensemble's blocks /audio_blocks.<k>/).
AUDIO = r"/audio(?:_blocks\.\d+)?/"
PARTS = (
    (r"/mfcc/", "MFCC front-end"),
    (AUDIO + "(?:cnn|pool)", "audio 2-D CNN"),
    (AUDIO + "down", "audio strided 1-D convs"),
    (AUDIO + "lstm", "audio BiLSTM"),
    (AUDIO, "audio masks and pooling"),
    (r"/text/", "text block"),
)
_PARTS = tuple((re.compile(pattern), part) for pattern, part in PARTS)


def part_of(node: str) -> str:
    for pattern, part in _PARTS:
        if pattern.match(node):
            return part
    return "fusion, masks and the rest"


def profile_batch(
    rec: EmotionRecognizer, batch: int, audio_seconds: float, text_words: int, iters: int, threads: int | None, tmp: Path
) -> dict:
    import onnxruntime as ort

    clips, texts = make_requests(Workload(batch, audio_seconds, text_words))
    feed = rec.build_feed(rec.prepare_many([(c, t, None, None) for c, t in zip(clips, texts)]))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.inter_op_num_threads = 1
    if threads:
        opts.intra_op_num_threads = threads
    opts.enable_profiling = True
    opts.profile_file_prefix = str(tmp / f"ort_b{batch}")
    sess = ort.InferenceSession(str(rec.spec.graph_file("fused", rec.engine.precision)), sess_options=opts, providers=["CPUExecutionProvider"])
    for _ in range(3):  # warm-up runs are profiled too; dropped below by run index
        sess.run(None, feed)
    for _ in range(iters):
        sess.run(None, feed)
    events = json.loads(Path(sess.end_profiling()).read_text())
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    first = runs[3]["ts"] if len(runs) > 3 else 0
    by_part: collections.Counter = collections.Counter()
    by_op: collections.Counter = collections.Counter()
    by_node: collections.Counter = collections.Counter()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time") or e["ts"] < first:
            continue
        node, op = e["name"][: -len("_kernel_time")], e["args"]["op_name"]
        by_part[part_of(node)] += e["dur"]
        by_op[op] += e["dur"]
        by_node[f"{op} {node}"] += e["dur"]
    total = sum(by_part.values())
    run_ms = sum(r["dur"] for r in runs[3:]) / 1e3 / max(len(runs) - 3, 1)

    def table(counter: collections.Counter, top: int) -> list[dict]:
        return [
            {"name": k, "ms_per_call": round(v / 1e3 / iters, 3), "share": round(v / total, 4)} for k, v in counter.most_common(top)
        ]

    return {
        "batch": batch,
        "iters": iters,
        "run_ms": round(run_ms, 3),
        "kernel_ms": round(total / 1e3 / iters, 3),
        "parts": table(by_part, len(by_part)),
        "ops": table(by_op, 12),
        "nodes": table(by_node, 12),
    }


def render(report: dict) -> str:
    lines = [
        f"# ONNX Runtime profile: {report['name']}",
        "",
        f"Command: `{report['command']}`",
        "",
        (
            f"Graph: `{report['graph']}` ({report['precision']}), onnxruntime {report['versions'].get('onnxruntime', '?')}, "
            f"{report['threads'] or 'default'} intra-op threads. Kernel time summed over {report['results'][0]['iters']} "
            "calls after 3 warm-up calls, divided by the number of calls. Shares are what to read: the profiler's own "
            "overhead inflates the milliseconds."
        ),
        "",
    ]
    for r in report["results"]:
        lines += [f"## Batch {r['batch']}: {r['run_ms']:.2f} ms per call ({r['kernel_ms']:.2f} ms in kernels)", ""]
        for title, key in (("Part of the model", "parts"), ("Op type (top 12)", "ops"), ("Node (top 12)", "nodes")):
            lines += [f"| {title} | ms per call | share |", "|---|---:|---:|"]
            lines += [f"| {x['name']} | {x['ms_per_call']:.3f} | {100 * x['share']:.1f} % |" for x in r[key]]
            lines.append("")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    import shlex
    import sys

    p = cli.parser("python -m benchmarks.profile", __doc__.split("\n\n")[0])
    cli.add_model_args(p, engine=False, device=False)
    p.add_argument("--batch", default="1,32", help="comma-separated batch sizes")
    p.add_argument("--audio-seconds", type=float, default=3.0, help="length of each synthetic clip")
    p.add_argument("--text-words", type=int, default=12, help="words per synthetic transcript")
    p.add_argument("--iters", type=int, default=20, help="profiled runs per batch size")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime intra-op threads (default: all cores)")
    p.add_argument("--out", default=None, help="folder for profile.json / profile.md (default: print only)")
    args = p.parse_args(argv)
    rec = EmotionRecognizer.load(args.model_dir, engine="ort", precision=args.precision, threads=args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        results = [profile_batch(rec, int(b), args.audio_seconds, args.text_words, args.iters, args.threads, Path(tmp)) for b in args.batch.split(",")]
    report = {
        "command": "python -m benchmarks.profile " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:])),
        "name": Path(args.out).name if args.out else machine_info()["cpu"].get("model", "this machine"),
        "machine": machine_info(),
        "graph": rec.spec.graph_file("fused", args.precision).name,
        "precision": args.precision,
        "threads": args.threads,
        "versions": package_versions(("onnxruntime", "numpy")),
        "results": results,
    }
    text = render(report)
    if args.out:
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "profile.json").write_text(json.dumps(report, indent=2) + "\n")
        (out / "profile.md").write_text(text)
    print(text)
    return report


if __name__ == "__main__":
    main()
