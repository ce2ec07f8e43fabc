"""Reductions (ReduceSum, ReduceMean, ReduceMax, ...): ``Y = reduce(X, axes)``; other axes pass, the reduced
ones end.

Over the unit axis a reduction mixes units, so it is refused, except where the group's oracle allows it:

* ``sums`` mode (head channels, widths: the oracle zeroes every tensor carrying the unit): a reduction to which an
  entry of 0 adds nothing (:data:`ZERO_NEUTRAL_REDUCE`: ``sum_i x_i``, ``sum_i |x_i|``, ``sqrt(sum_i x_i^2)``,
  ``sum_i x_i^2``) over the kept units equals the one over all units with the others zeroed;
* ``width`` mode: the ReduceMean of a decomposed LayerNorm over the last axis alone (inexact: the mean is then over
  the kept channels).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from passes._core.dims.layout import Dim, norm_axis
from passes._core.dims.registry import register

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import NodeRef

#: reductions to which an entry of 0 adds nothing: over the unit axis they are exact against the zeroing oracle
ZERO_NEUTRAL_REDUCE = {"ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare"}
REDUCE = {"ReduceMean", "ReduceSum", "ReduceMax", "ReduceMin", "ReduceProd", "ReduceLogSumExp"} | ZERO_NEUTRAL_REDUCE


def _reduced_axes(tr: Tracer, ref: NodeRef, attrs: dict[str, object], rank: int) -> list[int]:
    """The reduced axes: the ``axes`` attribute, else input 1 (ReduceSum from opset 13, the others from 18), else
    every axis."""
    n = ref.node
    if "axes" in attrs:
        return [norm_axis(int(a), rank) for a in attrs["axes"]]  # type: ignore[attr-defined]
    if len(n.input) > 1 and n.input[1]:
        v = tr.view.value(n.input[1])
        if v is None:
            raise tr.fail(ref, "reduction axes computed at run time")
        return [norm_axis(int(a), rank) for a in np.asarray(v).reshape(-1)]
    return list(range(rank))


@register(*sorted(REDUCE))
def reduce(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """With ``keepdims`` the axes stay (of size 1); without, output axis ``j`` is input axis ``keep[j]``."""
    n = ref.node
    x, y = n.input[0], n.output[0]
    r = len(tr.shape(ref, x))
    attrs = tr.view.attrs(n)
    keepdims = int(attrs.get("keepdims", 1))  # type: ignore[call-overload]
    axes = _reduced_axes(tr, ref, attrs, r)
    keep = [i for i in range(r) if keepdims or i not in axes]  # output axis j <- input axis keep[j]
    out: dict[str, Dim | None] = {i: None for i in n.input[1:] if i}
    if known != x:
        out.update({y: dim, x: Dim(keep[dim.axis], dim.layout)})
        return out
    if dim.axis in axes and tr.width and n.op_type == "ReduceMean" and axes == [dim.axis] and keepdims:
        tr.note_inexact(ref)  # the mean (or variance) of a decomposed LayerNorm: over the kept channels
        out.update({x: dim, y: None})
        return out
    if dim.axis in axes and tr.sums and n.op_type in ZERO_NEUTRAL_REDUCE:
        out.update({x: dim, y: None})  # the sum over the kept units; the output no longer has the unit axis
        return out
    if dim.axis in axes:
        raise tr.fail(ref, "reduces over the unit axis")
    out.update({x: dim, y: Dim(keep.index(dim.axis), dim.layout)})
    return out
