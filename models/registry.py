"""Named model configurations (``models.configs``), the segmentation model, and its size (parameters and FLOPs).

``build_model("paper")`` gives the reference paper's student (MobileViT-S + UPerNet-64, pooling bins 1,2,4,6);
``build_model("swin_t_upernet512", input_size=256)`` the teacher. Models take ``[N, 3, H, W]`` RGB normalised with
``models.constants.MEAN/STD`` and return logits ``[N, num_classes, H, W]``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import MobileViTFeatures, SwinFeatures
from models.configs import CONFIGS, ModelConfig, UnknownModelError, get_config, list_models
from models.upernet import UPerNetHead
from models.weights import WeightsError, load_into, load_pretrained_backbone, read_state_dict

# the names live in models.configs (no torch there: the command lines check a name before importing torch)
__all__ = [
    "CONFIGS",
    "ModelConfig",
    "ModelSize",
    "Segmentor",
    "UnknownModelError",
    "build_model",
    "get_config",
    "list_models",
    "model_size",
]


class Segmentor(nn.Module):
    """Backbone feature pyramid + UPerNet decoder; logits are upsampled (bilinear) to the input size."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        if config.family == "swin":
            self.backbone: nn.Module = SwinFeatures(config.backbone, config.input_size)
        else:
            self.backbone = MobileViTFeatures(config.backbone)
        self.decoder = UPerNetHead(self.backbone.channels, config.decoder_width, config.num_classes, config.pool_scales)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.decoder(self.backbone(x))  # [N, classes, H/4, W/4]
        return F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)


def build_model(
    name: str | ModelConfig,
    *,
    pretrained: bool = False,
    weights: str | None = None,
    **overrides: Any,
) -> Segmentor:
    """Build a registered model (random init unless ``pretrained`` or ``weights`` say otherwise).

    ``pretrained=True`` copies timm's ImageNet backbone weights (needs the network; fails with a clear message
    offline). ``weights`` loads a whole-model file (safetensors or torch, read with ``weights_only=True``) or,
    failing that, a backbone-only timm checkpoint; a file that fits neither raises :class:`WeightsError`.
    """
    config = name if isinstance(name, ModelConfig) else get_config(name, **overrides)
    model = Segmentor(config)
    if pretrained:
        load_pretrained_backbone(model.backbone, config.backbone)
    if weights is not None:
        state = read_state_dict(weights)
        if any(k.startswith(("backbone.", "decoder.")) for k in state):
            load_into(model, state, str(weights))
        else:
            try:
                load_into(model.backbone, _timm_to_backbone(state, model.backbone), str(weights), strict=False)
            except WeightsError as exc:
                raise WeightsError(f"{exc} (read as a backbone-only timm checkpoint)") from exc
    model.eval()
    return model


def _timm_to_backbone(state: dict[str, torch.Tensor], backbone: nn.Module) -> dict[str, torch.Tensor]:
    if isinstance(backbone, SwinFeatures):
        return {"net." + k.replace("layers.", "layers_", 1): v for k, v in state.items()}
    return state


@dataclass
class ModelSize:
    """Parameters and forward FLOPs (2 per multiply-accumulate, torch's flop counter) at one input size."""

    name: str
    input_size: int
    params: int
    flops: int


def model_size(model: nn.Module, input_size: int, name: str = "") -> ModelSize:
    """Count parameters and FLOPs (2 per multiply-accumulate) of one forward on ``[1, 3, input_size, input_size]``."""
    from torch.utils.flop_counter import FlopCounterMode

    params = sum(p.numel() for p in model.parameters())
    counter = FlopCounterMode(display=False, depth=1)
    # torch's counter has no formula for the CPU kernel of fused attention (it would count attention as 0):
    # count with the explicit q @ k^T and attn @ v matmuls, which compute the same thing
    fused = {m: m.fused_attn for m in model.modules() if hasattr(m, "fused_attn")}
    try:
        for m in fused:
            m.fused_attn = False
        with torch.no_grad(), counter:
            model(torch.zeros(1, 3, input_size, input_size))
    finally:
        for m, state in fused.items():
            m.fused_attn = state
    return ModelSize(name, input_size, params, int(counter.get_total_flops()))
