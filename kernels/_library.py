"""nnlib's registered PyTorch operators: one ``Operator`` per primitive.

A primitive is a launcher with schema types: Tensor, ``Tensor | None``, int,
float, bool and ``list[int]`` in, a Tensor or a tuple of Tensors out (an empty
tensor stands for "none"; outputs never alias inputs or each other on the
registered path), or nothing; a primitive that writes its arguments names them
(``mutates_args``: ``activation_``, the norms' running statistics). ``Operator``
registers it as ``torch.ops.nnlib.<name>`` (``torch.library.custom_op``) with a
fake implementation (output shapes, dtypes and strides, computed without
running anything) and, for a differentiable primitive, its autograd formula
(``setup_context`` + ``backward``, written with other Operators, so second
derivatives run the same kernels). Calling an Operator:

* while torch.compile or torch.export traces (or on a tensor subclass such as
  a FakeTensor) runs the registered operator, one opaque node in their graphs;
  so it does under a torch.func transform (``nnlib.functional`` runs torch's ops
  there instead, which have batching and forward-derivative rules: a custom
  operator's ``vmap`` falls back to a per-sample loop or raises, its ``grad``
  raises, its ``jvp`` tangent is silently zero), and the launchers never see a
  transform's wrapped tensors; so it does for the gradients that autograd's own
  vmap batches (``is_grads_batched``), which its fallback unbatches per sample;
  and so it does in eager mode under a
  ``TorchDispatchMode`` (``modes_see_operators``: FlopCounterMode, whose FLOP
  formulas for our convolutions the conv package registers; a FakeTensorMode;
  selective activation checkpointing), which sees our operators as it sees
  torch's ops (a mutating operator there leaves the version counters as the
  direct path does; in-place activations, whose operator returns nothing that
  a caching mode could replay, run their launcher directly);
* in eager mode runs the launcher directly, inside a plain
  ``torch.autograd.Function`` built from the same ``setup_context`` and
  ``backward`` when the primitive is differentiable and autograd has to see
  the call (``Operator.recorded``); the dispatcher would add about 15 us per
  call (``python -m bench --host``), more than many of our kernels take on a
  GPU. A call autograd does not see (grad mode off, as in a backward pass
  without ``create_graph`` or under ``torch.no_grad``, inference mode, or no
  tensor argument that requires grad) runs the bare launcher: there the
  Function would record nothing and cost about 15 us more.

Either way the launcher runs with its first tensor's GPU as the current device
(``_on_own_device``): Triton launches on the current device, so a model on
cuda:1 called while cuda:0 is current would otherwise run on the wrong GPU.

Why ``custom_op`` and not ``torch.library.triton_op``: a triton_op's body is
traced with fake tensors and its kernels through ``wrap_triton``, which needs
each kernel's real arguments; our launchers read data pointers (alignment
checks), pick autotuned kernels through ``kernels._runtime.autotune`` and run
under the CPU interpreter in CI, and triton_op cannot trace any of that (under
the interpreter it fails on the first data pointer). custom_op keeps the
launcher opaque, so it works on CPU and GPU alike; the cost is that inductor
cannot fuse into our kernels, which do their own fusion (epilogues).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.autograd.forward_ad as forward_ad
from torch._C._functorch import unwrap_if_dead

__all__ = ["NAMESPACE", "OPERATORS", "LaunchersInSight", "Operator", "batched_by_autograd", "modes_see_operators",
           "tracing"]

NAMESPACE = "nnlib"
OPERATORS: dict[str, "Operator"] = {}     # name -> Operator, every one registered
_PLAIN = (torch.Tensor, torch.nn.Parameter)
# torch.autograd.Function.apply without its Python wrapper, about 2 us less a call. What
# the wrapper does is done here or not needed: it binds defaults only for a Function
# with setup_context (ours have none), defers to functorch under a transform (such a
# call goes to the operator: ``tracing``) and unwraps dead transforms' tensors
# (``Operator.__call__`` does).
_FUNCTION_APPLY = torch._C._FunctionBase.__dict__["apply"]


# batched_by_autograd(x): x is batched by autograd's own vmap (no storage to read): the
# gradients of a backward that ``torch.autograd.grad(..., is_grads_batched=True)`` runs
# (vectorized Jacobians: ``torch.autograd.functional.jacobian(vectorize=True)``).
batched_by_autograd = torch._C._functorch.is_legacy_batchedtensor


def tracing(x: torch.Tensor) -> bool:
    """True while torch.compile / torch.export trace, for a tensor subclass
    (FakeTensor, FunctionalTensor, ...), under a torch.func transform (whose
    wrapped tensors the launchers cannot read; the operator unwraps them, or raises
    as torch's custom operators do), or for a tensor batched by autograd
    (``batched_by_autograd``: its fallback runs the operator once per sample):
    calls must go through the operator."""
    return (type(x) not in _PLAIN or torch.compiler.is_compiling() or torch._C._are_functorch_transforms_active()
            or batched_by_autograd(x))


class LaunchersInSight:
    """A mixin for a ``TorchDispatchMode`` that looks at what the eager path does
    (``bench --host``, the launch and host-synchronisation tests): under such
    modes only, eager calls run their launchers directly, and the mode sees the
    torch ops the launchers make instead of nnlib's operators. A property of the
    mode, not of a thread: autograd's worker threads (a CUDA backward) inherit
    the mode stack."""


def modes_see_operators() -> bool:
    """A ``TorchDispatchMode`` is active (FlopCounterMode, a FakeTensorMode,
    selective activation checkpointing, a user's logging mode) that is not a
    ``LaunchersInSight``: eager calls go through the dispatcher, so that it sees
    nnlib's operators as it sees torch's ops."""
    depth = torch._C._len_torch_dispatch_stack()
    return depth > 0 and not all(isinstance(torch._C._get_dispatch_stack_at(i), LaunchersInSight)
                                 for i in range(depth))


def _on_own_device(impl: Callable) -> Callable:
    """``impl`` run with its first argument's GPU as the current device (torch's ops
    do the same through a device guard)."""
    def run(x, *args):
        if x.is_cuda and x.get_device() != torch.cuda.current_device():
            with torch.cuda.device(x.get_device()):
                return impl(x, *args)
        return impl(x, *args)
    return run


def _unaliased(impl: Callable) -> Callable:
    """``impl`` whose outputs share no memory with its inputs or with each other (a
    registered operator's contract; the launchers may return views of one buffer,
    which the eager path keeps): an aliasing output is cloned."""
    def run(*args):
        outputs = impl(*args)
        if not isinstance(outputs, tuple):
            return outputs
        seen = {t.untyped_storage().data_ptr() for t in args if isinstance(t, torch.Tensor) and t.numel()}
        unaliased = []
        for t in outputs:
            if t.numel():
                if t.untyped_storage().data_ptr() in seen:
                    t = t.clone()
                seen.add(t.untyped_storage().data_ptr())
            unaliased.append(t)
        return tuple(unaliased)
    return run


def _as_torchs(setup_context: Callable, backward: Callable, num_inputs: int) -> tuple[Callable, Callable]:
    """The formula as torch's own ops apply theirs: when no gradient reaches any
    output (a later op gave none), no input gets one (None, where a Function would
    pass zeros through its backward); otherwise ``backward`` runs, given None for
    an output that got no gradient (grads are not materialized as zeros)."""
    def setup(ctx, inputs, output):
        ctx.set_materialize_grads(False)
        setup_context(ctx, inputs, output)

    def run(ctx, *grads):
        for g in grads:
            if g is not None:
                return backward(ctx, *grads)
        return (None,) * num_inputs
    return setup, run


def _eager_function(name: str, impl: Callable, setup_context: Callable, backward: Callable):
    """A torch.autograd.Function running ``impl`` with the registered formula."""
    def forward(ctx, *args):
        output = impl(*args)
        setup_context(ctx, args, output)
        return output
    return type(name, (torch.autograd.Function,), {"forward": staticmethod(forward),
                                                     "backward": staticmethod(backward)})


class Operator:
    """``impl`` registered as ``torch.ops.nnlib.<name>``; call it with positional
    arguments. ``fake(*args)`` gives empty outputs of the right shapes, dtypes and
    strides; ``mutates_args`` names the arguments written in place (such a
    primitive has no autograd formula: the caller pairs it with a functional
    one); ``setup_context(ctx, inputs, output)`` and ``backward(ctx, *grads)``
    are the autograd formula, as for ``torch.library.register_autograd``.
    ``prepare(args) -> args``, when given, runs before ``impl`` where the dispatcher
    calls the operator (a traced or exported graph, which skips the Python that
    prepares the eager call's arguments: a norm's layout copy; an eager call under a
    TorchDispatchMode, whose arguments it finds prepared)."""

    def __init__(self, name: str, impl: Callable, *, fake: Callable, mutates_args: tuple = (),
                 setup_context: Callable | None = None, backward: Callable | None = None,
                 prepare: Callable | None = None):
        if name in OPERATORS:
            raise RuntimeError(f"operator {NAMESPACE}::{name} is registered twice")
        OPERATORS[name] = self
        self.name = name
        schema = torch.library.infer_schema(impl, mutates_args=mutates_args)
        impl = self.impl = _on_own_device(impl)
        dispatched = impl if prepare is None else lambda *args: impl(*prepare(args))
        self.op = torch.library.custom_op(f"{NAMESPACE}::{name}", _unaliased(dispatched), mutates_args=mutates_args,
                                          schema=schema)
        self.op.register_fake(fake)
        self.mutates = bool(mutates_args)
        self.function = None
        arguments = getattr(getattr(torch.ops, NAMESPACE), name).default._schema.arguments
        self.tensor_args = tuple(i for i, a in enumerate(arguments)       # positions of Tensor and Tensor?
                                 if a.type.isSubtypeOf(torch._C.OptionalType.ofTensor()))
        if backward is not None:
            setup_context, backward = _as_torchs(setup_context, backward, len(arguments))
            self.op.register_autograd(backward, setup_context=setup_context)
            self.function = _eager_function(name, impl, setup_context, backward)
            self.record = _FUNCTION_APPLY.__get__(None, self.function)

    def __call__(self, *args):
        if tracing(args[0]):
            return self.op(*args)
        if modes_see_operators() and forward_ad._current_level < 0:     # forward AD: the Function raises
            if self.mutates:
                # the arguments' version counters as on the direct path (torch's batch norm
                # leaves its running stats' alone)
                with torch._C._AutoDispatchBelowADInplaceOrView():
                    return self.op(*args)
            return self.op(*args)
        if self.function is None or not self.recorded(args):
            return self.impl(*args)
        args = list(args)
        for i in self.tensor_args:                  # as Function.apply: a dead transform's wrapper unwrapped
            if args[i] is not None:
                args[i] = unwrap_if_dead(args[i])
        return self.record(*args)

    def recorded(self, args) -> bool:
        """Whether an eager call must go through the autograd.Function: grad mode on
        outside inference mode (which records nothing, grad mode or not) and a tensor
        argument that requires grad, or forward AD active (the Function raises there,
        as it has no jvp rule)."""
        if forward_ad._current_level >= 0:
            return True
        if torch.is_grad_enabled() and not torch.is_inference_mode_enabled():
            for i in self.tensor_args:
                if args[i] is not None and args[i].requires_grad:
                    return True
        return False

    def __repr__(self) -> str:
        return f"Operator({NAMESPACE}::{self.name})"
