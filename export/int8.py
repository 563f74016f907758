"""INT8 (Q/DQ) variant of an ONNX graph, calibrated on real training data.

Explicit QuantizeLinear/DequantizeLinear pairs (symmetric, zero point 0, per-channel
weights, no quantised bias) go on the Conv/MatMul/Gemm of the model, never on the
front-end nor on the final classifier (the Conv/MatMul/Gemm that produce the logits, whose
rounding error is not averaged by any later layer); LSTMs and everything else stay FP32
(TensorRT has no INT8 LSTM). Weights held by Constant nodes (the fused head of a merged
ensemble is traced with its weights as Constants) are made initializers first: ONNX
Runtime's quantiser treats a Constant's output as an activation and would give it one
calibrated per-tensor scale instead of per-channel weight scales. TensorRT 11
has no INT8 calibrators, so the scales are in the graph. They are calibrated on real
training data read through the runtime's own preprocessing (``EmotionRecognizer.prepare``
/ ``build_feed``): RAVDESS training actors 01-18 and GoEmotions train texts, as pairs,
audio-only and text-only items.
"""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from export.fp16 import FRONTEND_PREFIXES

INT8_OPS = ("Conv", "MatMul", "Gemm")
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
# ops between the final classifier and a graph output: bias adds, scaling, activations, reshapes
TAIL_OPS = frozenset({"Add", "Sub", "Mul", "Div", "Relu", "Identity", "Reshape", "Squeeze", "Unsqueeze", "Flatten", "Softmax", "LogSoftmax", "Cast"})


def frontend_nodes(model: onnx.ModelProto, prefixes: tuple[str, ...] = FRONTEND_PREFIXES) -> list[str]:
    """Names of the front-end nodes (never quantised, never FP16)."""
    return [n.name for n in model.graph.node if n.name.startswith(prefixes)]


def calibration_items(rec, data_root: Path, n_audio: int = 240, n_text: int = 480, seed: int = 0) -> list:
    """Real training items, read as a user's request would be (``rec.prepare``): half the
    clips paired with a text (both branches see real data), the rest audio-only, and the
    remaining texts text-only, so the fusion head sees all three modes.

    Clips come in equal shares from the training split of every audio corpus the model was
    trained on (RAVDESS actors 01-18, nEMO's training speakers), texts in equal shares from
    every text corpus' training split: activation ranges then cover every kind of input the
    model was fitted to."""
    from export import data
    from runtime.recognizer import Item

    labelset = data.LabelSet("spec", rec.labels, data.load_labelset("emotech7").maps)
    rng = random.Random(seed)
    audio_corpora, text_corpora = data.trained_corpora(rec.spec.raw)
    root = Path(data_root)
    clips = []
    for i, corpus in enumerate(audio_corpora):
        pool = data.ravdess_split(root / "ravdess", labelset, "train") if corpus == "ravdess" else data.nemo_split(root / "nemo", labelset, "train")
        share = n_audio // len(audio_corpora) + (i < n_audio % len(audio_corpora))
        clips += rng.sample(pool, min(share, len(pool)))
    texts = []
    for i, corpus in enumerate(text_corpora):
        pool = data.text_split(root, corpus, labelset, "train")
        share = n_text // len(text_corpora) + (i < n_text % len(text_corpora))
        texts += [u.text for u in rng.sample(pool, min(share, len(pool)))]
    if not clips or not texts:
        raise FileNotFoundError(f"calibration needs the training corpora ({'+'.join(audio_corpora)}, {'+'.join(text_corpora)}) under {data_root}")
    rng.shuffle(clips)
    rng.shuffle(texts)
    audio = [rec.prepare(audio=u.path, name=u.path).audio for u in clips]
    n_pairs = len(audio) // 2
    items = [Item(a, t) for a, t in zip(audio[:n_pairs], texts[:n_pairs])]
    items += [Item(a, None) for a in audio[n_pairs:]]
    items += [Item(None, t) for t in texts[n_pairs:]]
    return items


def feeds_for(rec, items: Sequence, batch: int = 16) -> list[dict[str, np.ndarray]]:
    """Engine feeds for ``items``, ``batch`` per feed, grouped by audio length (as ``run`` does)."""
    order = sorted(range(len(items)), key=lambda i: 0 if items[i].audio is None else items[i].audio.size)
    return [rec.build_feed([items[i] for i in order[s : s + batch]]) for s in range(0, len(order), batch)]


