"""python examples/mic_stream.py [--url http://127.0.0.1:8080] [--api-key KEY] [--file clip.wav]

The microphone to a running server's ``/v1/stream``, one line per utterance and the last
minute as a timeline in the terminal::

    python -m runtime.serve --asr pocketsphinx        # in another terminal
    python examples/mic_stream.py                     # speak; Ctrl-C to stop

Needs ``pip install 'emotech[serve,mic]'`` (aiohttp for the WebSocket, sounddevice for the
microphone; sounddevice needs the PortAudio library: ``apt-get install libportaudio2`` on
Debian/Ubuntu, part of JetPack's audio stack on a Jetson). The audio is sent at the input
device's own rate (44.1 or 48 kHz, mostly); the stream's start message declares it and the
server resamples. ``--file`` plays a WAV/FLAC/OGG file at real-time pace instead of the
microphone (no sounddevice needed). The API key is read from ``--api-key`` or
``$EMOTECH_API_KEY``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import AsyncIterator

import numpy as np

EMOJI = {"neutral": "😐", "happy": "😄", "sad": "😢", "angry": "😠", "fearful": "😨", "disgust": "🤢", "surprised": "😲"}
CELL_S = 2.0  # seconds of stream per timeline cell
CELLS = 30  # the last minute
CHUNK_S = 0.05  # seconds of audio per WebSocket frame


async def microphone(rate: int, device: int | str | None) -> AsyncIterator[bytes]:
    """PCM16 mono chunks from the input device, as they are captured."""
    import sounddevice as sd

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[bytes] = asyncio.Queue()

    def callback(indata, frames, when, status) -> None:  # on PortAudio's thread
        loop.call_soon_threadsafe(queue.put_nowait, bytes(indata))

    with sd.RawInputStream(samplerate=rate, channels=1, dtype="int16", blocksize=int(rate * CHUNK_S), device=device,
                           callback=callback):
        while True:
            yield await queue.get()


async def file_source(path: str) -> AsyncIterator[bytes]:
    """A file's audio as PCM16 mono chunks at real-time pace (a stand-in microphone)."""
    from runtime.audio import decode, to_mono_float

    samples, rate = decode(path)
    mono = to_mono_float(samples, path)
    pcm = (np.clip(mono, -1, 1) * 32767).astype("<i2").tobytes()
    step = int(rate * CHUNK_S) * 2
    start = time.monotonic()
    for i in range(0, len(pcm), step):
        await asyncio.sleep(max(0.0, start + i / 2 / rate - time.monotonic()))
        yield pcm[i : i + step]


def file_rate(path: str) -> int:
    from runtime.audio import decode

    return decode(path)[1]


def timeline(results: list[dict], now_s: float) -> str:
    """One cell per CELL_S seconds of the last minute: the emoji of the utterance that
    covers most of it, '·' for none."""
    cells = []
    for c in range(CELLS):
        lo = now_s - (CELLS - c) * CELL_S
        hi = lo + CELL_S
        best, cover = None, 0.0
        for r in results:
            overlap = min(hi, r["end_s"]) - max(lo, r["start_s"])
            if overlap > cover:
                best, cover = r["label"], overlap
        cells.append(EMOJI.get(best, "🔹") if best else "· ")
    return "".join(cells)


def line(r: dict) -> str:
    top = r["scores"][r["label"]]
    steady = f" steady {r['smoothed']['label']}" if "smoothed" in r else ""
    heard = f'  "{r["transcript"]}" [{r["transcript_source"]}]' if r.get("transcript") else ""
    return f"{r['start_s']:7.1f}–{r['end_s']:6.1f} s  {EMOJI.get(r['label'], '🔹')} {r['label']:<9} {top:4.2f}{steady}{heard}"


async def run(url: str, source: AsyncIterator[bytes], rate: int, api_key: str | None, out=sys.stdout) -> int:
    """Stream ``source`` to ``url``/v1/stream; print a line and the timeline per result.
    Returns the number of utterances the server found."""
    import aiohttp

    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    ws_url = url.rstrip("/").replace("http", "ws", 1) + "/v1/stream"
    seen: list[dict] = []
    sent_s = 0.0
    async with aiohttp.ClientSession() as session, session.ws_connect(ws_url, headers=headers) as ws:
        await ws.send_str(json.dumps({"type": "start", "sample_rate": rate}))

        stop = asyncio.Event()  # Ctrl-C: stop sending, then read the last results
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGINT, stop.set)

        async def send() -> None:
            nonlocal sent_s
            async for chunk in source:
                if stop.is_set():
                    break
                await ws.send_bytes(chunk)
                sent_s += len(chunk) / 2 / rate
            await ws.send_str(json.dumps({"type": "end"}))  # the server closes the last utterance

        sender = asyncio.create_task(send())
        try:
            async for msg in ws:
                body = json.loads(msg.data)
                if body["type"] == "result":
                    seen.append(body)
                    print(line(body), file=out)
                    print(f"  last minute: {timeline(seen, max(sent_s, body['end_s']))}", file=out, flush=True)
                elif body["type"] == "error":
                    print(f"error: {body['error']['message']}", file=out, flush=True)
                elif body["type"] == "done":
                    print(f"done: {body['segments']} utterance(s)", file=out, flush=True)
        finally:
            sender.cancel()
            loop.remove_signal_handler(signal.SIGINT)
    return len(seen)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--url", default="http://127.0.0.1:8080", help="the server")
    p.add_argument("--api-key", default=None, help="the server's key; none: $EMOTECH_API_KEY if set")
    p.add_argument("--file", default=None, help="play this file instead of the microphone")
    p.add_argument("--device", default=None, help="sounddevice input device (index or name); none: the default")
    p.add_argument("--rate", type=int, default=None, help="capture rate; none: the device's default rate")
    args = p.parse_args(argv)
    key = args.api_key or os.environ.get("EMOTECH_API_KEY")
    if args.file:
        rate, source = file_rate(args.file), file_source(args.file)
    else:
        try:
            import sounddevice as sd
        except (ImportError, OSError) as e:
            print(f"error: the microphone needs sounddevice and PortAudio: pip install 'emotech[mic]'; "
                  f"apt-get install libportaudio2 ({e})", file=sys.stderr)
            return 2
        device = int(args.device) if args.device and args.device.isdigit() else args.device
        rate = args.rate or int(sd.query_devices(device, "input")["default_samplerate"])
        source = microphone(rate, device)
        print(f"listening at {rate} Hz; Ctrl-C to stop", file=sys.stderr)
    asyncio.run(run(args.url, source, rate, key))
    return 0


if __name__ == "__main__":
    sys.exit(main())
