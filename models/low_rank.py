"""Low-rank factorisations on the torch side: a ``plan["low_rank"]`` entry (``passes.low_rank``) turns its module
into ``nn.Sequential`` of two factors, started from the truncated SVD of its weight (:func:`load_onnx_weights` of
:mod:`models.onnx_weights` then loads the file's factors)."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import torch
from torch import nn

from models.torch_plan import PlanError, plan_module

log = logging.getLogger(__name__)

__all__ = ["apply_low_rank", "low_rank_entry", "svd_factors"]


def low_rank_entry(path: str, entry: Any) -> tuple[str, int, int, int]:
    """``(kind, in, out, rank)`` of a ``plan["low_rank"]`` entry, or :class:`PlanError` saying what is wrong."""
    if not isinstance(entry, dict) or entry.get("kind") not in ("linear", "conv"):
        raise PlanError(
            f"plan low_rank {path}: expected {{'kind': 'linear' | 'conv', 'in': N, 'out': M, 'rank': R}}, got "
            f"{entry!r}."
        )
    dims = [entry.get(k) for k in ("in", "out", "rank")]
    if not all(isinstance(d, (int, np.integer)) and not isinstance(d, bool) and d >= 1 for d in dims):
        raise PlanError(f"plan low_rank {path}: in, out and rank must be positive integers, got {dims}.")
    return str(entry["kind"]), int(dims[0]), int(dims[1]), int(dims[2])


def svd_factors(w: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(first [rank, in], second [out, rank])`` with ``second @ first`` the best rank-``rank`` approximation of
    ``w [out, in]`` (balanced: the square roots of the singular values on both sides), as ``passes.low_rank``."""
    u, s, vh = torch.linalg.svd(w.detach().to(torch.float64), full_matrices=False)
    root = s[:rank].sqrt()
    return (root[:, None] * vh[:rank]).to(w.dtype), (u[:, :rank] * root).to(w.dtype)


def apply_low_rank(model: nn.Module, plan: dict[str, Any]) -> int:
    """Replace each module of ``plan["low_rank"]`` (in place) by its two factors; return how many.

    An ``nn.Linear(in, out)`` becomes ``nn.Sequential(nn.Linear(in, r, bias=False), nn.Linear(r, out))``, a 1x1
    ``nn.Conv2d`` two 1x1 convs (the first with its stride, padding and dilation; the second with its bias). The
    factors start as the truncated SVD of the module's weight (so a plan applied without the file's weights is
    still the nearest rank-``r`` model); :func:`load_onnx_weights` then loads the file's factors.
    """
    entries = plan.get("low_rank") or {}
    for path, entry in entries.items():
        kind, n_in, n_out, rank = low_rank_entry(path, entry)
        mod = plan_module(model, path, "low_rank")
        if kind == "linear":
            if not isinstance(mod, nn.Linear):
                raise PlanError(
                    f"plan low_rank {path}: a linear factorisation, but the module is a {type(mod).__name__}."
                )
            have = (mod.in_features, mod.out_features)
        else:
            if not (isinstance(mod, nn.Conv2d) and tuple(mod.kernel_size) == (1, 1) and mod.groups == 1):
                raise PlanError(f"plan low_rank {path}: a 1x1 conv factorisation, but the module is {mod}.")
            have = (mod.in_channels, mod.out_channels)
        if have != (n_in, n_out):
            raise PlanError(
                f"plan low_rank {path}: factored as {n_in} -> {n_out}, but the module here is {have[0]} -> "
                f"{have[1]}; the plan was made for another configuration (or a cut after the factorisation)."
            )
        if rank > min(n_in, n_out):
            raise PlanError(f"plan low_rank {path}: rank {rank} exceeds min(in, out) = {min(n_in, n_out)}.")
        w = mod.weight.detach().reshape(n_out, n_in)
        first_w, second_w = svd_factors(w, rank)
        bias = mod.bias is not None
        kw = {"device": mod.weight.device, "dtype": mod.weight.dtype}
        if kind == "linear":
            first: nn.Module = nn.Linear(n_in, rank, bias=False, **kw)
            second: nn.Module = nn.Linear(rank, n_out, bias=bias, **kw)
        else:
            first = nn.Conv2d(
                n_in, rank, 1, stride=mod.stride, padding=mod.padding, dilation=mod.dilation, bias=False,
                padding_mode=mod.padding_mode, **kw,
            )  # fmt: skip
            second = nn.Conv2d(rank, n_out, 1, bias=bias, **kw)
        with torch.no_grad():
            first.weight.copy_(first_w.reshape(first.weight.shape))
            second.weight.copy_(second_w.reshape(second.weight.shape))
            if bias:
                second.bias.copy_(mod.bias)
        for p in (*first.parameters(), *second.parameters()):
            p.requires_grad_(mod.weight.requires_grad)
        seq = nn.Sequential(first, second).train(mod.training)
        parent_path, _, name = path.rpartition(".")
        setattr(model.get_submodule(parent_path) if parent_path else model, name, seq)
    if entries:
        log.info("low-rank: %d module(s) replaced by two factors", len(entries))
    return len(entries)
