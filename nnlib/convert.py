"""Switch an existing model to nnlib and fuse it for inference.

* :func:`convert` swaps torch.nn layers for their nnlib twins, keeping everything else.
* :func:`fuse` folds eval-mode batch norm into the preceding convolution and a
  following ReLU into the convolution's epilogue.
"""
from __future__ import annotations

import collections
import copy
import functools
import warnings
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from . import layers

__all__ = ["TWINS", "convert", "fuse"]

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
    ``GroupNorm`` in ``model`` (the model itself included) by its nnlib twin, also one
    that torch.nn.utils.parametrize gave a class of its own (``weight_norm``,
    ``spectral_norm``, ...: its parametrizations kept); other modules, subclasses
    of these included, stay as they are. A lazy module not yet
    materialised (``LazyConv2d``, ``LazyBatchNorm2d``, ...) becomes the nnlib twin
    when its first call sets its shapes, where torch's would become the torch.nn
    class (that call runs torch's forward, the next ones nnlib's; torch cannot
    deep-copy such a module: pass ``inplace=True``). Returns the converted model:
    a deep copy, or ``model`` itself when ``inplace``.

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
        lazy = name.startswith("Lazy") and name[4:] in TWINS and type(module) is getattr(nn, name)
        if lazy and module.cls_to_become is getattr(nn, name[4:]):
            name = name[4:]
            module.cls_to_become = getattr(layers, name)      # the class its first call gives it
        elif name in TWINS and type(module) is getattr(nn, name):
            module.__class__ = getattr(layers, name)
        elif _parametrized_twin(module):
            name = type(module).__bases__[0].__name__
            module.__class__ = _reparametrized(type(module), getattr(layers, name))
        else:
            continue
        for key, value in _extra_attributes(name).items():
            setattr(module, key, copy.deepcopy(value))
    return model


def _parametrized_twin(module: nn.Module) -> bool:
    """Whether ``module`` is a torch.nn twin that torch.nn.utils.parametrize gave a
    class of its own (``ParametrizedConv2d``, a subclass holding the properties)."""
    bases = type(module).__bases__
    return (parametrize.is_parametrized(module) and len(bases) == 1 and bases[0].__name__ in TWINS
            and bases[0] is getattr(nn, bases[0].__name__))


def _reparametrized(cls: type, twin: type) -> type:
    """``cls``, a parametrized class, rebuilt over ``twin``: the same properties and
    methods, so removing the parametrizations leaves the twin (torch restores the base)."""
    return type(cls.__name__, (twin,), {k: v for k, v in vars(cls).items() if k not in ("__dict__", "__weakref__")})


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
    act_shared: bool = False      # whether the model may call act elsewhere too (it then stays: ``_Passing``)


# An activation module that a model calls after a conv and elsewhere too (torchvision's
# blocks call one ReLU two or three times) cannot become nn.Identity, and the model's
# forward stays as it is. The conv takes the activation into its epilogue and notes on
# its output what it applied (``_ActivatedConv2d``); the module, now ``_Passing``,
# returns the tensor so noted as it is, once (the graph showed that call to be the only
# use of the conv's output: a later call on the same tensor, written since, applies
# the activation), and applies itself to anything else.
_ACTIVATED = "_nnlib_activated"     # tensor attribute: (activation, negative_slope)


class _ActivatedConv2d(layers.Conv2d):
    """A Conv2d whose epilogue applies the activation of a module the model calls
    elsewhere too (``_shared_activation``, a reference, not a submodule: taken from it
    at each call, so a later change of its slope holds), noting it on its output
    (``_ACTIVATED``)."""

    @layers.traced_as_leaf
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        live = _activation_of(self.__dict__.get("_shared_activation"))   # None: a model fused before it was kept
        if live is not None and live != (self.activation, self.negative_slope):
            self.activation, self.negative_slope = live
        out = super().forward(input)
        setattr(out, _ACTIVATED, (self.activation, self.negative_slope))
        return out


class _Passing:
    """An activation module that returns, once, a tensor noted as its own output."""

    @layers.traced_as_leaf
    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if getattr(input, _ACTIVATED, None) == _activation_of(self):
            setattr(input, _ACTIVATED, None)
            return input
        return super().forward(input)


class _PassingReLU(_Passing, layers.ReLU):
    pass


class _PassingLeakyReLU(_Passing, layers.LeakyReLU):
    pass


_PASSING = {layers.ReLU: _PassingReLU, layers.LeakyReLU: _PassingLeakyReLU}


