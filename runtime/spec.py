"""The model folder contract: ``spec.json`` and the files it lists with their sha256.

``export`` writes the spec; the runtime only reads it, ignoring keys it does not know.
Loading verifies the hash of every listed file that is present, so a truncated download
or a file swapped by hand is caught before any inference.

A folder may be pruned to what one engine reads (``spec.json``, the tokenizer and, say,
``emotech.int8.onnx`` alone on a Jetson: 23 MB instead of 83): a listed file that is
absent is an error only when it is asked for (``ModelSpec.require``), naming the file.
The tokenizer is always read, so it must be there.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
from importlib import metadata, resources
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

import numpy as np

from runtime.errors import ModelFolderError
from runtime.frontend import FrontendConfig
from runtime.postprocess import UNCERTAIN_BELOW

SPEC_FILE = "spec.json"
FORMAT = "emotech-model/1"
MODES = ("audio", "text", "audio+text")  # which modalities an item carries
MODEL_DIR_ENV = "EMOTECH_MODEL_DIR"  # environment variable naming the default model folder
WEIGHTS_PACKAGE = "emotech_weights"  # the package that ships the weights (the checkout's weights/ folder)
MAX_PRIOR_LOG_ODDS = 20.0  # largest |offset| of calibration.prior_log_odds (e^20: beyond any useful prior)
DEFAULT_MODEL = "emotech"  # the bundled model folder inside WEIGHTS_PACKAGE


@dataclass(frozen=True)
class ModelSpec:
    """What the runtime needs to know about a model folder."""

    root: Path  # the model folder
    labels: tuple[str, ...]  # class names, in logit order
    frontend: FrontendConfig  # MFCC parameters and audio length limits
    tokenizer_file: str  # tokenizer.json, relative to root
    max_tokens: int  # tokens per text including [CLS]/[SEP]; longer texts are truncated
    max_text_chars: int  # longer texts are rejected
    graphs: dict[str, dict[str, str]]  # graph name -> precision -> ONNX file
    temperature: dict[str, float]  # calibration temperature per mode (see MODES)
    files: dict[str, str]  # file -> sha256
    raw: dict[str, Any] = field(repr=False, default_factory=dict)  # the whole spec.json
    uncertain_below: dict[str, float] = field(default_factory=lambda: dict(UNCERTAIN_BELOW))  # per mode (see MODES)
    # per mode, label -> offset added to that label's calibrated log-score (a deployment
    # prior: ``export.prior``); labels and modes not named get 0
    prior_log_odds: dict[str, dict[str, float]] = field(default_factory=dict)

    def path(self, name: str) -> Path:
        return self.root / name

    def require(self, name: str, why: str) -> Path:
        """The path of ``name``, which must be in the folder (``why``: what needs it)."""
        path = self.root / name
        if not path.is_file():
            listed = "spec.json lists it, but the folder was pruned or copied incompletely" if name in self.files else "spec.json does not list it"
            raise ModelFolderError(f"{self.root}: {name} is missing, and {why} needs it ({listed}); copy it from the release")
        return path

    def graph_file(self, graph: str = "fused", precision: str = "fp32") -> Path:
        """The ONNX file of ``graph`` at ``precision``; raises when the folder lacks it."""
        variants = self.graphs.get(graph, {})
        if precision not in variants:
            have = ", ".join(sorted(variants)) or "none"
            raise ModelFolderError(
                f"{self.root}: no {precision} variant of the {graph} graph (available: {have}); "
                f"create it with `python -m export.quantize --precision {precision} --model-dir {self.root}`"
            )
        path = self.require(variants[precision], f"the {precision} {graph} graph")
        if graph == "fused":
            check_graph(self, path)
        return path


def weights_path(*parts: str) -> Path | None:
    """The path of a file or folder shipped in the weights package (``weights/`` in a checkout,
    ``emotech_weights/`` in an installed wheel), or None when the package is not installed."""
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError:
        return None
    return Path(str(root.joinpath(*parts)))


def resolve_model_dir(model_dir: str | os.PathLike[str] | None = None) -> Path:
    """The model folder to load: ``model_dir`` when given, else ``$EMOTECH_MODEL_DIR`` when set,
    else the bundled default model. Raises ``ModelFolderError`` naming every place it looked."""
    if model_dir is not None:
        return Path(model_dir)
    env = os.environ.get(MODEL_DIR_ENV)
    if env:
        return Path(env)
    bundled = weights_path(DEFAULT_MODEL)
    if bundled is not None and (bundled / SPEC_FILE).is_file():
        return bundled
    where = f"{bundled} has no {SPEC_FILE}" if bundled is not None else f"the {WEIGHTS_PACKAGE} package is not installed"
    raise ModelFolderError(
        "no model folder found. Looked at: 1. model_dir / --model-dir (not given); "
        f"2. ${MODEL_DIR_ENV} (not set); 3. the bundled default model ({where}). "
        f"Pass --model-dir DIR (or model_dir=DIR), or set {MODEL_DIR_ENV}=DIR, where DIR holds {SPEC_FILE}"
    )


def package_versions(packages: tuple[str, ...]) -> dict[str, str]:
    """Python's version and the installed version of each of ``packages`` that is present
    (recorded in ``spec.json`` and beside every benchmark number)."""
    out = {"python": platform.python_version()}
    for pkg in packages:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            pass
    return out


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verify_files(root: Path, files: dict[str, str], required: tuple[str, ...] = ()) -> None:
    """Raise ``ModelFolderError`` naming every file of ``required`` that is missing and
    every present file whose hash is wrong (absent optional files are left to ``require``)."""
    problems = [f"{name} is missing" for name in required if not (root / name).is_file()]
    for name, expected in files.items():
        path = root / name
        if not path.is_file():
            continue
        try:
            digest = sha256_file(path)
        except OSError as e:  # permissions, an I/O error
            problems.append(f"{name} cannot be read ({e.strerror or e})")
            continue
        if digest != expected:
            problems.append(f"{name} does not match its sha256 in {SPEC_FILE}")
    if problems:
        raise ModelFolderError(f"model folder {root} failed verification: " + "; ".join(problems))


def _inside(name: object) -> bool:
    """Whether ``name`` is a plain relative path within the model folder."""
    if not isinstance(name, str) or not name or "\\" in name or ":" in name:  # no Windows drives or separators
        return False
    path = PurePosixPath(name)
    return not path.is_absolute() and ".." not in path.parts


def load_spec(model_dir: str | Path | None = None, verify: bool = True) -> ModelSpec:
    """Read ``spec.json`` from ``model_dir`` (None: see ``resolve_model_dir``), checking hashes.

    Raises:
        ModelFolderError: no model folder, no spec, a spec that cannot be read or parsed,
            values outside ``check_limits``'s ranges, files not listed with their hash or
            outside the folder (``check_files``), or (``verify``) a file whose hash does not match.
    """
    root = resolve_model_dir(model_dir)
    spec_path = root / SPEC_FILE
    if not spec_path.is_file():
        source = "given as model_dir / --model-dir" if model_dir is not None else f"from ${MODEL_DIR_ENV}"
        raise ModelFolderError(
            f"{root} ({source}) is not a model folder: {SPEC_FILE} not found there. "
            f"Pass --model-dir DIR (or model_dir=DIR) or set {MODEL_DIR_ENV}=DIR, where DIR holds {SPEC_FILE}; "
            "without either, the bundled default model is used"
        )
    try:
        if spec_path.stat().st_size > MAX_SPEC_BYTES:
            raise ModelFolderError(f"{spec_path} is {spec_path.stat().st_size} bytes; a spec is at most {MAX_SPEC_BYTES}")
        raw = json.loads(spec_path.read_bytes())
        if not isinstance(raw, dict):
            raise ModelFolderError(f"{spec_path} is malformed: the top level is a {type(raw).__name__}, not an object")
        if raw.get("format") != FORMAT:
            raise ModelFolderError(f"{spec_path}: format {raw.get('format')!r} is not {FORMAT!r}")
        text = raw["text"]
        spec = ModelSpec(
            root=root,
            labels=tuple(raw["labels"]),
            frontend=FrontendConfig.from_dict(raw["frontend"]),
            tokenizer_file=text["tokenizer"],
            max_tokens=_whole(text["max_tokens"], "text.max_tokens"),
            max_text_chars=_whole(text["max_chars"], "text.max_chars"),
            graphs={k: dict(v) for k, v in raw["graphs"].items()},
            temperature={m: float(raw.get("calibration", {}).get("temperature", {}).get(m, 1.0)) for m in MODES},
            files=dict(raw["files"]),
            raw=raw,
            uncertain_below={m: float(raw.get("calibration", {}).get("uncertain_below", {}).get(m, UNCERTAIN_BELOW[m])) for m in MODES},
            prior_log_odds={m: {str(k): float(v) for k, v in d.items()} for m, d in raw.get("calibration", {}).get("prior_log_odds", {}).items()},
        )
    except ModelFolderError:
        raise
    except OSError as e:
        raise ModelFolderError(f"{spec_path} cannot be read ({e.strerror or e})") from e
    except RecursionError as e:
        raise ModelFolderError(f"{spec_path} is malformed: nested too deeply to parse") from e
    except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as e:
        raise ModelFolderError(f"{spec_path} is malformed: {str(e)[:300] or type(e).__name__}") from e
    bad_t = {m: t for m, t in spec.temperature.items() if not 0 < t < math.inf}
    if bad_t:
        raise ModelFolderError(f"{spec_path} is malformed: calibration temperatures must be positive and finite, got {bad_t}")
    bad_p = {m: d for m, d in spec.prior_log_odds.items() if m not in MODES or not set(d) <= set(spec.labels) or not all(abs(v) <= MAX_PRIOR_LOG_ODDS for v in d.values())}
    if bad_p:
        raise ModelFolderError(
            f"{spec_path} is malformed: calibration.prior_log_odds maps modes {MODES} to label -> offset "
            f"with labels from 'labels' and |offset| <= {MAX_PRIOR_LOG_ODDS:g}, got {bad_p}"
        )
    bad_u = {m: u for m, u in spec.uncertain_below.items() if not 0 <= u <= 1}
    if bad_u:
        raise ModelFolderError(f"{spec_path} is malformed: calibration.uncertain_below must be scores in [0, 1], got {bad_u}")
    names = [spec.tokenizer_file, *spec.files, *(f for v in spec.graphs.values() for f in v.values()), *([raw["weights"]] if "weights" in raw else [])]
    outside = sorted({repr(n) for n in names if not _inside(n)})
    if outside:
        raise ModelFolderError(f"{spec_path} is malformed: files must be named relative to the folder, inside it: {', '.join(outside)}")
    check_limits(spec, spec_path)
    check_files(spec, spec_path)
    if verify:
        verify_files(root, spec.files, required=(spec.tokenizer_file,))
    return spec


# ------------------------------------------------------------------ consistency checks

MAX_SPEC_BYTES = 1 << 20  # a spec is a few kB; this bounds what a damaged one costs to parse
MAX_LABELS = 1024
MAX_TOKENS = 8192  # tokens per text, [CLS] and [SEP] included
MAX_TEXT_CHARS = 1_000_000
MAX_AUDIO_SECONDS = 600.0  # longer clips belong in a stream of utterances
SAMPLE_RATES = (4_000, 192_000)  # Hz; the lower bound is runtime.audio's MIN_SAMPLE_RATE
MAX_N_FFT = 16_384
MAX_N_MELS = 1024


def _whole(value: object, what: str) -> int:
    """``value`` as an int: an int, or a float without a fractional part (never a bool or a string)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{what} must be a whole number, got {value!r}")
    return int(value)


