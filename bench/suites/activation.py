"""relu / leaky_relu / prelu at ResNet-50 activation sizes, forward and backward."""
from __future__ import annotations

import torch
import torch.nn.functional as TF

import nnlib.functional as F
from bench.core import Case

GPU_SHAPES = [(32, 64, 112, 112), (32, 256, 56, 56)]
CPU_SHAPES = [(2, 5, 9, 11)]

OPS = {
    "relu": (lambda x, w: F.relu(x), lambda x, w: TF.relu(x)),
    "leaky_relu": (lambda x, w: F.leaky_relu(x, 0.1), lambda x, w: TF.leaky_relu(x, 0.1)),
    "prelu": (lambda x, w: F.prelu(x, w), lambda x, w: TF.prelu(x, w)),
}


def _setup(op, shape, dtype, layout, device, backward):
    ours_fn, torch_fn = OPS[op]

    def setup():
        x = torch.randn(shape, dtype=dtype, device=device)
        if layout == "channels_last":
            x = x.contiguous(memory_format=torch.channels_last)
        w = torch.full((shape[1],), 0.25, dtype=dtype, device=device)
        if not backward:
            return (lambda: ours_fn(x, w)), (lambda: torch_fn(x, w))
        x.requires_grad_(True)
        w.requires_grad_(True)
        inputs = (x, w) if op == "prelu" else (x,)
        y_ours, y_torch = ours_fn(x, w), torch_fn(x, w)
        g = torch.randn_like(y_ours)
        # exact: PReLU's weight gradient sums a channel's 10**5 products (torch rounds each to fp16)
        inputs64 = [t.detach().double().requires_grad_(True) for t in inputs]
        y64 = torch_fn(inputs64[0], inputs64[1] if op == "prelu" else w.double())
        return ((lambda: torch.autograd.grad(y_ours, inputs, g, retain_graph=True)),
                (lambda: torch.autograd.grad(y_torch, inputs, g, retain_graph=True)),
                (lambda: torch.autograd.grad(y64, inputs64, g.double(), retain_graph=True)))
    return setup


def cases(device: str, quick: bool) -> list[Case]:
    shapes = GPU_SHAPES if device == "cuda" else CPU_SHAPES
    dtypes = [torch.float16] if quick else [torch.float32, torch.float16, torch.bfloat16]
    layouts = ["contiguous"] if quick else ["contiguous", "channels_last"]
    out = []
    for op in OPS:
        for shape in shapes:
            for dtype in dtypes:
                for layout in layouts:
                    numel = 1
                    for n in shape:
                        numel *= n
                    size = numel * torch.tensor([], dtype=dtype).element_size()
                    for backward in (False, True):
                        out.append(Case(op, "resnet50-activations", shape, dtype, layout,
                                        "backward" if backward else "forward",
                                        _setup(op, shape, dtype, layout, device, backward),
                                        bytes=(3 if backward else 2) * size,
                                        kind="reduction" if op == "prelu" and backward else "elementwise"))
    return out
