"""Files with symbolic dimensions (``dynamic_axes``: a dynamic batch, or a dynamic batch and size): every structural
pass traces them bound to a size, cuts what does not depend on the binding, and writes a file that keeps its symbolic
dimensions, runs at other batches and sizes, and equals the zeroing oracle at each of them."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from _shared import run_at, symbols
from test_compress import EXACT, _combined_oracle

from fileformat.metadata import write_metadata
from fileformat.plan import read_plan
from passes.compress import CompressConfig, compress
from passes.prune_heads import PruneHeadsConfig, prune_heads
from passes.slice_channels import SliceChannelsConfig, slice_channels
from passes.slice_neurons import SliceNeuronsConfig, slice_neurons
from passes.slice_width import SliceWidthConfig, slice_width

AXES = {
    "batch": {"image": {0: "batch"}, "logits": {0: "batch"}},
    "size": {"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "h", 3: "w"}},
}
#: (batch, side) the written file is run at, besides the 64 px it was traced at
SHAPES = {"batch": [(1, 64), (3, 64)], "size": [(1, 64), (2, 96), (1, 128)]}


class TinySeg(torch.nn.Module):
    """A conv stem, two timm transformer blocks over however many tokens the size gives, a 1x1-conv head upsampled
    to the input: a model whose export really runs at any size (timm's MobileViT bakes its patch grid in)."""

    def __init__(self, dim: int = 32, heads: int = 4, classes: int = 5) -> None:
        from timm.models.vision_transformer import Block

        super().__init__()
        self.stem = torch.nn.Sequential(
            torch.nn.Conv2d(3, 16, 3, 2, 1),
            torch.nn.BatchNorm2d(16),
            torch.nn.ReLU(),
            torch.nn.Conv2d(16, dim, 3, 2, 1),
        )
        self.blocks = torch.nn.Sequential(*[Block(dim, heads, mlp_ratio=2.0) for _ in range(2)])
        for b in self.blocks:
            b.attn.fused_attn = False
        self.head = torch.nn.Sequential(torch.nn.Conv2d(dim, 24, 1), torch.nn.ReLU(), torch.nn.Conv2d(24, classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.stem(x)  # [B, dim, H/4, W/4]
        b, c, h, w = f.shape
        t = self.blocks(f.flatten(2).transpose(1, 2))  # [B, HW/16, dim]
        f = t.transpose(1, 2).reshape(b, c, h, w)
        return torch.nn.functional.interpolate(self.head(f), size=x.shape[-2:], mode="bilinear")


#: (model, dynamic axes): MobileViT-XXS with a dynamic batch (its export fixes its patch grid, so not its size) and
#: the tiny transformer with a dynamic batch and size
CASES = [("mobilevit_xxs", "batch"), ("tinyseg", "size")]


def _export(path: Path, name: str, axes: dict | None) -> onnx.ModelProto:
    """``name`` (perturbed weights) exported by the legacy exporter, with ``axes`` as torch's tutorials do."""
    from _shared import perturb_

    from models.registry import build_model

    torch.manual_seed(0)
    net = perturb_(build_model(name) if name != "tinyseg" else TinySeg(), 0).eval()
    x = torch.randn(1, 3, 64, 64)
    torch.onnx.export(
        net, (x,), str(path), dynamo=False, opset_version=17, input_names=["image"], output_names=["logits"],
        dynamic_axes=axes,
    )  # fmt: skip
    return onnx.load(str(path))


@pytest.fixture(scope="module", params=CASES, ids=[f"{m}-{a}" for m, a in CASES])
def dynamic(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> tuple[str, onnx.ModelProto, onnx.ModelProto]:
    """``(dynamic axes, the dynamic export, the static export)``; for a dynamic size, the size it is traced at is
    recorded as ``vitseg.input_size`` (what ``--input-size`` gives)."""
    name, axes = request.param
    root = tmp_path_factory.mktemp("symbolic")
    model = _export(root / f"{name}_{axes}.onnx", name, AXES[axes])
    if axes == "size":
        write_metadata(model, {"input_size": [64, 64]})
    return axes, model, _export(root / f"{name}.onnx", name, None)


def _run(model: onnx.ModelProto, batch: int, side: int) -> np.ndarray:
    return run_at(model, (batch, 3, side, side))


PASSES = {
    "prune_heads": lambda m: prune_heads(m, PruneHeadsConfig(ratio=0.5)),
    "slice_neurons": lambda m: slice_neurons(m, SliceNeuronsConfig(ratio=0.5)),
    "head_dim": lambda m: slice_width(m, SliceWidthConfig(ratio=0.5, kind="head_dim")),
    "slice_channels": lambda m: slice_channels(m, SliceChannelsConfig(ratio=0.5)),
    "compress": lambda m: compress(m, CompressConfig(target_flops=0.5, units=EXACT)),
}


@pytest.mark.parametrize("name", list(PASSES))
def test_a_dynamic_file_is_cut_and_stays_dynamic(dynamic: tuple, name: str) -> None:
    axes, model, _ = dynamic
    out, report = PASSES[name](model)
    assert report.modified, f"nothing cut: {report.skipped[:3]}"
    assert symbols(out) == symbols(model)  # the file keeps its symbolic dimensions
    oracle = _combined_oracle(model, read_plan(out))
    for batch, side in SHAPES[axes]:
        want, got = _run(oracle, batch, side), _run(out, batch, side)
        assert got.shape == want.shape
        scale = float(np.abs(want).max())
        assert np.abs(got - want).max() <= 1e-4 * scale, (batch, side)
        assert np.abs(got - _run(model, batch, side)).max() > 1e-3 * scale  # something was cut


def test_the_same_cut_as_the_static_export(dynamic: tuple) -> None:
    """Bound to the size it was exported at, a dynamic file loses exactly what the static export loses: head
    channels included, where the fused qkv's reshape target is computed at run time from the batch (its q/k and
    v parts are taken apart all the same, each part's target the run-time batch followed by its own constants)."""
    _, model, static = dynamic
    sections = (("prune_heads", "heads"), ("slice_neurons", "neurons"), ("slice_channels", "channels"))
    for name, section in (*sections, ("head_dim", "head_dim")):
        a, b = read_plan(PASSES[name](model)[0]), read_plan(PASSES[name](static)[0])
        assert a[section] and a[section] == b[section], name


def test_a_width_is_cut_as_on_the_static_export(dynamic: tuple) -> None:
    """A transformer width (LayerNorm statistics change, so no zeroing oracle): the dynamic file loses the widths the
    static export loses, computes what the static export's cut computes at the size both were exported at, and runs
    at the other sizes (MobileViT's unfold ``B * C * n_h`` under a dynamic batch follows the cut of ``C``)."""
    axes, model, static = dynamic
    cut = lambda m: slice_width(m, SliceWidthConfig(ratio=0.5, kind="width"))[0]  # noqa: E731
    out, out_static = cut(model), cut(static)
    assert read_plan(out)["width"] and read_plan(out)["width"] == read_plan(out_static)["width"]
    assert symbols(out) == symbols(model)
    want, got = _run(out_static, 1, 64), _run(out, 1, 64)
    assert np.abs(got - want).max() <= 1e-4 * float(np.abs(want).max())
    for batch, side in SHAPES[axes]:
        assert np.isfinite(_run(out, batch, side)).all()


def test_a_size_that_is_not_known_leaves_the_spatial_cuts_with_a_reason(tmp_path: Path) -> None:
    """A dynamic height and width with no size to trace at: what depends on them is refused and says so."""
    model = _export(tmp_path / "size.onnx", "tinyseg", AXES["size"])
    _, report = prune_heads(model, PruneHeadsConfig(ratio=0.5))
    reasons = " ".join(s.reason for s in report.skipped)
    assert not report.modified and "static" in reasons, reasons


def test_the_command_line_takes_the_size_to_trace_at(tmp_path: Path) -> None:
    """``--input-size H W`` sizes a file whose height and width are dynamic; without it the refusal says to give
    it."""
    from passes.prune_heads import main

    src = tmp_path / "size.onnx"
    _export(src, "tinyseg", AXES["size"])
    out = tmp_path / "cut.onnx"
    assert main([str(src), "-o", str(out)]) == 1 and not out.exists()
    assert main([str(src), "-o", str(out), "--input-size", "64", "64"]) == 0
    cut = onnx.load(str(out))
    assert symbols(cut) == ["batch", "height", "width"]
    assert _run(cut, 2, 96).shape == (2, 5, 96, 96)


@pytest.mark.parametrize("name", ["optimize", "simplify"])
def test_the_exact_rewrites_take_the_size_to_check_at(tmp_path: Path, name: str, capsys) -> None:
    """``optimize`` and ``simplify`` hold their rewrite to the input on a check input; for a dynamic height and
    width with no recorded size that input needs ``--input-size``: refused with the option named, then checked at
    that size, and the written file keeps its dynamic sizes and computes what the input computes at another size."""
    import importlib

    main = importlib.import_module(f"passes.{name}").main
    extra = ["--ort-offline"] if name == "optimize" else []  # its own rewrites find nothing in this model
    src = tmp_path / "size.onnx"
    model = _export(src, "tinyseg", AXES["size"])
    out = tmp_path / "out.onnx"
    assert main([str(src), "-o", str(out), *extra]) == 1 and not out.exists()
    assert "--input-size" in capsys.readouterr().err
    assert main([str(src), "-o", str(out), "--input-size", "64", *extra]) == 0
    written = onnx.load(str(out))
    assert symbols(written) == ["batch", "height", "width"]
    assert np.abs(_run(written, 2, 96) - _run(model, 2, 96)).max() <= 1e-4
