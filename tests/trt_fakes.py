"""Fake TensorRT, pycuda and CUDA (driver and runtime API through ctypes) for the tests of
``runtime.engines.trt`` on machines without a GPU.

They behave like the real ones where the engine's correctness depends on it:

- ``FakeGpu`` holds device memory (reads and writes of freed or unknown addresses raise),
  one pycuda context stack and one driver context stack per thread, the primary context's
  retain count, stream-capture state and the CUDA runtime's sticky per-thread error;
- pycuda (``fake_pycuda``): ``retain_primary_context`` retains; ``push``/``pop`` as pycuda's
  (``pop`` pops whatever is current); ``detach`` as pycuda's primary context: released if
  current, else pushed and released on the creating thread, else nothing (a leaked retain);
  allocation, copies and streams need a current, live context;
- TensorRT (``fake_tensorrt``): the builder records its calls (flags, profile, timing cache,
  monitor) and serialises the profile into the plan; the runtime deserialises it; the
  execution context checks shapes against the profile, reads its inputs from device memory
  at the addresses set, and writes ``reference_logits`` of them to the output address.
  ``execute_async_v3`` records instead of running while the stream is capturing; under
  capture it fails (invalidating the capture and leaving the runtime's sticky error, 901) on
  a shape set's first run (which allocates scratch memory) or always with
  ``capture_fails``; it fails while a sticky error is pending;
- the driver API (``FakeDriverApi``): capture begin/end (an invalidated capture ends with
  CUDA_ERROR_STREAM_CAPTURE_INVALIDATED and a NULL graph), instantiate, launch (replays the
  recorded work against the memory of the moment), destroy, ``cuGetErrorName``; it takes the
  ctypes arguments a ``CDLL`` function would;
- the runtime API (``FakeRuntimeApi``): ``cudaGetLastError`` returns and clears the sticky
  error; ``cudaRuntimeGetVersion``.
"""

from __future__ import annotations

import ctypes
import json
import threading
import types
from collections import Counter

import numpy as np

INPUTS = ("audio", "audio_lengths", "tokens", "token_lengths", "has_audio", "has_text")
N_CLASSES = 7
CUDA_ERROR_STREAM_CAPTURE_INVALIDATED = 901
CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED = 900
PLAN_MAGIC = b"FAKEPLAN"


class FakeCudaError(RuntimeError):
    """What pycuda raises (``pycuda._driver.LogicError`` and friends)."""


def reference_logits(feed: dict[str, np.ndarray]) -> np.ndarray:
    """What the fake engine computes: a length-aware function of every input (padding
    beyond ``*_lengths`` never changes it), different per class."""
    k = np.arange(N_CLASSES, dtype=np.float64)
    out = np.zeros((feed["audio"].shape[0], N_CLASSES))
    for b in range(feed["audio"].shape[0]):
        a = feed["audio"][b, : int(feed["audio_lengths"][b])].astype(np.float64)
        t = feed["tokens"][b, : int(feed["token_lengths"][b])].astype(np.float64)
        audio = (a.sum() * 0.01 + np.abs(a).max(initial=0.0)) * (k + 1)
        text = (t.sum() * 1e-3 + t.size * 0.1) * (N_CLASSES - k)
        out[b] = feed["has_audio"][b] * audio + feed["has_text"][b] * text + 0.05 * k
    return out.astype(np.float32)


