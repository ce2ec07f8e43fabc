"""Tests of ``passes.int8``: QDQ model runs, mIoU drop on a trained model, exclusions, calibration, activation
symmetry per target, bad input."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _helpers_precision import hot_conv, trained_model
from onnx import TensorProto, numpy_helper

from fileformat.errors import PassError
from models.calib import image_feeds, input_spec, list_images
from passes.int8 import Int8Config, activation_symmetry, classifier_convs, is_quantized, main, quantize_int8


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory):
    return trained_model(tmp_path_factory)


@pytest.fixture(scope="module")
def int8_model(trained, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The trained opset-17 model quantized through the CLI for Jetson Orin (8 calibration images of the train
    split): symmetric activations, as TensorRT needs."""
    out = tmp_path_factory.mktemp("int8") / "int8.onnx"
    args = [str(trained.onnx17), "-o", str(out), "--calib", str(trained.data), "--calib-count", "8", "--no-progress"]
    code = main([*args, "--target", "orin"])
    assert code == 0
    return out


def _producers(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {o: n for n in model.graph.node for o in n.output}


@pytest.mark.slow
def test_trained_model_int8_runs_and_keeps_miou(trained, int8_model: Path) -> None:
    """QDQ model runs in onnxruntime; mIoU drop on synthetic val is reported and within 0.5 points."""
    from runtime.parity import ParityConfig, compare_models

    model = onnx.load(str(int8_model))
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("QuantizeLinear") > 20 and ops.count("DequantizeLinear") > 40
    options = ort.SessionOptions()
    options.log_severity_level = 3
    session = ort.InferenceSession(str(int8_model), options, providers=["CPUExecutionProvider"])
    y = session.run(None, {"image": np.zeros((1, 3, 64, 64), np.float32)})[0]
    assert y.shape == (1, 14, 64, 64) and y.dtype == np.float32 and np.isfinite(y).all()
    assert int8_model.stat().st_size < 0.45 * trained.onnx17.stat().st_size  # INT8 weights: about 4x smaller
    result = compare_models(
        trained.onnx17, int8_model, trained.data, ParityConfig(check="both", progress=False, save_count=0)
    )
    assert result.miou_drop_points is not None and result.miou_drop_points <= 0.5, result.miou_drop_points
    assert result.checks["miou_drop"]["passed"]
    assert result.agreement > 97.0  # not bit-exact, but the same segmentation almost everywhere
    history = [p.value for p in model.metadata_props if p.key == "vitseg.history"]
    assert history and '"pass": "int8"' in history[0] and '"calib_images": 8' in history[0]


@pytest.mark.slow
def test_excluded_ops_stay_float_and_quantization_is_symmetric_per_channel(int8_model: Path) -> None:
    """Softmax, LayerNorm and the classifier read no dequantized tensor; zero points 0; one scale per channel."""
    model = onnx.load(str(int8_model))
    producers = _producers(model)
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}

    def dequantized(name: str) -> bool:
        return name in producers and producers[name].op_type == "DequantizeLinear"

    sensitive = [n for n in model.graph.node if n.op_type in ("Softmax", "LayerNormalization")]
    assert len(sensitive) == 30
    assert not any(dequantized(i) for n in sensitive for i in n.input)
    (cls,) = classifier_convs(model)
    cls_node = next(n for n in model.graph.node if n.name == cls)
    assert not any(dequantized(i) for i in cls_node.input)
    assert inits[cls_node.input[1]].dtype == np.float32  # the classifier weight is still float32
    convs = [n for n in model.graph.node if n.op_type == "Conv" and n.name != cls]
    assert convs and all(dequantized(n.input[0]) and dequantized(n.input[1]) for n in convs)
    for node in model.graph.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear") and len(node.input) > 2:
            zp = inits[node.input[2]]  # int8 for weights and activations, int32 for biases
            assert zp.dtype in (np.int8, np.int32) and not zp.any(), node.name  # symmetric: zero point 0
    # per-channel weights: a 1-D scale with one entry per output channel
    w_dq = producers[convs[0].input[1]]
    weight = inits[w_dq.input[0]]
    assert weight.dtype == np.int8 and inits[w_dq.input[1]].shape == (weight.shape[0],)
    assert np.abs(weight).max() == 127  # symmetric range [-127, 127] reaches its end on the largest weight


