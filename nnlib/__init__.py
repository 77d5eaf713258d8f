"""nnlib: Triton kernels for convolutional networks as drop-in torch.nn layers.

``nnlib.functional`` mirrors ``torch.nn.functional``; the modules here subclass
their ``torch.nn`` twins. ``nnlib.backend(tensor)`` tells which path a tensor
takes: "triton" (CUDA), "triton-interpreter" (CPU with TRITON_INTERPRET=1) or
"torch" (the fallback).
"""
import os as _os

try:
    from kernels._runtime import backend, count_launches
except ImportError as _error:       # another package named kernels found first (a user's folder, a PyPI one)
    import kernels as _found
    _ours = _os.path.join(_os.path.dirname(_os.path.dirname(_os.path.abspath(__file__))), "kernels")
    raise ImportError(f"nnlib needs its own 'kernels' package ({_ours}), but 'import kernels' finds "
                      f"{getattr(_found, '__file__', None) or list(getattr(_found, '__path__', []))}: "
                      "rename or move that one off sys.path") from _error

from . import functional, models
from .convert import convert, fuse
from .receptive import receptive_field
from .layers import *  # noqa: F401,F403
from .layers import __all__ as _layers_all

__version__ = "0.1.0"
__all__ = ["backend", "count_launches", "functional", "models", "convert", "fuse", "receptive_field",
           *_layers_all]
