"""The main job end to end at tiny sizes: every stage measured, reruns skip, a failed stage keeps what came before,
a changed output is redone; commands are shown as a user pastes them; stage output is streamed to the terminal and
the log as it comes."""

from __future__ import annotations

import io
import json
import logging
import os
import shlex
import sys
import threading
import time
from pathlib import Path

import pytest

from models.synthetic import GENERATOR_VERSION
from runtime.pipeline import Pipeline, PipelineConfig, Stage, StageFailed, shown_command, tee_output

TINY = dict(
    size=64,
    n_train=8,
    n_val=4,
    student="paper",
    teacher="mobilevit_xxs",
    frontier=("mobilevit_xxs_upernet64",),  # also the model whose latency the student is compressed to
    student_steps=3,
    teacher_steps=3,
    distill_steps=2,
    batch_size=2,
    calib_count=4,
    bench_runs=3,
    threads=2,
    importance="l2",  # measuring every cut costs a minute; test_compress_measures_damage... checks the command
)

# The student is compressed to the measured latency of another model. Latency is one onnxruntime thread's CPU time,
# timed interleaved, which a busy neighbour moves little: the run goes beside the other tests (its one latency
# assertion allows 30 %), not alone with the timing tests.


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("pipeline") / "run"
    Pipeline(PipelineConfig(run=str(run), **TINY)).run_all()
    return run


def test_every_stage_has_numbers_and_plots(run_dir: Path) -> None:
    report = json.loads((run_dir / "report.json").read_text())
    names = [r["stage"] for r in report["stages"]]
    assert names == ["baseline", "pruned", "distilled", "fp16", "int8"]
    for row in report["stages"]:
        for key in ("params", "flops", "file_mb", "latency_ms", "miou", "mdice", "nano_fps_estimate"):
            assert isinstance(row[key], float), (row["stage"], key, row[key])
        assert 0.0 <= row["miou"] <= 1.0
        if row["stage"] != "baseline":
            assert 0.0 <= row["agreement"] <= 1.0
    base, pruned = report["stages"][0], report["stages"][1]
    assert pruned["flops"] < 0.7 * base["flops"]  # cut to the latency of a model about half as fast
    assert report["data"] == "synthetic" and report["generator_version"] == GENERATOR_VERSION
    assert f"synthetic data, generator version {GENERATOR_VERSION})" in (run_dir / "report.md").read_text()
    frontier = ["paper (uncompressed)", "mobilevit_xxs_upernet64 (uncompressed)"]
    assert [r["stage"] for r in report["frontier"]] == frontier
    eq = report["equal_latency"]  # the demo's question: the compressed student beside the model at its latency
    assert eq["reference"] == "mobilevit_xxs_upernet64" and 0.7 < eq["latency_ratio"] < 1.3
    assert isinstance(eq["delta_miou_points"], float)
    assert report["teacher"]["miou"] is not None
    for png in ("accuracy_vs_latency.png", "per_class_iou.png"):
        assert (run_dir / png).stat().st_size > 10_000
    md = (run_dir / "report.md").read_text()
    assert "| baseline |" in md and "synthetic" in md and "at equal latency" in md
    assert (run_dir / "bundle" / "build_engine.sh").exists()


def test_rerun_skips_every_done_stage(run_dir: Path) -> None:
    pipeline = Pipeline(PipelineConfig(run=str(run_dir), **TINY))
    pipeline.run_all()
    assert pipeline.results and all(r.status == "skipped" for r in pipeline.results)


def test_failed_stage_stops_and_keeps_earlier_outputs(run_dir: Path) -> None:
    baseline = run_dir / "onnx" / "baseline.onnx"
    before = baseline.stat().st_mtime_ns
    broken = Pipeline(
        PipelineConfig(run=str(run_dir), **{**TINY, "target_flops": 7.0, "match_latency_of": None})
    )  # not a fraction
    with pytest.raises(StageFailed, match="stage compress failed") as info:
        broken.run_all()
    assert "target" in str(info.value)  # the log's tail says what was wrong
    assert baseline.stat().st_mtime_ns == before
    assert (run_dir / "logs" / "compress.log").exists()
    assert [r.name for r in broken.results if r.status == "ran"] == []  # nothing before it was redone


def _stage(pipeline: Pipeline, name: str) -> Stage:
    return next(s for s in pipeline.stages() if s.name == name)


