"""The registered model configurations, by name, without torch: ``python -m models.train --model NAME`` and every
other command check a name here before anything heavy is imported.

``models.registry`` builds the models (torch, timm) and re-exports these names.
"""

from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, replace
from typing import Any

from fileformat.errors import UsageError
from models.constants import NUM_CLASSES


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


class UnknownModelError(UsageError, KeyError):
    """A model name that is not in the registry (a usage error; a ``KeyError`` too)."""

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


def model_name(text: str) -> str:
    """``argparse`` ``type=``: a registered configuration name, or a usage error listing them."""
    if text not in CONFIGS:
        raise argparse.ArgumentTypeError(f"unknown model {text!r}; choose one of: {', '.join(CONFIGS)}")
    return text


def model_names(text: str) -> tuple[str, ...]:
    """``argparse`` ``type=``: comma-separated registered configuration names (empty items ignored)."""
    names = tuple(n for n in text.split(",") if n)
    for n in names:
        model_name(n)
    return names
