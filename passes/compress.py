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
Each layer is measured at up to four kept fractions; ``--damage-points auto`` measures as many as take about two
minutes (one, half of each layer, on a model whose run takes seconds). Without images, the damage is measured on
noise images (:data:`NO_IMAGES`, chosen by the accuracy race in ``bench/bench_accuracy.py``).
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
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fileformat.args import fraction, non_negative_int, positive_int
from fileformat.cli import cli_main
from passes._core.defaults import CHANNEL_METHODS, LATENCY_THREADS, SCOPES
from passes._core.kinds import KINDS as KIND_TABLE
from passes._core.kinds import ORDER, TRANSFORMER
from passes._parser import add_budget_args, make_parser, parse_early

PASS_NAME = "compress"
KINDS = ORDER  # the order the cuts are applied in (passes._core.kinds)
CLI_IMPORTANCES = ("auto", *CHANNEL_METHODS, "sensitivity")  # auto: resolved by the command line (_valuation_args)


#: what ``--importance auto`` values units by when no images are given: (importance, calibration source). Chosen by
#: the accuracy race (``bench/bench_accuracy.py``, README "The accuracy race"): at equal measured latency,
#: damage measured on noise images kept as much mIoU after distillation as damage measured on the data, and about
#: twice what L2 weight norms kept.
NO_IMAGES: tuple[str, str | None] = ("sensitivity", "noise")


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
    parser.add_argument(
        "--damage-points",
        default="auto",
        choices=("auto", "1", "2", "3", "4"),
        help="kept fractions each layer's damage is measured at: 4 are 3/4, 1/2, 1/4 and the floor, 1 is 1/2 alone "
        "(auto, the default: as many as take about two minutes at --threads; 4 on small models, 1 on Swin-T + "
        "UPerNet at 512)",
    )
    return parser


parse_early(__name__, build_parser)  # --help and argument errors answer before onnx and the engine load

import onnx

from fileformat.errors import PassError, UsageError
from fileformat.io import load_model
from fileformat.metadata import append_history
from passes._core import latency as latency_model
from passes._core.budget import Allocation
from passes._core.canonical import canonicalize
from passes._core.cli import run_pass_cli
from passes._core.graph import copy_model
from passes._core.loop import Attempt, LoopConfig, close_loop
from passes._core.problem import (
    CompressConfig,
    CompressPlan,
    Problem,
    allocate_plan,
    apply_plans,
    discover,
)
from passes._core.prune import SliceChannelsConfig, UnitPruneConfig, load_plan_arg
from passes._core.report import PassReport
from passes._core.stats import graph_stats

log = logging.getLogger(__name__)


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
    attempts: list[Attempt] = field(default_factory=list)  # in the order they were measured
    latency: Attempt | None = None  # the attempt kept
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
        unit_cfgs = {k: UnitPruneConfig(plan=config.plan) for k in TRANSFORMER if config.plan.get(k)}
        channels_cfg = SliceChannelsConfig(plan=config.plan) if config.plan.get("channels") else None
        if not unit_cfgs and channels_cfg is None:
            raise PassError("the plan has no heads, head_dim, neurons, width or channels entries; nothing to apply.")
        current, steps = apply_plans(model, unit_cfgs, channels_cfg)
        result = CompressResult(current, steps, before, None)
    else:
        problem = discover(model, config)
        loop = _loop_config(config) if config.target_latency is not None else None
        chosen = allocate_plan(problem, replace(config, target_latency=loop.first_asked) if loop else config)
        current, steps = problem.apply(chosen, model)
        result = CompressResult(current, steps, before, None, chosen, problem.skipped, notes=list(chosen.notes))
        if loop is not None and chosen.allocation is not None and chosen.allocation.metric == "latency":
            result.attempts = _close_latency_loop(model, problem, config, loop, chosen, current, steps, result.notes)
            best = result.latency = min(result.attempts, key=lambda a: a.miss())
            result.plan, result.model, result.steps = best.plan, best.model, best.steps
            if best.plan.allocation is not None:  # the budget is reported against what was asked, as measured
                best.plan.allocation.target = float(config.target_latency or 1.0)
                best.plan.allocation.reached = best.ratio <= best.band[1]  # under the band: faster than asked
            if not best.inside and best.ratio < best.band[0]:
                result.notes.append(
                    f"latency: no cut landed in [{best.band[0]:.3f}, {best.band[1]:.3f}] within "
                    f"{config.latency_retries} corrections; kept the closest under the ceiling ({best.ratio:.3f}x): "
                    "more was cut than asked"
                )
    if result.model is model:
        result.model = copy_model(model)
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
        over = ", ".join(f"{n} {KIND_TABLE[k].groups}" for k, n in by_kind.items() if n)
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


def _headline(report: PassReport, result: CompressResult, alloc: Allocation) -> str:
    """In words: what went, and what the budget became (``9 of 36 heads, ... removed; 0.47x CPU time ...``)."""
    gone = []
    for kind in KINDS:
        rows = [r for r in report.rows if r["kind"] == kind]
        total, kept = sum(r["units"] for r in rows), sum(r["kept"] for r in rows)
        if total > kept:
            gone.append(f"{total - kept} of {total} {KIND_TABLE[kind].removed}")
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


def _loop_config(config: CompressConfig) -> LoopConfig:
    return LoopConfig(
        target=float(config.target_latency or 1.0),
        tolerance=config.latency_tolerance,
        retries=config.latency_retries,
        threads=config.latency_threads,
        reference=config.latency_reference,
    )


def _close_latency_loop(
    model: onnx.ModelProto,
    problem: Problem,
    config: CompressConfig,
    loop: LoopConfig,
    chosen: CompressPlan,
    current: onnx.ModelProto,
    steps: list[PassReport],
    notes: list[str],
) -> list[Attempt]:
    """The latency loop (:func:`passes._core.loop.close_loop`) over plans for other asked targets; the first is
    ``chosen``, planned for ``loop.first_asked`` (already applied: ``current``, ``steps``)."""
    first = (chosen, current, steps)

    def plan_for(asked: float) -> tuple[CompressPlan, onnx.ModelProto, list[PassReport], float, Any]:
        nonlocal first
        if first is not None:
            plan, out, done = first
            first = None
        else:
            plan = allocate_plan(problem, replace(config, target_latency=asked))
            out, done = problem.apply(plan, model)
        assert plan.allocation is not None
        return plan, out, done, plan.allocation.achieved, tuple(sorted(plan.allocation.counts.items()))

    against = problem.model if loop.ceiling else canonicalize(config.latency_reference)  # type: ignore[arg-type]
    return close_loop(against, plan_for, loop, notes)


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
        from models.calib import CalibrationDataError, input_spec

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
        damage_points=None if args.damage_points == "auto" else int(args.damage_points),
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
    from models.calib import calibration_feeds

    with calibration_feeds(model, calib, split=args.calib_split, count=count, desc="calibration images") as feeds:
        config.calib = list(feeds)  # a CalibrationDataError is an InputError: exit 1, its message
    return compress(model, config)


@cli_main("python -m passes.compress")
def main(argv: Sequence[str] | None = None) -> int:
    return run_pass_cli(build_parser(), _run, argv)


if __name__ == "__main__":
    sys.exit(main())
