"""Softmax and LogSoftmax: ``Y = softmax(X)`` over ``axis``; each other axis passes, the normalised one does not.

From opset 13 the op normalises over the one axis ``axis`` (default -1). Before, it flattened ``X`` to
``[prod(shape[:axis]), prod(shape[axis:])]`` (default ``axis`` 1) and normalised over the second: only the last
axis alone is the same function, so any other ``axis`` is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from passes._core.dims.layout import Dim, norm_axis
from passes._core.dims.registry import register

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import NodeRef


def _passes(tr: Tracer, ref: NodeRef, dim: Dim, axis: int) -> dict[str, Dim | None]:
    if axis == dim.axis:
        raise tr.fail(ref, "normalises over the unit axis")
    return {ref.node.input[0]: dim, ref.node.output[0]: dim}


@register("Softmax", "LogSoftmax", version=(13, None))
def softmax(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Opset >= 13: the unit axis passes unless it is ``axis``."""
    r = len(tr.shape(ref, known))
    axis = norm_axis(int(tr.view.attrs(ref.node).get("axis", -1)), r)
    return _passes(tr, ref, dim, axis)


@register("Softmax", "LogSoftmax", version=(None, 12))
def softmax_flattening(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Opset < 13: only ``axis`` = the last axis is followed (then as from opset 13)."""
    r = len(tr.shape(ref, known))
    axis = norm_axis(int(tr.view.attrs(ref.node).get("axis", 1)), r)
    if axis != r - 1:
        raise tr.fail(ref, "opset < 13 Softmax flattens the axes from `axis` on")
    return _passes(tr, ref, dim, axis)
