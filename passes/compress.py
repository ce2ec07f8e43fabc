"""One command for a structural plan: attention heads, MLP neurons and conv channels against one global budget.

``python -m passes.compress model.onnx -o out.onnx --target-flops 0.2 [--units heads,neurons,channels]``

All prunable units of the model become layers of one budget (:mod:`passes._core.budget`): the heads of each
attention block (:func:`passes._core.units.find_units`), the hidden neurons of each transformer MLP, and the
channels of each conv channel group (:mod:`passes._core.channels`). The cost model is exact for all three::

    FLOPs(k) = sum_nodes base_n * prod(kept fractions of the channel groups on the node's axes)
               + sum_blocks flops_per_unit_b * (k_b - count_b)

(heads and neurons scale their block's FLOPs linearly; no channel group reaches into a transformer, so the terms
do not overlap). LAMP (default) ranks every unit of every kind on one scale (its score is normalised within its
layer), removes the lowest until the target is met; uniform keeps one fraction everywhere. The cuts are then
applied in order, heads -> neurons -> channels, each by its own pass, so the output holds one combined
``vitseg.plan`` (heads, neurons, channels and the torch ``slices``) for the torch side to rebuild.
``--plan`` applies such a combined plan (from a JSON file or a model) instead.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from fileformat.cli import cli_main
from fileformat.errors import PassError, UsageError
from fileformat.metadata import append_history
from passes._core.budget import Allocation, BudgetConfig, CostModel, Layer, Term, allocate
from passes._core.canonical import canonicalize
from passes._core.channels import ChannelAnalysis
from passes._core.cli import make_parser, run_pass_cli
from passes._core.report import PassReport
from passes._core.stats import graph_stats
from passes.slice_channels import (
    IMPORTANCES,
    SCOPES,
    SliceChannelsConfig,
    add_budget_args,
    channel_terms,
    group_importance,
    load_plan_arg,
    slice_channels,
)

PASS_NAME = "compress"
KINDS = ("heads", "neurons", "channels")


@dataclass
class CompressConfig:
    """A budget (``target_flops`` or ``target_params``) or a combined ``plan``; which unit kinds take part."""

    target_flops: float | None = None
    target_params: float | None = None
    plan: dict[str, Any] | None = None
    units: tuple[str, ...] = KINDS
    allocation: str = "lamp"
    floor: float = 0.1
    scope: str = "all"
    importance: str = "l2"

    def validate(self) -> None:
        given = [n for n in ("target_flops", "target_params", "plan") if getattr(self, n) is not None]
        if len(given) != 1:
            raise UsageError("give exactly one of --target-flops, --target-params or --plan.")
        for name in ("target_flops", "target_params"):
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
        if self.importance not in IMPORTANCES:
            raise UsageError(f"--importance {self.importance!r}: use one of {', '.join(IMPORTANCES)}.")
        if self.allocation not in ("lamp", "uniform"):
            raise UsageError(f"--allocation {self.allocation!r}: use lamp or uniform.")
        if not 0.0 <= self.floor < 1.0:
            raise UsageError(f"--floor {self.floor}: the per-layer minimum kept fraction must be in [0, 1).")


@dataclass
class CompressPlan:
    """Kept indices (of the input model) per head block, MLP and channel group (by their names)."""

    heads: dict[str, list[int]] = field(default_factory=dict)
    neurons: dict[str, list[int]] = field(default_factory=dict)
    channels: dict[str, dict[str, Any]] = field(default_factory=dict)
    allocation: Allocation | None = None
    layers: list[Layer] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _unit_axes(model: onnx.ModelProto, kinds: Sequence[str]) -> dict[tuple[str, int], str]:
    """``{(weight, axis): "<kind> of <unit>"}`` for every weight axis a prunable head block or MLP cuts."""
    from passes._core.units import find_units

    out: dict[tuple[str, int], str] = {}
    for kind in kinds:
        for u in find_units(model, kind):
            if u.prunable and u.group is not None:
                for ts in u.group.slices.values():
                    out[(ts.tensor, ts.axis)] = f"{kind} of {u.id}"
    return out


def _unit_layers(
    model: onnx.ModelProto, kind: str, config: CompressConfig, budget: BudgetConfig
) -> tuple[list[Layer], list[Term], list[Term], list[str]]:
    """Budget layers and cost terms of the head blocks or MLPs (skipped units are listed for the report)."""
    from passes._core.units import find_units, importance

    units = find_units(model, kind)
    prunable = [u for u in units if u.prunable]
    skipped = [f"{u.id}: {u.skip_reason}" for u in units if not u.prunable]
    norm = config.importance if config.importance in ("l1", "l2") else "l2"
    scores = importance(model, prunable, norm) if prunable else {}
    layers, flops, params = [], [], []
    for u in prunable:
        name = f"{kind}:{u.id}"
        layers.append(Layer(name, np.asarray(scores[u.id]), budget.floor_of(u.count), kind=kind, scope="backbone"))
        f = float(u.flops_per_unit * u.count)
        p = float(u.params_per_unit * u.count)
        flops += [Term(f, (((name, u.count),),)), Term(-f)]  # replaces the block's share of the node terms
        params += [Term(p, (((name, u.count),),)), Term(-p)]
    return layers, flops, params, skipped


def plan_compress(model: onnx.ModelProto, config: CompressConfig) -> tuple[CompressPlan, list[tuple[str, str]]]:
    """Choose kept units of every kind in ``config.units`` for the budget; return the plan and skipped units."""
    config.validate()
    metric = "flops" if config.target_flops is not None else "params"
    target = config.target_flops if config.target_flops is not None else config.target_params
    budget = BudgetConfig(target=float(target), metric=metric, method=config.allocation, floor=config.floor)  # type: ignore[arg-type]
    model = canonicalize(model)
    stats = graph_stats(model)
    layers: list[Layer] = []
    skipped: list[tuple[str, str]] = []
    out = CompressPlan()
    analysis = ChannelAnalysis(model)
    claimed = _unit_axes(model, [k for k in ("heads", "neurons") if k in config.units])
    if claimed and "channels" in config.units:
        analysis.block_axes(claimed)
    names: dict[int, str] = {}
    groups = analysis.prunable(config.scope) if "channels" in config.units else []
    if groups:
        scores = group_importance(analysis, groups, config.importance, out.notes)
        for g in groups:
            names[g.gid] = f"channels:{g.name}"
            layers.append(Layer(names[g.gid], scores[g.gid], budget.floor_of(g.size), kind="channels", scope=g.scope))
    for g in analysis.groups:
        if g.blocked and "channels" in config.units:
            skipped.append((g.name, "; ".join(g.blocked)))
    flop_terms, param_terms = channel_terms(model, analysis, names, stats)
    for kind in ("heads", "neurons"):
        if kind not in config.units:
            continue
        ly, ft, pt, sk = _unit_layers(model, kind, config, budget)
        layers += ly
        flop_terms += ft
        param_terms += pt
        skipped += [(s.split(": ", 1)[0], s.split(": ", 1)[1]) for s in sk]
    if not layers:
        raise PassError("nothing to compress: the model has no prunable heads, neurons or conv channels in scope.")
    sizes = {ly.name: ly.size for ly in layers}
    alloc = allocate(layers, CostModel(flop_terms, sizes), CostModel(param_terms, sizes), budget)
    by_gid = {names[g.gid]: g for g in groups}
    for ly in layers:
        kept = alloc.keep[ly.name]
        kind, _, uid = ly.name.partition(":")
        if len(kept) == ly.size:
            continue
        if kind == "heads":
            out.heads[uid] = kept
        elif kind == "neurons":
            out.neurons[uid] = kept
        else:
            out.channels[by_gid[ly.name].name] = {"kept": kept, "total": ly.size}
    out.allocation = alloc
    out.layers = layers
    return out, skipped


def compress(model: onnx.ModelProto, config: CompressConfig) -> tuple[onnx.ModelProto, PassReport]:
    """Prune heads, then neurons, then channels of ``model`` to one budget (or a combined plan)."""
    from passes.prune_heads import PruneHeadsConfig, prune_heads
    from passes.slice_neurons import SliceNeuronsConfig, slice_neurons

    config.validate()
    before = graph_stats(model)
    report = PassReport(PASS_NAME, params_before=before.params, flops_before=before.flops)
    if config.plan is not None:
        heads_cfg = PruneHeadsConfig(plan=config.plan) if config.plan.get("heads") else None
        neurons_cfg = SliceNeuronsConfig(plan=config.plan) if config.plan.get("neurons") else None
        channels_cfg = SliceChannelsConfig(plan=config.plan) if config.plan.get("channels") else None
        if heads_cfg is None and neurons_cfg is None and channels_cfg is None:
            raise PassError("the plan has no heads, neurons or channels entries; nothing to apply.")
        chosen: CompressPlan | None = None
    else:
        chosen, skipped = plan_compress(model, config)
        for where, reason in skipped:
            report.skip(where, reason)
        report.notes.extend(chosen.notes)
        heads_cfg = PruneHeadsConfig(keep_sets=chosen.heads) if chosen.heads else None
        neurons_cfg = SliceNeuronsConfig(keep_sets=chosen.neurons) if chosen.neurons else None
        channels_cfg = SliceChannelsConfig(plan={"channels": chosen.channels}) if chosen.channels else None
    current = model
    steps = []
    if heads_cfg is not None:
        current, rep = prune_heads(current, heads_cfg)
        steps.append(rep)
    if neurons_cfg is not None:
        current, rep = slice_neurons(current, neurons_cfg)
        steps.append(rep)
    if channels_cfg is not None:
        current, rep = slice_channels(current, channels_cfg)
        steps.append(rep)
    if current is model:
        current = onnx.ModelProto()
        current.CopyFrom(model)
    after = graph_stats(current) if steps else before
    report.modified = any(r.modified for r in steps)
    report.params_after, report.flops_after = after.params, after.flops
    report.columns = ["layer", "kind", "units", "kept", "floor"]
    if chosen is not None and chosen.allocation is not None:
        alloc = chosen.allocation
        for ly in chosen.layers:
            kept = alloc.counts[ly.name]
            report.rows.append(
                {
                    "layer": ly.name.partition(":")[2],
                    "kind": ly.kind,
                    "units": ly.size,
                    "kept": kept,
                    "floor": "yes" if ly.name in alloc.at_floor else "",
                }
            )
        measured = after.flops / before.flops if alloc.metric == "flops" else after.params / before.params
        report.extra["budget"] = {
            "metric": alloc.metric,
            "method": alloc.method,
            "target": alloc.target,
            "estimated": alloc.achieved,
            "achieved": measured,
            "reached": alloc.reached,
            "at_floor": alloc.at_floor,
        }
        by_kind = {k: sum(1 for ly in chosen.layers if ly.kind == k) for k in KINDS}
        report.notes.append(
            f"budget ({alloc.method}) over {by_kind['heads']} attention blocks, {by_kind['neurons']} MLPs and "
            f"{by_kind['channels']} channel groups: {alloc.metric} target {alloc.target:.3f}, achieved "
            f"{measured:.3f} (graph count; estimate {alloc.achieved:.3f})"
        )
        if not alloc.reached:
            report.notes.append(
                "target not reached: the per-layer floors stopped it; layers at their floor: "
                + (", ".join(n.partition(":")[2] for n in alloc.at_floor) or "none (nothing left to cut)")
            )
    for r in steps:
        report.notes.append(
            f"{r.pass_name}: {'modified' if r.modified else 'unchanged'}, FLOPs {r.flops_before:,} -> {r.flops_after:,}"
        )
    report.extra["steps"] = [r.pass_name for r in steps]
    if report.modified:
        append_history(
            current,
            {
                "pass": PASS_NAME,
                "target_flops": config.target_flops,
                "target_params": config.target_params,
                "allocation": config.allocation,
                "units": list(config.units),
                "flops": [before.flops, after.flops],
                "params": [before.params, after.params],
            },
        )
    return current, report


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(f"python -m passes.{PASS_NAME}", (__doc__ or "").split("\n\n")[0])
    add_budget_args(parser)
    parser.add_argument("--plan", help="apply a combined plan (JSON, or a model holding vitseg.plan) instead")
    parser.add_argument(
        "--units", default=",".join(KINDS), help="which unit kinds take part, comma-separated (all three)"
    )
    parser.add_argument("--scope", choices=SCOPES, default="all", help="which part may lose conv channels")
    parser.add_argument("--importance", choices=IMPORTANCES, default="l2", help="unit importance (bn_scale: channels)")
    return parser


def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    config = CompressConfig(
        target_flops=args.target_flops,
        target_params=args.target_params,
        plan=load_plan_arg(args.plan) if args.plan else None,
        units=tuple(u.strip() for u in args.units.split(",") if u.strip()),
        allocation=args.allocation,
        floor=args.floor,
        scope=args.scope,
        importance=args.importance,
    )
    return compress(model, config)


@cli_main("python -m passes.compress")
def main(argv: Sequence[str] | None = None) -> int:
    return run_pass_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
