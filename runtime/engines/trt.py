"""TensorRT engine: build (or load from the cache) and run the fused graph on an NVIDIA GPU.

Works on TensorRT 10.3 (JetPack 6) and 11.x with only the APIs both have: a strongly
typed network parsed from ONNX (precision comes from the graph variant: FP32, FP16 casts
or INT8 Q/DQ; no builder precision flags, no calibrators), one optimisation profile,
tensor-name I/O (``set_input_shape``, ``set_tensor_address``, ``execute_async_v3``; no
binding indices). Buffers are pycuda pinned host + device allocations on one CUDA stream,
grown only when a batch needs more. ``cuda_graphs=True`` captures one CUDA graph per
input-shape set and replays it (the driver API through ctypes: pycuda has no graph API).

Engines are cached (``runtime.trt_cache``) under a key of GPU model, compute capability,
TensorRT version, ONNX sha256, precision and profile; a stale, corrupt or mismatched file
is rebuilt with a warning, never loaded.
"""

from __future__ import annotations

import ctypes
import logging
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from runtime import trt_cache
from runtime.engines.base import FUSED_INPUTS, OUTPUT, Engine, tf32_setting
from runtime.errors import EngineUnavailableError
from runtime.spec import ModelSpec, sha256_file
from runtime.trt_cache import CacheKey, Profile

logger = logging.getLogger(__name__)

try:  # imported here so the registry can tell "not installed" from "no GPU"
    import tensorrt as _trt
except ImportError as _e:  # pragma: no cover - depends on the machine
    _trt, _TRT_ERROR = None, _e
else:
    _TRT_ERROR = None
try:
    import pycuda.driver as _cuda
except ImportError as _e:  # pragma: no cover - depends on the machine
    _cuda, _CUDA_ERROR = None, _e
else:
    _CUDA_ERROR = None

INSTEAD = "Use --engine ort (ONNX Runtime, CPU or CUDA) or --engine torch (PyTorch, CPU or CUDA) instead"


class EngineBuildError(EngineUnavailableError):
    """TensorRT could not parse the graph or build an engine from it."""


def require_tensorrt() -> tuple[Any, Any]:
    """The ``tensorrt`` and ``pycuda.driver`` modules with a usable GPU, or an
    ``EngineUnavailableError`` that says what is missing and what to use instead."""
    missing = []
    if _trt is None:
        missing.append(f"the TensorRT Python package (import tensorrt failed: {_TRT_ERROR}; JetPack ships it, on desktops pip install tensorrt)")
    if _cuda is None:
        missing.append(f"pycuda (import pycuda.driver failed: {_CUDA_ERROR}; pip install pycuda)")
    if _cuda is not None:
        try:
            _cuda.init()
            if _cuda.Device.count() == 0:
                missing.append("an NVIDIA GPU (CUDA sees no device)")
        except Exception as e:  # noqa: BLE001 - pycuda raises its own error types
            missing.append(f"a working NVIDIA driver and GPU (cuInit failed: {e})")
    if missing:
        raise EngineUnavailableError("engine 'trt' cannot run here: it needs " + "; ".join(missing) + f". {INSTEAD}.")
    return _trt, _cuda


def device_index(device: str | None) -> int:
    """GPU ordinal from ``'cuda'``, ``'cuda:N'`` (``'cpu'``, the registry's default, means GPU 0)."""
    if device in (None, "cpu", "cuda"):
        return 0
    if device.startswith("cuda:") and device[5:].isdigit():
        return int(device[5:])
    raise ValueError(f"device for engine 'trt' must be 'cuda' or 'cuda:N', got {device!r}")


def cache_key(cuda: Any, trt: Any, onnx_path: Path, precision: str, profile: Profile, index: int = 0) -> CacheKey:
    dev = cuda.Device(index)
    major, minor = dev.compute_capability()
    # NVIDIA_TF32_OVERRIDE=0 at build time changes the kernels chosen: part of the key
    return CacheKey(dev.name(), f"{major}.{minor}", trt.__version__, sha256_file(onnx_path), precision, profile, tf32_setting())


# ------------------------------------------------------------------------ build