class FakeGpu:
    """State shared by the fakes of one process: see the module docstring."""

    def __init__(self, name: str = "NVIDIA Orin", cc: tuple[int, int] = (8, 7), sm_count: int = 16, total_memory: int = 64 << 30, driver: int = 12060, runtime: int | None = 12040):
        self.name, self.cc, self.sm_count, self.total_memory, self.driver, self.runtime = name, cc, sm_count, total_memory, driver, runtime
        self.memory: dict[int, bytearray] = {}
        self.freed: set[int] = set()
        self.next_addr = 0x10000
        self.capturing: dict[int, list | str] = {}  # stream handle -> recorded work, or "invalidated"
        self.runtime_error = 0  # the CUDA runtime's sticky last error (this process: one thread matters)
        self.retain_calls = self.retained = self.released = 0
        self.calls: Counter = Counter()
        self.events: list[str] = []  # "execute", "sync", "begin_capture", ... in call order
        self.local = threading.local()
        self.before_execute = None  # hook: called at the start of every real execution

    # context stacks of the calling thread
    def pycuda_stack(self) -> list:
        if not hasattr(self.local, "pycuda"):
            self.local.pycuda, self.local.driver = [], []
        return self.local.pycuda

    def driver_stack(self) -> list:
        self.pycuda_stack()
        return self.local.driver

    def require_context(self, what: str) -> None:
        stack = self.pycuda_stack()
        if not stack or not stack[-1].valid:
            raise FakeCudaError(f"{what}: no current CUDA context on this thread")

    # device memory
    def alloc(self, nbytes: int) -> int:
        self.require_context("cuMemAlloc")
        addr = self.next_addr
        self.next_addr += (nbytes + 0xFFF) // 0x1000 * 0x1000 + 0x1000
        self.memory[addr] = bytearray(nbytes)
        self.calls["mem_alloc"] += 1
        return addr

    def free(self, addr: int) -> None:
        self.require_context("cuMemFree")
        if addr in self.freed or addr not in self.memory:
            raise FakeCudaError(f"cuMemFree of {addr:#x}: not allocated")
        self.freed.add(addr)
        del self.memory[addr]

    def block(self, addr: int, nbytes: int) -> memoryview:
        if addr in self.freed:
            raise FakeCudaError(f"access to freed device memory at {addr:#x}")
        if addr not in self.memory or nbytes > len(self.memory[addr]):
            raise FakeCudaError(f"access of {nbytes} bytes at {addr:#x}: outside any allocation")
        return memoryview(self.memory[addr])[:nbytes]

    def read(self, addr: int, dtype: np.dtype, shape: tuple) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return np.frombuffer(bytes(self.block(addr, n)), dtype=dtype).reshape(shape)

    def write(self, addr: int, data: np.ndarray) -> None:
        raw = np.ascontiguousarray(data).tobytes()
        self.block(addr, len(raw))[:] = raw

    def run_or_record(self, stream: int, work) -> None:
        state = self.capturing.get(stream)
        if state is None:
            work()
        elif isinstance(state, list):
            state.append(work)


# ------------------------------------------------------------------------- pycuda


def fake_pycuda(gpu: FakeGpu) -> types.SimpleNamespace:
    """A ``pycuda.driver`` for ``gpu``."""

    class Context:
        def __init__(self) -> None:
            self.valid, self.thread = True, threading.get_ident()

        def push(self) -> None:
            if not self.valid:
                raise FakeCudaError("cannot push an invalid context")
            gpu.driver_stack().append(self)
            gpu.pycuda_stack().append(self)

        def pop(self) -> None:  # pycuda: Context.pop() is static, it pops the current one
            stack = gpu.pycuda_stack()
            if not stack:
                raise FakeCudaError("cannot pop non-current context")
            gpu.driver_stack().pop()
            stack.pop()

        def detach(self) -> None:
            if not self.valid:
                raise FakeCudaError("cannot detach from invalid context")
            stack = gpu.pycuda_stack()
            if stack and stack[-1] is self:  # current: cuDevicePrimaryCtxRelease (no driver pop)
                gpu.released += 1
                stack.pop()
            elif self.thread == threading.get_ident():  # pushed (driver) and released
                gpu.driver_stack().append(self)
                gpu.released += 1
            self.valid = False  # on another thread: pycuda does nothing (the retain leaks)

    class Device:
        def __init__(self, index: int) -> None:
            if index >= 1:
                raise FakeCudaError(f"invalid device ordinal {index}")

        @staticmethod
        def count() -> int:
            return 1

        def name(self) -> str:
            return gpu.name

        def compute_capability(self) -> tuple[int, int]:
            return gpu.cc

        def total_memory(self) -> int:
            return gpu.total_memory

        def get_attribute(self, attr: str) -> int:
            assert attr == "MULTIPROCESSOR_COUNT", attr
            return gpu.sm_count

        def retain_primary_context(self) -> Context:
            gpu.retain_calls += 1
            gpu.retained += 1
            return Context()

    class DeviceAllocation:
        def __init__(self, nbytes: int) -> None:
            self.addr = gpu.alloc(nbytes)

        def __int__(self) -> int:
            return self.addr

        def free(self) -> None:
            gpu.free(self.addr)

    class HostAllocation(bytearray):
        freed = False

        def free(self) -> None:
            gpu.require_context("cuMemFreeHost")
            self.freed = True

    class Stream:
        _next = 0x5000

        def __init__(self) -> None:
            gpu.require_context("cuStreamCreate")
            Stream._next += 1
            self.handle = Stream._next

        def synchronize(self) -> None:
            gpu.require_context("cuStreamSynchronize")
            gpu.events.append("sync")
            if self.handle in gpu.capturing:  # illegal while capturing: it invalidates the capture
                gpu.capturing[self.handle] = "invalidated"
                raise FakeCudaError("cuStreamSynchronize: operation not permitted when stream is capturing")

    def pagelocked_empty(count: int, dtype) -> np.ndarray:
        gpu.require_context("cuMemHostAlloc")
        dtype = np.dtype(dtype)
        return np.ndarray((count,), dtype, buffer=HostAllocation(count * dtype.itemsize))

    def memcpy_htod_async(dest, src: np.ndarray, stream: Stream) -> None:
        gpu.require_context("cuMemcpyHtoDAsync")
        data = np.array(src, copy=True)
        gpu.run_or_record(stream.handle, lambda: gpu.write(int(dest), data))

    def memcpy_dtoh_async(dest: np.ndarray, src, stream: Stream) -> None:
        gpu.require_context("cuMemcpyDtoHAsync")

        def work() -> None:
            dest[...] = gpu.read(int(src), dest.dtype, dest.shape)

        gpu.run_or_record(stream.handle, work)

    return types.SimpleNamespace(
        init=lambda: None,
        Device=Device,
        Context=Context,
        Stream=Stream,
        device_attribute=types.SimpleNamespace(MULTIPROCESSOR_COUNT="MULTIPROCESSOR_COUNT"),
        get_driver_version=lambda: gpu.driver,
        mem_alloc=lambda nbytes: DeviceAllocation(nbytes),
        pagelocked_empty=pagelocked_empty,
        memcpy_htod_async=memcpy_htod_async,
        memcpy_dtoh_async=memcpy_dtoh_async,
    )


