"""The walk (:func:`trace`): from one tensor's unit axis, every node that reads or writes a tensor carrying it.

The tracer keeps a queue of computed tensors known to carry the axis. For each, it visits the tensor's producer and
consumers once each, asks the node's registered :class:`~passes._core.dims.registry.Rule` where the axis is on the
node's other tensors, and records what it learns (:meth:`Tracer.assign`): a constant becomes a slice of the group, a
computed tensor joins the queue; a tensor met twice must carry the axis the same way both times. At the end
(:meth:`Tracer.check`) every sliced constant must be read inside the group only, and the contraction ops' FLOPs,
sources and sinks are counted.
"""

from __future__ import annotations

import logging
from collections import deque

import numpy as np

from passes._core.dims.group import DimGroup, TensorSlice
from passes._core.dims.layout import Dim, canonical, unit_count, unit_share
from passes._core.dims.registry import lookup
from passes._core.dims.symbolic import RuntimeShapeError, resolve_runtime
from passes._core.graph import GraphView, NodeRef

log = logging.getLogger(__name__)


class TraceError(Exception):
    """The axis cannot be followed safely; the message names the node and the reason. ``reached``: the tensors
    the walk had found to carry the axis when it stopped (part of the group it could not finish)."""

    reached: set[str] = set()


class Widen(Exception):
    """A walk reached output ``part`` of Split node ``node`` (with ``dim``) after that Split had left it out of the
    group: the trace starts again with the part carried (:func:`trace`)."""

    def __init__(self, node: int, part: int, dim: Dim) -> None:
        super().__init__(node, part, dim)
        self.node, self.part, self.dim = node, part, dim


class Tracer:
    """One walk of :func:`trace`: the graph, the mode, the group found so far, and what the rules need."""

    def __init__(
        self, view: GraphView, seed: str, count: int, width: bool = False, sums: bool = False, channels: bool = False
    ) -> None:
        self.view = view
        self.width = width  # a transformer's embedding dim: LayerNorm statistics over it are allowed (inexact)
        self.sums = sums  # sums over the unit axis are allowed (see trace)
        self.channels = channels  # conv channels: a Concat along the axis lays its inputs side by side (see trace)
        self.group = DimGroup(seed=seed, count=count)
        self.queue: deque[str] = deque()
        self.none_claims: dict[str, str] = {}
        #: Split node -> its outputs known to carry the unit, with their Dims (grown by :class:`Widen` restarts);
        #: an output left out is recorded in ``left_out`` as (node, part)
        self.carried_parts: dict[int, dict[int, Dim]] = {}
        self.left_out: dict[str, tuple[int, int]] = {}

    # helpers for the rules ---------------------------------------------------------------------------------
    def fail(self, ref: NodeRef | None, reason: str) -> TraceError:
        """The error a rule raises to refuse: ``raise tr.fail(ref, "reason")``."""
        where = f"{ref.node.op_type} node {ref.name!r}: " if ref is not None else ""
        return TraceError(where + reason)

    def shape(self, ref: NodeRef, name: str) -> list[int]:
        """The static shape of ``name``; refuses (naming ``ref``) when it is not static."""
        s = self.view.shape(name)
        if s is None:
            raise self.fail(ref, f"the shape of {name!r} is not static (a dynamic size: give --input-size H W)")
        return s

    def shape_vector(self, ref: NodeRef, k: int) -> tuple[tuple[int, ...], bool]:
        """The value of input ``k`` of ``ref`` (a shape or sizes vector) and whether it is computed (``folded``)
        rather than a constant; refuses when it is computed at run time from dynamic sizes."""
        name = ref.node.input[k]
        value = self.view.value(name)
        if value is None:
            raise self.fail(
                ref, f"its shape input {name!r} is computed at run time from dynamic sizes; cannot rewrite it"
            )
        return tuple(int(v) for v in np.asarray(value).reshape(-1)), not self.view.is_constant(name)

    def note_inexact(self, ref: NodeRef) -> None:
        """Record that ``ref`` normalises over the cut axis (the group is not exact against zeroing)."""
        why = f"{ref.node.op_type} {ref.name!r} normalises over the cut axis"
        if why not in self.group.inexact:
            self.group.inexact.append(why)

    # bookkeeping ------------------------------------------------------------------------------------------
    def assign(self, name: str, dim: Dim, ref: NodeRef | None) -> None:
        dim = Dim(dim.axis, canonical(dim.layout))
        if name in self.left_out:
            raise Widen(*self.left_out[name], dim)
        if name in self.none_claims:
            raise self.fail(ref, f"{name!r} carries the unit axis but {self.none_claims[name]} does not pass it on")
        old = self.group.dims.get(name)
        if old is not None:
            if old != dim:
                raise self.fail(ref, f"{name!r} would carry the unit axis twice ({old} and {dim})")
            return
        if name in self.view.graph_inputs:
            raise self.fail(ref, f"the unit axis reaches the model input {name!r}")
        if name in self.view.graph_outputs:
            raise self.fail(ref, f"the unit axis reaches the model output {name!r}; outputs are never cut")
        shape = self.view.shape(name)
        if shape is None:
            raise self.fail(ref, f"the shape of {name!r} is not static (a dynamic size: give --input-size H W)")
        if shape[dim.axis] != dim.size:
            raise self.fail(ref, f"{name!r} axis {dim.axis} has size {shape[dim.axis]}, expected {dim.size}")
        self.group.dims[name] = dim
        if self.view.is_constant(name):
            value = self.view.constant(name)
            self.group.slices[name] = TensorSlice(name, dim.axis, dim.layout)
            self.group._shapes[name] = list(shape)
            self.group._float[name] = value is not None and np.issubdtype(value.dtype, np.floating)
        else:
            self.queue.append(name)

    def claim_none(self, name: str, ref: NodeRef) -> None:
        if name in self.group.dims:
            raise self.fail(ref, f"{name!r} carries the unit axis but this op does not pass it on")
        self.none_claims[name] = f"{ref.node.op_type} node {ref.name!r}"

    # the walk ---------------------------------------------------------------------------------------------
    def run(self, name: str, dim: Dim) -> DimGroup:
        try:
            return self._walk(name, dim)
        except TraceError as exc:
            exc.reached = set(self.group.dims)
            raise

    def _walk(self, name: str, dim: Dim) -> DimGroup:
        self.assign(name, dim, None)
        visited: set[int] = set()
        while self.queue:
            t = self.queue.popleft()
            refs = []
            if t in self.view.producer:
                refs.append(self.view.producer[t])
            refs.extend(self.view.consumer_nodes(t))
            for ref in refs:
                if ref.index in visited:
                    continue
                visited.add(ref.index)
                self.visit(ref, t)
        self.check()
        return self.group

    def _opset(self, domain: str) -> int:
        if domain in ("", "ai.onnx"):
            return self.view.opset
        return next((o.version for o in self.view.model.opset_import if o.domain == domain), 1)

    def visit(self, ref: NodeRef, known: str) -> None:
        op, domain = ref.node.op_type, ref.node.domain
        rule = lookup(op, self._opset(domain), domain)
        if rule is None:
            if domain not in ("", "ai.onnx"):
                raise self.fail(ref, f"no rule for custom-domain op {domain}.{op}")
            raise self.fail(ref, f"no rule for {op} on the unit axis; the unit is left whole")
        result = rule(self, ref, known, self.group.dims[known])
        self.group.nodes.add(ref.index)
        for name, dim in result.items():
            if not name:
                continue
            if dim is None:
                self.claim_none(name, ref)
            else:
                self.assign(name, dim, ref)

    def check(self) -> None:
        g = self.group
        for name in g.slices:
            users = self.view.consumer_nodes(name)
            outside = [r for r in users if r.index not in g.nodes]
            if outside or len(users) > 1:
                names = ", ".join(repr(r.name) for r in users)
                raise TraceError(f"constant {name!r} is shared (read by {names}); a shared weight is never cut")
        for ref in (self.view.nodes[i] for i in sorted(g.nodes)):
            if ref.node.op_type not in ("MatMul", "Gemm", "Conv", "ConvTranspose", "Einsum"):
                continue
            carried = [g.dims[t] for t in (ref.node.output[0], *ref.node.input[:2]) if t in g.dims]
            g.flops += round(self.view.node_flops(ref) * (unit_share(carried[0].layout) if carried else 1.0))
            if ref.node.op_type in ("Conv", "ConvTranspose") and int(self.view.attrs(ref.node).get("group", 1)) != 1:
                continue  # a grouped filter goes with its groups (depthwise: its channel): neither makes nor consumes
            for pos in (0, 1):
                w = ref.node.input[pos]
                if w in g.slices and len(g._shapes[w]) >= 2:
                    carried_out = ref.node.output[0] in g.dims
                    (g.sources if carried_out else g.sinks).append(w)
        try:  # shape vectors computed at run time from a dynamic size: written where they are built, or refused
            resolve_runtime(self.view, g)
        except RuntimeShapeError as exc:
            raise TraceError(str(exc)) from None


