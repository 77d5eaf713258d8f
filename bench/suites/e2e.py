"""End to end: ResNet-50 at batch 32, 224x224, channels_last, fp32 and bf16 (autocast):
a training step (forward, cross-entropy, backward) and inference, nnlib's model (and,
for inference, nnlib's model after ``nnlib.fuse``) against the same torchvision-shaped
network in torch.nn on cuDNN, from the same weights. The "train-unfused-tails" step
runs ``nnlib.convert`` of the torch model instead: nnlib's kernels with every block
tail as three ops (batch norm, add, ReLU), where nnlib's own ResNet fuses them into
the batch norm (``bn(x, residual=identity)`` with ``activation="relu"``); the two
train rows give the fused tails' share of the step. The "train-graphed" step is
"train" captured in a CUDA graph on both sides and replayed: the GPU's time without
the host's (Python, launches), so that beside "train" it tells how much of a gap is
host overhead.

Each side's step is timed for about half a second a round (``Case.rep_ms``: tens of
steps). ``Case.extra["images"]`` (the batch) makes the harness report images/s of both sides
(``images_per_s``, ``torch_images_per_s``) from the same median times as the speedup,
and the peak memory of one call of each side (``peak_mib``, ``torch_peak_mib``:
``bench.core.peak_mib``).
Before inference, batch norm running statistics are set from one batch (on the torch
model, then copied), so that the logits compared by the check have a sensible scale.
A bf16 case first checks that nnlib's convolution follows ``torch.autocast`` (returns
bf16) and fails with a message if not, rather than time fp32 kernels against bf16.

On CPU one tiny case runs through the interpreter (a four-stage BasicBlock ResNet of
width 8 at 2x3x32x32, inference): ResNet-50 itself takes minutes there.
"""
from __future__ import annotations

import contextlib
import copy

import torch
import torch.nn.functional as TF
from torch import nn

import nnlib
from bench.core import Case, compile_first
from nnlib import models
from nnlib.models import reference

BATCH, SIZE, CLASSES = 32, 224, 1000
NOTES = {"train": "nnlib's ResNet: each block tail (bn, add, relu) one kernel; torch: three ops",
         "train-graphed": "as train, both sides replayed from a CUDA graph",
         "inference-fused": "nnlib.fuse: batch norms folded into the convolutions; torch's model unfolded"}


def layer_flops(model: nn.Module, shape) -> dict[str, int]:
    """Multiply-adds x 2 of each convolution and linear layer (by module name) for one
    forward pass of ``model`` (built on the meta device: no data, no compute)."""
    flops = {}

    def hook(name):
        def add(module, inputs, out):
            if isinstance(module, nn.Conv2d):
                k = module.kernel_size[0] * module.kernel_size[1]
                n = 2 * out.numel() * module.in_channels // module.groups * k
            else:
                n = 2 * out.numel() * module.in_features
            flops[name] = flops.get(name, 0) + n      # a module called twice counts twice
        return add
    handles = [m.register_forward_hook(hook(name)) for name, m in model.named_modules()
               if isinstance(m, (nn.Conv2d, nn.Linear))]
    try:
        with torch.no_grad():
            model.eval()(torch.empty(shape, device="meta"))
    finally:
        for h in handles:
            h.remove()
    return flops


def training_flops(flops: dict[str, int]) -> int:
    """A training step's: each layer's forward, input gradient and weight gradient
    (each as many as its forward), but the first convolution's input gradient (the
    images do not require grad: neither side computes it)."""
    return 3 * sum(flops.values()) - flops["conv1"]


def _calibrate(model: nn.Module, x: torch.Tensor) -> None:
    """Running statistics of every batch norm := the statistics of ``x``'s batch."""
    saved = {}
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            saved[m] = m.momentum
            m.momentum = None        # cumulative average: after one batch, exactly its statistics
            m.reset_running_stats()
    model.train()
    with torch.no_grad():
        model(x)
    for m, momentum in saved.items():
        m.momentum = momentum


