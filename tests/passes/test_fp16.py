"""Tests of ``passes.fp16``: overflow under true FP16 arithmetic, calibration, raw exports, idempotence, bad input.

Overflow checks run in onnx's reference evaluator, which computes float16 tensors in float16 (onnxruntime's CPU
provider computes many float16 ops in float32 and would hide the overflow).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _helpers_precision import hot_conv, layernorm_sandwich, run_reference, trained_model
from onnx import TensorProto, helper, numpy_helper

from fileformat.errors import PassError
from passes._core.finalize import cleanup
from passes.fp16 import FP16_MAX, FP16Config, already_fp16, convert_fp16, find_layernorm_chains, main


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    return trained_model(tmp_path_factory)


def _naive(model: onnx.ModelProto) -> onnx.ModelProto:
    """onnxruntime's converter with its defaults (FP32 I/O), toposorted for the reference evaluator."""
    from onnxruntime.transformers.float16 import convert_float_to_float16

    return cleanup(convert_float_to_float16(onnx.load_from_string(model.SerializeToString()), keep_io_types=True))


def _session(model: onnx.ModelProto | Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    src = str(model) if isinstance(model, Path) else model.SerializeToString()
    return ort.InferenceSession(src, options, providers=["CPUExecutionProvider"])


def _types(model: onnx.ModelProto) -> dict[str, int]:
    inferred = onnx.shape_inference.infer_shapes(model)
    out = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    out.update({v.name: v.type.tensor_type.elem_type for v in list(model.graph.input) + list(model.graph.output)})
    out.update({i.name: i.data_type for i in model.graph.initializer})
    return out


# ------------------------------------------------------------------------------------------ planted overflows


def test_decomposed_layernorm_overflow_is_kept_fp32_without_data() -> None:
    """The opset-13 LayerNorm on inputs of a few hundred: naive FP16 gets it wrong, ours matches FP32."""
    model = layernorm_sandwich()
    x = (300 * np.random.default_rng(1).standard_normal((1, 16, 32))).astype(np.float32)
    h = x @ numpy_helper.to_array(next(i for i in model.graph.initializer if i.name == "w1"))
    assert ((h - h.mean(-1, keepdims=True)) ** 2).max() > FP16_MAX  # the square really leaves the FP16 range
    ref = run_reference(model, {"x": x})
    assert np.isfinite(ref).all() and np.abs(ref).max() > 0.5

    naive = run_reference(_naive(model), {"x": x})
    naive_err = np.nan_to_num(np.abs(naive - ref), nan=np.inf).max()
    assert naive_err > 0.5 * np.abs(ref).max()  # the whole LayerNorm output collapsed

    before = model.SerializeToString()
    ours, report = convert_fp16(model)
    assert model.SerializeToString() == before  # the input model is not changed
    out = run_reference(ours, {"x": x})
    assert np.abs(out - ref).max() < 5e-3 * np.abs(ref).max()
    # the matmuls run in FP16, the nine LayerNorm ops in FP32, reading FP32 values (no FP16 round trip in between)
    types = _types(ours)
    node = {n.name: n for n in ours.graph.node}
    assert types[node["fc1"].input[1]] == TensorProto.FLOAT16 and types[node["fc2"].input[1]] == TensorProto.FLOAT16
    for name in ("ln/Sub", "ln/Pow", "ln/ReduceMean_1", "ln/Sqrt", "ln/Div", "ln/Add_1"):
        assert all(types[i] == TensorProto.FLOAT for i in node[name].input), name
    assert find_layernorm_chains(model) == [
        ["ln/ReduceMean", "ln/Sub", "ln/Pow", "ln/ReduceMean_1", "ln/Add", "ln/Sqrt", "ln/Div", "ln/Mul", "ln/Add_1"]
    ]
    assert sum(r["fp32"] for r in report.rows) == 11  # 9 LayerNorm ops + the two constants only they read


def test_activation_overflow_is_caught_only_with_calibration() -> None:
    """A conv whose output reaches ~1e5 with in-range weights: no block list sees it, calibration does."""
    model = hot_conv()
    img = np.random.default_rng(0).uniform(-2.1, 2.6, (1, 3, 32, 32)).astype(np.float32)
    ref = run_reference(model, {"image": img})

    plain, _ = convert_fp16(model)
    assert not np.isfinite(run_reference(plain, {"image": img})).all()  # inf in FP16 without data

    calibrated, report = convert_fp16(model, calib=[{"image": img}])
    out = run_reference(calibrated, {"image": img})
    assert np.isfinite(out).all()
    assert np.abs(out - ref).max() < 2e-3 * np.abs(ref).max()
    kept = report.extra["fp32_nodes"]
    assert "hot/Conv" in kept and "cool/Mul" in kept and "cls/Conv" not in kept
    assert report.extra["calibration"]["out_of_range"]["hot"] > FP16_MAX


def test_calibration_from_an_image_folder_cli(tmp_path: Path) -> None:
    """``--calib DATA`` reads images (resized to the 32x32 input) and keeps the hot conv in FP32."""
    from models.calib import image_feeds, input_spec, list_images
    from models.synthetic import generate

    data = tmp_path / "syn"
    generate(data, n_train=3, n_val=1, size=48, seed=0, workers=1)
    model = hot_conv(gain=4e4)
    src = tmp_path / "hot.onnx"
    onnx.save(model, str(src))
    (img,) = [f["image"] for f in image_feeds(list_images(data), input_spec(model), count=1, progress=False)]
    ref = run_reference(model, {"image": img})
    plain = tmp_path / "plain.onnx"
    assert main([str(src), "-o", str(plain)]) == 0
    assert not np.isfinite(run_reference(onnx.load(str(plain)), {"image": img})).all()
    out = tmp_path / "hot_fp16.onnx"
    assert main([str(src), "-o", str(out), "--calib", str(data), "--calib-count", "2", "--no-progress"]) == 0
    converted = onnx.load(str(out))
    result = run_reference(converted, {"image": img})
    assert np.isfinite(result).all() and np.abs(result - ref).max() < 2e-3 * np.abs(ref).max()
    history = [p for p in converted.metadata_props if p.key == "vitseg.history"]
    assert history and '"calib_images": 2' in history[0].value


def test_out_of_range_constant_keeps_its_reader_fp32_or_is_clamped_at_65504() -> None:
    """``Div(x, 2e5)``: the constant stays exact (its reader FP32); ``clamp=True`` clamps it to 65504, not 1e4."""
    x_info = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y_info = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    nodes = [
        helper.make_node("Div", ["x", "big"], ["small"], name="div"),
        helper.make_node("Mul", ["small", "k"], ["y"], name="mul"),
    ]
    inits = [
        numpy_helper.from_array(np.asarray(2e5, np.float32), "big"),
        numpy_helper.from_array(np.asarray(1e3, np.float32), "k"),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "g", [x_info], [y_info], inits), opset_imports=[helper.make_opsetid("", 17)]
    )
    x = np.linspace(50, 100, 8, dtype=np.float32)[None]
    ref = x / 2e5 * 1e3

    ours, report = convert_fp16(model)
    np.testing.assert_allclose(run_reference(ours, {"x": x}), ref, rtol=2e-3)
    assert report.extra["fp32_nodes"] == {"div": ["reads constant big that holds |x| = 2e+05 > 65504"]}
    assert {i.name: i.data_type for i in ours.graph.initializer} == {"big": TensorProto.FLOAT, "k": TensorProto.FLOAT16}

    clamped, report = convert_fp16(model, FP16Config(clamp=True))
    big = numpy_helper.to_array(next(i for i in clamped.graph.initializer if i.name == "big"))
    assert big.dtype == np.float16 and float(big) == FP16_MAX
    np.testing.assert_allclose(run_reference(clamped, {"x": x}), x / FP16_MAX * 1e3, rtol=2e-3)
    assert report.extra["clamped_constants"] == ["big"]


