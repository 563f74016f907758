"""The demo page at ``/`` in a real headless Chromium with a fake microphone.

``python -m runtime.serve`` runs as a subprocess (API key, ``--asr pocketsphinx``,
``--vad-min-silence-ms 600 --vad-pad-ms 500``); Chromium (Debian's ``chromium``, driven by Playwright for
Python through ``executable_path``, no browser download) opens the page, is refused by
the server until the key is entered in the page's form, then plays a WAV of clips and
silences into ``getUserMedia`` (``--use-file-for-fake-audio-capture``). The page's
AudioWorklet sends PCM16 at the AudioContext's rate (44.1 or 48 kHz), which the server
resamples. Each utterance must give exactly one result on the page, carrying the label
``EmotionRecognizer.predict`` (with the same transcriber) gives for the same audio, a
transcript from the recogniser, the three bar groups and a smoothed label.

"The same audio": each clip is cut to its sound with the runtime's own silence trim and
played between stretches of digital silence, and the server pads each utterance by
500 ms, so the utterance the server scores is the clip inside silence, and the model's
trim (peak - 40 dB, 0.1 s margin) cuts both it and the clip with 0.25 s of silence on
each side, which is what the test gives ``predict``, to the same samples (up to the
browser's resampling and a 10-ms frame). With the server's default 30-ms padding, the
VAD's cut of a RAVDESS clip is shorter than the model's trim of the whole file, and its
label can differ: that is a different utterance, not a fault of the page.

Only the absence of Chromium or Playwright skips these tests (install:
``apt-get install -y chromium`` and ``pip install playwright``; never
``playwright install``). ``EMOTECH_DEMO_SCREENSHOT=docs/demo.png`` also writes the
screenshot there (the committed one comes from the RAVDESS variant).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from runtime.audio import resample, trim_silence

ROOT = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("EMOTECH_DATA", ROOT.parent / "shared" / "data"))
RAVDESS = DATA / "ravdess"
SR = 16000
API_KEY = "kiosk-test-key-1234"
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream", "--disable-gpu",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync", "--no-first-run"]
GAP_S = 1.5  # silence between clips: well above --vad-min-silence-ms
MIN_MARGIN = 0.15  # top-1 minus top-2 score a RAVDESS clip needs to be used (resampling moves scores slightly)
EDGE_S = 0.25  # silence around a clip when the test asks predict for its label: more than the trim margin

sync_api = pytest.importorskip("playwright.sync_api", reason="Playwright for Python is not installed: pip install playwright")
if not (os.path.isfile(CHROMIUM) and os.access(CHROMIUM, os.X_OK)):
    pytest.skip(f"no Chromium at {CHROMIUM}: apt-get install -y chromium (Debian's package; no playwright install)",
                allow_module_level=True)


@pytest.fixture(scope="module")
def recognizer():
    from runtime.recognizer import EmotionRecognizer

    rec = EmotionRecognizer.load(asr="pocketsphinx")
    yield rec
    rec.close()


@pytest.fixture(scope="module")
def server():
    """``python -m runtime.serve`` on a free port; yields its URL."""
    from tests.test_serve import start_cli

    proc, url, lines = start_cli(None, "--engine", "ort", "--asr", "pocketsphinx", "--vad-min-silence-ms", "600",
                                 "--vad-pad-ms", "500", "--api-key", API_KEY, "--no-warmup", timeout_s=120)
    yield url
    proc.terminate()
    proc.wait(30)
    assert API_KEY not in "\n".join(lines), "the server logged the API key"


def fake_microphone(clips: list[np.ndarray], path: Path) -> Path:
    """A 16 kHz PCM16 WAV: 1 s of silence, then each clip followed by GAP_S of silence, and
    8 s more at the end (Chromium loops the file; the page is stopped before it comes round)."""
    parts = [np.zeros(SR, np.float32)]
    for clip in clips:
        parts += [clip, np.zeros(int(GAP_S * SR), np.float32)]
    parts.append(np.zeros(8 * SR, np.float32))
    sf.write(str(path), np.concatenate(parts), SR, subtype="PCM_16")
    return path


def run_page(url: str, wav: Path, expected: int, screenshot: Path) -> list[dict]:
    """Open the page, give the API key, start the microphone, wait for ``expected``
    results, stop, wait for the end of the stream; returns the page's results in order."""
    audio_s = sf.info(str(wav)).duration
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[*CHROMIUM_ARGS, f"--use-file-for-fake-audio-capture={wav}"])
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(url)
            page.locator("#key-form:not([hidden])").wait_for(timeout=15_000)  # /v1/model answered 401
            assert "API key" in page.text_content("#status")
            page.fill("#key-input", API_KEY)
            page.click("#key-form button[type=submit]")
            page.locator("#start:not([disabled])").wait_for(timeout=15_000)
            assert page.evaluate("() => localStorage.getItem('emotech.apiKey')") == API_KEY
            page.click("#start")
            page.locator("#results li").nth(expected - 1).wait_for(timeout=(audio_s + 60) * 1000)
            page.screenshot(path=str(screenshot), full_page=True)
            page.click("#stop")
            page.locator("#status", has_text="stream ended").wait_for(timeout=60_000)
            status = page.text_content("#status")
            results = [
                {"segment": int(li.get_attribute("data-segment")), "label": li.get_attribute("data-label"),
                 "smoothed": li.get_attribute("data-smoothed"), "transcript": li.get_attribute("data-transcript"),
                 "text": li.text_content()}
                for li in page.query_selector_all("#results li")
            ]
            bars = {kind: page.locator(f'.bar-group[data-kind="{kind}"]').get_attribute("class") for kind in ("audio", "text", "fused")}
            page.click("#kiosk")
            kiosk_font = page.locator("#label").evaluate("el => parseFloat(getComputedStyle(el).fontSize)")
            assert not errors, errors
        finally:
            browser.close()
    assert status == f"stream ended after {expected} utterance(s). Press Start to listen again.", status
    assert not any("empty" in c for c in bars.values()), bars  # the last utterance had a transcript: all three groups drawn
    assert kiosk_font >= 80, kiosk_font  # kiosk mode: large type
    return sorted(results, key=lambda r: r["segment"])


