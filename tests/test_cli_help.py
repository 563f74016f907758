"""Every entry point's --help reads cleanly, and no entry point writes a model folder it was not given."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, requires_torch

RUNTIME_CLIS = ["runtime.predict", "runtime.serve", "benchmarks.latency", "benchmarks.loadgen", "benchmarks.profile",
                "benchmarks.triton_loadgen", "benchmarks.ab"]
EXPORT_CLIS = ["export.train", "export.evaluate", "export.ensemble", "export.onnx", "export.quantize", "export.parity",
               "export.model_card", "export.op_support", "export.trt", "export.triton", "export.prior"]
# entry points that write into a model folder: the folder must be named on the command line
WRITERS = {"export.train": "--out", "export.ensemble": "--out", "export.onnx": "--model-dir", "export.quantize": "--model-dir",
           "export.model_card": "--model-dir", "export.prior": "--model-dir"}


def run(module: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def check_help(module: str) -> None:
    r = run(module, "--help")
    assert r.returncode == 0, r.stderr
    text = r.stdout
    assert text.startswith(f"usage: python -m {module}"), text.splitlines()[0]
    flat = re.sub(r"\s+", " ", text)
    assert "(default: None)" not in flat and "(default: False)" not in flat and "(default: True)" not in flat
    for option_help in re.split(r" (?=--?[a-z])", flat):
        assert option_help.count("(default") <= 1, f"{module}: a default stated twice: {option_help}"


@pytest.mark.parametrize("module", RUNTIME_CLIS)
def test_runtime_help(module):
    check_help(module)


@requires_torch
@pytest.mark.parametrize("module", EXPORT_CLIS)
def test_export_help(module):
    check_help(module)


@requires_torch
@pytest.mark.parametrize("module,flag", sorted(WRITERS.items()))
def test_writers_need_their_folder_named(module, flag):
    r = run(module)
    assert r.returncode == 2 and flag in r.stderr, r.stderr
