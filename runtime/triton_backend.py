"""The Python-backend models of the Triton repository that ``python -m export.triton`` writes.

Triton loads each model's ``1/model.py``; those files only import the classes here, so the
models run this package's own code: ``EmotionRecognizer.prepare`` (validate, trim silence,
check the text), ``build_feed`` (pad, tokenise a whole batch), ``runtime.postprocess``
(per-mode temperature, softmax, labels) and, for the fused graph on CPU, ``OrtEngine``.

- ``EmotechModel`` is the model clients call (``emotech``), a BLS model: Triton's dynamic
  batcher hands it up to ``max_batch_size`` requests of any audio length at once (the
  ``audio`` input is ragged); it prepares every item, runs them through
  ``EmotionRecognizer.run`` (sorted by length, split into engine calls as on the API's own
  CPU or GPU engine), whose engine (``TritonEngine``) sends each padded call to the fused
  model as one request, and answers each request with its own rows.
- ``FusedModel`` (``emotech_fused`` with ``--backend python``) runs the fused ONNX graph on
  ONNX Runtime; on a GPU box the same model is Triton's onnxruntime or tensorrt_plan
  backend instead, and ``EmotechModel`` does not change.

``triton_python_backend_utils`` exists only inside Triton's Python-backend stub, so it is
imported there, lazily; the rest of this module imports without Triton.
"""

from __future__ import annotations

import json
import math
import traceback
from pathlib import Path
from typing import Any

import numpy as np

from runtime.engines.base import FUSED_INPUTS, OUTPUT, Engine
from runtime.errors import AudioError, EmotionError, TextError
from runtime.recognizer import EmotionRecognizer, Item
from runtime.spec import ModelSpec, load_spec

MODEL_SUBDIR = "model"  # the pruned model folder inside each Python model's version folder
DEFAULT_FUSED_MODEL = "emotech_fused"


def _pb():
    import triton_python_backend_utils as pb_utils  # only inside Triton's Python-backend stub

    return pb_utils


def parameters(model_config: dict) -> dict[str, str]:
    """The ``parameters`` of a model config (as Triton passes it: JSON) as plain strings."""
    return {k: v.get("string_value", "") for k, v in (model_config.get("parameters") or {}).items()}


def model_folder(args: dict) -> Path:
    """The pruned model folder written beside a Python model's ``model.py``."""
    return Path(args["model_repository"]) / str(args["model_version"]) / MODEL_SUBDIR


def pad_to_minimum(feed: dict[str, np.ndarray], min_samples: int, min_tokens: int) -> dict[str, np.ndarray]:
    """``feed`` with audio and tokens zero-padded to at least these lengths (a TensorRT plan's
    profile minimums; the model is length-aware, so the padding never changes a result)."""
    out = dict(feed)
    for name, lo in (("audio", min_samples), ("tokens", min_tokens)):
        a = feed[name]
        if a.shape[1] < lo:
            out[name] = np.pad(a, ((0, 0), (0, lo - a.shape[1])))
    return out


class TritonEngine(Engine):
    """The fused graph served by another model of the same Triton server, called through BLS.

    ``device`` is where that model runs ("cpu" or "cuda"); ``EmotionRecognizer.calls`` splits
    a batch by it exactly as for its own engines.
    """

    name = "triton"

    def __init__(self, spec: ModelSpec, model_name: str = DEFAULT_FUSED_MODEL, device: str = "cpu", precision: str = "fp32",
                 min_samples: int = 0, min_tokens: int = 0):
        super().__init__(spec, precision, device)
        self.model_name = model_name
        self.min_samples = min_samples
        self.min_tokens = min_tokens

    def _infer(self, feed: dict[str, np.ndarray]) -> np.ndarray:
        pb = _pb()
        feed = pad_to_minimum(feed, self.min_samples, self.min_tokens)
        # rank-1 inputs travel as [B, 1]: the fused model's config reshapes them to [B]
        inputs = [pb.Tensor(name, np.ascontiguousarray(a if a.ndim == 2 else a[:, None])) for name, a in feed.items()]
        response = pb.InferenceRequest(model_name=self.model_name, requested_output_names=[OUTPUT], inputs=inputs).exec()
        if response.has_error():
            raise RuntimeError(f"model {self.model_name} failed: {response.error().message()}")
        return pb.get_output_tensor_by_name(response, OUTPUT).as_numpy()

    def describe(self) -> dict[str, str]:
        return {**super().describe(), "triton_model": self.model_name}


