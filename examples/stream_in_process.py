"""python examples/stream_in_process.py examples/espeak_angry_words.wav [--asr pocketsphinx]

Streaming without a server: the audio of a file (any rate) arrives in 20-ms chunks, as a
microphone's would; ``StreamResampler`` brings it to 16 kHz, the public segmenter
(``runtime.server.vad``: Silero VAD on ONNX Runtime) cuts utterances as soon as their end
is known, ``EmotionRecognizer`` scores each, and ``ScoreSmoother`` keeps a steadier label
over the last few. Needs only the runtime (no aiohttp).
"""

from __future__ import annotations

import argparse
import sys

from runtime import EmotionRecognizer
from runtime.asr import add_asr_argument
from runtime.audio import StreamResampler, decode, to_mono_float
from runtime.server.smoothing import DEFAULT_HALF_LIFE_S, ScoreSmoother
from runtime.server.vad import SAMPLE_RATE, Segmenter, SileroVad, VadConfig

CHUNK_S = 0.02  # seconds per chunk fed to the segmenter


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1], formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("path", help="audio file (WAV, FLAC, OGG; any rate)")
    p.add_argument("--min-silence-ms", type=int, default=VadConfig.min_silence_ms, help="silence that ends an utterance")
    p.add_argument("--half-life-s", type=float, default=DEFAULT_HALF_LIFE_S, help="smoothing half-life (0: off)")
    add_asr_argument(p)
    args = p.parse_args(argv)

    samples, rate = decode(args.path)
    audio = to_mono_float(samples, args.path)
    rec = EmotionRecognizer.load(asr=args.asr)
    segmenter = Segmenter(SileroVad(), VadConfig(min_silence_ms=args.min_silence_ms))
    resampler = StreamResampler(rate, SAMPLE_RATE)
    smoother = ScoreSmoother(args.half_life_s)

    def report(segments) -> None:
        for seg in segments:
            pred = rec.predict(audio=seg.audio, sample_rate=SAMPLE_RATE)
            steady = smoother.update(pred.scores, seg.end_s)
            heard = f'  "{pred.transcript}"' if pred.transcript else ""
            print(f"{seg.start_s:6.2f}-{seg.end_s:6.2f} s  {pred.label:<9} {pred.scores[pred.label]:.2f}"
                  f"  steady {steady['label']:<9}{heard}", flush=True)

    step = max(1, int(rate * CHUNK_S))
    for i in range(0, audio.size, step):
        report(segmenter.feed(resampler(audio[i : i + step])))
    report(segmenter.feed(resampler(audio[:0], last=True)) + segmenter.flush())
    rec.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
