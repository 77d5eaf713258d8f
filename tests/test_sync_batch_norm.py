"""nnlib.SyncBatchNorm on torch.distributed: processes started here (gloo on CPU,
the Triton interpreter in each; nccl where a machine has two GPUs), each holding
its part of one batch. Outputs, input / weight / bias gradients and running
statistics must equal a float64 batch norm over the concatenated batch (what
SyncBatchNorm computes): unequal parts, an empty part, channels_last, fp16 / bf16
input with fp32 parameters, the fused residual + ReLU, the cumulative average;
convert_sync_batchnorm keeps a ResNet's state_dict; DDP training of a small
ResNet keeps every rank's parameters identical and equal to one process
training on the whole batch. On CUDA the outputs are also compared with
torch.nn.SyncBatchNorm's (which runs only there).

Each test starts its processes once and runs all of its scenarios in them (a
process start costs seconds); every scenario does its collectives first and
asserts after, so that a failure cannot leave another rank waiting (and a
collective that waits longer than TIMEOUT raises)."""
from __future__ import annotations

import datetime
import json
import os
import socket
import tempfile
import traceback

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as TF

import nnlib
from kernels._runtime import count_launches
from nnlib.models import reference
from tests.reference import assert_close

TIMEOUT = datetime.timedelta(seconds=120)     # a collective that waits longer fails instead of hanging


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, backend: str, scenarios: list[str], out: str) -> None:
    device = "cuda" if backend == "nccl" else "cpu"
    if device == "cuda":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend, init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world,
                            timeout=TIMEOUT)
    results = {}
    for name in scenarios:
        torch.manual_seed(0)
        try:
            SCENARIOS[name](rank, world, device)
            results[name] = ""
        except Exception:
            results[name] = traceback.format_exc()
    dist.destroy_process_group()
    with open(os.path.join(out, f"{rank}.json"), "w") as f:
        json.dump(results, f)


def run_ranks(world: int, scenarios: list[str], backend: str = "gloo") -> dict[str, list[str]]:
    """Start ``world`` processes, run ``scenarios`` in each: {scenario: the error text
    of each rank, "" where it passed}."""
    # Spawned, not forked: a child forked from a process whose OpenMP or compile
    # worker threads have run (any earlier test in this pytest worker) can hang in
    # its first parallel region; and CUDA cannot be forked once initialised.
    with tempfile.TemporaryDirectory() as out:
        mp.start_processes(_worker, args=(world, _free_port(), backend, scenarios, out), nprocs=world, join=True,
                           start_method="spawn")
        per_rank = []
        for rank in range(world):
            with open(os.path.join(out, f"{rank}.json")) as f:
                per_rank.append(json.load(f))
    return {name: [results[name] for results in per_rank] for name in scenarios}


# ---------------------------------------------------------------------------
# Scenarios: scenario(rank, world, device); each rank builds the whole batch from
# one seed and keeps its part.

def _parts(sizes, rank):
    start = sum(sizes[:rank])
    return slice(start, start + sizes[rank])


