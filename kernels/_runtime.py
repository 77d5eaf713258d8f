"""Where kernels run, how they are tuned and launched, and the checks and layout
helpers that every op shares.

* ``backend(t)``: "triton" (CUDA tensor), "triton-interpreter" (CPU tensor with
  ``TRITON_INTERPRET=1``) or "torch" (CPU tensor without it: the explicit
  fallback).
* ``autotune(configs, key, interpreter_config)``: ``triton.autotune`` with the
  full list on a GPU and the single interpreter config (the largest tiles)
  when interpreting; the compile test compiles every config a GPU could tune
  over (``kernel.nnlib_configs_for``). ``NNLIB_AUTOTUNE=0`` in the environment
  makes GPU runs use the first config of each list too, timing nothing
  (correctness runs that must not spend minutes tuning: bench/gpu_check.sh's
  test step).
* ``launch(kernel, grid, *args, **kwargs)``: every launch goes through here (or
  through a launcher ``bind`` made, for plans that fix a launch's arguments once)
  and is counted, so tests can prove that a Triton kernel ran; ``dry_run()``
  counts launches without running them (the host benchmark times our Python).
  On a GPU a bound launch calls the kernel Triton compiled for it straight,
  past ``JITFunction.run`` (``NNLIB_DIRECT_LAUNCH=0``: always through it).
* ``plan_cache(build)``: a value that depends only on its key (a launch plan:
  what a launch's sizes, strides, flags and arguments decide; a check of
  sizes) built once per distinct key; every op caches its plans this way.
  A float in a key goes through ``plan_float`` (-0.0 keyed apart from 0.0, every
  NaN alike).
* ``DOT_UPCAST``: pass as a constexpr to kernels that ``tl.dot`` bf16 tiles;
  the interpreter's bf16 dot is wrong, so they upcast to fp32 there.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import math
import os
import threading
import warnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import torch
import triton

__all__ = [
    "interpreting", "backend", "autotune", "for_gpus", "launch", "bind", "bind_config", "kernel_parameters",
    "LaunchCounter", "LAUNCH_OPTIONS",
    "plan_cache", "plan_float", "clear_plan_caches", "persistent",
    "count_launches", "dry_run", "compile_ahead", "compiling_ahead",
    "cdiv", "next_power_of_2",
    "dot_upcast", "merge_dims", "view_3d", "is_dense", "max_offset", "needs_int64",
    "check_same_device", "CompileCase",
]


# Triton reads TRITON_INTERPRET once, when it is imported (so does nnlib).
_INTERPRETING = os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")
_AUTOTUNING = os.environ.get("NNLIB_AUTOTUNE", "1") not in ("", "0")
# NNLIB_PARALLEL_COMPILE=0: no compiling in threads (``compile_together``, ``compile_ahead``).
_PARALLEL_COMPILE = os.environ.get("NNLIB_PARALLEL_COMPILE", "1") not in ("", "0")
_DIRECT = not _INTERPRETING and os.environ.get("NNLIB_DIRECT_LAUNCH", "1") not in ("", "0")
try:        # Triton's CUDA driver reads the current device and stream as torch has them
    from torch._C import _cuda_getCurrentRawStream as _current_stream, _cuda_getDevice as _current_device
except ImportError:     # a CPU build of torch: nothing launches on a GPU
    _DIRECT = False
# Options of every launch (and of the compile test's compiles, ``kernels._compile``): multiply-adds
# fused into FMAs, as the kernels' SASS budgets count them. Triton 3.9 warns at a launch that leaves
# it to TRITON_DEFAULT_FP_FUSION, whose default 3.10 turns off.
LAUNCH_OPTIONS = {"enable_fp_fusion": True}


def interpreting() -> bool:
    """True when Triton runs kernels in its CPU interpreter."""
    return _INTERPRETING


def _index_scalars_as_later_interpreters() -> None:
    """Triton 3.6's interpreter turns a scalar (a 1-element array) into an index by
    ``int(array)``, which NumPy 2.4 refuses for an array that is not 0-d, so every
    loop over a runtime bound failed; 3.7 squeezes the array first. The same, patched
    into 3.6's set-up of ``tl.tensor`` (the interpreter applies it per launch)."""
    from triton.runtime import interpreter
    patch_tensor = interpreter._patch_lang_tensor

    def patched(tensor, scope):
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.squeeze()))
    interpreter._patch_lang_tensor = patched


