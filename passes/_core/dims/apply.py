"""Cutting traced groups: :func:`apply_groups` rewrites a copy of the model for chosen kept units.

For a group with kept units ``K`` (sorted), every edit it collected (:mod:`passes._core.dims.group`) becomes a keep
mask over the original axis, ``m[i] = 1`` iff ``i`` is in ``kept_positions(layout, K)``. Several groups may cut one
axis (LeViT's q/k and v channels share the fused projection's axis), one tensor on two axes (Swin's patch merging:
the rows belong to one stage's width, the columns to the next), or one shape vector, split or group: each is
composed as the AND of every group's mask. Then

* a constant becomes ``np.compress(m, W, axis)`` (keeping its name, so the exporter's weight map stays valid);
* a shape entry, a Split size or a depthwise ``group`` becomes ``sum(m)``;
* a Slice's ``[start, end)`` becomes ``[sum(m[:start]), sum(m[:end]))``, what remains of its range;
* a ScatterND's index rows on the axis keep the rows ``j`` with ``m[p_j]``, each position ``p_j`` becoming
  ``sum(m[:p_j])``;

and every rewritten vector becomes a fresh initializer read only by its node, so constants shared with other blocks
are never edited.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from passes._core.dims.group import DimGroup, SliceEdit
from passes._core.dims.layout import Layout, kept_positions, layout_size
from passes._core.dims.symbolic import apply_part_edits
from passes._core.graph import GraphView, copy_model, unique_name


def _keep(masks: dict, key: object, layout: Layout, kept: list[int]) -> None:
    """AND the keep mask of ``kept`` units over an axis of ``layout`` into ``masks[key]``."""
    mask = np.zeros(layout_size(layout), dtype=bool)
    mask[kept_positions(layout, kept)] = True
    masks[key] = masks[key] & mask if key in masks else mask


@dataclass
class _Masks:
    """The composed keep masks of every edit of the chosen groups, by what they rewrite."""

    tensors: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # (constant, axis)
    shapes: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)  # (node, input, position)
    groups: dict[int, np.ndarray] = field(default_factory=dict)  # depthwise Conv node
    splits: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (Split node, output)
    sliced: dict[tuple[int, int], np.ndarray] = field(default_factory=dict)  # (Slice node, position)
    #: (node, input) -> the shape vector's new value, started from the original
    vectors: dict[tuple[int, int], list[int]] = field(default_factory=dict)
    split_nodes: dict[int, tuple[bool, int]] = field(default_factory=dict)  # node -> (sizes from input, outputs)
    slice_nodes: dict[tuple[int, int], SliceEdit] = field(default_factory=dict)
    indexed: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)  # (node, input, column)
    parts: dict[tuple[int, int, int], np.ndarray] = field(default_factory=dict)  # (Concat node, input, offset)

    def add(self, group: DimGroup, kept: list[int]) -> None:
        """AND the masks of keeping ``kept`` (sorted) units of ``group`` into these."""
        for ts in group.slices.values():
            _keep(self.tensors, (ts.tensor, ts.axis), ts.layout, kept)
        for e in group.shape_edits:
            _keep(self.shapes, (e.node, e.input, e.position), e.layout, kept)
            self.vectors.setdefault((e.node, e.input), list(e.value))
        for g in group.group_edits:
            _keep(self.groups, g.node, g.layout, kept)
        for sp in group.split_edits:
            self.split_nodes[sp.node] = (sp.from_input, len(sp.layouts))
            for j, lay in enumerate(sp.layouts):
                _keep(self.splits, (sp.node, j), lay, kept)
        for se in group.slice_edits:
            self.slice_nodes[(se.node, se.position)] = se
            _keep(self.sliced, (se.node, se.position), se.layout, kept)
        for pe in group.part_edits:
            _keep(self.parts, (pe.node, pe.input, pe.offset), pe.layout, kept)
        for ie in group.index_edits:
            _keep(self.indexed, (ie.node, ie.input, ie.column), ie.layout, kept)

    def arrays(self, view: GraphView) -> dict[str, np.ndarray]:
        """Every cut constant's new value (all its cut axes applied in turn)."""
        arrays: dict[str, np.ndarray] = {}
        for (name, axis), mask in self.tensors.items():
            arr = arrays.get(name)
            arr = view.constant(name) if arr is None else arr
            assert arr is not None
            arrays[name] = np.ascontiguousarray(np.compress(mask, arr, axis=axis))
        return arrays

    def fill_vectors(self) -> None:
        """Shape entries become the kept sizes; each Slice keeps what remains of its range."""
        for (idx, k, pos), mask in self.shapes.items():
            self.vectors[(idx, k)][pos] = int(mask.sum())
        for (idx, pos), mask in self.sliced.items():
            se = self.slice_nodes[(idx, pos)]
            self.vectors.setdefault((idx, 1), list(se.starts))[pos] = int(mask[: se.start].sum())
            self.vectors.setdefault((idx, 2), list(se.ends))[pos] = int(mask[: se.end].sum())


