"""``torch.nn`` drop-ins. Each subclasses its torch twin, so ``__init__``,
parameters, buffers and ``state_dict`` are torch's own; only ``forward`` changes."""
from __future__ import annotations

import torch

from . import functional as F

__all__ = ["ReLU", "LeakyReLU", "PReLU", "MaxPool2d"]


# ---------------------------------------------------------------------------
# Activations

class ReLU(torch.nn.ReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.relu(input, inplace=self.inplace)


class LeakyReLU(torch.nn.LeakyReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.leaky_relu(input, self.negative_slope, self.inplace)


class PReLU(torch.nn.PReLU):
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return F.prelu(input, self.weight)


# ---------------------------------------------------------------------------
# Convolution

# ---------------------------------------------------------------------------
# Pooling

class MaxPool2d(torch.nn.MaxPool2d):
    """torch.nn.MaxPool2d plus keyword-only ``activation=None`` or "relu",
    applied to the pooled values."""

    def __init__(self, kernel_size, stride=None, padding=0, dilation=1, return_indices: bool = False,
                 ceil_mode: bool = False, *, activation=None):
        super().__init__(kernel_size, stride, padding, dilation, return_indices, ceil_mode)
        F._pool_activation(activation)
        self.activation = activation

    def forward(self, input: torch.Tensor):
        return F.max_pool2d(input, self.kernel_size, self.stride, self.padding, self.dilation,
                            ceil_mode=self.ceil_mode, return_indices=self.return_indices,
                            activation=self.activation)

    def extra_repr(self) -> str:
        extra = super().extra_repr()
        return extra if self.activation is None else f"{extra}, activation={self.activation!r}"

# ---------------------------------------------------------------------------
# Normalization
