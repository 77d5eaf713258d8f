"""Convergence: an nnlib model and its torch.nn twin, trained from the same initial
weights on the same stream of batches (scikit-learn's 8x8 digits) with SGD (momentum,
weight decay), give the same loss at every step and the same final parameters and
running statistics; likewise a torch.nn model after ``nnlib.convert``.

Under the interpreter a training step costs 1 to 4 s (tiny convolutions cost 0.1 to 2 s
per launch there): LeNet-5, the slowest (its few-channel convolutions take the direct
kernels), trains 8 steps on 2 distinct batches, the ResNets 10 steps on 2.
"""
from __future__ import annotations

import torch
import torch.nn.functional as TF

import nnlib
from nnlib import models
from nnlib.models import reference
from tests.reference import rel_err

STEPS = 10


def digits_stream(size: int, batch: int, steps: int = STEPS, distinct: int = 2, seed: int = 0):
    """``steps`` batches (x (batch, 1, size, size), labels): ``distinct`` fixed batches of
    the digits, cycled, so that a few steps of a tiny batch show the loss going down."""
    from sklearn.datasets import load_digits
    data = load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 8.0 - 1.0
    if size != 8:
        x = TF.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    y = torch.tensor(data.target, dtype=torch.long)
    idx = torch.randint(0, len(x), (distinct, batch), generator=torch.Generator().manual_seed(seed))
    return [(x[idx[i % distinct]], y[idx[i % distinct]]) for i in range(steps)]


def train(model, stream, lr: float) -> list[float]:
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    device = next(model.parameters()).device
    losses = []
    for x, y in stream:
        optimizer.zero_grad()
        loss = TF.cross_entropy(model(x.to(device)), y.to(device))
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    return losses


def check_same_training(ours, theirs, stream, device, lr: float = 0.05, tol: float = 1e-4, distinct: int = 2):
    """Train both on ``device``; same loss at every step, same parameters and buffers at
    the end. The run is not degenerate: every parameter moved, and the loss on the first
    cycle of batches is higher than on the last (the same batches)."""
    ours, theirs = ours.to(device), theirs.to(device)
    initial = [p.detach().clone() for p in theirs.parameters()]
    with nnlib.count_launches() as launches:
        ours_losses = train(ours, stream, lr)
    assert launches.total > 10 * len(stream), "the nnlib model did not run Triton kernels"
    theirs_losses = train(theirs, stream, lr)
    torch.testing.assert_close(torch.tensor(ours_losses), torch.tensor(theirs_losses), atol=tol, rtol=tol)
    assert sum(theirs_losses[-distinct:]) < sum(theirs_losses[:distinct])
    for (name, p), (_, q), q0 in zip(ours.named_parameters(), theirs.named_parameters(), initial):
        assert rel_err(q, q0) > 1e-3, f"{name} did not move"
        assert rel_err(p, q) < tol, f"{name}: {rel_err(p, q):.2e}"
    for (name, b), (_, c) in zip(ours.named_buffers(), theirs.named_buffers()):
        torch.testing.assert_close(b, c, atol=tol, rtol=tol, msg=name)


def small_resnets(blocks):
    """nnlib's ResNet and its torch.nn twin (same weights) for 8x8 digits, width 16 (the GEMM
    paths: the cheapest under the interpreter)."""
    kw = dict(num_classes=10, width=16, in_channels=1, small_input=True)
    theirs = reference.ResNet(reference.BasicBlock, blocks, **kw)
    ours = models.ResNet(models.BasicBlock, blocks, **kw)
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs


def test_lenet5_trains_like_torch(device):
    theirs = reference.LeNet5()
    ours = models.lenet5()
    ours.load_state_dict(theirs.state_dict())
    check_same_training(ours, theirs, digits_stream(32, 2, steps=8), device)


def test_small_resnet_trains_like_torch(device):
    """Two BasicBlocks (the second with a strided 1x1 downsample): batch norm in
    training mode with ReLU and the residual fused into it."""
    ours, theirs = small_resnets([1, 1])
    check_same_training(ours, theirs, digits_stream(8, 2), device)


def test_converted_resnet_trains_like_torch(device):
    """torchvision's structure (a ReLU module used twice, in-place residual add) after
    nnlib.convert."""
    _, theirs = small_resnets([1])
    ours = nnlib.convert(theirs)
    assert type(ours.layer1[0].bn2) is nnlib.BatchNorm2d and type(ours.layer1[0].relu) is nnlib.ReLU
    check_same_training(ours, theirs, digits_stream(8, 2, seed=1), device)
