"""TensorRT engine: build (or load from the cache) and run the fused graph on an NVIDIA GPU.

Works on TensorRT 10.3 (JetPack 6.1 and later) and 11.x with only the APIs both have: a
strongly typed network parsed from ONNX (precision comes from the graph variant: FP32,
FP16 casts or INT8 Q/DQ; no builder precision flags, no calibrators), one optimisation
profile, tensor-name I/O (``set_input_shape``, ``set_tensor_address``,
``execute_async_v3``; no binding indices). Older TensorRT (JetPack 6.0 ships 8.6, where
network flags 0 mean implicit batch and there is no strong typing) is refused by name.

The engine retains the GPU's primary context once (pycuda) and releases it once, in
``close()``. Buffers are pycuda pinned host + device allocations on one CUDA stream, grown
only when a batch needs more. ``cuda_graphs=True`` captures one CUDA graph per input-shape
set and replays it (the driver API through ctypes: pycuda has no graph API); a shape set
whose capture fails runs without a graph from then on (as ``trtexec --useCudaGraph`` does).

Engines are cached (``runtime.trt_cache``) under a key of the device, driver, CUDA runtime,
TensorRT version, ONNX sha256, precision, profile, TF32 setting and workspace limit; a
stale, corrupt, mismatched or untrusted file is rebuilt with a warning, never loaded.
"""

from __future__ import annotations

import ctypes
import logging
import re
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

logger = logging.getLogger(__name__)

INSTEAD = "Use --engine ort (ONNX Runtime, CPU or CUDA) or --engine torch (PyTorch, CPU or CUDA) instead"
MIN_TENSORRT = (10, 3)  # strongly typed ONNX parsing with INT64 I/O and Q/DQ from the graph


class EngineBuildError(EngineUnavailableError):
    """TensorRT could not parse the graph or build an engine from it."""


class CaptureFailed(RuntimeError):
    """A CUDA graph could not be captured for one shape set (the stream is usable again)."""


def version_tuple(version: str) -> tuple[int, ...]:
    """``"10.3.0.26"`` -> ``(10, 3, 0, 26)``; ``()`` when it does not start with a number."""
    m = re.match(r"\d+(?:\.\d+)*", str(version))
    return tuple(int(x) for x in m.group(0).split(".")) if m else ()


def check_tensorrt_version(trt: Any) -> None:
    """Refuse a TensorRT older than ``MIN_TENSORRT`` (or one without a readable version)."""
    found = getattr(trt, "__version__", "unknown")
    if version_tuple(found)[:2] < MIN_TENSORRT:
        raise EngineUnavailableError(
            f"engine 'trt' needs TensorRT {'.'.join(map(str, MIN_TENSORRT))} or newer (strongly typed networks with the "
            f"precision taken from the ONNX graph); found TensorRT {found}. JetPack 6.0 ships TensorRT 8.6: use JetPack 6.1 "
            f"or later (TensorRT 10.3). {INSTEAD}."
        )


def require_tensorrt() -> tuple[Any, Any]:
    """The ``tensorrt`` and ``pycuda.driver`` modules with a usable GPU, or an
    ``EngineUnavailableError`` that says what is missing and what to use instead."""
    missing = []
    if _trt is None:
        missing.append(f"the TensorRT Python package (import tensorrt failed: {_TRT_ERROR}; JetPack ships it, on desktops pip install tensorrt)")
    if _cuda is None:
        missing.append(f"pycuda (import pycuda.driver failed: {_CUDA_ERROR}; pip install pycuda, which builds against the CUDA toolkit)")
    if missing:
        raise EngineUnavailableError("engine 'trt' cannot run here: it needs " + "; ".join(missing) + f". {INSTEAD}.")
    check_tensorrt_version(_trt)
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


# ------------------------------------------------------------ CUDA through ctypes


_LIBS: dict[str, Any] = {}


