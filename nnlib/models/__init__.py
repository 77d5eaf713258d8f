"""Whole networks from nnlib layers, using the fused forms where they apply.

* :func:`lenet5`, :func:`digits_cnn` (the demo's CNN for 8x8 images)
* :func:`vgg11`, :func:`vgg13`, :func:`vgg16`, :func:`vgg19` and their ``_bn`` forms
  (torchvision's builders and keys)
* :func:`resnet18`, :func:`resnet34`, :func:`resnet50`, :func:`resnet101`,
  :func:`resnet152`, :func:`resnext50_32x4d`, :func:`resnext101_32x8d`,
  :func:`resnext101_64x4d`, :func:`wide_resnet50_2`, :func:`wide_resnet101_2`
  (torchvision's arguments, builders, names and keys; ``weights=`` loads
  torchvision's checkpoints)
* :func:`drn_c26`: a dilated residual network for semantic segmentation
* :func:`nf_resnet26`, :func:`nf_resnet50`: normalizer-free ResNets

:mod:`nnlib.models.reference` holds plain torch.nn twins (LeNet-5, the digits CNN,
ResNet) with the same ``state_dict`` keys, for comparisons.
"""
from . import reference
from .drn import DRN, drn_c26
from .lenet import DigitsCNN, LeNet5, digits_cnn, lenet5
from .nfnet import NFBottleneck, NFResNet, ScaledStdConv2d, nf_resnet26, nf_resnet50
from .resnet import (BasicBlock, Bottleneck, ResNet, resnet18, resnet34, resnet50, resnet101, resnet152,
                     resnext50_32x4d, resnext101_32x8d, resnext101_64x4d, wide_resnet50_2, wide_resnet101_2)
from .vgg import VGG, vgg11, vgg11_bn, vgg13, vgg13_bn, vgg16, vgg16_bn, vgg19, vgg19_bn

__all__ = ["reference", "DRN", "drn_c26", "DigitsCNN", "LeNet5", "digits_cnn", "lenet5", "NFBottleneck",
           "NFResNet", "ScaledStdConv2d", "nf_resnet26", "nf_resnet50", "BasicBlock", "Bottleneck", "ResNet",
           "resnet18", "resnet34", "resnet50", "resnet101", "resnet152", "resnext50_32x4d", "resnext101_32x8d",
           "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2", "VGG", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn",
           "vgg16", "vgg16_bn", "vgg19", "vgg19_bn"]
