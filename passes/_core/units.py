"""Prunable units on ONNX graphs: attention blocks (heads), MLPs (hidden neurons), the channels of every head
(``head_dim``) and transformer widths (``width``), found by the dimension tracer of :mod:`passes._core.dims`,
scored by weight norms, and removed by one shared apply step.

Discovery is anchored, not pattern-matched: an attention block starts from a ``Softmax`` over the last axis of a
``[..., heads, N, M]`` tensor (the head axis is the one before the two token axes), an MLP from a linear layer
(MatMul/Gemm with a constant weight) whose output reaches exactly one other linear layer through elementwise ops
only. From there :func:`passes._core.dims.trace` follows the unit axis wherever it goes; whatever the exporter did
(fused or separate q/k/v, Split or Slice+Squeeze, heads folded into ``-1``, runtime shapes) is handled by the op
rules, and what they cannot follow makes the unit skipped with the reason.

Cost model (for budget allocators): removing one unit removes ``params_per_unit`` parameters (every sliced float
constant scales linearly with the unit count) and ``flops_per_unit`` FLOPs (every contraction op on the unit axis
scales linearly: the qkv columns, the score and context batched MatMuls, the output-projection rows).

Importance of unit ``u`` (:mod:`passes._core.importance`): ``L1 = sum |w|`` or ``L2 = sqrt(sum w^2)`` over the
weights that produce it (the q/k/v columns of head ``u``; fc1's column ``u``) and consume it (the projection rows;
fc2's row ``u``). Selection keeps the ``n`` highest scores; ties go to the lower index.

Indices: ``keep_sets`` are relative to the model given (its current units); plans (``vitseg.plan`` and
``--plan`` files) are relative to the original unpruned model and are translated with the model's stored plan, so
applying the same plan twice changes nothing the second time.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from fileformat.errors import PassError, UsageError
from fileformat.metadata import (
    append_history,
    claim_sources,
    ranked_sources,
    read_metadata,
    weight_sources,
    write_metadata,
)
from fileformat.params import count_params
from fileformat.plan import QK_SUFFIX, check_indices, empty_plan, read_plan, write_plan
from passes._core.canonical import canonicalize, merge_constants
from passes._core.dims import (
    ELEMENTWISE,
    Dim,
    DimGroup,
    TraceError,
    apply_groups,
    kept_positions,
    trace,
    unit_copies,
    unit_count,
    unit_inner,
)
from passes._core.finalize import finalize
from passes._core.graph import GraphView, NodeRef, metadata_scopes, node_scope
from passes._core.importance import NORMS, importance
from passes._core.report import PassReport

log = logging.getLogger(__name__)

SECTION = {"heads": "heads", "neurons": "neurons", "width": "width", "head_dim": "head_dim"}
#: what one unit of each kind is, for messages
UNIT_NAMES = {"heads": "heads", "neurons": "neurons", "width": "channels", "head_dim": "head channels"}


# -------------------------------------------------------------------------------------------------------- units
@dataclass
class PruneUnit:
    """One prunable unit group: ``count`` units (heads / neurons) of ``unit_size`` channels each.

    ``id`` is the torch module path (``backbone.stages.2.1.transformer.0.attn``) when the exporter's weight map or
    node metadata says it, else ``graph:<anchor node>``. ``skip_reason`` is set when the unit cannot be cut safely.
    """

    id: str
    kind: str
    anchor: str
    count: int
    unit_size: int = 1
    params_per_unit: int = 0
    flops_per_unit: int = 0
    skip_reason: str | None = None
    group: DimGroup | None = field(default=None, repr=False)
    view: GraphView | None = field(default=None, repr=False, compare=False)

    @property
    def prunable(self) -> bool:
        return self.skip_reason is None and self.group is not None

    @property
    def params(self) -> int:
        """Parameters that scale with the unit count (all of them go when every unit goes)."""
        return self.params_per_unit * self.count

    @property
    def flops(self) -> int:
        return self.flops_per_unit * self.count


@dataclass
class AttentionBlock(PruneUnit):
    """A multi-head attention block: ``num_heads`` heads of ``head_dim``."""

    @property
    def num_heads(self) -> int:
        return self.count

    @property
    def head_dim(self) -> int:
        return self.unit_size

    @property
    def params_per_head(self) -> int:
        return self.params_per_unit

    @property
    def flops_per_head(self) -> int:
        return self.flops_per_unit


@dataclass
class Mlp(PruneUnit):
    """A transformer MLP (fc1 -> activation -> fc2) with ``hidden`` neurons."""

    @property
    def hidden(self) -> int:
        return self.count

    @property
    def params_per_neuron(self) -> int:
        return self.params_per_unit

    @property
    def flops_per_neuron(self) -> int:
        return self.flops_per_unit


# ---------------------------------------------------------------------------------------------------- unit ids
def _module_paths(view: GraphView, group: DimGroup) -> list[str]:
    wmap = view.weight_map
    paths = []
    for name in group.slices:
        sources = weight_sources(wmap.get(name))
        if len(sources) == 1:  # a tensor stored once for several modules (zero biases) names none of them
            paths.append(str(sources[0]["param"]).rsplit(".", 1)[0])
    return paths


def _scopes(view: GraphView, group: DimGroup) -> list[str]:
    """Deepest torch module scope of the group's nodes, from the dynamo exporter's node metadata if present."""
    return [scopes[-1] for scopes in (metadata_scopes(view.nodes[i].node) for i in group.nodes) if scopes]


def _common_module(paths: Sequence[str]) -> str:
    if not paths:
        return ""
    parts = [p.split(".") for p in paths]
    common: list[str] = []
    for items in zip(*parts):
        if len(set(items)) != 1:
            break
        common.append(items[0])
    if len(set(paths)) == 1 and len(paths) > 0:
        return paths[0]
    return ".".join(common)


def _unit_id(view: GraphView, group: DimGroup, anchor: str) -> str:
    module = _common_module(_module_paths(view, group)) or _common_module(_scopes(view, group))
    return module if module else f"graph:{anchor}"


def _dedupe_ids(units: list[PruneUnit]) -> None:
    seen: dict[str, int] = {}
    for u in units:
        seen[u.id] = seen.get(u.id, 0) + 1
    for u in units:
        if seen[u.id] > 1:
            u.id = f"graph:{u.anchor}"


# --------------------------------------------------------------------------------------------------- discovery
def _finish(unit: PruneUnit, group: DimGroup) -> None:
    unit.group = group
    unit.params_per_unit = group.params // group.count
    unit.flops_per_unit = group.flops // group.count


def find_attention_blocks(model: onnx.ModelProto, view: GraphView | None = None) -> list[AttentionBlock]:
    """Every attention block of ``model`` (skipped ones included, with ``skip_reason``), in graph order.

    Without ``view`` the blocks are found on the canonical form of ``model`` (:mod:`passes._core.canonical`);
    their tensor names are that form's (``block.view.model``)."""
    view = view or GraphView(canonicalize(model))
    if "heads" in view.found:  # the head-channel and width discovery start from the blocks found here
        return list(view.found["heads"])
    blocks: list[AttentionBlock] = []
    claimed: set[str] = set()
    for ref in view.nodes:
        n = ref.node
        if n.op_type != "Softmax" or n.domain not in ("", "ai.onnx"):
            continue
        if n.output[0] in claimed:
            continue
        shape = view.shape(n.input[0])
        block = AttentionBlock(id=f"graph:{ref.name}", kind="heads", anchor=ref.name, count=0, view=view)
        if shape is None or len(shape) < 3:
            block.skip_reason = (
                "the attention scores have no static shape (a dynamic batch or size?): shapes computed at run time "
                "cannot be rewritten; export with fixed sizes to prune"
                if shape is None
                else "the attention scores are not [..., heads, N, M]"
            )
            blocks.append(block)
            continue
        r = len(shape)
        axis = int(view.attrs(n).get("axis", -1 if view.opset >= 13 else 1))
        if axis % r != r - 1:
            continue  # not attention over keys
        block.count = shape[r - 3]
        if block.count < 2:
            block.skip_reason = f"{block.count} head: nothing to remove"
            blocks.append(block)
            continue
        try:
            group = trace(view, n.output[0], Dim(r - 3, ((block.count, True),)))
            softmaxes = [i for i in group.nodes if view.nodes[i].node.op_type == "Softmax"]
            if len(softmaxes) != 1:
                raise TraceError(
                    f"the head axis is coupled with {len(softmaxes) - 1} other attention block(s) (shared weights?)"
                )
            if not group.sources or not group.sinks:
                raise TraceError("no q/k/v or output-projection weight carries the head axis")
            claimed.update(group.dims)
            block.id = _unit_id(view, group, ref.name)
            block.unit_size = unit_inner(group.slices[group.sinks[0]].layout)
            _finish(block, group)
        except TraceError as exc:
            block.skip_reason = str(exc)
        blocks.append(block)
    _dedupe_ids(blocks)  # type: ignore[arg-type]
    view.found["heads"] = blocks
    return list(blocks)


