"""What a pass does with the units it found: choose what each group keeps (a count, a ratio, a plan, a budget), cut
them (:func:`passes._core.cut.apply_cuts`), record the plan and report. :func:`prune_units` runs a pass over one
transformer unit kind (``prune_heads``, ``slice_neurons``, ``slice_width``); :func:`prune_channels` over conv
channel groups (``slice_channels``); ``compress`` applies a combined plan through both.

Indices: ``keep_sets`` are relative to the model given (its current units); plans (``vitseg.plan`` and ``--plan``
files) are relative to the original unpruned model and are translated with the model's stored plan, so applying
the same plan twice changes nothing the second time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from fileformat.errors import PassError, UsageError
from fileformat.metadata import append_history
from fileformat.params import count_params
from fileformat.plan import QK_SUFFIX, check_indices, read_plan, write_plan
from passes._core.budget import Allocation, BudgetConfig, CostModel, Layer, allocate, select_top
from passes._core.canonical import canonicalize, merge_constants
from passes._core.channels import find_channels, in_scope
from passes._core.cost import cost_terms
from passes._core.cut import apply_cuts, layer_index
from passes._core.defaults import CHANNEL_METHODS, NORMS, SCOPES
from passes._core.dims import unit_positions
from passes._core.finalize import finalize
from passes._core.graph import analysis_view, copy_model
from passes._core.importance import importance
from passes._core.kinds import KINDS
from passes._core.report import PassReport
from passes._core.stats import GraphStats, graph_stats
from passes._core.unit import ChannelGroup, PruneUnit, keep_count
from passes._core.units import find_units, not_mlps


# ----------------------------------------------------------------------------------------------- unit passes
@dataclass(frozen=True)
class UnitPruneConfig:
    """How many units each block keeps; exactly one of ``keep``, ``ratio``, ``keep_sets``, ``plan``.

    ``keep``: units kept per block (1 .. count). ``ratio``: fraction removed per block, in [0, 1).
    ``keep_sets``: ``{unit id: kept indices}`` relative to the given model; units not named keep everything.
    ``plan``: a plan in the ``vitseg.plan`` format (or just its section), indices relative to the original model.
    ``norm``: importance for ``keep``/``ratio`` ("l1" or "l2").
    """

    keep: int | None = None
    ratio: float | None = None
    keep_sets: Mapping[str, Sequence[int]] | None = None
    plan: Mapping[str, Any] | None = None
    norm: str = "l2"

    def validate(self) -> None:
        given = [x for x in (self.keep, self.ratio, self.keep_sets, self.plan) if x is not None]
        if len(given) != 1:
            raise UsageError("give exactly one of --keep, --ratio or --plan (keep_sets in the Python API).")
        if self.norm not in NORMS:
            raise UsageError(f"unknown norm {self.norm!r}; use one of {', '.join(NORMS)}.")
        if self.keep is not None and (isinstance(self.keep, bool) or int(self.keep) < 1):
            raise UsageError(f"--keep {self.keep}: every block must keep at least 1; give a count >= 1.")
        if self.ratio is not None and not (0.0 <= float(self.ratio) < 1.0):
            raise UsageError(f"--ratio {self.ratio}: the fraction removed must be in [0, 1).")


def plan_to_keep_sets(model: onnx.ModelProto, plan: Mapping[str, Any], kind: str) -> dict[str, list[int]]:
    """Translate a plan section (indices of the original model) into indices of ``model``'s current units.

    Accepts a full plan (``{"heads": {id: {"kept": [...], "total": n}}}``), a section's entries with bare lists
    (``{"heads": {id: [...]}}``) or just ``{id: [...]}``. Raises :class:`PassError` for an index that an earlier
    pass already removed, or a total that contradicts the model's stored plan.
    """
    section = KINDS[kind].section
    if section in plan:
        entries = plan[section]
    elif any(s in plan for s in ("heads", "neurons", "channels", "slices", "version")):
        raise PassError(f"the plan has no {section!r} section; nothing to apply for this pass.")
    else:
        entries = plan
    if not isinstance(entries, Mapping):
        raise PassError(f"the plan's {section!r} section must map unit ids to kept indices.")
    stored = read_plan(model).get(section, {})
    out: dict[str, list[int]] = {}
    for uid, entry in entries.items():
        kept = entry.get("kept") if isinstance(entry, Mapping) else entry
        prev = stored.get(uid)
        total = int(prev["total"]) if prev else None
        if isinstance(entry, Mapping) and entry.get("total") is not None and total is not None:
            if int(entry["total"]) != total:
                raise PassError(f"{uid}: the plan says {entry['total']} in the original model, the model says {total}.")
        out[uid] = list(kept) if isinstance(kept, (list, tuple)) else kept
        if prev:
            orig = check_indices(uid, kept, total or 0, section)
            gone = [i for i in orig if i not in prev["kept"]]
            if gone:
                raise PassError(f"{uid}: {section} {gone} were already removed by an earlier pass; cannot keep them.")
            out[uid] = [prev["kept"].index(i) for i in orig]
    return out


def fingerprint(model: onnx.ModelProto, units: Sequence[PruneUnit]) -> dict[str, list[int]]:
    """``{unit id: [units in the original model, unit size]}`` of the prunable units: what a plan was made for."""
    stored = read_plan(model)
    out = {}
    for u in units:
        if u.prunable:
            prev = stored.get(KINDS[u.kind].section, {}).get(u.id)
            out[u.id] = [int(prev["total"]) if prev else u.count, u.unit_size]
    return out


def check_fingerprint(model: onnx.ModelProto, units: Sequence[PruneUnit], plan: Mapping[str, Any], kind: str) -> None:
    """Raise :class:`PassError` naming the differences when ``plan`` was made for a model with other units."""
    made_for = (plan.get("fingerprint") or {}).get(KINDS[kind].section) if isinstance(plan, Mapping) else None
    if not made_for:
        return
    here = fingerprint(model, units)
    diffs = []
    for uid in sorted(set(made_for) | set(here)):
        a, b = made_for.get(uid), here.get(uid)
        if a is None:
            diffs.append(f"{uid} is not in the plan's model")
        elif b is None:
            diffs.append(f"{uid} is not prunable in this model")
        elif list(a) != list(b):
            diffs.append(f"{uid}: {a[0]} {kind} of size {a[1]} there, {b[0]} of size {b[1]} here")
    if diffs:
        more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
        raise PassError(
            f"the plan was made for another model: {'; '.join(diffs[:3])}{more}. Make the plan on this model, or "
            "apply it to the model it was made for."
        )


def resolve_keep_sets(
    model: onnx.ModelProto, units: Sequence[PruneUnit], config: UnitPruneConfig
) -> dict[str, list[int]]:
    """Kept indices (current model) for every prunable unit, from the config; raises :class:`PassError`."""
    config.validate()
    prunable = [u for u in units if u.prunable]
    what = units[0].kind if units else "units"
    if config.keep is not None or config.ratio is not None:
        return _by_count(prunable, config, what)
    if config.plan is not None:
        check_fingerprint(model, units, config.plan, what)
    requested = (
        dict(config.keep_sets) if config.keep_sets is not None else plan_to_keep_sets(model, config.plan or {}, what)
    )
    by_id = {u.id: u for u in units}
    if config.plan is not None and what == "head_dim":
        _qk_with_v(requested, by_id)
    out = {u.id: list(range(u.count)) for u in prunable}
    for uid, kept in requested.items():
        if uid not in by_id:
            known = ", ".join(sorted(by_id)) or "none"
            raise PassError(f"unknown block {uid!r} in the plan; this model's blocks are: {known}.")
        u = by_id[uid]
        if not u.prunable:
            raise PassError(f"{uid} cannot be pruned ({u.skip_reason}); remove it from the plan.")
        out[uid] = check_indices(uid, kept, u.count, what)
    return out


def _by_count(prunable: Sequence[PruneUnit], config: UnitPruneConfig, what: str) -> dict[str, list[int]]:
    """``--keep N`` or ``--ratio R``: the highest-scored units of every block (:class:`PassError` for a count above
    a block's)."""
    if config.keep is not None:
        too_few = [u for u in prunable if config.keep > u.count]
        if too_few:
            u = too_few[0]
            more = f" (and {len(too_few) - 1} more blocks)" if len(too_few) > 1 else ""
            raise PassError(
                f"--keep {config.keep} is above the {u.count} {KINDS[what].unit if what in KINDS else what} of {u.id}"
                f"{more}; give at most {min(x.count for x in prunable)}."
            )
    scores = importance(prunable, config.norm)
    out = {}
    for u in prunable:
        n = int(config.keep) if config.keep is not None else keep_count(u.count, float(config.ratio))  # type: ignore[arg-type]
        out[u.id] = select_top(scores[u.id], n)
    return out


def _qk_with_v(requested: dict[str, list[int]], by_id: Mapping[str, PruneUnit]) -> None:
    """A plan made before q/k were apart from v named all three by the block: its q/k group keeps the same."""
    for uid in [u for u in requested if not u.endswith(QK_SUFFIX) and u + QK_SUFFIX not in requested]:
        qk, v = by_id.get(uid + QK_SUFFIX), by_id.get(uid)
        if qk is not None and v is not None and qk.count == v.count:
            requested[qk.id] = list(requested[uid])


# ---------------------------------------------------------------------------------------------------------- run
_COLUMNS = ["block", "before", "after", "unit_size", "params", "params_after", "flops", "flops_after", "kept"]


def prune_units(
    model: onnx.ModelProto, kind: str, config: UnitPruneConfig, pass_name: str
) -> tuple[onnx.ModelProto, PassReport]:
    """Find the units of ``kind``, choose what each keeps from ``config``, rewrite; never mutates ``model``."""
    start = time.perf_counter()
    config.validate()
    original, model = model, canonicalize(model)
    view = analysis_view(model)
    units = find_units(model, kind, view)
    label = KINDS[kind].unit.replace(" ", "_")
    report = PassReport(pass_name=pass_name, columns=list(_COLUMNS))
    report.columns[1:3] = [f"{label}", f"{label}_after"]
    params = count_params(model)
    flops = view.flops()
    report.params_before = report.params_after = params
    report.flops_before = report.flops_after = flops
    for u in units:
        if not u.prunable:
            report.skip(u.id, u.skip_reason or "")
    prunable = [u for u in units if u.prunable]
    if not prunable:
        what = KINDS[kind].group
        if kind == "neurons" and not units:  # say, per linear layer, why it does not start an MLP
            for where, why in not_mlps(model, view):
                report.skip(where, f"not an MLP's fc1: {why}")
        found_from = KINDS[kind].found_from
        report.nothing_to_do = (
            f"nothing to prune: no {what} found (it is found from {found_from})"
            if not units
            else f"nothing to prune: every {what} was skipped (the reasons are listed above)"
        )
        report.notes.append(report.nothing_to_do)
        if config.keep_sets or config.plan:
            resolve_keep_sets(model, units, config)  # still reject plans naming blocks this model lacks
        return copy_model(original), report
    keep_sets = resolve_keep_sets(model, units, config)
    new, plan = apply_cuts(model, units, keep_sets)
    changed = plan.get(KINDS[kind].section, {})
    removed_flops = 0
    for u in prunable:
        k = len(keep_sets[u.id])
        removed_flops += (u.count - k) * u.flops_per_unit
        report.rows.append(
            {
                "block": u.id,
                label: u.count,
                f"{label}_after": k,
                "unit_size": u.unit_size,
                "params": u.params,
                "params_after": u.params_per_unit * k,
                "flops": u.flops,
                "flops_after": u.flops_per_unit * k,
                "kept": ",".join(map(str, keep_sets[u.id])) if k < u.count else "all",
            }
        )
    report.extra["units"] = {
        u.id: {"count": u.count, "unit_size": u.unit_size, "params_per_unit": u.params_per_unit,
               "flops_per_unit": u.flops_per_unit}
        for u in prunable
    }  # fmt: skip
    if not changed:
        report.notes.append(f"every block keeps all its {label}: the model is unchanged")
        new.CopyFrom(original)
        return new, report
    folded = sum(1 for u in prunable if u.id in changed for e in u.group.shape_edits if e.folded)  # type: ignore[union-attr]
    if folded:
        report.notes.append(f"{folded} shape vector(s) computed at run time were folded to constants (static model)")
    plan["fingerprint"] = {KINDS[kind].section: fingerprint(model, units)}
    write_plan(new, plan)
    append_history(
        new, {"pass": pass_name, KINDS[kind].section: {k: v["kept"] for k, v in changed.items()}, "norm": config.norm}
    )
    new = finalize(merge_constants(new))
    report.modified = True
    report.params_after = count_params(new)
    report.flops_after = flops - removed_flops
    report.extra["seconds"] = round(time.perf_counter() - start, 3)
    return new, report


# ---------------------------------------------------------------------------------------------- channel groups
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
        if self.importance not in CHANNEL_METHODS:
            raise UsageError(f"--importance {self.importance!r}: use one of {', '.join(CHANNEL_METHODS)}.")
        if self.allocation not in ("lamp", "uniform"):
            raise UsageError(f"--allocation {self.allocation!r}: use lamp or uniform.")
        if not 0.0 <= self.floor < 1.0:
            raise UsageError(f"--floor {self.floor}: the per-layer minimum kept fraction must be in [0, 1).")


# ---------------------------------------------------------------------------------------------------- building blocks
def channel_layers(
    groups: Sequence[ChannelGroup], scores: Mapping[str, np.ndarray], budget: BudgetConfig
) -> list[Layer]:
    """One budget layer per channel group, named by the group's first source module path."""
    return [
        Layer(g.name, np.asarray(scores[g.id]), budget.floor_of(g.size), kind="channels", scope=g.scope) for g in groups
    ]


def plan_keep(groups: Sequence[ChannelGroup], plan: Mapping[str, Any]) -> dict[str, list[int]]:
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
    layers = layer_index(groups)
    names = {g.name: g for g in groups}
    keep: dict[str, list[int]] = {}
    origin: dict[str, str] = {}
    for path, entry in entries.items():
        if path in names:
            g = names[path]
            places = [(g, None, None)]
            size = g.size
        elif path in layers:
            places = layers[path]  # type: ignore[assignment]
            _, tensor, axis = places[0]
            size = places[0][0].view.shape(tensor)[axis]  # type: ignore[index, union-attr]
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
            if g.id in keep and keep[g.id] != units:
                raise PassError(
                    f"plan: layers {origin[g.id]!r} and {path!r} feed one residual sum and must keep the same channels."
                )
            keep[g.id] = units
            origin[g.id] = path
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

    model: onnx.ModelProto  # the canonical form the groups were found on
    found: list[ChannelGroup]  # every group, blocked ones included
    groups: list[ChannelGroup]  # the groups decided on
    keep: dict[str, list[int]]
    allocation: Allocation | None
    notes: list[str]


def decide_channels(model: onnx.ModelProto, config: SliceChannelsConfig, stats: GraphStats) -> ChannelDecision:
    """Analyse ``model`` (in canonical form) and choose the kept channels of every group in scope (no graph change
    yet)."""
    config.validate()
    view = analysis_view(model)
    found = find_channels(model, view)
    by_id = {g.id: g for g in found}
    notes: list[str] = []
    if config.plan is not None:
        keep = plan_keep(found, config.plan)
        return ChannelDecision(model, found, [by_id[g] for g in keep], keep, None, notes)
    groups = in_scope(found, config.scope)
    if not groups:
        notes.append(f"no prunable channel group in scope {config.scope!r}")
        return ChannelDecision(model, found, [], {}, None, notes)
    scores = importance(groups, config.importance, notes)
    if config.ratio is not None:
        keep = {}
        for g in groups:
            count = max(1, g.size - int(np.floor(config.ratio * g.size + 1e-9)))
            keep[g.id] = select_top(scores[g.id], count)
        return ChannelDecision(model, found, groups, keep, None, notes)
    metric = "flops" if config.target_flops is not None else "params"
    budget = BudgetConfig(
        target=float(config.target_flops if config.target_flops is not None else config.target_params),  # type: ignore[arg-type]
        metric=metric,
        method=config.allocation,
        floor=config.floor,
    )
    layers = channel_layers(groups, scores, budget)
    flop_terms, param_terms = cost_terms(model, view, [(g.name, g) for g in groups], stats)
    sizes = {ly.name: ly.size for ly in layers}
    alloc = allocate(layers, CostModel(flop_terms, sizes), CostModel(param_terms, sizes), budget)
    return ChannelDecision(model, found, groups, dict(alloc.keep), alloc, notes)


def prune_channels(
    model: onnx.ModelProto, config: SliceChannelsConfig | None = None, pass_name: str = "slice_channels"
) -> tuple[onnx.ModelProto, PassReport]:
    """Cut conv channels of ``model`` as ``config`` says; return the new model and the report (input untouched)."""
    config = config or SliceChannelsConfig(ratio=0.0)
    original, model = model, canonicalize(model)
    stats = graph_stats(model)
    decision = decide_channels(model, config, stats)
    report = PassReport(pass_name, params_before=stats.params, flops_before=stats.flops)
    report.notes.extend(decision.notes)
    if not in_scope(decision.found, config.scope) and config.plan is None:
        report.nothing_to_do = f"nothing to prune: no conv channel group in scope {config.scope!r} can be cut"
    for g in decision.found:
        if g.blocked and (config.scope == "all" or g.scope == config.scope):
            report.skip(g.name, "; ".join(g.blocked))
    size = {g.id: g.size for g in decision.found}
    cut = {uid: kept for uid, kept in decision.keep.items() if len(kept) < size[uid]}
    out, plan = _apply(decision, cut) if cut else (copy_model(original), {})
    after = graph_stats(out) if cut else stats
    report.modified = bool(cut)
    report.params_after, report.flops_after = after.params, after.flops
    report.columns = ["layer", "kind", "scope", "channels", "kept", "flops_before", "flops_after"]
    report.rows = _rows(decision, stats, after)
    report.extra["config"] = {k: v for k, v in asdict(config).items() if k != "plan"}
    report.extra["plan"] = {"channels": plan.get("channels", {}), "slices": plan["slices"]} if cut else {}
    _budget_notes(report, decision.allocation, stats, after)
    if cut:
        append_history(
            out,
            {
                "pass": pass_name,
                "config": report.extra["config"],
                "groups_cut": len(cut),
                "flops": [stats.flops, after.flops],
                "params": [stats.params, after.params],
            },
        )
    return out, report


def _apply(decision: ChannelDecision, cut: Mapping[str, list[int]]) -> tuple[onnx.ModelProto, dict[str, Any]]:
    """Cut the decided groups, merge the plan into the model's ``vitseg.plan``, finalize."""
    out, plan = apply_cuts(decision.model, decision.found, cut)
    write_plan(out, {"channels": plan.get("channels", {}), "slices": plan["slices"]})
    return finalize(merge_constants(out)), plan


def _rows(decision: ChannelDecision, before: GraphStats, after: GraphStats) -> list[dict[str, Any]]:
    """Per group: channels before/after and the measured FLOPs of its source layers (by node name)."""
    rows = []
    at_floor = set(decision.allocation.at_floor) if decision.allocation else set()
    nodes = decision.model.graph.node
    for g in decision.groups:
        kept = len(decision.keep.get(g.id, range(g.size)))
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
