"""The budget's cost model over unit groups of every kind (heads, head channels, neurons, widths, conv channels).

One term per node (its FLOPs, or its measured time) and per weight, scaled by the kept fraction of every group the
node or weight carries (:mod:`passes._core.budget`)::

    cost(k) = sum_nodes base_n * prod(kept fractions of the groups on the node's output and contracted axes)

so the kinds interact as in the graph (a narrower width makes every head of its transformer cheaper).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import onnx

from passes._core.budget import Factor, Term
from passes._core.dims import Dim, Parts, part_size
from passes._core.graph import GraphView
from passes._core.unit import PruneUnit

_CONTRACTIONS = ("MatMul", "Gemm", "Conv")
FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.BFLOAT16, onnx.TensorProto.DOUBLE)

Carried = dict[str, list[tuple[str, int, Dim]]]


def _carried(units: Sequence[tuple[str, PruneUnit]]) -> Carried:
    """``{tensor: [(layer name, unit count, unit axis)]}``: the unit groups each tensor or weight carries."""
    out: Carried = {}
    for name, u in units:
        g = u.group
        assert g is not None
        for tensor, dim in g.dims.items():
            out.setdefault(tensor, []).append((name, u.count, dim))
    return out


def axis_factors(entries: Sequence[tuple[str, int, Dim]]) -> list[Factor]:
    """The cost factors of the unit groups one tensor carries.

    A group that owns its axis (or a factor of it: heads x head channels) scales it alone: ``((name, count),)``.
    Groups whose layouts are :class:`Parts` of one axis (LeViT's per-head ``[q | k | v]``: q/k channels and v
    channels; the inputs of a concatenation of conv channels) share one factor with a segment per part, so the axis
    scales as ``(2 k_qk + k_v) / 64`` and not as a product; a part no group cuts is a constant segment."""
    out: list[Factor] = []
    parts: dict[int, list[tuple[str, int, Parts]]] = {}
    for name, count, dim in entries:
        held = [u for _, u in dim.layout if isinstance(u, Parts)]
        if held:
            parts.setdefault(dim.axis, []).append((name, count, held[0]))
        else:
            out.append(((name, count),))
    for group in parts.values():
        shapes = {tuple(part_size(p) for p in h.parts) for _, _, h in group}
        n = len(group[0][2].parts)
        if len(shapes) == 1 and all(sum(not isinstance(h.parts[i], int) for _, _, h in group) <= 1 for i in range(n)):
            out.append(_parts_factor(group))
        else:  # parts that do not partition the axis alike: each group on its own
            out += [_parts_factor([g]) for g in group]
    return out


def _parts_factor(group: Sequence[tuple[str, int, Parts]]) -> Factor:
    """One factor for groups whose :class:`Parts` split one axis alike, each part cut by at most one of them: a
    part of ``m`` entries cut by a group of ``count`` units is ``m / count`` segments of that group."""
    factor: list[tuple[str | None, int]] = []
    for i, part in enumerate(group[0][2].parts):
        owner = next(((name, count) for name, count, h in group if not isinstance(h.parts[i], int)), None)
        size = part_size(part)
        factor += [owner] * (size // owner[1]) if owner else [(None, size)]
    return tuple(factor)


def unit_factors(view: GraphView, units: Sequence[tuple[str, PruneUnit]]) -> Callable[[int], list[Factor]]:
    """``factors(node index)``: the unit-group factors of a node's cost (see :mod:`passes._core.budget`).

    A node scales with each group its output carries, and a contraction (MatMul, Gemm, group-1 Conv) also with the
    group on its contracted axis: the q/k/v MatMul with the width (rows) and the heads and head channels (columns),
    the output projection with the heads and head channels (rows) and the width (columns), a conv with its input
    and output channels.
    """
    carried = _carried(units)

    def factors(idx: int) -> list[Factor]:
        node = view.nodes[idx].node
        out: list[Factor] = [f for o in node.output[:1] for f in axis_factors(carried.get(o, []))]
        if node.op_type in _CONTRACTIONS and len(node.input) > 1:
            if node.op_type == "Conv" and int(view.attrs(node).get("group", 1)) != 1:
                return out
            x = node.input[0]
            rank = view.rank(x) or 0
            if node.op_type == "MatMul":
                axis = rank - 1
            elif node.op_type == "Gemm":
                axis = 0 if int(view.attrs(node).get("transA", 0)) else 1
            else:
                axis = 1
            out += axis_factors([e for e in carried.get(x, []) if e[2].axis == axis])
        return out

    return factors


def cost_terms(
    model: onnx.ModelProto, view: GraphView, units: Sequence[tuple[str, PruneUnit]], stats: Any
) -> tuple[list[Term], list[Term]]:
    """FLOPs and parameter terms of every node and weight of ``model``, with the factors of every group in
    ``units`` (``(budget layer name, unit)``) that scales it; they sum to ``stats.flops`` and ``stats.params``."""
    node_units = unit_factors(view, units)
    flop_terms = []
    for i, node in enumerate(model.graph.node):
        base = stats.node_flops.get(node.name or f"{node.op_type}_{i}", 0)
        if base:
            flop_terms.append(Term(float(base), tuple(node_units(i))))
    slices: Carried = {}
    for name, u in units:
        for t, ts in u.group.slices.items():  # type: ignore[union-attr]
            slices.setdefault(t, []).append((name, u.count, Dim(ts.axis, ts.layout)))
    param_terms, counted = [], 0
    inits = {t.name: t for t in model.graph.initializer}
    for t, entries in slices.items():
        init = inits.get(t)
        if init is None or init.data_type not in FLOAT_TYPES:
            continue
        numel = int(np.prod(init.dims)) if len(init.dims) else 1
        if numel <= 1:
            continue
        counted += numel
        param_terms.append(Term(float(numel), tuple(axis_factors(entries))))
    param_terms.append(Term(float(stats.params - counted)))
    return flop_terms, param_terms


def tensor_factors(units: Sequence[tuple[str, PruneUnit]]) -> Callable[[Sequence[str]], list[Factor]]:
    """``factors(tensors)``: the distinct unit groups carried by any of ``tensors`` (a profiled node)."""
    carried = _carried(units)

    def factors(tensors: Sequence[str]) -> list[Factor]:
        out: list[Factor] = []
        for t in tensors:
            out += [f for f in axis_factors(carried.get(t, [])) if f not in out]
        return out

    return factors
