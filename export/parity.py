"""Parity table: every engine and precision that runs here against the FP32 ONNX reference.

    python -m export.parity --model-dir weights/emotech --out weights/emotech/eval/parity.json

Rows: ONNX Runtime CPU FP16 / INT8 graphs (whichever the folder has), PyTorch CPU FP32,
and, where available, PyTorch CUDA, ONNX Runtime CUDA and TensorRT at each precision.
Each row gives, on RAVDESS test actors 21-24 (audio only) and GoEmotions test (text only),
the unweighted accuracy, the label agreement with FP32 and the max calibrated-score
difference. Engines that cannot run here are listed with the reason, never faked.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

from export.data import DEFAULT_DATA_ROOT
from export.compare import compare_with_fp32
from runtime import cli
from runtime.errors import EmotionError
from runtime.recognizer import EmotionRecognizer

CANDIDATES = [  # (row name, engine, precision, device)
    ("torch-cpu-fp32", "torch", "fp32", "cpu"),
    ("torch-cuda-fp32", "torch", "fp32", "cuda"),
    ("torch-cuda-fp16", "torch", "fp16", "cuda"),
    ("ort-cuda-fp32", "ort", "fp32", "cuda"),
    ("trt-fp32", "trt", "fp32", "cuda"),
    ("trt-fp16", "trt", "fp16", "cuda"),
    ("trt-int8", "trt", "int8", "cuda"),
]


def run(model_dir: Path | None, data_root: Path, limit: int | None) -> dict:
    rec = EmotionRecognizer.load(model_dir)
    variants: dict = {f"ort-cpu-{p}": rec.spec.graph_file("fused", p) for p in ("fp16", "int8") if p in rec.spec.graphs["fused"]}
    skipped = {}
    for name, engine, precision, device in CANDIDATES:
        try:
            variants[name] = EmotionRecognizer.load(model_dir, engine=engine, precision=precision, device=device).engine
        except (EmotionError, ValueError) as e:
            skipped[name] = str(e)
    result = compare_with_fp32(rec, variants, data_root, limit)
    result["skipped"] = skipped
    result["machine"] = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(), "python": platform.python_version()}
    result["versions"] = {k: v for k, v in rec.spec.raw.get("versions", {}).items() if k in ("onnxruntime", "torch")}
    return result


def markdown(result: dict) -> str:
    audio, text = result["modes"]["audio"], result["modes"]["text"]
    rows = [
        "| engine / precision | audio UA | agreement | max score diff | text UA | agreement | max score diff |",
        "|---|---:|---:|---:|---:|---:|---:|",
        f"| ort-cpu-fp32 (reference) | {audio['fp32']['unweighted_accuracy']:.4f} | – | – | {text['fp32']['unweighted_accuracy']:.4f} | – | – |",
    ]
    for name in audio:
        if name in ("fp32", "title", "n"):
            continue
        a, t = audio[name], text[name]
        rows.append(
            f"| {name} | {a['unweighted_accuracy']:.4f} | {a['label_agreement_vs_fp32']:.4f} | {a['max_score_diff_vs_fp32']:.1e} | "
            f"{t['unweighted_accuracy']:.4f} | {t['label_agreement_vs_fp32']:.4f} | {t['max_score_diff_vs_fp32']:.1e} |"
        )
    return "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("python -m export.parity", __doc__.split("\n\n")[0])
    cli.add_model_args(p, engine=False, precision=False, device=False)
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="folder holding ravdess/ and text/")
    p.add_argument("--limit", type=int, default=None, help="seeded subsample per test set (default: every item)")
    p.add_argument("--out", type=Path, default=Path("parity.json"), help="JSON report; a Markdown table is written beside it")
    args = p.parse_args(argv)
    result = run(args.model_dir, args.data_root, args.limit)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    table = markdown(result)
    args.out.with_suffix(".md").write_text(table)
    print(table)
    for name, why in result["skipped"].items():
        print(f"not run: {name}: {why}")


if __name__ == "__main__":
    main()
