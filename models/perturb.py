"""Seeded perturbation of a model's weights: what the tests and the benchmarks run instead of a trained model, so
that no two weights are equal (an untrained model's zero biases and identical BatchNorms hide wrong indices)."""

from __future__ import annotations

import re

import torch

__all__ = ["LAYER_SCALE", "perturb_"]

#: parameter names of layer scales, the per-channel ``y = x + gamma * f(x)`` of a residual branch: timm's
#: ``LayerScale.gamma`` and BEiT's / CaiT's ``gamma_1``, transformers' ``lambda_1`` (BEiT) and ``lambda1`` (DINOv2),
#: torchvision's ``layer_scale`` and transformers ConvNeXt's ``layer_scale_parameter``
LAYER_SCALE = re.compile(r"(^|\.)((gamma|lambda)_?\d?|layer_scale(_\d|_parameter)?)$")


def perturb_(
    model: torch.nn.Module, seed: int = 0, scale: float = 0.1, layer_scale: float | None = 0.5
) -> torch.nn.Module:
    """Add seeded noise to every parameter and BN statistic (in place), so no two tensors are equal.

    The noise is relative to each tensor's mean magnitude (at least 0.01), so activations keep their scale and
    float32 rounding stays at the level of a trained model. Layer scales (:data:`LAYER_SCALE`) are first set to
    ``layer_scale``, a trained model's order of magnitude: at their init values (1e-5, 1e-6) a residual branch adds
    almost nothing, so a wrong cut inside it would still match its oracle to float32 noise.
    """
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        if layer_scale is not None:
            for name, p in model.named_parameters():
                if LAYER_SCALE.search(name):
                    p.fill_(layer_scale)
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            if not t.numel():
                continue
            noise = torch.randn(t.shape, generator=gen) * scale * max(float(t.abs().mean()), 0.01)
            if t.ndim == 1 and (t > 0).all():  # BN variances, LN/BN scales: stay positive
                t.mul_(1 + noise.abs() / max(float(t.abs().mean()), 0.01))
            else:
                t.add_(noise)
    return model
