"""What machine a benchmark ran on: CPU, cores, threads, GPU, driver, CUDA, library
versions, and on a Jetson the module, L4T release and power mode, plus ``tegrastats``
samples taken while the benchmark runs.

Everything is read from files and tools that are present on the machine; what is
missing is recorded as ``None`` rather than guessed.
"""

from __future__ import annotations

import os
import platform
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

from runtime.spec import package_versions

PACKAGES = (
    "numpy",
    "onnxruntime",
    "onnxruntime-gpu",
    "torch",
    "tensorrt",
    "pycuda",
    "librosa",
    "tokenizers",
    "soxr",
    "soundfile",
    "onnx",
    "scipy",
)
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "ORT_NUM_THREADS")
L4T_RELEASE = Path("/etc/nv_tegra_release")
DEVICE_TREE_MODEL = Path("/proc/device-tree/model")


def _run(cmd: list[str], timeout: float = 10.0) -> str | None:
    """Stdout of ``cmd``, or None when the tool is missing or fails."""
    if shutil.which(cmd[0]) is None:
        return None
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=True)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip()


def versions() -> dict[str, str]:
    """Installed versions of the packages that decide the numbers."""
    out = package_versions(PACKAGES)
    if "tensorrt" not in out:  # JetPack installs the bindings with apt, without pip metadata
        try:
            import tensorrt

            out["tensorrt"] = tensorrt.__version__
        except ImportError:
            pass
    try:
        import onnxruntime

        out["onnxruntime_providers"] = ",".join(onnxruntime.get_available_providers())
    except ImportError:
        pass
    return out


