"""ResNet-18 / 34 / 50 (He et al. 2016) from nnlib layers, with torchvision's module
names and ``state_dict`` keys: a torchvision checkpoint loads with ``strict=True``.

Fused forms: every batch norm that torchvision follows by a ReLU applies it in its
own epilogue (``BatchNorm2d(..., activation="relu")``), and the last batch norm of
each block adds the shortcut there too (``bn(x, residual=identity)``), so a block's
tail ``relu(bn(x) + identity)`` is one pass. The ``relu`` modules torchvision has
are kept under the same names (they hold no parameters) but the forward does not
call them: their work happens inside the batch norms.

Input (N, C, H, W), contiguous or channels_last; output (N, num_classes).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

from .. import layers as nl

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "conv3x3", "conv1x1"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nl.Conv2d:
    """3x3 convolution, padding = dilation (keeps the size at stride 1), no bias."""
    return nl.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, groups=groups,
                         bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nl.Conv2d:
    """1x1 convolution, no bias."""
    return nl.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.
    ``dilation`` applies to both convolutions (torchvision allows only 1; the dilated
    residual network uses more)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=dilation)
        self.bn1 = nl.BatchNorm2d(planes, activation="relu")
        self.relu = nl.ReLU(inplace=True)   # fused into bn1 and bn2
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = nl.BatchNorm2d(planes, activation="relu")
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        return self.bn2(self.conv2(out), residual=identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's ResNet v1.5), 1x1 expand by 4;
    the residual and the last ReLU are fused into bn3."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = nl.BatchNorm2d(width, activation="relu")
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = nl.BatchNorm2d(width, activation="relu")
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = nl.BatchNorm2d(planes * self.expansion, activation="relu")
        self.relu = nl.ReLU(inplace=True)   # fused into bn1, bn2 and bn3
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn1(self.conv1(x))
        out = self.bn2(self.conv2(out))
        return self.bn3(self.conv3(out), residual=identity)


class ResNet(nn.Module):
    """torchvision's ResNet from nnlib layers.

    Extras beyond torchvision's arguments, keyword-only (defaults give torchvision's
    network): ``width`` (channels of the first stage: 64), ``in_channels`` (3),
    ``small_input`` (a 3x3 stride-1 stem without max pooling, for 8x8 to 32x32
    images; ``maxpool`` is then an Identity). ``layers`` may list 1 to 4 stages;
    stage i has ``width * 2**i`` channels (times the block's expansion) and stride 2
    from the second on. Parameter names and shapes do not depend on the extras
    beyond what they change (channel counts, the stem kernel).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000, zero_init_residual: bool = False, groups: int = 1,
                 width_per_group: int = 64, *, width: int = 64, in_channels: int = 3,
                 small_input: bool = False) -> None:
        super().__init__()
        if not 1 <= len(layers) <= 4:
            raise ValueError(f"ResNet: layers must list 1 to 4 stages, got {list(layers)}")
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = width
        self.dilation = 1
        if small_input:
            self.conv1 = conv3x3(in_channels, width)
        else:
            self.conv1 = nl.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nl.BatchNorm2d(width, activation="relu")
        self.relu = nl.ReLU(inplace=True)   # fused into bn1
        self.maxpool = nn.Identity() if small_input else nl.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, blocks in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2 ** i, blocks, stride=1 if i == 0 else 2))
        self.num_stages = len(layers)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(width * 2 ** (len(layers) - 1) * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)
        if zero_init_residual:
            for m in self.modules():
                if isinstance(m, Bottleneck):
                    nn.init.constant_(m.bn3.weight, 0)
                elif isinstance(m, BasicBlock):
                    nn.init.constant_(m.bn2.weight, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       nl.BatchNorm2d(planes * block.expansion))
        out = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, self.dilation)]
        self.inplanes = planes * block.expansion
        out += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                      dilation=self.dilation) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's activation map (N, C, H', W')."""
        x = self.maxpool(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18: BasicBlocks [2, 2, 2, 2]. ``kwargs`` go to :class:`ResNet`."""
    return ResNet(BasicBlock, [2, 2, 2, 2], num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-34: BasicBlocks [3, 4, 6, 3]."""
    return ResNet(BasicBlock, [3, 4, 6, 3], num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50: Bottlenecks [3, 4, 6, 3]."""
    return ResNet(Bottleneck, [3, 4, 6, 3], num_classes, **kwargs)
