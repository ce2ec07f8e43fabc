"""Layout ops: Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Expand, Tile move the unit axis without mixing units.

* Transpose: ``Y.axis(j) = X.axis(perm[j])``, the layout unchanged.
* Reshape / Flatten: :func:`map_reshape` cuts both shapes into the same row-major factors; the unit factor lands
  whole on one output axis. A shape entry that holds the axis size is rewritten (:class:`ShapeEdit`).
* Squeeze / Unsqueeze: axes removed or inserted; the unit axis moves by the count of those before it.
* Expand: broadcasting against the target shape, whose entry for the unit axis (if not 1) is rewritten.
* Tile: passes an axis repeated once.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from passes._core.dims.group import ShapeEdit
from passes._core.dims.layout import Dim, Factor, Layout, canonical, norm_axis
from passes._core.dims.registry import register
from passes._core.dims.tracer import TraceError

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import NodeRef


@register("Transpose")
def transpose(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y = transpose(X, perm)`` (default: reversed): input axis ``perm[j]`` is output axis ``j``."""
    n = ref.node
    r = len(tr.shape(ref, n.input[0]))
    perm = list(tr.view.attrs(n).get("perm", list(range(r))[::-1]))  # type: ignore[call-overload]
    if known == n.input[0]:
        return {n.input[0]: dim, n.output[0]: Dim(perm.index(dim.axis), dim.layout)}
    return {n.output[0]: dim, n.input[0]: Dim(perm[dim.axis], dim.layout)}


def _atoms(src: Sequence[int], axis: int, layout: Layout) -> list[Factor]:
    """The row-major factors of a tensor of shape ``src``: the unit axis's layout, the other axes as carried."""
    atoms: list[Factor] = []
    for j, s in enumerate(src):
        if j == axis:
            atoms.extend(layout)
        elif s != 1:
            atoms.append((int(s), False))
    return atoms


