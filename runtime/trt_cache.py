"""TensorRT engine cache: optimisation profile, cache key, file format, checks and build lock.

Pure Python (no TensorRT, no GPU), shared by ``export.trt`` (which builds engines) and
``runtime.engines.trt`` (which loads them), and unit-tested without either.

A serialised engine only runs on the GPU model, driver and TensorRT version that built it,
for the ONNX graph, precision and shape ranges it was built from. ``CacheKey`` holds all of
those (and what else changes the kernels chosen: SM count and device memory, since Jetson
modules share a name and compute capability; the CUDA runtime; TF32; the workspace limit);
its digest names the file, and the file's header repeats the key with the payload's length
and sha256, so a file that is truncated, corrupted, or built for something else is detected
and rebuilt instead of being handed to TensorRT.

Trust. A TensorRT engine is code: deserialising it runs what it holds (kernels, plugins).
The header's sha256 sits in the same file as the payload, so it only detects accidents
(a crash mid-write, a full disk, a flipped bit); anyone who can write the file can write a
matching header. The trust anchor is therefore who can write the files:

- the cache folder is created 0700 and cache files are written 0600; a folder is used only
  if it is a real directory (not a symbolic link) owned by this user and writable by no
  one else (``check_private_dir``), else nothing is read from or written to it and the
  engine is built in memory (a warning says why);
- a file is opened with ``O_NOFOLLOW`` (a symlink is refused, and replaced on the next
  write, since ``os.replace`` renames over the link, not its target) and ``O_NONBLOCK`` (a
  FIFO cannot hang the open), then checked with ``fstat`` on the open descriptor, so there
  is no check-then-open race: it must be a regular file of this user that no one else can
  write (``read_trusted``). A refused engine is logged and rebuilt; a refused timing cache
  is logged and replaced by an empty one.

A keyed hash (HMAC) would add nothing: its key would live beside the cache, readable by
exactly the users who can already write the cache, and a process running as this user can
run code as this user anyway.

File layout: ``MAGIC`` (8 bytes) | header length (uint32 little-endian) | header (UTF-8
JSON) | engine bytes. Writes go to a temporary file in the same folder, are flushed and
fsync'ed, then ``os.replace``'d over the target, so readers never see a partial file.
Builds into one cache folder are serialised across processes and threads by an exclusive
``flock`` on the folder (``build_lock``): the second process to start waits, then loads
what the first built; the shared timing cache is never written by two builds at once.
"""

from __future__ import annotations

import dataclasses
import errno
import hashlib
import json
import logging
import os
import re
import stat
import struct
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: builds are not serialised across processes
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

MAGIC = b"EMOTRT01"
FORMAT_VERSION = 2  # 2: the key has the device, driver, CUDA runtime and workspace fields
_LEN = struct.Struct("<I")
MAX_HEADER_BYTES = 1 << 20


class CacheError(Exception):
    """A cache file cannot be used (subclasses say why)."""


class CacheMissing(CacheError):
    """No cache file."""


class CacheCorrupt(CacheError):
    """Bad magic, unreadable header, truncated or altered payload."""


class CacheMismatch(CacheError):
    """A valid file built for another GPU, TensorRT version, graph, precision or profile."""


class CacheUntrusted(CacheError):
    """The file or its folder may have been written by another user, or is a link."""


def _triple(name: str, values: tuple, cast: type) -> tuple:
    vals = tuple(cast(v) for v in values)
    if len(vals) != 3 or not 0 < vals[0] <= vals[1] <= vals[2]:
        raise ValueError(f"{name} must be three positive numbers min <= opt <= max, got {values}")
    return vals


