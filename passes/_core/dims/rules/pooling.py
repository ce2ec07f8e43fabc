"""Pooling, Resize and Upsample: per channel over the spatial axes, so the batch and channel axes pass.

* MaxPool / AveragePool / LpPool and their global forms: ``Y[n, c] = pool(X[n, c, spatial])``;
* Resize / Upsample: an axis whose scale is 1 passes; a ``sizes`` entry for the unit axis holds its size and is
  rewritten (:class:`ShapeEdit`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from passes._core.dims.group import ShapeEdit
from passes._core.dims.layout import Dim, norm_axis
from passes._core.dims.registry import register

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import NodeRef

POOLS = ("MaxPool", "AveragePool", "LpPool", "GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")


@register(*POOLS)
def pool(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Pooling (local or global) works per channel: the channel and batch axes pass, a spatial axis does not."""
    if dim.axis > 1:
        raise tr.fail(ref, "pools over the unit axis")
    out: dict[str, Dim | None] = {ref.node.input[0]: dim, ref.node.output[0]: dim}
    out.update({o: None for o in ref.node.output[1:] if o})  # MaxPool's indices
    return out


@register("Resize", "Upsample")
def resize(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Resize / Upsample keep an axis whose scale is 1; a ``sizes`` entry for it follows the kept units."""
    n = ref.node
    x, y = n.input[0], n.output[0]
    if known not in (x, y):
        raise tr.fail(ref, "the unit axis is in the resize parameters")
    if tr.shape(ref, x)[dim.axis] != tr.shape(ref, y)[dim.axis]:
        raise tr.fail(ref, "resizes the unit axis")
    out: dict[str, Dim | None] = {x: dim, y: dim}
    out.update({i: None for i in n.input[1:] if i})
    sizes = n.input[3] if n.op_type == "Resize" and len(n.input) > 3 and n.input[3] else None
    if sizes is not None:
        value, folded = tr.shape_vector(ref, 3)
        r = len(tr.shape(ref, x))
        axes = [norm_axis(int(a), r) for a in tr.view.attrs(n).get("axes", range(r))]  # type: ignore[attr-defined]
        if dim.axis in axes:  # opset 18's ``axes``: sizes holds only those axes
            tr.group.shape_edits.append(ShapeEdit(ref.index, 3, axes.index(dim.axis), dim.layout, value, folded))
    return out
