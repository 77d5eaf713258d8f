"""batch / group / instance / layer norm at ResNet-50 activation shapes, forward and
forward+backward, NCHW and channels_last, against torch's default path for each
(cuDNN where torch picks it, its native kernels otherwise); plus the
ResNet block tail relu(bn(x) + identity) fused against torch's three ops; group
norm under autocast (fp16 / bf16 x: CUDA autocast's float32 group norm, which
torch runs on a float32 copy of x and nnlib on x itself); and on CUDA,
SyncBatchNorm's training step (statistics gathered across a group of one
process) against torch's SyncBatchNorm function.

Norms run in training mode (batch statistics; batch norm updates its running
stats); group norm uses 32 groups, layer norm normalizes (C, H, W). Batch and
instance norm of fp16 / bf16 inputs get fp32 parameters (mixed precision, as
under autocast); group and layer norm get parameters of the input's dtype
(torch's CUDA kernels take no other: they raise "expected scalar type Half but
found Float"; under autocast, which runs them in float32, fp32 ones). ``bytes`` is
the minimal traffic (GB/s and % of copy bandwidth are computed from it): the
forward reads x (and the residual) and writes y; the backward reads x and dy and
writes dx (and the residual's gradient); y and dy are float32 under CUDA autocast. ``extra["kernel_bytes"]`` is what
nnlib's kernels move for the case (kernels.norm's table: 3T forward and 5T
backward for batch statistics, 2T and 3T when a per-sample set is read once,
the fused tail 4T + 7T), so a row shows both and their ratio
(``extra["kernel_passes"]``, in units of T)."""
from __future__ import annotations

import atexit
import datetime
import os
import socket

import torch
import torch.distributed as dist
import torch.nn.functional as TF
from torch.nn.modules._functions import SyncBatchNorm as _TorchSync

import nnlib.functional as F
from bench.core import Case
from kernels.norm import single_read_fits, sync_batch_norm

GPU_SHAPES = [(32, 64, 112, 112), (32, 256, 56, 56), (32, 512, 28, 28), (32, 1024, 14, 14), (32, 2048, 7, 7)]
CPU_SHAPES = [(2, 8, 5, 7)]
# --quick: fp16 at 32x256x56x56, these (op, layout, pass) only.
QUICK = {("batch_norm", "contiguous", False), ("batch_norm", "contiguous", True), ("batch_norm", "channels_last", False),
         ("group_norm", "contiguous", True), ("instance_norm", "contiguous", False), ("layer_norm", "contiguous", False),
         ("bn_add_relu", "contiguous", True), ("sync_batch_norm", "channels_last", True),
         ("group_norm_autocast", "channels_last", True)}


def _groups(C: int) -> int:
    return 32 if C % 32 == 0 else 4


NORMS = {
    # name: (ours(x, w, b, state), torch(x, w, b, state)); state holds running stats
    "batch_norm": (lambda x, w, b, s: F.batch_norm(x, s["rm"], s["rv"], w, b, True),
                   lambda x, w, b, s: TF.batch_norm(x, s["rm_t"], s["rv_t"], w, b, True)),
    "group_norm": (lambda x, w, b, s: F.group_norm(x, _groups(x.shape[1]), w, b),
                   lambda x, w, b, s: TF.group_norm(x, _groups(x.shape[1]), w, b)),
    "instance_norm": (lambda x, w, b, s: F.instance_norm(x, None, None, w, b),
                      lambda x, w, b, s: TF.instance_norm(x, None, None, w, b)),
    "layer_norm": (lambda x, w, b, s: F.layer_norm(x, x.shape[1:], w, b),
                   lambda x, w, b, s: TF.layer_norm(x, x.shape[1:], w, b)),
    "bn_add_relu": (lambda x, w, b, s: F.batch_norm(x, s["rm"], s["rv"], w, b, True, residual=s["r"],
                                                    activation="relu"),
                    lambda x, w, b, s: TF.relu(TF.batch_norm(x, s["rm_t"], s["rv_t"], w, b, True) + s["r"])),
    # SyncBatchNorm's training step in a group of one process (CUDA only: torch's runs
    # only there), both through their synchronising paths: the same collectives.
    "sync_batch_norm": (lambda x, w, b, s: sync_batch_norm(x, s["rm"], s["rv"], w, b, 0.1, 1e-5, _one_process(), 1),
                        lambda x, w, b, s: _TorchSync.apply(x, w, b, s["rm_t"], s["rv_t"], 1e-5, 0.1,
                                                            _one_process(), 1)),
}
GPU_ONLY = {"sync_batch_norm"}
LOW_PRECISION_ONLY = {"group_norm_autocast"}
PARAMETERS_OF_INPUTS_DTYPE = {"group_norm", "layer_norm"}     # torch's CUDA kernels take no fp32 ones with fp16 x
NOTES = {"bn_add_relu": "one kernel against torch's batch norm, add and relu",
         "group_norm_autocast": "torch's time includes autocast's float32 copy of x; ours reads x as it is"}


def _under_autocast(fn):
    """fn under autocast to x's dtype (CUDA's runs group norm in float32)."""
    def run(x, w, b, s):
        with torch.autocast(x.device.type, dtype=x.dtype):
            return fn(x, w, b, s)
    return run


NORMS["group_norm_autocast"] = tuple(_under_autocast(fn) for fn in NORMS["group_norm"])


