"""Helpers of the channel-pruning tests: onnxruntime runs, the zeroing oracle, and a small CNN classifier."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import torch
from _shared import run_ort as run  # noqa: F401 (the channel tests import it from here)
from onnx import numpy_helper
from torch import nn

from exporters.weight_map import build_weight_map
from fileformat.metadata import read_metadata, write_metadata


def image(size: int = 64, seed: int = 1, channels: int = 3) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((1, channels, size, size)).astype(np.float32)


def param_initializer(model: onnx.ModelProto, param: str) -> str:
    """The initializer the exporter's weight_map maps to torch parameter ``param``."""
    wm = read_metadata(model)["weight_map"]
    names = [k for k, v in wm.items() if v["param"] == param]
    assert len(names) == 1, (param, names)
    return names[0]


def zero_columns(model: onnx.ModelProto, cuts: Mapping[str, Sequence[tuple[int, Sequence[int]]]]) -> onnx.ModelProto:
    """Copy of ``model`` with ``init[:, positions] = 0`` (or another axis) for ``{init: [(axis, positions)]}``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    inits = {i.name: i for i in out.graph.initializer}
    for name, edits in cuts.items():
        value = numpy_helper.to_array(inits[name]).copy()
        for axis, positions in edits:
            index = [slice(None)] * value.ndim
            index[axis] = list(positions)
            value[tuple(index)] = 0
        inits[name].CopyFrom(numpy_helper.from_array(value, name))
    return out


class TinyCNN(nn.Module):
    """Conv-BN-ReLU stem, a residual inverted block with a depthwise conv, an SE-free second stage, a 2x2 pooled
    map flattened into a two-layer Linear head (so channel c feeds 4 features of fc1)."""

    def __init__(self, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
        self.expand = nn.Sequential(nn.Conv2d(16, 32, 1, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.dw = nn.Sequential(nn.Conv2d(32, 32, 3, padding=1, groups=32, bias=False), nn.BatchNorm2d(32), nn.ReLU6())
        self.project = nn.Sequential(nn.Conv2d(32, 16, 1, bias=False), nn.BatchNorm2d(16))
        self.stage2 = nn.Sequential(nn.Conv2d(16, 24, 3, stride=2, padding=1), nn.BatchNorm2d(24), nn.Hardswish())
        self.pool = nn.AvgPool2d(4)
        self.fc1 = nn.Linear(24 * 2 * 2, 32)
        self.fc2 = nn.Linear(32, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = x + self.project(self.dw(self.expand(x)))  # residual: stem and project share one channel set
        x = self.pool(self.stage2(x))  # [N, 24, 8, 8] -> [N, 24, 2, 2]
        x = torch.flatten(x, 1)  # [N, 24, 2, 2] -> [N, 96]
        return self.fc2(torch.relu(self.fc1(x)))


def export_cnn(fold_bn: bool, seed: int = 0) -> tuple[onnx.ModelProto, TinyCNN]:
    """Export a perturbed :class:`TinyCNN` (16x16 input) with the legacy exporter, BN folded or kept as nodes."""
    from _shared import perturb_

    torch.manual_seed(seed)
    net = perturb_(TinyCNN(), seed).eval()
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(
            net,
            (torch.randn(1, 3, 16, 16),),
            buf,
            dynamo=False,
            opset_version=17,
            input_names=["image"],
            output_names=["logits"],
            do_constant_folding=fold_bn,
        )
    proto = onnx.load_from_string(buf.getvalue())
    write_metadata(proto, {"weight_map": build_weight_map(proto, net)})
    return proto, net
