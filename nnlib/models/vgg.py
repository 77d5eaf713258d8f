"""VGG-11 / 13 / 16 / 19 (Simonyan and Zisserman 2015), with and without batch norm,
from nnlib layers, with torchvision's builders and ``state_dict`` keys
(``features.<i>``, ``classifier.<i>``).

Fused forms: without batch norm each convolution applies bias + ReLU in its epilogue
(``Conv2d(..., activation="relu")``); with batch norm the batch norm applies the ReLU
(``BatchNorm2d(..., activation="relu")``). The ReLU's slot in ``features`` holds an
``nn.Identity`` so the indices, hence the keys, stay torchvision's. So a slice or a
hook that ends at a convolution (or its batch norm) sees the ReLU's output, where
torchvision's sees the value before it.

Input (N, C, H, W) with H, W >= 32, contiguous or channels_last; output (N, num_classes).
"""
from __future__ import annotations

import torch
from torch import nn

from .. import layers as nl
from ._builders import build

__all__ = ["VGG", "make_features", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19", "vgg19_bn",
           "CONFIGS"]

# Output channels of each 3x3 convolution at width 64; "M" is a 2x2 max pool.
CONFIGS = {
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg13": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
    "vgg19": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],
}


def make_features(config, batch_norm: bool = False, width: int = 64, in_channels: int = 3) -> nn.Sequential:
    """The convolutional trunk: ``config`` as in :data:`CONFIGS`, channels scaled by
    ``width / 64``."""
    out: list[nn.Module] = []
    channels = in_channels
    for v in config:
        if v == "M":
            out.append(nl.MaxPool2d(kernel_size=2, stride=2))
            continue
        v = v * width // 64
        if batch_norm:
            out += [nl.Conv2d(channels, v, 3, padding=1), nl.BatchNorm2d(v, activation="relu"), nn.Identity()]
        else:
            out += [nl.Conv2d(channels, v, 3, padding=1, activation="relu"), nn.Identity()]
        channels = v
    return nn.Sequential(*out)


class VGG(nn.Module):
    """torchvision's VGG with nnlib features. Keyword-only extras (defaults give
    torchvision's network): ``hidden`` (the classifier's hidden size: 4096),
    ``pool_size`` (the adaptive average pool's output: 7); the builders also take
    ``width`` (first stage's channels: 64) and ``in_channels`` (3)."""

    def __init__(self, features: nn.Sequential, num_classes: int = 1000, init_weights: bool = True,
                 dropout: float = 0.5, *, hidden: int = 4096, pool_size: int = 7) -> None:
        super().__init__()
        self.features = features
        channels = [m.out_channels for m in features if isinstance(m, nn.Conv2d)][-1]
        self.avgpool = nn.AdaptiveAvgPool2d((pool_size, pool_size))
        self.classifier = nn.Sequential(
            nn.Linear(channels * pool_size * pool_size, hidden), nl.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, hidden), nl.ReLU(True), nn.Dropout(p=dropout),
            nn.Linear(hidden, num_classes))
        if init_weights:
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.BatchNorm2d):
                    nn.init.constant_(m.weight, 1)
                    nn.init.constant_(m.bias, 0)
                elif isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, 0.01)
                    nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def _vgg(name: str, num_classes: int, weights, progress: bool, width: int = 64, in_channels: int = 3,
         **kwargs) -> VGG:
    """torchvision's builder ``name`` ("vgg16", "vgg16_bn", ...)."""
    batch_norm = name.endswith("_bn")
    config = CONFIGS[name.removesuffix("_bn")]
    if weights is not None:
        kwargs["init_weights"] = False      # as torchvision: the checkpoint replaces them
    return build(name, lambda classes: VGG(make_features(config, batch_norm, width, in_channels), classes, **kwargs),
                 num_classes, weights, progress)


def vgg11(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-11 (configuration A). ``weights`` / ``progress``: torchvision's
    (``nnlib.models._builders``); ``kwargs``: ``width``, ``in_channels`` and
    :class:`VGG`'s arguments."""
    return _vgg("vgg11", num_classes, weights, progress, **kwargs)


def vgg11_bn(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-11 with batch norm."""
    return _vgg("vgg11_bn", num_classes, weights, progress, **kwargs)


def vgg13(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-13 (configuration B)."""
    return _vgg("vgg13", num_classes, weights, progress, **kwargs)


def vgg13_bn(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-13 with batch norm."""
    return _vgg("vgg13_bn", num_classes, weights, progress, **kwargs)


def vgg16(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-16 (configuration D)."""
    return _vgg("vgg16", num_classes, weights, progress, **kwargs)


def vgg16_bn(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-16 with batch norm."""
    return _vgg("vgg16_bn", num_classes, weights, progress, **kwargs)


def vgg19(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-19 (configuration E)."""
    return _vgg("vgg19", num_classes, weights, progress, **kwargs)


def vgg19_bn(num_classes: int = 1000, *, weights=None, progress: bool = True, **kwargs) -> VGG:
    """VGG-19 with batch norm."""
    return _vgg("vgg19_bn", num_classes, weights, progress, **kwargs)
