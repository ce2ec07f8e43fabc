"""Shared fixtures: small exported models, built once per test session and cached on disk.

Weights are perturbed away from their init before export (DESIGN.md section 4: with init weights the legacy
exporter merges equal initializers, which hides bugs of passes that edit shared tensors).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import onnx
import pytest
import torch

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def perturb_(model: torch.nn.Module, seed: int = 0, scale: float = 0.1) -> torch.nn.Module:
    """Add seeded noise to every parameter and BN statistic (in place), so no two tensors are equal.

    The noise is relative to each tensor's mean magnitude (at least 0.01), so activations keep their scale and
    float32 rounding stays at the level of a trained model.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            if not t.numel():
                continue
            noise = torch.randn(t.shape, generator=gen) * scale * max(float(t.abs().mean()), 0.01)
            if t.ndim == 1 and (t > 0).all():  # BN variances, LN/BN scales: stay positive
                t.mul_(1 + noise.abs() / max(float(t.abs().mean()), 0.01))
            else:
                t.add_(noise)
    return model


@pytest.fixture(scope="session")
def exported(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """``exported(model, size=64, opset=17, exporter="legacy", fused_attn=None, seed=0) -> Path`` (cached)."""
    from exporters.export import ExportOptions, export_torch_model
    from models.registry import build_model, get_config

    root = tmp_path_factory.mktemp("exported")
    cache: dict[tuple, Path] = {}

    def make(
        model: str = "mobilevit_xxs",
        size: int = 64,
        opset: int = 17,
        exporter: str = "legacy",
        fused_attn: bool | None = None,
        seed: int = 0,
        **overrides: object,
    ) -> Path:
        key = (model, size, opset, exporter, fused_attn, seed, tuple(sorted(overrides.items())))
        if key not in cache:
            if get_config(model).family == "swin":
                overrides.setdefault("input_size", size)
            torch.manual_seed(seed)
            net = perturb_(build_model(model, **overrides), seed)
            path = root / f"m{len(cache)}_{model}_{size}_{exporter}_{opset}.onnx"
            opts = ExportOptions(model=model, input_size=size, opset=opset, exporter=exporter, fused_attn=fused_attn)
            export_torch_model(net, path, opts)
            cache[key] = path
        return cache[key]

    return make


@pytest.fixture(scope="session")
def load() -> Callable[[Path], onnx.ModelProto]:
    return lambda p: onnx.load(str(p))