def _plain_conv(module: nn.Module) -> bool:
    """An nnlib Conv2d (not a subclass with its own weight transform) without a fused
    activation or hooks."""
    return type(module) is layers.Conv2d and module.activation is None and not layers.hooked(module)


def _foldable_bn(module: nn.Module) -> bool:
    return type(module) is layers.BatchNorm2d and module.running_mean is not None and not layers.hooked(module)


def _activation_of(module: nn.Module) -> tuple[str, float] | None:
    """(activation, negative_slope) of an nnlib ReLU / LeakyReLU module (or its
    ``_Passing`` form), else None."""
    if type(module) in (layers.LeakyReLU, _PassingLeakyReLU):
        return "leaky_relu", float(module.negative_slope)     # LeakyReLU(True) means a slope of 1.0
    if type(module) in (layers.ReLU, _PassingReLU):
        return "relu", 0.01
    return None


def _act_of(module: nn.Module) -> tuple[str, float] | None:
    """``_activation_of`` a module that can be folded (no hooks), else None."""
    return None if layers.hooked(module) else _activation_of(module)


# A module's hooks (their dicts), which the trace does not run.
_HOOKS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called", "_forward_pre_hooks",
          "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def _traced(model: nn.Module) -> torch.fx.Graph | Exception:
    """The torch.fx graph of ``model``, or what symbolic tracing raised: its
    forward branches or loops on data, iterates or converts a traced value
    (TraceError), takes ``len`` of one (RuntimeError), calls what symbolic values do
    not support (TypeError), calls a module it does not register (NameError), ...:
    whatever symbolic tracing raises. The modules' attributes are as before. The
    modules' own hooks do not run (a feature-collecting hook would keep Proxies; a
    hooked module is not folded, and a hook on an enclosing module sees the
    chain's result, which folding keeps)."""
    # The trace runs forward on the model fuse returns: what forward stores on its modules
    # (a lazily made tensor, a call counter) would stay there, as torch.fx Proxies.
    saved = [(m, dict(vars(m)), *(dict(d) for d in (m._parameters, m._buffers, m._modules)))
             for m in model.modules()]
    for m, *_ in saved:
        for name in _HOOKS:
            if name in vars(m):
                setattr(m, name, collections.OrderedDict())
    try:
        return _LeafTracer().trace(model)
    except Exception as error:  # noqa: BLE001 -- any failure of symbolic tracing: fuse within Sequentials instead
        return error
    finally:
        for m, attributes, *registered in saved:
            vars(m).clear()
            vars(m).update(attributes)
            for d, kept in zip((m._parameters, m._buffers, m._modules), registered):
                d.clear()
                d.update(kept)


def _chains_from_graph(model: nn.Module, graph: torch.fx.Graph) -> list[_Chain]:
    """conv -> batch norm -> ReLU chains in the traced graph: conv and batch norm each
    called once, each intermediate result used only by the next module of the chain
    (the activation module may be called elsewhere too: ``act_shared``); a batch
    norm is folded only where forward reads no tensor of it or of its conv itself
    (a weight shared with another convolution, a running statistic)."""
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")
    read = {n.target.rpartition(".")[0] for n in graph.nodes if n.op == "get_attr"}    # modules holding them

    def only_user(node, accept, once=True):
        if len(node.users) != 1:
            return None
        user = next(iter(node.users))
        if (user.op != "call_module" or (once and calls[user.target] != 1) or user.args != (node,)
                or any(v is not None for v in user.kwargs.values())):
            return None
        return user if accept(model.get_submodule(user.target)) else None

    chains = []
    for node in graph.nodes:
        if node.op != "call_module" or calls[node.target] != 1 or not _plain_conv(model.get_submodule(node.target)):
            continue
        chain, last = _Chain(node.target), node
        bn_node = only_user(node, _foldable_bn)
        if bn_node is not None and node.target not in read and bn_node.target not in read:
            chain.bn, last = bn_node.target, bn_node
        if chain.bn is None or model.get_submodule(chain.bn).activation is None:
            act_node = only_user(last, lambda m: _act_of(m) is not None, once=False)
            if act_node is not None:
                chain.act, chain.act_shared = act_node.target, calls[act_node.target] > 1
        if chain.bn is not None or chain.act is not None:
            chains.append(chain)
    return chains


