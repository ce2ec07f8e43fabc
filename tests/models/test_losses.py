"""Each loss term on tiny tensors against values computed by hand; weight 0 removes its term."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from models.losses import (
    DistillLoss,
    LossConfig,
    cross_entropy,
    feature_mimic,
    kd_kl,
    kd_mse,
    ohem_mask,
)

LN3 = math.log(3.0)


def _two_class_pixels() -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [1, 2, 1, 3]: pixel 0 (0, ln 3) p1 = 3/4; pixel 1 (0, 0) p = 1/2; pixel 2 (ln 9, 0) p0 = 9/10."""
    logits = torch.tensor([[[[0.0, 0.0, math.log(9.0)]], [[LN3, 0.0, 0.0]]]])
    target = torch.tensor([[[1, 0, 0]]])  # ground-truth probabilities 0.75, 0.5, 0.9
    return logits, target


def test_cross_entropy_with_ignore_index() -> None:
    logits, target = _two_class_pixels()
    target[0, 0, 2] = 255
    got = cross_entropy(logits, target)
    want = (math.log(4 / 3) + math.log(2)) / 2  # pixel 2 ignored
    assert got.item() == pytest.approx(want, abs=1e-6)


def test_cross_entropy_resizes_low_resolution_logits() -> None:
    logits = torch.zeros(1, 3, 2, 2)  # uniform over 3 classes everywhere, any size
    target = torch.zeros(1, 8, 8, dtype=torch.long)
    assert cross_entropy(logits, target).item() == pytest.approx(math.log(3), abs=1e-6)


def test_cross_entropy_all_ignored_is_zero_with_graph() -> None:
    logits = torch.randn(1, 2, 2, 2, requires_grad=True)
    loss = cross_entropy(logits, torch.full((1, 2, 2), 255))
    loss.backward()
    assert loss.item() == 0.0 and logits.grad is not None


def test_ohem_mask_follows_mmseg_rule() -> None:
    logits, target = _two_class_pixels()  # p_gt = [0.75, 0.5, 0.9], sorted [0.5, 0.75, 0.9]
    # min_kept 0: threshold max(0.5, 0.7) = 0.7 -> keep p < 0.7: pixel 1 only
    assert ohem_mask(logits, target, thresh=0.7, min_kept=0).tolist() == [[[False, True, False]]]
    # min_kept 2: threshold max(sorted[2] = 0.9, 0.7) = 0.9 -> pixels 0 and 1
    assert ohem_mask(logits, target, thresh=0.7, min_kept=2).tolist() == [[[True, True, False]]]
    # min_kept beyond the count clamps to the last: threshold 0.9 again
    assert ohem_mask(logits, target, thresh=0.7, min_kept=100).tolist() == [[[True, True, False]]]
    target[0, 0, 1] = 255  # ignored pixels are never kept
    assert ohem_mask(logits, target, thresh=0.95, min_kept=0).tolist() == [[[True, False, True]]]


def test_cross_entropy_ohem_averages_kept_pixels() -> None:
    logits, target = _two_class_pixels()
    got = cross_entropy(logits, target, ohem=True, ohem_thresh=0.7, ohem_min_kept=2)
    assert got.item() == pytest.approx((math.log(4 / 3) + math.log(2)) / 2, abs=1e-6)
    got = cross_entropy(logits, target, ohem=True, ohem_thresh=0.7, ohem_min_kept=0)
    assert got.item() == pytest.approx(math.log(2), abs=1e-6)


def test_kd_mse_hand_value_and_teacher_resize() -> None:
    s = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])
    assert kd_mse(s, torch.zeros(1, 1, 2, 2)).item() == pytest.approx(30 / 4)
    # a constant teacher map at another resolution resizes to the same constant
    assert kd_mse(s, torch.full((1, 1, 1, 1), 1.0)).item() == pytest.approx((0 + 1 + 4 + 9) / 4)


def test_kd_kl_hand_values_with_temperature() -> None:
    s = torch.zeros(1, 2, 1, 1)  # r = (1/2, 1/2) at any temperature
    t = torch.tensor([LN3, 0.0]).reshape(1, 2, 1, 1)
    want_t1 = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert kd_kl(s, t, 1.0).item() == pytest.approx(want_t1, abs=1e-6)
    q0 = math.sqrt(3) / (1 + math.sqrt(3))  # softmax((ln 3) / 2, 0)
    want_t2 = 4 * (q0 * math.log(q0 / 0.5) + (1 - q0) * math.log((1 - q0) / 0.5))
    assert kd_kl(s, t, 2.0).item() == pytest.approx(want_t2, abs=1e-6)
    assert kd_kl(t, t, 3.0).item() == pytest.approx(0.0, abs=1e-7)


