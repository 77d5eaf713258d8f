"""ResNet-18 / 34 / 50 / 101 / 152 (He et al. 2016), ResNeXt and Wide ResNet from
nnlib layers, with torchvision's arguments, builders, module names and
``state_dict`` keys: a torchvision checkpoint loads with ``strict=True``.

Fused forms: every batch norm that torchvision follows by a ReLU applies it in its
own epilogue (``BatchNorm2d(..., activation="relu")``), and the last batch norm of
each block adds the shortcut there too (``bn(x, residual=identity)``), so a block's
tail ``relu(bn(x) + identity)`` is one pass. The ``relu`` modules torchvision has
are kept under the same names (they hold no parameters) but the forward does not
call them after such a batch norm: its work happens inside. So a forward hook on a
batch norm sees its fused output (after the ReLU, and the shortcut for a block's
last one), and hooks on the ``relu`` modules do not run. The forward decides at
each call from the module it finds (``_applies_relu``): a ``norm_layer`` other than
batch norm (torch's or nnlib's class), or a norm module swapped in later
(FrozenBatchNorm2d, GroupNorm, Identity), gives torchvision's unfused forward there.

Input (N, C, H, W), contiguous or channels_last; output (N, num_classes).
"""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import nn

from .. import layers as nl
from ._builders import build, fixed

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
           "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2",
           "conv3x3", "conv1x1"]


def conv3x3(in_planes: int, out_planes: int, stride: int = 1, groups: int = 1, dilation: int = 1) -> nl.Conv2d:
    """3x3 convolution, padding = dilation (keeps the size at stride 1), no bias."""
    return nl.Conv2d(in_planes, out_planes, 3, stride=stride, padding=dilation, groups=groups,
                         bias=False, dilation=dilation)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nl.Conv2d:
    """1x1 convolution, no bias."""
    return nl.Conv2d(in_planes, out_planes, 1, stride=stride, bias=False)


def _applies_relu(norm: nn.Module) -> bool:
    """Whether ``norm`` applies the ReLU that follows it: nnlib's batch norm as the
    blocks build it, or the Identity a batch norm left when ``nnlib.fuse`` folded it
    into the convolution before it (which applies it now); both keep ``activation``."""
    return getattr(norm, "activation", None) == "relu"


def _adds_residual(norm: nn.Module) -> bool:
    """Whether ``norm`` adds a block's shortcut and applies the ReLU (``residual=``): an
    nnlib batch norm with the ReLU, BatchNorm2d or the SyncBatchNorm that
    ``convert_sync_batchnorm`` makes of one."""
    return isinstance(norm, nl._BatchNorm) and norm.activation == "relu"


def _fuses(norm_layer) -> bool:
    """Whether ``norm_layer`` is plain batch norm (None, torch's or nnlib's class), which
    nnlib's fused BatchNorm2d serves."""
    return norm_layer is None or norm_layer is nl.BatchNorm2d or norm_layer is nn.BatchNorm2d


def _norm(norm_layer: Callable[[int], nn.Module] | None, channels: int, activation: str | None = None) -> nn.Module:
    """nnlib's batch norm with ``activation`` fused for plain batch norm (``_fuses``),
    else ``norm_layer(channels)`` (the block then applies the ReLU itself)."""
    if _fuses(norm_layer):
        return nl.BatchNorm2d(channels, activation=activation)
    return norm_layer(channels)


