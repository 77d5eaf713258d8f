"""Switch an existing model to nnlib, fuse it for inference, read its receptive fields.

* :func:`convert` swaps torch.nn layers for their nnlib twins, keeping everything else.
* :func:`fuse` folds eval-mode batch norm into the preceding convolution and a
  following ReLU into the convolution's epilogue.
* :func:`receptive_field` follows kernel, stride, padding and dilation through the
  network (Araujo, Norris and Sim, Distill 2019) and prints a table.
"""
from __future__ import annotations

import collections
import copy
import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from . import layers

__all__ = ["TWINS", "convert", "fuse", "receptive_field", "LayerField", "ReceptiveFieldTable"]

# torch.nn classes that convert() swaps for the nnlib class of the same name.
TWINS = ("Conv2d", "MaxPool2d", "ReLU", "LeakyReLU", "PReLU", "BatchNorm1d", "BatchNorm2d", "BatchNorm3d",
         "SyncBatchNorm", "LayerNorm", "InstanceNorm1d", "InstanceNorm2d", "InstanceNorm3d", "GroupNorm")

# Smallest constructor arguments of each twin (to read what an nnlib __init__ adds).
_PROTOTYPE_ARGS = {"Conv2d": (1, 1, 1), "MaxPool2d": (1,), "GroupNorm": (1, 1), "ReLU": (), "LeakyReLU": (),
                   "PReLU": ()}


@functools.cache
def _extra_attributes(name: str) -> dict:
    """The attributes nnlib's ``name.__init__`` sets beyond torch's: its keyword-only
    extras at their defaults (off)."""
    args = _PROTOTYPE_ARGS.get(name, (1,))
    with torch.device("meta"):
        ours, theirs = getattr(layers, name)(*args), getattr(nn, name)(*args)
    return {k: v for k, v in vars(ours).items() if k not in vars(theirs)}


