"""CUDA graphs: a training step of an nnlib ResNet (forward, loss, backward,
optimizer step) makes no host synchronisation and no data-dependent host
decision, so it can be captured with ``torch.cuda.graph`` and replayed.

On CPU a ``TorchDispatchMode`` proves the first part: it fails on every op that
copies a device value to the host (``.item()``, ``float(t)``, ``.tolist()``,
``nonzero``, ``bool(t)``). On CUDA the step is captured and replayed, and the
replays give eager mode's losses and parameters.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as TF
from torch.utils._python_dispatch import TorchDispatchMode

import nnlib
from kernels._library import LaunchersInSight
from nnlib import models

SYNCING = {"_local_scalar_dense", "item", "nonzero", "is_nonzero", "equal", "allclose", "tolist"}


class NoHostSync(LaunchersInSight, TorchDispatchMode):
    """Raises on any op that reads a device value on the host (our launchers' ops
    included: ``LaunchersInSight``)."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket.__name__ in SYNCING:
            raise AssertionError(f"host synchronisation: aten.{func.overloadpacket.__name__}")
        return func(*args, **(kwargs or {}))


def _model(device, momentum=0.1):
    torch.manual_seed(0)
    model = models.ResNet(models.BasicBlock, [1, 1], num_classes=5, width=16).to(device)
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = momentum
    return model.to(memory_format=torch.channels_last)


def _step(model, optimizer, x, y):
    optimizer.zero_grad(set_to_none=False)
    loss = TF.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    return loss.detach()


@pytest.mark.parametrize("momentum", [0.1, None], ids=["momentum", "cumulative-average"])
def test_training_step_makes_no_host_sync(momentum, device):
    model = _model(device, momentum)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    x = torch.randn(2, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last)
    y = torch.tensor([1, 3], device=device)
    _step(model, optimizer, x, y)             # first step: optimizer state, autotuning
    with NoHostSync(), nnlib.count_launches() as launches:
        _step(model, optimizer, x, y)
    assert launches.total > 0


def test_checker_catches_a_sync():
    with pytest.raises(AssertionError, match="host synchronisation"), NoHostSync():
        float(torch.ones(1).sum())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graph capture needs a CUDA GPU")
def test_cuda_graph_training_step_replays_like_eager(device):
    model = _model(device)
    eager = copy.deepcopy(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    eager_opt = torch.optim.SGD(eager.parameters(), lr=0.1, momentum=0.9)
    batches = [(torch.randn(2, 3, 16, 16, device=device).contiguous(memory_format=torch.channels_last),
                torch.randint(0, 5, (2,), device=device)) for _ in range(4)]
    static_x, static_y = (t.clone() for t in batches[0])
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):             # warm up (autotuning, optimizer state) outside the graph
        for _ in range(2):
            _step(model, opt, static_x, static_y)
            _step(eager, eager_opt, static_x, static_y)
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_loss = _step(model, opt, static_x, static_y)
    for x, y in batches:
        static_x.copy_(x)
        static_y.copy_(y)
        graph.replay()
        expected = _step(eager, eager_opt, x, y)
        torch.testing.assert_close(static_loss, expected, atol=1e-4, rtol=1e-4)
    for (name, p), (_, q) in zip(model.named_parameters(), eager.named_parameters()):
        torch.testing.assert_close(p, q, atol=1e-4, rtol=1e-4, msg=name)
    for (name, b), (_, c) in zip(model.named_buffers(), eager.named_buffers()):
        torch.testing.assert_close(b, c, atol=1e-4, rtol=1e-4, msg=name)
