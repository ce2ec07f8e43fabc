"""Seeded perturbation of a model's weights: what the tests and the benchmarks run instead of a trained model, so
that no two weights are equal (an untrained model's zero biases and identical BatchNorms hide wrong indices)."""

from __future__ import annotations

import torch

__all__ = ["perturb_"]


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
