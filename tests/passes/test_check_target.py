"""passes.check_target: operator/opset/type/shape/memory checks against device profiles, and the CLI."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import onnx
import pytest
from _helpers_deploy import conv_model, layernorm_reciprocal_model, qdq_model
from onnx import TensorProto, helper

from fileformat.metadata import read_metadata
from fileformat.targets import UnknownTargetError, get_target
from passes._core.stats import graph_stats
from passes.check_target import TRT_SUPPORTED_OPS, _trt_table, check_target, main


@pytest.fixture(scope="module")
def nano_export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """mobilevit_xxs at 64x64 exported through the CLI with ``--target jetson-nano``."""
    from exporters.export import main as export_main

    path = tmp_path_factory.mktemp("nano") / "xxs_nano.onnx"
    argv = ["--model", "mobilevit_xxs", "--input-size", "64", "--target", "jetson-nano", "-o", str(path)]
    assert export_main(argv) == 0
    return path


def _codes(result, severity: str) -> list[str]:
    return [f.code for f in result.findings if f.severity == severity]


def test_layernorm_opset17_fails_on_nano_with_op_named(exported, capsys) -> None:
    path = exported(opset=17)
    model = onnx.load(str(path))
    n_ln = sum(n.op_type == "LayerNormalization" for n in model.graph.node)
    assert n_ln == 21  # 9 transformer blocks x 2 + 3 stage norms
    result = check_target(model, "jetson-nano")
    assert not result.compatible
    ln = [f for f in result.errors if f.code == "unsupported-op" and f.message.startswith("LayerNormalization")]
    assert len(ln) == 1 and len(ln[0].nodes) == n_ln
    assert "opset" in _codes(result, "error")
    # nothing else of this graph is outside TensorRT 8.2's table
    assert [f.message.split()[0] for f in result.errors if f.code == "unsupported-op"] == ["LayerNormalization"]
    assert main([str(path), "--target", "jetson-nano"]) == 1
    out = capsys.readouterr().out
    assert "NOT COMPATIBLE" in out and "LayerNormalization" in out and "--target jetson-nano" in out


def test_same_model_exported_for_nano_passes(nano_export: Path, tmp_path: Path, capsys) -> None:
    model = onnx.load(str(nano_export))
    meta = read_metadata(model)
    assert meta["target"] == "jetson-nano" and meta["opset"] == 13
    assert not any(n.op_type == "LayerNormalization" for n in model.graph.node)
    result = check_target(model, "jetson-nano")
    assert result.compatible, result.format()
    assert result.errors == [] and result.warnings == []
    report = tmp_path / "r.json"
    assert main([str(nano_export), "--target", "jetson-nano", "--json", str(report)]) == 0
    assert "COMPATIBLE" in capsys.readouterr().out
    doc = json.loads(report.read_text())
    assert doc["compatible"] is True and doc["schema_version"] == 1 and doc["target"] == "jetson-nano"


def test_orin_accepts_opset17_layernorm(exported) -> None:
    result = check_target(onnx.load(str(exported(opset=17))), "jetson-orin")
    assert result.compatible, result.format()


def test_latency_estimate_is_the_stated_roofline(nano_export: Path) -> None:
    model = onnx.load(str(nano_export))
    nano = get_target("jetson-nano")
    e = check_target(model, nano).estimate
    flops = graph_stats(model).flops
    assert e["flops"] == flops and flops > 4e8  # 0.45 GFLOPs at 64x64
    compute_ms = 1e3 * flops / (nano.peak_gflops * 1e9 * nano.compute_efficiency)
    assert e["compute_ms"] == pytest.approx(compute_ms, rel=1e-12)
    assert e["latency_ms"] == pytest.approx(max(e["compute_ms"], e["memory_ms"]), rel=1e-12)
    assert e["fps"] == pytest.approx(1e3 / e["latency_ms"])
    assert "ESTIMATE" in e["label"] and "not a measurement" in e["label"]
    # batch 2 doubles the compute term
    e2 = check_target(model, nano, dataclasses.replace(_cfg(), batch=2)).estimate
    assert e2["compute_ms"] == pytest.approx(2 * compute_ms)


def _cfg():
    from passes.check_target import CheckConfig

    return CheckConfig()


def test_int8_qdq_warns_on_nano_but_not_on_orin() -> None:
    model = qdq_model()
    nano = check_target(model, "jetson-nano")
    assert nano.compatible, nano.format()
    assert _codes(nano, "warning") == ["int8-no-speedup"]
    assert set(nano.warnings[0].nodes) == {"q_in", "dq_in", "dq_w"}
    orin = check_target(model, "jetson-orin")
    assert orin.compatible and orin.warnings == [] and "int8" in _codes(orin, "info")


def test_asymmetric_uint8_qdq_is_rejected_by_tensorrt() -> None:
    result = check_target(qdq_model(zero_point=128, unsigned=True), "jetson-nano")
    assert not result.compatible
    msgs = " ".join(f.message for f in result.errors)
    assert "zero point must be a constant 0" in msgs and "UINT8" in msgs
    restricted = {n for f in result.errors if f.code == "restriction" for n in f.nodes}
    assert restricted == {"q_in", "dq_in"}  # the weights' zero point is 0


def test_dynamic_batch_warns_dynamic_spatial_fails() -> None:
    dyn_batch = check_target(conv_model(batch="N"), "jetson-nano")
    assert dyn_batch.compatible and _codes(dyn_batch, "warning") == ["dynamic-batch"]
    dyn_hw = check_target(conv_model(batch="N", size="H"), "jetson-nano")
    assert not dyn_hw.compatible
    assert [f.code for f in dyn_hw.errors] == ["dynamic-shape", "dynamic-shape"]  # axes 2 and 3
    assert check_target(conv_model(batch="N", size="H"), "cpu").compatible  # onnxruntime has no such limit


def test_reciprocal_needs_trt_85_and_custom_domains_fail() -> None:
    model = layernorm_reciprocal_model()
    nano = check_target(model, "jetson-nano")
    assert [(f.code, f.nodes) for f in nano.errors] == [("unsupported-op", ["rec"])]
    assert check_target(model, "jetson-orin").compatible
    custom = conv_model()
    custom.graph.node[1].domain = "com.microsoft"
    custom.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    result = check_target(custom, "jetson-nano")
    assert [(f.code, f.nodes) for f in result.errors] == [("custom-domain", ["relu"])]


def test_fp16_on_cpu_warns_and_bfloat16_fails_on_trt() -> None:
    model = conv_model()
    relu = model.graph.node[1]
    relu.output[0] = "r16"
    model.graph.node.insert(2, helper.make_node("Cast", ["r16"], ["rb"], name="to_bf16", to=TensorProto.BFLOAT16))
    model.graph.node.insert(3, helper.make_node("Cast", ["rb"], ["r"], name="from_bf16", to=TensorProto.FLOAT))
    result = check_target(model, "jetson-nano")
    assert [(f.code, f.nodes) for f in result.errors] == [("dtype", ["rb"])]
    assert "BFLOAT16" in result.errors[0].message
    from onnxconverter_common import float16

    half = float16.convert_float_to_float16(conv_model(), keep_io_types=True)
    cpu = check_target(half, "cpu")
    assert "fp16-slow" in _codes(cpu, "warning")


def test_memory_budget() -> None:
    tiny_budget = dataclasses.replace(get_target("jetson-nano"), memory_budget_mb=1)
    model = conv_model(size=256)
    result = check_target(model, tiny_budget)
    assert "memory" in _codes(result, "warning")  # 512 MB workspace > 1 MB, weights are tiny
    m = result.memory
    assert m["total_mb"] == pytest.approx(m["weights_mb"] + m["activations_mb"] + m["workspace_mb"])
    # activations: h, r (8 x 256 x 256) and logits (4 x 256 x 256), FP16 on a --fp16 build
    assert m["activations_mb"] == pytest.approx((8 + 8 + 4) * 256 * 256 * 2 / 2**20)
    no_room = dataclasses.replace(tiny_budget, memory_budget_mb=0)
    assert "memory" in [f.code for f in check_target(model, no_room).errors]


def test_trt_table_versions() -> None:
    assert _trt_table("8.2")[0] == "8.2" and _trt_table("8.5.2")[0] == "8.5" and _trt_table("10.3")[0] == "8.6"
    assert "LayerNormalization" not in TRT_SUPPORTED_OPS["8.5"] and "LayerNormalization" in TRT_SUPPORTED_OPS["8.6"]
    assert "Xor" not in TRT_SUPPORTED_OPS["8.2"] and "Reciprocal" not in TRT_SUPPORTED_OPS["8.2"]


def test_bad_inputs(tmp_path: Path, capsys) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), str(path))
    with pytest.raises(SystemExit) as exc:
        main([str(path), "--target", "jetson-tx2"])
    assert exc.value.code == 2
    assert "jetson-nano" in capsys.readouterr().err  # the choices are listed
    with pytest.raises(UnknownTargetError, match="jetson-tx2"):
        check_target(conv_model(), "jetson-tx2")
    assert main([str(tmp_path / "missing.onnx"), "--target", "cpu"]) == 1
    assert "no such file" in capsys.readouterr().err
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    assert main([str(tmp_path / "junk.onnx"), "--target", "cpu"]) == 1
    with pytest.raises(SystemExit) as exc:
        main([str(path)])  # --target is required
    assert exc.value.code == 2
