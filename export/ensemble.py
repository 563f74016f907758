"""Combine separately trained EmoTech members into one ensemble model folder.

    python -m export.train --seed 0 --out runs/m0
    python -m export.train --seed 1 --text-from runs/m0 --out runs/m1
    python -m export.train --seed 2 --text-from runs/m0 --out runs/m2
    python -m export.ensemble --members runs/m0 runs/m1 runs/m2 --out runs/ensemble

Why an ensemble: with RAVDESS's 18 training speakers, one network's held-out-speaker
accuracy moves by several points from seed to seed, and the mean of a few networks'
logits is both better and steadier than a single one (docs/training.md).
The members share the MFCC front-end and the text block (members after the first are
trained with the first one's text block frozen, ``--text-from``), so a request pays for
the front-end, the tokeniser and the text block once and for each member's audio block and
fusion head; the folder holds one token-embedding table.

The ensemble is validated and calibrated (one temperature per mode) on the validation
splits of the data options given here (use the members' own), then written with its
fused ONNX graph checked against PyTorch, exactly like ``export.train`` output.
"""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch

from export import data
from export.bundle import load_torch_model
from export.cli import HelpFormatter, add_logging_arguments, command_line, configure_logging
from export.config import DataConfig
from export.model import EmoTech, EmoTechEnsemble
from export.selection import AudioPool, calibrate, validation_score
from export.train import add_data_arguments, data_config_from_args, write_model_folder
from runtime.frontend import FrontendConfig
from runtime.text import TextEncoder

logger = logging.getLogger(__name__)


def load_members(dirs: list[Path]) -> tuple[list[EmoTech], list[dict]]:
    """The members' models and specs.

    Raises:
        ValueError: a member is itself an ensemble, or members disagree on labels or tokenizer.
    """
    models, specs = [], []
    for d in dirs:
        model, spec = load_torch_model(d)
        if not isinstance(model, EmoTech):
            raise ValueError(f"{d}: an ensemble member must be a single EmoTech folder, found {model.architecture}")
        models.append(model)
        specs.append(spec)
    first = specs[0]
    for d, spec in zip(dirs[1:], specs[1:]):
        if spec["labels"] != first["labels"]:
            raise ValueError(f"{d}: labels {spec['labels']} differ from {dirs[0]}'s {first['labels']}")
        if spec["files"][spec["text"]["tokenizer"]] != first["files"][first["text"]["tokenizer"]]:
            raise ValueError(f"{d}: its tokenizer differs from {dirs[0]}'s (train members with --text-from {dirs[0]})")
    return models, specs


def member_summary(model_dir: Path, spec: dict) -> dict:
    """What the ensemble's spec keeps of a member's training record."""
    t = spec.get("training", {})
    keep = ("command", "selected", "best_val_score", "train_seconds", "text_block_from", "history")
    return {"model_dir": str(model_dir), "seed": t.get("config", {}).get("seed"), **{k: t.get(k) for k in keep}}


def build_ensemble(
    members: list[str | Path],
    data_cfg: DataConfig,
    out: str | Path,
    *,
    seed: int = 0,
    threads: int | None = None,
    command: str | None = None,
) -> Path:
    """Combine the EmoTech folders ``members`` (the first one's text block is shared),
    validate and calibrate the ensemble on ``data_cfg``'s validation splits (``seed``: the
    congruent text pairing's), and write it to ``out``.

    Raises:
        ValueError: members that cannot be combined, or a label set other than theirs.
    """
    dirs = [Path(d) for d in members]
    models, specs = load_members(dirs)
    try:
        ensemble = EmoTechEnsemble.from_members(models).eval()
    except ValueError as e:
        raise ValueError(f"cannot combine {', '.join(map(str, dirs))}: {e}") from e
    first = specs[0]
    labelset = data.load_labelset(data_cfg.labelset)
    if list(labelset.labels) != first["labels"]:
        raise ValueError(f"label set {data_cfg.labelset} has labels {list(labelset.labels)}, the members {first['labels']}")
    if threads:
        torch.set_num_threads(threads)
    corpora = data.load_corpora(data_cfg, labelset)
    frontend = FrontendConfig.from_dict(first["frontend"])
    val_pool = AudioPool(corpora.audio["val"], frontend, "val")
    text_val = corpora.text["val"]
    tok_file = dirs[0] / first["text"]["tokenizer"]
    max_tokens = first["text"]["max_tokens"]
    encoder = TextEncoder(tok_file, max_tokens=max_tokens)

    validation = {}
    for name, model in [*((f"member {i}", m) for i, m in enumerate(models)), ("ensemble", ensemble)]:
        score, summary = validation_score(model, encoder, val_pool, text_val, labelset.labels, seed)
        validation[name] = {"score": round(score, 4), **summary}
        logger.info("%s: val %s score %.4f", name, summary, score)
    calibration = calibrate(ensemble, encoder, val_pool, text_val, seed)
    training = {
        **{k: first.get("training", {}).get(k) for k in ("labelset", "audio_corpus", "text_corpus", "data", "audio_train_items", "audio_train_items_per_corpus", "text_train_items", "config", "augment")},
        "ensemble": {"members": [member_summary(d, s) for d, s in zip(dirs, specs)], "validation": validation},
        "best_val_score": validation["ensemble"]["score"],
        "selected": f"mean of the logits of {len(models)} members",
        "command": command,
        "train_seconds": sum(s.get("training", {}).get("train_seconds") or 0 for s in specs),
    }
    return write_model_folder(ensemble, Path(out), tuple(first["labels"]), tok_file, max_tokens, calibration, training)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m export.ensemble",
        description="Combine trained EmoTech members (sharing one text block) into an ensemble model folder.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--members", nargs="+", required=True, help="member model folders; the first one's text block is shared")
    p.add_argument("--out", required=True, help="model folder to write (never defaults to the shipped weights)")
    add_data_arguments(p)
    p.add_argument("--seed", type=int, default=0, help="seed of the congruent text pairing in validation")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    add_logging_arguments(p)
    return p


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    try:
        data_cfg = data_config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    build_ensemble(args.members, data_cfg, args.out, seed=args.seed, threads=args.threads, command=command_line("python -m export.ensemble", argv))


if __name__ == "__main__":
    main()
