"""passes.compress: heads, head channels, neurons, widths and channels against one budget, one combined plan; the
zeroing oracle where it exists (not for widths: those are checked against torch)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from fileformat.plan import read_plan
from passes._core.oracle import plan_oracle
from passes._core.stats import graph_stats
from passes.compress import CompressConfig, compress, main
from passes.slice_channels import SliceChannelsConfig, slice_channels

from _helpers_channels import image, run  # isort: skip

TOL = 1e-4
EXACT = ("heads", "head_dim", "neurons", "channels")  # the kinds with a zeroing oracle


def test_all_kinds_round_trip_to_torch(exported) -> None:
    """The default budget cuts widths too; the torch model rebuilt from the plan reproduces the file."""
    from models.prune_torch import check_roundtrip

    path = exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")
    model = onnx.load(str(path))
    out, report = compress(model, CompressConfig(target_flops=0.3))
    plan = read_plan(out)
    assert plan["width"] and plan["neurons"] and plan["channels"], report.rows
    assert abs(graph_stats(out).flops / graph_stats(model).flops - 0.3) <= 0.02
    target = path.parent / "all_kinds.onnx"
    onnx.save(out, str(target))
    rt = check_roundtrip(target)
    assert rt.ok, rt.format()


def _combined_oracle(model: onnx.ModelProto, plan: dict) -> onnx.ModelProto:
    """The unpruned model with the consumers of every removed unit zeroed: projection rows of removed heads, fc2
    rows of removed neurons, input channels of the consumers of removed conv channels."""
    return plan_oracle(model, plan)


def test_uniform_budget_cuts_all_three_kinds_and_matches_the_oracle(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")))
    before = graph_stats(model)
    out, report = compress(model, CompressConfig(target_flops=0.3, allocation="uniform", units=EXACT))
    achieved = graph_stats(out).flops / before.flops
    assert abs(achieved - 0.3) <= 0.05 * 0.3
    assert report.extra["budget"]["achieved"] == pytest.approx(achieved)
    assert report.extra["steps"] == ["compress:head_dim", "compress:heads", "compress:neurons", "slice_channels"]
    plan = read_plan(out)
    assert plan["heads"] and plan["head_dim"] and plan["neurons"] and plan["channels"] and plan["slices"]
    assert all(len(e["kept"]) < 4 for e in plan["heads"].values())
    x = image(64, seed=12)
    assert np.abs(run(out, x) - run(_combined_oracle(model, plan), x)).max() <= TOL


def test_lamp_budget_and_plan_reuse_on_the_other_exporter(exported, tmp_path: Path) -> None:
    legacy = exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")
    model = onnx.load(str(legacy))
    out_path = tmp_path / "c.onnx"
    args = [str(legacy), "-o", str(out_path), "--target-flops", "0.2", "--units", ",".join(EXACT), "--importance", "l2"]
    assert main(args) == 0
    out = onnx.load(str(out_path))
    assert abs(graph_stats(out).flops / graph_stats(model).flops - 0.2) <= 0.01
    plan = read_plan(out)
    x = image(64, seed=13)
    assert np.abs(run(out, x) - run(_combined_oracle(model, plan), x)).max() <= TOL
    dynamo = exported("mobilevit_xxs", size=64, opset=17, exporter="dynamo")
    out_d = tmp_path / "d.onnx"
    assert main([str(dynamo), "-o", str(out_d), "--plan", str(out_path)]) == 0
    again = onnx.load(str(out_d))
    assert read_plan(again)["channels"] == plan["channels"]
    assert read_plan(again)["neurons"] == plan["neurons"]
    assert np.abs(run(again, x) - run(out, x)).max() <= TOL


def test_channels_only_equals_slice_channels(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")))
    a, _ = compress(model, CompressConfig(target_flops=0.4, units=("channels",), round_to=1))
    b, _ = slice_channels(model, SliceChannelsConfig(target_flops=0.4))
    assert read_plan(a)["channels"] == read_plan(b)["channels"]
    assert not read_plan(a)["neurons"] and not read_plan(a)["heads"]


def test_channels_and_widths_stay_multiples_of_eight(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")))
    out, _ = compress(model, CompressConfig(target_flops=0.3))
    plan = read_plan(out)
    kept = {**plan["channels"], **plan["width"]}
    assert kept
    for name, entry in kept.items():
        if entry["total"] % 8 == 0 and entry["total"] >= 16:
            assert len(entry["kept"]) % 8 == 0, (name, len(entry["kept"]), entry["total"])


def test_target_one_keeps_everything(exported) -> None:
    model = onnx.load(str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy")))
    out, report = compress(model, CompressConfig(target_flops=1.0))
    assert not report.modified and out.SerializeToString() == model.SerializeToString()


def test_cli_bad_inputs(exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    src = str(exported("mobilevit_xxs", size=64, opset=17, exporter="legacy"))
    out = str(tmp_path / "o.onnx")
    for extra, message in [
        (["--target-flops", "0"], "is not in (0, 1]"),  # refused when parsed
        (["--target-params", "2"], "is not in (0, 1]"),
        (["--target-flops", "0.5", "--latency-retries", "-1"], "argument --latency-retries"),
        (["--target-latency", "0.5", "--target-latency-of", src], "not both"),
        (["--target-latency-of", src], "same graph and weights as the input"),
        ([], "give exactly one of"),
        (["--target-flops", "0.5", "--units", "heads,filters"], "--units"),
    ]:
        try:
            code = main([src, "-o", out, *extra])
        except SystemExit as exc:
            code = exc.code
        assert code == 2, extra  # usage errors
        assert message in capsys.readouterr().err
    plan = tmp_path / "p.json"
    plan.write_text('{"channels": {"decoder.fusion.0": {"kept": [0, 1], "total": 7}}}')
    assert main([src, "-o", out, "--plan", str(plan)]) == 1
    assert "plan/model mismatch" in capsys.readouterr().err
    assert not Path(out).exists()
