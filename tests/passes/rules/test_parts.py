"""Rules that take an axis apart or put it together (passes/_core/dims/rules/parts.py): Split, Slice, Concat, Gather."""

from __future__ import annotations

import pytest
from _helpers_rules import HIDDEN, check_cut, initializer, parse, refusal, sandwich, trace_from

from passes._core.dims import Dim, Parts

OPS = ["Concat", "Gather", "Slice", "Split"]

U8 = ((8, True),)


# ---------------------------------------------------------------------------------------------------------- Split
def test_split_and_concat_along_another_axis_pass_the_unit() -> None:
    body = """
        P0, P1 = Split<axis = 1>(H, s)
        A = Concat<axis = 1>(P0, P1)
    """
    model = parse(sandwich(body, inits="int64[2] s = {1, 3}"))
    group = trace_from(model, *HIDDEN)
    assert group.dims["P0"] == group.dims["P1"] == group.dims["A"] == Dim(2, U8)
    assert not group.split_edits
    check_cut(model, group, [0, 4, 6])


_FUSED = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,6] X, float[6,24] W1, float[8,5] W2) => (float[1,4,5] Y) <int64[3] s = {8, 8, 8}> {
    F = MatMul(X, W1)
    Q, K, V = Split<axis = 2>(F, s)
    M = Mul(Q, K)
    A = Add(M, V)
    Y = MatMul(A, W2)
}
"""


def test_split_into_equal_parts_that_all_carry_the_unit() -> None:
    """A fused projection [q | k | v] of 8 units each: coming from q, k and v are left out of the group at first;
    the walk reaches them through the product and the trace restarts with them carried. F's layout is then
    3 x units, and the split sizes follow the kept count."""
    model = parse(_FUSED)
    group = trace_from(model, "Q", Dim(2, U8))
    assert group.dims["F"] == Dim(2, ((3, False), (8, True)))
    assert group.dims["K"] == group.dims["V"] == Dim(2, U8)
    assert [e.layouts for e in group.split_edits] == [(U8, U8, U8)]
    pruned = check_cut(model, group, [1, 2, 7])
    assert initializer(pruned, next(n.input[1] for n in pruned.graph.node if n.op_type == "Split")).tolist() == [3] * 3


_UNEQUAL = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,6] X, float[6,16] W1, float[4,5] W2, float[12,5] W3) => (float[1,4,5] Y) <int64[2] s = {4, 12}> {
    F = MatMul(X, W1)
    Q, V = Split<axis = 2>(F, s)
    A = MatMul(Q, W2)
    B = MatMul(V, W3)
    Y = Add(A, B)
}
"""
_QV = Dim(2, ((16, Parts((((4, True),), 12))),))  # F's last axis: 4 units of q, then 12 untouched entries


def test_split_into_unequal_parts_holds_the_unit_in_one() -> None:
    """LeViT's per-head [q | v] of unequal sizes: F's layout is one Parts factor, the unit in q, v whole."""
    model = parse(_UNEQUAL)
    group = trace_from(model, "Q", Dim(2, ((4, True),)))
    assert group.dims["F"] == _QV and "V" not in group.dims
    assert group.slices["W1"].layout == _QV.layout and "W3" not in group.slices
    pruned = check_cut(model, group, [1, 3])
    assert initializer(pruned, "W1").shape == (6, 14)
    # from the input, with its parts: the same group
    assert trace_from(model, "F", _QV).slices == group.slices


def test_split_refuses_parts_that_do_not_line_up_and_a_unit_factor_split() -> None:
    model = parse(_UNEQUAL)
    skewed = Dim(2, ((16, Parts((((4, True),), 4, 8))),))
    assert "splits the unit axis as [4, 12], its parts are [4, 4, 8]" in refusal(model, "F", skewed)
    model = parse(
        sandwich("P0, P1 = Split<axis = 2>(H, s)\n A = Concat<axis = 2>(P0, P1)", inits="int64[2] s = {4, 4}")
    )
    assert "splits the unit factor itself" in refusal(model, *HIDDEN)


# ---------------------------------------------------------------------------------------------------------- Slice
_HALVES = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,6] X, float[6,16] W1, float[8,5] W2) => (float[1,4,5] Y)
  <int64[1] a = {2}, int64[1] b = {2}, int64[1] zero = {0}, int64[1] mid = {8}, int64[1] mid2 = {8},
   int64[1] end = {16}> {
    F = MatMul(X, W1)
    G = Slice(F, zero, mid, a)
    U = Slice(F, mid2, end, b)
    S = Sigmoid(G)
    A = Mul(S, U)
    Y = MatMul(A, W2)
}
"""


def test_slice_halves_of_a_packed_gated_mlp() -> None:
    """``fc2(sigmoid(g) * u)`` with g and u the two halves of one fc1, taken by slicing: from fc2's input both
    halves carry the unit; each slice's bounds become what remains of its range."""
    model = parse(_HALVES)
    group = trace_from(model, "A", Dim(2, U8))
    assert group.dims["F"] == Dim(2, ((16, Parts((U8, U8))),))
    assert sorted((e.start, e.end) for e in group.slice_edits) == [(0, 8), (8, 16)]
    pruned = check_cut(model, group, [0, 5])
    bounds = {
        n.output[0]: [initializer(pruned, n.input[k]).tolist() for k in (1, 2)]
        for n in pruned.graph.node
        if n.op_type == "Slice"
    }
    assert sorted(bounds.values()) == [[[0], [2]], [[2], [4]]]


