"""Switch an existing model to nnlib and fuse it for inference.

* :func:`convert` swaps torch.nn layers for their nnlib twins, keeping everything else.
* :func:`fuse` folds eval-mode batch norm into the preceding convolution and a
  following ReLU into the convolution's epilogue.
"""
from __future__ import annotations

import collections
import contextlib
import copy
import functools
from dataclasses import dataclass

import torch
from torch import nn

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


class _ChildrenTracer(torch.fx.Tracer):
    """torch.fx tracer of one module's own forward: every submodule call is a leaf."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return True


@dataclass
class _Chain:
    conv: str                     # qualified names in the model
    bn: str | None = None
    act: str | None = None        # a ReLU / LeakyReLU module to fold into the conv
    act_calls: int = 1            # how often the model calls act (more than once: its owner's forward is rewritten)


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


def _traced(model: nn.Module, tracer: type[torch.fx.Tracer] = _LeafTracer) -> torch.fx.Graph | None:
    """The torch.fx graph of ``model``, or None when torch.fx cannot trace it: its
    forward branches or loops on data, iterates or converts a traced value
    (TraceError), or calls what symbolic values do not support (TypeError)."""
    try:
        return tracer().trace(model)
    except (torch.fx.proxy.TraceError, TypeError):
        return None


def _chains_from_graph(model: nn.Module, graph: torch.fx.Graph) -> list[_Chain]:
    """conv -> batch norm -> ReLU chains in the traced graph: conv and batch norm each
    called once, each intermediate result used only by the next module of the chain
    (the activation module may be called elsewhere too: ``act_calls``)."""
    calls = collections.Counter(n.target for n in graph.nodes if n.op == "call_module")

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
        if bn_node is not None:
            chain.bn, last = bn_node.target, bn_node
        if chain.bn is None or model.get_submodule(chain.bn).activation is None:
            act_node = only_user(last, lambda m: _act_of(m) is not None, once=False)
            if act_node is not None:
                chain.act, chain.act_calls = act_node.target, calls[act_node.target]
        if chain.bn is not None or chain.act is not None:
            chains.append(chain)
    return chains


def _own_forward(owner: nn.Module) -> torch.fx.Graph | None:
    """The graph of ``owner``'s own forward, its children as leaves; None for a
    container, a forward torch.fx cannot trace, or one that reaches a grandchild (a
    GraphModule would hold that one's parent as a bare Module)."""
    if isinstance(owner, (nn.Sequential, nn.ModuleList, nn.ModuleDict)):
        return None
    graph = _traced(owner, _ChildrenTracer)
    if graph is None or any(n.op in ("call_module", "get_attr") and "." in n.target for n in graph.nodes):
        return None
    return graph


def _without_shared_activations(model: nn.Module, chains: list[_Chain]) -> dict[str, torch.fx.Graph]:
    """For the chains whose activation module the model calls more than once: the
    graphs of the forwards of the modules owning those activations (owner's
    qualified name -> ``_own_forward``), without the calls that follow the chains.
    A chain whose call is not removed so loses its ``act``; a call is removed only
    when its owner's forward makes every call of the module (the owner runs once)."""
    by_owner = collections.defaultdict(list)
    for chain in chains:
        if chain.act is not None and chain.act_calls > 1:
            by_owner[chain.act.rpartition(".")[0]].append(chain)
    graphs = {}
    for owner_name, owned in by_owner.items():
        prefix = owner_name + "." if owner_name else ""
        act = owned[0].act.removeprefix(prefix)
        graph = _own_forward(model.get_submodule(owner_name))
        calls = [] if graph is None else [n for n in graph.nodes if n.op == "call_module"]
        if sum(n.target == act for n in calls) == owned[0].act_calls:
            modules = {n.target: n for n in calls}
            for chain in owned:
                name = chain.bn or chain.conv
                source = modules.get(name.removeprefix(prefix)) if name.startswith(prefix) else None
                users = [] if source is None else list(source.users)
                if len(users) == 1 and users[0].target == act and users[0].args == (source,):
                    users[0].replace_all_uses_with(source)
                    graph.erase_node(users[0])
                    graphs[owner_name] = graph
                    chain.act_calls = 0         # removed from the graph
        for chain in owned:
            if chain.act_calls:
                chain.act = None
    return graphs


def _rewritten(owner: nn.Module, graph: torch.fx.Graph) -> torch.fx.GraphModule:
    """``owner`` running ``graph``: a GraphModule of its class name holding what the
    graph uses (torch.fx's rules: the owner's other attributes and its hooks stay
    behind, as a deep copy or a pickle of a GraphModule would leave them)."""
    for node in graph.nodes:
        if isinstance(node.type, str):  # a postponed annotation (PEP 563): fx's pickling takes only types
            node.type = None
    return torch.fx.GraphModule(owner, graph, class_name=type(owner).__name__)


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
    that alone consumes the result (conv or folded batch norm) is fused into the
    epilogue too: replaced by ``nn.Identity`` when called only there; when called
    elsewhere as well (torchvision's blocks call one ReLU two or three times), that
    call is removed from the forward of the module owning the ReLU, which becomes a
    ``torch.fx.GraphModule`` of the same class name holding the submodules, parameters
    and buffers its forward uses (not its hooks or other attributes; not for
    containers, nor an owner whose forward calls grandchildren). The graph
    is found by torch.fx; a model it cannot trace gets the same treatment within
    ``nn.Sequential`` containers (a module called more than once stays). Returns the
    fused model: a deep copy, or ``model`` when ``inplace`` (its modules fused in
    place), unless the model itself owns such a ReLU: then the GraphModule.
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
    chains = _chains_from_sequentials(model) if graph is None else _chains_from_graph(model, graph)
    rewrites = _without_shared_activations(model, chains)
    for chain in chains:
        conv = model.get_submodule(chain.conv)
        if chain.bn is not None:
            bn = model.get_submodule(chain.bn)
            _fold_bn(conv, bn)
            conv.activation, conv.negative_slope = bn.activation, bn.negative_slope
            _replace(model, chain.bn, nn.Identity().eval())
        if chain.act is not None:
            conv.activation, conv.negative_slope = _act_of(model.get_submodule(chain.act))
            if chain.act_calls == 1:
                _replace(model, chain.act, nn.Identity().eval())
    for owner_name in sorted(rewrites, key=lambda name: (name == "", -name.count("."))):   # deepest first
        owner = _rewritten(model.get_submodule(owner_name), rewrites[owner_name])
        if owner_name:
            _replace(model, owner_name, owner)
        else:
            model = owner
    return model