# ------------------------------------------------------------------- CUDA, ctypes


def _handle(arg) -> int:
    return int(arg.value or 0) if isinstance(arg, ctypes.c_void_p) else int(arg)


class FakeDriverApi:
    """The ``libcuda`` functions the engine calls, taking the ctypes arguments a CDLL does."""

    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu
        self.graphs: dict[int, list] = {}
        self.execs: dict[int, list] = {}
        self.next_id = 0x900

    def _new_id(self) -> int:
        self.next_id += 1
        return self.next_id

    def cuStreamBeginCapture_v2(self, stream, mode) -> int:
        self.gpu.calls["begin_capture"] += 1
        self.gpu.events.append("begin_capture")
        assert isinstance(mode, ctypes.c_int) and mode.value in (0, 1, 2)
        self.gpu.capturing[_handle(stream)] = []
        return 0

    def cuStreamEndCapture(self, stream, graph_ref) -> int:
        self.gpu.calls["end_capture"] += 1
        state = self.gpu.capturing.pop(_handle(stream), None)
        if state is None:
            return 401  # CUDA_ERROR_ILLEGAL_STATE: not capturing
        if state == "invalidated":
            graph_ref._obj.value = None
            return CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
        gid = self._new_id()
        self.graphs[gid] = state
        graph_ref._obj.value = gid
        return 0

    def cuGraphInstantiateWithFlags(self, exe_ref, graph, flags) -> int:
        gid = _handle(graph)
        if gid not in self.graphs:
            return 400
        eid = self._new_id()
        self.execs[eid] = list(self.graphs[gid])
        exe_ref._obj.value = eid
        return 0

    def cuGraphLaunch(self, exe, stream) -> int:
        work = self.execs.get(_handle(exe))
        if work is None:
            return 400  # CUDA_ERROR_INVALID_HANDLE
        self.gpu.calls["graph_launch"] += 1
        for w in work:
            w()
        return 0

    def cuGraphExecDestroy(self, exe) -> int:
        self.gpu.calls["exec_destroy"] += 1
        return 0 if self.execs.pop(_handle(exe), None) is not None else 400

    def cuGraphDestroy(self, graph) -> int:
        self.gpu.calls["graph_destroy"] += 1
        return 0 if self.graphs.pop(_handle(graph), None) is not None else 400

    def cuGetErrorName(self, rc, name_ref) -> int:
        names = {CUDA_ERROR_STREAM_CAPTURE_INVALIDATED: b"CUDA_ERROR_STREAM_CAPTURE_INVALIDATED", 401: b"CUDA_ERROR_ILLEGAL_STATE"}
        name_ref._obj.value = names.get(int(rc), b"CUDA_ERROR_UNKNOWN")
        return 0


class FakeRuntimeApi:
    """The ``libcudart`` functions the engine calls."""

    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu

    def cudaGetLastError(self) -> int:
        self.gpu.calls["get_last_error"] += 1
        rc, self.gpu.runtime_error = self.gpu.runtime_error, 0
        return rc

    def cudaRuntimeGetVersion(self, ref) -> int:
        ref._obj.value = self.gpu.runtime or 0
        return 0 if self.gpu.runtime else 35  # cudaErrorInsufficientDriver


