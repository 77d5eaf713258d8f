"""max_pool2d forward and backward against torch at ResNet-50's stem pool and
VGG-16's five pools, NCHW and channels_last, fp16 / bf16 / fp32.

Passes: "forward" (no autograd: ours writes no indices, torch its int64 ones),
"forward-train" (input requires grad: ours writes 1-byte window codes, torch
int64 indices) and "backward" (the input gradient from saved indices).
``bytes`` is the traffic of a single read and write of each tensor: input and
output forward (plus 1 byte per output for ours when training); output
gradient, our 1-byte codes and input gradient backward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as TF

import nnlib.functional as F
from bench.core import Case

# (set, shape, kernel, stride, padding)
GPU_POOLS = [("resnet50-stem", (32, 64, 112, 112), 3, 2, 1)] + [
    ("vgg16", (32, c, s, s), 2, 2, 0) for c, s in [(64, 224), (128, 112), (256, 56), (512, 28), (512, 14)]]
QUICK_POOLS = [GPU_POOLS[0], GPU_POOLS[2]]
# Forward is exact; backward sums overlapping windows (torch's CPU bf16 sum rounds at every step).
CPU_POOLS = [("resnet50-stem", (2, 5, 13, 11), 3, 2, 1), ("vgg16", (2, 4, 12, 10), 2, 2, 0)]
NOTES = {"forward": "torch's CUDA max_pool2d writes int64 indices too", "forward-train": "ours writes 1-byte window "
         "codes, torch int64 indices", "backward": "ours reads 1-byte window codes, torch int64 indices"}


def _setup(shape, kernel, stride, padding, dtype, layout, device, pass_name):
    def setup():
        x = torch.randn(shape, dtype=dtype, device=device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        ours = lambda: F.max_pool2d(x, kernel, stride, padding)        # noqa: E731
        theirs = lambda: TF.max_pool2d(x, kernel, stride, padding)     # noqa: E731
        if pass_name == "forward":
            return ours, theirs
        x.requires_grad_(True)
        if pass_name == "forward-train":
            return ours, theirs
        y_ours, y_torch = ours(), theirs()
        g = torch.randn_like(y_ours)
        return ((lambda: torch.autograd.grad(y_ours, x, g, retain_graph=True)),
                (lambda: torch.autograd.grad(y_torch, x, g, retain_graph=True)))
    return setup


def cases(device: str, quick: bool) -> list[Case]:
    pools = (QUICK_POOLS if quick else GPU_POOLS) if device == "cuda" else CPU_POOLS
    dtypes = [torch.float16] if quick else [torch.float16, torch.bfloat16, torch.float32]
    passes = ["forward", "backward"] if quick else ["forward", "forward-train", "backward"]
    out = []
    for set_name, shape, kernel, stride, padding in pools:
        n, c, h, w = shape
        oh, ow = ((s + 2 * padding - kernel) // stride + 1 for s in (h, w))
        numel_in, numel_out = n * c * h * w, n * c * oh * ow
        for dtype in dtypes:
            size = torch.tensor([], dtype=dtype).element_size()
            traffic = {"forward": (numel_in + numel_out) * size,
                       "forward-train": (numel_in + numel_out) * size + numel_out,
                       "backward": (numel_out + numel_in) * size + numel_out}
            for layout in ["contiguous", "channels_last"]:
                for pass_name in passes:
                    out.append(Case("max_pool2d", set_name, shape, dtype, layout, pass_name,
                                    _setup(shape, kernel, stride, padding, dtype, layout, device, pass_name),
                                    bytes=traffic[pass_name], kind="elementwise", note=NOTES[pass_name],
                                    extra={"kernel": kernel, "stride": stride, "padding": padding}))
    return out
