"""The TensorRT 10.3 ONNX parser check: shipped and exported graphs pass, and each rule
rejects a small synthetic graph that breaks it."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from export.op_support import check_file, check_model, load_table
from tests.helpers import BUNDLED


def _model(nodes, inputs, outputs, inits=(), opset=17, extra_opsets=()):
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializer=list(inits))
    ops = [helper.make_opsetid("", opset), *[helper.make_opsetid(d, v) for d, v in extra_opsets]]
    return helper.make_model(graph, opset_imports=ops)


def _vi(name, dtype=TensorProto.FLOAT, shape=None):
    return helper.make_tensor_value_info(name, dtype, shape)


def _messages(model) -> str:
    return " | ".join(str(i) for i in check_model(model))


def _lstm(**attrs):
    w = numpy_helper.from_array(np.zeros((2, 16, 3), np.float32), "W")
    r = numpy_helper.from_array(np.zeros((2, 16, 4), np.float32), "R")
    node = helper.make_node("LSTM", ["x", "W", "R"], ["y"], hidden_size=4, direction="bidirectional", **attrs)
    return _model([node], [_vi("x", shape=[5, 1, 3])], [_vi("y")], [w, r])


def _qdq(zero_dtype=np.int8, zero=0, x_dtype=TensorProto.FLOAT):
    s = numpy_helper.from_array(np.array(0.1, np.float32), "s")
    z = numpy_helper.from_array(np.array(zero, zero_dtype), "z")
    q = helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="q")
    dq = helper.make_node("DequantizeLinear", ["q", "s", "z"], ["y"], name="dq")
    return _model([q, dq], [_vi("x", x_dtype, [4])], [_vi("y")], [s, z])


def test_table_names_its_source_and_range():
    t = load_table()
    assert t["tensorrt"] == "10.3" and (t["opset_min"], t["opset_max"]) == (9, 20)
    assert "onnx-tensorrt" in t["source"] and "operators.md" in t["source"]
    assert "LSTM" in t["supported"] and "input_forget" in t["supported"]["LSTM"]
    for op in ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear", "QLinearConv", "STFT", "DFT", "HannWindow"):
        assert op in t["unsupported"]


def test_exported_tiny_graph_passes(tiny_model_dir):
    assert check_file(tiny_model_dir / "emotech.onnx") == []


@pytest.mark.skipif(not list(BUNDLED.glob("*.onnx")), reason="no shipped graphs in weights/emotech yet")
@pytest.mark.parametrize("path", sorted(BUNDLED.glob("*.onnx")), ids=lambda p: p.name)
def test_every_shipped_graph_passes(path):
    issues = check_file(path)
    assert issues == [], "\n".join(map(str, issues))


def test_good_bidirectional_lstm_passes():
    assert check_model(_lstm()) == []
    assert check_model(_lstm(activations=["Sigmoid", "Tanh", "Tanh"] * 2)) == []


@pytest.mark.parametrize(
    "attrs, expected",
    [
        ({"activations": ["Sigmoid", "Tanh", "Tanh", "Sigmoid", "Relu", "Tanh"]}, "different activations"),
        ({"layout": 1}, "layout"),
        ({"input_forget": 1}, "input_forget"),
    ],
)
def test_bad_lstm_fails(attrs, expected):
    assert expected in _messages(_lstm(**attrs))


def test_symmetric_int8_qdq_passes():
    assert check_model(_qdq()) == []


@pytest.mark.parametrize(
    "kwargs, expected",
    [({"zero": 3}, "symmetric"), ({"zero_dtype": np.uint8}, "UINT8")],
)
def test_asymmetric_or_uint8_qdq_fails(kwargs, expected):
    assert expected in _messages(_qdq(**kwargs))


def test_int32_bias_dequantisation_fails():
    b = numpy_helper.from_array(np.array([5, -3], np.int32), "b_q")
    s = numpy_helper.from_array(np.array(0.01, np.float32), "s")
    dq = helper.make_node("DequantizeLinear", ["b_q", "s"], ["b"], name="dq_bias")
    assert "INT32" in _messages(_model([dq], [], [_vi("b")], [b, s]))


@pytest.mark.parametrize("op", ["ConvInteger", "MatMulInteger", "QLinearMatMul", "DynamicQuantizeLinear"])
def test_integer_op_formats_fail(op):
    node = helper.make_node(op, ["a", "b"], ["y"], name="n")
    assert "integer-op" in _messages(_model([node], [_vi("a"), _vi("b")], [_vi("y")]))


def test_axes_computed_at_runtime_fail():
    shape = helper.make_node("Shape", ["x"], ["s"], name="shape")
    rsum = helper.make_node("ReduceSum", ["x", "s"], ["y"], name="rsum")
    unsq = helper.make_node("Unsqueeze", ["x", "s"], ["u"], name="unsq")
    starts = numpy_helper.from_array(np.array([0], np.int64), "st")
    sl = helper.make_node("Slice", ["x", "st", "st", "s"], ["v"], name="slice")
    m = _model([shape, rsum, unsq, sl], [_vi("x", shape=[2, 3])], [_vi("y"), _vi("u"), _vi("v")], [starts])
    msgs = _messages(m)
    for name in ("rsum", "unsq", "slice"):
        assert f"{name} (" in msgs and "'axes' input must be" in msgs


def test_constant_axes_pass_and_attribute_axes_at_opset_18_fail():
    axes = numpy_helper.from_array(np.array([1], np.int64), "axes")
    ok = _model([helper.make_node("ReduceSum", ["x", "axes"], ["y"])], [_vi("x", shape=[2, 3])], [_vi("y")], [axes])
    assert check_model(ok) == []
    bad = _model([helper.make_node("ReduceMax", ["x"], ["y"], axes=[1])], [_vi("x", shape=[2, 3])], [_vi("y")], opset=18)
    assert "'axes' attribute" in _messages(bad)


def test_unsupported_op_opset_and_domain_fail():
    stft = helper.make_node("STFT", ["x", "step"], ["y"], name="stft")
    assert "not supported" in _messages(_model([stft], [_vi("x"), _vi("step", TensorProto.INT64)], [_vi("y")]))
    relu = helper.make_node("Relu", ["x"], ["y"])
    assert "opset 21" in _messages(_model([relu], [_vi("x")], [_vi("y")], opset=21))
    custom = helper.make_node("FusedGemm", ["x"], ["y"], domain="com.microsoft")
    assert "domain" in _messages(_model([custom], [_vi("x")], [_vi("y")], extra_opsets=[("com.microsoft", 1)]))


def test_maxpool_indices_output_fails():
    pool = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2, 2], name="pool")
    ident = helper.make_node("Identity", ["idx"], ["i2"])
    m = _model([pool, ident], [_vi("x", shape=[1, 1, 4, 4])], [_vi("y"), _vi("i2", TensorProto.INT64)])
    assert "Indices" in _messages(m)


def test_cli_exit_codes(tiny_model_dir, tmp_path, capsys):
    from export.op_support import main

    assert main([str(tiny_model_dir / "emotech.onnx")]) == 0
    bad = tmp_path / "bad.onnx"
    onnx.save(_lstm(layout=1), str(bad))
    assert main([str(bad)]) == 1
    assert "layout" in capsys.readouterr().out


def test_per_channel_weight_axis_must_be_output_channels():
    def gemm(axis):
        w = numpy_helper.from_array(np.ones((4, 3), np.int8), "w_q")
        s = numpy_helper.from_array(np.full(4 if axis == 0 else 3, 0.1, np.float32), "w_s")
        z = numpy_helper.from_array(np.zeros(4 if axis == 0 else 3, np.int8), "w_z")
        dq = helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_z"], ["w"], axis=axis, name="dq_w")
        mm = helper.make_node("Gemm", ["x", "w"], ["y"], transB=1, name="gemm")
        return _model([dq, mm], [_vi("x", shape=[2, 3])], [_vi("y")], [w, s, z])

    assert check_model(gemm(0)) == []
    assert "output-channel axis 0" in _messages(gemm(1))


def test_constant_value_ints_count_as_constant_axes():
    axes = helper.make_node("Constant", [], ["axes"], value_ints=[1])
    unsq = helper.make_node("Unsqueeze", ["x", "axes"], ["y"])
    assert check_model(_model([axes, unsq], [_vi("x", shape=[2])], [_vi("y")])) == []


@pytest.mark.parametrize(
    ("op", "attrs", "opset"),
    [("Gelu", {}, 20), ("Gelu", {"approximate": "tanh"}, 20), ("HardSwish", {}, 17), ("Mish", {}, 18)],
)
def test_activations_of_the_10x_table_pass(op, attrs, opset):
    node = helper.make_node(op, ["x"], ["y"], **attrs)
    assert check_model(_model([node], [_vi("x", shape=[2, 3])], [_vi("y")], opset=opset)) == []


def test_castlike_passes():
    like = numpy_helper.from_array(np.zeros((1,), np.float16), "like")
    node = helper.make_node("CastLike", ["x", "like"], ["y"])
    assert check_model(_model([node], [_vi("x", shape=[2, 3])], [_vi("y", TensorProto.FLOAT16)], [like])) == []
    assert load_table()["unverified"] == []


def _half_and_float(op, **attrs):
    w = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    node = helper.make_node(op, ["x", "w"], ["y"], name="mixed", **attrs)
    return _model([node], [_vi("x", TensorProto.FLOAT16, [3, 3])], [_vi("y", TensorProto.FLOAT16)], [w])


@pytest.mark.parametrize("op", ["Add", "Mul", "Sub", "Div", "MatMul", "Max", "Sum"])
def test_mixed_fp16_fp32_inputs_of_one_op_fail(op):
    msg = _messages(_half_and_float(op))
    assert "mixed" in msg and "FLOAT16 (x)" in msg and "FLOAT (w)" in msg and "strongly typed" in msg


def test_cast_to_one_type_passes_and_other_type_rules():
    w = numpy_helper.from_array(np.ones((3, 3), np.float32), "w")
    cast = helper.make_node("Cast", ["w"], ["w16"], to=TensorProto.FLOAT16)
    add = helper.make_node("Add", ["x", "w16"], ["y"])
    ok = _model([cast, add], [_vi("x", TensorProto.FLOAT16, [3, 3])], [_vi("y", TensorProto.FLOAT16)], [w])
    assert check_model(ok) == []
    concat = helper.make_node("Concat", ["x", "x", "w"], ["y"], axis=0)  # variadic: every input one type
    assert "mix" in _messages(_model([concat], [_vi("x", TensorProto.FLOAT16, [3, 3])], [_vi("y", TensorProto.FLOAT16)], [w]))
    cond = numpy_helper.from_array(np.ones((3, 3), bool), "c")
    where = helper.make_node("Where", ["c", "x", "x"], ["y"])  # BOOL condition beside FP16 values is fine
    assert check_model(_model([where], [_vi("x", TensorProto.FLOAT16, [3, 3])], [_vi("y", TensorProto.FLOAT16)], [cond])) == []
    where = helper.make_node("Where", ["c", "x", "w"], ["y"])
    assert "mix" in _messages(_model([where], [_vi("x", TensorProto.FLOAT16, [3, 3])], [_vi("y", TensorProto.FLOAT16)], [cond, w]))


def test_fp16_variant_of_the_tiny_model_is_type_consistent(tiny_model_dir):
    from export.fp16 import convert_to_fp16

    assert check_model(convert_to_fp16(onnx.load(str(tiny_model_dir / "emotech.onnx")))) == []