@dataclass(frozen=True)
class Profile:
    """Shape ranges the engine is optimised for (TensorRT optimisation profile).

    The runtime pads a batch up to the minimum audio and token lengths (the model is
    length-aware, so padding never changes a result) and splits batches above the maximum.
    """

    batch: tuple[int, int, int] = (1, 8, 32)  # items per engine call: min, opt, max
    audio_seconds: tuple[float, float, float] = (0.5, 4.0, 30.0)  # padded audio length, s
    tokens: tuple[int, int, int] = (1, 32, 128)  # padded token length incl. [CLS]/[SEP]
    sample_rate: int = 16000  # Hz; converts seconds to samples

    def __post_init__(self) -> None:
        object.__setattr__(self, "batch", _triple("batch", self.batch, int))
        object.__setattr__(self, "audio_seconds", _triple("audio_seconds", self.audio_seconds, float))
        object.__setattr__(self, "tokens", _triple("tokens", self.tokens, int))
        if self.sample_rate <= 0:
            raise ValueError(f"sample_rate must be > 0, got {self.sample_rate}")

    @property
    def samples(self) -> tuple[int, int, int]:
        return tuple(round(s * self.sample_rate) for s in self.audio_seconds)  # type: ignore[return-value]

    def shapes(self, inputs: tuple[str, ...] = ("audio", "audio_lengths", "tokens", "token_lengths", "has_audio", "has_text")) -> dict[str, tuple[tuple[int, ...], ...]]:
        """``{input: (min_shape, opt_shape, max_shape)}`` for the named graph inputs."""
        b, n, t = self.batch, self.samples, self.tokens
        table = {
            "audio": tuple((b[i], n[i]) for i in range(3)),
            "tokens": tuple((b[i], t[i]) for i in range(3)),
        }
        return {name: table.get(name, tuple((b[i],) for i in range(3))) for name in inputs}

    def covers(self, batch: int, samples: int | None = None, tokens: int | None = None) -> bool:
        """True when a padded batch of these sizes fits the profile."""
        ok = self.batch[0] <= batch <= self.batch[2]
        if samples is not None:
            ok &= self.samples[0] <= samples <= self.samples[2]
        if tokens is not None:
            ok &= self.tokens[0] <= tokens <= self.tokens[2]
        return ok

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Profile:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in data.items() if k in known})

    @classmethod
    def for_spec(
        cls,
        spec: Any,
        batch: tuple[int, int, int] | None = None,
        audio_seconds: tuple[float, float, float] | None = None,
        tokens: tuple[int, int, int] | None = None,
        max_batch: int | None = None,
    ) -> Profile:
        """The kiosk defaults fitted to a model folder: audio from the shortest to the longest
        clip the front-end accepts, tokens up to the spec's ``max_tokens``; batches of 1-32
        (opt 8), or 1-``max_batch`` (opt ``min(8, max_batch)``) when ``max_batch`` is given
        and ``batch`` is not."""
        fe = spec.frontend
        opt_s = min(max(4.0, fe.min_audio_seconds), fe.max_audio_seconds)
        if batch is None and max_batch is not None:
            batch = (1, min(8, int(max_batch)), int(max_batch))
        return cls(
            batch=batch or (1, 8, 32),
            audio_seconds=audio_seconds or (fe.min_audio_seconds, opt_s, fe.max_audio_seconds),
            tokens=tokens or (1, min(32, spec.max_tokens), spec.max_tokens),
            sample_rate=fe.sample_rate,
        )


