"""Coupled-dimension analysis on ONNX graphs (docs/architecture.md): follow one axis through the data flow.

A *unit axis* is an axis of a tensor whose index decomposes, row-major, into factors ``layout``, exactly one of
which is the unit factor (heads, neurons) of size ``count``; the others are carried along. Examples (MobileViT,
4 heads of 16, dim 64):

* qkv MatMul output, last axis (192):  ``((3, False), (4, True), (16, False))``  -- q/k/v x heads x head_dim
* attention scores ``[B, 4, N, N]``, axis 1:  ``((4, True),)``
* dynamo's folded key ``[-1 = B x 4, N, 16]``, axis 0:  ``((4, False), (4, True))``
* output-projection input, last axis (64):  ``((4, True), (16, False))``

:func:`trace` starts from one such axis and visits every node that reads or writes a tensor carrying it, in both
directions, with one rule per op type that maps the axis from any one of the node's tensors to all the others.
What it collects (a :class:`DimGroup`): every constant that carries the axis (weights, biases, per-head
constants such as Swin's relative-position bias: sliced), every shape vector position that holds its size
(Reshape/Expand targets, Split sizes: rewritten by position, never by value), and the contraction ops where the
axis ends (the next MatMul/Gemm's rows). Anything it cannot follow exactly (an op with no rule, a reduction or
Softmax over the axis, a Reshape that splits the unit factor, a shape read at run time from a pruned tensor, a
model input or output, a weight read outside the group) raises :class:`TraceError` with the reason, so callers
skip the whole unit and never cut half of it.

:func:`apply_groups` rewrites a copy of the model for chosen kept unit indices: ``y = x[..., kept, ...]`` on every
carried constant, shape vectors with ``count`` replaced by ``len(kept)``.
"""

from __future__ import annotations

import functools
import logging
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from passes._core.graph import GraphView, NodeRef

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Parts:
    """An axis factor made of consecutive parts of unequal sizes (LeViT's fused ``[q | k | v]`` per head, split
    16/16/32): a part is a layout that holds the unit (its own copy of it), or an ``int``, a run of entries that the
    unit does not touch and that stay whole. As a factor it is ``(size, Parts(...))``: it holds the unit, so a
    reshape never splits it."""

    parts: tuple[Layout | int, ...]


def part_size(part: Layout | int) -> int:
    """Entries of one part of a :class:`Parts` factor."""
    return part if isinstance(part, int) else layout_size(part)


Factor = tuple[int, "bool | Parts"]
Layout = tuple[Factor, ...]


class TraceError(Exception):
    """The axis cannot be followed safely; the message names the node and the reason. ``reached``: the tensors
    the walk had found to carry the axis when it stopped (part of the group it could not finish)."""

    reached: set[str] = set()


class _Widen(Exception):
    """A walk reached output ``part`` of Split node ``node`` (with ``dim``) after that Split had left it out of the
    group: the trace starts again with the part carried (:func:`trace`)."""

    def __init__(self, node: int, part: int, dim: Dim) -> None:
        super().__init__(node, part, dim)
        self.node, self.part, self.dim = node, part, dim


# ------------------------------------------------------------------------------------------------------ layouts
def canonical(layout: Sequence[Factor]) -> Layout:
    """Merge adjacent carried factors and drop carried factors of size 1 (unit factors are kept as they are)."""
    out: list[Factor] = []
    for size, unit in layout:
        if not unit and size == 1:
            continue
        if out and not unit and not out[-1][1]:
            out[-1] = (out[-1][0] * size, False)
        else:
            out.append((int(size), unit if isinstance(unit, Parts) else bool(unit)))
    return tuple(out)


def _factor_size(size: int, unit: bool | Parts, kept: int | None) -> int:
    if kept is None or not unit:
        return int(size)
    if isinstance(unit, Parts):
        return sum(p if isinstance(p, int) else layout_size(p, kept) for p in unit.parts)
    return kept


def layout_size(layout: Layout, kept: int | None = None) -> int:
    """Size of an axis with this layout; with ``kept``, the size after keeping ``kept`` units."""
    return int(np.prod([_factor_size(s, unit, kept) for s, unit in layout]))


def unit_share(layout: Layout) -> float:
    """The fraction of the axis that belongs to some unit (1 unless a :class:`Parts` holds untouched runs)."""
    return 1.0 - layout_size(layout, 0) / layout_size(layout)


def unit_count(layout: Layout) -> int:
    s, unit = next(f for f in layout if f[1])
    if isinstance(unit, Parts):
        return unit_count(next(p for p in unit.parts if not isinstance(p, int)))
    return s


def unit_copies(layout: Layout) -> int:
    """How many parts of the axis hold a copy of the unit (2 for LeViT's fused q and k; else 1)."""
    unit = next(u for _, u in layout if u)
    if isinstance(unit, Parts):
        return sum(unit_copies(p) for p in unit.parts if not isinstance(p, int))
    return 1


def unit_inner(layout: Layout) -> int:
    """Product of the factors after the unit factor (the head dimension of ``(heads, head_dim)``)."""
    i = next(k for k, (_, unit) in enumerate(layout) if unit)
    return int(np.prod([s for s, _ in layout[i + 1 :]])) if i + 1 < len(layout) else 1


