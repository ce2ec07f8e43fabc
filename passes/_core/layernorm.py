"""Decomposed LayerNorm: the chains an opset-13 export writes, found once for every pass that treats them (``fp16``
keeps them in FP32, ``int8`` leaves them in float, ``optimize`` fuses them), and the fusion rule.

The legacy exporter writes LayerNorm below opset 17 as ``ReduceMean -> Sub -> Pow|Mul -> ReduceMean [-> Add eps]
-> Sqrt -> Div [-> Mul gamma] [-> Add beta]`` (``Reciprocal -> Mul`` in place of ``Div`` also occurs).
:func:`find_layernorm_chains` matches that on the data flow; :class:`LayerNormFusion` (a
:class:`passes._core.rewrite.RewriteRule`) turns each chain whose intermediates nothing else reads, whose two
reductions keep dimensions over the same trailing axes and whose ``gamma``/``beta`` are constants of the normalised
shape into one ``LayerNormalization`` (opset 17; a model below it is raised first by onnx's version converter).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fileformat.errors import PassError
from fileformat.metadata import read_metadata, write_metadata
from passes._core.graph import GraphView, consumers, copy_model, unique_name
from passes._core.precision import constant_aliases, float_constants
from passes._core.rewrite import RewriteRule, consumer_count, taken_names

__all__ = ["LN_OPSET", "LayerNormFusion", "LayerNormMatch", "find_layernorm_chains", "fuse_layernorm"]

#: the opset that has ``LayerNormalization``
LN_OPSET = 17


# ------------------------------------------------------------------------------------------------ the pattern


class _ChainFinder:
    """The consumers and float constants of one model, and the steps of a chain matched from its first
    ``ReduceMean``."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.consumers = consumers(model)
        consts = float_constants(model)
        consts.update({k: consts[v] for k, v in constant_aliases(model).items()})
        self.consts = consts

    def only(self, tensor: str, op: str) -> onnx.NodeProto | None:
        """The one reader of ``tensor`` of type ``op``, if exactly one."""
        hits = [n for n in self.consumers.get(tensor, []) if n.op_type == op]
        return hits[0] if len(hits) == 1 else None

    def square(self, d: str) -> onnx.NodeProto | None:
        """``Pow(d, 2)`` or ``Mul(d, d)`` (the last such reader)."""
        sq = None
        for n in self.consumers.get(d, []):
            if (
                n.op_type == "Pow"
                and n.input[0] == d
                and n.input[1] in self.consts
                and np.all(self.consts[n.input[1]] == 2)
            ):
                sq = n
            elif n.op_type == "Mul" and list(n.input) == [d, d]:
                sq = n
        return sq

    def normalise(self, d: str, cur: str) -> tuple[list[onnx.NodeProto], str] | None:
        """``Div(d, cur)``, or ``Mul(d, Reciprocal(cur))``: the nodes and their output."""
        div = self.only(cur, "Div")
        if div is not None and list(div.input) == [d, cur]:
            return [div], div.output[0]
        rec = self.only(cur, "Reciprocal")
        mul = self.only(rec.output[0], "Mul") if rec is not None else None
        if rec is None or mul is None or d not in mul.input:
            return None
        return [rec, mul], mul.output[0]

    def affine(self, cur: str) -> list[onnx.NodeProto]:
        """The ``Mul`` by gamma and ``Add`` of beta that follow, where their other operand is a constant."""
        out: list[onnx.NodeProto] = []
        for op in ("Mul", "Add"):
            nxt = self.consumers.get(cur, [])
            if len(nxt) == 1 and nxt[0].op_type == op and any(i in self.consts for i in nxt[0].input if i != cur):
                out.append(nxt[0])
                cur = nxt[0].output[0]
        return out

    def chain(self, r1: onnx.NodeProto) -> list[onnx.NodeProto] | None:
        """The chain that starts at the ``ReduceMean`` ``r1``, or None."""
        x, m = r1.input[0], r1.output[0]
        subs = [n for n in self.consumers.get(m, []) if n.op_type == "Sub" and list(n.input) == [x, m]]
        if len(subs) != 1:
            return None
        d = subs[0].output[0]
        sq = self.square(d)
        r2 = self.only(sq.output[0], "ReduceMean") if sq is not None else None
        if sq is None or r2 is None:
            return None
        chain = [r1, subs[0], sq, r2]
        cur = r2.output[0]
        add_eps = self.only(cur, "Add")
        if add_eps is not None and any(i in self.consts for i in add_eps.input):
            chain.append(add_eps)
            cur = add_eps.output[0]
        sqrt = self.only(cur, "Sqrt")
        if sqrt is None:
            return None
        chain.append(sqrt)
        normalised = self.normalise(d, sqrt.output[0])
        if normalised is None:
            return None
        chain += normalised[0]
        return chain + self.affine(normalised[1])


