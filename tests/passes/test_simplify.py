"""passes.simplify: onnxslim / onnxsim wrapped, metadata kept, outputs verified, broken results refused."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _helpers_deploy import conv_model
from onnx import numpy_helper

import passes.simplify as simplify_mod
from fileformat.errors import PassError
from fileformat.metadata import read_metadata
from fileformat.plan import read_plan, write_plan
from passes.simplify import SimplifyConfig, main, simplify


@pytest.fixture(scope="module")
def planned(exported, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The opset-13 export of mobilevit_xxs with a plan written into it (as a structural pass would)."""
    model = onnx.load(str(exported(opset=13, fused_attn=False)))
    write_plan(model, {"neurons": {"backbone.stages.2.1.transformer.0.mlp": {"kept": [0, 3, 5], "total": 128}}})
    path = tmp_path_factory.mktemp("simplify") / "planned.onnx"
    onnx.save(model, str(path))
    return path


def _run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"image": x})[0]


def _flip_first_conv(model: onnx.ModelProto) -> onnx.ModelProto:
    """A 'simplifier' that returns the model with the first Conv weight's sign flipped."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    name = next(n.input[1] for n in out.graph.node if n.op_type == "Conv")
    for init in out.graph.initializer:
        if init.name == name:
            init.CopyFrom(numpy_helper.from_array(-numpy_helper.to_array(init), name))
    return out


def test_simplify_keeps_metadata_and_outputs(planned: Path) -> None:
    src = onnx.load(str(planned))
    before = src.SerializeToString()
    out, report = simplify(src)
    assert src.SerializeToString() == before  # the input is not modified
    assert report.extra["backend"] == "onnxslim" and report.extra["max_abs_diff"] <= 1e-5
    assert len(out.graph.node) < 0.75 * len(src.graph.node)
    meta_in, meta_out = read_metadata(src), read_metadata(out)
    history = meta_out.pop("history")
    assert meta_out == {k: v for k, v in meta_in.items() if k != "history"}
    assert history[-1]["pass"] == "simplify" and history[-1]["backend"] == "onnxslim"
    assert read_plan(out) == read_plan(src) and read_plan(out)["neurons"]
    assert not [p.key for p in out.metadata_props if p.key.startswith(("onnxsim", "onnxslim"))]
    x = np.random.default_rng(3).standard_normal((1, 3, 64, 64)).astype(np.float32)
    diff = float(np.abs(_run(out, x) - _run(src, x)).max())
    print(f"simplified vs input on another seed, default onnxruntime optimisations: max abs diff {diff:.3g}")
    assert diff <= 1e-5


def test_broken_simplifier_is_refused(planned: Path, tmp_path: Path, monkeypatch, capsys) -> None:
    monkeypatch.setitem(simplify_mod.SIMPLIFIERS, "onnxsim", _flip_first_conv)
    monkeypatch.setitem(simplify_mod.SIMPLIFIERS, "onnxslim", _flip_first_conv)
    with pytest.raises(PassError, match="no simplifier result matched") as exc:
        simplify(onnx.load(str(planned)))
    assert "onnxsim: refused" in str(exc.value) and "onnxslim: refused" in str(exc.value)
    out = tmp_path / "out.onnx"
    assert main([str(planned), "-o", str(out)]) == 1
    assert not out.exists() and list(tmp_path.iterdir()) == []  # nothing written, no temp file left
    assert "Nothing was written" in capsys.readouterr().err


def test_tolerance_is_the_bar(monkeypatch) -> None:
    """A result off by 1e-3 in one bias is refused at 1e-5 and accepted at 1e-2."""

    def nudge(model: onnx.ModelProto) -> onnx.ModelProto:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        b = out.graph.initializer[3]  # b2, the output conv's bias
        b.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(b) + np.float32(1e-3), b.name))
        return out

    monkeypatch.setitem(simplify_mod.SIMPLIFIERS, "onnxsim", nudge)
    with pytest.raises(PassError):
        simplify(conv_model(), SimplifyConfig(backend="onnxsim"))
    _, report = simplify(conv_model(), SimplifyConfig(backend="onnxsim", atol=1e-2))
    assert report.extra["max_abs_diff"] == pytest.approx(1e-3, rel=1e-3)


def test_onnxsim_is_the_fallback(monkeypatch) -> None:
    def broken(model: onnx.ModelProto) -> onnx.ModelProto:
        raise RuntimeError("onnxslim crashed")

    monkeypatch.setitem(simplify_mod.SIMPLIFIERS, "onnxslim", broken)
    out, report = simplify(conv_model(batch="N"))
    assert report.extra["backend"] == "onnxsim"
    assert report.rows[0]["status"].startswith("failed: RuntimeError: onnxslim crashed")
    assert report.rows[1]["status"] == "accepted"
    assert out.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"  # dynamic batch kept


def test_interface_change_is_refused(monkeypatch) -> None:
    def rename(model: onnx.ModelProto) -> onnx.ModelProto:
        out = onnx.ModelProto()
        out.CopyFrom(model)
        out.graph.output[0].name = "renamed"
        out.graph.node[-1].output[0] = "renamed"
        return out

    monkeypatch.setitem(simplify_mod.SIMPLIFIERS, "onnxsim", rename)
    with pytest.raises(PassError, match="interface changed"):
        simplify(conv_model(), SimplifyConfig(backend="onnxsim"))


def test_cli_bad_inputs(tmp_path: Path) -> None:
    path = tmp_path / "m.onnx"
    onnx.save(conv_model(), str(path))
    assert main([str(path), "-o", str(path)]) == 2  # never overwrites its input: a usage error
    with pytest.raises(SystemExit) as exc:
        main([str(path), "-o", str(tmp_path / "o.onnx"), "--backend", "polygraphy"])
    assert exc.value.code == 2
    assert main([str(path)]) == 0 and (tmp_path / "m.simplify.onnx").is_file()  # default output beside the input
    assert main([str(path)]) == 2  # which is never replaced without --force
    assert main([str(tmp_path / "missing.onnx"), "-o", str(tmp_path / "o.onnx")]) == 1
    with pytest.raises(PassError, match="unknown backend"):
        simplify(conv_model(), SimplifyConfig(backend="nope"))
    assert main([str(path), "-o", str(tmp_path / "ok.onnx"), "--report", str(tmp_path / "r.json")]) == 0
    assert (tmp_path / "ok.onnx").is_file() and (tmp_path / "r.json").is_file()