def cpu_model() -> str:
    """CPU model name (x86 ``model name``; on ARM the device-tree model or ``lscpu``)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^model name\s*:\s*(.+)$", text, re.MULTILINE)
        if m:
            return m.group(1).strip()
    except OSError:
        pass
    lscpu = _run(["lscpu"])
    if lscpu:
        m = re.search(r"^Model name:\s*(.+)$", lscpu, re.MULTILINE)
        if m:
            return m.group(1).strip()
    return platform.processor() or platform.machine()


def cpu_info() -> dict:
    import psutil

    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - not Linux
        usable = os.cpu_count()
    freq = psutil.cpu_freq()
    return {
        "model": cpu_model(),
        "arch": platform.machine(),
        "logical_cores": os.cpu_count(),
        "physical_cores": psutil.cpu_count(logical=False),
        "usable_cores": usable,  # this process's CPU affinity (containers, taskset)
        "max_mhz": round(freq.max, 0) if freq and freq.max else None,
        "memory_gb": round(psutil.virtual_memory().total / 2**30, 1),
    }


def thread_settings() -> dict:
    """Thread-count environment variables and the live PyTorch setting (if loaded)."""
    out: dict = {k: os.environ.get(k) for k in THREAD_ENV}
    if "torch" in sys.modules:
        torch = sys.modules["torch"]
        out["torch_intra_op_threads"] = torch.get_num_threads()
        out["torch_inter_op_threads"] = torch.get_num_interop_threads()
    return out


def gpu_info() -> dict | None:
    """GPU name, driver, CUDA and cuDNN versions (``nvidia-smi`` and PyTorch), or None."""
    info: dict = {}
    smi = _run(["nvidia-smi", "-i", visible_gpu(), "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"])
    for line in (smi or "").splitlines():  # the first line of three fields (skips warnings)
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 3:
            info.update(name=fields[0], driver=fields[1], memory_total=fields[2])
            m = re.search(r"CUDA Version:\s*([\d.]+)", _run(["nvidia-smi"]) or "")
            info["cuda_driver_api"] = m.group(1) if m else None
            break
    torch = _torch_cuda()
    if torch is not None:
        info["name"] = torch.cuda.get_device_name()  # the GPU this process uses
        info["torch_cuda"] = torch.version.cuda
        info["cudnn"] = torch.backends.cudnn.version()
    return info or None


def jetson_info() -> dict | None:
    """Jetson module, L4T release and nvpmodel power mode; None when not a Jetson."""
    if not L4T_RELEASE.is_file():
        return None
    info: dict = {"l4t_release": L4T_RELEASE.read_text(errors="replace").splitlines()[0].strip()}
    try:
        info["module"] = DEVICE_TREE_MODEL.read_text(errors="replace").strip("\x00\n ")
    except OSError:
        info["module"] = None
    q = _run(["nvpmodel", "-q"])
    if q:
        m = re.search(r"NV Power Mode:\s*(.+)", q)
        info["power_mode"] = m.group(1).strip() if m else q.splitlines()[0]
        ids = [line.strip() for line in q.splitlines() if line.strip().isdigit()]
        info["power_mode_id"] = int(ids[0]) if ids else None
    else:
        info["power_mode"] = None
    return info


def loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:  # pragma: no cover
        return None


def code_version() -> dict | None:
    """The git commit the benchmarked code is at, and the tracked files changed since
    (results under ``benchmarks/results`` excluded); None outside a git checkout."""
    root = Path(__file__).resolve().parent.parent
    commit = _run(["git", "-C", str(root), "rev-parse", "HEAD"])
    if commit is None:
        return None
    changed = _run(["git", "-C", str(root), "diff", "--name-only", "HEAD", "--", ".", ":(exclude)benchmarks/results"]) or ""
    return {"commit": commit, "modified_files": [f for f in changed.splitlines() if f]}


def machine_info() -> dict:
    """The ``machine`` object of ``latency.json``."""
    return {
        "hostname_hash": _short_hash(platform.node()),  # tells runs apart without naming the host
        "platform": platform.platform(),
        "cpu": cpu_info(),
        "threads": thread_settings(),
        "gpu": gpu_info(),
        "jetson": jetson_info(),
        "versions": versions(),
        "loadavg_start": loadavg(),
    }


def _short_hash(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:8]


def machine_slug(info: dict) -> str:
    """A folder name for ``benchmarks/results/``: Jetson module, else CPU (+ GPU)."""
    if info.get("jetson") and info["jetson"].get("module"):
        base = info["jetson"]["module"]
    else:
        cpu = re.sub(r"\((r|tm)\)|cpu|processor|@.*$|\d+(th|rd|nd|st) gen", "", info["cpu"]["model"], flags=re.IGNORECASE)
        base = f"{cpu} {info['cpu']['usable_cores']}c"
        if info.get("gpu") and info["gpu"].get("name"):
            base += " " + info["gpu"]["name"].replace("NVIDIA", "")
    slug = re.sub(r"[^a-z0-9]+", "-", base.lower()).strip("-")
    return slug or "unknown"


def _torch_cuda():
    """The loaded torch module when it can use a CUDA GPU, else None (never imports torch)."""
    torch = sys.modules.get("torch")
    return torch if torch is not None and torch.cuda.is_available() else None


def visible_gpu() -> str:
    """The first GPU this process may use, as ``nvidia-smi -i`` takes it (an index or a UUID
    from ``CUDA_VISIBLE_DEVICES``; nvidia-smi itself ignores that variable)."""
    return (os.environ.get("CUDA_VISIBLE_DEVICES") or "0").split(",")[0].strip() or "0"


def device_used_mb() -> tuple[float, str] | None:
    """Memory in use on the GPU this process runs on, whoever holds it, and how it was read."""
    torch = _torch_cuda()
    if torch is not None:
        free, total = torch.cuda.mem_get_info()
        return (total - free) / 2**20, "torch.cuda.mem_get_info"
    out = _run(["nvidia-smi", "-i", visible_gpu(), "--query-gpu=memory.used", "--format=csv,noheader,nounits"])
    for line in (out or "").splitlines():  # the first number (past warnings; "[N/A]" is none)
        try:
            return float(line.strip()), "nvidia-smi"
        except ValueError:
            continue
    return None


class GpuMemory:
    """Peak GPU memory of each measured row: ``row()`` gives ``(MB, how it was measured)``.

    - Rows that run in PyTorch (the torch engine and the baseline): the peak of PyTorch's
      caching allocator during the row (``torch.cuda.max_memory_reserved``, its peak reset
      by ``start_row``), less what it held before the engine was loaded (the baseline's
      weights, which stay loaded for the run). The CUDA context itself (a few hundred MB)
      is not in it.
    - Other engines allocate outside PyTorch (ONNX Runtime's arena, TensorRT's execution
      context and its pycuda buffers), and keep what their first calls allocated: the GPU's
      used memory after the row minus its reading before the engine was loaded (``mark``).
      Other processes using the same GPU meanwhile would count too.
    """

    TORCH_ENGINES = ("torch", "baseline")

    def __init__(self) -> None:
        self.level: tuple[float, str] | None = None
        self.torch_level = 0  # bytes PyTorch's allocator held at the last mark

    def mark(self) -> None:
        """Before loading an engine: the GPU memory that is not its."""
        torch = _torch_cuda()
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.empty_cache()  # the baseline's cached blocks: free them, not count them
            self.torch_level = torch.cuda.memory_reserved()
        self.level = device_used_mb()

    def start_row(self) -> None:
        torch = _torch_cuda()
        if torch is not None and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats()

    def row(self, engine: str) -> tuple[float | None, str | None]:
        if engine in self.TORCH_ENGINES:
            torch = _torch_cuda()
            if torch is None or not torch.cuda.is_initialized():
                return None, None
            peak = max(torch.cuda.max_memory_reserved() - self.torch_level, 0)
            return round(peak / 2**20, 1), "peak of PyTorch's allocator during the row, less what it held before the engine loaded"
        now = device_used_mb()
        if now is None or self.level is None:
            return None, None
        return round(max(now[0] - self.level[0], 0.0), 1), f"GPU memory used after the row minus before the engine loaded ({now[1]})"


class TegraStats:
    """Samples ``tegrastats`` in the background (Jetson only; a no-op elsewhere).

    The summary holds the mean and max of RAM used, CPU load (mean over cores), GPU
    load (``GR3D_FREQ``) and board input power (``POWER_IN``'s rail), plus the
    first raw line so that fields this parser does not know are still recorded.
    """

    def __init__(self, interval_ms: int = 500):
        self.interval_ms = interval_ms
        self.lines: list[str] = []
        self._proc: subprocess.Popen | None = None
        self._reader: threading.Thread | None = None

    @property
    def available(self) -> bool:
        return shutil.which("tegrastats") is not None

    def __enter__(self) -> TegraStats:
        if self.available:
            self._proc = subprocess.Popen(
                ["tegrastats", "--interval", str(self.interval_ms)], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
            )
            self._reader = threading.Thread(target=self._read, daemon=True)
            self._reader.start()
        return self

    def _read(self) -> None:
        assert self._proc is not None and self._proc.stdout is not None
        for line in self._proc.stdout:
            self.lines.append(line.strip())

    def __exit__(self, *exc: object) -> None:
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self._proc.kill()
            if self._reader is not None:
                self._reader.join(timeout=5)

    def summary(self) -> dict | None:
        if not self.available:
            return None
        return {"interval_ms": self.interval_ms, "samples": len(self.lines), **summarise_tegrastats(self.lines)}


# The board's input power rail in tegrastats: VDD_IN (Orin NX / Nano, Xavier NX), POM_5V_IN
# (Nano, TX2), VIN_SYS_5V0 (AGX Orin, which has no VDD_IN).
POWER_IN = re.compile(r"\b(VDD_IN|POM_5V_IN|VIN_SYS_5V0) (\d+)mW")


def parse_tegrastats(line: str) -> dict[str, float]:
    """The fields of one ``tegrastats`` line this module summarises."""
    out: dict[str, float] = {}
    m = re.search(r"RAM (\d+)/(\d+)MB", line)
    if m:
        out["ram_used_mb"] = float(m.group(1))
    m = re.search(r"CPU \[([^\]]*)\]", line)
    if m:
        loads = [float(x) for x in re.findall(r"(\d+)%@", m.group(1))]
        if loads:
            out["cpu_load_pct"] = sum(loads) / len(loads)
    m = re.search(r"GR3D_FREQ (\d+)%", line)
    if m:
        out["gpu_load_pct"] = float(m.group(1))
    m = POWER_IN.search(line)
    if m:
        out["power_in_mw"] = float(m.group(2))
    return out


def summarise_tegrastats(lines: list[str]) -> dict:
    parsed = [parse_tegrastats(line) for line in lines]
    keys = sorted({k for p in parsed for k in p})
    rails = {m.group(1) for m in map(POWER_IN.search, lines) if m}
    out: dict = {"first_line": lines[0] if lines else None, "power_in_rail": ",".join(sorted(rails)) or None}
    for k in keys:
        vals = [p[k] for p in parsed if k in p]
        out[k] = {"mean": round(sum(vals) / len(vals), 1), "max": max(vals)}
    return out
