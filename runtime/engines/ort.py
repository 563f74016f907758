"""ONNX Runtime engine: CPU by default; CUDA or TensorRT execution providers when
``onnxruntime-gpu`` is installed and ``device='cuda'``."""

from __future__ import annotations

import numpy as np

from runtime.engines.base import OUTPUT, Engine
from runtime.errors import EngineUnavailableError
from runtime.spec import ModelSpec


class OrtEngine(Engine):
    name = "ort"

    def __init__(self, spec: ModelSpec, precision: str = "fp32", device: str = "cpu", threads: int | None = None, spin: bool = True):
        """``threads``: intra-op threads (default: ONNX Runtime's, one per physical core).
        ``spin``: let the intra-op threads busy-wait for work between and after runs (ONNX
        Runtime's default, kept: turning it off cost a third more batch-1 latency on the
        2-core build machine and gained nothing at batch 32, README "Benchmarks"). Turn it
        off where other processes need those cores while this one is idle."""
        super().__init__(spec, precision, device)
        try:
            import onnxruntime as ort
        except ImportError as e:  # pragma: no cover - onnxruntime is a core dependency
            raise EngineUnavailableError("engine 'ort' needs onnxruntime: pip install onnxruntime") from e
        path = spec.graph_file("fused", precision)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        if threads:
            opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        available = ort.get_available_providers()
        if device == "cpu":
            providers = ["CPUExecutionProvider"]
        elif device == "cuda":
            if "CUDAExecutionProvider" not in available:
                raise EngineUnavailableError(
                    "engine 'ort' on cuda needs onnxruntime-gpu (CUDAExecutionProvider); "
                    f"this onnxruntime has {', '.join(available)}. Use device='cpu' or engine='torch'."
                )
            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"]
        else:
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        self._version = ort.__version__
        self._spin = spin

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([OUTPUT], feed)[0]

    def describe(self) -> dict[str, str]:
        return {
            **super().describe(),
            "onnxruntime": self._version,
            "providers": ",".join(self.session.get_providers()),
            "thread_spinning": "on" if self._spin else "off",
        }

    def close(self) -> None:
        self.session = None
