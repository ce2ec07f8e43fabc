"""What the precision passes (``fp16``, ``int8``) share: float constants and their aliases, node selection by op type,
name or pattern, node naming, and whether a model is FP16 already."""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from fileformat.metadata import read_metadata

__all__ = ["FLOAT_TYPES", "already_fp16", "constant_aliases", "float_constants", "match_nodes", "name_nodes"]

FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16)


def name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node a unique name ``<op>_<index>`` in place (blocking and exclusion work by node name)."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name = f"{node.op_type}_{i}"
            while name in used:
                name += "_"
            node.name = name
            used.add(name)


def float_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Float constants by tensor name: initializers and ``Constant`` node outputs (external data must be loaded)."""
    out: dict[str, np.ndarray] = {}
    for init in model.graph.initializer:
        if init.data_type in FLOAT_TYPES:
            out[init.name] = numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type != "Constant" or not node.output:
            continue
        for attr in node.attribute:
            if attr.name == "value" and attr.t.data_type in FLOAT_TYPES:
                out[node.output[0]] = numpy_helper.to_array(attr.t)
            elif attr.name == "value_float":
                out[node.output[0]] = np.asarray(attr.f, np.float32)
            elif attr.name == "value_floats":
                out[node.output[0]] = np.asarray(list(attr.floats), np.float32)
    return out


def constant_aliases(model: onnx.ModelProto) -> dict[str, str]:
    """``Identity`` outputs that alias a float constant (the legacy exporter's merged initializers) -> the
    constant."""
    consts = float_constants(model)
    alias: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in consts:
            alias[node.output[0]] = node.input[0]
    return alias


def match_nodes(model: onnx.ModelProto, patterns: Sequence[str]) -> dict[str, list[str]]:
    """``{pattern: [node names]}``: a pattern matches an op type exactly, or node names exactly or as a glob."""
    out: dict[str, list[str]] = {}
    for pat in patterns:
        hits = [
            n.name for n in model.graph.node if n.op_type == pat or n.name == pat or fnmatch.fnmatchcase(n.name, pat)
        ]
        out[pat] = hits
    return out


def already_fp16(model: onnx.ModelProto) -> str | None:
    """Why ``model`` counts as already converted (float16 weights, I/O or a recorded fp16 pass), else None."""
    history = read_metadata(model).get("history") or []
    if any(isinstance(h, dict) and h.get("pass") == "fp16" for h in history):
        return "its vitseg.history records an fp16 pass"
    n16 = sum(1 for i in model.graph.initializer if i.data_type == TensorProto.FLOAT16)
    n16 += sum(
        1
        for n in model.graph.node
        if n.op_type == "Constant"
        and any(a.name == "value" and a.t.data_type == TensorProto.FLOAT16 for a in n.attribute)
    )
    if n16:
        return f"it holds {n16} float16 weights/constants"
    for vi in list(model.graph.input) + list(model.graph.output):
        if vi.type.tensor_type.elem_type == TensorProto.FLOAT16:
            return f"its {'input' if vi in model.graph.input else 'output'} {vi.name!r} is float16"
    return None