def _driver_api() -> Any:
    """``libcuda`` (the driver API: stream capture and graphs)."""
    if "driver" not in _LIBS:
        _LIBS["driver"] = ctypes.CDLL("libcuda.so.1")
    return _LIBS["driver"]


def _runtime_api() -> Any | None:
    """The CUDA runtime (``libcudart``) loaded in or loadable by this process, or None.

    TensorRT's wheels load it from ``nvidia-cuda-runtime``; JetPack has it on the library
    path. Used for its version (part of the cache key) and to clear its per-thread last
    error after a failed capture."""
    if "runtime" not in _LIBS:
        lib = None
        for name in ("libcudart.so", "libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0"):
            try:
                lib = ctypes.CDLL(name)
                break
            except OSError:
                continue
        _LIBS["runtime"] = lib
    return _LIBS["runtime"]


def cuda_runtime_version() -> str:
    """``"12.4"`` from ``cudaRuntimeGetVersion``, or ``"unknown"`` without a loadable libcudart."""
    lib = _runtime_api()
    if lib is None:
        return "unknown"
    v = ctypes.c_int(0)
    if lib.cudaRuntimeGetVersion(ctypes.byref(v)) != 0 or v.value <= 0:
        return "unknown"
    return f"{v.value // 1000}.{v.value % 1000 // 10}"


def _clear_runtime_error() -> None:
    """Reset the CUDA runtime's sticky per-thread error (``cudaGetLastError``), as trtexec
    does after a failed capture, so it does not surface in the next TensorRT call."""
    lib = _runtime_api()
    if lib is not None:
        lib.cudaGetLastError()


def cache_key(cuda: Any, trt: Any, onnx_path: Path, precision: str, profile: Profile, index: int = 0, workspace_bytes: int | None = None) -> CacheKey:
    dev = cuda.Device(index)
    major, minor = dev.compute_capability()
    driver = int(cuda.get_driver_version())  # 12060 -> "12.6"
    return CacheKey(
        gpu_name=dev.name(),
        compute_capability=f"{major}.{minor}",
        sm_count=int(dev.get_attribute(cuda.device_attribute.MULTIPROCESSOR_COUNT)),
        total_memory=int(dev.total_memory()),
        driver_version=f"{driver // 1000}.{driver % 1000 // 10}",
        cuda_runtime=cuda_runtime_version(),
        tensorrt_version=trt.__version__,
        onnx_sha256=sha256_file(onnx_path),
        precision=precision,
        profile=profile,
        tf32=tf32_setting(),  # NVIDIA_TF32_OVERRIDE=0 at build time changes the kernels chosen
        workspace_bytes=int(workspace_bytes) if workspace_bytes else None,
    )


# ------------------------------------------------------------------------ build


def _progress_monitor(trt: Any) -> Any:
    """An ``IProgressMonitor`` logging the top two levels of build phases, or None where the API is absent."""
    base = getattr(trt, "IProgressMonitor", None)
    if base is None:
        return None

    class Progress(base):  # type: ignore[misc, valid-type]
        def __init__(self) -> None:
            base.__init__(self)
            self._lock = threading.Lock()  # TensorRT calls from several threads
            self._depth: dict[str, int] = {}

        def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
            with self._lock:
                self._depth[phase_name] = self._depth.get(parent_phase, -1) + 1 if parent_phase else 0
                if self._depth[phase_name] <= 1:
                    logger.info("%s%s (%d steps)", "  " * self._depth[phase_name], phase_name, num_steps)

        def step_complete(self, phase_name: str, step: int) -> bool:
            return True  # never cancel the build

        def phase_finish(self, phase_name: str) -> None:
            with self._lock:
                if self._depth.pop(phase_name, 2) == 0:
                    logger.info("%s done", phase_name)

    return Progress()


