"""runtime.trt: what can be checked without TensorRT (CLI, missing-TRT message, FP32 layer selection), and an
engine build that only runs where TensorRT is installed."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import onnx
import pytest
from _helpers_deploy_rt import conv_model, layernorm_reciprocal_model

from runtime.trt import (
    BuildConfig,
    build_engine,
    fp32_selection,
    layernorm_groups,
    main,
    match_layers,
    node_infos,
    parse_fp32_layers,
    pixel_agreement,
)

HAS_TRT = importlib.util.find_spec("tensorrt") is not None


@pytest.mark.skipif(HAS_TRT, reason="TensorRT is installed here")
def test_missing_tensorrt_says_how_to_get_it(tmp_path: Path, capsys) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(conv_model(), str(model))
    engine = tmp_path / "m.engine"
    assert main(["build", str(model), "--fp16", "-o", str(engine)]) == 1
    err = capsys.readouterr().err
    assert "TensorRT is needed" in err and "pip install tensorrt" in err and "JetPack" in err
    assert "runtime.bundle" in err  # the way forward without a GPU
    assert not engine.exists()


def test_cli_usage_errors(tmp_path: Path, capsys) -> None:
    model = tmp_path / "m.onnx"
    onnx.save(conv_model(), str(model))
    for argv in (
        [],  # no sub-command
        ["build", str(model)],  # -o missing
        ["build", str(model), "-o", "x.engine", "--fp32-layers", "gelu"],
        ["build", str(model), "-o", "x.engine", "--workspace-mb", "0"],
        ["build", str(model), "-o", "x.engine", "--threshold", "1.5"],
    ):
        with pytest.raises(SystemExit) as exc:
            main(argv)
        assert exc.value.code == 2, argv
    assert "unknown --fp32-layers kind" in capsys.readouterr().err
    assert main(["build", str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "x.engine")]) == 1
    assert main(["build", str(model), "-o", str(model)]) == 2  # never overwrites the model: a usage error


def test_parse_fp32_layers() -> None:
    assert parse_fp32_layers("auto") == "auto"
    assert parse_fp32_layers("none") == () and parse_fp32_layers("") == ()
    assert parse_fp32_layers("softmax, LayerNorm") == ("layernorm", "softmax")
    with pytest.raises(ValueError, match="gelu"):
        parse_fp32_layers("layernorm,gelu")


def test_layernorm_selection_on_opset13_export(exported) -> None:
    model = onnx.load(str(exported(opset=13, fused_attn=False)))
    nodes = node_infos(model)
    groups = layernorm_groups(nodes)
    assert len(groups) == 21  # 9 blocks x 2 norms + 3 stage norms, decomposed at opset 13
    seq = ["ReduceMean", "Sub", "Pow", "ReduceMean", "Add", "Sqrt", "Div", "Mul", "Add"]
    assert all([n.op_type for n in g] == seq for g in groups)
    in_groups = {n.name for g in groups for n in g}
    other_reducemeans = [n for n in nodes if n.op_type == "ReduceMean" and n.name not in in_groups]
    assert len(other_reducemeans) == sum(n.op_type == "ReduceMean" for n in nodes) - 42  # not a LayerNorm: left
    sel = fp32_selection(nodes)
    assert len(sel["layernorm"]["nodes"]) == 21 * 9 and len(sel["softmax"]["nodes"]) == 9
    assert len(sel["layernorm"]["tensors"]) == 21 * 9  # one output per node


def test_layernorm_selection_on_opset17_export(exported) -> None:
    nodes = node_infos(onnx.load(str(exported(opset=17))))
    groups = layernorm_groups(nodes)
    assert len(groups) == 21 and all(len(g) == 1 and g[0].op_type == "LayerNormalization" for g in groups)
    assert fp32_selection(nodes, ["softmax"]).keys() == {"softmax"}
    with pytest.raises(ValueError):
        fp32_selection(nodes, ["gelu"])


def test_layernorm_with_reciprocal_and_affine() -> None:
    nodes = node_infos(layernorm_reciprocal_model())
    (group,) = layernorm_groups(nodes)
    assert [n.name for n in group] == ["rm1", "sub", "pow", "rm2", "add_eps", "sqrt", "rec", "norm", "scale", "shift"]
    sel = fp32_selection(nodes)
    assert sel["softmax"] == {"nodes": ["softmax"], "tensors": ["p"]}
    assert "pool" not in sel["layernorm"]["nodes"]  # a ReduceMean that is not a LayerNorm
    assert layernorm_groups(node_infos(conv_model())) == []


def test_match_layers_by_name_suffix_and_tensor() -> None:
    selection = {
        "layernorm": {"nodes": ["/ln/ReduceMean", "/ln/Div"], "tensors": ["/ln/Div_output_0"]},
        "softmax": {"nodes": ["/attn/Softmax"], "tensors": ["/attn/Softmax_output_0"]},
    }
    layers = [
        ("/ln/ReduceMean", ["/ln/ReduceMean_output_0"]),  # 0: name
        ("/ln/ReduceMean_1", ["(Unnamed Layer* 3) [Shuffle]_output"]),  # 1: parser's uniqueness suffix
        ("/ln/ReduceMean_extra", ["x"]),  # 2: a different node whose name starts the same
        ("(Unnamed Layer* 7) [ElementWise]", ["/ln/Div_output_0"]),  # 3: by output tensor
        ("/attn/Softmax", ["/attn/Softmax_output_0"]),  # 4
        ("/conv/Conv", ["/conv/Conv_output_0"]),  # 5
    ]
    assert match_layers(layers, selection, ("layernorm",)) == [0, 1, 3]
    assert match_layers(layers, selection, ("softmax",)) == [4]
    assert match_layers(layers, selection, ("layernorm", "softmax")) == [0, 1, 3, 4]
    assert match_layers(layers, selection, ()) == []


def test_pixel_agreement() -> None:
    a = np.zeros((1, 3, 2, 2), np.float32)
    a[0, 1] = 1.0  # class 1 everywhere
    b = a.copy()
    b[0, 2, 0, 0] = 5.0  # one pixel of four becomes class 2
    assert pixel_agreement(a, a) == 1.0 and pixel_agreement(a, b) == 0.75
    with pytest.raises(ValueError):
        pixel_agreement(a, b[:, :2])


def test_build_engine_with_tensorrt(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt")
    pytest.importorskip("polygraphy.backend.trt")
    model = tmp_path / "m.onnx"
    onnx.save(conv_model(size=32), str(model))
    out = tmp_path / "m.engine"
    result = build_engine(
        BuildConfig(onnx=str(model), output=str(out), fp16=True, timing_cache=str(tmp_path / "t.cache"))
    )
    assert out.stat().st_size > 0 and (tmp_path / "t.cache").is_file()
    assert result.agreement["fp16"] >= 0.99
