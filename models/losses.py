"""Segmentation and distillation losses: cross-entropy (optionally OHEM), logit distillation, feature mimicking.

Notation: student logits ``s``, teacher logits ``t`` (``[N, C, H, W]``), ground truth ``y`` (``[N, H, W]``, class
ids, ``ignore_index`` for unlabelled pixels), ``V`` the labelled pixels.

* Cross-entropy: ``CE = 1/|K| sum_{p in K} -log softmax(s_p)[y_p]`` with ``K = V`` or, with OHEM (mmseg's
  ``OHEMPixelSampler``), ``K = {p in V : softmax(s_p)[y_p] < max(thresh, q)}`` where ``q`` is the
  ``min(min_kept, |V| - 1)``-th smallest ground-truth probability (0-based): the hard pixels, at least ``min_kept``
  of them. The selection uses no gradient; the loss is averaged over the kept pixels.
* Logit distillation, MSE (the paper's code): ``1/(N C H W) sum (s - t)^2`` over full-resolution logits.
* Logit distillation, KL with temperature ``T`` (Hinton et al.; the challenge's most accurate team used T = 3):
  ``T^2 / (N H W) sum_p sum_c q_c log(q_c / r_c)`` with ``q = softmax(t_p / T)``, ``r = softmax(s_p / T)``.
  The ``T^2`` keeps the gradient scale independent of ``T``.
* Feature mimicking at early stages: for each chosen stage ``i``, ``A_i`` a 1x1 conv (student channels -> teacher
  channels, with bias), ``f~_i = resize(A_i(f_i^S), size(f_i^T))`` (bilinear), and
  ``FEAT = 1/|stages| sum_i mean((f~_i - f_i^T)^2)``. The adapters live in :class:`DistillLoss`, not in the
  student, so they are trained with it and never exported.

The total is ``ce_weight * CE + kd_weight * KD + feat_weight * FEAT``; a weight of 0 removes its term and skips
its computation (its inputs may then be ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from models.constants import IGNORE_INDEX

__all__ = [
    "DistillLoss",
    "LossConfig",
    "cross_entropy",
    "feature_mimic",
    "kd_kl",
    "kd_mse",
    "ohem_mask",
    "resize_to",
]

KD_KINDS = ("mse", "kl")


@dataclass(frozen=True)
class LossConfig:
    """Weights and options of :class:`DistillLoss` (weight 0 disables a term)."""

    ce_weight: float = 1.0
    ohem: bool = False
    ohem_thresh: float = 0.7
    ohem_min_kept: int = 100_000
    kd: str = "mse"
    kd_weight: float = 1.0
    temperature: float = 1.0
    feat_weight: float = 0.0
    feat_stages: tuple[int, ...] = (0, 1)
    ignore_index: int = IGNORE_INDEX

    def __post_init__(self) -> None:
        if self.kd not in KD_KINDS:
            raise ValueError(f"kd must be one of {KD_KINDS}, got {self.kd!r}")
        if min(self.ce_weight, self.kd_weight, self.feat_weight) < 0:
            raise ValueError("loss weights must be >= 0")
        if self.temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {self.temperature}")
        if not 0 < self.ohem_thresh <= 1 or self.ohem_min_kept < 0:
            raise ValueError("ohem_thresh must be in (0, 1] and ohem_min_kept >= 0")
        if self.feat_weight > 0 and not self.feat_stages:
            raise ValueError("feature mimicking needs at least one stage (feat_stages)")


def resize_to(x: torch.Tensor, size: Sequence[int]) -> torch.Tensor:
    """Bilinear resize of ``[N, C, h, w]`` to ``[N, C, *size]`` (a no-op when the size already matches)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)


def ohem_mask(
    logits: torch.Tensor, target: torch.Tensor, *, thresh: float, min_kept: int, ignore_index: int = IGNORE_INDEX
) -> torch.Tensor:
    """Boolean ``[N, H, W]`` mask of the pixels OHEM keeps (see the module docstring; no gradient)."""
    with torch.no_grad():
        valid = target != ignore_index
        prob = logits.softmax(dim=1)  # [N, C, H, W]
        label = target.masked_fill(~valid, 0).unsqueeze(1)  # [N, 1, H, W]
        p_gt = prob.gather(1, label).squeeze(1)  # [N, H, W]
        sorted_p = p_gt[valid].sort().values
        if sorted_p.numel() == 0:
            return valid
        threshold = max(float(sorted_p[min(min_kept, sorted_p.numel() - 1)]), thresh)
        return valid & (p_gt < threshold)


def cross_entropy(
    logits: torch.Tensor,
    target: torch.Tensor,
    *,
    ignore_index: int = IGNORE_INDEX,
    ohem: bool = False,
    ohem_thresh: float = 0.7,
    ohem_min_kept: int = 100_000,
) -> torch.Tensor:
    """Pixel cross-entropy averaged over the labelled (OHEM: kept) pixels; 0 (with a graph) when none is left."""
    logits = resize_to(logits, target.shape[-2:])
    per_pixel = F.cross_entropy(logits, target, ignore_index=ignore_index, reduction="none")  # [N, H, W]
    if ohem:
        keep = ohem_mask(logits, target, thresh=ohem_thresh, min_kept=ohem_min_kept, ignore_index=ignore_index)
    else:
        keep = target != ignore_index
    if not keep.any():
        return logits.sum() * 0.0
    return per_pixel[keep].mean()


