"""The one session loader: each option of SessionConfig reaches onnxruntime's SessionOptions, and nothing else."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _shared import ROOT, package_sources
from onnx import TensorProto, helper

from fileformat.session import SessionConfig, _options, load_session, provider_names


def _relu() -> onnx.ModelProto:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_defaults_leave_onnxruntime_alone_but_spinning_and_the_log() -> None:
    default = ort.SessionOptions()
    so = _options(SessionConfig())
    assert so.graph_optimization_level == default.graph_optimization_level
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (0, 0)
    assert not so.enable_profiling and so.optimized_model_filepath == ""
    assert so.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert so.get_session_config_entry("session.inter_op.allow_spinning") == "0"
    assert so.log_severity_level == 3
    kept = _options(SessionConfig(spinning=True, log_severity=None))
    with pytest.raises(Exception):  # noqa: B017 - no entry: onnxruntime's default (spinning)
        kept.get_session_config_entry("session.intra_op.allow_spinning")
    assert kept.log_severity_level == default.log_severity_level


def test_every_option_reaches_the_session_options(tmp_path: Path) -> None:
    so = _options(
        SessionConfig(
            threads=2,
            inter_threads=1,
            optimization="basic",
            profile_prefix=str(tmp_path / "prof"),
            optimized_model_path=str(tmp_path / "opt.onnx"),
            log_severity=2,
        )
    )
    assert so.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
    assert (so.intra_op_num_threads, so.inter_op_num_threads) == (2, 1)
    assert so.enable_profiling and so.profile_file_prefix == str(tmp_path / "prof")
    assert so.optimized_model_filepath == str(tmp_path / "opt.onnx")
    assert so.log_severity_level == 2
    for name, level in (("disable", "ORT_DISABLE_ALL"), ("extended", "ORT_ENABLE_EXTENDED"), ("all", "ORT_ENABLE_ALL")):
        got = _options(SessionConfig(optimization=name)).graph_optimization_level  # type: ignore[arg-type]
        assert got == getattr(ort.GraphOptimizationLevel, level)
    with pytest.raises(ValueError, match="choose one of"):
        _options(SessionConfig(optimization="fast"))  # type: ignore[arg-type]


def test_a_proto_its_bytes_and_its_file_give_the_same_session(tmp_path: Path) -> None:
    model = _relu()
    path = tmp_path / "m.onnx"
    onnx.save(model, str(path))
    x = np.array([-1.0, 2.0], np.float32)
    cfg = SessionConfig(optimized_model_path=str(tmp_path / "o.onnx"))
    for source in (model, model.SerializeToString(), path, str(path)):
        sess = load_session(source, cfg)
        np.testing.assert_array_equal(sess.run(None, {"x": x})[0], [0.0, 2.0])
        assert sess.get_providers() == ["CPUExecutionProvider"]
    assert (tmp_path / "o.onnx").is_file()


def test_provider_names() -> None:
    assert provider_names(None) == ("CPUExecutionProvider",)
    assert provider_names(["cuda", "CPU", "MyProvider"]) == (
        "CUDAExecutionProvider",
        "CPUExecutionProvider",
        "MyProvider",
    )


def test_this_is_the_one_place_that_builds_a_session() -> None:
    """Every onnxruntime session outside the tests comes from :func:`fileformat.session.load_session`, but for
    the device bundle's stand-alone script, which runs on a Jetson without this package."""
    builders = [str(p.relative_to(ROOT)) for p in package_sources() if "InferenceSession(" in p.read_text("utf-8")]
    assert builders == ["fileformat/session.py", "runtime/device_scripts/infer.py"]