def test_calibration_methods_give_different_ranges() -> None:
    """MinMax, entropy and percentile all run; on heavy-tailed (Laplace) inputs the histogram methods clip the tail.

    A two-conv model (``hot_conv`` with unit gain) keeps the histogram methods fast; MinMax takes ``max |x|``, the
    99th percentile and the KL-optimal threshold lie below it for every quantized activation.
    """
    model = hot_conv(gain=1.0)
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.laplace(0.0, 1.0, (1, 3, 32, 32)).astype(np.float32)} for _ in range(4)]
    scales: dict[str, dict[str, float]] = {}
    for method in ("minmax", "percentile", "entropy"):
        config = Int8Config(
            method=method, percentile=99.0, preprocess=False, default_exclusions=False, symmetric_activations=True
        )
        out, report = quantize_int8(model, feeds, config)
        assert report.extra["calibration"] == {"images": 4, "method": method, "percentile": 99.0}
        inits = {i.name: numpy_helper.to_array(i) for i in out.graph.initializer}
        scales[method] = {n.input[0]: float(inits[n.input[1]]) for n in out.graph.node if n.op_type == "QuantizeLinear"}
    assert set(scales["minmax"]) == set(scales["percentile"]) == set(scales["entropy"]) >= {"image", "hot", "cool"}
    peak = max(float(np.abs(f["image"]).max()) for f in feeds)
    assert scales["minmax"]["image"] == pytest.approx(peak / 127, rel=1e-5)  # symmetric: s = max|x| / 127
    for tensor, minmax in scales["minmax"].items():
        assert scales["percentile"][tensor] < 0.8 * minmax, tensor
        assert scales["entropy"][tensor] < 0.95 * minmax, tensor