def convert(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Replace every torch.nn ``Conv2d``, ``MaxPool2d``, ``ReLU``, ``LeakyReLU``,
    ``PReLU``, ``BatchNorm1d/2d/3d``, ``SyncBatchNorm``, ``LayerNorm``, ``InstanceNorm1d/2d/3d`` and
    ``GroupNorm`` in ``model`` (the model itself included) by its nnlib twin; other
    modules, subclasses of these included, stay as they are. Returns the converted
    model: a deep copy, or ``model`` itself when ``inplace``.

    A twin subclasses its torch.nn class, so each module keeps its own state: the same
    parameters and buffers (the same tensor objects, so an optimizer built on an
    ``inplace`` conversion stays valid), train / eval mode, device, dtype, hooks and
    attributes; the twin's keyword-only extras (fused activation) are off.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"convert(): model must be a torch.nn.Module, not {type(model).__name__}")
    if not inplace:
        model = copy.deepcopy(model)
    for module in model.modules():
        name = type(module).__name__
        if name in TWINS and type(module) is getattr(nn, name):
            module.__class__ = getattr(layers, name)
            for key, value in _extra_attributes(name).items():
                setattr(module, key, copy.deepcopy(value))
    return model


# ---------------------------------------------------------------------------
# fuse

class _LeafTracer(torch.fx.Tracer):
    """torch.fx tracer that keeps nnlib layers (and their torch twins) as leaves."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, tuple(getattr(nn, n) for n in TWINS)) or super().is_leaf_module(m, qualname)


@dataclass
class _Chain:
    conv: str                     # qualified names in the model
    bn: str | None = None
    act: str | None = None        # a ReLU / LeakyReLU module to fold into the conv


def _plain_conv(module: nn.Module) -> bool:
    """An nnlib Conv2d (not a subclass with its own weight transform) without a fused activation."""
    return type(module) is layers.Conv2d and module.activation is None


def _foldable_bn(module: nn.Module) -> bool:
    return type(module) is layers.BatchNorm2d and module.running_mean is not None


def _act_of(module: nn.Module) -> tuple[str, float] | None:
    """(activation, negative_slope) of an nnlib ReLU / LeakyReLU module, else None."""
    if type(module) is layers.LeakyReLU:
        return "leaky_relu", module.negative_slope
    if type(module) is layers.ReLU:
        return "relu", 0.01
    return None


def _chains_from_graph(model: nn.Module) -> list[_Chain]:
    """conv -> batch norm -> ReLU chains in the traced graph: each module called once,
    each intermediate result used only by the next module of the chain."""
    graph = _LeafTracer().trace(model)
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")

    def only_user(node, accept):
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        if (user.op != "call_module" or calls[user.target] != 1 or user.args != (node,)
                or any(v is not None for v in user.kwargs.values())):
            return None
        return user if accept(model.get_submodule(user.target)) else None

    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or not _plain_conv(model.get_submodule(node.target)):
            continue
        chain, last = _Chain(node.target), node
        bn_node = only_user(node, _foldable_bn)
        if bn_node is not None:
            chain.bn, last = bn_node.target, bn_node
        if chain.bn is None or model.get_submodule(chain.bn).activation is None:
            act_node = only_user(last, lambda m: _act_of(m) is not None)
            chain.act = None if act_node is None else act_node.target
        if chain.bn is not None or chain.act is not None:
            chains.append(chain)
    return chains


def _chains_from_sequentials(model: nn.Module) -> list[_Chain]:
    """conv -> batch norm -> ReLU runs of consecutive children of ``nn.Sequential``
    containers (for models torch.fx cannot trace); modules that appear more than once in
    the model are left alone."""
    seen = collections.Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    chains = []
    for prefix, seq in model.named_modules():
        if not isinstance(seq, nn.Sequential):
            continue
        names = [f"{prefix}.{k}" if prefix else k for k in seq._modules]
        children = list(seq)
        for i, conv in enumerate(children):
            if not _plain_conv(conv) or seen[id(conv)] != 1:
                continue
            chain, j = _Chain(names[i]), i + 1
            if j < len(children) and _foldable_bn(children[j]) and seen[id(children[j])] == 1:
                chain.bn, j = names[j], j + 1
            if (chain.bn is None or children[j - 1].activation is None) and j < len(children) \
                    and _act_of(children[j]) is not None and seen[id(children[j])] == 1:
                chain.act = names[j]
            if chain.bn is not None or chain.act is not None:
                chains.append(chain)
    return chains


def _replace(model: nn.Module, qualname: str, new: nn.Module) -> None:
    parent, _, attr = qualname.rpartition(".")
    setattr(model.get_submodule(parent), attr, new)


def _fold_bn(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """conv.weight, conv.bias <- the convolution followed by eval-mode ``bn``."""
    with torch.no_grad():
        scale = torch.rsqrt(bn.running_var.double() + bn.eps)
        if bn.weight is not None:
            scale = scale * bn.weight.double()
        bias = -bn.running_mean.double() if conv.bias is None else conv.bias.double() - bn.running_mean.double()
        bias = bias * scale
        if bn.bias is not None:
            bias = bias + bn.bias.double()
        weight = conv.weight.double() * scale.view(-1, *([1] * (conv.weight.dim() - 1)))
    dtype = conv.weight.dtype
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=conv.weight.requires_grad)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=conv.weight.requires_grad)


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse ``model`` for inference; it must be in eval mode (every submodule).

    First converts the model (see :func:`convert`). Then for each convolution whose
    output goes only to an eval-mode ``BatchNorm2d`` with running statistics (called
    with that one input, no ``residual``), the batch norm is folded into the
    convolution's weight and bias and replaced by ``nn.Identity``; a batch norm's fused
    activation moves to the convolution's epilogue. A ``ReLU`` / ``LeakyReLU`` module
    that alone consumes the result (conv or folded batch norm), called only there, is
    fused into the epilogue too and replaced by ``nn.Identity``. The graph is found by
    torch.fx; a model it cannot trace gets the same treatment within ``nn.Sequential``
    containers. Returns the fused model: a deep copy, or ``model`` when ``inplace``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse(): model must be a torch.nn.Module, not {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise RuntimeError(f"fuse() folds batch norm running statistics and is for inference only, but "
                           f"{len(training)} module(s) are in training mode (first: {training[0]}); "
                           "call model.eval() first")
    model = convert(model, inplace)
    try:
        chains = _chains_from_graph(model)
    except Exception:   # torch.fx cannot trace every model (data-dependent control flow, ...)
        chains = _chains_from_sequentials(model)
    for chain in chains:
        conv = model.get_submodule(chain.conv)
        if chain.bn is not None:
            bn = model.get_submodule(chain.bn)
            _fold_bn(conv, bn)
            conv.activation, conv.negative_slope = bn.activation, bn.negative_slope
            _replace(model, chain.bn, nn.Identity())
        if chain.act is not None:
            conv.activation, conv.negative_slope = _act_of(model.get_submodule(chain.act))
            _replace(model, chain.act, nn.Identity())
    return model


# ---------------------------------------------------------------------------
# receptive_field

@dataclass(frozen=True)
class LayerField:
    """One row of :func:`receptive_field`, per spatial dim (rows, columns): output
    feature (i, j) of layer ``name`` sees the input pixels
    ``start + (i, j) * jump`` to ``start + (i, j) * jump + size - 1`` (negative
    coordinates lie in the padding; ``-start`` is the effective padding)."""
    name: str
    kind: str
    output_size: tuple[int, int]
    size: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]


class ReceptiveFieldTable(list):
    """The rows (:class:`LayerField`) of :func:`receptive_field`; ``str()`` gives a table."""

    def __init__(self, rows, input_size):
        super().__init__(rows)
        self.input_size = tuple(input_size)

    def __str__(self) -> str:
        def fmt(pair):
            a, b = (f"{v:g}" for v in pair)
            return a if a == b else f"{a}x{b}"
        header = ("layer", "type", "output", "size", "jump", "start")
        body = [(r.name, r.kind, "x".join(map(str, r.output_size)), fmt(r.size), fmt(r.jump), fmt(r.start))
                for r in self]
        widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
        lines = [f"receptive fields for input {'x'.join(map(str, self.input_size))}",
                 "  ".join(h.ljust(w) for h, w in zip(header, widths)).rstrip(),
                 "  ".join("-" * w for w in widths)]
        lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths)).rstrip() for row in body]
        return "\n".join(lines)


@dataclass(frozen=True)
class _Field:
    size: tuple[float, float]
    jump: tuple[float, float]
    start: tuple[float, float]


def _pair(v) -> tuple[int, int]:
    return tuple(v) if isinstance(v, (tuple, list)) else (v, v)


def _window(field: _Field, kernel, stride, padding, dilation) -> _Field:
    size, jump, start = [], [], []
    for d in range(2):
        extent = dilation[d] * (kernel[d] - 1) + 1
        size.append(field.size[d] + (extent - 1) * field.jump[d])
        start.append(field.start[d] - padding[d] * field.jump[d])
        jump.append(field.jump[d] * stride[d])
    return _Field(tuple(size), tuple(jump), tuple(start))


def _union(fields: list[_Field]) -> _Field:
    """The field of a result computed pointwise from several inputs (a residual add)."""
    start = tuple(min(f.start[d] for f in fields) for d in range(2))
    end = tuple(max(f.start[d] + f.size[d] for f in fields) for d in range(2))
    return _Field(tuple(e - s for s, e in zip(start, end)), tuple(max(f.jump[d] for f in fields) for d in range(2)),
                  start)


def _module_field(module: nn.Module, field: _Field, in_hw, out_hw) -> _Field | None:
    """The output field of a window layer, or None for another layer."""
    if isinstance(module, nn.Conv2d):
        kernel, dilation = module.kernel_size, module.dilation
        if module.padding == "valid":
            padding = (0, 0)
        elif module.padding == "same":
            padding = tuple(dilation[d] * (kernel[d] - 1) // 2 for d in range(2))
        else:
            padding = module.padding
        return _window(field, kernel, module.stride, padding, dilation)
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
        kernel = _pair(module.kernel_size)
        stride = _pair(module.stride if module.stride is not None else module.kernel_size)
        dilation = _pair(getattr(module, "dilation", 1))
        return _window(field, kernel, stride, _pair(module.padding), dilation)
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        # Output j pools rows floor(j * i / o) .. ceil((j + 1) * i / o) - 1.
        kernel = tuple(max(math.ceil((j + 1) * i / o) - (j * i) // o for j in range(o)) for i, o in zip(in_hw, out_hw))
        out = _window(field, kernel, (1, 1), (0, 0), (1, 1))
        return _Field(out.size, tuple(field.jump[d] * in_hw[d] / out_hw[d] for d in range(2)), out.start)
    return None


def _resampled(field: _Field, in_hw, out_hw) -> _Field:
    """A layer we know nothing of that changes the spatial size (interpolation):
    rescale the jump."""
    if tuple(in_hw) == tuple(out_hw):
        return field
    return _Field(field.size, tuple(field.jump[d] * in_hw[d] / out_hw[d] for d in range(2)), field.start)


class _FieldTracker(TorchFunctionMode):
    """Follows fields through the forward pass: leaf modules (hooks) and the torch
    functions called between them (this mode)."""

    def __init__(self) -> None:
        super().__init__()
        self.fields: dict[int, tuple[torch.Tensor, _Field | None]] = {}   # id -> (tensor kept alive, field)
        self.depth = 0            # > 0 inside a leaf module
        self.rows: list[LayerField] = []

    def get(self, t) -> tuple[torch.Tensor, _Field | None] | None:
        entry = self.fields.get(id(t))
        return entry if entry is not None and entry[0] is t else None

    def inputs(self, args, kwargs) -> list[tuple[torch.Tensor, _Field | None]]:
        flat = [a for a in _flatten((args, kwargs)) if isinstance(a, torch.Tensor)]
        return [e for e in map(self.get, flat) if e is not None]

    def set_outputs(self, out, field: _Field | None) -> None:
        for t in _flatten(out):
            if isinstance(t, torch.Tensor):
                self.fields[id(t)] = (t, field if t.dim() == 4 else None)

    def propagate(self, known, out) -> _Field | None:
        fields = [f for _, f in known if f is not None]
        if not fields or len(fields) != len(known):
            return None       # no spatial input, or one already global (flattened)
        field = _union(fields) if len(fields) > 1 else fields[0]
        first = next((t for t in _flatten(out) if isinstance(t, torch.Tensor)), None)
        if first is None or first.dim() != 4:
            return None
        return _resampled(field, known[0][0].shape[-2:], first.shape[-2:])

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            known = self.inputs(args, kwargs)
            if known:
                self.set_outputs(out, self.propagate(known, out))
        return out

    def pre_hook(self, module, args, kwargs):
        self.depth += 1

    def hook(self, name, module, args, kwargs, out):
        self.depth -= 1
        known = self.inputs(args, kwargs)
        if not known:
            return
        field = self.propagate(known, out)
        if field is not None and isinstance(out, torch.Tensor):
            in_hw, out_hw = known[0][0].shape[-2:], out.shape[-2:]
            window = _module_field(module, _union([f for _, f in known]), in_hw, out_hw)
            if window is not None:
                field = window
                self.rows.append(LayerField(name, type(module).__name__, tuple(out_hw), field.size, field.jump,
                                            field.start))
        self.set_outputs(out, field)


def _flatten(value):
    if isinstance(value, (list, tuple)):
        return [x for v in value for x in _flatten(v)]
    if isinstance(value, dict):
        return [x for v in value.values() for x in _flatten(v)]
    return [value]


def receptive_field(model: nn.Module, input_size) -> ReceptiveFieldTable:
    """Receptive field size, jump (effective stride) and start of every convolution
    and pooling layer of a 2-D network, for an input of ``input_size`` ((C, H, W) or
    (N, C, H, W)). Runs the forward pass once on meta tensors (no data, no compute,
    ``model`` untouched) and follows kernel, stride, padding and dilation through it,
    including residual branches (a result computed from several inputs sees their
    union) and resampling (which rescales the jump). ``print()`` the result for a table.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"receptive_field(): model must be a torch.nn.Module, not {type(model).__name__}")
    input_size = tuple(int(v) for v in input_size)
    if len(input_size) == 3:
        input_size = (1, *input_size)
    if len(input_size) != 4 or min(input_size) < 1:
        raise ValueError(f"receptive_field(): input_size must be (C, H, W) or (N, C, H, W), got {input_size}")
    tensors = dict(itertools.chain(model.named_parameters(), model.named_buffers()))
    dtype = next((t.dtype for t in tensors.values() if t.is_floating_point()), torch.float32)
    meta = {name: torch.empty_like(t, device="meta") for name, t in tensors.items()}
    x = torch.zeros(input_size, dtype=dtype, device="meta")
    tracker = _FieldTracker()
    tracker.fields[id(x)] = (x, _Field((1, 1), (1, 1), (0, 0)))
    handles = []
    for name, module in model.named_modules():
        if next(module.children(), None) is None:
            handles.append(module.register_forward_pre_hook(tracker.pre_hook, with_kwargs=True))
            handles.append(module.register_forward_hook(functools.partial(tracker.hook, name), with_kwargs=True))
    try:
        with torch.no_grad(), tracker:
            torch.func.functional_call(model, meta, (x,))
    finally:
        for handle in handles:
            handle.remove()
    return ReceptiveFieldTable(tracker.rows, input_size)
