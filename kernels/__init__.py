"""Triton kernels and the autograd Functions that launch them (no nn.Module here)."""
from ._runtime import backend, count_launches, interpreting

__all__ = ["backend", "count_launches", "interpreting"]