def _set_indices(graph: onnx.GraphProto, view: GraphView, masks: _Masks, taken: set[str]) -> None:
    """Each cut index tensor (:class:`IndexEdit`): the rows whose position is kept, renumbered, as a fresh
    initializer read only by its node. Rows are removed once for all of the node's columns."""
    by_input: dict[tuple[int, int], list[tuple[int, np.ndarray]]] = {}
    for (idx, k, column), mask in masks.indexed.items():
        by_input.setdefault((idx, k), []).append((column, mask))
    for (idx, k), columns in by_input.items():
        node = graph.node[idx]
        value = view.value(node.input[k])
        assert value is not None
        rows = np.asarray(value, dtype=np.int64).copy()  # [n, q]
        keep = np.ones(rows.shape[0], dtype=bool)
        for column, mask in columns:
            pos = rows[:, column] % mask.size
            keep &= mask[pos]
            rows[:, column] = (np.cumsum(mask) - 1)[pos]  # position among the kept ones (read where kept)
        name = _pruned_name(node.input[k], taken)
        graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(rows[keep]).astype(value.dtype), name))
        node.input[k] = name


def _pruned_name(base: str, taken: set[str]) -> str:
    return unique_name(f"{base}_pruned", taken, sep="")


def _set_splits(graph: onnx.GraphProto, masks: _Masks, taken: set[str]) -> None:
    """Each cut Split's sizes: a fresh input vector, or its ``split`` attribute."""
    for idx, (from_input, n) in masks.split_nodes.items():
        node = graph.node[idx]
        sizes = [int(masks.splits[(idx, j)].sum()) for j in range(n)]
        if from_input:
            name = _pruned_name(node.input[1], taken)
            graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
            node.input[1] = name
        else:
            keep_attrs = [a for a in node.attribute if a.name != "split"]
            del node.attribute[:]
            node.attribute.extend(keep_attrs + [helper.make_attribute("split", sizes)])


def _set_constants(graph: onnx.GraphProto, view: GraphView, arrays: dict[str, np.ndarray]) -> None:
    """Write the cut constants in place: initializers, or the ``value`` of their Constant nodes."""
    inits = {t.name: t for t in graph.initializer}
    for name, arr in arrays.items():
        tensor = numpy_helper.from_array(arr, name)
        if name in inits:
            inits[name].CopyFrom(tensor)
        else:  # a Constant node: the same position in the copy as in the view's model
            for a in graph.node[view.constant_nodes[name].index].attribute:
                if a.name == "value":
                    a.t.CopyFrom(tensor)


def apply_groups(
    model: onnx.ModelProto, view: GraphView, chosen: Sequence[tuple[DimGroup, Sequence[int]]]
) -> onnx.ModelProto:
    """A copy of ``model`` (the one ``view`` looks at) keeping units ``kept`` of each group; input untouched.

    Carried constants keep their names (so the exporter's weight map stays valid); every rewritten shape or
    split vector becomes a fresh initializer read only by the node it belongs to, so constants shared with other
    blocks are never edited.
    """
    out = copy_model(model)
    graph = out.graph
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    masks = _Masks()
    for group, kept in chosen:
        kept = sorted(kept)
        if len(kept) != group.count:
            masks.add(group, kept)
    arrays = masks.arrays(view)
    masks.fill_vectors()
    for idx, mask in masks.groups.items():
        for a in graph.node[idx].attribute:
            if a.name == "group":
                a.i = int(mask.sum())
    _set_splits(graph, masks, taken)
    _set_indices(graph, view, masks, taken)
    apply_part_edits(graph, view, masks.parts, taken)
    _set_constants(graph, view, arrays)
    for (idx, k), vec in masks.vectors.items():
        node = graph.node[idx]
        name = _pruned_name(node.input[k] or f"{node.name}_shape", taken)
        graph.initializer.append(numpy_helper.from_array(np.array(vec, dtype=np.int64), name))
        node.input[k] = name
    return out
