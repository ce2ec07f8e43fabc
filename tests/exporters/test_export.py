"""Exports at opsets 13 and 17 with both exporters match torch, carry their metadata, and refuse bad input."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from exporters.export import ExportError, ExportOptions, export, export_torch_model, onnx_vs_torch, torch_to_onnx
from exporters.opset import to_opset
from fileformat.metadata import read_metadata
from models.constants import CLASS_NAMES, MEAN, STD
from models.registry import ModelConfig, build_model, get_config, list_models

ROOT = Path(__file__).resolve().parents[2]


def _model(name: str, size: int) -> torch.nn.Module:
    from _shared import perturb_

    torch.manual_seed(0)
    kw = {"input_size": size} if get_config(name).family == "swin" else {}
    return perturb_(build_model(name, **kw))


#: widths of a structure another configuration already exports in ``make test`` (MobileViT-S with UPerNet-64 is
#: ``paper``, -XXS is plain and with UPerNet-64), and the Swin-T teacher (it stays in torch; half this test's time):
#: these run in ``make test-zoo``
ZOO_ONLY = {"mobilevit_s", "mobilevit_xs", "mobilevit_xs_upernet64", "mobilevit_s_upernet512", "swin_t_upernet512"}


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.zoo) if n in ZOO_ONLY else n for n in list_models()]
)
def test_every_configuration_exports_with_both_exporters_at_13_and_17(name: str) -> None:
    size = 64
    model = _model(name, size)
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(1))
    for fused in (True, False):
        from exporters.export import set_fused_attention

        set_fused_attention(model, fused)
        if fused:  # the legacy exporter cannot emit fused attention at opset 13
            protos = {("legacy", 17): torch_to_onnx(model, x, exporter="legacy", opset=17)}
        else:
            protos = {("legacy", op): torch_to_onnx(model, x, exporter="legacy", opset=op) for op in (13, 17)}
            dyn = torch_to_onnx(model, x, exporter="dynamo", opset=18)  # one dynamo trace, converted down
            protos.update({("dynamo", op): to_opset(dyn, op) for op in (13, 17)})
        for (exporter, opset), proto in protos.items():
            onnx.checker.check_model(proto, full_check=True)
            assert next(o.version for o in proto.opset_import if o.domain == "") == opset
            ops = {n.op_type for n in proto.graph.node}
            if opset == 13:
                assert "LayerNormalization" not in ops, (exporter, opset)
            err = onnx_vs_torch(proto, model, x)
            assert err <= 1e-4, (name, exporter, opset, fused, err)


@pytest.mark.parametrize("exporter", ["legacy", "dynamo"])
def test_metadata_round_trips(exported, exporter: str) -> None:
    path = exported("mobilevit_xxs", size=64, opset=17, exporter=exporter)
    proto = onnx.load(str(path))
    meta = read_metadata(proto)
    assert meta["classes"] == list(CLASS_NAMES)
    assert meta["input_size"] == [64, 64]
    assert meta["mean"] == list(MEAN) and meta["std"] == list(STD)
    assert meta["exporter"] == exporter and meta["opset"] == 17
    config = ModelConfig.from_dict(meta["config"])
    assert config == get_config("mobilevit_xxs")

    from _shared import perturb_

    torch.manual_seed(0)
    model = perturb_(build_model(config), 0)  # the same seeded weights the fixture exported
    params = dict(model.named_parameters())
    params.update(dict(model.named_buffers()))
    inits = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    wmap = meta["weight_map"]
    covered = set()
    for init_name, entry in wmap.items():
        torch_t = params[entry["param"]].detach().numpy()
        arr = inits[init_name]
        expect = torch_t.T if entry["transposed"] else torch_t
        assert arr.shape == expect.shape, (init_name, entry)
        if entry["folded_bn"] is None:
            np.testing.assert_array_equal(arr, expect)
        else:
            covered.add(entry["folded_bn"] + ".weight")
        covered.add(entry["param"])
    assert any(e["transposed"] for e in wmap.values())  # Linear weights are stored [in, out]
    missing = [n for n, _ in model.named_parameters() if n not in covered]
    assert not missing, missing


def test_target_jetson_nano_selects_opset_13_without_fused_ops(tmp_path: Path) -> None:
    out = tmp_path / "nano.onnx"
    res = export(ExportOptions(model="mobilevit_xxs", input_size=64, opset=17, target="jetson-nano"), out)
    proto = onnx.load(str(out))
    ops = {n.op_type for n in proto.graph.node}
    assert res.options["opset"] == 13 and read_metadata(proto)["target"] == "jetson-nano"
    assert not ops & {"LayerNormalization", "Attention", "MultiHeadAttention"}
    assert res.max_abs_error <= 1e-4


def test_dynamic_batch_and_single_file(tmp_path: Path) -> None:
    out = tmp_path / "dyn.onnx"
    export(ExportOptions(model="mobilevit_xxs", input_size=64, dynamic_batch=True), out)
    assert [p.name for p in tmp_path.iterdir()] == ["dyn.onnx"]  # no external-data file
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.run(None, {"image": np.zeros((3, 3, 64, 64), np.float32)})[0].shape == (3, 14, 64, 64)


def test_export_tolerance_is_enforced(tmp_path: Path) -> None:
    model = build_model("mobilevit_xxs")
    with pytest.raises(ExportError, match="over the tolerance"):
        export_torch_model(model, tmp_path / "t.onnx", ExportOptions(input_size=64, tolerance=-1.0))
    assert not (tmp_path / "t.onnx").exists()


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "exporters.export", *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )


def test_cli_success_prints_size_and_parity(tmp_path: Path) -> None:
    r = _cli("--model", "mobilevit_xxs", "--input-size", "64", "-o", str(tmp_path / "a.onnx"))
    assert r.returncode == 0, r.stderr
    assert "params 2.70M" in r.stdout and "max abs" in r.stdout


@pytest.mark.parametrize(
    ("args", "message", "code"),
    [
        (["--model", "nope"], "unknown model 'nope'", 2),
        (["--opset", "11"], "invalid choice: 11", 2),
        (["--input-size", "70"], "multiple of 32", 2),
        (["--target", "toaster"], "unknown target 'toaster'", 2),
        (["--weights", "{tmp}/w.pt"], "does not match the model", 1),
        (["-o", "{tmp}/missing/dir/x.onnx"], "does not exist", 1),
    ],
)
def test_cli_bad_input(tmp_path: Path, args: list[str], message: str, code: int, capsys: pytest.CaptureFixture) -> None:
    """In this process (an uncaught exception fails the test); tests/test_cli_contract.py runs the CLI as a user
    does."""
    from exporters.export import main

    torch.save({"foo.weight": torch.zeros(3)}, tmp_path / "w.pt")
    args = [a.format(tmp=tmp_path) for a in args]
    if "-o" not in args:
        args += ["-o", str(tmp_path / "out.onnx")]
    if "--input-size" not in args:
        args = ["--input-size", "64", *args]
    try:
        returned = main(args)
    except SystemExit as exc:  # argparse's usage errors
        returned = exc.code
    assert returned == code, capsys.readouterr()  # 2: usage error, 1: cannot be done
    assert message in capsys.readouterr().err
    assert not (tmp_path / "out.onnx").exists()


def test_training_checkpoint_config_is_used(tmp_path: Path) -> None:
    """A models.train checkpoint records its configuration: the decoder width need not be repeated."""
    src = build_model("mobilevit_xxs", decoder_width=32)
    cfg = {"model_config": src.config.to_dict()}
    torch.save({"model": src.state_dict(), "config": cfg, "step": 1}, tmp_path / "checkpoint.pt")
    out = tmp_path / "m.onnx"
    export(ExportOptions(model="mobilevit_xxs", input_size=64, weights=str(tmp_path / "checkpoint.pt")), out)
    assert read_metadata(onnx.load(str(out)))["config"]["decoder_width"] == 32
    with pytest.raises(ExportError, match="holds a 'mobilevit_xxs' model, not 'paper'"):
        export(ExportOptions(model="paper", input_size=64, weights=str(tmp_path / "checkpoint.pt")), out)
