"""Elementwise rules (passes/_core/dims/rules/elementwise.py): unary ops pass the unit axis, n-ary ops broadcast it."""

from __future__ import annotations

import pytest
from _helpers_rules import HIDDEN, check_cut, parse, refusal, sandwich, trace_from

from passes._core.dims import Dim
from passes._core.dims.rules.elementwise import BROADCAST, UNARY

#: op -> the body computing A from H (float ops directly; boolean ones between Casts)
_UNARY_BODY = {op: f"A = {op}(H)" for op in UNARY}
_UNARY_BODY.update(
    {
        "Cast": "A = Cast<to = 1>(H)",
        "Not": "B = Cast<to = 9>(H)\n N = Not(B)\n A = Cast<to = 1>(N)",
        "IsNaN": "B = IsNaN(H)\n A = Cast<to = 1>(B)",
        "IsInf": "B = IsInf(H)\n A = Cast<to = 1>(B)",
        "Clip": "A = Clip(H, lo, hi)",
        "Dropout": "A = Dropout(H)",
    }
)
_UNARY_CONSTS = {"Clip": ", float lo, float hi"}
_OPSET = {"Gelu": 20, "Mish": 18}  # ONNX ops from those opsets on

_BINARY_BODY = {op: f"A = {op}(H, c)" for op in BROADCAST}
_BINARY_BODY.update(
    {
        op: f"B = {op}(H, c)\n A = Cast<to = 1>(B)"
        for op in ("Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual")
    }
)
_BINARY_BODY.update(
    {
        op: f"P = Cast<to = 9>(H)\n Q = Cast<to = 9>(c)\n B = {op}(P, Q)\n A = Cast<to = 1>(B)"
        for op in ("And", "Or", "Xor")
    }
)
_BINARY_BODY.update(
    {
        "Where": "M = Greater(H, c2)\n A = Where(M, H, c)",
        "Mod": "A = Mod<fmod = 1>(H, c)",
        "Sum": "A = Sum(H, c, c2)",
        "Mean": "A = Mean(H, c, c2)",
    }
)

OPS = sorted(UNARY | {"Dropout"} | BROADCAST)


@pytest.mark.parametrize("op", sorted(UNARY | {"Dropout"}))
def test_unary_passes_the_unit_axis(op: str) -> None:
    model = parse(sandwich(_UNARY_BODY[op], _UNARY_CONSTS.get(op, ""), opset=_OPSET.get(op, 17)))
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(2, ((8, True),))
    assert group.sources == ["W1"] and group.sinks == ["W2"]
    assert set(group.slices) == {"W1", "W2"}  # Clip's bounds are scalars: not sliced
    check_cut(model, group, [0, 3, 5])


@pytest.mark.parametrize("op", sorted(BROADCAST))
@pytest.mark.parametrize("shape", ["[8]", "[1,1,1]"])
def test_broadcast_slices_a_per_unit_constant_and_leaves_a_broadcast_one(op: str, shape: str) -> None:
    """``c`` of shape [8] lies on the unit axis (broadcast against [1, 4, 8]): it is cut with the units. Of shape
    [1, 1, 1] it is broadcast: it does not carry them."""
    consts = ["c", "c2"] if op in ("Sum", "Mean", "Where") else ["c"]
    model = parse(sandwich(_BINARY_BODY[op], "".join(f", float{shape} {c}" for c in consts)))
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(2, ((8, True),))
    carried = set(consts) if shape == "[8]" else set()
    assert set(group.slices) == {"W1", "W2"} | carried
    if carried:
        assert group.slices["c"].axis == 0
    check_cut(model, group, [1, 2, 6])


def test_unary_refuses_a_clip_bound_that_is_not_a_scalar() -> None:
    model = parse(sandwich("A = Clip(H, lo, hi)", ", float[8] lo, float hi"))
    assert "non-scalar second input 'lo'" in refusal(model, *HIDDEN)


def test_broadcast_refuses_a_unit_that_would_reach_a_model_input_or_output() -> None:
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,8] W1) => (float[1,4,8] Y) {
        H = MatMul(X, W1)
        Y = Add(H, H)
    }
    """
    assert "reaches the model output 'Y'" in refusal(parse(text), *HIDDEN)