def map_reshape(src: Sequence[int], axis: int, layout: Layout, dst: Sequence[int]) -> Dim:
    """Where the unit axis ``axis`` (with ``layout``) of a tensor of shape ``src`` lands after reshaping to ``dst``.

    Both shapes are cut into the same row-major factors; a destination axis may merge several source factors or
    split a carried factor, never the unit factor. Raises :class:`TraceError` otherwise.
    """
    atoms = _atoms(src, axis, layout)
    k = 0
    found: Dim | None = None
    for d, size in enumerate(dst):
        acc, cur = 1, []
        while acc < size:
            if k >= len(atoms):
                raise TraceError(f"cannot map shape {list(src)} onto {list(dst)}")
            s, unit = atoms[k]
            if size % (acc * s) == 0:
                cur.append((s, unit))
                acc *= s
                k += 1
            else:
                need = size // acc
                if unit or size % acc or s % need:
                    raise TraceError(f"reshape {list(src)} -> {list(dst)} splits the unit axis")
                cur.append((need, False))
                atoms[k] = (s // need, False)
                acc *= need
        if acc != size:
            raise TraceError(f"cannot map shape {list(src)} onto {list(dst)}")
        if any(unit for _, unit in cur):
            found = Dim(d, canonical(cur))
    if k != len(atoms) or found is None:
        raise TraceError(f"cannot map shape {list(src)} onto {list(dst)}")
    return found


def _mapped(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> tuple[Dim, Dim]:
    """The unit axis of a Reshape's (Flatten's) input and output, from either."""
    n = ref.node
    x, y = n.input[0], n.output[0]
    sx, sy = tr.shape(ref, x), tr.shape(ref, y)
    try:
        if known == x:
            return dim, map_reshape(sx, dim.axis, dim.layout, sy)
        return map_reshape(sy, dim.axis, dim.layout, sx), dim
    except TraceError as exc:
        raise tr.fail(ref, str(exc)) from None


@register("Flatten")
def flatten(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y = X.reshape(prod(shape[:axis]), prod(shape[axis:]))``: mapped as a reshape, with no vector to rewrite."""
    dx, dy = _mapped(tr, ref, known, dim)
    return {ref.node.input[0]: dx, ref.node.output[0]: dy}


@register("Reshape")
def reshape(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y = X.reshape(shape)``: mapped by :func:`map_reshape`; ``shape[axis of Y]`` holds the axis size and is
    rewritten, unless it is -1 (inferred) or a 0 that copies an input size carrying the same layout."""
    n = ref.node
    dx, dy = _mapped(tr, ref, known, dim)
    out: dict[str, Dim | None] = {n.input[0]: dx, n.output[0]: dy, n.input[1]: None}
    value, folded = tr.shape_vector(ref, 1)
    copies = [] if int(tr.view.attrs(n).get("allowzero", 0)) else [p for p, v in enumerate(value) if v == 0]  # type: ignore[call-overload]
    same = dx == dy  # input and output hold the unit axis at the same position with the same layout
    for pos in copies:  # a 0 entry copies the input's size at that position
        if (pos == dx.axis or pos == dy.axis) and not same:
            raise tr.fail(ref, "a 0 (copy) entry of the shape vector touches the unit axis")
    v = value[dy.axis]
    if v == -1 or (v == 0 and dy.axis in copies):
        return out
    if v != dy.size:
        raise tr.fail(ref, f"shape entry {dy.axis} is {v}, expected {dy.size}")
    tr.group.shape_edits.append(ShapeEdit(ref.index, 1, dy.axis, dy.layout, value, folded))
    return out


def _axes(tr: Tracer, ref: NodeRef, rank: int) -> list[int] | None:
    """Squeeze's / Unsqueeze's axes (input 1 from opset 13, else the attribute), sorted and non-negative;
    ``None`` when not given."""
    n = ref.node
    if tr.view.opset >= 13:
        if len(n.input) < 2 or not n.input[1]:
            return None
        v = tr.view.value(n.input[1])
        if v is None:
            raise tr.fail(ref, "axes computed at run time")
        axes = [int(a) for a in np.asarray(v).reshape(-1)]
    else:
        a = tr.view.attrs(n).get("axes")
        if a is None:
            return None
        axes = [int(x) for x in a]  # type: ignore[union-attr]
    return sorted(norm_axis(a, rank) for a in axes)


@register("Squeeze")
def squeeze(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Output axis ``j`` is input axis ``keep[j]`` (the axes not squeezed); squeezing the unit axis is refused."""
    n = ref.node
    x, y = n.input[0], n.output[0]
    sx = tr.shape(ref, x)
    axes = _axes(tr, ref, len(sx))
    if axes is None:
        axes = [i for i, s in enumerate(sx) if s == 1]
    keep = [i for i in range(len(sx)) if i not in axes]  # output axis j <- input axis keep[j]
    out: dict[str, Dim | None] = {}
    if len(n.input) > 1 and n.input[1]:
        out[n.input[1]] = None
    if known == x:
        if dim.axis in axes:
            raise tr.fail(ref, "squeezes the unit axis")
        out.update({x: dim, y: Dim(keep.index(dim.axis), dim.layout)})
    else:
        out.update({y: dim, x: Dim(keep[dim.axis], dim.layout)})
    return out


@register("Unsqueeze")
def unsqueeze(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Input axis ``j`` is output axis ``keep[j]`` (the output axes not inserted)."""
    n = ref.node
    x, y = n.input[0], n.output[0]
    ry = len(tr.shape(ref, y))
    axes = _axes(tr, ref, ry) or []
    keep = [i for i in range(ry) if i not in axes]  # input axis j -> output axis keep[j]
    out: dict[str, Dim | None] = {}
    if len(n.input) > 1 and n.input[1]:
        out[n.input[1]] = None
    if known == x:
        out.update({x: dim, y: Dim(keep[dim.axis], dim.layout)})
    else:
        out.update({y: dim, x: Dim(keep.index(dim.axis), dim.layout)})
    return out


@register("Expand")
def expand(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y = X * ones(shape)`` (broadcast, aligned right): the unit axis of ``Y`` is that of ``X`` shifted by the
    rank difference; the target shape's entry for it, unless 1, holds its size and is rewritten."""
    n = ref.node
    x, y = n.input[0], n.output[0]
    sx, sy = tr.shape(ref, x), tr.shape(ref, y)
    shift = len(sy) - len(sx)
    value, folded = tr.shape_vector(ref, 1)
    out: dict[str, Dim | None] = {n.input[1]: None}
    if known == x:
        y_axis = dim.axis + shift
        out.update({x: dim, y: Dim(y_axis, dim.layout)})
    else:
        y_axis = dim.axis
        xa = y_axis - shift
        out.update({y: dim, x: Dim(xa, dim.layout) if xa >= 0 and sx[xa] != 1 else None})
    pos = y_axis - (len(sy) - len(value))
    if pos >= 0:
        v = value[pos]
        if v != 1:
            if v != dim.size:
                raise tr.fail(ref, f"expand entry {pos} is {v}, expected {dim.size}")
            tr.group.shape_edits.append(ShapeEdit(ref.index, 1, pos, dim.layout, value, folded))
    return out


@register("Tile")
def tile(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Tile (constant repeats) passes the unit axis when that axis is repeated once (XCiT's positional encoding,
    tiled over the batch in the legacy export)."""
    n = ref.node
    repeats = tr.view.value(n.input[1])
    if repeats is None:
        raise tr.fail(ref, "tile repeats computed at run time")
    if int(np.asarray(repeats).reshape(-1)[dim.axis]) != 1:
        raise tr.fail(ref, "tiles the unit axis")
    return {n.input[0]: dim, n.output[0]: dim, n.input[1]: None}
