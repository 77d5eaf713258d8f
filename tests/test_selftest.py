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


def test_main_on_a_cpu_without_the_interpreter_runs_a_child_and_returns(monkeypatch):
    """Triton reads TRITON_INTERPRET at import: main() runs the check in a child
    process with it set and returns its status (a caller keeps its process)."""
    from kernels import _runtime
    calls = []
    monkeypatch.setattr(_runtime, "interpreting", lambda: False)
    monkeypatch.setattr(selftest.subprocess, "call",
                        lambda command, env: calls.append((command[1:], env["TRITON_INTERPRET"])) or 3)
    assert selftest.main(["--quick", "--device", "cpu"]) == 3
    assert calls == [(["-m", "nnlib.selftest", "--quick", "--device", "cpu"], "1")]