def check_limits(spec: ModelSpec, spec_path: Path) -> None:
    """Raise ``ModelFolderError`` unless the spec's labels and limits are in range: a
    spec read back from a damaged or hand-edited file must not load and then overflow
    (``max_audio_seconds: Infinity``) or misreport."""
    problems = []
    labels = spec.labels
    if not 2 <= len(labels) <= MAX_LABELS or not all(isinstance(x, str) and 0 < len(x) <= 100 for x in labels):
        problems.append(f"labels must be 2 to {MAX_LABELS} names of 1 to 100 characters")
    elif len(set(labels)) != len(labels):
        problems.append("labels must be distinct")
    if not 3 <= spec.max_tokens <= MAX_TOKENS:
        problems.append(f"text.max_tokens must be in [3, {MAX_TOKENS}], got {spec.max_tokens}")
    if not 1 <= spec.max_text_chars <= MAX_TEXT_CHARS:
        problems.append(f"text.max_chars must be in [1, {MAX_TEXT_CHARS}], got {spec.max_text_chars}")
    fe = spec.frontend
    for name, value in fe.to_dict().items():
        if isinstance(value, bool) != (name == "cmvn") or (not isinstance(value, (int, float))) or not math.isfinite(value):
            problems.append(f"frontend.{name} must be a finite number{' or a bool' if name == 'cmvn' else ''}, got {value!r}")
    if not problems:
        if not SAMPLE_RATES[0] <= fe.sample_rate <= SAMPLE_RATES[1] or fe.sample_rate != int(fe.sample_rate):
            problems.append(f"frontend.sample_rate must be a whole number of Hz in [{SAMPLE_RATES[0]}, {SAMPLE_RATES[1]}], got {fe.sample_rate}")
        if not fe.max_audio_seconds <= MAX_AUDIO_SECONDS:
            problems.append(f"frontend.max_audio_seconds must be at most {MAX_AUDIO_SECONDS:g}, got {fe.max_audio_seconds}")
        if not (fe.n_fft <= MAX_N_FFT and fe.n_mels <= MAX_N_MELS):
            problems.append(f"frontend.n_fft must be at most {MAX_N_FFT} and n_mels at most {MAX_N_MELS}")
        for name in ("n_fft", "hop_length", "n_mels", "n_mfcc"):
            if getattr(fe, name) != int(getattr(fe, name)):
                problems.append(f"frontend.{name} must be a whole number, got {getattr(fe, name)}")
    if problems:
        raise ModelFolderError(f"{spec_path} is malformed: " + "; ".join(problems))


