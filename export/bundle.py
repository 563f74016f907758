"""Write and read model folders (the contract with ``runtime.spec``).

A folder holds ``model.safetensors`` (PyTorch weights, never pickle), the ONNX graphs,
``tokenizer.json`` and ``spec.json`` with every file's sha256 and the versions that
produced it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from safetensors.torch import load_file, save_file

from export.model import EmoTech, EmoTechEnsemble, FusedModel, ModelConfig
from runtime.frontend import FrontendConfig
from runtime.spec import FORMAT, SPEC_FILE, package_versions, resolve_model_dir, sha256_file

WEIGHTS_FILE = "model.safetensors"
TOKENIZER_FILE = "tokenizer.json"


def versions() -> dict[str, str]:
    """Versions of the packages that produced a model folder."""
    return package_versions(("torch", "onnx", "onnxruntime", "numpy", "librosa", "tokenizers", "soxr", "soundfile"))


def read_spec(model_dir: Path) -> dict[str, Any]:
    return json.loads((Path(model_dir) / SPEC_FILE).read_text())


def write_spec(model_dir: Path, spec: dict[str, Any]) -> None:
    path = Path(model_dir) / SPEC_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(spec, indent=2, sort_keys=False) + "\n")
    tmp.replace(path)


def update_files(model_dir: Path, spec: dict[str, Any] | None = None) -> dict[str, Any]:
    """Re-hash every file the spec references (weights, tokenizer, graphs) and save it."""
    model_dir = Path(model_dir)
    spec = spec if spec is not None else read_spec(model_dir)
    names = {spec["weights"], spec["text"]["tokenizer"]}
    for variants in spec.get("graphs", {}).values():
        names.update(variants.values())
    # A file absent here keeps the hash it had (a pruned folder must not lose its record).
    old = spec.get("files", {})
    spec["files"] = {n: sha256_file(model_dir / n) if (model_dir / n).is_file() else old[n] for n in sorted(names)
                     if (model_dir / n).is_file() or n in old}
    spec["versions"] = versions()
    write_spec(model_dir, spec)
    return spec


def save_model(
    model: FusedModel,
    model_dir: Path,
    labels: tuple[str, ...],
    tokenizer_src: Path,
    max_tokens: int,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Save weights, tokenizer and a fresh spec (graphs are added by ``export.onnx``)."""
    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(model_dir / WEIGHTS_FILE), metadata={"format": "pt"})
    tok_dst = model_dir / TOKENIZER_FILE
    if Path(tokenizer_src).resolve() != tok_dst.resolve():
        tok_dst.write_bytes(Path(tokenizer_src).read_bytes())
    spec: dict[str, Any] = {
        "format": FORMAT,
        "name": model_dir.name,
        "labels": list(labels),
        "frontend": model.frontend_cfg.to_dict(),
        "text": {"tokenizer": TOKENIZER_FILE, "max_tokens": max_tokens, "max_chars": 2000},
        "model": model_entry(model),
        "weights": WEIGHTS_FILE,
        "graphs": {},
        "calibration": {"method": "temperature", "temperature": {"audio": 1.0, "text": 1.0, "audio+text": 1.0}},
    }
    spec.update(extra or {})
    return update_files(model_dir, spec)


def model_entry(model: FusedModel) -> dict[str, Any]:
    """``spec.json``'s ``model``: the architecture, its config and (ensembles) the member count."""
    entry: dict[str, Any] = {"architecture": model.architecture, **model.cfg.to_dict()}
    if isinstance(model, EmoTechEnsemble):
        entry["members"] = model.members
    return entry


def build_model(spec: dict[str, Any]) -> FusedModel:
    """An untrained model of the architecture ``spec`` describes."""
    entry = spec["model"]
    model_cfg = ModelConfig.from_spec(entry)
    frontend = FrontendConfig.from_dict(spec["frontend"])
    arch = entry.get("architecture", "EmoTech")
    if arch == "EmoTech":
        return EmoTech(frontend, model_cfg)
    if arch == "EmoTechEnsemble":
        return EmoTechEnsemble(frontend, model_cfg, int(entry["members"]))
    raise ValueError(f"unknown architecture {arch!r} in spec.json (known: EmoTech, EmoTechEnsemble)")


def load_torch_model(model_dir: Path | None = None) -> tuple[FusedModel, dict[str, Any]]:
    """The PyTorch model of a folder (eval mode; None: ``runtime.spec.resolve_model_dir``) and its spec as a dict."""
    model_dir = resolve_model_dir(model_dir)
    spec = read_spec(model_dir)
    model = build_model(spec)
    model.load_state_dict(load_file(str(Path(model_dir) / spec["weights"])))
    return model.eval(), spec


def register_graphs(spec: dict[str, Any], graph_files: dict[str, str], precision: str = "fp32") -> None:
    for graph, filename in graph_files.items():
        spec.setdefault("graphs", {}).setdefault(graph, {})[precision] = filename

