"""Engine-cache logic without TensorRT: profile, key, file format, rebuild decisions."""

from __future__ import annotations

import dataclasses
import logging
import os
import stat

import pytest

from runtime import trt_cache
from runtime.trt_cache import CacheCorrupt, CacheKey, CacheMismatch, CacheMissing, Profile


def _key(**changes) -> CacheKey:
    base = CacheKey("NVIDIA Orin", "8.7", "10.3.0", "ab" * 32, "fp16", Profile())
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
    ]
    digests = {base.digest} | {k.digest for k in variants}
    assert len(digests) == 8
    assert _key().digest == base.digest  # deterministic
    name = base.filename("emotech")
    assert name.startswith("emotech.fp16.nvidia-orin-sm87-trt10.3.0.") and name.endswith(".engine")
    assert base.timing_cache_name() == "timing.nvidia-orin-sm87-trt10.3.0.cache"


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


def test_load_or_build_builds_once_then_loads(tmp_path, caplog):
    calls = []
    path = tmp_path / "sub" / "e.engine"

    def build():
        calls.append(1)
        return b"engine-bytes"

    with caplog.at_level(logging.WARNING, logger="runtime.trt_cache"):
        assert trt_cache.load_or_build(path, _key(), build) == (b"engine-bytes", True)
        assert trt_cache.load_or_build(path, _key(), build) == (b"engine-bytes", False)
    assert not caplog.records  # a missing file is not worth a warning
    assert len(calls) == 1
    assert [p.name for p in path.parent.iterdir()] == ["e.engine"]  # no temporary files left


@pytest.mark.parametrize("damage", ["truncate", "garbage", "flip"])
def test_corrupt_cache_is_rebuilt_with_warning(tmp_path, damage, caplog):
    path = tmp_path / "e.engine"
    trt_cache.write(path, _key(), b"x" * 4096)
    blob = path.read_bytes()
    path.write_bytes({"truncate": blob[:-100], "garbage": b"\x00" * 50, "flip": blob[:-1] + bytes([blob[-1] ^ 1])}[damage])
    payload, built = trt_cache.load_or_build(path, _key(), lambda: b"fresh")
    assert "unusable" in caplog.text
    assert (payload, built) == (b"fresh", True)
    assert trt_cache.read(path, _key()) == b"fresh"


def test_mismatched_cache_is_rebuilt_with_warning(tmp_path, caplog):
    path = tmp_path / "e.engine"
    trt_cache.write(path, _key(tensorrt_version="10.2.0"), b"old")
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


# ------------------------------------------------------------------ an engine file is code


def test_cache_folder_and_files_are_private_whatever_the_umask(tmp_path):
    old = os.umask(0)
    try:
        path = tmp_path / "cache" / "trt" / "e.engine"
        trt_cache.write(path, _key(), b"engine")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert trt_cache.read(path, _key()) == b"engine"


def test_a_cache_file_others_may_write_is_not_loaded(tmp_path, caplog):
    path = tmp_path / "e.engine"
    trt_cache.write(path, _key(), b"planted")
    path.chmod(0o666)
    with pytest.raises(trt_cache.CacheUntrusted, match="writable by other users"):
        trt_cache.read(path, _key())
    assert trt_cache.load_or_build(path, _key(), lambda: b"built") == (b"built", True)
    assert "writable by other users" in caplog.text
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and trt_cache.read(path, _key()) == b"built"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="giving a file to another user needs root")
def test_a_cache_file_owned_by_another_user_is_not_loaded(tmp_path):
    path = tmp_path / "e.engine"
    trt_cache.write(path, _key(), b"planted")
    os.chown(path, 65534, 65534)
    with pytest.raises(trt_cache.CacheUntrusted, match="owned by uid 65534"):
        trt_cache.read(path, _key())
    assert trt_cache.load_or_build(path, _key(), lambda: b"built") == (b"built", True)
    assert path.stat().st_uid == os.geteuid()


def test_a_symlinked_cache_file_is_not_followed(tmp_path):
    elsewhere = tmp_path / "elsewhere.engine"
    trt_cache.write(elsewhere, _key(), b"planted")
    path = tmp_path / "cache" / "e.engine"
    trt_cache.private_dir(path.parent)
    path.symlink_to(elsewhere)
    with pytest.raises(trt_cache.CacheUntrusted, match="symbolic link"):
        trt_cache.read(path, _key())
    assert trt_cache.load_or_build(path, _key(), lambda: b"built") == (b"built", True)
    assert not path.is_symlink() and trt_cache.read(elsewhere, _key()) == b"planted"  # the link was replaced, not its target


def test_a_folder_others_may_write_is_neither_read_nor_written(tmp_path, caplog):
    shared = tmp_path / "shared"
    shared.mkdir()
    path = shared / "e.engine"
    trt_cache.atomic_write(path, trt_cache.pack(_key(), b"planted"), mode=0o600)
    shared.chmod(0o777)
    with pytest.raises(trt_cache.CacheUntrusted, match="cache folder .* writable by other users"):
        trt_cache.read(path, _key())
    assert trt_cache.load_or_build(path, _key(), lambda: b"built") == (b"built", True)
    assert "not cached" in caplog.text
    assert trt_cache.unpack(path.read_bytes())[1] == b"planted"  # untouched: nothing is written there
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "cache-target", target_is_directory=True)
    (tmp_path / "cache-target").mkdir(mode=0o700)
    with pytest.raises(trt_cache.CacheUntrusted, match="symbolic link"):
        trt_cache.check_private_dir(link)


def test_an_untrusted_timing_cache_is_ignored(tmp_path, caplog):
    path = tmp_path / "timing.cache"
    trt_cache.write_private(path, b"timings")
    assert trt_cache.read_timing_cache(path) == b"timings"
    path.chmod(0o646)
    assert trt_cache.read_timing_cache(path) == b"" and "timing cache not used" in caplog.text
    assert trt_cache.read_timing_cache(tmp_path / "none.cache") == b""