def trace(
    view: GraphView, name: str, dim: Dim, *, width: bool = False, sums: bool = False, channels: bool = False
) -> DimGroup:
    """Follow the unit axis ``dim`` of tensor ``name`` through the whole graph; raise :class:`TraceError`.

    ``width``: the axis is a transformer's embedding dimension, which LayerNorm normalises over. Such a group may
    pass LayerNormalization (its scale and bias are sliced) and the ReduceMean of a decomposed LayerNorm; after the
    cut the statistics are taken over the kept channels, as in a torch model built with the smaller width, so the
    group is not exact against zeroing and says why in ``inexact``.

    ``sums``: the group's oracle zeroes its units in every tensor that carries them (head channels, widths), so a
    reduction to which a 0 adds nothing (:data:`~passes._core.dims.rules.reduction.ZERO_NEUTRAL_REDUCE`) over the
    unit axis equals the reduction over the kept units: SwinV2's L2 norm of q and k over head_dim. (The heads' and
    neurons' oracles zero only the consuming weights, which such a reduction would not see.)

    ``channels``: the axis is a layer's output channels. A Concat along it puts the other inputs beside the unit
    (a :class:`~passes._core.dims.layout.Parts` layout: UPerNet's fused pyramid levels are separate groups, each cut
    on its own part of the next conv's input); otherwise a Concat of equal parts carries the unit in every input
    (Swin's patch merging of four strided views of one tensor)."""
    count = unit_count(canonical(dim.layout))
    carried: dict[int, dict[int, Dim]] = {}
    while True:
        tracer = Tracer(view, name, count, width, sums, channels)
        tracer.carried_parts = {k: dict(v) for k, v in carried.items()}
        try:
            return tracer.run(name, dim)
        except Widen as w:  # a part of a Split turned out to carry the unit too: again, with it carried
            carried.setdefault(w.node, {})[w.part] = w.dim