# ---------------------------------------------------------------------- TensorRT


class Recorder:
    """The builder's calls, in order: ``(name, *args)``."""

    def __init__(self) -> None:
        self.calls: list[tuple] = []

    def get(self, name: str) -> list[tuple]:
        return [c[1:] for c in self.calls if c[0] == name]


def fake_tensorrt(
    gpu: FakeGpu | None = None,
    rec: Recorder | None = None,
    version: str = "10.3.0",
    parse_ok: bool = True,
    build_ok: bool = True,
    strongly_typed: bool = True,
    timing_accepts: bool = True,
    timing_after_build: bool = True,
    capture_fails: bool = False,
    deserialize_ok: bool = True,
    dtypes: dict[str, str] | None = None,
) -> types.SimpleNamespace:
    """A ``tensorrt`` module. ``timing_accepts=False``: ``set_timing_cache`` returns False for
    a non-empty cache (another device); ``timing_after_build=False``: ``get_timing_cache``
    returns None after the build; ``capture_fails``: the engine's enqueue fails while the
    stream is capturing; ``dtypes``: engine I/O types (default FLOAT / INT64)."""
    rec = rec if rec is not None else Recorder()
    io_types = {"audio": "FLOAT", "audio_lengths": "INT64", "tokens": "INT64", "token_lengths": "INT64", "has_audio": "FLOAT", "has_text": "FLOAT", "logits": "FLOAT"}
    io_types.update(dtypes or {})
    nptypes = {"FLOAT": np.float32, "INT64": np.int64, "INT32": np.int32, "HALF": np.float16}

    class TimingCache:
        def __init__(self, blob: bytes) -> None:
            self.blob = blob

        def serialize(self) -> bytes:
            return self.blob + b"+timing"

    class Config:
        progress_monitor = None

        def __init__(self) -> None:
            self.cache = None
            self.profiles: list[dict] = []

        def set_memory_pool_limit(self, pool, size) -> None:
            rec.calls.append(("workspace", size))

        def add_optimization_profile(self, p) -> None:
            self.profiles.append(dict(p.shapes))
            rec.calls.append(("profile", dict(p.shapes)))

        def create_timing_cache(self, blob) -> TimingCache:
            rec.calls.append(("timing_in", bytes(blob)))
            if bytes(blob).startswith(b"CORRUPT"):
                raise RuntimeError("timing cache: bad magic")
            return TimingCache(bytes(blob))

        def set_timing_cache(self, cache, ignore_mismatch) -> bool:
            rec.calls.append(("set_timing", bytes(cache.blob), ignore_mismatch))
            if cache.blob and not timing_accepts:
                return False
            self.cache = cache
            return True

        def get_timing_cache(self):
            return self.cache if timing_after_build else None

        def set_flag(self, flag) -> None:  # a precision flag would be recorded here
            rec.calls.append(("set_flag", flag))

    class OptProfile:
        def __init__(self) -> None:
            self.shapes: dict = {}

        def set_shape(self, name, lo, opt, hi) -> None:
            self.shapes[name] = (tuple(lo), tuple(opt), tuple(hi))

    class Network:
        num_inputs = len(INPUTS)

        def get_input(self, i):
            return types.SimpleNamespace(name=INPUTS[i])

    class Builder:
        def __init__(self, logger) -> None:
            pass

        def create_network(self, flags: int) -> Network:
            rec.calls.append(("network_flags", flags))
            return Network()

        def create_builder_config(self) -> Config:
            return Config()

        def create_optimization_profile(self) -> OptProfile:
            return OptProfile()

        def build_serialized_network(self, network, config):
            rec.calls.append(("build", type(config.progress_monitor).__name__))
            if not build_ok:
                return None
            return PLAN_MAGIC + json.dumps({"profile": {k: [list(s) for s in v] for k, v in config.profiles[0].items()}}).encode()

    class Parser:
        num_errors = 0 if parse_ok else 1

        def __init__(self, network, logger) -> None:
            pass

        def parse_from_file(self, path: str) -> bool:
            rec.calls.append(("parse", path))
            return parse_ok

        def get_error(self, i: int) -> str:
            return "In node 3 (importLSTM): UNSUPPORTED_NODE: layout"

    class IProgressMonitor:
        def __init__(self) -> None:
            pass

    class ExecutionContext:
        def __init__(self, engine) -> None:
            self.engine, self.shapes, self.addresses = engine, {}, {}
            self.ran: set = set()  # shape sets run before: the first run of one allocates scratch memory

        def set_input_shape(self, name: str, shape) -> bool:
            lo, _, hi = self.engine.profile[name]
            shape = tuple(int(d) for d in shape)
            if len(shape) != len(lo) or any(not a <= d <= b for a, d, b in zip(lo, shape, hi)):
                return False
            self.shapes[name] = shape
            return True

        def get_tensor_shape(self, name: str) -> tuple:
            if name == "logits":
                return (self.shapes["audio"][0], N_CLASSES) if "audio" in self.shapes else (-1, N_CLASSES)
            return self.shapes.get(name, ())

        def set_tensor_address(self, name: str, address: int) -> bool:
            self.addresses[name] = int(address)
            return True

        def execute_async_v3(self, stream_handle: int) -> bool:
            gpu.require_context("enqueueV3")
            if gpu.runtime_error:  # TensorRT checks cudaGetLastError after its launches
                gpu.runtime_error = 0
                return False
            shapes, addresses = dict(self.shapes), dict(self.addresses)  # what a graph bakes in

            def work() -> None:
                if gpu.before_execute is not None:
                    gpu.before_execute()
                feed = {n: gpu.read(addresses[n], nptypes[io_types[n]], shapes[n]) for n in INPUTS}
                gpu.write(addresses["logits"], reference_logits(feed).astype(nptypes[io_types["logits"]]))
                gpu.calls["execute"] += 1

            state = gpu.capturing.get(stream_handle)
            first_run = tuple(sorted(shapes.items())) not in self.ran
            if state is not None and (capture_fails or first_run):  # an op (or allocation) capture does not permit
                gpu.capturing[stream_handle] = "invalidated"
                gpu.runtime_error = CUDA_ERROR_STREAM_CAPTURE_INVALIDATED
                return False
            if state == "invalidated":
                return False
            self.ran.add(tuple(sorted(shapes.items())))
            gpu.events.append("enqueue")
            gpu.run_or_record(stream_handle, work)
            return True

    class Engine:
        def __init__(self, profile: dict) -> None:
            self.profile = {k: tuple(tuple(s) for s in v) for k, v in profile.items()}
            self.names = list(INPUTS) + ["logits"]
            self.num_io_tensors = len(self.names)

        def get_tensor_name(self, i: int) -> str:
            return self.names[i]

        def get_tensor_mode(self, name: str) -> str:
            return "OUTPUT" if name == "logits" else "INPUT"

        def get_tensor_dtype(self, name: str) -> str:
            return io_types[name]

        def create_execution_context(self) -> ExecutionContext:
            gpu.require_context("createExecutionContext")
            return ExecutionContext(self)

    class Runtime:
        def __init__(self, logger) -> None:
            pass

        def deserialize_cuda_engine(self, payload: bytes):
            gpu.calls["deserialize"] += 1
            if not deserialize_ok or not bytes(payload).startswith(PLAN_MAGIC):
                return None
            return Engine(json.loads(bytes(payload)[len(PLAN_MAGIC) :])["profile"])

    flags = types.SimpleNamespace(STRONGLY_TYPED=1) if strongly_typed else types.SimpleNamespace()
    return types.SimpleNamespace(
        __version__=version,
        Logger=type("Logger", (), {"WARNING": 2, "__init__": lambda self, s: None}),
        NetworkDefinitionCreationFlag=flags,
        MemoryPoolType=types.SimpleNamespace(WORKSPACE=0),
        Builder=Builder,
        OnnxParser=Parser,
        IProgressMonitor=IProgressMonitor,
        Runtime=Runtime,
        TensorIOMode=types.SimpleNamespace(INPUT="INPUT", OUTPUT="OUTPUT"),
        nptype=lambda t: nptypes[t],
        recorder=rec,
    )


def install(monkeypatch, gpu: FakeGpu, trt: types.SimpleNamespace, with_runtime_api: bool = True):
    """Point ``runtime.engines.trt`` at the fakes; returns ``(driver_api, runtime_api)``."""
    import runtime.engines.trt as trt_mod

    cuda = fake_pycuda(gpu)
    driver, runtime = FakeDriverApi(gpu), FakeRuntimeApi(gpu) if with_runtime_api else None
    monkeypatch.setattr(trt_mod, "_trt", trt)  # require_tensorrt itself runs: version check, cuInit, device count
    monkeypatch.setattr(trt_mod, "_cuda", cuda)
    monkeypatch.setitem(trt_mod._LIBS, "driver", driver)
    monkeypatch.setitem(trt_mod._LIBS, "runtime", runtime)
    return driver, runtime
