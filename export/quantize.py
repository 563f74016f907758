"""Reduced-precision variants of a model folder's graphs: FP16 and INT8 (Q/DQ).

    python -m export.quantize --precision fp16 --model-dir weights/emotech
    python -m export.quantize --precision int8 --model-dir weights/emotech

TensorRT 11 has neither builder precision flags nor INT8 calibrators: precision must be in
the ONNX graph itself, for a strongly typed network. So:

- **fp16**: every float computation in FP16 except the front-end (``/mfcc/`` nodes: the
  power spectrum of loud audio overflows FP16, log-mel and CMVN want the precision) and
  overflow-prone reductions (sums/means over time, sqrt, log, exp), kept FP32 behind
  explicit Cast nodes on the edges that cross between the two regions (``convert_to_fp16``).
- **int8**: explicit QuantizeLinear/DequantizeLinear pairs (symmetric, zero point 0,
  per-channel weights, no quantised bias) on the Conv/MatMul/Gemm of the model, never on
  the front-end; LSTMs and everything else stay FP32 (TensorRT has no INT8 LSTM). Scales
  are calibrated on real training data read through the runtime's own preprocessing
  (``EmotionRecognizer.prepare`` / ``build_feed``): RAVDESS training actors 01-18 and
  GoEmotions train texts, as pairs, audio-only and text-only items.

Each variant is written beside the FP32 graph (``emotech.int8.onnx`` ...), checked against
TensorRT 10.3's parser rules (``export.op_support``), evaluated against FP32 on RAVDESS
test actors 21-24 (audio only) and GoEmotions test (text only) with ONNX Runtime on CPU,
and registered in ``spec.json`` only when it loses at most ``--max-ua-loss`` of unweighted
accuracy (else the command fails; ``--force`` registers anyway).
"""

from __future__ import annotations

import argparse
import random
import shlex
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

PRECISIONS = ("fp16", "int8")
FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FRONTEND_PREFIXES = ("/mfcc/",)  # node-name scope of the MFCC front-end in the exported graphs
FP32_OPS = frozenset({"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Sqrt", "Log", "Exp", "Pow", "Softmax", "LogSoftmax"})
INT8_OPS = ("Conv", "MatMul", "Gemm")
MAX_UA_LOSS = 0.01  # the issue's bound: <= 1 point of unweighted accuracy vs FP32


def variant_file(fp32_file: str, precision: str) -> str:
    """``emotech.onnx`` -> ``emotech.int8.onnx``."""
    stem = fp32_file.removesuffix(".onnx")
    return f"{stem}.{precision}.onnx"


# ---------------------------------------------------------------------------- FP16
# (onnxruntime.transformers.float16 was tried first: with a blocked front-end it inserts
# duplicate, same-named FP32->FP32 casts and produces an invalid model for this graph.)

