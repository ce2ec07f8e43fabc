"""Indexing rules (passes/_core/dims/rules/indexing.py): GatherND and ScatterND pass a unit axis their index tuples
do not address; ScatterND writes one part of the unit axis (torchvision Swin-V2's zeroed k bias) with its index
rows cut and renumbered; the rest is refused with the reason."""

from __future__ import annotations

import numpy as np
from _helpers_rules import HIDDEN, check_cut, initializer, parse, refusal, sandwich, trace_from

from passes._core.dims import Dim, Parts

OPS = ["GatherND", "ScatterND"]


def _indices(model, node_op: str) -> np.ndarray:  # noqa: ANN001 - a test's helper
    """The index input of the one ``node_op`` node of ``model``."""
    node = next(n for n in model.graph.node if n.op_type == node_op)
    return initializer(model, node.input[1])


def test_gathernd_passes_the_axes_it_does_not_address() -> None:
    """With ``batch_dims = 1`` the index tuples address the tokens (axis 1): the unit (axis 2) is copied whole, on
    the output's axis ``rank(idx) - 1 + 2 - 1 - 1 = 2``."""
    model = parse(sandwich("A = GatherND<batch_dims = 1>(H, idx)", inits="int64[1,3,1] idx = {3, 0, 2}", y="[1,3,5]"))
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(2, ((8, True),)) and "idx" not in group.slices
    check_cut(model, group, [0, 3, 5])


def test_gathernd_refusals() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,8] W1) => (float[3,4,1] Y) <int64[3,1] idx = {1, 5, 2}> {
        H = MatMul(X, W1)
        T = Transpose<perm = [2, 1, 0]>(H)
        Y = GatherND(T, idx)
    }
    """
    assert "gathers along the unit axis" in refusal(parse(text), *HIDDEN)
    batch = text.replace("(float[3,4,1] Y) <int64[3,1] idx = {1, 5, 2}>", "(float[8,1,1] Y) <int64[8,1,1] idx>")
    batch = batch.replace("GatherND(T, idx)", "GatherND<batch_dims = 1>(T, idx)")
    batch = batch.replace("int64[8,1,1] idx>", "int64[8,1,1] idx = {0, 1, 2, 3, 0, 1, 2, 3}>")
    assert "a batch axis of the gather" in refusal(parse(batch), *HIDDEN)


def test_scatternd_passes_the_axes_it_does_not_address() -> None:
    """Index tuples of two (batch, token) address the first two axes; the unit (axis 2) passes to the output and
    to the updates' axis 1, a constant that is cut with it."""
    model = parse(sandwich("A = ScatterND(H, idx, U)", consts=", float[2,8] U", inits="int64[2,2] idx = {0, 1, 0, 3}"))
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(2, ((8, True),)) and group.slices["U"].axis == 1 and not group.index_edits
    check_cut(model, group, [1, 2, 6])


#: a bias over 2 x 4 units (q and k of 4 channels, the same unit in both halves) whose second half is overwritten,
#: as torchvision's Swin-V2 zeroes the k part of its fused qkv bias in place
_K_BIAS = sandwich(
    "B = ScatterND(b, idx, U)\n        A = Add(H, B)",
    consts=", float[8] b, float[4] U",
    inits="int64[4,1] idx = {4, 5, 6, 7}",
)
QK = ((2, False), (4, True))


def test_scatternd_writes_one_part_of_the_unit_axis() -> None:
    """Rows 4 .. 7 of ``(2, carried) x 4 units`` are the second copy of the 4 units: the updates carry ``4 units``,
    and the cut keeps the rows of kept positions, renumbered into the narrower axis."""
    model = parse(_K_BIAS)
    group = trace_from(model, "H", Dim(2, QK))
    assert group.slices["U"].layout == ((4, True),) and group.slices["b"].layout == QK
    assert [(e.column, e.layout) for e in group.index_edits] == [(0, QK)]
    pruned = check_cut(model, group, [0, 2])
    assert _indices(pruned, "ScatterND").reshape(-1).tolist() == [2, 3]  # positions 4 and 6 of 8 -> 2 and 3 of 4


def test_scatternd_renumbers_rows_that_no_unit_owns() -> None:
    """A :class:`Parts` axis of 4 units then 4 untouched entries: rows 4 .. 7 write the untouched run, stay whole,
    and move to 2 .. 5 when 2 units are kept."""
    model = parse(_K_BIAS)
    dim = Dim(2, ((8, Parts((((4, True),), 4))),))
    group = trace_from(model, "H", dim)
    assert "U" not in group.slices
    pruned = check_cut(model, group, [1, 3])
    assert _indices(pruned, "ScatterND").reshape(-1).tolist() == [2, 3, 4, 5]


def test_scatternd_refusals() -> None:
    model = parse(_K_BIAS)
    # rows 4 .. 7 of a plain axis of 8 units take half of the units: no layout of the updates holds them
    assert "not one part of its layout" in refusal(model, *HIDDEN)
    # indices computed at run time (from the input)
    computed = _K_BIAS.replace(
        "B = ScatterND(b, idx, U)", "R = Reshape(X, s)\n        j = ArgMax<axis = 1>(R)\n        B = ScatterND(b, j, U)"
    ).replace("int64[4,1] idx = {4, 5, 6, 7}", "int64[2] s = {4, 6}")
    assert "indices computed at run time" in refusal(parse(computed), "H", Dim(2, QK))
    # the unit on the scattered rows, reached from the updates
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,8] W1, float[16] b) => (float[16] Y) <int64[8,1] idx = {0, 2, 4, 6, 8, 10, 12, 14}> {
        H = MatMul(X, W1)
        R = ReduceSum<keepdims = 0>(H, ax)
        Y = ScatterND(b, idx, R)
    }
    """
    text = text.replace("<int64[8,1] idx", "<int64[2] ax = {0, 1}, int64[8,1] idx")
    assert "on the scattered rows" in refusal(parse(text), "R", Dim(0, ((8, True),)))