@dataclass(frozen=True)
class CacheKey:
    """Everything an engine depends on. ``digest`` names the cache file."""

    gpu_name: str  # e.g. "NVIDIA H100 80GB HBM3", "Orin"
    compute_capability: str  # "9.0", "8.7"
    sm_count: int  # streaming multiprocessors (Orin modules share a name and capability)
    total_memory: int  # device memory, bytes
    driver_version: str  # CUDA driver API version, "12.6"
    cuda_runtime: str  # CUDA runtime (cudart) version in the process, "12.4", or "unknown"
    tensorrt_version: str  # trt.__version__
    onnx_sha256: str  # of the exact ONNX file parsed
    precision: str  # fp32 | fp16 | int8 (the graph variant)
    profile: Profile
    tf32: str  # engines.base.tf32_setting() at build time
    workspace_bytes: int | None  # builder workspace limit; None: TensorRT's default

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["profile"] = self.profile.to_dict()
        d["format"] = FORMAT_VERSION
        return d

    @property
    def digest(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()

    def _gpu_slug(self) -> str:
        return re.sub(r"[^A-Za-z0-9]+", "-", self.gpu_name).strip("-").lower() or "gpu"

    def filename(self, stem: str) -> str:
        """``<stem>.<precision>.<gpu>-sm<cc>-trt<version>.<digest[:16]>.engine``."""
        cc = self.compute_capability.replace(".", "")
        return f"{stem}.{self.precision}.{self._gpu_slug()}-sm{cc}-trt{self.tensorrt_version}.{self.digest[:16]}.engine"

    def timing_cache_name(self) -> str:
        """One timing cache per device (model, SM count, memory, driver, CUDA runtime) and
        TensorRT version, shared by all graphs: ``timing.<gpu>-sm<cc>-trt<version>.<device digest[:12]>.cache``."""
        device = [self.gpu_name, self.compute_capability, self.sm_count, self.total_memory, self.driver_version, self.cuda_runtime, self.tensorrt_version]
        digest = hashlib.sha256(json.dumps(device).encode()).hexdigest()[:12]
        return f"timing.{self._gpu_slug()}-sm{self.compute_capability.replace('.', '')}-trt{self.tensorrt_version}.{digest}.cache"


def default_cache_dir() -> Path:
    """``$EMOTECH_CACHE/trt``, else ``$XDG_CACHE_HOME/emotech/trt``, else ``~/.cache/emotech/trt``
    (not the model folder, which may be read-only or shared between machines)."""
    if os.environ.get("EMOTECH_CACHE"):
        return Path(os.environ["EMOTECH_CACHE"]) / "trt"
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "emotech" / "trt"


def atomic_write(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one; the
    file gets ``mode`` (0o644: results anyone may read; caches use 0o600). A symlink at
    ``path`` is replaced, never followed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ------------------------------------------------------------------ ownership checks


def _untrusted(st: os.stat_result, what: str) -> str | None:
    """Why a file or folder with status ``st`` may hold another user's bytes, or None."""
    uid = os.geteuid()
    if st.st_uid != uid:
        return f"{what} is owned by uid {st.st_uid}, not this user ({uid})"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"{what} is writable by other users (mode {stat.S_IMODE(st.st_mode):o})"
    return None


def check_private_dir(folder: Path) -> None:
    """Raise ``CacheUntrusted`` unless ``folder`` is a real directory (not a link) owned by
    this user and writable by no one else (``FileNotFoundError`` if it does not exist)."""
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        raise CacheUntrusted(f"the cache folder {folder} is {'a symbolic link' if stat.S_ISLNK(st.st_mode) else 'not a directory'}")
    reason = _untrusted(st, f"the cache folder {folder}")
    if reason:
        raise CacheUntrusted(f"{reason}; use a private folder (chmod 700) or --cache-dir")


def private_dir(folder: Path) -> Path:
    """``folder``, created 0700 if absent (missing parents with the umask's mode), checked
    by ``check_private_dir``."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(folder, 0o700)
    except FileExistsError:
        pass
    check_private_dir(folder)
    return folder


def read_trusted(path: Path) -> bytes:
    """The bytes of ``path`` if its folder passes ``check_private_dir`` and the file, opened
    without following a symlink, is a regular file of this user that no one else can write.

    Raises:
        CacheMissing: no such file (or folder).
        CacheUntrusted: the folder or the file fails the checks, or the file is a link.
        CacheCorrupt: it cannot be read.
    """
    path = Path(path)
    try:
        check_private_dir(path.parent)
    except FileNotFoundError as e:
        raise CacheMissing(f"{path} does not exist") from e
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError as e:
        raise CacheMissing(f"{path} does not exist") from e
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise CacheUntrusted(f"{path} is a symbolic link") from e
        raise CacheCorrupt(f"cannot open {path}: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise CacheUntrusted(f"{path} is not a regular file")
        reason = _untrusted(st, str(path))
        if reason:
            raise CacheUntrusted(reason)
    except BaseException:
        os.close(fd)
        raise
    with os.fdopen(fd, "rb") as fh:
        try:
            return fh.read()
        except OSError as e:
            raise CacheCorrupt(f"cannot read {path}: {e.strerror}") from e


def write_private(path: Path, data: bytes) -> None:
    """``atomic_write`` into a private folder (``private_dir``), readable by this user only."""
    private_dir(Path(path).parent)
    atomic_write(path, data, mode=0o600)


@contextmanager
def build_lock(folder: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the private cache ``folder`` while building into it.
    The lock goes with its holder: a crashed build never blocks the next one."""
    if fcntl is None:  # pragma: no cover - not POSIX
        yield
        return
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0))
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("waiting for another process building into %s", folder)
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


# ---------------------------------------------------------------------- engine files


def pack(key: CacheKey, payload: bytes, extra: dict[str, Any] | None = None) -> bytes:
    """Header + payload bytes of a cache file."""
    header = {
        "key": key.to_dict(),
        "digest": key.digest,
        "payload_bytes": len(payload),
        "payload_sha256": hashlib.sha256(payload).hexdigest(),
        **(extra or {}),
    }
    head = json.dumps(header, sort_keys=True).encode()
    return MAGIC + _LEN.pack(len(head)) + head + payload


