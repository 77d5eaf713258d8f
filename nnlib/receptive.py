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


def _conv_field(field: _Field, kernel, stride, padding, dilation) -> _Field:
    kernel, dilation = _pair(kernel), _pair(dilation)
    if padding == "valid":
        padding = (0, 0)
    elif padding == "same":
        padding = tuple(dilation[d] * (kernel[d] - 1) // 2 for d in range(2))
    return _window(field, kernel, _pair(stride), _pair(padding), dilation)


def _pool_field(field: _Field, kernel, stride=None, padding=0, dilation=1) -> _Field:
    kernel = _pair(kernel)
    stride = kernel if stride is None or (isinstance(stride, (tuple, list)) and not stride) else _pair(stride)
    return _window(field, kernel, stride, _pair(padding), _pair(dilation))


def _adaptive_field(field: _Field, in_hw, out_hw) -> _Field:
    # Output j pools rows floor(j * i / o) .. ceil((j + 1) * i / o) - 1.
    kernel = tuple(max(math.ceil((j + 1) * i / o) - (j * i) // o for j in range(o)) for i, o in zip(in_hw, out_hw))
    out = _window(field, kernel, (1, 1), (0, 0), (1, 1))
    return _Field(out.size, tuple(field.jump[d] * in_hw[d] / out_hw[d] for d in range(2)), out.start)


def _padded_field(field: _Field, pad) -> _Field:
    """Padding (F.pad's (left, right, top, bottom); negative: cropping) moves the
    start back by the left / top padding; size and jump stay."""
    before = (pad[2] if len(pad) > 2 else 0, pad[0])
    return _Field(field.size, field.jump, tuple(field.start[d] - before[d] * field.jump[d] for d in range(2)))


def _module_field(module: nn.Module, field: _Field, in_hw, out_hw) -> tuple[_Field, bool] | None:
    """(output field, whether the layer gets a row: convolutions and pools) of a
    window layer or a padding layer, or None for another layer."""
    if isinstance(module, nn.Conv2d):
        return _conv_field(field, module.kernel_size, module.stride, module.padding, module.dilation), True
    if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d, nn.LPPool2d)):
        return _pool_field(field, module.kernel_size, module.stride, getattr(module, "padding", 0),
                           getattr(module, "dilation", 1)), True
    if isinstance(module, (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d)):
        return _adaptive_field(field, in_hw, out_hw), True
    if type(module).__module__ == "torch.nn.modules.padding" and len(getattr(module, "padding", ())) == 4:
        return _padded_field(field, module.padding), False
    return None


# torch functions that move a field, by name: their parameters after the input, in order.
_FUNCTION_PARAMETERS = {
    "conv2d": ("weight", "bias", "stride", "padding", "dilation"),
    "max_pool2d": ("kernel_size", "stride", "padding", "dilation"),
    "max_pool2d_with_indices": ("kernel_size", "stride", "padding", "dilation"),
    "avg_pool2d": ("kernel_size", "stride", "padding"),
    "lp_pool2d": ("norm_type", "kernel_size", "stride"),
    "adaptive_avg_pool2d": ("output_size",),
    "adaptive_max_pool2d": ("output_size",),
    "adaptive_max_pool2d_with_indices": ("output_size",),
    "pad": ("pad",),
}


def _function_field(func, args, kwargs, field: _Field, in_hw, out_hw) -> tuple[_Field, bool] | None:
    """``_module_field`` of a torch function called between modules (F.max_pool2d, F.pad, ...)."""
    name = getattr(func, "__name__", None)
    parameters = _FUNCTION_PARAMETERS.get(name)
    if parameters is None:
        return None
    # the input by position or keyword (torch's builtins get the caller's arguments as given)
    given = {**dict(zip(parameters, args[1:])), **{k: v for k, v in kwargs.items() if k in parameters}}
    if name == "conv2d":
        if not isinstance(given.get("weight"), torch.Tensor):
            return None
        return _conv_field(field, given["weight"].shape[-2:], given.get("stride", 1), given.get("padding", 0),
                           given.get("dilation", 1)), True
    if name == "pad":
        return _padded_field(field, given["pad"]), False
    if name.startswith("adaptive"):
        return _adaptive_field(field, in_hw, out_hw), True
    return _pool_field(field, given["kernel_size"], given.get("stride"), given.get("padding", 0),
                       given.get("dilation", 1)), True


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

    def window(self, name: str, kind: str, known, out, moved) -> _Field | None:
        """The field of ``out``, computed from the ``known`` inputs (their union):
        ``moved(field, in_hw, out_hw)`` for a window or padding layer (with whether
        it gets a row), else resampled (a pointwise or interpolating layer). An
        input broadcast over the image (spatial 1x1, as a squeeze-and-excitation
        gate, beside a larger one) adds no window; another without a field (one
        already global: flattened) leaves the result's unknown (None)."""
        first = _first_tensor(out)
        if first is None or first.dim() != 4:
            return None
        out_hw = tuple(first.shape[-2:])
        spatial = [(t, f) for t, f in known if not (t.dim() == 4 and tuple(t.shape[-2:]) == (1, 1) != out_hw)]
        spatial = spatial or known        # only 1x1 inputs: upsampled (an image-pooling branch), not a gate
        fields = [f for _, f in spatial if f is not None]
        if not fields or len(fields) != len(spatial):
            return None
        field, in_hw = _union(fields) if len(fields) > 1 else fields[0], tuple(spatial[0][0].shape[-2:])
        result = moved(field, in_hw, out_hw)
        if result is None:
            return _resampled(field, in_hw, out_hw)
        field, row = result
        if row:
            self.rows.append(LayerField(name, kind, out_hw, field.size, field.jump, field.start))
        return field

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        if self.depth == 0:
            known = self.inputs(args, kwargs)
            if known:
                self.set_outputs(out, self.window(getattr(func, "__name__", "function"), "function", known, out,
                                                  functools.partial(_function_field, func, args, kwargs)))
        return out

    def pre_hook(self, module, args, kwargs):
        self.depth += 1

    def hook(self, name, module, args, kwargs, out):
        self.depth -= 1
        known = self.inputs(args, kwargs)
        if known:
            self.set_outputs(out, self.window(name, type(module).__name__, known, out,
                                              functools.partial(_module_field, module)))


def _first_tensor(value) -> torch.Tensor | None:
    """The first tensor of an output (a pool's values, not its indices)."""
    return next((t for t in _flatten(value) if isinstance(t, torch.Tensor)), None)


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
    union; a gate broadcast over the image, as squeeze-and-excitation's, is left
    out), padding layers and F.pad (which move the start), pooling and convolution
    called as functions (rows named after the function) and resampling (which
    rescales the jump). ``print()`` the result for a table.
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
    # a batch of two at least: a batch norm in training mode needs two values per channel
    x = torch.zeros((max(2, input_size[0]), *input_size[1:]), dtype=dtype, device="meta")
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
