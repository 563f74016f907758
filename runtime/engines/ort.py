"""ONNX Runtime engine: CPU by default; CUDA or TensorRT execution providers when
``onnxruntime-gpu`` is installed and ``device='cuda'``."""

from __future__ import annotations

import numpy as np

from runtime.engines.base import MODALITY_OUTPUTS, OUTPUT, Engine, parse_device, tf32_setting
from runtime.errors import EngineUnavailableError, ModelFolderError
from runtime.spec import ModelSpec


# ONNX Runtime session config entries for each ``spin`` mode of OrtEngine.
SPIN_MODES = {
    "during": {"session.intra_op.allow_spinning": "1", "session.force_spinning_stop": "1"},
    "always": {"session.intra_op.allow_spinning": "1"},
    "never": {"session.intra_op.allow_spinning": "0"},
}


def require_cuda_provider(session, what: str) -> None:
    """Make sure ``session`` runs on the CUDA provider, or raise ``EngineUnavailableError``.

    ONNX Runtime does not raise when the CUDA provider's libraries fail to load (a CUDA or
    cuDNN major version other than the one onnxruntime-gpu was built for): it logs an error
    and builds a CPU-only session. And by default a run that fails on the CUDA provider is
    retried on the CPU. Either would put CPU numbers under a "cuda" label, so the session
    must list the CUDA provider, and its fallback is turned off.
    """
    providers = session.get_providers()
    if "CUDAExecutionProvider" not in providers:
        raise EngineUnavailableError(
            f"{what} on cuda: onnxruntime-gpu is installed but its CUDA provider did not load (the session has "
            f"{', '.join(providers)}); see ONNX Runtime's log above for the library it could not open, and "
            "install the CUDA and cuDNN versions that onnxruntime-gpu release needs"
        )
    session.disable_fallback()


class OrtEngine(Engine):
    name = "ort"

    def __init__(self, spec: ModelSpec, precision: str = "fp32", device: str = "cpu", threads: int | None = None, spin: str = "during"):
        """``threads``: intra-op threads (default: ONNX Runtime's, one per physical core).
        ``spin``: how the intra-op threads wait for work. "during" (default): busy-wait
        inside a run, sleep as soon as it ends; "always": also keep spinning after a run
        (ONNX Runtime's own default); "never": always sleep. "during" is the default because
        "never" is slower at batch 1 and "always" keeps a core spinning between requests,
        taking it from the next batch's decoding (docs/benchmarks.md, "Thread spinning")."""
        if threads is not None and threads < 0:
            raise ValueError(f"threads must be >= 1 (0 or None: the default), got {threads}")
        if spin not in SPIN_MODES:
            raise ValueError(f"spin must be one of {', '.join(SPIN_MODES)}, got {spin!r}")
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
        for key, value in SPIN_MODES[spin].items():
            opts.add_session_config_entry(key, value)
        available = ort.get_available_providers()
        kind, index = parse_device(device)
        if kind == "cpu":
            providers: list = ["CPUExecutionProvider"]
        else:
            if "CUDAExecutionProvider" not in available:
                raise EngineUnavailableError(
                    f"engine 'ort' on {device} needs onnxruntime-gpu (CUDAExecutionProvider); "
                    f"this onnxruntime has {', '.join(available)}. Use device='cpu' or engine='torch'."
                )
            providers = [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), sess_options=opts, providers=providers)
        except (ort.capi.onnxruntime_pybind11_state.InvalidProtobuf, ort.capi.onnxruntime_pybind11_state.InvalidGraph,
                ort.capi.onnxruntime_pybind11_state.NotImplemented, ort.capi.onnxruntime_pybind11_state.Fail) as e:
            raise ModelFolderError(f"{path}: ONNX Runtime {ort.__version__} cannot load this graph ({str(e)[:300]}); "
                                   "copy it from the release, or re-export it") from e
        if kind == "cuda":
            require_cuda_provider(self.session, f"engine 'ort' ({precision})")
        self._version = ort.__version__
        self._spin = spin
        declared = spec.raw.get("outputs")
        graph_outputs = {o.name for o in self.session.get_outputs()}
        if isinstance(declared, (dict, list)):
            self.extra_outputs = tuple(n for n in MODALITY_OUTPUTS.values() if n in declared and n in graph_outputs)

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        return self.session.run([OUTPUT], feed)[0]

    def _infer_outputs(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [OUTPUT, *self.extra_outputs]
        return dict(zip(names, self.session.run(names, feed)))

    def describe(self) -> dict[str, str]:
        out = {
            **super().describe(),
            "onnxruntime": self._version,
            "providers": ",".join(self.session.get_providers()),
            "thread_spinning": self._spin,
        }
        if parse_device(self.device)[0] == "cuda":
            out["tf32"] = tf32_setting(self.session.get_provider_options().get("CUDAExecutionProvider", {}).get("use_tf32"))
        return out

    def close(self) -> None:
        self.session = None
