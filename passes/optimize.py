"""Exact rewrites for the latency costs FLOPs do not count: memory-bound layout chains and decomposed normalisations.

``python -m passes.optimize model.onnx -o out.onnx [--target cpu|jetson-orin|jetson-nano] [--no-layernorm]
[--no-layout] [--ort-offline [--ort-level extended|basic]] [--atol 1e-5] [--report r.json]``

Three rewrites, each verified on its own and reported with its node counts. The first two are rules of
:mod:`passes._core.rewrite` (a pattern, a check and a rewrite: :class:`passes._core.layernorm.LayerNormFusion`,
:class:`passes._core.layout.LayoutChainRule`); :func:`run_optimize` computes, :func:`describe` reports.

* **LayerNorm fusion** (``layernorm``). The legacy exporter writes LayerNorm below opset 17 as nine ops
  (``ReduceMean, Sub, Pow, ReduceMean, Add eps, Sqrt, Div, Mul gamma, Add beta``; found by
  :func:`passes._core.layernorm.find_layernorm_chains`). Each chain whose intermediates nothing else reads, whose two
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fileformat.cli import cli_main
from fileformat.targets import TARGETS, TargetProfile, resolve_target
from passes._parser import add_check_arguments, make_parser, parse_early

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
    add_check_arguments(p, "largest absolute output difference a rewrite may cause")
    return p


parse_early(__name__, _parser)  # --help and argument errors answer before onnx and the engine load

import onnx

from fileformat.errors import PassError, UsageError
from fileformat.metadata import append_history, read_metadata
from passes._core.cli import run_pass_cli
from passes._core.finalize import finalize
from passes._core.graph import copy_model
from passes._core.layernorm import LN_OPSET, LayerNormFusion, find_layernorm_chains, fuse_layernorm
from passes._core.layout import LAYOUT_OPS, LayoutChainRule, collapse_layout_chains, plan_layout_chain
from passes._core.report import PassReport
from passes._core.stats import graph_stats
from passes._core.verify import input_feed, max_abs_diff, run_onnxruntime

__all__ = [
    "LAYOUT_OPS",
    "OptimizeConfig",
    "OptimizeResult",
    "RewriteStep",
    "collapse_layout_chains",
    "describe",
    "fuse_layernorm",
    "main",
    "optimize",
    "ort_offline",
    "plan_layout_chain",
    "resolve_target",
    "run_optimize",
]

log = logging.getLogger(__name__)


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


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 1)


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


# ------------------------------------------------------------------------------------------------ the result


@dataclass
class RewriteStep:
    """One rewrite as it went: its status in words and, where it was measured, what it did."""

    rewrite: str
    status: str = ""
    applied: int | None = None  # None: not measured (off, not for the target, nothing to rewrite)
    nodes_before: int = 0
    nodes_after: int = 0
    max_abs_diff: float = 0.0
    seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        """The report row (the measured columns only where it was measured)."""
        if self.applied is None:
            return {"rewrite": self.rewrite, "status": self.status}
        return {
            "rewrite": self.rewrite,
            "applied": self.applied,
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "max_abs_diff": self.max_abs_diff,
            "seconds": self.seconds,
            "status": self.status,
        }


@dataclass
class OptimizeResult:
    """What :func:`run_optimize` did.

    ``model`` is the output (the input's copy when nothing applied), ``portable`` the output before the onnxruntime
    offline graph; ``steps`` one per rewrite tried; ``applied`` the rewrites kept (what ``vitseg.history`` records);
    ``skipped`` and ``notes`` in the order they arose; ``op_changes`` the op counts each kept rewrite removed and
    added; ``layout_chains`` a row per layout chain rewritten (kept or not)."""

    source: onnx.ModelProto
    target: TargetProfile
    model: onnx.ModelProto
    portable: onnx.ModelProto
    steps: list[RewriteStep] = field(default_factory=list)
    applied: dict[str, Any] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    op_changes: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)
    layout_chains: list[dict[str, Any]] = field(default_factory=list)


class _Run:
    """One optimisation under way: the check input and the reference outputs, the current model and the result."""

    def __init__(self, src: onnx.ModelProto, target: TargetProfile, cfg: OptimizeConfig) -> None:
        self.cfg = cfg
        self.feed = input_feed(src, cfg.seed, cfg.batch)
        self.reference = run_onnxruntime(src, self.feed)
        self.current = src
        self.result = OptimizeResult(src, target, src, src)

    def measure(self, step: RewriteStep, cand: onnx.ModelProto, count: int, t0: float, where: str) -> bool:
        """Fill ``step`` from ``cand``'s outputs against the reference; True when within ``atol`` (else a skip
        at ``where``)."""
        diff = max_abs_diff(self.reference, run_onnxruntime(cand, self.feed))
        step.applied, step.max_abs_diff = count, diff
        step.nodes_before, step.nodes_after = len(self.current.graph.node), len(cand.graph.node)
        step.seconds = round(time.perf_counter() - t0, 3)
        if diff > self.cfg.atol:
            step.status = f"refused: outputs differ by {diff:.3g} > {self.cfg.atol:g}"
            self.result.skipped.append((where, step.status))
            return False
        step.status = "applied"
        return True

    def accept(self, step: RewriteStep, cand: onnx.ModelProto, count: int, t0: float) -> bool:
        """Finalize a rule's model, measure it and keep it when exact."""
        cand = finalize(cand)
        if not self.measure(step, cand, count, t0, step.rewrite):
            return False
        ops_before = Counter(n.op_type for n in self.current.graph.node)
        ops_after = Counter(n.op_type for n in cand.graph.node)
        self.result.op_changes[step.rewrite] = {
            "removed": dict(sorted((ops_before - ops_after).items())),
            "added": dict(sorted((ops_after - ops_before).items())),
        }
        self.current = cand
        self.result.applied[step.rewrite] = {"count": count, "max_abs_diff": step.max_abs_diff}
        return True

    def layernorm(self) -> RewriteStep:
        """The LayerNorm fusion, where the target has the op."""
        cfg, target, result = self.cfg, self.result.target, self.result
        step, t0 = RewriteStep(LayerNormFusion.name), time.perf_counter()
        if not cfg.layernorm:
            step.status = "off (--no-layernorm)"
        elif not target.layernorm or target.max_opset < LN_OPSET:
            chains = find_layernorm_chains(self.current)
            missing = "no LayerNormalization op" if not target.layernorm else "opset"
            step.status = f"not for {target.name}: {missing}"
            if chains:
                kept = f"{len(chains)} decomposed LayerNorm(s) kept: {target.description}"
                result.skipped.append(("layernorm", kept))
        else:
            self._fuse(step, t0)
        if target.name and not target.layernorm:
            n_ln = sum(1 for n in self.current.graph.node if n.op_type == "LayerNormalization")
            if n_ln:
                result.notes.append(
                    f"the model holds {n_ln} LayerNormalization op(s) that {target.name} cannot run; export it with "
                    f"--target {target.name} (opset {target.export_opset})"
                )
        return step

    def _fuse(self, step: RewriteStep, t0: float) -> None:
        try:
            fused = LayerNormFusion().apply(self.current)
        except PassError as exc:
            step.status = f"skipped: {exc}"
            self.result.skipped.append(("layernorm", str(exc)))
            return
        self.result.skipped.extend((where, f"LayerNorm not fused: {why}") for where, why in fused.skipped)
        if not fused.count:
            step.status = "nothing to fuse"
            return
        raised = _opset(fused.model) > _opset(self.current)
        if self.accept(step, fused.model, fused.count, t0) and raised:
            opset = _opset(self.result.source)
            self.result.notes.append(f"opset raised from {opset} to {LN_OPSET} for LayerNormalization")

    def layout(self) -> RewriteStep:
        """The layout-chain rewrite."""
        step, t0 = RewriteStep(LayoutChainRule.name), time.perf_counter()
        if not self.cfg.layout:
            step.status = "off (--no-layout)"
            return step
        collapsed = LayoutChainRule().apply(self.current)
        if not collapsed.count:
            step.status = "no layout chain with a shorter form"
            return step
        self.result.layout_chains = [m.row() for m in collapsed.matches]
        self.accept(step, collapsed.model, collapsed.count, t0)
        return step

    def offline(self) -> RewriteStep:
        """onnxruntime's own graph at ``ort_level``."""
        import onnxruntime as ort

        cfg = self.cfg
        step, t0 = RewriteStep(f"ort-offline ({cfg.ort_level})"), time.perf_counter()
        cand = ort_offline(self.current, cfg.ort_level)
        if not self.measure(step, cand, 1, t0, "ort-offline"):
            return step
        self.current = cand
        self.result.applied["ort_offline"] = {
            "level": cfg.ort_level,
            "onnxruntime": ort.__version__,
            "max_abs_diff": step.max_abs_diff,
        }
        domains = sorted({n.domain for n in cand.graph.node if n.domain not in ("", "ai.onnx")})
        self.result.notes.append(
            f"onnxruntime {ort.__version__} offline graph ({cfg.ort_level}): runs in onnxruntime only"
            + (f" (contrib ops of {', '.join(domains)})" if domains else "")
            + "; keep the portable file for TensorRT and the other passes"
        )
        return step


