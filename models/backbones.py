"""Feature-pyramid backbones from timm: MobileViT v1 (students) and Swin-T (teacher).

Each returns a list of NCHW maps at strides 4, 8, 16, 32 and exposes ``channels``.
"""

from __future__ import annotations

import timm
import torch
from torch import nn


class MobileViTFeatures(nn.Module):
    """MobileViT v1 stem and stages 1-4 (strides 4..32); the classifier's final 1x1 conv and head are dropped.

    Module paths stay timm's (``stages.2.1.transformer.0.attn.qkv``), so weights of a timm MobileViT checkpoint
    load by name.
    """

    def __init__(self, variant: str) -> None:
        super().__init__()
        net = timm.create_model(variant, pretrained=False, num_classes=0)
        self.stem = net.stem
        self.stages = net.stages
        self.out_indices = (1, 2, 3, 4)
        with torch.no_grad():  # stage widths differ from feature_info's (which reports the final conv)
            self.channels = [int(f.shape[1]) for f in self.forward(torch.zeros(1, 3, 64, 64))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.stem(x)
        feats = []
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i in self.out_indices:
                feats.append(x)
        return feats


class SwinFeatures(nn.Module):
    """Swin Transformer stages at strides 4..32; timm gives channels-last maps, permuted here to NCHW."""

    def __init__(self, variant: str, img_size: int) -> None:
        super().__init__()
        self.net = timm.create_model(variant, pretrained=False, features_only=True, img_size=img_size)
        self.channels = list(self.net.feature_info.channels())

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [f.permute(0, 3, 1, 2) for f in self.net(x)]  # [N, H, W, C] -> [N, C, H, W]