def _positions(layout: Layout, units: Sequence[int], whole: bool) -> np.ndarray:
    """Row-major indices along an axis of ``layout`` of the entries of ``units`` (in that order); with ``whole``,
    also the entries of every :class:`Parts` run that no unit touches."""
    idx = np.zeros(1, dtype=np.int64)
    for size, unit in layout:
        if not unit:
            local = np.arange(size, dtype=np.int64)
        elif isinstance(unit, Parts):
            chunks, offset = [], 0
            for p in unit.parts:
                n = part_size(p)
                if not isinstance(p, int):
                    chunks.append(offset + _positions(p, units, whole))
                elif whole:
                    chunks.append(offset + np.arange(n, dtype=np.int64))
                offset += n
            local = np.concatenate(chunks) if chunks else np.zeros(0, dtype=np.int64)
        else:
            local = np.asarray(list(units), dtype=np.int64)
        idx = (idx[:, None] * size + local[None, :]).reshape(-1)
    return idx


@functools.lru_cache(maxsize=1 << 16)
def _positions_of(layout: Layout, units: tuple[int, ...], whole: bool) -> np.ndarray:
    """:func:`_positions`, read-only and remembered: importance asks for every unit of every tensor of a group, on
    each discovery of a model that many passes and latency attempts discover again."""
    out = _positions(layout, units, whole)
    out.setflags(write=False)
    return out


def kept_positions(layout: Layout, kept: Sequence[int]) -> np.ndarray:
    """Indices along an axis of this layout that remain when the units ``kept`` are kept (in order; read-only)."""
    return _positions_of(layout, tuple(int(u) for u in kept), True)


def unit_positions(layout: Layout, units: Sequence[int]) -> np.ndarray:
    """Indices along an axis of this layout that belong to ``units`` (what zeroing them zeroes; read-only)."""
    return _positions_of(layout, tuple(int(u) for u in units), False)


@dataclass(frozen=True)
class Dim:
    """The unit axis of one tensor: which axis, and how its index decomposes."""

    axis: int
    layout: Layout

    @property
    def size(self) -> int:
        return layout_size(self.layout)


# -------------------------------------------------------------------------------------------------------- edits
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
    """A depthwise Conv on the unit axis: its ``group`` attribute is the axis size."""

    node: int
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


# ------------------------------------------------------------------------------------------------------- tracer
_UNARY = {
    "Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Cast", "Identity", "Gelu", "Softplus",
    "Softsign", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Mish", "Reciprocal", "Floor",
    "Ceil", "Round", "Sin", "Cos", "Clip", "ThresholdedRelu", "Sign", "Not", "IsNaN", "IsInf",
}  # fmt: skip
_BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "PRelu",
}  # fmt: skip
ELEMENTWISE = _UNARY | _BROADCAST | {"Dropout"}


class _Tracer:
    def __init__(
        self, view: GraphView, seed: str, count: int, width: bool = False, sums: bool = False, channels: bool = False
    ) -> None:
        self.view = view
        self.width = width  # a transformer's embedding dim: LayerNorm statistics over it are allowed (inexact)
        self.sums = sums  # sums over the unit axis are allowed (see trace)
        self.channels = channels  # conv channels: a Concat along the axis lays its inputs side by side (see trace)
        self.group = DimGroup(seed=seed, count=count)
        self.queue: deque[str] = deque()
        self.none_claims: dict[str, str] = {}
        #: Split node -> its outputs known to carry the unit, with their Dims (grown by :class:`_Widen` restarts);
        #: an output left out is recorded in ``left_out`` as (node, part)
        self.carried_parts: dict[int, dict[int, Dim]] = {}
        self.left_out: dict[str, tuple[int, int]] = {}

    # bookkeeping ------------------------------------------------------------------------------------------
    def fail(self, ref: NodeRef | None, reason: str) -> TraceError:
        where = f"{ref.node.op_type} node {ref.name!r}: " if ref is not None else ""
        return TraceError(where + reason)

    def shape(self, ref: NodeRef, name: str) -> list[int]:
        s = self.view.shape(name)
        if s is None:
            raise self.fail(ref, f"the shape of {name!r} is not static")
        return s

    def assign(self, name: str, dim: Dim, ref: NodeRef | None) -> None:
        dim = Dim(dim.axis, canonical(dim.layout))
        if name in self.left_out:
            raise _Widen(*self.left_out[name], dim)
        if name in self.none_claims:
            raise self.fail(ref, f"{name!r} carries the unit axis but {self.none_claims[name]} does not pass it on")
        old = self.group.dims.get(name)
        if old is not None:
            if old != dim:
                raise self.fail(ref, f"{name!r} would carry the unit axis twice ({old} and {dim})")
            return
        if name in self.view.graph_inputs:
            raise self.fail(ref, f"the unit axis reaches the model input {name!r}")
        if name in self.view.graph_outputs:
            raise self.fail(ref, f"the unit axis reaches the model output {name!r}; outputs are never cut")
        shape = self.view.shape(name)
        if shape is None:
            raise self.fail(ref, f"the shape of {name!r} is not static")
        if shape[dim.axis] != dim.size:
            raise self.fail(ref, f"{name!r} axis {dim.axis} has size {shape[dim.axis]}, expected {dim.size}")
        self.group.dims[name] = dim
        if self.view.is_constant(name):
            value = self.view.constant(name)
            self.group.slices[name] = TensorSlice(name, dim.axis, dim.layout)
            self.group._shapes[name] = list(shape)
            self.group._float[name] = value is not None and np.issubdtype(value.dtype, np.floating)
        else:
            self.queue.append(name)

    def note_inexact(self, ref: NodeRef) -> None:
        why = f"{ref.node.op_type} {ref.name!r} normalises over the cut axis"
        if why not in self.group.inexact:
            self.group.inexact.append(why)

    def claim_none(self, name: str, ref: NodeRef) -> None:
        if name in self.group.dims:
            raise self.fail(ref, f"{name!r} carries the unit axis but this op does not pass it on")
        self.none_claims[name] = f"{ref.node.op_type} node {ref.name!r}"

    # the walk ---------------------------------------------------------------------------------------------
    def run(self, name: str, dim: Dim) -> DimGroup:
        try:
            return self._walk(name, dim)
        except TraceError as exc:
            exc.reached = set(self.group.dims)
            raise

    def _walk(self, name: str, dim: Dim) -> DimGroup:
        self.assign(name, dim, None)
        visited: set[int] = set()
        while self.queue:
            t = self.queue.popleft()
            refs = []
            if t in self.view.producer:
                refs.append(self.view.producer[t])
            refs.extend(self.view.consumer_nodes(t))
            for ref in refs:
                if ref.index in visited:
                    continue
                visited.add(ref.index)
                self.visit(ref, t)
        self.check()
        return self.group

    def visit(self, ref: NodeRef, known: str) -> None:
        op = ref.node.op_type
        if ref.node.domain not in ("", "ai.onnx"):
            raise self.fail(ref, f"no rule for custom-domain op {ref.node.domain}.{op}")
        rule = _RULES.get(op)
        if rule is None:
            if op in _UNARY or op == "Dropout":
                rule = _unary
            elif op in _BROADCAST:
                rule = _broadcast
            else:
                raise self.fail(ref, f"no rule for {op} on the unit axis; the unit is left whole")
        result = rule(self, ref, known, self.group.dims[known])
        self.group.nodes.add(ref.index)
        for name, dim in result.items():
            if not name:
                continue
            if dim is None:
                self.claim_none(name, ref)
            else:
                self.assign(name, dim, ref)

    def check(self) -> None:
        g = self.group
        for name in g.slices:
            users = self.view.consumer_nodes(name)
            outside = [r for r in users if r.index not in g.nodes]
            if outside or len(users) > 1:
                names = ", ".join(repr(r.name) for r in users)
                raise TraceError(f"constant {name!r} is shared (read by {names}); a shared weight is never cut")
        for ref in (self.view.nodes[i] for i in sorted(g.nodes)):
            if ref.node.op_type not in ("MatMul", "Gemm", "Conv"):
                continue
            carried = [g.dims[t] for t in (ref.node.output[0], *ref.node.input[:2]) if t in g.dims]
            g.flops += round(self.view.node_flops(ref) * (unit_share(carried[0].layout) if carried else 1.0))
            if ref.node.op_type == "Conv" and int(self.view.attrs(ref.node).get("group", 1)) != 1:
                continue  # a depthwise filter goes with its channel: neither makes nor consumes the unit
            for pos in (0, 1):
                w = ref.node.input[pos]
                if w in g.slices and len(g._shapes[w]) >= 2:
                    carried_out = ref.node.output[0] in g.dims
                    (g.sources if carried_out else g.sinks).append(w)