def _check_against_full_batch(rank, world, device, sizes, spatial=(3, 5), C=4, dtype=torch.float32,
                              channels_last=False, residual=False, momentum=0.1, steps=1, eps=1e-5):
    """SyncBatchNorm (activation relu and a residual when ``residual``) on this rank's
    part against float64 batch norm on the whole batch, ``steps`` training steps."""
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    ours = nnlib.SyncBatchNorm(C, eps, momentum, activation="relu" if residual else None).to(device)
    if dtype == torch.float64:          # torch's path (no kernels for float64)
        ours = ours.double()
    with torch.no_grad():
        ours.weight.copy_(torch.rand(C) + 0.5)
        ours.bias.copy_(torch.randn(C))
    weight = ours.weight.detach().double().cpu().requires_grad_()
    bias = ours.bias.detach().double().cpu().requires_grad_()
    ref_mean, ref_var = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64)
    checks = []
    part = _parts(sizes, rank)
    for step in range(steps):
        full = (torch.randn(sum(sizes), C, *spatial) * 2 + 0.5).to(dtype)
        full_res = torch.randn_like(full)
        grad = torch.randn(full.shape).to(dtype)
        x = full[part].to(device).contiguous(memory_format=fmt).requires_grad_()
        r = full_res[part].to(device).contiguous(memory_format=fmt).requires_grad_() if residual else None
        y = ours(x, r) if residual else ours(x)
        inputs = [x, ours.weight, ours.bias] + ([r] if residual else [])
        grads = torch.autograd.grad(y, inputs, grad[part].to(device).contiguous(memory_format=fmt))
        dw, db = grads[1].clone(), grads[2].clone()
        dist.all_reduce(dw)          # torch's SyncBatchNorm leaves the parameter gradients local (DDP sums them)
        dist.all_reduce(db)
        xr = full.double().requires_grad_()
        rr = full_res.double().requires_grad_() if residual else None
        factor = 1.0 / (step + 1) if momentum is None else momentum
        yr = TF.batch_norm(xr, ref_mean, ref_var, weight, bias, True, factor, ours.eps)
        if residual:
            yr = TF.relu(yr + rr)
        ref = torch.autograd.grad(yr, [xr, weight, bias] + ([rr] if residual else []), grad.double())
        checks.append((step, y, grads, dw, db, yr, ref))
    if device == "cuda":         # torch's own SyncBatchNorm runs there
        theirs = torch.nn.SyncBatchNorm(C, eps, momentum).to(device, torch.float32)
        again = nnlib.SyncBatchNorm(C, eps, momentum).to(device, torch.float32)
        x = full[part].to(device).contiguous(memory_format=fmt)
        expected, got = theirs(x), again(x)
    for step, y, grads, dw, db, yr, ref in checks:
        kind = dtype if dtype in (torch.float16, torch.bfloat16) else torch.float32
        assert y.dtype == dtype and y.is_contiguous(memory_format=fmt)
        assert_close(y, yr[part], kind, "reduction", f"step {step} output")
        assert_close(grads[0], ref[0][part], kind, "reduction", f"step {step} input grad")
        assert_close(dw, ref[1], kind, "reduction", f"step {step} weight grad (summed over ranks)")
        assert_close(db, ref[2], kind, "reduction", f"step {step} bias grad (summed over ranks)")
        if residual:
            assert_close(grads[3], ref[3][part], kind, "reduction", f"step {step} residual grad")
    assert_close(ours.running_mean, ref_mean, torch.float32, "reduction", "running_mean")
    assert_close(ours.running_var, ref_var, torch.float32, "reduction", "running_var")
    assert int(ours.num_batches_tracked) == steps
    if device == "cuda":
        assert_close(got, expected, kind, "reduction", "against torch.nn.SyncBatchNorm")
        assert_close(again.running_var, theirs.running_var, torch.float32, "reduction", "torch's running_var")


def _unequal(rank, world, device):
    _check_against_full_batch(rank, world, device, sizes=[3, 5, 2][:world])


def _empty_part(rank, world, device):
    _check_against_full_batch(rank, world, device, sizes=[4, 0, 3][:world])


def _channels_last_fused_tail(rank, world, device):
    _check_against_full_batch(rank, world, device, sizes=[2, 3, 1][:world], channels_last=True, residual=True)


def _half_input(rank, world, device):
    for dtype in (torch.float16, torch.bfloat16):
        _check_against_full_batch(rank, world, device, sizes=[2, 3][:world], dtype=dtype)


def _torch_path(rank, world, device):
    """float64 takes torch's path (no kernels): the same statistics in torch ops."""
    _check_against_full_batch(rank, world, device, sizes=[3, 2, 0][:world], dtype=torch.float64, residual=True,
                              momentum=None, steps=2)


def _cumulative_average(rank, world, device):
    _check_against_full_batch(rank, world, device, sizes=[3, 2][:world], spatial=(5,), momentum=None, steps=2,
                              eps=0.5)


def _compiled(rank, world, device):
    """Under torch.compile the collectives stay eager, one graph break per layer, and
    the outputs and running statistics are the eager module's."""
    C = 3
    compiled, eager = nnlib.SyncBatchNorm(C).to(device), nnlib.SyncBatchNorm(C).to(device)
    x = (torch.randn(2 * world, C, 3, 5) * 2 + 0.5)[_parts([2] * world, rank)].to(device)
    layer = nnlib.SyncBatchNorm(C).to(device)
    explained = torch._dynamo.explain(lambda t: layer(t * 2) + 1)(x)
    y, expected = torch.compile(compiled, backend="eager")(x), eager(x)
    assert explained.graph_break_count == 1, explained.break_reasons
    assert_close(y, expected, torch.float32, "reduction", "output")
    assert_close(compiled.running_var, eager.running_var, torch.float32, "reduction", "running_var")


def _eval_and_single_process_rule(rank, world, device):
    """Eval (and training in a group of one process) is BatchNorm: no collective."""
    bn = nnlib.SyncBatchNorm(3).to(device)
    bn.running_mean.copy_(torch.randn(3))
    x = torch.randn(2 + rank, 3, 4, device=device)
    bn.eval()
    expected = TF.batch_norm(x, bn.running_mean, bn.running_var, bn.weight, bn.bias, False)
    singles = [dist.new_group([r]) for r in range(world)]      # every rank creates every group, in order
    alone = nnlib.SyncBatchNorm(3, process_group=singles[rank]).to(device).train()
    got_alone = alone(x)
    assert_close(bn(x), expected, torch.float32, "reduction", "eval")
    assert_close(got_alone, TF.batch_norm(x, None, None, training=True), torch.float32, "reduction", "alone")


