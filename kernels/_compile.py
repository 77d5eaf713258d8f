"""Compile every kernel specialisation for a GPU without having one.

``python -m kernels._compile [--arch sm_90] [--shard I/N] [module ...]`` compiles the
``COMPILE_CASES`` of each kernel module (every autotune config of autotuned
kernels) and prints one JSON line per case: registers, spill bytes (and, where any, the
spill instructions inside loops: ``loop_spills``), shared memory, whether the PTX holds
tensor-core instructions, and SASS figures (``sass_stats``).
Cases compile as a real launch specialises them: every pointer 16-byte
aligned (torch's allocations are) and the integer arguments a case lists in
``CompileCase.divisible`` divisible by 16. ``--ones`` instead traces each case
with its other integer arguments 1, which a launch makes constants
(``trace_with_ones``). Run it without ``TRITON_INTERPRET``
(the interpreter replaces ``triton.jit`` and nothing can be compiled);
``tests/test_compile.py`` runs it in a subprocess, once per installed triton
(CI's, and those of ``EXTRA_TRITONS`` from ``triton_path``: 3.6, the GPU machines', 3.7, 3.8).
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
# Shared memory one program may take (the opt-in maximum per block): H100 227 KiB, A100 163 KiB.
# A config past it fails at launch (triton's OutOfResources), or leaves the autotuner one config fewer.
MAX_SHARED_BYTES = {"sm_90": 232448, "sm_80": 166912}

# Tritons the compile check runs under besides the one installed (CI's), each in a folder
# (``triton_path``, ``pip install --target``) put first on PYTHONPATH; ``make test`` installs
# them inside the venv. Each is the one a torch release that pyproject admits pins on Linux:
# 3.6.0 (torch 2.11, the GPU machines'), 3.7.1 (2.12 and 2.13), 3.8.0 (2.14).
EXTRA_TRITONS = ("3.6", "3.7", "3.8")


def triton_path(version: str) -> str:
    """Where ``make`` installs triton ``version`` for the compile check."""
    return os.path.join(sys.prefix, f"triton-{version}")


def kernel_modules() -> list[str]:
    """The kernel modules that list ``COMPILE_CASES``."""
    import kernels
    names = sorted(m.name for m in pkgutil.iter_modules(kernels.__path__))
    return [n for n in names if hasattr(importlib.import_module(f"kernels.{n}"), "COMPILE_CASES")]


def specialisations(module_name: str, arch: str | None = None, with_index: bool = False) -> list:
    """(case, autotune config or None, label suffix) for every specialisation on
    ``arch`` (None: on any), and the config's index in its list (0 for plain
    kernels) ``with_index``."""
    module = importlib.import_module(f"kernels.{module_name}")
    out = []
    for case in module.COMPILE_CASES:
        configs_for = getattr(case.kernel, "nnlib_configs_for", None)
        configs = configs_for(case.constexprs, arch and ARCHS[arch]) if configs_for else [None]
        out += [(case, config, "" if config is None else f"/cfg{i}") + ((i,) if with_index else ())
                for i, config in enumerate(configs)]
    return out


def _source(case, config, ones: bool = False):
    """(ASTSource, compile options) of ``case`` with autotune ``config`` (or None).
    ``ones``: every integer argument that a launch could pass as 1 is the constant
    1, as a launch specialises it (Triton makes an int argument equal to 1 a
    constexpr unless it is ``do_not_specialize``; the interpreter never does):
    all but those the case lists divisible by 16."""
    import triton
    from triton.compiler import ASTSource

    from ._runtime import LAUNCH_OPTIONS
    fn = case.kernel
    while not isinstance(fn, triton.runtime.JITFunction):
        fn = fn.fn
    # Values of arguments the kernel does not specialise (do_not_specialize) stay runtime
    # values, as in a launch.
    kept = {p.name for p in fn.params if p.do_not_specialize}
    constexprs = {a: v for a, v in case.constexprs.items() if a not in kept}
    options = {"num_warps": case.num_warps, "num_stages": case.num_stages, **LAUNCH_OPTIONS}
    if config is not None:
        constexprs.update(config.kwargs)
        options.update(num_warps=config.num_warps, num_stages=config.num_stages)
        if getattr(config, "maxnreg", None):
            options["maxnreg"] = config.maxnreg
    missing = [a for a in fn.arg_names if a not in case.signature and a not in constexprs]
    if missing:
        raise ValueError(f"{case.name}: no type or value for {missing}")
    extra = sorted((set(case.signature) | set(constexprs)) - set(fn.arg_names))
    if extra:     # a launch passing these would fail on a GPU (the interpreter ignores them)
        raise ValueError(f"{case.name}: the kernel has no arguments {extra}")
    unknown = set(case.divisible) - set(case.signature)
    if unknown:
        raise ValueError(f"{case.name}: divisible names unknown arguments {sorted(unknown)}")
    if ones:
        constexprs.update({a: 1 for a in fn.arg_names if a not in constexprs and a not in kept
                           and a not in case.divisible and case.signature[a] in ("i32", "i64")})
    signature = {a: ("constexpr" if a in constexprs else case.signature[a]) for a in fn.arg_names}
    # As a launch specialises: 16-byte aligned pointers, listed integers divisible by 16.
    attrs = {(fn.arg_names.index(a),): [["tt.divisibility", 16]] for a, ty in signature.items()
             if ty != "constexpr" and (ty.startswith("*") or a in case.divisible)}
    return ASTSource(fn=fn, signature=signature, constexprs=constexprs, attrs=attrs), options


def compile_case(case, config, arch: str):
    """Compile ``case`` (with autotune ``config``, or None) for ``arch``."""
    import triton
    from triton.backends.compiler import GPUTarget

    src, options = _source(case, config)
    return triton.compile(src, target=GPUTarget("cuda", ARCHS[arch], 32), options=options)


def trace_with_ones(case, config, arch: str) -> None:
    """Build the Triton IR of ``case`` with its integer arguments 1 (``_source``'s
    ``ones``): a launch with sizes or strides of 1 compiles. The first stage
    only, where such errors arise (``x.to(...)`` of an expression that became a
    Python int, say); about 50 ms a case."""
    from triton.backends.compiler import GPUTarget
    from triton.compiler.compiler import make_backend
    from triton._C.libtriton import ir

    src, options = _source(case, config, ones=True)
    target = GPUTarget("cuda", ARCHS[arch], 32)
    backend = make_backend(target)
    parsed = backend.parse_options(options)
    context = ir.context()
    ir.load_dialects(context)
    backend.load_dialects(context)
    src.make_ir(target, parsed, backend.get_codegen_implementation(parsed), backend.get_module_map(), context)


def _cuobjdump(compiled, flag: str) -> str:
    """Output of triton's own ``cuobjdump flag`` on the compiled cubin."""
    import triton
    tool = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(compiled.asm["cubin"])
        f.flush()
        return subprocess.run([tool, flag, f.name], capture_output=True, text=True, check=True).stdout


