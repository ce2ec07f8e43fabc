"""Layout chains: a run of ``Reshape``/``Transpose``/``Squeeze``/``Unsqueeze``/``Flatten`` with static shapes,
composed into at most ``Reshape -> Transpose -> Reshape``.

MobileViT unfolds the feature map into patches before each transformer and folds it back after (``Reshape ->
Transpose -> Reshape -> Transpose -> Reshape``: five memory-bound copies at full resolution, none counted as FLOPs).
:func:`plan_layout_chain` composes a chain into one permutation of "atoms" (the factors the reshapes split the axes
into; atoms adjacent in both orders are merged) and writes its shortest form; :class:`LayoutChainRule` (a
:class:`passes._core.rewrite.RewriteRule`) finds every maximal chain whose intermediate tensors nothing else reads,
keeps the plans that are shorter and reproduce the chain on an index tensor (bit-exact: data movement only), and
rewrites them. A MobileViT unfold or fold goes from 5 nodes to 3.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from passes._core.graph import GraphView, copy_model, unique_name
from passes._core.rewrite import RewriteRule, consumer_count, taken_names

__all__ = ["LAYOUT_OPS", "LayoutChainRule", "LayoutMatch", "collapse_layout_chains", "plan_layout_chain"]

log = logging.getLogger(__name__)

LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")

Step = tuple[str, list[int]]


# -------------------------------------------------------------------------------------------------- the plan


class _Atoms:
    """The chain's tensor as the input's atoms: ``sizes`` of every atom, ``order`` of the input's atoms (outermost
    first), ``cur`` the current tensor's axes as lists of atoms, ``out_shape`` its shape."""

    def __init__(self, in_shape: list[int]) -> None:
        self.sizes: dict[int, int] = {}
        self.order: list[int] = []
        self.cur: list[list[int]] = []
        for d in in_shape:
            atoms = []
            if d > 1:
                self.sizes[len(self.sizes)] = d
                self.order.append(len(self.sizes) - 1)
                atoms.append(len(self.sizes) - 1)
            self.cur.append(atoms)
        self.out_shape = list(in_shape)

    def transpose(self, arg: Sequence[int]) -> bool:
        perm = [int(p) for p in arg]
        if sorted(perm) != list(range(len(self.cur))):
            return False
        self.cur = [self.cur[p] for p in perm]
        self.out_shape = [self.out_shape[p] for p in perm]
        return True

    def reshape(self, arg: Sequence[int]) -> bool:
        target = [int(d) for d in arg]
        if any(d <= 0 for d in target) or int(np.prod(target)) != int(np.prod(self.out_shape)):
            return False
        flat = [a for axis in self.cur for a in axis]
        new: list[list[int]] = []
        for want in target:
            group = self._take(flat, want)
            if group is None:
                return False
            new.append(group)
        if flat:
            return False
        self.cur, self.out_shape = new, target
        return True

    def _take(self, flat: list[int], want: int) -> list[int] | None:
        """The atoms (popped from ``flat``) that make an axis of size ``want``; an atom larger than what remains is
        split, its outer part here and its inner part next. None when the sizes do not factor."""
        group: list[int] = []
        rem = want
        while rem > 1:
            if not flat:
                return None
            a = flat.pop(0)
            if rem % self.sizes[a] == 0:
                group.append(a)
                rem //= self.sizes[a]
            elif self.sizes[a] % rem == 0:
                hi, lo = len(self.sizes), len(self.sizes) + 1
                self.sizes[hi], self.sizes[lo] = rem, self.sizes[a] // rem
                pos = self.order.index(a)
                self.order[pos : pos + 1] = [hi, lo]
                group.append(hi)
                flat.insert(0, lo)
                rem = 1
            else:
                return None
        return group

    def merged(self) -> tuple[list[int], list[int], list[int]]:
        """``(perm, merged_in, merged_out)``: atoms adjacent in both orders as one axis, the permutation from the
        input's order of those axes to the output's, and their sizes in each order."""
        final = [a for axis in self.cur for a in axis]
        pos_in = {a: i for i, a in enumerate(self.order)}
        groups: list[list[int]] = []
        for a in final:
            if groups and pos_in[a] == pos_in[groups[-1][-1]] + 1:
                groups[-1].append(a)
            else:
                groups.append([a])
        by_input = sorted(range(len(groups)), key=lambda g: pos_in[groups[g][0]])
        merged_in = [int(np.prod([self.sizes[a] for a in groups[g]])) for g in by_input]
        merged_out = [int(np.prod([self.sizes[a] for a in g])) for g in groups]
        perm = [by_input.index(g) for g in range(len(groups))]
        return perm, merged_in, merged_out


