"""Helpers shared by test_prune_torch.py and test_distill.py: weight perturbation and hand-written plans."""

from __future__ import annotations

import torch

from fileformat.plan import empty_plan, merge_plans

ATTN = "backbone.stages.{s}.1.transformer.{b}.attn"
MLP = "backbone.stages.{s}.1.transformer.{b}.mlp"
BN_TENSORS = ("weight", "bias", "running_mean", "running_var")


def perturb(model: torch.nn.Module, seed: int, scale: float = 0.1) -> torch.nn.Module:
    """Seeded relative noise on every parameter and BN statistic (positive tensors stay positive), in place."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for t in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
            if not t.numel():
                continue
            mag = max(float(t.abs().mean()), 0.01)
            noise = torch.randn(t.shape, generator=gen) * scale
            if t.ndim == 1 and (t > 0).all():
                t.mul_(1 + noise.abs())
            else:
                t.add_(noise * mag)
    return model


def heads_plan(keep: dict[str, list[int]], total: int = 4) -> dict:
    """Only the heads section: apply_plan derives the qkv rows and proj columns."""
    return {"version": 1, "heads": {p: {"kept": k, "total": total} for p, k in keep.items()}}


def neurons_plan(keep: dict[str, list[int]], totals: dict[str, int]) -> dict:
    """Explicit slices (as the ONNX passes write them) plus the neurons section."""
    slices: dict = {}
    for path, kept in keep.items():
        slices[f"{path}.fc1.weight"] = {"0": kept}
        slices[f"{path}.fc1.bias"] = {"0": kept}
        slices[f"{path}.fc2.weight"] = {"1": kept}
    return {"neurons": {p: {"kept": k, "total": totals[p]} for p, k in keep.items()}, "slices": slices}


def conv_bn_plan(conv: str, bn: str, kept: list[int], consumers: dict[str, tuple[int, int]], total: int) -> dict:
    """Cut output channels of ``conv`` (+ its BN) and the input channels (axis 1) of the consumers.

    ``consumers`` maps a weight to ``(offset, its input width)``: the conv's channels sit at ``offset`` of the
    consumer's input (a Concat), the other input channels are kept.
    """
    slices = {f"{conv}.weight": {"0": kept}, **{f"{bn}.{t}": {"0": kept} for t in BN_TENSORS}}
    for name, (offset, width) in consumers.items():
        slices[name] = {"1": [j for j in range(width) if not offset <= j < offset + total or j - offset in kept]}
    return {"channels": {conv: {"kept": kept, "total": total}}, "slices": slices}


def merge(*plans: dict) -> dict:
    """Merge plans that cut disjoint units (indices all relative to the original model)."""
    out = empty_plan()
    for p in plans:
        out = merge_plans(out, p)
    return out


def combined_plan() -> dict:
    """Half the heads of one attention block and half the neurons of one MLP of MobileViT-XXS, and the decoder
    fusion conv cut to a quarter of its 128 channels."""
    return merge(
        heads_plan({ATTN.format(s=2, b=0): [1, 2]}),
        neurons_plan({MLP.format(s=3, b=1): list(range(1, 160, 2))}, {MLP.format(s=3, b=1): 160}),
        conv_bn_plan(
            "decoder.fusion.0", "decoder.fusion.1", list(range(0, 128, 4)), {"decoder.classifier.weight": (0, 128)}, 128
        ),
    )