def resource_usage(compiled) -> dict:
    """{"REG", "STACK", "LOCAL"} of the cubin."""
    text = _cuobjdump(compiled, "--dump-resource-usage")
    return {key: int(val) for key, val in re.findall(r"(REG|STACK|LOCAL):(\d+)", text)}


def _sass_lines(text: str) -> list[tuple[int, str]]:
    """(address, instruction) pairs of cuobjdump's SASS listing."""
    return [(int(a, 16), m.strip()) for a, m in re.findall(r"/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", text)]


def sass(compiled) -> list[str]:
    """The SASS instructions of the cubin, one string per instruction
    (``"LDG.E.128 R4, desc[UR6][R2.64]"``), predicates included, addresses dropped."""
    return [ins for _, ins in _sass_lines(_cuobjdump(compiled, "-sass"))]


def _opcode(instruction: str) -> str:
    return re.sub(r"^@!?U?P\w+\s+", "", instruction).split(" ")[0].split(".")[0]


def _loops(lines: list[tuple[int, str]]) -> list[tuple[int, int]]:
    """(first, last) addresses of each loop of a SASS listing: the span from a
    backward branch's target to the branch."""
    spans = []
    for address, ins in lines:
        branch = re.search(r"\bBRA(?:\.\w+)*\s+(?:`\()?(0x[0-9a-f]+)", ins)
        if branch and int(branch.group(1), 16) <= address:
            spans.append((int(branch.group(1), 16), address))
    return spans


def loop_spills(text: str) -> int:
    """Local-memory instructions (``STL`` / ``LDL``: spills) inside a loop of a SASS
    listing; a spill stored before the loops and loaded after them is not counted."""
    lines = _sass_lines(text)
    spans = _loops(lines)
    return sum(1 for address, ins in lines
               if _opcode(ins) in ("STL", "LDL") and any(first <= address <= last for first, last in spans))