def kd_mse(student: torch.Tensor, teacher: torch.Tensor) -> torch.Tensor:
    """Mean squared difference of logits; the teacher's are resized to the student's size if they differ."""
    teacher = resize_to(teacher, student.shape[-2:])
    return F.mse_loss(student, teacher.detach())


def kd_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float = 1.0) -> torch.Tensor:
    """``T^2 x`` mean over pixels of ``KL(softmax(t/T) || softmax(s/T))`` summed over classes."""
    teacher = resize_to(teacher, student.shape[-2:]).detach()
    log_r = F.log_softmax(student / temperature, dim=1)  # [N, C, H, W]
    log_q = F.log_softmax(teacher / temperature, dim=1)
    kl = (log_q.exp() * (log_q - log_r)).sum(dim=1)  # [N, H, W]
    return kl.mean() * temperature**2


def feature_mimic(
    student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor], adapters: Sequence[nn.Module]
) -> torch.Tensor:
    """Mean over the given stages of ``mean((resize(A(f_s), size(f_t)) - f_t)^2)``."""
    if not (len(student_feats) == len(teacher_feats) == len(adapters)) or not adapters:
        raise ValueError(
            f"feature mimicking needs one adapter per stage: {len(student_feats)} student maps, "
            f"{len(teacher_feats)} teacher maps, {len(adapters)} adapters"
        )
    terms = []
    for fs, ft, adapter in zip(student_feats, teacher_feats, adapters):
        projected = resize_to(adapter(fs), ft.shape[-2:])  # [N, C_s, h, w] -> [N, C_t, H_t, W_t]
        terms.append(F.mse_loss(projected, ft.detach()))
    return torch.stack(terms).mean()


class DistillLoss(nn.Module):
    """``ce_weight * CE + kd_weight * KD + feat_weight * FEAT`` (module docstring), with the 1x1 feature adapters.

    ``student_channels`` / ``teacher_channels`` list the backbone widths per stage (``backbone.channels``); they
    are needed only when ``feat_weight > 0``. ``forward`` returns ``(total, {term: float})``.
    """

    def __init__(
        self,
        config: LossConfig | None = None,
        student_channels: Sequence[int] | None = None,
        teacher_channels: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.config = config or LossConfig()
        self.adapters = nn.ModuleDict()
        if self.config.feat_weight > 0:
            if student_channels is None or teacher_channels is None:
                raise ValueError("feature mimicking needs student_channels and teacher_channels")
            for i in self.config.feat_stages:
                if not (0 <= i < len(student_channels) and i < len(teacher_channels)):
                    raise ValueError(
                        f"feature stage {i} out of range: the student has {len(student_channels)} stages, "
                        f"the teacher {len(teacher_channels)}"
                    )
                self.adapters[str(i)] = nn.Conv2d(int(student_channels[i]), int(teacher_channels[i]), 1)

    @property
    def needs_teacher(self) -> bool:
        return self.config.kd_weight > 0 or self.config.feat_weight > 0

    def forward(
        self,
        student_logits: torch.Tensor,
        target: torch.Tensor | None = None,
        teacher_logits: torch.Tensor | None = None,
        student_feats: Sequence[torch.Tensor] | None = None,
        teacher_feats: Sequence[torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its terms. ``*_feats`` are the full stage lists (indexed by ``feat_stages``)."""
        cfg = self.config
        total = student_logits.new_zeros(())
        parts: dict[str, float] = {}
        if cfg.ce_weight > 0:
            if target is None:
                raise ValueError("the cross-entropy term needs the ground truth")
            ce = cross_entropy(
                student_logits,
                target,
                ignore_index=cfg.ignore_index,
                ohem=cfg.ohem,
                ohem_thresh=cfg.ohem_thresh,
                ohem_min_kept=cfg.ohem_min_kept,
            )
            total = total + cfg.ce_weight * ce
            parts["ce"] = float(ce.detach())
        if cfg.kd_weight > 0:
            if teacher_logits is None:
                raise ValueError("the distillation term needs the teacher's logits")
            if cfg.kd == "mse":
                kd = kd_mse(student_logits, teacher_logits)
            else:
                kd = kd_kl(student_logits, teacher_logits, cfg.temperature)
            total = total + cfg.kd_weight * kd
            parts["kd"] = float(kd.detach())
        if cfg.feat_weight > 0:
            if student_feats is None or teacher_feats is None:
                raise ValueError("the feature term needs student and teacher stage features")
            stages = list(cfg.feat_stages)
            feat = feature_mimic(
                [student_feats[i] for i in stages],
                [teacher_feats[i] for i in stages],
                [self.adapters[str(i)] for i in stages],
            )
            total = total + cfg.feat_weight * feat
            parts["feat"] = float(feat.detach())
        return total, parts