def network_flags(trt: Any) -> int:
    """``create_network`` flags for a strongly typed network: the STRONGLY_TYPED bit where
    the flag exists (required on 10.x), 0 on 11.x and later without it (strong typing is
    the only mode there)."""
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if flag is not None:
        return 1 << int(flag)
    if version_tuple(trt.__version__)[:1] >= (11,):
        return 0
    raise EngineBuildError(f"TensorRT {trt.__version__} has no STRONGLY_TYPED network flag; engine 'trt' needs strongly typed networks. {INSTEAD}.")


def _attach_timing_cache(config: Any, path: Path) -> None:
    """Give the builder the persistent timing cache at ``path``, or an empty one when the
    file is missing, refused (``trt_cache.read_timing_cache``), unparsable or rejected by
    ``set_timing_cache`` (another device or TensorRT: it returns False)."""
    blob = trt_cache.read_timing_cache(path)
    cache = None
    if blob:
        try:
            cache = config.create_timing_cache(blob)
        except Exception as e:  # noqa: BLE001 - a corrupt timing cache only costs build time
            logger.warning("TensorRT timing cache %s cannot be read (%s); starting from an empty one", path, e)
        if cache is not None and not config.set_timing_cache(cache, ignore_mismatch=False):
            logger.warning("TensorRT timing cache %s was made on another device or TensorRT version; starting from an empty one", path)
            cache = None
        if cache is not None:
            return
    cache = config.create_timing_cache(b"")
    if cache is None or not config.set_timing_cache(cache, ignore_mismatch=False):
        logger.warning("TensorRT refused an empty timing cache; building without one")