def _linear_weight(view: GraphView, ref: NodeRef) -> tuple[str, int] | None:
    """(weight name, output features) of a linear layer with a constant weight and a computed input: a MatMul or
    Gemm with a 2-D weight, or a 1x1 Conv without groups (the MLPs of ConvNeXt, FastViT, MobileViTv2, ...)."""
    n = ref.node
    if n.op_type not in ("MatMul", "Gemm", "Conv") or len(n.input) < 2 or view.is_constant(n.input[0]):
        return None
    w = n.input[1]
    shape = view.shape(w)
    if not view.is_constant(w) or shape is None:
        return None
    if n.op_type == "Conv":
        if len(shape) < 3 or any(k != 1 for k in shape[2:]) or int(view.attrs(n).get("group", 1)) != 1:
            return None
        return w, shape[0]
    if len(shape) != 2:
        return None
    trans_b = n.op_type == "Gemm" and int(view.attrs(n).get("transB", 0))
    return w, shape[0] if trans_b else shape[1]


# ops an MLP's hidden activations may pass between fc1 and fc2 (besides elementwise ones): layout changes,
# per-channel ops (LeViT's BatchNorm, SegFormer's depthwise conv in MixFFN) and the halving of a packed gated MLP
# (SwiGLU: fc1 -> Split or two Slices -> silu(a) * b -> fc2); the tracer checks each exactly
_MLP_PATH = {"BatchNormalization", "Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Split", "Slice"}


def _on_mlp_path(view: GraphView, ref: NodeRef, depthwise: bool) -> bool:
    n = ref.node
    if n.op_type in ELEMENTWISE or n.op_type in _MLP_PATH:
        return True
    if n.op_type == "Conv" and depthwise:
        w = view.shape(n.input[1]) if len(n.input) > 1 else None
        return w is not None and len(w) >= 2 and w[1] == 1 and int(view.attrs(n).get("group", 1)) == w[0] > 1
    return False


