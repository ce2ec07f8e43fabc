"""Exact rewrites for the latency costs FLOPs do not count: memory-bound layout chains and decomposed normalisations.

``python -m passes.optimize model.onnx -o out.onnx [--target cpu|jetson-orin|jetson-nano] [--no-layernorm]
[--no-layout] [--ort-offline [--ort-level extended|basic]] [--atol 1e-5] [--report r.json]``

Three rewrites, each verified on its own and reported with its node counts:

* **LayerNorm fusion** (``layernorm``). The legacy exporter writes LayerNorm below opset 17 as nine ops
  (``ReduceMean, Sub, Pow, ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta``; found by
  :func:`passes.fp16.find_layernorm_chains`). Each chain whose intermediates nothing else reads, whose two
  reductions keep dimensions over the same trailing axes and whose ``gamma``/``beta`` are constants of the
  normalised shape becomes one ``LayerNormalization`` (opset 17). A model below opset 17 is first raised to 17 with
  onnx's version converter (the opset-13 ops the exporters write mean the same at 17); when that fails the fusion is
  skipped with the reason. Only for targets whose runtime has the op (``TargetProfile.layernorm``): the CPU
  (onnxruntime) and Jetson Orin (TensorRT 8.6 imports it), never the Jetson Nano (TensorRT 8.2 has no
  ``LayerNormalization``; its opset-13 export keeps the chains).
* **Layout chains** (``layout``). MobileViT unfolds the feature map into patches before each transformer and folds it
  back after (``Reshape -> Transpose -> Reshape -> Transpose -> Reshape``, five memory-bound copies at full
  resolution, none of them counted as FLOPs). Every maximal chain of ``Reshape``/``Transpose``/``Squeeze``/
  ``Unsqueeze``/``Flatten`` nodes with static shapes, whose intermediate tensors nothing else reads, is composed
  into one permutation of "atoms" (the factors the reshapes split the axes into; atoms adjacent in both orders are
  merged) and rewritten as at most ``Reshape -> Transpose -> Reshape`` (one ``Transpose`` only when the composition
  is not the identity; no op at all for an identity chain). This subsumes merging consecutive transposes,
  ``Reshape -> Reshape`` and identity reshapes/transposes. A chain is rewritten only when the new form has fewer
  nodes, and only after the new form has reproduced the old one on an index tensor (bit-exact by construction:
  data movement only). A MobileViT unfold or fold goes from 5 nodes to 3.
* **onnxruntime offline graph** (``--ort-offline``, CPU target only, off by default). The result is loaded in
  onnxruntime with ``ORT_ENABLE_EXTENDED`` (or ``--ort-level basic``) and ``SessionOptions.optimized_model_filepath``,
  and the graph onnxruntime writes is the output: what onnxruntime actually runs (Conv+activation and MatMul fusions,
  ``QuickGelu``, ...). That file holds onnxruntime's contrib ops (``com.microsoft`` domain): it runs in
  onnxruntime only, is tied to the onnxruntime version that wrote it (see ``vitseg.history``) and no longer passes
  ``onnx.checker``; keep the portable output for TensorRT, other runtimes and the other passes. Off by default
  because onnxruntime applies the same optimisations when it loads the portable file (its default level is
  ``ORT_ENABLE_ALL``), so the offline file saves session-creation time, not run time. ``--ort-level all`` writes
  ``ORT_ENABLE_ALL``'s graph too (its NCHWc layout transforms, ``com.microsoft.nchwc``): for a session that will not
  optimise again (``ORT_DISABLE_ALL`` when it loads the file) that is the graph to ship, but its blocked layouts
  are chosen for this CPU's vector width: write it on (a machine like) the one that runs it.

Exactness: after each rewrite the model is run with onnxruntime on a seeded ``N(0, 1)`` input of the declared shape
(graph optimisations off, so two graphs are compared, not two optimiser runs); a rewrite whose outputs differ from
the input model's by more than ``--atol`` (default 1e-5, absolute, over every output) is refused and reported, and
the other rewrites still apply. Run this pass last, after the structural passes and ``passes.simplify``: the
structural passes do not trace through the rank-5/6 transposes the layout rewrite writes.
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fileformat.args import non_negative, positive_int
from fileformat.cli import cli_main
from fileformat.targets import TARGETS, TargetProfile, UnknownTargetError, get_target
from passes._parser import make_parser, parse_early

ORT_LEVELS = ("extended", "basic", "all")


def _parser() -> argparse.ArgumentParser:
    p = make_parser("python -m passes.optimize", __doc__.splitlines()[0])
    p.add_argument(
        "--target",
        default=None,
        help=f"device profile ({', '.join(TARGETS)}; 'orin', 'nano' also work): decides the LayerNorm fusion "
        "(default: the target the model was exported for, else cpu)",
    )
    p.add_argument("--no-layernorm", action="store_true", help="do not fuse decomposed LayerNorm chains")
    p.add_argument("--no-layout", action="store_true", help="do not rewrite Reshape/Transpose chains")
    p.add_argument(
        "--ort-offline",
        action="store_true",
        help="write onnxruntime's optimised graph instead (cpu target only; the file then runs in onnxruntime only)",
    )
    p.add_argument(
        "--ort-level",
        choices=ORT_LEVELS,
        default="extended",
        help="onnxruntime level for --ort-offline: all adds the CPU layout transforms (NCHWc, for this CPU's vector "
        "width), for a deploying session that does not optimise again",
    )
    p.add_argument(
        "--atol", type=non_negative, default=1e-5, help="largest absolute output difference a rewrite may cause"
    )
    p.add_argument("--seed", type=int, default=0, help="seed of the random check input")
    p.add_argument(
        "--batch", type=positive_int, default=1, help="batch used for a dynamic batch dimension in the check"
    )
    return p


parse_early(__name__, _parser)  # --help and argument errors answer before onnx and the engine load

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fileformat.errors import PassError, UsageError
from fileformat.metadata import append_history, read_metadata, write_metadata
from passes._core.cli import run_pass_cli
from passes._core.finalize import finalize
from passes._core.graph import GraphView
from passes._core.report import PassReport
from passes._core.stats import graph_stats
from passes.fp16 import find_layernorm_chains
from passes.simplify import _input_feed, max_abs_diff, run_onnxruntime

__all__ = [
    "LAYOUT_OPS",
    "OptimizeConfig",
    "collapse_layout_chains",
    "fuse_layernorm",
    "main",
    "optimize",
    "ort_offline",
    "plan_layout_chain",
    "resolve_target",
]

log = logging.getLogger(__name__)

LAYOUT_OPS = ("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten")
_LN_OPSET = 17


@dataclass(frozen=True)
class OptimizeConfig:
    """Options of :func:`optimize`.

    Attributes:
        target: device profile name (``fileformat.targets``); decides whether LayerNorm may be fused.
        layernorm / layout: run the LayerNorm fusion / the layout-chain rewrite.
        ort_offline: write onnxruntime's offline-optimised graph (``onnxruntime`` targets only).
        ort_level: ``extended``, ``basic`` or ``all`` (onnxruntime's graph optimisation level for ``ort_offline``).
        atol: the largest absolute output difference a rewrite may cause.
        seed / batch: the check input (``batch`` replaces a dynamic batch dimension).
    """

    target: str = "cpu"
    layernorm: bool = True
    layout: bool = True
    ort_offline: bool = False
    ort_level: str = "extended"
    atol: float = 1e-5
    seed: int = 0
    batch: int = 1


def resolve_target(name: str) -> TargetProfile:
    """The profile called ``name``; a unique suffix after a dash also names it (``orin`` -> ``jetson-orin``)."""
    if name in TARGETS:
        return get_target(name)
    hits = [t for t in TARGETS if t.endswith("-" + name)]
    if len(hits) == 1:
        return get_target(hits[0])
    return get_target(name)  # raises UnknownTargetError listing the known ones


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        name, k = f"{base}_{k}", k + 1
    taken.add(name)
    return name


def _taken(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {t.name for t in g.initializer} | {i.name for i in g.input} | {o.name for o in g.output}
    for n in g.node:
        names.update(n.output)
        names.add(n.name)
    return names


def _consumer_count(model: onnx.ModelProto) -> Counter[str]:
    counts: Counter[str] = Counter()
    for n in model.graph.node:
        for i in n.input:
            if i:
                counts[i] += 1
    return counts


# ------------------------------------------------------------------------------------------- LayerNorm fusion


@dataclass
class _LNMatch:
    nodes: list[onnx.NodeProto]
    x: str
    out: str
    axis: int
    eps: float
    gamma: np.ndarray | None
    beta: np.ndarray | None
    gamma_name: str | None
    beta_name: str | None


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


def _match_layernorm(chain: list[onnx.NodeProto], view: GraphView, consumers: Counter[str]) -> _LNMatch | str:
    """The fused form of one decomposed chain, or why it cannot be fused exactly."""
    ops = [n.op_type for n in chain]
    r1, sub, _sq, r2 = chain[:4]
    rest = chain[4:]
    eps = 0.0
    if rest and rest[0].op_type == "Add":
        add = rest.pop(0)
        other = next(i for i in add.input if i != r2.output[0])
        e = view.value(other)
        if e is None or np.asarray(e).size != 1:
            return f"epsilon {other!r} is not a scalar constant"
        eps = float(np.asarray(e).reshape(-1)[0])
    if not rest or rest[0].op_type != "Sqrt":
        return f"unexpected chain {ops}"
    rest.pop(0)
    if rest and rest[0].op_type == "Div":
        rest.pop(0)
    elif len(rest) >= 2 and rest[0].op_type == "Reciprocal" and rest[1].op_type == "Mul":
        del rest[:2]
    else:
        return f"unexpected chain {ops}"
    gamma = beta = None
    gamma_name = beta_name = None
    prev = (chain[-len(rest) - 1] if rest else chain[-1]).output[0]
    for node in rest:
        other = next((i for i in node.input if i != prev), None)
        value = None if other is None else view.value(other)
        if value is None:
            return f"{node.op_type} {node.name!r}: the affine operand is not a constant"
        if node.op_type == "Mul" and gamma is None and beta is None:
            gamma, gamma_name = np.asarray(value), other
        elif node.op_type == "Add" and beta is None:
            beta, beta_name = np.asarray(value), other
        else:
            return f"unexpected chain {ops}"
        prev = node.output[0]
    ax1, ax2 = _reduce_axes(r1, view), _reduce_axes(r2, view)
    x = r1.input[0]
    shape = view.shape(x)
    rank = view.rank(x) if shape is not None else None
    if rank is None:
        return f"the rank of {x!r} is not known"
    if ax1 is None or ax2 is None:
        return "the ReduceMean axes are not constants, or keepdims=0"
    norm1 = sorted(a % rank for a in ax1)
    norm2 = sorted(a % rank for a in ax2)
    if norm1 != norm2 or norm1 != list(range(norm1[0], rank)):
        return f"the reductions are not over the same trailing axes ({ax1}, {ax2})"
    axis = norm1[0]
    if list(sub.input) != [x, r1.output[0]]:
        return "the Sub does not read the ReduceMean's input and output"
    norm_shape = list(shape[axis:])
    dtype = onnx.helper.tensor_dtype_to_np_dtype(_elem_type(view, x))
    for label, value in (("gamma", gamma), ("beta", beta)):
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
    return _LNMatch(chain, x, chain[-1].output[0], axis, eps, gamma, beta, gamma_name, beta_name)


def _raise_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    """The model with its default-domain opset raised to ``opset`` by onnx's version converter (metadata kept)."""
    import onnx.version_converter

    converted = onnx.version_converter.convert_version(model, opset)
    del converted.metadata_props[:]
    converted.metadata_props.extend(model.metadata_props)
    if "opset" in read_metadata(converted):
        write_metadata(converted, {"opset": opset})
    return converted


def _ln_param(
    graph: onnx.GraphProto,
    inits: dict[str, onnx.TensorProto],
    aliases: dict[str, str],
    taken: set[str],
    value: np.ndarray | None,
    name: str | None,
    fill: float,
    new_name: str,
    norm_shape: list[int],
    dtype: Any,
) -> str:
    """The initializer holding a LayerNormalization scale or bias of exactly ``norm_shape``."""
    while name is not None and name not in inits and name in aliases:
        name = aliases[name]  # the legacy exporter's Identity alias of a shared initializer
    if name is not None and name in inits and list(inits[name].dims) == norm_shape:
        return name  # the exporter's gamma/beta, unchanged (the weight map keeps naming them)
    arr = np.full(norm_shape, fill, dtype) if value is None else np.broadcast_to(value, norm_shape)
    t = numpy_helper.from_array(np.ascontiguousarray(arr, dtype), _unique(new_name, taken))
    graph.initializer.append(t)
    return t.name


def fuse_layernorm(model: onnx.ModelProto) -> tuple[onnx.ModelProto, int, list[tuple[str, str]]]:
    """Fuse every exactly matched decomposed LayerNorm of ``model`` (not modified) into ``LayerNormalization``.

    Returns the new model (not finalized; opset raised to 17 when needed), the number of chains fused and
    ``[(first node, reason)]`` for the chains left alone. Raises :class:`PassError` when the opset cannot be raised.
    """
    names = find_layernorm_chains(model)
    if not names:
        return _copy(model), 0, []
    by_name = {n.name: n for n in model.graph.node}
    if len(by_name) != len(model.graph.node) or "" in by_name:
        work = _copy(model)
        taken = _taken(work)
        for i, n in enumerate(work.graph.node):
            if not n.name or sum(1 for m in work.graph.node if m.name == n.name) > 1:
                n.name = _unique(f"{n.op_type}_{i}", taken)
        return fuse_layernorm(work)
    view = GraphView(model)
    consumers = _consumer_count(model)
    matches: list[_LNMatch] = []
    skipped: list[tuple[str, str]] = []
    for chain in names:
        m = _match_layernorm([by_name[n] for n in chain], view, consumers)
        if isinstance(m, str):
            skipped.append((chain[0], m))
        else:
            matches.append(m)
    if not matches:
        return _copy(model), 0, skipped
    work = model
    if _opset(model) < _LN_OPSET:
        try:
            work = _raise_opset(model, _LN_OPSET)
        except Exception as exc:  # onnx's converter raises plain RuntimeErrors without an adapter
            raise PassError(f"cannot raise the opset from {_opset(model)} to {_LN_OPSET} ({exc})") from exc
    else:
        work = _copy(model)
    graph = work.graph
    taken = _taken(work)
    drop = {n.name for m in matches for n in m.nodes}
    inits = {t.name: t for t in graph.initializer}
    aliases = {n.output[0]: n.input[0] for n in graph.node if n.op_type == "Identity"}
    new_nodes: list[onnx.NodeProto] = []
    first_of = {m.nodes[0].name: m for m in matches}
    x_shape = {m.x: view.shape(m.x) for m in matches}
    for node in graph.node:
        if node.name in first_of:
            m = first_of[node.name]
            norm_shape = list(x_shape[m.x][m.axis :])
            dtype = onnx.helper.tensor_dtype_to_np_dtype(_elem_type(view, m.x))
            base = m.nodes[0].name.rsplit("/", 1)[0] if "/" in m.nodes[0].name else m.nodes[0].name

            scale = _ln_param(
                graph, inits, aliases, taken, m.gamma, m.gamma_name, 1.0, f"{base}/ln_scale", norm_shape, dtype
            )
            inputs = [m.x, scale]
            if m.beta is not None:
                inputs.append(
                    _ln_param(
                        graph, inits, aliases, taken, m.beta, m.beta_name, 0.0, f"{base}/ln_bias", norm_shape, dtype
                    )
                )
            new_nodes.append(
                helper.make_node(
                    "LayerNormalization",
                    inputs,
                    [m.out],
                    name=_unique(f"{base}/LayerNormalization", taken),
                    axis=m.axis,
                    epsilon=m.eps,
                )
            )
        if node.name not in drop:
            new_nodes.append(node)
    del graph.node[:]
    graph.node.extend(new_nodes)
    return work, len(matches), skipped


# ------------------------------------------------------------------------------------------------ layout chains


def plan_layout_chain(
    in_shape: Sequence[int], steps: Sequence[tuple[str, Sequence[int]]]
) -> list[tuple[str, list[int]]] | None:
    """The shortest ``[Reshape] [Transpose] [Reshape]`` form of a chain of layout ops on a tensor of ``in_shape``.

    ``steps``: ``("Transpose", perm)`` or ``("Reshape", new static shape)`` in order. Returns
    ``[("Reshape", shape) | ("Transpose", perm)]`` (empty for an identity chain), or ``None`` when a reshape splits
    the data across axes in a way that is not a factorisation (then the chain is left alone).
    """
    in_shape = [int(d) for d in in_shape]
    if any(d <= 0 for d in in_shape):
        return None
    sizes: dict[int, int] = {}
    order: list[int] = []  # the input's atoms, outermost first
    cur: list[list[int]] = []  # the current tensor: per axis, its atoms
    for d in in_shape:
        atoms = []
        if d > 1:
            sizes[len(sizes)] = d
            order.append(len(sizes) - 1)
            atoms.append(len(sizes) - 1)
        cur.append(atoms)
    out_shape = list(in_shape)
    for kind, arg in steps:
        if kind == "Transpose":
            perm = [int(p) for p in arg]
            if sorted(perm) != list(range(len(cur))):
                return None
            cur = [cur[p] for p in perm]
            out_shape = [out_shape[p] for p in perm]
            continue
        target = [int(d) for d in arg]
        if any(d <= 0 for d in target) or int(np.prod(target)) != int(np.prod(out_shape)):
            return None
        flat = [a for axis in cur for a in axis]
        new: list[list[int]] = []
        for want in target:
            group: list[int] = []
            rem = want
            while rem > 1:
                if not flat:
                    return None
                a = flat.pop(0)
                if rem % sizes[a] == 0:
                    group.append(a)
                    rem //= sizes[a]
                elif sizes[a] % rem == 0:  # split the atom: outer part here, inner part next
                    hi, lo = len(sizes), len(sizes) + 1
                    sizes[hi], sizes[lo] = rem, sizes[a] // rem
                    pos = order.index(a)
                    order[pos : pos + 1] = [hi, lo]
                    group.append(hi)
                    flat.insert(0, lo)
                    rem = 1
                else:
                    return None
            new.append(group)
        if flat:
            return None
        cur, out_shape = new, target
    final = [a for axis in cur for a in axis]
    pos_in = {a: i for i, a in enumerate(order)}
    groups: list[list[int]] = []  # atoms adjacent in both orders become one axis
    for a in final:
        if groups and pos_in[a] == pos_in[groups[-1][-1]] + 1:
            groups[-1].append(a)
        else:
            groups.append([a])
    by_input = sorted(range(len(groups)), key=lambda g: pos_in[groups[g][0]])
    merged_in = [int(np.prod([sizes[a] for a in groups[g]])) for g in by_input]
    merged_out = [int(np.prod([sizes[a] for a in g])) for g in groups]
    perm = [by_input.index(g) for g in range(len(groups))]
    if perm == sorted(perm):
        return [] if list(in_shape) == out_shape else [("Reshape", out_shape)]
    ops: list[tuple[str, list[int]]] = []
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


def _apply_steps(x: np.ndarray, steps: Sequence[tuple[str, Sequence[int]]]) -> np.ndarray:
    for kind, arg in steps:
        x = np.transpose(x, arg) if kind == "Transpose" else x.reshape(arg)
    return x


def _layout_step(node: onnx.NodeProto, view: GraphView) -> tuple[str, list[int]] | None:
    if node.op_type == "Transpose":
        rank = view.rank(node.input[0])
        if rank is None:
            return None
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(rank))[::-1])
        return ("Transpose", perm)
    out = view.shape(node.output[0])
    return None if out is None else ("Reshape", list(out))