if _INTERPRETING and triton.__version__.startswith("3.6."):
    _index_scalars_as_later_interpreters()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for host integers (``triton.cdiv`` costs ~3 us a call on the host)."""
    return -(-a // b)


def next_power_of_2(n: int) -> int:
    """Smallest power of two >= n (1 for n <= 1); ``triton.next_power_of_2`` is slow on the host."""
    return 1 if n <= 1 else 1 << (n - 1).bit_length()


_KERNEL_DATA = frozenset((torch.float32, torch.float16, torch.bfloat16, torch.bool, torch.uint8, torch.int8,
                          torch.int16, torch.int32, torch.int64))


def backend(tensor: torch.Tensor) -> str:
    """Which path nnlib takes for ``tensor``: "triton" (CUDA), "triton-interpreter"
    (CPU with ``TRITON_INTERPRET=1``) or "torch" (the fallback: CPU without the
    interpreter, or a sparse layout or data the kernels do not take: float64,
    complex, float8, unsigned integers wider than 8 bits, quantized)."""
    if tensor.dtype not in _KERNEL_DATA or tensor.layout != torch.strided:
        return "torch"
    if tensor.is_cuda:
        return "triton"
    if _INTERPRETING and tensor.is_cpu:
        return "triton-interpreter"
    return "torch"


def dot_upcast() -> bool:
    """Value for a kernel's ``DOT_UPCAST`` constexpr: upcast bf16 ``tl.dot`` operands
    to fp32 under the interpreter, whose bf16 dot is wrong. Never on the GPU."""
    return interpreting()


# ---------------------------------------------------------------------------
# Autotuning and launches

def for_gpus(config: triton.Config, first: int | None = None, last: int | None = None) -> triton.Config:
    """``config``, tuned over only on GPUs of compute capability ``first`` to ``last``
    (90 for sm_90; None: no bound): for a setting one architecture needs and another
    cannot use (a register cap that lets two programs share an H100 SM spills on
    an A100, whose shared memory holds one)."""
    config.nnlib_gpus = (first, last)
    return config


def _serves(config: triton.Config, capability: int | None) -> bool:
    first, last = getattr(config, "nnlib_gpus", (None, None))
    return capability is None or ((first is None or capability >= first) and (last is None or capability <= last))


@functools.lru_cache(maxsize=None)
def _capability(device: int) -> int:
    major, minor = torch.cuda.get_device_capability(device)
    return 10 * major + minor


def _short_timing(kernel_call, quantiles):
    """An autotuner's timing of one config: Triton's ``do_bench`` (L2 flushed before
    each run) over 20 ms after 5 ms of warm-up, where Triton's autotuner takes 100
    after 25. Ranking configs needs far fewer runs than a benchmark figure (20 ms
    holds 200 runs of a 100 us kernel), and every new shape of a model tunes
    every config of its kernels: five times shorter, a first step's tuning is too."""
    return triton.testing.do_bench(kernel_call, warmup=5, rep=20, quantiles=quantiles)


def _no_timing(kernel_call, quantiles):
    """An autotuner's timing under ``NNLIB_AUTOTUNE=0``: none (nothing runs; every
    config reads 0 ms, so the first, the only one pruning leaves, is chosen)."""
    return [0.0] * len(quantiles)


