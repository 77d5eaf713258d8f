"""python -m nnlib.selftest: its checks pass on this device and fail on a wrong op."""
import dataclasses

import torch

import nnlib.functional as F
from nnlib import selftest


def test_selftest_checks_pass_and_catch_a_wrong_op(device):
    by_op = {c.op: c for c in selftest.checks()}
    for op in ("relu", "batch_norm + add + relu", "conv2d depthwise 3x3"):
        assert selftest.run_check(by_op[op], torch.float32, device, "channels_last") <= 1, op
    off_by_a_little = dataclasses.replace(by_op["relu"], ours=lambda x: F.relu(x) * 1.001)
    assert selftest.run_check(off_by_a_little, torch.float32, device, "contiguous") > 1
