"""Shape vectors computed at run time from a symbolic (dynamic) dimension: what a cut may and may not write down.

A model exported with a dynamic batch or size computes its reshape targets at run time: ``Concat(Gather(Shape(x),
0), [16], [4], [24])`` for timm's ``reshape(B, N, heads, head_dim)``, ``Mul(Mul(B, C), n_h)`` for MobileViT's
unfold. Units are traced on a view where those dimensions are bound to a size (:func:`passes._core.graph.bindings`),
so every vector has a value; a :class:`~passes._core.dims.group.ShapeEdit` on a vector that holds only under the
binding (:meth:`passes._core.graph.GraphView.runtime`) must not become a constant (that would fix the batch and size
the file runs at). Each such entry is one of:

* **a constant part** of the Concat that builds the vector (the ``[4]`` of the heads): the cut rewrites that part, a
  fresh constant read only by that Concat (:class:`PartEdit`);
* **an entry that follows the cut**: computed from the run-time shapes of tensors the group cuts (``B * C * n_h``
  with ``C = Shape(x)[1]`` and ``x`` cut on axis 1): evaluated again with those shapes cut (one unit fewer,
  :meth:`~passes._core.graph.GraphView.value_at`), it gives the cut size, so nothing is written;
* anything else, **refused** with the reason: the entry depends on the binding and would not follow.

Slices, splits and index tensors whose vectors are computed at run time are refused the same way: their rewrite
would write the bound sizes down.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper

from passes._core.dims.group import DimGroup, ShapeEdit
from passes._core.dims.layout import Layout, layout_size
from passes._core.graph import GraphView, NodeRef, unique_name

_PASS_THROUGH = ("Cast", "Identity")  # a vector's producer that changes no entry


@dataclass(frozen=True)
class PartEdit:
    """Entry ``offset`` of input ``input`` (a constant) of Concat node ``node`` holds the axis size: the cut writes
    ``layout_size(layout, kept)`` there, into a fresh constant read only by that Concat."""

    node: int
    input: int
    offset: int
    layout: Layout


class RuntimeShapeError(Exception):
    """An entry of a run-time shape vector carries the unit but neither is a constant nor follows the cut."""


def _part_of(view: GraphView, name: str, position: int) -> tuple[NodeRef, int, int] | None:
    """``(Concat node, its input, offset in it)`` that makes entry ``position`` of vector ``name``, through casts;
    None when the vector is not a Concat of parts of known lengths."""
    for _ in range(8):
        ref = view.producer.get(name)
        if ref is None:
            return None
        if ref.node.op_type in _PASS_THROUGH:
            name = ref.node.input[0]
            continue
        if ref.node.op_type != "Concat":
            return None
        start = 0
        for k, part in enumerate(ref.node.input):
            value = view.value(part)
            if value is None:
                return None
            length = int(np.asarray(value).size)
            if start <= position < start + length:
                return ref, k, position - start
            start += length
        return None
    return None


def _constant_factor(
    view: GraphView, group: DimGroup, part: tuple[NodeRef, int, int], size: int
) -> tuple[NodeRef, int] | None:
    """``(Mul node, its input)`` where the Concat part of one entry is ``run-time value x constant`` and the constant
    is the axis size (``nn.MultiheadAttention``'s ``batch * num_heads``, shared by its q, k and v reshapes): the cut
    rewrites that constant. The product must reach only shape inputs of the group's own nodes."""
    ref, k, offset = part
    name = ref.node.input[k]
    for _ in range(4):
        producer = view.producer.get(name)
        if offset != 0 or producer is None:
            return None
        node = producer.node
        if node.op_type in (*_PASS_THROUGH, "Unsqueeze", "Squeeze"):
            name = node.input[0]
            continue
        if node.op_type != "Mul" or not _read_as_shape_by(view, group, node.output[0]):
            return None
        for j in (0, 1):
            const, other = node.input[j], node.input[1 - j]
            value = view.constant(const)
            if value is not None and value.size == 1 and int(value.reshape(-1)[0]) == size:
                return (producer, j) if view.free_value(other) is None else None
        return None
    return None


def _read_as_shape_by(view: GraphView, group: DimGroup, name: str) -> bool:
    """Whether every reader of ``name``, through shape arithmetic that passes it on, is a shape input of a node of
    ``group``."""
    through = (*_PASS_THROUGH, "Unsqueeze", "Squeeze", "Concat")
    return all(k is not None and ref.index in group.nodes for _, ref, k in _shape_uses(view, [name], through))


def _shape_uses(view: GraphView, names: list[str], through: Iterable[str]) -> Iterator[tuple[str, NodeRef, int | None]]:
    """Where the values of ``names`` end, followed through the ops in ``through``: ``(tensor, reader, k)`` for a
    reader taking ``tensor`` as its shape input ``k`` (:data:`SHAPE_INPUTS`), ``k`` None for any other reader."""
    todo, seen = list(names), set()
    while todo:
        t = todo.pop()
        if t in seen:
            continue
        seen.add(t)
        for ref, k in view.consumers.get(t, []):
            if k in SHAPE_INPUTS.get(ref.node.op_type, ()):
                yield t, ref, k
            elif ref.node.op_type in through:
                todo.extend(o for o in ref.node.output if o)
            else:
                yield t, ref, None


def _cut_shapes(view: GraphView, group: DimGroup) -> dict[str, list[int]]:
    """The shapes of every tensor the group carries, with one unit fewer on its axis."""
    fewer = group.count - 1
    out = {}
    for name, dim in group.dims.items():
        shape = view.shape(name)
        if shape is not None:
            cut = list(shape)
            cut[dim.axis] = layout_size(dim.layout, fewer)
            out[name] = cut
    return out


def _resolve(view: GraphView, group: DimGroup, e: ShapeEdit, cut: dict[str, list[int]]) -> PartEdit | None:
    """The :class:`PartEdit` for a run-time shape entry, or None when it follows the cut by itself."""
    node = view.nodes[e.node].node
    name = node.input[e.input]
    after = view.value_at(name, cut)
    fewer = layout_size(e.layout, group.count - 1)
    if after is not None and int(np.asarray(after).reshape(-1)[e.position]) == fewer:
        return None  # computed from the cut tensors' own shapes: it follows
    part = _part_of(view, name, e.position)
    if part is not None and view.is_constant(part[0].node.input[part[1]]):
        ref, k, offset = part
        return PartEdit(ref.index, k, offset, e.layout)
    factor = _constant_factor(view, group, part, layout_size(e.layout, group.count)) if part is not None else None
    if factor is not None:
        return PartEdit(factor[0].index, factor[1], 0, e.layout)
    raise RuntimeShapeError(
        f"{node.op_type} node {view.nodes[e.node].name!r}: entry {e.position} of its shape input {name!r} is "
        "computed at run time from a dynamic size together with the cut axis; writing it down would fix the size "
        "(export with static sizes, or the axis stays whole)"
    )


def resolve_runtime(view: GraphView, group: DimGroup) -> None:
    """Turn the group's edits of shape vectors that hold only under the view's binding into :class:`PartEdit`s (or
    drop those that follow the cut); raise :class:`RuntimeShapeError` for one that can be neither, and for a
    slice, split or index edit on a run-time vector."""
    if not view.bind:
        return
    kept: list[ShapeEdit] = []
    cut: dict[str, list[int]] | None = None
    if group.unit_reads:
        cut = _cut_shapes(view, group)
        _check_reads(view, group, cut)
    for e in group.shape_edits:
        if not view.runtime(view.nodes[e.node].node.input[e.input]):
            kept.append(e)
            continue
        cut = cut if cut is not None else _cut_shapes(view, group)
        part = _resolve(view, group, e, cut)
        if part is not None:
            group.part_edits.append(part)
    group.shape_edits[:] = kept
    vectors = [(se.node, k) for se in group.slice_edits for k in (1, 2)]
    vectors += [(sp.node, 1) for sp in group.split_edits if sp.from_input]
    vectors += [(ie.node, ie.input) for ie in group.index_edits]
    for idx, k in vectors:
        node = view.nodes[idx].node
        if k < len(node.input) and node.input[k] and view.runtime(node.input[k]):
            raise RuntimeShapeError(
                f"{node.op_type} node {view.nodes[idx].name!r}: its input {node.input[k]!r} is computed at run time "
                "from a dynamic size; rewriting it would fix the size"
            )


#: where a node reads a shape or size vector
SHAPE_INPUTS = {
    "Reshape": (1,),
    "Expand": (1,),
    "Resize": (3,),
    "Upsample": (1,),
    "Tile": (1,),
    "ConstantOfShape": (0,),
}
#: the integer ops exporters build shape vectors with
SHAPE_MATH = {"Gather", "Slice", "Concat", "Cast", "Unsqueeze", "Squeeze", "Identity", "Mul", "Div", "Add", "Sub"}


def _check_reads(view: GraphView, group: DimGroup, cut: dict[str, list[int]]) -> None:
    """Every size of the unit axis read at run time (:attr:`DimGroup.unit_reads`) must end, through shape
    arithmetic, in a shape vector that holds exactly the cut sizes once the graph is cut: its entries that change
    are entries of the unit axis (they follow), the others stay. Anything else it reaches (a scale computed from a
    channel count) would keep the old count: refused."""
    for t, ref, k in _shape_uses(view, [view.nodes[i].node.output[0] for i in group.unit_reads], SHAPE_MATH):
        op = ref.node.op_type
        if k is None:
            raise RuntimeShapeError(
                f"{op} node {ref.name!r} reads the size of the cut axis at run time; it would keep the old count"
            )
        if ref.index not in group.nodes:
            raise RuntimeShapeError(f"{op} node {ref.name!r} reads the size of the cut axis")
        before, after = view.value(t), view.value_at(t, cut)
        if before is None or after is None or not _follows(group, ref.index, k, before, after):
            raise RuntimeShapeError(
                f"{op} node {ref.name!r}: its shape input {t!r} reads the size of the cut axis at run time and would "
                "not follow the cut"
            )


def _follows(group: DimGroup, node: int, k: int, before: np.ndarray, after: np.ndarray) -> bool:
    """Whether shape vector ``k`` of ``node`` changes, under the cut, only in the unit axis's entries, to their cut
    sizes (the group's shape edits of that vector name them)."""
    before, after = np.asarray(before).reshape(-1), np.asarray(after).reshape(-1)
    if before.shape != after.shape:
        return False
    expected = before.copy()
    for e in group.shape_edits:
        if (e.node, e.input) == (node, k):
            expected[e.position] = layout_size(e.layout, group.count - 1)
    return bool((after == expected).all())


def apply_part_edits(graph: onnx.GraphProto, view: GraphView, masks: dict, taken: set[str]) -> None:
    """Write each cut :class:`PartEdit`: ``masks`` maps ``(node, input, offset)`` to the composed keep mask; every
    Concat part rewritten becomes a fresh constant read by that Concat alone."""
    by_part: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    for (idx, k, offset), mask in masks.items():
        by_part.setdefault((idx, k), []).append((offset, mask))
    for (idx, k), entries in by_part.items():
        node = graph.node[idx]
        value = np.asarray(view.value(node.input[k])).copy()
        flat = value.reshape(-1)
        for offset, mask in entries:
            flat[offset] = int(mask.sum())
        name = unique_name(f"{node.input[k]}_pruned", taken, sep="")
        graph.initializer.append(numpy_helper.from_array(value, name))
        node.input[k] = name
