"""Layout rules (passes/_core/dims/rules/layout.py): Transpose, Reshape, Flatten, Squeeze, Unsqueeze, Expand, Tile
move the unit axis; the shape vectors that hold its size are rewritten by position."""

from __future__ import annotations

import pytest
from _helpers_rules import HIDDEN, check_cut, parse, refusal, sandwich, trace_from

from passes._core.dims import Dim

OPS = ["Expand", "Flatten", "Reshape", "Squeeze", "Tile", "Transpose", "Unsqueeze"]

HEADS = ("H", Dim(2, ((2, True), (4, False))))  # H's last axis as 2 heads of 4 channels


def test_transpose_moves_the_axis_both_ways() -> None:
    body = """
        T = Transpose<perm = [2, 0, 1]>(H)
        A = Transpose<perm = [1, 2, 0]>(T)
    """
    model = parse(sandwich(body))
    group = trace_from(model, *HIDDEN)
    assert group.dims["T"] == Dim(0, ((8, True),)) and group.dims["A"] == Dim(2, ((8, True),))
    check_cut(model, group, [1, 5])
    # from the middle, backwards through the first Transpose
    assert trace_from(model, "T", Dim(0, ((8, True),))).dims["H"] == Dim(2, ((8, True),))


def test_reshape_splits_and_merges_heads_and_rewrites_the_head_entries() -> None:
    """[1, 4, 8] -> [1, 4, 2, 4] -> [1, 4, 8]: the head factor lands alone on axis 2 of S, then merges back; each
    shape vector holds the axis size at position 2 and is rewritten there only."""
    body = """
        S = Reshape(H, s)
        A = Reshape(S, s2)
    """
    model = parse(sandwich(body, inits="int64[4] s = {1, 4, 2, 4}, int64[3] s2 = {1, 4, 8}"))
    group = trace_from(model, *HEADS)
    assert group.dims["S"] == Dim(2, ((2, True),))
    assert group.dims["A"] == Dim(2, ((2, True), (4, False)))
    assert [(e.input, e.position, e.value) for e in group.shape_edits] == [(1, 2, (1, 4, 2, 4)), (1, 2, (1, 4, 8))]
    assert group.count == 2
    check_cut(model, group, [1], kind="heads")


def test_reshape_leaves_a_minus_one_and_a_zero_copy_entry_alone() -> None:
    """-1 is inferred, and 0 copies the input's size at that position (the same layout): nothing to rewrite."""
    body = """
        S = Reshape(H, s)
        A = Reshape(S, s2)
    """
    model = parse(sandwich(body, inits="int64[4] s = {1, 4, 2, -1}, int64[3] s2 = {0, 0, -1}"))
    group = trace_from(model, *HEADS)
    assert [e.position for e in group.shape_edits] == [2]  # only s's head entry
    check_cut(model, group, [0], kind="heads")


def test_reshape_that_splits_the_unit_factor_is_refused() -> None:
    model = parse(
        sandwich("S = Reshape(H, s)\n A = Reshape(S, s2)", inits="int64[4] s = {1, 4, 2, 4}, int64[3] s2 = {1, 4, 8}")
    )
    assert "splits the unit axis" in refusal(model, *HIDDEN)  # 8 units cannot become 2 x 4


@pytest.mark.parametrize(("axis", "dim"), [(2, Dim(1, ((8, True),))), (1, Dim(1, ((4, False), (8, True))))])
def test_flatten_lays_the_unit_on_the_second_axis(axis: int, dim: Dim) -> None:
    """Flatten<axis = 2> of [1, 4, 8] is [4, 8]; Flatten<axis = 1> is [1, 32], the unit inside the tokens."""
    rows, cols = (4, 8) if axis == 2 else (1, 32)
    text = f"""
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,8] W1, float[{cols},5] W2) => (float[{rows},5] Y) {{
        H = MatMul(X, W1)
        F = Flatten<axis = {axis}>(H)
        Y = MatMul(F, W2)
    }}
    """
    model = parse(text)
    group = trace_from(model, *HIDDEN)
    assert group.dims["F"] == dim and group.sinks == ["W2"] and group.slices["W2"].layout == dim.layout
    assert not group.shape_edits
    check_cut(model, group, [0, 2, 3, 7])


@pytest.mark.parametrize("opset", [11, 13])
def test_squeeze_and_unsqueeze_move_the_axis(opset: int) -> None:
    """Opset 11 names the axes in an attribute, 13 in an input."""
    if opset < 13:
        body = "U = Unsqueeze<axes = [1]>(H)\n A = Squeeze<axes = [1]>(U)"
        inits = ""
    else:
        body = "U = Unsqueeze(H, one)\n A = Squeeze(U, one2)"
        inits = "int64[1] one = {1}, int64[1] one2 = {1}"
    model = parse(sandwich(body, inits=inits, opset=opset))
    group = trace_from(model, *HIDDEN)
    assert group.dims["U"] == Dim(3, ((8, True),)) and group.dims["A"] == Dim(2, ((8, True),))
    check_cut(model, group, [4])


def test_squeeze_without_axes_drops_every_axis_of_one() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,8] W1, float[8,5] W2) => (float[4,5] Y) {
        H = MatMul(X, W1)
        A = Squeeze(H)
        Y = MatMul(A, W2)
    }
    """
    model = parse(text)
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(1, ((8, True),))
    check_cut(model, group, [0, 1, 2])


def test_squeeze_of_the_unit_axis_is_refused() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,1] W1, float[4,5] W2) => (float[1,5] Y) <int64[1] two = {2}> {
        H = MatMul(X, W1)
        A = Squeeze(H, two)
        Y = MatMul(A, W2)
    }
    """
    assert "squeezes the unit axis" in refusal(parse(text), "H", Dim(2, ((1, True),)))


def test_expand_rewrites_its_entry_for_the_axis_both_ways() -> None:
    """Forwards: Expand [1, 4, 8] to [2, 4, 8] (entry 2 holds the size). Backwards: a per-unit constant c [8]
    expanded to [1, 4, 8] and added to H is cut with the units."""
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,8] W1, float[8,5] W2, float[8] c) => (float[2,4,5] Y)
      <int64[3] s = {2, 4, 8}, int64[3] s2 = {1, 4, 8}> {
        H = MatMul(X, W1)
        E = Expand(c, s2)
        B = Add(H, E)
        A = Expand(B, s)
        Y = MatMul(A, W2)
    }
    """
    model = parse(text)
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(2, ((8, True),)) and group.slices["c"].axis == 0
    assert sorted((e.position, e.value) for e in group.shape_edits) == [(2, (1, 4, 8)), (2, (2, 4, 8))]
    check_cut(model, group, [3, 6])


def test_expand_leaves_a_broadcast_entry_of_one_alone() -> None:
    model = parse(sandwich("A = Expand(H, s)", inits="int64[3] s = {2, 1, 1}", y="[2,4,5]"))
    group = trace_from(model, *HIDDEN)
    assert not group.shape_edits
    check_cut(model, group, [0, 7])


def test_tile_passes_an_axis_repeated_once_and_refuses_the_unit_repeated() -> None:
    model = parse(sandwich("A = Tile(H, r)", inits="int64[3] r = {2, 1, 1}", y="[2,4,5]"))
    check_cut(model, trace_from(model, *HIDDEN), [2, 3])
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,8] W1, float[16,5] W2) => (float[1,4,5] Y) <int64[3] r = {1, 1, 2}> {
        H = MatMul(X, W1)
        A = Tile(H, r)
        Y = MatMul(A, W2)
    }
    """
    assert "tiles the unit axis" in refusal(parse(text), *HIDDEN)
