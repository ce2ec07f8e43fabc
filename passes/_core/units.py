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

Importance (:mod:`passes._core.importance`), cutting (:mod:`passes._core.cut`) and the passes' run
(:mod:`passes._core.prune`) are shared with the conv channel groups (:mod:`passes._core.channels`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import onnx

from fileformat.metadata import weight_sources
from fileformat.plan import QK_SUFFIX
from passes._core.canonical import SIZE_INPUTS, canonicalize
from passes._core.dims import ELEMENTWISE, Dim, DimGroup, TraceError, trace, unit_copies, unit_count, unit_inner
from passes._core.dims.rules.contraction import einsum_labels
from passes._core.graph import GraphView, NodeRef, analysis_view, metadata_scopes, node_scope
from passes._core.unit import AttentionBlock, Mlp, PruneUnit

log = logging.getLogger(__name__)


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
    """Every attention block of ``model`` (skipped ones included, with ``skip_reason``), in graph order: a Softmax
    over the keys of ``[..., heads, N, M]`` scores, or over the tokens of ``[..., heads, N, C]`` keys that a
    factorised attention multiplies with the values (CoaT: :func:`_factorised`); a Softmax of constants alone (ConViT's
    positional scores, mixed into a block by a gate) is no block and does not count as a second one.

    Without ``view`` the blocks are found on the canonical form of ``model`` (:mod:`passes._core.canonical`);
    their tensor names are that form's (``block.view.model``)."""
    view = view or analysis_view(canonicalize(model))
    if "heads" in view.found:  # the head-channel and width discovery start from the blocks found here
        return list(view.found["heads"])
    blocks: list[AttentionBlock] = []
    claimed: set[str] = set()
    for ref in view.nodes:
        n = ref.node
        if n.op_type != "Softmax" or n.domain not in ("", "ai.onnx"):
            continue
        if n.output[0] in claimed or _from_constants(view, n.input[0]):
            continue  # (a softmax of constants, as ConViT's positional attention, attends to no data)
        shape = view.shape(n.input[0])
        block = AttentionBlock(id=f"graph:{ref.name}", kind="heads", anchor=ref.name, count=0, view=view)
        if shape is None or len(shape) < 3:
            block.skip_reason = (
                "the attention scores have no static shape: dynamic height and width (give --input-size H W, or "
                "export with fixed sizes)"
                if shape is None
                else "the attention scores are not [..., heads, N, M]"
            )
            blocks.append(block)
            continue
        r = len(shape)
        axis = int(view.attrs(n).get("axis", -1 if view.opset >= 13 else 1))
        factorised = axis % r == r - 2 and _factorised(view, ref)
        if axis % r != r - 1 and not factorised:
            continue  # not attention over keys
        block.count = shape[r - 3]
        if block.count < 2:
            block.skip_reason = f"{block.count} head: nothing to remove"
            blocks.append(block)
            continue
        try:
            claimed.update(_trace_block(view, ref, block, Dim(r - 3, ((block.count, True),))))
        except TraceError as exc:
            block.skip_reason = ("factorised attention (a softmax of k over the tokens): " if factorised else "") + str(
                exc
            )
        blocks.append(block)
    _dedupe_ids(blocks)  # type: ignore[arg-type]
    view.found["heads"] = blocks
    return list(blocks)


def _trace_block(view: GraphView, soft: NodeRef, block: AttentionBlock, heads: Dim) -> set[str]:
    """Trace ``block``'s head axis ``heads`` from its Softmax ``soft``, fill the block in and return the tensors it
    claims; :class:`TraceError` when the heads are coupled with another block's or no weight makes or consumes
    them."""
    group = trace(view, soft.node.output[0], heads)
    softmaxes = [
        i
        for i in group.nodes
        if view.nodes[i].node.op_type == "Softmax" and not _from_constants(view, view.nodes[i].node.input[0])
    ]  # a softmax of constants mixed in (ConViT's gated positional scores) is not another block
    if len(softmaxes) != 1:
        raise TraceError(
            f"the head axis is coupled with {len(softmaxes) - 1} other attention block(s) (shared weights?)"
        )
    if not group.sources or not group.sinks:
        raise TraceError("no q/k/v or output-projection weight carries the head axis")
    block.id = _unit_id(view, group, soft.name)
    block.unit_size = unit_inner(group.slices[group.sinks[0]].layout)
    _finish(block, group)
    return set(group.dims)


def _factorised(view: GraphView, soft: NodeRef) -> bool:
    """Whether a Softmax over the tokens of ``[..., heads, N, C]`` is the key side of a factorised attention
    (CoaT's ``q @ (softmax_N(k)^T @ v)``, per head): its output, transposed or not, is an operand of a MatMul of
    two computed tensors."""
    frontier = [soft.node.output[0]]
    for _ in range(2):
        nxt = []
        for t in frontier:
            for ref in view.consumer_nodes(t):
                if ref.node.op_type == "MatMul" and not any(view.is_constant(i) for i in ref.node.input):
                    return True
                if ref.node.op_type == "Transpose":
                    nxt.append(ref.node.output[0])
        frontier = nxt
    return False


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
            if ref.node.op_type in ("Shape", "Size"):  # reads no activation (under a dynamic batch, a reshape's
                continue  # sizes); the tracer checks that what it reads follows the cut
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
            sizes = SIZE_INPUTS.get(ref.node.op_type, ())  # (a size computed at run time: the tracer checks it)
            others = [
                i for k, i in enumerate(ref.node.input) if i and k not in sizes and i not in closure
                and not view.is_constant(i)
            ]  # fmt: skip
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
    view = view or analysis_view(canonicalize(model))
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
    view = view or analysis_view(canonicalize(model))
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
            mlp.skip_reason = "the fc2 input has no static shape (a dynamic size: give --input-size H W)"
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


_DATA: dict[int, tuple[GraphView, set[str]]] = {}  # id(view) -> the tensors computed from the graph's inputs


def _from_constants(view: GraphView, t: str) -> bool:
    """Whether ``t`` is a constant or computed from constants alone, however deep (SwinV2's relative-position bias
    is an MLP over a constant table, gathered, scaled and squashed: a dozen ops from any input). The shape of a
    tensor is no data: ConViT's positional scores expanded to a dynamic batch are still from constants."""
    cached = _DATA.get(id(view))
    if cached is None or cached[0] is not view:
        inits = {i.name for i in view.model.graph.initializer}
        data = {i.name for i in view.model.graph.input if i.name not in inits}
        for ref in view.nodes:  # topological order: a node's inputs are settled before it
            if ref.node.op_type not in ("Shape", "Size") and any(i in data for i in ref.node.input if i):
                data.update(o for o in ref.node.output if o)
        _DATA.clear()  # one view at a time: discovery runs on one model
        cached = _DATA[id(view)] = (view, data)
    return t not in cached[1] or view.value(t) is not None


def _scores_matmul(view: GraphView, block: AttentionBlock) -> NodeRef | None:
    """The ``q @ k^T`` MatMul (or two-operand Einsum, as torchvision's MaxViT writes it) whose output reaches the
    block's Softmax through elementwise/layout ops."""
    t = view.nodes[next(i for i in block.group.nodes if view.nodes[i].name == block.anchor)].node.input[0]  # type: ignore[union-attr]
    for _ in range(12):
        ref = view.producer.get(t)
        if ref is None:
            return None
        if ref.node.op_type == "MatMul" or (ref.node.op_type == "Einsum" and len(ref.node.input) == 2):
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


def _one_head_units(view: GraphView, block: AttentionBlock, found: list[PruneUnit]) -> list[PruneUnit]:
    """The head-channel groups of a block with one head: v's and q/k's (:func:`_one_head_seeds`), or the keys' of a
    separable attention (:func:`_separable_seed`), else one unit listing why there are none."""
    one = _one_head_seeds(view, block) or _separable_seed(view, block)
    if not one:
        why = "one head, and no q @ k^T nor softmax-weighted context found from its Softmax to seed"
        return [_not_seeded(view, block, block.id, why)]
    pair = _trace_seeds("head_dim", view, [(t, d, 1, None) for t, d in one[::-1]], found)
    if len(pair) == 2:  # v's channels, and q/k's apart from them: named like a block with heads
        pair[1].id = pair[0].id + QK_SUFFIX
    return pair


def _separable_seed(view: GraphView, block: AttentionBlock) -> list[tuple[str, Dim]]:
    """The keys of a separable self-attention (MobileViTv2: ``context = sum_N(k * softmax_N(q))`` over a one-channel
    query, then ``out = proj(relu(v) * context)``): the other operand of the product that weighs them by the Softmax
    output, with the axis the scores broadcast over (size 1 there, the keys' channels) as the unit. The keys, the
    context and the values share those channels, made by the fused ``[q | k | v]`` projection and consumed by the
    output projection, so they are the block's head channels (one head)."""
    soft = next(r for r in view.nodes if r.name == block.anchor)
    scores = view.shape(soft.node.output[0])
    for ref in view.consumer_nodes(soft.node.output[0]):
        if ref.node.op_type != "Mul" or scores is None:
            continue
        others = [i for i in ref.node.input if i and i != soft.node.output[0] and not _from_constants(view, i)]
        shape = view.shape(others[0]) if len(others) == 1 else None
        if shape is None or len(shape) != len(scores):
            continue
        axes = [a for a, (s, k) in enumerate(zip(scores, shape, strict=True)) if s == 1 and k > 1]
        if len(axes) == 1:
            return [(others[0], Dim(axes[0], ((shape[axes[0]], True),)))]
    return []


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
    one head has no head axis to trace: its groups are seeded at ``q`` and ``v`` (:func:`_one_head_seeds`), or, in a
    separable attention with no ``q @ k^T`` (MobileViTv2), at the keys the Softmax weighs (:func:`_separable_seed`);
    one with neither is listed with the reason.
    """
    view = view or analysis_view(canonicalize(model))
    out: list[PruneUnit] = []
    for block in find_attention_blocks(model, view):
        if block.count == 1 and block.group is None:  # no head axis to follow: seed v and q themselves
            out += _one_head_units(view, block, out)
            continue
        if not block.prunable:
            out.append(_not_seeded(view, block, block.id, f"its attention block cannot be cut: {block.skip_reason}"))
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
        if not seeds:
            why = "no weight consumes the heads' channels in a [..., heads, head_dim] layout (the output projection)"
            out.append(_not_seeded(view, block, block.id, why))
        q, why = _q_seed(view, block)
        if q is not None:
            seeds.append(q)
            ids.append(block.id + QK_SUFFIX if ids else block.id)  # q/k's own group when v's is apart
        else:
            out.append(_not_seeded(view, block, block.id + QK_SUFFIX, why))
        out += _trace_seeds("head_dim", view, [(t, d, block.count, i) for (t, d), i in zip(seeds, ids)], out)
    _dedupe_ids(out)
    return out


def _q_seed(view: GraphView, block: AttentionBlock) -> tuple[tuple[str, Dim] | None, str]:
    """``q`` of the block's ``q @ k^T`` MatMul with its last axis (the heads' q channels) as the unit, or None and
    why there is none."""
    g = block.group
    assert g is not None
    scores = _scores_matmul(view, block)
    if scores is None:
        return None, (
            "the q @ k^T MatMul was not found from the Softmax (the path back branches into more than one computed "
            "tensor, or meets no MatMul within 12 ops)"
        )
    q = scores.node.input[0]
    rank = view.rank(q)
    if not rank or q not in g.dims:
        return None, f"q of {scores.name} does not carry the head axis"
    axis = rank - 1 if scores.node.op_type == "MatMul" else _contracted_axis(view, scores)
    if axis is None:
        return None, f"{scores.name} does not contract q with k over one axis"
    if g.dims[q].axis == axis:
        return None, f"q of {scores.name} holds the heads on its last axis: no per-head channel axis to cut"
    return (q, Dim(axis, ((view.shape(q)[axis], True),))), ""  # type: ignore[index]


def _contracted_axis(view: GraphView, ref: NodeRef) -> int | None:
    """The axis of input 0 of a two-operand Einsum whose label is summed with input 1's (``D`` of MaxViT's
    ``BGHID,BGHJD->BGHIJ``: q's channels), if there is exactly one."""
    ranks = [view.rank(i) for i in ref.node.input]
    equation = view.attrs(ref.node).get("equation", b"")
    text = equation.decode() if isinstance(equation, bytes) else str(equation)
    parsed = einsum_labels(text, ranks) if all(ranks) else None  # type: ignore[arg-type]
    if parsed is None:
        return None
    (a, b), out = parsed
    summed = [i for i, c in enumerate(a) if c in b and c not in out]
    return summed[0] if len(summed) == 1 else None


