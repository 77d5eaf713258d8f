"""LeNet-5 (LeCun et al. 1998) and a small CNN for 8x8 digits, from nnlib layers.

Convolutions apply bias and ReLU in their epilogue (``Conv2d(..., activation="relu")``);
subsampling is max pooling (nnlib's), the head fully connected.
"""
from __future__ import annotations

import torch
from torch import nn

from .. import layers as nl

__all__ = ["LeNet5", "lenet5", "DigitsCNN", "digits_cnn"]


class LeNet5(nn.Module):
    """LeNet-5 with ReLU and max pooling: C1 5x5 (6) -> S2 -> C3 5x5 (16) -> S4 ->
    C5 5x5 (120) -> F6 (84) -> output. Input (N, in_channels, 32, 32) (pad 28x28
    images by 2); output (N, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1) -> None:
        super().__init__()
        self.conv1 = nl.Conv2d(in_channels, 6, 5, activation="relu")
        self.pool1 = nl.MaxPool2d(2)
        self.conv2 = nl.Conv2d(6, 16, 5, activation="relu")
        self.pool2 = nl.MaxPool2d(2)
        self.conv3 = nl.Conv2d(16, 120, 5, activation="relu")
        self.fc1 = nn.Linear(120, 84)
        self.relu = nl.ReLU()
        self.fc2 = nn.Linear(84, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool2(self.conv2(self.pool1(self.conv1(x))))
        x = torch.flatten(self.conv3(x), 1)
        return self.fc2(self.relu(self.fc1(x)))


def lenet5(num_classes: int = 10, in_channels: int = 1) -> LeNet5:
    """LeNet-5 for (N, in_channels, 32, 32) images."""
    return LeNet5(num_classes, in_channels)


class DigitsCNN(nn.Module):
    """A small CNN for 8x8 images (scikit-learn's digits): 3x3 conv + ReLU -> 2x2 max
    pool -> 3x3 conv -> batch norm + ReLU -> 2x2 max pool -> linear. Input
    (N, in_channels, 8, 8); output (N, num_classes)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 1, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nl.Conv2d(in_channels, width, 3, padding=1, activation="relu")
        self.pool1 = nl.MaxPool2d(2)
        self.conv2 = nl.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nl.BatchNorm2d(2 * width, activation="relu")
        self.pool2 = nl.MaxPool2d(2)
        self.fc = nn.Linear(2 * width * 4, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool1(self.conv1(x))
        x = self.pool2(self.bn2(self.conv2(x)))
        return self.fc(torch.flatten(x, 1))


def digits_cnn(num_classes: int = 10, in_channels: int = 1, width: int = 8) -> DigitsCNN:
    """The demo's CNN for 8x8 images."""
    return DigitsCNN(num_classes, in_channels, width)
