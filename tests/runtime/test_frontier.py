"""The frontier runner at its tiny configuration: killed during a training it resumes from the checkpoint; it
writes the JSON, markdown and PNG; the compressed students land at their reference's measured latency; an ablation
that cannot reach the latency is recorded and the run goes on; a rerun skips every stage."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from models.synthetic import GENERATOR_VERSION
from runtime.frontier import Frontier, FrontierConfig, main, summarize

TEACHER_STEPS = 120  # a teacher long enough to be killed in the middle (it checkpoints every 2 steps)
TINY_ARGS = ["--tiny", "--teacher-steps", str(TEACHER_STEPS), "-q"]

# The tests on the tiny frontier run end to end (teacher, students, references, ablations: minutes alone on 2 idle
# cores) are a sweep, run by `make test-full`; compress and the benchmark time the students against their reference,
# so they run alone (timing).


def _start(run: Path) -> subprocess.Popen[bytes]:
    cmd = [sys.executable, "-m", "runtime.frontier", "--run", str(run), *TINY_ARGS]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture(scope="module")
def killed_and_resumed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, str]:
    """A tiny frontier killed (with its process group) once the teacher has a checkpoint, then started again."""
    run = tmp_path_factory.mktemp("frontier") / "run"
    ckpt = run / "train" / "teacher" / "checkpoint.pt"
    proc = _start(run)
    deadline = time.monotonic() + 240
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(0.5)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read().decode()  # type: ignore[union-attr]
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    log_before = (run / "logs" / "train_teacher.log").read_text()
    again = subprocess.run(
        [sys.executable, "-m", "runtime.frontier", "--run", str(run), *TINY_ARGS],
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    return run, log_before, again.stdout + again.stderr


@pytest.mark.sweep
@pytest.mark.timing
def test_a_killed_run_resumes_from_the_checkpoint(killed_and_resumed: tuple[Path, str, str]) -> None:
    run, log_before, _ = killed_and_resumed
    assert "trained mobilevit_xxs for" not in log_before  # killed before the training finished
    log_after = (run / "logs" / "train_teacher.log").read_text()
    assert log_after.startswith(log_before)  # the log is continued, not replaced
    assert "--resume" in log_after and "resumed from" in log_after
    resumed_at = int(log_after.split("resumed from", 1)[1].split("at step", 1)[1].split()[0])
    assert 0 < resumed_at <= TEACHER_STEPS
    assert not list((run / "stages").glob("*.started.json"))  # every stage finished


@pytest.mark.sweep
@pytest.mark.timing
def test_report_files_and_records(killed_and_resumed: tuple[Path, str, str]) -> None:
    run, _, out = killed_and_resumed
    doc = json.loads((run / "frontier.json").read_text())
    assert (run / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (run / "frontier.md").read_text()
    assert "| reference | seeds | Δ mIoU points" in md and "generator version" in md and "## Ablations" in md
    assert "Δ mIoU points" in out  # the CLI prints the tables
    assert (
        doc["data"]["synthetic"]
        and doc["data"]["generator_version"] == GENERATOR_VERSION == doc["config"]["generator_version"]
    )
    roles = sorted({r["role"] for r in doc["records"]})
    assert roles == ["ablation", "base", "reference", "student", "teacher"]
    refs = [r for r in doc["records"] if r["role"] == "reference"]
    assert sorted(r["seed"] for r in refs) == [0, 1]
    for r in doc["records"]:
        if r["role"] != "ablation" or r["variant"] == "ce":
            assert r["miou"] is not None and 0.0 <= r["miou"] <= 1.0, r["name"]
    comparison = doc["comparisons"][0]
    assert comparison["seeds"] == 2 and len(comparison["per_seed"]) == 2
    assert comparison["goal_met"] is False  # two seeds never meet a goal stated over three or more


@pytest.mark.sweep
@pytest.mark.timing
def test_students_match_their_reference_latency(killed_and_resumed: tuple[Path, str, str]) -> None:
    run, _, _ = killed_and_resumed
    doc = json.loads((run / "frontier.json").read_text())
    students = [r for r in doc["records"] if r["role"] == "student"]
    assert len(students) == 2
    for r in students:
        # compress held the cut to the reference's time, timed against it: within the frontier's tolerance
        assert abs(r["compress_measured"] / r["compress_target"] - 1.0) <= 0.10, r
        # the benchmark times the distilled student again, in another process. For models of ~1 ms that moves a
        # paired ratio by up to ~7 % (the same pair measured 0.90x and 0.97x in two processes), so this only
        # catches a gross miss; `matched` states the tolerance for the report
        assert r["latency_ratio"] is not None and abs(r["latency_ratio"] - 1.0) <= 0.25, r
        assert r["matched"] is (abs(r["latency_ratio"] - 1.0) <= 0.10)
        assert r["params"] < next(x["params"] for x in doc["records"] if x["name"] == f"paper_base_s{r['seed']}")


@pytest.mark.sweep
@pytest.mark.timing
def test_an_unreachable_ablation_is_recorded_and_the_run_goes_on(killed_and_resumed: tuple[Path, str, str]) -> None:
    run, _, _ = killed_and_resumed
    doc = json.loads((run / "frontier.json").read_text())
    heads = next(r for r in doc["records"] if r["variant"] == "units_heads")
    assert heads["failed"] and "target not reached" in heads["failed"] and heads["miou"] is None
    ce = next(a for a in doc["ablations"] if a["variant"] == "ce")
    assert ce["seeds"] == 1 and ce["delta_vs_main"] is not None
    assert "units_heads" in (run / "frontier.md").read_text().split("## Not measured", 1)[1]


@pytest.mark.sweep
@pytest.mark.timing
def test_a_rerun_skips_every_stage(killed_and_resumed: tuple[Path, str, str]) -> None:
    run, _, _ = killed_and_resumed
    from runtime.frontier import Frontier

    cfg = FrontierConfig.tiny(run=str(run), teacher_steps=TEACHER_STEPS)
    frontier = Frontier(cfg)
    frontier.run_all()
    ran = [r.name for r in frontier.results if r.status == "ran"]
    # the failed ablation is tried again (its compress fails fast); nothing else runs
    assert all("units_heads" in name for name in ran), ran


def _rec(role: str, seed: int, miou: float, ratio: float | None = None, ref: str | None = None) -> dict:
    return {
        "role": role,
        "model": "paper" if role == "student" else "small",
        "seed": seed,
        "ref": ref,
        "variant": "main",
        "miou": miou,
        "cpu_ms": 1.0,
        "wall_ms": 1.0,
        "latency_ratio": ratio,
        "params": 1,
        "failed": None,
        "matched": None if ratio is None else abs(ratio - 1) <= 0.1,
    }


def test_the_main_recipe_measures_each_cut_and_the_magnitude_ablation_does_not(tmp_path: Path) -> None:
    stages = {s.name: s.cmd for s in Frontier(FrontierConfig(run=str(tmp_path), seeds=1)).stages()}
    at = "compress_paper_at_mobilevit_xxs_upernet64_s0"
    for name in (at, f"{at}_units_heads"):
        cmd = stages[name]
        assert cmd[cmd.index("--importance") + 1] == "sensitivity" and "--calib" in cmd, name
    for name in (f"{at}_magnitude", f"{at}_uniform"):  # weight norms, said (not left to compress's default)
        cmd = stages[name]
        assert cmd[cmd.index("--importance") + 1] == "l2" and "--calib" not in cmd, name
    assert "--allocation" in stages[f"{at}_uniform"]


def test_goal_needs_three_seeds_two_points_and_matched_latency() -> None:
    refs = [_rec("reference", s, 0.40) for s in range(3)]
    good = [_rec("student", s, 0.43, 1.02, "small") for s in range(3)]
    cmp = summarize(refs + good, 0.10)["comparisons"][0]
    assert cmp["delta_miou_points"] == pytest.approx(3.0) and cmp["goal_met"] is True
    slow = [_rec("student", s, 0.43, 1.2 if s == 1 else 1.0, "small") for s in range(3)]
    assert summarize(refs + slow, 0.10)["comparisons"][0]["goal_met"] is False  # one seed's latency is off
    small_gain = [_rec("student", s, 0.41, 1.0, "small") for s in range(3)]
    assert summarize(refs + small_gain, 0.10)["comparisons"][0]["goal_met"] is False
    assert summarize(refs[:2] + good[:2], 0.10)["comparisons"][0]["goal_met"] is False  # two seeds


def test_bad_arguments_are_usage_errors(capsys: pytest.CaptureFixture[str]) -> None:
    for argv, text in (
        (["--ablations", "dropout"], "choose from"),
        (["--references", "mobilevit_xxl"], "unknown configuration"),
        (["--seeds", "0"], "must be >= 1"),
        (["--match-tolerance", "2"], "match-tolerance"),
    ):
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        assert text in capsys.readouterr().err
