"""nnlib's registered operators (kernels/_library.py) and torch.compile / export.

* ``torch.library.opcheck`` on every operator (schema, fake implementation
  against the real one, autograd registration, AOT dispatch with static and
  dynamic shapes), over samples that cover each argument mode; every
  registered operator must have samples here.
* ``torch.compile(..., fullgraph=True)`` of the functional ops traces one
  graph with no break, and outputs and gradients equal eager mode.
* Eager calls do not go through the dispatcher (the direct path).
"""
from __future__ import annotations

import pytest
import torch

import nnlib.functional as F
from kernels import activation as act
from kernels import pool
from kernels._library import OPERATORS
from tests.reference import make_input

RELU, LEAKY = act.ACT_RELU.value, act.ACT_LEAKY_RELU.value
WINDOW = ([3, 3], [2, 2], [1, 1], [1, 1])


DEVICE = "cuda" if torch.cuda.is_available() else "cpu"     # conftest's device


def _t(shape, layout="contiguous", dtype=torch.float32, grad=True):
    return make_input(shape, dtype, DEVICE, layout, requires_grad=grad)


def _samples():
    """name -> list of (id, args) for opcheck, on the test device."""
    x, xt = _t((2, 3, 5, 7), "channels_last"), _t((2, 3, 5, 7), "transposed")
    xh = _t((2, 5, 7), dtype=torch.float16, grad=False)
    codes = pool.max_pool2d_op(x.detach(), *WINDOW, False, pool.INDEX_LOCAL, RELU)[1]
    flat = pool.max_pool2d_op(x.detach(), *WINDOW, True, pool.INDEX_FLAT, 0)[1]
    return {
        "activation": [("relu-cl", (x, RELU, 0.0)), ("leaky-transposed", (xt, LEAKY, 0.2)),
                       ("leaky-negative-fp16", (xh, LEAKY, -0.5))],
        "activation_": [("relu", (x.detach().clone(), RELU, 0.0)),
                        ("leaky-sliced", (_t((4, 9), "sliced", grad=False), LEAKY, 0.1))],
        "activation_backward": [("relu-same-layout", (_t((2, 3, 5, 7), "channels_last"), x, RELU, 0.0)),
                                ("leaky-other-layout", (_t((2, 3, 5, 7)), xt, LEAKY, 0.3))],
        "prelu": [("channels", (x, _t((3,)))), ("shared-1d", (_t((11,)), _t((1,)))),
                  ("fp16-transposed", (_t((2, 3, 4, 5), "transposed", torch.float16), _t((3,), dtype=torch.float16)))],
        "prelu_backward": [("channels", (_t((2, 3, 5, 7)), x, _t((3,)))), ("shared", (_t((4, 6)), _t((4, 6)), _t((1,))))],
        "max_pool2d": [("local-relu", (x, *WINDOW, False, pool.INDEX_LOCAL, RELU)),
                       ("flat-ceil", (xt, [2, 3], [2, 1], [1, 0], [1, 2], True, pool.INDEX_FLAT, 0)),
                       ("none-unbatched-fp16", (xh, [2, 2], [2, 2], [0, 0], [1, 1], False, pool.INDEX_NONE, 0))],
        "max_pool2d_backward": [("local", (_t(codes.shape), codes, [2, 3, 5, 7], *WINDOW, True)),
                                ("flat", (_t(flat.shape), flat, [2, 3, 5, 7], *WINDOW, False))],
        "max_pool2d_gather": [("local", (x, codes, *WINDOW)), ("flat", (_t((2, 3, 5, 7)), flat, *WINDOW))],
    }


SAMPLES = _samples()


def test_every_operator_has_samples():
    assert set(OPERATORS) == set(SAMPLES), "operators without opcheck samples (or samples without operators)"


@pytest.mark.parametrize("name,args", [pytest.param(n, a, id=f"{n}-{i}") for n, cases in SAMPLES.items()
                                       for i, a in cases])
def test_opcheck(name, args, device):
    torch.library.opcheck(OPERATORS[name].op, args)


def test_eager_calls_skip_the_dispatcher(device):
    """In eager mode an operator runs its launcher directly: no nnlib:: op reaches
    the dispatcher (a TorchDispatchMode would see it)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Seen(TorchDispatchMode):
        names: list = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Seen.names.append(func.namespace)
            return func(*args, **(kwargs or {}))
    x = _t((2, 3, 5, 7))
    with Seen():
        F.max_pool2d(F.relu(x), 2).sum().backward()
    assert Seen.names and "nnlib" not in Seen.names


def _functional_chain(x, w):
    y = F.leaky_relu(F.relu(x), 0.2)
    y = F.prelu(y, w)
    y, idx = F.max_pool2d(y, 3, 2, 1, return_indices=True)
    z = F.max_pool2d(y, 2, ceil_mode=True) * 2
    F.relu_(z)
    return z, idx


@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
def test_compile_functional_fullgraph(backend, device):
    torch._dynamo.reset()
    x, w = _t((2, 3, 9, 9), "channels_last"), _t((3,))
    explained = torch._dynamo.explain(_functional_chain)(x, w)
    assert explained.graph_count == 1 and explained.graph_break_count == 0, explained.break_reasons
    compiled = torch.compile(_functional_chain, backend=backend, fullgraph=True)
    (out, idx), (ref, ref_idx) = compiled(x, w), _functional_chain(x, w)
    torch.testing.assert_close(out, ref)
    assert torch.equal(idx, ref_idx)
    grads, ref_grads = (torch.autograd.grad(o.square().sum(), (x, w)) for o in (out, ref))
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r)
