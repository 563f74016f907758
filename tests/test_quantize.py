"""FP16 and INT8 variants: what stays FP32, where Q/DQ goes, TensorRT parser rules, the
CLI's registration, and (with the real data) the accuracy bound against FP32."""

from __future__ import annotations


import numpy as np
import onnx
import pytest
from onnx import TensorProto

from export.op_support import check_model
from tests.helpers import BUNDLED, DATA_ROOT, has_data, requires_data, requires_torch, softmax, speechlike

pytestmark = requires_torch





def _feeds(model_dir, n=12, batch=4):
    from export.int8 import feeds_for
    from runtime.recognizer import EmotionRecognizer

    rec = EmotionRecognizer.load(model_dir)
    texts = ["I am thrilled", "leave me alone", "that is so sad", "oh wow!", "fine.", "I'm scared of it"]
    items = []
    for i in range(n):
        audio = speechlike(0.4 + 0.3 * i, seed=i, f0=110 + 10 * i) if i % 3 != 2 else None
        text = texts[i % len(texts)] if i % 3 != 1 else None
        items.append(rec.prepare(audio=audio, text=text, sample_rate=16000))
    return rec, feeds_for(rec, items, batch)


def test_variant_file():
    from export.variants import variant_file

    assert variant_file("emotech.onnx", "int8") == "emotech.int8.onnx"
    assert variant_file("audio_branch.onnx", "fp16") == "audio_branch.fp16.onnx"


def test_fp16_keeps_frontend_fp32_and_runs(tiny_model_dir):
    import onnxruntime as ort

    from export.fp16 import convert_to_fp16, tensor_types

    src = onnx.load(str(tiny_model_dir / "emotech.onnx"))
    m16 = convert_to_fp16(src)
    assert check_model(m16) == []
    types = tensor_types(m16)
    orig = {n.name: n for n in src.graph.node}
    frontend = [n for n in m16.graph.node if n.name.startswith("/mfcc/")]
    assert frontend and all(list(orig[n.name].input) == list(n.input) for n in frontend)  # untouched
    assert all(types.get(o) != TensorProto.FLOAT16 for n in frontend for o in n.output)
    half_ops = {n.op_type for n in m16.graph.node if any(types.get(o) == TensorProto.FLOAT16 for o in n.output)}
    assert {"Conv", "LSTM", "Gemm"} <= half_ops
    assert not half_ops & {"ReduceSum", "ReduceMean", "Sqrt", "Log"}  # overflow-prone stay FP32
    added = [n for n in m16.graph.node if n.name.startswith(("cast_fp16:", "cast_fp32:"))]
    assert added  # casts only where the regions meet, never FP32 -> FP32
    assert all({types.get(n.input[0]), types.get(n.output[0])} == {TensorProto.FLOAT, TensorProto.FLOAT16} for n in added)
    assert [i.type.tensor_type.elem_type for i in m16.graph.output] == [TensorProto.FLOAT]
    assert {i.name: i.type.tensor_type.elem_type for i in m16.graph.input} == {i.name: i.type.tensor_type.elem_type for i in src.graph.input}

    _, feeds = _feeds(tiny_model_dir)
    s32 = ort.InferenceSession(str(tiny_model_dir / "emotech.onnx"), providers=["CPUExecutionProvider"])
    s16 = ort.InferenceSession(m16.SerializeToString(), providers=["CPUExecutionProvider"])
    for feed in feeds:
        a, b = softmax(s32.run(["logits"], feed)[0]), softmax(s16.run(["logits"], feed)[0])
        assert np.abs(a - b).max() <= 5e-3


