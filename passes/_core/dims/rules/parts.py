"""Ops that take an axis apart or put it together: Split, Slice, Concat, Gather.

Along other axes than the unit's they pass it. Along it:

* Split into ``k`` equal parts that all carry the unit alike: ``X``'s layout is ``(k, carried) x layout`` (the
  parts of a fused projection), each output's is ``layout``. Into unequal parts, or parts that do not all carry it
  (LeViT's ``[q | k | v]``): ``X``'s layout is one :class:`Parts` factor (:func:`split_parts`). The sizes follow
  the kept units (:class:`SplitEdit`).
* Slice: each slice takes one whole part of a :class:`Parts` layout built from every constant step-1 slice of the
  axis; its bounds follow the kept units (:class:`SliceEdit`).
* Concat of equal parts: ``Y``'s layout is ``(parts, carried) x layout`` (Swin's patch merging); in channels mode
  one :class:`Parts` factor with a part per input (:func:`concat_parts`).
* Gather: along another axis, the indices' axes replace the gathered one; along the unit axis it is refused.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx

from passes._core.dims.group import SliceEdit, SplitEdit
from passes._core.dims.layout import Dim, Layout, Parts, canonical, norm_axis, part_size, unit_count
from passes._core.dims.registry import register

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import GraphView, NodeRef


# ---------------------------------------------------------------------------------------------------------- Split
def _split_sizes(tr: Tracer, ref: NodeRef, axis: int, vector: object) -> list[int]:
    """The sizes of a Split's outputs along ``axis``: from their shapes, else from the sizes vector."""
    outs = list(ref.node.output)
    if all(outs):
        return [tr.shape(ref, o)[axis] for o in outs]
    if vector is not None:
        return [int(v) for v in np.asarray(vector).reshape(-1)]
    raise tr.fail(ref, "splits the unit axis into parts of unknown sizes")


def _uneven(
    tr: Tracer, ref: NodeRef, known: str, dim: Dim, sizes: list[int], edit: bool
) -> tuple[bool, dict[int, Dim] | None]:
    """Whether a Split along the unit axis is one of parts that do not all carry it alike (then :func:`split_parts`
    takes it, with the outputs known to carry it, coming from an output)."""
    x, outs = ref.node.input[0], list(ref.node.output)
    if known == x:
        parts = len(dim.layout) == 1 and isinstance(dim.layout[0][1], Parts)
        return parts or len(set(sizes)) != 1, None
    carry = dict(tr.carried_parts.get(ref.index, {}))
    carry.update({i: tr.group.dims[o] for i, o in enumerate(outs) if o in tr.group.dims})
    if len(carry) < len(outs) and not edit and len(set(sizes)) == 1:
        carry = {i: dim for i in range(len(outs))}  # num_outputs: the sizes cannot differ after the cut
    uneven = len(set(sizes)) != 1 or len(carry) < len(outs) or any(d != dim for d in carry.values())
    return uneven, carry


