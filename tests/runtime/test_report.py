"""The pipeline's report says what its table alone would hide: collapsed models, stages that predict what another
predicts, equal latency only where it holds; its table fits 120 columns; `python -m runtime.report` answers."""

from __future__ import annotations

from pathlib import Path

import pytest

from runtime.report import equal_latency_text, format_markdown, format_markdown_table, main, warnings_of


def _row(stage: str, pred: list[int], agreement: float | None = None, **kw: object) -> dict:
    base = {
        "stage": stage,
        "params": 0.861,
        "flops": 0.612,
        "file_mb": 3.79,
        "latency_ms": 4.27,
        "latency_ratio": 0.462,
        "miou": 0.0572,
        "mdice": 0.05,
        "agreement": agreement,
        "nano_fps_estimate": 192.9,
        "per_class_iou": [0.0] * len(pred),
        "pred_pixels": pred,
    }
    return {**base, **kw}


def _report(stages: list[dict], frontier: list[dict] | None = None, eq: dict | None = None) -> dict:
    report = {
        "date": "2026-12-07",
        "machine": "vm",
        "python": "3.11",
        "data": "synthetic",
        "generator_version": 2,
        "config": {"student": "paper", "teacher": "paper", "size": 128, "match_latency_of": "xxs", "target": "cpu",
                   "threads": 2, "latency_threads": 1, "target_flops": 0.25},
        "stages": stages,
        "frontier": frontier or [],
        "teacher": None,
        "parity": {},
        "check_target": None,
        "equal_latency": eq,
    }  # fmt: skip
    report["warnings"] = warnings_of(report)
    return report


def test_a_collapsed_model_and_a_stage_that_copies_another_are_said() -> None:
    constant = [0, 0, 4096, 0]
    stages = [_row("baseline", constant), _row("pruned", constant, 1.0), _row("distilled", constant, 1.0)]
    text = warnings_of(_report(stages))
    assert len(text) == 1 and text[0].startswith("baseline, pruned, distilled predict 'building_undamaged' on every")
    mixed = [_row("baseline", [10, 20, 30, 0]), _row("pruned", [10, 20, 30, 0], 1.0), _row("distilled", [5, 25, 30, 0])]
    text = warnings_of(_report(mixed))
    assert text == ["pruned predicts exactly what baseline predicts, on every pixel"]
    healthy = [_row("baseline", [10, 20, 30, 0]), _row("pruned", [12, 18, 30, 0], 0.9)]
    assert warnings_of(_report(healthy)) == []
    md = format_markdown(_report(stages))
    assert "**warning**: baseline, pruned, distilled predict" in md


def test_equal_latency_only_within_the_tolerance() -> None:
    eq = {"reference": "mobilevit_xxs_upernet64", "reference_steps": 500, "delta_miou_points": -2.07}
    assert equal_latency_text({**eq, "latency_ratio": 0.987}, "paper").startswith("at equal latency: the distilled")
    off = equal_latency_text({**eq, "latency_ratio": 0.847}, "paper")
    assert off.startswith("not at equal latency: the distilled `paper` takes 0.847x the CPU time")
    assert "15% less CPU time" in off and "-2.07 mIoU points" in off
    assert "8% more CPU time" in equal_latency_text({**eq, "latency_ratio": 1.08}, "paper")


def test_the_table_fits_120_columns_and_threads_are_counted_right() -> None:
    rows = [_row("baseline", [1, 2]), _row("distilled", [1, 3], 0.8338)]
    front = [_row("mobilevit_xxs_upernet64 (uncompressed)", [1, 1])]
    report = _report(rows, front)
    assert max(len(line) for line in format_markdown_table(report).splitlines()) <= 120
    md = format_markdown(report)
    assert "onnxruntime CPU, 1 thread," in md and "1 threads" not in md


def test_the_command_line_answers(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exc:
        main(["--help"])
    assert exc.value.code == 0 and capsys.readouterr().out.startswith("usage: python -m runtime.report")
    assert main([str(tmp_path)]) == 1  # no config.json: not a run folder
    assert "not a pipeline run's configuration" in capsys.readouterr().err