def test_int8_qdq_only_on_conv_matmul_gemm_outside_frontend(model_copy):
    import onnxruntime as ort

    from export.int8 import INT8_OPS, final_classifier_nodes, quantize_int8

    _, feeds = _feeds(model_copy)
    dst = model_copy / "emotech.int8.onnx"
    quantize_int8(model_copy / "emotech.onnx", dst, feeds)
    q = onnx.load(str(dst))
    assert check_model(q) == []  # symmetric INT8, zero points 0, no INT32 bias, no integer ops
    consumers: dict[str, list] = {}
    for n in q.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    dqs = [n for n in q.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs
    quantised = set()
    for dq in dqs:
        for c in consumers.get(dq.output[0], []):
            assert c.op_type in INT8_OPS and not c.name.startswith("/mfcc/"), c.name
            quantised.add(c.op_type)
    assert quantised == {"Conv", "Gemm"}  # the tiny model's MatMuls are all in the front-end
    final = set(final_classifier_nodes(onnx.load(str(model_copy / "emotech.onnx"))))
    assert final and not final & {c.name for dq in dqs for c in consumers.get(dq.output[0], [])}  # the classifier stays float
    assert all(not any(i.endswith("DequantizeLinear_Output") for i in n.input) for n in q.graph.node if n.op_type == "LSTM")
    inits = {i.name: i for i in q.graph.initializer}
    weights_int8 = [i for i in inits.values() if i.data_type == TensorProto.INT8 and len(i.dims) >= 2]
    assert weights_int8  # weights stored quantised (per channel), activations via Q/DQ
    s32 = ort.InferenceSession(str(model_copy / "emotech.onnx"), providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    for feed in feeds:
        a, b = softmax(s32.run(["logits"], feed)[0]), softmax(s8.run(["logits"], feed)[0])
        assert np.abs(a - b).max() <= 0.05


def _head_with_constant_weights():
    """x -> MatMul(W1 Constant) -> Relu -> MatMul(W2 Constant) -> Add(bias Constant) -> logits:
    the shape of a merged ensemble's fused head, weights traced as Constant nodes."""
    from onnx import helper, numpy_helper

    rng = np.random.default_rng(0)
    w1, w2, b = rng.standard_normal((16, 24)).astype(np.float32), rng.standard_normal((24, 7)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    const = lambda name, arr: helper.make_node("Constant", [], [name], name=f"/{name}", value=numpy_helper.from_array(arr, name))  # noqa: E731
    nodes = [
        const("W1", w1), const("W2", w2), const("b", b),
        helper.make_node("MatMul", ["x", "W1"], ["h"], name="/MatMul"),
        helper.make_node("Relu", ["h"], ["r"], name="/Relu"),
        helper.make_node("MatMul", ["r", "W2"], ["z"], name="/MatMul_1"),
        helper.make_node("Add", ["z", "b"], ["logits"], name="/Add"),
    ]
    graph = helper.make_graph(nodes, "head", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])], [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", 7])])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), rng


def test_int8_head_weights_per_channel_and_final_classifier_in_float(tmp_path):
    import onnxruntime as ort
    from onnx import numpy_helper

    from export.int8 import final_classifier_nodes, quantize_int8

    model, rng = _head_with_constant_weights()
    assert final_classifier_nodes(model) == ["/MatMul_1"]
    src, dst = tmp_path / "head.onnx", tmp_path / "head.int8.onnx"
    onnx.save(model, str(src))
    feeds = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(4)]
    quantize_int8(src, dst, feeds)
    q = onnx.load(str(dst))
    assert check_model(q) == []
    assert not [n for n in q.graph.node if n.op_type == "Constant" and n.output[0] in ("W1", "W2")]
    inits = {i.name: i for i in q.graph.initializer}
    producer = {o: n for n in q.graph.node for o in n.output}
    first = next(n for n in q.graph.node if n.name == "/MatMul")
    dq_w = producer[first.input[1]]  # the weight: stored INT8, one scale per output channel
    assert dq_w.op_type == "DequantizeLinear" and inits[dq_w.input[0]].data_type == TensorProto.INT8
    assert numpy_helper.to_array(inits[dq_w.input[1]]).shape == (24,)
    assert producer[first.input[0]].op_type == "DequantizeLinear"  # the activation: Q/DQ
    last = next(n for n in q.graph.node if n.name == "/MatMul_1")
    assert all(x not in producer or producer[x].op_type != "DequantizeLinear" for x in last.input)  # float
    s32 = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])
    s8 = ort.InferenceSession(str(dst), providers=["CPUExecutionProvider"])
    for feed in feeds:
        a, b = s32.run(["logits"], feed)[0], s8.run(["logits"], feed)[0]
        assert np.abs(a - b).max() <= 0.05 * np.abs(a).max()


