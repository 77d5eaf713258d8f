"""A normalizer-free ResNet (NF-ResNet; Brock, De and Smith 2021), from nnlib layers:
no normalization layers; weight-standardized convolutions, scaled residual branches
and variance-preserving activations keep the signal in range.

The block computes ``h + alpha * f(h / beta)``, where ``beta`` is the expected
standard deviation of ``h`` (tracked analytically: the variance grows by
``alpha**2`` per block and resets to ``1 + alpha**2`` after each transition block)
and every ReLU is scaled by ``gamma = sqrt(2 / (1 - 1/pi))`` so that it keeps unit
variance. All these constants are folded into the convolutions' standardized
weights (``ScaledStdConv2d``'s ``in_scale`` and ``out_scale``), which is exact since
convolution is linear and ``relu(s * y) = s * relu(y)`` for ``s > 0``; so the
network is convolutions with fused bias + ReLU, one nnlib ReLU per block (the
pre-activation), max pooling and an add per block.

Input (N, C, H, W), contiguous or channels_last; output (N, num_classes).
"""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from .. import functional as F
from .. import layers as nl

__all__ = ["ScaledStdConv2d", "NFBottleneck", "NFResNet", "nf_resnet26", "nf_resnet50", "RELU_GAIN"]

RELU_GAIN = math.sqrt(2.0 / (1.0 - 1.0 / math.pi))   # 1 / std(relu(z)), z ~ N(0, 1)


class ScaledStdConv2d(nl.Conv2d):
    """Conv2d with scaled weight standardization. Each forward uses the weight
    ``gain * (W - mean) / sqrt(max(var * fan_in, eps)) * in_scale * out_scale`` (mean
    and biased variance over each output channel's ``fan_in`` weights) and the bias
    ``out_scale * b``; that is the convolution of ``in_scale * x`` multiplied by
    ``out_scale`` before the activation. The standardization is O(weights) torch math
    on the parameters; the convolution is nnlib's (Triton). Zero padding only.

    Parameters beyond Conv2d's: ``gain`` (out_channels, 1, 1, 1), initialised to 1.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = True, device=None, dtype=None, *, activation: str | None = None,
                 negative_slope: float = 0.01, in_scale: float = 1.0, out_scale: float = 1.0,
                 eps: float = 1e-4) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         device=device, dtype=dtype, activation=activation, negative_slope=negative_slope)
        if out_scale <= 0 and activation is not None:
            raise ValueError("ScaledStdConv2d: out_scale must be positive with a fused activation")
        self.gain = nn.Parameter(torch.ones(out_channels, 1, 1, 1, device=device, dtype=dtype))
        self.in_scale = float(in_scale)
        self.out_scale = float(out_scale)
        self.eps = float(eps)

    def standardized_weight(self) -> torch.Tensor:
        """The weight the convolution uses, (out_channels, in_channels / groups, kH, kW)."""
        w = self.weight
        fan_in = w[0].numel()
        var, mean = torch.var_mean(w, dim=(1, 2, 3), keepdim=True, correction=0)
        scale = torch.rsqrt(torch.clamp(var * fan_in, min=self.eps)) * self.gain
        return (w - mean) * (scale * (self.in_scale * self.out_scale))

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        bias = None if self.bias is None else self.bias * self.out_scale
        return F.conv2d(input, self.standardized_weight(), bias, self.stride, self.padding, self.dilation,
                        self.groups, activation=self.activation, negative_slope=self.negative_slope)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, in_scale={self.in_scale:.4g}, out_scale={self.out_scale:.4g}"


class NFBottleneck(nn.Module):
    """Pre-activation bottleneck: ``x + alpha * conv3(g(conv2(g(conv1(g(x) / beta)))))``
    with ``g = gamma * relu``; a transition block (stride or width change) takes the
    shortcut through a 1x1 convolution of ``g(x) / beta`` instead of ``x``."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, beta: float, alpha: float) -> None:
        super().__init__()
        out_planes = planes * self.expansion
        pre = RELU_GAIN / beta
        self.conv_shortcut = None
        if stride != 1 or inplanes != out_planes:
            self.conv_shortcut = ScaledStdConv2d(inplanes, out_planes, 1, stride, in_scale=pre)
        self.conv1 = ScaledStdConv2d(inplanes, planes, 1, in_scale=pre, out_scale=RELU_GAIN, activation="relu")
        self.conv2 = ScaledStdConv2d(planes, planes, 3, stride, padding=1, out_scale=RELU_GAIN, activation="relu")
        self.conv3 = ScaledStdConv2d(planes, out_planes, 1, out_scale=alpha)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(x)
        shortcut = x if self.conv_shortcut is None else self.conv_shortcut(out)
        return self.conv3(self.conv2(self.conv1(out))) + shortcut


class NFResNet(nn.Module):
    """NF-ResNet: a 7x7 stride-2 stem (a standardized conv, no activation: the first
    block's pre-activation follows, as in the paper's and timm's ``7x7_pool`` stem)
    and 3x3 stride-2 max pool, bottleneck stages of ``width * 2**i`` planes (stride 2 from the
    second), a final ReLU, global average pooling and a linear classifier."""

    def __init__(self, layers: Sequence[int], num_classes: int = 1000, *, width: int = 64, alpha: float = 0.2,
                 in_channels: int = 3) -> None:
        super().__init__()
        self.stem = ScaledStdConv2d(in_channels, width, 7, 2, padding=3)
        self.stem_pool = nl.MaxPool2d(3, 2, padding=1)
        expected_var = 1.0
        inplanes = width
        stages = []
        for i, blocks in enumerate(layers):
            planes = width * 2 ** i
            stage = []
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                stage.append(NFBottleneck(inplanes, planes, stride, math.sqrt(expected_var), alpha))
                # A transition block's shortcut carries unit variance; others add alpha**2 to h's.
                expected_var = (1.0 if j == 0 else expected_var) + alpha ** 2
                inplanes = planes * NFBottleneck.expansion
            stages.append(nn.Sequential(*stage))
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)
        for m in self.modules():
            if isinstance(m, ScaledStdConv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="linear")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem_pool(self.stem(x)))
        x = self.avgpool(F.relu(x))
        return self.fc(torch.flatten(x, 1))


def nf_resnet26(num_classes: int = 1000, **kwargs) -> NFResNet:
    """NF-ResNet-26: bottleneck stages [2, 2, 2, 2]. ``kwargs``: width, alpha, in_channels."""
    return NFResNet([2, 2, 2, 2], num_classes, **kwargs)


def nf_resnet50(num_classes: int = 1000, **kwargs) -> NFResNet:
    """NF-ResNet-50: bottleneck stages [3, 4, 6, 3]."""
    return NFResNet([3, 4, 6, 3], num_classes, **kwargs)