def _not_seeded(view: GraphView, block: AttentionBlock, uid: str, why: str) -> PruneUnit:
    """A head-channel group discovery could not start, listed with the reason (never skipped silently)."""
    unit = _new_unit("head_dim", view, block.anchor, block.count, block.unit_size)
    unit.id, unit.skip_reason = uid, why
    return unit


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
                if not _meet(view, group):  # (a fused q/k projection split in equal halves makes both with one copy)
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


def _meet(view: GraphView, group: DimGroup) -> bool:
    """Whether two computed tensors of ``group`` meet in a product that sums over the unit (``q @ k^T``)."""
    for i in group.nodes:
        n = view.nodes[i].node
        if n.op_type in ("MatMul", "Einsum") and len(n.input) == 2 and n.output[0] not in group.dims:
            if all(t in group.dims and not view.is_constant(t) for t in n.input):
                return True
    return False


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
    view = view or analysis_view(canonicalize(model))
    seeds: list[tuple[str, int | None]] = []
    for block in find_attention_blocks(model, view):
        if block.prunable and block.group is not None and block.group.sources:
            # the first q/k/v projection: a weight whose data is computed from constants alone (Swin-V2's position
            # bias MLP over its coordinate table, which makes the heads too) does not read the width
            hits = (_data_operand(view, w) for w in block.group.sources)
            hit = next((h for h in hits if h is None or not _from_constants(view, h[1])), None)
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


def find_units(
    model: onnx.ModelProto,
    kind: str,
    view: GraphView | None = None,
    claimed: Mapping[tuple[str, int], str] | None = None,
) -> list[PruneUnit]:
    """Every unit group of ``kind`` (:mod:`passes._core.kinds`) in ``model``, skipped ones included with their
    reason, in graph order. Without ``view`` they are found on the canonical form of ``model``. ``claimed`` (conv
    channels only): ``{(weight, axis): owner}`` axes another kind cuts; a group touching one is skipped (one owner
    per weight axis)."""
    if kind == "heads":
        return list(find_attention_blocks(model, view))
    if kind == "neurons":
        return list(find_mlps(model, view))
    if kind == "width":
        return find_widths(model, view)
    if kind == "head_dim":
        return find_head_dims(model, view)
    if kind == "channels":
        from passes._core.channels import find_channels  # its discovery shares nothing with the transformer kinds'

        return list(find_channels(model, view or analysis_view(canonicalize(model)), claimed))
    raise ValueError(f"unknown unit kind {kind!r}")
