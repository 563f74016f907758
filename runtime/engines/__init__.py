"""Engine registry: ``--engine auto|ort|torch|trt`` picks a backend, imported lazily so that
``import runtime`` never pulls in torch, TensorRT or a GPU library.

``auto`` tries TensorRT, then PyTorch on CUDA, then ONNX Runtime (CUDA when onnxruntime-gpu
and a GPU are present, else CPU); ``candidates`` lists them with the reason each faster one
is skipped. Cheap checks come first, so a CPU box never imports torch or TensorRT.
"""

from __future__ import annotations

import importlib
import importlib.util
from pathlib import Path

from runtime.engines.base import Engine
from runtime.errors import EngineUnavailableError
from runtime.spec import ModelSpec

# name -> (module, class, what to install when the import fails)
REGISTRY = {
    "ort": ("runtime.engines.ort", "OrtEngine", "pip install onnxruntime (or onnxruntime-gpu)"),
    "torch": ("runtime.engines.torch", "TorchEngine", "pip install 'emotech[export]' (PyTorch)"),
    "trt": ("runtime.engines.trt", "TrtEngine", "TensorRT >= 10.3 and pycuda with an NVIDIA GPU"),
}


AUTO = "auto"
GPU_ENGINES = ("trt", "torch")  # engines whose default device is the GPU when one is visible


def nvidia_gpu_present() -> bool:
    """Whether an NVIDIA driver and device are visible (without importing CUDA libraries)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def default_device(engine: str) -> str:
    """The device an engine runs on when none is given: cuda for TensorRT, cuda for
    PyTorch when a GPU is visible, else cpu."""
    if engine == "trt" or (engine in GPU_ENGINES and nvidia_gpu_present()):
        return "cuda"
    return "cpu"


def candidates(device: str | None = None) -> list[tuple[str, str, str | None]]:
    """``auto``'s order: (engine, device, reason to skip or None), best first; with
    ``device`` ('cpu', 'cuda' or 'cuda:N') only the candidates on that kind of device."""
    gpu = nvidia_gpu_present()
    no_gpu = None if gpu else "no NVIDIA GPU visible"
    try:
        import onnxruntime as ort

        has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        has_cuda_ep = False
    cuda = device if device not in (None, "cpu") else "cuda"
    out = [
        ("trt", cuda, no_gpu or (None if importlib.util.find_spec("tensorrt") else "tensorrt is not installed")),
        ("torch", cuda, no_gpu or (None if importlib.util.find_spec("torch") else "torch is not installed")),
        ("ort", cuda, no_gpu or (None if has_cuda_ep else "onnxruntime has no CUDAExecutionProvider")),
        ("ort", "cpu", None),
    ]
    if device is None:
        return out
    kind = "cpu" if device == "cpu" else "cuda"
    return [c for c in out if (c[1] == "cpu") == (kind == "cpu")]


def create_engine(name: str, spec: ModelSpec, precision: str = "fp32", device: str | None = None, **kwargs) -> Engine:
    """Instantiate engine ``name`` for ``spec``; raises ``EngineUnavailableError`` with
    what to install (or which engine to use instead) when it cannot run here."""
    if name not in REGISTRY:
        raise ValueError(f"engine must be one of {', '.join((AUTO, *REGISTRY))}, got {name!r}")
    module_name, cls_name, hint = REGISTRY[name]
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EngineUnavailableError(f"engine {name!r} is not available: {e}. Install: {hint}; or use --engine ort") from e
    cls = getattr(module, cls_name)
    return cls(spec, precision=precision, device=device or default_device(name), **kwargs)


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


__all__ = ["AUTO", "Engine", "REGISTRY", "available_engines", "candidates", "create_engine", "default_device", "nvidia_gpu_present"]
