"""The pass CLI convention (passes/_core/cli.py): default output path, the onnxruntime load check, read-only folders."""

from __future__ import annotations

import os
from pathlib import Path

import onnx
import pytest
from _helpers_prune import mha_model
from onnx import TensorProto, helper

from fileformat.errors import PassError
from passes._core.cli import check_onnxruntime_loads, default_output
from passes.prune_heads import main


def test_default_output_name() -> None:
    assert default_output("runs/a.onnx", "fp16") == Path("runs/a.fp16.onnx")
    assert default_output("model", "int8") == Path("model.int8.onnx")


def test_a_model_onnxruntime_cannot_load_is_never_written() -> None:
    """The checker accepts a custom-domain op; onnxruntime has no kernel for it: the pass must say so."""
    node = helper.make_node("Frobnicate", ["x"], ["y"], domain="com.example")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.example", 1)])
    with pytest.raises(PassError, match="onnxruntime cannot load the result"):
        check_onnxruntime_loads(model)
    check_onnxruntime_loads(mha_model())  # a good model passes


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_read_only_output_folder_is_one_line(tmp_path: Path, capsys) -> None:
    src = tmp_path / "m.onnx"
    onnx.save(mha_model(), str(src))
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        assert main([str(src), "-o", str(ro / "o.onnx"), "--keep", "2"]) == 1
    finally:
        ro.chmod(0o700)
    err = capsys.readouterr().err
    assert "Traceback" not in err and "permission" in err.lower()
