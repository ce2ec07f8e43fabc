"""The main job, end to end: data, teacher, student, export, compression, distillation, precision, deployment.

``python -m runtime.pipeline --run runs/demo`` (``make demo``) on the built-in default: synthetic data, small
sizes, a few minutes on 2 CPU cores. Every stage is the toolchain's own command line, run as a subprocess with its
output in ``RUN/logs/<stage>.log``, so the pipeline does exactly what a user would type:

====================  ==================================================================================
stage                 command
====================  ==================================================================================
data                  python -m models.synthetic RUN/data (skipped with --data: real LPCV data)
train_teacher         python -m models.train --model TEACHER
train_<student>       python -m models.train --model STUDENT (and each uncompressed frontier model)
export_<name>         python -m exporters.export --weights ... --target TARGET
compress              python -m passes.compress baseline.onnx --target-latency-of FRONTIER.onnx (or --target-flops)
distill               python -m models.distill --student pruned.onnx --teacher teacher checkpoint
fp16 / int8           python -m passes.fp16 / passes.int8 on the distilled model
parity_fp16/int8      python -m runtime.parity distilled.onnx candidate.onnx
eval_<stage>          python -m runtime.evaluate (each stage against the previous one: pixel agreement)
bench                 python -m runtime.bench on every stage
check_target          python -m passes.check_target distilled.onnx --target TARGET
bundle                python -m runtime.bundle distilled.onnx --target TARGET
====================  ==================================================================================

Each stage is announced with its number and the complete command, as you would paste it from the working folder
(``.venv/bin/python -m models.train ...``); what the command prints (training and distillation show a progress bar:
step/total, loss, time left) is shown as it comes and written to the stage log at the same time. Progress-bar
redraws reach the log at most every ``PROGRESS_LOG_SECONDS`` seconds, one line each, so the log stays readable.

A stage is skipped when its stamp (``RUN/stages/<stage>.json``: the command, and the size and modification time of
each input *and each output*, recorded when the stage finished) still matches. Otherwise it runs again and the
reason is shown: its command changed, an input changed, or an output is missing or changed since the stage wrote it
(a later stage then sees a changed input and runs again too). A failed stage stops the run with the tail of its log
and leaves every earlier output in place. A training or distillation stage that was killed continues from its last
checkpoint when the run is started again with the same command and inputs (``RUN/stages/<stage>.started.json``
records them when a stage starts). The run ends with ``RUN/report.md``, ``RUN/report.json`` and PNG plots.
"""

from __future__ import annotations

import argparse
import codecs
import json
import logging
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from fileformat.args import (
    Parser,
    check_output_folder,
    fraction,
    int_in,
    non_negative_int,
    positive_int,
    target_name,
)
from fileformat.cli import cli_main
from fileformat.errors import PassError, UsageError
from fileformat.io import atomic_write_text
from models.configs import CONFIGS, model_name, model_names
from models.synthetic import GENERATOR_VERSION, GENERATOR_VERSIONS

log = logging.getLogger(__name__)

# a progress-bar redraw (a line ended by a carriage return) is written to the stage log at most this often
PROGRESS_LOG_SECONDS = 10.0


class StageFailed(PassError, RuntimeError):
    """A stage's command exited non-zero; the message carries the tail of its log."""


