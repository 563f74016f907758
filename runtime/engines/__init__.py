"""Engine registry: ``--engine ort|torch|trt`` picks a backend, imported lazily so that
``import runtime`` never pulls in torch, TensorRT or a GPU library."""

from __future__ import annotations

import importlib

from runtime.engines.base import Engine
from runtime.errors import EngineUnavailableError
from runtime.spec import ModelSpec

# name -> (module, class, what to install when the import fails)
REGISTRY = {
    "ort": ("runtime.engines.ort", "OrtEngine", "pip install onnxruntime (or onnxruntime-gpu)"),
    "torch": ("runtime.engines.torch", "TorchEngine", "pip install 'emotech[export]' (PyTorch)"),
    "trt": ("runtime.engines.trt", "TrtEngine", "TensorRT >= 10.3 and pycuda with an NVIDIA GPU"),
}


def create_engine(name: str, spec: ModelSpec, precision: str = "fp32", device: str | None = None, **kwargs) -> Engine:
    """Instantiate engine ``name`` for ``spec``; raises ``EngineUnavailableError`` with
    what to install (or which engine to use instead) when it cannot run here."""
    if name not in REGISTRY:
        raise ValueError(f"engine must be one of {', '.join(REGISTRY)}, got {name!r}")
    module_name, cls_name, hint = REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EngineUnavailableError(f"engine {name!r} is not available: {e}. Install: {hint}; or use --engine ort") from e
    cls = getattr(module, cls_name)
    return cls(spec, precision=precision, device=device or "cpu", **kwargs)


def available_engines() -> list[str]:
    """Engines whose backend package imports here (not a guarantee a GPU is present)."""
    out = []
    for name, (module_name, _, _) in REGISTRY.items():
        try:
            importlib.import_module(module_name)
            out.append(name)
        except ImportError:
            pass
    return out


__all__ = ["Engine", "REGISTRY", "available_engines", "create_engine"]
