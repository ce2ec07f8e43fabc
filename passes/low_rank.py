"""Factor linear layers by truncated SVD: ``W ~= A @ B``, two thinner layers where that saves parameters and FLOPs.

``python -m passes.low_rank model.onnx -o out.onnx [--rank-ratio R | --energy E] [--min-saving S]
[--include REGEX] [--exclude REGEX] [--report r.json]``

Without ``--rank-ratio`` or ``--energy`` every layer gets half its rank (``--rank-ratio 0.5``), the structural
passes' one default; the summary says how many layers were factored.

A linear layer is a MatMul with a constant 2-D weight ``W [in, out]``, a Gemm (``transA = 0``; ``W`` or ``W^T``
stored as its ``transB`` says) or a 1x1 Conv without groups (weight ``[out, in, 1, 1]``). With the SVD
``W = U diag(s) V^T`` (``s`` descending, ``p = min(in, out)`` values) the rank-``r`` factors are the balanced halves

    A = U[:, :r] diag(sqrt(s[:r]))   [in, r]        B = diag(sqrt(s[:r])) V[:, :r]^T   [r, out]

so ``x @ W`` becomes ``(x @ A) @ B`` (a MatMul, then the original node reading ``B``); a 1x1 Conv becomes two 1x1
convs, ``[r, in, 1, 1]`` (with the original strides, pads and dilations) then ``[out, r, 1, 1]``. The bias stays on
the second factor (the Gemm's ``C``, the second conv's bias, or the Add after the MatMul, untouched). The relative
error ``||W - A B||_F / ||W||_F`` equals ``sqrt(sum s[r:]^2 / sum s^2)``, the square root of the discarded energy
(Eckart-Young); at ``r = p`` the factorisation is exact up to float32 rounding.

Rank per layer: ``--rank-ratio R`` gives ``r = ceil(R * p)``; ``--energy E`` the smallest ``r`` whose singular
values keep the fraction ``E`` of ``||W||_F^2``. A layer is factored only where it saves: ``r * (in + out)`` weights
(and multiply-accumulates per position) instead of ``in * out``, a saving of at least ``--min-saving`` (default 0.1);
a negative ``--min-saving`` also factors layers the factorisation makes larger (an exactness check at full rank).

The plan records each factorisation (``low_rank``: torch module -> kind, in, out, rank) and the weight map names
the factors ``<module>.0.weight`` and ``<module>.1.weight`` (the bias ``<module>.1.bias``), so
:mod:`models.prune_torch` rebuilds the module as ``nn.Sequential`` of two Linears (two 1x1 Conv2d). Run it after
the structural passes (``compress``, ``prune_heads``, ...): their cuts are not traced through a factored layer on
the torch side. A layer already factored is left alone.
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from fileformat.args import finite, fraction
from fileformat.cli import cli_main
from passes._parser import DEFAULT_RATIO, make_parser, parse_early

PASS_NAME = "low_rank"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(f"python -m passes.{PASS_NAME}", (__doc__ or "").split("\n\n")[0])
    how = parser.add_mutually_exclusive_group()
    how.add_argument(
        "--rank-ratio",
        type=fraction,
        help=f"rank = ceil(R * min(in, out)) per layer, R in (0, 1] (neither this nor --energy given: {DEFAULT_RATIO})",
    )
    how.add_argument("--energy", type=fraction, help="smallest rank keeping this fraction of ||W||_F^2, in (0, 1]")
    parser.add_argument(
        "--min-saving",
        type=finite,
        default=0.1,
        help="factor a layer only if it saves at least this fraction of its weights (< 1; negative: always)",
    )
    parser.add_argument("--include", help="only layers whose module, parameter or initializer name matches (regex)")
    parser.add_argument("--exclude", help="leave out layers whose module, parameter or initializer name matches")
    return parser


parse_early(__name__, build_parser)  # --help and argument errors answer before onnx and the engine load

import numpy as np
import onnx
from onnx import helper, numpy_helper

from fileformat.errors import UsageError
from fileformat.metadata import append_history, make_entry, read_metadata, weight_sources, write_metadata
from fileformat.plan import LOW_RANK, read_plan, write_plan
from passes._core.canonical import canonicalize, merge_constants
from passes._core.cli import run_pass_cli
from passes._core.finalize import finalize
from passes._core.graph import node_scope
from passes._core.report import PassReport
from passes._core.stats import graph_stats

log = logging.getLogger(__name__)

__all__ = [
    "Factoring",
    "LinearLayer",
    "LowRankConfig",
    "LowRankResult",
    "choose_rank",
    "describe",
    "factor",
    "find_linear_layers",
    "low_rank",
    "main",
    "run_low_rank",
]

_COLUMNS = ["layer", "op", "in", "out", "rank", "max_rank", "params", "params_after", "saving", "energy", "rel_error"]


@dataclass(frozen=True)
class LowRankConfig:
    """``rank_ratio`` (``r = ceil(R * min(in, out))``, in (0, 1]) or ``energy`` (fraction of ``||W||_F^2`` kept,
    in (0, 1]); ``min_saving``: the least fraction of a layer's weights the factorisation must save (< 1; negative:
    also layers it makes larger); ``include``/``exclude``: regular expressions searched in the torch module, torch
    parameter and ONNX initializer names of each layer."""

    rank_ratio: float | None = None
    energy: float | None = None
    min_saving: float = 0.1
    include: str | None = None
    exclude: str | None = None

    def validate(self) -> None:
        if (self.rank_ratio is None) == (self.energy is None):
            raise UsageError("give exactly one of --rank-ratio and --energy.")
        if self.rank_ratio is not None and not 0 < self.rank_ratio <= 1:
            raise UsageError(f"--rank-ratio {self.rank_ratio} is out of range; give a value in (0, 1].")
        if self.energy is not None and not 0 < self.energy <= 1:
            raise UsageError(f"--energy {self.energy} is out of range; give a value in (0, 1].")
        if not self.min_saving < 1:
            raise UsageError(f"--min-saving {self.min_saving} is out of range; give a value below 1.")
        for opt, pattern in (("--include", self.include), ("--exclude", self.exclude)):
            if pattern is not None:
                try:
                    re.compile(pattern)
                except re.error as exc:
                    raise UsageError(f"{opt} {pattern!r} is not a regular expression ({exc}).") from None


@dataclass
class LinearLayer:
    """One linear layer of the canonical graph: node ``index`` reads weight ``weight`` (``n_in`` -> ``n_out``).

    ``module`` is the torch module (``backbone.stages.2.1.transformer.0.attn.qkv``) when the weight map or the node
    names say it, else ``graph:<node>``; ``param`` the torch parameter of the weight, if known; ``source`` its
    weight-map source. ``skip_reason`` is set when the layer cannot be factored."""

    index: int
    node: str
    op: str
    weight: str
    n_in: int
    n_out: int
    module: str
    param: str | None = None
    source: dict[str, Any] | None = None
    skip_reason: str | None = None

    @property
    def max_rank(self) -> int:
        return min(self.n_in, self.n_out)

    @property
    def params(self) -> int:
        return self.n_in * self.n_out


# ---------------------------------------------------------------------------------------------------- discovery
def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _weight_source(wmap: dict[str, Any], name: str, node: onnx.NodeProto) -> dict[str, Any] | None:
    """The torch weight an initializer holds: its only ``*.weight`` source, or the one of the node's module."""
    sources = [s for s in weight_sources(wmap.get(name)) if str(s["param"]).endswith(".weight")]
    if len(sources) <= 1:
        return sources[0] if sources else None
    scope = node_scope(node)
    mine = [s for s in sources if scope and str(s["param"]).rsplit(".", 1)[0] == scope]
    return mine[0] if len(mine) == 1 else None