@dataclass
class PipelineConfig:
    """Sizes and steps of one run. The defaults are the 2-core demo; ``full()`` is the realistic setting."""

    run: str = "runs/demo"
    data: str | None = None  # a real LPCV root; None = generate synthetic data into RUN/data
    generator_version: int = GENERATOR_VERSION  # of the synthetic data (models.synthetic --generator-version)
    size: int = 128  # model input and training crop
    n_train: int = 160
    n_val: int = 40
    student: str = "paper"
    # the student's configuration trained twice as long: a larger teacher does not fit the demo's minutes on 2 cores
    teacher: str = "paper"
    # uncompressed smaller models, trained with cross-entropy for student_steps + distill_steps (the steps the
    # compressed student gets in all): the frontier a compressed model should beat at equal latency
    frontier: tuple[str, ...] = ("mobilevit_xxs_upernet64",)
    # the student is compressed to the latency of this frontier model, measured here (None: --target-flops)
    match_latency_of: str | None = "mobilevit_xxs_upernet64"
    latency_threads: int = 1  # onnxruntime threads of every latency measurement (1 is steadiest on a busy machine)
    # how compress values a cut: "sensitivity" (its measured damage to the output on calib_count training images,
    # which at a latency target beat weight norms by 30 mIoU points in the frontier run) or a weight norm ("l2")
    importance: str = "sensitivity"
    student_steps: int = 250
    teacher_steps: int = 500
    distill_steps: int = 250
    batch_size: int = 8
    target_flops: float = 0.25
    target: str = "jetson-nano"
    exporter: str = "legacy"
    calib_count: int = 16
    bench_runs: int = 20
    threads: int = 2
    seed: int = 0
    # off: one distillation run never hits its teacher cache (every sample is augmented anew in each epoch); on, a
    # rerun of the distill stage with the same teacher and data (another --target-flops) reuses the first's outputs
    cache_teacher: bool = False
    extra_env: dict[str, str] = field(default_factory=dict)

    @classmethod
    def quick(cls, **kw: Any) -> PipelineConfig:
        """Every stage in under 5 minutes on 2 busy cores (``make demo-quick``): 64 px, 32 training images, a
        sixteenth of the default steps, weight-norm importance. Its numbers show the stages work, not what
        compression buys (its models may be collapsed, and the report says so)."""
        base = dict(
            size=64,
            n_train=32,
            n_val=8,
            student_steps=15,
            teacher_steps=30,
            distill_steps=15,
            batch_size=4,
            calib_count=4,
            bench_runs=5,
            importance="l2",
        )
        base.update(kw)
        return cls(**base)

    @classmethod
    def full(cls, **kw: Any) -> PipelineConfig:
        """The setting the issue's bar is measured at: 512 input, the paper's student, a Swin-T teacher."""
        base = dict(
            size=512,
            n_train=1021,
            n_val=100,
            student="paper",
            teacher="swin_t_upernet512",
            frontier=("mobilevit_xxs_upernet64", "mobilevit_xs_upernet64", "mobilevit_xxs", "mobilevit_xs"),
            latency_threads=2,
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
    # appended when the same command was interrupted before (its start marker matches) and left a checkpoint
    # (e.g. ``["--resume"]`` of models.train): a killed run continues where it stopped instead of starting afresh
    resume_args: list[str] = field(default_factory=list)
    resume_from: Path | None = None


@dataclass
class StageResult:
    name: str
    status: str  # "ran" | "skipped"
    seconds: float


def shown_command(cmd: Sequence[str]) -> str:
    """``cmd`` as a user pastes it in the working folder: this interpreter relative to it when inside it
    (``.venv/bin/python -m models.train ...``), quoted by ``shlex.join``."""
    cmd = [str(c) for c in cmd]
    if cmd and cmd[0] == sys.executable:
        exe = Path(sys.executable)
        try:
            rel = exe.relative_to(Path.cwd()) if exe.is_absolute() else exe
            cmd[0] = str(rel) if len(rel.parts) > 1 else f"./{rel}"
        except ValueError:
            pass  # outside the working folder: the absolute path
    return shlex.join(cmd)


def _file_state(paths: Sequence[Path]) -> dict[str, list[int] | None]:
    """``{path: [size, mtime_ns]}`` (None for a missing one): cheap, and any rewrite changes the mtime."""
    state: dict[str, list[int] | None] = {}
    for p in paths:
        st = p.stat() if p.exists() else None
        state[str(p)] = [st.st_size, st.st_mtime_ns] if st else None
    return state


_SEPARATORS = re.compile(r"(\r\n|\r|\n)")


def tee_output(
    src: IO[bytes] | int, log_file: IO[str], echo: IO[str] | None, progress_every: float = PROGRESS_LOG_SECONDS
) -> None:
    """Copy a child's output from ``src`` (a pipe) as it comes: all of it to ``echo`` (the terminal: progress bars
    redraw in place), and to ``log_file`` every line ended by a newline plus, at most every ``progress_every``
    seconds, the latest progress-bar redraw (a line ended by a carriage return) as a line of its own."""
    fd = src if isinstance(src, int) else src.fileno()
    decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
    pending, last_progress = "", float("-inf")
    while True:
        chunk = os.read(fd, 65536)
        text = decoder.decode(chunk, final=not chunk)
        if echo is not None and text:
            echo.write(text)
            echo.flush()
        pending += text
        keep_cr = bool(chunk) and pending.endswith("\r")  # it may be the first half of a "\r\n"
        parts = _SEPARATORS.split(pending[:-1] if keep_cr else pending)
        pending = parts.pop() + ("\r" if keep_cr else "")
        for line, sep in zip(parts[::2], parts[1::2]):
            if sep != "\r":
                log_file.write(line + "\n")
            elif line.strip() and time.monotonic() - last_progress >= progress_every:
                log_file.write(line + "\n")
                last_progress = time.monotonic()
        log_file.flush()
        if not chunk:
            break
    if pending.strip():
        log_file.write(pending.rstrip("\r") + "\n")
        log_file.flush()


class StageRunner:
    """Runs :class:`Stage` commands in the folder ``run``, skipping those whose stamp still matches.

    ``echo``: where each stage's output is shown as it runs (the command line passes the terminal); None shows
    only the runner's own log messages. Either way it goes to ``RUN/logs/<stage>.log`` as it comes. A stage that
    was interrupted (killed) and is run again with the same command and inputs continues from its checkpoint when
    it names one (``resume_args``/``resume_from``); otherwise it starts afresh.
    """

    def __init__(
        self, run: Path, threads: int, echo: IO[str] | None = None, extra_env: dict[str, str] | None = None
    ) -> None:
        check_output_folder("--run", run)  # a file or a folder that cannot be written: said now, not a minute later
        self.run = Path(run)
        self.threads = threads
        self.echo = echo
        self.extra_env = dict(extra_env or {})
        self.results: list[StageResult] = []

    def _stamp(self, stage: Stage) -> dict[str, Any]:
        return {
            "cmd": stage.cmd[1:],  # the interpreter path may differ between machines
            "inputs": _file_state(stage.inputs),
            "outputs": _file_state(stage.outputs),
        }

    def _stamp_file(self, stage: Stage) -> Path:
        return self.run / "stages" / f"{stage.name}.json"

    def _started_file(self, stage: Stage) -> Path:
        return self.run / "stages" / f"{stage.name}.started.json"

    def _resumes(self, stage: Stage) -> bool:
        """Whether ``stage`` continues an interrupted attempt: its start marker records the same command and
        inputs, and the checkpoint it names exists."""
        if not stage.resume_args or stage.resume_from is None or not stage.resume_from.exists():
            return False
        try:
            started = json.loads(self._started_file(stage).read_text())
        except (OSError, json.JSONDecodeError):
            return False
        now = self._stamp(stage)
        return started.get("cmd") == now["cmd"] and started.get("inputs") == now["inputs"]

    def stale_reason(self, stage: Stage) -> str | None:
        """Why ``stage`` must run (``"never ran"``, ``"output X changed since the stage wrote it"``, ...), or None
        when its stamp matches: same command, and every input and output as they were when it finished."""
        stamp_file = self._stamp_file(stage)
        if not stamp_file.exists():
            return "never ran"
        try:
            old = json.loads(stamp_file.read_text())
        except (OSError, json.JSONDecodeError):
            return f"its stamp {stamp_file} is unreadable"
        now = self._stamp(stage)
        missing = [p for p, st in now["outputs"].items() if st is None]
        if missing:
            return f"output {missing[0]} is missing"
        if old.get("cmd") != now["cmd"]:
            return "its command changed"
        changed = [p for p, st in now["inputs"].items() if (old.get("inputs") or {}).get(p) != st]
        if changed:
            return f"input {changed[0]} changed" + (f" (and {len(changed) - 1} more)" if len(changed) > 1 else "")
        if "outputs" not in old:  # a stamp of an earlier version, which recorded the inputs only: trust and upgrade
            atomic_write_text(stamp_file, json.dumps(now) + "\n")
            log.info("%s: stamp upgraded (now records the outputs too)", stage.name)
            return None
        changed = [p for p, st in now["outputs"].items() if old["outputs"].get(p) != st]
        if changed:
            return f"output {changed[0]} changed since the stage wrote it"
        return None

    def _remove_own_outputs(self, stage: Stage) -> None:
        """Before a stage runs again: remove the output files it wrote in an earlier run (its stamp or start marker
        is there, so they are the runner's own), so that a command which refuses to replace an existing output
        without ``--force`` (``exporters.export -o``) can write it again. Files outside the run folder, and a
        stage's outputs that no earlier run of it wrote, are left alone: the command decides about those."""
        if not (self._stamp_file(stage).exists() or self._started_file(stage).exists()):
            return
        for p in stage.outputs:
            if p.is_file() and Path(os.path.abspath(p)).is_relative_to(Path(os.path.abspath(self.run))):
                p.unlink()

    def _up_to_date(self, stage: Stage) -> bool:
        return self.stale_reason(stage) is None

    def execute(self, stage: Stage, position: tuple[int, int] | None = None) -> StageResult:
        """Run one stage (or skip it); raise :class:`StageFailed` with its log's tail when it fails.

        ``position`` (``(i, n)``) numbers the stage in the messages: ``[i/n] name``."""
        tag = f"[{position[0]}/{position[1]}] {stage.name}" if position else stage.name
        reason = self.stale_reason(stage)
        if reason is None:
            log.info("%s: up to date", tag)
            res = StageResult(stage.name, "skipped", 0.0)
            self.results.append(res)
            return res
        missing = [str(p) for p in stage.inputs if not p.exists()]
        if missing:
            raise StageFailed(f"stage {stage.name}: missing inputs {missing}")
        resumes = self._resumes(stage)
        if not resumes:
            for p in stage.clean:
                shutil.rmtree(p, ignore_errors=True)
            self._remove_own_outputs(stage)
        for p in stage.outputs:
            p.parent.mkdir(parents=True, exist_ok=True)
        (self.run / "logs").mkdir(parents=True, exist_ok=True)
        log_path = self.run / "logs" / f"{stage.name}.log"
        env = dict(os.environ)
        env.update({"PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": str(self.threads)})
        if self.echo is not None and self.echo.isatty():  # progress bars in a pipe take the terminal's width
            cols, lines = shutil.get_terminal_size()
            env.setdefault("COLUMNS", str(cols))
            env.setdefault("LINES", str(lines))
        env.update(self.extra_env)
        cmd = stage.cmd + (stage.resume_args if resumes else [])
        shown = shown_command(cmd)
        if resumes:
            log.info("%s: continues an interrupted run from %s", tag, stage.resume_from)
        elif reason != "never ran":
            log.info("%s: runs again: %s", tag, reason)
        log.info("%s (log: %s)\n  $ %s", tag, log_path, shown)
        (self.run / "stages").mkdir(parents=True, exist_ok=True)
        started = self._stamp(stage)
        atomic_write_text(self._started_file(stage), json.dumps({"cmd": started["cmd"], "inputs": started["inputs"]}))
        start = time.perf_counter()
        with open(log_path, "a" if resumes else "w", buffering=1) as f:
            f.write(f"$ {shown}\n")
            f.flush()
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
            try:
                assert proc.stdout is not None
                tee_output(proc.stdout, f, self.echo)
                rc = proc.wait()
            finally:
                if proc.poll() is None:  # interrupted (Ctrl-C): do not leave the stage running
                    proc.terminate()
                    proc.wait()
                if proc.stdout is not None:
                    proc.stdout.close()
        seconds = time.perf_counter() - start
        if rc not in stage.ok_codes:  # it failed (it was not killed): a rerun starts afresh, it does not resume
            self._started_file(stage).unlink(missing_ok=True)
            tail = "".join(log_path.read_text().splitlines(keepends=True)[-25:])
            raise StageFailed(
                f"stage {stage.name} failed (exit {rc}); log {log_path}:\n{tail}\nrerun it alone with:\n  {shown}"
            )
        absent = [str(p) for p in stage.outputs if not p.exists()]
        if absent:
            raise StageFailed(f"stage {stage.name} exited 0 but did not write {absent}; log {log_path}")
        atomic_write_text(self._stamp_file(stage), json.dumps(self._stamp(stage)) + "\n")
        self._started_file(stage).unlink(missing_ok=True)
        res = StageResult(stage.name, "ran", seconds)
        self.results.append(res)
        log.info("%s: done in %.1f s", tag, seconds)
        return res

    def _py(self, module: str, *args: object) -> list[str]:
        return [sys.executable, "-m", module, *(str(a) for a in args)]


@dataclass(frozen=True)
class StageSpec:
    """One kind of stage of :class:`Pipeline`: the toolchain command it runs and the files it reads and writes.

    ``args``, ``inputs``, ``outputs`` and ``clean`` are templates: ``"{key}"`` is one value the pipeline fills in,
    ``"*key"`` a list of values spliced in, anything else a literal argument (``""`` included). ``module`` may name
    a key too (``"passes.{precision}"``). ``resume_from`` names the checkpoint a killed stage continues from (with
    ``--resume``)."""

    module: str
    args: tuple[str, ...]
    inputs: tuple[str, ...] = ()
    outputs: tuple[str, ...] = ()
    ok_codes: tuple[int, ...] = (0,)
    clean: tuple[str, ...] = ()
    resume_from: str | None = None

    def build(self, name: str, values: dict[str, Any], python: str) -> Stage:
        """The :class:`Stage` called ``name`` with ``values`` filled in, run by ``python``."""

        def fill(template: Sequence[str]) -> list[Any]:
            out: list[Any] = []
            for item in template:
                if item.startswith("*"):
                    out.extend(values[item[1:]])
                elif item.startswith("{") and item.endswith("}"):
                    out.append(values[item[1:-1]])
                else:
                    out.append(item)
            return out

        return Stage(
            name,
            [python, "-m", self.module.format(**values), *(str(a) for a in fill(self.args))],
            fill(self.inputs),
            fill(self.outputs),
            ok_codes=self.ok_codes,
            clean=fill(self.clean),
            resume_args=["--resume"] if self.resume_from else [],
            resume_from=values[self.resume_from] if self.resume_from else None,
        )


_LOOP = ("--batch-size", "{batch_size}", "--crop", "{size}", "--seed", "{seed}", "--threads", "{threads}")

#: every kind of stage of the demo, in the order :meth:`Pipeline.stages` runs them
STAGES: dict[str, StageSpec] = {
    "data": StageSpec(
        "models.synthetic",
        ("{data}", "--train", "{n_train}", "--val", "{n_val}", "--size", "{size}", "--seed", "{seed}")
        + ("--generator-version", "{generator_version}", "--force"),
        outputs=("{marker}",),
    ),
    "train": StageSpec(
        "models.train",
        # --force: a stage that runs again (its inputs changed) starts afresh; no -q: its progress bar (step/total,
        # loss, time left) is shown and logged
        ("--force", "--model", "{model}", "--data", "{data}", "--out", "{out}", "--steps", "{steps}")
        + _LOOP
        + ("--eval-split", ""),
        inputs=("{marker}",),
        outputs=("{checkpoint}",),
        resume_from="checkpoint",
    ),
    "export": StageSpec(
        "exporters.export",
        ("--model", "{model}", "--weights", "{checkpoint}", "--input-size", "{size}", "--exporter", "{exporter}")
        + ("--target", "{target}", "-o", "{path}", "--force"),  # --force: it replaces its own earlier export
        inputs=("{checkpoint}",),
        outputs=("{path}",),
    ),
    "compress": StageSpec(
        "passes.compress",
        ("{baseline}", "-o", "{pruned}", "*budget", "--report", "{report}"),
        inputs=("{baseline}", "*budget_inputs"),
        outputs=("{pruned}", "{report}"),
    ),
    "distill": StageSpec(
        "models.distill",
        ("--force", "--student", "{pruned}", "--teacher", "{teacher}", "--data", "{data}", "--out", "{out}")
        + ("--steps", "{steps}")
        + _LOOP
        + ("*cache_teacher", "--eval-split", ""),
        inputs=("{pruned}", "{teacher}", "{marker}"),
        outputs=("{distilled}",),
        resume_from="checkpoint",
    ),
    "precision": StageSpec(
        "passes.{precision}",
        ("{model}", "-o", "{path}", "*calib", "--report", "{report}"),
        inputs=("{model}",),
        outputs=("{path}",),
    ),
    "parity": StageSpec(
        "runtime.parity",
        # --force: a stage that runs again replaces its own earlier files
        ("{model}", "{path}", "--data", "{data}", "--json", "{json}", "--save-dir", "{save_dir}", "--force"),
        inputs=("{model}", "{path}", "{marker}"),
        outputs=("{json}",),
        ok_codes=(0, 1),  # parity exits 1 on a failed verdict: recorded in the report, not fatal
    ),
    "eval": StageSpec(
        "runtime.evaluate",
        ("*models", "--data", "{data}", "--json", "{json}", "--out-dir", "{out}", "--no-progress")
        + ("--threads", "{threads}"),
        inputs=("*models_read", "{marker}"),
        outputs=("{json}",),
    ),
    "bench": StageSpec(
        "runtime.bench",
        # --no-isolate: as compress times (see runtime.bench)
        ("*models", "--runs", "{runs}", "--threads", "{latency_threads}", "--json", "{json}", "--no-isolate"),
        inputs=("*models",),
        outputs=("{json}",),
    ),
    "check_target": StageSpec(
        "passes.check_target", ("{model}", "--target", "{target}", "--json", "{json}"), ("{model}",), ("{json}",)
    ),
    "bundle": StageSpec(
        "runtime.bundle",
        ("{model}", "--target", "{target}", "-o", "{out}"),
        inputs=("{model}",),
        outputs=("{script}",),
        clean=("{out}",),
    ),
}


class Pipeline(StageRunner):
    """Runs the stages of :class:`PipelineConfig` in order, skipping those up to date (:class:`StageRunner`)."""

    def __init__(self, config: PipelineConfig, echo: IO[str] | None = None) -> None:
        super().__init__(Path(config.run), config.threads, echo, config.extra_env)
        self.cfg = config
        self.data = Path(config.data) if config.data else self.run / "data"
        self.onnx = self.run / "onnx"
        self.reports = self.run / "reports"

    # ------------------------------------------------------------------ the stages
    def _stage(self, kind: str, name: str, **values: Any) -> Stage:
        """The stage ``name`` of kind ``kind`` (:data:`STAGES`), the configuration's values and ``values`` filled
        in."""
        c = self.cfg
        common = {
            "data": self.data,
            "marker": self.data / "IMG" / "val",
            "size": c.size,
            "seed": c.seed,
            "threads": c.threads,
            "batch_size": c.batch_size,
            "target": c.target,
            "exporter": c.exporter,
        }
        return STAGES[kind].build(name, {**common, **values}, sys.executable)

    def _train(self, out: list[Stage], name: str, model: str, steps: int) -> Path:
        ckpt = self.run / "train" / name / "checkpoint.pt"
        out.append(self._stage("train", f"train_{name}", model=model, out=ckpt.parent, steps=steps, checkpoint=ckpt))
        return ckpt

    def _export(self, out: list[Stage], name: str, model: str, ckpt: Path) -> Path:
        path = self.onnx / f"{name}.onnx"
        out.append(self._stage("export", f"export_{name}", model=model, checkpoint=ckpt, path=path))
        return path

    def _models(self, out: list[Stage]) -> Path:
        """The teacher, the student and the frontier models, trained and exported; returns the teacher's
        checkpoint."""
        c = self.cfg
        teacher_ckpt = self._train(out, "teacher", c.teacher, c.teacher_steps)
        self.teacher_onnx = self._export(out, "teacher", c.teacher, teacher_ckpt)
        student = self._train(out, "student", c.student, c.student_steps)
        self.files: dict[str, Path] = {"baseline": self._export(out, "baseline", c.student, student)}
        # the uncompressed models, trained as long as the compressed student in all: the frontier it should beat
        self.frontier: dict[str, Path] = {c.student: self.files["baseline"]}
        for model in [*c.frontier, *([c.match_latency_of] if c.match_latency_of else [])]:
            if model in self.frontier:
                continue
            total = c.student_steps + c.distill_steps
            if model == c.teacher and c.teacher_steps == total:  # same recipe: the teacher is that point
                self.frontier[model] = self.teacher_onnx
            else:
                self.frontier[model] = self._export(out, model, model, self._train(out, model, model, total))
        return teacher_ckpt

    def _compress(self) -> Stage:
        c = self.cfg
        budget: list[object] = ["--target-flops", c.target_flops]
        budget_inputs = [self.data / "IMG" / "val"] if c.importance == "sensitivity" else []
        if c.match_latency_of:
            ref = self.frontier[c.match_latency_of]
            budget = ["--target-latency-of", ref, "--latency-threads", c.latency_threads]
            budget_inputs.append(ref)
        if c.importance == "sensitivity":
            budget += ["--importance", "sensitivity", "--calib", self.data, "--calib-count", c.calib_count]
        else:
            budget += ["--importance", c.importance]
        pruned = self.onnx / "pruned.onnx"
        self.files["pruned"] = pruned
        return self._stage(
            "compress",
            "compress",
            baseline=self.files["baseline"],
            pruned=pruned,
            budget=budget,
            budget_inputs=budget_inputs,
            report=self.reports / "compress.json",
        )

    def _precision(self, out: list[Stage], distilled: Path) -> None:
        """FP16 and INT8 of the distilled model, each with its parity check."""
        rep = self.reports
        for prec in ("fp16", "int8"):
            path = self.onnx / f"{prec}.onnx"
            calib = ["--calib", self.data, "--calib-count", self.cfg.calib_count, "--no-progress"]
            values = {"model": distilled, "path": path, "report": rep / f"{prec}.json"}
            out.append(self._stage("precision", prec, precision=prec, calib=calib if prec == "int8" else [], **values))
            self.files[prec] = path
            parity = {"json": rep / f"parity_{prec}.json", "save_dir": rep / f"parity_{prec}"}
            out.append(self._stage("parity", f"parity_{prec}", model=distilled, path=path, **parity))

    def _evaluations(self, out: list[Stage]) -> None:
        """Every stage scored against the previous one (pixel agreement); teacher and frontier alone."""
        prev: Path | None = None
        for name, path in self.files.items():
            cmd = [prev, "--compare", path] if prev is not None else [path]
            out.append(self._eval_stage(name, cmd, [path] + ([prev] if prev else [])))
            prev = path
        out.append(self._eval_stage("teacher", [self.teacher_onnx], [self.teacher_onnx]))
        for model, path in self.frontier.items():
            if path not in self.files.values() and path != self.teacher_onnx:
                out.append(self._eval_stage(f"frontier_{model}", [path], [path]))

    def stages(self) -> list[Stage]:
        """The run's stages in order (:data:`STAGES` filled in); sets ``files`` (baseline, pruned, distilled,
        fp16, int8), ``frontier`` and ``teacher_onnx``."""
        c, rep = self.cfg, self.reports
        out: list[Stage] = []
        if c.data is None:
            out.append(
                self._stage("data", "data", n_train=c.n_train, n_val=c.n_val, generator_version=c.generator_version)
            )
        teacher_ckpt = self._models(out)
        out.append(self._compress())
        distilled = self.run / "distill" / "student.onnx"  # models.distill re-exports with the student's options
        out.append(
            self._stage(
                "distill",
                "distill",
                pruned=self.files["pruned"],
                teacher=teacher_ckpt,
                out=distilled.parent,
                steps=c.distill_steps,
                cache_teacher=["--cache-teacher"] if c.cache_teacher else [],
                distilled=distilled,
                checkpoint=distilled.parent / "checkpoint.pt",
            )
        )
        self.files["distilled"] = distilled
        self._precision(out, distilled)
        self._evaluations(out)
        # one benchmark run for every file, so that all latencies share the machine's state; ratios to the baseline
        bench_models = list(dict.fromkeys([*self.files.values(), *self.frontier.values(), self.teacher_onnx]))
        values = {"models": bench_models, "runs": c.bench_runs, "latency_threads": c.latency_threads}
        out.append(self._stage("bench", "bench", json=rep / "bench.json", **values))
        out.append(self._stage("check_target", "check_target", model=distilled, json=rep / "check_target.json"))
        bundle = self.run / "bundle"
        out.append(self._stage("bundle", "bundle", model=distilled, out=bundle, script=bundle / "build_engine.sh"))
        return out

    def _eval_stage(self, name: str, args: list[Path], inputs: list[Path]) -> Stage:
        values = {"json": self.reports / f"eval_{name}.json", "out": self.reports / f"eval_{name}"}
        return self._stage("eval", f"eval_{name}", models=args, models_read=inputs, **values)

    def run_all(self, only: Sequence[str] | None = None) -> dict[str, Any]:
        self.run.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.run / "config.json", json.dumps(asdict(self.cfg), indent=2, default=list) + "\n")
        chosen = [s for s in self.stages() if not only or s.name in only]
        for i, stage in enumerate(chosen, start=1):
            self.execute(stage, (i, len(chosen)))
        from runtime.run_report import write_report

        return write_report(self)