def tensor_types(model: onnx.ModelProto) -> dict[str, int]:
    """Element type of every tensor (inputs, initializers, node outputs) via shape inference."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    g = inferred.graph
    types = {init.name: init.data_type for init in g.initializer}
    for vi in list(g.input) + list(g.value_info) + list(g.output):
        if vi.type.HasField("tensor_type"):
            types[vi.name] = vi.type.tensor_type.elem_type
    for node in g.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def convert_to_fp16(
    model: onnx.ModelProto,
    keep_prefixes: tuple[str, ...] = FRONTEND_PREFIXES,
    keep_ops: frozenset[str] = FP32_OPS,
) -> onnx.ModelProto:
    """A copy of ``model`` computing in FP16 except the kept nodes (see module docstring)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    g = model.graph
    types = tensor_types(model)
    is_float = lambda name: types.get(name) == FLOAT
    nodes = list(g.node)  # one list of wrappers: protobuf may rewrap on each access, id()s must stay valid
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in nodes:
        for name in node.input:
            consumers.setdefault(name, []).append(node)

    def kept(node: onnx.NodeProto) -> bool:
        return node.name.startswith(keep_prefixes) or node.op_type in keep_ops

    half_nodes: set[int] = set()
    for node in nodes:  # Constants follow their consumers; everything else its own rule
        if node.op_type != "Constant" and not kept(node):
            half_nodes.add(id(node))
    for node in nodes:
        if node.op_type == "Constant" and is_float(node.output[0]):
            users = consumers.get(node.output[0], [])
            if users and all(id(u) in half_nodes for u in users):
                half_nodes.add(id(node))

    half_tensors: set[str] = set()  # float tensors that are FP16 after the rewrite
    for node in nodes:
        if id(node) in half_nodes:
            half_tensors.update(o for o in node.output if is_float(o))

    inits = {init.name: init for init in g.initializer}
    new_inits: list[TensorProto] = []
    casts: dict[tuple[str, int], str] = {}
    new_nodes: list[onnx.NodeProto] = []

    def cast(name: str, to: int) -> str:
        key = (name, to)
        if key not in casts:
            out = f"{name}__to_{'fp16' if to == HALF else 'fp32'}"
            # named outside the source scopes so a cast is never mistaken for a front-end node
            new_nodes.append(helper.make_node("Cast", [name], [out], name=f"cast_{'fp16' if to == HALF else 'fp32'}:{name}", to=to))
            casts[key] = out
        return casts[key]

    def half_initializer(name: str) -> str:
        key = (name, -HALF)
        if key not in casts:
            arr = numpy_helper.to_array(inits[name]).astype("float16")
            new_inits.append(numpy_helper.from_array(arr, f"{name}__fp16"))
            casts[key] = f"{name}__fp16"
        return casts[key]

    for node in nodes:
        half = id(node) in half_nodes
        for i, name in enumerate(node.input):
            if not name or not is_float(name):
                continue
            if half and name not in half_tensors:
                node.input[i] = half_initializer(name) if name in inits else cast(name, HALF)
            elif not half and name in half_tensors:
                node.input[i] = cast(name, FLOAT)
        if half:
            _retype_node(node)
        new_nodes.append(node)

    for out in g.output:  # outputs keep FP32: rename the producer's tensor, cast back
        if out.name in half_tensors:
            src = f"{out.name}__fp16"
            for node in new_nodes:
                node.input[:] = [src if x == out.name else x for x in node.input]
                node.output[:] = [src if x == out.name else x for x in node.output]
            new_nodes.append(helper.make_node("Cast", [src], [out.name], name=f"cast_fp32:{out.name}", to=FLOAT))

    g.ClearField("node")
    g.node.extend(_toposort(new_nodes, {i.name for i in g.input} | set(inits) | {t.name for t in new_inits}))
    g.initializer.extend(new_inits)
    used = {x for n in g.node for x in n.input}
    keep = [init for init in g.initializer if init.name in used]
    g.ClearField("initializer")
    g.initializer.extend(keep)
    g.ClearField("value_info")
    onnx.checker.check_model(model)
    return model