def check_files(spec: ModelSpec, spec_path: Path) -> None:
    """Raise ``ModelFolderError`` unless every file the runtime reads (tokenizer, graphs,
    weights) is listed under ``files`` with a sha256, so that none is loaded unhashed, and
    no listed file is a link leading out of the folder."""
    problems = []
    if not all(isinstance(h, str) and len(h) == 64 and all(c in "0123456789abcdef" for c in h) for h in spec.files.values()):
        problems.append("files must map each file to its sha256 (64 lowercase hex digits)")
    read = {spec.tokenizer_file: "the tokenizer", **{f: f"the {p} {g} graph" for g, v in spec.graphs.items() for p, f in v.items()}}
    if "weights" in spec.raw:
        read[spec.raw["weights"]] = "the weights"
    unlisted = [f"{name} ({what})" for name, what in read.items() if name not in spec.files]
    if unlisted:
        problems.append("not listed under files, so never hash-checked: " + ", ".join(unlisted))
    root = spec.root.resolve()
    for name in spec.files:
        path = spec.root / name
        if path.is_symlink() or path.exists():
            target = path.resolve()
            if not target.is_relative_to(root):
                problems.append(f"{name} is a link to {target}, outside the folder")
    if problems:
        raise ModelFolderError(f"{spec_path}: " + "; ".join(problems))


