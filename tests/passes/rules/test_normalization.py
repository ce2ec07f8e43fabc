"""Normalisation rules (passes/_core/dims/rules/normalization.py): BatchNormalization and InstanceNormalization pass
the channels with their parameters; LayerNormalization passes other axes, and its own axis only in width mode; a
GroupNorm written as an InstanceNormalization of reshaped channels passes a width (inexact: the statistics are taken
over the kept channels, as in a model built that narrow)."""

from __future__ import annotations

import numpy as np
import pytest
from _helpers_rules import HIDDEN, check_cut, cut, initializer, input_for, parse, refusal, run, sandwich, trace_from

from passes._core.dims import Dim

OPS = ["BatchNormalization", "InstanceNormalization", "LayerNormalization"]

_CONV_NORM = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,8,8] X, float[8,3,1,1] W1, {params}, float[5,8,1,1] W2) => (float[1,5,8,8] Y) {{
    H = Conv(X, W1)
    A = {node}
    Y = Conv(A, W2)
}}
"""
_NORMS = {
    "BatchNormalization": (
        "float[8] s, float[8] b, float[8] m, float[8] v",
        "BatchNormalization(H, s, b, m, v)",
        {"s", "b", "m", "v"},
    ),
    "InstanceNormalization": ("float[8] s, float[8] b", "InstanceNormalization(H, s, b)", {"s", "b"}),
}


@pytest.mark.parametrize("op", sorted(_NORMS))
def test_per_channel_norms_pass_the_channels_with_their_parameters(op: str) -> None:
    params, node, carried = _NORMS[op]
    model = parse(_CONV_NORM.format(params=params, node=node))
    group = trace_from(model, "H", Dim(1, ((8, True),)), channels=True)
    assert group.dims["A"] == Dim(1, ((8, True),))
    assert {t for t, s in group.slices.items() if s.axis == 0 and t not in ("W1", "W2")} == carried
    pruned = check_cut(model, group, [1, 4, 6], kind="channels")
    assert all(initializer(pruned, p).shape == (3,) for p in carried)


def test_batchnorm_refusals() -> None:
    params, node, _ = _NORMS["BatchNormalization"]
    # a parameter computed at run time
    computed = _CONV_NORM.format(params=params, node="BatchNormalization(H, s2, b, m, v)").replace(
        "A = ", "s2 = Relu(s)\n    A = "
    )
    assert "parameters computed at run time" in refusal(parse(computed), "H", Dim(1, ((8, True),)))
    # statistics over the unit axis (a spatial axis)
    model = parse(_CONV_NORM.format(params=params, node=node))
    assert "statistics taken over the unit axis" in refusal(model, "A", Dim(2, ((8, True),)))
    # training mode: the running statistics are read
    training = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,3,8,8] X, float[8,3,1,1] W1, float[8] s, float[8] b, float[8] m, float[8] v, float[5,8,1,1] W2)
      => (float[1,5,8,8] Y, float[8] R) {
        H = Conv(X, W1)
        A, rm, rv = BatchNormalization<training_mode = 1>(H, s, b, m, v)
        R = Relu(rm)
        Y = Conv(A, W2)
    }
    """
    assert "running-statistics outputs" in refusal(parse(training), "H", Dim(1, ((8, True),)))


def test_layernorm_over_another_axis_passes_the_unit() -> None:
    """The unit on the tokens' axis of [1, 8, 4]: LayerNorm over the last axis normalises each unit apart; its
    scale and bias do not carry the unit."""
    body = """
        T = Transpose<perm = [0, 2, 1]>(H)
        N = LayerNormalization<axis = -1>(T, g, b)
        A = Transpose<perm = [0, 2, 1]>(N)
    """
    model = parse(sandwich(body, ", float[4] g, float[4] b"))
    group = trace_from(model, *HIDDEN)
    assert group.dims["N"] == Dim(1, ((8, True),)) and {"g", "b"}.isdisjoint(group.slices)
    assert not group.inexact
    check_cut(model, group, [0, 3, 4])