def _retype_node(node: onnx.NodeProto) -> None:
    """Make a node that now computes in FP16 produce FP16 (Cast targets, constant values)."""
    for a in node.attribute:
        if node.op_type == "Cast" and a.name == "to" and a.i == FLOAT:
            a.i = HALF
        elif node.op_type in ("Constant", "ConstantOfShape") and a.name == "value" and a.t.data_type == FLOAT:
            arr = numpy_helper.to_array(a.t).astype("float16")
            a.t.CopyFrom(numpy_helper.from_array(arr, a.t.name))


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Order ``nodes`` so that each runs after the producers of its inputs."""
    producer = {o: i for i, n in enumerate(nodes) for o in n.output}
    done: set[int] = set()
    order: list[onnx.NodeProto] = []
    for start in range(len(nodes)):
        stack = [(start, False)]
        while stack:
            i, expanded = stack.pop()
            if i in done:
                continue
            if expanded:
                done.add(i)
                order.append(nodes[i])
                continue
            stack.append((i, True))
            for name in nodes[i].input:
                j = producer.get(name)
                if name and name not in available and j is not None and j not in done:
                    stack.append((j, False))
    return order


# ---------------------------------------------------------------------------- INT8


def frontend_nodes(model: onnx.ModelProto, prefixes: tuple[str, ...] = FRONTEND_PREFIXES) -> list[str]:
    """Names of the front-end nodes (never quantised, never FP16)."""
    return [n.name for n in model.graph.node if n.name.startswith(prefixes)]


def calibration_items(rec, data_root: Path, n_audio: int = 240, n_text: int = 480, seed: int = 0) -> list:
    """Real training items, read as a user's request would be (``rec.prepare``): half the
    clips paired with a text (both branches see real data), the rest audio-only, and the
    remaining texts text-only, so the fusion head sees all three modes."""
    from export import data
    from runtime.recognizer import Item

    labelset = data.LabelSet("spec", rec.labels, data.load_labelset("emotech7").maps)
    rng = random.Random(seed)
    clips = data.ravdess_split(Path(data_root) / "ravdess", labelset, "train")  # actors 01-18
    texts = data.load_goemotions(Path(data_root) / "text" / "goemotions_ekman" / "train.tsv", labelset)
    if not clips or not texts:
        raise FileNotFoundError(f"calibration needs RAVDESS and GoEmotions under {data_root}")
    clips = rng.sample(clips, min(n_audio, len(clips)))
    texts = [u.text for u in rng.sample(texts, min(n_text, len(texts)))]
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
    Conv/MatMul/Gemm outside the front-end, biases left in float (TensorRT rejects INT32
    dequantisation)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile, "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise ValueError(f"calibration method must be one of {', '.join(methods)}, got {method!r}")
    model = onnx.load(str(src))
    inputs = [i.name for i in model.graph.input]
    quantize_static(
        str(src),
        str(dst),
        _reader(feeds, inputs),
        quant_format=QuantFormat.QDQ,
        op_types_to_quantize=list(INT8_OPS),
        per_channel=True,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        nodes_to_exclude=frontend_nodes(model),
        calibrate_method=methods[method],
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
    quantized = onnx.load(str(dst))
    if restore_float_readers(quantized):
        onnx.save(quantized, str(dst))


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


# ------------------------------------------------------------------ evaluation


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def compare_with_fp32(rec, variants: dict[str, Any], data_root: Path, limit: int | None = None, batch: int = 32) -> dict:
    """Accuracy of the FP32 graph and of each variant on RAVDESS test actors 21-24 (audio
    only) and GoEmotions test (text only), with the label agreement and the max
    calibrated-score difference against FP32 on the same feeds.

    ``variants`` maps a name to a fused ONNX file (run on ONNX Runtime CPU, like the FP32
    reference) or to an engine (anything with ``infer(feed) -> logits``, e.g. a
    ``TorchEngine`` or ``TrtEngine``)."""
    import onnxruntime as ort

    from export import data
    from export.metrics import classification_report
    from runtime.recognizer import Item

    labelset = data.LabelSet("spec", rec.labels, data.load_labelset("emotech7").maps)
    root = Path(data_root)
    audio = data.ravdess_split(root / "ravdess", labelset, "test")
    texts = data.load_goemotions(root / "text" / "goemotions_ekman" / "test.tsv", labelset)
    if limit:
        audio = random.Random(0).sample(audio, min(limit, len(audio)))
        texts = random.Random(0).sample(texts, min(limit, len(texts)))
    sets = {
        "audio": ([Item(rec.prepare(audio=u.path).audio, None) for u in audio], np.array([u.label for u in audio]), "RAVDESS test actors 21-24, audio only"),
        "text": ([Item(None, u.text) for u in texts], np.array([u.label for u in texts]), "GoEmotions Ekman test (single-label), text only"),
    }
    opts = ort.SessionOptions()
    opts.inter_op_num_threads = 1
    sessions = {"fp32": ort.InferenceSession(str(rec.spec.graph_file("fused", "fp32")), opts, providers=["CPUExecutionProvider"])}
    for p, v in variants.items():
        sessions[p] = v if hasattr(v, "infer") else ort.InferenceSession(str(v), opts, providers=["CPUExecutionProvider"])
    labels = list(rec.labels)
    out: dict = {"engine": f"onnxruntime {ort.__version__} CPUExecutionProvider", "modes": {}}
    for mode, (items, y, title) in sets.items():
        order = sorted(range(len(items)), key=lambda i: (0 if items[i].audio is None else items[i].audio.size, len(items[i].text or "")))
        y = y[order]
        logits = {p: [] for p in sessions}
        for s in range(0, len(order), batch):
            feed = rec.build_feed([items[i] for i in order[s : s + batch]])
            for p, sess in sessions.items():
                logits[p].append(sess.infer(feed) if hasattr(sess, "infer") else sess.run(["logits"], feed)[0])
        t = rec.spec.temperature[mode]
        probs = {p: _softmax(np.concatenate(v) / t) for p, v in logits.items()}
        res: dict = {"title": title, "n": len(y)}
        for p, pr in probs.items():
            rep = classification_report(y, pr.argmax(1), labels)
            row = {"unweighted_accuracy": rep["unweighted_accuracy"], "accuracy": rep["accuracy"], "macro_f1": rep["macro_f1"]}
            if p != "fp32":
                row["label_agreement_vs_fp32"] = float((pr.argmax(1) == probs["fp32"].argmax(1)).mean())
                row["max_score_diff_vs_fp32"] = float(np.abs(pr - probs["fp32"]).max())
                row["ua_loss_vs_fp32"] = res["fp32"]["unweighted_accuracy"] - rep["unweighted_accuracy"]
            res[p] = row
        out["modes"][mode] = res
    return out


# ------------------------------------------------------------------------ CLI


def pending_file(path: Path) -> Path:
    """Where a new variant waits until it is registered: ``emotech.int8.onnx.new``."""
    return path.with_name(path.name + ".new")


def install_variants(pending: dict[str, Path]) -> dict[str, Path]:
    """Move pending variants over the registered files (atomic per file); graph -> final path."""
    final = {g: p.with_name(p.name.removesuffix(".new")) for g, p in pending.items()}
    for g, p in pending.items():
        p.replace(final[g])
    return final


def make_variants(model_dir: Path, precision: str, data_root: Path | None, graphs: Sequence[str] | None = None, n_audio: int = 240, n_text: int = 480, method: str = "minmax", seed: int = 0) -> dict[str, Path]:
    """Write the ``precision`` variant of each FP32 graph of ``model_dir``; returns graph -> path.

    Each variant is written as ``<variant>.new`` (``pending_file``) beside the registered one,
    which stays intact and still matches its hash until ``install_variants`` replaces it:
    re-quantising a folder never leaves it failing verification.

    Raises:
        ValueError: unknown precision or graph; RuntimeError: a variant fails the TensorRT
        10.3 parser check.
    """
    from export.op_support import check_file
    from runtime.recognizer import EmotionRecognizer

    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    rec = EmotionRecognizer.load(model_dir, engine="ort", precision="fp32")
    fp32 = {g: v["fp32"] for g, v in rec.spec.graphs.items() if "fp32" in v}
    graphs = list(graphs or fp32)
    unknown = [g for g in graphs if g not in fp32]
    if unknown:
        raise ValueError(f"{model_dir} has no fp32 graph {unknown}; it has {sorted(fp32)}")
    feeds = None
    if precision == "int8":
        if data_root is None or not Path(data_root).is_dir():
            raise FileNotFoundError(f"INT8 calibration needs the real data (RAVDESS, GoEmotions); not found at {data_root}")
        t0 = time.time()
        feeds = feeds_for(rec, calibration_items(rec, Path(data_root), n_audio, n_text, seed))
        print(f"calibration: {sum(len(f['audio']) for f in feeds)} items in {len(feeds)} batches ({time.time() - t0:.0f} s to read)", flush=True)
    out: dict[str, Path] = {}
    for graph in graphs:
        src = model_dir / fp32[graph]
        dst = pending_file(model_dir / variant_file(fp32[graph], precision))
        t0 = time.time()
        if precision == "fp16":
            onnx.save(convert_to_fp16(onnx.load(str(src))), str(dst))
        else:
            quantize_int8(src, dst, feeds, method)
        issues = check_file(dst)
        if issues:
            raise RuntimeError(f"{dst.name} would not parse on TensorRT 10.3: " + "; ".join(map(str, issues)))
        print(f"{dst.name}: written in {time.time() - t0:.0f} s, TensorRT 10.3 op-support check OK", flush=True)
        out[graph] = dst
    rec.close()
    return out


def main(argv: list[str] | None = None) -> int:
    from export import bundle
    from export.data import DEFAULT_DATA_ROOT

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--precision", required=True, choices=PRECISIONS)
    p.add_argument("--model-dir", type=Path, default=bundle.DEFAULT_MODEL_DIR, help="model folder with FP32 graphs (default: the bundled weights)")
    p.add_argument("--data-root", type=Path, default=DEFAULT_DATA_ROOT, help="RAVDESS + GoEmotions (calibration and evaluation)")
    p.add_argument("--graphs", nargs="*", default=None, help="graphs to convert (default: every FP32 graph in the spec)")
    p.add_argument("--calib-audio", type=int, default=240, help="RAVDESS training clips for INT8 calibration")
    p.add_argument("--calib-text", type=int, default=480, help="GoEmotions training texts for INT8 calibration")
    p.add_argument("--method", default="minmax", choices=["minmax", "percentile", "entropy"], help="INT8 activation calibration")
    p.add_argument("--eval-limit", type=int, default=None, help="evaluate on a seeded subsample (smoke runs)")
    p.add_argument("--no-eval", action="store_true", help="skip the accuracy comparison (the variant is then registered unchecked)")
    p.add_argument("--max-ua-loss", type=float, default=MAX_UA_LOSS, help="largest unweighted-accuracy loss vs FP32 allowed to register")
    p.add_argument("--force", action="store_true", help="register the variant even if it exceeds --max-ua-loss")
    args = p.parse_args(argv)
    command = "python -m export.quantize " + " ".join(shlex.quote(a) for a in (argv if argv is not None else sys.argv[1:]))
    from runtime.recognizer import EmotionRecognizer

    written = make_variants(args.model_dir, args.precision, args.data_root, args.graphs, args.calib_audio, args.calib_text, args.method)
    report: dict = {"command": command, "method": args.method if args.precision == "int8" else "fp16-with-fp32-frontend"}
    if args.precision == "int8":
        report["calibration"] = {"audio_clips": args.calib_audio, "texts": args.calib_text, "data": "RAVDESS actors 01-18 + GoEmotions train"}
    ok = True
    if not args.no_eval and "fused" in written and args.data_root.is_dir():
        rec = EmotionRecognizer.load(args.model_dir, engine="ort", precision="fp32")
        ev = compare_with_fp32(rec, {args.precision: written["fused"]}, args.data_root, args.eval_limit)
        rec.close()
        report["eval"] = ev
        for mode, res in ev["modes"].items():
            r32, rq = res["fp32"], res[args.precision]
            print(
                f"{mode:>5} (n={res['n']}): UA fp32 {r32['unweighted_accuracy']:.4f} {args.precision} {rq['unweighted_accuracy']:.4f} "
                f"(loss {rq['ua_loss_vs_fp32'] * 100:+.2f} pt), agreement {rq['label_agreement_vs_fp32']:.4f}, max |score diff| {rq['max_score_diff_vs_fp32']:.2e}",
                flush=True,
            )
            ok &= rq["ua_loss_vs_fp32"] <= args.max_ua_loss
    elif not args.no_eval:
        print(f"accuracy comparison skipped: no fused graph converted or no data at {args.data_root}", flush=True)
    if not ok and not args.force:
        for path in written.values():
            path.unlink()
        print(f"NOT registered: {args.precision} loses more than {args.max_ua_loss * 100:.1f} pt of unweighted accuracy (use --force to register anyway)")
        return 1
    written = install_variants(written)
    spec = bundle.read_spec(args.model_dir)
    bundle.register_graphs(spec, {g: path.name for g, path in written.items()}, args.precision)
    spec.setdefault("quantization", {})[args.precision] = report
    bundle.update_files(args.model_dir, spec)
    print(f"registered {args.precision}: " + ", ".join(f"{g}={path.name}" for g, path in written.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