def find_layernorm_chains(model: onnx.ModelProto) -> list[list[str]]:
    """Node names of each decomposed LayerNorm: ``ReduceMean -> Sub -> Pow|Mul -> ReduceMean [-> Add] -> Sqrt ->
    Div [-> Mul(gamma)] [-> Add(beta)]`` (also ``Reciprocal -> Mul`` in place of ``Div``).

    Matched on the data flow: ``Sub`` reads the first ``ReduceMean``'s input and output, the square reads the
    ``Sub`` output twice (or with exponent 2), the division's numerator is that same ``Sub`` output. The affine
    ``Mul``/``Add`` are included when their other operand is a constant.
    """
    finder = _ChainFinder(model)
    chains: list[list[str]] = []
    for r1 in model.graph.node:
        if r1.op_type == "ReduceMean" and r1.input:
            chain = finder.chain(r1)
            if chain is not None:
                chains.append([n.name for n in chain])
    return chains


# -------------------------------------------------------------------------------------------------- the check


@dataclass
class LayerNormMatch:
    """One chain that is exactly a ``LayerNormalization(x, gamma, beta, axis, epsilon)``."""

    nodes: list[onnx.NodeProto]
    x: str
    out: str
    axis: int
    eps: float
    gamma: np.ndarray | None
    beta: np.ndarray | None
    gamma_name: str | None
    beta_name: str | None


@dataclass
class _Ctx:
    """What the fusion reads: the model (its unnamed nodes named), its chains, its nodes by name, its view and
    consumer counts (built only where there is a chain)."""

    model: onnx.ModelProto
    chains: list[list[str]]
    by_name: dict[str, onnx.NodeProto]
    view: GraphView | None = None
    consumers: Counter[str] | None = None


def _elem_type(view: GraphView, name: str) -> int:
    """The element type shape inference gave ``name`` (float32 when it did not say)."""
    return getattr(view, "_types", {}).get(name) or onnx.TensorProto.FLOAT


def _reduce_axes(node: onnx.NodeProto, view: GraphView) -> list[int] | None:
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("keepdims", 1) != 1:
        return None
    if "axes" in attrs:
        return [int(a) for a in attrs["axes"]]
    if len(node.input) > 1 and node.input[1]:
        v = view.value(node.input[1])
        return None if v is None else [int(a) for a in np.asarray(v).reshape(-1)]
    return None


def _epsilon(rest: list[onnx.NodeProto], r2: onnx.NodeProto, view: GraphView) -> float | str:
    """The epsilon of the ``Add`` after the second reduction (popped from ``rest``); 0 without one."""
    if not rest or rest[0].op_type != "Add":
        return 0.0
    add = rest.pop(0)
    other = next(i for i in add.input if i != r2.output[0])
    e = view.value(other)
    if e is None or np.asarray(e).size != 1:
        return f"epsilon {other!r} is not a scalar constant"
    return float(np.asarray(e).reshape(-1)[0])


def _skip_normalisation(rest: list[onnx.NodeProto]) -> bool:
    """Pop ``Sqrt`` and ``Div`` (or ``Reciprocal, Mul``) from ``rest``; False when they are not there."""
    if not rest or rest[0].op_type != "Sqrt":
        return False
    rest.pop(0)
    if rest and rest[0].op_type == "Div":
        rest.pop(0)
    elif len(rest) >= 2 and rest[0].op_type == "Reciprocal" and rest[1].op_type == "Mul":
        del rest[:2]
    else:
        return False
    return True


def _affine(
    chain: list[onnx.NodeProto], rest: list[onnx.NodeProto], view: GraphView, ops: list[str]
) -> dict[str, Any] | str:
    """``{gamma, gamma_name, beta, beta_name}`` of the trailing ``Mul``/``Add`` in ``rest``."""
    found: dict[str, Any] = {"gamma": None, "gamma_name": None, "beta": None, "beta_name": None}
    prev = (chain[-len(rest) - 1] if rest else chain[-1]).output[0]
    for node in rest:
        other = next((i for i in node.input if i != prev), None)
        value = None if other is None else view.value(other)
        if value is None:
            return f"{node.op_type} {node.name!r}: the affine operand is not a constant"
        if node.op_type == "Mul" and found["gamma"] is None and found["beta"] is None:
            found.update(gamma=np.asarray(value), gamma_name=other)
        elif node.op_type == "Add" and found["beta"] is None:
            found.update(beta=np.asarray(value), beta_name=other)
        else:
            return f"unexpected chain {ops}"
        prev = node.output[0]
    return found


