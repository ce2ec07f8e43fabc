"""Indexing by index tuples: GatherND and ScatterND. An index tuple of length ``q`` addresses the first ``q`` axes
(after ``b`` batch axes for GatherND); the axes after those are copied whole, so a unit axis among them passes
untouched. Along an addressed axis the units are positions written in the index tensor.

* GatherND ``Y[i..., rest] = X[i..., idx[i..., :]..., rest]`` (``batch_dims = b``): ``Y``'s shape is
  ``idx.shape[:-1] + X.shape[b + q:]``, so ``X``'s axis ``a >= b + q`` is ``Y``'s axis ``rank(idx) - 1 + a - b - q``.
  A unit on an addressed axis (its units would be picked by position) or on a batch axis (the indices would carry
  it) is refused.
* ScatterND ``Y = X; Y[idx[j, :]..., rest] = U[j, rest]``: ``Y`` carries ``X``'s axes; ``U``'s shape is
  ``idx.shape[:-1] + X.shape[q:]``, so ``X``'s axis ``a >= q`` is ``U``'s axis ``rank(idx) - 1 + a - q``. On an
  addressed axis (torchvision's Swin-V2 zeroes its k bias in place: ``bias[C:2C] = 0``, a ScatterND of rows
  ``C .. 2C - 1`` into the fused ``[q | k | v]`` bias), constant ``[n, q]`` indices are followed when the rows they
  write are laid out as one part of the axis: ``U``'s rows then carry that part's layout, and the cut keeps the rows
  of kept positions, renumbered (:class:`~passes._core.dims.group.IndexEdit`). Otherwise it is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from passes._core.dims.group import IndexEdit
from passes._core.dims.layout import Dim, Layout, Parts, layout_size, part_size, unit_count, unit_positions
from passes._core.dims.registry import register

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import NodeRef


@register("GatherND")
def gather_nd(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """The unit passes between ``X``'s axis ``a >= b + q`` and ``Y``'s axis ``rank(idx) - 1 + a - b - q``."""
    n = ref.node
    x, idx, y = n.input[0], n.input[1], n.output[0]
    si = tr.shape(ref, idx)
    m, q = len(si), si[-1]
    b = int(tr.view.attrs(n).get("batch_dims", 0))  # type: ignore[call-overload]
    if known == idx:
        raise tr.fail(ref, "the unit axis is in the gather indices")
    if known == x:
        a = dim.axis
        if a < b:
            raise tr.fail(ref, "the unit axis is a batch axis of the gather (the indices would carry it)")
        if a < b + q:
            raise tr.fail(ref, "gathers along the unit axis (its units are picked by the indices)")
        return {x: dim, idx: None, y: Dim(m - 1 + a - b - q, dim.layout)}
    o = dim.axis
    if o < b:
        raise tr.fail(ref, "the unit axis is a batch axis of the gather (the indices would carry it)")
    if o < m - 1:
        raise tr.fail(ref, "the unit axis comes from the gather indices")
    return {y: dim, idx: None, x: Dim(o - (m - 1) + b + q, dim.layout)}


def _owners(layout: Layout) -> np.ndarray:
    """The unit each entry of an axis with ``layout`` belongs to (-1: an untouched run of a :class:`Parts`)."""
    owner = np.full(layout_size(layout), -1, dtype=np.int64)
    for u in range(unit_count(layout)):
        owner[unit_positions(layout, [u])] = u
    return owner


def _candidates(layout: Layout, size: int, start: int) -> list[Layout | int]:
    """Layouts that rows ``start .. start + size - 1`` of an axis with ``layout`` may hold: one part of a
    :class:`Parts` factor spanning them, or the factors after leading carried ones when the rows are one block of
    them (the k third of ``(3, q/k/v) x heads x head_dim``)."""
    out: list[Layout | int] = []
    if len(layout) == 1 and isinstance(layout[0][1], Parts):
        offset = 0
        for p in layout[0][1].parts:
            if offset == start and part_size(p) == size:
                out.append(p)
            offset += part_size(p)
    for i in range(len(layout)):
        if any(unit for _, unit in layout[:i]):
            break
        rest = layout[i:]
        if layout_size(rest) == size and start % size == 0:
            out.append(rest)
    return out


def _written(tr: Tracer, ref: NodeRef, dim: Dim, q: int) -> tuple[Dim | None, IndexEdit]:
    """A ScatterND along the unit axis ``dim`` (one of the ``q`` addressed axes): the Dim of the updates' rows (None
    where they hold no unit) and the edit of the index rows; refused unless the indices are constant ``[n, q]`` rows
    that write one part of the axis's layout, in order."""
    n = ref.node
    value = tr.view.value(n.input[1])
    if value is None:
        raise tr.fail(ref, "scatters along the unit axis at indices computed at run time")
    rows = np.asarray(value).astype(np.int64)
    if rows.ndim != 2:
        raise tr.fail(ref, f"scatters along the unit axis with indices of rank {rows.ndim} (only [rows, {q}])")
    size = dim.size
    written = rows[:, dim.axis] % size
    owner = _owners(dim.layout)[written]
    edit = IndexEdit(ref.index, 1, dim.axis, dim.layout)
    contiguous = bool(len(written)) and np.array_equal(written, np.arange(written[0], written[0] + len(written)))
    if contiguous:
        for cand in _candidates(dim.layout, len(written), int(written[0])):
            if isinstance(cand, int):
                if (owner == -1).all():
                    return None, edit
            elif np.array_equal(owner, _owners(cand)):
                return Dim(0, cand), edit
    if (owner == -1).all():
        return None, edit  # the rows write only entries no unit owns: they stay, renumbered
    raise tr.fail(ref, "scatters into positions of the unit axis that are not one part of its layout")


@register("ScatterND")
def scatter_nd(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y`` carries ``X``'s axes; an axis after the addressed ones passes to ``U``; along an addressed one see the
    module docstring."""
    n = ref.node
    x, idx, u, y = n.input[0], n.input[1], n.input[2], n.output[0]
    si = tr.shape(ref, idx)
    m, q = len(si), si[-1]
    if known == idx:
        raise tr.fail(ref, "the unit axis is in the scatter indices")
    if known == u:
        if dim.axis < m - 1:
            raise tr.fail(ref, "the unit axis is on the scattered rows (it comes from the indices)")
        xd = Dim(dim.axis - (m - 1) + q, dim.layout)
        return {u: dim, idx: None, x: xd, y: xd}
    xd = dim
    if dim.axis >= q:
        return {x: xd, y: xd, idx: None, u: Dim(m - 1 + dim.axis - q, dim.layout)}
    ud, edit = _written(tr, ref, dim, q)
    tr.group.index_edits.append(edit)
    return {x: xd, y: xd, idx: None, u: ud}