def _transpose_form(
    in_shape: list[int], out_shape: list[int], perm: list[int], merged_in: list[int], merged_out: list[int]
) -> list[Step]:
    """``[Reshape] Transpose [Reshape]`` for a composition that moves data."""
    ops: list[Step] = []
    out_fits = [d for d in out_shape if d != 1] == merged_out
    if [d for d in in_shape if d != 1] == merged_in:  # transpose the input as it is
        t_in = list(in_shape)
        group_axes = [i for i, d in enumerate(in_shape) if d != 1]
    else:
        ones_wanted = out_shape.count(1) if out_fits else 0
        t_in = [1] * ones_wanted + merged_in
        group_axes = [ones_wanted + g for g in range(len(merged_in))]
        ops.append(("Reshape", t_in))
    ones = [i for i, d in enumerate(t_in) if d == 1]
    moved = [group_axes[p] for p in perm]
    if out_fits and out_shape.count(1) == len(ones):  # size-1 axes where the output has them: no final reshape
        it_moved, it_ones = iter(moved), iter(ones)
        t_perm = [next(it_ones) if d == 1 else next(it_moved) for d in out_shape]
    else:
        t_perm = ones + moved
    ops.append(("Transpose", t_perm))
    if [t_in[i] for i in t_perm] != out_shape:
        ops.append(("Reshape", out_shape))
    return ops


def plan_layout_chain(in_shape: Sequence[int], steps: Sequence[tuple[str, Sequence[int]]]) -> list[Step] | None:
    """The shortest ``[Reshape] [Transpose] [Reshape]`` form of a chain of layout ops on a tensor of ``in_shape``.

    ``steps``: ``("Transpose", perm)`` or ``("Reshape", new static shape)`` in order. Returns
    ``[("Reshape", shape) | ("Transpose", perm)]`` (empty for an identity chain), or ``None`` when a reshape splits
    the data across axes in a way that is not a factorisation (then the chain is left alone).
    """
    shape = [int(d) for d in in_shape]
    if any(d <= 0 for d in shape):
        return None
    atoms = _Atoms(shape)
    for kind, arg in steps:
        if not (atoms.transpose(arg) if kind == "Transpose" else atoms.reshape(arg)):
            return None
    perm, merged_in, merged_out = atoms.merged()
    if perm == sorted(perm):
        return [] if shape == atoms.out_shape else [("Reshape", atoms.out_shape)]
    return _transpose_form(shape, atoms.out_shape, perm, merged_in, merged_out)


def _apply_steps(x: np.ndarray, steps: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    for kind, arg in steps:
        x = np.transpose(x, arg) if kind == "Transpose" else x.reshape(arg)
    return x


# -------------------------------------------------------------------------------------------------- the rule


@dataclass
class LayoutMatch:
    """A chain and its shorter exact form."""

    chain: list[onnx.NodeProto]
    plan: list[Step]

    def row(self) -> dict[str, Any]:
        """The report row of this rewrite."""
        return {
            "at": self.chain[0].name,
            "ops_before": ">".join(n.op_type for n in self.chain),
            "ops_after": ">".join(k for k, _ in self.plan) or "(none)",
            "nodes_before": len(self.chain),
            "nodes_after": len(self.plan),
        }


@dataclass
class _Ctx:
    """A copy of the model (edited in place by the rewrite), its view, consumer counts, outputs and producers."""

    work: onnx.ModelProto
    view: GraphView
    consumers: Counter[str]
    outputs: set[str]
    producer: dict[str, onnx.NodeProto]


def _layout_step(node: onnx.NodeProto, view: GraphView) -> Step | None:
    if node.op_type == "Transpose":
        rank = view.rank(node.input[0])
        if rank is None:
            return None
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(rank))[::-1])
        return ("Transpose", perm)
    out = view.shape(node.output[0])
    return None if out is None else ("Reshape", list(out))


