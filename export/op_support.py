"""Check an ONNX graph against TensorRT 10.3's ONNX parser, without TensorRT.

    python -m export.op_support weights/emotech/*.onnx

Jetson (JetPack 6) ships TensorRT 10.3, the oldest parser the product must build on, and
TensorRT cannot be installed on the machines that export the graphs. This module reads
the parser's operator table (``trt_ops_10_3.json``, with its source and how it was
derived) and checks every node and the attributes the parser rejects:

- each op is in the 10.3 table (ops added later, or of unknown status, fail);
- only the default ONNX domain, opset 9-20;
- LSTM / GRU / RNN: ``layout`` 0, LSTM ``input_forget`` 0, the same activations (and
  alpha/beta) in both directions of a bidirectional node;
- QuantizeLinear / DequantizeLinear: constant positive scales, constant INT8 zero points
  that are all 0 (symmetric; the parser rejects others), no INT32 (bias) dequantisation,
  per-channel weight scales along the output channels;
- no integer-op quantisation formats (ConvInteger, MatMulInteger, DynamicQuantizeLinear,
  QLinear*);
- ``axes`` of Slice / Squeeze / Unsqueeze / Reduce* / Pad, TopK's ``K`` and CumSum's
  ``axis`` given as constants (initializers or Constant nodes), attribute-style axes only
  where the node's opset defines them as attributes;
- pooling without the ``Indices`` output or dilations; no reductions over BOOL / UINT8;
- type rules of a strongly typed network: inputs that the op's ONNX schema binds to one
  type parameter (both inputs of Add, every input of Concat, X and Y of Where, A and B of
  MatMul) have one element type; the parser does not insert casts, so FLOAT16 beside FLOAT
  is an error.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper

from runtime import cli

TABLE_FILE = Path(str(resources.files(__package__).joinpath("trt_ops_10_3.json")))  # package data
INTEGER_OP_FORMATS = ("ConvInteger", "MatMulInteger", "DynamicQuantizeLinear")
REDUCE_OPS = ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare")
# opset from which a node takes ``axes`` as an input instead of an attribute
AXES_AS_INPUT_SINCE = {**{op: 18 for op in REDUCE_OPS}, "ReduceSum": 13, "Squeeze": 13, "Unsqueeze": 13}
DEFAULT_ACTIVATIONS = {"LSTM": ("Sigmoid", "Tanh", "Tanh"), "GRU": ("Sigmoid", "Tanh"), "RNN": ("Tanh",)}


@dataclass(frozen=True)
class Issue:
    """One thing the TensorRT 10.3 parser would reject."""

    node: str  # node name (or "<model>" for graph-level problems)
    op: str  # op type
    message: str

    def __str__(self) -> str:
        return f"{self.node} ({self.op}): {self.message}"


@cache
def load_table(path: Path = TABLE_FILE) -> dict:
    """The operator table: ``supported`` {op: restriction note}, ``unsupported``, ``unverified``."""
    return json.loads(Path(path).read_text())


class _Graph:
    """Constants and tensor types of one (sub)graph, for the per-node rules."""

    def __init__(self, graph: onnx.GraphProto, outer: _Graph | None = None):
        self.constants: dict[str, onnx.TensorProto] = dict(outer.constants) if outer else {}
        self.types: dict[str, int] = dict(outer.types) if outer else {}
        for init in graph.initializer:
            self.constants[init.name] = init
        for node in graph.node:
            if node.op_type == "Constant" and node.output:
                for attr in node.attribute:  # the parser turns every Constant into weights
                    if attr.name == "value":
                        self.constants[node.output[0]] = attr.t
                    elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
                        value = np.array(onnx.helper.get_attribute_value(attr), dtype=np.float32 if "float" in attr.name else np.int64)
                        self.constants[node.output[0]] = numpy_helper.from_array(value, node.output[0])
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            if vi.type.HasField("tensor_type"):
                self.types[vi.name] = vi.type.tensor_type.elem_type
        for name, t in self.constants.items():
            self.types.setdefault(name, t.data_type)

    def is_const(self, name: str) -> bool:
        return name in self.constants

    def value(self, name: str) -> np.ndarray:
        return numpy_helper.to_array(self.constants[name])


def _attrs(node: onnx.NodeProto) -> dict:
    return {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}


def _input(node: onnx.NodeProto, i: int) -> str:
    return node.input[i] if len(node.input) > i else ""


def check_model(model: onnx.ModelProto, table: dict | None = None) -> list[Issue]:
    """Every issue the TensorRT 10.3 parser would raise on ``model`` (empty: it parses)."""
    table = table or load_table()
    issues: list[Issue] = []
    opset = None
    for imp in model.opset_import:
        if imp.domain in ("", "ai.onnx"):
            opset = imp.version
        else:
            issues.append(Issue("<model>", "-", f"custom domain {imp.domain!r}: TensorRT only parses the default ONNX domain without plugins"))
    if opset is None or not table["opset_min"] <= opset <= table["opset_max"]:
        issues.append(Issue("<model>", "-", f"opset {opset} outside TensorRT {table['tensorrt']}'s {table['opset_min']}-{table['opset_max']}"))
        opset = opset or table["opset_max"]
    with contextlib.suppress(Exception):  # types only sharpen the BOOL/INT32 rules
        model = onnx.shape_inference.infer_shapes(model)
    _check_graph(model.graph, _Graph(model.graph), opset, table, issues)
    return issues


def check_file(path: str | Path, table: dict | None = None) -> list[Issue]:
    """``check_model`` on an ONNX file."""
    return check_model(onnx.load(str(path)), table)


def _check_graph(graph: onnx.GraphProto, ctx: _Graph, opset: int, table: dict, issues: list[Issue]) -> None:
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    dq_of = {n.output[0]: n for n in graph.node if n.op_type == "DequantizeLinear"}
    for node in graph.node:
        problems = [*_check_node(node, ctx, opset, table, consumers), *_check_weight_axes(node, ctx, dq_of), *_check_types(node, ctx, opset)]
        issues.extend(Issue(node.name or node.output[0], node.op_type, p) for p in problems)
        for attr in node.attribute:  # If / Loop / Scan bodies
            subgraphs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subgraphs:
                _check_graph(sub, _Graph(sub, ctx), opset, table, issues)


def _check_node(node: onnx.NodeProto, g: _Graph, opset: int, table: dict, consumers: dict) -> Iterable[str]:
    op = node.op_type
    if node.domain not in ("", "ai.onnx"):
        yield f"op from domain {node.domain!r} (needs a TensorRT plugin)"
        return
    if op in INTEGER_OP_FORMATS or op.startswith("QLinear"):
        yield "integer-op quantisation format: TensorRT wants explicit QuantizeLinear/DequantizeLinear around float ops"
        return
    if op in table["unsupported"]:
        yield f"not supported by the TensorRT {table['tensorrt']} ONNX parser"
        return
    if op in table.get("unverified", ()):
        yield f"support in TensorRT {table['tensorrt']} not confirmed by the operator table's sources"
        return
    if op not in table["supported"]:
        yield f"not in the TensorRT {table['tensorrt']} operator table"
        return
    a = _attrs(node)
    if op in ("LSTM", "GRU", "RNN"):
        yield from _check_rnn(node, a)
    elif op in ("QuantizeLinear", "DequantizeLinear"):
        yield from _check_qdq(node, g)
    elif op in REDUCE_OPS or op in ("Squeeze", "Unsqueeze"):
        since = AXES_AS_INPUT_SINCE[op]
        if opset >= since:
            if "axes" in a:
                yield f"'axes' attribute at opset {opset} (an input since opset {since})"
            if _input(node, 1) and not g.is_const(_input(node, 1)):
                yield "'axes' input must be an initializer or Constant"
        if op in REDUCE_OPS and g.types.get(_input(node, 0)) in (onnx.TensorProto.BOOL, onnx.TensorProto.UINT8):
            yield "reduction over a BOOL/UINT8 tensor"
    elif op == "Slice":
        if opset >= 10 and _input(node, 3) and not g.is_const(_input(node, 3)):
            yield "'axes' input must be an initializer or Constant"
    elif op == "Pad":
        if _input(node, 3) and not g.is_const(_input(node, 3)):
            yield "'axes' input must be an initializer or Constant (tensor axes only from TensorRT 10.4)"
    elif op == "TopK":
        if _input(node, 1) and not g.is_const(_input(node, 1)):
            yield "'K' input must be an initializer"
    elif op == "CumSum":
        if not g.is_const(_input(node, 1)):
            yield "'axis' input must be an initializer"
    elif op in ("MaxPool", "AveragePool"):
        if len(node.output) > 1 and node.output[1] and consumers.get(node.output[1]):
            yield "the Indices output is unsupported"
        if any(d != 1 for d in a.get("dilations", [])):
            yield "dilations must be empty or all ones"


def _check_types(node: onnx.NodeProto, g: _Graph, opset: int) -> Iterable[str]:
    """Inputs bound to one type parameter of the op's schema must share an element type
    (strongly typed networks take every type from the graph). Inputs of unknown type are
    skipped."""
    if node.domain not in ("", "ai.onnx"):
        return
    try:
        schema = onnx.defs.get_schema(node.op_type, opset, "")
    except onnx.defs.SchemaError:
        return
    params = {c.type_param_str for c in schema.type_constraints}
    formal = list(schema.inputs)
    bound: dict[str, dict[int, list[str]]] = {}
    for i, name in enumerate(node.input):
        if not name:
            continue
        if i < len(formal):
            param = formal[i]
        elif formal and formal[-1].option == onnx.defs.OpSchema.FormalParameterOption.Variadic:
            param = formal[-1]
        else:
            continue
        if param.type_str not in params or not param.is_homogeneous:  # a fixed type, or Loop/If/Scan-style heterogeneous inputs
            continue
        dtype = g.types.get(name)
        if dtype:
            bound.setdefault(param.type_str, {}).setdefault(dtype, []).append(name)
    for param, by_type in bound.items():
        if len(by_type) > 1:
            mixed = ", ".join(f"{onnx.TensorProto.DataType.Name(t)} ({', '.join(names)})" for t, names in sorted(by_type.items()))
            yield f"inputs of type {param} mix {mixed}: a strongly typed network needs one type (insert a Cast)"


def _check_rnn(node: onnx.NodeProto, a: dict) -> Iterable[str]:
    if a.get("layout", 0) != 0:
        yield f"layout={a['layout']}: only layout 0 (sequence first) is supported"
    if node.op_type == "LSTM" and a.get("input_forget", 0) != 0:
        yield "input_forget must be 0 (coupled input/forget gates are unsupported)"
    if a.get("direction", b"forward") in (b"bidirectional", "bidirectional"):
        n = len(DEFAULT_ACTIVATIONS[node.op_type])
        acts = [x.decode() if isinstance(x, bytes) else x for x in a.get("activations", [])] or list(DEFAULT_ACTIVATIONS[node.op_type]) * 2
        if [x.lower() for x in acts[:n]] != [x.lower() for x in acts[n:]]:
            yield f"bidirectional with different activations per direction: {acts}"
        for key in ("activation_alpha", "activation_beta"):
            vals = list(a.get(key, []))
            if vals and len(vals) >= 2 * n and vals[:n] != vals[n : 2 * n]:
                yield f"bidirectional with different {key} per direction"


def _check_qdq(node: onnx.NodeProto, g: _Graph) -> Iterable[str]:
    x, scale, zero = _input(node, 0), _input(node, 1), _input(node, 2)
    if not g.is_const(scale):
        yield "scale must be an initializer"
    elif np.any(g.value(scale) <= 0):
        yield "scale must be positive"
    if zero:
        if not g.is_const(zero):
            yield "zero point must be an initializer"
        else:
            z = g.constants[zero]
            if z.data_type != onnx.TensorProto.INT8:
                yield f"zero point of type {onnx.TensorProto.DataType.Name(z.data_type)}: TensorRT quantises to signed INT8"
            if np.any(numpy_helper.to_array(z) != 0):
                yield "non-zero zero point: TensorRT only supports symmetric quantization"
    if node.op_type == "DequantizeLinear" and g.types.get(x) == onnx.TensorProto.INT32:
        yield "INT32 dequantisation (quantised bias): TensorRT accepts only INT8 inputs to DequantizeLinear"


def _check_weight_axes(node: onnx.NodeProto, g: _Graph, dq_of: dict[str, onnx.NodeProto]) -> Iterable[str]:
    """Per-channel weight scales must run along the output channels (TensorRT's only
    per-axis layout for weights): Conv W axis 0, Gemm B axis 0 if transB else 1, MatMul B
    its last axis."""
    if node.op_type not in ("Conv", "Gemm", "MatMul") or len(node.input) < 2 or node.input[1] not in dq_of:
        return
    dq = dq_of[node.input[1]]
    if not g.is_const(_input(dq, 1)) or g.value(_input(dq, 1)).size <= 1:
        return  # per-tensor
    rank = len(g.constants[dq.input[0]].dims) if g.is_const(dq.input[0]) else 2
    axis = _attrs(dq).get("axis", 1) % rank
    want = {"Conv": 0, "Gemm": 0 if _attrs(node).get("transB", 0) else 1, "MatMul": rank - 1}[node.op_type]
    if axis != want:
        yield f"per-channel weight scales on axis {axis}; TensorRT needs the output-channel axis {want}"


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("python -m export.op_support", __doc__)
    parser.add_argument("graphs", nargs="+", type=Path, metavar="GRAPH", help="ONNX files")
    args = parser.parse_args(argv)
    table = load_table()
    failed = 0
    for path in args.graphs:
        issues = check_file(path, table)
        status = "OK" if not issues else f"{len(issues)} issue(s)"
        print(f"{path}: TensorRT {table['tensorrt']} parser check {status}")
        for issue in issues:
            print(f"  - {issue}")
        failed += bool(issues)
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