def _one_process():
    """A process group of this process alone (initialised on first use, destroyed at
    exit: NCCL warns of, and may wait on, a group left open), bootstrapped over the
    loopback interface, its collectives given a minute (then NCCL's watchdog ends
    the process)."""
    if not dist.is_initialized():
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")       # one process: its bootstrap stays on this host
        # a collective that hangs: NCCL's watchdog ends the process (gpu_check runs a process per suite,
        # so the norm suite's) after a minute, not at the end of gpu_check's time box
        dist.init_process_group("nccl", init_method=f"tcp://127.0.0.1:{port}", rank=0, world_size=1,
                                timeout=datetime.timedelta(seconds=60))
        atexit.register(_destroy_group)
    return dist.group.WORLD


def _destroy_group():
    if dist.is_initialized():
        dist.destroy_process_group()


def _setup(op, shape, dtype, layout, device, backward):
    ours_fn, torch_fn = NORMS[op]

    def setup():
        torch.manual_seed(0)
        fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
        x = torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=fmt)
        affine = shape[1:] if op == "layer_norm" else (shape[1],)
        pdtype = dtype if op in PARAMETERS_OF_INPUTS_DTYPE else torch.float32
        w = (torch.rand(affine, device=device) + 0.5).to(pdtype)
        b = torch.randn(affine, device=device).to(pdtype)
        C = shape[1]
        state = {"rm": torch.zeros(C, device=device), "rv": torch.ones(C, device=device),
                 "rm_t": torch.zeros(C, device=device), "rv_t": torch.ones(C, device=device),
                 "r": torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=fmt)}
        if not backward:
            return (lambda: ours_fn(x, w, b, state)), (lambda: torch_fn(x, w, b, state))
        inputs = [x.requires_grad_(), w.requires_grad_(), b.requires_grad_()]
        if op == "bn_add_relu":
            inputs.append(state["r"].requires_grad_())
        g = torch.randn(shape, dtype=dtype, device=device).contiguous(memory_format=fmt)

        # The fused tail's relu can flip where bn(x) + identity rounds to about 0
        # (torch rounds bn(x) first): its check compares the parameter gradients.
        keep = slice(1, 3) if op == "bn_add_relu" else slice(None)

        def forward_backward(fn):
            return lambda: torch.autograd.grad(fn(x, w, b, state), inputs, g)[keep]
        if op in GPU_ONLY or op in LOW_PRECISION_ONLY:      # torch's float64 runs neither
            return forward_backward(ours_fn), forward_backward(torch_fn)
        # exact: the parameter gradients sum 10**5 rounded terms per channel
        x64, w64, b64 = (t.detach().double().requires_grad_(True) for t in (x, w, b))
        state64 = {k: v.detach().double() for k, v in state.items()}
        inputs64 = [x64, w64, b64] + ([state64["r"].requires_grad_(True)] if op == "bn_add_relu" else [])
        return (forward_backward(ours_fn), forward_backward(torch_fn),
                lambda: torch.autograd.grad(torch_fn(x64, w64, b64, state64), inputs64, g.double())[keep])
    return setup


def _kernel_passes(op: str, shape, layout: str, backward: bool, out: int) -> int:
    """Passes over memory (T: x's bytes) that nnlib's kernels make for the case; y and
    dy are ``out`` T each."""
    if op in ("batch_norm", "bn_add_relu", "sync_batch_norm"):
        fused = op == "bn_add_relu"
        return 3 + fused + ((5 + 2 * fused) if backward else 0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x = torch.empty(shape, device="meta").contiguous(memory_format=fmt)
    lead, chan, groups = {"group_norm": (1, 1, _groups(shape[1])), "instance_norm": (1, 1, shape[1]),
                          "layer_norm": (1, len(shape) - 1, 1)}[op.removesuffix("_autocast")]
    if single_read_fits(x, lead, chan, groups):     # x, y; x, dy, dx
        return 1 + out + (2 + out) * backward
    return 2 + out + (3 + 2 * out) * backward       # x twice, y; x, dy; x, dy, dx


def cases(device: str, quick: bool) -> list[Case]:
    if device == "cuda":
        shapes = [(32, 256, 56, 56)] if quick else GPU_SHAPES
    else:
        shapes = CPU_SHAPES
    dtypes = [torch.float16] if quick else [torch.float32, torch.float16, torch.bfloat16]
    out = []
    for op in NORMS:
        if op in GPU_ONLY and device != "cuda":
            continue
        for shape in shapes:
            for dtype in dtypes:
                if op in LOW_PRECISION_ONLY and dtype == torch.float32:
                    continue
                for layout in ("contiguous", "channels_last"):
                    size = torch.Size(shape).numel() * torch.tensor([], dtype=dtype).element_size()
                    tensors = 1 if op == "bn_add_relu" else 0      # the residual, and its gradient
                    out_t = 2 if op == "group_norm_autocast" and device == "cuda" else 1     # y's size in T
                    for backward in (False, True):
                        if quick and (op, layout, backward) not in QUICK:
                            continue
                        traffic = (1 + tensors + out_t) * size + ((2 + tensors + out_t) * size if backward else 0)
                        passes = _kernel_passes(op, shape, layout, backward, out_t)
                        low = dtype != torch.float32
                        out.append(Case(op, "resnet50-activations", shape, dtype, layout,
                                        "forward+backward" if backward else "forward",
                                        _setup(op, shape, dtype, layout, device, backward), bytes=traffic,
                                        atol=5e-2 if low else 1e-3, rtol=2e-2 if low else 1e-3,
                                        note=NOTES.get(op, ""),
                                        extra={"kernel_bytes": passes * size, "kernel_passes": passes,
                                               "minimal_passes": traffic // size}))
    return out
