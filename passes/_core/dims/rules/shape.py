"""Ops that read sizes: ``Shape`` of a tensor that carries the unit axis, and ``Pad``.

* Shape: what is read from the shape vector must exclude the unit axis (its size would keep the old count);
  only constant ``Gather`` / ``Slice`` readers are followed to see which positions are read. Under symbolic
  dimensions a read of the unit axis is allowed where it ends in a shape entry that follows the cut (checked at
  the end of the walk), the whole vector read as a shape included (``expand_as``).
* Pad (opset >= 11, constant pads): the unit axis passes when it is not padded.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from passes._core.dims.layout import Dim, norm_axis
from passes._core.dims.registry import register
from passes._core.dims.symbolic import SHAPE_INPUTS

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import GraphView, NodeRef


def slice_positions(view: GraphView, node: onnx.NodeProto, length: int) -> list[int] | None:
    """Which positions of a 1-D vector of ``length`` a constant ``Slice`` (opset >= 10) keeps, else ``None``."""
    if view.opset < 10:
        return None
    vals = [view.value(i) if i else None for i in node.input[1:]]
    if any(v is None for v, i in zip(vals, node.input[1:]) if i):
        return None
    starts, ends = vals[0], vals[1]
    steps = vals[3] if len(vals) > 3 and vals[3] is not None else np.ones_like(starts)
    positions = np.arange(length)
    return positions[slice(int(starts.reshape(-1)[0]), int(ends.reshape(-1)[0]), int(steps.reshape(-1)[0]))].tolist()


@register("Shape")
def shape(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Shape`` of a pruned tensor: allowed only when what is read from it excludes the unit axis."""
    n = ref.node
    r = len(tr.shape(ref, known))
    attrs = tr.view.attrs(n)
    start = norm_axis(int(attrs.get("start", 0)), r)  # type: ignore[call-overload]
    end = norm_axis(int(attrs["end"]), r) if "end" in attrs and int(attrs["end"]) < r else r  # type: ignore[call-overload]
    if not start <= dim.axis < end:  # (opset >= 15) the vector holds other axes only: the unit axis is not read
        return {known: dim, n.output[0]: None}
    pos = dim.axis - start  # position of the unit axis inside the shape vector
    for user in tr.view.consumer_nodes(n.output[0]):
        picked: list[int] | None = None
        if user.node.op_type == "Gather" and int(tr.view.attrs(user.node).get("axis", 0)) == 0:  # type: ignore[call-overload]
            v = tr.view.value(user.node.input[1])
            if v is not None:
                picked = [int(i) % max(r - start, 1) for i in np.asarray(v).reshape(-1)]
        elif user.node.op_type == "Slice" and user.node.input[0] == n.output[0]:
            picked = slice_positions(tr.view, user.node, r - start)
        elif tr.view.bind and (
            user.node.op_type in ("Concat", "Cast", "Identity")
            or any(
                k < len(user.node.input) and user.node.input[k] == n.output[0]
                for k in SHAPE_INPUTS.get(user.node.op_type, ())
            )
        ):  # the whole shape as another tensor's shape (``norm.expand_as(q)``), or the head of a vector built from it
            picked = list(range(r - start))  # (dynamo's ``Concat(Shape(x, 0, 2), [h, w])``): the walk's end checks it
        if picked is None:
            raise tr.fail(ref, f"the size of the unit axis is read at run time by {user.node.op_type} {user.name!r}")
        if pos in picked:
            if not tr.view.bind:
                raise tr.fail(user, "reads the size of the unit axis at run time; it would keep the old count")
            # a file with symbolic sizes reads it to rebuild shapes (F.interpolate's sizes, a reshape's): allowed
            # when every such read ends in a shape entry that then follows the cut (checked at the end of the walk)
            tr.group.unit_reads.append(ref.index)
    return {known: dim, n.output[0]: None}


@register("Pad")
def pad(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Pad (opset >= 11, constant pads): the unit axis passes when it is not padded."""
    n = ref.node
    r = len(tr.shape(ref, n.input[0]))
    if len(n.input) < 2 or not n.input[1]:
        raise tr.fail(ref, "pads given as an attribute (opset < 11)")
    pads = tr.view.value(n.input[1])
    if pads is None:
        raise tr.fail(ref, "pads computed at run time")
    pads = np.asarray(pads).reshape(-1)
    axes = list(range(r))
    if len(n.input) > 3 and n.input[3]:
        v = tr.view.value(n.input[3])
        if v is None:
            raise tr.fail(ref, "pad axes computed at run time")
        axes = [norm_axis(int(a), r) for a in np.asarray(v).reshape(-1)]
    k = len(axes)
    if dim.axis in axes and (pads[axes.index(dim.axis)] or pads[k + axes.index(dim.axis)]):
        raise tr.fail(ref, "pads the unit axis")
    out: dict[str, Dim | None] = {i: None for i in n.input[1:] if i}
    out.update({n.input[0]: dim, n.output[0]: dim})
    return out