def test_cli_help_documents_every_option_once(capsys):
    from export.quantize import build_parser

    parser = build_parser()
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())  # undo the line wrapping
    options = [a for a in parser._actions if a.option_strings and a.dest != "help"]
    assert {a.dest for a in options} >= {"precision", "model_dir", "data_root", "graphs", "method", "eval_limit", "force"}
    assert all(a.help for a in options)
    assert "(default: None)" not in text and "(default: False)" not in text
    for a in options:  # each option's help names its default at most once
        helped = parser.formatter_class("x")._get_help_string(a) % {"default": a.default}
        assert helped.count("default") <= 1, helped
    assert "(default: 240)" in text and "(default: minmax)" in text


def test_cli_registers_fp16_variant_loadable_by_the_runtime(model_copy, capsys):
    from export.quantize import main
    from runtime.recognizer import EmotionRecognizer
    from runtime.spec import load_spec

    assert main(["--precision", "fp16", "--model-dir", str(model_copy), "--no-eval"]) == 0
    spec = load_spec(model_copy)  # hashes verified
    assert spec.graphs["fused"]["fp16"] == "emotech.fp16.onnx" and "fp16" in spec.raw["quantization"]
    rec = EmotionRecognizer.load(model_copy, precision="fp16")
    pred = rec.predict(audio=speechlike(1.0), sample_rate=16000, text="great news")
    assert abs(sum(pred.scores.values()) - 1) < 1e-6
    assert "registered fp16" in capsys.readouterr().out


def test_requantising_replaces_the_registered_variant_in_place(model_copy):
    """A second run over a folder that already has the variant must not break its
    verification midway (the new file waits as ``.new`` until it is registered)."""
    from export.quantize import main
    from runtime.spec import load_spec

    for _ in range(2):
        assert main(["--precision", "fp16", "--model-dir", str(model_copy), "--no-eval"]) == 0
        load_spec(model_copy)  # every hash verified
    assert not list(model_copy.glob("*.new"))


@requires_data
def test_a_variant_that_fails_the_accuracy_gate_leaves_the_registered_one(model_copy, capsys):
    from export.quantize import main
    from runtime.spec import load_spec

    assert main(["--precision", "fp16", "--model-dir", str(model_copy), "--no-eval"]) == 0
    before = load_spec(model_copy).files["emotech.fp16.onnx"]
    argv = ["--precision", "fp16", "--model-dir", str(model_copy), "--data-root", str(DATA_ROOT), "--eval-limit", "16", "--max-ua-loss", "-1"]
    assert main(argv) == 1
    assert "NOT registered" in capsys.readouterr().out
    assert load_spec(model_copy).files["emotech.fp16.onnx"] == before  # verified, unchanged
    assert not list(model_copy.glob("*.new"))


def test_int8_needs_real_calibration_data(model_copy, tmp_path):
    from export.variants import make_variants

    with pytest.raises(FileNotFoundError, match="calibration"):
        make_variants(model_copy, "int8", tmp_path / "no-data")
    with pytest.raises(ValueError, match="precision"):
        make_variants(model_copy, "int4", None)


@requires_data
@pytest.mark.requires_data
def test_compare_with_fp32_on_real_test_data(model_copy):
    from export.data import DEFAULT_DATA_ROOT
    from export.compare import compare_with_fp32
    from export.fp16 import convert_to_fp16
    from runtime.recognizer import EmotionRecognizer

    onnx.save(convert_to_fp16(onnx.load(str(model_copy / "emotech.onnx"))), str(model_copy / "f16.onnx"))
    rec = EmotionRecognizer.load(model_copy)
    ev = compare_with_fp32(rec, {"fp16": model_copy / "f16.onnx"}, DEFAULT_DATA_ROOT, limit=16)
    for mode in ("audio", "text"):
        r = ev["modes"][mode]
        assert r["n"] == 16 and 0 <= r["fp16"]["label_agreement_vs_fp32"] <= 1
        assert r["fp16"]["ua_loss_vs_fp32"] == pytest.approx(r["fp32"]["unweighted_accuracy"] - r["fp16"]["unweighted_accuracy"])


def _shipped_variants():
    import json

    spec_file = BUNDLED / "spec.json"
    if not spec_file.is_file():
        return []
    graphs = json.loads(spec_file.read_text()).get("graphs", {}).get("fused", {})
    return [p for p in ("fp16", "int8") if p in graphs]


