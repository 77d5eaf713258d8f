"""Receptive fields of a 2-D network: :func:`receptive_field` follows kernel,
stride, padding and dilation through the forward pass (Araujo, Norris and Sim,
Distill 2019) and prints a table.
"""
from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = ["receptive_field", "LayerField", "ReceptiveFieldTable"]


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
