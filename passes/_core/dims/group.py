"""What a trace collects (:class:`DimGroup`): the tensors that carry one unit axis, and the edits that remove units.

Each edit names what :func:`passes._core.dims.apply.apply_groups` rewrites for kept units ``K`` (``|K| = k``):

* :class:`TensorSlice`: ``W' = W[..., kept_positions(layout, K), ...]`` on one axis of a constant;
* :class:`ShapeEdit`: one entry of a shape vector becomes ``layout_size(layout, k)``;
* :class:`SplitEdit`: a Split's sizes become ``layout_size(layout_j, k)`` per output ``j``;
* :class:`SliceEdit`: a Slice's ``[start, end)`` becomes the kept entries before ``start`` and before ``end``;
* :class:`GroupEdit`: a depthwise (or channel-multiplier) Conv's ``group`` becomes ``layout_size(layout, k)``;
* :class:`IndexEdit`: a constant index tensor whose entries are positions along the unit axis (ScatterND's indices
  on that axis) keeps the entries whose position is kept, each renumbered to its place among the kept positions.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from passes._core.dims.layout import Dim, Layout, unit_share


@dataclass(frozen=True)
class TensorSlice:
    """A constant (initializer or Constant node output) that carries the unit axis: keep its slices."""

    tensor: str
    axis: int
    layout: Layout


@dataclass(frozen=True)
class ShapeEdit:
    """Position ``position`` of the shape vector read by input ``input`` of node ``node`` holds the axis size.

    ``value`` is the whole original vector (a constant, or computed from static shapes when ``folded``): the
    rewrite puts ``layout_size(layout, kept)`` at ``position`` into a fresh constant for that node input only.
    """

    node: int
    input: int
    position: int
    layout: Layout
    value: tuple[int, ...]
    folded: bool


@dataclass(frozen=True)
class SplitEdit:
    """A Split along the unit axis whose sizes (input 1, or attribute ``split``) follow the kept units."""

    node: int
    layouts: tuple[Layout, ...]
    from_input: bool


@dataclass(frozen=True)
class SliceEdit:
    """A Slice (opset >= 10) of ``[start, end)`` along the unit axis of its input, whose layout there is ``layout``:
    entry ``position`` of its starts and ends vectors (inputs 1 and 2, ``starts`` and ``ends``) follows the kept
    units."""

    node: int
    position: int
    layout: Layout
    start: int
    end: int
    starts: tuple[int, ...]
    ends: tuple[int, ...]


@dataclass(frozen=True)
class GroupEdit:
    """A Conv whose groups follow the unit axis (depthwise: one group per channel; a channel multiplier: one group
    per input channel): its ``group`` attribute is ``layout_size(layout, k)``."""

    node: int
    layout: Layout


@dataclass(frozen=True)
class IndexEdit:
    """Input ``input`` of node ``node`` is a constant ``[n, q]`` index tensor whose column ``column`` holds positions
    along the unit axis, whose layout is ``layout``. With keep mask ``m`` over that axis, row ``j`` stays iff
    ``m[idx[j, column]]``, and its position becomes ``sum(m[:idx[j, column]])``."""

    node: int
    input: int
    column: int
    layout: Layout


@dataclass
class DimGroup:
    """Everything that carries one unit axis: tensors, nodes, and the edits that remove units."""

    seed: str
    count: int
    dims: dict[str, Dim] = field(default_factory=dict)
    nodes: set[int] = field(default_factory=set)
    slices: dict[str, TensorSlice] = field(default_factory=dict)
    shape_edits: list[ShapeEdit] = field(default_factory=list)
    split_edits: list[SplitEdit] = field(default_factory=list)
    slice_edits: list[SliceEdit] = field(default_factory=list)
    group_edits: list[GroupEdit] = field(default_factory=list)
    index_edits: list[IndexEdit] = field(default_factory=list)
    #: entries of shape vectors computed at run time, written where the vector is built (:mod:`.symbolic`)
    part_edits: list[Any] = field(default_factory=list)
    #: Shape nodes that read the unit axis's size at run time (a file with symbolic sizes; see :mod:`.symbolic`)
    unit_reads: list[int] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)  # weights whose OUTPUT axis is the unit axis
    sinks: list[str] = field(default_factory=list)  # weights whose CONTRACTION axis is the unit axis
    #: FLOPs of the contraction ops in the group that scale with the unit count (the unit's share of the axis)
    flops: int = 0
    #: why cutting this group is not exact against zeroing (a width group normalised by LayerNorm); empty: exact
    inexact: list[str] = field(default_factory=list)

    @property
    def params(self) -> int:
        """Elements of the float constants the group slices that scale with the unit count (the unit's share of each
        sliced axis: all of it, unless a :class:`Parts` holds untouched runs)."""
        return round(
            sum(
                int(np.prod(self._shapes[t])) * unit_share(ts.layout)
                for t, ts in self.slices.items()
                if self._float.get(t, False)
            )
        )

    _shapes: dict[str, list[int]] = field(default_factory=dict, repr=False)
    _float: dict[str, bool] = field(default_factory=dict, repr=False)
