"""Fixtures for the runtime tests: a tiny synthetic set and a small hand-made ONNX segmenter without metadata."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest
import torch
from torch import nn


class TinySeg(nn.Module):
    """Two convolutions, 14 classes, output at input size (a stand-in for someone else's export)."""

    def __init__(self, num_classes: int = 14) -> None:
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, num_classes, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@pytest.fixture(scope="session")
def syn_tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """4 train + 6 val synthetic scenes at 64x64 (seed 1)."""
    from models.synthetic import generate

    root = tmp_path_factory.mktemp("syn") / "tiny"
    generate(root, n_train=4, n_val=6, size=64, seed=1, workers=1)
    return root


@pytest.fixture(scope="session")
def tiny_net() -> TinySeg:
    torch.manual_seed(0)
    return TinySeg().eval()


@pytest.fixture(scope="session")
def tiny_onnx(tmp_path_factory: pytest.TempPathFactory, tiny_net: TinySeg) -> dict[str, Path]:
    """``{"dynamic": dynamic batch/H/W, "static32": fixed 1x3x32x32}`` legacy exports of :class:`TinySeg`."""
    root = tmp_path_factory.mktemp("tiny_onnx")
    x = torch.randn(1, 3, 32, 32)
    dims = {"image": {0: "n", 2: "h", 3: "w"}, "logits": {0: "n", 2: "h", 3: "w"}}
    out = {"dynamic": root / "tiny_dynamic.onnx", "static32": root / "tiny_static32.onnx"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # the legacy exporter announces its retirement
        for key, axes in (("dynamic", dims), ("static32", None)):
            torch.onnx.export(
                tiny_net,
                (x,),
                str(out[key]),
                dynamo=False,
                opset_version=17,
                input_names=["image"],
                output_names=["logits"],
                dynamic_axes=axes,
            )
    return out