_HELP = {
    "size": "model input and training crop in pixels",
    "n_train": "synthetic training images (without --data)",
    "n_val": "synthetic validation images (without --data)",
    "student_steps": "training steps of the student and of each frontier model",
    "teacher_steps": "training steps of the teacher",
    "distill_steps": "distillation steps",
    "batch_size": "batch size of training and distillation",
    "calib_count": "INT8 calibration images (and the images compress measures each cut's damage on)",
    "importance": "how compress values a cut: sensitivity (measured damage to the output) or l2 (weight norms)",
    "bench_runs": "timed runs per model in the benchmark",
    "threads": "threads of every stage (torch, onnxruntime, OMP)",
    "seed": "seed of the data, the inits and the sample order",
    "target_flops": "fraction of the baseline's FLOPs the compressed student keeps, in (0, 1] (instead of "
    "--match-latency-of)",
    "match_latency_of": "frontier model whose measured latency the student is compressed to ('none': use "
    "--target-flops)",
    "latency_threads": "onnxruntime threads of the latency measurements (compress and bench)",
    "student": "student configuration (models.registry)",
    "teacher": "teacher configuration (models.registry)",
    "target": "device profile of the exports, the check and the bundle",
    "exporter": "torch exporter: legacy or dynamo",
    "frontier": "comma-separated uncompressed configurations trained for the reference frontier",
}


