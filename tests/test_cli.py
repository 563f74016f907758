"""`python -m runtime.predict`: lines, JSON, and one-line errors without tracebacks."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.helpers import REPO, encode, speechlike


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "runtime.predict", *args], cwd=REPO, capture_output=True, text=True, timeout=120)


def test_json_lines_and_bad_files_do_not_stop_the_others(tiny_model_dir, tmp_path):
    good = tmp_path / "good.wav"
    good.write_bytes(encode(speechlike(1.0), 16000, "WAV"))
    stereo = tmp_path / "stereo.ogg"
    stereo.write_bytes(encode(speechlike(1.5)[:, None].repeat(2, 1), 48000, "OGG"))
    junk = tmp_path / "junk.wav"
    junk.write_bytes(b"not audio" * 100)
    silent = tmp_path / "silent.wav"
    silent.write_bytes(encode(speechlike(1.0) * 0, 16000, "WAV"))
    out = run_cli(str(good), str(junk), str(tmp_path / "missing.flac"), str(silent), str(stereo),
                  "--model-dir", str(tiny_model_dir), "--json", "--text", "oh no")
    assert out.returncode == 1
    lines = [json.loads(line) for line in out.stdout.splitlines()]
    assert [d["path"] for d in lines] == [str(good), str(stereo)]
    for d in lines:
        assert set(d) == {"path", "label", "scores", "uncertain", "transcript", "transcript_source"} and abs(sum(d["scores"].values()) - 1) < 1e-5
        assert (d["transcript"], d["transcript_source"]) == ("oh no", "caller")
    errors = out.stderr.strip().splitlines()
    assert len(errors) == 3 and all(e.startswith("error: ") for e in errors)
    assert "Traceback" not in out.stderr
    assert "not decodable" in errors[0] and "no such audio file" in errors[1] and "silent" in errors[2]


def test_plain_output_text_only_and_usage_errors(tiny_model_dir, tmp_path):
    out = run_cli("--text", "I love this", "--model-dir", str(tiny_model_dir))
    assert out.returncode == 0 and out.stdout.startswith("<text>\t")
    out = run_cli("--model-dir", str(tiny_model_dir))
    assert out.returncode == 2 and "give at least one audio PATH or --text" in out.stderr
    out = run_cli("x.wav", "--model-dir", str(tmp_path))
    assert out.returncode == 2 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr
    out = run_cli("x.wav", "--engine", "trt", "--model-dir", str(tiny_model_dir))
    assert out.returncode == 2 and "error: " in out.stderr and "Traceback" not in out.stderr


def test_files_are_answered_a_batch_at_a_time(tiny_model_dir, tmp_path, monkeypatch, capsys):
    """Memory stays that of one batch of decoded clips however many files are given."""
    from runtime import predict
    from runtime.recognizer import EmotionRecognizer

    calls: list[int] = []
    load = EmotionRecognizer.load

    def small_batches(*a, **k):
        rec = load(*a, **k)
        rec.max_batch = 2
        run = rec.run
        rec.run = lambda items: (calls.append(len(items)), run(items))[1]
        return rec

    monkeypatch.setattr(EmotionRecognizer, "load", small_batches)
    paths = []
    for i in range(5):
        paths.append(str(tmp_path / f"{i}.wav"))
        (tmp_path / f"{i}.wav").write_bytes(encode(speechlike(1.0, seed=i), 16000, "WAV"))
    (tmp_path / "2.wav").write_bytes(b"junk")
    assert predict.main([*paths, "--model-dir", str(tiny_model_dir), "--json"]) == 1
    assert calls == [2, 1, 1]  # files 0-1, 2 (junk) - 3, 4
    out = capsys.readouterr()
    assert [json.loads(line)["path"] for line in out.out.splitlines()] == [p for i, p in enumerate(paths) if i != 2]
    assert out.err.count("error: ") == 1