def main_loop(text: str) -> dict:
    """The loop (``_loops``) of a SASS listing that issues the most ``HGMMA`` (``HMMA``
    when none does, ``FFMA`` when neither does). {"instructions": its length,
    "hgmma": ..., "hmma": ..., "ffma": ...} (zeros when no loop holds one of them)."""
    lines = _sass_lines(text)
    counted = ("hgmma", "hmma", "ffma")
    best = {"instructions": 0, **dict.fromkeys(counted, 0)}
    for first, last in _loops(lines):
        body = [_opcode(i) for a, i in lines if first <= a <= last]
        loop = {"instructions": len(body), **{key: body.count(key.upper()) for key in counted}}
        if [loop[key] for key in counted] > [best[key] for key in counted]:
            best = loop
    return best


_MEMORY = re.compile(r"^(?:@!?U?P\w+\s+)?((?:LDGSTS|LDG|STG|LDS|STS)(?:\.[\w]+)*)")


def sass_stats(instructions: list[str]) -> dict:
    """Figures read from SASS: instruction count, ``HGMMA`` / ``HMMA`` / ``UTMALDG`` counts, and
    memory accesses by width in bits (``{"LDG": {"128": 4, "32": 1}, "LDGSTS": ...}``;
    an access without a width suffix is 32 bits, ``.U16`` / ``.64`` say so)."""
    widths: dict[str, dict[str, int]] = {}
    for ins in instructions:
        m = _MEMORY.match(ins)
        if not m:
            continue
        parts = m.group(1).split(".")
        width = next((p for p in parts[1:] if p in ("128", "64", "U16", "S16", "U8", "S8")), "32")
        width = {"U16": "16", "S16": "16", "U8": "8", "S8": "8"}.get(width, width)
        widths.setdefault(parts[0], {}).setdefault(width, 0)
        widths[parts[0]][width] += 1
    opcode = [_opcode(ins) for ins in instructions]
    return {"instructions": len(instructions), "hgmma": opcode.count("HGMMA"), "hmma": opcode.count("HMMA"),
            "utmaldg": opcode.count("UTMALDG"), "widths": widths}


def compile_module(module_name: str, arch: str, shard: int = 0, shards: int = 1, all_sass: bool = False):
    """One result dict per specialisation of the module's kernels (every
    ``shards``-th one from ``shard`` on); SASS figures for the cases that expect
    some, or all with ``all_sass`` (disassembling costs about 0.4 s a kernel)."""
    for case, config, suffix, index in specialisations(module_name, arch, with_index=True)[shard::shards]:
        result = {"case": f"{module_name}.{case.name}{suffix}", "arch": arch}
        try:
            compiled = compile_case(case, config, arch)
            usage = resource_usage(compiled)
            ptx = compiled.asm["ptx"]
            expect = {k: v for k, v in case.expect.items() if k != "per_config"}
            expect.update(case.expect.get("per_config", {}).get(index, {}))
            result.update(ok=True, registers=usage.get("REG", 0),
                          spill_bytes=usage.get("LOCAL", 0) + usage.get("STACK", 0),
                          shared_bytes=compiled.metadata.shared,
                          tensor_cores_wanted=case.tensor_cores,
                          wgmma="wgmma" in ptx, mma="mma.sync" in ptx, expect=expect)
            if expect or all_sass or result["spill_bytes"]:
                text = _cuobjdump(compiled, "-sass")
                result["loop_spills"] = loop_spills(text)
                result["sass"] = sass_stats([ins for _, ins in _sass_lines(text)])
                result["sass"]["main_loop"] = main_loop(text)
        except Exception:
            result.update(ok=False, error=traceback.format_exc(limit=3)[-2000:])
        yield result


def trace_module_with_ones(module_name: str, arch: str):
    """One result dict per case of the module (its first autotune config): ``trace_with_ones``."""
    for case, config, suffix, index in specialisations(module_name, arch, with_index=True):
        if index:
            continue
        result = {"case": f"{module_name}.{case.name}{suffix}", "arch": arch}
        try:
            trace_with_ones(case, config, arch)
            result.update(ok=True)
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
    parser.add_argument("--sass", action="store_true", help="SASS figures for every case")
    parser.add_argument("--ones", action="store_true",
                        help="only trace each case's first config with its integer arguments 1 (trace_with_ones)")
    parser.add_argument("modules", nargs="*")
    args = parser.parse_args(argv)
    shard, shards = map(int, args.shard.split("/"))
    import triton
    print(json.dumps({"triton": triton.__version__}), flush=True)
    for module_name in args.modules or kernel_modules():
        for arch in args.arch or sorted(ARCHS):
            results = (trace_module_with_ones(module_name, arch) if args.ones
                       else compile_module(module_name, arch, shard, shards, args.sass))
            for result in results:
                print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
