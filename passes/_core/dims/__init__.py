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

The package, bottom up:

* :mod:`~passes._core.dims.layout`: factors, :class:`Parts`, :class:`Dim`, the positions of units along an axis;
* :mod:`~passes._core.dims.group`: :class:`DimGroup` and the edits it collects;
* :mod:`~passes._core.dims.registry`: the rule contract (:class:`Rule`) and :func:`register`;
* :mod:`~passes._core.dims.tracer`: the walk (:func:`trace`);
* :mod:`~passes._core.dims.rules`: the op rules, one module per family;
* :mod:`~passes._core.dims.apply`: :func:`apply_groups`.
"""

from passes._core.dims import rules
from passes._core.dims.apply import apply_groups
from passes._core.dims.group import DimGroup, GroupEdit, IndexEdit, ShapeEdit, SliceEdit, SplitEdit, TensorSlice
from passes._core.dims.layout import (
    Dim,
    Factor,
    Layout,
    Parts,
    canonical,
    kept_positions,
    layout_size,
    norm_axis,
    part_size,
    unit_copies,
    unit_count,
    unit_inner,
    unit_positions,
    unit_share,
)
from passes._core.dims.registry import Rule, lookup, register, registered_ops, registrations
from passes._core.dims.rules.elementwise import ELEMENTWISE
from passes._core.dims.rules.layout import map_reshape
from passes._core.dims.rules.reduction import ZERO_NEUTRAL_REDUCE
from passes._core.dims.tracer import TraceError, Tracer, trace

__all__ = [
    "ELEMENTWISE",
    "ZERO_NEUTRAL_REDUCE",
    "Dim",
    "DimGroup",
    "Factor",
    "GroupEdit",
    "IndexEdit",
    "Layout",
    "Parts",
    "Rule",
    "ShapeEdit",
    "SliceEdit",
    "SplitEdit",
    "TensorSlice",
    "TraceError",
    "Tracer",
    "apply_groups",
    "canonical",
    "kept_positions",
    "layout_size",
    "lookup",
    "map_reshape",
    "norm_axis",
    "part_size",
    "register",
    "registered_ops",
    "registrations",
    "rules",
    "trace",
    "unit_copies",
    "unit_count",
    "unit_inner",
    "unit_positions",
    "unit_share",
]