def _linear_dims(n: onnx.NodeProto, dims: list[int]) -> tuple[int, int] | None:
    """``(in, out)`` of a linear node with weight dims ``dims``: a 1x1 Conv without groups, a 2-D MatMul or Gemm
    weight; None for anything else."""
    if n.op_type == "Conv":
        if len(dims) < 3 or any(k != 1 for k in dims[2:]) or int(_attr(n, "group", 1)) != 1:
            return None  # not a 1x1 conv without groups
        return dims[1], dims[0]
    if len(dims) != 2:
        return None
    trans_b = n.op_type == "Gemm" and int(_attr(n, "transB", 0))
    return (dims[1], dims[0]) if trans_b else (dims[0], dims[1])


def _skip_reason(
    layer: LinearLayer, t: onnx.TensorProto, n: onnx.NodeProto, factored: dict[str, Any], mapped: bool
) -> str | None:
    """Why ``layer`` cannot be factored (None: it can)."""
    parent = layer.module.rsplit(".", 1)[0]
    if t.data_type != onnx.TensorProto.FLOAT:
        return f"weight is {onnx.TensorProto.DataType.Name(t.data_type)}, not FLOAT; run low_rank before fp16/int8"
    if n.op_type == "Gemm" and int(_attr(n, "transA", 0)):
        return "Gemm with transA=1 (its input is transposed)"
    if layer.module in factored or (layer.module.rsplit(".", 1)[-1] in ("0", "1") and parent in factored):
        return "already factored (a factor of a low-rank layer of the plan)"
    if mapped and layer.source is None:
        return (
            "not one torch layer's weight (the weight map names no single '*.weight' for it: a constant such as "
            "a pooling matrix, or equal weights stored once); the torch side could not rebuild it"
        )
    return None