def _mlp_sink(view: GraphView, fc1: NodeRef, limit: int = 64) -> tuple[NodeRef | None, str]:
    """The one linear layer (fc2) that linear layer ``fc1``'s output reaches through elementwise and layout ops
    only, or ``None`` and why not. A token-wise linear's output may pass a depthwise conv (MixFFN) and must reach a
    MatMul/Gemm; a 1x1 conv's must reach a 1x1 conv. The only other computed tensors the path may meet are gates:
    outputs of linear layers that read fc1's input (SwiGLU's ``silu(fc1_g(x)) * fc1_x(x)``)."""
    start, depthwise = fc1.node.output[0], fc1.node.op_type != "Conv"
    closure = {start}
    frontier = [start]
    sinks: dict[int, NodeRef] = {}
    steps = 0
    while frontier:
        t = frontier.pop()
        if t in view.graph_outputs:
            return None, "its output reaches the model output"
        for ref, k in view.consumers.get(t, []):
            steps += 1
            if steps > limit:
                return None, f"no second linear layer within {limit} elementwise ops"
            if k == 0 and _linear_weight(view, ref) is not None and (ref.node.op_type == "Conv") == (not depthwise):
                sinks[ref.index] = ref  # fc2 is of fc1's kind: token-wise linears, or 1x1 convs
                continue
            if not _on_mlp_path(view, ref, depthwise):
                return None, f"its output reaches {ref.node.op_type} {ref.name!r}, which an MLP activation is not"
            for o in ref.node.output:
                if o and o not in closure:
                    closure.add(o)
                    frontier.append(o)
    for t in closure:  # every other input of the elementwise ops must be a constant or part of the flow
        for ref, _ in view.consumers.get(t, []):
            if ref.index in sinks:
                continue
            others = [i for i in ref.node.input if i and i not in closure and not view.is_constant(i)]
            if any(not _is_gate(view, i, fc1) for i in others):
                return None, f"{ref.node.op_type} {ref.name!r} mixes it with another computed tensor"
    if len(sinks) != 1:
        return None, f"its output reaches {len(sinks)} linear layers, not one fc2"
    return next(iter(sinks.values())), ""


def _is_gate(view: GraphView, t: str, fc1: NodeRef) -> bool:
    """Whether ``t`` is computed, through elementwise ops only, from linear layers of ``fc1``'s kind that read
    ``fc1``'s input (the other branch of a gated MLP)."""
    frontier, seen, found = [t], {t}, False
    while frontier:
        ref = view.producer.get(frontier.pop())
        if ref is None:
            return False
        if _linear_weight(view, ref) is not None and ref.node.op_type == fc1.node.op_type:
            if ref.node.input[0] != fc1.node.input[0]:
                return False
            found = True
            continue
        if ref.node.op_type not in ELEMENTWISE or len(seen) > 16:
            return False
        for i in ref.node.input:
            if i and i not in seen and not view.is_constant(i):
                seen.add(i)
                frontier.append(i)
    return found


def not_mlps(model: onnx.ModelProto, view: GraphView | None = None) -> list[tuple[str, str]]:
    """``(linear layer, why it does not start an MLP)`` for every linear layer that is not an MLP's fc1."""
    view = view or GraphView(canonicalize(model))
    out = []
    for ref in view.nodes:
        if _linear_weight(view, ref) is not None:
            sink, why = _mlp_sink(view, ref)
            if sink is None:
                out.append((node_scope(ref.node) or ref.name, why))
    return out


def find_mlps(model: onnx.ModelProto, view: GraphView | None = None) -> list[Mlp]:
    """Every transformer MLP of ``model`` (fc1 -> elementwise activation -> fc2, or a gated one: fc2(act(fc1_g(x))
    * fc1_x(x)), with two fc1 or one halved), skipped ones with a reason; found on the canonical form of ``model``
    unless ``view`` is given (as :func:`find_attention_blocks`). The neurons are traced from fc2's input."""
    view = view or GraphView(canonicalize(model))
    if "neurons" in view.found:
        return list(view.found["neurons"])
    mlps: list[Mlp] = []
    seen_fc2: set[int] = set()
    for ref in view.nodes:
        fc1 = _linear_weight(view, ref)
        if fc1 is None:
            continue
        # a depthwise conv between two token-wise linears is SegFormer's MixFFN; between two 1x1 convs it is a
        # MobileNet inverted residual, whose channels slice_channels cuts
        fc2 = _mlp_sink(view, ref)[0]
        if fc2 is None or fc2.index in seen_fc2:  # (a gated MLP's second fc1 reaches the fc2 of the first)
            continue
        seen_fc2.add(fc2.index)
        w2 = _linear_weight(view, fc2)[0]  # type: ignore[index]
        x2 = fc2.node.input[0]  # the hidden activations, traced from fc2's side: a packed fc1 holds them twice
        shape, axis = view.shape(x2), _contraction_axis(view, fc2, x2)
        hidden = shape[axis] if shape is not None and axis is not None else 0
        mlp = Mlp(id=f"graph:{ref.name}", kind="neurons", anchor=ref.name, count=hidden, view=view)
        if shape is None or axis is None:
            mlp.skip_reason = "the fc2 input has no static shape"
            mlps.append(mlp)
            continue
        if hidden < 2:
            mlp.skip_reason = "one neuron: nothing to remove"
            mlps.append(mlp)
            continue
        try:
            group = trace(view, x2, Dim(axis, ((hidden, True),)))
            w1 = fc1[0]
            # fc1 (and a gated MLP's second fc1, which reads the same input) makes the hidden axis; fc2 consumes it
            made_by = [view.consumer_nodes(t)[0].node.input[0] for t in group.sources]
            if group.sinks != [w2] or w1 not in group.sources or set(made_by) != {ref.node.input[0]}:
                raise TraceError("the hidden axis reaches more than fc1 and one fc2")
            mlp.id = _unit_id(view, group, ref.name)
            _finish(mlp, group)
        except TraceError as exc:
            mlp.skip_reason = str(exc)
        mlps.append(mlp)
    _dedupe_ids(mlps)  # type: ignore[arg-type]
    view.found["neurons"] = mlps
    return list(mlps)


