"""Launch and device-op budgets of the host path (``python -m bench --host``).

Each case of ``bench.host.cases`` is counted with its kernels not run: Triton
launches, and other device ops (aten ops that do device work: on a GPU each one
is a launch or a copy). The budgets are what the calls issue today; a change
that adds a torch op around a kernel, or a launch, fails here. Times are not
tested (bench/ measures them).
"""
from __future__ import annotations

import pytest

from bench import host
from kernels._runtime import interpreting

# The cases are CPU tensors run through the interpreter; a GPU machine has none (its CPU
# tensors take torch's path), as ``python -m bench --host`` says there.
pytestmark = pytest.mark.skipif(not interpreting(), reason="counts the interpreter's host path of CPU tensors; "
                                                          "a GPU machine runs no interpreter")

# case -> (Triton launches, other device ops, what the other ops are)
BUDGETS = {
    "relu forward": (1, 0, ""),
    "relu forward+backward": (2, 0, ""),
    "leaky_relu forward": (1, 0, ""),
    "leaky_relu forward+backward": (2, 0, ""),
    "prelu forward": (1, 0, ""),
    "prelu forward+backward": (3, 0, ""),
    "max_pool2d forward": (1, 0, ""),
    "max_pool2d forward+backward": (2, 0, ""),
    "conv2d 3x3 forward": (1, 0, ""),
    "conv2d 3x3 forward+backward": (4, 0, ""),
    "batch_norm train forward": (2, 0, ""),
    "batch_norm train forward+backward": (4, 0, ""),
    "batch_norm + add + relu forward": (2, 0, ""),
    "batch_norm + add + relu forward+backward": (4, 1, "autograd adds x's two gradients (input and residual)"),
    "group_norm forward": (1, 0, ""),
    "group_norm forward+backward": (2, 0, ""),
    "layer_norm forward": (1, 1, "a channels_last x is copied: (C, H, W) is not one stride"),
    "layer_norm forward+backward": (2, 1, "the same copy"),
    "resnet50 training step (bf16 autocast)": (375, 90, "autocast's casts (the conv weights' forward ones only: "
                                              "their gradients are written in fp32), the head and the loss, "
                                              "autograd's gradient sums at the 16 identity shortcuts"),
}
CASES = {case.name: case for case in host.cases()}


def test_every_case_has_a_budget():
    assert set(CASES) == set(BUDGETS)


@pytest.mark.parametrize("name", list(BUDGETS))
def test_launch_and_device_op_budget(name):
    launches, device_ops, _ = BUDGETS[name]
    counts = host.count_ops(CASES[name].ours)
    assert counts.launches <= launches and counts.device_ops <= device_ops, \
        f"{counts.launches} launches, other device ops {dict(counts.ops)}"
