"""Reduced-precision variants of a model folder's graphs: FP16 and INT8 (Q/DQ).

    python -m export.quantize --precision fp16 --model-dir weights/emotech
    python -m export.quantize --precision int8 --model-dir weights/emotech

TensorRT 11 has neither builder precision flags nor INT8 calibrators: precision is in the
ONNX graph itself, for a strongly typed network. FP16 keeps the front-end and the
overflow-prone reductions in FP32 (``export.fp16``); INT8 puts calibrated Q/DQ pairs on
Conv/MatMul/Gemm outside the front-end (``export.int8``). Each variant is checked against
TensorRT 10.3's parser rules, compared with FP32 on RAVDESS test actors 21-24 (audio only)
and GoEmotions test (text only) with ONNX Runtime on CPU (``export.compare``), and
registered in ``spec.json`` (``export.variants``) only when it loses at most
--max-ua-loss of unweighted accuracy (else the command exits 1; --force registers anyway).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from export.cli import add_logging_arguments, command_line, configure_logging
from export.compare import MAX_UA_LOSS
from export.int8 import CALIBRATION_METHODS
from export.variants import PRECISIONS
from runtime import cli


def build_parser() -> argparse.ArgumentParser:
    from export.data import DEFAULT_DATA_ROOT

    p = cli.parser("python -m export.quantize", __doc__)
    p.add_argument("--precision", required=True, choices=PRECISIONS, help="precision of the variant to write")
    p.add_argument("--model-dir", type=Path, required=True, help="model folder with FP32 graphs (the variant is written into it)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="the model's training corpora (calibration) and RAVDESS/nEMO/GoEmotions test (evaluation)")
    p.add_argument("--graphs", nargs="*", default=None, help="graphs to convert; none named converts every FP32 graph in the spec")
    p.add_argument("--calib-audio", type=int, default=240, help="training clips for INT8 calibration, shared equally by the model's audio corpora")
    p.add_argument("--calib-text", type=int, default=480, help="training texts for INT8 calibration, shared equally by the model's text corpora")
    p.add_argument("--method", default="minmax", choices=CALIBRATION_METHODS, help="INT8 activation calibration")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on a seeded subsample of this many items per test set (smoke runs); none means the whole test sets")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy comparison (the variant is then registered unchecked)")
    p.add_argument("--max-ua-loss", type=float, default=MAX_UA_LOSS, help="largest unweighted-accuracy loss vs FP32 (a fraction) allowed to register")
    p.add_argument("--force", action="store_true", help="register the variant even if it exceeds --max-ua-loss")
    add_logging_arguments(p)
    return p


def main(argv: list[str] | None = None) -> int:
    from export.compare import compare_with_fp32
    from export.data import trained_corpora
    from export.variants import discard_variants, make_variants, register_variants
    from runtime.recognizer import EmotionRecognizer

    args = build_parser().parse_args(argv)
    configure_logging(args)
    command = command_line("python -m export.quantize", argv)
    written = make_variants(args.model_dir, args.precision, args.data_root, args.graphs, args.calib_audio, args.calib_text, args.method)
    report: dict = {"command": command, "method": args.method if args.precision == "int8" else "fp16-with-fp32-frontend"}
    if args.precision == "int8":
        audio_corpora, text_corpora = trained_corpora(json.loads((args.model_dir / "spec.json").read_text()))
        report["calibration"] = {"audio_clips": args.calib_audio, "texts": args.calib_text, "data": "training splits of " + " + ".join(audio_corpora + text_corpora)}
    ok = True
    if not args.no_eval and "fused" in written and args.data_root.is_dir():
        rec = EmotionRecognizer.load(args.model_dir, engine="ort", precision="fp32")
        try:
            ev = compare_with_fp32(rec, {args.precision: written["fused"]}, args.data_root, args.eval_limit)
        finally:
            rec.close()
        report["eval"] = ev
        for mode, res in ev["modes"].items():
            r32, rq = res["fp32"], res[args.precision]
            print(
                f"{mode:>10} (n={res['n']}): UA fp32 {r32['unweighted_accuracy']:.4f} {args.precision} {rq['unweighted_accuracy']:.4f} "
                f"(loss {rq['ua_loss_vs_fp32'] * 100:+.2f} pt), agreement {rq['label_agreement_vs_fp32']:.4f}, max |score diff| {rq['max_score_diff_vs_fp32']:.2e}",
                flush=True,
            )
            ok &= rq["ua_loss_vs_fp32"] <= args.max_ua_loss
    elif not args.no_eval:
        print(f"accuracy comparison skipped: no fused graph converted or no data at {args.data_root}", flush=True)
    if not ok and not args.force:
        discard_variants(written)
        print(f"NOT registered: {args.precision} loses more than {args.max_ua_loss * 100:.1f} pt of unweighted accuracy (use --force to register anyway)")
        return 1
    written = register_variants(args.model_dir, written, args.precision, report)
    print(f"registered {args.precision}: " + ", ".join(f"{g}={path.name}" for g, path in written.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