def _name_tied(layers: list[LinearLayer], mapped: bool) -> None:
    """One torch module read by several nodes (tied weights): name each by its node, and skip it where the weight
    map says the weights are one torch module's."""
    seen: dict[str, int] = {}
    for ly in layers:
        seen[ly.module] = seen.get(ly.module, 0) + 1
    for ly in layers:
        if seen[ly.module] > 1 and not ly.module.startswith("graph:"):
            ly.module = f"graph:{ly.node}"
            if ly.skip_reason is None and mapped:
                ly.skip_reason = "the same torch module is read by several nodes (tied weights)"


def find_linear_layers(model: onnx.ModelProto) -> list[LinearLayer]:
    """Every linear layer of the CANONICAL ``model`` (skipped ones included, with the reason), in node order."""
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    meta = read_metadata(model)
    wmap = meta.get("weight_map") if isinstance(meta.get("weight_map"), dict) else None
    factored = read_plan(model).get(LOW_RANK) or {}
    layers: list[LinearLayer] = []
    for index, n in enumerate(graph.node):
        if n.op_type not in ("MatMul", "Gemm", "Conv") or n.domain not in ("", "ai.onnx") or len(n.input) < 2:
            continue
        w = n.input[1]
        t = inits.get(w)
        io = None if t is None or n.input[0] in inits else _linear_dims(n, [int(d) for d in t.dims])
        if t is None or io is None:
            continue
        name = n.name or f"{n.op_type}_{index}"
        src = _weight_source(wmap, w, n) if wmap is not None else None
        param = str(src["param"]) if src else None
        module = param[: -len(".weight")] if param else (node_scope(n) if wmap is None else None) or f"graph:{name}"
        layer = LinearLayer(index, name, n.op_type, w, io[0], io[1], module, param, src)
        layer.skip_reason = _skip_reason(layer, t, n, factored, wmap is not None)
        layers.append(layer)
    _name_tied(layers, wmap is not None)
    return layers


