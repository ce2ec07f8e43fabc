"""Helpers shared by tests in several folders (imported as ``from _shared import ...``; tests/ is on sys.path).

Not in a conftest.py: several folders have their own conftest, and ``import conftest`` would pick whichever came
first.
"""

from __future__ import annotations

import torch


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
