"""Facts the runtime checks about an ONNX graph, read from its protobuf without the
``onnx`` package (an export-side dependency): the shapes of its outputs, and its float
constants of a given shape (the front-end's matrices, which ``runtime.spec`` compares
with the ones ``spec.json``'s front-end parameters give).

Only the few message types on that path are decoded (ModelProto -> GraphProto ->
NodeProto / TensorProto / ValueInfoProto); every other field is skipped by its length,
so a graph of 80 MB is read in milliseconds through ``mmap``.
"""

from __future__ import annotations

import mmap
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

# TensorProto.DataType values read here
_FLOAT, _FLOAT16 = 1, 10
_NUMPY = {_FLOAT: np.dtype("<f4"), _FLOAT16: np.dtype("<f2")}


class GraphFormatError(ValueError):
    """The file is not a protobuf-encoded ONNX model (truncated, or not ONNX at all)."""


@dataclass
class GraphFacts:
    """What ``read_graph`` found."""

    outputs: dict[str, tuple[int | str, ...]] = field(default_factory=dict)  # name -> dims (int, or a symbolic name)
    constants: dict[tuple[int, ...], list[np.ndarray]] = field(default_factory=dict)  # wanted shape -> float32 arrays


def _varint(buf, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise GraphFormatError("a varint runs past its message")
        b = buf[pos]
        pos += 1
        value |= (b & 0x7F) << shift
        if b < 0x80:
            return value, pos
        shift += 7


def _fields(buf, start: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """``(field number, wire type, value or start, end)`` of each field of a message in
    ``buf[start:end]``: a varint's value and ``end`` -1, or a length-delimited field's span."""
    pos = start
    while pos < end:
        key, pos = _varint(buf, pos, end)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos, end)
            yield number, wire, value, -1
        elif wire == 2:
            size, pos = _varint(buf, pos, end)
            if pos + size > end:
                raise GraphFormatError(f"field {number} is {size} bytes long, past the end of its message")
            yield number, wire, pos, pos + size
            pos += size
        elif wire == 1:
            pos += 8
        elif wire == 5:
            pos += 4
        else:
            raise GraphFormatError(f"wire type {wire} (field {number}) does not occur in ONNX")
    if pos != end:
        raise GraphFormatError("a fixed-width field runs past its message")


def _field(buf, start: int, end: int, number: int) -> tuple[int, int] | None:
    """The span of the last length-delimited field ``number`` of a message, or None."""
    found = None
    for n, wire, a, b in _fields(buf, start, end):
        if n == number and wire == 2:
            found = a, b
    return found


def _tensor(buf, start: int, end: int, shapes: set[tuple[int, ...]]) -> tuple[tuple[int, ...], np.ndarray] | None:
    """A TensorProto's float data as float32, if its shape is one of ``shapes``."""
    dims: list[int] = []
    dtype = raw = floats = None
    for n, wire, a, b in _fields(buf, start, end):
        if n == 1:  # dims: repeated int64, plain or packed
            if wire == 0:
                dims.append(a)
            else:
                p = a
                while p < b:
                    d, p = _varint(buf, p, b)
                    dims.append(d)
        elif n == 2 and wire == 0:
            dtype = a
        elif n == 9 and wire == 2:
            raw = (a, b)
        elif n == 4 and wire == 2:  # float_data, packed
            floats = (a, b)
    shape = tuple(dims)
    if shape not in shapes or dtype not in _NUMPY:
        return None
    span = raw if raw is not None else floats if dtype == _FLOAT else None
    if span is None:
        return None  # float16 values outside raw_data (int32_data) or external data: not read
    data = np.frombuffer(bytes(buf[span[0] : span[1]]), dtype=_NUMPY[dtype])
    if data.size != int(np.prod(shape)):
        return None
    return shape, data.astype(np.float32).reshape(shape)


def _dims(buf, start: int, end: int) -> tuple[int | str, ...]:
    """The dims of a ValueInfoProto's tensor type (empty if it has none)."""
    type_ = _field(buf, start, end, 2)
    tensor = type_ and _field(buf, *type_, 1)
    shape = tensor and _field(buf, *tensor, 2)
    if not shape:
        return ()
    out: list[int | str] = []
    for n, wire, a, b in _fields(buf, *shape):
        if n == 1 and wire == 2:
            dim: int | str = "?"
            for dn, dwire, da, db in _fields(buf, a, b):
                if dn == 1 and dwire == 0:
                    dim = da
                elif dn == 2 and dwire == 2:
                    dim = bytes(buf[da:db]).decode("utf-8", "replace")
            out.append(dim)
    return tuple(out)


def read_graph(path: str | Path, shapes: set[tuple[int, ...]] = frozenset()) -> GraphFacts:
    """The outputs of the ONNX model at ``path``, and its float constants (Constant nodes
    and initializers) whose shape is one of ``shapes``.

    Raises:
        GraphFormatError: the file is not a protobuf-encoded ONNX model.
        OSError: it cannot be read.
    """
    facts = GraphFacts(constants={s: [] for s in shapes})
    with open(path, "rb") as fh:
        if fh.seek(0, 2) == 0:
            raise GraphFormatError("the file is empty")
        with mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
            graph = _field(buf, 0, len(buf), 7)
            if graph is None:
                raise GraphFormatError("no graph in the file")
            for n, wire, a, b in _fields(buf, *graph):
                if wire != 2:
                    continue
                if n == 12:  # output: ValueInfoProto
                    name = _field(buf, a, b, 1)
                    if name is not None:
                        facts.outputs[bytes(buf[name[0] : name[1]]).decode("utf-8", "replace")] = _dims(buf, a, b)
                elif n == 5 and shapes:  # initializer: TensorProto
                    found = _tensor(buf, a, b, shapes)
                    if found:
                        facts.constants[found[0]].append(found[1])
                elif n == 1 and shapes:  # node: a Constant's "value" attribute holds a TensorProto
                    op = _field(buf, a, b, 4)
                    if op is None or bytes(buf[op[0] : op[1]]) != b"Constant":
                        continue
                    for an, awire, aa, ab in _fields(buf, a, b):
                        if an == 5 and awire == 2:  # attribute
                            t = _field(buf, aa, ab, 5)
                            found = t and _tensor(buf, *t, shapes)
                            if found:
                                facts.constants[found[0]].append(found[1])
    if not facts.outputs:
        raise GraphFormatError("the graph has no outputs")
    return facts