def _data_operand(view: GraphView, weight: str) -> tuple[NodeRef, str] | None:
    """The linear layer reading constant ``weight`` and its computed (activation) input."""
    for ref in view.consumer_nodes(weight):
        if ref.node.op_type in ("MatMul", "Gemm", "Conv"):
            data = [i for i in ref.node.input[:2] if i and i != weight and not view.is_constant(i)]
            if data:
                return ref, data[0]
    return None


def _contraction_axis(view: GraphView, ref: NodeRef, data: str) -> int | None:
    rank = view.rank(data)
    if rank is None:
        return None
    if ref.node.op_type == "Conv":
        return 1
    if ref.node.op_type == "Gemm":
        return 0 if int(view.attrs(ref.node).get("transA", 0)) else 1
    return rank - 1 if data == ref.node.input[0] else rank - 2


def _from_constants(view: GraphView, t: str, depth: int = 6) -> bool:
    """Whether ``t`` is a constant or computed from constants alone (within ``depth`` ops)."""
    if view.value(t) is not None:
        return True
    ref = view.producer.get(t)
    if ref is None or depth == 0:
        return False
    return all(_from_constants(view, i, depth - 1) for i in ref.node.input if i)


def _scores_matmul(view: GraphView, block: AttentionBlock) -> NodeRef | None:
    """The ``q @ k^T`` MatMul whose output reaches the block's Softmax through elementwise/layout ops."""
    t = view.nodes[next(i for i in block.group.nodes if view.nodes[i].name == block.anchor)].node.input[0]  # type: ignore[union-attr]
    for _ in range(12):
        ref = view.producer.get(t)
        if ref is None:
            return None
        if ref.node.op_type == "MatMul":
            return ref
        # (a bias computed from constants alone, as LeViT's gathered attention biases or SwinV2's exp(clamp(logit
        # scale)), is not the path)
        carried = [i for i in ref.node.input if i and i in block.group.dims and not _from_constants(view, i)]  # type: ignore[union-attr]
        if len(carried) != 1:
            return None
        t = carried[0]
    return None


def _one_head_seeds(view: GraphView, block: AttentionBlock) -> list[tuple[str, Dim]]:
    """``q`` of the ``q @ k^T`` MatMul and ``v`` of the ``softmax @ v`` MatMul of a block with one head (SegFormer's
    first stage, EfficientViT's cascaded heads), found by walking from the Softmax through ops with one computed
    input (a scale, a constant bias); their last axis is the head's channels."""
    soft = next(r for r in view.nodes if r.name == block.anchor)
    scores, t_scores = _walk_to_matmul(view, soft.node.input[0], up=True)
    context, t_context = _walk_to_matmul(view, soft.node.output[0], up=False)
    found = [scores.node.input[0]] if scores is not None else []
    if context is not None and context.node.input[0] == t_context:
        found.append(context.node.input[1])
    shapes = {name: view.shape(name) for name in found}
    return [(name, Dim(len(shape) - 1, ((shape[-1], True),))) for name, shape in shapes.items() if shape]


def _walk_to_matmul(view: GraphView, t: str, up: bool) -> tuple[NodeRef | None, str]:
    """The MatMul of two computed operands reached from tensor ``t`` (through its producers if ``up``, else its
    only consumers) across ops with one computed input, and the tensor it reads on that path; ``None`` if the path
    branches or ends first."""
    for _ in range(12):
        if up:
            refs = [view.producer[t]] if t in view.producer else []
        else:
            refs = view.consumer_nodes(t)
        if len(refs) != 1:
            break
        node = refs[0].node
        computed = [i for i in node.input if i and view.value(i) is None]  # (a bias from constants is not data)
        if node.op_type == "MatMul":
            return (refs[0], t) if len(computed) == 2 else (None, t)
        if len(computed) != 1:
            break
        t = computed[0] if up else node.output[0]
    return None, t


def _new_unit(kind: str, view: GraphView, anchor: str, count: int, unit_size: int) -> PruneUnit:
    return PruneUnit(id=f"graph:{anchor}", kind=kind, anchor=anchor, count=count, unit_size=unit_size, view=view)


def find_head_dims(model: onnx.ModelProto, view: GraphView | None = None) -> list[PruneUnit]:
    """The per-head channel groups of every attention block: channel ``j`` of every head at once.

    Seeded from the output projection's input (layout ``(heads, head_dim)``, the unit is the inner factor) and
    from ``q`` at the ``q @ k^T`` MatMul: the q/k channels (q and k meet in the scores) and the v channels (v
    meets the softmax in the context) are two groups, named ``<block>#qk`` and ``<block>``. A fused qkv projection
    is split into its parts by the canonical form, so this holds for it too; q and v stay one group only where the
    graph ties them. Zeroing a unit's consuming weights (the projection rows, or the k columns)
    gives the pruned output exactly; the scale ``1/sqrt(head_dim)`` stays that of the original model. A block with
    one head has no head axis to trace: its groups are seeded at ``q`` and ``v`` (:func:`_one_head_seeds`).
    """
    view = view or GraphView(canonicalize(model))
    out: list[PruneUnit] = []
    for block in find_attention_blocks(model, view):
        if block.count == 1 and block.group is None:  # no head axis to follow: seed v and q themselves
            pair = _trace_seeds("head_dim", view, [(t, d, 1, None) for t, d in _one_head_seeds(view, block)[::-1]], out)
            if len(pair) == 2:  # v's channels, and q/k's apart from them: named like a block with heads
                pair[1].id = pair[0].id + QK_SUFFIX
            out += pair
            continue
        if not block.prunable:
            continue
        g = block.group
        assert g is not None
        seeds: list[tuple[str, Dim]] = []
        for sink in g.sinks:
            hit = _data_operand(view, sink)
            if hit is None or hit[1] not in g.dims:
                continue
            d = g.dims[hit[1]]
            i = next(k for k, (_, u) in enumerate(d.layout) if u)
            if i + 1 < len(d.layout):
                seeds.append((hit[1], Dim(d.axis, tuple((s, k == i + 1) for k, (s, _) in enumerate(d.layout)))))
        ids = [block.id] * len(seeds)
        scores = _scores_matmul(view, block)
        if scores is not None:
            q = scores.node.input[0]
            rank = view.rank(q)
            if rank and q in g.dims and g.dims[q].axis != rank - 1:
                seeds.append((q, Dim(rank - 1, ((view.shape(q)[rank - 1], True),))))  # type: ignore[index]
                ids.append(block.id + QK_SUFFIX if ids else block.id)  # q/k's own group when v's is apart
        out += _trace_seeds("head_dim", view, [(t, d, block.count, i) for (t, d), i in zip(seeds, ids)], out)
    _dedupe_ids(out)
    return out


