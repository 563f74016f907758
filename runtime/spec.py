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
import platform
from importlib import metadata
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from runtime.errors import ModelFolderError
from runtime.frontend import FrontendConfig
from runtime.postprocess import UNCERTAIN_BELOW

SPEC_FILE = "spec.json"
FORMAT = "emotech-model/1"
MODES = ("audio", "text", "audio+text")  # which modalities an item carries
BUNDLED_MODEL_DIR = Path(__file__).resolve().parents[1] / "weights" / "emotech"


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
        return self.require(variants[precision], f"the {precision} {graph} graph")


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
        if sha256_file(path) != expected:
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
    """Read ``spec.json`` from ``model_dir`` (None: the bundled weights), checking hashes."""
    root = Path(model_dir) if model_dir is not None else BUNDLED_MODEL_DIR
    spec_path = root / SPEC_FILE
    if not spec_path.is_file():
        raise ModelFolderError(f"{root} is not a model folder: {SPEC_FILE} not found")
    try:
        raw = json.loads(spec_path.read_text())
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
            max_tokens=int(text["max_tokens"]),
            max_text_chars=int(text["max_chars"]),
            graphs={k: dict(v) for k, v in raw["graphs"].items()},
            temperature={m: float(raw.get("calibration", {}).get("temperature", {}).get(m, 1.0)) for m in MODES},
            files=dict(raw["files"]),
            raw=raw,
            uncertain_below={m: float(raw.get("calibration", {}).get("uncertain_below", {}).get(m, UNCERTAIN_BELOW[m])) for m in MODES},
        )
    except ModelFolderError:
        raise
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise ModelFolderError(f"{spec_path} is malformed: {e!r}") from e
    bad_t = {m: t for m, t in spec.temperature.items() if not 0 < t < math.inf}
    if bad_t:
        raise ModelFolderError(f"{spec_path} is malformed: calibration temperatures must be positive and finite, got {bad_t}")
    bad_u = {m: u for m, u in spec.uncertain_below.items() if not 0 <= u <= 1}
    if bad_u:
        raise ModelFolderError(f"{spec_path} is malformed: calibration.uncertain_below must be scores in [0, 1], got {bad_u}")
    names = [spec.tokenizer_file, *spec.files, *(f for v in spec.graphs.values() for f in v.values()), *([raw["weights"]] if "weights" in raw else [])]
    outside = sorted({repr(n) for n in names if not _inside(n)})
    if outside:
        raise ModelFolderError(f"{spec_path} is malformed: files must be named relative to the folder, inside it: {', '.join(outside)}")
    if verify:
        verify_files(root, spec.files, required=(spec.tokenizer_file,))
    return spec
