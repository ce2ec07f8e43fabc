"""Parameters and FLOPs read from an ONNX graph, independently of the torch model it came from.

FLOPs count 2 per multiply-accumulate of the contraction ops (MatMul, Gemm, Conv, ConvTranspose; Einsum is not
counted); elementwise ops, normalisation and resizing are left out, as in fvcore and torch's flop counter.
A symbolic dimension of the graph inputs (a dynamic batch) counts as 1; a dimension that stays unknown after that
(data dependent) counts as 1 too, and a node whose shapes are unknown counts nothing.

The count is :meth:`passes._core.graph.GraphView.flops`, the one FLOP counter of the package: its shapes are ONNX
shape inference run without copying the weights, completed node by node where whole-graph inference loses them
(the shape-computed Pad of Swin's window attention), so Swin is counted as torch counts it.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto

from passes._core.graph import GraphView

log = logging.getLogger(__name__)

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


def count_params(model: onnx.ModelProto) -> int:
    """Elements of floating-point and 8-bit initializers (and Constant nodes holding such tensors), counted once
    per reader.

    The exporters store equal tensors once (the zero biases of an untrained model, through ``Identity`` aliases
    too); that is storage, not the model's structure, so a tensor read by ``k`` nodes counts ``k`` times, as it does
    in the torch model and in the passes' canonical form (:mod:`passes._core.canonical`). Integer shape constants
    (int64) and quantisation scales/zero points of scalar size are not parameters.
    """
    sizes: dict[str, int] = {}
    for init in model.graph.initializer:
        if init.data_type in _WEIGHT_TYPES:
            sizes[init.name] = int(np.prod(init.dims)) if len(init.dims) else 1
    for node in model.graph.node:
        if node.op_type == "Constant":
            for attr in node.attribute:
                if attr.name == "value" and attr.t.data_type in _WEIGHT_TYPES:
                    sizes[node.output[0]] = int(np.prod(attr.t.dims)) if len(attr.t.dims) else 1
    reads: dict[str, int] = {}
    alias: dict[str, str] = {}
    for node in model.graph.node:
        if node.op_type == "Identity" and node.input and node.input[0] in sizes:
            alias[node.output[0]] = node.input[0]
    for node in model.graph.node:
        if node.op_type == "Identity" and node.output and node.output[0] in alias:
            continue
        for i in node.input:
            base = alias.get(i, i)
            if base in sizes:
                reads[base] = reads.get(base, 0) + 1
    for o in model.graph.output:
        base = alias.get(o.name, o.name)
        if base in sizes:
            reads[base] = reads.get(base, 0) + 1
    return sum(n * max(1, reads.get(name, 0)) for name, n in sizes.items() if n > 1)


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    """Count parameters and contraction FLOPs of ``model`` (never changes it, never copies its weights)."""
    params = count_params(model)
    try:
        node_flops = GraphView(model, pin_dynamic=True).flops_by_node()
    except Exception as exc:  # a model too odd for the view still gets its parameter count
        log.warning("could not count FLOPs (%s); reporting 0", exc)
        node_flops = {}
    return GraphStats(params=params, flops=sum(node_flops.values()), node_flops=node_flops)