def test_layernorm_over_the_width_in_width_mode_normalises_over_the_kept_channels() -> None:
    """Width mode: scale and bias are cut with the width, and the statistics are taken over the kept channels, as
    in a model built that narrow (not exact against zeroing: the group says so)."""
    model = parse(sandwich("A = LayerNormalization<axis = -1, epsilon = 1e-5>(H, g, b)", ", float[8] g, float[8] b"))
    assert "normalises over the unit axis" in refusal(model, *HIDDEN)
    group = trace_from(model, *HIDDEN, width=True)
    assert group.slices["g"].axis == group.slices["b"].axis == 0
    assert group.inexact == ["LayerNormalization 'LayerNormalization_1' normalises over the cut axis"]
    kept = [1, 2, 6]
    x = input_for(model)
    w = {n: initializer(model, n) for n in ("W1", "W2", "g", "b")}
    h = x @ w["W1"][:, kept]
    mu, var = h.mean(-1, keepdims=True), h.var(-1, keepdims=True)
    expected = ((h - mu) / np.sqrt(var + 1e-5) * w["g"][kept] + w["b"][kept]) @ w["W2"][kept]
    np.testing.assert_allclose(run(cut(model, group, kept), x), expected, atol=1e-5, rtol=1e-5)


def test_layernorm_refusals() -> None:
    # over the unit axis together with the tokens
    model = parse(sandwich("A = LayerNormalization<axis = 1>(H, g, b)", ", float[4,8] g, float[4,8] b"))
    assert "together with other axes" in refusal(model, *HIDDEN, width=True)
    # the saved statistics are read
    text = """
    <ir_version: 8, opset_import: ["" : 17]>
    g (float[1,4,6] X, float[6,8] W1, float[8] g, float[8] b, float[8,5] W2) => (float[1,4,5] Y, float[1,4,1] R) {
        H = MatMul(X, W1)
        A, mean, istd = LayerNormalization<axis = -1>(H, g, b)
        R = Relu(mean)
        Y = MatMul(A, W2)
    }
    """
    assert "saved mean/inverse std" in refusal(parse(text), *HIDDEN, width=True)


# torch's GroupNorm(1, 8) as its exporters write it: X.reshape(N, 1, -1), an InstanceNormalization of one channel,
# the reshape back, then the affine per channel
_GROUPNORM_1 = """
<ir_version: 8, opset_import: ["" : 17]>
g (float[1,3,4,4] X, float[8,3,1,1] W1, float[1] s1, float[1] b1, float[8,1,1] w, float[8,1,1] b,
   float[5,8,1,1] W2) => (float[1,5,4,4] Y) <int64[3] flat = {0, 1, -1}, int64[4] back = {1, 8, 4, 4}> {
    H = Conv(X, W1)
    F = Reshape(H, flat)
    N = InstanceNormalization<epsilon = 1e-5>(F, s1, b1)
    R = Reshape(N, back)
    M = Mul(R, w)
    A = Add(M, b)
    Y = Conv(A, W2)
}
"""


def _groupnorm(h: np.ndarray, groups: int, eps: float = 1e-5) -> np.ndarray:
    """torch's group_norm without the affine: statistics per sample over each group's channels and positions."""
    n, c = h.shape[:2]
    g = h.reshape(n, groups, -1)
    return ((g - g.mean(-1, keepdims=True)) / np.sqrt(g.var(-1, keepdims=True) + eps)).reshape(h.shape)


def test_a_groupnorm_of_one_group_passes_a_width_over_the_kept_channels() -> None:
    """The width lies on the reshaped spatial axis of the InstanceNormalization (with the positions); in width mode
    it passes, inexact, and the cut model is GroupNorm(1, kept) of the kept channels (MobileViTv2's norms)."""
    model = parse(_GROUPNORM_1)
    assert "with the spatial axes (a GroupNorm's statistics)" in refusal(model, "H", Dim(1, ((8, True),)))
    group = trace_from(model, "H", Dim(1, ((8, True),)), width=True)
    assert group.dims["F"] == Dim(2, ((8, True), (16, False))) and {"s1", "b1"}.isdisjoint(group.slices)
    assert group.inexact == ["InstanceNormalization 'InstanceNormalization_2' normalises over the cut axis"]
    assert [(e.node, e.position) for e in group.shape_edits] == [(3, 1)]  # the reshape back, not the -1
    kept = [0, 3, 4, 7]
    x = input_for(model)
    w = {n: initializer(model, n) for n in ("W1", "s1", "b1", "w", "b", "W2")}
    h = np.einsum("nchw,kc->nkhw", x, w["W1"][kept, :, 0, 0])
    a = (_groupnorm(h, 1) * w["s1"][0] + w["b1"][0]) * w["w"][kept] + w["b"][kept]
    expected = np.einsum("nchw,kc->nkhw", a, w["W2"][:, kept, 0, 0])
    np.testing.assert_allclose(run(cut(model, group, kept), x), expected, atol=1e-5, rtol=1e-5)
