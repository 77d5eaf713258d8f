"""A dilated residual network for semantic segmentation (Yu, Koltun and Funkhouser
2017, DRN-C), from nnlib layers.

The network downsamples by 8 only; the last two residual stages replace further
striding by dilation 2 and 4, so the receptive field keeps growing while the
resolution stays. Two stages of plain dilated convolutions (dilation 2, then 1;
two convolutions each, without residuals) remove the gridding that dilation
leaves, and a 1x1 convolution classifies every pixel; bilinear upsampling brings
the logits to the input size.

Fused forms: batch norm + ReLU (+ the shortcut at the end of each residual block) in
one pass, as in :mod:`nnlib.models.resnet`.

Input (N, C, H, W), contiguous or channels_last; output (N, num_classes, H, W).
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as TF
from torch import nn

from .. import layers as nl
from .resnet import BasicBlock, conv1x1, conv3x3

__all__ = ["DRN", "drn_c26"]


class DRN(nn.Module):
    """DRN-C. ``channels`` and ``blocks``: eight entries each, for the stem
    (``layer0``, a 7x7 convolution), six residual stages (``layer1``..``layer6``:
    stride 1, 2, 2, 2, then dilation 2 and 4 at stride 1) and two degridding
    stages (``layer7``, ``layer8``: dilation 2 then 1; basic blocks without the
    residual, two convolutions each)."""

    def __init__(self, blocks: Sequence[int] = (1, 1, 2, 2, 2, 2, 1, 1),
                 channels: Sequence[int] = (16, 32, 64, 128, 256, 512, 512, 512),
                 num_classes: int = 19, in_channels: int = 3) -> None:
        super().__init__()
        if len(blocks) != 8 or len(channels) != 8:
            raise ValueError("DRN: blocks and channels need 8 entries each")
        self.layer0 = nn.Sequential(nl.Conv2d(in_channels, channels[0], 7, padding=3, bias=False),
                                    nl.BatchNorm2d(channels[0], activation="relu"))
        self.inplanes = channels[0]
        strides = (1, 2, 2, 2, 1, 1)
        dilations = (1, 1, 1, 1, 2, 4)
        for i in range(6):
            setattr(self, f"layer{i + 1}",
                    self._residual_stage(channels[i], blocks[i], strides[i], dilations[i]))
        self.layer7 = self._plain_stage(channels[6], blocks[6], dilation=2)
        self.layer8 = self._plain_stage(channels[7], blocks[7], dilation=1)
        self.classifier = nl.Conv2d(channels[7], num_classes, 1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        nn.init.zeros_(self.classifier.bias)

    def _residual_stage(self, planes: int, blocks: int, stride: int, dilation: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nl.BatchNorm2d(planes))
        out = [BasicBlock(self.inplanes, planes, stride, downsample, dilation=dilation)]
        out += [BasicBlock(planes, planes, dilation=dilation) for _ in range(1, blocks)]
        self.inplanes = planes
        return nn.Sequential(*out)

    def _plain_stage(self, planes: int, blocks: int, dilation: int) -> nn.Sequential:
        """DRN-C's degridding blocks: a basic block without its residual, two 3x3
        convolutions (+ batch norm + ReLU) each."""
        out: list[nn.Module] = []
        for _ in range(2 * blocks):
            out += [conv3x3(self.inplanes, planes, dilation=dilation), nl.BatchNorm2d(planes, activation="relu")]
            self.inplanes = planes
        return nn.Sequential(*out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        size = x.shape[-2:]
        for i in range(9):
            x = getattr(self, f"layer{i}")(x)
        return TF.interpolate(self.classifier(x), size=size, mode="bilinear", align_corners=False)


def drn_c26(num_classes: int = 19, *, width: int = 16, in_channels: int = 3) -> DRN:
    """DRN-C-26: blocks (1, 1, 2, 2, 2, 2, 1, 1), channels ``width`` times
    (1, 2, 4, 8, 16, 32, 32, 32) (width 16: the paper's DRN-C-26: 26 weight layers,
    the 1x1 shortcut projections aside)."""
    return DRN((1, 1, 2, 2, 2, 2, 1, 1), [width * m for m in (1, 2, 4, 8, 16, 32, 32, 32)], num_classes,
               in_channels)