def utterance(clip: np.ndarray, recognizer) -> np.ndarray:
    """The clip cut to its sound by the model's own trim."""
    return trim_silence(clip, recognizer.spec.frontend)


def predict(clip: np.ndarray, recognizer):
    edge = np.zeros(int(EDGE_S * SR), np.float32)
    return recognizer.predict(audio=np.concatenate([edge, clip, edge]), sample_rate=SR)


def check(results: list[dict], clips: list[np.ndarray], recognizer) -> None:
    assert [r["segment"] for r in results] == list(range(len(clips))), results  # one result per utterance
    for r, clip in zip(results, clips):
        want = predict(clip, recognizer)
        assert r["label"] == want.label, (r, want)
        assert r["transcript"] and "asr:pocketsphinx" in r["text"], r
        assert r["smoothed"] in recognizer.labels, r


def save(screenshot: Path) -> None:
    target = os.environ.get("EMOTECH_DEMO_SCREENSHOT")
    if target:
        shutil.copyfile(screenshot, target)


def test_demo_page_shows_one_result_per_espeak_utterance(server, recognizer, tmp_path):
    clips = [utterance(sf.read(str(ROOT / "examples" / name), dtype="float32")[0], recognizer)
             for name in ("espeak_angry_words.wav", "espeak_someone_in_the_house.wav")]
    results = run_page(server, fake_microphone(clips, tmp_path / "mic.wav"), len(clips), tmp_path / "demo.png")
    check(results, clips, recognizer)
    assert (tmp_path / "demo.png").stat().st_size > 10_000


@pytest.mark.requires_data
@pytest.mark.skipif(not RAVDESS.is_dir(), reason=f"RAVDESS not found at {RAVDESS}")
def test_demo_page_shows_one_result_per_ravdess_utterance(server, recognizer, tmp_path):
    """Four test-actor clips of different emotions, each with a clear top score."""
    clips, labels = [], set()
    for path in sorted(RAVDESS.glob("Actor_2[1-4]/03-01-0[2-8]-02-*.flac")):
        audio, rate = sf.read(str(path), dtype="float32")
        audio = utterance(resample(audio, rate, SR), recognizer)
        pred = predict(audio, recognizer)
        top = sorted(pred.scores.values(), reverse=True)
        if pred.label not in labels and top[0] - top[1] >= MIN_MARGIN:
            clips.append(audio)
            labels.add(pred.label)
        if len(clips) == 4:
            break
    assert len(clips) == 4, labels
    results = run_page(server, fake_microphone(clips, tmp_path / "mic.wav"), len(clips), tmp_path / "demo.png")
    check(results, clips, recognizer)
    save(tmp_path / "demo.png")