_CHECKED_GRAPHS: dict[tuple[str, int, int, tuple[str, ...], str], None] = {}


def check_graph(spec: ModelSpec, path: Path) -> None:
    """Raise ``ModelFolderError`` if the fused ONNX graph at ``path`` disagrees with the
    spec: its ``logits`` output must have one column per label, and it must carry the
    mel filterbank that ``spec.frontend`` gives (sample rate, n_fft, n_mels, fmin, fmax),
    or its answers would be silently wrong. The filterbank may be stacked for the factored
    DFT (EmoTech's graphs) or plain, ``(n_freqs, n_mels)`` (the zoo's feature graphs). Each
    file is read once per process."""
    from runtime.frontend import mel_filterbank, stacked_mel
    from runtime.graphinfo import GraphFormatError, read_graph

    try:
        stat = path.stat()
        key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns, spec.labels, json.dumps(spec.frontend.to_dict(), sort_keys=True))
        if key in _CHECKED_GRAPHS:
            return
        mels = (stacked_mel(spec.frontend), mel_filterbank(spec.frontend).T.astype(np.float32))
        facts = read_graph(path, {m.shape for m in mels})
    except (GraphFormatError, OSError) as e:
        raise ModelFolderError(f"{path} cannot be read as an ONNX graph ({e}); copy it from the release or re-export it") from e
    dims = facts.outputs.get("logits")
    if dims is None:
        raise ModelFolderError(f"{path} has no 'logits' output (it has {', '.join(facts.outputs)}): not an emotech fused graph")
    width = dims[-1] if dims else None
    if isinstance(width, int) and width != len(spec.labels):
        raise ModelFolderError(f"{path} scores {width} classes but {spec.root / SPEC_FILE} names {len(spec.labels)} labels: "
                               "the spec belongs to another model")
    if not any(np.allclose(c, m, rtol=1e-5, atol=1e-7) for m in mels for c in facts.constants[m.shape]):
        fe = spec.frontend
        raise ModelFolderError(
            f"{path} was not exported with the front-end {spec.root / SPEC_FILE} describes (sample_rate {fe.sample_rate}, "
            f"n_fft {fe.n_fft}, n_mels {fe.n_mels}, fmin {fe.fmin:g}, fmax {fe.fmax:g}): its mel filterbank differs, so "
            "its answers would be wrong; use the spec.json exported with this graph")
    _CHECKED_GRAPHS[key] = None
