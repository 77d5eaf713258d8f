"""``torch.nn`` drop-ins. Each subclasses its torch twin, so ``__init__``,
parameters, buffers and ``state_dict`` are torch's own; only ``forward`` changes."""
from __future__ import annotations

import torch

from . import functional as F

__all__ = ["ReLU", "LeakyReLU", "PReLU"]


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

# ---------------------------------------------------------------------------
# Normalization