def autotune(configs: list[triton.Config], key: list[str],
             interpreter_config: triton.Config | None = None, alternatives: tuple | None = None, **kwargs):
    """``triton.autotune`` with ``configs`` on a GPU and only ``interpreter_config``
    (default: the first config) under the interpreter, which cannot time configs.

    ``alternatives`` = (name, {value: configs}): launches whose constexpr ``name``
    takes one of those values are tuned over that list instead (e.g. smaller tiles
    where the large ones would spill). Configs marked by ``for_gpus`` join only the
    tuning on those GPUs. ``kernel.nnlib_configs_for(constexprs, capability)`` gives
    the list a launch with those constexprs tunes over on that GPU (None: on any;
    under the interpreter, the one config): the compile test compiles exactly
    those, and a launcher can size what depends on the tiles (a split workspace)."""
    name, lists = alternatives or ("", {})

    def configs_for(constexprs: dict, capability: int | None = None) -> list[triton.Config]:
        if interpreting():
            return [interpreter_config or configs[0]]
        return [c for c in lists.get(constexprs.get(name), configs) if _serves(c, capability)]

    def decorator(fn):
        if interpreting():
            tuned = triton.autotune(configs=[interpreter_config or configs[0]], key=key, **kwargs)(fn)
        else:
            every = list(configs) + [c for more in lists.values() for c in more]
            owner = [None] * len(configs) + [value for value, more in lists.items() for _ in more]

            def prune(candidates, named_args, **launch_kwargs):
                value = launch_kwargs.get(name, (named_args or {}).get(name))
                wanted = value if value in lists else None
                capability = _capability(torch.cuda.current_device()) if torch.cuda.is_available() else None
                kept = [c for c, o in zip(candidates, owner) if o == wanted and _serves(c, capability)]
                if not _AUTOTUNING:
                    return kept[:1]      # NNLIB_AUTOTUNE=0: the first that serves
                compile_together(tuned.fn, named_args or {}, launch_kwargs, kept)
                return kept
            # NNLIB_AUTOTUNE=0: no timing (triton 3.6 times even a single remaining config)
            kwargs.setdefault("do_bench", _short_timing if _AUTOTUNING else _no_timing)
            tuned = triton.autotune(configs=every, key=key, prune_configs_by={"early_config_prune": prune},
                                    **kwargs)(fn)
        tuned.nnlib_configs = list(configs)
        tuned.nnlib_configs_for = configs_for
        return tuned
    return decorator


_parallel_compile = [True]      # until a parallel compile fails (``compile_together``)


def _cores() -> int:
    """The CPU cores this process may run on (compile threads)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def compile_together(fn, named_args: dict, launch_kwargs: dict, configs: list) -> None:
    """Compile the launch of ``fn`` (named_args, launch_kwargs) in each of ``configs``
    at once, one thread each (Triton's ``AsyncCompileMode``: its compiler releases
    the GIL; 8 conv configs on 2 cores, triton 3.6, sm_90: 2.9 s against 5.0 one
    after another), before the autotuner times them one by one, which would
    compile each in turn: a model's first step compiles every conv pass in 3-4
    configs. Nothing is launched. Where it fails (a triton without it, an error)
    it warns once and leaves each compile to the autotuner, which reports a
    config's own errors as it does without this; NNLIB_PARALLEL_COMPILE=0 leaves
    them to it from the start."""
    make_mode = getattr(triton, "AsyncCompileMode", None)
    if len(configs) < 2 or make_mode is None or not (_PARALLEL_COMPILE and _parallel_compile[0]):
        return
    from triton.runtime import _async_compile
    if _async_compile.active_mode.get() is not None:     # the caller compiles asynchronously already
        return
    # The autotuner passes its launch's grid and warmup flag along with the launch's arguments.
    meta = {key: value for key, value in launch_kwargs.items() if key not in ("grid", "warmup")}
    try:
        while not isinstance(fn, triton.runtime.JITFunction):
            fn = fn.fn
        with ThreadPoolExecutor(min(len(configs), _cores())) as pool, \
                make_mode(pool, ignore_errors=True):
            for config in configs:
                fn.warmup(grid=(1,), **named_args, **meta, **config.all_kwargs())
    except Exception as exc:  # noqa: BLE001
        _parallel_compile[0] = False
        warnings.warn(f"nnlib: compiling an autotuned kernel's configs at once failed ({type(exc).__name__}: "
                      f"{exc}); the autotuner compiles them one by one from now on", RuntimeWarning, stacklevel=2)


class LaunchCounter:
    """Counts kernel launches by kernel name."""

    def __init__(self) -> None:
        self.counts: Counter[str] = Counter()

    @property
    def total(self) -> int:
        return sum(self.counts.values())

    def __repr__(self) -> str:
        return f"LaunchCounter({dict(self.counts)})"


_counters: list[LaunchCounter] = []
_dry_run = False


def python_function(kernel):
    """The Python function under a jitted (possibly autotuned) kernel."""
    fn = kernel
    while hasattr(fn, "fn"):
        fn = fn.fn
    return fn


def kernel_name(kernel) -> str:
    fn = python_function(kernel)
    return getattr(fn, "__name__", repr(fn))


def kernel_parameters(kernel) -> dict:
    """A kernel's parameters (``inspect.Parameter`` by name, in order)."""
    return dict(inspect.signature(python_function(kernel)).parameters)


def _cached_name(kernel) -> str:
    name = getattr(kernel, "nnlib_name", None)
    if name is None:
        name = kernel.nnlib_name = kernel_name(kernel)
    return name


