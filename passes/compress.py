"""One command for a structural plan: head channels, heads, neurons, transformer widths and conv channels against
one global budget in FLOPs, parameters or measured latency.

``python -m passes.compress model.onnx -o out.onnx (--target-flops 0.2 | --target-params 0.3 | --target-latency 0.35
[--latency-table FILE]) [--units head_dim,heads,neurons,width,channels]``

All prunable units of the model become layers of one budget (:mod:`passes._core.budget`): the channels of each
attention block's heads and its heads, the hidden neurons of each transformer MLP, each transformer's width
(:func:`passes._core.units.find_units`) and the channels of each conv channel group (:mod:`passes._core.channels`).
The cost model is one term per node (its FLOPs, or its measured time) and per weight, scaled by the kept fraction of
every group the node carries (:func:`cost_terms`)::

    cost(k) = sum_nodes base_n * prod(kept fractions of the groups on the node's output and contracted axes)

so the kinds interact as in the graph (a narrower width makes every head of its transformer cheaper).

**Valuation.** By default (``--importance auto``) a cut is valued by the damage it does to the model's output on the
``--calib`` images (:mod:`passes._core.importance`: each layer cut alone at a few fractions, the KL divergence of
the class scores from the uncut model's), and HALP removes the unit with the least damage per unit of cost saved.
Without images, :data:`NO_IMAGES` says what is used (chosen by the accuracy race in ``bench/bench_accuracy.py``).
``--importance l1|l2`` values units by weight norms instead: LAMP (default for FLOPs and parameters) ranks every unit
of every kind on one scale and removes the lowest until the target is met; uniform keeps one fraction everywhere;
HALP (default for latency) removes the unit with the least importance per millisecond saved
(:mod:`passes._core.latency` measures the table, and the latency loop corrects the plan against measurement).

The cuts are then applied kind by kind (head channels, heads, neurons, widths, channels), each by its own pass, so
the output holds one combined ``vitseg.plan`` for the torch side to rebuild. ``--plan`` applies such a combined
plan (from a JSON file or a model) instead. A latency target the floors cannot reach exits 1 and names the layers at
their floor.
"""

from __future__ import annotations

import argparse
import logging
import math
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fileformat.args import fraction, non_negative_int, positive_int
from fileformat.cli import cli_main
from passes._parser import IMPORTANCES, LATENCY_THREADS, SCOPES, add_budget_args, make_parser, parse_early

PASS_NAME = "compress"
KINDS = ("head_dim", "heads", "neurons", "width", "channels")  # the order the cuts are applied in
UNIT_KINDS = KINDS[:4]  # found by passes._core.units; channels by passes._core.channels
COMPRESS_IMPORTANCES = (*IMPORTANCES, "sensitivity")
CLI_IMPORTANCES = ("auto", *COMPRESS_IMPORTANCES)  # auto: resolved by the command line (_valuation_args)


#: what ``--importance auto`` values units by when no images are given: (importance, calibration source)
NO_IMAGES: tuple[str, str | None] = ("l2", None)


def _in_words(choice: tuple[str, str | None]) -> str:
    importance, source = choice
    return f"measured damage on '{source}' images" if importance == "sensitivity" else f"{importance} weight norms"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(f"python -m passes.{PASS_NAME}", (__doc__ or "").split("\n\n")[0])
    add_budget_args(parser, latency=True)
    parser.add_argument("--plan", help="apply a combined plan (JSON, or a model holding vitseg.plan) instead")
    parser.add_argument(
        "--units", default=",".join(KINDS), help="which unit kinds take part, comma-separated (default: all)"
    )
    parser.add_argument(
        "--target-latency",
        type=fraction,
        help="keep this fraction of the model's latency measured on this machine (onnxruntime CPU), in (0, 1]",
    )
    parser.add_argument(
        "--latency-table",
        help="latency table JSON: read if it exists (ours, or `trtexec --exportProfile` output from the device), "
        "else measured here and written there (default: a cache under ~/.cache/vitseg)",
    )
    parser.add_argument(
        "--target-latency-of",
        metavar="REF.onnx",
        help="keep the latency of this other model: the target is REF's CPU time over the input's, measured here "
        "interleaved (e.g. a smaller model to match)",
    )
    parser.add_argument(
        "--latency-tolerance",
        type=fraction,
        help="the measured latency ratio must land this far (relative) under the target, else the plan is corrected "
        "(default 0.1 for --target-latency, 0.05 for --target-latency-of)",
    )
    parser.add_argument(
        "--latency-retries", type=non_negative_int, default=6, help="at most this many corrections (0: none)"
    )
    parser.add_argument(
        "--latency-threads",
        type=positive_int,
        default=LATENCY_THREADS,
        help="onnxruntime threads latency is measured with (one thread's CPU time moves least with the load)",
    )
    parser.add_argument(
        "--threads", type=positive_int, default=2, help="cuts measured at once for measured damage (one thread each)"
    )
    parser.add_argument(
        "--round-to",
        type=positive_int,
        default=8,
        help="keep conv channels and transformer widths at multiples of this (fast kernels want 8; 1: any count)",
    )
    parser.add_argument("--scope", choices=SCOPES, default="all", help="which part may lose conv channels")
    parser.add_argument(
        "--importance",
        choices=CLI_IMPORTANCES,
        default="auto",
        help="how units are valued. auto: the damage each cut does to the output on the --calib images, or without "
        f"them {_in_words(NO_IMAGES)}; sensitivity: measured damage (needs --calib); l1/l2: weight norms; "
        "bn_scale: channels by |BN gamma|",
    )
    parser.add_argument(
        "--calib",
        help="images that value the cuts: a folder, an LPCV root, 'synthetic' (generated scenes) or 'noise' "
        "(random pixels)",
    )
    parser.add_argument(
        "--calib-count",
        type=positive_int,
        help="calibration images to use (default: 8 at 128x128, fewer at larger inputs, the same pixel count; at "
        "least 1)",
    )
    parser.add_argument("--calib-split", default="train", help="split of an LPCV-layout root (default train)")
    return parser


