"""``report.md`` of an ``export.evaluate`` run, rendered from its ``metrics.json`` alone."""

from __future__ import annotations

import json
from pathlib import Path


def pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}"


def results_table(results: dict) -> list[str]:
    rows = [
        "| set | mode | n | UA | accuracy | macro-F1 | ECE before | ECE after (T) | predicted neutral | certain: coverage / accuracy |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, r in results.items():
        u = r["uncertain"]
        rows.append(
            f"| {r['title']} (`{name}`) | {r['mode']} | {r['n']} | {pct(r['unweighted_accuracy'])} | {pct(r['accuracy'])} | {pct(r['macro_f1'])} | "
            f"{r['ece_before']:.3f} | {r['ece_after']:.3f} ({r['temperature']:.2f}) | {pct(r['predicted_share'].get('neutral'))} | "
            f"{pct(u['coverage'])} / {pct(u['accuracy_certain'])} |"
        )
    return rows


def recall_table(results: dict, labels: list[str]) -> list[str]:
    rows = ["| set | " + " | ".join(labels) + " |", "|---|" + "---:|" * len(labels)]
    for name, r in results.items():
        cells = [f"{pct(r['per_class'][c]['recall'])} ({r['per_class'][c]['support']})" if r["per_class"][c]["support"] else "-" for c in labels]
        rows.append(f"| `{name}` | " + " | ".join(cells) + " |")
    return rows


def robustness_table(results: dict, robust: dict) -> list[str]:
    conditions = list(dict.fromkeys(r["condition"] for r in robust.values()))
    rows = ["| set | clean UA / acc | " + " | ".join(f"{c} UA / acc" for c in conditions) + " |", "|---|---:|" + "---:|" * len(conditions)]
    for name in dict.fromkeys(r["set"] for r in robust.values()):
        clean = results[name]
        cells = [f"{pct(robust[f'{name}@{c}']['unweighted_accuracy'])} / {pct(robust[f'{name}@{c}']['accuracy'])}" if f"{name}@{c}" in robust else "-" for c in conditions]
        rows.append(f"| `{name}` | {pct(clean['unweighted_accuracy'])} / {pct(clean['accuracy'])} | " + " | ".join(cells) + " |")
    return rows


def curve_table(results: dict) -> list[str]:
    names = list(results)
    thresholds = [row["threshold"] for row in next(iter(results.values()))["uncertain"]["curve"]]
    rows = [
        "| top score >= | " + " | ".join(f"`{n}` coverage / accuracy / accuracy below" for n in names) + " |",
        "|---:|" + "---:|" * len(names),
    ]
    for i, t in enumerate(thresholds):
        cells = []
        for n in names:
            c = results[n]["uncertain"]["curve"][i]
            cells.append(f"{pct(c['coverage'])} / {pct(c['accuracy'])} / {pct(c['accuracy_below'])}")
        rows.append(f"| {t:.2f} | " + " | ".join(cells) + " |")
    return rows


def render(metrics: dict) -> str:
    results, robust, labels = metrics["results"], metrics.get("robustness", {}), metrics["labels"]
    engine = metrics["engine"]
    lines = [
        f"# Evaluation of {metrics['model_dir']}",
        "",
        f"Command: `{metrics['command']}`  ",
        f"Engine: {engine.get('engine')} {engine.get('precision')} on {engine.get('device')}; {metrics['seconds']} s.",
        "",
        "## Results",
        "",
        *results_table(results),
        "",
        "UA = unweighted accuracy (mean recall over the classes present). ECE = expected calibration error (15 bins)",
        "of the top score at T = 1 and at the model's temperature for the mode. Predicted neutral = share of all",
        "items predicted neutral. Certain = items not flagged `uncertain` (top score at or above the model's",
        "threshold for the mode): their share and accuracy.",
        "",
        "Recall per class, % (items):",
        "",
        *recall_table(results, labels),
        "",
        "Confusion matrices: `confusion_*.png` beside this file.",
    ]
    if robust:
        lines += ["", "## Robustness (the same items through a fixed channel; noise seeded per item)", "", *robustness_table(results, robust)]
    lines += [
        "",
        "## Uncertain flag",
        "",
        "| set | model's threshold | coverage | accuracy certain | accuracy uncertain | this set's rule threshold |",
        "|---|---:|---:|---:|---:|---:|",
        *(
            f"| `{n}` | {r['uncertain']['threshold']:.2f} | {pct(r['uncertain']['coverage'])} | {pct(r['uncertain']['accuracy_certain'])} | "
            f"{pct(r['uncertain']['accuracy_uncertain'])} | {r['uncertain']['rule_threshold']:.2f} |"
            for n, r in results.items()
        ),
        "",
        "Rule threshold: the upper edge of the highest 0.05-wide top-score bin (of at least 10 items) of this set",
        "whose predictions are right less than half the time (`export.metrics.uncertain_threshold`); the model's",
        "threshold comes from its validation data by the same rule. The rule on all of this run's sets of a mode",
        "together: " + ", ".join(f"{m} {t:.2f}" for m, t in metrics.get("uncertain_rule", {}).items()) + ".",
        "",
        "Coverage and accuracy of the items whose calibrated top score is at least each threshold (and the",
        "accuracy of the items below it), %:",
        "",
        *curve_table(results),
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    """Re-render ``report.md`` from a ``metrics.json`` (``python -m export.report FOLDER``)."""
    import argparse

    p = argparse.ArgumentParser(prog="python -m export.report", description=main.__doc__)
    p.add_argument("folder", type=Path, help="an export.evaluate output folder")
    args = p.parse_args(argv)
    (args.folder / "report.md").write_text(render(json.loads((args.folder / "metrics.json").read_text())))


if __name__ == "__main__":
    main()
