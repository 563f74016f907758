"""The model zoo's comparison table: every folder through the runtime, on the same data.

    python -m export.zoo.compare --model-dirs weights/emotech weights/seed001-lr weights/seed001-rf \\
        weights/seed004-svm --latency-root benchmarks/results/zoo --out benchmarks/results/zoo

Per folder, with ONNX Runtime on the CPU (FP32), through ``EmotionRecognizer``'s own
``prepare`` / ``build_feed`` / engine, as ``export.evaluate`` does:

- audio-only UA on RAVDESS test actors 21-24 (240 clips);
- text-only macro-F1 on GoEmotions Ekman test (single-label rows, 4968 texts);
- paired UA: each RAVDESS test clip with a GoEmotions test text of its label, drawn by
  ``random.Random(0)`` in clip order (``export.evaluate``'s congruent pairing);
- cross-corpus UA on all of nEMO (4481 Polish clips, nine speakers, audio only, no disgust:
  UA over its six classes); no model here was trained on it;
- ECE (15 bins) of the calibrated audio-only scores on RAVDESS test;
- parameters and the FP32 graph's size;
- batch-1 and batch-32 end-to-end p50 latency (and engine-call p50) from each folder's
  ``python -m benchmarks.latency`` run in ``--latency-root/<folder name>/latency.json``.

Writes ``accuracy.json`` (all metrics, per folder), ``table.md`` and ``accuracy_vs_latency.png``
to ``--out``. Accuracy already in ``accuracy.json`` for a folder whose files have not changed
is reused (``--force`` recomputes).
"""

from __future__ import annotations

import json
import logging
import random
from pathlib import Path
from typing import Any

import numpy as np

from export import data
from export.metrics import classification_report, expected_calibration_error
from export.zoo import corpora
from runtime import cli
from runtime.frontend import FrontendConfig
from runtime.postprocess import calibrated_probs
from runtime.recognizer import EmotionRecognizer, Item

logger = logging.getLogger(__name__)
PAIRING_SEED = 0  # export.evaluate's default --seed


def logits(rec: EmotionRecognizer, items: list[Item], batch: int = 32) -> np.ndarray:
    """Engine logits in item order, in length-sorted batches of ``batch``."""
    order = sorted(range(len(items)), key=lambda i: (0 if items[i].audio is None else items[i].audio.size, len(items[i].text or "")))
    out = np.zeros((len(items), len(rec.labels)), dtype=np.float32)
    for s in range(0, len(order), batch):
        idx = order[s : s + batch]
        out[idx] = rec.engine.infer(rec.build_feed([items[i] for i in idx]))
    return out


def parameters(spec: dict, root: Path) -> int:
    """Fitted numbers of a folder: the tensor elements of its PyTorch weights, or the count a
    scikit-learn system records in ``spec.json``."""
    counted = spec.get("model", {}).get("parameters", {})
    if "total" in counted:
        return int(counted["total"])
    from safetensors import safe_open

    with safe_open(str(root / spec["weights"]), "np") as f:
        return int(sum(np.prod(f.get_slice(k).get_shape()) for k in f.keys()))  # noqa: SIM118 (safe_open has keys(), not iteration)  # noqa: SIM118 (safe_open has keys(), no __iter__)


