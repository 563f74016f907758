"""Pick the engine for the server: the one asked for, or the best that loads here.

``auto`` tries TensorRT, then PyTorch on CUDA, then ONNX Runtime (CUDA when
onnxruntime-gpu and a GPU are present, else CPU), and records why each faster option
was skipped. Cheap checks come first, so a CPU box never imports torch or TensorRT.
"""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

from runtime.errors import EmotionError, EngineUnavailableError
from runtime.recognizer import EmotionRecognizer

log = logging.getLogger("emotech.serve")


def nvidia_gpu_present() -> bool:
    """Whether an NVIDIA driver and device are visible (without importing CUDA libraries)."""
    return Path("/proc/driver/nvidia/version").exists() or Path("/dev/nvidia0").exists()


def candidates() -> list[tuple[str, str, str | None]]:
    """(engine, device, reason to skip or None) in order of preference."""
    gpu = nvidia_gpu_present()
    out: list[tuple[str, str, str | None]] = []
    no_gpu = None if gpu else "no NVIDIA GPU visible"
    out.append(("trt", "cuda", no_gpu or (None if importlib.util.find_spec("tensorrt") else "tensorrt is not installed")))
    out.append(("torch", "cuda", no_gpu or (None if importlib.util.find_spec("torch") else "torch is not installed")))
    try:
        import onnxruntime as ort

        has_cuda_ep = "CUDAExecutionProvider" in ort.get_available_providers()
    except ImportError:
        has_cuda_ep = False
    out.append(("ort", "cuda", no_gpu or (None if has_cuda_ep else "onnxruntime has no CUDAExecutionProvider")))
    out.append(("ort", "cpu", None))
    return out


def load_recognizer(model_dir: str | Path | None, engine: str = "auto", precision: str = "fp32", device: str | None = None,
                    max_batch: int = 32, threads: int | None = None, asr: str | None = None) -> tuple[EmotionRecognizer, list[str]]:
    """Load the model on ``engine`` (or the best available for ``auto``), with the
    ``asr`` transcriber (a ``runtime.asr`` name; None: none).

    Returns:
        The recognizer and one line per engine that was skipped or failed, saying why.

    Raises:
        EmotionError: the named engine (or, for ``auto``, every engine) cannot load.
    """
    kwargs = {"threads": threads} if threads else {}
    if engine != "auto":
        dev = device or ("cpu" if engine == "ort" or not nvidia_gpu_present() else "cuda")
        extra = kwargs if engine == "ort" else {}
        return EmotionRecognizer.load(model_dir, engine=engine, precision=precision, device=dev, max_batch=max_batch, asr=asr, **extra), []
    notes: list[str] = []
    last: Exception | None = None
    for name, dev, skip in candidates():
        if device is not None and dev != device:
            continue
        if skip:
            notes.append(f"{name}/{dev}: skipped ({skip})")
            continue
        try:
            extra = kwargs if name == "ort" else {}
            return EmotionRecognizer.load(model_dir, engine=name, precision=precision, device=dev, max_batch=max_batch, asr=asr,
                                          **extra), notes
        except (EmotionError, ImportError, OSError, RuntimeError) as e:
            notes.append(f"{name}/{dev}: failed ({type(e).__name__}: {e})")
            last = e
    raise EngineUnavailableError("no engine could load the model: " + "; ".join(notes)) from last