def trace(
    view: GraphView, name: str, dim: Dim, *, width: bool = False, sums: bool = False, channels: bool = False
) -> DimGroup:
    """Follow the unit axis ``dim`` of tensor ``name`` through the whole graph; raise :class:`TraceError`.

    ``width``: the axis is a transformer's embedding dimension, which LayerNorm normalises over. Such a group may
    pass LayerNormalization (its scale and bias are sliced) and the ReduceMean of a decomposed LayerNorm; after the
    cut the statistics are taken over the kept channels, as in a torch model built with the smaller width, so the
    group is not exact against zeroing and says why in ``inexact``.

    ``sums``: the group's oracle zeroes its units in every tensor that carries them (head channels, widths), so a
    reduction to which a 0 adds nothing (:data:`ZERO_NEUTRAL_REDUCE`) over the unit axis equals the reduction over
    the kept units: SwinV2's L2 norm of q and k over head_dim. (The heads' and neurons' oracles zero only the
    consuming weights, which such a reduction would not see.)

    ``channels``: the axis is a layer's output channels. A Concat along it puts the other inputs beside the unit
    (a :class:`Parts` layout: UPerNet's fused pyramid levels are separate groups, each cut on its own part of the
    next conv's input); otherwise a Concat of equal parts carries the unit in every input (Swin's patch merging of
    four strided views of one tensor)."""
    count = unit_count(canonical(dim.layout))
    carried: dict[int, dict[int, Dim]] = {}
    while True:
        tracer = _Tracer(view, name, count, width, sums, channels)
        tracer.carried_parts = {k: dict(v) for k, v in carried.items()}
        try:
            return tracer.run(name, dim)
        except _Widen as w:  # a part of a Split turned out to carry the unit too: again, with it carried
            carried.setdefault(w.node, {})[w.part] = w.dim


# --------------------------------------------------------------------------------------------------------- rules
Rule = Callable[[_Tracer, NodeRef, str, Dim], dict[str, Dim | None]]


def _norm(axis: int, rank: int) -> int:
    return axis + rank if axis < 0 else axis


