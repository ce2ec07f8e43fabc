"""What the benchmark scripts share: the registry model with the tests' seeded perturbation (:mod:`models.perturb`),
and its export."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def perturbed_model(model: str, seed: int) -> Any:
    """Registry model ``model``, seeded, every weight perturbed like the tests' (no two weights equal), in eval."""
    import torch

    from models.perturb import perturb_
    from models.registry import build_model

    torch.manual_seed(seed)
    return perturb_(build_model(model), seed).eval()


def export_perturbed(model: str, size: int, path: Path, seed: int, net: Any = None) -> float:
    """Export ``net`` (default: :func:`perturbed_model`) with the legacy exporter at opset 17; the seconds taken."""
    from exporters.export import ExportOptions, export_torch_model

    start = time.perf_counter()
    net = perturbed_model(model, seed) if net is None else net
    export_torch_model(net, path, ExportOptions(model=model, input_size=size, opset=17, exporter="legacy", seed=seed))
    return time.perf_counter() - start
