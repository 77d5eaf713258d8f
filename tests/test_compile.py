"""Every Triton kernel of the package, in every autotune config, compiles for
sm_90 and sm_80 on this machine (no GPU needed), without register spills; GEMM
kernels that ask for it use tensor cores (wgmma on sm_90, mma on sm_80).

Kernel modules list their specialisations in ``COMPILE_CASES``; the compiling
happens in ``python -m kernels._compile``, in a subprocess without the
interpreter (which replaces ``triton.jit``)."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from kernels._compile import ARCHS, kernel_modules, specialisations

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


SPECIALISATIONS_PER_SHARD = 24     # shards let pytest-xdist spread the compiling over cores


def _shards():
    return [pytest.param(module, shard, shards, id=f"{module}-{shard}of{shards}")
            for module in kernel_modules()
            for shards in [max(1, -(-len(specialisations(module)) // SPECIALISATIONS_PER_SHARD))]
            for shard in range(shards)]


def _compile(module: str, arch: str, shard: int, shards: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "kernels._compile", "--arch", arch,
                           "--shard", f"{shard}/{shards}", module],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]


@pytest.mark.parametrize("arch", sorted(ARCHS))
@pytest.mark.parametrize("module,shard,shards", _shards())
def test_kernels_compile(module, shard, shards, arch):
    results = _compile(module, arch, shard, shards)
    assert results, f"no kernels compiled for {module}"
    failures = [f"{r['case']}: {r['error']}" for r in results if not r["ok"]]
    assert not failures, "\n".join(failures)
    spills = [f"{r['case']}: {r['spill_bytes']} bytes, {r['registers']} registers"
              for r in results if r["spill_bytes"]]
    assert not spills, "register spills:\n" + "\n".join(spills)
    instruction = "wgmma" if arch == "sm_90" else "mma"
    no_tensor_cores = [r["case"] for r in results if r["tensor_cores_wanted"] and not r[instruction]]
    assert not no_tensor_cores, f"no {instruction} in the PTX of: {no_tensor_cores}"
