"""Compile every kernel specialisation for a GPU without having one.

``python -m kernels._compile [--arch sm_90] [--shard I/N] [module ...]`` compiles the
``COMPILE_CASES`` of each kernel module (every autotune config of autotuned
kernels) and prints one JSON line per case: registers, spill bytes, and whether
the PTX holds tensor-core instructions. Run it without ``TRITON_INTERPRET``
(the interpreter replaces ``triton.jit`` and nothing can be compiled);
``tests/test_compile.py`` runs it in a subprocess.
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import traceback

ARCHS = {"sm_90": 90, "sm_80": 80}


def kernel_modules() -> list[str]:
    """The kernel modules that list ``COMPILE_CASES``."""
    import kernels
    names = sorted(m.name for m in pkgutil.iter_modules(kernels.__path__))
    return [n for n in names if hasattr(importlib.import_module(f"kernels.{n}"), "COMPILE_CASES")]


def specialisations(module_name: str) -> list:
    """(case, autotune config or None, label suffix) for every specialisation."""
    module = importlib.import_module(f"kernels.{module_name}")
    out = []
    for case in module.COMPILE_CASES:
        configs_for = getattr(case.kernel, "nnlib_configs_for", None)
        configs = configs_for(case.constexprs) if configs_for else [None]
        out += [(case, config, "" if config is None else f"/cfg{i}") for i, config in enumerate(configs)]
    return out


def compile_case(case, config, arch: str):
    """Compile ``case`` (with autotune ``config``, or None) for ``arch``."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    fn = case.kernel
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    constexprs = dict(case.constexprs)
    num_warps, num_stages = case.num_warps, case.num_stages
    if config is not None:
        constexprs.update(config.kwargs)
        num_warps, num_stages = config.num_warps, config.num_stages
    missing = [a for a in fn.arg_names if a not in case.signature and a not in constexprs]
    if missing:
        raise ValueError(f"{case.name}: no type or value for {missing}")
    signature = {a: ("constexpr" if a in constexprs else case.signature[a]) for a in fn.arg_names}
    src = ASTSource(fn=fn, signature=signature, constexprs=constexprs)
    return triton.compile(src, target=GPUTarget("cuda", ARCHS[arch], 32),
                          options={"num_warps": num_warps, "num_stages": num_stages})


def resource_usage(compiled) -> dict:
    """{"REG", "STACK", "LOCAL"} of the cubin, read by triton's cuobjdump."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        text = subprocess.run([tool, "--dump-resource-usage", f.name],
                              capture_output=True, text=True, check=True).stdout
    return {key: int(val) for key, val in re.findall(r"(REG|STACK|LOCAL):(\d+)", text)}


def compile_module(module_name: str, arch: str, shard: int = 0, shards: int = 1):
    """One result dict per specialisation of the module's kernels (every
    ``shards``-th one from ``shard`` on)."""
    for case, config, suffix in specialisations(module_name)[shard::shards]:
        result = {"case": f"{module_name}.{case.name}{suffix}", "arch": arch}
        try:
            compiled = compile_case(case, config, arch)
            usage = resource_usage(compiled)
            ptx = compiled.asm["ptx"]
            result.update(ok=True, registers=usage.get("REG", 0),
                          spill_bytes=usage.get("LOCAL", 0) + usage.get("STACK", 0),
                          tensor_cores_wanted=case.tensor_cores,
                          wgmma="wgmma" in ptx, mma="mma.sync" in ptx)
        except Exception:
            result.update(ok=False, error=traceback.format_exc(limit=3)[-2000:])
        yield result


def main(argv=None) -> int:
    if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print("unset TRITON_INTERPRET: the interpreter cannot compile kernels", file=sys.stderr)
        return 2
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", choices=sorted(ARCHS), action="append")
    parser.add_argument("--shard", default="0/1", help="I/N: compile every N-th specialisation from the I-th")
    parser.add_argument("modules", nargs="*")
    args = parser.parse_args(argv)
    shard, shards = map(int, args.shard.split("/"))
    for module_name in args.modules or kernel_modules():
        for arch in args.arch or sorted(ARCHS):
            for result in compile_module(module_name, arch, shard, shards):
                print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
