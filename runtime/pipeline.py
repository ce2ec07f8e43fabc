"""The main job, end to end: data, teacher, student, export, compression, distillation, precision, deployment.

``python -m runtime.pipeline --run runs/demo`` (``make demo``) on the built-in default: synthetic data, small
sizes, a few minutes on 2 CPU cores. Every stage is the toolchain's own command line, run as a subprocess with its
output in ``RUN/logs/<stage>.log``, so the pipeline does exactly what a user would type:

====================  ==================================================================================
stage                 command
====================  ==================================================================================
data                  python -m models.synthetic RUN/data (skipped with --data: real LPCV data)
train_teacher         python -m models.train --model TEACHER
train_<student>       python -m models.train --model STUDENT (and each frontier size: xxs/xs/s)
export_<name>         python -m exporters.export --weights ... --target TARGET
compress              python -m passes.compress baseline.onnx --target-flops F
distill               python -m models.distill --student pruned.onnx --teacher teacher checkpoint
fp16 / int8           python -m passes.fp16 / passes.int8 on the distilled model
parity_fp16/int8      python -m runtime.parity distilled.onnx candidate.onnx
eval_<stage>          python -m runtime.evaluate (each stage against the previous one: pixel agreement)
bench                 python -m runtime.bench on every stage
check_target          python -m passes.check_target distilled.onnx --target TARGET
bundle                python -m runtime.bundle distilled.onnx --target TARGET
====================  ==================================================================================

A stage is skipped when its outputs exist and its stamp (``RUN/stages/<stage>.json``: the command and the size and
modification time of each input) is unchanged; a failed stage stops the run with the tail of its log and leaves
every earlier output in place. The run ends with ``RUN/report.md``, ``RUN/report.json`` and PNG plots.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from fileformat.cli import cli_main
from fileformat.io import atomic_write_text

log = logging.getLogger(__name__)


class StageFailed(RuntimeError):
    """A stage's command exited non-zero; the message carries the tail of its log."""


@dataclass
class PipelineConfig:
    """Sizes and steps of one run. The defaults are the 2-core demo; ``full()`` is the realistic setting."""

    run: str = "runs/demo"
    data: str | None = None  # a real LPCV root; None = generate synthetic data into RUN/data
    size: int = 128  # model input and training crop
    n_train: int = 160
    n_val: int = 40
    student: str = "mobilevit_xxs"
    teacher: str = "mobilevit_s"
    frontier: tuple[str, ...] = ("mobilevit_xs", "mobilevit_s")  # uncompressed sizes: the reference frontier
    student_steps: int = 250
    teacher_steps: int = 250  # = student_steps: the teacher (mobilevit_s) doubles as the frontier's "s" point
    distill_steps: int = 250
    batch_size: int = 8
    target_flops: float = 0.25
    target: str = "jetson-nano"
    exporter: str = "legacy"
    calib_count: int = 16
    bench_runs: int = 20
    threads: int = 2
    seed: int = 0
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def full(cls, **kw: Any) -> PipelineConfig:
        """The setting the issue's bar is measured at: 512 input, the paper's student, a Swin-T teacher."""
        base = dict(
            size=512,
            n_train=1021,
            n_val=100,
            student="paper",
            teacher="swin_t_upernet512",
            frontier=("mobilevit_xxs", "mobilevit_xs", "mobilevit_s"),
            student_steps=20000,
            teacher_steps=40000,
            distill_steps=20000,
            batch_size=8,
            target_flops=0.1,
            bench_runs=30,
        )
        base.update(kw)
        return cls(**base)


@dataclass
class Stage:
    name: str
    cmd: list[str]
    inputs: list[Path]
    outputs: list[Path]
    ok_codes: tuple[int, ...] = (0,)  # parity exits 1 on a failed verdict: recorded in the report, not fatal
    clean: list[Path] = field(default_factory=list)  # removed before the stage runs (a folder it rebuilds)


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float


