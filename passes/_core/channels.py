"""Convolution-channel groups of an ONNX graph: which tensors carry a layer's output channels, and what cutting them
touches (docs/architecture.md, done for channels).

Every Conv with constant weights (and every Gemm / 2-D MatMul with a constant right operand) opens a *channel space*:
the index set of its output channels, ``c = 0 .. C_out - 1`` on axis 1 of its output. The analysis walks the graph in
topological order and follows each space along axis 1 of the tensors that carry it:

* elementwise ops (activations, ``Sigmoid * Mul`` SiLU, Clip, ...) and pooling keep the index set;
* BatchNormalization / InstanceNormalization and per-channel constants (a PReLU slope, a ``[1, C, 1, 1]`` scale) are
  *carried*: their axis-0 (or broadcast-aligned) entries go with the channels;
* a depthwise Conv (``group == C_in == C_out``) maps channel ``c`` to channel ``c``: its filters and bias are carried;
* a binary op with two channel inputs (a residual Add, an SE-block Mul) *unifies* their spaces: the producers of a
  residual sum form ONE group, cut together or not at all;
* Concat on the channel axis lays spaces side by side: a tensor's channel axis is a list of segments
  ``[(space, size), ...]`` and a consumer reads segment ``s`` at offset ``sum(sizes before s)``;
* Resize keeps the channels (a ``sizes`` constant is rewritten at position 1; ``sizes`` computed from ``Shape`` of
  the resized tensor itself adapts at run time), MatMul with a constant on the spatial axes (the UPerNet pyramid
  pooling ``P_h @ x @ P_w^T``) keeps them, Flatten / Reshape to ``[N, C * S]`` turns channel ``c`` into the features
  ``c * S .. c * S + S - 1`` of the classifier's Gemm / MatMul;
* a consumer reads the channels on its contraction axis: ``W[:, c]`` of a Conv (weight ``[C_out, C_in, k, k]``),
  rows of a MatMul weight ``[in, out]``, ``B[c]`` or ``B[:, c]`` of a Gemm.

Removing the channel set ``R`` of a group is then: delete index ``R`` from every source weight's output axis and its
bias, from every carried tensor, and from every consumer's contraction axis (at the segment's offset). The result
equals the unpruned model with the consumers' input slices ``R`` zeroed (the oracle of docs/architecture.md).

A space is *blocked* (never cut, reported with a reason) when it reaches a graph output, a Reshape / Transpose that
mixes the channel axis (MobileViT's unfold into the transformer), a normalisation over channels, an op with no rule,
a grouped (non-depthwise) convolution, a MatMul with a run-time operand, a shape read at run time that cannot be
rewritten, or a weight that another node also reads.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fileformat.metadata import claim_sources, pick_source, read_metadata, write_metadata
from passes._core.graph import GraphView, metadata_scopes, node_scope

log = logging.getLogger(__name__)

#: ops whose output has the input's channel axis unchanged; extra inputs (Clip bounds, a PReLU slope) are
#: broadcast against the data and handled like the constants of a binary elementwise op.
ELEMENTWISE = {
    "Relu", "LeakyRelu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Tanh", "Clip", "Elu", "Selu", "Celu",
    "Gelu", "Erf", "Softplus", "Softsign", "Mish", "Exp", "Log", "Abs", "Neg", "Sqrt", "Reciprocal", "Floor",
    "Ceil", "Round", "Sign", "ThresholdedRelu", "Identity", "Cast", "CastLike", "Dropout", "Sin", "Cos",
    "Add", "Sub", "Mul", "Div", "Max", "Min", "Pow", "Sum", "Mean", "Where",
}  # fmt: skip
POOLING = {"MaxPool", "AveragePool", "GlobalAveragePool", "GlobalMaxPool", "LpPool", "GlobalLpPool"}
REDUCE = {
    "ReduceMean", "ReduceMax", "ReduceMin", "ReduceSum", "ReduceProd", "ReduceL1", "ReduceL2", "ReduceLogSum",
    "ReduceLogSumExp", "ReduceSumSquare",
}  # fmt: skip
#: ops that move the elements of a shape tensor around without computing on them.
_SHAPE_MOVERS = {"Cast", "Identity", "Squeeze", "Unsqueeze"}

CHANNEL_AXIS = 1


@dataclass(frozen=True)
class Segment:
    """``size`` consecutive channels of a tensor that belong to channel space ``space``."""

    space: int
    size: int


@dataclass(frozen=True)
class ChanAxis:
    """The channel axis (axis 1) of a tensor: its segments, the tensor's rank, and ``inner`` elements per channel
    (1, or ``H * W`` after a Flatten: channel ``c`` then owns features ``c * inner .. c * inner + inner - 1``)."""

    segments: tuple[Segment, ...]
    rank: int
    inner: int = 1

    @property
    def total(self) -> int:
        return sum(s.size for s in self.segments)

    def with_offsets(self) -> list[tuple[Segment, int]]:
        out, off = [], 0
        for s in self.segments:
            out.append((s, off))
            off += s.size
        return out


@dataclass(frozen=True)
class Touch:
    """Tensor ``node.input[input]`` (a constant) holds channel ``c`` of ``space`` at positions
    ``(offset + c) * inner + j`` (``j < inner``) of ``axis``.

    ``role``: ``"out"`` a source layer's weight/bias output axis, ``"carried"`` a tensor that goes with the channels
    (BN statistics, a depthwise filter), ``"in"`` a consumer's contraction axis.
    """

    space: int
    role: str
    node: int
    input: int
    axis: int
    offset: int = 0
    inner: int = 1


@dataclass(frozen=True)
class ShapeRewrite:
    """Position ``position`` of the constant ``node.input[input]`` holds ``channels(tensor) * mult``."""

    node: int
    input: int
    position: int
    tensor: str
    mult: int = 1


@dataclass
class ChannelGroup:
    """One set of channels that must be cut together: the union of the spaces tied by residual sums and the like."""

    gid: int
    size: int
    name: str
    layers: list[str]
    source_nodes: list[int]
    touches: list[Touch]
    blocked: list[str]
    scope: str

    @property
    def prunable(self) -> bool:
        return not self.blocked

    @property
    def kind(self) -> str:
        return "residual" if len(self.source_nodes) > 1 else "conv"


class _UnionFind:
    def __init__(self) -> None:
        self.parent: list[int] = []
        self.size: list[int] = []
        self.reasons: list[list[str]] = []
        self.origin: list[int | None] = []

    def new(self, size: int, origin: int | None) -> int:
        self.parent.append(len(self.parent))
        self.size.append(size)
        self.reasons.append([])
        self.origin.append(origin)
        return len(self.parent) - 1

    def find(self, a: int) -> int:
        while self.parent[a] != a:
            self.parent[a] = self.parent[self.parent[a]]
            a = self.parent[a]
        return a

    def union(self, a: int, b: int) -> int:
        ra, rb = self.find(a), self.find(b)
        if ra == rb:
            return ra
        if rb < ra:
            ra, rb = rb, ra
        self.parent[rb] = ra
        self.reasons[ra].extend(r for r in self.reasons[rb] if r not in self.reasons[ra])
        return ra

    def block(self, a: int, reason: str) -> None:
        r = self.find(a)
        if reason not in self.reasons[r]:
            self.reasons[r].append(reason)


def _attr(node: onnx.NodeProto, name: str, default: object = None) -> object:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _node_label(node: onnx.NodeProto, idx: int) -> str:
    return f"{node.op_type} {node.name or f'#{idx}'}"


class ChannelAnalysis:
    """Channel groups of ``model`` (analysed as given; the model is not modified)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.graph = model.graph
        self.weight_map: dict[str, dict] = dict(read_metadata(model).get("weight_map") or {})
        self.view = GraphView(model)  # shapes (static where they are, partial where a dimension is symbolic)
        self.uf = _UnionFind()
        self.chan: dict[str, ChanAxis] = {}
        self.touches: list[Touch] = []
        self.shape_rewrites: list[ShapeRewrite] = []
        #: node index -> name of the input whose channel axis the node contracts (for the cost model)
        self.contracted: dict[int, str] = {}
        #: depthwise Conv node index -> its input (``group`` must follow that tensor's channel count)
        self.depthwise: dict[int, str] = {}
        self._shape_elems: dict[str, list[tuple[str, int] | None] | None] = {}
        self._deferred: list[tuple[str, str, str]] = []  # (data tensor, shape source tensor, where)
        self._dummy: set[int] = set()
        self._run()
        self.groups: list[ChannelGroup] = self._build_groups()
        self.by_gid = {g.gid: g for g in self.groups}

    # ------------------------------------------------------------------ helpers
    def shape(self, name: str) -> list[int | None] | None:
        dims = self.view.dims(name)
        if dims is not None:
            return dims
        s = self.view.constant_shape(name)
        return None if s is None else list(s)

    def _block_info(self, info: ChanAxis, reason: str) -> None:
        for s in info.segments:
            self.uf.block(s.space, reason)

    def _block_inputs(self, tracked: Mapping[int, ChanAxis], reason: str) -> None:
        for info in tracked.values():
            self._block_info(info, reason)

    def _touch_info(self, info: ChanAxis, role: str, node: int, inp: int, axis: int) -> None:
        for seg, off in info.with_offsets():
            self.touches.append(Touch(seg.space, role, node, inp, axis, off, info.inner))

    def _is_const(self, name: str) -> bool:
        return bool(name) and self.view.constant_base(name) is not None

    def module_path(self, idx: int) -> str:
        """Torch module path of layer node ``idx`` (weight_map, then dynamo metadata), else ``graph:<node>``."""
        node = self.graph.node[idx]
        if len(node.input) > 1:
            base = self.view.constant_base(node.input[1])
            # a weight the exporter stored once for several layers (all zeros) is told apart by the node's scope
            src = pick_source(self.weight_map.get(base or ""), node_scope(node) or base or "")
            if src is not None:
                param = str(src["param"])
                return param[: -len(".weight")] if param.endswith(".weight") else param
        scope = node_scope(node) if metadata_scopes(node) else None  # the dynamo exporter's torch module path
        if scope:
            return scope
        return f"graph:{node.name or f'#{idx}'}"

    def _scope_of(self, idx: int) -> str:
        path = self.module_path(idx)
        node = self.graph.node[idx]
        if path.startswith("decoder.") or path == "decoder":
            return "decoder"
        if path.startswith("graph:") and ("/decoder/" in node.name or node.name.startswith("decoder")):
            return "decoder"
        return "backbone"

    # ------------------------------------------------------------------ propagation
    def _run(self) -> None:
        outputs = {o.name for o in self.graph.output}
        for idx, node in enumerate(self.graph.node):
            if node.op_type == "Constant":
                continue
            tracked = {i: self.chan[t] for i, t in enumerate(node.input) if t and t in self.chan}
            self._shape_track(idx, node, tracked)
            handler = getattr(self, f"_op_{node.op_type}", None)
            if handler is not None:
                handler(idx, node, tracked)
            elif node.op_type in ELEMENTWISE:
                self._elementwise(idx, node, tracked)
            elif node.op_type in POOLING:
                if tracked:
                    self._pass(idx, node, tracked, 0)
            elif node.op_type in REDUCE:
                self._reduce(idx, node, tracked)
            elif tracked:
                self._block_inputs(tracked, f"no channel rule for {_node_label(node, idx)}")
        for name in outputs:
            if name in self.chan:
                self._block_info(self.chan[name], f"reaches the model output {name!r}")
        for data, src, where in self._deferred:
            a, b = self.chan.get(data), self.chan.get(src)
            if a is None or b is None:
                continue
            ra = [(self.uf.find(s.space), s.size) for s in a.segments]
            rb = [(self.uf.find(s.space), s.size) for s in b.segments]
            if ra != rb:
                reason = f"{where} takes its channel count from another tensor at run time"
                self._block_info(a, reason)
                self._block_info(b, reason)

    def _pass(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis], data: int) -> None:
        """Output 0 carries input ``data``'s channel axis; any other tracked input blocks."""
        info = tracked.get(data)
        others = {i: v for i, v in tracked.items() if i != data}
        if others:
            self._block_inputs(tracked, f"{_node_label(node, idx)} reads channels as a parameter")
            return
        if info is None:
            return
        out_shape = self.shape(node.output[0])
        rank = len(out_shape) if out_shape is not None else info.rank
        self.chan[node.output[0]] = ChanAxis(info.segments, rank, info.inner)

    def _new_space(self, size: int, idx: int | None) -> int:
        return self.uf.new(size, idx)

    # ---- shape tensors (Shape -> Slice/Gather/Concat -> Resize sizes / Reshape shape)
    def _shape_track(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        op = node.op_type
        if op == "Shape":
            src = node.input[0]
            shp = self.shape(src)
            if shp is None:
                self._shape_elems[node.output[0]] = None
                return
            r = len(shp)
            start, end = int(_attr(node, "start", 0)), _attr(node, "end", None)
            axes = list(range(r))[slice(start, None if end is None else int(end))]
            self._shape_elems[node.output[0]] = [(src, a) for a in axes]
            return
        shape_ins = [(i, t) for i, t in enumerate(node.input) if t in self._shape_elems]
        if not shape_ins:
            return
        elems_in = {i: self._shape_elems[t] for i, t in shape_ins}
        out: list[tuple[str, int] | None] | None
        if op in _SHAPE_MOVERS and 0 in elems_in:
            out = elems_in[0]
        elif op == "Slice" and 0 in elems_in and len(elems_in) == 1:
            out = self._slice_list(elems_in[0], [self.view.constant(t) if t else None for t in node.input[1:5]])
        elif op == "Gather" and 0 in elems_in and len(elems_in) == 1:
            ind = self.view.constant(node.input[1])
            lst = elems_in[0]
            if lst is None or ind is None:
                out = None
            else:
                out = [lst[int(i)] for i in np.asarray(ind).reshape(-1)]
        elif op == "Concat" and int(_attr(node, "axis", 0)) == 0:
            out = []
            for i, t in enumerate(node.input):
                if i in elems_in:
                    if elems_in[i] is None:
                        out = None
                        break
                    out.extend(elems_in[i])
                else:
                    s = self.shape(t)
                    if s is None or len(s) != 1 or s[0] is None:
                        out = None
                        break
                    out.extend([None] * int(s[0]))
        else:
            # any other consumer: fine unless a channel count flows into it
            for i, _ in shape_ins:
                lst = elems_in[i]
                if op == "Resize" and i == 3:
                    self._check_sizes(idx, node, lst, node.input[0], "Resize", 1)
                elif op == "Reshape" and i == 1:
                    self._check_sizes(idx, node, lst, node.input[0], "Reshape", 1)
                else:
                    self._check_no_channel(lst, f"{_node_label(node, idx)}")
            return
        if out is None:  # an unknown list: whatever channel count went in is read at run time
            for lst in elems_in.values():
                self._check_no_channel(lst, _node_label(node, idx))
        for o in node.output[:1]:
            self._shape_elems[o] = out

    @staticmethod
    def _slice_list(
        lst: list[tuple[str, int] | None] | None, params: list[np.ndarray | None]
    ) -> list[tuple[str, int] | None] | None:
        """``lst[starts:ends:steps]`` for a Slice of a 1-D shape tensor with constant bounds, else None."""
        if lst is None or len(params) < 2 or params[0] is None or params[1] is None:
            return None
        if len(params) > 2 and params[2] is not None and int(params[2].reshape(-1)[0]) not in (0, -1):
            return None
        step = int(params[3].reshape(-1)[0]) if len(params) > 3 and params[3] is not None else 1
        start, end = int(params[0].reshape(-1)[0]), int(params[1].reshape(-1)[0])
        return lst[slice(start, end, step)]

    def _channel_elems(self, lst: list[tuple[str, int] | None] | None) -> list[tuple[int, str]] | None:
        """(position, tensor) of every element that is the channel count of a tracked tensor; None if unknown."""
        if lst is None:
            return None
        return [(p, e[0]) for p, e in enumerate(lst) if e is not None and e[1] == CHANNEL_AXIS and e[0] in self.chan]

    def _check_no_channel(self, lst: list[tuple[str, int] | None] | None, where: str) -> None:
        ch = self._channel_elems(lst)
        if ch is None:
            return  # an unknown shape list only matters where it reaches a tracked tensor's channel count
        for _, t in ch:
            self._block_info(self.chan[t], f"{where} reads its channel count at run time")

    def _check_sizes(
        self, idx: int, node: onnx.NodeProto, lst: list[tuple[str, int] | None] | None, data: str, what: str, pos: int
    ) -> None:
        ch = self._channel_elems(lst)
        label = _node_label(node, idx)
        if ch is None:
            if data in self.chan:
                self._block_info(self.chan[data], f"{label}: target shape computed at run time")
            return
        for p, t in ch:
            if p != pos:
                self._block_info(self.chan[t], f"{label} moves a channel count to position {p}")
            else:
                self._deferred.append((data, t, label))

    # ---- layers
    def _op_Conv(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        label = _node_label(node, idx)
        if any(i != 0 for i in tracked):
            self._block_inputs(tracked, f"{label} reads channels as its weights")
            return
        x = tracked.get(0)
        w = node.input[1]
        wshape = self.view.constant_shape(w)
        group = int(_attr(node, "group", 1))
        has_bias = len(node.input) > 2 and bool(node.input[2])
        if wshape is None or (has_bias and not self._is_const(node.input[2])):
            if x is not None:
                self._block_info(x, f"{label} has run-time weights")
            return
        cout, cin_g = int(wshape[0]), int(wshape[1])
        out_shape = self.shape(node.output[0])
        rank = len(out_shape) if out_shape is not None else len(wshape)
        if x is not None:
            cin = x.total
            if group == 1:
                self._touch_info(x, "in", idx, 1, 1)
                self.contracted[idx] = node.input[0]
            elif group == cin and cout == cin and cin_g == 1:
                self._touch_info(x, "carried", idx, 1, 0)
                if has_bias:
                    self._touch_info(x, "carried", idx, 2, 0)
                self.chan[node.output[0]] = ChanAxis(x.segments, rank, 1)
                self.depthwise[idx] = node.input[0]
                return
            else:
                self._block_info(x, f"grouped convolution {label} (group={group}) has no channel rule")
                return
        elif group != 1:
            return
        s = self._new_space(cout, idx)
        self.touches.append(Touch(s, "out", idx, 1, 0))
        if has_bias:
            self.touches.append(Touch(s, "out", idx, 2, 0))
        self.chan[node.output[0]] = ChanAxis((Segment(s, cout),), rank, 1)

    def _op_Gemm(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        label = _node_label(node, idx)
        if any(i != 0 for i in tracked) or int(_attr(node, "transA", 0)):
            self._block_inputs(tracked, f"{label} reads channels as a parameter or transposed")
            return
        trans_b = int(_attr(node, "transB", 0))
        bshape = self.view.constant_shape(node.input[1])
        has_c = len(node.input) > 2 and bool(node.input[2])
        if bshape is None or len(bshape) != 2 or (has_c and not self._is_const(node.input[2])):
            self._block_inputs(tracked, f"{label} has run-time weights")
            return
        a = tracked.get(0)
        if a is not None:
            if a.rank != 2:
                self._block_info(a, f"{label} contracts a rank-{a.rank} tensor")
                return
            self._touch_info(a, "in", idx, 1, 1 if trans_b else 0)
            self.contracted[idx] = node.input[0]
        feats = int(bshape[0] if trans_b else bshape[1])
        s = self._new_space(feats, idx)
        self.touches.append(Touch(s, "out", idx, 1, 0 if trans_b else 1))
        if has_c:
            cshape = self.view.constant_shape(node.input[2]) or ()
            if len(cshape) == 1 and cshape[0] == feats:
                self.touches.append(Touch(s, "out", idx, 2, 0))
            elif len(cshape) == 2 and cshape[1] == feats and cshape[0] == 1:
                self.touches.append(Touch(s, "out", idx, 2, 1))
            elif int(np.prod(cshape)) != 1:
                self.uf.block(s, f"{label}: bias of shape {list(cshape)} has no channel rule")
        self.chan[node.output[0]] = ChanAxis((Segment(s, feats),), 2, 1)

    def _op_MatMul(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        label = _node_label(node, idx)
        a, b = tracked.get(0), tracked.get(1)
        a_const, b_const = self._is_const(node.input[0]), self._is_const(node.input[1])
        if a is not None and b is not None:
            self._block_inputs(tracked, f"{label} multiplies two channel tensors")
            return
        out_shape = self.shape(node.output[0])
        if a is not None:
            bshape = self.view.constant_shape(node.input[1]) if b_const else None
            if bshape is None:
                self._block_info(a, f"{label} multiplies by a run-time operand")
                return
            if a.rank >= 3 and len(bshape) <= 2 and a.inner == 1:
                # channel axis 1 is a batch (rank >= 4) or row (rank 3) axis: [N, C, H, W] @ [W, w] keeps channels
                self.chan[node.output[0]] = ChanAxis(a.segments, len(out_shape) if out_shape else a.rank, 1)
                return
            if a.rank == 2 and len(bshape) == 2:
                self._touch_info(a, "in", idx, 1, 0)
                self.contracted[idx] = node.input[0]
                self._linear_source(idx, node, int(bshape[1]))
                return
            self._block_info(a, f"{label} contracts the channel axis of a rank-{a.rank} tensor")
            return
        if b is not None:
            ashape = self.view.constant_shape(node.input[0]) if a_const else None
            if ashape is not None and b.rank >= 4 and len(ashape) <= 2:
                # [h, H] @ [N, C, H, W]: contracts H, keeps channels (the UPerNet pyramid pooling)
                self.chan[node.output[0]] = ChanAxis(b.segments, len(out_shape) if out_shape else b.rank, 1)
                return
            self._block_info(b, f"{label} contracts or mixes the channel axis")
            return
        ashape = self.shape(node.input[0])
        bshape = self.view.constant_shape(node.input[1]) if b_const else None
        if bshape is not None and len(bshape) == 2 and ashape is not None and len(ashape) == 2:
            self._linear_source(idx, node, int(bshape[1]))

    def _linear_source(self, idx: int, node: onnx.NodeProto, feats: int) -> None:
        s = self._new_space(feats, idx)
        self.touches.append(Touch(s, "out", idx, 1, 1))
        self.chan[node.output[0]] = ChanAxis((Segment(s, feats),), 2, 1)

    # ---- channel-preserving ops
    def _elementwise(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        if not tracked:
            return
        label = _node_label(node, idx)
        out_shape = self.shape(node.output[0])
        infos = list(tracked.values())
        out_rank = len(out_shape) if out_shape is not None else max(i.rank for i in infos)
        if any(i.rank != out_rank for i in infos):
            self._block_inputs(tracked, f"{label} broadcasts a channel tensor to another rank")
            return
        base = infos[0]
        for other in infos[1:]:
            if other.inner != base.inner or [s.size for s in other.segments] != [s.size for s in base.segments]:
                self._block_inputs(tracked, f"{label} combines tensors with different channel layouts")
                return
            for s1, s2 in zip(base.segments, other.segments):
                self.uf.union(s1.space, s2.space)
        for i, t in enumerate(node.input):
            if i in tracked or not t:
                continue
            if node.op_type == "CastLike" and i == 1:
                continue
            if node.op_type == "Dropout" and i > 0:
                continue
            shp = self.shape(t)
            if shp is None:
                self._block_inputs(tracked, f"{label}: operand {t!r} has an unknown shape")
                return
            ax = CHANNEL_AXIS - (out_rank - len(shp))
            if ax < 0 or shp[ax] == 1:
                continue
            if shp[ax] != base.total * base.inner:
                self._block_inputs(tracked, f"{label}: operand {t!r} broadcasts against the channels")
                return
            if self._is_const(t):
                for seg, off in base.with_offsets():
                    self.touches.append(Touch(seg.space, "carried", idx, i, ax, off, base.inner))
                continue
            self._block_inputs(tracked, f"{label}: run-time operand {t!r} has untracked channels")
            return
        self.chan[node.output[0]] = ChanAxis(base.segments, out_rank, base.inner)

    def _op_BatchNormalization(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        self._norm(idx, node, tracked, range(1, 5))

    def _op_InstanceNormalization(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        self._norm(idx, node, tracked, range(1, 3))

    def _norm(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis], params: range) -> None:
        x = tracked.get(0)
        label = _node_label(node, idx)
        if x is None or len(tracked) > 1:
            self._block_inputs(tracked, f"{label} reads channels as a parameter")
            return
        if any(not self._is_const(node.input[i]) for i in params if i < len(node.input)):
            self._block_info(x, f"{label} has run-time parameters")
            return
        if len([o for o in node.output if o]) > 1:
            self._block_info(x, f"{label} in training mode")
            return
        for i in params:
            if i < len(node.input) and node.input[i]:
                self._touch_info(x, "carried", idx, i, 0)
        self._pass(idx, node, {0: x}, 0)

    def _op_Concat(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        if not tracked:
            return
        label = _node_label(node, idx)
        out_shape = self.shape(node.output[0])
        rank = len(out_shape) if out_shape is not None else next(iter(tracked.values())).rank
        axis = int(_attr(node, "axis", 0))
        axis = axis + rank if axis < 0 else axis
        if axis != CHANNEL_AXIS:
            self._elementwise_same(idx, node, tracked, label, rank)
            return
        segs: list[Segment] = []
        for i, t in enumerate(node.input):
            if i in tracked:
                if tracked[i].inner != 1:
                    self._block_inputs(tracked, f"{label} concatenates flattened channels")
                    return
                segs.extend(tracked[i].segments)
                continue
            shp = self.shape(t)
            if shp is None or len(shp) <= CHANNEL_AXIS or shp[CHANNEL_AXIS] is None:
                self._block_inputs(tracked, f"{label}: input {t!r} has an unknown channel count")
                return
            n = int(shp[CHANNEL_AXIS])
            if n:
                s = self._new_space(n, None)
                self._dummy.add(s)
                self.uf.block(s, "channels not produced by a prunable layer")
                segs.append(Segment(s, n))
        self.chan[node.output[0]] = ChanAxis(tuple(segs), rank, 1)

    def _elementwise_same(
        self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis], label: str, rank: int
    ) -> None:
        """A Concat / Split on another axis: every input must carry the same channels."""
        if len(tracked) != len([t for t in node.input if t]):
            self._block_inputs(tracked, f"{label} joins channel tensors with untracked ones")
            return
        infos = list(tracked.values())
        for other in infos[1:]:
            if [s.size for s in other.segments] != [s.size for s in infos[0].segments]:
                self._block_inputs(tracked, f"{label} joins tensors with different channel layouts")
                return
            for s1, s2 in zip(infos[0].segments, other.segments):
                self.uf.union(s1.space, s2.space)
        for o in node.output:
            if o:
                self.chan[o] = ChanAxis(infos[0].segments, rank, infos[0].inner)

    def _op_Split(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        axis = int(_attr(node, "axis", 0))
        axis = axis + x.rank if axis < 0 else axis
        if axis == CHANNEL_AXIS or len(tracked) > 1:
            self._block_inputs(tracked, f"{_node_label(node, idx)} splits the channel axis")
            return
        for o in node.output:
            if o:
                self.chan[o] = x

    def _op_Resize(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        label = _node_label(node, idx)
        if len(tracked) > 1:
            self._block_inputs(tracked, f"{label} reads channels as a parameter")
            return
        if len(node.input) > 3 and node.input[3]:
            sizes = node.input[3]
            if self._is_const(sizes):
                v = self.view.constant(sizes)
                if v is None or v.reshape(-1).shape[0] != x.rank:
                    self._block_info(x, f"{label}: unreadable sizes")
                    return
                self.shape_rewrites.append(ShapeRewrite(idx, 3, CHANNEL_AXIS, node.input[0], x.inner))
            elif sizes not in self._shape_elems:
                self._block_info(x, f"{label}: sizes computed at run time from an untracked tensor")
                return
        elif len(node.input) > 2 and node.input[2] and self._is_const(node.input[2]):
            scales = self.view.constant(node.input[2])
            if scales is not None and scales.size == x.rank and float(scales.reshape(-1)[CHANNEL_AXIS]) != 1.0:
                self._block_info(x, f"{label} rescales the channel axis")
                return
        self._pass(idx, node, {0: x}, 0)

    _op_Upsample = _op_Resize

    def _op_Shape(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        """Handled by the shape-tensor tracking: the channel count it reads is checked where it is used."""

    def _reduce(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        label = _node_label(node, idx)
        axes = _attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            v = self.view.constant(node.input[1])
            axes = None if v is None else [int(a) for a in v.reshape(-1)]
            if v is None:
                self._block_info(x, f"{label}: axes computed at run time")
                return
        if not axes:
            self._block_info(x, f"{label} reduces over every axis")
            return
        norm = {int(a) + x.rank if int(a) < 0 else int(a) for a in axes}
        keep = int(_attr(node, "keepdims", 1))
        if CHANNEL_AXIS in norm or (not keep and 0 in norm) or x.inner != 1:
            self._block_info(x, f"{label} reduces over the channel axis")
            return
        self._pass(idx, node, {0: x}, 0)

    def _op_Pad(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        label = _node_label(node, idx)
        pads = _attr(node, "pads", None)
        if pads is None and len(node.input) > 1 and node.input[1]:
            v = self.view.constant(node.input[1])
            pads = None if v is None else [int(p) for p in v.reshape(-1)]
        axes_v = self.view.constant(node.input[3]) if len(node.input) > 3 and node.input[3] else None
        if pads is None or len(tracked) > 1:
            self._block_info(x, f"{label}: pads computed at run time")
            return
        axes = [int(a) % x.rank for a in axes_v.reshape(-1)] if axes_v is not None else list(range(x.rank))
        n = len(axes)
        if CHANNEL_AXIS in axes:
            k = axes.index(CHANNEL_AXIS)
            if pads[k] or pads[n + k]:
                self._block_info(x, f"{label} pads the channel axis")
                return
        self._pass(idx, node, {0: x}, 0)

    def _op_Slice(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        label = _node_label(node, idx)
        vals = [self.view.constant(t) if t else None for t in node.input[1:]]
        if len(tracked) > 1 or any(v is None for v in vals[:2]):
            self._block_info(x, f"{label}: slice bounds computed at run time")
            return
        axes = vals[2] if len(vals) > 2 and vals[2] is not None else np.arange(len(vals[0].reshape(-1)))
        if CHANNEL_AXIS in {int(a) % x.rank for a in np.asarray(axes).reshape(-1)}:
            self._block_info(x, f"{label} slices the channel axis")
            return
        self._pass(idx, node, {0: x}, 0)

    def _op_Flatten(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        axis = int(_attr(node, "axis", 1))
        shp = self.shape(node.input[0])
        if axis != CHANNEL_AXIS or shp is None or any(d is None for d in shp[2:]):
            self._block_info(x, f"{_node_label(node, idx)} flattens across the channel axis")
            return
        inner = x.inner * int(np.prod([int(d) for d in shp[2:]], dtype=np.int64)) if len(shp) > 2 else x.inner
        self.chan[node.output[0]] = ChanAxis(x.segments, 2, inner)

    def _op_Reshape(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        label = _node_label(node, idx)
        if len(tracked) > 1:
            self._block_inputs(tracked, f"{label} reads channels as its shape")
            return
        ins, outs = self.shape(node.input[0]), self.shape(node.output[0])
        if ins is None or outs is None or any(d is None for d in ins[1:] + outs[1:]) or len(outs) < 2:
            self._block_info(x, f"{label} with unknown shapes")
            return
        c = x.total * x.inner
        rest_in = int(np.prod([int(d) for d in ins[2:]], dtype=np.int64)) if len(ins) > 2 else 1
        mult: int
        if outs[0] == ins[0] and outs[1] == ins[1] and x.inner == 1:
            new = ChanAxis(x.segments, len(outs), 1)  # [N, C, H, W] -> [N, C, H * W] keeps channels
            mult = 1
        elif len(outs) == 2 and outs[0] == ins[0] and outs[1] == c * rest_in:
            new = ChanAxis(x.segments, 2, x.inner * rest_in)  # flatten: [N, C, H, W] -> [N, C * H * W]
            mult = x.inner * rest_in
        else:
            self._block_info(x, f"{label} to {outs} mixes the channel axis (e.g. MobileViT's unfold)")
            return
        shape_in = node.input[1]
        if self._is_const(shape_in):
            v = self.view.constant(shape_in)
            if v is not None and v.reshape(-1).shape[0] > CHANNEL_AXIS and int(v.reshape(-1)[CHANNEL_AXIS]) > 0:
                self.shape_rewrites.append(ShapeRewrite(idx, 1, CHANNEL_AXIS, node.input[0], mult))
        elif shape_in not in self._shape_elems:
            self._block_info(x, f"{label}: target shape computed at run time")
            return
        elif mult != 1:
            self._block_info(x, f"{label}: flattening shape computed at run time")
            return
        self.chan[node.output[0]] = new

    def _axes(self, node: onnx.NodeProto) -> list[int] | None:
        axes = _attr(node, "axes", None)
        if axes is None and len(node.input) > 1 and node.input[1]:
            v = self.view.constant(node.input[1])
            return None if v is None else [int(a) for a in v.reshape(-1)]
        return None if axes is None else [int(a) for a in axes]

    def _op_Squeeze(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        axes = self._axes(node)
        if axes is None:
            shp = self.shape(node.input[0]) or []
            axes = [i for i, d in enumerate(shp) if d == 1]
        norm = {a + x.rank if a < 0 else a for a in axes}
        if norm & {0, CHANNEL_AXIS} or x.inner != 1:
            self._block_info(x, f"{_node_label(node, idx)} squeezes the batch or channel axis")
            return
        self.chan[node.output[0]] = ChanAxis(x.segments, x.rank - len(norm), 1)

    def _op_Unsqueeze(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        axes = self._axes(node)
        if axes is None:
            self._block_info(x, f"{_node_label(node, idx)}: axes computed at run time")
            return
        r = x.rank + len(axes)
        norm = {a + r if a < 0 else a for a in axes}
        if min(norm) <= CHANNEL_AXIS or x.inner != 1:
            self._block_info(x, f"{_node_label(node, idx)} inserts an axis before the channels")
            return
        self.chan[node.output[0]] = ChanAxis(x.segments, r, 1)

    def _softmax(self, idx: int, node: onnx.NodeProto, tracked: Mapping[int, ChanAxis]) -> None:
        x = tracked.get(0)
        if x is None:
            return
        default = -1 if self._opset() >= 13 else 1
        axis = int(_attr(node, "axis", default))
        axis = axis + x.rank if axis < 0 else axis
        if axis == CHANNEL_AXIS or (self._opset() < 13 and axis <= CHANNEL_AXIS):
            self._block_info(x, f"{_node_label(node, idx)} normalises over the channel axis")
            return
        self._pass(idx, node, {0: x}, 0)

    _op_Softmax = _softmax
    _op_LogSoftmax = _softmax

    def _opset(self) -> int:
        for o in self.model.opset_import:
            if o.domain in ("", "ai.onnx"):
                return int(o.version)
        return 13

    # ------------------------------------------------------------------ groups
    def _build_groups(self) -> list[ChannelGroup]:
        roots: dict[int, list[int]] = {}
        for s in range(len(self.uf.parent)):
            roots.setdefault(self.uf.find(s), []).append(s)
        for t in self.touches:
            node = self.graph.node[t.node]
            base = self.view.constant_base(node.input[t.input])
            if base is not None and self.view.constant_readers.get(base, 0) > 1:
                self.uf.block(t.space, f"{base!r} of {_node_label(node, t.node)} is also read by another node")
        by_root: dict[int, list[Touch]] = {}
        for t in self.touches:
            by_root.setdefault(self.uf.find(t.space), []).append(t)
        groups = []
        for root, spaces in sorted(roots.items()):
            if all(s in self._dummy for s in spaces):
                continue
            touches = by_root.get(root, [])
            sources = sorted({t.node for t in touches if t.role == "out"})
            layers = [self.module_path(i) for i in sources]
            scopes = {self._scope_of(i) for i in sources}
            scope = scopes.pop() if len(scopes) == 1 else "mixed"
            blocked = list(self.uf.reasons[root])
            if any(s in self._dummy for s in spaces):
                blocked.append("tied to channels not produced by a prunable layer")
            groups.append(
                ChannelGroup(
                    gid=root,
                    size=self.uf.size[root],
                    name=layers[0] if layers else f"space{root}",
                    layers=layers,
                    source_nodes=sources,
                    touches=touches,
                    blocked=blocked,
                    scope=scope,
                )
            )
        return groups

    def group_of(self, space: int) -> int:
        return self.uf.find(space)

    def block_axes(self, claimed: Mapping[tuple[str, int], str]) -> int:
        """Block every group that touches a weight axis in ``claimed`` (``{(constant, axis): owner}``): that axis
        belongs to another unit kind (an MLP's neurons, a block's heads) and is never claimed twice. Returns the
        number of groups newly blocked."""
        n = 0
        for g in self.groups:
            for t in g.touches:
                base = self.view.constant_base(self.graph.node[t.node].input[t.input])
                owner = claimed.get((base or "", t.axis))
                if owner is not None:
                    if g.prunable:
                        n += 1
                    g.blocked.append(f"its axis is cut as {owner} (one owner per weight axis)")
                    break
        return n

    def prunable(self, scope: str = "all") -> list[ChannelGroup]:
        """Groups that can be cut, restricted to ``scope`` (``all``, ``decoder`` or ``backbone``)."""
        if scope not in ("all", "decoder", "backbone"):
            raise ValueError(f"unknown scope {scope!r}")
        return [g for g in self.groups if g.prunable and (scope == "all" or g.scope == scope)]

    # ------------------------------------------------------------------ cost model
    def factor(self, tensor: str) -> tuple[tuple[int | None, int], ...] | None:
        """The channel axis of ``tensor`` as ``((group id, size), ...)`` (None: not tracked)."""
        info = self.chan.get(tensor)
        if info is None:
            return None
        return tuple((self.uf.find(s.space), s.size) for s in info.segments)

    def flop_factors(self, idx: int) -> list[tuple[tuple[int | None, int], ...]]:
        """Channel factors of node ``idx``'s FLOPs: ``flops = base * prod_f (kept channels of f / channels of f)``.

        A Conv counts its output channels and (group 1) its input channels; a depthwise Conv or a pooling MatMul
        only the channels it carries; a Gemm / MatMul its contraction features and its output features.
        """
        node = self.graph.node[idx]
        out = [f for f in [self.factor(node.output[0])] if f is not None] if node.output else []
        if idx in self.contracted:
            f = self.factor(self.contracted[idx])
            if f is not None:
                out.append(f)
        return out

    def param_factors(self) -> dict[str, list[tuple[int, tuple[tuple[int | None, int], ...]]]]:
        """``{constant base name: [(axis, factor), ...]}`` for every constant some group's cut would slice."""
        per: dict[tuple[str, int], dict[int, tuple[int, int]]] = {}
        for t in self.touches:
            base = self.view.constant_base(self.graph.node[t.node].input[t.input])
            if base is None:
                continue
            per.setdefault((base, t.axis), {})[t.offset] = (self.uf.find(t.space), self.uf.size[self.uf.find(t.space)])
        out: dict[str, list[tuple[int, tuple[tuple[int | None, int], ...]]]] = {}
        for (base, axis), segs in per.items():
            out.setdefault(base, []).append((axis, tuple(segs[o] for o in sorted(segs))))
        return out


@dataclass
class CutResult:
    """What :func:`apply_channel_cuts` did: kept positions per constant and axis, and the plan sections."""

    kept: dict[tuple[int, int], dict[int, list[int]]] = field(default_factory=dict)
    channels: dict[str, dict[str, object]] = field(default_factory=dict)
    slices: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    rewritten: int = 0


def _unique(names: set[str], stem: str) -> str:
    name, k = stem, 0
    while name in names:
        k += 1
        name = f"{stem}_{k}"
    names.add(name)
    return name


_BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def apply_channel_cuts(
    model: onnx.ModelProto, analysis: ChannelAnalysis, keep: Mapping[int, Sequence[int]]
) -> tuple[onnx.ModelProto, CutResult]:
    """Return a copy of ``model`` with every group ``gid`` in ``keep`` cut to the channels ``keep[gid]``.

    ``keep[gid]`` lists kept channel indices (0 .. group size - 1) of a prunable group. For each constant a cut
    touches, the kept positions of an axis are those no cut group removes: channel ``c`` of a touch owns positions
    ``(offset + c) * inner + j``. A constant that only this node reads is replaced in place; one read elsewhere
    (a shared shape constant) gets a new, sliced copy. ``sizes``/``shape`` constants of Resize/Reshape get the new
    channel count. The graph is not finalized here (the caller does), and value_info is cleared.
    """
    groups = analysis.by_gid
    for gid, kept in keep.items():
        g = groups.get(gid)
        if g is None or not g.prunable:
            raise ValueError(f"group {gid} is not a prunable channel group")
        if not kept or len(set(kept)) != len(kept) or min(kept) < 0 or max(kept) >= g.size:
            raise ValueError(f"group {g.name}: kept channels must be distinct indices in [0, {g.size}), not empty")
    keep_sets = {gid: sorted(int(k) for k in kept) for gid, kept in keep.items() if len(kept) < groups[gid].size}
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    view = analysis.view
    result = CutResult()
    removed: dict[tuple[int, int], dict[int, set[int]]] = {}
    for t in analysis.touches:
        root = analysis.uf.find(t.space)
        if root not in keep_sets:
            continue
        kept = set(keep_sets[root])
        pos = removed.setdefault((t.node, t.input), {}).setdefault(t.axis, set())
        for c in range(groups[root].size):
            if c not in kept:
                start = (t.offset + c) * t.inner
                pos.update(range(start, start + t.inner))
    names = (
        {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    )
    weight_map = dict(analysis.weight_map)
    claimed: dict[str, dict] = {}
    inits = {i.name: i for i in graph.initializer}
    for (nidx, inp), axes in sorted(removed.items()):
        node = graph.node[nidx]
        name = node.input[inp]
        value = view.constant(name)
        if value is None:
            raise ValueError(f"{_node_label(node, nidx)} input {inp} is not a constant")
        kept_axes: dict[int, list[int]] = {}
        for axis, rem in sorted(axes.items()):
            length = value.shape[axis]
            if rem and max(rem) >= length:
                raise ValueError(f"{_node_label(node, nidx)} input {inp}: channel position out of range")
            kept_axes[axis] = [p for p in range(length) if p not in rem]
            value = np.take(value, kept_axes[axis], axis=axis)
        result.kept[(nidx, inp)] = kept_axes
        base = view.constant_base(name)
        assert base is not None
        new_t = numpy_helper.from_array(np.ascontiguousarray(value), name)
        if base == name and base in inits and view.constant_readers.get(base, 0) == 1:
            inits[base].CopyFrom(new_t)
            new_name = base
        else:
            new_name = _unique(names, f"{base}_ch")
            new_t.name = new_name
            graph.initializer.append(new_t)
            node.input[inp] = new_name
            if base in weight_map:
                weight_map[new_name] = dict(weight_map[base])
        # a tensor the exporter stored once for several equal torch tensors is this layer's one
        entry = pick_source(analysis.weight_map.get(base), analysis.module_path(nidx))
        if entry is not None:
            claimed[new_name] = entry
        orig_shape = view.constant_shape(name) or ()
        for axis, kept in kept_axes.items():
            if entry and isinstance(entry.get("param"), str):
                torch_axis = (len(orig_shape) - 1 - axis) if entry.get("transposed") and len(orig_shape) == 2 else axis
                _add_slice(result.slices, entry["param"], torch_axis, kept)
                bn = entry.get("folded_bn")
                if bn and axis == 0:
                    for suffix in _BN_TENSORS:
                        _add_slice(result.slices, f"{bn}.{suffix}", 0, kept)
            role_axis = _out_axis(node, inp)
            if role_axis is not None and axis == role_axis:
                result.channels[analysis.module_path(nidx)] = {"kept": kept, "total": int(orig_shape[axis])}
    for rw in analysis.shape_rewrites:
        new_c = _new_channels(analysis, rw.tensor, keep_sets)
        if new_c is None:
            continue
        node = graph.node[rw.node]
        v = view.constant(node.input[rw.input])
        assert v is not None
        v = np.array(v, copy=True)
        flat = v.reshape(-1)
        flat[rw.position] = new_c * rw.mult
        base = view.constant_base(node.input[rw.input]) or "shape"
        new_name = _unique(names, f"{base}_ch")
        graph.initializer.append(numpy_helper.from_array(flat.reshape(v.shape).astype(v.dtype), new_name))
        node.input[rw.input] = new_name
        result.rewritten += 1
    for nidx, tensor in analysis.depthwise.items():
        new_c = _new_channels(analysis, tensor, keep_sets)
        if new_c is None:
            continue
        node = graph.node[nidx]
        for a in node.attribute:
            if a.name == "group":
                a.i = new_c
    del graph.value_info[:]
    if analysis.weight_map:
        claim_sources(weight_map, claimed)
        present = {i.name for i in graph.initializer}
        write_metadata(out, {"weight_map": {k: v for k, v in weight_map.items() if k in present}})
    return out, result


def _new_channels(analysis: ChannelAnalysis, tensor: str, keep_sets: Mapping[int, Sequence[int]]) -> int | None:
    """Channel count of ``tensor`` after the cuts, or None when no cut reaches it."""
    info = analysis.chan.get(tensor)
    if info is None:
        return None
    roots = [analysis.uf.find(s.space) for s in info.segments]
    if not any(r in keep_sets for r in roots):
        return None
    return sum(len(keep_sets[r]) if r in keep_sets else s.size for r, s in zip(roots, info.segments))


def _out_axis(node: onnx.NodeProto, inp: int) -> int | None:
    """The output-channel axis of a layer's weight input (Conv W axis 0, Gemm B axis 0/1, MatMul B axis 1)."""
    if inp != 1:
        return None
    if node.op_type == "Conv":
        return 0
    if node.op_type == "Gemm":
        return 0 if int(_attr(node, "transB", 0)) else 1
    if node.op_type == "MatMul":
        return 1
    return None


def _add_slice(slices: dict[str, dict[str, list[int]]], param: str, axis: int, kept: list[int]) -> None:
    slices.setdefault(param, {})[str(axis)] = list(kept)


def keep_top(scores: np.ndarray, count: int) -> list[int]:
    """Indices of the ``count`` highest scores, in ascending index order (ties: the lower index wins)."""
    count = max(0, min(int(count), len(scores)))
    order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
    return sorted(int(i) for i in order[:count])


def ceil_frac(fraction: float, n: int) -> int:
    return int(math.ceil(fraction * n - 1e-9))
