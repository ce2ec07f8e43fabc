"""The budget problem of ``passes.compress``: every prunable unit group of the kinds asked for becomes a layer of
one budget (:mod:`passes._core.budget`), with its importance (weight norms, or the damage each cut does to the
output, :mod:`passes._core.importance`) and the cost models (FLOPs, parameters, and for a latency budget the
measured table, :mod:`passes._core.latency`). Found once per input (:func:`discover`); a plan for another target
re-allocates over the same problem (:func:`allocate_plan`), which is what the latency loop does."""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fileformat.errors import PassError, UsageError
from passes._core import latency as latency_model
from passes._core.budget import Allocation, BudgetConfig, CostModel, Factor, Layer, allocate, select_top
from passes._core.canonical import canonicalize
from passes._core.channels import in_scope
from passes._core.cost import cost_terms, tensor_factors
from passes._core.cut import apply_cuts
from passes._core.defaults import CHANNEL_METHODS, SCOPES
from passes._core.graph import GraphView, analysis_view
from passes._core.importance import importance, measure_damage
from passes._core.kinds import ORDER, TRANSFORMER
from passes._core.prune import SliceChannelsConfig, UnitPruneConfig, prune_channels, prune_units
from passes._core.report import PassReport
from passes._core.stats import graph_stats
from passes._core.unit import PruneUnit
from passes._core.units import find_units

KINDS = ORDER  # the order the cuts are applied in
COMPRESS_IMPORTANCES = (*CHANNEL_METHODS, "sensitivity")
PASS_NAME = "compress"


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
    # points measured per layer for measured damage (passes._core.importance.POINTS); None: as many as fit in about
    # two minutes (importance.damage_points: 4 on small models, 1 on Swin-T + UPerNet at 512)
    damage_points: int | None = None
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
        if self.damage_points is not None and self.damage_points not in (1, 2, 3, 4):
            raise UsageError(f"--damage-points {self.damage_points}: give auto, 1, 2, 3 or 4.")
        if self.round_to < 1:
            raise UsageError(f"--round-to {self.round_to}: give 1 (any count) or more.")
        if not 0.0 <= self.floor < 1.0:
            raise UsageError(f"--floor {self.floor}: the per-layer minimum kept fraction must be in [0, 1).")


@dataclass
class CompressPlan:
    """Kept indices (of the input model) per unit group of each kind, by unit id."""

    units: dict[str, dict[str, list[int]]] = field(default_factory=dict)  # kind -> {unit id: kept}
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


def _unit_layers(
    view: GraphView, kind: str, config: CompressConfig, budget: BudgetConfig, claimed: dict[tuple[str, int], str],
    notes: list[str],
) -> tuple[list[Layer], list[tuple[str, PruneUnit]], list[tuple[str, str]]]:  # fmt: skip
    """Budget layers of one unit kind, the ``(layer name, unit)`` pairs, and the skipped units with reasons.
    ``claimed``: the weight axes earlier kinds cut (a conv channel group on one is skipped: one owner per axis)."""
    units = find_units(view.model, kind, view, claimed)
    if kind == "channels":
        prunable = in_scope(units, config.scope)
        skipped = [(u.id, "; ".join(u.blocked)) for u in units if u.blocked]  # type: ignore[attr-defined]
        method = "l2" if config.importance == "sensitivity" else config.importance
    else:
        prunable = [u for u in units if u.prunable]
        skipped = [(f"{kind} {u.id}", u.skip_reason or "") for u in units if not u.prunable]
        method = config.importance if config.importance in ("l1", "l2") else "l2"
    scores = importance(prunable, method, notes)
    layers, named = [], []
    for u in prunable:
        name = f"{kind}:{u.id}"
        step = _step(u.count, config.round_to) if kind in ("width", "channels") else 1
        scope = getattr(u, "scope", "backbone")
        layers.append(Layer(name, np.asarray(scores[u.id]), budget.floor_of(u.count), kind, scope, step))
        named.append((name, u))
    return layers, named, skipped


def _step(size: int, round_to: int) -> int:
    """Channels are cut ``round_to`` at a time where the count is a multiple of it (so it stays one): onnxruntime's
    NCHWc convolutions and TensorRT's tensor cores want multiples of 8, and other counts add layout copies."""
    return round_to if round_to > 1 and size % round_to == 0 and size >= 2 * round_to else 1


def _unit_configs(plan: CompressPlan) -> dict[str, UnitPruneConfig]:
    return {kind: UnitPruneConfig(keep_sets=keep) for kind, keep in plan.units.items() if keep and kind != "channels"}


def _channels_config(plan: CompressPlan, sizes: Mapping[str, int]) -> SliceChannelsConfig | None:
    keep = plan.units.get("channels")
    entries = {uid: {"kept": list(kept), "total": sizes[uid]} for uid, kept in (keep or {}).items()}
    return SliceChannelsConfig(plan={"channels": entries}) if entries else None


def apply_plans(
    model: onnx.ModelProto, unit_cfgs: dict[str, UnitPruneConfig], channels_cfg: SliceChannelsConfig | None
) -> tuple[onnx.ModelProto, list[PassReport]]:
    """Cut each unit kind in turn (each pass finds its units again on the model the previous one wrote), then the
    conv channels."""
    current, steps = model, []
    for kind in TRANSFORMER:
        if kind in unit_cfgs:
            current, rep = prune_units(current, kind, unit_cfgs[kind], f"{PASS_NAME}:{kind}")
            steps.append(rep)
    if channels_cfg is not None:
        current, rep = prune_channels(current, channels_cfg)
        steps.append(rep)
    return current, steps