def constants_to_initializers(model: onnx.ModelProto, op_types: Sequence[str] = INT8_OPS) -> int:
    """Turn the float Constant nodes read by ``op_types`` nodes into initializers of the same
    name (in place); returns how many."""
    g = model.graph
    readers = {name for n in g.node if n.op_type in op_types for name in n.input[1:]}
    keep, moved = [], 0
    for node in g.node:
        value = next((a.t for a in node.attribute if a.name == "value"), None) if node.op_type == "Constant" else None
        if value is not None and node.output[0] in readers and value.data_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16):
            g.initializer.append(numpy_helper.from_array(numpy_helper.to_array(value), node.output[0]))
            moved += 1
        else:
            keep.append(node)
    if moved:
        g.ClearField("node")
        g.node.extend(keep)
    return moved


def final_classifier_nodes(model: onnx.ModelProto) -> list[str]:
    """Names of the Conv/MatMul/Gemm nodes whose output reaches a graph output through
    ``TAIL_OPS`` only: the layer(s) that produce the logits."""
    producer = {o: n for n in model.graph.node for o in n.output}
    found: list[str] = []
    stack, seen = [o.name for o in model.graph.output], set()
    while stack:
        node = producer.get(stack.pop())
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        if node.op_type in INT8_OPS:
            found.append(node.name)
        elif node.op_type in TAIL_OPS:
            data_inputs = node.input if node.op_type in ("Add", "Sub", "Mul", "Div") else node.input[:1]
            stack.extend(x for x in data_inputs if x)
    return found


def _reader(feeds: list[dict[str, np.ndarray]], input_names: list[str]):
    from onnxruntime.quantization import CalibrationDataReader

    class FeedReader(CalibrationDataReader):
        """Hands ONNX Runtime's calibrator the feeds, restricted to one graph's inputs."""

        def __init__(self) -> None:
            self._it: Iterator[dict] = iter([{k: f[k] for k in input_names} for f in feeds])

        def get_next(self) -> dict | None:
            return next(self._it, None)

    return FeedReader()


def quantize_int8(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], method: str = "minmax") -> None:
    """Write a QDQ INT8 copy of ``src`` that TensorRT's strongly typed parser accepts:
    symmetric INT8 activations and per-channel weights (zero points 0), Q/DQ only on
    Conv/MatMul/Gemm outside the front-end and the final classifier, Constant weights made
    initializers first, biases left in float (TensorRT rejects INT32 dequantisation)."""
    from onnxruntime.quantization import CalibrationMethod

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {', '.join(CALIBRATION_METHODS)}, got {method!r}")
    model = onnx.load(str(src))
    constants_to_initializers(model)
    inputs = [i.name for i in model.graph.input]
    with tempfile.TemporaryDirectory(dir=Path(dst).parent) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        onnx.save(model, str(prepared))
        _quantize(prepared, dst, feeds, inputs, frontend_nodes(model) + final_classifier_nodes(model), methods[method])
    quantized = onnx.load(str(dst))
    if restore_float_readers(quantized):
        onnx.save(quantized, str(dst))


def _quantize(src: Path, dst: Path, feeds: list[dict[str, np.ndarray]], inputs: list[str], exclude: list[str], method) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    quantize_static(
        str(src),
        str(dst),
        _reader(feeds, inputs),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(INT8_OPS),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=exclude,
        calibrate_method=method,
        extra_options={
            "ActivationSymmetric": True,
            "WeightSymmetric": True,
            "QuantizeBias": False,
            # Q/DQ on the inputs (activation, weight) of Conv/MatMul/Gemm only; their outputs
            # stay float (the next quantised layer quantises its own input)
            "OpTypesToExcludeOutputQuantization": list(INT8_OPS),
            # not "CalibMaxIntermediateOutputs": ONNX Runtime 1.31 drops (does not merge) the
            # batches collected before each flush; MinMax reduces in-graph, so memory is small
            "CalibPercentile": 99.999,
        },
    )


def restore_float_readers(model: onnx.ModelProto) -> int:
    """Point every reader of a quantised activation that is not itself quantised (e.g. the
    Unsqueeze feeding the 2-D CNN beside the strided Conv) back at the float tensor:
    ONNX Runtime rewires all readers of a tensor to its DequantizeLinear output when only
    one of them is quantised. Returns the number of inputs rewired."""
    q_source = {n.output[0]: n.input[0] for n in model.graph.node if n.op_type == "QuantizeLinear"}
    float_of = {n.output[0]: q_source[n.input[0]] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in q_source}
    changed = 0
    for node in model.graph.node:
        if node.op_type in INT8_OPS and not node.name.startswith(FRONTEND_PREFIXES) or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            continue
        for i, name in enumerate(node.input):
            if name in float_of:
                node.input[i] = float_of[name]
                changed += 1
    return changed
