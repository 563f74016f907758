"""FP16 variant of an ONNX graph with the overflow-prone parts kept FP32.

Every float computation runs in FP16 except the front-end (``/mfcc/`` nodes: the power
spectrum of loud audio overflows FP16, log-mel and CMVN want the precision) and
overflow-prone reductions (sums/means over time, sqrt, log, exp), which stay FP32 behind
explicit Cast nodes on the edges that cross between the two regions. The precision is in
the graph itself, as a strongly typed TensorRT network needs it.

``onnxruntime.transformers.float16`` is not used: with a blocked front-end it inserts
same-named FP32->FP32 casts and produces an invalid model for these graphs.
"""

from __future__ import annotations

import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT, HALF = TensorProto.FLOAT, TensorProto.FLOAT16
FRONTEND_PREFIXES = ("/mfcc/",)  # node-name scope of the MFCC front-end in the exported graphs
FP32_OPS = frozenset({"ReduceSum", "ReduceMean", "ReduceSumSquare", "ReduceL2", "ReduceLogSumExp", "Sqrt", "Log", "Exp", "Pow", "Softmax", "LogSoftmax"})


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