class Pipeline:
    """Runs the stages of :class:`PipelineConfig` in order, skipping those that are up to date."""

    def __init__(self, config: PipelineConfig) -> None:
        self.cfg = config
        self.run = Path(config.run)
        self.data = Path(config.data) if config.data else self.run / "data"
        self.onnx = self.run / "onnx"
        self.reports = self.run / "reports"
        self.results: list[StageResult] = []

    # ------------------------------------------------------------------ helpers
    def _py(self, module: str, *args: object) -> list[str]:
        return [sys.executable, "-m", module, *(str(a) for a in args)]

    def _stamp(self, stage: Stage) -> dict[str, Any]:
        inputs = {}
        for p in stage.inputs:
            st = p.stat() if p.exists() else None
            inputs[str(p)] = [st.st_size, st.st_mtime_ns] if st else None
        return {"cmd": stage.cmd[1:], "inputs": inputs}  # the interpreter path may differ between machines

    def _up_to_date(self, stage: Stage) -> bool:
        stamp_file = self.run / "stages" / f"{stage.name}.json"
        if not stamp_file.exists() or not all(p.exists() for p in stage.outputs):
            return False
        try:
            return json.loads(stamp_file.read_text()) == self._stamp(stage)
        except (OSError, json.JSONDecodeError):
            return False

    def execute(self, stage: Stage) -> StageResult:
        """Run one stage (or skip it); raise :class:`StageFailed` with its log's tail when it fails."""
        if self._up_to_date(stage):
            log.info("%-16s up to date", stage.name)
            res = StageResult(stage.name, "skipped", 0.0)
            self.results.append(res)
            return res
        missing = [str(p) for p in stage.inputs if not p.exists()]
        if missing:
            raise StageFailed(f"stage {stage.name}: missing inputs {missing}")
        for p in stage.clean:
            shutil.rmtree(p, ignore_errors=True)
        for p in stage.outputs:
            p.parent.mkdir(parents=True, exist_ok=True)
        (self.run / "logs").mkdir(parents=True, exist_ok=True)
        log_path = self.run / "logs" / f"{stage.name}.log"
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.cfg.threads)})
        env.update(self.cfg.extra_env)
        log.info("%-16s %s", stage.name, shlex.join(stage.cmd[1:]))
        start = time.perf_counter()
        with open(log_path, "w") as f:
            f.write("$ " + shlex.join(stage.cmd) + "\n")
            f.flush()
            rc = subprocess.call(stage.cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
        seconds = time.perf_counter() - start
        if rc not in stage.ok_codes:
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
            raise StageFailed(f"stage {stage.name} failed (exit {rc}); log {log_path}:\n{tail}")
        absent = [str(p) for p in stage.outputs if not p.exists()]
        if absent:
            raise StageFailed(f"stage {stage.name} exited 0 but did not write {absent}; log {log_path}")
        (self.run / "stages").mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run / "stages" / f"{stage.name}.json", json.dumps(self._stamp(stage)) + "\n")
        res = StageResult(stage.name, "ran", seconds)
        self.results.append(res)
        log.info("%-16s done in %.1fs", stage.name, seconds)
        return res

    # ------------------------------------------------------------------ the stages
    def stages(self) -> list[Stage]:
        c, run, data, onnx, rep = self.cfg, self.run, self.data, self.onnx, self.reports
        marker = data / "IMG" / "val"
        out: list[Stage] = []
        if c.data is None:
            out.append(
                Stage(
                    "data",
                    self._py(
                        "models.synthetic",
                        data,
                        "--train",
                        c.n_train,
                        "--val",
                        c.n_val,
                        "--size",
                        c.size,
                        "--seed",
                        c.seed,
                        "--force",
                    ),
                    [],
                    [marker],
                )
            )

        def train(name: str, model: str, steps: int) -> Path:
            ckpt = run / "train" / name / "checkpoint.pt"
            out.append(
                Stage(
                    f"train_{name}",
                    self._py(
                        "models.train",
                        "--force",  # a stage that runs again (its inputs changed) starts afresh
                        "--model",
                        model,
                        "--data",
                        data,
                        "--out",
                        ckpt.parent,
                        "--steps",
                        steps,
                        "--batch-size",
                        c.batch_size,
                        "--crop",
                        c.size,
                        "--seed",
                        c.seed,
                        "--threads",
                        c.threads,
                        "--eval-split",
                        "",
                        "-q",
                    ),
                    [marker],
                    [ckpt],
                )
            )
            return ckpt

        def export(name: str, model: str, ckpt: Path) -> Path:
            path = onnx / f"{name}.onnx"
            out.append(
                Stage(
                    f"export_{name}",
                    self._py(
                        "exporters.export",
                        "--model",
                        model,
                        "--weights",
                        ckpt,
                        "--input-size",
                        c.size,
                        "--exporter",
                        c.exporter,
                        "--target",
                        c.target,
                        "-o",
                        path,
                    ),
                    [ckpt],
                    [path],
                )
            )
            return path

        teacher_ckpt = train("teacher", c.teacher, c.teacher_steps)
        self.teacher_onnx = export("teacher", c.teacher, teacher_ckpt)
        self.files: dict[str, Path] = {
            "baseline": export("baseline", c.student, train("student", c.student, c.student_steps))
        }
        # the uncompressed sizes, trained like the student: the frontier a compressed model should beat
        self.frontier: dict[str, Path] = {c.student: self.files["baseline"]}
        for model in c.frontier:
            if model in self.frontier:
                continue
            if model == c.teacher and c.teacher_steps == c.student_steps:  # same recipe: the teacher is that point
                self.frontier[model] = self.teacher_onnx
            else:
                self.frontier[model] = export(model, model, train(model, model, c.student_steps))

        pruned = onnx / "pruned.onnx"
        out.append(
            Stage(
                "compress",
                self._py(
                    "passes.compress",
                    self.files["baseline"],
                    "-o",
                    pruned,
                    "--target-flops",
                    c.target_flops,
                    "--report",
                    rep / "compress.json",
                ),
                [self.files["baseline"]],
                [pruned, rep / "compress.json"],
            )
        )
        self.files["pruned"] = pruned

        distilled = run / "distill" / "student.onnx"  # models.distill re-exports with the student's options
        out.append(
            Stage(
                "distill",
                self._py(
                    "models.distill",
                    "--student",
                    pruned,
                    "--teacher",
                    teacher_ckpt,
                    "--data",
                    data,
                    "--out",
                    distilled.parent,
                    "--steps",
                    c.distill_steps,
                    "--batch-size",
                    c.batch_size,
                    "--crop",
                    c.size,
                    "--seed",
                    c.seed,
                    "--threads",
                    c.threads,
                    "--cache-teacher",
                    "--eval-split",
                    "",
                    "-q",
                ),
                [pruned, teacher_ckpt, marker],
                [distilled],
            )
        )
        self.files["distilled"] = distilled

        for prec in ("fp16", "int8"):
            path = onnx / f"{prec}.onnx"
            extra = ["--calib", data, "--calib-count", c.calib_count, "--no-progress"] if prec == "int8" else []
            out.append(
                Stage(
                    prec,
                    self._py(f"passes.{prec}", distilled, "-o", path, *extra, "--report", rep / f"{prec}.json"),
                    [distilled],
                    [path],
                )
            )
            self.files[prec] = path
            out.append(
                Stage(
                    f"parity_{prec}",
                    self._py(
                        "runtime.parity",
                        distilled,
                        path,
                        "--data",
                        data,
                        "--json",
                        rep / f"parity_{prec}.json",
                        "--save-dir",
                        rep / f"parity_{prec}",
                    ),
                    [distilled, path, marker],
                    [rep / f"parity_{prec}.json"],
                    ok_codes=(0, 1),
                )
            )

        # every stage is scored against the previous one (pixel agreement); teacher and frontier alone
        prev: Path | None = None
        for name, path in self.files.items():
            cmd = [prev, "--compare", path] if prev is not None else [path]
            out.append(self._eval_stage(name, cmd, [path] + ([prev] if prev else [])))
            prev = path
        out.append(self._eval_stage("teacher", [self.teacher_onnx], [self.teacher_onnx]))
        for model, path in self.frontier.items():
            if path not in self.files.values() and path != self.teacher_onnx:
                out.append(self._eval_stage(f"frontier_{model}", [path], [path]))

        # one benchmark run for every file, so that all latencies share the machine's state; ratios to the baseline
        bench_models = list(dict.fromkeys([*self.files.values(), *self.frontier.values(), self.teacher_onnx]))
        bench_cmd = self._py(
            "runtime.bench", *bench_models, "--runs", c.bench_runs, "--threads", c.threads, "--json", rep / "bench.json"
        )
        out.append(Stage("bench", bench_cmd, bench_models, [rep / "bench.json"]))
        out.append(
            Stage(
                "check_target",
                self._py("passes.check_target", distilled, "--target", c.target, "--json", rep / "check_target.json"),
                [distilled],
                [rep / "check_target.json"],
            )
        )
        out.append(
            Stage(
                "bundle",
                self._py("runtime.bundle", distilled, "--target", c.target, "-o", run / "bundle"),
                [distilled],
                [run / "bundle" / "build_engine.sh"],
                clean=[run / "bundle"],
            )
        )
        return out

    def _eval_stage(self, name: str, args: list[Path], inputs: list[Path]) -> Stage:
        js = self.reports / f"eval_{name}.json"
        marker = self.data / "IMG" / "val"
        cmd = self._py(
            "runtime.evaluate",
            *args,
            "--data",
            self.data,
            "--json",
            js,
            "--out-dir",
            self.reports / f"eval_{name}",
            "--no-progress",
            "--threads",
            self.cfg.threads,
        )
        return Stage(f"eval_{name}", cmd, inputs + [marker], [js])

    def run_all(self, only: Sequence[str] | None = None) -> dict[str, Any]:
        self.run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run / "config.json", json.dumps(asdict(self.cfg), indent=2, default=list) + "\n")
        for stage in self.stages():
            if only and stage.name not in only:
                continue
            self.execute(stage)
        from runtime.report import write_report

        return write_report(self)


