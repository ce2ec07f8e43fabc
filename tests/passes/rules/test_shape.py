"""Rules for ops that read sizes (passes/_core/dims/rules/shape.py): Shape of a carried tensor, and Pad."""

from __future__ import annotations

import pytest
from _helpers_rules import HIDDEN, check_cut, parse, refusal, sandwich, trace_from

from passes._core.dims import Dim

OPS = ["Pad", "Shape"]

_RESHAPE_BY_SHAPE = """
    S = Shape(H)
    G = Gather(S, i)
    Z = Concat<axis = 0>(G, minus1)
    A = Reshape(H, Z)
"""


def test_shape_whose_readers_skip_the_unit_axis_passes() -> None:
    """``H.reshape(H.shape[0], H.shape[1], -1)``: the sizes read are the batch and tokens, never the units."""
    model = parse(sandwich(_RESHAPE_BY_SHAPE, inits="int64[2] i = {0, 1}, int64[1] minus1 = {-1}"))
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(2, ((8, True),)) and "S" not in group.dims
    assert not group.shape_edits  # the Reshape's entry for the unit axis is -1
    check_cut(model, group, [1, 3, 4])


def test_shape_start_and_a_slice_reader() -> None:
    """``Shape<start = 1>`` of [1, 4, 8] is [4, 8]; a Slice that keeps position 0 (the tokens) reads no unit."""
    body = """
        S = Shape<start = 1>(H)
        G = Slice(S, z, o)
        Z = Concat<axis = 0>(one, G, minus1)
        A = Reshape(H, Z)
    """
    inits = "int64[1] z = {0}, int64[1] o = {1}, int64[1] one = {1}, int64[1] minus1 = {-1}"
    model = parse(sandwich(body, inits=inits, opset=15))
    check_cut(model, trace_from(model, *HIDDEN), [0, 7])


def test_shape_end_that_stops_before_the_unit_axis_reads_nothing_of_it() -> None:
    """``Shape<start = 0, end = 2>`` of [1, 4, 8] is [1, 4]: whatever reads it (here as a shape, which a read of the
    unit axis could not be), the unit axis is not in it."""
    body = """
        S = Shape<start = 0, end = 2>(H)
        Z = Concat<axis = 0>(S, minus1)
        A = Reshape(H, Z)
    """
    model = parse(sandwich(body, inits="int64[1] minus1 = {-1}", opset=15))
    check_cut(model, trace_from(model, *HIDDEN), [2, 5])


def test_shape_refuses_a_read_of_the_unit_axis() -> None:
    model = parse(
        sandwich(_RESHAPE_BY_SHAPE, inits="int64[2] i = {0, 2}, int64[1] minus1 = {-1}")
        .replace("float[1,4,5] Y", "float[1,8,5] Y")
        .replace("float[8,5] W2", "float[4,5] W2")
    )
    assert "reads the size of the unit axis at run time" in refusal(model, *HIDDEN)


def test_shape_refuses_a_reader_it_cannot_see_through() -> None:
    body = """
        S = Shape(H)
        E = ConstantOfShape(S)
        A = Add(H, E)
    """
    assert "is read at run time by ConstantOfShape" in refusal(parse(sandwich(body)), *HIDDEN)


_PADDED = """
<ir_version: 8, opset_import: ["" : {opset}]>
g (float[1,3,8,8] X, float[8,3,1,1] W1, float[5,8,3,3] W2) => (float[1,5,{out},{out}] Y) <{inits}> {{
    H = Conv(X, W1)
    {pad}
    Y = Conv(A, W2)
}}
"""


@pytest.mark.parametrize(
    ("pad", "inits", "opset"),
    [
        ("A = Pad(H, p)", "int64[8] p = {0, 0, 1, 1, 0, 0, 1, 1}", 17),
        ("A = Pad(H, p, , ax)", "int64[4] p = {1, 1, 1, 1}, int64[2] ax = {2, 3}", 18),
    ],
)
def test_pad_of_the_spatial_axes_passes_the_channels(pad: str, inits: str, opset: int) -> None:
    model = parse(_PADDED.format(opset=opset, inits=inits, pad=pad, out=8))
    group = trace_from(model, "H", Dim(1, ((8, True),)), channels=True)
    assert group.dims["A"] == Dim(1, ((8, True),)) and not group.shape_edits
    check_cut(model, group, [0, 5, 6], kind="channels")


def test_pad_refusals() -> None:
    text = _PADDED.format(opset=17, inits="int64[8] p = {0, 1, 0, 0, 0, 0, 0, 0}", pad="A = Pad(H, p)", out=6)
    model = parse(text.replace("float[5,8,3,3] W2", "float[5,9,3,3] W2"))
    assert "pads the unit axis" in refusal(model, "H", Dim(1, ((8, True),)), channels=True)
    text = _PADDED.format(opset=10, inits="", pad="A = Pad<pads = [0, 0, 1, 1, 0, 0, 1, 1]>(H)", out=8)
    assert "pads given as an attribute" in refusal(parse(text), "H", Dim(1, ((8, True),)), channels=True)