def _trace_seeds(
    kind: str, view: GraphView, seeds: list[tuple[str, Dim, int, str | None]], found: list[PruneUnit]
) -> list[PruneUnit]:
    """One unit per ``(tensor, unit axis, unit size, id)`` seed not already inside a group of ``found`` (or of an
    earlier seed), traced (in width mode for widths); a seed without an id is named after its group's modules."""
    width = kind == "width"
    out: list[PruneUnit] = []
    for seed, dim, size, uid in seeds:
        if any(seed in u.group.dims for u in (*found, *out) if u.group is not None):
            continue
        unit = _new_unit(kind, view, seed, unit_count(dim.layout), size)
        try:
            group = trace(view, seed, dim, width=width, sums=True)
            if width and not (group.sources and group.sinks):
                raise TraceError("no weight produces or consumes the width (it reaches a model input or output?)")
            if not width and not group.sinks and sum(unit_copies(group.slices[w].layout) for w in group.sources) < 2:
                raise TraceError("no weight consumes the head channels")
            if width:  # named after the group, not the seed: an earlier cut must not rename the width
                unit.anchor = _width_anchor(view, group, seed)
            unit.id = uid or _unit_id(view, group, unit.anchor)
            _finish(unit, group)
        except TraceError as exc:
            unit.skip_reason = str(exc)
        if unit.count < 2:
            unit.skip_reason = f"one {'channel' if width else 'channel per head'}: nothing to remove"
        out.append(unit)
    return out


def _width_anchor(view: GraphView, group: DimGroup, seed: str) -> str:
    """The tensor a width is named after: the first of its group, in graph order, that a MatMul or Gemm reads as
    its data operand (the first block's q/k/v input). The seeds come from the blocks that can be cut in their own
    kind, so a block cut to one head by an earlier pass would otherwise move the name to its MLP's input."""
    read = [
        t
        for t in group.dims
        if any(c.node.op_type in ("MatMul", "Gemm") and c.node.input[0] == t for c in view.consumer_nodes(t))
    ]
    return min(read, key=lambda t: (view.producer[t].index if t in view.producer else -1, t)) if read else seed


def find_widths(model: onnx.ModelProto, view: GraphView | None = None) -> list[PruneUnit]:
    """The embedding dimension of every transformer (a MobileViT/Swin stage, a ViT's residual stream).

    Seeded from the input of each attention block's q/k/v projection and each MLP's fc1, and traced in width mode
    (:func:`passes._core.dims.trace`): the group runs from the weights that produce the width (a 1x1 conv, a patch
    embedding, Swin's patch merging), through the unfold/fold reshapes, LayerNorms, residual sums, q/k/v rows,
    projection columns and MLP, to the weights that consume it. LayerNorm then normalises over the kept channels
    (as a torch model built with that width does), so this cut is checked against torch, not by zeroing.
    """
    view = view or GraphView(canonicalize(model))
    seeds: list[tuple[str, int | None]] = []
    for block in find_attention_blocks(model, view):
        if block.prunable and block.group is not None and block.group.sources:
            hit = _data_operand(view, block.group.sources[0])
            if hit is not None:
                seeds.append((hit[1], _contraction_axis(view, hit[0], hit[1])))
    for mlp in find_mlps(model, view):
        if mlp.prunable:
            ref = next(r for r in view.nodes if r.name == mlp.anchor)
            seeds.append((ref.node.input[0], _contraction_axis(view, ref, ref.node.input[0])))
    traced = []
    for seed, axis in seeds:
        shape = view.shape(seed)
        if axis is not None and shape is not None:
            traced.append((seed, Dim(axis, ((shape[axis], True),)), 1, None))
    out = _trace_seeds("width", view, traced, [])
    _dedupe_ids(out)
    return out


def find_units(model: onnx.ModelProto, kind: str, view: GraphView | None = None) -> list[PruneUnit]:
    if kind == "heads":
        return list(find_attention_blocks(model, view))
    if kind == "neurons":
        return list(find_mlps(model, view))
    if kind == "width":
        return find_widths(model, view)
    if kind == "head_dim":
        return find_head_dims(model, view)
    raise ValueError(f"unknown unit kind {kind!r}")


