"""Normalisations: BatchNormalization and InstanceNormalization per channel; LayerNormalization over trailing axes.

* BatchNormalization ``Y = (X - mean[c]) / sqrt(var[c] + eps) * scale[c] + bias[c]`` (inference) and
  InstanceNormalization ``Y = (X - mu_c) / sqrt(sigma_c^2 + eps) * scale[c] + bias[c]`` (statistics per sample and
  channel over the spatial axes): the channel axis 1 passes, its parameter vectors go with it. In width mode a
  unit on a spatial axis passes too, not exactly: torch writes ``GroupNorm(G, C)`` as ``X.reshape(N, G, -1)``, an
  InstanceNormalization of ``G`` channels, the reshape back and the affine ``* w[C] + b[C]``, so a width of
  MobileViTv2 (its GroupNorm of one group) lies on the spatial axis there; after the cut the statistics are taken
  over the kept channels, as the torch model built with that width takes them.
* LayerNormalization ``Y = (X - mu) / sqrt(sigma^2 + eps) * scale + bias``, statistics over axes ``axis ..``: an
  axis before ``axis`` passes; the normalised axis only in width mode, and not exactly (:meth:`Tracer.note_inexact`).

The GroupNormalization op (opset 18 and 21) has no rule: onnx's shape inference does not see through it (a
function), so its output has no static shape to trace; torch's exporters write GroupNorm as the InstanceNormalization
above.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from passes._core.dims.layout import Dim, norm_axis
from passes._core.dims.registry import register

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import NodeRef


@register("BatchNormalization", "InstanceNormalization")
def batchnorm(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
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
        if n.op_type == "InstanceNormalization" and dim.axis > 1:
            if not tr.width:
                raise tr.fail(ref, "normalises over the unit axis with the spatial axes (a GroupNorm's statistics)")
            tr.note_inexact(ref)  # a GroupNorm's statistics (module docstring): over the kept channels
            out_spatial: dict[str, Dim | None] = {x: dim, y: dim}
            out_spatial.update({p: None for p in params})
            return out_spatial
        raise tr.fail(ref, "normalises with statistics taken over the unit axis")
    out: dict[str, Dim | None] = {x: dim, y: dim}
    for p in params:
        if not tr.view.is_constant(p):
            raise tr.fail(ref, "BatchNormalization parameters computed at run time")
        out[p] = Dim(0, dim.layout)
    return out


@register("LayerNormalization")
def layernorm(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """An axis before ``axis`` passes (scale and bias do not carry it); the last axis, normalised alone, passes in
    width mode with scale and bias sliced (inexact against zeroing)."""
    n = ref.node
    r = len(tr.shape(ref, n.input[0]))
    axis = norm_axis(int(tr.view.attrs(n).get("axis", -1)), r)  # type: ignore[call-overload]
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