def _fraction(
    problem: Problem, factors_of: Callable[[Sequence[str]], list[Factor]], counts: Mapping[str, int]
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
    problem: Problem, config: CompressConfig, factors_of: Callable[[Sequence[str]], list[Factor]]
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
        plan = plan_of(problem, {ly.name: select_top(ly.scores, counts[ly.name]) for ly in layers})
        cut, _ = problem.apply(plan)
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
class Problem:
    """What a budget is allocated over, found once per input model (re-planning for another target reuses it)."""

    model: onnx.ModelProto  # the canonical form the plan's unit ids and groups refer to
    layers: list[Layer]
    units: dict[str, PruneUnit]  # budget layer name -> unit group, of every kind
    skipped: list[tuple[str, str]]
    flops: CostModel
    params: CostModel
    latency: CostModel | None
    notes: list[str]
    latency_table: Any = None

    def apply(
        self, plan: CompressPlan, model: onnx.ModelProto | None = None
    ) -> tuple[onnx.ModelProto, list[PassReport]]:
        """What the passes write for ``plan`` on ``model`` (default: the canonical form), kind by kind, each
        finding its units again."""
        sizes = {u.id: u.count for u in self.units.values() if u.kind == "channels"}
        return apply_plans(self.model if model is None else model, _unit_configs(plan), _channels_config(plan, sizes))


def discover(model: onnx.ModelProto, config: CompressConfig) -> Problem:
    """Canonicalize ``model``, find every prunable unit of the kinds in ``config.units``, score them, and build the
    cost models (and, for a latency budget, the measured table)."""
    metric = _metric(config)[0]
    budget = BudgetConfig(target=1.0, metric=metric, floor=config.floor)
    model = canonicalize(model)
    stats = graph_stats(model)
    view = analysis_view(model)
    layers: list[Layer] = []
    skipped: list[tuple[str, str]] = []
    notes: list[str] = []
    units: list[tuple[str, PruneUnit]] = []
    for kind in ORDER:
        if kind in config.units:
            ly, named, sk = _unit_layers(view, kind, config, budget, _unit_axes(units), notes)
            layers += ly
            units += named
            skipped += sk
    flop_terms, param_terms = cost_terms(model, view, units, stats)
    if not layers:
        raise PassError(
            "nothing to compress: the model has no prunable heads, head channels, neurons, widths or conv channels "
            "in scope."
        )
    sizes = {ly.name: ly.size for ly in layers}
    problem = Problem(
        model, layers, dict(units), skipped, CostModel(flop_terms, sizes), CostModel(param_terms, sizes), None, notes
    )
    if metric == "latency":
        factors_of = tensor_factors(units)
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


def plan_of(problem: Problem, keep: dict[str, list[int]]) -> CompressPlan:
    """The plan that keeps ``keep[layer]`` of each named budget layer (and all of the others)."""
    out = CompressPlan()
    for ly in problem.layers:
        kept = keep.get(ly.name)
        if kept is not None and len(kept) < ly.size:
            unit = problem.units[ly.name]
            out.units.setdefault(unit.kind, {})[unit.id] = list(kept)
    return out


def cut_one_layer(problem: Problem, name: str, kept: list[int]) -> onnx.ModelProto:
    """The model with budget layer ``name`` alone cut to ``kept``, for measuring its damage: the layer's group is
    rewritten on the canonical model where it was found, by the rewrite the passes use, without finding every group
    again or checking the result (the final plan still goes through the passes). About 3x faster per cut than applying
    a one-layer plan with the passes, and the same model (tests/passes/test_importance.py)."""
    unit = problem.units[name]
    out = apply_cuts(problem.model, [unit], {unit.id: kept})[0]
    del out.graph.value_info[:]  # the cut tensors' shapes changed: onnxruntime infers them
    return out


def _measure_sensitivity(problem: Problem, config: CompressConfig, budget: BudgetConfig) -> None:
    """Give every layer its measured damage curve (:mod:`passes._core.importance`)."""
    floors = {ly.name: min(ly.size, max(ly.floor, budget.floor_of(ly.size))) for ly in problem.layers}

    def cut(ly: Layer, kept: list[int]) -> onnx.ModelProto:
        return cut_one_layer(problem, ly.name, kept)

    start = time.perf_counter()
    curves, points = measure_damage(
        problem.model,
        problem.layers,
        floors,
        cut,
        config.calib or [],
        config.threads,
        problem.units,
        config.damage_points,
    )
    for ly in problem.layers:
        ly.damage = curves[ly.name]
    most = max((len(p) for p in points.values()), default=0)
    problem.notes.append(
        f"sensitivity: {len(problem.layers)} layers, {sum(len(p) for p in points.values())} single-layer cuts "
        f"(at most {most} per layer) measured on {len(config.calib or [])} image(s) in "
        f"{time.perf_counter() - start:.0f} s (output KL divergence from the uncut model)"
    )


def allocate_plan(problem: Problem, config: CompressConfig) -> CompressPlan:
    """Choose kept units of every layer of ``problem`` for the budget of ``config``."""
    metric, target = _metric(config)
    method = config.allocation or ("halp" if metric == "latency" or config.importance == "sensitivity" else "lamp")
    budget = BudgetConfig(target=target, metric=metric, method=method, floor=config.floor)
    alloc = allocate(problem.layers, problem.flops, problem.params, budget, problem.latency)
    out = plan_of(problem, alloc.keep)
    out.allocation, out.layers = alloc, problem.layers
    out.latency_table, out.notes = problem.latency_table, list(problem.notes)
    return out


def plan_compress(model: onnx.ModelProto, config: CompressConfig) -> tuple[CompressPlan, list[tuple[str, str]]]:
    """Choose kept units of every kind in ``config.units`` for the budget; return the plan and skipped units."""
    config.validate()
    problem = discover(model, config)
    return allocate_plan(problem, config), problem.skipped
