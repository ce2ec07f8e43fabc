"""Elementwise ops: unary ops pass the unit axis unchanged; n-ary ops broadcast it (numpy rules, aligned right).

For ``Y = f(A, B, ...)`` with ``rank(Y) = r`` and the unit on axis ``a`` of ``Y``, input ``X`` of rank ``r_X``
holds it on axis ``a - (r - r_X)`` unless that axis is missing or of size 1 (broadcast: ``X`` does not carry it,
a per-head constant of size ``heads`` does).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from passes._core.dims.layout import Dim
from passes._core.dims.registry import register

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import NodeRef

UNARY = {
    "Relu", "Sigmoid", "Tanh", "Erf", "Exp", "Log", "Sqrt", "Neg", "Abs", "Cast", "Identity", "Gelu", "Softplus",
    "Softsign", "HardSigmoid", "HardSwish", "LeakyRelu", "Elu", "Selu", "Celu", "Mish", "Reciprocal", "Floor",
    "Ceil", "Round", "Sin", "Cos", "Clip", "ThresholdedRelu", "Sign", "Not", "IsNaN", "IsInf",
}  # fmt: skip
BROADCAST = {
    "Add", "Sub", "Mul", "Div", "Pow", "Max", "Min", "Sum", "Mean", "Where", "Equal", "Less", "Greater",
    "LessOrEqual", "GreaterOrEqual", "And", "Or", "Xor", "Mod", "PRelu",
}  # fmt: skip
#: every op that works entry by entry (what discovery walks through between linear layers)
ELEMENTWISE = UNARY | BROADCAST | {"Dropout"}


@register(*sorted(UNARY | {"Dropout"}))
def unary(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y = f(X)``: ``Y`` and ``X`` carry the axis alike; extra inputs (Clip's min/max, Dropout's ratio) must be
    scalars and do not carry it."""
    n = ref.node
    out: dict[str, Dim | None] = {n.input[0]: dim}
    for extra in n.input[1:]:  # Clip's min/max, Dropout's ratio: scalars
        if extra:
            s = tr.shape(ref, extra)
            if int(np.prod(s)) != 1:
                raise tr.fail(ref, f"non-scalar second input {extra!r}")
            out[extra] = None
    for o in n.output:
        if o:
            out[o] = dim
    return out


@register(*sorted(BROADCAST))
def broadcast(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """Multidirectional broadcasting: each input carries the axis where it has it with the full size."""
    n = ref.node
    y = n.output[0]
    ry = len(tr.shape(ref, y))
    rk = len(tr.shape(ref, known))
    y_axis = dim.axis + (ry - rk)
    out: dict[str, Dim | None] = {y: Dim(y_axis, dim.layout)}
    for i in n.input:
        if not i:
            continue
        s = tr.shape(ref, i)
        ax = y_axis - (ry - len(s))
        if ax < 0 or s[ax] == 1:
            out[i] = None
        else:
            out[i] = Dim(ax, dim.layout)
    return out