# -------------------------------------------------------------------------------------------------- selection
def tensor_value(model: onnx.ModelProto, name: str) -> np.ndarray:
    """The value of initializer or Constant ``name`` of ``model`` (KeyError where it is neither)."""
    for init in model.graph.initializer:
        if init.name == name:
            return numpy_helper.to_array(init)
    for node in model.graph.node:
        if node.op_type == "Constant" and node.output[0] == name:
            return numpy_helper.to_array(node.attribute[0].t)
    raise KeyError(name)


def select_top(scores: np.ndarray, n_keep: int) -> list[int]:
    """Indices of the ``n_keep`` highest scores, ties to the lower index, returned sorted."""
    order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
    return sorted(order[:n_keep])


def keep_count(count: int, ratio: float) -> int:
    """Units kept when a fraction ``ratio`` is removed: ``count - floor(ratio * count)``, at least 1."""
    return max(1, count - int(math.floor(ratio * count + 1e-9)))


# ------------------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class UnitPruneConfig:
    """How many units each block keeps; exactly one of ``keep``, ``ratio``, ``keep_sets``, ``plan``.

    ``keep``: units kept per block (1 .. count). ``ratio``: fraction removed per block, in [0, 1).
    ``keep_sets``: ``{unit id: kept indices}`` relative to the given model; units not named keep everything.
    ``plan``: a plan in the ``vitseg.plan`` format (or just its section), indices relative to the original model.
    ``norm``: importance for ``keep``/``ratio`` ("l1" or "l2").
    """

    keep: int | None = None
    ratio: float | None = None
    keep_sets: Mapping[str, Sequence[int]] | None = None
    plan: Mapping[str, Any] | None = None
    norm: str = "l2"

    def validate(self) -> None:
        given = [x for x in (self.keep, self.ratio, self.keep_sets, self.plan) if x is not None]
        if len(given) != 1:
            raise UsageError("give exactly one of --keep, --ratio or --plan (keep_sets in the Python API).")
        if self.norm not in NORMS:
            raise UsageError(f"unknown norm {self.norm!r}; use one of {', '.join(NORMS)}.")
        if self.keep is not None and (isinstance(self.keep, bool) or int(self.keep) < 1):
            raise UsageError(f"--keep {self.keep}: every block must keep at least 1; give a count >= 1.")
        if self.ratio is not None and not (0.0 <= float(self.ratio) < 1.0):
            raise UsageError(f"--ratio {self.ratio}: the fraction removed must be in [0, 1).")


def plan_to_keep_sets(model: onnx.ModelProto, plan: Mapping[str, Any], kind: str) -> dict[str, list[int]]:
    """Translate a plan section (indices of the original model) into indices of ``model``'s current units.

    Accepts a full plan (``{"heads": {id: {"kept": [...], "total": n}}}``), a section's entries with bare lists
    (``{"heads": {id: [...]}}``) or just ``{id: [...]}``. Raises :class:`PassError` for an index that an earlier
    pass already removed, or a total that contradicts the model's stored plan.
    """
    section = SECTION[kind]
    if section in plan:
        entries = plan[section]
    elif any(s in plan for s in ("heads", "neurons", "channels", "slices", "version")):
        raise PassError(f"the plan has no {section!r} section; nothing to apply for this pass.")
    else:
        entries = plan
    if not isinstance(entries, Mapping):
        raise PassError(f"the plan's {section!r} section must map unit ids to kept indices.")
    stored = read_plan(model).get(section, {})
    out: dict[str, list[int]] = {}
    for uid, entry in entries.items():
        kept = entry.get("kept") if isinstance(entry, Mapping) else entry
        prev = stored.get(uid)
        total = int(prev["total"]) if prev else None
        if isinstance(entry, Mapping) and entry.get("total") is not None and total is not None:
            if int(entry["total"]) != total:
                raise PassError(f"{uid}: the plan says {entry['total']} in the original model, the model says {total}.")
        out[uid] = list(kept) if isinstance(kept, (list, tuple)) else kept
        if prev:
            orig = check_indices(uid, kept, total or 0, section)
            gone = [i for i in orig if i not in prev["kept"]]
            if gone:
                raise PassError(f"{uid}: {section} {gone} were already removed by an earlier pass; cannot keep them.")
            out[uid] = [prev["kept"].index(i) for i in orig]
    return out


def fingerprint(model: onnx.ModelProto, units: Sequence[PruneUnit]) -> dict[str, list[int]]:
    """``{unit id: [units in the original model, unit size]}`` of the prunable units: what a plan was made for."""
    stored = read_plan(model)
    out = {}
    for u in units:
        if u.prunable:
            prev = stored.get(SECTION[u.kind], {}).get(u.id)
            out[u.id] = [int(prev["total"]) if prev else u.count, u.unit_size]
    return out


def check_fingerprint(model: onnx.ModelProto, units: Sequence[PruneUnit], plan: Mapping[str, Any], kind: str) -> None:
    """Raise :class:`PassError` naming the differences when ``plan`` was made for a model with other units."""
    made_for = (plan.get("fingerprint") or {}).get(SECTION.get(kind, kind)) if isinstance(plan, Mapping) else None
    if not made_for:
        return
    here = fingerprint(model, units)
    diffs = []
    for uid in sorted(set(made_for) | set(here)):
        a, b = made_for.get(uid), here.get(uid)
        if a is None:
            diffs.append(f"{uid} is not in the plan's model")
        elif b is None:
            diffs.append(f"{uid} is not prunable in this model")
        elif list(a) != list(b):
            diffs.append(f"{uid}: {a[0]} {kind} of size {a[1]} there, {b[0]} of size {b[1]} here")
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise PassError(
            f"the plan was made for another model: {'; '.join(diffs[:3])}{more}. Make the plan on this model, or "
            "apply it to the model it was made for."
        )


