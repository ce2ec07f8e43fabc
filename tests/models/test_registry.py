"""The registered configurations build, run, report their size, and load weights files."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from models.registry import CONFIGS, UnknownModelError, build_model, get_config, list_models, model_size
from models.upernet import PyramidPooling, adaptive_pool_matrix
from models.weights import WeightsError


def _build(name: str, size: int = 64):
    return build_model(name, input_size=size) if get_config(name).family == "swin" else build_model(name)


@pytest.mark.parametrize("name", list_models())
def test_builds_runs_and_reports_size(name: str) -> None:
    model = _build(name)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 14, 64, 64)
    assert torch.isfinite(out).all()
    size = model_size(model, 64, name)
    assert size.params == sum(p.numel() for p in model.parameters())
    assert size.flops > 0


def test_paper_configuration_matches_reference_code() -> None:
    cfg = get_config("paper")
    assert (cfg.backbone, cfg.decoder_width, cfg.pool_scales) == ("mobilevit_s", 64, (1, 2, 4, 6))
    model = build_model("paper")
    assert model.backbone.channels == [64, 96, 128, 160]  # MobileViT-S stages at strides 4..32
    # the reference code's UPerNet-64 is about 0.7M parameters; ours is 0.56M because its pyramid pooling reads
    # the 160-channel stage output, not the ImageNet classifier's 640-channel final conv. Whole model ~5.4M.
    decoder = sum(p.numel() for p in model.decoder.parameters())
    assert 0.5e6 < decoder < 0.8e6
    assert 5.0e6 < sum(p.numel() for p in model.parameters()) < 5.8e6


def test_decoder_dominates_flops_at_512_for_standard_upernet() -> None:
    model = build_model("mobilevit_s_upernet512")
    total = model_size(model, 512).flops
    assert 400e9 < total < 470e9  # docs/field-notes.md section 6: 436 GFLOPs


@pytest.mark.parametrize(("size", "bins"), [(16, 3), (16, 6), (8, 6), (13, 4), (16, 1)])
def test_matrix_pooling_equals_adaptive_avg_pool(size: int, bins: int) -> None:
    x = torch.randn(2, 5, size, size + 3)
    ph = torch.from_numpy(adaptive_pool_matrix(size, bins))
    pw = torch.from_numpy(adaptive_pool_matrix(size + 3, bins)).T
    ours = ph @ x @ pw
    torch.testing.assert_close(ours, F.adaptive_avg_pool2d(x, bins), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(PyramidPooling._pool(x, bins), F.adaptive_avg_pool2d(x, bins), rtol=1e-6, atol=1e-6)


def test_overrides_and_unknown_names() -> None:
    assert get_config("mobilevit_xxs", decoder_width=32).decoder_width == 32
    assert set(CONFIGS) >= {"paper", "mobilevit_s_upernet512", "mobilevit_xs", "mobilevit_xxs", "swin_t_upernet512"}
    with pytest.raises(UnknownModelError, match="unknown model 'nope'.*paper"):
        get_config("nope")


def test_weights_files_round_trip_and_mismatch(tmp_path) -> None:
    from safetensors.torch import save_file

    src = build_model("mobilevit_xxs", decoder_width=32)
    with torch.no_grad():
        for p in src.parameters():
            p.add_(0.01)
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "w.safetensors"))
    torch.save({"model": src.state_dict(), "step": 3}, tmp_path / "ckpt.pt")
    x = torch.randn(1, 3, 64, 64)
    for f in ("w.safetensors", "ckpt.pt"):
        got = build_model("mobilevit_xxs", decoder_width=32, weights=str(tmp_path / f))
        torch.testing.assert_close(got(x), src(x))
    with pytest.raises(WeightsError, match="does not match the model.*shape mismatches"):
        build_model("mobilevit_xxs", weights=str(tmp_path / "w.safetensors"))  # decoder width 128 != 32
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(WeightsError, match="not a readable torch file"):
        build_model("mobilevit_xxs", weights=str(tmp_path / "bad.pt"))

    torch.save({"model": print}, tmp_path / "code.pt")  # a pickle of code: refused in our words
    with pytest.raises(WeightsError, match="never unpickles code") as exc:
        build_model("mobilevit_xxs", weights=str(tmp_path / "code.pt"))
    assert "weights_only" not in str(exc.value)


def test_pretrained_offline_fails_clearly(monkeypatch) -> None:
    import timm

    real = timm.create_model

    def offline(name, pretrained=False, **kw):
        if pretrained:
            raise OSError("Network is unreachable")
        return real(name, pretrained=False, **kw)

    monkeypatch.setattr(timm, "create_model", offline)
    with pytest.raises(WeightsError, match="cannot download pretrained weights.*--weights"):
        build_model("mobilevit_xxs", pretrained=True)