def unpack(blob: bytes, key: CacheKey | None = None) -> tuple[dict[str, Any], bytes]:
    """Header and payload of a cache file's bytes, checked.

    Raises:
        CacheCorrupt: bad magic or header, truncated or altered payload.
        CacheMismatch: the file is intact but was built for a different ``key``.
    """
    if len(blob) < len(MAGIC) + _LEN.size or blob[: len(MAGIC)] != MAGIC:
        raise CacheCorrupt("not an EmoTech engine cache file (bad magic or too short)")
    (n,) = _LEN.unpack_from(blob, len(MAGIC))
    start = len(MAGIC) + _LEN.size
    if n > MAX_HEADER_BYTES or start + n > len(blob):
        raise CacheCorrupt("truncated header")
    try:
        header = json.loads(blob[start : start + n].decode())
        size, sha = int(header["payload_bytes"]), str(header["payload_sha256"])
    except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
        raise CacheCorrupt(f"unreadable header: {e}") from e
    payload = blob[start + n :]
    if len(payload) != size:
        raise CacheCorrupt(f"payload is {len(payload)} bytes, header says {size} (truncated or appended)")
    if hashlib.sha256(payload).hexdigest() != sha:
        raise CacheCorrupt("payload sha256 does not match the header")
    if key is not None and header.get("digest") != key.digest:
        theirs = header.get("key", {})
        diff = sorted(k for k, v in key.to_dict().items() if theirs.get(k) != v)
        raise CacheMismatch(f"built for a different {', '.join(diff) or 'key'}")
    return header, payload


def read(path: Path, key: CacheKey) -> bytes:
    """The engine bytes cached at ``path`` for ``key`` (raises a ``CacheError`` subclass)."""
    return unpack(read_trusted(path), key)[1]


def write(path: Path, key: CacheKey, payload: bytes, extra: dict[str, Any] | None = None) -> None:
    write_private(path, pack(key, payload, extra))


def read_timing_cache(path: Path) -> bytes:
    """A timing cache's bytes, or ``b""`` (an empty cache) when it is missing or refused (logged)."""
    try:
        return read_trusted(path)
    except CacheMissing:
        return b""
    except CacheError as e:
        logger.warning("TensorRT timing cache not used: %s", e)
        return b""


def _build(build: Callable[[], bytes]) -> bytes:
    payload = build()
    if not payload:
        raise RuntimeError("the TensorRT build returned no engine")
    return payload


def load_or_build(path: Path, key: CacheKey, build: Callable[[], bytes], extra: dict[str, Any] | None = None) -> tuple[bytes, bool]:
    """Engine bytes for ``key``: from ``path`` when it holds a valid engine for exactly this
    key and passes ``read_trusted``'s checks, else from ``build()``, then cached atomically.
    Returns ``(bytes, built)``.

    A corrupt, mismatched or untrusted file is logged and replaced. Builds hold
    ``build_lock`` on the folder: a process that waited for another's build loads its
    result instead of building again. A folder that is not private is neither read nor
    written (the engine is built in memory, logged); a failed cache write is logged and the
    built engine used.
    """
    path = Path(path)
    try:
        return read(path, key), False
    except CacheMissing:
        pass
    except CacheError as e:
        logger.warning("TensorRT engine cache %s is unusable (%s); rebuilding it", path, e)
    try:
        private_dir(path.parent)
    except (CacheUntrusted, OSError) as e:
        logger.warning("TensorRT engine not cached: %s", e)
        return _build(build), True
    with build_lock(path.parent):
        try:
            payload = read(path, key)
        except CacheError:
            pass
        else:
            logger.info("TensorRT engine %s was built by another process meanwhile; loading it", path.name)
            return payload, False
        payload = _build(build)
        try:
            write(path, key, payload, extra)
        except (CacheUntrusted, OSError) as e:  # a full disk or a changed folder must not lose a finished build
            logger.warning("TensorRT engine not cached: %s", e)
    return payload, True


def parse_triple(text: str, cast: type = int) -> tuple:
    """``"1,8,32"`` -> ``(1, 8, 32)`` for CLI options (raises ``ValueError``)."""
    parts = [p for p in re.split(r"[,:\s]+", text.strip()) if p]
    if len(parts) != 3:
        raise ValueError(f"expected three comma-separated values min,opt,max, got {text!r}")
    return tuple(cast(p) for p in parts)