@register("Split")
def split(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Split along another axis passes the unit; along it see the module docstring."""
    n = ref.node
    x = n.input[0]
    r = len(tr.shape(ref, x))
    attrs = tr.view.attrs(n)
    axis = norm_axis(int(attrs.get("axis", 0)), r)  # type: ignore[call-overload]
    outs = list(n.output)
    out: dict[str, Dim | None] = {}
    from_input = len(n.input) > 1 and bool(n.input[1])
    if from_input:
        out[n.input[1]] = None
    if dim.axis != axis:
        out[x] = dim
        out.update({o: dim for o in outs if o})
        return out
    sizes = _split_sizes(tr, ref, axis, tr.view.value(n.input[1]) if from_input else attrs.get("split"))
    edit = from_input or attrs.get("split") is not None
    uneven, carry = _uneven(tr, ref, known, dim, sizes, edit)
    if uneven:
        return split_parts(tr, ref, known, dim, sizes, (edit, from_input), out, carry)
    k = len(outs)
    if known == x:
        first = dim.layout[0]
        if first[1] or first[0] % k:
            raise tr.fail(ref, "splits the unit factor itself")
        each = canonical(((first[0] // k, False),) + dim.layout[1:])
        xd = dim
    else:
        each = dim.layout
        xd = Dim(axis, canonical(((k, False),) + each))
    out[x] = xd
    out.update({o: Dim(axis, each) for o in outs})
    if edit:
        tr.group.split_edits.append(SplitEdit(ref.index, tuple(each for _ in outs), from_input))
    return out


def split_parts(
    tr: Tracer,
    ref: NodeRef,
    known: str,
    dim: Dim,
    sizes: list[int],
    edit: tuple[bool, bool],
    out: dict[str, Dim | None],
    carry: dict[int, Dim] | None = None,
) -> dict[str, Dim | None]:
    """A Split of the unit axis into parts that do not all carry it alike (LeViT's ``[q | k | v]``, a fused qkv
    split by :func:`passes._core.canonical.canonicalize`): the input's layout there is one :class:`Parts` factor.
    Coming from an output, the parts in ``carry`` (that output, and those the walk has reached: q and k meet in the
    scores, v only in the context) carry its layout and the others are untouched runs; a walk that reaches a left
    out part later restarts the trace with it carried. Coming from the input, its parts must line up with the
    split."""
    n = ref.node
    x, outs = n.input[0], list(n.output)
    if not edit[0]:  # opset 18's num_outputs: the sizes after the cut would not follow the parts
        raise tr.fail(ref, "splits the unit axis into unequal parts by its output count")
    if known == x:
        if len(dim.layout) != 1 or not isinstance(dim.layout[0][1], Parts):
            raise tr.fail(ref, "splits the unit axis into unequal parts that do not follow its layout")
        parts = list(dim.layout[0][1].parts)
        got = [part_size(p) for p in parts]
        if got != sizes:
            raise tr.fail(ref, f"splits the unit axis as {sizes}, its parts are {got}")
    else:
        assert carry is not None
        if any(d.axis != dim.axis or unit_count(d.layout) != unit_count(dim.layout) for d in carry.values()):
            raise tr.fail(ref, "its outputs carry the unit on different axes or in different counts")
        parts = [carry[i].layout if i in carry else size for i, size in enumerate(sizes)]
        for i, o in enumerate(outs):
            if o and i not in carry:
                tr.left_out[o] = (ref.index, i)
        out[x] = Dim(dim.axis, ((sum(sizes), Parts(tuple(parts))),))
    layouts: list[Layout] = []
    for o, part, size in zip(outs, parts, sizes, strict=True):
        if isinstance(part, int):
            layouts.append(((size, False),))
            if o:
                out[o] = None
        else:
            layouts.append(part)
            if o:
                out[o] = Dim(dim.axis, part)
    tr.group.split_edits.append(SplitEdit(ref.index, tuple(layouts), edit[1]))
    return out


# ---------------------------------------------------------------------------------------------------------- Slice
def slice_ranges(view: GraphView, node: onnx.NodeProto, rank: int) -> list[tuple[int, int, int, int]] | None:
    """``(position, axis, start, end)`` per sliced axis of a Slice (opset >= 10) with constant bounds and step 1
    on each axis, bounds clamped as numpy does; ``None`` when they are computed at run time or a step is not 1."""
    if view.opset < 10:
        return None
    vals = [view.value(i) if i else None for i in node.input[1:5]]
    if any(v is None for v, i in zip(vals, node.input[1:5], strict=False) if i) or len(vals) < 2:
        return None
    starts, ends = vals[0].reshape(-1).tolist(), vals[1].reshape(-1).tolist()  # type: ignore[union-attr]
    axes = vals[2].reshape(-1).tolist() if len(vals) > 2 and vals[2] is not None else list(range(len(starts)))
    steps = vals[3].reshape(-1).tolist() if len(vals) > 3 and vals[3] is not None else [1] * len(starts)
    shape = view.shape(node.input[0])
    if shape is None or any(int(st) != 1 for st in steps):
        return None
    out = []
    for k, (a, b, e) in enumerate(zip(axes, starts, ends, strict=True)):
        a = norm_axis(int(a), rank)
        lo, hi, _ = slice(int(b), int(e)).indices(shape[a])
        out.append((k, a, lo, max(lo, hi)))
    return out


@register("Slice", version=(None, 9))
def slice_attributes(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Opset < 10 (bounds as attributes): passes the unit axis when it is not sliced."""
    n = ref.node
    r = len(tr.shape(ref, n.input[0]))
    attrs = tr.view.attrs(n)
    axes = attrs.get("axes") or list(range(len(attrs["starts"])))  # type: ignore[arg-type]
    if dim.axis not in [norm_axis(int(a), r) for a in axes]:  # type: ignore[union-attr]
        out: dict[str, Dim | None] = {i: None for i in n.input[1:] if i}
        out.update({n.input[0]: dim, n.output[0]: dim})
        return out
    raise tr.fail(ref, "slices along the unit axis with bounds computed at run time, a step, or opset < 10")


def _slice_axes(tr: Tracer, ref: NodeRef) -> list[int]:
    """The axes a Slice (opset >= 10) slices: input 3, else one per start."""
    n = ref.node
    if len(n.input) > 3 and n.input[3]:
        v = tr.view.value(n.input[3])
        if v is None:
            raise tr.fail(ref, "slice axes computed at run time")
        return v.reshape(-1).tolist()
    v = tr.view.value(n.input[1])
    if v is None:
        raise tr.fail(ref, "slice starts computed at run time")
    return list(range(v.size))


def _sliced_layout(tr: Tracer, ref: NodeRef, dim: Dim, taken: int, rank: int) -> Dim:
    """The layout of a Slice's input along the unit axis, coming from one slice's output (``dim``, ``taken``
    entries): a :class:`Parts` factor with a part per constant step-1 slice of that axis among the input's readers,
    ``dim``'s layout for the ranges of ``taken`` entries and untouched runs elsewhere."""
    x = ref.node.input[0]
    cuts = []
    for sib, _ in tr.view.consumers.get(x, []):
        if sib.node.op_type != "Slice" or sib.node.input[0] != x:
            continue
        sib_ranges = slice_ranges(tr.view, sib.node, rank) or []
        cuts += [(b, e) for _, a, b, e in sib_ranges if a == dim.axis]
    cuts = sorted(set(cuts))
    if any(b < e0 for (_, e0), (b, _) in zip(cuts, cuts[1:])):
        raise tr.fail(ref, f"slices of the unit axis overlap ({cuts})")
    parts: list[Layout | int] = []
    at = 0
    for b, e in cuts:
        if b > at:
            parts.append(b - at)
        parts.append(dim.layout if e - b == taken else e - b)
        at = e
    if at < tr.shape(ref, x)[dim.axis]:
        parts.append(tr.shape(ref, x)[dim.axis] - at)
    return Dim(dim.axis, ((sum(part_size(p) for p in parts), Parts(tuple(parts))),))


def _part_at(xd: Dim, lo: int, hi: int) -> Layout | int | None:
    """The part of ``xd``'s :class:`Parts` layout that spans ``[lo, hi)`` exactly, else ``None``."""
    offset, part = 0, None
    for p in xd.layout[0][1].parts:  # type: ignore[union-attr]
        if offset == lo and offset + part_size(p) == hi:
            part = p
        offset += part_size(p)
    return part


@register("Slice", version=(10, None))
def slice_inputs(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Slice on other axes passes the unit axis. Along it (the halves of a packed gated MLP, LeViT's q/k/v taken by
    slicing), each slice must take whole parts of a :class:`Parts` layout: coming from a slice's output, the input's
    layout is built from every constant step-1 slice of that axis that reads it (ranges of the output's size carry
    its layout, the rest stay whole, as in :func:`split_parts`)."""
    n = ref.node
    x, y = n.input[0], n.output[0]
    r = len(tr.shape(ref, x))
    axes = _slice_axes(tr, ref)
    out: dict[str, Dim | None] = {i: None for i in n.input[1:] if i}
    if dim.axis not in [norm_axis(int(a), r) for a in axes]:
        out.update({x: dim, y: dim})
        return out
    ranges = slice_ranges(tr.view, n, r)
    if ranges is None:
        raise tr.fail(ref, "slices along the unit axis with bounds computed at run time, a step, or opset < 10")
    pos, _, lo, hi = next(e for e in ranges if e[1] == dim.axis)
    xd = dim
    if known == y:
        xd = out[x] = _sliced_layout(tr, ref, dim, hi - lo, r)
    if len(xd.layout) != 1 or not isinstance(xd.layout[0][1], Parts):
        raise tr.fail(ref, "slices along the unit axis")
    part = _part_at(xd, lo, hi)
    if part is None:
        raise tr.fail(ref, f"slices [{lo}, {hi}) of the unit axis across its parts")
    out[y] = None if isinstance(part, int) else Dim(dim.axis, part)
    starts = tuple(int(v) for v in tr.view.value(n.input[1]).reshape(-1))  # type: ignore[union-attr]
    ends = tuple(int(v) for v in tr.view.value(n.input[2]).reshape(-1))  # type: ignore[union-attr]
    tr.group.slice_edits.append(SliceEdit(ref.index, pos, xd.layout, lo, hi, starts, ends))
    return out


# --------------------------------------------------------------------------------------------------------- Gather
@register("Gather")
def gather(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y = take(data, indices, axis)``: data's axes before ``axis`` stay, the indices' axes replace ``axis``,
    the rest shift by ``rank(indices) - 1``. The unit axis may not be ``axis`` nor come from the indices."""
    n = ref.node
    data, idx, y = n.input[0], n.input[1], n.output[0]
    r = len(tr.shape(ref, data))
    ri = len(tr.shape(ref, idx))
    axis = norm_axis(int(tr.view.attrs(n).get("axis", 0)), r)  # type: ignore[call-overload]
    if known == idx:
        raise tr.fail(ref, "the unit axis is in the gather indices")
    if known == data:
        if dim.axis == axis:
            raise tr.fail(ref, "gathers along the unit axis")
        ya = dim.axis if dim.axis < axis else dim.axis + ri - 1
        return {data: dim, idx: None, y: Dim(ya, dim.layout)}
    if dim.axis < axis:
        da = dim.axis
    elif dim.axis >= axis + ri:
        da = dim.axis - ri + 1
    else:
        raise tr.fail(ref, "the unit axis comes from the gather indices")
    return {y: dim, idx: None, data: Dim(da, dim.layout)}


# --------------------------------------------------------------------------------------------------------- Concat
@register("Concat")
def concat(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Concat along another axis passes the unit; along it see the module docstring."""
    n = ref.node
    r = len(tr.shape(ref, known))
    axis = norm_axis(int(tr.view.attrs(n)["axis"]), r)  # type: ignore[call-overload]
    inputs = [i for i in n.input if i]
    if axis == dim.axis and tr.channels:
        return concat_parts(tr, ref, known, dim, inputs)
    if axis == dim.axis:  # equal parts that all carry the axis (Swin's patch merging): ((parts, -), *layout)
        sizes = {tr.shape(ref, i)[axis] for i in inputs}
        if len(sizes) != 1:
            raise tr.fail(ref, "concatenates along the unit axis")
        parts = len(inputs)
        if known == n.output[0]:
            (first, unit), *rest = dim.layout
            if unit or first % parts:
                raise tr.fail(ref, "concatenates along the unit axis")
            inner = Dim(axis, canonical(((first // parts, False), *rest)))
            return {**{i: inner for i in inputs}, n.output[0]: dim}
        return {**{i: dim for i in inputs}, n.output[0]: Dim(axis, canonical(((parts, False), *dim.layout)))}
    out: dict[str, Dim | None] = {i: dim for i in n.input if i}
    out[n.output[0]] = dim
    return out


def concat_parts(tr: Tracer, ref: NodeRef, known: str, dim: Dim, inputs: list[str]) -> dict[str, Dim | None]:
    """A Concat along the unit axis of conv channels: the output's layout is one :class:`Parts` factor, a part per
    input, holding the unit where that input carries it (every input the group knows when the node is visited)
    and an untouched run elsewhere; coming from the output, its parts must line up with the inputs."""
    n = ref.node
    y = n.output[0]
    sizes = [tr.shape(ref, i)[dim.axis] for i in inputs]
    out: dict[str, Dim | None] = {}
    if known == y:
        held = dim.layout[0][1] if len(dim.layout) == 1 else None
        if not isinstance(held, Parts) or [part_size(p) for p in held.parts] != sizes:
            raise tr.fail(ref, "concatenates along the unit axis, whose units span several inputs")
        parts = list(held.parts)
    else:
        parts = []
        for i, size in zip(inputs, sizes, strict=True):
            d = tr.group.dims.get(i)
            if d is not None and d.axis != dim.axis:
                raise tr.fail(ref, f"{i!r} carries the unit on another axis than the concatenation's")
            parts.append(d.layout if d is not None else size)
        out[y] = Dim(dim.axis, ((sum(sizes), Parts(tuple(parts))),))
    for i, part in zip(inputs, parts, strict=True):
        out[i] = None if isinstance(part, int) else Dim(dim.axis, part)
    out[y] = out.get(y, dim)
    return out
