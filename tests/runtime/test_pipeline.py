"""The main job end to end at tiny sizes: every stage measured, reruns skip, a failed stage keeps what came before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runtime.pipeline import Pipeline, PipelineConfig, StageFailed

TINY = dict(
    size=64,
    n_train=8,
    n_val=4,
    student="mobilevit_xxs",
    teacher="mobilevit_xxs",
    frontier=("mobilevit_xs",),
    student_steps=3,
    teacher_steps=3,
    distill_steps=2,
    batch_size=2,
    calib_count=4,
    bench_runs=3,
    threads=2,
)


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
    assert pruned["flops"] < 0.5 * base["flops"]  # the budget asked for 0.25 of the FLOPs
    assert report["data"] == "synthetic"
    assert [r["stage"] for r in report["frontier"]] == ["mobilevit_xxs (uncompressed)", "mobilevit_xs (uncompressed)"]
    assert report["teacher"]["miou"] is not None
    for png in ("accuracy_vs_latency.png", "per_class_iou.png"):
        assert (run_dir / png).stat().st_size > 10_000
    md = (run_dir / "report.md").read_text()
    assert "| baseline |" in md and "synthetic" in md
    assert (run_dir / "bundle" / "build_engine.sh").exists()


def test_rerun_skips_every_done_stage(run_dir: Path) -> None:
    pipeline = Pipeline(PipelineConfig(run=str(run_dir), **TINY))
    pipeline.run_all()
    assert pipeline.results and all(r.status == "skipped" for r in pipeline.results)


def test_failed_stage_stops_and_keeps_earlier_outputs(run_dir: Path) -> None:
    baseline = run_dir / "onnx" / "baseline.onnx"
    before = baseline.stat().st_mtime_ns
    broken = Pipeline(PipelineConfig(run=str(run_dir), **{**TINY, "target_flops": 7.0}))  # not a fraction
    with pytest.raises(StageFailed, match="stage compress failed") as info:
        broken.run_all()
    assert "target" in str(info.value)  # the log's tail says what was wrong
    assert baseline.stat().st_mtime_ns == before
    assert (run_dir / "logs" / "compress.log").exists()
    assert [r.name for r in broken.results if r.status == "ran"] == []  # nothing before it was redone