parse_early(__name__, build_parser)  # --help and argument errors answer before onnx and the engine load

import numpy as np
import onnx

from fileformat.errors import PassError, UsageError
from fileformat.io import load_model
from fileformat.metadata import append_history
from passes._core import latency as latency_model
from passes._core.budget import Allocation, BudgetConfig, CostModel, Factor, Layer, allocate
from passes._core.canonical import canonicalize
from passes._core.channels import ChannelAnalysis, ChannelGroup, apply_channel_cuts
from passes._core.cli import run_pass_cli
from passes._core.cost import cost_terms, tensor_factors
from passes._core.graph import GraphView
from passes._core.importance import channel_group_scores, importance, measure_damage
from passes._core.report import PassReport
from passes._core.stats import graph_stats
from passes._core.units import PruneUnit, UnitPruneConfig, apply_units, find_units, prune_units, select_top
from passes.slice_channels import SliceChannelsConfig, load_plan_arg, slice_channels

log = logging.getLogger(__name__)


@dataclass
class CompressConfig:
    """A budget (``target_flops`` or ``target_params``) or a combined ``plan``; which unit kinds take part."""

    target_flops: float | None = None
    target_params: float | None = None
    target_latency: float | None = None
    plan: dict[str, Any] | None = None
    units: tuple[str, ...] = KINDS
    allocation: str | None = None  # lamp (FLOPs/params budgets) or halp (latency budgets) when not given
    latency_table: str | None = None  # read (ours or a trtexec profile) if it exists, else measured and written
    threads: int = 2  # cuts measured at once for measured damage (one onnxruntime thread each)
    # onnxruntime threads latency is timed and profiled with: one thread's CPU time moves least with the load
    latency_threads: int = latency_model.LATENCY_THREADS
    round_to: int = 8  # conv channels and widths are kept at multiples of this (1: any count)
    # the measured latency must land in a band this wide (relative) under the target, else the plan is corrected
    # (:func:`latency_band`); None: 0.1 for a --target-latency (a ceiling), 0.05 for a --target-latency-of (a match)
    latency_tolerance: float | None = None
    latency_retries: int = 6  # at most this many corrections
    floor: float = 0.1
    scope: str = "all"
    importance: str = "l2"  # or "sensitivity": measured on ``calib`` (see passes._core.importance); the CLI's "auto"
    # picks sensitivity where images are given (_valuation_args)
    calib: Sequence[Mapping[str, np.ndarray]] | None = None  # feeds for --importance sensitivity
    calib_source: str | None = None  # what the feeds are, in words, for the report ("8 images of runs/data")
    # --target-latency-of: the model whose speed is matched. The loop then times each cut against it directly
    # (interleaved pairs are not transitive: cut/input over reference/input misses cut/reference by several %)
    latency_reference: onnx.ModelProto | None = None

    def validate(self, images_pending: bool = False) -> None:
        """:class:`UsageError` for a contradictory or out-of-range option (``images_pending``: the calibration
        images are read later, once the rest is known to be valid)."""
        given = [n for n in ("target_flops", "target_params", "target_latency", "plan") if getattr(self, n) is not None]
        if len(given) != 1:
            raise UsageError("give exactly one of --target-flops, --target-params, --target-latency or --plan.")
        for name in ("target_flops", "target_params", "target_latency"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v <= 1.0:
                raise UsageError(
                    f"--{name.replace('_', '-')} {v}: the fraction of the model to keep must be in (0, 1] "
                    "(e.g. 0.2 keeps a fifth)."
                )
        bad = [u for u in self.units if u not in KINDS]
        if bad or not self.units:
            raise UsageError(f"--units {','.join(self.units)}: choose from {','.join(KINDS)}.")
        if self.scope not in SCOPES:
            raise UsageError(f"--scope {self.scope!r}: use one of {', '.join(SCOPES)}.")
        if self.importance not in COMPRESS_IMPORTANCES:
            raise UsageError(f"--importance {self.importance!r}: use one of {', '.join(COMPRESS_IMPORTANCES)}.")
        if self.allocation is not None and self.allocation not in ("lamp", "uniform", "halp"):
            raise UsageError(f"--allocation {self.allocation!r}: use lamp, uniform or halp.")
        if self.importance == "sensitivity" and self.plan is None:
            if not self.calib and not images_pending:
                raise UsageError(
                    "--importance sensitivity measures the model's output on images: give --calib DATA (a folder "
                    "of images, an LPCV-layout root, or 'synthetic')."
                )
            if self.allocation not in (None, "halp"):
                raise UsageError(
                    f"--importance sensitivity values each cut by the damage it adds, which only the HALP allocation "
                    f"uses; drop --allocation {self.allocation} (or give --allocation halp)."
                )
        if self.round_to < 1:
            raise UsageError(f"--round-to {self.round_to}: give 1 (any count) or more.")
        if not 0.0 <= self.floor < 1.0:
            raise UsageError(f"--floor {self.floor}: the per-layer minimum kept fraction must be in [0, 1).")


@dataclass
class CompressPlan:
    """Kept indices (of the input model) per unit of each kind (heads, head_dim, neurons, width: by unit id) and per
    channel group (by name)."""

    units: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # kind -> {unit id: kept}
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    allocation: Allocation | None = None
    layers: list[Layer] = field(default_factory=list)
    latency_table: Any = None
    notes: list[str] = field(default_factory=list)


def _unit_axes(units: Sequence[tuple[str, PruneUnit]]) -> dict[tuple[str, int], str]:
    """``{(weight, axis): "<kind> of <unit>"}`` for every weight axis a prunable unit group cuts."""
    out: dict[tuple[str, int], str] = {}
    for name, u in units:
        for ts in u.group.slices.values():  # type: ignore[union-attr]
            out[(ts.tensor, ts.axis)] = name
    return out


_KIND_WORDS = {"heads": "attention blocks", "head_dim": "head-channel groups", "neurons": "MLPs",
               "width": "transformer widths", "channels": "channel groups"}  # fmt: skip


def _unit_layers(
    model: onnx.ModelProto, view: GraphView, kind: str, config: CompressConfig, budget: BudgetConfig
) -> tuple[list[Layer], list[tuple[str, PruneUnit]], list[tuple[str, str]]]:
    """Budget layers of one unit kind, the ``(layer name, unit)`` pairs, and the skipped units with reasons."""
    units = find_units(model, kind, view)
    prunable = [u for u in units if u.prunable]
    norm = config.importance if config.importance in ("l1", "l2") else "l2"
    scores = importance(model, prunable, norm) if prunable else {}
    layers, named = [], []
    for u in prunable:
        name = f"{kind}:{u.id}"
        step = _step(u.count, config.round_to) if kind == "width" else 1
        layers.append(
            Layer(name, np.asarray(scores[u.id]), budget.floor_of(u.count), kind=kind, scope="backbone", step=step)
        )
        named.append((name, u))
    return layers, named, [(f"{kind} {u.id}", u.skip_reason or "") for u in units if not u.prunable]


def _step(size: int, round_to: int) -> int:
    """Channels are cut ``round_to`` at a time where the count is a multiple of it (so it stays one): onnxruntime's
    NCHWc convolutions and TensorRT's tensor cores want multiples of 8, and other counts add layout copies."""
    return round_to if round_to > 1 and size % round_to == 0 and size >= 2 * round_to else 1


def _unit_configs(plan: CompressPlan) -> dict[str, UnitPruneConfig]:
    return {kind: UnitPruneConfig(keep_sets=keep) for kind, keep in plan.units.items() if keep}


def _channels_config(plan: CompressPlan) -> SliceChannelsConfig | None:
    return SliceChannelsConfig(plan={"channels": plan.channels}) if plan.channels else None


def _apply(
    model: onnx.ModelProto, unit_cfgs: dict[str, UnitPruneConfig], channels_cfg: SliceChannelsConfig | None
) -> tuple[onnx.ModelProto, list[PassReport]]:
    """Cut each unit kind in turn (each pass finds its units again on the model the previous one wrote), then the
    conv channels."""
    current, steps = model, []
    for kind in UNIT_KINDS:
        if kind in unit_cfgs:
            current, rep = prune_units(current, kind, unit_cfgs[kind], f"{PASS_NAME}:{kind}")
            steps.append(rep)
    if channels_cfg is not None:
        current, rep = slice_channels(current, channels_cfg)
        steps.append(rep)
    return current, steps


def _fraction(
    problem: _Problem, factors_of: Callable[[Sequence[str]], list[Factor]], counts: Mapping[str, int]
) -> Callable[[Sequence[str]], float]:
    """The kept fraction of a node's work (reading or writing ``tensors``) when each layer keeps ``counts``."""
    sizes = {ly.name: ly.size for ly in problem.layers}

    def fraction(tensors: Sequence[str]) -> float:
        p = 1.0
        for f in factors_of(tensors):
            total = sum(n for _, n in f)
            p *= sum(counts.get(name, sizes[name]) * n / sizes[name] if name else n for name, n in f) / total
        return p

    return fraction


def _latency_table(
    problem: _Problem, config: CompressConfig, factors_of: Callable[[Sequence[str]], list[Factor]]
) -> latency_model.LatencyTable:
    """The latency table of the model: from ``--latency-table`` or the cache, else profiled now (and saved)."""
    model, layers = problem.model, problem.layers
    threads = config.latency_threads
    path = Path(config.latency_table) if config.latency_table else latency_model.cache_path(model, threads)
    if path.exists():
        table = latency_model.load_table(path, model)
        problem.notes.append(f"latency table: {path} ({table.source}, {len(table.nodes)} nodes)")
        return table
    variants = []
    for q in (0.5, 0.25, 0.125):
        counts = {ly.name: min(ly.size, ly.step * max(1, math.ceil(q * ly.size / ly.step))) for ly in layers}
        plan = _plan_of(problem, {ly.name: select_top(ly.scores, counts[ly.name]) for ly in layers})
        cut, _ = _apply(model, _unit_configs(plan), _channels_config(plan))
        variants.append((cut, _fraction(problem, factors_of, counts)))
    start = time.perf_counter()
    table = latency_model.fit_table(model, variants, threads=threads)
    latency_model.save_table(table, path)
    problem.notes.append(
        f"latency table measured in {time.perf_counter() - start:.0f} s ({len(table.nodes)} onnxruntime nodes, "
        f"{threads} thread{'s' if threads != 1 else ''}, full model {table.wall_ms:.1f} ms), saved to {path}"
    )
    return table


@dataclass
class _Problem:
    """What a budget is allocated over, found once per input model (re-planning for another target reuses it)."""

    model: onnx.ModelProto  # the canonical form the plan's unit ids and groups refer to
    layers: list[Layer]
    channel_groups: dict[str, ChannelGroup]  # budget layer name -> channel group
    units: dict[str, PruneUnit]  # budget layer name -> unit (heads, head channels, neurons, widths)
    analysis: ChannelAnalysis  # the channel groups' analysis of ``model``
    skipped: list[tuple[str, str]]
    flops: CostModel
    params: CostModel
    latency: CostModel | None
    notes: list[str]
    latency_table: Any = None


def _discover(model: onnx.ModelProto, config: CompressConfig) -> _Problem:
    """Canonicalize ``model``, find every prunable unit of the kinds in ``config.units``, score them, and build the
    cost models (and, for a latency budget, the measured table)."""
    metric = _metric(config)[0]
    budget = BudgetConfig(target=1.0, metric=metric, floor=config.floor)
    model = canonicalize(model)
    stats = graph_stats(model)
    view = GraphView(model)
    layers: list[Layer] = []
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    units: list[tuple[str, PruneUnit]] = []
    for kind in UNIT_KINDS:
        if kind in config.units:
            ly, named, sk = _unit_layers(model, view, kind, config, budget)
            layers += ly
            units += named
            skipped += sk
    analysis = ChannelAnalysis(model, view, _unit_axes(units))  # one owner per weight axis
    names: dict[int, str] = {}
    groups = analysis.prunable(config.scope) if "channels" in config.units else []
    if groups:
        norm = "l2" if config.importance == "sensitivity" else config.importance
        scores = channel_group_scores(groups, norm, notes)
        for g in groups:
            names[g.gid] = f"channels:{g.name}"
            floor, step = budget.floor_of(g.size), _step(g.size, config.round_to)
            layers.append(Layer(names[g.gid], scores[g.gid], floor, kind="channels", scope=g.scope, step=step))
    for g in analysis.groups:
        if g.blocked and "channels" in config.units:
            skipped.append((g.name, "; ".join(g.blocked)))
    channel_units = [(names[g.gid], g) for g in groups]
    flop_terms, param_terms = cost_terms(model, view, [*units, *channel_units], stats)
    if not layers:
        raise PassError(
            "nothing to compress: the model has no prunable heads, head channels, neurons, widths or conv channels "
            "in scope."
        )
    sizes = {ly.name: ly.size for ly in layers}
    problem = _Problem(
        model, layers, {names[g.gid]: g for g in groups}, dict(units), analysis, skipped,
        CostModel(flop_terms, sizes), CostModel(param_terms, sizes), None, notes,
    )  # fmt: skip
    if metric == "latency":
        factors_of = tensor_factors([*units, *channel_units])
        problem.latency_table = _latency_table(problem, config, factors_of)
        problem.latency = CostModel(problem.latency_table.terms(factors_of), sizes)
    if config.importance == "sensitivity":
        _measure_sensitivity(problem, config, budget)
    return problem


def _metric(config: CompressConfig) -> tuple[str, float]:
    return next(
        (m, float(getattr(config, f"target_{m}")))
        for m in ("flops", "params", "latency")
        if getattr(config, f"target_{m}") is not None
    )


def _plan_of(problem: _Problem, keep: dict[str, list[int]]) -> CompressPlan:
    """The plan that keeps ``keep[layer]`` of each named budget layer (and all of the others)."""
    out = CompressPlan()
    for ly in problem.layers:
        kept = keep.get(ly.name)
        if kept is None or len(kept) == ly.size:
            continue
        kind, _, uid = ly.name.partition(":")
        if kind in UNIT_KINDS:
            out.units.setdefault(kind, {})[uid] = list(kept)
        else:
            out.channels[problem.channel_groups[ly.name].name] = {"kept": list(kept), "total": ly.size}
    return out


def cut_one_layer(problem: _Problem, name: str, kept: list[int]) -> onnx.ModelProto:
    """The model with budget layer ``name`` alone cut to ``kept``, for measuring its damage: the layer's group is
    rewritten on the canonical model where it was found, by the rewrite the passes use, without finding every group
    again or checking the result (the final plan still goes through the passes). About 3x faster per cut than applying
    a one-layer plan with the passes, and the same model (tests/passes/test_importance.py)."""
    if name in problem.channel_groups:
        out = apply_channel_cuts(problem.model, problem.analysis, {problem.channel_groups[name].gid: kept})[0]
    else:
        unit = problem.units[name]
        out = apply_units(problem.model, [unit], {unit.id: kept})[0]
    del out.graph.value_info[:]  # the cut tensors' shapes changed: onnxruntime infers them
    return out


def _measure_sensitivity(problem: _Problem, config: CompressConfig, budget: BudgetConfig) -> None:
    """Give every layer its measured damage curve (:mod:`passes._core.importance`)."""
    floors = {ly.name: min(ly.size, max(ly.floor, budget.floor_of(ly.size))) for ly in problem.layers}

    def cut(ly: Layer, kept: list[int]) -> onnx.ModelProto:
        return cut_one_layer(problem, ly.name, kept)

    start = time.perf_counter()
    units = {**problem.units, **problem.channel_groups}
    curves, points = measure_damage(
        problem.model, problem.layers, floors, cut, config.calib or [], config.threads, units
    )
    for ly in problem.layers:
        ly.damage = curves[ly.name]
    problem.notes.append(
        f"sensitivity: {len(problem.layers)} layers, {sum(len(p) for p in points.values())} single-layer cuts "
        f"measured on {len(config.calib or [])} image(s) in {time.perf_counter() - start:.0f} s (output KL "
        "divergence from the uncut model)"
    )


def _allocate(problem: _Problem, config: CompressConfig) -> CompressPlan:
    """Choose kept units of every layer of ``problem`` for the budget of ``config``."""
    metric, target = _metric(config)
    method = config.allocation or ("halp" if metric == "latency" or config.importance == "sensitivity" else "lamp")
    budget = BudgetConfig(target=target, metric=metric, method=method, floor=config.floor)
    alloc = allocate(problem.layers, problem.flops, problem.params, budget, problem.latency)
    out = _plan_of(problem, alloc.keep)
    out.allocation, out.layers = alloc, problem.layers
    out.latency_table, out.notes = problem.latency_table, list(problem.notes)
    return out


def plan_compress(model: onnx.ModelProto, config: CompressConfig) -> tuple[CompressPlan, list[tuple[str, str]]]:
    """Choose kept units of every kind in ``config.units`` for the budget; return the plan and skipped units."""
    config.validate()
    problem = _discover(model, config)
    return _allocate(problem, config), problem.skipped


@dataclass
class CompressResult:
    """What :func:`run_compress` did: the written model, the passes that wrote it, the plan and the units skipped
    (none for a given ``--plan``), and for a latency budget every measured attempt, the one kept last."""

    model: onnx.ModelProto
    steps: list[PassReport]
    before: Any  # graph_stats of the input
    after: Any  # graph_stats of the output
    plan: CompressPlan | None = None
    skipped: list[tuple[str, str]] = field(default_factory=list)
    attempts: list[_Attempt] = field(default_factory=list)  # in the order they were measured
    latency: _Attempt | None = None  # the attempt kept
    notes: list[str] = field(default_factory=list)

    @property
    def achieved(self) -> float:
        """The budget's metric on the output: measured CPU-time ratio, or the graph's FLOPs / parameter ratio."""
        alloc = self.plan.allocation if self.plan else None
        if self.latency is not None:
            return self.latency.ratio
        if alloc is not None and alloc.metric == "flops":
            return self.after.flops / self.before.flops
        return self.after.params / self.before.params


def run_compress(model: onnx.ModelProto, config: CompressConfig) -> CompressResult:
    """Cut head channels, heads, neurons, widths and channels of ``model`` to one budget (or a combined plan).

    A latency budget is a promise: :class:`PassError` when no measured cut reaches it (nothing is written)."""
    config.validate()
    before = graph_stats(model)
    if config.plan is not None:
        unit_cfgs = {k: UnitPruneConfig(plan=config.plan) for k in UNIT_KINDS if config.plan.get(k)}
        channels_cfg = SliceChannelsConfig(plan=config.plan) if config.plan.get("channels") else None
        if not unit_cfgs and channels_cfg is None:
            raise PassError("the plan has no heads, head_dim, neurons, width or channels entries; nothing to apply.")
        current, steps = _apply(model, unit_cfgs, channels_cfg)
        result = CompressResult(current, steps, before, None)
    else:
        problem = _discover(model, config)
        chosen = _allocate(problem, config)
        current, steps = _apply(model, _unit_configs(chosen), _channels_config(chosen))
        result = CompressResult(current, steps, before, None, chosen, problem.skipped, notes=list(chosen.notes))
        if chosen.allocation is not None and chosen.allocation.metric == "latency":
            result.attempts = _close_latency_loop(model, problem, config, chosen, current, steps, result.notes)
            best = result.latency = min(result.attempts, key=lambda a: a.miss())
            result.plan, result.model, result.steps = best.plan, best.model, best.steps
            if best.plan.allocation is not None:  # the budget is reported against what was asked, as measured
                best.plan.allocation.target = float(config.target_latency or 1.0)
                best.plan.allocation.reached = best.ratio <= best.band[1] if best.ceiling else best.inside
            if not best.inside and best.ratio < best.band[0]:
                result.notes.append(
                    f"latency: no cut landed in [{best.band[0]:.3f}, {best.band[1]:.3f}] within "
                    f"{config.latency_retries} corrections; kept the closest under the ceiling ({best.ratio:.3f}x): "
                    "more was cut than asked"
                )
    if result.model is model:
        result.model = onnx.ModelProto()
        result.model.CopyFrom(model)
    result.after = graph_stats(result.model) if result.steps else before
    alloc = result.plan.allocation if result.plan else None
    if alloc is not None and not alloc.reached and alloc.metric == "latency":
        raise PassError(
            f"{_not_reached(result, config)}. The closest cut measured {result.achieved:.3f}x (the latency model "
            f"predicted {alloc.achieved:.3f}x); what it cannot cut (the constant part of each node, the session "
            "overhead) stays. Lower --floor, add --units, or ask for a larger --target-latency."
        )
    if any(r.modified for r in result.steps):
        append_history(
            result.model,
            {
                "pass": PASS_NAME,
                "target_flops": config.target_flops,
                "target_params": config.target_params,
                "target_latency": config.target_latency,
                "allocation": config.allocation,
                "importance": config.importance,
                "units": list(config.units),
                "flops": [before.flops, result.after.flops],
                "params": [before.params, result.after.params],
            },
        )
    return result


def _not_reached(result: CompressResult, config: CompressConfig) -> str:
    """Why the budget was not reached: the layers at their floor, or the corrections ran out."""
    alloc = result.plan.allocation  # type: ignore[union-attr]
    floored = [n.replace(":", " ", 1) for n in alloc.at_floor]
    more = f" and {len(floored) - 6} more" if len(floored) > 6 else ""
    if floored or alloc.metric != "latency":
        return "target not reached: the per-layer floors stopped it; layers at their floor: " + (
            ", ".join(floored[:6]) + more if floored else "none (nothing left to cut)"
        )
    return f"target not reached after {config.latency_retries} corrections against measurement"


def describe(result: CompressResult, config: CompressConfig) -> PassReport:
    """The report of a :func:`run_compress`: a row per budgeted layer, the budget and, for a latency budget, each
    measured attempt."""
    before, after = result.before, result.after
    report = PassReport(PASS_NAME, params_before=before.params, flops_before=before.flops)
    report.params_after, report.flops_after = after.params, after.flops
    report.modified = any(r.modified for r in result.steps)
    report.columns = ["layer", "kind", "units", "kept", "floor"]
    for where, reason in result.skipped:
        report.skip(where, reason)
    report.notes.extend(result.notes)
    alloc = result.plan.allocation if result.plan else None
    if alloc is not None:
        assert result.plan is not None
        for ly in result.plan.layers:
            floor = "yes" if ly.name in alloc.at_floor else ""
            row = {"layer": ly.name.partition(":")[2], "kind": ly.kind, "units": ly.size}
            report.rows.append({**row, "kept": alloc.counts[ly.name], "floor": floor})
        report.extra["valuation"] = _valuation(config)
        if result.latency is not None:
            _describe_latency(report, result, config)
        report.extra["budget"] = {
            "metric": alloc.metric,
            "method": alloc.method,
            "importance": config.importance,
            "target": alloc.target,
            "estimated": alloc.achieved,
            "achieved": result.achieved,
            "reached": alloc.reached,
            "at_floor": alloc.at_floor,
        }
        by_kind = {k: sum(1 for ly in result.plan.layers if ly.kind == k) for k in KINDS}
        over = ", ".join(f"{n} {_KIND_WORDS[k]}" for k, n in by_kind.items() if n)
        how = "measured CPU time" if result.latency else "graph count"
        report.notes.append(
            f"budget ({alloc.method}, valued by {report.extra['valuation']}) over {over}: {alloc.metric} target "
            f"{alloc.target:.3f}, achieved {result.achieved:.3f} ({how}; estimate {alloc.achieved:.3f})"
        )
        if not alloc.reached:
            report.notes.append(_not_reached(result, config))
        report.extra["headline"] = _headline(report, result, alloc)
    for r in result.steps:
        report.notes.append(
            f"{r.pass_name}: {'modified' if r.modified else 'unchanged'}, FLOPs {r.flops_before:,} -> {r.flops_after:,}"
        )
    report.extra["steps"] = [r.pass_name for r in result.steps]
    return report


_UNIT_WORDS = {"head_dim": "head channels", "heads": "heads", "neurons": "neurons", "width": "width channels",
               "channels": "conv channels"}  # fmt: skip


def _headline(report: PassReport, result: CompressResult, alloc: Allocation) -> str:
    """In words: what went, and what the budget became (``9 of 36 heads, ... removed; 0.47x CPU time ...``)."""
    gone = []
    for kind in KINDS:
        rows = [r for r in report.rows if r["kind"] == kind]
        total, kept = sum(r["units"] for r in rows), sum(r["kept"] for r in rows)
        if total > kept:
            gone.append(f"{total - kept} of {total} {_UNIT_WORDS[kind]}")
    what = ", ".join(gone) + " removed" if gone else "nothing removed"
    how = "CPU time" if result.latency else alloc.metric.replace("flops", "FLOPs")
    return f"{what}; {how} {result.achieved:.3f}x (target {alloc.target:.3f}x)"


def _valuation(config: CompressConfig) -> str:
    """In words, what valued the units: measured damage on which images, or which weight norm."""
    if config.importance == "sensitivity":
        return f"measured output damage on {config.calib_source or 'calibration images'}"
    if config.importance == "bn_scale":
        return "BatchNorm scales (L2 norms where folded)"
    return f"{config.importance.upper()} weight norms"


def _describe_latency(report: PassReport, result: CompressResult, config: CompressConfig) -> None:
    best = result.latency
    assert best is not None and result.plan is not None and result.plan.allocation is not None
    t = best.timing
    threads = config.latency_threads
    how = f"onnxruntime CPU, {threads} thread{'s' if threads != 1 else ''}, interleaved, {t.rounds} rounds"
    report.extra["latency_attempts"] = [a.row() for a in result.attempts]
    report.extra["cpu_time_ratio"] = round(best.ratio, 4)
    report.extra["cpu_time_ratio_se"] = round(best.se, 4)
    report.extra["latency_band"] = [round(best.band[0], 4), round(best.band[1], 4)]
    report.extra["first_prediction"] = result.attempts[0].row()["predicted"]
    if config.latency_reference is None:
        report.extra["latency_ms"] = {"before": round(t.a_ms, 3), "after": round(t.b_ms, 3)}
        report.notes.append(
            f"latency: predicted {result.plan.allocation.achieved:.3f}x, measured {best.ratio:.3f}x CPU time "
            f"(standard error {best.se:.3f}; band [{best.band[0]:.3f}, {best.band[1]:.3f}]) and "
            f"{t.b_ms / t.a_ms:.3f}x wall ({t.a_ms:.1f} -> {t.b_ms:.1f} ms; {how})"
        )
    else:
        of_ref = best.timing.ratio
        report.extra["latency_ms"] = {"reference": round(t.a_ms, 3), "after": round(t.b_ms, 3)}
        report.extra["reference_cpu_time_ratio"] = round(of_ref, 4)
        report.notes.append(
            f"latency: measured {of_ref:.3f}x the reference's CPU time and {t.b_ms / t.a_ms:.3f}x its wall time "
            f"({t.a_ms:.1f} vs {t.b_ms:.1f} ms; {how}), i.e. {best.ratio:.3f}x the input's (predicted "
            f"{result.plan.allocation.achieved:.3f}x)"
        )


def compress(model: onnx.ModelProto, config: CompressConfig) -> tuple[onnx.ModelProto, PassReport]:
    """:func:`run_compress`, and its report (:func:`describe`)."""
    result = run_compress(model, config)
    return result.model, describe(result, config)


def latency_band(target: float, se: float, tolerance: float, ceiling: bool) -> tuple[float, float]:
    """The band ``[low, high]`` a measured latency ratio must land in.

    A match (``--target-latency-of``) lands in ``[target * (1 - tolerance), target]``. A ``--target-latency`` is a
    ceiling that another measurement of the written file (a benchmark, the user's) must find under it too, and a
    cut far under it throws away accuracy the user asked to keep: the band keeps twice the measurement's standard
    error from both ends, ``[target * (1 - tolerance) + 2 se, target - 2 se]``. Where the noise leaves that band
    under 2% of the target, the low end gives way (never the ceiling)."""
    if not ceiling:
        return target * (1.0 - tolerance), target
    high = target - 2.0 * se
    low = target * (1.0 - tolerance) + 2.0 * se
    if high - low < 0.02 * target:
        low = min(target * (1.0 - tolerance), high - 0.02 * target)
    return low, high


@dataclass
class _Attempt:
    """One measured plan of the latency loop: the target it was planned for, the table's estimate, the measured
    ratio and its standard error, and what it wrote."""

    asked: float
    plan: CompressPlan
    model: onnx.ModelProto
    steps: list[PassReport]
    timing: latency_model.PairTiming
    ratio: float  # measured, against the input (scaled by the target for a reference match)
    se: float
    band: tuple[float, float]
    ceiling: bool  # a --target-latency (a ceiling), not a --target-latency-of (a match)

    def row(self) -> dict[str, Any]:
        """The attempt for the report: asked target, the table's estimate, measured ratio, its standard error,
        band and rounds."""
        predicted = self.plan.allocation.achieved if self.plan.allocation else self.asked
        return {
            "asked": round(self.asked, 4),
            "predicted": round(predicted, 4),
            "measured": round(self.ratio, 4),
            "se": round(self.se, 4),
            "band": [round(self.band[0], 4), round(self.band[1], 4)],
            "rounds": self.timing.rounds,
        }

    @property
    def inside(self) -> bool:
        return self.band[0] <= self.ratio <= self.band[1]

    def miss(self) -> float:
        """0 inside the band; under it, how far (relative); over it, 1 + how far: any time under the ceiling is
        better than one over it."""
        low, high = self.band
        if self.ratio > high:
            return 1.0 + self.ratio / high - 1.0
        return max(0.0, (low - self.ratio) / low)


def _far_outside(ratio: float, se: float, target: float, tolerance: float, ceiling: bool) -> bool:
    """Whether a measurement is outside its band by more than three standard errors: the plan will be corrected
    whatever more rounds say, so the measurement can stop there."""
    low, high = latency_band(target, se, tolerance, ceiling)
    return ratio > high + 3 * se or ratio < low - 3 * se


def _next_asked(attempts: Sequence[_Attempt]) -> float:
    """The target to plan for next. Until measurements on both sides of the band are known, the table's bias on
    the last cut is taken off the band's middle; then the bracket of asked targets (the largest whose cut measured
    under the band, the smallest whose cut measured over it) is narrowed, by interpolation clamped to its middle
    half, so it shrinks by at least a quarter every step (a bisection that uses the measurements' slope)."""
    last = attempts[-1]
    aim = sum(last.band) / 2
    under = [a for a in attempts if a.ratio < a.band[0]]
    over = [a for a in attempts if a.ratio > a.band[1]]
    if under and over:
        lo = max(under, key=lambda a: a.asked)
        hi = min(over, key=lambda a: a.asked)
        if hi.asked > lo.asked:
            t = (aim - lo.ratio) / (hi.ratio - lo.ratio) if hi.ratio > lo.ratio else 0.5
            return lo.asked + min(max(t, 0.25), 0.75) * (hi.asked - lo.asked)
    return min(1.0, max(1e-3, last.asked * aim / max(last.ratio, 1e-6)))


def _close_latency_loop(
    model: onnx.ModelProto,
    problem: _Problem,
    config: CompressConfig,
    chosen: CompressPlan,
    current: onnx.ModelProto,
    steps: list[PassReport],
    notes: list[str],
) -> list[_Attempt]:
    """Measure the cut model against the input (interleaved, CPU time at ``config.latency_threads``) and correct
    the plan until the ratio lands in :func:`latency_band` (at most ``config.latency_retries`` corrections); return
    every attempt in order. The table predicts each node's time; what it cannot see (memory layout changes, cache
    effects) is corrected with measurement: the target the next plan is made for comes from :func:`_next_asked`, a
    bracketing search over the asked target, so the loop lands from any first plan. The caller keeps the attempt
    inside the band; else the closest under the ceiling; else the closest over it (:meth:`_Attempt.miss`).

    With ``config.latency_reference`` each cut is timed against that model instead, and its ratio to the
    reference (scaled by the target, the reference's ratio to the input) is held to the band: what the user
    compares is the cut against the reference, and a chain of two measured ratios misses it by more than the band.
    """
    target = float(config.target_latency or 1.0)
    ceiling = config.latency_reference is None
    tolerance = config.latency_tolerance if config.latency_tolerance is not None else (0.1 if ceiling else 0.05)
    against = problem.model if ceiling else canonicalize(config.latency_reference)  # type: ignore[arg-type]
    scale = 1.0 if ceiling else target
    measured: dict[tuple[tuple[str, int], ...], _Attempt] = {}
    attempts: list[_Attempt] = []
    asked = target
    for attempt in range(config.latency_retries + 1):
        if attempt:
            asked = _next_asked(attempts)
            chosen = _allocate(problem, replace(config, target_latency=asked))
        assert chosen.allocation is not None
        key = tuple(sorted(chosen.allocation.counts.items()))
        if key in measured:  # the same cut again: its measurement stands (the bracket still narrows)
            a = replace(measured[key], asked=asked)
        else:
            if attempt:
                current, steps = _apply(model, _unit_configs(chosen), _channels_config(chosen))
            timing = latency_model.measure_pair(
                against,
                current,
                threads=config.latency_threads,
                min_seconds=1.0,
                desc=f"latency {attempt + 1}/{config.latency_retries + 1}: timing the cut"
                + ("" if ceiling else " against the reference"),
                settled=lambda m, se: _far_outside(scale * m, scale * se, target, tolerance, ceiling),
            )
            ratio, se = scale * timing.ratio, scale * timing.se
            band = latency_band(target, se, tolerance, ceiling)
            a = measured[key] = _Attempt(asked, chosen, current, steps, timing, ratio, se, band, ceiling)
        attempts.append(a)
        row = a.row()
        log.info("latency attempt %d: %s", attempt + 1, row)
        if a.inside:
            break
        if attempt < config.latency_retries:
            notes.append(
                f"latency: planned for {asked:.3f}x (predicted {row['predicted']:.3f}x), measured {a.ratio:.3f}x CPU "
                f"time, outside [{a.band[0]:.3f}, {a.band[1]:.3f}] for a target of {target:.3f}x; correcting "
                f"({attempt + 1} of at most {config.latency_retries})"
            )
    return attempts


def latency_of(
    model: onnx.ModelProto, reference: onnx.ModelProto | str | Path, threads: int = latency_model.LATENCY_THREADS
) -> float:
    """The CPU-time ratio of ``reference`` to ``model``, measured here interleaved: a ``--target-latency`` that
    matches the reference's speed."""
    ref = reference if isinstance(reference, onnx.ModelProto) else load_model(reference)
    if latency_model.fingerprint(model) == latency_model.fingerprint(ref):
        raise UsageError(
            "--target-latency-of names a model with the same graph and weights as the input: there is nothing to "
            "match; give the faster model whose speed you want."
        )
    timing = latency_model.measure_pair(
        canonicalize(model), canonicalize(ref), threads=threads, min_rounds=10, min_seconds=2.0,
        rel_se=0.005, desc="timing the reference",
    )  # fmt: skip
    ratio = timing.ratio
    if not 0.0 < ratio < 1.0:
        raise PassError(
            f"--target-latency-of: the reference takes {ratio:.3f}x the input's CPU time here, so there is nothing "
            "to cut to match it; give a faster reference or a --target-latency."
        )
    log.info("--target-latency-of: the reference takes %.3fx the input's CPU time", ratio)
    return ratio


def default_calib_count(size: Sequence[int]) -> int:
    """Calibration images at input size ``size``: 8 at 128x128, and as many pixels at other sizes (2 at 256, 1 at
    512): measured damage costs one run per image and cut, and a larger image holds more pixels to judge by."""
    h, w = (int(size[0]), int(size[1])) if len(size) >= 2 else (128, 128)
    return max(1, min(8, round(8 * 128 * 128 / max(1, h * w))))


def _valuation_args(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[str, str | None, int]:
    """``(importance, calibration source, image count)`` after ``--importance auto``."""
    importance, calib = args.importance, args.calib
    if importance == "auto":
        importance, calib = ("sensitivity", calib) if calib is not None else NO_IMAGES
    elif calib is not None and importance != "sensitivity":
        raise UsageError(f"--calib is read to measure damage; drop --importance {importance}, or drop --calib.")
    count = args.calib_count
    if count is None:
        from runtime._calib import CalibrationDataError, input_spec

        try:
            count = default_calib_count(input_spec(model).size)
        except CalibrationDataError:
            count = 8
    return importance, calib, count


def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    if args.target_latency_of is not None and args.target_latency is not None:
        raise UsageError("give --target-latency or --target-latency-of, not both.")
    importance, calib, count = _valuation_args(model, args)
    config = CompressConfig(
        target_flops=args.target_flops,
        target_params=args.target_params,
        target_latency=args.target_latency,
        latency_tolerance=args.latency_tolerance,
        latency_retries=args.latency_retries,
        latency_table=args.latency_table,
        threads=args.threads,
        latency_threads=args.latency_threads,
        round_to=args.round_to,
        plan=load_plan_arg(args.plan) if args.plan else None,
        units=tuple(u.strip() for u in args.units.split(",") if u.strip()),
        allocation=args.allocation,
        floor=args.floor,
        scope=args.scope,
        importance=importance,
        calib_source=f"{count} {calib} image{'s' if count != 1 else ''}" if calib in ("noise", "synthetic") else
        f"{count} image{'s' if count != 1 else ''} of {calib}",
    )  # fmt: skip
    if args.target_latency_of is not None:
        config.target_latency = 0.5  # a stand-in while the arguments are checked: nothing is timed before
    config.validate(images_pending=calib is not None)
    if args.target_latency_of is not None:
        config.latency_reference = load_model(args.target_latency_of)
        config.target_latency = latency_of(model, config.latency_reference, args.latency_threads)
    if importance != "sensitivity" or config.plan is not None:
        return compress(model, config)
    from runtime._calib import CalibrationDataError, calibration_feeds

    try:
        with calibration_feeds(model, calib, split=args.calib_split, count=count, desc="calibration images") as feeds:
            config.calib = list(feeds)
    except CalibrationDataError as exc:
        raise PassError(str(exc)) from None
    return compress(model, config)


@cli_main("python -m passes.compress")
def main(argv: Sequence[str] | None = None) -> int:
    return run_pass_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
