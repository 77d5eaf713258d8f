"""How nnlib's results are compared with torch's: one tolerance table, used by
the test suite, the benchmark's checks and ``python -m nnlib.selftest``.

``TOLERANCES[dtype][kind]`` is (atol, rtol) against a float64 reference, per
kind of op: "elementwise" (one rounding of the result), "reduction" (sums over
many terms: norms, pooling gradients, PReLU's weight gradient) and "conv"
(dot products of length C*R*S).
"""
from __future__ import annotations

import torch

__all__ = ["TOLERANCES", "FLOAT_DTYPES", "tolerance", "assert_close"]

TOLERANCES = {
    torch.float32: {"elementwise": (1e-5, 1e-5), "reduction": (1e-4, 1e-4), "conv": (1e-4, 1e-4)},
    torch.float16: {"elementwise": (1e-3, 1e-3), "reduction": (5e-3, 5e-3), "conv": (1e-2, 1e-2)},
    torch.bfloat16: {"elementwise": (8e-3, 8e-3), "reduction": (2e-2, 2e-2), "conv": (2e-2, 2e-2)},
}
FLOAT_DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def tolerance(dtype: torch.dtype, kind: str) -> tuple[float, float]:
    """(atol, rtol) of ``kind`` at ``dtype`` against a float64 reference."""
    return TOLERANCES[dtype][kind]


def assert_close(actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype, kind: str,
                 name: str = "output", scale: float = 1.0) -> None:
    """Compare in float64 on the CPU; NaN must sit where the reference has NaN.
    ``scale`` widens atol for values whose magnitude grows with the problem."""
    atol, rtol = tolerance(dtype, kind)
    torch.testing.assert_close(actual.detach().cpu().double(), expected.detach().cpu().double(),
                               atol=atol * scale, rtol=rtol, equal_nan=True,
                               msg=lambda m: f"{name} ({dtype}, {kind}): {m}")