# ------------------------------------------------------------------------------------------------------ the math
def _math_weight(model: onnx.ModelProto, layer: LinearLayer) -> np.ndarray:
    """The layer's weight as ``[in, out]`` (``y = x @ W``), float64."""
    t = next(t for t in model.graph.initializer if t.name == layer.weight)
    arr = numpy_helper.to_array(t).astype(np.float64)
    if layer.op == "Conv":
        return arr.reshape(arr.shape[0], arr.shape[1]).T
    if layer.op == "Gemm" and int(_attr(model.graph.node[layer.index], "transB", 0)):
        return arr.T
    return arr


def choose_rank(s: np.ndarray, *, rank_ratio: float | None = None, energy: float | None = None) -> int:
    """The rank for singular values ``s`` (descending): ``ceil(rank_ratio * len(s))``, or the smallest ``r`` with
    ``sum(s[:r]^2) >= energy * sum(s^2)``. At least 1, at most ``len(s)``."""
    p = len(s)
    if rank_ratio is not None:
        return max(1, min(p, math.ceil(rank_ratio * p - 1e-9)))
    assert energy is not None
    sq = np.asarray(s, dtype=np.float64) ** 2
    total = float(sq.sum())
    if total <= 0:
        return 1
    frac = np.cumsum(sq) / total
    return max(1, min(p, int(np.argmax(frac >= energy - 1e-12)) + 1))


def factor(w: np.ndarray, rank: int | Callable[[np.ndarray], int]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``(A [in, r], B [r, out], s)`` for ``w [in, out]``: the balanced rank-``r`` truncated SVD (float32 factors)
    and all singular values; ``rank`` may be a function of the singular values.

    The SVD comes from the eigendecomposition of the smaller Gram matrix, in float64: for ``w [m, n]`` with
    ``n <= m``, ``w^T w = V diag(s^2) V^T`` and ``U_r = w V_r / s_r`` (the other way round for ``m < n``). That is
    10-18x faster than ``numpy.linalg.svd`` on the 768 x 3072 weights of a Swin MLP (``m n^2 + n^3`` work against
    a full SVD's), and the singular values agree to 1e-15 of the largest; squaring halves the precision of the
    small singular values only, so a layer whose kept ones span more than 1e6 (a rank-deficient weight, as a fresh
    model's zeros) takes the full SVD."""
    x = np.asarray(w, dtype=np.float64)
    m, n = x.shape
    gram = x.T @ x if n <= m else x @ x.T
    values, vectors = np.linalg.eigh(gram)
    order = np.argsort(values)[::-1]
    s = np.sqrt(np.clip(values[order], 0.0, None))
    vectors = vectors[:, order]
    rank = rank(s) if callable(rank) else rank
    if s[0] == 0.0 or s[rank - 1] < 1e-6 * s[0]:
        u, s, vt = np.linalg.svd(x, full_matrices=False)
    elif n <= m:
        vt = vectors[:, :rank].T  # [r, n]
        u = (x @ vectors[:, :rank]) / s[:rank]  # [m, r]
    else:
        u = vectors[:, :rank]  # [m, r]
        vt = (vectors[:, :rank].T @ x) / s[:rank, None]  # [r, n]
    root = np.sqrt(s[:rank])
    a = (u[:, :rank] * root).astype(np.float32)
    b = (root[:, None] * vt[:rank]).astype(np.float32)
    return a, b, s


# ------------------------------------------------------------------------------------------------------ rewrite
def _unique(base: str, taken: set[str]) -> str:
    name, k = base, 1
    while name in taken:
        k += 1
        name = f"{base}_{k}"
    taken.add(name)
    return name


def _rewrite(model: onnx.ModelProto, layer: LinearLayer, a: np.ndarray, b: np.ndarray, taken: set[str]) -> tuple:
    """Factor ``layer`` in ``model`` (in place): a new first node reads A, the original node reads B.

    Returns ``(A initializer name, B initializer name, whether B is stored transposed to torch layout)``."""
    graph = model.graph
    node = graph.node[layer.index]
    a_name = _unique(f"{layer.weight}__lowrank_a", taken)
    b_name = _unique(f"{layer.weight}__lowrank_b", taken)
    mid = _unique(f"{node.output[0]}__lowrank", taken)
    first_name = _unique(f"{layer.node}_lowrank", taken)
    if layer.op == "Conv":
        w_dims = next(list(t.dims) for t in graph.initializer if t.name == layer.weight)
        ones = [1] * (len(w_dims) - 2)
        a_arr = a.T.reshape(a.shape[1], a.shape[0], *ones)  # [r, in, 1, 1]
        b_arr = b.T.reshape(b.shape[1], b.shape[0], *ones)  # [out, r, 1, 1]
        first = helper.make_node("Conv", [node.input[0], a_name], [mid], name=first_name)
        first.attribute.extend(at for at in node.attribute if at.name != "group")  # strides, pads, dilations
        keep = [helper.make_attribute("kernel_shape", ones)]
        del node.attribute[:]
        node.attribute.extend(keep)
        b_transposed = False
    else:
        a_arr = a
        trans_b = layer.op == "Gemm" and int(_attr(node, "transB", 0))
        b_arr = b.T if trans_b else b
        b_transposed = not trans_b
        first = helper.make_node("MatMul", [node.input[0], a_name], [mid], name=first_name)
    first.metadata_props.extend(node.metadata_props)  # the dynamo exporter's module scope
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(a_arr, dtype=np.float32), a_name))
    graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(b_arr, dtype=np.float32), b_name))
    node.input[0] = mid
    node.input[1] = b_name
    graph.node.insert(layer.index, first)
    return a_name, b_name, b_transposed


