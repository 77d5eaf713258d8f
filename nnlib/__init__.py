"""nnlib: Triton kernels for convolutional networks as drop-in torch.nn layers.

``nnlib.functional`` mirrors ``torch.nn.functional``; the modules here subclass
their ``torch.nn`` twins. ``nnlib.backend(tensor)`` tells which path a tensor
takes: "triton" (CUDA), "triton-interpreter" (CPU with TRITON_INTERPRET=1) or
"torch" (the fallback).
"""
from kernels._runtime import backend, count_launches

from . import functional, models
from .convert import convert, fuse
from .receptive import receptive_field
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers_all

__version__ = "0.1.0"
__all__ = ["backend", "count_launches", "functional", "models", "convert", "fuse", "receptive_field",
           *_layers_all]