@pytest.mark.slow
@pytest.mark.requires_data
@pytest.mark.skipif(not has_data() or not _shipped_variants(), reason="needs ../shared/data and shipped fp16/int8 variants")
@pytest.mark.parametrize("precision", _shipped_variants() or ["fp16"])
def test_shipped_variant_within_one_point_of_fp32(precision):
    from export.data import DEFAULT_DATA_ROOT
    from export.compare import MAX_UA_LOSS, compare_with_fp32
    from runtime.recognizer import EmotionRecognizer

    rec = EmotionRecognizer.load(BUNDLED)
    ev = compare_with_fp32(rec, {precision: rec.spec.graph_file("fused", precision)}, DEFAULT_DATA_ROOT)
    for mode, r in ev["modes"].items():
        assert r[precision]["ua_loss_vs_fp32"] <= MAX_UA_LOSS, (mode, r)


def test_a_variant_failing_the_parser_check_leaves_no_pending_file(model_copy, monkeypatch):
    import export.op_support
    from export.op_support import Issue
    from export.variants import make_variants

    monkeypatch.setattr(export.op_support, "check_file", lambda path: [Issue("n", "Gelu", "not supported")])
    with pytest.raises(RuntimeError, match="would not parse on TensorRT 10.3"):
        make_variants(model_copy, "fp16", None)
    assert not list(model_copy.glob("*.new"))


def test_trained_corpora_read_from_the_spec():
    from export.data import trained_corpora

    assert trained_corpora({}) == (["ravdess"], ["goemotions"])
    assert trained_corpora({"training": {"audio_corpus": "ravdess+nemo", "text_corpus": "goemotions+meld"}}) == (["ravdess", "nemo"], ["goemotions", "meld"])
    # corpora read from files only a user has (manifests, IEMOCAP) fall back to the public ones
    assert trained_corpora({"training": {"audio_corpus": "manifest", "text_corpus": "none"}}) == (["ravdess"], ["goemotions"])


def _retag(model_dir, audio_corpus, text_corpus):
    import json

    spec_file = model_dir / "spec.json"
    spec = json.loads(spec_file.read_text())
    spec.setdefault("training", {}).update(audio_corpus=audio_corpus, text_corpus=text_corpus)
    spec_file.write_text(json.dumps(spec))


@requires_data
@pytest.mark.requires_data
def test_int8_calibration_and_check_cover_every_training_corpus(model_copy, monkeypatch):
    """A model trained on RAVDESS + nEMO and GoEmotions + MELD is calibrated on clips and texts
    of all four in equal shares, and its accuracy check includes nEMO's test speakers."""
    from export import data
    from export.compare import compare_with_fp32
    from export.int8 import calibration_items
    from runtime.recognizer import EmotionRecognizer

    _retag(model_copy, "ravdess+nemo", "goemotions+meld")
    rec = EmotionRecognizer.load(model_copy)
    seen, text_calls = [], []
    prepare, text_split = rec.prepare, data.text_split
    monkeypatch.setattr(rec, "prepare", lambda **kw: seen.append(str(kw.get("name"))) or prepare(**kw))
    monkeypatch.setattr(data, "text_split", lambda root, corpus, labelset, split: text_calls.append((corpus, split)) or text_split(root, corpus, labelset, split))
    items = calibration_items(rec, DATA_ROOT, n_audio=6, n_text=8)
    assert sum("/ravdess/" in p for p in seen) == 3 and sum("/nemo/" in p for p in seen) == 3
    assert text_calls == [("goemotions", "train"), ("meld", "train")]
    assert len(items) == 6 + 8 - 3  # 3 pairs, 3 audio-only, 5 text-only
    monkeypatch.undo()
    ev = compare_with_fp32(rec, {"fp32-again": model_copy / "emotech.onnx"}, DATA_ROOT, limit=8)
    assert set(ev["modes"]) == {"audio", "text", "nemo_audio"}
    assert ev["modes"]["nemo_audio"]["n"] == 8
    assert ev["modes"]["nemo_audio"]["fp32-again"]["label_agreement_vs_fp32"] == 1.0
    rec.close()