def _update_weight_map(wmap: dict[str, Any], layer: LinearLayer, names: tuple[str, str, bool]) -> None:
    """In place: the factors hold ``<module>.0.weight`` / ``<module>.1.weight``; ``<module>.bias`` becomes
    ``<module>.1.bias`` wherever it is listed; the original weight is no torch tensor any more."""
    a_name, b_name, b_transposed = names
    module, param = layer.module, str(layer.param)
    renames = {param: None, f"{module}.bias": f"{module}.1.bias"}
    for name in list(wmap):
        sources = weight_sources(wmap[name])
        new = []
        for s in sources:
            if str(s["param"]) in renames:
                target = renames[str(s["param"])]
                if target is None:
                    continue
                s = {**s, "param": target}
            new.append(s)
        if new != sources:
            if new:
                wmap[name] = make_entry(new)
            else:
                del wmap[name]
    wmap[a_name] = make_entry([{"param": f"{module}.0.weight", "transposed": layer.op != "Conv", "folded_bn": None}])
    folded = (layer.source or {}).get("folded_bn")
    wmap[b_name] = make_entry([{"param": f"{module}.1.weight", "transposed": b_transposed, "folded_bn": folded}])


# ---------------------------------------------------------------------------------------------------------- run
def _selected(layer: LinearLayer, config: LowRankConfig) -> str | None:
    """Why ``--include/--exclude`` leave ``layer`` out, or ``None``."""
    names = [layer.module, layer.weight] + ([layer.param] if layer.param else [])
    if config.include is not None and not any(re.search(config.include, n) for n in names):
        return f"not matched by --include {config.include!r}"
    if config.exclude is not None and any(re.search(config.exclude, n) for n in names):
        return f"matched by --exclude {config.exclude!r}"
    return None