# ------------------------------------------------------------------------------------------ real exports


@pytest.mark.slow
def test_trained_model_keeps_pixel_agreement(trained, tmp_path: Path) -> None:
    """Trained xxs (opsets 13 and 17): FP16 weights except the blocked ops, runs in onnxruntime, >= 99.5 % agreement."""
    from runtime.parity import ParityConfig, compare_models

    for src, ln_op in ((trained.onnx17, "LayerNormalization"), (trained.onnx13, "Pow")):
        out_path = tmp_path / (src.stem + "_fp16.onnx")
        assert main([str(src), "-o", str(out_path), "--report", str(tmp_path / "r.json")]) == 0
        fp16 = onnx.load(str(out_path))
        # weights: FP16 except the ones only FP32 nodes read (LayerNorm gamma/beta, constants of the LN chains)
        readers: dict[str, list[onnx.NodeProto]] = {}
        for node in fp16.graph.node:
            for i in node.input:
                readers.setdefault(i, []).append(node)
        kinds = {i.data_type for i in fp16.graph.initializer if i.data_type in (TensorProto.FLOAT, TensorProto.FLOAT16)}
        assert kinds == {TensorProto.FLOAT, TensorProto.FLOAT16}
        for init in fp16.graph.initializer:
            if init.data_type == TensorProto.FLOAT and init.dims and np.prod(init.dims) > 1:
                ops = {r.op_type for r in readers.get(init.name, [])}
                assert ops <= {"LayerNormalization", "Mul", "Add", "Identity"}, (init.name, ops)
        conv_w = [n.input[1] for n in fp16.graph.node if n.op_type == "Conv"]
        types = _types(fp16)
        assert conv_w and all(types[w] == TensorProto.FLOAT16 for w in conv_w)
        for node in fp16.graph.node:  # Softmax and LayerNorm compute in FP32
            if node.op_type in ("Softmax", ln_op):
                assert types[node.input[0]] == TensorProto.FLOAT, node.name
        assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
        assert fp16.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
        assert out_path.stat().st_size < 0.6 * src.stat().st_size
        # the legacy opset-17 attention scale chain Shape -> Slice -> Cast -> Sqrt -> Div now casts to FP16
        if src == trained.onnx17:
            scale_casts = {n.name for n in onnx.load(str(src)).graph.node if n.op_type == "Cast" and "attn" in n.name}
            casts = [n for n in fp16.graph.node if n.name in scale_casts]
            assert len(casts) == len(scale_casts) > 0
            assert all(a.i == TensorProto.FLOAT16 for n in casts for a in n.attribute if a.name == "to")
        x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float32)
        a = _session(src).run(None, {"image": x})[0]
        b = _session(out_path).run(None, {"image": x})[0]
        assert b.dtype == np.float32 and np.abs(a - b).max() < 0.05
        result = compare_models(
            src, out_path, trained.data, ParityConfig(check="agreement", progress=False, save_count=0)
        )
        assert result.passed and result.agreement >= 99.5, result.agreement