def test_changed_or_deleted_output_reruns_its_stage_and_says_why(
    run_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The stamp records each stage's outputs: an output edited or deleted since the stage wrote it makes the stage
    run again (it is not trusted as up to date), with the reason in the log."""
    pipeline = Pipeline(PipelineConfig(run=str(run_dir), **TINY))
    stage = _stage(pipeline, "check_target")
    out = run_dir / "reports" / "check_target.json"
    good = out.read_text()
    assert pipeline.execute(stage).status == "skipped"

    out.write_text('{"edited": "by hand"}\n')
    caplog.set_level(logging.INFO, logger="runtime.pipeline")
    assert pipeline.execute(stage).status == "ran"
    assert f"output {out} changed since the stage wrote it" in caplog.text
    assert json.loads(out.read_text()) == json.loads(good)  # written again by the stage

    caplog.clear()
    out.unlink()
    assert pipeline.execute(stage).status == "ran"
    assert f"output {out} is missing" in caplog.text and out.exists()
    assert pipeline.execute(stage).status == "skipped"


def test_stage_commands_are_pasteable(run_dir: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The log's first line (and the terminal) show the complete command: the interpreter included, relative to
    the working folder when inside it."""
    first = (run_dir / "logs" / "compress.log").read_text().splitlines()[0]
    assert first.startswith("$ ")
    argv = shlex.split(first[2:])
    assert Path(argv[0]).resolve() == Path(sys.executable).resolve() and argv[1:3] == ["-m", "passes.compress"]

    exe = Path(sys.executable)
    monkeypatch.chdir(exe.parents[2])  # e.g. the repository holding .venv/bin/python
    assert shown_command([sys.executable, "-m", "x", "a b"]) == f"{exe.relative_to(exe.parents[2])} -m x 'a b'"
    monkeypatch.chdir(tmp_path)  # outside: the absolute path
    assert shown_command([sys.executable, "-m", "x"]) == f"{shlex.quote(str(exe))} -m x"


def test_training_stages_show_progress_and_no_teacher_cache(tmp_path: Path) -> None:
    """Training and distillation run without -q (their progress bars are shown and logged); the distill stage does
    not cache the teacher unless asked (one run never hits that cache)."""
    stages = {s.name: s for s in Pipeline(PipelineConfig(run=str(tmp_path), **TINY)).stages()}
    for name in ("train_teacher", "train_student", "distill"):
        assert "-q" not in stages[name].cmd, name
    assert "--cache-teacher" not in stages["distill"].cmd
    cached = Pipeline(PipelineConfig(run=str(tmp_path), cache_teacher=True, **TINY))
    assert "--cache-teacher" in _stage(cached, "distill").cmd


def test_compress_measures_damage_on_the_training_images_unless_told_otherwise(tmp_path: Path) -> None:
    assert PipelineConfig().importance == "sensitivity"
    measured = Pipeline(PipelineConfig(run=str(tmp_path), **{**TINY, "importance": "sensitivity"}))
    cmd = _stage(measured, "compress").cmd
    at = cmd.index("--importance")
    assert cmd[at + 1] == "sensitivity" and Path(cmd[cmd.index("--calib") + 1]) == tmp_path / "data"
    plain = _stage(Pipeline(PipelineConfig(run=str(tmp_path), **TINY)), "compress").cmd
    assert plain[plain.index("--importance") + 1] == "l2" and "--calib" not in plain  # said, not left to the default


def test_tee_keeps_lines_and_thins_progress_redraws() -> None:
    """Everything goes to the terminal as is; the log gets every line and, of the carriage-return redraws of a
    progress bar, one per interval (here: the first) and the final state that ends in a newline."""
    r, w = os.pipe()
    redraws = "".join(f"\rtrain: {i}/200 loss=0.5" for i in range(200))
    data = "start\n" + redraws + "\rtrain: 200/200 done\nstep 200 logged\r\nend"
    os.write(w, data.encode())
    os.close(w)
    log, echo = io.StringIO(), io.StringIO()
    tee_output(r, log, echo, progress_every=3600.0)
    os.close(r)
    assert echo.getvalue() == data
    assert log.getvalue().splitlines() == [
        "start",
        "train: 0/200 loss=0.5",
        "train: 200/200 done",
        "step 200 logged",
        "end",
    ]


def test_stage_output_is_streamed_while_it_runs(tmp_path: Path) -> None:
    """A stage's first line reaches the terminal and its log while the stage still runs (it waits for a file the
    test writes only after seeing that line)."""
    go, out = tmp_path / "go", tmp_path / "out.txt"
    child = (
        "import pathlib, sys, time\n"
        "print('first line', flush=True)\n"
        "t = time.time()\n"
        f"while not pathlib.Path({str(go)!r}).exists() and time.time() - t < 60: time.sleep(0.05)\n"
        f"pathlib.Path({str(out)!r}).write_text('done')\n"
    )
    echo = io.StringIO()
    pipeline = Pipeline(PipelineConfig(run=str(tmp_path / "run")), echo=echo)
    stage = Stage("wait", [sys.executable, "-c", child], [], [out])
    done = threading.Thread(target=pipeline.execute, args=(stage,))
    done.start()
    log_file = tmp_path / "run" / "logs" / "wait.log"
    deadline = time.time() + 60
    while "first line" not in echo.getvalue() and time.time() < deadline:
        time.sleep(0.05)
    seen_in_log = log_file.exists() and "first line" in log_file.read_text()
    still_running = not out.exists()
    go.write_text("")
    done.join(60)
    assert "first line" in echo.getvalue() and seen_in_log and still_running
    assert pipeline.results[-1].status == "ran"
