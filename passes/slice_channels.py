"""Remove output channels of convolution layers and everything coupled to them.

``python -m passes.slice_channels model.onnx -o out.onnx --target-flops 0.25 [--scope decoder]``

Without ``--ratio``, ``--plan``, ``--target-flops`` or ``--target-params`` it removes half of each group's channels
(``--ratio 0.5``) and says how many went.

The channel groups come from :mod:`passes._core.channels` (a conv's output channels followed through BN, activations,
depthwise convs, residual sums, Concat offsets, Resize and pooling to the next layer's input channels). How many
channels each group keeps is one of:

* ``--ratio R``: every group in scope loses ``floor(R * C)`` of its ``C`` channels (``R`` in [0, 1));
* ``--target-flops F`` / ``--target-params P``: keep the fraction ``F`` of the model's FLOPs (or ``P`` of its
  parameters), with per-layer amounts from LAMP (default) or a uniform ratio, never below ``--floor`` of a layer;
* ``--plan plan.json`` (or a model whose ``vitseg.plan`` to reuse): the ``channels`` section names, per conv module
  path, the kept channel indices of the input model.

Which channels a group keeps: the highest importance, ``l2`` (default) / ``l1`` norm of the group's filters summed
over its source layers, or ``bn_scale`` (``|gamma|`` of an unfolded BatchNormalization; exporters that fold BN into
the conv fall back to ``l2`` with a note). The model's input and its outputs are never cut. The plan (``channels``
and torch-layout ``slices``, folded BN statistics included) is merged into the model's ``vitseg.plan``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from fileformat.args import unit_interval
from fileformat.cli import cli_main
from passes._parser import DEFAULT_RATIO, IMPORTANCES, SCOPES, add_budget_args, make_parser, parse_early

PASS_NAME = "slice_channels"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(f"python -m passes.{PASS_NAME}", (__doc__ or "").split("\n\n")[0])
    parser.add_argument(
        "--ratio",
        type=unit_interval,
        help=f"fraction of each group's channels to remove, in [0, 1) (no --ratio, --plan or --target-* given: "
        f"{DEFAULT_RATIO})",
    )
    parser.add_argument("--plan", help="plan JSON (or a model holding vitseg.plan) whose 'channels' to apply")
    add_budget_args(parser)
    parser.add_argument("--scope", choices=SCOPES, default="all", help="which part of the model may lose channels")
    parser.add_argument(
        "--importance", choices=IMPORTANCES, default="l2", help="channel importance: filter norm or |BN gamma|"
    )
    return parser


parse_early(__name__, build_parser)  # --help and argument errors answer before onnx and the engine load

import numpy as np
import onnx

from fileformat.errors import PassError, UsageError
from fileformat.metadata import append_history
from fileformat.plan import check_indices, read_plan, write_plan
from passes._core.budget import Allocation, BudgetConfig, CostModel, Layer, allocate
from passes._core.canonical import canonicalize, merge_constants
from passes._core.channels import ChannelAnalysis, ChannelGroup, CutResult, apply_channel_cuts, keep_top
from passes._core.cli import run_pass_cli, unit_headline
from passes._core.cost import cost_terms
from passes._core.dims import unit_positions
from passes._core.finalize import finalize
from passes._core.graph import GraphView
from passes._core.importance import channel_group_scores
from passes._core.report import PassReport
from passes._core.stats import GraphStats, graph_stats

log = logging.getLogger(__name__)


@dataclass
class SliceChannelsConfig:
    """Exactly one of ``ratio``, ``plan``, ``target_flops``, ``target_params``; the rest tune the choice."""

    ratio: float | None = None
    plan: dict[str, Any] | None = None
    target_flops: float | None = None
    target_params: float | None = None
    allocation: str = "lamp"
    floor: float = 0.1
    scope: str = "all"
    importance: str = "l2"

    def validate(self) -> None:
        modes = [m for m in ("ratio", "plan", "target_flops", "target_params") if getattr(self, m) is not None]
        if len(modes) != 1:
            raise UsageError(
                "give exactly one of --ratio, --plan, --target-flops, --target-params"
                + (f" (got {', '.join(modes)})" if modes else "")
            )
        if self.ratio is not None and not 0.0 <= self.ratio < 1.0:
            raise UsageError(
                f"--ratio {self.ratio}: the fraction of each layer's channels to remove must be in [0, 1) "
                "(0 keeps everything; 1 would empty the layers)."
            )
        for name in ("target_flops", "target_params"):
            v = getattr(self, name)
            if v is not None and not 0.0 < v <= 1.0:
                raise UsageError(
                    f"--{name.replace('_', '-')} {v}: the fraction of the model to keep must be in (0, 1] "
                    "(e.g. 0.25 keeps a quarter)."
                )
        if self.scope not in SCOPES:
            raise UsageError(f"--scope {self.scope!r}: use one of {', '.join(SCOPES)}.")
        if self.importance not in IMPORTANCES:
            raise UsageError(f"--importance {self.importance!r}: use one of {', '.join(IMPORTANCES)}.")
        if self.allocation not in ("lamp", "uniform"):
            raise UsageError(f"--allocation {self.allocation!r}: use lamp or uniform.")
        if not 0.0 <= self.floor < 1.0:
            raise UsageError(f"--floor {self.floor}: the per-layer minimum kept fraction must be in [0, 1).")


# ---------------------------------------------------------------------------------------------------- building blocks
def channel_layers(
    groups: Sequence[ChannelGroup], scores: Mapping[int, np.ndarray], budget: BudgetConfig
) -> list[Layer]:
    """One budget layer per channel group, named by the group's first source module path."""
    return [
        Layer(g.name, np.asarray(scores[g.gid]), budget.floor_of(g.size), kind="channels", scope=g.scope)
        for g in groups
    ]


