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

import onnx

from fileformat.params import count_params
from passes._core.graph import GraphView, bindings

log = logging.getLogger(__name__)


@dataclass
class GraphStats:
    """Size of a model: parameters (elements of weight initializers), FLOPs, and FLOPs per node name."""

    params: int
    flops: int
    node_flops: dict[str, int] = field(default_factory=dict)


def graph_stats(model: onnx.ModelProto) -> GraphStats:
    """Count parameters and contraction FLOPs of ``model`` (never changes it, never copies its weights)."""
    params = count_params(model)
    try:
        node_flops = GraphView(model, pin_dynamic=True, bind=bindings(model)).flops_by_node()
    except Exception as exc:  # a model too odd for the view still gets its parameter count
        log.warning("could not count FLOPs (%s); reporting 0", exc)
        node_flops = {}
    return GraphStats(params=params, flops=sum(node_flops.values()), node_flops=node_flops)