def _axis(r1: onnx.NodeProto, r2: onnx.NodeProto, view: GraphView) -> int | str:
    """The first normalised axis: both reductions keep dimensions over the same trailing axes."""
    ax1, ax2 = _reduce_axes(r1, view), _reduce_axes(r2, view)
    x = r1.input[0]
    rank = view.rank(x) if view.shape(x) is not None else None
    if rank is None:
        return f"the rank of {x!r} is not known"
    if ax1 is None or ax2 is None:
        return "the ReduceMean axes are not constants, or keepdims=0"
    norm1 = sorted(a % rank for a in ax1)
    norm2 = sorted(a % rank for a in ax2)
    if norm1 != norm2 or norm1 != list(range(norm1[0], rank)):
        return f"the reductions are not over the same trailing axes ({ax1}, {ax2})"
    return norm1[0]


def _params_fit(found: dict[str, Any], x: str, axis: int, view: GraphView) -> str | None:
    """Why gamma or beta is not a constant of the normalised shape and the input's type (None: they are)."""
    shape = view.shape(x)
    rank = view.rank(x)
    assert shape is not None and rank is not None
    norm_shape = list(shape[axis:])
    dtype = onnx.helper.tensor_dtype_to_np_dtype(_elem_type(view, x))
    for label in ("gamma", "beta"):
        value = found[label]
        if value is None:
            continue
        if value.ndim > rank or any(d != 1 for d in value.shape[: max(0, value.ndim - len(norm_shape))]):
            return f"{label} {value.shape} broadcasts over axes outside the normalised ones"
        try:
            np.broadcast_to(value, norm_shape)
        except ValueError:
            return f"{label} {value.shape} does not broadcast to the normalised shape {norm_shape}"
        if value.dtype != dtype:
            return f"{label} is {value.dtype}, the input {dtype}"
    return None


def _read_outside(chain: list[onnx.NodeProto], view: GraphView, consumers: Counter[str]) -> str | None:
    """An intermediate tensor of ``chain`` that something outside it reads (or a graph output), else None."""
    inside = {o for n in chain for o in n.output}
    readers: Counter[str] = Counter()
    for n in chain:
        for i in n.input:
            if i in inside:
                readers[i] += 1
    outputs = {o.name for o in view.graph.output}
    for n in chain[:-1]:
        for o in n.output:
            if o in outputs or consumers[o] != readers[o]:
                return f"{o!r} is also read outside the chain"
    return None


def match_layernorm(chain: list[onnx.NodeProto], view: GraphView, consumers: Counter[str]) -> LayerNormMatch | str:
    """The fused form of one decomposed chain, or why it cannot be fused exactly."""
    ops = [n.op_type for n in chain]
    r1, sub, _sq, r2 = chain[:4]
    rest = chain[4:]
    eps = _epsilon(rest, r2, view)
    if isinstance(eps, str):
        return eps
    if not _skip_normalisation(rest):
        return f"unexpected chain {ops}"
    found = _affine(chain, rest, view, ops)
    if isinstance(found, str):
        return found
    axis = _axis(r1, r2, view)
    if isinstance(axis, str):
        return axis
    x = r1.input[0]
    if list(sub.input) != [x, r1.output[0]]:
        return "the Sub does not read the ReduceMean's input and output"
    why = _params_fit(found, x, axis, view) or _read_outside(chain, view, consumers)
    if why is not None:
        return why
    return LayerNormMatch(chain, x, chain[-1].output[0], axis, eps, **found)


# ------------------------------------------------------------------------------------------------ the rewrite


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _raise_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model with its default-domain opset raised to ``opset`` by onnx's version converter (metadata kept)."""
    import onnx.version_converter

    converted = onnx.version_converter.convert_version(model, opset)
    del converted.metadata_props[:]
    converted.metadata_props.extend(model.metadata_props)
    if "opset" in read_metadata(converted):
        write_metadata(converted, {"opset": opset})
    return converted


@dataclass
class _Params:
    """Where a fused node's scale and bias go: the graph, its initializers, the Identity aliases, the names taken."""

    graph: onnx.GraphProto
    inits: dict[str, onnx.TensorProto]
    aliases: dict[str, str]
    taken: set[str]

    def param(
        self, value: np.ndarray | None, name: str | None, fill: float, new_name: str, norm_shape: list[int], dtype: Any
    ) -> str:
        """The initializer holding a LayerNormalization scale or bias of exactly ``norm_shape``."""
        while name is not None and name not in self.inits and name in self.aliases:
            name = self.aliases[name]  # the legacy exporter's Identity alias of a shared initializer
        if name is not None and name in self.inits and list(self.inits[name].dims) == norm_shape:
            return name  # the exporter's gamma/beta, unchanged (the weight map keeps naming them)
        arr = np.full(norm_shape, fill, dtype) if value is None else np.broadcast_to(value, norm_shape)
        t = numpy_helper.from_array(np.ascontiguousarray(arr, dtype), unique_name(new_name, self.taken))
        self.graph.initializer.append(t)
        return t.name