def plan_keep(analysis: ChannelAnalysis, plan: Mapping[str, Any]) -> dict[int, list[int]]:
    """Kept channels per group from a plan's ``channels`` section (indices relative to the analysed model).

    An entry names a group (by its name: kept channel indices of the group), or any conv or linear layer the group
    carries (kept output positions of that layer, ``total`` its output channels; a layer at a concatenation's
    input may hold several groups). Raises :class:`PassError` for a layer the model does not have, a total that
    differs, indices out of range, a layer whose group cannot be cut, or two layers of one group (a residual sum)
    that disagree.
    """
    entries = dict(plan.get("channels") or {})
    if not entries:
        raise PassError("the plan has no 'channels' entries; nothing to apply (expected {'channels': {...}}).")
    layers = analysis.layer_index()
    names = {g.name: g for g in analysis.groups}
    keep: dict[int, list[int]] = {}
    origin: dict[int, str] = {}
    for path, entry in entries.items():
        if path in names:
            g = names[path]
            places = [(g, None, None)]
            size = g.size
        elif path in layers:
            places = layers[path]  # type: ignore[assignment]
            _, tensor, axis = places[0]
            size = analysis.view.shape(tensor)[axis]  # type: ignore[index]
        else:
            known = ", ".join(sorted(layers)[:8])
            raise PassError(
                f"plan/model mismatch: the plan cuts layer {path!r}, which this model has no conv group for "
                f"(layers here include: {known} ...). Was the plan made for another model?"
            )
        total = int(entry.get("total", size))
        if total != size:
            raise PassError(
                f"plan/model mismatch: layer {path!r} has {size} channels here but the plan says {total}. "
                "Apply the plan to the model it was made for (indices are relative to the input model)."
            )
        kept = set(check_indices(f"plan: layer {path!r}", entry.get("kept", []), size, "distinct channel indices"))
        for g, tensor, _ in places:
            if g.blocked:
                raise PassError(f"plan: layer {path!r} cannot be cut: {'; '.join(g.blocked)}.")
            if tensor is None:
                units = sorted(kept)
            else:  # the group's units whose positions in this layer are all kept
                layout = g.group.slices[tensor].layout  # type: ignore[union-attr]
                units = [u for u in range(g.size) if set(unit_positions(layout, [u]).tolist()) <= kept]
            if g.gid in keep and keep[g.gid] != units:
                raise PassError(
                    f"plan: layers {origin[g.gid]!r} and {path!r} feed one residual sum and must keep the same "
                    "channels."
                )
            keep[g.gid] = units
            origin[g.gid] = path
    return keep