# ----------------------------------------------------------------------------------------------------- the pass


def run_optimize(model: onnx.ModelProto, config: OptimizeConfig | None = None) -> OptimizeResult:
    """Apply the rewrites ``config`` asks for to ``model`` (not modified), each verified on onnxruntime.

    Raises:
        UsageError: an unknown target, ``ort_offline`` on a target that is not onnxruntime, an unknown level.
        PassError: the model cannot be run for the check.
    """
    cfg = config or OptimizeConfig()
    target = resolve_target(cfg.target)
    if cfg.ort_offline and target.runtime != "onnxruntime":
        raise UsageError(f"--ort-offline writes an onnxruntime-only graph; target {target.name} runs {target.runtime}")
    if cfg.ort_level not in ORT_LEVELS:
        raise UsageError(f"--ort-level {cfg.ort_level!r}: choose one of {', '.join(ORT_LEVELS)}")
    src = copy_model(model)
    del src.graph.value_info[:]  # stale after any earlier rewrite (the dynamo exporter writes them all)
    run = _Run(src, target, cfg)
    run.result.steps += [run.layernorm(), run.layout()]
    run.result.portable = run.current
    if cfg.ort_offline:
        run.result.steps.append(run.offline())
    result = run.result
    if not result.applied:
        return result
    result.model = run.current
    append_history(
        result.model,
        {
            "pass": "optimize",
            "target": target.name,
            "rewrites": result.applied,
            "nodes_before": len(src.graph.node),
            "nodes_after": len(result.model.graph.node),
            "atol": cfg.atol,
            "seed": cfg.seed,
        },
    )
    return result


