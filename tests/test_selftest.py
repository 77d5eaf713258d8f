"""python -m nnlib.selftest: its checks pass on this device and fail on a wrong op."""
import dataclasses

import pytest
import torch

import nnlib.functional as F
from nnlib import selftest


def test_selftest_checks_pass_and_catch_a_wrong_op(device):
    by_op = {c.op: c for c in selftest.checks()}
    for op in ("relu", "batch_norm + add + relu", "conv2d depthwise 3x3"):
        assert selftest.run_check(by_op[op], torch.float32, device, "channels_last") <= 1, op
    for op in ("conv2d 3x3 bf16 autocast", "group_norm bf16 autocast"):
        assert selftest.run_check(by_op[op], torch.bfloat16, device, "channels_last") <= 1, op
    off_by_a_little = dataclasses.replace(by_op["relu"], ours=lambda x: F.relu(x) * 1.001)
    assert selftest.run_check(off_by_a_little, torch.float32, device, "contiguous") > 1


def _one_nan(x):
    y = F.relu(x)
    return torch.where(torch.arange(y.numel(), device=y.device).view(y.shape) == 3, float("nan"), y)


def test_selftest_fails_nan_and_a_backward_on_torchs_path(device):
    """A NaN where torch has a number fails (max() dropped NaN: an all-NaN relu
    passed), as does an infinity; a backward that runs no Triton kernel raises."""
    relu = {c.op: c for c in selftest.checks()}["relu"]
    for ours in (_one_nan, lambda x: F.relu(x) * float("nan"), lambda x: F.relu(x) + float("inf")):
        assert selftest.run_check(dataclasses.replace(relu, ours=ours), torch.float32, device, "contiguous") > 1

    def torch_backward(x):      # our forward, torch's backward
        return F.relu(x.detach()) + (torch.relu(x) - torch.relu(x).detach())
    with pytest.raises(RuntimeError, match="backward"):
        selftest.run_check(dataclasses.replace(relu, ours=torch_backward), torch.float32, device, "contiguous")


def test_main_checks_float32_without_tf32_and_restores_it(monkeypatch, capsys):
    """The sweep runs with TF32 off (float32 checked as float32; a correct GPU
    kernel under cuDNN's default TF32 failed the float32 tolerance) and puts the
    switches back; --quick covers channels_last through bfloat16."""
    seen = []

    def sweep(dtypes, device, quick):
        seen.append((torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        return 0, 1
    monkeypatch.setattr(selftest, "_sweep", sweep)
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = True, True
    try:
        device = "cuda" if torch.cuda.is_available() else "cpu"     # cpu on a GPU machine: a child process
        assert selftest.main(["--quick", "--device", device]) == 0
        assert seen == [(False, False)]
        assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    finally:
        torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False


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


def test_sweep_on_a_gpu_checks_convolutions_with_tf32_too(monkeypatch, capsys):
    """On a GPU each convolution runs once more with TF32 on (cuDNN's default,
    which nnlib follows) at TF32_CONV's tolerance, and TF32 is off for every other
    row (the run_check stood in for: no GPU here)."""
    runs = []

    def run_check(check, dtype, device, layout, tf32=False):
        runs.append((check.kind, dtype, tf32, torch.backends.cudnn.allow_tf32))
        return 0.5
    monkeypatch.setattr(selftest, "run_check", run_check)
    failed, rows = selftest._sweep([torch.float32, torch.bfloat16], "cuda", True)
    convs = sum(c.kind == "conv" and not c.dtypes for c in selftest.checks())      # the autocast one: bf16 only
    rows_wanted = sum(1 if c.dtypes == (torch.bfloat16,) else 2 for c in selftest.checks()) + convs
    assert failed == 0 and rows == len(runs) == rows_wanted
    tf32 = [r for r in runs if r[3]]
    assert tf32 == [("conv", torch.float32, True, True)] * convs
    assert not torch.backends.cudnn.allow_tf32


def test_compile_ahead_pass_reaches_every_rows_forward_and_backward(monkeypatch):
    """On a GPU the sweep first runs every row's forward and backward under
    ``compile_ahead`` (their kernels compiled at once): counted here with launches
    skipped (compiling ahead stood in for), each row reaches a launch in its forward
    and one in its backward. Where nothing compiles ahead, the pass runs nothing."""
    from kernels import _runtime
    from kernels._runtime import count_launches, dry_run
    from nnlib import selftest
    with count_launches() as none:
        selftest._compile_ahead(selftest._runs([torch.float32], "cpu", quick=True), "cpu")
    assert none.total == 0
    monkeypatch.setattr(_runtime, "compiling_ahead", lambda: True)
    runs = selftest._runs([torch.float32, torch.bfloat16], "cpu", quick=True)
    assert len(runs) > 20
    for run in runs:
        with count_launches() as forward, dry_run():
            inputs = [selftest._leaf(t) for t in run[0].make(run[1], "cpu", run[2])]
            run[0].ours(*inputs)
        with count_launches() as both, dry_run():
            selftest._compile_ahead([run], "cpu")
        assert forward.total >= 1 and both.total > forward.total, (run[0].op, run[1], run[2])