def _chains_from_sequentials(model: nn.Module) -> list[_Chain]:
    """conv -> batch norm -> ReLU runs of consecutive children of ``nn.Sequential``
    containers (for models torch.fx cannot trace); a conv or batch norm that appears
    more than once in the model is left alone, and the activation module stays (its
    calls are not known: ``act_shared``)."""
    seen = collections.Counter(id(m) for _, m in model.named_modules(remove_duplicate=False))
    chains = []
    for prefix, seq in model.named_modules():
        if type(seq) is not nn.Sequential:      # a subclass may run its children otherwise
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
                    and _act_of(children[j]) is not None:
                chain.act, chain.act_shared = names[j], True
            if chain.bn is not None or chain.act is not None:
                chains.append(chain)
    return chains


def _replace(model: nn.Module, qualname: str, new: nn.Module) -> None:
    """The module at ``qualname`` replaced by ``new`` wherever the model holds it (a
    module registered under several names is called through any of them)."""
    old = model.get_submodule(qualname)
    for name in [n for n, m in model.named_modules(remove_duplicate=False) if m is old]:
        parent, _, attr = name.rpartition(".")
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


def _folded(bn: nn.Module) -> nn.Identity:
    """What a folded batch norm leaves: an Identity keeping its ``activation``, which the
    convolution before it applies now (nnlib's ResNet blocks read it: a ReLU there is done)."""
    folded = nn.Identity().eval()
    folded.activation = bn.activation
    return folded


def fuse(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Fuse ``model`` for inference; it must be in eval mode (every submodule).

    First converts the model (see :func:`convert`). Then for each convolution whose
    output goes only to an eval-mode ``BatchNorm2d`` with running statistics (called
    with that one input, no ``residual``), the batch norm is folded into the
    convolution's weight and bias and replaced by ``nn.Identity``; a batch norm's fused
    activation moves to the convolution's epilogue. A ``ReLU`` / ``LeakyReLU`` module
    that alone consumes the result (conv or folded batch norm) is fused into the
    epilogue too: replaced by ``nn.Identity`` when called only there; when called
    elsewhere as well (torchvision's blocks call one ReLU two or three times), it stays
    and returns the convolution's output as it is (the convolution notes on its output
    the activation it applied). Modules with forward hooks or pre-hooks are not
    folded, nor a batch norm whose tensors, or its convolution's, forward reads
    itself (where torch.fx records the read: a weight shared with another
    convolution). The graph is found by torch.fx (its trace runs no module's own
    hook; global ones run); a model it cannot trace gets the same treatment within
    its ``nn.Sequential`` containers (not subclasses), taken to be
    called as a whole (the activation modules stay, as their calls are not known),
    with a UserWarning: a model that calls a container's children itself and keeps
    their outputs would read fused values. Returns the fused model: a deep copy, or
    ``model`` when ``inplace``.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"fuse(): model must be a torch.nn.Module, not {type(model).__name__}")
    training = [name or type(model).__name__ for name, m in model.named_modules() if m.training]
    if training:
        raise RuntimeError(f"fuse() folds batch norm running statistics and is for inference only, but "
                           f"{len(training)} module(s) are in training mode (first: {training[0]}); "
                           "call model.eval() first")
    model = convert(model, inplace)
    graph = _traced(model)
    if isinstance(graph, torch.fx.Graph):
        chains = _chains_from_graph(model, graph)
    else:
        chains = _chains_from_sequentials(model)
        if chains:
            warnings.warn(f"fuse(): torch.fx cannot trace {type(model).__name__} ({type(graph).__name__}: {graph}); "
                          f"fused {len(chains)} run(s) within nn.Sequential containers, taking each container to be "
                          "called as a whole. A model that calls a container's children itself (keeping their "
                          "outputs, or calling one on another input) or reads a folded batch norm's tensors or its "
                          "convolution's weight would see the fused ones (a convolution's output after its batch "
                          "norm and activation, its folded weight).", UserWarning, stacklevel=2)
    for chain in chains:
        conv = model.get_submodule(chain.conv)
        if chain.bn is not None:
            bn = model.get_submodule(chain.bn)
            _fold_bn(conv, bn)
            conv.activation, conv.negative_slope = bn.activation, bn.negative_slope
            _replace(model, chain.bn, _folded(bn))
        if chain.act is not None:
            act = model.get_submodule(chain.act)
            conv.activation, conv.negative_slope = _act_of(act)
            if chain.act_shared:
                conv.__class__ = _ActivatedConv2d
                conv.__dict__["_shared_activation"] = act     # a reference, not a submodule
                act.__class__ = _PASSING.get(type(act), type(act))
            else:
                _replace(model, chain.act, nn.Identity().eval())
    return model