def _progress_monitor(trt: Any, out=sys.stderr) -> Any:
    """An ``IProgressMonitor`` printing build phases, or None where the API is absent."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Progress(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()  # TensorRT calls from several threads
            self._depth: dict[str, int] = {}
            self._steps: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._depth[phase_name] = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                self._steps[phase_name] = num_steps
                if self._depth[phase_name] <= 1:
                    print(f"{'  ' * self._depth[phase_name]}[trt] {phase_name} ({num_steps} steps)", file=out, flush=True)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                if self._depth.pop(phase_name, 2) == 0:
                    print(f"[trt] {phase_name} done", file=out, flush=True)
                self._steps.pop(phase_name, None)

    return Progress()


def build_serialized_engine(
    onnx_path: Path,
    profile: Profile,
    timing_cache: Path | None = None,
    trt: Any = None,
    workspace_bytes: int | None = None,
    progress: bool = True,
) -> bytes:
    """Parse ``onnx_path`` into a strongly typed network and build a serialised engine for
    ``profile``, reading and updating the persistent ``timing_cache`` file.

    Raises:
        EngineBuildError: the parser rejects the graph or the build fails.
    """
    trt = trt or require_tensorrt()[0]
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # Required on 10.x for precision-from-graph; deprecated and ignored (always on) in 11.x.
    strongly_typed = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if strongly_typed is None else 1 << int(strongly_typed))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise EngineBuildError(f"TensorRT {trt.__version__} could not parse {onnx_path}: " + " | ".join(errors))
    config = builder.create_builder_config()
    if workspace_bytes:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_bytes))
    shapes = profile.shapes(tuple(network.get_input(i).name for i in range(network.num_inputs)))
    opt = builder.create_optimization_profile()
    for name, (lo, mid, hi) in shapes.items():
        opt.set_shape(name, lo, mid, hi)
    config.add_optimization_profile(opt)
    cache = None
    if timing_cache is not None:
        blob = trt_cache.read_timing_cache(timing_cache)
        try:
            cache = config.create_timing_cache(blob)
        except Exception:  # noqa: BLE001 - a corrupt timing cache only costs build time
            cache = None
        if cache is None:
            cache = config.create_timing_cache(b"")
        config.set_timing_cache(cache, ignore_mismatch=False)
    monitor = _progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see the log above)")
    if timing_cache is not None:
        try:
            trt_cache.write_private(timing_cache, bytes(memoryview(config.get_timing_cache().serialize())))
        except trt_cache.CacheUntrusted as e:
            logger.warning("TensorRT timing cache not saved: %s", e)
    del monitor
    return bytes(memoryview(serialized))


def build_or_load(
    onnx_path: Path,
    precision: str,
    profile: Profile,
    cache_dir: Path | None = None,
    index: int = 0,
    rebuild: bool = False,
    progress: bool = True,
    workspace_bytes: int | None = None,
    builder: Callable[..., bytes] = build_serialized_engine,
) -> tuple[bytes, Path, bool]:
    """Serialised engine for the graph at ``onnx_path``: from the cache, or built and cached.

    Returns ``(engine_bytes, cache_file, built)``.
    """
    trt, cuda = require_tensorrt()
    cache_dir = Path(cache_dir) if cache_dir is not None else trt_cache.default_cache_dir()
    key = cache_key(cuda, trt, onnx_path, precision, profile, index)
    path = cache_dir / key.filename(Path(onnx_path).stem.split(".")[0])
    if rebuild:
        path.unlink(missing_ok=True)
    timing = cache_dir / key.timing_cache_name()
    extra = {"onnx_file": Path(onnx_path).name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    ctx = cuda.Device(index).retain_primary_context()  # the builder runs on the chosen GPU
    ctx.push()
    try:
        payload, built = trt_cache.load_or_build(path, key, lambda: builder(onnx_path, profile, timing, trt, workspace_bytes, progress), extra)
    finally:
        ctx.pop()
        ctx.detach()
    return payload, path, built


# ----------------------------------------------------------------------- engine


class _CudaGraphs:
    """CUDA graph capture/replay through the driver API (``libcuda``), keyed by shapes."""

    CAPTURE_THREAD_LOCAL = 1

    def __init__(self) -> None:
        self._lib = ctypes.CDLL("libcuda.so.1")
        self._graphs: dict[tuple, tuple[ctypes.c_void_p, ctypes.c_void_p]] = {}

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise RuntimeError(f"{what} failed with CUDA error {rc}")

    def get(self, key: tuple) -> ctypes.c_void_p | None:
        entry = self._graphs.get(key)
        return entry[1] if entry else None

    def capture(self, key: tuple, stream_handle: int, enqueue: Callable[[], None]) -> ctypes.c_void_p:
        stream = ctypes.c_void_p(stream_handle)
        self._check(self._lib.cuStreamBeginCapture_v2(stream, ctypes.c_int(self.CAPTURE_THREAD_LOCAL)), "cuStreamBeginCapture")
        graph = ctypes.c_void_p()
        try:
            enqueue()
        finally:
            self._check(self._lib.cuStreamEndCapture(stream, ctypes.byref(graph)), "cuStreamEndCapture")
        exe = ctypes.c_void_p()
        self._check(self._lib.cuGraphInstantiateWithFlags(ctypes.byref(exe), graph, ctypes.c_ulonglong(0)), "cuGraphInstantiate")
        self._graphs[key] = (graph, exe)
        return exe

    def launch(self, exe: ctypes.c_void_p, stream_handle: int) -> None:
        self._check(self._lib.cuGraphLaunch(exe, ctypes.c_void_p(stream_handle)), "cuGraphLaunch")

    def clear(self) -> None:
        for graph, exe in self._graphs.values():
            self._lib.cuGraphExecDestroy(exe)
            self._lib.cuGraphDestroy(graph)
        self._graphs.clear()


class _Buffer:
    """A pinned host array and a device allocation of at least ``nbytes``, grown on demand."""

    def __init__(self, cuda: Any, dtype: np.dtype):
        self.cuda, self.dtype = cuda, np.dtype(dtype)
        self.capacity = 0
        self.host: np.ndarray | None = None
        self.device: Any = None

    def ensure(self, count: int) -> bool:
        """Room for ``count`` elements; True when the buffers were reallocated."""
        if count <= self.capacity:
            return False
        self.free()
        self.capacity = max(count, 2 * self.capacity)
        self.host = self.cuda.pagelocked_empty(self.capacity, self.dtype)
        self.device = self.cuda.mem_alloc(self.capacity * self.dtype.itemsize)
        return True

    def free(self) -> None:
        if self.device is not None:
            self.device.free()
        if self.host is not None and hasattr(self.host.base, "free"):
            self.host.base.free()
        self.host, self.device, self.capacity = None, None, 0


class TrtEngine(Engine):
    """The fused graph as a TensorRT engine on one GPU."""

    name = "trt"

    def __init__(
        self,
        spec: ModelSpec,
        precision: str = "fp32",
        device: str = "cuda",
        profile: Profile | None = None,
        cache_dir: str | Path | None = None,
        rebuild: bool = False,
        cuda_graphs: bool = False,
        progress: bool = True,
    ):
        super().__init__(spec, precision, device)
        trt, cuda = require_tensorrt()
        self._trt, self._cuda = trt, cuda
        self.index = device_index(device)
        self.device = f"cuda:{self.index}"
        self.profile = profile or Profile.for_spec(spec)
        onnx_path = spec.graph_file("fused", precision)
        self._ctx = cuda.Device(self.index).retain_primary_context()
        self._ctx.push()
        try:
            payload, self.cache_file, self.built = build_or_load(onnx_path, precision, self.profile, cache_dir, self.index, rebuild, progress)
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(payload)
            if self._engine is None:  # intact file that this TensorRT still refuses: rebuild once
                payload, self.cache_file, self.built = build_or_load(onnx_path, precision, self.profile, cache_dir, self.index, True, progress)
                self._engine = self._runtime.deserialize_cuda_engine(payload)
            if self._engine is None:
                raise EngineBuildError(f"TensorRT {trt.__version__} could not deserialise the engine built from {onnx_path}")
            self._context = self._engine.create_execution_context()
            self._stream = cuda.Stream()
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self._outputs = [n for n in names if n not in self._inputs]
            if set(self._inputs) != set(FUSED_INPUTS) or self._outputs != [OUTPUT]:
                raise EngineBuildError(f"engine I/O {self._inputs} -> {self._outputs} is not the fused graph's {list(FUSED_INPUTS)} -> [{OUTPUT}]")
            self._buffers = {n: _Buffer(cuda, trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
            self._graphs = _CudaGraphs() if cuda_graphs else None
            self._lock = threading.Lock()
        except BaseException:
            self._ctx.pop()
            self._ctx.detach()  # release the retained primary context on a failed load
            self._ctx = None
            raise
        self._ctx.pop()

    # The model is length-aware: zero padding beyond each item's length never changes its
    # result, so a batch is padded up to the profile's minimum lengths and split above its
    # maximum batch instead of being rejected.
    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        feed = self._pad_to_profile(feed)
        max_b = self.profile.batch[2]
        n = feed["audio"].shape[0]
        if n > max_b:
            return np.concatenate([self._infer({k: v[s : s + max_b] for k, v in feed.items()}) for s in range(0, n, max_b)])
        if feed["audio"].shape[1] > self.profile.samples[2] or feed["tokens"].shape[1] > self.profile.tokens[2]:
            raise ValueError(
                f"batch of {feed['audio'].shape[1]} samples / {feed['tokens'].shape[1]} tokens exceeds the engine profile "
                f"(max {self.profile.samples[2]} samples, {self.profile.tokens[2]} tokens); rebuild with a larger profile"
            )
        with self._lock:
            self._ctx.push()
            try:
                return self._run(feed)
            finally:
                self._ctx.pop()

    def _pad_to_profile(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(feed)
        for name, lo in (("audio", self.profile.samples[0]), ("tokens", self.profile.tokens[0])):
            a = feed[name]
            if a.shape[1] < lo:
                out[name] = np.pad(a, ((0, 0), (0, lo - a.shape[1])))
        return out

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        cuda, ctx = self._cuda, self._context
        arrays = {n: np.ascontiguousarray(feed[n], dtype=self._buffers[n].dtype) for n in self._inputs}
        grown = False
        for name, arr in arrays.items():
            if not ctx.set_input_shape(name, arr.shape):
                raise ValueError(f"input {name} of shape {arr.shape} is outside the engine profile {self.profile.to_dict()}")
            grown |= self._buffers[name].ensure(arr.size)
        out_shape = tuple(ctx.get_tensor_shape(OUTPUT))
        out_count = int(np.prod(out_shape))
        grown |= self._buffers[OUTPUT].ensure(out_count)
        if grown and self._graphs is not None:
            self._graphs.clear()  # captured graphs hold the old addresses
        for name, buf in self._buffers.items():
            ctx.set_tensor_address(name, int(buf.device))
        for name, arr in arrays.items():
            buf = self._buffers[name]
            view = buf.host[: arr.size]
            view[:] = arr.ravel()
            cuda.memcpy_htod_async(buf.device, view, self._stream)
        handle = self._stream.handle
        if self._graphs is None:
            self._execute(handle)
        else:
            key = tuple(arr.shape for arr in arrays.values())
            exe = self._graphs.get(key)
            if exe is None:
                self._execute(handle)  # first run with new shapes outside capture
                exe = self._graphs.capture(key, handle, lambda: self._execute(handle))
            self._graphs.launch(exe, handle)
        out = self._buffers[OUTPUT]
        cuda.memcpy_dtoh_async(out.host[:out_count], out.device, self._stream)
        self._stream.synchronize()
        return out.host[:out_count].reshape(out_shape).astype(np.float32, copy=True)

    def _execute(self, handle: int) -> None:
        if not self._context.execute_async_v3(handle):
            raise RuntimeError("TensorRT execute_async_v3 failed (see the TensorRT log)")

    def describe(self) -> dict[str, str]:
        dev = self._cuda.Device(self.index)
        return {
            **super().describe(),
            "tensorrt": self._trt.__version__,
            "gpu": dev.name(),
            "engine_cache": str(self.cache_file),
            "profile": str(self.profile.to_dict()),
            "cuda_graphs": str(self._graphs is not None),
            "tf32": tf32_setting(),  # the builder's TF32 flag is left at its default (on) for the FP32 layers
        }

    def close(self) -> None:
        if getattr(self, "_ctx", None) is None:
            return
        self._ctx.push()
        try:
            if getattr(self, "_stream", None) is not None:
                self._stream.synchronize()
            if getattr(self, "_graphs", None) is not None:
                self._graphs.clear()
            for buf in getattr(self, "_buffers", {}).values():
                buf.free()
            self._context = self._engine = self._runtime = self._stream = None
        finally:
            self._ctx.pop()
            self._ctx.detach()
            self._ctx = None