def _save_timing_cache(config: Any, path: Path) -> None:
    cache = config.get_timing_cache()
    if cache is None:
        logger.warning("the builder holds no timing cache after the build; %s is left as it was", path)
        return
    try:
        trt_cache.write_private(path, bytes(memoryview(cache.serialize())))
    except (trt_cache.CacheUntrusted, OSError) as e:
        logger.warning("TensorRT timing cache not saved: %s", e)


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
        EngineUnavailableError: TensorRT older than 10.3.
        EngineBuildError: the parser rejects the graph or the build fails.
    """
    trt = trt or require_tensorrt()[0]
    check_tensorrt_version(trt)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(network_flags(trt))
    parser = trt.OnnxParser(network, trt_logger)
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
    if timing_cache is not None:
        _attach_timing_cache(config, timing_cache)
    monitor = _progress_monitor(trt) if progress else None
    if monitor is not None:
        config.progress_monitor = monitor
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildError(f"TensorRT {trt.__version__} failed to build an engine from {onnx_path} (see the log above)")
    if timing_cache is not None:
        _save_timing_cache(config, timing_cache)
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
    context: Any = None,
) -> tuple[bytes, Path, bool]:
    """Serialised engine for the graph at ``onnx_path``: from the cache, or built and cached.

    Args:
        context: a retained primary context already current on this thread (the engine's
            own); None retains GPU ``index``'s for the build and releases it after.

    Returns:
        ``(engine_bytes, cache_file, built)``.
    """
    trt, cuda = require_tensorrt()
    cache_dir = Path(cache_dir) if cache_dir is not None else trt_cache.default_cache_dir()
    own = context is None
    if own:
        context = cuda.Device(index).retain_primary_context()  # the builder runs on the chosen GPU
        context.push()
    try:
        key = cache_key(cuda, trt, onnx_path, precision, profile, index, workspace_bytes)
        path = cache_dir / key.filename(Path(onnx_path).stem.split(".")[0])
        if rebuild:
            path.unlink(missing_ok=True)
        timing = cache_dir / key.timing_cache_name()
        extra = {"onnx_file": Path(onnx_path).name, "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        t0 = time.perf_counter()
        payload, built = trt_cache.load_or_build(path, key, lambda: builder(onnx_path, profile, timing, trt, workspace_bytes, progress), extra)
        if built:
            logger.info("built the TensorRT %s engine for %s in %.1f s: %s", precision, Path(onnx_path).name, time.perf_counter() - t0, path)
    finally:
        if own:
            context.detach()  # while current: pycuda then releases the retain whichever thread this is
    return payload, path, built


# ----------------------------------------------------------------------- engine


class _CudaGraphs:
    """CUDA graph capture/replay through the driver API, keyed by input shapes."""

    CAPTURE_THREAD_LOCAL = 1  # CU_STREAM_CAPTURE_MODE_THREAD_LOCAL

    def __init__(self, lib: Any) -> None:
        self._lib = lib
        self._graphs: dict[tuple, tuple[ctypes.c_void_p, ctypes.c_void_p]] = {}

    def _name(self, rc: int) -> str:
        name = ctypes.c_char_p()
        if self._lib.cuGetErrorName(rc, ctypes.byref(name)) == 0 and name.value:
            return f"{name.value.decode()} ({rc})"
        return f"CUDA error {rc}"

    def get(self, key: tuple) -> ctypes.c_void_p | None:
        entry = self._graphs.get(key)
        return entry[1] if entry else None

    def _end_failed_capture(self, stream: ctypes.c_void_p) -> int:
        """End a capture that went wrong and drop its graph: the stream leaves capture mode
        (an invalidated capture ends with CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and no graph)."""
        graph = ctypes.c_void_p()
        rc = self._lib.cuStreamEndCapture(stream, ctypes.byref(graph))
        if graph.value:
            self._lib.cuGraphDestroy(graph)
        _clear_runtime_error()
        return rc

    def capture(self, key: tuple, stream_handle: int, enqueue: Callable[[], None]) -> ctypes.c_void_p:
        """Capture ``enqueue()`` on the stream and instantiate it under ``key``.

        Raises:
            CaptureFailed: beginning, enqueueing, ending or instantiating failed; the capture
                has been ended and the runtime's last error cleared.
        """
        stream = ctypes.c_void_p(stream_handle)
        rc = self._lib.cuStreamBeginCapture_v2(stream, ctypes.c_int(self.CAPTURE_THREAD_LOCAL))
        if rc != 0:
            raise CaptureFailed(f"cuStreamBeginCapture failed with {self._name(rc)}")
        try:
            enqueue()
        except BaseException as e:
            rc = self._end_failed_capture(stream)
            if isinstance(e, Exception):
                raise CaptureFailed(f"the enqueue failed during capture ({e}); cuStreamEndCapture returned {self._name(rc)}") from e
            raise
        graph = ctypes.c_void_p()
        rc = self._lib.cuStreamEndCapture(stream, ctypes.byref(graph))
        if rc != 0 or not graph.value:
            if graph.value:
                self._lib.cuGraphDestroy(graph)
            _clear_runtime_error()
            raise CaptureFailed(f"cuStreamEndCapture failed with {self._name(rc)}")
        exe = ctypes.c_void_p()
        rc = self._lib.cuGraphInstantiateWithFlags(ctypes.byref(exe), graph, ctypes.c_ulonglong(0))
        if rc != 0:
            self._lib.cuGraphDestroy(graph)
            raise CaptureFailed(f"cuGraphInstantiate failed with {self._name(rc)}")
        self._graphs[key] = (graph, exe)
        return exe

    def launch(self, exe: ctypes.c_void_p, stream_handle: int) -> None:
        rc = self._lib.cuGraphLaunch(exe, ctypes.c_void_p(stream_handle))
        if rc != 0:
            raise RuntimeError(f"cuGraphLaunch failed with {self._name(rc)}")

    def clear(self) -> None:
        for graph, exe in self._graphs.values():
            self._lib.cuGraphExecDestroy(exe)
            self._lib.cuGraphDestroy(graph)
        self._graphs.clear()


class _Buffer:
    """A pinned host array and a device allocation of at least ``count`` elements, grown on demand."""

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
        capacity = max(count, 2 * self.capacity)
        self.host = self.cuda.pagelocked_empty(capacity, self.dtype)
        self.device = self.cuda.mem_alloc(capacity * self.dtype.itemsize)
        self.capacity = capacity
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
        workspace_bytes: int | None = None,
    ):
        super().__init__(spec, precision, device)
        trt, cuda = require_tensorrt()
        self._trt, self._cuda = trt, cuda
        self.index = device_index(device)
        self.device = f"cuda:{self.index}"
        self.profile = profile or Profile.for_spec(spec)
        onnx_path = spec.graph_file("fused", precision)
        self._lock = threading.Lock()  # one engine call at a time; close() waits for it
        self._buffers: dict[str, _Buffer] = {}
        self._graphs: _CudaGraphs | None = None
        self._uncapturable: set[tuple] = set()  # shape sets whose capture failed
        self._context = self._engine = self._runtime = self._stream = self._ctx = None
        self._ctx = cuda.Device(self.index).retain_primary_context()  # the one retain, released in close()
        self._ctx.push()
        try:
            load = lambda rebuild: build_or_load(onnx_path, precision, self.profile, cache_dir, self.index, rebuild, progress, workspace_bytes, context=self._ctx)  # noqa: E731
            payload, self.cache_file, self.built = load(rebuild)
            self._runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
            self._engine = self._runtime.deserialize_cuda_engine(payload)
            if self._engine is None:  # intact file that this TensorRT still refuses: rebuild once
                logger.warning("TensorRT could not deserialise %s; rebuilding it", self.cache_file)
                payload, self.cache_file, self.built = load(True)
                self._engine = self._runtime.deserialize_cuda_engine(payload)
            if self._engine is None:
                raise EngineBuildError(f"TensorRT {trt.__version__} could not deserialise the engine built from {onnx_path}")
            self._context = self._engine.create_execution_context()
            if self._context is None:
                raise EngineBuildError(f"TensorRT {trt.__version__} could not create an execution context (out of device memory?)")
            self._stream = cuda.Stream()
            names = [self._engine.get_tensor_name(i) for i in range(self._engine.num_io_tensors)]
            self._inputs = [n for n in names if self._engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
            self._outputs = [n for n in names if n not in self._inputs]
            if set(self._inputs) != set(FUSED_INPUTS) or self._outputs != [OUTPUT]:
                raise EngineBuildError(f"engine I/O {self._inputs} -> {self._outputs} is not the fused graph's {list(FUSED_INPUTS)} -> [{OUTPUT}]")
            self._buffers = {n: _Buffer(cuda, trt.nptype(self._engine.get_tensor_dtype(n))) for n in names}
            self._graphs = _CudaGraphs(_driver_api()) if cuda_graphs else None
        except BaseException:
            self._release()  # frees what exists and releases the context (current here)
            raise
        self._ctx.pop()

    # The model is length-aware: zero padding beyond each item's length never changes its
    # result, so a batch is padded up to the profile's minimum lengths (and its minimum
    # batch, with copies of its first item) and split above its maximum batch instead of
    # being rejected.
    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        max_b = self.profile.batch[2]
        n = feed["audio"].shape[0]
        if n > max_b:
            return np.concatenate([self._infer({k: v[s : s + max_b] for k, v in feed.items()}) for s in range(0, n, max_b)])
        feed = self._pad_to_profile(feed)
        if feed["audio"].shape[1] > self.profile.samples[2] or feed["tokens"].shape[1] > self.profile.tokens[2]:
            raise ValueError(
                f"batch of {feed['audio'].shape[1]} samples / {feed['tokens'].shape[1]} tokens exceeds the engine profile "
                f"(max {self.profile.samples[2]} samples, {self.profile.tokens[2]} tokens); rebuild with a larger profile"
            )
        with self._lock:
            if self._ctx is None:
                raise RuntimeError("this TensorRT engine is closed: load a new one")
            self._ctx.push()
            try:
                return self._run(feed)[:n]
            finally:
                self._ctx.pop()

    def _pad_to_profile(self, feed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = dict(feed)
        for name, lo in (("audio", self.profile.samples[0]), ("tokens", self.profile.tokens[0])):
            a = out[name]
            if a.shape[1] < lo:
                out[name] = np.pad(a, ((0, 0), (0, lo - a.shape[1])))
        short = self.profile.batch[0] - out["audio"].shape[0]
        if short > 0:
            out = {k: np.concatenate([v, np.repeat(v[:1], short, axis=0)]) for k, v in out.items()}
        return out

    def _run(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        """Copy in, execute (or replay a CUDA graph), copy out. Holds ``_lock``, context current."""
        cuda, ctx = self._cuda, self._context
        arrays = {n: np.ascontiguousarray(feed[n], dtype=self._buffers[n].dtype) for n in self._inputs}
        grown = False
        for name, arr in arrays.items():
            if not ctx.set_input_shape(name, arr.shape):
                raise ValueError(f"input {name} of shape {arr.shape} is outside the engine profile {self.profile.to_dict()}")
            grown |= self._buffers[name].ensure(arr.size)
        out_shape = tuple(ctx.get_tensor_shape(OUTPUT))
        if any(d < 0 for d in out_shape):
            raise RuntimeError(f"TensorRT left the output shape unresolved: {out_shape}")
        out_count = int(np.prod(out_shape))
        grown |= self._buffers[OUTPUT].ensure(out_count)
        if grown and self._graphs is not None:
            self._graphs.clear()  # captured graphs hold the old addresses
        for name, buf in self._buffers.items():
            if not ctx.set_tensor_address(name, int(buf.device)):
                raise RuntimeError(f"TensorRT refused the address of {name}")
        for name, arr in arrays.items():
            buf = self._buffers[name]
            view = buf.host[: arr.size]
            view[:] = arr.ravel()
            cuda.memcpy_htod_async(buf.device, view, self._stream)
        handle = self._stream.handle
        key = tuple(arr.shape for arr in arrays.values())
        exe = None
        if self._graphs is not None and key not in self._uncapturable:
            exe = self._graphs.get(key)
            if exe is None:
                exe = self._capture(key, handle)
        if exe is None:
            self._execute(handle)
        else:
            self._graphs.launch(exe, handle)
        out = self._buffers[OUTPUT]
        cuda.memcpy_dtoh_async(out.host[:out_count], out.device, self._stream)
        self._stream.synchronize()
        return out.host[:out_count].reshape(out_shape).astype(np.float32, copy=True)

    def _capture(self, key: tuple, handle: int) -> ctypes.c_void_p | None:
        """A CUDA graph for this shape set, or None (and never again) when capture fails.

        As trtexec: one run and a sync outside capture first (TensorRT's first run for new
        shapes may allocate or synchronise, which capture forbids), then capture."""
        self._execute(handle)
        self._stream.synchronize()
        try:
            return self._graphs.capture(key, handle, lambda: self._execute(handle))
        except CaptureFailed as e:
            self._uncapturable.add(key)
            logger.warning("CUDA graph capture failed for input shapes %s (%s); these shapes run without a graph", key, e)
            return None

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

    def _release(self) -> None:
        """Free everything and release the primary context. Needs ``_ctx`` current on this
        thread (pushed): TensorRT and pycuda objects free device memory as they go, and
        pycuda releases a primary context from any thread only while it is current there."""
        try:
            if self._stream is not None:
                self._stream.synchronize()
            if self._graphs is not None:
                self._graphs.clear()
            for buf in self._buffers.values():
                buf.free()
            self._context = self._engine = self._runtime = self._stream = None
        finally:
            ctx, self._ctx = self._ctx, None
            ctx.detach()

    def close(self) -> None:
        lock = getattr(self, "_lock", None)
        if lock is None:  # __init__ failed before the lock existed
            return
        with lock:  # waits for a running _infer: never free buffers under it
            if self._ctx is None:
                return
            self._ctx.push()
            self._release()