def load_plan_arg(value: str) -> dict[str, Any]:
    """``--plan``: a JSON plan file, or an ONNX model whose stored plan to reuse."""
    p = Path(value)
    if not p.is_file():
        raise PassError(f"--plan {value}: no such file (give a plan JSON or a model holding vitseg.plan).")
    if p.suffix == ".onnx":
        try:
            return read_plan(onnx.load(str(p), load_external_data=False))
        except Exception as exc:  # noqa: BLE001 - any parse failure is the same user error
            raise PassError(f"--plan {value}: not a readable ONNX model ({exc}).") from exc
    try:
        plan = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as exc:
        raise PassError(f"--plan {value}: not a JSON plan ({exc}).") from exc
    if not isinstance(plan, dict):
        raise PassError(f"--plan {value}: a plan is a JSON object with a 'channels' section.")
    return plan


# ---------------------------------------------------------------------------------------------------- the pass
@dataclass
class ChannelDecision:
    """What to cut, before cutting: kept channels per group and, for a budget, the allocation."""

    analysis: ChannelAnalysis
    groups: list[ChannelGroup]
    keep: dict[int, list[int]]
    allocation: Allocation | None
    notes: list[str]


def decide_channels(model: onnx.ModelProto, config: SliceChannelsConfig, stats: GraphStats) -> ChannelDecision:
    """Analyse ``model`` (in canonical form) and choose the kept channels of every group in scope (no graph change
    yet)."""
    config.validate()
    analysis = ChannelAnalysis(model, GraphView(model))
    notes: list[str] = []
    if config.plan is not None:
        keep = plan_keep(analysis, config.plan)
        return ChannelDecision(analysis, [analysis.by_gid[g] for g in keep], keep, None, notes)
    groups = analysis.prunable(config.scope)
    if not groups:
        notes.append(f"no prunable channel group in scope {config.scope!r}")
        return ChannelDecision(analysis, [], {}, None, notes)
    scores = channel_group_scores(groups, config.importance, notes)
    if config.ratio is not None:
        keep = {}
        for g in groups:
            count = max(1, g.size - int(np.floor(config.ratio * g.size + 1e-9)))
            keep[g.gid] = keep_top(scores[g.gid], count)
        return ChannelDecision(analysis, groups, keep, None, notes)
    metric = "flops" if config.target_flops is not None else "params"
    budget = BudgetConfig(
        target=float(config.target_flops if config.target_flops is not None else config.target_params),  # type: ignore[arg-type]
        metric=metric,
        method=config.allocation,
        floor=config.floor,
    )
    layers = channel_layers(groups, scores, budget)
    flop_terms, param_terms = cost_terms(model, analysis.view, [(g.name, g) for g in groups], stats)
    sizes = {ly.name: ly.size for ly in layers}
    alloc = allocate(layers, CostModel(flop_terms, sizes), CostModel(param_terms, sizes), budget)
    by_name = {g.name: g.gid for g in groups}
    keep = {by_name[name]: kept for name, kept in alloc.keep.items()}
    return ChannelDecision(analysis, groups, keep, alloc, notes)


def slice_channels(
    model: onnx.ModelProto, config: SliceChannelsConfig | None = None
) -> tuple[onnx.ModelProto, PassReport]:
    """Cut conv channels of ``model`` as ``config`` says; return the new model and the report (input untouched)."""
    config = config or SliceChannelsConfig(ratio=0.0)
    original, model = model, canonicalize(model)
    stats = graph_stats(model)
    decision = decide_channels(model, config, stats)
    report = PassReport(PASS_NAME, params_before=stats.params, flops_before=stats.flops)
    report.notes.extend(decision.notes)
    if not decision.analysis.prunable(config.scope) and config.plan is None:
        report.nothing_to_do = f"nothing to prune: no conv channel group in scope {config.scope!r} can be cut"
    for g in decision.analysis.groups:
        if g.blocked and (config.scope == "all" or g.scope == config.scope):
            report.skip(g.name, "; ".join(g.blocked))
    cut = {gid: kept for gid, kept in decision.keep.items() if len(kept) < decision.analysis.by_gid[gid].size}
    out, result = _apply(decision.analysis, cut) if cut else (_copy(original), CutResult())
    after = graph_stats(out) if cut else stats
    report.modified = bool(cut)
    report.params_after, report.flops_after = after.params, after.flops
    report.columns = ["layer", "kind", "scope", "channels", "kept", "flops_before", "flops_after"]
    report.rows = _rows(decision, stats, after)
    report.extra["config"] = {k: v for k, v in asdict(config).items() if k != "plan"}
    report.extra["plan"] = {"channels": result.channels, "slices": result.slices} if cut else {}
    _budget_notes(report, decision.allocation, stats, after)
    if cut:
        append_history(
            out,
            {
                "pass": PASS_NAME,
                "config": report.extra["config"],
                "groups_cut": len(cut),
                "flops": [stats.flops, after.flops],
                "params": [stats.params, after.params],
            },
        )
    return out, report


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    return out


