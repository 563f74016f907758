"""Command line: emotion of audio files, optionally with a transcript.

    python -m runtime.predict clip.wav other.flac --text "I can't believe it" --json
    python -m runtime.predict clip.wav --asr pocketsphinx --json    # transcript from a speech recogniser

One line per file (with --json, one JSON object per line). A file that cannot be used
gets a one-line error on stderr; the others still get their results, and the exit code
is 1 if any file failed (2 for a usage or model error).
"""

from __future__ import annotations

import argparse
import json
import sys

from runtime import cli
from runtime.asr import add_asr_argument
from runtime.errors import EmotionError


def build_parser() -> argparse.ArgumentParser:
    p = cli.parser("python -m runtime.predict", "Speech emotion recognition on audio files, with or without a transcript.",
                   epilog="example: python -m runtime.predict examples/espeak_angry_words.wav --json")
    p.add_argument("paths", nargs="*", metavar="PATH", help="audio files (WAV, FLAC, OGG; any sample rate)")
    p.add_argument("--text", default=None, help="transcript used for every file (or alone, with no PATH)")
    p.add_argument("--json", action="store_true", help="one JSON object per line: path, label, scores, uncertain, transcript, "
                   "transcript_source, and modality_scores for a folder whose graph scores each modality on its own")
    add_asr_argument(p)
    cli.add_model_args(p)
    cli.add_fusion_args(p)
    cli.add_logging_args(p)
    return p


def format_line(path: str | None, pred, as_json: bool) -> str:
    if as_json:
        out = {"path": path, "label": pred.label, "scores": {k: round(v, 6) for k, v in pred.scores.items()},
               "uncertain": pred.uncertain, "transcript": pred.transcript, "transcript_source": pred.transcript_source}
        if pred.modality_scores is not None:
            out["modality_scores"] = {m: {k: round(v, 6) for k, v in s.items()} for m, s in pred.modality_scores.items()}
        return json.dumps(out)
    top = sorted(pred.scores.items(), key=lambda kv: -kv[1])[:3]
    detail = " ".join(f"{k}={v:.3f}" for k, v in top)
    heard = f"\t[{pred.transcript_source}] {pred.transcript}" if pred.transcript_source not in (None, "caller") else ""
    doubt = " (uncertain)" if pred.uncertain else ""
    return f"{path or '<text>'}\t{pred.label}{doubt}\t{detail}{heard}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    cli.configure_logging(args)
    if not args.paths and args.text is None:
        return cli.fail("give at least one audio PATH or --text")
    from runtime.recognizer import EmotionRecognizer

    try:
        rec = EmotionRecognizer.load(args.model_dir, engine=args.engine, precision=args.precision, device=args.device, asr=args.asr,
                                     audio_weight=args.audio_weight)
    except (EmotionError, ValueError) as e:
        return cli.fail(str(e))

    failed = 0
    try:
        if not args.paths:
            print(format_line(None, rec.run([rec.prepare(text=args.text)])[0], args.json), flush=True)
        # a batch of files at a time: answers come as they are ready, and memory stays that
        # of one batch of decoded clips however many files are given
        for first in range(0, len(args.paths), rec.max_batch):
            items, names = [], []
            for path in args.paths[first : first + rec.max_batch]:
                try:
                    items.append(rec.prepare(audio=path, text=args.text, name=path))
                    names.append(path)
                except EmotionError as e:
                    print(f"error: {e}", file=sys.stderr)
                    failed += 1
            for name, pred in zip(names, rec.run(items) if items else []):
                print(format_line(name, pred, args.json), flush=True)
    except EmotionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    finally:
        rec.close()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
