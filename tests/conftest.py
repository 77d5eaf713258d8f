"""Test set-up: the Triton interpreter on machines without a GPU, the ``device``
fixture, and exact fp32 arithmetic (no tf32) unless a test asks for it."""
import os
from typing import NamedTuple

import torch

if not torch.cuda.is_available():
    # Must happen before triton is first imported (kernels import it).
    os.environ["TRITON_INTERPRET"] = "1"

import pytest  # noqa: E402

import kernels._runtime as runtime  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def pytest_collection_modifyitems(config, items):
    """Every test that takes ``device`` runs on CUDA when present: mark it ``cuda``
    so a GPU run can select them with ``-m cuda``."""
    for item in items:
        if "device" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.cuda)


def pytest_report_header(config):
    return (f"nnlib tests on {DEVICE}; path for {DEVICE} tensors: "
            f"{runtime.backend(torch.empty(0, device=DEVICE))}")


@pytest.fixture
def device():
    return DEVICE


class Launch(NamedTuple):
    """One kernel launch as ``launch_log`` saw it."""
    name: str           # the kernel's name
    args: dict          # its arguments by parameter name, and the launch options (num_warps, ...)
    grid: object        # a tuple, or a function of the meta-parameters (an autotuner's launch)
    kernel: object      # a jitted kernel, or Triton's autotuner (before it chose: no config values in args)


@pytest.fixture
def launch_log(monkeypatch):
    """The test's kernel launches, in order (``Launch``), as they reach
    ``kernels._runtime._run``: plain, bound (``bind``, ``bind_config``) and
    autotuned launches alike (a GPU's direct launches, which pass it, are off
    meanwhile: the plans are rebuilt without them)."""
    log, run = [], runtime._run

    def logged(kernel, name, grid, args, options):
        named = dict(zip(runtime.kernel_parameters(kernel), args), **options)
        log.append(Launch(name, named, grid, kernel))
        return run(kernel, name, grid, args, options)
    monkeypatch.setattr(runtime, "_run", logged)
    monkeypatch.setattr(runtime, "_DIRECT", False)
    runtime.clear_plan_caches()
    yield log
    runtime.clear_plan_caches()


@pytest.fixture(autouse=True)
def _exact_fp32():
    """Tests compare against float64: no tf32 unless a test turns it on."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


# ---------------------------------------------------------------------------
# Hypothesis budgets (tests/test_fuzz.py): "ci" for `make test` (a few examples,
# a fixed seed, no example database); "fuzz" for `make fuzz` (HYPOTHESIS_PROFILE=fuzz:
# many examples, random seeds). The interpreter is slow: no deadline, no too_slow check.
from hypothesis import HealthCheck, settings  # noqa: E402

_SLOW = [HealthCheck.too_slow, HealthCheck.data_too_large]
settings.register_profile("ci", max_examples=20, derandomize=True, deadline=None, database=None,
                          suppress_health_check=_SLOW, print_blob=True)
settings.register_profile("fuzz", max_examples=400, deadline=None, database=None,
                          suppress_health_check=_SLOW, print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))
