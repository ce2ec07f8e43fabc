"""UPerNet decoder (Xiao et al., 2018): a pyramid pooling module on the last map, an FPN over the others, fusion.

Every piece exports to ONNX at opsets 13 and 17 with fixed input sizes: adaptive average pooling to bins that do
not divide the map (3x3 or 6x6 on 16x16) has no ONNX equivalent in the legacy exporter, so the pyramid pooling is
written as exact pooling with fixed averaging matrices, ``pooled = P_h @ x @ P_w^T`` (two MatMuls with constants).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class ConvBNReLU(nn.Sequential):
    """Conv (no bias) -> BatchNorm -> ReLU, the decoder's building block."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def adaptive_pool_matrix(size: int, bins: int) -> np.ndarray:
    """The [bins, size] matrix whose row i averages input positions floor(i*size/bins) .. ceil((i+1)*size/bins)-1.

    This is exactly torch's ``adaptive_avg_pool`` bin rule, so ``P_h @ x @ P_w^T == adaptive_avg_pool2d(x, bins)``.
    """
    mat = np.zeros((bins, size), dtype=np.float32)
    for i in range(bins):
        start = (i * size) // bins
        end = -((-(i + 1) * size) // bins)  # ceil
        mat[i, start:end] = 1.0 / (end - start)
    return mat


class PyramidPooling(nn.Module):
    """PSP module: pool the map to ``s x s`` for each scale, 1x1 conv, upsample back, concat with the map, 3x3 conv."""

    def __init__(self, in_ch: int, width: int, scales: Sequence[int]) -> None:
        super().__init__()
        self.scales = tuple(int(s) for s in scales)
        self.stages = nn.ModuleList(ConvBNReLU(in_ch, width, 1) for _ in self.scales)
        self.bottleneck = ConvBNReLU(in_ch + len(self.scales) * width, width, 3)

    @staticmethod
    def _pool(x: torch.Tensor, bins: int) -> torch.Tensor:
        h, w = int(x.shape[-2]), int(x.shape[-1])  # fixed at export: the matrices become constants
        if bins == 1:
            return x.mean(dim=(2, 3), keepdim=True)  # [N, C, 1, 1]
        ph = torch.from_numpy(adaptive_pool_matrix(h, bins)).to(x)  # [bins, H]
        pw = torch.from_numpy(adaptive_pool_matrix(w, bins).T.copy()).to(x)  # [W, bins]
        return torch.matmul(torch.matmul(ph, x), pw)  # [N, C, H, W] -> [N, C, bins, W] -> [N, C, bins, bins]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        outs = [x]
        for scale, stage in zip(self.scales, self.stages):
            y = stage(self._pool(x, scale))
            outs.append(F.interpolate(y, size=size, mode="bilinear", align_corners=False))
        return self.bottleneck(torch.cat(outs, dim=1))  # [N, C + len(scales) * width, H, W] -> [N, width, H, W]


class UPerNetHead(nn.Module):
    """UPerNet: PPM on the last level, FPN laterals and smoothing convs (one per level), fusion conv, classifier.

    ``in_channels`` lists the backbone levels from the finest (stride 4) to the coarsest (stride 32).
    Output: logits at the finest level's resolution, ``[N, num_classes, H/4, W/4]``.
    """

    def __init__(self, in_channels: Sequence[int], width: int, num_classes: int, pool_scales: Sequence[int]) -> None:
        super().__init__()
        self.ppm = PyramidPooling(in_channels[-1], width, pool_scales)
        self.lateral_convs = nn.ModuleList(ConvBNReLU(c, width, 1) for c in in_channels[:-1])
        self.fpn_convs = nn.ModuleList(ConvBNReLU(width, width, 3) for _ in in_channels[:-1])
        self.fusion = ConvBNReLU(len(in_channels) * width, width, 3)
        self.classifier = nn.Conv2d(width, num_classes, 1)

    def forward(self, feats: Sequence[torch.Tensor]) -> torch.Tensor:
        laterals = [conv(f) for conv, f in zip(self.lateral_convs, feats[:-1])]
        laterals.append(self.ppm(feats[-1]))
        for i in range(len(laterals) - 1, 0, -1):  # top-down pathway
            laterals[i - 1] = laterals[i - 1] + F.interpolate(
                laterals[i], size=laterals[i - 1].shape[-2:], mode="bilinear", align_corners=False
            )
        outs = [conv(lat) for conv, lat in zip(self.fpn_convs, laterals[:-1])]
        outs.append(laterals[-1])
        size = outs[0].shape[-2:]
        outs = [outs[0]] + [F.interpolate(o, size=size, mode="bilinear", align_corners=False) for o in outs[1:]]
        fused = self.fusion(torch.cat(outs, dim=1))  # [N, levels * width, H/4, W/4] -> [N, width, H/4, W/4]
        return self.classifier(fused)