def test_feature_mimic_hand_value() -> None:
    adapter = nn.Conv2d(1, 1, 1)
    with torch.no_grad():
        adapter.weight.fill_(2.0)
        adapter.bias.fill_(0.5)
    fs = torch.ones(1, 1, 2, 2)  # adapted: 2.5 everywhere, resized to 4x4
    ft = torch.zeros(1, 1, 4, 4)
    assert feature_mimic([fs], [ft], [adapter]).item() == pytest.approx(6.25)
    # two stages average: second stage exact match (loss 0)
    ft2 = torch.full((1, 1, 2, 2), 2.5)
    assert feature_mimic([fs, fs], [ft, ft2], [adapter, adapter]).item() == pytest.approx(6.25 / 2)
    with pytest.raises(ValueError, match="one adapter per stage"):
        feature_mimic([fs], [ft, ft], [adapter])


def test_distill_loss_total_is_weighted_sum() -> None:
    logits, target = _two_class_pixels()
    teacher = torch.zeros_like(logits)
    cfg = LossConfig(ce_weight=2.0, kd="mse", kd_weight=0.5)
    total, parts = DistillLoss(cfg)(logits, target, teacher)
    ce = (math.log(4 / 3) + math.log(2) + math.log(10 / 9)) / 3
    mse = (LN3**2 + math.log(9.0) ** 2) / 6
    assert parts["ce"] == pytest.approx(ce, abs=1e-6) and parts["kd"] == pytest.approx(mse, abs=1e-6)
    assert total.item() == pytest.approx(2 * ce + 0.5 * mse, abs=1e-6)


def test_distill_loss_features_through_adapters() -> None:
    cfg = LossConfig(ce_weight=0.0, kd_weight=0.0, feat_weight=3.0, feat_stages=(1,))
    loss = DistillLoss(cfg, student_channels=[4, 2, 8], teacher_channels=[6, 5, 7])
    assert list(loss.adapters) == ["1"] and loss.adapters["1"].weight.shape == (5, 2, 1, 1)
    with torch.no_grad():
        loss.adapters["1"].weight.zero_()
        loss.adapters["1"].bias.fill_(1.0)
    s_feats = [torch.randn(1, 4, 4, 4), torch.randn(1, 2, 4, 4), torch.randn(1, 8, 2, 2)]
    t_feats = [None, torch.zeros(1, 5, 8, 8), None]
    total, parts = loss(torch.zeros(1, 2, 8, 8), None, None, s_feats, t_feats)
    assert parts == {"feat": pytest.approx(1.0)} and total.item() == pytest.approx(3.0)


def test_weight_zero_removes_term_and_its_inputs() -> None:
    logits, target = _two_class_pixels()
    # KD off: no teacher needed, the total is the CE alone
    total, parts = DistillLoss(LossConfig(kd_weight=0.0))(logits, target, None)
    assert set(parts) == {"ce"} and total.item() == pytest.approx(parts["ce"])
    # CE off: no ground truth needed
    total, parts = DistillLoss(LossConfig(ce_weight=0.0, kd="kl"))(logits, None, logits.flip(1))
    assert set(parts) == {"kd"} and total.item() == pytest.approx(parts["kd"])
    # features off: no adapters, no parameters
    assert not list(DistillLoss(LossConfig(feat_weight=0.0), [4], [8]).parameters())
    # a term that is on but lacks its input is an error, not a silent zero
    with pytest.raises(ValueError, match="teacher"):
        DistillLoss(LossConfig())(logits, target, None)


def test_gradients_flow_to_student_and_adapters_only() -> None:
    cfg = LossConfig(kd="kl", temperature=2.0, feat_weight=1.0, feat_stages=(0,))
    loss = DistillLoss(cfg, [3], [5])
    s = torch.randn(1, 2, 4, 4, requires_grad=True)
    t = torch.randn(1, 2, 4, 4, requires_grad=True)
    fs, ft = torch.randn(1, 3, 2, 2, requires_grad=True), torch.randn(1, 5, 4, 4, requires_grad=True)
    total, _ = loss(s, torch.zeros(1, 4, 4, dtype=torch.long), t, [fs], [ft])
    total.backward()
    assert s.grad is not None and fs.grad is not None and loss.adapters["0"].weight.grad is not None
    assert t.grad is None and ft.grad is None  # the teacher is a constant


@pytest.mark.parametrize(
    "kwargs",
    [
        {"kd": "l1"},
        {"kd_weight": -1.0},
        {"temperature": 0.0},
        {"ohem_thresh": 1.5},
        {"feat_weight": 1.0, "feat_stages": ()},
    ],
)
def test_bad_config(kwargs: dict) -> None:
    with pytest.raises(ValueError):
        LossConfig(**kwargs)


def test_feature_stage_out_of_range() -> None:
    with pytest.raises(ValueError, match="stage 4 out of range"):
        DistillLoss(LossConfig(feat_weight=1.0, feat_stages=(4,)), [1, 2, 3, 4], [1, 2, 3, 4])