@dataclass
class Factoring:
    """One candidate layer at its chosen rank: what the factors cost and how well they approximate the weight."""

    layer: LinearLayer
    rank: int
    params_after: int
    saving: float
    energy: float
    rel_error: float
    applied: bool

    def row(self) -> dict[str, Any]:
        """The report row."""
        ly = self.layer
        return {
            "layer": ly.module,
            "op": ly.op,
            "in": ly.n_in,
            "out": ly.n_out,
            "rank": self.rank,
            "max_rank": ly.max_rank,
            "params": ly.params,
            "params_after": self.params_after if self.applied else ly.params,
            "saving": round(self.saving, 4),
            "energy": self.energy,
            "rel_error": self.rel_error,
            "applied": self.applied,
            "weight": ly.weight,
        }


@dataclass
class LowRankResult:
    """What :func:`run_low_rank` did: the model (the input's copy when nothing was factored), the layers found,
    every candidate at its rank (node order), the skips in the order they arose, the plan entries and factor names
    of the layers factored, and the weights saved."""

    model: onnx.ModelProto
    before: Any  # graph_stats of the canonical input
    after: Any
    layers: list[LinearLayer] = field(default_factory=list)
    candidates: int = 0
    factorings: list[Factoring] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    plan: dict[str, dict[str, Any]] = field(default_factory=dict)
    factors: dict[str, dict[str, Any]] = field(default_factory=dict)
    saved: int = 0
    seconds: float = 0.0


def _factoring(model: onnx.ModelProto, ly: LinearLayer, config: LowRankConfig) -> tuple[Factoring, Any, Any]:
    """The layer at the rank ``config`` chooses: ``(Factoring, A, B)``."""
    w = _math_weight(model, ly)
    a, b, s = factor(w, lambda s: choose_rank(s, rank_ratio=config.rank_ratio, energy=config.energy))
    r = a.shape[1]
    after = r * (ly.n_in + ly.n_out)
    saving = 1.0 - after / ly.params
    sq = s.astype(np.float64) ** 2
    energy = float(sq[:r].sum() / sq.sum()) if sq.sum() > 0 else 1.0
    norm = float(np.linalg.norm(w))
    rel = float(np.linalg.norm(w - a.astype(np.float64) @ b.astype(np.float64)) / norm) if norm > 0 else 0.0
    applied = saving >= config.min_saving - 1e-9 and (saving > 1e-9 or config.min_saving < 0)
    return Factoring(ly, r, after, saving, energy, rel, applied), a, b


def _factor_all(
    model: onnx.ModelProto, candidates: list[LinearLayer], config: LowRankConfig, result: LowRankResult
) -> onnx.ModelProto:
    """Factor the candidates that save enough on a copy of the canonical ``model``; fill ``result``."""
    new = onnx.ModelProto()
    new.CopyFrom(model)
    meta = read_metadata(new)
    wmap = dict(meta["weight_map"]) if isinstance(meta.get("weight_map"), dict) else None
    taken = {t.name for t in new.graph.initializer} | {o for n in new.graph.node for o in n.output}
    taken |= {n.name for n in new.graph.node} | {i.name for i in new.graph.input}
    # rewrite from the last node backwards: inserting a node shifts only the positions after it
    for ly in sorted(candidates, key=lambda x: -x.index):
        f, a, b = _factoring(model, ly, config)
        result.factorings.append(f)
        if not f.applied:
            result.skipped.append(
                (
                    ly.module,
                    f"at its rank the factors save less than --min-saving {config.min_saving:g} of the weights (a "
                    "square layer saves nothing at half rank; the rows give rank and saving)",
                )
            )
            continue
        names = _rewrite(new, ly, a, b, taken)
        if wmap is not None and ly.param is not None:
            _update_weight_map(wmap, ly, names)
        kind = "conv" if ly.op == "Conv" else "linear"
        result.plan[ly.module] = {"kind": kind, "in": ly.n_in, "out": ly.n_out, "rank": f.rank}
        result.factors[ly.module] = {"weight": ly.weight, "factors": [names[0], names[1]], "rank": f.rank}
        result.saved += ly.params - f.params_after
    result.factorings.reverse()
    if wmap is not None and result.plan:
        write_metadata(new, {"weight_map": wmap})
    return new


