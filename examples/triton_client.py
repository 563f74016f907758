"""python examples/triton_client.py examples/espeak_angry_words.wav --text "I can't believe you did this to me" [--url 127.0.0.1:8000]

Ask the ``emotech`` model of a Triton server (``python -m export.triton --serve REPO``) for the
emotion of a clip and/or a transcript over KServe v2 (HTTP, binary tensors) with
``tritonclient``. The clip is decoded and resampled to mono 16 kHz with the runtime's own code
(the model takes FP32 [1, samples] at 16 kHz); prints the label and the scores.
"""

from __future__ import annotations

import argparse

import numpy as np
import tritonclient.http as httpclient

from runtime.audio import read_audio, to_model_rate
from runtime.frontend import FrontendConfig


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[1])
    p.add_argument("audio", nargs="?", help="audio file (WAV, FLAC, OGG; any rate, any channels)")
    p.add_argument("--text", default=None, help="transcript")
    p.add_argument("--url", default="127.0.0.1:8000", help="Triton's HTTP address")
    args = p.parse_args()
    inputs = []
    if args.audio:
        samples, rate, name = read_audio(args.audio)
        clip = to_model_rate(samples, rate, FrontendConfig(), name)[None, :]  # [1, samples] float32 at 16 kHz
        audio = httpclient.InferInput("audio", list(clip.shape), "FP32")
        audio.set_data_from_numpy(clip)
        inputs.append(audio)
    if args.text is not None:
        text = httpclient.InferInput("text", [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[args.text.encode()]], dtype=np.object_))
        inputs.append(text)
    client = httpclient.InferenceServerClient(args.url)
    try:
        classes = next(o["shape"][-1] for o in client.get_model_metadata("emotech")["outputs"] if o["name"] == "scores")
        # class_count: Triton's classification extension names each score from the model's labels.txt
        outputs = [httpclient.InferRequestedOutput("scores", class_count=classes), httpclient.InferRequestedOutput("label")]
        result = client.infer("emotech", inputs, outputs=outputs)
    finally:
        client.close()
    print(result.as_numpy("label")[0, 0].decode())
    for entry in result.as_numpy("scores").reshape(-1):  # "score:index:name", highest first
        score, _, name = entry.decode().split(":")
        print(f"  {name:10s} {float(score):.4f}")

if __name__ == "__main__":
    main()