def _match(text: str) -> str:
    """``--match-latency-of``: a registered configuration, or 'none'."""
    return text if text in ("none", "") else model_name(text)


_TYPES: dict[str, Any] = {
    "size": int_in(32, 4096, "pixels"),
    "n_train": positive_int,
    "n_val": positive_int,
    "student_steps": positive_int,
    "teacher_steps": positive_int,
    "distill_steps": positive_int,
    "batch_size": positive_int,
    "calib_count": positive_int,
    "bench_runs": positive_int,
    "threads": positive_int,
    "latency_threads": positive_int,
    "seed": non_negative_int,
    "target_flops": fraction,
    "student": model_name,
    "teacher": model_name,
    "frontier": model_names,
    "match_latency_of": _match,
    "target": target_name,
}


def _parser() -> argparse.ArgumentParser:
    d, f, q = PipelineConfig(), PipelineConfig.full(), PipelineConfig.quick()

    def default(name: str) -> str:
        a, b, c = getattr(d, name), getattr(f, name), getattr(q, name)
        a, b, c = (",".join(a), ",".join(b), ",".join(c)) if isinstance(a, tuple) else (a, b, c)
        return f"default {a}" + (f"; with --quick {c}" if c != a else "") + (f"; with --full {b}" if b != a else "")

    p = Parser(prog="python -m runtime.pipeline", description=__doc__.split("\n\n")[0])
    p.add_argument("-v", "--verbose", action="store_true", help="show tracebacks on errors")
    p.add_argument("--run", default=d.run, help=f"run folder (every stage writes here; default {d.run})")
    p.add_argument("--data", help="real LPCV data root (default: generate synthetic data into RUN/data)")
    size = p.add_mutually_exclusive_group()
    size.add_argument("--full", action="store_true", help="512 input, paper student, Swin-T teacher, long schedules")
    size.add_argument(
        "--quick",
        action="store_true",
        help="every stage in under 5 minutes on 2 busy cores (make demo-quick): 64 px, 32 images, few steps",
    )
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
        "latency_threads",
        "seed",
    ):
        p.add_argument("--" + name.replace("_", "-"), type=_TYPES[name], help=f"{_HELP[name]} ({default(name)})")
    p.add_argument("--target-flops", type=fraction, help=f"{_HELP['target_flops']} ({default('target_flops')})")
    for name in ("student", "teacher", "target", "frontier", "match_latency_of"):
        p.add_argument("--" + name.replace("_", "-"), type=_TYPES[name], help=f"{_HELP[name]} ({default(name)})")
    p.add_argument("--exporter", choices=("legacy", "dynamo"), help=f"{_HELP['exporter']} ({default('exporter')})")
    p.add_argument(
        "--importance", choices=("sensitivity", "l2"), help=f"{_HELP['importance']} ({default('importance')})"
    )
    p.add_argument(
        "--generator-version",
        type=int,
        choices=GENERATOR_VERSIONS,
        help=f"synthetic scene generator (default {d.generator_version}; 1 reproduces runs made before version 2)",
    )
    p.add_argument(
        "--cache-teacher",
        action="store_true",
        default=None,
        help="let the distill stage cache the teacher's outputs in RUN/distill/teacher_cache: a rerun of that stage "
        "with the same teacher and data (e.g. another --target-flops) reuses them; a single run never does, as "
        "each epoch augments anew (default off; 60 KB per sample and step at 128 px, 0.9 MB at 512)",
    )
    p.add_argument("--only", help="comma-separated stage names to run, others left as they are (default: all)")
    p.add_argument(
        "-q", "--quiet", action="store_true", help="only warnings and errors; stage output goes to the logs only"
    )
    return p


