"""Softmax rules (passes/_core/dims/rules/softmax.py): the unit passes a softmax over another axis, not its own."""

from __future__ import annotations

import pytest
from _helpers_rules import HIDDEN, check_cut, parse, refusal, sandwich, trace_from

from passes._core.dims import Dim, lookup

OPS = ["LogSoftmax", "Softmax"]

#: softmax over the tokens of [1, 8, 4] (the units on axis 1), back to [1, 4, 8]
_OVER_TOKENS = """
    T = Transpose<perm = [0, 2, 1]>(H)
    S = {op}<axis = {axis}>(T)
    A = Transpose<perm = [0, 2, 1]>(S)
"""


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize(("opset", "axis"), [(17, -1), (17, 2), (11, 2), (11, -1)])
def test_softmax_over_another_axis_passes_the_unit(op: str, opset: int, axis: int) -> None:
    model = parse(sandwich(_OVER_TOKENS.format(op=op, axis=axis), opset=opset))
    group = trace_from(model, *HIDDEN)
    assert group.dims["S"] == Dim(1, ((8, True),))
    check_cut(model, group, [2, 4, 7])


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("opset", [11, 17])
def test_softmax_over_the_unit_axis_is_refused(op: str, opset: int) -> None:
    model = parse(sandwich(f"A = {op}<axis = 2>(H)", opset=opset))
    assert "normalises over the unit axis" in refusal(model, *HIDDEN)


@pytest.mark.parametrize("op", OPS)
def test_opset_11_softmax_that_flattens_is_refused(op: str) -> None:
    """Before opset 13 ``axis = 1`` normalises over axes 1 and 2 together: not the same function as one axis."""
    model = parse(sandwich(f"A = {op}<axis = 1>(H)", opset=11))
    assert "opset < 13 Softmax flattens the axes from `axis` on" in refusal(model, *HIDDEN)
    model = parse(sandwich(f"A = {op}<axis = 1>(H)", opset=13))  # from 13: over the tokens only
    check_cut(model, trace_from(model, *HIDDEN), [0, 1])


def test_one_rule_per_opset_range() -> None:
    assert lookup("Softmax", 11) is not lookup("Softmax", 13)
    assert lookup("Softmax", 12) is lookup("LogSoftmax", 1) and lookup("Softmax", 21) is lookup("LogSoftmax", 13)