class LayoutChainRule(RewriteRule[_Ctx, list[onnx.NodeProto], LayoutMatch]):
    """Layout chains -> at most ``Reshape -> Transpose -> Reshape`` (see the module doc)."""

    name = "layout"

    def prepare(self, model: onnx.ModelProto) -> _Ctx:
        work = copy_model(model)
        graph = work.graph
        producer = {o: n for n in graph.node for o in n.output if o}
        return _Ctx(work, GraphView(work), consumer_count(work), {o.name for o in graph.output}, producer)

    def _chainable(self, ctx: _Ctx, n: onnx.NodeProto) -> bool:
        view = ctx.view
        if n.op_type not in LAYOUT_OPS or view.is_constant(n.input[0]) or view.shape(n.input[0]) is None:
            return False
        return view.shape(n.output[0]) is not None and _layout_step(n, view) is not None

    def _links(self, ctx: _Ctx, a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
        o = a.output[0]
        return o not in ctx.outputs and ctx.consumers[o] == 1 and b.input[0] == o and list(b.input).count(o) == 1

    def pattern(self, ctx: _Ctx) -> list[list[onnx.NodeProto]]:
        """Every maximal chain of layout nodes linked through tensors nothing else reads."""
        graph = ctx.work.graph
        layout = [n for n in graph.node if n.op_type in LAYOUT_OPS and len(n.output) == 1]
        readers: dict[str, list[onnx.NodeProto]] = {}
        for n in graph.node:
            for i in n.input:
                readers.setdefault(i, []).append(n)
        next_of: dict[Any, onnx.NodeProto] = {}
        for n in layout:
            rs = readers.get(n.output[0], [])
            if len(rs) == 1 and self._chainable(ctx, n) and self._chainable(ctx, rs[0]) and self._links(ctx, n, rs[0]):
                next_of[n.name or id(n)] = rs[0]
        chains: list[list[onnx.NodeProto]] = []
        for n in layout:
            if not self._chainable(ctx, n):
                continue
            p = ctx.producer.get(n.input[0])
            if p is not None and next_of.get(p.name or id(p)) is n:
                continue  # not the start of its chain
            chain = [n]
            while (chain[-1].name or id(chain[-1])) in next_of:
                chain.append(next_of[chain[-1].name or id(chain[-1])])
            chains.append(chain)
        return chains

    def where(self, candidate: list[onnx.NodeProto]) -> str:
        return candidate[0].name

    def check(self, ctx: _Ctx, candidate: list[onnx.NodeProto]) -> LayoutMatch | str:
        """The chain's plan, when shorter and reproducing the chain on an index tensor."""
        y = candidate[-1].output[0]
        in_shape = ctx.view.shape(candidate[0].input[0])
        steps = [_layout_step(n, ctx.view) for n in candidate]
        plan = plan_layout_chain(in_shape, steps)  # type: ignore[arg-type]
        if plan is None or len(plan) >= len(candidate):
            return "no shorter exact form"
        if not plan and y in ctx.outputs:
            return "an identity chain ending at a graph output keeps its node"
        probe = np.arange(int(np.prod(in_shape)), dtype=np.int64).reshape(in_shape)  # type: ignore[arg-type]
        want = _apply_steps(probe, steps)  # type: ignore[arg-type]
        got = _apply_steps(probe, plan)
        if got.shape != want.shape or not np.array_equal(got, want):
            log.warning("layout plan for %s did not reproduce the chain; left alone", candidate[0].name)
            return "the plan did not reproduce the chain"
        return LayoutMatch(candidate, plan)

    def unchanged(self, ctx: _Ctx) -> onnx.ModelProto:
        return ctx.work

    def rewrite(self, ctx: _Ctx, matches: list[LayoutMatch]) -> onnx.ModelProto:
        graph = ctx.work.graph
        taken = taken_names(ctx.work)
        replace: dict[int, list[onnx.NodeProto]] = {}
        rename: dict[str, str] = {}
        dropped: set[int] = set()
        for m in matches:
            x, y = m.chain[0].input[0], m.chain[-1].output[0]
            replace[id(m.chain[0])] = self._nodes(graph, m, x, y, taken)
            if not m.plan:
                rename[y] = x
            dropped.update(id(n) for n in m.chain)
        nodes: list[onnx.NodeProto] = []
        for n in graph.node:
            if id(n) in replace:
                nodes.extend(replace[id(n)])
            if id(n) not in dropped:
                nodes.append(n)
        for n in nodes:
            for k, i in enumerate(n.input):
                while i in rename:
                    i = rename[i]
                n.input[k] = i
        del graph.node[:]
        graph.node.extend(nodes)
        return ctx.work

    @staticmethod
    def _nodes(graph: onnx.GraphProto, m: LayoutMatch, x: str, y: str, taken: set[str]) -> list[onnx.NodeProto]:
        """The plan's nodes from ``x`` to ``y`` (a Reshape's shape added to ``graph`` as an initializer)."""
        base = m.chain[-1].name or y
        new: list[onnx.NodeProto] = []
        src = x
        for k, (kind, arg) in enumerate(m.plan):
            out = y if k == len(m.plan) - 1 else unique_name(f"{base}/collapsed_{k}", taken)
            name = unique_name(f"{base}/collapsed_{kind}_{k}", taken)
            if kind == "Transpose":
                new.append(helper.make_node("Transpose", [src], [out], name=name, perm=arg))
            else:
                shape_name = unique_name(f"{base}/collapsed_shape_{k}", taken)
                shape = numpy_helper.from_array(np.asarray(arg, np.int64), shape_name)
                graph.initializer.append(shape)
                new.append(helper.make_node("Reshape", [src, shape.name], [out], name=name))
            src = out
        return new


def collapse_layout_chains(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Rewrite every layout chain of ``model`` (not modified) that has a shorter exact form; see the module doc.

    Returns the new model (not finalized) and one row per rewritten chain (``ops_before``, ``ops_after``, ``at``).
    """
    result = LayoutChainRule().apply(model)
    return result.model, [m.row() for m in result.matches]