class EmotechModel:
    """``emotech``: audio (FP32 [B, N], 16 kHz mono) and/or text (BYTES [B, 1]) in;
    ``scores`` (FP32 [B, num_classes], calibrated, in ``spec.labels`` order) and ``label``
    (BYTES [B, 1]) out. Each request is answered alone: a bad one gets its own error."""

    def initialize(self, args: dict) -> None:
        config = json.loads(args["model_config"])
        params = parameters(config)
        spec = load_spec(model_folder(args))
        engine = TritonEngine(
            spec,
            model_name=params.get("fused_model", DEFAULT_FUSED_MODEL),
            device=params.get("fused_device", "cpu"),
            precision=params.get("precision", "fp32"),
            min_samples=int(params.get("min_audio_samples", "0")),
            min_tokens=int(params.get("min_tokens", "0")),
        )
        # prepare_threads=1: requests arrive at the model rate (no resampling), and the
        # per-item checks are short numpy calls best kept in one thread
        self.recognizer = EmotionRecognizer(spec, engine, max_batch=int(config.get("max_batch_size") or 1), prepare_threads=1)
        fe = spec.frontend
        max_seconds = min(float(params.get("max_audio_seconds", fe.max_audio_seconds)), fe.max_audio_seconds)
        self.max_samples = math.floor(max_seconds * fe.sample_rate)
        self.max_seconds = max_seconds
        self.max_text_chars = min(int(params.get("max_text_chars", spec.max_text_chars)), spec.max_text_chars)

    def items(self, request: Any) -> list[Item]:
        """The validated items of one request (one per row of its batch dimension)."""
        pb = _pb()
        audio_t = pb.get_input_tensor_by_name(request, "audio")
        text_t = pb.get_input_tensor_by_name(request, "text")
        audio = None if audio_t is None else audio_t.as_numpy()
        texts = None if text_t is None else [decode_text(t) for t in text_t.as_numpy().reshape(-1)]
        if audio is None and texts is None:
            raise EmotionError("give the input 'audio' (FP32 [1, samples], mono 16 kHz), 'text' (BYTES [1, 1]) or both")
        # Triton has checked that audio and text agree on the batch dimension
        rows = audio.shape[0] if audio is not None else len(texts)  # type: ignore[arg-type]
        if audio is not None and audio.shape[1] > self.max_samples:
            sr = self.recognizer.sample_rate
            raise AudioError(f"audio is {audio.shape[1] / sr:.6g} s long ({audio.shape[1]} samples at {sr} Hz); the maximum is "
                             f"{self.max_seconds:g} s (split long recordings into utterances)")
        for t in texts or ():
            if len(t) > self.max_text_chars:
                raise TextError(f"text is {len(t)} characters long; the maximum is {self.max_text_chars}")
        sr = self.recognizer.sample_rate
        return [
            self.recognizer.prepare(None if audio is None else audio[i], None if texts is None else texts[i], sr,
                                    f"item {i}" if rows > 1 else None)
            for i in range(rows)
        ]

    def execute(self, requests: list) -> list:
        pb = _pb()
        responses: list = [None] * len(requests)
        items: list[Item] = []
        owners: list[tuple[int, int]] = []  # (request index, rows) in the order of ``items``
        for r, request in enumerate(requests):
            try:
                mine = self.items(request)
            except EmotionError as e:
                responses[r] = pb.InferenceResponse(error=pb.TritonError(str(e), pb.TritonError.INVALID_ARG))
                continue
            items.extend(mine)
            owners.append((r, len(mine)))
        if items:
            try:
                preds = self.recognizer.run(items)
            except Exception as e:  # noqa: BLE001 - every request of the batch gets the error; the model stays up
                pb.Logger.log_error(f"emotech: inference failed: {traceback.format_exc()}")
                for r, _ in owners:
                    responses[r] = pb.InferenceResponse(error=pb.TritonError(f"inference failed: {e}", pb.TritonError.INTERNAL))
                return responses
            labels = self.recognizer.labels
            start = 0
            for r, n in owners:
                mine = preds[start : start + n]
                start += n
                scores = np.array([[p.scores[name] for name in labels] for p in mine], dtype=np.float32)
                label = np.array([[p.label.encode()] for p in mine], dtype=np.object_)
                responses[r] = pb.InferenceResponse([pb.Tensor("scores", scores), pb.Tensor("label", label)])
        return responses

    def finalize(self) -> None:
        self.recognizer.close()


def decode_text(value: object) -> str:
    """One element of a BYTES tensor as text; raises ``TextError`` if it is not UTF-8."""
    if isinstance(value, str):
        return value
    try:
        return bytes(value).decode("utf-8")  # type: ignore[call-overload]
    except UnicodeDecodeError as e:
        raise TextError(f"text is not valid UTF-8 ({e}); send UTF-8 text") from e


class FusedModel:
    """``emotech_fused`` on the Python backend: each request is one padded batch
    (``build_feed``'s six inputs, rank-1 ones as [B, 1]) and gets its ``logits``."""

    def initialize(self, args: dict) -> None:
        from runtime.engines.ort import OrtEngine

        params = parameters(json.loads(args["model_config"]))
        spec = load_spec(model_folder(args))
        threads = int(params.get("intra_op_threads", "0")) or None
        self.engine = OrtEngine(spec, precision=params.get("precision", "fp32"), threads=threads)
        self._warm_up(spec, int(json.loads(args["model_config"]).get("max_batch_size") or 1))

    def _warm_up(self, spec: ModelSpec, max_batch: int) -> None:
        """One call at batch 1 and one at ``max_batch`` before Triton marks the model ready
        (ONNX Runtime sizes its buffers on the first calls of each shape)."""
        sr = spec.frontend.sample_rate
        clip = (0.05 * np.random.default_rng(0).standard_normal(2 * sr)).astype(np.float32)
        rec = EmotionRecognizer(spec, self.engine, max_batch=max_batch, prepare_threads=1)
        item = rec.prepare(clip, "warm up", sr)
        for n in sorted({1, max_batch}):
            self.engine.infer(rec.build_feed([item] * n))

    def execute(self, requests: list) -> list:
        pb = _pb()
        responses = []
        for request in requests:
            try:
                feed = {}
                for name, (_, rank) in FUSED_INPUTS.items():
                    a = pb.get_input_tensor_by_name(request, name).as_numpy()
                    feed[name] = a.reshape(a.shape[0]) if rank == 1 else a
                logits = self.engine.infer(feed)
                responses.append(pb.InferenceResponse([pb.Tensor(OUTPUT, np.ascontiguousarray(logits, dtype=np.float32))]))
            except Exception as e:  # noqa: BLE001 - answer this request with the error; the model stays up
                pb.Logger.log_error(f"emotech_fused: {traceback.format_exc()}")
                responses.append(pb.InferenceResponse(error=pb.TritonError(f"fused graph failed: {e}", pb.TritonError.INTERNAL)))
        return responses

    def finalize(self) -> None:
        self.engine.close()