GRID_LIMITS = (2**31 - 1, 65535, 65535)   # programs per grid axis on CUDA


def _checked_grid(name: str, grid):
    """``grid`` (a tuple or a function of the launch meta-parameters) that raises a
    RuntimeError naming the kernel when an axis passes ``GRID_LIMITS``, before the
    launch (the interpreter has no limit, so CPU runs raise where a GPU would)."""
    def check(dims):
        if dims[0] <= GRID_LIMITS[0] and (len(dims) == 1 or max(dims[1:]) <= GRID_LIMITS[1]):
            return dims
        for axis, (programs, limit) in enumerate(zip(dims, GRID_LIMITS)):
            if programs > limit:
                raise RuntimeError(f"{name}: {programs} programs on grid axis {axis}, more than CUDA allows "
                                   f"({limit}); the problem is too large for this kernel's grid")
        return dims
    if callable(grid):
        return lambda meta: check(tuple(grid(meta)))
    return check(tuple(grid))


def launch(kernel, grid, *args, **kwargs):
    """Launch ``kernel[grid](*args, **kwargs)`` and count it."""
    name = _cached_name(kernel)
    return _run(kernel, name, _checked_grid(name, grid), args, {**kwargs, **LAUNCH_OPTIONS})


# Triton's interpreter patches triton.language for the length of each launch and restores
# it after, so that two threads' launches at once break each other: one at a time.
_INTERPRETER_LAUNCH = threading.Lock()


def _run(kernel, name: str, grid, args: tuple, options: dict):
    """Count, then (unless ``dry_run``) launch ``kernel[grid](*args, **options)``
    (under the interpreter, one launch at a time in the process)."""
    if not _counted(name):
        return None
    if _ahead is not None:
        return _compile_for(kernel, grid, args, options)
    if _INTERPRETING:
        with _INTERPRETER_LAUNCH:
            return kernel[grid](*args, **options)
    return kernel[grid](*args, **options)


def _counted(name: str) -> bool:
    """Count a launch of kernel ``name``; False under ``dry_run`` (do not launch)."""
    for counter in _counters:
        counter.counts[name] += 1
    return not _dry_run


def bind(kernel, grid, pointers: tuple, num_warps: int, **values):
    """``launch`` of ``kernel[grid]`` with every parameter fixed now but the leading
    ``pointers`` (names, in the kernel's order): returns ``run(*tensors)``, which
    passes them and then the fixed ``values`` positionally (a launch plan binds
    once what its layouts decide; a call with fifty keywords costs ~3 us of Python
    where positional arguments cost ~0.4). The grid is checked here, once. Plain
    jitted kernels only: an autotuner passes its configs' arguments itself
    (``bind_config`` binds the config it chose)."""
    if isinstance(kernel, triton.runtime.Autotuner):
        raise TypeError(f"bind({kernel_name(kernel)}): an autotuned kernel")
    return _bind(kernel, grid, pointers, {"num_warps": num_warps}, values)


def bind_config(tuner, grid, leading: int, constexprs: dict, config):
    """``bind`` of the config an autotuner ``tuner`` chose: ``run(*args)`` launches
    ``tuner.fn`` with the ``leading`` arguments, then ``constexprs`` and the
    config's parameters positionally, its launch options (num_warps, num_stages,
    ...) as keywords, on ``grid`` (a tuple, or a function of the meta-parameters
    evaluated here, once): the launch the autotuner makes with that config,
    without its ~16 us of Python."""
    meta = {**constexprs, **config.all_kwargs()}
    names = list(kernel_parameters(tuner.fn))
    values = {name: meta[name] for name in names[leading:] if name in meta}
    options = {name: value for name, value in meta.items() if name not in values}
    return _bind(tuner.fn, grid(meta) if callable(grid) else grid, tuple(names[:leading]), options, values)


def _bind(kernel, grid, pointers: tuple, options: dict, values: dict):
    names = list(kernel_parameters(kernel))
    given = tuple(names[:len(pointers)])
    if given != tuple(pointers) or set(names[len(pointers):]) != set(values):
        missing = set(names[len(pointers):]) - set(values)
        raise TypeError(f"bind({kernel_name(kernel)}): pointers {pointers} do not lead its parameters {given}, or "
                        f"values miss {sorted(missing)} / add {sorted(set(values) - set(names))}")
    name = _cached_name(kernel)
    grid = _checked_grid(name, grid)
    options = {**options, **LAUNCH_OPTIONS}
    fixed = tuple(float(v) if isinstance(v, float) else v for v in (values[n] for n in names[len(pointers):]))
    if _DIRECT and isinstance(grid, tuple):
        return _direct(kernel, name, grid, fixed, options)

    def run(*tensors):
        return _run(kernel, name, grid, tensors + fixed, options)
    return run


