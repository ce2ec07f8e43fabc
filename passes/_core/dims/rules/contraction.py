"""Contractions: MatMul, Gemm, Conv. The unit axis is an output axis (rows of ``A``, columns of ``B``, output
channels) that passes to the output, a contracted axis that ends here (the next layer's rows: a *sink*), or a batch
axis that passes through.

* MatMul ``Y[..., m, n] = sum_k A[..., m, k] B[..., k, n]`` (batch axes broadcast, aligned right);
* Gemm ``Y = op(A) op(B) + C`` (``op`` transposes with ``transA`` / ``transB``; ``C`` broadcasts to ``Y``);
* Conv ``Y[N, M, ...] = conv(X[N, C, ...], W[M, C/g, k...]) + B[M]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from passes._core.dims.group import GroupEdit
from passes._core.dims.layout import Dim, canonical
from passes._core.dims.registry import register

if TYPE_CHECKING:
    from passes._core.dims.tracer import Tracer
    from passes._core.graph import NodeRef


@register("MatMul")
def matmul(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``A``'s last axis meets ``B``'s second to last (contracted); ``A``'s rows are ``Y``'s rows, ``B``'s columns
    ``Y``'s columns; other axes are batch axes. Vector operands and ``A @ A`` are refused."""
    n = ref.node
    a, b, y = n.input[0], n.input[1], n.output[0]
    sa, sb, sy = tr.shape(ref, a), tr.shape(ref, b), tr.shape(ref, y)
    ra, rb, ry = len(sa), len(sb), len(sy)
    if ra < 2 or rb < 2:
        raise tr.fail(ref, "MatMul with a vector operand")
    out: dict[str, Dim | None] = {a: None, b: None, y: None}
    L = dim.layout

    def batch(y_axis: int) -> None:
        out[y] = Dim(y_axis, L)
        for t, s in ((a, sa), (b, sb)):
            ax = y_axis - (ry - len(s))
            out[t] = Dim(ax, L) if ax >= 0 and s[ax] != 1 else None

    if a == b:
        raise tr.fail(ref, "MatMul of a tensor with itself")
    if known == a:
        if dim.axis == ra - 1:
            out.update({a: dim, b: Dim(rb - 2, L)})
        elif dim.axis == ra - 2:
            out.update({a: dim, y: Dim(ry - 2, L)})
        else:
            batch(dim.axis + ry - ra)
    elif known == b:
        if dim.axis == rb - 2:
            out.update({b: dim, a: Dim(ra - 1, L)})
        elif dim.axis == rb - 1:
            out.update({b: dim, y: Dim(ry - 1, L)})
        else:
            batch(dim.axis + ry - rb)
    else:
        if dim.axis == ry - 1:
            out.update({y: dim, b: Dim(rb - 1, L)})
        elif dim.axis == ry - 2:
            out.update({y: dim, a: Dim(ra - 2, L)})
        else:
            batch(dim.axis)
    return out


@register("Gemm")
def gemm(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y[m, n] = sum_k op(A)[m, k] op(B)[k, n] + C``: as MatMul on 2-D operands, with ``C`` carrying ``Y``'s axis
    where it is not broadcast."""
    n = ref.node
    attrs = tr.view.attrs(n)
    ta, tb = int(attrs.get("transA", 0)), int(attrs.get("transB", 0))  # type: ignore[call-overload]
    a, b, y = n.input[0], n.input[1], n.output[0]
    c = n.input[2] if len(n.input) > 2 and n.input[2] else None
    a_m, a_k = (1, 0) if ta else (0, 1)
    b_k, b_n = (1, 0) if tb else (0, 1)
    L = dim.layout
    out: dict[str, Dim | None] = {a: None, b: None, y: None}

    def with_y(y_axis: int) -> None:
        out[y] = Dim(y_axis, L)
        if c is not None:
            sc = tr.shape(ref, c)
            ax = y_axis - (2 - len(sc))
            out[c] = Dim(ax, L) if ax >= 0 and sc[ax] != 1 else None

    if c is not None:
        out[c] = None
    if known == a:
        out[a] = dim
        if dim.axis == a_k:
            out[b] = Dim(b_k, L)
        else:
            with_y(0)
    elif known == b:
        out[b] = dim
        if dim.axis == b_k:
            out[a] = Dim(a_k, L)
        else:
            with_y(1)
    elif known == y:
        if dim.axis == 0:
            out[a] = Dim(a_m, L)
        else:
            out[b] = Dim(b_n, L)
        with_y(dim.axis)
    else:  # the bias C carries it
        sc = tr.shape(ref, c)  # type: ignore[arg-type]
        y_axis = dim.axis + (2 - len(sc))
        return gemm(tr, ref, y, Dim(y_axis, L)) | {c: dim}  # type: ignore[dict-item]
    return out


@register("Conv")
def conv(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y[N, M, ...] = conv(X[N, C, ...], W[M, C/g, k...]) + B[M]`` on the channel axis (axis 1 of X and Y).

    ``group == 1``: X's channels are contracted with W's axis 1 (the unit ends there); Y's channels come from W's
    axis 0 and B. Depthwise (``group == C == M``): the channel passes through with W's axis 0 and B, and ``group``
    follows the kept count. Other groupings, and the unit axis anywhere but the channels, are not followed.
    """
    n = ref.node
    x, w, y = n.input[0], n.input[1], n.output[0]
    b = n.input[2] if len(n.input) > 2 and n.input[2] else None
    group = int(tr.view.attrs(n).get("group", 1))  # type: ignore[call-overload]
    sx, sw = tr.shape(ref, x), tr.shape(ref, w)
    L = dim.layout
    out: dict[str, Dim | None] = {x: None, w: None, y: None}
    if b is not None:
        out[b] = None
    if not tr.view.is_constant(w) or (b is not None and not tr.view.is_constant(b)):
        raise tr.fail(ref, "a Conv whose weight is computed at run time")
    if known in (x, y) and dim.axis != 1:
        raise tr.fail(ref, "the unit axis is a spatial or batch axis of a Conv")
    if known == w and dim.axis not in (0, 1):
        raise tr.fail(ref, "the unit axis is a kernel axis of a Conv")
    if group == 1:
        if known == x or (known == w and dim.axis == 1):
            out.update({x: Dim(1, L), w: Dim(1, L)})
        else:
            out.update({y: Dim(1, L), w: Dim(0, L)})
            if b is not None:
                out[b] = Dim(0, L)
        return out
    if group == sx[1] == sw[0] and sw[1] == 1:
        out.update({x: Dim(1, L), y: Dim(1, L), w: Dim(0, L)})
        if b is not None:
            out[b] = Dim(0, L)
        tr.group.group_edits.append(GroupEdit(ref.index, canonical(L)))
        return out
    raise tr.fail(ref, f"a grouped Conv (group {group}) that is not depthwise")
