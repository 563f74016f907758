"""Smoke tests of the example scripts, run as their docstrings say (subprocesses)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from runtime.audio import resample

ROOT = Path(__file__).resolve().parents[1]
LABELS = ("neutral", "happy", "sad", "angry", "fearful", "disgust", "surprised")
ENV = {**os.environ, "PYTHONPATH": str(ROOT)}  # the checkout's runtime, whatever is installed


def two_clips(path: Path, rate: int) -> Path:
    """The two example clips with silence around them, written at ``rate``."""
    clips = [sf.read(str(ROOT / "examples" / n), dtype="float32")[0] for n in ("espeak_angry_words.wav", "espeak_someone_in_the_house.wav")]
    gap = np.zeros(16000, np.float32)
    audio = np.concatenate([gap, clips[0], gap, clips[1], gap])
    sf.write(str(path), resample(audio, 16000, rate), rate, subtype="PCM_16")
    return path


def run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout, check=False)
    assert out.returncode == 0, out.stderr
    return out


def test_stream_in_process_prints_one_line_per_utterance(tmp_path):
    wav = two_clips(tmp_path / "two.wav", 44100)
    out = run("examples/stream_in_process.py", str(wav), "--min-silence-ms", "600")
    lines = out.stdout.splitlines()
    assert len(lines) == 2, out.stdout
    for line in lines:
        m = re.match(r"\s*([\d.]+)-\s*([\d.]+) s  (\w+)\s+([\d.]+)  steady (\w+)", line)
        assert m and m.group(3) in LABELS and m.group(5) in LABELS, line
    starts = [float(re.match(r"\s*([\d.]+)", line).group(1)) for line in lines]
    assert abs(starts[0] - 1.0) < 0.15 and abs(starts[1] - (2.0 + 4.3)) < 0.2, starts


def test_mic_stream_plays_a_file_to_the_server(tmp_path):
    aiohttp = pytest.importorskip("aiohttp")  # noqa: F841 - the example's WebSocket client
    from runtime.recognizer import EmotionRecognizer
    from runtime.server.app import create_app
    from runtime.server.limits import ServeConfig
    from runtime.server.runner import BackgroundServer
    from runtime.server.vad import SileroVad, VadConfig

    clip = sf.read(str(ROOT / "examples" / "espeak_someone_in_the_house.wav"), dtype="float32")[0]
    wav = tmp_path / "one.wav"
    sf.write(str(wav), resample(np.concatenate([np.zeros(8000, np.float32), clip, np.zeros(12000, np.float32)]), 16000, 48000), 48000)
    rec = EmotionRecognizer.load()
    key = "example-key-123"
    with BackgroundServer(create_app(rec, ServeConfig(api_key=key), vad=SileroVad(), vad_config=VadConfig(min_silence_ms=600),
                                     warm_up=False)) as srv:
        out = run("examples/mic_stream.py", "--url", srv.url, "--file", str(wav), "--api-key", key, timeout=120)
    rec.close()
    lines = out.stdout.splitlines()
    assert lines[-1] == "done: 1 utterance(s)", out.stdout
    assert re.match(r"\s*0\.\d–\s*3\.\d s  \S+ (\w+)\s+[\d.]+ steady (\w+)", lines[0]), lines[0]
    assert lines[1].startswith("  last minute: ") and lines[1].count("· ") == 28, lines[1]  # 2 of 30 cells spoken
