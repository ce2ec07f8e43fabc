"""The accuracy–latency frontier: does a larger model, compressed to a smaller model's measured latency and
distilled from a teacher, beat that smaller model trained alone?

``python -m runtime.frontier --run runs/frontier [--seeds 3] [--tiny] [--device cuda] [--jobs N] [--data ROOT]``

For every seed the run trains the reference models (``--references``, by default MobileViT-XS and -XXS with the
paper's UPerNet-64 decoder) with cross-entropy for ``steps + distill_steps`` steps, and the ``--student``
configuration (``paper``: MobileViT-S + UPerNet-64) for ``steps``. The student is then compressed to the measured
latency of each reference (``passes.compress --target-latency-of REF.onnx``: a latency budget measured here, with
each cut timed against the reference and corrected until it lands within 5 % under it) and distilled from the
teacher for ``distill_steps``, so every model of the comparison had the same number of optimiser steps. Every
model is scored on its ONNX file (``runtime.evaluate``) and timed against its reference in one interleaved
benchmark (``runtime.bench``, process CPU time, paired ratios), which decides whether the latencies match within
``--match-tolerance`` (10 %).

Ablations (``--ablations``, on the smallest reference, for the first ``--ablation-seeds`` seeds), each at the same
latency target and the same steps as the main recipe (logit KD with MSE, the paper's):

=================  ========================================================================================
ce                 cross-entropy only (no teacher)
kd_kl              logit KD with KL divergence times T^2
kd_feat            logit KD (MSE) plus feature mimicking of the backbone stages
magnitude          the main recipe's latency knapsack valued by LAMP-normalised weight norms instead of the damage
                   each cut does to the output, measured on training images (``--importance sensitivity``)
uniform            one uniform kept fraction instead of the latency-aware allocation (weight norms within layers)
units_KIND         the main recipe, with one unit kind alone (heads, width, neurons, channels); a kind that
                   cannot reach the latency on its own is reported as such, not fatal
=================  ========================================================================================

Writes ``RUN/frontier.json``, ``RUN/frontier.md`` and ``RUN/frontier.png`` (mIoU against measured latency, mean and
standard deviation over seeds). Every stage is a command of the toolchain with its log in ``RUN/logs`` and a stamp
in ``RUN/stages`` (:class:`runtime.pipeline.StageRunner`): a rerun skips what is done, and a killed training or
distillation continues from its last checkpoint. ``--jobs N`` runs independent stages side by side (for a GPU
machine); stages that measure latency always run alone.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import threading
import time
from collections.abc import Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import IO, Any

from fileformat.cli import HelpFormatter, cli_main
from fileformat.io import atomic_write_text
from models.synthetic import GENERATOR_VERSION, GENERATOR_VERSIONS
from runtime.pipeline import Stage, StageFailed, StageRunner

log = logging.getLogger(__name__)

ABLATIONS = (
    "ce", "kd_kl", "kd_feat", "magnitude", "uniform", "units_heads", "units_width", "units_neurons", "units_channels",
)  # fmt: skip
_DISTILL_ARGS = {
    "main": [],
    "ce": ["--kd-weight", "0"],
    "kd_kl": ["--kd", "kl"],
    "kd_feat": ["--feat-weight", "1.0"],
}


@dataclass
class FrontierConfig:
    """One frontier run. The defaults are the CPU setting (under an hour on 2 cores; the teacher is the student's
    configuration trained three times longer, as a larger teacher does not fit that budget); ``tiny()`` is a
    test's, ``cuda()`` the GPU setting at 512 with the Swin-T teacher."""

    run: str = "runs/frontier"
    data: str | None = None  # a real LPCV root; None = synthetic data generated into RUN/data
    size: int = 128
    n_train: int = 300
    n_val: int = 60
    generator_version: int = GENERATOR_VERSION  # of the synthetic scenes (models.synthetic)
    seeds: int = 3
    student: str = "paper"
    references: tuple[str, ...] = ("mobilevit_xs_upernet64", "mobilevit_xxs_upernet64")
    teacher: str = "paper"
    steps: int = 300  # the student before compression; the references train for steps + distill_steps
    distill_steps: int = 300
    teacher_steps: int = 900
    batch_size: int = 8
    ablations: tuple[str, ...] = ABLATIONS
    ablation_seeds: int = 1
    match_tolerance: float = 0.10
    calib_count: int = 8  # training images on which compress measures each cut's damage
    importance: str = "sensitivity"  # how compress values a cut (l2: weight norms, as the magnitude ablation does)
    bench_runs: int = 30
    threads: int = 2
    latency_threads: int | None = 1  # onnxruntime threads of the latency measurements (None: threads)
    device: str = "cpu"
    jobs: int = 1
    workers: int = 0  # data-loading processes of each training (a GPU wants some)
    checkpoint_every: int = 100

    @classmethod
    def tiny(cls, **kw: Any) -> FrontierConfig:
        """Small enough for a test: 64 px, a handful of steps, one reference, two seeds, two ablations."""
        base: dict[str, Any] = dict(
            size=64,
            n_train=8,
            n_val=4,
            seeds=2,
            references=("mobilevit_xxs_upernet64",),
            teacher="mobilevit_xxs",
            steps=4,
            distill_steps=4,
            teacher_steps=4,
            batch_size=2,
            ablations=("ce", "units_heads"),
            importance="l2",  # measuring every cut costs a minute per compress stage; its own tests cover it
            bench_runs=60,  # models of ~1 ms: a round costs little, and more rounds steady the paired median
            threads=1,  # models of ~2 ms: with 2 threads the spinning thread pool makes CPU-time ratios noise
            jobs=2,  # one thread each: two stages fill two cores (compress and bench still run alone)
            checkpoint_every=2,
        )
        base.update(kw)
        return cls(**base)

    @classmethod
    def cuda(cls, **kw: Any) -> FrontierConfig:
        """The GPU setting: 512 input, the Swin-T teacher, longer schedules, stages side by side."""
        base: dict[str, Any] = dict(
            size=512,
            n_train=1000,
            n_val=100,
            teacher="swin_t_upernet512",
            latency_threads=None,
            steps=8000,
            distill_steps=8000,
            teacher_steps=16000,
            batch_size=16,
            ablation_seeds=3,
            device="cuda",
            jobs=4,
            workers=3,
            checkpoint_every=500,
        )
        base.update(kw)
        return cls(**base)