class LayerNormFusion(RewriteRule[_Ctx, list[str], LayerNormMatch]):
    """Decomposed LayerNorm chains -> ``LayerNormalization`` (see the module doc)."""

    name = "layernorm"

    def prepare(self, model: onnx.ModelProto) -> _Ctx:
        """The chains of ``model``; nodes unnamed or named twice get unique names on a copy first."""
        chains = find_layernorm_chains(model)
        by_name = {n.name: n for n in model.graph.node}
        if chains and (len(by_name) != len(model.graph.node) or "" in by_name):
            work = copy_model(model)
            taken = taken_names(work)
            for i, n in enumerate(work.graph.node):
                if not n.name or sum(1 for m in work.graph.node if m.name == n.name) > 1:
                    n.name = unique_name(f"{n.op_type}_{i}", taken)
            return self.prepare(work)
        if not chains:
            return _Ctx(model, chains, by_name)
        return _Ctx(model, chains, by_name, GraphView(model), consumer_count(model))

    def pattern(self, ctx: _Ctx) -> list[list[str]]:
        return ctx.chains

    def where(self, candidate: list[str]) -> str:
        return candidate[0]

    def check(self, ctx: _Ctx, candidate: list[str]) -> LayerNormMatch | str:
        assert ctx.view is not None and ctx.consumers is not None
        return match_layernorm([ctx.by_name[n] for n in candidate], ctx.view, ctx.consumers)

    def unchanged(self, ctx: _Ctx) -> onnx.ModelProto:
        return copy_model(ctx.model)

    def rewrite(self, ctx: _Ctx, matches: list[LayerNormMatch]) -> onnx.ModelProto:
        """Raise the opset to 17 where needed (:class:`PassError` when onnx cannot), then replace each chain by
        one node at its first node's place."""
        assert ctx.view is not None
        model, view = ctx.model, ctx.view
        if _opset(model) < LN_OPSET:
            try:
                work = _raise_opset(model, LN_OPSET)
            except Exception as exc:  # onnx's converter raises plain RuntimeErrors without an adapter
                raise PassError(f"cannot raise the opset from {_opset(model)} to {LN_OPSET} ({exc})") from exc
        else:
            work = copy_model(model)
        graph = work.graph
        taken = taken_names(work)
        params = _Params(
            graph,
            {t.name: t for t in graph.initializer},
            {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"},
            taken,
        )
        drop = {n.name for m in matches for n in m.nodes}
        first_of = {m.nodes[0].name: m for m in matches}
        x_shape = {m.x: view.shape(m.x) for m in matches}
        new_nodes: list[onnx.NodeProto] = []
        for node in graph.node:
            if node.name in first_of:
                m = first_of[node.name]
                new_nodes.append(self._fused(m, list(x_shape[m.x][m.axis :]), view, params, taken))  # type: ignore[index]
            if node.name not in drop:
                new_nodes.append(node)
        del graph.node[:]
        graph.node.extend(new_nodes)
        return work

    @staticmethod
    def _fused(
        m: LayerNormMatch, norm_shape: list[int], view: GraphView, params: _Params, taken: set[str]
    ) -> onnx.NodeProto:
        dtype = onnx.helper.tensor_dtype_to_np_dtype(_elem_type(view, m.x))
        base = m.nodes[0].name.rsplit("/", 1)[0] if "/" in m.nodes[0].name else m.nodes[0].name
        inputs = [m.x, params.param(m.gamma, m.gamma_name, 1.0, f"{base}/ln_scale", norm_shape, dtype)]
        if m.beta is not None:
            inputs.append(params.param(m.beta, m.beta_name, 0.0, f"{base}/ln_bias", norm_shape, dtype))
        return helper.make_node(
            "LayerNormalization",
            inputs,
            [m.out],
            name=unique_name(f"{base}/LayerNormalization", taken),
            axis=m.axis,
            epsilon=m.eps,
        )


def fuse_layernorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, list[tuple[str, str]]]:
    """Fuse every exactly matched decomposed LayerNorm of ``model`` (not modified) into ``LayerNormalization``.

    Returns the new model (not finalized; opset raised to 17 when needed), the number of chains fused and
    ``[(first node, reason)]`` for the chains left alone. Raises :class:`PassError` when the opset cannot be raised.
    """
    result = LayerNormFusion().apply(model)
    return result.model, result.count, result.skipped