def _parser() -> argparse.ArgumentParser:
    d = PipelineConfig()
    p = argparse.ArgumentParser(prog="python -m runtime.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    p.add_argument("--run", default=d.run, help="run folder (every stage writes here)")
    p.add_argument("--data", help="real LPCV data root (default: generate synthetic data into RUN/data)")
    p.add_argument("--full", action="store_true", help="512 input, paper student, Swin-T teacher, long schedules")
    for name in (
        "size",
        "n_train",
        "n_val",
        "student_steps",
        "teacher_steps",
        "distill_steps",
        "batch_size",
        "calib_count",
        "bench_runs",
        "threads",
        "seed",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=int)
    p.add_argument("--target-flops", type=float)
    for name in ("student", "teacher", "target", "exporter"):
        p.add_argument("--" + name)
    p.add_argument("--frontier", help="comma-separated uncompressed configurations for the reference frontier")
    p.add_argument("--only", help="comma-separated stage names to run (others are left as they are)")
    p.add_argument("-q", "--quiet", action="store_true")
    return p


@cli_main("python -m runtime.pipeline")
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    if args.target_flops is not None and not 0.0 < args.target_flops <= 1.0:
        parser.error(f"--target-flops {args.target_flops}: the fraction of the FLOPs to keep must be in (0, 1]")
    small = ("size", "n_train", "n_val", "student_steps", "teacher_steps", "distill_steps", "batch_size")
    bad = [f"--{k.replace('_', '-')}" for k in small if getattr(args, k) is not None and getattr(args, k) < 1]
    if bad:
        parser.error(f"{', '.join(bad)} must be >= 1")
    given = {k: v for k, v in vars(args).items() if v is not None and k not in ("full", "only", "quiet", "verbose")}
    if "frontier" in given:
        given["frontier"] = tuple(m for m in given["frontier"].split(",") if m)
    cfg = PipelineConfig.full(**given) if args.full else PipelineConfig(**given)
    pipeline = Pipeline(cfg)
    if args.only:
        known = [s.name for s in pipeline.stages()]
        unknown = [s for s in args.only.split(",") if s not in known]
        if unknown:
            parser.error(f"--only {','.join(unknown)}: no such stage; the stages are {','.join(known)}")
    try:
        report = pipeline.run_all(args.only.split(",") if args.only else None)
    except StageFailed as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    from runtime.report import format_markdown_table

    print(format_markdown_table(report))
    print(f"\nreport: {pipeline.run / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
