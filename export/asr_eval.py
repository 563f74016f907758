"""Word error rate of a transcriber on RAVDESS, and what its transcripts do to emotion accuracy.

    python -m export.asr_eval --data ../shared/data --out benchmarks/results/intel-xeon-2c/asr

For every RAVDESS speech clip of ``--actors`` (default the test actors 21-24: 240 clips;
``1-24`` for all 1440) the clip is
prepared as ``EmotionRecognizer`` prepares it (decoded, resampled to 16 kHz, silence
trimmed) and transcribed by ``--asr`` (default pocketsphinx); the transcript is scored
against the sentence the actor read (RAVDESS has two: "Kids are talking by the door",
"Dogs are sitting by the door"), lower-cased, punctuation other than apostrophes
dropped. WER = word edits (substitutions + deletions + insertions) / reference words,
summed over clips. On ``--ua-actors`` (default the test actors 21-24: 240 clips) the
model scores each clip three ways: audio only, audio + the recognised text (what
``--asr`` does when a caller gives no transcript), and audio + the true sentence; UA is
the mean per-class recall over the 7 classes.

Writes ``clips.jsonl`` (one line per clip, so an interrupted run resumes where it
stopped) and ``summary.json`` under ``--out``, and prints a Markdown summary. Runtime
only: no torch.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import re
import sys
import time
from pathlib import Path

import numpy as np

from export.data import RAVDESS_STATEMENTS, load_labelset, load_ravdess, parse_ravdess_name
from runtime.asr import Transcriber, load_transcriber
from runtime.asr import choices as asr_choices
from runtime.recognizer import EmotionRecognizer, Item
from runtime.spec import package_versions

logger = logging.getLogger(__name__)
_WORD = re.compile(r"[a-z0-9']+")


def words(text: str | None) -> list[str]:
    """Lower-case words, punctuation other than apostrophes dropped."""
    return _WORD.findall((text or "").lower())


def edit_distance(ref: list[str], hyp: list[str]) -> int:
    """Word-level Levenshtein distance (substitutions, deletions, insertions cost 1)."""
    prev = list(range(len(hyp) + 1))
    for i, r in enumerate(ref, 1):
        cur = [i] + [0] * len(hyp)
        for j, h in enumerate(hyp, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (r != h))
        prev = cur
    return prev[-1]


def unweighted_accuracy(y_true: list[int], y_pred: list[int], k: int) -> float:
    """Mean per-class recall over the classes present in ``y_true``."""
    t, p = np.asarray(y_true), np.asarray(y_pred)
    recalls = [float((p[t == c] == c).mean()) for c in range(k) if (t == c).any()]
    return float(np.mean(recalls))


def actor_range(text: str) -> list[int]:
    """'21-24' or '1,3,5' -> actor numbers."""
    out: list[int] = []
    for part in text.split(","):
        lo, _, hi = part.partition("-")
        out += list(range(int(lo), int(hi or lo) + 1))
    return out


def transcribe_all(rec: EmotionRecognizer, asr: Transcriber, clips: list, done: dict[str, dict], sink) -> None:
    """Transcribe each clip not yet in ``done``; append a line per clip to ``sink``."""
    for n, utt in enumerate(clips):
        if utt.path in done:
            continue
        item = rec.prepare(utt.path, name=utt.path)  # decoded, resampled, trimmed: what the recognizer transcribes
        start = time.perf_counter()
        heard = asr.transcribe(item.audio)
        asr_s = time.perf_counter() - start
        f = parse_ravdess_name(Path(utt.path).name)
        row = {"path": utt.path, "actor": int(f["actor"]), "label": utt.label, "reference": RAVDESS_STATEMENTS[f["statement"]],
               "transcript": " ".join(heard.split()), "asr_s": round(asr_s, 4), "audio_s": round(item.audio.size / rec.sample_rate, 4)}
        row["edits"] = edit_distance(words(row["reference"]), words(row["transcript"]))
        done[utt.path] = row
        sink.write(json.dumps(row) + "\n")
        sink.flush()
        if n % 50 == 0:
            logger.info("%d/%d clips transcribed", n + 1, len(clips))


def wer_summary(rows: list[dict]) -> dict:
    ref_words = sum(len(words(r["reference"])) for r in rows)
    edits = sum(r["edits"] for r in rows)
    rtf = np.array([r["asr_s"] / r["audio_s"] for r in rows])
    return {
        "clips": len(rows),
        "reference_words": ref_words,
        "wer": edits / ref_words,
        "sentence_exact": float(np.mean([words(r["transcript"]) == words(r["reference"]) for r in rows])),
        "empty_transcripts": int(sum(not words(r["transcript"]) for r in rows)),
        # transcription seconds per second of audio, one thread; a shared machine's load inflates it
        "real_time_factor": {"min": float(rtf.min()), "p50": float(np.percentile(rtf, 50)), "p90": float(np.percentile(rtf, 90))},
    }


def ua_summary(rec: EmotionRecognizer, rows: list[dict]) -> dict:
    """UA of audio only, audio + recognised text, audio + true sentence on ``rows``."""
    k = len(rec.labels)
    y = [r["label"] for r in rows]
    clips = [rec.prepare(r["path"], name=r["path"]).audio for r in rows]
    conditions = {
        "audio": [Item(a, None) for a in clips],
        "audio+asr": [Item(a, r["transcript"] if rec.encoder.has_words(r["transcript"]) else None) for a, r in zip(clips, rows)],
        "audio+true_sentence": [Item(a, r["reference"]) for a, r in zip(clips, rows)],
    }
    out = {}
    for name, items in conditions.items():
        preds = rec.run(items)
        pred = [rec.labels.index(p.label) for p in preds]
        out[name] = {"ua": unweighted_accuracy(y, pred, k),
                     "recall": {rec.labels[c]: float(np.mean([p == c for p, t in zip(pred, y) if t == c])) for c in range(k) if c in y}}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m export.asr_eval", description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--data", type=Path, default=Path("../shared/data"), help="folder holding ravdess/")
    p.add_argument("--out", type=Path, required=True, help="folder for clips.jsonl and summary.json")
    p.add_argument("--asr", default="pocketsphinx", choices=[c for c in asr_choices() if c != "none"])
    p.add_argument("--actors", default="21-24", help="actors whose clips are transcribed for the WER (1-24: all 1440 clips)")
    p.add_argument("--ua-actors", default="21-24", help="actors (a subset of --actors) scored for UA")
    p.add_argument("--model-dir", default=None, help="model folder (default: the bundled weights)")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)

    labelset = load_labelset("emotech7")
    clips = load_ravdess(args.data / "ravdess", labelset, actor_range(args.actors))
    ua_actors = set(actor_range(args.ua_actors))
    if not clips:
        p.error(f"no RAVDESS clips under {args.data / 'ravdess'}")
    rec = EmotionRecognizer.load(args.model_dir, prepare_threads=1)  # no asr: the clips are transcribed here, timed
    asr = load_transcriber(args.asr)[0]
    if tuple(rec.labels) != labelset.labels:
        p.error(f"the model's labels {rec.labels} are not emotech7's {labelset.labels}")
    args.out.mkdir(parents=True, exist_ok=True)
    log_file = args.out / "clips.jsonl"
    done: dict[str, dict] = {}
    if log_file.is_file():
        for line in log_file.read_text().splitlines():
            row = json.loads(line)
            done[row["path"]] = row
    with log_file.open("a") as sink:
        transcribe_all(rec, asr, clips, done, sink)
    rows = [done[u.path] for u in clips]
    ua_rows = [r for r in rows if r["actor"] in ua_actors]
    summary = {
        "command": "python -m export.asr_eval " + " ".join(sys.argv[1:] if argv is None else argv),
        "asr": args.asr,
        "wer": {"all": wer_summary(rows), "ua_actors": wer_summary(ua_rows)},
        "ua": ua_summary(rec, ua_rows),
        "ua_actors": sorted(ua_actors),
        "loadavg_at_end": list(os.getloadavg()),
        "cpu": platform.processor() or platform.machine(),
        "versions": package_versions(("pocketsphinx", "onnxruntime", "numpy", "soxr")),
    }
    (args.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    w, u = summary["wer"], summary["ua"]
    print("| clips | WER | sentences exact | empty | RTF min / p50 / p90 |\n|---|---:|---:|---:|---|")
    for name, s in w.items():
        rtf = s["real_time_factor"]
        print(f"| {name} ({s['clips']}) | {s['wer']:.3f} | {s['sentence_exact']:.3f} | {s['empty_transcripts']} | "
              f"{rtf['min']:.3f} / {rtf['p50']:.3f} / {rtf['p90']:.3f} |")
    print("\n| input | UA |\n|---|---:|")
    for name, s in u.items():
        print(f"| {name} | {s['ua']:.4f} |")
    rec.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