def collapse_layout_chains(model: onnx.ModelProto) -> tuple[onnx.ModelProto, list[dict[str, Any]]]:
    """Rewrite every layout chain of ``model`` (not modified) that has a shorter exact form; see the module doc.

    Returns the new model (not finalized) and one row per rewritten chain (``ops_before``, ``ops_after``, ``at``).
    """
    work = _copy(model)
    graph = work.graph
    view = GraphView(work)
    consumers = _consumer_count(work)
    outputs = {o.name for o in graph.output}
    producer = {o: n for n in graph.node for o in n.output if o}
    layout = [n for n in graph.node if n.op_type in LAYOUT_OPS and len(n.output) == 1]

    def chainable(n: onnx.NodeProto) -> bool:
        if n.op_type not in LAYOUT_OPS or view.is_constant(n.input[0]) or view.shape(n.input[0]) is None:
            return False
        return view.shape(n.output[0]) is not None and _layout_step(n, view) is not None

    def links(a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
        o = a.output[0]
        return o not in outputs and consumers[o] == 1 and b.input[0] == o and list(b.input).count(o) == 1

    next_of: dict[str, onnx.NodeProto] = {}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    for n in layout:
        rs = readers.get(n.output[0], [])
        if len(rs) == 1 and chainable(n) and chainable(rs[0]) and links(n, rs[0]):
            next_of[n.name or id(n)] = rs[0]
    chains: list[list[onnx.NodeProto]] = []
    for n in layout:
        if not chainable(n):
            continue
        p = producer.get(n.input[0])
        if p is not None and next_of.get(p.name or id(p)) is n:
            continue  # not the start of its chain
        chain = [n]
        while (chain[-1].name or id(chain[-1])) in next_of:
            chain.append(next_of[chain[-1].name or id(chain[-1])])
        chains.append(chain)
    taken = _taken(work)
    rows: list[dict[str, Any]] = []
    replace: dict[int, list[onnx.NodeProto]] = {}
    rename: dict[str, str] = {}
    dropped: set[int] = set()
    for chain in chains:
        x, y = chain[0].input[0], chain[-1].output[0]
        in_shape = view.shape(x)
        steps = [_layout_step(n, view) for n in chain]
        plan = plan_layout_chain(in_shape, steps)  # type: ignore[arg-type]
        if plan is None or len(plan) >= len(chain):
            continue
        if not plan and y in outputs:
            continue  # an identity chain ending at a graph output keeps its node
        probe = np.arange(int(np.prod(in_shape)), dtype=np.int64).reshape(in_shape)
        want = _apply_steps(probe, steps)
        got = _apply_steps(probe, plan)
        if got.shape != want.shape or not np.array_equal(got, want):
            log.warning("layout plan for %s did not reproduce the chain; left alone", chain[0].name)
            continue
        base = chain[-1].name or y
        new: list[onnx.NodeProto] = []
        src = x
        for k, (kind, arg) in enumerate(plan):
            out = y if k == len(plan) - 1 else _unique(f"{base}/collapsed_{k}", taken)
            name = _unique(f"{base}/collapsed_{kind}_{k}", taken)
            if kind == "Transpose":
                new.append(helper.make_node("Transpose", [src], [out], name=name, perm=arg))
            else:
                shape_name = _unique(f"{base}/collapsed_shape_{k}", taken)
                shape = numpy_helper.from_array(np.asarray(arg, np.int64), shape_name)
                graph.initializer.append(shape)
                new.append(helper.make_node("Reshape", [src, shape.name], [out], name=name))
            src = out
        if not plan:
            rename[y] = x
        replace[id(chain[0])] = new
        dropped.update(id(n) for n in chain)
        rows.append(
            {
                "at": chain[0].name,
                "ops_before": ">".join(n.op_type for n in chain),
                "ops_after": ">".join(k for k, _ in plan) or "(none)",
                "nodes_before": len(chain),
                "nodes_after": len(plan),
            }
        )
    if not rows:
        return work, []
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
    return work, rows


# --------------------------------------------------------------------------------------------- onnxruntime offline


def ort_offline(model: onnx.ModelProto, level: str = "extended") -> onnx.ModelProto:
    """The graph onnxruntime runs for ``model`` on the CPU at ``level`` (``extended``, ``basic`` or ``all``).

    The result may hold onnxruntime contrib ops (``com.microsoft``): onnxruntime only. Metadata is carried over.
    """
    from fileformat.session import SessionConfig, load_session

    if level not in ORT_LEVELS:
        raise PassError(f"unknown onnxruntime level {level!r}; choose one of {', '.join(ORT_LEVELS)}")
    with tempfile.TemporaryDirectory(prefix="vitseg-ort-") as tmp:
        path = Path(tmp) / "ort.onnx"
        config = SessionConfig(optimization=level, optimized_model_path=str(path), spinning=True)  # type: ignore[arg-type]
        try:
            load_session(model, config)
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own types
            raise PassError(f"onnxruntime cannot load the model to optimise it ({exc})") from exc
        out = onnx.load(str(path))
    del out.metadata_props[:]
    out.metadata_props.extend(model.metadata_props)
    return out


# ----------------------------------------------------------------------------------------------------- the pass


def _non_constant_nodes(model: onnx.ModelProto) -> int:
    return sum(1 for n in model.graph.node if n.op_type != "Constant")


def optimize(model: onnx.ModelProto, config: OptimizeConfig | None = None) -> tuple[onnx.ModelProto, PassReport]:
    """Apply the rewrites ``config`` asks for to ``model`` (not modified), each verified; return the model and report.

    Raises:
        PassError: the model cannot be run for the check, or ``ort_offline`` on a target that is not onnxruntime.
    """
    cfg = config or OptimizeConfig()
    try:
        target = resolve_target(cfg.target)
    except UnknownTargetError as exc:
        raise UsageError(str(exc)) from None
    if cfg.ort_offline and target.runtime != "onnxruntime":
        raise UsageError(f"--ort-offline writes an onnxruntime-only graph; target {target.name} runs {target.runtime}")
    if cfg.ort_level not in ORT_LEVELS:
        raise UsageError(f"--ort-level {cfg.ort_level!r}: choose one of {', '.join(ORT_LEVELS)}")
    src = _copy(model)
    del src.graph.value_info[:]  # stale after any earlier rewrite (the dynamo exporter writes them all)
    feed = _input_feed(src, cfg.seed, cfg.batch)
    reference = run_onnxruntime(src, feed)
    stats_in = graph_stats(src)
    report = PassReport(
        "optimize",
        params_before=stats_in.params,
        flops_before=stats_in.flops,
        columns=["rewrite", "status", "applied", "nodes_before", "nodes_after", "max_abs_diff", "seconds"],
    )
    report.extra = {"target": target.name, "nodes_before": len(src.graph.node), "layout_chains": []}
    current = src
    applied: dict[str, Any] = {}

    def accept(name: str, cand: onnx.ModelProto, count: int, t0: float, row: dict[str, Any]) -> bool:
        nonlocal current
        cand = finalize(cand)
        diff = max_abs_diff(reference, run_onnxruntime(cand, feed))
        row.update(
            applied=count,
            nodes_before=len(current.graph.node),
            nodes_after=len(cand.graph.node),
            max_abs_diff=diff,
            seconds=round(time.perf_counter() - t0, 3),
        )
        if diff > cfg.atol:
            row["status"] = f"refused: outputs differ by {diff:.3g} > {cfg.atol:g}"
            report.skip(name, row["status"])
            return False
        row["status"] = "applied"
        ops_before = Counter(n.op_type for n in current.graph.node)
        ops_after = Counter(n.op_type for n in cand.graph.node)
        report.extra.setdefault("op_changes", {})[name] = {
            "removed": dict(sorted((ops_before - ops_after).items())),
            "added": dict(sorted((ops_after - ops_before).items())),
        }
        current = cand
        applied[name] = {"count": count, "max_abs_diff": diff}
        return True

    # 1. LayerNorm fusion
    row: dict[str, Any] = {"rewrite": "layernorm"}
    t0 = time.perf_counter()
    if not cfg.layernorm:
        row["status"] = "off (--no-layernorm)"
    elif not target.layernorm or target.max_opset < _LN_OPSET:
        chains = find_layernorm_chains(current)
        row["status"] = f"not for {target.name}: {'no LayerNormalization op' if not target.layernorm else 'opset'}"
        if chains:
            report.skip("layernorm", f"{len(chains)} decomposed LayerNorm(s) kept: {target.description}")
    else:
        try:
            cand, count, skips = fuse_layernorm(current)
        except PassError as exc:
            row["status"] = f"skipped: {exc}"
            report.skip("layernorm", str(exc))
        else:
            for where, why in skips:
                report.skip(where, f"LayerNorm not fused: {why}")
            if count:
                raised = _opset(cand) > _opset(current)
                if accept("layernorm", cand, count, t0, row) and raised:
                    report.notes.append(f"opset raised from {_opset(src)} to {_LN_OPSET} for LayerNormalization")
            else:
                row["status"] = "nothing to fuse"
    if target.name and not target.layernorm:
        n_ln = sum(1 for n in current.graph.node if n.op_type == "LayerNormalization")
        if n_ln:
            report.notes.append(
                f"the model holds {n_ln} LayerNormalization op(s) that {target.name} cannot run; export it with "
                f"--target {target.name} (opset {target.export_opset})"
            )
    report.rows.append(row)

    # 2. layout chains
    row = {"rewrite": "layout"}
    t0 = time.perf_counter()
    if not cfg.layout:
        row["status"] = "off (--no-layout)"
    else:
        cand, chain_rows = collapse_layout_chains(current)
        if chain_rows:
            report.extra["layout_chains"] = chain_rows
            accept("layout", cand, len(chain_rows), t0, row)
        else:
            row["status"] = "no layout chain with a shorter form"
    report.rows.append(row)

    # 3. onnxruntime offline graph
    portable = current
    if cfg.ort_offline:
        row = {"rewrite": f"ort-offline ({cfg.ort_level})"}
        t0 = time.perf_counter()
        cand = ort_offline(current, cfg.ort_level)
        diff = max_abs_diff(reference, run_onnxruntime(cand, feed))
        row.update(
            applied=1,
            nodes_before=len(current.graph.node),
            nodes_after=len(cand.graph.node),
            max_abs_diff=diff,
            seconds=round(time.perf_counter() - t0, 3),
        )
        if diff > cfg.atol:
            row["status"] = f"refused: outputs differ by {diff:.3g} > {cfg.atol:g}"
            report.skip("ort-offline", row["status"])
        else:
            import onnxruntime as ort

            row["status"] = "applied"
            current = cand
            applied["ort_offline"] = {"level": cfg.ort_level, "onnxruntime": ort.__version__, "max_abs_diff": diff}
            domains = sorted({n.domain for n in cand.graph.node if n.domain not in ("", "ai.onnx")})
            report.notes.append(
                f"onnxruntime {ort.__version__} offline graph ({cfg.ort_level}): runs in onnxruntime only"
                + (f" (contrib ops of {', '.join(domains)})" if domains else "")
                + "; keep the portable file for TensorRT and the other passes"
            )
        report.rows.append(row)

    if not applied:
        report.nothing_to_do = (
            f"no rewrite applies to this model for target {target.name} (no fusable LayerNorm chain, no layout chain "
            "with a shorter exact form)"
        )
        return src, report
    out = current
    append_history(
        out,
        {
            "pass": "optimize",
            "target": target.name,
            "rewrites": applied,
            "nodes_before": len(src.graph.node),
            "nodes_after": len(out.graph.node),
            "atol": cfg.atol,
            "seed": cfg.seed,
        },
    )
    stats_out = graph_stats(portable)
    report.modified = True
    report.params_after, report.flops_after = stats_out.params, stats_out.flops
    report.extra.update(nodes_after=len(out.graph.node), rewrites=applied)
    summary = ", ".join(
        f"{r['rewrite']} {r['nodes_before']} -> {r['nodes_after']} nodes" for r in report.rows if r.get("applied")
    )
    report.notes.insert(
        0,
        f"target {target.name}: {len(src.graph.node)} -> {len(out.graph.node)} nodes ({summary}); every output within "
        f"{cfg.atol:g} of the input model on onnxruntime (seed {cfg.seed})",
    )
    return out, report


# ----------------------------------------------------------------------------------------------------------- CLI


def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    if args.atol < 0:
        raise UsageError(f"--atol must be >= 0, got {args.atol}")
    if args.batch < 1:
        raise UsageError(f"--batch must be >= 1, got {args.batch}")
    target = args.target
    why = "--target"
    if target is None:
        recorded = read_metadata(model).get("target")
        target, why = (recorded, "recorded in the model") if recorded else ("cpu", "default: the model records none")
    config = OptimizeConfig(
        target=target,
        layernorm=not args.no_layernorm,
        layout=not args.no_layout,
        ort_offline=args.ort_offline,
        ort_level=args.ort_level,
        atol=args.atol,
        seed=args.seed,
        batch=args.batch,
    )
    out, report = optimize(model, config)
    report.notes.append(f"target {report.extra['target']} ({why})")
    return out, report


@cli_main("python -m passes.optimize")
def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point (exit 0 success, 1 model unusable or nothing to do, 2 usage error)."""
    return run_pass_cli(_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