DIRECT_LAUNCHERS = 16       # specialisations kept per bound launch (more go through JITFunction.run)


def _direct(kernel, name: str, grid: tuple, fixed: tuple, options: dict):
    """A bound launch's ``run(*leading)`` on a GPU: the first call of each
    specialisation, (current device, each leading tensor's dtype and whether its
    address is a multiple of 16), goes through ``JITFunction.run``, which compiles
    or finds the kernel for all the arguments' specialisation and returns it; later
    calls go straight to that kernel's launcher (``CompiledKernel[grid]``, the
    launch ``JITFunction.run`` makes, with the same launch hooks), past the ~9 us
    of Python with which Triton re-derives the specialisation and its cache key
    from ~40 arguments at every call (issue #6064 of triton-lang/triton). Tensors
    are all a bound launch's leading arguments can specialise by: its other
    arguments, ints its plan fixed and floats (never specialised), take the same
    specialisation at every call (tests/test_runtime.py checks this against
    Triton's own specialisation of each launch). Triton's settings that enter its
    cache key at each call (debug, instrumentation mode) are read at the first:
    set them before, or run with NNLIB_DIRECT_LAUNCH=0."""
    grid3 = (*grid, 1, 1)[:3]
    launchers: dict = {}

    def run(*leading):
        if not _counted(name):
            return None
        if _ahead is not None:
            return _compile_for(kernel, grid, leading + fixed, options)
        device = _current_device()
        key = (device, *[(t.dtype, t.data_ptr() % 16 == 0) for t in leading if isinstance(t, torch.Tensor)])
        launcher = launchers.get(key)
        if launcher is not None:
            return launcher(*leading, *fixed, stream=_current_stream(device))
        compiled = kernel[grid](*leading, *fixed, **options)
        if compiled is not None and len(launchers) < DIRECT_LAUNCHERS:
            if hasattr(compiled, "result"):     # a future (triton 3.9's AsyncCompileMode): the kernel it holds
                compiled = compiled.result()
            launchers[key] = compiled[grid3]
        return compiled
    return run


PLAN_CACHE_SIZE = 4096      # plans kept per cache (the most recently used)
_plan_caches: list = []     # the caches ``clear_plan_caches`` empties


def plan_cache(build):
    """``build(*key)`` cached per distinct key: a launch plan or a check, which
    depends only on its key (sizes, strides, dtypes, flags, scalar arguments,
    switches; hashable),
    the PLAN_CACHE_SIZE most recently used kept. A key holding symbolic sizes
    (SymInt, which a tracer passes to fake implementations: they do not hash) is
    built each time, and so is every value while torch.compile traces the caller
    (Dynamo would warn about the cache, and trace through it)."""
    values = functools.lru_cache(maxsize=PLAN_CACHE_SIZE)(build)
    _plan_caches.append(values)

    @functools.wraps(build)
    def cached(*key):
        if torch.compiler.is_compiling():
            return build(*key)
        try:
            return values(*key)
        except TypeError:       # a SymInt in the key (a TypeError of build's own is raised again)
            return build(*key)
    return cached


class _NegativeZero(float):
    """-0.0 in a plan key: unequal to every other key (a float -0.0 equals 0.0, so
    a plan built for one would serve the other, whose sign its results can show:
    a running mean of -0.0 moved by a momentum of 0.0 or -0.0). ``bind`` passes
    kernels a plain float."""
    __slots__ = ()

    def __eq__(self, other):
        return type(other) is _NegativeZero

    def __ne__(self, other):
        return type(other) is not _NegativeZero

    def __hash__(self):
        return 0x2D30       # any; equal keys hash alike


_NEGATIVE_ZERO = _NegativeZero(-0.0)
_NAN = float("nan")         # one NaN object: a NaN equals only itself, so every NaN keys as this one


