"""PyTorch engine: the model folder's own weights in ``export.model`` (EmoTech, or an
ensemble in its merged form, ``export.merged``), CPU or CUDA.

The reference backend, and the GPU path for desktops without TensorRT. It runs the same
fused forward as the ONNX graph, front-end included, so on CUDA the MFCC of the whole
batch is computed on the GPU. ``fp16`` (CUDA only) computes the front-end in FP32 and the
rest under ``torch.autocast`` (FP16 matmuls/convs/LSTMs, FP32 reductions), the same split
as the FP16 ONNX variant. INT8 exists only as a Q/DQ ONNX graph (ONNX Runtime, TensorRT).

torch is imported at the top of this module: the engine registry imports it lazily, so
``import runtime`` stays torch-free.
"""

from __future__ import annotations

import numpy as np
import torch

from runtime.engines.base import FUSED_INPUTS, Engine, tf32_setting
from runtime.errors import EngineUnavailableError
from runtime.spec import ModelSpec


class TorchEngine(Engine):
    """The fused model in PyTorch on one device."""

    name = "torch"

    def __init__(self, spec: ModelSpec, precision: str = "fp32", device: str = "cpu", threads: int | None = None):
        if threads is not None and threads < 0:
            raise ValueError(f"threads must be >= 1 (0 or None: the default), got {threads}")
        super().__init__(spec, precision, device)
        if "weights" not in spec.raw:  # an ONNX-only folder, e.g. a scikit-learn system of the model zoo
            arch = spec.raw.get("model", {}).get("architecture", "its model")
            raise EngineUnavailableError(
                f"engine 'torch' needs PyTorch weights, and {spec.root} ({arch}) has only an ONNX graph (no 'weights' in spec.json); "
                "run it with --engine ort"
            )
        if precision == "int8":
            raise EngineUnavailableError(
                "engine 'torch' has no int8 path: the int8 variant is a Q/DQ ONNX graph; run it with --engine ort or --engine trt"
            )
        dev = torch.device(device)
        if dev.type not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu', 'cuda' or 'cuda:N', got {device!r}")
        if dev.type == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailableError(
                f"engine 'torch' on {device} needs a CUDA build of PyTorch and an NVIDIA GPU (torch {torch.__version__}, "
                "torch.cuda.is_available() is False); use device='cpu' or --engine ort"
            )
        if precision == "fp16" and dev.type != "cuda":
            raise EngineUnavailableError("engine 'torch' runs fp16 only on cuda; use --precision fp32 on cpu, or --engine ort --precision fp16")
        if threads:
            torch.set_num_threads(threads)
        from export.bundle import load_torch_model  # the model definition lives with training
        from export.merged import inference_form

        spec.require(spec.raw.get("weights", "model.safetensors"), "engine 'torch'")
        model, _ = load_torch_model(spec.root)
        # An ensemble runs merged, as in the ONNX graph: fewer, larger kernels (on a 2-core
        # CPU faster at batch 1, slower at batch 32: docs/benchmarks.md, "Merged ensemble").
        self.model = inference_form(model).to(dev).eval()
        self.dev = dev
        self.fp16 = precision == "fp16"

    @torch.inference_mode()
    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        t = {k: torch.from_numpy(np.ascontiguousarray(feed[k])).to(self.dev, non_blocking=True) for k in FUSED_INPUTS}
        m = self.model
        mfcc, frames = m.mfcc(t["audio"], t["audio_lengths"])  # always FP32
        with torch.autocast(device_type=self.dev.type, dtype=torch.float16, enabled=self.fp16):
            logits = m.forward_features(mfcc, frames, t["tokens"], t["token_lengths"], t["has_audio"], t["has_text"])
        return logits.float().cpu().numpy()

    def describe(self) -> dict[str, str]:
        out = {**super().describe(), "torch": torch.__version__}
        if self.dev.type == "cuda":
            out["gpu"] = torch.cuda.get_device_name(self.dev)
            # what runs in FP32: everything at fp32, the MFCC front-end at fp16 too
            conv, mm = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
            out["tf32"] = f"convolutions {tf32_setting(conv)}, matmuls {tf32_setting(mm)}"
        else:
            out["threads"] = str(torch.get_num_threads())
        return out

    def close(self) -> None:
        self.model = None
        if self.dev.type == "cuda":
            torch.cuda.empty_cache()