def resolve_keep_sets(
    model: onnx.ModelProto, units: Sequence[PruneUnit], config: UnitPruneConfig
) -> dict[str, list[int]]:
    """Kept indices (current model) for every prunable unit, from the config; raises :class:`PassError`."""
    config.validate()
    prunable = [u for u in units if u.prunable]
    what = units[0].kind if units else "units"
    if config.keep is not None:
        too_few = [u for u in prunable if config.keep > u.count]
        if too_few:
            u = too_few[0]
            raise PassError(
                f"--keep {config.keep} is above the {u.count} {UNIT_NAMES.get(what, what)} of {u.id}"
                f"{f' (and {len(too_few) - 1} more blocks)' if len(too_few) > 1 else ''}; "
                f"give at most {min(x.count for x in prunable)}."
            )
    if config.keep is not None or config.ratio is not None:
        scores = importance(model, prunable, config.norm)
        out = {}
        for u in prunable:
            n = int(config.keep) if config.keep is not None else keep_count(u.count, float(config.ratio))  # type: ignore[arg-type]
            out[u.id] = select_top(scores[u.id], n)
        return out
    if config.plan is not None:
        check_fingerprint(model, units, config.plan, what)
    requested = (
        dict(config.keep_sets) if config.keep_sets is not None else plan_to_keep_sets(model, config.plan or {}, what)
    )
    by_id = {u.id: u for u in units}
    if config.plan is not None and what == "head_dim":  # a plan made before q/k were apart from v named all three
        for uid in [u for u in requested if not u.endswith(QK_SUFFIX) and u + QK_SUFFIX not in requested]:
            qk, v = by_id.get(uid + QK_SUFFIX), by_id.get(uid)
            if qk is not None and v is not None and qk.count == v.count:
                requested[qk.id] = list(requested[uid])
    out = {u.id: list(range(u.count)) for u in prunable}
    for uid, kept in requested.items():
        if uid not in by_id:
            known = ", ".join(sorted(by_id)) or "none"
            raise PassError(f"unknown block {uid!r} in the plan; this model's blocks are: {known}.")
        u = by_id[uid]
        if not u.prunable:
            raise PassError(f"{uid} cannot be pruned ({u.skip_reason}); remove it from the plan.")
        out[uid] = check_indices(uid, kept, u.count, what)
    return out


# -------------------------------------------------------------------------------------------------------- apply
def torch_slices(
    view: GraphView, unit: PruneUnit, kept: Sequence[int], sources: dict[str, dict[str, Any]] | None = None
) -> dict[str, dict[str, list[int]]]:
    """The plan's ``slices`` for one unit: ``{torch param: {axis: kept indices}}`` in torch layout.

    A tensor the exporter stored once for several torch tensors is the one of this unit's module
    (:func:`_reader_module`, :func:`fileformat.metadata.ranked_sources`); ``sources`` receives
    ``{initializer: that source}``."""
    wmap = view.weight_map
    out: dict[str, dict[str, list[int]]] = {}
    assert unit.group is not None
    taken: set[str] = set()
    for name, ts in unit.group.slices.items():
        # a tensor stored once for many (a fresh model's zero biases, unit LayerNorm scales) is assigned to the
        # module of the node reading it, else of the layer it is the bias of, and never to a torch tensor another
        # copy of this group already stands for (the copies are equal: any one-to-one assignment is exact)
        ranked = ranked_sources(wmap.get(name), _reader_module(view, name, wmap) or unit.id)
        src = next((s for s in ranked if str(s["param"]) not in taken), ranked[0] if ranked else None)
        if src is None:
            continue
        taken.add(str(src["param"]))
        if sources is not None:
            sources[name] = src
        ndim = len(unit.group._shapes[name])
        axis = (ndim - 1 - ts.axis) if (src.get("transposed") and ndim == 2) else ts.axis
        positions = [int(i) for i in kept_positions(ts.layout, kept)]
        merge_slices(out, {str(src["param"]): {str(axis): positions}})
        if src.get("folded_bn") and axis == 0:  # the BatchNorm the exporter folded into this conv goes with it
            merge_slices(out, {f"{src['folded_bn']}.{t}": {"0": positions} for t in _BN_TENSORS})
    return out


_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def merge_slices(into: dict[str, dict[str, list[int]]], more: Mapping[str, Mapping[str, Sequence[int]]]) -> None:
    """Add ``more`` to the plan slices ``into``; an axis both cut keeps what both keep (several groups cut one axis:
    the q/k and v channels of LeViT's fused projection, the parts of a concatenation)."""
    for param, axes in more.items():
        have = into.setdefault(param, {})
        for axis, kept in axes.items():
            have[axis] = sorted(set(have[axis]) & set(kept)) if axis in have else [int(i) for i in kept]


def _reader_module(view: GraphView, name: str, wmap: dict[str, Any]) -> str | None:
    """The torch module of the node reading ``name``: its scope, or for a bias Add the module of the weight of the
    linear layer whose output it adds to (when that weight names one torch tensor)."""
    readers = view.consumer_nodes(name)
    if not readers:
        return None
    node = readers[0].node
    scope = node_scope(node)
    if scope:
        return scope
    if node.op_type == "Add":
        for other in node.input:
            ref = view.producer.get(other) if other != name else None
            if ref is not None and ref.node.op_type in ("MatMul", "Gemm", "Conv"):
                for w in ref.node.input[1:2]:
                    sources = weight_sources(wmap.get(w))
                    if len(sources) == 1:
                        return str(sources[0]["param"]).rsplit(".", 1)[0]
    return None


