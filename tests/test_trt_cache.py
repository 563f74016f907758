"""Engine-cache logic without TensorRT: profile, key, file format, rebuild decisions, the
ownership and symlink checks, and the build lock (two real processes)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import textwrap
import time

import pytest

from runtime import trt_cache
from runtime.trt_cache import CacheCorrupt, CacheKey, CacheMismatch, CacheMissing, CacheUntrusted, Profile
from tests.helpers import REPO


def _key(**changes) -> CacheKey:
    base = CacheKey(
        gpu_name="NVIDIA Orin",
        compute_capability="8.7",
        sm_count=16,
        total_memory=64 << 30,
        driver_version="12.6",
        cuda_runtime="12.4",
        tensorrt_version="10.3.0",
        onnx_sha256="ab" * 32,
        precision="fp16",
        profile=Profile(),
        tf32="allowed (the library's default)",
        workspace_bytes=None,
    )
    return dataclasses.replace(base, **changes)


def test_profile_defaults_and_shapes():
    p = Profile()
    assert p.batch == (1, 8, 32) and p.samples == (8000, 64000, 480000) and p.tokens == (1, 32, 128)
    shapes = p.shapes()
    assert shapes["audio"] == ((1, 8000), (8, 64000), (32, 480000))
    assert shapes["tokens"] == ((1, 1), (8, 32), (32, 128))
    assert shapes["audio_lengths"] == ((1,), (8,), (32,)) and shapes["has_text"] == ((1,), (8,), (32,))
    assert p.covers(4, 16000, 20) and not p.covers(33) and not p.covers(4, 500_000) and not p.covers(4, tokens=129)


@pytest.mark.parametrize("kwargs", [{"batch": (0, 1, 2)}, {"batch": (4, 2, 8)}, {"tokens": (1, 2)}, {"audio_seconds": (1.0, 0.5, 2.0)}, {"sample_rate": 0}])
def test_profile_rejects_bad_ranges(kwargs):
    with pytest.raises(ValueError):
        Profile(**kwargs)


def test_profile_for_spec_uses_frontend_limits_and_max_tokens(tiny_model_dir):
    from runtime.spec import load_spec

    spec = load_spec(tiny_model_dir)
    p = Profile.for_spec(spec)
    assert p.audio_seconds == (spec.frontend.min_audio_seconds, 4.0, spec.frontend.max_audio_seconds)
    assert p.tokens[2] == spec.max_tokens and p.sample_rate == spec.frontend.sample_rate
    assert Profile.for_spec(spec, batch=(1, 2, 4)).batch == (1, 2, 4)
    assert Profile.from_dict(p.to_dict()) == p


def test_key_digest_depends_on_every_field():
    base = _key()
    variants = [
        _key(gpu_name="NVIDIA H100"),
        _key(compute_capability="9.0"),
        _key(tensorrt_version="11.0.0"),
        _key(onnx_sha256="cd" * 32),
        _key(precision="int8"),
        _key(profile=Profile(batch=(1, 4, 16))),
        _key(tf32="off (NVIDIA_TF32_OVERRIDE=0)"),
        _key(sm_count=8),  # Orin NX and AGX Orin share a name and compute capability
        _key(total_memory=16 << 30),
        _key(driver_version="12.2"),
        _key(cuda_runtime="12.6"),
        _key(workspace_bytes=1 << 30),
    ]
    digests = {base.digest} | {k.digest for k in variants}
    assert len(digests) == 1 + len(variants) == 13
    assert {f.name for f in dataclasses.fields(CacheKey)} == {k for k in base.to_dict() if k != "format"}
    assert _key().digest == base.digest  # deterministic
    name = base.filename("emotech")
    assert name.startswith("emotech.fp16.nvidia-orin-sm87-trt10.3.0.") and name.endswith(".engine")
    timing = base.timing_cache_name()
    assert timing.startswith("timing.nvidia-orin-sm87-trt10.3.0.") and timing.endswith(".cache")
    assert _key(sm_count=8).timing_cache_name() != timing and _key(precision="int8").timing_cache_name() == timing


def test_pack_unpack_roundtrip_and_detection():
    key = _key()
    payload = os.urandom(1000)
    blob = trt_cache.pack(key, payload, {"onnx_file": "emotech.fp16.onnx"})
    header, got = trt_cache.unpack(blob, key)
    assert got == payload and header["onnx_file"] == "emotech.fp16.onnx" and header["key"]["precision"] == "fp16"
    with pytest.raises(CacheCorrupt, match="magic"):
        trt_cache.unpack(b"PLANFILE" + blob[8:], key)
    with pytest.raises(CacheCorrupt, match="truncated"):
        trt_cache.unpack(blob[:-10], key)
    with pytest.raises(CacheCorrupt, match="truncated header"):
        trt_cache.unpack(blob[:20], key)
    flipped = bytearray(blob)
    flipped[-1] ^= 0xFF
    with pytest.raises(CacheCorrupt, match="sha256"):
        trt_cache.unpack(bytes(flipped), key)
    with pytest.raises(CacheMismatch, match="tensorrt_version"):
        trt_cache.unpack(blob, _key(tensorrt_version="11.1.0"))
    with pytest.raises(CacheMismatch, match="gpu_name"):
        trt_cache.unpack(blob, _key(gpu_name="NVIDIA GeForce RTX 4090"))


def test_load_or_build_builds_once_then_loads(tmp_path):
    calls = []
    path = tmp_path / "sub" / "e.engine"

    def build():
        calls.append(1)
        return b"engine-bytes"

    assert trt_cache.load_or_build(path, _key(), build) == (b"engine-bytes", True)
    assert trt_cache.load_or_build(path, _key(), build) == (b"engine-bytes", False)
    assert len(calls) == 1
    assert [p.name for p in path.parent.iterdir()] == ["e.engine"]  # no temporary or lock files left


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_corrupt_cache_is_rebuilt_with_warning(tmp_path, damage, caplog):
    path = tmp_path / "e.engine"
    trt_cache.write(path, _key(), b"x" * 4096)
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[:-100], "garbage": b"\x00" * 50, "flip": blob[:-1] + bytes([blob[-1] ^ 1])}[damage])
    with caplog.at_level(logging.WARNING, logger="runtime.trt_cache"):
        payload, built = trt_cache.load_or_build(path, _key(), lambda: b"fresh")
    assert (payload, built) == (b"fresh", True) and "unusable" in caplog.text
    assert trt_cache.read(path, _key()) == b"fresh"


def test_mismatched_cache_is_rebuilt_with_warning(tmp_path, caplog):
    path = tmp_path / "e.engine"
    trt_cache.write(path, _key(tensorrt_version="10.2.0"), b"old")
    with caplog.at_level(logging.WARNING, logger="runtime.trt_cache"):
        assert trt_cache.load_or_build(path, _key(), lambda: b"new") == (b"new", True)
    assert "different tensorrt_version" in caplog.text


def test_missing_file_and_empty_build(tmp_path):
    with pytest.raises(CacheMissing):
        trt_cache.read(tmp_path / "none.engine", _key())
    with pytest.raises(RuntimeError, match="no engine"):
        trt_cache.load_or_build(tmp_path / "e.engine", _key(), lambda: b"")
    assert not (tmp_path / "e.engine").exists()


def test_atomic_write_keeps_old_file_when_interrupted(tmp_path, monkeypatch):
    path = tmp_path / "e.engine"
    trt_cache.write(path, _key(), b"good")

    def boom(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(trt_cache.os, "replace", boom)
    with pytest.raises(OSError):
        trt_cache.write(path, _key(), b"new")
    monkeypatch.undo()
    assert trt_cache.read(path, _key()) == b"good"
    assert [p.name for p in tmp_path.iterdir()] == ["e.engine"]


def test_default_cache_dir_env(monkeypatch, tmp_path):
    monkeypatch.setenv("EMOTECH_CACHE", str(tmp_path))
    assert trt_cache.default_cache_dir() == tmp_path / "trt"
    monkeypatch.delenv("EMOTECH_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert trt_cache.default_cache_dir() == tmp_path / "xdg" / "emotech" / "trt"


def test_parse_triple():
    assert trt_cache.parse_triple("1,8,32") == (1, 8, 32)
    assert trt_cache.parse_triple("0.5, 4, 30", float) == (0.5, 4.0, 30.0)
    with pytest.raises(ValueError):
        trt_cache.parse_triple("1,2")


def test_profile_for_max_batch():
    spec = type("Spec", (), {"frontend": type("F", (), {"min_audio_seconds": 0.25, "max_audio_seconds": 30.0, "sample_rate": 16000})(), "max_tokens": 128})()
    assert Profile.for_spec(spec, max_batch=64).batch == (1, 8, 64)
    assert Profile.for_spec(spec, max_batch=4).batch == (1, 4, 4)
    assert Profile.for_spec(spec, batch=(2, 2, 2), max_batch=64).batch == (2, 2, 2)  # an explicit range wins
    assert Profile.for_spec(spec).batch == (1, 8, 32)


# ------------------------------------------------------------------ trust checks


def test_cache_folder_and_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        folder = tmp_path / "a" / "trt"
        trt_cache.load_or_build(folder / "e.engine", _key(), lambda: b"bytes")
    finally:
        os.umask(old)
    assert folder.stat().st_mode & 0o777 == 0o700 and (folder / "e.engine").stat().st_mode & 0o777 == 0o600
    link = tmp_path / "link"  # a symlinked cache folder is refused too
    link.symlink_to(folder, target_is_directory=True)
    with pytest.raises(CacheUntrusted, match="symbolic link"):
        trt_cache.read(link / "e.engine", _key())


@pytest.mark.parametrize("mode", [0o777, 0o775, 0o757])
def test_folder_writable_by_others_is_not_used(tmp_path, caplog, mode):
    folder = tmp_path / "trt"
    folder.mkdir()
    os.chmod(folder, mode)
    planted = folder / "e.engine"
    trt_cache.atomic_write(planted, trt_cache.pack(_key(), b"planted"), mode=0o600)  # anyone could have put it there
    builds = []
    with caplog.at_level(logging.WARNING, logger="runtime.trt_cache"):
        payload, built = trt_cache.load_or_build(planted, _key(), lambda: builds.append(1) or b"fresh")
    assert (payload, built, builds) == (b"fresh", True, [1])  # built in memory, the planted file not read
    assert "cache folder" in caplog.text and "writable by other users" in caplog.text and "not cached" in caplog.text
    assert trt_cache.unpack(planted.read_bytes())[1] == b"planted"  # nor replaced


@pytest.mark.parametrize("mode", [0o664, 0o646, 0o666])
def test_engine_file_writable_by_others_is_refused_and_rebuilt(tmp_path, caplog, mode):
    path = tmp_path / "e.engine"
    trt_cache.write(path, _key(), b"planted")
    os.chmod(path, mode)
    with caplog.at_level(logging.WARNING, logger="runtime.trt_cache"):
        assert trt_cache.load_or_build(path, _key(), lambda: b"fresh") == (b"fresh", True)
    assert "writable by other users" in caplog.text
    assert trt_cache.read(path, _key()) == b"fresh" and path.stat().st_mode & 0o777 == 0o600


def test_engine_file_of_another_user_is_refused(tmp_path, caplog, monkeypatch):
    path = tmp_path / "e.engine"
    trt_cache.write(path, _key(), b"theirs")
    if os.geteuid() == 0:  # a real foreign owner where this runs as root
        os.chown(path, 4242, -1)
        with pytest.raises(CacheUntrusted, match="owned by uid 4242"):
            trt_cache.read(path, _key())
        os.chown(path, 0, -1)
    real_uid = os.geteuid()
    monkeypatch.setattr(trt_cache.os, "geteuid", lambda: real_uid + 4242)  # the file is now someone else's
    with pytest.raises(CacheUntrusted, match="not this user"):
        trt_cache.read(path, _key())
    monkeypatch.undo()
    assert trt_cache.read(path, _key()) == b"theirs"


def test_symlinks_are_not_followed_and_get_replaced(tmp_path, caplog):
    target = tmp_path / "outside" / "e.engine"
    trt_cache.write(target, _key(), b"elsewhere")
    cache = tmp_path / "cache"
    cache.mkdir(mode=0o700)
    path = cache / "e.engine"
    path.symlink_to(target)
    with pytest.raises(CacheUntrusted, match="symbolic link"):
        trt_cache.read(path, _key())
    with caplog.at_level(logging.WARNING, logger="runtime.trt_cache"):
        assert trt_cache.load_or_build(path, _key(), lambda: b"fresh") == (b"fresh", True)
    assert "symbolic link" in caplog.text
    assert not path.is_symlink() and trt_cache.read(path, _key()) == b"fresh"
    assert trt_cache.read(target, _key()) == b"elsewhere"  # the link's target untouched


def test_non_regular_files_are_refused_without_blocking(tmp_path):
    fifo = tmp_path / "e.engine"
    os.mkfifo(fifo)  # an open(O_RDONLY) of a FIFO without a writer would hang
    with pytest.raises(CacheUntrusted, match="not a regular file"):
        trt_cache.read(fifo, _key())
    (tmp_path / "d.engine").mkdir()
    with pytest.raises(CacheUntrusted, match="not a regular file"):
        trt_cache.read(tmp_path / "d.engine", _key())


def test_timing_cache_reads_are_checked(tmp_path, caplog):
    path = tmp_path / "timing.cache"
    assert trt_cache.read_timing_cache(path) == b""
    trt_cache.write_private(path, b"tactics")
    assert trt_cache.read_timing_cache(path) == b"tactics"
    os.chmod(path, 0o666)
    with caplog.at_level(logging.WARNING, logger="runtime.trt_cache"):
        assert trt_cache.read_timing_cache(path) == b""
    assert "timing cache not used" in caplog.text


# ------------------------------------------------------------------- build lock


_BUILDER = textwrap.dedent(
    """
    import dataclasses, json, sys, time
    from pathlib import Path
    from runtime import trt_cache
    from tests.test_trt_cache import _key

    path, log, start = Path(sys.argv[1]), Path(sys.argv[2]), float(sys.argv[3])
    while time.time() < start:  # both processes ask at the same moment
        time.sleep(0.005)

    def build():
        with open(log, "a") as fh:
            fh.write("build\\n")
        time.sleep(1.0)  # a build takes a while; the other process arrives meanwhile
        return b"engine-" + sys.argv[4].encode()

    payload, built = trt_cache.load_or_build(path, _key(), build)
    print(json.dumps({"payload": payload.decode(), "built": built}))
    """
)


def test_two_processes_starting_together_build_once(tmp_path):
    path, log = tmp_path / "cache" / "e.engine", tmp_path / "builds.log"
    start = time.time() + 1.5
    procs = [
        subprocess.Popen([sys.executable, "-c", _BUILDER, str(path), str(log), str(start), name], cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for name in ("a", "b")
    ]
    results = []
    for p in procs:
        out, err = p.communicate(timeout=60)
        assert p.returncode == 0, err
        results.append(json.loads(out))
    assert log.read_text() == "build\n"  # one build
    assert sorted(r["built"] for r in results) == [False, True]
    assert results[0]["payload"] == results[1]["payload"] == trt_cache.read(path, _key()).decode()


def test_threads_share_the_lock_too(tmp_path):
    import threading

    path = tmp_path / "e.engine"
    builds, results = [], []

    def build():
        builds.append(1)
        time.sleep(0.3)
        return b"engine"

    threads = [threading.Thread(target=lambda: results.append(trt_cache.load_or_build(path, _key(), build))) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(builds) == 1 and sorted(r[1] for r in results) == [False, False, False, True]


def test_a_crashed_build_does_not_hold_the_lock(tmp_path):
    path = tmp_path / "e.engine"
    with pytest.raises(RuntimeError, match="boom"):
        trt_cache.load_or_build(path, _key(), lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert trt_cache.load_or_build(path, _key(), lambda: b"ok") == (b"ok", True)


def test_a_finished_build_survives_an_unwritable_cache(tmp_path, monkeypatch, caplog):  # e.g. a full disk
    path = tmp_path / "e.engine"

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(trt_cache, "atomic_write", full_disk)
    with caplog.at_level(logging.WARNING, logger="runtime.trt_cache"):
        assert trt_cache.load_or_build(path, _key(), lambda: b"engine") == (b"engine", True)
    assert "not cached" in caplog.text and not path.exists()
