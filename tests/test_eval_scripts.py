"""The ASR and smoothing evaluations (``export.asr_eval``, ``export.smoothing_eval``):
their arithmetic, and a smoke run of each on a small RAVDESS-named tree of the example
clips (the real numbers need ../shared/data: docs/asr.md, docs/demo.md)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from export.asr_eval import actor_range, edit_distance, unweighted_accuracy, words

ROOT = Path(__file__).resolve().parents[1]
CLIPS = [ROOT / "examples" / "espeak_angry_words.wav", ROOT / "examples" / "espeak_someone_in_the_house.wav"]


def test_word_error_arithmetic():
    assert words("Kids are talking, by the door!") == ["kids", "are", "talking", "by", "the", "door"]
    assert words("it's   ") == ["it's"] and words(None) == []
    ref = words("dogs are sitting by the door")
    assert edit_distance(ref, ref) == 0
    assert edit_distance(ref, words("dogs is sitting by the door")) == 1  # substitution
    assert edit_distance(ref, words("dogs sitting by the door")) == 1  # deletion
    assert edit_distance(ref, words("the dogs are sitting by the door")) == 1  # insertion
    assert edit_distance(ref, []) == 6 and edit_distance([], ["a", "b"]) == 2
    assert edit_distance(words("a b c d"), words("b c d a")) == 2
    assert actor_range("21-24") == [21, 22, 23, 24] and actor_range("1,3-4") == [1, 3, 4]
    assert unweighted_accuracy([0, 0, 0, 1], [0, 0, 1, 1], 3) == pytest.approx((2 / 3 + 1) / 2)  # class 2 absent: not averaged


def ravdess_tree(root: Path, actor: int, emotions: list[str]) -> Path:
    """Copies of the example clips named like RAVDESS speech clips of ``actor``."""
    folder = root / "ravdess" / f"Actor_{actor:02d}"
    folder.mkdir(parents=True)
    for i, emotion in enumerate(emotions):
        statement = "01" if i % 2 == 0 else "02"
        shutil.copy(CLIPS[i % 2], folder / f"03-01-{emotion}-01-{statement}-01-{actor:02d}.wav")
    return root


def test_asr_eval_runs_and_resumes(tmp_path, capsys):
    from export import asr_eval

    data = ravdess_tree(tmp_path / "data", 21, ["05", "06"])
    out = tmp_path / "out"
    args = ["--data", str(data), "--out", str(out), "--actors", "21", "--ua-actors", "21"]
    assert asr_eval.main(args) == 0
    rows = [json.loads(line) for line in (out / "clips.jsonl").read_text().splitlines()]
    assert len(rows) == 2 and {r["reference"] for r in rows} == {"Kids are talking by the door", "Dogs are sitting by the door"}
    for r in rows:
        assert r["edits"] == edit_distance(words(r["reference"]), words(r["transcript"])) and r["edits"] >= 3  # not those words
    summary = json.loads((out / "summary.json").read_text())
    assert summary["wer"]["all"]["clips"] == 2 and summary["wer"]["all"]["reference_words"] == 12
    assert set(summary["ua"]) == {"audio", "audio+asr", "audio+true_sentence"}
    assert "| all (2) |" in capsys.readouterr().out
    assert asr_eval.main(args) == 0  # resumes: nothing transcribed again
    assert len((out / "clips.jsonl").read_text().splitlines()) == 2


def test_smoothing_eval_runs(tmp_path, capsys):
    from export import smoothing_eval

    data = ravdess_tree(tmp_path / "data", 19, ["01", "03", "04", "05", "06", "07", "08"])
    out = tmp_path / "smoothing.json"
    assert smoothing_eval.main(["--data", str(data), "--out", str(out), "--conversations", "20", "--length", "5"]) == 0
    table = json.loads(out.read_text())["by_switch_probability"]
    assert set(table) == {"0.1", "0.25", "0.5", "1.0"} and all(set(row) == {"0.0", "2.0", "5.0", "10.0", "20.0"} for row in table.values())
    assert "| switch probability q |" in capsys.readouterr().out
