"""Corrupt, odd or inconsistent model folders: each is refused with one ``error:`` line and
exit code 2 from the CLIs, never a traceback or a model that loads and answers wrongly."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runtime.errors import ModelFolderError
from runtime.spec import SPEC_FILE, load_spec, sha256_file

ROOT = Path(__file__).resolve().parents[1]


def edit_spec(folder: Path, change) -> None:
    """Apply ``change(spec_dict)`` to the folder's spec.json."""
    spec = json.loads((folder / SPEC_FILE).read_text())
    change(spec)
    (folder / SPEC_FILE).write_text(json.dumps(spec))


def rehash(folder: Path) -> None:
    """Record the current sha256 of every listed file (so only the defect under test remains)."""
    edit_spec(folder, lambda s: s["files"].update({n: sha256_file(folder / n) for n in s["files"] if (folder / n).is_file()}))


def predict_error(folder: Path, capsys) -> str:
    """``runtime.predict``'s stderr for a text-only prediction from ``folder``; it must exit 2."""
    from runtime import predict

    code = predict.main(["--model-dir", str(folder), "--text", "what a day"])
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def corrupt_graph(folder: Path) -> None:
    (folder / "emotech.onnx").write_bytes(b"\x08\x07" + os.urandom(2000))


def corrupt_tokenizer(folder: Path) -> None:
    (folder / "tokenizer.json").write_text('{"model": {"type": "NoSuchModel"}, "version": "1.0"')


CASES = {
    # finding 7: corrupt files with matching hashes, odd values
    "graph the runtime cannot parse": (lambda f: (corrupt_graph(f), rehash(f)), "cannot be read as an ONNX graph"),
    "malformed tokenizer.json": (lambda f: (corrupt_tokenizer(f), rehash(f)), "not a tokenizer"),
    "negative max_tokens": (lambda f: edit_spec(f, lambda s: s["text"].update(max_tokens=-5)), "max_tokens"),
    "huge max_tokens": (lambda f: edit_spec(f, lambda s: s["text"].update(max_tokens=10**12)), "max_tokens"),
    "infinite max_tokens": (lambda f: edit_spec(f, lambda s: s["text"].update(max_tokens=float("inf"))), "max_tokens|malformed"),
    "deeply nested spec": (lambda f: (f / SPEC_FILE).write_text('{"format": "emotech-model/1", "x": ' + "[" * 100_000 + "]" * 100_000 + "}"),
                           "nested too deeply"),
    "max_audio_seconds Infinity": (lambda f: edit_spec(f, lambda s: s["frontend"].update(max_audio_seconds=float("inf"))),
                                   "max_audio_seconds"),
    "huge max_chars": (lambda f: edit_spec(f, lambda s: s["text"].update(max_chars=10**9)), "max_chars"),
    "spec of 2 MB": (lambda f: edit_spec(f, lambda s: s.update(padding="x" * (2 << 20))), "at most"),
    # finding 8: consistency
    "graph not listed under files": (lambda f: edit_spec(f, lambda s: s["files"].pop("emotech.onnx")), "never hash-checked"),
    "tokenizer not listed under files": (lambda f: edit_spec(f, lambda s: s["files"].pop("tokenizer.json")), "never hash-checked"),
    "3 labels for a 7-class graph": (lambda f: edit_spec(f, lambda s: s.update(labels=["a", "b", "c"])), "scores 7 classes"),
    "sample rate the graph was not built for": (
        lambda f: edit_spec(f, lambda s: s["frontend"].update(sample_rate=22050)), "mel filterbank differs"),
    "duplicate labels": (lambda f: edit_spec(f, lambda s: s.update(labels=["a"] * 7)), "distinct"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_a_broken_model_folder_is_one_error_line_and_exit_2(model_copy, capsys, case):
    damage, message = CASES[case]
    damage(model_copy)
    import re

    assert re.search(message, predict_error(model_copy, capsys))


def test_a_listed_file_linked_outside_the_folder_is_refused(model_copy, tmp_path, capsys):
    """The hash matches (the link's target is a true copy), but the folder no longer holds
    what it vouches for: a later write to the target would change the model unseen."""
    outside = tmp_path / "elsewhere" / "tokenizer.json"
    outside.parent.mkdir()
    outside.write_bytes((model_copy / "tokenizer.json").read_bytes())
    (model_copy / "tokenizer.json").unlink()
    (model_copy / "tokenizer.json").symlink_to(outside)
    assert "outside the folder" in predict_error(model_copy, capsys)
    (model_copy / "tokenizer.json").unlink()
    inside = model_copy / "tok-copy.json"
    inside.write_bytes(outside.read_bytes())
    (model_copy / "tokenizer.json").symlink_to(inside.name)  # a link within the folder is fine
    load_spec(model_copy)


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_an_unreadable_file_is_an_error_line(model_copy, capsys):
    (model_copy / "emotech.onnx").chmod(0)
    assert "cannot be read" in predict_error(model_copy, capsys)


def test_the_cli_processes_say_error_and_exit_2(model_copy):
    """The same through real processes: ``runtime.predict`` and ``runtime.serve``."""
    corrupt_graph(model_copy)
    rehash(model_copy)
    for cmd in (["runtime.predict", "--model-dir", str(model_copy), "--text", "hi"],
                ["runtime.serve", "--model-dir", str(model_copy), "--engine", "ort", "--port", "0", "--no-stream"]):
        r = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True, timeout=120)
        errors = [line for line in r.stderr.splitlines() if not line[:4].isdigit()]  # the server's log lines are dated
        assert r.returncode == 2 and errors == [errors[0]] and errors[0].startswith("error: "), r.stderr
        assert "Traceback" not in r.stderr


def test_a_good_folder_still_loads_and_checks_once(model_copy):
    spec = load_spec(model_copy)
    path = spec.graph_file("fused", "fp32")
    assert path.is_file() and spec.graph_file("fused", "fp32") == path
    with pytest.raises(ModelFolderError, match="no int8 variant"):
        spec.graph_file("fused", "int8")