@dataclass
class Entry:
    """One model of the frontier: what it is and where its files are."""

    name: str
    role: str  # reference | student | ablation | base | teacher
    model: str
    seed: int | None
    onnx: Path
    eval_json: Path
    ref: str | None = None  # the reference whose latency it was compressed to
    variant: str = "main"
    compress_json: Path | None = None
    stages: list[str] = field(default_factory=list)  # the stages that make it (for soft failures)


class Frontier(StageRunner):
    """Builds and runs the stages of a :class:`FrontierConfig` and writes its report."""

    def __init__(self, config: FrontierConfig, echo: IO[str] | None = None) -> None:
        super().__init__(Path(config.run), config.threads, echo if config.jobs <= 1 else None)
        self.cfg = config
        self.data = Path(config.data) if config.data else self.run / "data"
        self.marker = self.data / "IMG" / "val"
        self.entries: list[Entry] = []
        self.failures: dict[str, str] = {}  # entry name -> why it is missing (a soft stage failed)
        self._lock = threading.Lock()

    @property
    def _lat_threads(self) -> int:
        return self.cfg.latency_threads or self.cfg.threads

    # ------------------------------------------------------------------ stage builders
    def _loop_args(self, seed: int) -> list[object]:
        c = self.cfg
        args: list[object] = ["--data", self.data, "--batch-size", c.batch_size, "--crop", c.size, "--seed", seed]
        args += ["--threads", c.threads, "--device", c.device, "--checkpoint-every", c.checkpoint_every]
        args += ["--workers", c.workers]
        return args + ["--eval-split", "", "--no-progress"]

    def _train(self, name: str, model: str, steps: int, seed: int) -> tuple[Stage, Path]:
        ckpt = self.run / "train" / name / "checkpoint.pt"
        cmd = self._py("models.train", "--force", "--model", model, "--out", ckpt.parent, "--steps", steps)
        cmd += [str(a) for a in self._loop_args(seed)]
        return Stage(f"train_{name}", cmd, [self.marker], [ckpt], resume_args=["--resume"], resume_from=ckpt), ckpt

    def _export(self, name: str, model: str, ckpt: Path) -> tuple[Stage, Path]:
        path = self.run / "onnx" / f"{name}.onnx"
        cmd = self._py(
            "exporters.export", "--model", model, "--weights", ckpt, "--input-size", self.cfg.size, "-o", path
        )
        return Stage(f"export_{name}", cmd, [ckpt], [path]), path

    def _eval(self, name: str, path: Path) -> tuple[Stage, Path]:
        js = self.run / "eval" / f"{name}.json"
        cmd = self._py(
            "runtime.evaluate", path, "--data", self.data, "--json", js, "--no-progress", "--threads", self.cfg.threads
        )
        return Stage(f"eval_{name}", cmd, [path, self.marker], [js]), js

    def _compress(self, name: str, base: Path, ref: Path, variant: str) -> tuple[Stage, Path, Path]:
        out, rep = self.run / "onnx" / f"{name}.pruned.onnx", self.run / "compress" / f"{name}.json"
        extra: list[object] = []
        if variant == "uniform":
            extra = ["--allocation", "uniform", "--importance", "l2"]
        elif variant == "magnitude" or self.cfg.importance != "sensitivity":
            extra = ["--importance", "l2"]
        else:  # each cut valued by its damage
            extra = ["--importance", "sensitivity", "--calib", self.data, "--calib-count", self.cfg.calib_count]
        if variant.startswith("units_"):
            extra += ["--units", variant.removeprefix("units_")]
        cmd = self._py(
            "passes.compress", base, "-o", out, "--target-latency-of", ref, "--latency-threads", self._lat_threads,
            "--report", rep, *extra,
        )  # fmt: skip
        return Stage(f"compress_{name}", cmd, [base, ref, self.marker], [out, rep]), out, rep

    def _distill(self, name: str, pruned: Path, teacher: Path, seed: int, variant: str) -> tuple[Stage, Path]:
        out = self.run / "distill" / name
        args = _DISTILL_ARGS.get(variant, [])
        cmd = self._py("models.distill", "--student", pruned, "--teacher", teacher, "--out", out)
        cmd += ["--steps", str(self.cfg.distill_steps), *[str(a) for a in self._loop_args(seed)], *args]
        student = out / "student.onnx"
        resume = out / "checkpoint.pt"
        stage = Stage(f"distill_{name}", cmd, [pruned, teacher, self.marker], [student], clean=[out])
        stage.resume_args, stage.resume_from = ["--resume"], resume
        return stage, student

    def stages(self) -> list[Stage]:
        """Every stage, in an order that respects what each needs; fills :attr:`entries`."""
        c = self.cfg
        out: list[Stage] = []
        self.entries = []
        if c.data is None:
            cmd = self._py(
                "models.synthetic", self.data, "--train", c.n_train, "--val", c.n_val, "--size", c.size,
                "--seed", 0, "--generator-version", c.generator_version, "--force",
            )  # fmt: skip
            out.append(Stage("data", cmd, [], [self.marker]))

        def add(entry: Entry, *stages: Stage) -> None:
            out.extend(stages)
            entry.stages = [s.name for s in stages]
            self.entries.append(entry)

        st, teacher_ckpt = self._train("teacher", c.teacher, c.teacher_steps, 0)
        ex, teacher_onnx = self._export("teacher", c.teacher, teacher_ckpt)
        ev, js = self._eval("teacher", teacher_onnx)
        add(Entry("teacher", "teacher", c.teacher, 0, teacher_onnx, js), st, ex, ev)
        smallest = c.references[-1] if c.references else None
        for seed in range(c.seeds):
            refs: dict[str, Path] = {}
            for ref in c.references:
                name = f"{ref}_s{seed}"
                st, ckpt = self._train(name, ref, c.steps + c.distill_steps, seed)
                ex, refs[ref] = self._export(name, ref, ckpt)
                ev, js = self._eval(name, refs[ref])
                add(Entry(name, "reference", ref, seed, refs[ref], js), st, ex, ev)
            base_name = f"{c.student}_base_s{seed}"
            st, ckpt = self._train(base_name, c.student, c.steps, seed)
            ex, base = self._export(base_name, c.student, ckpt)
            ev, js = self._eval(base_name, base)
            add(Entry(base_name, "base", c.student, seed, base, js), st, ex, ev)
            for ref in c.references:
                variants = ["main"]
                if ref == smallest and seed < c.ablation_seeds:
                    variants += list(c.ablations)
                pruned: dict[str, tuple[Path, Path]] = {}
                for variant in variants:
                    name = f"{c.student}_at_{ref}_s{seed}" + ("" if variant == "main" else f"_{variant}")
                    stages: list[Stage] = []
                    # the loss ablations distil the main recipe's pruned model: only the loss differs
                    if variant in ("main", "magnitude", "uniform") or variant.startswith("units_"):
                        cs, p, rep = self._compress(name, base, refs[ref], variant)
                        stages.append(cs)
                        pruned[variant] = (p, rep)
                    p, rep = pruned.get(variant, pruned["main"])
                    ds, student = self._distill(name, p, teacher_ckpt, seed, variant)
                    ev, js = self._eval(name, student)
                    role = "student" if variant == "main" else "ablation"
                    entry = Entry(name, role, c.student, seed, student, js, ref=ref, variant=variant, compress_json=rep)
                    add(entry, *stages, ds, ev)
        return out

    def bench_stages(self) -> list[Stage]:
        """The benchmarks, once the models exist (an ablation that failed is left out)."""
        return [self._bench_stage(seed, ref) for seed in range(self.cfg.seeds) for ref in self.cfg.references]

    def _bench_stage(self, seed: int, ref: str) -> Stage:
        """One interleaved benchmark of a reference and everything compressed to its latency (and the base)."""
        members = [
            e
            for e in self.entries
            if e.seed == seed and (e.model == ref or e.ref == ref) and e.name not in self.failures and e.onnx.exists()
        ]
        members.sort(key=lambda e: e.role != "reference")  # the reference first: ratios are to it
        if ref == self.cfg.references[0]:  # the base (and, once, the teacher) are timed beside the first reference
            members += [
                e
                for e in self.entries
                if e.seed == seed and (e.role == "base" or (e.role == "teacher" and seed == 0)) and e.onnx.exists()
            ]
        js = self.run / "bench" / f"{ref}_s{seed}.json"
        files = [e.onnx for e in members]
        cmd = self._py("runtime.bench", *files, "--runs", self.cfg.bench_runs, "--threads", self._lat_threads)
        cmd.append("--no-isolate")  # in one process, as compress times its cut (see runtime.bench on isolation)
        return Stage(f"bench_{ref}_s{seed}", [*cmd, "--json", str(js)], files, [js])

    # ------------------------------------------------------------------ running
    @staticmethod
    def _exclusive(stage: Stage) -> bool:
        """Stages that measure latency run alone: a training beside them would distort the timing."""
        return stage.name.startswith(("compress_", "bench_"))

    def _soft(self, stage: Stage) -> Entry | None:
        """The ablation a stage belongs to (its failure is recorded, not fatal), else None."""
        return next((e for e in self.entries if e.role == "ablation" and stage.name in e.stages), None)

    def run_all(self) -> dict[str, Any]:
        """Run every stage (``jobs`` at a time where they are independent) and write the report."""
        self.run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run / "config.json", json.dumps(asdict(self.cfg), indent=2, default=list) + "\n")
        self._schedule(self.stages())
        self._schedule(self.bench_stages())
        return write_frontier_report(self)

    def _schedule(self, stages: list[Stage]) -> None:
        """Run ``stages``, each once the stages making its inputs are done, ``jobs`` at a time."""
        producer = {p: s.name for s in stages for p in s.outputs}
        needs = {s.name: {producer[p] for p in s.inputs if p in producer} for s in stages}
        by_name = {s.name: s for s in stages}
        done: set[str] = set()
        failed: set[str] = set()
        pending = [s.name for s in stages]
        position = {s.name: i for i, s in enumerate(stages, start=1)}
        total = len(stages)

        def blocked(name: str) -> bool:
            return bool(needs[name] & failed)

        with ThreadPoolExecutor(max_workers=max(1, self.cfg.jobs)) as pool:
            running: dict[Future[Any], str] = {}
            while pending or running:
                for name in [n for n in pending if blocked(n)]:  # a soft failure upstream: skip its dependents
                    pending.remove(name)
                    failed.add(name)
                exclusive_running = any(self._exclusive(by_name[n]) for n in running.values())
                for name in list(pending):
                    if len(running) >= max(1, self.cfg.jobs) or exclusive_running:
                        break
                    if not needs[name] <= done:
                        continue
                    stage = by_name[name]
                    if self._exclusive(stage) and running:
                        break  # waits until everything else has finished, then runs alone
                    pending.remove(name)
                    running[pool.submit(self.execute, stage, (position[name], total))] = name
                    exclusive_running = self._exclusive(stage)
                if not running:
                    if pending:  # nothing can start: a dependency can never finish
                        raise StageFailed(f"stages {pending[:3]} wait on stages that failed or do not exist")
                    break
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for fut in finished:
                    name = running.pop(fut)
                    try:
                        fut.result()
                        done.add(name)
                    except StageFailed as exc:
                        entry = self._soft(by_name[name])
                        if entry is None:
                            wait(list(running))  # the stages in flight finish (and stamp) before the run stops
                            raise
                        failed.add(name)
                        reason = _first_error(self.run / "logs" / f"{name}.log") or str(exc).splitlines()[0]
                        self.failures[entry.name] = f"{name}: {reason}"
                        log.warning("%s: %s (an ablation: recorded, the run goes on)", name, reason)