def plan_float(value) -> float:
    """``float(value)`` as a plan key (momentum, eps, a fused activation's slope):
    -0.0 keyed apart from 0.0, every NaN alike."""
    value = float(value)
    if value != value:
        return _NAN
    return value if value or math.copysign(1.0, value) > 0 else _NEGATIVE_ZERO


def clear_plan_caches() -> None:
    """Empty every plan cache (tests that change what plans are built from call it)."""
    for values in _plan_caches:
        values.cache_clear()


def persistent(allocate, device: torch.device) -> torch.Tensor:
    """``allocate()`` (a tensor factory on ``device``) for a buffer kept across calls
    (ticket counters, placeholders), made outside any CUDA graph's private memory
    pool. A pool takes what the thread that captures or warms a graph allocates
    (torch.cuda.graph, a cudagraph tree's warm-up, which may later free the pool
    under tensors it does not track), so on a GPU the buffer is made by a thread of
    ours, which synchronises its stream once (the buffer's fill is done before any
    stream reads it). Inside a capture (no synchronising there) and on CPU: made
    here."""
    if device.type != "cuda" or torch.cuda.is_current_stream_capturing():
        return allocate()
    index = device.index if device.index is not None else torch.cuda.current_device()
    made = []

    def make():
        try:
            with torch.cuda.device(index):
                made.append(allocate())
                torch.cuda.current_stream(index).synchronize()
        except BaseException as error:      # raised again in the caller's thread
            made.append(error)
    thread = threading.Thread(target=make, name="nnlib-persistent")
    thread.start()
    thread.join()
    if isinstance(made[0], BaseException):
        raise made[0]
    return made[0]


@contextlib.contextmanager
def dry_run():
    """Launches inside are counted but not run (outputs stay uninitialised): the
    host benchmark measures nnlib's own Python and device-op counts this way."""
    global _dry_run
    saved, _dry_run = _dry_run, True
    try:
        yield
    finally:
        _dry_run = saved


_ahead = None       # the AsyncCompileMode of ``compile_ahead`` while one runs
_ahead_errors: list = []        # what failed to compile inside it (those launches compile again when they run)