def _inference_mode_buffers(rank, world, device):
    """A SyncBatchNorm built under inference_mode trains only inside it: outside, its
    counter (which torch's module increments first) is refused before any collective
    or write, as BatchNorm's."""
    with torch.inference_mode():
        bn = nnlib.SyncBatchNorm(3).to(device)
    x = torch.randn(2, 3, 4, device=device)
    with count_launches() as launches:
        try:
            bn(x)
        except RuntimeError as e:
            assert "inference tensor" in str(e), e
        else:
            raise AssertionError("trained on inference tensors outside inference mode")
    assert launches.total == 0 and bn.num_batches_tracked.item() == 0 and not bn.running_mean.any()
    with torch.inference_mode():
        bn(x)
    assert bn.num_batches_tracked.item() == 1 and bn.running_mean.any()


def _convert_state_dict(rank, world, device):
    """convert_sync_batchnorm of a ResNet: the same state_dict keys and tensors, back and forth."""
    model = nnlib.models.ResNet(nnlib.models.BasicBlock, [1, 1], num_classes=10, width=4, in_channels=1,
                                small_input=True)
    for i, bn in enumerate(m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)):
        bn.num_batches_tracked.fill_(i + 3)         # buffers unlike a new module's
        bn.running_mean.normal_()
    state = {k: v.clone() for k, v in model.state_dict().items()}
    synced = nnlib.SyncBatchNorm.convert_sync_batchnorm(model)
    kinds = {type(m) for m in synced.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)}
    assert kinds == {nnlib.SyncBatchNorm}, kinds
    assert synced.bn1.activation == "relu" and synced.layer1[0].bn2.activation == "relu"
    assert list(synced.state_dict()) == list(state)
    for key, value in synced.state_dict().items():
        assert torch.equal(value, state[key]), key
    fresh = nnlib.models.ResNet(nnlib.models.BasicBlock, [1, 1], num_classes=10, width=4, in_channels=1,
                                small_input=True)
    fresh.load_state_dict(synced.state_dict())
    torch_synced = torch.nn.SyncBatchNorm.convert_sync_batchnorm(reference.ResNet(
        reference.BasicBlock, [1, 1], num_classes=10, width=4, in_channels=1, small_input=True))
    assert list(torch_synced.state_dict()) == list(state)
    converted = nnlib.convert(torch_synced)
    assert all(type(m) is nnlib.SyncBatchNorm for m in converted.modules()
               if isinstance(m, torch.nn.SyncBatchNorm))


def _ddp_resnet(rank, world, device):
    """Two SGD steps of a (one-stage) SyncBatchNorm ResNet under DDP, each rank on its
    part of the batch: parameters identical on every rank and equal to one process's
    float64 training (torch.nn twin) on the whole batch."""
    kw = dict(num_classes=10, width=4, in_channels=1, small_input=True)
    theirs = reference.ResNet(reference.BasicBlock, [1], **kw).double()
    ours = nnlib.models.ResNet(nnlib.models.BasicBlock, [1], **kw)
    ours.load_state_dict(theirs.state_dict())
    # DDP refuses SyncBatchNorm modules on CPU when it is built (a check made for torch's
    # CUDA-only layer): convert the wrapped model in place (same parameters and buffers).
    ddp = torch.nn.parallel.DistributedDataParallel(ours.to(device))
    nnlib.SyncBatchNorm.convert_sync_batchnorm(ddp.module)
    assert isinstance(ours.bn1, nnlib.SyncBatchNorm)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    ref_opt = torch.optim.SGD(theirs.parameters(), lr=0.1, momentum=0.9)
    part = _parts([2] * world, rank)
    for _ in range(2):
        x, y = torch.randn(2 * world, 1, 4, 4), torch.randint(0, 10, (2 * world,))
        opt.zero_grad()
        TF.cross_entropy(ddp(x[part].to(device)), y[part].to(device)).backward()
        opt.step()
        ref_opt.zero_grad()
        TF.cross_entropy(theirs(x.double()), y).backward()
        ref_opt.step()
    flat = torch.cat([p.detach().reshape(-1) for p in ours.parameters()])
    everyone = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(everyone, flat)
    for other in everyone:
        assert torch.equal(other, flat), "parameters differ across ranks"
    for (name, p), q in zip(ours.named_parameters(), theirs.parameters()):
        assert_close(p, q, torch.float32, "conv", name)
    for (name, b), c in zip(ours.named_buffers(), theirs.buffers()):
        assert_close(b, c, torch.float32, "conv", name)