def check_config(cfg: PipelineConfig) -> None:
    """Before any stage runs (no data generated, nothing trained): the run folder, the data and the batch.
    Raises :class:`UsageError` (exit 2) or :class:`fileformat.errors.PassError` (the data cannot be used)."""
    from models.data import check_split

    check_output_folder("--run", cfg.run, [("--data", cfg.data)])
    for name in (cfg.student, cfg.teacher, *cfg.frontier, *([cfg.match_latency_of] if cfg.match_latency_of else [])):
        if name not in CONFIGS:
            raise UsageError(f"unknown model {name!r}; choose one of: {', '.join(CONFIGS)}")
    if cfg.size % 32:
        raise UsageError(f"--size {cfg.size} is not a multiple of 32 (the backbones' stride)")
    if cfg.data is not None:
        images = check_split(cfg.data, "train", "--data")
        check_split(cfg.data, "val", "--data")
        where = f"the {images} training images of {cfg.data}"
    else:
        images, where = cfg.n_train, f"--n-train {cfg.n_train}"
    if cfg.batch_size > images:
        raise UsageError(f"--batch-size {cfg.batch_size} is more than {where}; give at most {images}")


@cli_main("python -m runtime.pipeline")
def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING if args.quiet else logging.INFO, format="%(message)s")
    skip = ("full", "quick", "only", "quiet", "verbose")
    given = {k: v for k, v in vars(args).items() if v is not None and k not in skip}
    if given.get("match_latency_of") in ("none", ""):
        given["match_latency_of"] = None
    elif "target_flops" in given and "match_latency_of" not in given:
        given["match_latency_of"] = None  # a FLOPs target given alone replaces the latency match
    make = PipelineConfig.full if args.full else PipelineConfig.quick if args.quick else PipelineConfig
    cfg = make(**given)
    check_config(cfg)
    pipeline = Pipeline(cfg, echo=None if args.quiet else sys.stderr)
    if args.only:
        known = [s.name for s in pipeline.stages()]
        unknown = [s for s in args.only.split(",") if s not in known]
        if unknown:
            parser.error(f"--only {','.join(unknown)}: no such stage; the stages are {','.join(known)}")
    # a SIGTERM ends the run as Ctrl-C does: the running stage's process is stopped too, not left behind
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum)) if main_thread else None
    try:
        report = pipeline.run_all(args.only.split(",") if args.only else None)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous)
    from runtime.run_report import format_markdown_table

    print(format_markdown_table(report))
    for line in report.get("warnings") or []:
        print(f"warning: {line}")
    print(f"\nreport: {pipeline.run / 'report.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
