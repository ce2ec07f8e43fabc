"""Contractions: MatMul, Gemm, Einsum, Conv, ConvTranspose. The unit axis is an output axis (rows of ``A``, columns
of ``B``, output channels) that passes to the output, a contracted axis that ends here (the next layer's rows: a
*sink*), or a batch axis that passes through.

* MatMul ``Y[..., m, n] = sum_k A[..., m, k] B[..., k, n]`` (batch axes broadcast, aligned right);
* Gemm ``Y = op(A) op(B) + C`` (``op`` transposes with ``transA`` / ``transB``; ``C`` broadcasts to ``Y``);
* Einsum ``Y[out labels] = sum over the other labels of prod_i X_i[labels_i]``: a label is one axis in every
  operand that has it, summed when the output lacks it (torchvision's MaxViT: ``BGHID,BGHJD->BGHIJ``);
* Conv ``Y[N, M, ...] = conv(X[N, C, ...], W[M, C/g, k...]) + B[M]``;
* ConvTranspose ``Y[N, M, ...] = conv_transpose(X[N, C, ...], W[C, M/g, k...]) + B[M]`` (its weight holds the input
  channels first).

A grouped convolution (``g`` groups of ``ci = C/g`` input and ``co = M/g`` output channels, of either kind) is cut by
whole groups: the unit is the group, ``X``'s channel axis has the layout ``groups x (ci, carried)``, ``Y``'s and
the weight's output axis ``groups x (co, carried)``, and ``group`` follows the kept count
(:class:`~passes._core.dims.group.GroupEdit`). A depthwise conv (``ci = co = 1``) passes the channel; a channel
multiplier (``ci = 1``: PiT's and FastViT's downsampling, ``co`` outputs per input channel) turns each input
channel into ``co`` consecutive outputs. Cutting some channels inside each group is not followed: the unit would
have to be the same channels of every group, which no tensor outside the conv is laid out as.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from passes._core.dims.group import GroupEdit
from passes._core.dims.layout import Dim, Layout, canonical
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
    follows the kept count. Other groupings are cut by whole groups (the module docstring); the unit axis anywhere
    but the channels is not followed.
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
    return _by_groups(tr, ref, known, dim, group, (sw[1], sw[0] // group))


def _inner(layout: Layout, n: int) -> Layout | None:
    """``layout`` without a trailing carried factor of ``n`` entries (the channels of one group): the layout of the
    groups, or ``None`` when the axis is not laid out as ``groups x (n, carried)``."""
    if n == 1:
        return canonical(layout)
    size, unit = layout[-1]
    if unit or size % n:
        return None
    return canonical(layout[:-1] + (((size // n, False),) if size > n else ()))


def _by_groups(
    tr: Tracer, ref: NodeRef, known: str, dim: Dim, group: int, per: tuple[int, int]
) -> dict[str, Dim | None]:
    """A grouped Conv or ConvTranspose cut by whole groups (see the module docstring): ``per`` is ``(ci, co)``, the
    input and output channels of one group. The weight's axis 0 holds the groups (Conv: ``groups x co`` outputs,
    ConvTranspose: ``groups x ci`` inputs), its axis 1 the channels inside one group."""
    n = ref.node
    x, w, y = n.input[0], n.input[1], n.output[0]
    b = n.input[2] if len(n.input) > 2 and n.input[2] else None
    ci, co = per
    why = (
        f"a grouped {n.op_type} (group {group}) that is not depthwise, whose groups the unit does not follow: each "
        f"group's {ci} input and {co} output channels would be cut inside it (only whole groups are)"
    )
    if known == w and dim.axis == 1:
        raise tr.fail(ref, why)
    from_input = known == x or (known == w and n.op_type == "ConvTranspose")
    groups = _inner(dim.layout, ci if from_input else co)
    if groups is None or not any(unit for _, unit in groups):
        raise tr.fail(ref, why)
    xl, yl = canonical(groups + ((ci, False),)), canonical(groups + ((co, False),))
    out: dict[str, Dim | None] = {x: Dim(1, xl), y: Dim(1, yl)}
    out[w] = Dim(0, xl) if n.op_type == "ConvTranspose" else Dim(0, yl)
    if b is not None:
        out[b] = Dim(0, yl)
    tr.group.group_edits.append(GroupEdit(ref.index, groups))
    return out


@register("ConvTranspose")
def conv_transpose(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """``Y[N, M, ...] = conv_transpose(X[N, C, ...], W[C, M/g, k...]) + B[M]`` on the channel axis (axis 1 of X and
    Y; BEiT's and ViTDet's feature pyramids upsample with it).

    ``group == 1``: X's channels are contracted with W's axis 0 (the unit ends there); Y's channels come from W's
    axis 1 and B. Grouped: cut by whole groups (the module docstring); a depthwise one passes the channel."""
    n = ref.node
    x, w, y = n.input[0], n.input[1], n.output[0]
    b = n.input[2] if len(n.input) > 2 and n.input[2] else None
    group = int(tr.view.attrs(n).get("group", 1))  # type: ignore[call-overload]
    sw = tr.shape(ref, w)
    L = dim.layout
    out: dict[str, Dim | None] = {x: None, w: None, y: None}
    if b is not None:
        out[b] = None
    if not tr.view.is_constant(w) or (b is not None and not tr.view.is_constant(b)):
        raise tr.fail(ref, "a ConvTranspose whose weight is computed at run time")
    if known in (x, y) and dim.axis != 1:
        raise tr.fail(ref, "the unit axis is a spatial or batch axis of a ConvTranspose")
    if known == w and dim.axis not in (0, 1):
        raise tr.fail(ref, "the unit axis is a kernel axis of a ConvTranspose")
    if group == 1:
        if known == x or (known == w and dim.axis == 0):
            out.update({x: Dim(1, L), w: Dim(0, L)})
        else:
            out.update({y: Dim(1, L), w: Dim(1, L)})
            if b is not None:
                out[b] = Dim(0, L)
        return out
    return _by_groups(tr, ref, known, dim, group, (sw[0] // group, sw[1]))


def einsum_labels(equation: str, ranks: list[int]) -> tuple[list[str], str] | None:
    """The labels of each input (one per axis) and of the output of an Einsum ``equation`` over inputs of
    ``ranks``; an ellipsis becomes labels of its own (``0``, ``1``, ...; aligned right, as it broadcasts). Implicit
    output: the ellipsis, then the labels used once, sorted. ``None`` when the equation does not parse."""
    eq = equation.replace(" ", "")
    lhs, arrow, rhs = eq.partition("->")
    terms = lhs.split(",")
    if len(terms) != len(ranks):
        return None
    dots = max((r - len(t.replace("...", "")) for t, r in zip(terms, ranks, strict=True) if "..." in t), default=0)
    ell = "".join(str(i) for i in range(dots))
    labels = []
    for t, r in zip(terms, ranks, strict=True):
        k = r - len(t.replace("...", ""))
        full = t.replace("...", ell[dots - k :]) if "..." in t else t
        if len(full) != r or not all(c.isalpha() or c.isdigit() for c in full):
            return None
        labels.append(full)
    if arrow:
        out = rhs.replace("...", ell)
    else:
        counts = "".join(labels)
        out = ell + "".join(sorted(c for c in set(counts) if c.isalpha() and counts.count(c) == 1))
    return labels, out


@register("Einsum")
def einsum(tr: Tracer, ref: NodeRef, known: str, dim: Dim) -> dict[str, Dim | None]:
    """The unit axis's label is that axis in every operand that has it (an operand where it has size 1 broadcasts
    and does not carry it); when the output lacks the label the unit is summed over and ends here, as at a
    MatMul's contracted axis (a sum over one operand alone is a reduction: only in ``sums`` mode, as ReduceSum). A
    label repeated in one operand (a diagonal or trace) is refused."""
    n = ref.node
    ins = list(n.input)
    y = n.output[0]
    if len(set(ins)) != len(ins):
        raise tr.fail(ref, "an Einsum of a tensor with itself")
    shapes = [tr.shape(ref, i) for i in ins]
    equation = tr.view.attrs(n).get("equation", b"")
    text = equation.decode() if isinstance(equation, bytes) else str(equation)
    parsed = einsum_labels(text, [len(s) for s in shapes])
    if parsed is None:
        raise tr.fail(ref, "an Einsum equation that does not parse")
    labels, out_labels = parsed
    where = labels[ins.index(known)] if known != y else out_labels
    label = where[dim.axis]
    if any(t.count(label) > 1 for t in (*labels, out_labels)):
        raise tr.fail(ref, f"takes a diagonal along the unit axis (label {label!r} repeats in one operand)")
    out: dict[str, Dim | None] = {}
    for i, t, s in zip(ins, labels, shapes, strict=True):
        if label in t and (s[t.index(label)] != 1 or i == known):
            out[i] = Dim(t.index(label), dim.layout)
        else:
            out[i] = None
    if label not in out_labels and sum(d is not None for d in out.values()) < 2 and not tr.sums:
        raise tr.fail(ref, f"sums over the unit axis (label {label!r} of one operand only)")
    out[y] = Dim(out_labels.index(label), dim.layout) if label in out_labels else None
    return out