class _CompilePool(ThreadPoolExecutor):
    """``compile_ahead``'s threads: a compile that raises is noted in ``_ahead_errors``
    (the mode, which ignores errors, would drop it) and raises on."""

    def submit(self, fn, /, *args, **kwargs):
        def compile_noting_errors():
            try:
                return fn(*args, **kwargs)
            except Exception as exc:
                _ahead_errors.append(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
                raise
        return super().submit(compile_noting_errors)


@contextlib.contextmanager
def compile_ahead(threads: int | None = None):
    """Inside, a launch compiles its kernel as that launch would (an autotuned one:
    every config its autotuner would time) on a pool of ``threads`` threads (one
    per core; Triton's ``AsyncCompileMode``, whose compiler releases the GIL) and
    runs nothing: outputs stay uninitialised, as under ``dry_run``. Leaving waits
    for every compile, so that the same calls made after it find their kernels
    compiled: a model's first step on a fresh machine compiles ~100 kernels one
    after another otherwise. Run what has no lasting effect inside (a forward and
    backward, not an optimiser step: torch's ops there compute on the uninitialised
    values), on one thread (and autograd's: no other thread may launch nnlib's
    kernels meanwhile, they would run nothing too). What fails to compile is left
    to compile (and raise) when it runs; leaving warns how many failed. Without a
    GPU, without a usable ``AsyncCompileMode`` (triton < 3.5) or with
    NNLIB_PARALLEL_COMPILE=0, nothing is compiled ahead: the launches run."""
    global _ahead
    from triton.runtime import _async_compile
    make_mode = getattr(triton, "AsyncCompileMode", None)
    if (_INTERPRETING or not _PARALLEL_COMPILE or make_mode is None or not torch.cuda.is_available()
            or _ahead is not None):
        yield
        return
    _ahead_errors.clear()
    pool = _CompilePool(threads or _cores())
    try:
        mode = make_mode(pool, ignore_errors=True)
    except Exception:  # noqa: BLE001    (a triton whose mode takes other arguments: launches run)
        pool.shutdown()
        yield
        return
    try:
        with pool, mode:
            _ahead = mode
            try:
                yield
            finally:
                _ahead = None
    finally:
        if _async_compile.active_mode.get() is mode:     # triton 3.6 clears it only after every compile ended
            _async_compile.active_mode.set(None)
    if _ahead_errors:
        warnings.warn(f"nnlib: {len(_ahead_errors)} kernels could not be compiled ahead (they compile when they "
                      f"run); the first: {_ahead_errors[0]}", RuntimeWarning, stacklevel=3)


def compiling_ahead() -> bool:
    """True inside a ``compile_ahead`` that compiles (not one that lets launches run)."""
    return _ahead is not None


def _compile_for(kernel, grid, args: tuple, options: dict) -> None:
    """``compile_ahead``'s stand-in for ``kernel[grid](*args, **options)``: Triton's
    warm-up of that launch under the mode, entered on this thread too while it
    runs (autograd runs a backward's launches on a device thread of its own, which
    the mode's context variable does not reach, and which outlives the mode)."""
    from triton.runtime import _async_compile
    token = _async_compile.active_mode.set(_ahead) if _async_compile.active_mode.get() is None else None
    try:
        kernel.warmup(*args, grid=grid, **options)
    except Exception as exc:  # noqa: BLE001
        _ahead_errors.append(f"{kernel_name(kernel)}: {type(exc).__name__}: {exc}")
    finally:
        if token is not None:
            _async_compile.active_mode.reset(token)


@contextlib.contextmanager
def count_launches():
    """``with count_launches() as c: ...`` then ``c.total`` / ``c.counts[name]``."""
    counter = LaunchCounter()
    _counters.append(counter)
    try:
        yield counter
    finally:
        _counters.remove(counter)


# ---------------------------------------------------------------------------
# Layout helpers

def suggest_memory_format(t: torch.Tensor) -> torch.memory_format:
    """The memory format torch gives the output of a conv / pool / norm of ``t``
    (its suggest_memory_format): see ``memory_format_of``."""
    if t.layout != torch.strided:
        return torch.contiguous_format
    return memory_format_of(t.shape, t.stride())


def memory_format_of(shape, strides) -> torch.memory_format:
    """torch's suggest_memory_format for a strided tensor of ``shape`` / ``strides``:
    channels_last (channels_last_3d at rank 5) when the strides grow through C,
    then the spatial dims from the last, then N; size-1 dims count as torch counts
    them, and ambiguous layouts stay contiguous."""
    rank = len(shape)
    if rank not in (4, 5) or strides[1] == 0:
        return torch.contiguous_format
    lowest = 0
    for d in (1, *range(rank - 1, 1, -1), 0):
        size, stride = shape[d], strides[d]
        if size == 0 or stride < lowest or (d == 0 and lowest == strides[1]):
            return torch.contiguous_format
        lowest = stride * size if size > 1 else stride
    return torch.channels_last if rank == 4 else torch.channels_last_3d


def empty_like_strides(shape, strides) -> tuple:
    """The strides ``torch.empty_like`` gives a strided tensor of ``shape`` /
    ``strides`` (aten's rule): its own when it is non-overlapping and dense, else
    dense strides in the order of its own (aten's infer_dense_strides: the dims
    sorted innermost first by a stable insertion sort on their strides, where a
    stride of 0 compares with nothing and, of equal strides, the smaller dim goes
    first)."""
    if non_overlapping_and_dense(shape, strides):
        return tuple(strides)

    def order(a: int, b: int) -> int:           # > 0: dim a goes after dim b
        if strides[a] == 0 or strides[b] == 0:
            return 0
        if strides[a] != strides[b]:
            return 1 if strides[a] > strides[b] else -1
        return 1 if shape[a] > shape[b] else 0
    dims = list(range(len(shape)))[::-1]
    for i in range(1, len(dims)):
        moving = i
        for j in range(i - 1, -1, -1):
            step = order(dims[j], dims[moving])
            if step > 0:
                dims[j], dims[moving] = dims[moving], dims[j]
                moving = j
            elif step < 0:
                break
    out, stride = [0] * len(shape), 1
    for d in dims:
        out[d] = stride
        stride *= max(shape[d], 1)
    return tuple(out)


def non_overlapping_and_dense(shape, strides) -> bool:
    """torch's ``is_non_overlapping_and_dense``: no elements, or the dims of size >= 2,
    by increasing stride, each as far apart as the ones before hold elements."""
    if 0 in shape:
        return True
    expected = 1
    for size, stride in sorted(((n, s) for n, s in zip(shape, strides) if n >= 2), key=lambda d: d[1]):
        if stride != expected:
            return False
        expected *= size
    return True


def is_dense(t: torch.Tensor) -> bool:
    """True when ``t`` covers exactly ``numel`` consecutive elements of storage in
    some dim order (contiguous, channels_last, any permutation): an elementwise
    kernel can then run over the flat storage without a copy."""
    return t.numel() <= 1 or non_overlapping_and_dense(t.shape, t.stride())


def merge_dims(sizes, strides):
    """Merge consecutive dims into one (size, stride), or None when their strides
    do not form a single arithmetic progression. Size-1 dims are ignored."""
    pairs = [(n, s) for n, s in zip(sizes, strides) if n != 1]
    size = 1
    for n, _ in pairs:
        size *= n
    if size == 0:
        return 0, 1
    if not pairs:
        return 1, 1
    for (n_outer, s_outer), (n_inner, s_inner) in zip(pairs, pairs[1:]):
        if s_outer != s_inner * n_inner:
            return None
    return size, pairs[-1][1]


def view_3d(t: torch.Tensor, dim: int):
    """Describe ``t`` as (outer, C, inner) around ``dim`` without copying:
    returns ``((outer, C, inner), (stride_outer, stride_c, stride_inner))`` or None
    when the dims before or after ``dim`` cannot be merged."""
    before = merge_dims(t.shape[:dim], t.stride()[:dim])
    after = merge_dims(t.shape[dim + 1:], t.stride()[dim + 1:])
    if before is None or after is None:
        return None
    return (before[0], t.shape[dim], after[0]), (before[1], t.stride(dim), after[1])


def max_offset(t: torch.Tensor) -> int:
    """Largest element offset a kernel computes for ``t`` from its data pointer."""
    return max_offset_of(t.shape, t.stride())


def max_offset_of(shape, strides) -> int:
    """``max_offset`` of a tensor of ``shape`` / ``strides``."""
    if 0 in shape:
        return 0
    return sum((n - 1) * abs(s) for n, s in zip(shape, strides))


def offsets_need_int64(shape, strides) -> bool:
    """True when some offset into a tensor of ``shape`` / ``strides`` does not fit in int32."""
    return max_offset_of(shape, strides) >= 2**31 - 1


def needs_int64(*tensors: torch.Tensor) -> bool:
    """True when some offset into these tensors does not fit in int32."""
    return any(t is not None and offsets_need_int64(t.shape, t.stride()) for t in tensors)


# ---------------------------------------------------------------------------
# Argument checks shared by the ops (torch's exception classes)

def check_same_device(op: str, **tensors: torch.Tensor | None) -> None:
    """RuntimeError naming the first tensor not on the first one's device (None skipped)."""
    first_name = first_device = None
    for name, t in tensors.items():
        if t is None:
            continue
        if first_device is None:
            first_name, first_device = name, t.device
        elif t.device != first_device:
            raise RuntimeError(
                f"{op}(): expected all tensors to be on the same device, but '{name}' is on "
                f"{t.device} and '{first_name}' is on {first_device}")


# ---------------------------------------------------------------------------
# Compile cases: what tests/test_compile.py builds for sm_90 and sm_80

@dataclass
class CompileCase:
    """One kernel specialisation to compile ahead of time.

    ``signature`` maps each runtime argument to its Triton type ("*fp16", "i32",
    "fp32"); ``constexprs`` maps constexpr arguments to values. Autotuned
    kernels are compiled once per config of ``kernel.nnlib_configs_for(constexprs,
    capability)`` (the config's kwargs join ``constexprs``); plain kernels use
    ``num_warps`` / ``num_stages``.
    ``tensor_cores`` asks the test to find wgmma (sm_90) / mma (sm_80) in the PTX.
    Pointers compile 16-byte aligned, as torch allocates them; ``divisible`` names
    the integer arguments a launch passes as multiples of 16 (strides of aligned
    rows), which Triton specialises on. ``expect`` states SASS figures the compile
    test asserts on sm_90 (see ``tests/test_compile.py``), e.g. ``{"ldg128_at_least": 2}``.
    """
    kernel: object
    signature: dict
    constexprs: dict = field(default_factory=dict)
    num_warps: int = 4
    num_stages: int = 3
    tensor_cores: bool = False
    label: str = ""
    divisible: tuple = ()
    expect: dict = field(default_factory=dict)

    @property
    def name(self) -> str:
        return kernel_name(self.kernel) + (f"[{self.label}]" if self.label else "")