def _zero_points(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Activation zero points by quantized tensor (QuantizeLinear nodes only: activations, not weights)."""
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    return {n.input[0]: inits[n.input[2]] for n in model.graph.node if n.op_type == "QuantizeLinear"}


@pytest.mark.parametrize(
    ("target", "override", "symmetric"),
    [
        (None, None, False),  # no target recorded: cpu, asymmetric (the old default was symmetric)
        ("cpu", None, False),
        ("jetson-orin", None, True),
        ("nano", None, True),  # the short name of jetson-nano
        ("cpu", True, True),  # --symmetric wins over the target
        ("jetson-orin", False, False),  # --asymmetric wins over the target
    ],
)
def test_activation_symmetry_follows_the_target(target: str | None, override: bool | None, symmetric: bool) -> None:
    """Asymmetric activations for onnxruntime (cpu), symmetric for TensorRT, unless overridden; the report says so.

    The input is one-sided (pixels in [0, 1]): asymmetric INT8 maps its minimum 0 to -128 (zero point -128) and
    uses all 256 levels; symmetric INT8 keeps zero point 0 and scale max|x| / 127.
    """
    model = hot_conv(gain=1.0)
    rng = np.random.default_rng(0)
    feeds = [{"image": rng.uniform(0.0, 1.0, (1, 3, 32, 32)).astype(np.float32)} for _ in range(2)]
    config = Int8Config(preprocess=False, target=target, symmetric_activations=override)  # classifier stays float
    out, report = quantize_int8(model, feeds, config)
    zp = _zero_points(out)
    assert report.extra["activations"]["symmetric"] is symmetric
    assert ("symmetric for target" if symmetric else "asymmetric for target") in " ".join(report.notes)
    why = report.extra["activations"]["why"]
    assert why in report.notes[-2] and ("given" in why if override is not None else "INT8" in why or "256" in why)
    if symmetric:
        assert all(not z.any() for z in zp.values())
    else:
        assert int(zp["image"]) == -128  # min 0 -> -128
    history = [p.value for p in out.metadata_props if p.key == "vitseg.history"][0]
    assert f'"symmetric": [{str(symmetric).lower()}, true]' in history


def test_recorded_target_decides_and_cli_flags(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The exporter's ``vitseg.target`` decides when ``--target`` is absent; ``--symmetric`` and ``--asymmetric``
    exclude each other; an unknown target is a usage error."""
    from fileformat.metadata import write_metadata

    model = hot_conv(gain=1.0)
    write_metadata(model, {"target": "jetson-orin"})
    sym, target, why = activation_symmetry(model, Int8Config())
    assert sym and target.startswith("jetson-orin (recorded") and "TensorRT" in why
    sym, target, _ = activation_symmetry(model, Int8Config(target="cpu"))
    assert not sym and target == "cpu (--target)"
    src = tmp_path / "m.onnx"
    onnx.save(model, str(src))
    argv = [str(src), "-o", str(tmp_path / "o.onnx"), "--calib", "synthetic"]
    with pytest.raises(SystemExit) as exc:  # argparse: mutually exclusive options
        main([*argv, "--symmetric", "--asymmetric"])
    assert exc.value.code == 2
    assert main([*argv, "--target", "no-such-device"]) == 2
    assert "unknown target" in capsys.readouterr().err
    assert not (tmp_path / "o.onnx").exists()


def test_exclude_option(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``--exclude`` by op type leaves every node of that type float; an unknown entry is an error."""
    out = tmp_path / "no_matmul.onnx"
    args = [str(trained.onnx17), "-o", str(out), "--calib", str(trained.data), "--calib-count", "1", "--no-progress"]
    assert main([*args, "--exclude", "MatMul", "--no-preprocess"]) == 0
    model = onnx.load(str(out))
    producers = _producers(model)
    matmuls = [n for n in model.graph.node if n.op_type == "MatMul"]
    assert matmuls and not any(
        i in producers and producers[i].op_type == "DequantizeLinear" for n in matmuls for i in n.input
    )
    assert main([*args, "--exclude", "NoSuchNode"]) == 1
    assert "matches no op type or node name" in capsys.readouterr().err


def test_bad_inputs(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A QDQ or FP16 model, zero images, an empty or missing folder: exit 1 with a message; nothing written."""
    from passes.fp16 import convert_fp16

    src = str(trained.onnx17)
    out = tmp_path / "o.onnx"
    (tmp_path / "empty").mkdir()
    assert main([src, "-o", str(out), "--calib", str(tmp_path / "empty")]) == 1
    assert "no images" in capsys.readouterr().err
    assert main([src, "-o", str(out), "--calib", str(tmp_path / "missing")]) == 1
    assert "no such folder" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # refused when parsed: a usage error
        main([src, "-o", str(out), "--calib", str(trained.data), "--calib-count", "0"])
    assert exc.value.code == 2 and "--calib-count: 0 is not >= 1" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:  # --calib is required: usage error
        main([src, "-o", str(out)])
    assert exc.value.code == 2
    capsys.readouterr()
    assert not out.exists()

    model = onnx.load(src)
    with pytest.raises(PassError, match="no calibration images"):
        quantize_int8(model, [])
    fp16, _ = convert_fp16(model)
    with pytest.raises(PassError, match="FP16"):
        quantize_int8(fp16, [{"image": np.zeros((1, 3, 64, 64), np.float32)}])
    with pytest.raises(PassError, match="unknown calibration method"):
        quantize_int8(model, [{"image": np.zeros((1, 3, 64, 64), np.float32)}], Int8Config(method="mse"))


def test_quantized_model_is_refused(trained, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Quantizing a QDQ model again: a clear message, exit 1."""
    model = onnx.load(str(trained.onnx17))
    feeds = image_feeds(list_images(trained.data), input_spec(model), count=1, progress=False)
    qdq, _ = quantize_int8(model, feeds, Int8Config(preprocess=False))
    assert is_quantized(qdq)
    src = tmp_path / "qdq.onnx"
    onnx.save(qdq, str(src))
    assert main([str(src), "-o", str(tmp_path / "again.onnx"), "--calib", str(trained.data)]) == 1
    err = capsys.readouterr().err
    assert "already quantized" in err and "float32 model" in err
    assert qdq.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