def _norm_relu(norm: nn.Module, relu: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """relu(norm(x)), in one pass where ``norm`` applies the ReLU (``_applies_relu``)."""
    return norm(x) if _applies_relu(norm) else relu(norm(x))


def _tail(norm: nn.Module, relu: nn.Module, x: torch.Tensor, identity: torch.Tensor) -> torch.Tensor:
    """A block's tail relu(norm(x) + identity), in one pass where ``norm`` takes the shortcut."""
    return norm(x, residual=identity) if _adds_residual(norm) else relu(norm(x) + identity)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions; ``relu(bn2(conv2(relu(bn1(conv1(x))))) + shortcut(x))``.
    ``dilation`` applies to both convolutions (torchvision allows only 1; the dilated
    residual network uses more)."""
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        if groups != 1 or base_width != 64:
            raise ValueError("BasicBlock only supports groups=1 and base_width=64")
        self.conv1 = conv3x3(inplanes, planes, stride, dilation=dilation)
        self.bn1 = _norm(norm_layer, planes, "relu")
        self.relu = nl.ReLU(inplace=True)   # fused into bn1 and bn2 (with nnlib's batch norm)
        self.conv2 = conv3x3(planes, planes, dilation=dilation)
        self.bn2 = _norm(norm_layer, planes, "relu")
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = _norm_relu(self.bn1, self.relu, self.conv1(x))
        return _tail(self.bn2, self.relu, self.conv2(out), identity)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's ResNet v1.5), 1x1 expand by 4;
    the residual and the last ReLU are fused into bn3 (with nnlib's batch norm)."""
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None,
                 groups: int = 1, base_width: int = 64, dilation: int = 1,
                 norm_layer: Callable[[int], nn.Module] | None = None) -> None:
        super().__init__()
        width = int(planes * (base_width / 64.0)) * groups
        self.conv1 = conv1x1(inplanes, width)
        self.bn1 = _norm(norm_layer, width, "relu")
        self.conv2 = conv3x3(width, width, stride, groups, dilation)
        self.bn2 = _norm(norm_layer, width, "relu")
        self.conv3 = conv1x1(width, planes * self.expansion)
        self.bn3 = _norm(norm_layer, planes * self.expansion, "relu")
        self.relu = nl.ReLU(inplace=True)   # fused into bn1, bn2 and bn3 (with nnlib's batch norm)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = _norm_relu(self.bn1, self.relu, self.conv1(x))
        out = _norm_relu(self.bn2, self.relu, self.conv2(out))
        return _tail(self.bn3, self.relu, self.conv3(out), identity)


class ResNet(nn.Module):
    """torchvision's ResNet from nnlib layers, with torchvision's arguments:
    ``replace_stride_with_dilation`` (one bool per stage after the first: dilate
    instead of striding, as segmentation backbones do; BasicBlock stages too,
    which torchvision refuses) and ``norm_layer`` (a factory of norm modules, e.g.
    torchvision's FrozenBatchNorm2d; the blocks then run torchvision's unfused
    forward; None or a batch norm class, torch's or nnlib's: nnlib's, fused).

    Extras, keyword-only (defaults give torchvision's network): ``width`` (channels
    of the first stage: 64), ``in_channels`` (3), ``small_input`` (a 3x3 stride-1
    stem without max pooling, for 8x8 to 32x32 images; ``maxpool`` is then an
    Identity). ``layers`` may list 1 to 4 stages; stage i has ``width * 2**i``
    channels (times the block's expansion) and stride 2 from the second on.
    Parameter names and shapes do not depend on the extras beyond what they change
    (channel counts, the stem kernel).
    """

    def __init__(self, block: type[BasicBlock] | type[Bottleneck], layers: Sequence[int],
                 num_classes: int = 1000, zero_init_residual: bool = False, groups: int = 1,
                 width_per_group: int = 64, replace_stride_with_dilation: Sequence[bool] | None = None,
                 norm_layer: Callable[[int], nn.Module] | None = None, *, width: int = 64, in_channels: int = 3,
                 small_input: bool = False) -> None:
        super().__init__()
        if not 1 <= len(layers) <= 4:
            raise ValueError(f"ResNet: layers must list 1 to 4 stages, got {list(layers)}")
        if replace_stride_with_dilation is None:
            replace_stride_with_dilation = [False] * (len(layers) - 1)
        if len(replace_stride_with_dilation) != len(layers) - 1:
            raise ValueError("replace_stride_with_dilation should be None or a "
                             f"{len(layers) - 1}-element tuple, got {replace_stride_with_dilation}")
        self._norm_layer = norm_layer
        self.groups = groups
        self.base_width = width_per_group
        self.inplanes = width
        self.dilation = 1
        if small_input:
            self.conv1 = conv3x3(in_channels, width)
        else:
            self.conv1 = nl.Conv2d(in_channels, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = _norm(norm_layer, width, "relu")
        self.relu = nl.ReLU(inplace=True)   # fused into bn1 (with nnlib's batch norm)
        self.maxpool = nn.Identity() if small_input else nl.MaxPool2d(kernel_size=3, stride=2, padding=1)
        for i, blocks in enumerate(layers):
            setattr(self, f"layer{i + 1}", self._make_layer(block, width * 2 ** i, blocks, stride=1 if i == 0 else 2,
                                                            dilate=i > 0 and bool(replace_stride_with_dilation[i - 1])))
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
                last = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last is not None and getattr(last, "weight", None) is not None:
                    nn.init.constant_(last.weight, 0)

    def _make_layer(self, block, planes: int, blocks: int, stride: int = 1, dilate: bool = False) -> nn.Sequential:
        norm_layer = self._norm_layer
        downsample = None
        previous_dilation = self.dilation
        if dilate:
            self.dilation *= stride
            stride = 1
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes * block.expansion, stride),
                                       _norm(norm_layer, planes * block.expansion))
        out = [block(self.inplanes, planes, stride, downsample, self.groups, self.base_width, previous_dilation,
                     norm_layer)]
        self.inplanes = planes * block.expansion
        out += [block(self.inplanes, planes, groups=self.groups, base_width=self.base_width,
                      dilation=self.dilation, norm_layer=norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*out)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's activation map (N, C, H', W')."""
        x = self.maxpool(_norm_relu(self.bn1, self.relu, self.conv1(x)))
        for i in range(self.num_stages):
            x = getattr(self, f"layer{i + 1}")(x)
        return x

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.forward_features(x)), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._forward_impl(x)