def _graphed(step):
    """``step`` (a training step that returns its loss) captured in a CUDA graph after
    three warm-up steps on a side stream (autotuning, cuDNN's algorithm search, the
    gradients' first allocation), as torch's whole-network capture does; returns a
    replay that gives the captured loss."""
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            step()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        loss = step()

    def replay():
        graph.replay()
        return loss
    return replay


def _setup(case: Case, build, shape, pass_name: str, device: str):
    bf16 = case.dtype == torch.bfloat16

    def autocast():     # a captured step casts each time it replays: no cast cache (torch's recipe)
        return (torch.autocast(device, dtype=torch.bfloat16, cache_enabled=pass_name != "train-graphed") if bf16
                else contextlib.nullcontext())

    def setup():
        torch.manual_seed(0)
        theirs, ours = build()
        fmt = torch.channels_last
        theirs, ours = theirs.to(device, memory_format=fmt), ours.to(device, memory_format=fmt)
        x = torch.randn(shape, device=device).contiguous(memory_format=fmt)
        if bf16:
            with autocast(), torch.no_grad():
                probe = ours.conv1(x[:1])
            if probe.dtype != torch.bfloat16:
                raise RuntimeError("nnlib's conv2d does not follow torch.autocast: the bf16 case would time "
                                   "fp32 kernels against cuDNN's bf16")
        if pass_name.startswith("train"):
            y = torch.randint(0, theirs.fc.out_features, (shape[0],), device=device)
            if pass_name == "train-unfused-tails":
                ours = nnlib.convert(theirs)
            ours.load_state_dict(theirs.state_dict())

            def step(model):
                def run():
                    model.zero_grad(set_to_none=True)
                    with autocast():
                        loss = TF.cross_entropy(model(x), y)
                    loss.backward()
                    return loss.detach()
                return run
            if pass_name == "train-graphed":
                compile_first(step(ours))       # before _graphed's warm-up steps compile one kernel at a time
                return _graphed(step(ours)), _graphed(step(theirs))
            return step(ours), step(theirs)
        _calibrate(theirs, x)
        ours.load_state_dict(theirs.state_dict())
        theirs.eval()
        ours.eval()
        if pass_name == "inference-fused":
            ours = nnlib.fuse(ours)

        def infer(model):
            def run():
                with torch.no_grad(), autocast():
                    return model(x)
            return run
        exact_model, x64 = copy.deepcopy(theirs).double(), x.double()     # logits after ~50 rounded layers

        def exact():
            with torch.no_grad():
                return exact_model(x64)
        return infer(ours), infer(theirs), exact
    return setup


def cases(device: str, quick: bool) -> list[Case]:
    if device == "cuda":
        shape, name = (BATCH, 3, SIZE, SIZE), "resnet50"

        def build():
            return reference.resnet50(CLASSES), models.resnet50(CLASSES)
        dtypes = [torch.bfloat16] if quick else [torch.bfloat16, torch.float32]
        passes = ["train", "train-graphed", "train-unfused-tails", "inference", "inference-fused"]
    else:
        shape, name = (2, 3, 32, 32), "resnet-tiny"
        kw = dict(num_classes=10, width=8)

        def build():
            return (reference.ResNet(reference.BasicBlock, [1, 1, 1, 1], **kw),
                    models.ResNet(models.BasicBlock, [1, 1, 1, 1], **kw))
        dtypes = [torch.float32]
        passes = ["inference"]
    with torch.device("meta"):
        flops = layer_flops(build()[0], shape)
    out = []
    for dtype in dtypes:
        for pass_name in passes:
            # Logits after ~50 layers: TF32 (torch's default for cuDNN, followed by nnlib) or bf16 rounding.
            tol = 1e-1 if dtype == torch.bfloat16 else 3e-2
            case = Case(name, "e2e", shape, dtype, "channels_last", pass_name, setup=None,
                        flops=training_flops(flops) if pass_name.startswith("train") else sum(flops.values()),
                        atol=tol, rtol=tol, rep_ms=500, note=NOTES.get(pass_name, ""), extra={"images": shape[0]})
            case.setup = _setup(case, build, shape, pass_name, device)
            out.append(case)
    return out