def evaluate_folder(model_dir: Path, sets: dict[str, Any]) -> dict[str, Any]:
    """Every accuracy metric of one folder (see the module doc)."""
    rec = EmotionRecognizer.load(model_dir, engine="ort", precision="fp32", device="cpu")
    try:
        spec = rec.spec
        labels = list(rec.labels)
        ravdess, nemo, text = sets["ravdess"], sets["nemo"], sets["text"]
        y_audio = ravdess.labels
        audio_items = [Item(c, None) for c in sets["ravdess_clips"]]
        z_audio = logits(rec, audio_items)
        audio = classification_report(y_audio, z_audio.argmax(1), labels)
        probs = calibrated_probs(z_audio, np.full(len(z_audio), spec.temperature["audio"]))
        z_text = logits(rec, [Item(None, t) for t in text.texts])
        text_report = classification_report(text.labels, z_text.argmax(1), labels)
        z_pair = logits(rec, [Item(c, t) for c, t in zip(sets["ravdess_clips"], sets["paired_texts"])])
        paired = classification_report(y_audio, z_pair.argmax(1), labels)
        z_nemo = logits(rec, [Item(c, None) for c in sets["nemo_clips"]])
        nemo_report = classification_report(nemo.labels, z_nemo.argmax(1), labels)
        graph = spec.graph_file("fused", "fp32")
        return {
            "model_dir": str(model_dir),
            "architecture": spec.raw.get("model", {}).get("architecture"),
            "files": spec.files,
            "audio_ua": audio["unweighted_accuracy"],
            "audio_ece": expected_calibration_error(probs, y_audio),
            "text_macro_f1": text_report["macro_f1"],
            "paired_ua": paired["unweighted_accuracy"],
            "nemo_ua": nemo_report["unweighted_accuracy"],
            "n": {"audio": len(y_audio), "text": len(text.labels), "paired": len(y_audio), "nemo": len(nemo.labels)},
            "parameters": parameters(spec.raw, spec.root),
            "graph_mb": graph.stat().st_size / 1e6,
            "engine": rec.engine.describe(),
            "reports": {"audio": audio, "text": text_report, "paired": paired, "nemo": nemo_report},
        }
    finally:
        rec.close()


def congruent_texts(labels: np.ndarray, text: corpora.TextSet, seed: int = PAIRING_SEED) -> list[str]:
    """For each label, a text of that label drawn by ``random.Random(seed)`` in order
    (``export.evaluate``'s congruent pairing)."""
    by_label: dict[int, list[str]] = {}
    for t, y in zip(text.texts, text.labels):
        by_label.setdefault(int(y), []).append(t)
    rng = random.Random(seed)
    return [rng.choice(by_label[int(y)]) for y in labels]


def load_sets(data_root: Path, labelset: data.LabelSet, frontend: FrontendConfig) -> dict[str, Any]:
    """The test sets, decoded once for every folder (``frontend``: the folders' shared one)."""
    ravdess = corpora.ravdess(data_root, labelset, frontend)["test"]
    text = corpora.goemotions(data_root, labelset)["test"]
    paired = congruent_texts(ravdess.labels, text)
    nemo = corpora.nemo(data_root, labelset, frontend)
    logger.info("decoding %d RAVDESS test and %d nEMO clips", len(ravdess.items), len(nemo.items))
    return {"ravdess": ravdess, "ravdess_clips": ravdess.clips, "text": text, "paired_texts": paired, "nemo": nemo, "nemo_clips": nemo.clips}


def latency(root: Path | None, name: str) -> dict[str, float | None]:
    """p50 and min end-to-end and engine-call latency (ms) at batch 1 and 32 from one folder's
    ``benchmarks.latency`` run, with the run's command and the most CPU other processes took
    during any of those rows (% of all cores)."""
    out: dict[str, Any] = {}
    path = None if root is None else root / name / "latency.json"
    if path is None or not path.is_file():
        return out
    report = json.loads(path.read_text())
    for row in report["results"]:
        if row.get("engine") == "ort" and row.get("precision") == "fp32" and row["batch"] in (1, 32) and row["stage"] in ("end_to_end", "infer"):
            out[f"{row['stage']}_b{row['batch']}_p50_ms"] = row["p50_ms"]
            out[f"{row['stage']}_b{row['batch']}_min_ms"] = row["min_ms"]
            out["max_other_cpu_pct"] = max(out.get("max_other_cpu_pct", 0.0), row.get("other_cpu_pct") or 0.0)
    out["source"] = str(path)
    out["command"] = report.get("command")
    return out