def run_low_rank(model: onnx.ModelProto, config: LowRankConfig) -> LowRankResult:
    """Factor the linear layers of ``model`` as ``config`` says (``model`` is not changed)."""
    start = time.perf_counter()
    config.validate()
    original, model = model, canonicalize(model)
    before = graph_stats(model)
    result = LowRankResult(original, before, before, layers=find_linear_layers(model))
    candidates: list[LinearLayer] = []
    for ly in result.layers:
        why = ly.skip_reason or _selected(ly, config)
        if why:
            result.skipped.append((ly.module, why))
        else:
            candidates.append(ly)
    result.candidates = len(candidates)
    if candidates:
        new = _factor_all(model, candidates, config, result)
    if not result.plan:
        result.model = onnx.ModelProto()
        result.model.CopyFrom(original)
        return result
    write_plan(new, {LOW_RANK: result.plan})
    append_history(
        new,
        {
            "pass": PASS_NAME,
            "rank_ratio": config.rank_ratio,
            "energy": config.energy,
            "min_saving": config.min_saving,
            "ranks": {k: v["rank"] for k, v in result.plan.items()},
        },
    )
    result.model = finalize(merge_constants(new))
    result.after = graph_stats(result.model)
    result.seconds = round(time.perf_counter() - start, 3)
    return result


def describe(result: LowRankResult, config: LowRankConfig) -> PassReport:
    """The report of a :func:`run_low_rank`: a row per candidate, the skips, the totals."""
    report = PassReport(pass_name=PASS_NAME, columns=list(_COLUMNS))
    report.params_before, report.flops_before = result.before.params, result.before.flops
    report.params_after, report.flops_after = result.after.params, result.after.flops
    for where, why in result.skipped:
        report.skip(where, why)
    if not result.candidates:
        if not result.layers:
            report.nothing_to_do = (
                "nothing to factor: no linear layer found (a MatMul or Gemm with a constant 2-D weight, or a 1x1 "
                "Conv without groups)"
            )
        else:
            report.nothing_to_do = "nothing to factor: every linear layer was skipped (the reasons are listed above)"
        report.notes.append(report.nothing_to_do)
        return report
    report.rows = [f.row() for f in result.factorings]
    report.extra["layers"] = result.factors
    if not result.plan:
        report.notes.append(
            f"no layer saves at least {config.min_saving:g} of its weights at the chosen ranks: the model is unchanged"
        )
        return report
    report.modified = True
    worst = max(f.rel_error for f in result.factorings if f.applied)
    report.notes.append(
        f"factored {len(result.plan)} of {result.candidates} candidate layer(s); {result.saved:,} weights saved; the "
        f"largest relative error of a factored weight is {worst:.3g}"
    )
    report.extra["seconds"] = result.seconds
    return report


def low_rank(model: onnx.ModelProto, config: LowRankConfig) -> tuple[onnx.ModelProto, PassReport]:
    """Factor the linear layers of ``model`` as ``config`` says; returns a new checked model and the report
    (``model`` is not changed): :func:`run_low_rank` and :func:`describe`."""
    result = run_low_rank(model, config)
    return result.model, describe(result, config)


# -------------------------------------------------------------------------------------------------------- CLI
def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    config = LowRankConfig(
        rank_ratio=DEFAULT_RATIO if args.rank_ratio is None and args.energy is None else args.rank_ratio,
        energy=args.energy,
        min_saving=args.min_saving,
        include=args.include,
        exclude=args.exclude,
    )
    new, report = low_rank(model, config)
    if report.rows:
        done = sum(1 for r in report.rows if r.get("applied"))
        report.extra["headline"] = f"{done} of {len(report.rows)} linear layers factored"
    return new, report


@cli_main(f"python -m passes.{PASS_NAME}")
def main(argv: Sequence[str] | None = None) -> int:
    return run_pass_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