def apply_units(
    model: onnx.ModelProto, units: Sequence[PruneUnit], keep_sets: Mapping[str, Sequence[int]]
) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """A rewritten copy of ``model`` keeping ``keep_sets[id]`` of each unit, and the plan it applied.

    Units not in ``keep_sets`` or keeping everything are left alone. The copy is not finalised.
    """
    chosen = []
    plan: dict[str, Any] = empty_plan()
    del plan["version"]
    sources: dict[str, dict[str, Any]] = {}
    view = None
    for u in units:
        kept = keep_sets.get(u.id)
        if kept is None or not u.prunable or len(kept) == u.count:
            continue
        assert u.group is not None and u.view is not None
        view = u.view
        chosen.append((u.group, list(kept)))
        plan[SECTION[u.kind]][u.id] = {"kept": [int(i) for i in kept], "total": u.count}
        merge_slices(plan["slices"], torch_slices(u.view, u, kept, sources))
    apart = {u.id: u for u in units if u.kind == "head_dim" and u.id.endswith(QK_SUFFIX)}
    for uid in list(plan["head_dim"]):  # an entry for v alone would read as q/k/v (older plans): q/k says itself
        qk = apart.get(uid + QK_SUFFIX)
        if qk is not None and qk.id not in plan["head_dim"]:
            plan["head_dim"][qk.id] = {"kept": list(range(qk.count)), "total": qk.count}
    if view is None:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        return out, plan
    if view.model is not model:
        raise PassError("internal: the units were found on another model than the one being rewritten")
    out = apply_groups(model, view, chosen)
    wmap = read_metadata(out).get("weight_map")
    if isinstance(wmap, dict) and sources:  # a cut tensor now holds exactly the torch tensor it was cut for
        claim_sources(wmap, sources)
        write_metadata(out, {"weight_map": wmap})
    return out, plan


# ---------------------------------------------------------------------------------------------------------- run
_COLUMNS = ["block", "before", "after", "unit_size", "params", "params_after", "flops", "flops_after", "kept"]


def prune_units(
    model: onnx.ModelProto, kind: str, config: UnitPruneConfig, pass_name: str
) -> tuple[onnx.ModelProto, PassReport]:
    """Find the units of ``kind``, choose what each keeps from ``config``, rewrite; never mutates ``model``."""
    start = time.perf_counter()
    config.validate()
    original, model = model, canonicalize(model)
    view = GraphView(model)
    units = find_units(model, kind, view)
    label = UNIT_NAMES[kind].replace(" ", "_")
    report = PassReport(pass_name=pass_name, columns=list(_COLUMNS))
    report.columns[1:3] = [f"{label}", f"{label}_after"]
    params = count_params(model)
    flops = view.flops()
    report.params_before = report.params_after = params
    report.flops_before = report.flops_after = flops
    for u in units:
        if not u.prunable:
            report.skip(u.id, u.skip_reason or "")
    prunable = [u for u in units if u.prunable]
    if not prunable:
        what = {"heads": "attention block", "neurons": "transformer MLP", "width": "transformer width"}.get(
            kind, "attention block's head channels"
        )
        if kind == "neurons" and not units:  # say, per linear layer, why it does not start an MLP
            for where, why in not_mlps(model, view):
                report.skip(where, f"not an MLP's fc1: {why}")
        found_from = {
            "heads": "a Softmax over the keys of [..., heads, N, M] scores",
            "neurons": "a linear layer whose output reaches exactly one other linear layer through elementwise ops",
        }.get(kind, "the attention blocks and MLPs, none of which can be cut")
        report.nothing_to_do = (
            f"nothing to prune: no {what} found (it is found from {found_from})"
            if not units
            else f"nothing to prune: every {what} was skipped (the reasons are listed above)"
        )
        report.notes.append(report.nothing_to_do)
        if config.keep_sets or config.plan:
            resolve_keep_sets(model, units, config)  # still reject plans naming blocks this model lacks
        out = onnx.ModelProto()
        out.CopyFrom(original)
        return out, report
    keep_sets = resolve_keep_sets(model, units, config)
    new, plan = apply_units(model, units, keep_sets)
    changed = plan[SECTION[kind]]
    removed_flops = 0
    for u in prunable:
        k = len(keep_sets[u.id])
        removed_flops += (u.count - k) * u.flops_per_unit
        report.rows.append(
            {
                "block": u.id,
                label: u.count,
                f"{label}_after": k,
                "unit_size": u.unit_size,
                "params": u.params,
                "params_after": u.params_per_unit * k,
                "flops": u.flops,
                "flops_after": u.flops_per_unit * k,
                "kept": ",".join(map(str, keep_sets[u.id])) if k < u.count else "all",
            }
        )
    report.extra["units"] = {
        u.id: {"count": u.count, "unit_size": u.unit_size, "params_per_unit": u.params_per_unit,
               "flops_per_unit": u.flops_per_unit}
        for u in prunable
    }  # fmt: skip
    if not changed:
        report.notes.append(f"every block keeps all its {label}: the model is unchanged")
        new.CopyFrom(original)
        return new, report
    folded = sum(1 for u in prunable if u.id in changed for e in u.group.shape_edits if e.folded)  # type: ignore[union-attr]
    if folded:
        report.notes.append(f"{folded} shape vector(s) computed at run time were folded to constants (static model)")
    plan["fingerprint"] = {SECTION[kind]: fingerprint(model, units)}
    write_plan(new, plan)
    append_history(
        new, {"pass": pass_name, section_key(kind): {k: v["kept"] for k, v in changed.items()}, "norm": config.norm}
    )
    new = finalize(merge_constants(new))
    report.modified = True
    report.params_after = count_params(new)
    report.flops_after = flops - removed_flops
    report.extra["seconds"] = round(time.perf_counter() - start, 3)
    return new, report


def section_key(kind: str) -> str:
    return SECTION[kind]