def _first_error(log_path: Path) -> str | None:
    try:
        lines = log_path.read_text().splitlines()
    except OSError:
        return None
    errors = [ln.strip() for ln in lines if ln.strip().startswith("error:")]
    return errors[-1] if errors else None


# ---------------------------------------------------------------------------------------------- the report


def _load(path: Path | None) -> dict[str, Any] | None:
    if path is None or not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _mean_std(values: Sequence[float | None]) -> tuple[float | None, float | None, int]:
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0), len(vals)


def collect(frontier: Frontier) -> list[dict[str, Any]]:
    """One record per model and seed: mIoU, measured latency and its paired ratio to the reference."""
    benches = {p.stem: _load(p) for p in (frontier.run / "bench").glob("*.json")}
    timing: dict[Path, dict[str, Any]] = {}
    for doc in benches.values():
        for m in (doc or {}).get("models", []):
            timing[Path(m["path"]).resolve()] = m
    records = []
    for e in frontier.entries:
        ev = _load(e.eval_json)
        t = timing.get(e.onnx.resolve())
        comp = _load(e.compress_json)
        budget = ((comp or {}).get("extra") or {}).get("budget") or {}
        rec: dict[str, Any] = {
            "name": e.name,
            "role": e.role,
            "model": e.model,
            "seed": e.seed,
            "ref": e.ref,
            "variant": e.variant,
            "onnx": str(e.onnx),
            "miou": ev.get("miou") if ev else None,
            "per_class_iou": [c.get("iou") for c in ev.get("per_class", [])] if ev else None,
            "cpu_ms": t["cpu_ms"]["median"] if t else None,
            "wall_ms": t["latency_ms"]["median"] if t else None,
            "params": t.get("params") if t else None,
            "flops": t.get("flops") if t else None,
            "latency_ratio": (t.get("ratios") or {}).get("cpu_paired") if t and e.ref else None,
            "compress_target": budget.get("target"),
            "compress_measured": budget.get("achieved"),
            "failed": frontier.failures.get(e.name),
        }
        if rec["latency_ratio"] is not None:
            rec["matched"] = abs(rec["latency_ratio"] - 1.0) <= frontier.cfg.match_tolerance
        records.append(rec)
    return records


