"""Named model configurations, the segmentation model, and its size (parameters and FLOPs).

``build_model("paper")`` gives the reference paper's student (MobileViT-S + UPerNet-64, pooling bins 1,2,4,6);
``build_model("swin_t_upernet512", input_size=256)`` the teacher. Models take ``[N, 3, H, W]`` RGB normalised with
``models.constants.MEAN/STD`` and return logits ``[N, num_classes, H, W]``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from models.backbones import MobileViTFeatures, SwinFeatures
from models.constants import NUM_CLASSES
from models.upernet import UPerNetHead
from models.weights import WeightsError, load_into, load_pretrained_backbone, read_state_dict


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: the backbone (a timm name), the decoder, the classes."""

    name: str
    backbone: str
    decoder_width: int = 128
    pool_scales: tuple[int, ...] = (1, 2, 3, 6)
    num_classes: int = NUM_CLASSES
    input_size: int = 512  # the size the configuration is meant for; Swin builds its patch grid for it
    description: str = ""

    @property
    def family(self) -> str:
        return "swin" if self.backbone.startswith("swin") else "mobilevit"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["pool_scales"] = list(self.pool_scales)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelConfig:
        known = {f for f in cls.__dataclass_fields__}
        kw = {k: v for k, v in d.items() if k in known}
        kw["pool_scales"] = tuple(kw.get("pool_scales", (1, 2, 3, 6)))
        return cls(**kw)


CONFIGS: dict[str, ModelConfig] = {
    c.name: c
    for c in (
        ModelConfig(
            "paper",
            "mobilevit_s",
            64,
            (1, 2, 4, 6),
            description="the reference paper's code: MobileViT-S + UPerNet width 64, pooling bins 1,2,4,6",
        ),
        ModelConfig(
            "mobilevit_xs_upernet64",
            "mobilevit_xs",
            64,
            (1, 2, 4, 6),
            description="the paper's decoder on MobileViT-XS: UPerNet width 64, pooling bins 1,2,4,6",
        ),
        ModelConfig(
            "mobilevit_xxs_upernet64",
            "mobilevit_xxs",
            64,
            (1, 2, 4, 6),
            description="the paper's decoder on MobileViT-XXS: UPerNet width 64, pooling bins 1,2,4,6",
        ),
        ModelConfig("mobilevit_s_upernet512", "mobilevit_s", 512, description="MobileViT-S + standard UPerNet-512"),
        ModelConfig("mobilevit_s", "mobilevit_s", 128, description="MobileViT-S + UPerNet-128"),
        ModelConfig("mobilevit_xs", "mobilevit_xs", 128, description="MobileViT-XS + UPerNet-128"),
        ModelConfig("mobilevit_xxs", "mobilevit_xxs", 128, description="MobileViT-XXS + UPerNet-128"),
        ModelConfig(
            "swin_t_upernet512",
            "swin_tiny_patch4_window7_224",
            512,
            description="teacher: Swin-T + UPerNet-512",
        ),
    )
}


class UnknownModelError(KeyError):
    """A model name that is not in the registry."""

    def __str__(self) -> str:
        return str(self.args[0])


def list_models() -> list[str]:
    return list(CONFIGS)


def get_config(name: str, **overrides: Any) -> ModelConfig:
    """The registered configuration ``name`` with ``overrides`` (e.g. ``decoder_width=64``) applied."""
    if name not in CONFIGS:
        raise UnknownModelError(f"unknown model {name!r}; choose one of: {', '.join(CONFIGS)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    if "pool_scales" in overrides:
        overrides["pool_scales"] = tuple(int(s) for s in overrides["pool_scales"])
    return replace(CONFIGS[name], **overrides)


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