SCENARIOS = {
    "unequal-batches": _unequal, "empty-part": _empty_part, "channels-last-fused-tail": _channels_last_fused_tail,
    "fp16-bf16-input": _half_input, "cumulative-average": _cumulative_average, "float64-torch-path": _torch_path,
    "eval-and-one-process": _eval_and_single_process_rule, "convert-state-dict": _convert_state_dict,
    "ddp-resnet": _ddp_resnet, "compiled": _compiled, "inference-mode-buffers": _inference_mode_buffers,
}
TWO_RANKS = list(SCENARIOS)
THREE_RANKS = ["unequal-batches", "empty-part", "channels-last-fused-tail", "float64-torch-path"]


def _failures(results: dict) -> str:
    """Every failed scenario with each failing rank's traceback."""
    return "\n".join(f"{name}, rank {rank}:\n{text}" for name, texts in results.items()
                     for rank, text in enumerate(texts) if text)


@pytest.mark.skipif(torch.cuda.is_available(), reason="gloo ranks on CPU tensors, which on a GPU machine take "
                    "torch's path (no interpreter): CI runs them through the kernels; test_nccl_two_gpus on GPUs")
@pytest.mark.parametrize("world,scenarios", [(2, TWO_RANKS), (3, THREE_RANKS)], ids=["2-ranks", "3-ranks"])
def test_processes(world, scenarios):
    """All scenarios in one start of the processes (one test per world size, so that
    pytest-xdist does not start them twice)."""
    results = run_ranks(world, scenarios)
    failures = _failures(results)
    assert not failures, f"failed: {[n for n, t in results.items() if any(t)]}\n{failures}"


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="nccl needs two CUDA GPUs")
def test_nccl_two_gpus():
    results = run_ranks(2, THREE_RANKS + ["fp16-bf16-input", "ddp-resnet"], backend="nccl")
    failures = _failures(results)
    assert not failures, failures


def test_outside_a_process_group_is_batch_norm(device):
    """No initialised group: exactly nnlib.BatchNorm2d (torch's rule), and nnlib.convert
    turns torch's SyncBatchNorm into nnlib's with the same state and outputs."""
    assert not dist.is_initialized()
    sync, plain = nnlib.SyncBatchNorm(3, activation="relu").to(device), nnlib.BatchNorm2d(3, activation="relu")
    plain = plain.to(device)
    x = torch.randn(2, 3, 4, 5, device=device)
    assert torch.equal(sync(x), plain(x))
    assert torch.equal(sync.running_mean, plain.running_mean) and int(sync.num_batches_tracked) == 1
    theirs = torch.nn.SyncBatchNorm(3).to(device)
    ours = nnlib.convert(theirs)
    assert type(ours) is nnlib.SyncBatchNorm and list(ours.state_dict()) == list(theirs.state_dict())
    assert_close(ours(x), theirs(x), torch.float32, "reduction")
    assert_close(ours.running_var, theirs.running_var, torch.float32, "reduction")
    ours.num_batches_tracked = theirs.num_batches_tracked = None      # torch's module refuses that in training
    before = ours.running_mean.clone()
    for module in (theirs, ours):
        with pytest.raises(AssertionError, match="num_batches_tracked"):
            module(x)
    assert torch.equal(ours.running_mean, before)


@pytest.mark.parametrize("momentum", [0.1, None])
def test_merge_over_several_programs_moves_running_statistics_once(momentum, device):
    """The merge of the processes' moments with more channels than one program takes
    (600 > MERGE_CHANNELS): each channel's running statistics move once a step, and
    num_batches_tracked by 1, which the cumulative average (momentum None) reads."""
    from kernels.norm.ops import norm_merge_moments
    C, per_process = 600, [torch.randn(8, 600, device=device) * 2 + 0.5 for _ in range(2)]
    moments = torch.stack([torch.stack([torch.full((C,), 8.0, device=device), t.mean(0), t.var(0, correction=0) * 8])
                           for t in per_process])
    whole = torch.cat(per_process).double()
    running_mean, running_var = torch.zeros(C, device=device), torch.ones(C, device=device)
    want_mean, want_var = running_mean.double(), running_var.double()
    count = torch.zeros((), dtype=torch.long, device=device)
    for step in range(3):
        mean, rstd, total = norm_merge_moments(moments, running_mean, running_var, count, momentum or 0.0,
                                               momentum is None, 1e-5)
        factor = 1 / (step + 1) if momentum is None else momentum
        want_mean = (1 - factor) * want_mean + factor * whole.mean(0)
        want_var = (1 - factor) * want_var + factor * whole.var(0)
    assert int(count) == 3 and torch.equal(total, torch.full_like(total, 16.0))
    assert_close(mean, whole.mean(0), torch.float32, "reduction", "mean")
    assert_close(rstd, (whole.var(0, correction=0) + 1e-5).rsqrt(), torch.float32, "reduction", "rstd")
    assert_close(running_mean, want_mean, torch.float32, "reduction", "running_mean")
    assert_close(running_var, want_var, torch.float32, "reduction", "running_var")
