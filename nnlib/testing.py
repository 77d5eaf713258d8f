"""How nnlib's results are compared with torch's: one tolerance table, used by
the test suite, the benchmark's checks and ``python -m nnlib.selftest``.

``TOLERANCES[dtype][kind]`` is (atol, rtol) against a float64 reference, per
kind of op: "elementwise" (one rounding of the result), "reduction" (sums over
many terms: norms, pooling gradients, PReLU's weight gradient) and "conv"
(dot products of length C*R*S). ``TF32_CONV``: an fp32 convolution on tensor
cores (``torch.backends.cudnn.allow_tf32``, on by default on a GPU).
"""
from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "TF32_CONV", "FLOAT_DTYPES", "tolerance", "assert_close"]

TOLERANCES = {
    torch.float32: {"elementwise": (1e-5, 1e-5), "reduction": (1e-4, 1e-4), "conv": (1e-4, 1e-4)},
    torch.float16: {"elementwise": (1e-3, 1e-3), "reduction": (5e-3, 5e-3), "conv": (1e-2, 1e-2)},
    torch.bfloat16: {"elementwise": (8e-3, 8e-3), "reduction": (2e-2, 2e-2), "conv": (2e-2, 2e-2)},
}
# tf32 keeps fp16's 10-bit mantissa, but rounds the fp32 operands inside the kernel,
# where the float64 reference does not see it (fp16's tolerances assume inputs already
# rounded): fp16's rtol and three times its atol (an H200, 2026-11-30: errors of 0.02
# on weight gradients near 10, 0.37 of this tolerance in the selftest).
TF32_CONV = (3e-2, 1e-2)
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tolerance(dtype: torch.dtype, kind: str, tf32: bool = False) -> tuple[float, float]:
    """(atol, rtol) of ``kind`` at ``dtype`` against a float64 reference; ``tf32``:
    an fp32 convolution on tensor cores (``TF32_CONV``)."""
    if tf32 and dtype == torch.float32 and kind == "conv":
        return TF32_CONV
    return TOLERANCES[dtype][kind]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str,
                 name: str = "output", scale: float = 1.0, tf32: bool = False) -> None:
    """Compare in float64 on the CPU; NaN must sit where the reference has NaN.
    ``scale`` widens atol for values whose magnitude grows with the problem;
    ``tf32``: ``tolerance``'s."""
    atol, rtol = tolerance(dtype, kind, tf32)
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(),
                               atol=atol * scale, rtol=rtol, equal_nan=True,
                               msg=lambda m: f"{name} ({dtype}{', tf32' if tf32 else ''}, {kind}): {m}")
