"""Convolution-channel groups of an ONNX graph, found by the coupled-dimension engine (docs/architecture.md).

Every Conv with constant weights (``group`` 1), every Gemm and every 2-D MatMul with a constant right operand makes
a set of output channels: axis 1 of its output (a ConvTranspose passes or ends channels but makes no group: the
plan's channel entries and the torch side name Conv, Gemm and MatMul layers only). :func:`find_channels` follows
each such axis with :func:`passes._core.dims.trace` (in ``channels`` mode), the walk that also finds heads, neurons
and widths: through activations, BatchNormalization and InstanceNormalization (their vectors go with the channels),
depthwise convs (their filters go with the channels, ``group`` follows the count), channel multipliers (a grouped
conv of one input channel per group: its groups follow the channels), pooling, Resize (a ``sizes`` entry follows the
count), Pad and Slice on other axes, Flatten / Reshape (channel ``c`` becomes features ``c * S .. c * S + S - 1`` of
a classifier), MatMuls with a constant on the spatial axes (UPerNet's pyramid pooling ``P_h @ x @ P_w^T``), to the
next layers' input channels, where it ends. A residual sum ties the producers of its inputs into ONE group (cut
together or not at all). A Concat along the channels lays its inputs side by side: the next conv's input axis is a
:class:`passes._core.dims.Parts` layout, and each input's group cuts its own part of it.

Removing channels ``R`` of a group deletes index ``R`` from every weight that carries them; the result equals the
unpruned model with the consumers' input slices ``R`` zeroed (the oracle, :mod:`passes._core.oracle`).

A group is *blocked* (never cut, reported with the walk's reason) when it reaches a graph input or output, a
normalisation over channels (LayerNorm: MobileViT's transformer, or a GroupNorm, which the width group cuts
instead), a Reshape or Transpose that splits the channel axis, an op with no rule, a grouped convolution whose
groups the channels do not follow (several input channels per group), a shape read at run time, a weight that
another node also reads, or a weight axis that another unit kind owns.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import onnx

from fileformat.metadata import pick_source
from passes._core.dims import Dim, DimGroup, TraceError, trace
from passes._core.graph import GraphView, NodeRef, analysis_view, metadata_scopes, node_scope
from passes._core.unit import ChannelGroup

log = logging.getLogger(__name__)

_LAYERS = ("Conv", "Gemm", "MatMul")


def module_path(view: GraphView, idx: int) -> str:
    """Torch module path of layer node ``idx`` (weight_map, then dynamo metadata), else ``graph:<node>``."""
    node = view.nodes[idx].node
    if len(node.input) > 1:
        base = view.constant_base(node.input[1])
        wmap = view.weight_map
        # a weight the exporter stored once for several layers (all zeros) is told apart by the node's scope
        src = pick_source(wmap.get(base or ""), node_scope(node) or base or "")
        if src is not None:
            param = str(src["param"])
            return param[: -len(".weight")] if param.endswith(".weight") else param
    scope = node_scope(node) if metadata_scopes(node) else None  # the dynamo exporter's torch module path
    if scope:
        return scope
    return f"graph:{node.name or f'#{idx}'}"


def _scope_of(view: GraphView, idx: int, path: str) -> str:
    name = view.nodes[idx].node.name
    if path.startswith("decoder.") or path == "decoder":
        return "decoder"
    if path.startswith("graph:") and ("/decoder/" in name or name.startswith("decoder")):
        return "decoder"
    return "backbone"


def _seed(view: GraphView, ref: NodeRef) -> Dim | None:
    """The output-channel axis that layer node ``ref`` makes, or ``None`` when it makes none."""
    node = ref.node
    if node.op_type not in _LAYERS or len(node.input) < 2 or not view.is_constant(node.input[1]):
        return None
    if any(i and not view.is_constant(i) for i in node.input[2:3]):
        return None
    shape = view.shape(node.output[0])
    w = view.shape(node.input[1])
    if shape is None or w is None or len(w) != 2 and node.op_type != "Conv":
        return None
    if node.op_type == "Conv":
        if int(view.attrs(node).get("group", 1)) != 1:
            return None
    elif node.op_type == "Gemm":
        if int(view.attrs(node).get("transA", 0)):
            return None
    elif len(shape) != 2:  # a 3-D MatMul is a transformer's: its units are heads, neurons and widths
        return None
    return Dim(1, ((shape[1], True),))


def _source_nodes(view: GraphView, group: DimGroup) -> list[int]:
    """The layer nodes that make the group's channels (their weight's output axis carries them)."""
    out = []
    for i in sorted(group.nodes):
        node = view.nodes[i].node
        if node.op_type in _LAYERS and node.output[0] in group.dims and node.input[1] in group.sources:
            out.append(i)
    return out


def find_channels(
    model: onnx.ModelProto, view: GraphView | None = None, claimed: Mapping[tuple[str, int], str] | None = None
) -> list[ChannelGroup]:
    """Every channel group of ``model`` (blocked ones included, with the reason), in graph order of their first
    layer. ``claimed``: ``{(weight, axis): owner}`` axes that another unit kind cuts; a group touching one is
    blocked (one owner per weight axis)."""
    view = view or analysis_view(model)
    found: list[ChannelGroup] = []
    failed: dict[str, tuple[ChannelGroup, set[str]]] = {}  # reason -> the blocked group, the tensors it reached
    for ref in view.nodes:
        dim = _seed(view, ref)
        seed = ref.node.output[0]
        if dim is None or any(seed in g.group.dims for g in found if g.group is not None):
            continue
        if any(seed in reached for _, reached in failed.values()):
            continue  # part of a group that was already found blocked
        path = module_path(view, ref.index)  # the seed's layer names the group: its output is the group's alone
        unit = ChannelGroup(id=path, kind="channels", anchor=seed, count=dim.size, view=view)
        unit.layers, unit.source_nodes, unit.scope = [path], [ref.index], _scope_of(view, ref.index, path)
        try:
            group = trace(view, seed, dim, channels=True)
        except TraceError as exc:
            unit.skip_reason = str(exc)
            if ("LayerNormalization" in unit.skip_reason and "normalises over the unit axis" in unit.skip_reason) or (
                "a GroupNorm's statistics" in unit.skip_reason
            ):
                unit.skip_reason += " (a transformer's width: python -m passes.slice_width --kind width cuts it)"
            if unit.skip_reason in failed:  # stopped at the same node for the same reason: reported as one
                first, reached = failed[unit.skip_reason]
                first.layers.append(path)
                reached |= exc.reached | {seed}
                continue
            failed[unit.skip_reason] = (unit, exc.reached | {seed})
            found.append(unit)
            continue
        unit.group = group
        unit.params_per_unit = group.params // group.count
        unit.flops_per_unit = group.flops // group.count
        unit.source_nodes = _source_nodes(view, group) or [ref.index]
        unit.layers = [module_path(view, i) for i in unit.source_nodes]
        scopes = {_scope_of(view, i, p) for i, p in zip(unit.source_nodes, unit.layers, strict=True)}
        unit.scope = scopes.pop() if len(scopes) == 1 else "mixed"
        owner = next(
            (claimed[(ts.tensor, ts.axis)] for ts in group.slices.values() if (ts.tensor, ts.axis) in (claimed or {})),
            None,
        )
        if owner is not None:
            unit.skip_reason = f"its axis is cut as {owner} (one owner per weight axis)"
        found.append(unit)
    # a blocked seed whose channels a later group took over (a conv added to a concatenation) is not a group
    return [g for g in found if g.group is not None or not any(g.anchor in h.group.dims for h in found if h.group)]


def in_scope(groups: Sequence[ChannelGroup], scope: str = "all") -> list[ChannelGroup]:
    """The groups that can be cut, restricted to ``scope`` (``all``, ``decoder`` or ``backbone``)."""
    if scope not in ("all", "decoder", "backbone"):
        raise ValueError(f"unknown scope {scope!r}")
    return [g for g in groups if g.prunable and (scope == "all" or g.scope == scope)]