def test_slice_along_another_axis_passes_the_unit() -> None:
    body = "A = Slice(H, s, e, ax)"
    model = parse(sandwich(body, inits="int64[1] s = {1}, int64[1] e = {3}, int64[1] ax = {1}", y="[1,2,5]"))
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(2, U8) and not group.slice_edits
    check_cut(model, group, [2])


def test_slice_refusals() -> None:
    # a step along the unit axis
    model = parse(
        sandwich(
            "A = Slice(H, s, e, ax, st)",
            inits="int64[1] s = {0}, int64[1] e = {8}, int64[1] ax = {2}, int64[1] st = {2}",
            y="[1,4,5]",
        ).replace("float[8,5] W2", "float[4,5] W2")
    )
    assert "a step, or opset < 10" in refusal(model, *HIDDEN)
    # overlapping slices of the unit axis
    text = _HALVES.replace("mid2 = {8}", "mid2 = {6}").replace("float[6,16] W1", "float[6,14] W1")
    text = text.replace("end = {16}", "end = {14}")
    assert "slices of the unit axis overlap" in refusal(parse(text), "A", Dim(2, U8))


@pytest.mark.parametrize("axis", [1, 2])
def test_opset_9_slice_passes_another_axis_and_refuses_the_unit_axis(axis: int) -> None:
    text = f"""
    <ir_version: 4, opset_import: ["" : 9]>
    g (float[1,4,6] X, float[6,8] W1, float[{4 if axis == 2 else 8},5] W2) => (float[1,{2 if axis == 1 else 4},5] Y) {{
        H = MatMul(X, W1)
        A = Slice<starts = [0], ends = [{2 if axis == 1 else 4}], axes = [{axis}]>(H)
        Y = MatMul(A, W2)
    }}
    """
    model = parse(text)
    if axis == 1:
        check_cut(model, trace_from(model, *HIDDEN), [1, 2])
    else:
        assert "opset < 10" in refusal(model, *HIDDEN)


# --------------------------------------------------------------------------------------------------------- Concat
_MERGE = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,4,6] X, float[6,8] W1, float[6,8] W1b, float[16,5] W2) => (float[1,4,5] Y) {
    H = MatMul(X, W1)
    H2 = MatMul(X, W1b)
    C = Concat<axis = 2>(H, H2)
    Y = MatMul(C, W2)
}
"""


def test_concat_of_equal_parts_carries_the_unit_in_every_input() -> None:
    """Swin's patch merging: the output's layout is 2 x units; both inputs carry the unit."""
    model = parse(_MERGE)
    group = trace_from(model, *HIDDEN)
    assert group.dims["C"] == Dim(2, ((2, False), (8, True))) and group.dims["H2"] == Dim(2, U8)
    assert set(group.sources) == {"W1", "W1b"} and group.sinks == ["W2"]
    check_cut(model, group, [1, 2, 4])
    # from the output, the parts are split back
    assert trace_from(model, "C", Dim(2, ((2, False), (8, True)))).dims["H"] == Dim(2, U8)


_PYRAMID = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] X, float[4,3,1,1] Wa, float[6,3,1,1] Wb, float[5,10,1,1] W2) => (float[1,5,8,8] Y) {
    Ha = Conv(X, Wa)
    Hb = Conv(X, Wb)
    C = Concat<axis = 1>(Ha, Hb)
    Y = Conv(C, W2)
}
"""


def test_concat_of_conv_channels_lays_its_inputs_side_by_side() -> None:
    """Channels mode (UPerNet's fusion): each input is its own group, cut on its own part of the next conv's input."""
    model = parse(_PYRAMID)
    group = trace_from(model, "Ha", Dim(1, ((4, True),)), channels=True)
    assert group.dims["C"] == Dim(1, ((10, Parts((((4, True),), 6))),)) and "Hb" not in group.dims
    assert group.slices["W2"].axis == 1
    pruned = check_cut(model, group, [0, 3], kind="channels")
    assert initializer(pruned, "W2").shape == (5, 8, 1, 1)
    assert "whose units span several inputs" in refusal(model, "C", Dim(1, ((10, True),)), channels=True)


def test_concat_of_unequal_parts_is_refused_outside_channels_mode() -> None:
    text = _MERGE.replace("float[6,8] W1b", "float[6,4] W1b").replace("float[16,5] W2", "float[12,5] W2")
    assert "concatenates along the unit axis" in refusal(parse(text), *HIDDEN)


# --------------------------------------------------------------------------------------------------------- Gather
@pytest.mark.parametrize(("idx", "y", "axis"), [("int64[2] i = {0, 2}", "[1,2,5]", 2), ("int64 i = {3}", "[1,5]", 1)])
def test_gather_along_another_axis_moves_the_unit(idx: str, y: str, axis: int) -> None:
    """Indices of rank 1 keep the axes; a scalar index removes the gathered axis, and the unit moves down."""
    model = parse(sandwich("A = Gather<axis = 1>(H, i)", inits=idx, y=y))
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(axis, U8)
    assert trace_from(model, "A", Dim(axis, U8)).dims["H"] == Dim(2, U8)  # and back
    check_cut(model, group, [5, 6])


def test_gather_along_the_unit_axis_is_refused() -> None:
    model = parse(sandwich("A = Gather<axis = 2>(H, i)", inits="int64[8] i = {7, 6, 5, 4, 3, 2, 1, 0}"))
    assert "gathers along the unit axis" in refusal(model, *HIDDEN)
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,8] W1, float[10,5] E) => (float[1,4,8,5] Y) {
        H = MatMul(X, W1)
        I = Cast<to = 7>(H)
        Y = Gather<axis = 0>(E, I)
    }
    """
    assert "the unit axis is in the gather indices" in refusal(parse(text), *HIDDEN)
