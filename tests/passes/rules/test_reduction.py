"""Reduction rules (passes/_core/dims/rules/reduction.py): a reduction over other axes passes the unit; over the unit
axis only a zero-neutral sum in ``sums`` mode, or a decomposed LayerNorm's mean in ``width`` mode."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers_rules import HIDDEN, check_cut, cut, initializer, input_for, parse, refusal, run, sandwich, trace_from

from passes._core.dims import ZERO_NEUTRAL_REDUCE, Dim
from passes._core.dims.rules.reduction import REDUCE

OPS = sorted(REDUCE)


@pytest.mark.parametrize("op", OPS)
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reduction_over_the_tokens_passes_the_unit(op: str, keepdims: int) -> None:
    """Opset 18: the axes are an input for every reduction."""
    y = "[1,1,5]" if keepdims else "[1,5]"
    model = parse(sandwich(f"A = {op}<keepdims = {keepdims}>(H, ax)", inits="int64[1] ax = {1}", opset=18, y=y))
    group = trace_from(model, *HIDDEN)
    assert group.dims["A"] == Dim(2 if keepdims else 1, ((8, True),))
    check_cut(model, group, [2, 5, 7])
    assert trace_from(model, "A", group.dims["A"]).dims["H"] == Dim(2, ((8, True),))  # and backwards


@pytest.mark.parametrize("op", sorted(REDUCE - {"ReduceSum"}))
def test_opset_13_reductions_name_their_axes_in_an_attribute(op: str) -> None:
    model = parse(sandwich(f"A = {op}<axes = [1], keepdims = 0>(H)", opset=13, y="[1,5]"))
    check_cut(model, trace_from(model, *HIDDEN), [0, 1])


@pytest.mark.parametrize("op", OPS)
def test_reduction_over_the_unit_axis_is_refused(op: str) -> None:
    model = parse(sandwich(f"R = {op}(H, ax)\n A = Div(H, R)", inits="int64[1] ax = {2}", opset=18))
    assert "reduces over the unit axis" in refusal(model, *HIDDEN)


@pytest.mark.parametrize("op", sorted(ZERO_NEUTRAL_REDUCE))
def test_sums_mode_passes_a_zero_neutral_reduction_over_the_unit_axis(op: str) -> None:
    """``h / ||h||`` over the units (SwinV2's cosine attention over head_dim): with every carrying tensor zeroed at
    the removed units (the head channels' oracle), the norm over all units is the norm over the kept ones."""
    model = parse(sandwich(f"R = {op}(H, ax)\n A = Div(H, R)", inits="int64[1] ax = {2}", opset=18))
    group = trace_from(model, *HIDDEN, sums=True)
    assert "R" not in group.dims and not group.inexact
    check_cut(model, group, [0, 3, 4, 6], kind="head_dim")


def test_sums_mode_refuses_a_reduction_that_a_zero_changes() -> None:
    model = parse(sandwich("R = ReduceMax(H, ax)\n A = Div(H, R)", inits="int64[1] ax = {2}", opset=18))
    assert "reduces over the unit axis" in refusal(model, *HIDDEN, sums=True)


def test_width_mode_passes_a_decomposed_layernorm_mean() -> None:
    """``h - mean(h)`` over the width: the mean is then over the kept channels (inexact, as LayerNorm)."""
    model = parse(sandwich("M = ReduceMean(H, ax)\n A = Sub(H, M)", inits="int64[1] ax = {2}", opset=18))
    group = trace_from(model, *HIDDEN, width=True)
    assert group.inexact == ["ReduceMean 'ReduceMean_1' normalises over the cut axis"]
    kept = [1, 5, 7]
    x = input_for(model)
    h = x @ initializer(model, "W1")[:, kept]
    expected = (h - h.mean(-1, keepdims=True)) @ initializer(model, "W2")[kept]
    np.testing.assert_allclose(run(cut(model, group, kept), x), expected, atol=1e-5, rtol=1e-5)