def _unary(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    out: dict[str, Dim | None] = {n.input[0]: dim}
    for extra in n.input[1:]:  # Clip's min/max, Dropout's ratio: scalars
        if extra:
            s = tr.shape(ref, extra)
            if int(np.prod(s)) != 1:
                raise tr.fail(ref, f"non-scalar second input {extra!r}")
            out[extra] = None
    for o in n.output:
        if o:
            out[o] = dim
    return out


def _broadcast(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    y = n.output[0]
    ry = len(tr.shape(ref, y))
    rk = len(tr.shape(ref, known))
    y_axis = dim.axis + (ry - rk)
    out: dict[str, Dim | None] = {y: Dim(y_axis, dim.layout)}
    for i in n.input:
        if not i:
            continue
        s = tr.shape(ref, i)
        ax = y_axis - (ry - len(s))
        if ax < 0 or s[ax] == 1:
            out[i] = None
        else:
            out[i] = Dim(ax, dim.layout)
    return out


def _softmax(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    r = len(tr.shape(ref, known))
    default = -1 if tr.view.opset >= 13 else 1
    axis = _norm(int(tr.view.attrs(ref.node).get("axis", default)), r)
    if tr.view.opset < 13 and axis != r - 1:
        raise tr.fail(ref, "opset < 13 Softmax flattens the axes from `axis` on")
    if axis == dim.axis:
        raise tr.fail(ref, "normalises over the unit axis")
    return {ref.node.input[0]: dim, ref.node.output[0]: dim}


def _transpose(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    r = len(tr.shape(ref, n.input[0]))
    perm = list(tr.view.attrs(n).get("perm", list(range(r))[::-1]))
    if known == n.input[0]:
        return {n.input[0]: dim, n.output[0]: Dim(perm.index(dim.axis), dim.layout)}
    return {n.output[0]: dim, n.input[0]: Dim(perm[dim.axis], dim.layout)}


def map_reshape(src: Sequence[int], axis: int, layout: Layout, dst: Sequence[int]) -> Dim:
    """Where the unit axis ``axis`` (with ``layout``) of a tensor of shape ``src`` lands after reshaping to ``dst``.

    Both shapes are cut into the same row-major factors; a destination axis may merge several source factors or
    split a carried factor, never the unit factor. Raises :class:`TraceError` otherwise.
    """
    atoms: list[Factor] = []
    for j, s in enumerate(src):
        if j == axis:
            atoms.extend(layout)
        elif s != 1:
            atoms.append((int(s), False))
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


def _shape_vector(tr: _Tracer, ref: NodeRef, k: int) -> tuple[tuple[int, ...], bool]:
    name = ref.node.input[k]
    value = tr.view.value(name)
    if value is None:
        raise tr.fail(ref, f"its shape input {name!r} is computed at run time from dynamic sizes; cannot rewrite it")
    return tuple(int(v) for v in np.asarray(value).reshape(-1)), not tr.view.is_constant(name)


def _reshape(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    x, y = n.input[0], n.output[0]
    sx, sy = tr.shape(ref, x), tr.shape(ref, y)
    try:
        if known == x:
            dx, dy = dim, map_reshape(sx, dim.axis, dim.layout, sy)
        else:
            dy, dx = dim, map_reshape(sy, dim.axis, dim.layout, sx)
    except TraceError as exc:
        raise tr.fail(ref, str(exc)) from None
    out: dict[str, Dim | None] = {x: dx, y: dy}
    if n.op_type == "Flatten":
        return out
    out[n.input[1]] = None
    value, folded = _shape_vector(tr, ref, 1)
    copies = [] if int(tr.view.attrs(n).get("allowzero", 0)) else [p for p, v in enumerate(value) if v == 0]
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


def _flatten(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    return _reshape(tr, ref, known, dim)


def _axes(tr: _Tracer, ref: NodeRef, rank: int) -> list[int] | None:
    n = ref.node
    if tr.view.opset >= 13 and n.op_type in ("Squeeze", "Unsqueeze"):
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
    return sorted(_norm(a, rank) for a in axes)


def _squeeze(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
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


def _unsqueeze(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
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


def _split(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    x = n.input[0]
    r = len(tr.shape(ref, x))
    attrs = tr.view.attrs(n)
    axis = _norm(int(attrs.get("axis", 0)), r)
    outs = [o for o in n.output]
    out: dict[str, Dim | None] = {}
    from_input = len(n.input) > 1 and bool(n.input[1])
    if from_input:
        out[n.input[1]] = None
    if dim.axis != axis:
        out[x] = dim
        out.update({o: dim for o in outs if o})
        return out
    vector = tr.view.value(n.input[1]) if from_input else attrs.get("split")
    if all(outs):
        sizes = [tr.shape(ref, o)[axis] for o in outs]
    elif vector is not None:
        sizes = [int(v) for v in np.asarray(vector).reshape(-1)]
    else:
        raise tr.fail(ref, "splits the unit axis into parts of unknown sizes")
    edit = from_input or attrs.get("split") is not None
    if known == x and len(dim.layout) == 1 and isinstance(dim.layout[0][1], Parts):
        return _split_parts(tr, ref, known, dim, sizes, (edit, from_input), out)
    if known != x:
        carry = dict(tr.carried_parts.get(ref.index, {}))
        carry.update({i: tr.group.dims[o] for i, o in enumerate(outs) if o in tr.group.dims})
        if len(carry) < len(outs) and not edit and len(set(sizes)) == 1:
            carry = {i: dim for i in range(len(outs))}  # num_outputs: the sizes cannot differ after the cut
        if len(set(sizes)) != 1 or len(carry) < len(outs) or any(d != dim for d in carry.values()):
            return _split_parts(tr, ref, known, dim, sizes, (edit, from_input), out, carry)
    elif len(set(sizes)) != 1:
        return _split_parts(tr, ref, known, dim, sizes, (edit, from_input), out)
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


def _split_parts(
    tr: _Tracer,
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


def _slice_ranges(view: GraphView, node: onnx.NodeProto, rank: int) -> list[tuple[int, int, int, int]] | None:
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
        a = _norm(int(a), rank)
        lo, hi, _ = slice(int(b), int(e)).indices(shape[a])
        out.append((k, a, lo, max(lo, hi)))
    return out


def _slice(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Slice on other axes passes the unit axis. Along it (the halves of a packed gated MLP, LeViT's q/k/v taken by
    slicing), each slice must take whole parts of a :class:`Parts` layout: coming from a slice's output, the input's
    layout is built from every constant step-1 slice of that axis that reads it (ranges of the output's size carry
    its layout, the rest stay whole, as in :func:`_split_parts`)."""
    n = ref.node
    x, y = n.input[0], n.output[0]
    r = len(tr.shape(ref, x))
    if tr.view.opset < 10:
        axes = tr.view.attrs(n).get("axes") or list(range(len(tr.view.attrs(n)["starts"])))  # type: ignore[arg-type]
    elif len(n.input) > 3 and n.input[3]:
        v = tr.view.value(n.input[3])
        if v is None:
            raise tr.fail(ref, "slice axes computed at run time")
        axes = v.reshape(-1).tolist()
    else:
        v = tr.view.value(n.input[1])
        if v is None:
            raise tr.fail(ref, "slice starts computed at run time")
        axes = list(range(v.size))
    out: dict[str, Dim | None] = {i: None for i in n.input[1:] if i}
    if dim.axis not in [_norm(int(a), r) for a in axes]:  # type: ignore[union-attr]
        out.update({x: dim, y: dim})
        return out
    ranges = _slice_ranges(tr.view, n, r)
    if ranges is None:
        raise tr.fail(ref, "slices along the unit axis with bounds computed at run time, a step, or opset < 10")
    pos, _, lo, hi = next(e for e in ranges if e[1] == dim.axis)
    if known == y:
        cuts = []
        for sib, _ in tr.view.consumers.get(x, []):
            if sib.node.op_type != "Slice" or sib.node.input[0] != x:
                continue
            sib_ranges = _slice_ranges(tr.view, sib.node, r) or []
            cuts += [(b, e) for _, a, b, e in sib_ranges if a == dim.axis]
        cuts = sorted(set(cuts))
        if any(b < e0 for (_, e0), (b, _) in zip(cuts, cuts[1:])):
            raise tr.fail(ref, f"slices of the unit axis overlap ({cuts})")
        parts: list[Layout | int] = []
        at = 0
        for b, e in cuts:
            if b > at:
                parts.append(b - at)
            parts.append(dim.layout if e - b == hi - lo else e - b)
            at = e
        if at < tr.shape(ref, x)[dim.axis]:
            parts.append(tr.shape(ref, x)[dim.axis] - at)
        xd = Dim(dim.axis, ((sum(part_size(p) for p in parts), Parts(tuple(parts))),))
        out[x] = xd
    else:
        xd = dim
    if len(xd.layout) != 1 or not isinstance(xd.layout[0][1], Parts):
        raise tr.fail(ref, "slices along the unit axis")
    offset, part = 0, None
    for p in xd.layout[0][1].parts:
        if offset == lo and offset + part_size(p) == hi:
            part = p
        offset += part_size(p)
    if part is None:
        raise tr.fail(ref, f"slices [{lo}, {hi}) of the unit axis across its parts")
    out[y] = None if isinstance(part, int) else Dim(dim.axis, part)
    starts = tuple(int(v) for v in tr.view.value(n.input[1]).reshape(-1))  # type: ignore[union-attr]
    ends = tuple(int(v) for v in tr.view.value(n.input[2]).reshape(-1))  # type: ignore[union-attr]
    tr.group.slice_edits.append(SliceEdit(ref.index, pos, xd.layout, lo, hi, starts, ends))
    return out


def _gather(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    data, idx, y = n.input[0], n.input[1], n.output[0]
    r = len(tr.shape(ref, data))
    ri = len(tr.shape(ref, idx))
    axis = _norm(int(tr.view.attrs(n).get("axis", 0)), r)
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


def _concat(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    r = len(tr.shape(ref, known))
    axis = _norm(int(tr.view.attrs(n)["axis"]), r)  # type: ignore[arg-type]
    inputs = [i for i in n.input if i]
    if axis == dim.axis and tr.channels:
        return _concat_parts(tr, ref, known, dim, inputs)
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


def _concat_parts(tr: _Tracer, ref: NodeRef, known: str, dim: Dim, inputs: list[str]) -> dict[str, Dim | None]:
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


def _pool(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Pooling (local or global) works per channel: the channel and batch axes pass, a spatial axis does not."""
    if dim.axis > 1:
        raise tr.fail(ref, "pools over the unit axis")
    out: dict[str, Dim | None] = {ref.node.input[0]: dim, ref.node.output[0]: dim}
    out.update({o: None for o in ref.node.output[1:] if o})  # MaxPool's indices
    return out


def _resize(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
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
        value, folded = _shape_vector(tr, ref, 3)
        r = len(tr.shape(ref, x))
        axes = [_norm(int(a), r) for a in tr.view.attrs(n).get("axes", range(r))]  # type: ignore[union-attr]
        if dim.axis in axes:  # opset 18's ``axes``: sizes holds only those axes
            tr.group.shape_edits.append(ShapeEdit(ref.index, 3, axes.index(dim.axis), dim.layout, value, folded))
    return out


def _matmul(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    a, b, y = n.input[0], n.input[1], n.output[0]
    sa, sb, sy = tr.shape(ref, a), tr.shape(ref, b), tr.shape(ref, y)
    ra, rb, ry = len(sa), len(sb), len(sy)
    if ra < 2 or rb < 2:
        raise tr.fail(ref, "MatMul with a vector operand")
    out: dict[str, Dim | None] = {a: None, b: None, y: None}
    L = dim.layout

    def batch(y_axis: int) -> None:
        out[y] = Dim(y_axis, L)
        for t, s in ((a, sa), (b, sb)):
            ax = y_axis - (ry - len(s))
            out[t] = Dim(ax, L) if ax >= 0 and s[ax] != 1 else None

    if a == b:
        raise tr.fail(ref, "MatMul of a tensor with itself")
    if known == a:
        if dim.axis == ra - 1:
            out.update({a: dim, b: Dim(rb - 2, L)})
        elif dim.axis == ra - 2:
            out.update({a: dim, y: Dim(ry - 2, L)})
        else:
            batch(dim.axis + ry - ra)
    elif known == b:
        if dim.axis == rb - 2:
            out.update({b: dim, a: Dim(ra - 1, L)})
        elif dim.axis == rb - 1:
            out.update({b: dim, y: Dim(ry - 1, L)})
        else:
            batch(dim.axis + ry - rb)
    else:
        if dim.axis == ry - 1:
            out.update({y: dim, b: Dim(rb - 1, L)})
        elif dim.axis == ry - 2:
            out.update({y: dim, a: Dim(ra - 2, L)})
        else:
            batch(dim.axis)
    return out


def _gemm(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    attrs = tr.view.attrs(n)
    ta, tb = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))
    a, b, y = n.input[0], n.input[1], n.output[0]
    c = n.input[2] if len(n.input) > 2 and n.input[2] else None
    a_m, a_k = (1, 0) if ta else (0, 1)
    b_k, b_n = (1, 0) if tb else (0, 1)
    L = dim.layout
    out: dict[str, Dim | None] = {a: None, b: None, y: None}

    def with_y(y_axis: int) -> None:
        out[y] = Dim(y_axis, L)
        if c is not None:
            sc = tr.shape(ref, c)
            ax = y_axis - (2 - len(sc))
            out[c] = Dim(ax, L) if ax >= 0 and sc[ax] != 1 else None

    if c is not None:
        out[c] = None
    if known == a:
        out[a] = dim
        if dim.axis == a_k:
            out[b] = Dim(b_k, L)
        else:
            with_y(0)
    elif known == b:
        out[b] = dim
        if dim.axis == b_k:
            out[a] = Dim(a_k, L)
        else:
            with_y(1)
    elif known == y:
        if dim.axis == 0:
            out[a] = Dim(a_m, L)
        else:
            out[b] = Dim(b_n, L)
        with_y(dim.axis)
    else:  # the bias C carries it
        sc = tr.shape(ref, c)  # type: ignore[arg-type]
        y_axis = dim.axis + (2 - len(sc))
        return _gemm(tr, ref, y, Dim(y_axis, L)) | {c: dim}  # type: ignore[dict-item]
    return out


def _expand(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    x, y = n.input[0], n.output[0]
    sx, sy = tr.shape(ref, x), tr.shape(ref, y)
    shift = len(sy) - len(sx)
    value, folded = _shape_vector(tr, ref, 1)
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


def _tile(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Tile (constant repeats) passes the unit axis when that axis is repeated once (XCiT's positional encoding,
    tiled over the batch in the legacy export)."""
    n = ref.node
    repeats = tr.view.value(n.input[1])
    if repeats is None:
        raise tr.fail(ref, "tile repeats computed at run time")
    if int(np.asarray(repeats).reshape(-1)[dim.axis]) != 1:
        raise tr.fail(ref, "tiles the unit axis")
    return {n.input[0]: dim, n.output[0]: dim, n.input[1]: None}


def _shape(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Shape`` of a pruned tensor: allowed only when what is read from it excludes the unit axis."""
    n = ref.node
    r = len(tr.shape(ref, known))
    attrs = tr.view.attrs(n)
    start = _norm(int(attrs.get("start", 0)), r)
    pos = dim.axis - start  # position of the unit axis inside the shape vector
    for user in tr.view.consumer_nodes(n.output[0]):
        picked: list[int] | None = None
        if user.node.op_type == "Gather" and int(tr.view.attrs(user.node).get("axis", 0)) == 0:
            v = tr.view.value(user.node.input[1])
            if v is not None:
                picked = [int(i) % max(r - start, 1) for i in np.asarray(v).reshape(-1)]
        elif user.node.op_type == "Slice" and user.node.input[0] == n.output[0]:
            picked = _slice_positions(tr.view, user.node, r - start)
        if picked is None:
            raise tr.fail(ref, f"the size of the unit axis is read at run time by {user.node.op_type} {user.name!r}")
        if pos in picked:
            raise tr.fail(user, "reads the size of the unit axis at run time; it would keep the old count")
    return {known: dim, n.output[0]: None}


def _slice_positions(view: GraphView, node: onnx.NodeProto, length: int) -> list[int] | None:
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


def _pad(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
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
        axes = [_norm(int(a), r) for a in np.asarray(v).reshape(-1)]
    k = len(axes)
    if dim.axis in axes and (pads[axes.index(dim.axis)] or pads[k + axes.index(dim.axis)]):
        raise tr.fail(ref, "pads the unit axis")
    out: dict[str, Dim | None] = {i: None for i in n.input[1:] if i}
    out.update({n.input[0]: dim, n.output[0]: dim})
    return out


def _layernorm(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    r = len(tr.shape(ref, n.input[0]))
    axis = _norm(int(tr.view.attrs(n).get("axis", -1)), r)
    if known != n.input[0] and known != n.output[0]:
        raise tr.fail(ref, "the unit axis is in the normalisation scale or bias")
    if any(o for o in n.output[1:] if tr.view.consumers.get(o)):
        raise tr.fail(ref, "uses the saved mean/inverse std outputs")
    out: dict[str, Dim | None] = {n.input[0]: dim, n.output[0]: dim}
    if dim.axis >= axis:
        if not tr.width:
            raise tr.fail(ref, "normalises over the unit axis")
        if axis != r - 1 or dim.axis != axis:
            raise tr.fail(ref, "normalises over the unit axis together with other axes")
        for i in n.input[1:]:
            if i and not tr.view.is_constant(i):
                raise tr.fail(ref, "a LayerNormalization scale or bias computed at run time")
            if i:
                out[i] = Dim(len(tr.shape(ref, i)) - 1, dim.layout)  # [C] (or [.., C]) scale and bias
        tr.note_inexact(ref)
        return out
    out.update({i: None for i in n.input[1:] if i})
    return out


#: reductions to which an entry of 0 adds nothing: over the unit axis they are exact against the zeroing oracle
ZERO_NEUTRAL_REDUCE = {"ReduceSum", "ReduceL1", "ReduceL2", "ReduceSumSquare"}


def _reduce(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    n = ref.node
    x, y = n.input[0], n.output[0]
    r = len(tr.shape(ref, x))
    attrs = tr.view.attrs(n)
    keepdims = int(attrs.get("keepdims", 1))
    if "axes" in attrs:
        axes = [_norm(int(a), r) for a in attrs["axes"]]  # type: ignore[union-attr]
    elif len(n.input) > 1 and n.input[1]:
        v = tr.view.value(n.input[1])
        if v is None:
            raise tr.fail(ref, "reduction axes computed at run time")
        axes = [_norm(int(a), r) for a in np.asarray(v).reshape(-1)]
    else:
        axes = list(range(r))
    keep = [i for i in range(r) if keepdims or i not in axes]  # output axis j <- input axis keep[j]
    out: dict[str, Dim | None] = {i: None for i in n.input[1:] if i}
    if known == x:
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
    else:
        out.update({y: dim, x: Dim(keep[dim.axis], dim.layout)})
    return out


def _conv(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y[N, M, ...] = conv(X[N, C, ...], W[M, C/g, k...]) + B[M]`` on the channel axis (axis 1 of X and Y).

    ``group == 1``: X's channels are contracted with W's axis 1 (the unit ends there); Y's channels come from W's
    axis 0 and B. Depthwise (``group == C == M``): the channel passes through with W's axis 0 and B, and ``group``
    follows the kept count. Other groupings, and the unit axis anywhere but the channels, are not followed.
    """
    n = ref.node
    x, w, y = n.input[0], n.input[1], n.output[0]
    b = n.input[2] if len(n.input) > 2 and n.input[2] else None
    group = int(tr.view.attrs(n).get("group", 1))
    sx, sw = tr.shape(ref, x), tr.shape(ref, w)
    L = dim.layout
    out: dict[str, Dim | None] = {x: None, w: None, y: None}
    if b is not None:
        out[b] = None
    if not tr.view.is_constant(w) or (b is not None and not tr.view.is_constant(b)):
        raise tr.fail(ref, "a Conv whose weight is computed at run time")
    if known in (x, y) and dim.axis != 1:
        raise tr.fail(ref, "the unit axis is a spatial or batch axis of a Conv")
    if known == w and dim.axis not in (0, 1):
        raise tr.fail(ref, "the unit axis is a kernel axis of a Conv")
    if group == 1:
        if known == x or (known == w and dim.axis == 1):
            out.update({x: Dim(1, L), w: Dim(1, L)})
        else:
            out.update({y: Dim(1, L), w: Dim(0, L)})
            if b is not None:
                out[b] = Dim(0, L)
        return out
    if group == sx[1] == sw[0] and sw[1] == 1:
        out.update({x: Dim(1, L), y: Dim(1, L), w: Dim(0, L)})
        if b is not None:
            out[b] = Dim(0, L)
        tr.group.group_edits.append(GroupEdit(ref.index, canonical(L)))
        return out
    raise tr.fail(ref, f"a grouped Conv (group {group}) that is not depthwise")


def _batchnorm(tr: _Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """BatchNormalization (InstanceNormalization): the channel axis (1) passes through; scale, bias, mean and
    variance (scale and bias) go with it. Instance statistics are taken per channel over the spatial axes."""
    n = ref.node
    x, y = n.input[0], n.output[0]
    params = [i for i in n.input[1 : 5 if n.op_type == "BatchNormalization" else 3] if i]
    if any(o for o in n.output[1:] if tr.view.consumers.get(o)):
        raise tr.fail(ref, "uses the running-statistics outputs (training mode)")
    if known in params:
        if dim.axis != 0:
            raise tr.fail(ref, "a BatchNormalization parameter that is not a vector")
        dim = Dim(1, dim.layout)
    elif dim.axis != 1:
        raise tr.fail(ref, "normalises with statistics taken over the unit axis")
    out: dict[str, Dim | None] = {x: dim, y: dim}
    for p in params:
        if not tr.view.is_constant(p):
            raise tr.fail(ref, "BatchNormalization parameters computed at run time")
        out[p] = Dim(0, dim.layout)
    return out


_RULES: dict[str, Rule] = {
    "Conv": _conv,
    "BatchNormalization": _batchnorm,
    "InstanceNormalization": _batchnorm,
    "MaxPool": _pool,
    "AveragePool": _pool,
    "LpPool": _pool,
    "GlobalAveragePool": _pool,
    "GlobalMaxPool": _pool,
    "GlobalLpPool": _pool,
    "Resize": _resize,
    "Upsample": _resize,
    "ReduceL2": _reduce,
    "ReduceL1": _reduce,
    "ReduceSumSquare": _reduce,
    "ReduceProd": _reduce,
    "ReduceLogSumExp": _reduce,
    "Softmax": _softmax,
    "LogSoftmax": _softmax,
    "Transpose": _transpose,
    "Reshape": _reshape,
    "Flatten": _flatten,
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Split": _split,
    "Slice": _slice,
    "Tile": _tile,
    "Gather": _gather,
    "Concat": _concat,
    "MatMul": _matmul,
    "Gemm": _gemm,
    "Expand": _expand,
    "Shape": _shape,
    "LayerNormalization": _layernorm,
    "Pad": _pad,
    "ReduceMean": _reduce,
    "ReduceSum": _reduce,
    "ReduceMax": _reduce,
    "ReduceMin": _reduce,
}


# -------------------------------------------------------------------------------------------------------- apply
def _unique(base: str, taken: set[str]) -> str:
    k = 0
    name = f"{base}_pruned"
    while name in taken:
        k += 1
        name = f"{base}_pruned{k}"
    taken.add(name)
    return name


def _keep(masks: dict, key: object, layout: Layout, kept: list[int]) -> None:
    """AND the keep mask of ``kept`` units over an axis of ``layout`` into ``masks[key]``."""
    mask = np.zeros(layout_size(layout), dtype=bool)
    mask[kept_positions(layout, kept)] = True
    masks[key] = masks[key] & mask if key in masks else mask


def apply_groups(
    model: onnx.ModelProto, view: GraphView, chosen: Sequence[tuple[DimGroup, Sequence[int]]]
) -> onnx.ModelProto:
    """A copy of ``model`` (the one ``view`` looks at) keeping units ``kept`` of each group; input untouched.

    Carried constants keep their names (so the exporter's weight map stays valid); every rewritten shape or
    split vector becomes a fresh initializer read only by the node it belongs to, so constants shared with other
    blocks are never edited.
    """
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    inits = {t.name: t for t in graph.initializer}
    consts = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    taken = {t.name for t in graph.initializer} | {o for n in graph.node for o in n.output}
    # several groups may cut one axis (LeViT's q/k and v channels share the fused projection's axis), one tensor
    # on two axes (Swin's patch merging: the rows belong to one stage's width, the columns to the next), or one
    # shape vector, split or group: each is composed as the AND of every group's keep mask over the original axis
    tensors: dict[tuple[str, int], np.ndarray] = {}
    shapes: dict[tuple[int, int, int], np.ndarray] = {}
    groups: dict[int, np.ndarray] = {}
    splits: dict[tuple[int, int], np.ndarray] = {}
    vectors: dict[tuple[int, int], list[int]] = {}
    split_nodes: dict[int, tuple[bool, int]] = {}  # node -> (sizes from its input, number of outputs)
    sliced: dict[tuple[int, int], np.ndarray] = {}
    slice_nodes: dict[tuple[int, int], SliceEdit] = {}
    for group, kept in chosen:
        kept = sorted(kept)
        if len(kept) == group.count:
            continue
        for ts in group.slices.values():
            _keep(tensors, (ts.tensor, ts.axis), ts.layout, kept)
        for e in group.shape_edits:
            _keep(shapes, (e.node, e.input, e.position), e.layout, kept)
            vectors.setdefault((e.node, e.input), list(e.value))
        for g in group.group_edits:
            _keep(groups, g.node, g.layout, kept)
        for sp in group.split_edits:
            split_nodes[sp.node] = (sp.from_input, len(sp.layouts))
            for j, lay in enumerate(sp.layouts):
                _keep(splits, (sp.node, j), lay, kept)
        for se in group.slice_edits:
            slice_nodes[(se.node, se.position)] = se
            _keep(sliced, (se.node, se.position), se.layout, kept)
    arrays: dict[str, np.ndarray] = {}
    for (name, axis), mask in tensors.items():
        arr = arrays.get(name)
        arr = view.constant(name) if arr is None else arr
        assert arr is not None
        arrays[name] = np.ascontiguousarray(np.compress(mask, arr, axis=axis))
    for (idx, k, pos), mask in shapes.items():
        vectors[(idx, k)][pos] = int(mask.sum())
    for (idx, pos), mask in sliced.items():  # the slice keeps what remains of its range
        se = slice_nodes[(idx, pos)]
        vectors.setdefault((idx, 1), list(se.starts))[pos] = int(mask[: se.start].sum())
        vectors.setdefault((idx, 2), list(se.ends))[pos] = int(mask[: se.end].sum())
    for idx, mask in groups.items():
        for a in graph.node[idx].attribute:
            if a.name == "group":
                a.i = int(mask.sum())
    for idx, (from_input, n) in split_nodes.items():
        node = graph.node[idx]
        sizes = [int(splits[(idx, j)].sum()) for j in range(n)]
        if from_input:
            name = _unique(node.input[1], taken)
            graph.initializer.append(numpy_helper.from_array(np.array(sizes, dtype=np.int64), name))
            node.input[1] = name
        else:
            keep_attrs = [a for a in node.attribute if a.name != "split"]
            del node.attribute[:]
            node.attribute.extend(keep_attrs + [helper.make_attribute("split", sizes)])
    for name, arr in arrays.items():
        tensor = numpy_helper.from_array(arr, name)
        if name in inits:
            inits[name].CopyFrom(tensor)
        else:
            for a in consts[name].attribute:
                if a.name == "value":
                    a.t.CopyFrom(tensor)
    for (idx, k), vec in vectors.items():
        node = graph.node[idx]
        name = _unique(node.input[k] or f"{node.name}_shape", taken)
        graph.initializer.append(numpy_helper.from_array(np.array(vec, dtype=np.int64), name))
        node.input[k] = name
    return out