def describe(result: OptimizeResult, config: OptimizeConfig | None = None) -> PassReport:
    """The report of a :func:`run_optimize`: a row per rewrite, the skips and notes, and the totals."""
    cfg = config or OptimizeConfig()
    src, out = result.source, result.model
    stats_in = graph_stats(src)
    report = PassReport(
        "optimize",
        params_before=stats_in.params,
        flops_before=stats_in.flops,
        columns=["rewrite", "status", "applied", "nodes_before", "nodes_after", "max_abs_diff", "seconds"],
    )
    report.rows = [s.row() for s in result.steps]
    for where, why in result.skipped:
        report.skip(where, why)
    report.notes = list(result.notes)
    report.extra = {"target": result.target.name, "nodes_before": len(src.graph.node)}
    report.extra["layout_chains"] = result.layout_chains
    if result.op_changes:
        report.extra["op_changes"] = result.op_changes
    if not result.applied:
        report.nothing_to_do = (
            f"no rewrite applies to this model for target {result.target.name} (no fusable LayerNorm chain, no layout "
            "chain with a shorter exact form)"
        )
        return report
    stats_out = graph_stats(result.portable)
    report.modified = True
    report.params_after, report.flops_after = stats_out.params, stats_out.flops
    report.extra.update(nodes_after=len(out.graph.node), rewrites=result.applied)
    summary = ", ".join(
        f"{r['rewrite']} {r['nodes_before']} -> {r['nodes_after']} nodes" for r in report.rows if r.get("applied")
    )
    report.notes.insert(
        0,
        f"target {result.target.name}: {len(src.graph.node)} -> {len(out.graph.node)} nodes ({summary}); every output "
        f"within {cfg.atol:g} of the input model on onnxruntime (seed {cfg.seed})",
    )
    return report


def optimize(model: onnx.ModelProto, config: OptimizeConfig | None = None) -> tuple[onnx.ModelProto, PassReport]:
    """:func:`run_optimize` and its report (:func:`describe`): ``(model, report)``; the model is a copy of the input
    when nothing applied (the report says why: ``nothing_to_do``).

    Raises:
        PassError: the model cannot be run for the check, or ``ort_offline`` on a target that is not onnxruntime.
    """
    result = run_optimize(model, config)
    return result.model, describe(result, config)


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
