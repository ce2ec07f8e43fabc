"""Parameters and FLOPs read from an ONNX graph, independently of the torch model it came from.

FLOPs count 2 per multiply-accumulate of the contraction ops (MatMul, Gemm, Conv, ConvTranspose, Einsum is not
counted); elementwise ops, normalisation and resizing are left out, as in fvcore and torch's flop counter.
A symbolic dimension (a dynamic batch) counts as 1.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

_WEIGHT_TYPES = {
    TensorProto.FLOAT,
    TensorProto.FLOAT16,
    TensorProto.BFLOAT16,
    TensorProto.DOUBLE,
    TensorProto.INT8,
    TensorProto.UINT8,
}


@dataclass
class GraphStats:
    """Size of a model: parameters (elements of weight initializers), FLOPs, and FLOPs per node name."""

    params: int
    flops: int
    node_flops: dict[str, int] = field(default_factory=dict)


def _dims(vi: onnx.ValueInfoProto) -> list[int] | None:
    t = vi.type.tensor_type
    if not t.HasField("shape"):
        return None
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else 1 for d in t.shape.dim]


def count_params(model: onnx.ModelProto) -> int:
    """Elements of floating-point and 8-bit initializers (and Constant nodes holding such tensors).

    Integer shape constants (int64) and quantisation scales/zero points of scalar size are not parameters.
    """
    total = 0
    for init in model.graph.initializer:
        if init.data_type in _WEIGHT_TYPES:
            n = int(np.prod(init.dims)) if len(init.dims) else 1
            total += n if n > 1 else 0
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _WEIGHT_TYPES:
                    n = int(np.prod(attr.t.dims)) if len(attr.t.dims) else 1
                    total += n if n > 1 else 0
    return total


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    """Count parameters and contraction FLOPs of ``model`` (shape inference runs on a copy)."""
    try:
        inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception:  # a model too large or odd for inference still gets its parameter count
        inferred = model
    shapes: dict[str, list[int] | None] = {}
    for vi in list(inferred.graph.input) + list(inferred.graph.value_info) + list(inferred.graph.output):
        shapes[vi.name] = _dims(vi)
    for init in inferred.graph.initializer:
        shapes[init.name] = list(init.dims)

    def attr(node: onnx.NodeProto, name: str, default: int) -> int:
        for a in node.attribute:
            if a.name == name:
                return int(a.i)
        return default

    node_flops: dict[str, int] = {}
    for i, node in enumerate(inferred.graph.node):
        name = node.name or f"{node.op_type}_{i}"
        out = shapes.get(node.output[0]) if node.output else None
        if out is None:
            continue
        macs = 0
        if node.op_type == "MatMul":
            a = shapes.get(node.input[0])
            if a:
                macs = int(np.prod(out)) * a[-1]
        elif node.op_type == "Gemm":
            a = shapes.get(node.input[0])
            if a:
                k = a[0] if attr(node, "transA", 0) else a[-1]
                macs = int(np.prod(out)) * k
        elif node.op_type in ("Conv", "ConvTranspose"):
            w = shapes.get(node.input[1])
            x = shapes.get(node.input[0])
            if w and x:
                if node.op_type == "Conv":  # W: [C_out, C_in / group, k...]
                    macs = int(np.prod(out)) * (w[1] * int(np.prod(w[2:])))
                else:  # W: [C_in, C_out / group, k...]; each input element feeds C_out / group x k outputs
                    macs = int(np.prod(x)) * (w[1] * int(np.prod(w[2:])))
        if macs:
            node_flops[name] = 2 * macs
    return GraphStats(params=count_params(model), flops=sum(node_flops.values()), node_flops=node_flops)