def summarize(records: list[dict[str, Any]], tolerance: float) -> dict[str, Any]:
    """Means and spreads over seeds per model, the student-minus-reference mIoU per seed, and the ablations."""
    groups: dict[tuple[str, str, str | None, str], list[dict[str, Any]]] = {}
    for r in records:
        groups.setdefault((r["role"], r["model"], r["ref"], r["variant"]), []).append(r)
    refs = sorted({r["ref"] for r in records if r["role"] == "student"})
    return {
        "rows": [_summary_row(key, rs) for key, rs in groups.items()],
        "comparisons": [_comparison(records, ref, tolerance) for ref in refs],
        "ablations": _ablations(records, groups),
    }


def _summary_row(key: tuple[str, str, str | None, str], rs: list[dict[str, Any]]) -> dict[str, Any]:
    """One model (at one reference, in one variant) over its seeds."""
    role, model, ref, variant = key
    miou, miou_sd, n = _mean_std([r["miou"] for r in rs])
    cpu, cpu_sd, _ = _mean_std([r["cpu_ms"] for r in rs])
    wall, _, _ = _mean_std([r["wall_ms"] for r in rs])
    ratio, ratio_sd, _ = _mean_std([r["latency_ratio"] for r in rs])
    label = model if role in ("reference", "teacher") else f"{model} at {ref}" if ref else f"{model} (base)"
    if role == "ablation":
        label += f" [{variant}]"
    return {
        "label": label,
        "role": role,
        "model": model,
        "ref": ref,
        "variant": variant,
        "seeds": n,
        "miou": miou,
        "miou_std": miou_sd,
        "cpu_ms": cpu,
        "cpu_ms_std": cpu_sd,
        "wall_ms": wall,
        "latency_ratio": ratio,
        "latency_ratio_std": ratio_sd,
        "matched_all": all(r.get("matched") for r in rs) if ref else None,
        "params": rs[0]["params"],
        "failed": [r["failed"] for r in rs if r["failed"]],
    }