def table(rows: list[dict[str, Any]]) -> str:
    """The Markdown comparison table."""
    head = ("| folder | architecture | audio UA | text macro-F1 | paired UA | nEMO UA | ECE (audio) | parameters | graph MB "
            "| b1 e2e ms p50 (min) | b32 e2e ms p50 (min) | b1 engine ms p50 (min) | b32 engine ms p50 (min) | other procs CPU % |\n"
            "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")  # fmt: skip
    lines = [head]

    def ms(lat: dict, key: str, f: str) -> str:
        p50, low = lat.get(f"{key}_p50_ms"), lat.get(f"{key}_min_ms")
        return "not measured" if p50 is None else f"{p50:{f}} ({low:{f}})"

    for r in rows:
        lat = r.get("latency", {})
        other = lat.get("max_other_cpu_pct")
        lines.append(
            f"| `{Path(r['model_dir']).name}` | {r['architecture']} | {r['audio_ua']:.3f} | {r['text_macro_f1']:.3f} | {r['paired_ua']:.3f} "
            f"| {r['nemo_ua']:.3f} | {r['audio_ece']:.3f} | {r['parameters']:,} | {r['graph_mb']:.1f} "
            f"| {ms(lat, 'end_to_end_b1', '.1f')} | {ms(lat, 'end_to_end_b32', '.0f')} | {ms(lat, 'infer_b1', '.1f')} | {ms(lat, 'infer_b32', '.0f')} "
            f"| {'not measured' if other is None else format(other, '.0f')} |"
        )
    return "\n".join(lines) + "\n"


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    """Audio-only UA against batch-1 end-to-end p50 latency, one point per folder."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    for r in rows:
        ms = r.get("latency", {}).get("end_to_end_b1_p50_ms")
        if ms is None:
            continue
        ax.scatter(ms, r["audio_ua"], s=40)
        ax.annotate(Path(r["model_dir"]).name, (ms, r["audio_ua"]), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.set_xlabel("batch-1 end-to-end p50 latency, ms (3 s clip + 12 words, ONNX Runtime CPU FP32)")
    ax.set_ylabel("RAVDESS test audio-only UA")
    ax.set_title("Model zoo: accuracy vs latency")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> None:
    p = cli.parser("python -m export.zoo.compare", "Evaluate model folders on the same test sets and tabulate them with their latency.")
    p.add_argument("--model-dirs", type=Path, nargs="+", required=True, help="model folders to compare")
    p.add_argument("--data-root", type=Path, default=data.DEFAULT_DATA_ROOT, help="folder with ravdess/, text/ and nemo/")
    p.add_argument("--latency-root", type=Path, default=None, help="folder holding NAME/latency.json per model folder NAME")
    p.add_argument("--out", type=Path, required=True, help="folder for accuracy.json, table.md and accuracy_vs_latency.png")
    p.add_argument("--force", action="store_true", help="recompute accuracy even for unchanged folders")
    cli.add_logging_args(p)
    args = p.parse_args(argv)
    cli.configure_logging(args, default=logging.INFO)
    args.out.mkdir(parents=True, exist_ok=True)
    store = args.out / "accuracy.json"
    known = json.loads(store.read_text()) if store.is_file() and not args.force else {}
    labelset = data.load_labelset("emotech7")
    sets = None
    rows = []
    for model_dir in args.model_dirs:
        name = model_dir.name
        spec = json.loads((model_dir / "spec.json").read_text())
        row = known.get(name)
        if row is None or row.get("files") != spec["files"]:
            frontend = FrontendConfig.from_dict(spec["frontend"])
            if sets is None:
                sets = load_sets(args.data_root, labelset, frontend)
            elif frontend != sets["ravdess"].frontend:  # the clips were decoded and trimmed for another front-end
                raise SystemExit(cli.fail(f"{model_dir}: its front-end differs from the first folder's; compare it in a separate run"))
            row = evaluate_folder(model_dir, sets)
            known[name] = row
            store.write_text(json.dumps(known, indent=2) + "\n")
            logger.info("%s: audio UA %.4f, text macro-F1 %.4f, paired UA %.4f, nEMO UA %.4f", name, row["audio_ua"], row["text_macro_f1"], row["paired_ua"], row["nemo_ua"])
        rows.append({**row, "latency": latency(args.latency_root, name)})
    (args.out / "table.md").write_text(table(rows))
    plot(rows, args.out / "accuracy_vs_latency.png")
    print(table(rows), end="")


if __name__ == "__main__":
    main()
