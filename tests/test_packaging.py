"""The wheel: what it ships, and that an installed copy finds its model from any folder."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

from tests.helpers import BUNDLED, REPO

EXAMPLE = REPO / "examples" / "espeak_angry_words.wav"
SHIPPED_MODEL_FILES = ("spec.json", "tokenizer.json", "emotech.onnx", "MODEL_CARD.md")
CHECKOUT_ONLY = ("emotech.fp16.onnx", "emotech.int8.onnx", "model.safetensors")


def pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text())


def test_package_list_matches_the_source_tree():
    listed = set(pyproject()["tool"]["setuptools"]["packages"])
    on_disk = {
        ".".join(p.parent.relative_to(REPO).parts)
        for top in ("runtime", "export")
        for p in (REPO / top).rglob("__init__.py")
        if "__pycache__" not in p.parts
    }
    assert on_disk | {"emotech_weights"} == listed, "pyproject.toml [tool.setuptools] packages is out of date"


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """A wheel built from a copy of the checkout (the build writes build/ and egg-info)."""
    if not (BUNDLED / "emotech.onnx").is_file():
        pytest.skip("weights/emotech/emotech.onnx is not in this checkout")
    src = tmp_path_factory.mktemp("src")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("runtime", "export", "weights", "benchmarks"):
        shutil.copytree(REPO / name, src / name, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, src / name)
    out = tmp_path_factory.mktemp("dist")
    pytest.importorskip("setuptools", reason="the wheel is built offline with this environment's setuptools")
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(src)]
    subprocess.run(cmd, check=True, capture_output=True, timeout=300)
    (whl,) = out.glob("emotech-*.whl")
    return whl


def test_wheel_ships_the_pruned_default_model_and_assets(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for f in SHIPPED_MODEL_FILES:
        assert f"emotech_weights/emotech/{f}" in names
    for f in CHECKOUT_ONLY:
        assert f"emotech_weights/emotech/{f}" not in names
    assert "emotech_weights/silero_vad/silero_vad_16k_op15.onnx" in names
    assert "runtime/server/openapi.json" in names
    assert "export/trt_ops_10_3.json" in names
    assert not any(n.startswith(("benchmarks/", "tests/")) for n in names)
    size_mb = wheel.stat().st_size / 1e6
    assert size_mb < 40, f"the wheel is {size_mb:.1f} MB"


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """The wheel unpacked as pip installs a pure-Python wheel (a site-packages folder)."""
    site = tmp_path_factory.mktemp("site")
    zipfile.ZipFile(wheel).extractall(site)
    return site


def run_installed(site: Path, cwd: Path, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    # PYTHONPATH puts the unpacked wheel before the checkout's editable install
    e = {k: v for k, v in os.environ.items() if k != "EMOTECH_MODEL_DIR"}
    e.update(PYTHONPATH=str(site), **(env or {}))
    return subprocess.run([sys.executable, *args], cwd=cwd, env=e, capture_output=True, text=True, timeout=120)


def test_installed_wheel_predicts_from_another_folder(installed, tmp_path):
    clip = tmp_path / "clip.wav"
    shutil.copy2(EXAMPLE, clip)
    where = run_installed(installed, tmp_path, "-c", "import runtime, runtime.spec as s; print(runtime.__file__); print(s.resolve_model_dir())")
    runtime_file, model_dir = where.stdout.split()
    assert runtime_file.startswith(str(installed)) and model_dir.startswith(str(installed))
    r = run_installed(installed, tmp_path, "-m", "runtime.predict", "clip.wav", "--json")
    assert r.returncode == 0, r.stderr
    got = json.loads(r.stdout)
    from runtime import EmotionRecognizer

    rec = EmotionRecognizer.load(BUNDLED)
    try:
        want = rec.predict(audio=EXAMPLE)
    finally:
        rec.close()
    assert got["label"] == want.label
    assert max(abs(got["scores"][k] - want.scores[k]) for k in want.scores) < 1e-6


def test_missing_model_error_names_every_place_it_looked(installed, tmp_path):
    pruned = tmp_path / "site"
    shutil.copytree(installed, pruned)
    shutil.rmtree(pruned / "emotech_weights" / "emotech")
    r = run_installed(pruned, tmp_path, "-m", "runtime.predict", "--text", "hello")
    assert r.returncode == 2
    err = r.stderr.strip()
    assert err.startswith("error: no model folder found") and err.count("\n") == 0
    for place in ("--model-dir", "$EMOTECH_MODEL_DIR", "bundled default model", str(pruned / "emotech_weights" / "emotech")):
        assert place in err
    r = run_installed(installed, tmp_path, "-m", "runtime.predict", "--text", "hello", env={"EMOTECH_MODEL_DIR": str(tmp_path / "nowhere")})
    assert r.returncode == 2 and "nowhere" in r.stderr and "EMOTECH_MODEL_DIR" in r.stderr