def _comparison(records: list[dict[str, Any]], ref: str, tolerance: float) -> dict[str, Any]:
    """The student cut to ``ref``'s latency minus ``ref`` itself, in mIoU points, per seed."""
    deltas, ratios = [], []
    for r in records:
        if r["role"] != "student" or r["ref"] != ref or r["miou"] is None:
            continue
        base = next(
            (x for x in records if x["role"] == "reference" and x["model"] == ref and x["seed"] == r["seed"]), None
        )
        if base is not None and base["miou"] is not None:
            deltas.append(100.0 * (r["miou"] - base["miou"]))
            ratios.append(r["latency_ratio"])
    d, d_sd, n = _mean_std(deltas)
    matched = [x is not None and abs(x - 1.0) <= tolerance for x in ratios]
    return {
        "reference": ref,
        "seeds": n,
        "delta_miou_points": d,
        "delta_std": d_sd,
        "per_seed": deltas,
        "latency_ratios": ratios,
        "matched": all(matched) and bool(matched),
        "goal_met": bool(d is not None and n >= 3 and d >= 2.0 and all(matched)),
    }


def _ablations(records: list[dict[str, Any]], groups: dict[tuple, list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """Each ablation's mIoU minus the main student's at the same reference and seed."""
    main = {(r["ref"], r["seed"]): r for r in records if r["role"] == "student"}
    out = []
    for (role, _model, ref, variant), rs in groups.items():
        if role != "ablation":
            continue
        diffs = [
            100.0 * (r["miou"] - main[(ref, r["seed"])]["miou"])
            for r in rs
            if r["miou"] is not None and main.get((ref, r["seed"]), {}).get("miou") is not None
        ]
        d, d_sd, n = _mean_std(diffs)
        out.append({"variant": variant, "ref": ref, "seeds": n, "delta_vs_main": d, "delta_std": d_sd})
    return out


def write_frontier_report(frontier: Frontier) -> dict[str, Any]:
    """``RUN/frontier.json``, ``RUN/frontier.md`` and ``RUN/frontier.png`` from the stages' outputs."""
    import onnxruntime

    from models.synthetic import MARKER

    c = frontier.cfg
    records = collect(frontier)
    synthetic = _load(frontier.data / MARKER)
    report = {
        "tool": "runtime.frontier",
        "created": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "python": platform.python_version(),
            "onnxruntime": onnxruntime.__version__,
        },
        "data": (
            {"synthetic": True, "generator_version": (synthetic or {}).get("version", c.generator_version)}
            if synthetic is not None or c.data is None
            else {"synthetic": False, "root": str(frontier.data)}
        ),
        "config": asdict(c),
        "latency": f"onnxruntime CPU, {c.latency_threads or c.threads} threads, process CPU time per image (median "
        f"of {c.bench_runs} interleaved runs); ratios are paired per round against the reference",
        "records": records,
        **summarize(records, c.match_tolerance),
        "failures": frontier.failures,
        "timings": [asdict(r) for r in frontier.results],
    }
    report["plot"] = _plot(report, frontier.run / "frontier.png")
    atomic_write_text(frontier.run / "frontier.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(frontier.run / "frontier.md", format_markdown(report))
    return report


def _fmt(v: float | None, spec: str, scale: float = 1.0) -> str:
    return "—" if v is None else format(v * scale, spec)


def format_markdown(report: dict[str, Any]) -> str:
    c = report["config"]
    data = report["data"]
    where = f"synthetic scenes (generator version {data['generator_version']})" if data["synthetic"] else data["root"]
    lines = [
        "# Accuracy against latency",
        "",
        f"{report['created']}; {report['machine']['processor']}; data: {where}; {c['size']} px; seeds: {c['seeds']}; "
        f"training on {c['device']}.",
        f"Steps: references {c['steps'] + c['distill_steps']}, student {c['steps']} + {c['distill_steps']} "
        f"distillation (teacher {c['teacher']}, {c['teacher_steps']} steps). Compression: a latency knapsack "
        f"(HALP) over heads, head channels, neurons, widths and channels, each cut valued by "
        + (
            f"the damage it does to the output on {c.get('calib_count', 8)} training images"
            if c.get("importance", "sensitivity") == "sensitivity"
            else "LAMP-normalised weight norms"
        )
        + f". Latency: {report['latency']}.",
        "",
        "| model | role | seeds | mIoU % (mean ± std) | CPU ms | wall ms | x reference (paired) | params (M) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sorted(report["rows"], key=lambda r: (r["role"] == "ablation", -(r["cpu_ms"] or 0))):
        ratio = "" if r["latency_ratio"] is None else f"{r['latency_ratio']:.3f} ± {r['latency_ratio_std']:.3f}"
        lines.append(
            f"| {r['label']} | {r['role']} | {r['seeds']} | {_fmt(r['miou'], '.2f', 100)} ± "
            f"{_fmt(r['miou_std'], '.2f', 100)} | {_fmt(r['cpu_ms'], '.1f')} | {_fmt(r['wall_ms'], '.1f')} | {ratio} | "
            f"{_fmt(r['params'], '.2f', 1e-6)} |"
        )
    lines += ["", "## Compressed and distilled against the reference at its latency", ""]
    lines += ["| reference | seeds | Δ mIoU points (mean ± std) | per seed | latency ratios | matched ±10% | goal |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for cmp in report["comparisons"]:
        per = ", ".join(f"{d:+.2f}" for d in cmp["per_seed"])
        ratios = ", ".join("—" if x is None else f"{x:.3f}" for x in cmp["latency_ratios"])
        lines.append(
            f"| {cmp['reference']} | {cmp['seeds']} | {_fmt(cmp['delta_miou_points'], '+.2f')} ± "
            f"{_fmt(cmp['delta_std'], '.2f')} | {per} | {ratios} | {'yes' if cmp['matched'] else 'no'} | "
            f"{'met' if cmp['goal_met'] else 'not met'} |"
        )
    lines.append("")
    lines.append("Goal: at least +2 mIoU points over at least 3 seeds, every latency within the tolerance.")
    lines += _per_class(report)
    if report["ablations"]:
        lines += ["", "## Ablations (against the main recipe, same latency target and steps)", ""]
        lines += ["| variant | reference | seeds | Δ mIoU points vs main |", "|---|---|---|---|"]
        for a in report["ablations"]:
            lines.append(
                f"| {a['variant']} | {a['ref']} | {a['seeds']} | {_fmt(a['delta_vs_main'], '+.2f')} ± "
                f"{_fmt(a['delta_std'], '.2f')} |"
            )
    if report["failures"]:
        lines += ["", "## Not measured", ""]
        lines += [f"- {name}: {why}" for name, why in report["failures"].items()]
    lines += ["", f"Plot: {report['plot']}" if report["plot"] else "No plot (no model has both numbers yet).", ""]
    return "\n".join(lines)


def _per_class(report: dict[str, Any]) -> list[str]:
    """Per-class IoU (mean over seeds) of the references and the main students: which classes the models learn."""
    from models.constants import CLASS_NAMES

    cols: dict[str, list[list[float | None]]] = {}
    for r in report["records"]:
        if r["role"] in ("reference", "student") and r["per_class_iou"]:
            label = r["model"] if r["role"] == "reference" else f"{r['model']} at {r['ref']}"
            cols.setdefault(label, []).append(r["per_class_iou"])
    if not cols:
        return []
    lines = ["", "## Per-class IoU % (mean over seeds; — where no seed has the class)", ""]
    lines += ["| class | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    n = max(len(v) for runs in cols.values() for v in runs)
    for i in range(n):
        cells = []
        for runs in cols.values():
            vals = [v[i] for v in runs if i < len(v) and v[i] is not None]
            cells.append(f"{100 * statistics.fmean(vals):.1f}" if vals else "—")
        name = CLASS_NAMES[i] if i < len(CLASS_NAMES) else str(i)
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def _plot(report: dict[str, Any], path: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = [r for r in report["rows"] if r["miou"] is not None and r["cpu_ms"] is not None]
    if not rows:
        return None
    style = {
        "reference": ("o", "tab:grey", "references (cross-entropy)"),
        "base": ("s", "tab:olive", "student before compression"),
        "student": ("D", "tab:blue", "compressed + distilled"),
        "ablation": ("x", "tab:orange", "ablations"),
        "teacher": ("*", "tab:red", "teacher"),
    }
    fig, ax = plt.subplots(figsize=(8, 5))
    seen: set[str] = set()
    for r in rows:
        marker, colour, label = style[r["role"]]
        ax.errorbar(
            r["cpu_ms"],
            100 * r["miou"],
            xerr=r["cpu_ms_std"] or 0,
            yerr=100 * (r["miou_std"] or 0),
            fmt=marker,
            color=colour,
            capsize=3,
            label=None if r["role"] in seen else label,
        )
        seen.add(r["role"])
        tag = {"ablation": r["variant"], "student": f"{r['model']} → {r['ref']}", "base": f"{r['model']} (base)"}.get(
            r["role"], r["model"]
        )
        ax.annotate(tag, (r["cpu_ms"], 100 * r["miou"]), textcoords="offset points", xytext=(4, 4), fontsize=7)
    refs = sorted((r for r in rows if r["role"] == "reference"), key=lambda r: r["cpu_ms"])
    if len(refs) > 1:
        ax.plot([r["cpu_ms"] for r in refs], [100 * r["miou"] for r in refs], "--", color="tab:grey", alpha=0.6)
    studs = sorted((r for r in rows if r["role"] == "student"), key=lambda r: r["cpu_ms"])
    if len(studs) > 1:
        ax.plot([r["cpu_ms"] for r in studs], [100 * r["miou"] for r in studs], "-", color="tab:blue", alpha=0.6)
    c = report["config"]
    ax.set_xlabel(f"onnxruntime CPU time per image, ms ({c['latency_threads'] or c['threads']} threads, median)")
    data = "synthetic" if report["data"]["synthetic"] else "LPCV"
    ax.set_ylabel(f"mIoU % ({data} val; mean ± std over {c['seeds']} seeds)")
    ax.set_title(f"accuracy against latency at {c['size']} px")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    from fileformat.io import atomic_target

    with atomic_target(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)
    return str(path)


# ---------------------------------------------------------------------------------------------- the CLI


def _parser() -> argparse.ArgumentParser:
    d = FrontierConfig()
    p = argparse.ArgumentParser(
        prog="python -m runtime.frontier", description=__doc__.split("\n\n")[0], formatter_class=HelpFormatter
    )
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    p.add_argument("--run", default=d.run, help=f"run folder (default {d.run})")
    p.add_argument("--data", help="real LPCV data root (default: synthetic data generated into RUN/data)")
    p.add_argument("--tiny", action="store_true", help="a configuration small enough for a test (64 px, 4 steps)")
    p.add_argument("--device", choices=("cpu", "cuda"), help="where training runs; cuda also selects the 512 setting")
    for name, kind, text in (
        ("seeds", int, "seeds of every model (mean and std over them)"),
        ("size", int, "input size and training crop"),
        ("n_train", int, "synthetic training images"),
        ("n_val", int, "synthetic validation images"),
        ("steps", int, "student steps before compression (references: steps + distill steps)"),
        ("distill_steps", int, "distillation steps after compression"),
        ("teacher_steps", int, "teacher training steps"),
        ("batch_size", int, "batch size of every training"),
        ("ablation_seeds", int, "how many of the seeds also run the ablations"),
        ("bench_runs", int, "timed runs per model in each benchmark"),
        ("threads", int, "threads of torch and onnxruntime"),
        ("latency_threads", int, "onnxruntime threads of the latency measurements (1 is steadiest on a busy machine)"),
        ("jobs", int, "stages run side by side (latency measurements always alone)"),
        ("workers", int, "data-loading processes of each training"),
        ("match_tolerance", float, "relative latency difference still counted as equal"),
        ("calib_count", int, "training images on which compress measures the damage of each cut"),
    ):
        p.add_argument("--" + name.replace("_", "-"), type=kind, help=f"{text} (default {getattr(d, name)})")
    p.add_argument(
        "--generator-version",
        type=int,
        choices=GENERATOR_VERSIONS,
        help=f"synthetic scene generator (default {d.generator_version}; 1 reproduces runs made before version 2)",
    )
    p.add_argument("--student", help=f"configuration compressed and distilled (default {d.student})")
    p.add_argument("--teacher", help=f"teacher configuration (default {d.teacher}; swin_t_upernet512 with cuda)")
    p.add_argument("--references", help=f"comma-separated smaller models (default {','.join(d.references)})")
    p.add_argument("--ablations", help=f"comma-separated, or 'none' (default all: {','.join(ABLATIONS)})")
    p.add_argument(
        "--importance",
        choices=("sensitivity", "l2"),
        help=f"how compress values a cut: measured damage or weight norms (default {d.importance}; l2 with --tiny)",
    )
    p.add_argument(
        "--report-only",
        action="store_true",
        help="write the report from the stages finished so far (another run may still be going), run nothing",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors")
    return p


def config_from_args(args: argparse.Namespace, parser: argparse.ArgumentParser) -> FrontierConfig:
    given = {
        k: v
        for k, v in vars(args).items()
        if v is not None and k not in ("tiny", "verbose", "quiet", "references", "ablations", "report_only")
    }
    if args.references is not None:
        given["references"] = tuple(r for r in args.references.split(",") if r)
        if not given["references"]:
            parser.error("--references: give at least one configuration")
    if args.ablations is not None:
        chosen = () if args.ablations == "none" else tuple(a for a in args.ablations.split(",") if a)
        bad = [a for a in chosen if a not in ABLATIONS]
        if bad:
            parser.error(f"--ablations {','.join(bad)}: choose from {','.join(ABLATIONS)} or 'none'")
        given["ablations"] = chosen
    small = ("seeds", "size", "n_train", "n_val", "steps", "distill_steps", "teacher_steps", "batch_size", "jobs")
    bad = [f"--{k.replace('_', '-')}" for k in small if k in given and given[k] < 1]
    if bad:
        parser.error(f"{', '.join(bad)} must be >= 1")
    if "match_tolerance" in given and not 0 < given["match_tolerance"] < 1:
        parser.error("--match-tolerance must be in (0, 1)")
    from models.registry import CONFIGS

    names = [given.get("student"), given.get("teacher"), *given.get("references", ())]
    unknown = [n for n in names if n is not None and n not in CONFIGS]
    if unknown:
        parser.error(f"unknown configuration {unknown[0]!r}; choose from {', '.join(CONFIGS)}")
    if args.tiny:
        return FrontierConfig.tiny(**given)
    if args.device == "cuda":
        return FrontierConfig.cuda(**given)
    return replace(FrontierConfig(), **given)


@cli_main("python -m runtime.frontier")
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    cfg = config_from_args(args, parser)
    if cfg.device == "cuda":
        import torch

        if not torch.cuda.is_available():
            parser.error("--device cuda: torch sees no CUDA device here")
    frontier = Frontier(cfg, echo=None if args.quiet else sys.stderr)
    try:
        if args.report_only:
            frontier.stages()
            report = write_frontier_report(frontier)
        else:
            report = frontier.run_all()
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(format_markdown(report))
    print(f"report: {frontier.run / 'frontier.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