def _resnet(name: str, block, layers: list[int], num_classes: int, weights, progress: bool, **kwargs) -> ResNet:
    return build(name, lambda classes: ResNet(block, layers, classes, **kwargs), num_classes, weights, progress)


def resnet18(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """ResNet-18: BasicBlocks [2, 2, 2, 2]. ``weights`` / ``progress``: torchvision's
    (``nnlib.models._builders``); ``kwargs`` go to :class:`ResNet`."""
    return _resnet("resnet18", BasicBlock, [2, 2, 2, 2], num_classes, weights, progress, **kwargs)


def resnet34(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """ResNet-34: BasicBlocks [3, 4, 6, 3]."""
    return _resnet("resnet34", BasicBlock, [3, 4, 6, 3], num_classes, weights, progress, **kwargs)


def resnet50(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """ResNet-50: Bottlenecks [3, 4, 6, 3]."""
    return _resnet("resnet50", Bottleneck, [3, 4, 6, 3], num_classes, weights, progress, **kwargs)


def resnet101(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """ResNet-101: Bottlenecks [3, 4, 23, 3]."""
    return _resnet("resnet101", Bottleneck, [3, 4, 23, 3], num_classes, weights, progress, **kwargs)


def resnet152(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """ResNet-152: Bottlenecks [3, 8, 36, 3]."""
    return _resnet("resnet152", Bottleneck, [3, 8, 36, 3], num_classes, weights, progress, **kwargs)


def resnext50_32x4d(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """ResNeXt-50 32x4d: ResNet-50 with 32 groups of width 4."""
    kwargs = fixed(fixed(kwargs, "groups", 32, "resnext50_32x4d"), "width_per_group", 4, "resnext50_32x4d")
    return _resnet("resnext50_32x4d", Bottleneck, [3, 4, 6, 3], num_classes, weights, progress, **kwargs)


def resnext101_32x8d(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """ResNeXt-101 32x8d."""
    kwargs = fixed(fixed(kwargs, "groups", 32, "resnext101_32x8d"), "width_per_group", 8, "resnext101_32x8d")
    return _resnet("resnext101_32x8d", Bottleneck, [3, 4, 23, 3], num_classes, weights, progress, **kwargs)


def resnext101_64x4d(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """ResNeXt-101 64x4d."""
    kwargs = fixed(fixed(kwargs, "groups", 64, "resnext101_64x4d"), "width_per_group", 4, "resnext101_64x4d")
    return _resnet("resnext101_64x4d", Bottleneck, [3, 4, 23, 3], num_classes, weights, progress, **kwargs)


def wide_resnet50_2(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """Wide ResNet-50-2: ResNet-50 with twice the bottleneck width."""
    kwargs = fixed(kwargs, "width_per_group", 128, "wide_resnet50_2")
    return _resnet("wide_resnet50_2", Bottleneck, [3, 4, 6, 3], num_classes, weights, progress, **kwargs)


def wide_resnet101_2(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> ResNet:
    """Wide ResNet-101-2."""
    kwargs = fixed(kwargs, "width_per_group", 128, "wide_resnet101_2")
    return _resnet("wide_resnet101_2", Bottleneck, [3, 4, 23, 3], num_classes, weights, progress, **kwargs)