def test_second_application_changes_nothing(exported, tmp_path: Path) -> None:
    """FP16 in -> "already FP16": the API returns the model unchanged, the CLI writes nothing and exits 1."""
    src = exported(opset=17)
    once = tmp_path / "once.onnx"
    twice = tmp_path / "twice.onnx"
    assert main([str(src), "-o", str(once)]) == 0
    # nothing to do: exit 1, nothing written (the one policy of every pass)
    assert main([str(once), "-o", str(twice), "--report", str(tmp_path / "r.json")]) == 1
    assert not twice.exists() and not (tmp_path / "r.json").exists()
    model = onnx.load(str(once))
    assert already_fp16(model) is not None
    again, report = convert_fp16(model)
    assert not report.modified and "already FP16" in report.notes[0]
    assert again.SerializeToString() == model.SerializeToString()


def test_already_fp16_without_history() -> None:
    """A model with float16 weights but no vitseg history (e.g. exported with .half()) is left alone too."""
    w = numpy_helper.from_array(np.ones((4, 4), np.float16), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT16, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4])],
        [w],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    out, report = convert_fp16(model)
    assert not report.modified and "float16" in report.notes[0]
    assert out.SerializeToString() == model.SerializeToString()


def test_fp16_io_and_keep_fp32(exported, tmp_path: Path) -> None:
    """``--fp16-io`` makes I/O float16; ``--keep-fp32`` takes op types and node-name patterns."""
    src = exported(opset=17)
    out = tmp_path / "io16.onnx"
    assert main([str(src), "-o", str(out), "--fp16-io", "--keep-fp32", "Resize", "/decoder/*"]) == 0
    model = onnx.load(str(out))
    assert model.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    assert model.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT16
    x = np.random.default_rng(0).standard_normal((1, 3, 64, 64)).astype(np.float16)
    y = _session(out).run(None, {"image": x})[0]
    assert y.dtype == np.float16 and y.shape == (1, 14, 64, 64) and np.isfinite(y).all()
    types = _types(model)
    decoder = [n for n in model.graph.node if n.name.startswith("/decoder/") and n.op_type == "Conv"]
    assert decoder and all(types[n.input[1]] == TensorProto.FLOAT for n in decoder)
    resizes = [n for n in model.graph.node if n.op_type == "Resize"]
    assert resizes and all(types[n.input[0]] == TensorProto.FLOAT for n in resizes)
    backbone = [n for n in model.graph.node if n.name.startswith("/backbone/") and n.op_type == "Conv"]
    assert backbone and all(types[n.input[1]] == TensorProto.FLOAT16 for n in backbone)


def test_bad_inputs(exported, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Unknown --keep-fp32, missing or empty calibration folder, zero images, output = input: exit 1 with a reason."""
    src = exported(opset=17)
    out = str(tmp_path / "o.onnx")
    assert main([str(src), "-o", out, "--keep-fp32", "NoSuchOp"]) == 1
    assert "matches no op type or node name" in capsys.readouterr().err
    assert main([str(src), "-o", out, "--calib", str(tmp_path / "missing")]) == 1
    assert "no such folder" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(src), "-o", out, "--calib", str(tmp_path / "empty")]) == 1
    assert "no images" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # refused when parsed: a usage error
        main([str(src), "-o", out, "--calib", str(tmp_path / "empty"), "--calib-count", "0"])
    assert exc.value.code == 2 and "--calib-count: 0 is not >= 1" in capsys.readouterr().err
    assert main([str(src), "-o", str(src)]) == 2  # a usage error
    assert "never overwritten" in capsys.readouterr().err
    assert not Path(out).exists()
    with pytest.raises(PassError, match="no image"):
        convert_fp16(onnx.load(str(src)), calib=[])