def _apply(analysis: ChannelAnalysis, cut: Mapping[int, list[int]]) -> tuple[onnx.ModelProto, CutResult]:
    """Cut the analysed model, merge the plan into its ``vitseg.plan``, finalize."""
    out, result = apply_channel_cuts(analysis.model, analysis, cut)
    write_plan(out, {"channels": result.channels, "slices": result.slices})
    return finalize(merge_constants(out)), result


def _rows(decision: ChannelDecision, before: GraphStats, after: GraphStats) -> list[dict[str, Any]]:
    """Per group: channels before/after and the measured FLOPs of its source layers (by node name)."""
    rows = []
    at_floor = set(decision.allocation.at_floor) if decision.allocation else set()
    nodes = decision.analysis.model.graph.node
    for g in decision.groups:
        kept = len(decision.keep.get(g.gid, range(g.size)))
        names = [nodes[i].name for i in g.source_nodes]
        fb = sum(before.node_flops.get(n, 0) for n in names)
        fa = sum(after.node_flops.get(n, 0) for n in names)
        rows.append(
            {
                "layer": g.name + (f" (+{len(g.layers) - 1})" if len(g.layers) > 1 else ""),
                "kind": g.role,
                "scope": g.scope,
                "channels": g.size,
                "kept": kept if g.name not in at_floor else f"{kept} (floor)",
                "flops_before": fb,
                "flops_after": fa,
            }
        )
    return rows


def _budget_notes(report: PassReport, alloc: Allocation | None, before: GraphStats, after: GraphStats) -> None:
    if alloc is None:
        return
    measured = (
        (after.flops / before.flops if before.flops else 1.0)
        if alloc.metric == "flops"
        else (after.params / before.params if before.params else 1.0)
    )
    report.extra["budget"] = {
        "metric": alloc.metric,
        "method": alloc.method,
        "target": alloc.target,
        "estimated": alloc.achieved,
        "achieved": measured,
        "reached": alloc.reached,
        "at_floor": alloc.at_floor,
    }
    report.notes.append(
        f"budget ({alloc.method}): {alloc.metric} target {alloc.target:.3f} of the input model, achieved "
        f"{measured:.3f} (graph count; estimate {alloc.achieved:.3f})"
    )
    if not alloc.reached:
        report.notes.append(
            f"target not reached: the per-layer floors stopped it; layers at their floor: {', '.join(alloc.at_floor)}"
            if alloc.at_floor
            else "target not reached: the prunable groups in scope cannot remove more"
        )


# ---------------------------------------------------------------------------------------------------- CLI
def _run(model: onnx.ModelProto, args: argparse.Namespace) -> tuple[onnx.ModelProto, PassReport]:
    amounts = (args.ratio, args.plan, args.target_flops, args.target_params)
    config = SliceChannelsConfig(
        ratio=DEFAULT_RATIO if all(a is None for a in amounts) else args.ratio,
        plan=load_plan_arg(args.plan) if args.plan else None,
        target_flops=args.target_flops,
        target_params=args.target_params,
        allocation=args.allocation,
        floor=args.floor,
        scope=args.scope,
        importance=args.importance,
    )
    new, report = slice_channels(model, config)
    headline = unit_headline(report, "channels", "groups", "channels", "kept")
    if headline:
        report.extra["headline"] = headline
    return new, report


@cli_main("python -m passes.slice_channels")
def main(argv: Sequence[str] | None = None) -> int:
    return run_pass_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
