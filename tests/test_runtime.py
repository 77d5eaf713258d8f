"""The runtime: backends and the fallback, autotune gating, launch counting,
layout and offset helpers."""
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as TF
import triton
import triton.language as tl

import nnlib
import nnlib.functional as F
from kernels._runtime import (autotune, clear_plan_caches, count_launches, interpreting, is_dense, kernel_name, launch,
                              max_offset, merge_dims, needs_int64, view_3d)


def test_autotune_gating():
    configs = [triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 256})]

    @autotune(configs, key=["n"], interpreter_config=configs[1])
    @triton.jit
    def _fill(out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, offs.to(tl.float32), mask=offs < n)

    assert _fill.nnlib_configs == configs
    assert len(_fill.configs) == (1 if interpreting() else 2)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    out = torch.empty(300, device=device)
    with count_launches() as launches:
        launch(_fill, lambda meta: (triton.cdiv(300, meta["BLOCK"]),), out, 300)
    assert launches.counts["_fill"] == 1
    assert torch.equal(out.cpu(), torch.arange(300, dtype=torch.float32))


@pytest.mark.parametrize("autotuning", [True, False])
def test_autotune_off_times_nothing(autotuning, monkeypatch):
    """On a GPU with NNLIB_AUTOTUNE=0 a launch takes the first config that serves it
    and times nothing (triton 3.6's autotuner would time even a lone config, 0.1 s
    a key); with tuning on, triton's do_bench over 20 ms a config, not 100."""
    from kernels import _runtime
    monkeypatch.setattr(_runtime, "_INTERPRETING", False)
    monkeypatch.setattr(_runtime, "_AUTOTUNING", autotuning)
    configs = [triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 256})]

    @autotune(configs, key=["n"])
    @triton.jit
    def _fill(out_ptr, n, BLOCK: tl.constexpr):
        tl.store(out_ptr + tl.arange(0, BLOCK), 1.0)

    def never_run():
        raise AssertionError("a config was run to time it")
    compiled = []
    monkeypatch.setattr(_runtime, "compile_together", lambda *args: compiled.append(args))
    assert len(_fill.configs) == 2
    kept = _fill.early_config_prune(_fill.configs, {"n": 10}, BLOCK_X=2)
    if autotuning:
        timed = []
        monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: timed.append(kw) or [1.0, 1.0, 1.0])
        assert kept == configs and _fill.do_bench(never_run, quantiles=(0.5, 0.2, 0.8)) == [1.0, 1.0, 1.0]
        assert timed == [{"warmup": 5, "rep": 20, "quantiles": (0.5, 0.2, 0.8)}]
        assert compiled == [(_fill.fn, {"n": 10}, {"BLOCK_X": 2}, configs)]     # compiled at once, then timed
    else:
        assert kept == configs[:1] and _fill.do_bench(never_run, quantiles=(0.5, 0.2, 0.8)) == [0.0, 0.0, 0.0]
        assert not compiled


def test_autotuned_configs_compile_together(monkeypatch):
    """On a GPU, Triton's autotuner meets an autotuned launch's configs compiled:
    its pruning calls ``compile_together``, which warms the launch in each config at
    once under AsyncCompileMode (threads; errors left to the autotuner, which meets
    and reports them) with the launch's arguments and the config's, not the
    autotuner's grid and warmup flag (a real autotuner's launch here, its kernel
    stood in for). A lone config has nothing to gain; a failure warns once and
    leaves compiling to the autotuner from then on."""
    import types
    import warnings
    from kernels import _runtime
    monkeypatch.setattr(_runtime, "_INTERPRETING", False)
    monkeypatch.setattr(_runtime, "_AUTOTUNING", True)
    monkeypatch.setattr(_runtime, "_parallel_compile", [True])
    warmed, ran, modes = [], [], []

    class Jitted(triton.runtime.JITFunction):
        def warmup(self, *args, grid, **kwargs):
            if kwargs["BLOCK"] == 0:
                raise ValueError("cannot compile")
            warmed.append(kwargs)

        def run(self, *args, grid, warmup, **kwargs):
            ran.append((args, kwargs))

    class Mode:
        def __init__(self, pool, ignore_errors):
            modes.append((pool._max_workers, ignore_errors))

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False
    monkeypatch.setattr(triton, "AsyncCompileMode", Mode)
    monkeypatch.setattr(triton.testing, "do_bench", lambda fn, **kw: [1.0, 1.0, 1.0])
    configs = [triton.Config({"BLOCK": 16}, num_warps=4), triton.Config({"BLOCK": 32}, num_warps=8, num_stages=2)]

    @autotune(configs, key=["n"])
    @triton.jit
    def _fill(out_ptr, n, BLOCK: tl.constexpr):
        tl.store(out_ptr + tl.arange(0, BLOCK), 1.0)
    _fill.fn = object.__new__(Jitted)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _fill[(1,)]("out", 10)
    assert warmed == [{"out_ptr": "out", "n": 10, **c.all_kwargs()} for c in configs]
    assert modes == [(min(2, _runtime._cores()), True)] and ran[-1][0] == ("out", 10)
    tuner = types.SimpleNamespace(fn=_fill.fn)
    _runtime.compile_together(tuner, {"out_ptr": "out"}, {"n": 5}, configs[:1])
    assert len(warmed) == 2
    with pytest.warns(RuntimeWarning, match="one by one from now on"):
        _runtime.compile_together(tuner, {}, {"n": 5}, [triton.Config({"BLOCK": 0}), *configs])
    _runtime.compile_together(tuner, {}, {"n": 5}, configs)
    assert len(warmed) == 2 and len(modes) == 2
    monkeypatch.setattr(_runtime, "_parallel_compile", [True])
    monkeypatch.setattr(_runtime, "_PARALLEL_COMPILE", False)      # NNLIB_PARALLEL_COMPILE=0
    _runtime.compile_together(tuner, {}, {"n": 5}, configs)
    assert len(warmed) == 2 and len(modes) == 2


def _new_two_config_fill():
    """A new autotuned kernel of two configs (nothing of it compiled yet): out[i] = i, i < n."""
    configs = [triton.Config({"BLOCK": 64}), triton.Config({"BLOCK": 256})]

    @autotune(configs, key=["n"])
    @triton.jit
    def _fill(out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, offs.to(tl.float32), mask=offs < n)
    return _fill


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiling for a launch needs a CUDA GPU")
def test_autotuned_configs_are_compiled_before_they_are_timed(monkeypatch):
    """On a GPU the first launch of a two-config kernel has both configs compiled
    (in the kernel's cache) before the autotuner times them, without a warning, and
    launches right."""
    import warnings
    from kernels import _runtime
    monkeypatch.setattr(_runtime, "_AUTOTUNING", True)
    monkeypatch.setattr(_runtime, "_parallel_compile", [True])
    _fill = _new_two_config_fill()
    cached = []
    together = _runtime.compile_together

    def spy(fn, named_args, launch_kwargs, configs):
        together(fn, named_args, launch_kwargs, configs)
        cached.append(len(fn.device_caches[torch.cuda.current_device()][0]))
    monkeypatch.setattr(_runtime, "compile_together", spy)
    out = torch.empty(300, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        launch(_fill, lambda meta: (triton.cdiv(300, meta["BLOCK"]),), out, 300)
    assert cached == [2]
    assert torch.equal(out.cpu(), torch.arange(300, dtype=torch.float32))


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA memory pools need a CUDA GPU")
def test_persistent_buffers_stay_out_of_graph_pools():
    """A buffer kept across calls is allocated outside a memory pool that routes this
    thread's allocations (as a CUDA graph capture and a cudagraph tree's warm-up
    do), and is filled when it returns."""
    from kernels._runtime import persistent
    pool = torch.cuda.MemPool()
    with torch.cuda.use_mem_pool(pool):
        routed = torch.empty(1 << 20, device="cuda")
        kept = persistent(lambda: torch.zeros(1 << 20, device="cuda"), routed.device)

    def pool_of(t):
        address = t.untyped_storage().data_ptr()
        return next(tuple(segment["segment_pool_id"]) for segment in torch.cuda.memory_snapshot()
                    if segment["address"] <= address < segment["address"] + segment["total_size"])
    assert pool_of(routed) == tuple(pool.id) and pool_of(kept) != tuple(pool.id)
    assert not kept.any()


@triton.jit
def _mark(out_ptr):
    tl.store(out_ptr + tl.program_id(0), 1.0)


@pytest.mark.parametrize("callable_grid", [False, True])
def test_grid_over_cuda_limits_raises_before_launch(callable_grid):
    """A grid axis over CUDA's limit (65535 programs on axes 1 and 2) raises a
    RuntimeError naming the kernel, on a GPU and in the interpreter alike."""
    out = torch.zeros(4, device="cuda" if torch.cuda.is_available() else "cpu")
    grid = (1, 65536)
    with pytest.raises(RuntimeError, match="_mark: 65536 programs on grid axis 1"):
        launch(_mark, (lambda meta: grid) if callable_grid else grid, out)
    assert not out.any()
    launch(_mark, (4, 1, 1), out)
    assert out.all()


def _tricky_layouts():
    """4-D tensors where simple rules disagree with torch's layout choice."""
    cl = torch.randn(2, 6, 5, 4).contiguous(memory_format=torch.channels_last)
    return {
        "batch1-n-innermost": torch.randn(5, 4, 6, 1).permute(3, 2, 0, 1),
        "channel-sliced-channels-last": torch.randn(2, 12, 5, 4).contiguous(memory_format=torch.channels_last)[:, ::2],
        "channels-last": cl,
        "channels-last-width1": torch.randn(2, 6, 5, 1).contiguous(memory_format=torch.channels_last),
        "c1-channels-last": torch.randn(2, 1, 5, 4).contiguous(memory_format=torch.channels_last),
        "transposed-hw": torch.randn(2, 6, 4, 5).transpose(2, 3),
        "nhwc-sliced-width": cl[..., ::2],
    }


@pytest.mark.parametrize("name", list(_tricky_layouts()))
def test_outputs_take_torchs_memory_format(name, device):
    """conv2d, max_pool2d, batch_norm and group_norm outputs are laid out as torch
    lays out its own (kernels._runtime.suggest_memory_format; batch norm's extra rule)."""
    x = _tricky_layouts()[name]
    C = x.shape[1]
    w = torch.randn(3, C, 1, 1)
    calls = [(F.conv2d, TF.conv2d, (w,)), (F.max_pool2d, TF.max_pool2d, (1,)),
             (F.batch_norm, TF.batch_norm, (None, None, None, None, True)), (F.group_norm, TF.group_norm, (1,))]
    for ours, reference, args in calls:
        expected = reference(x, *args)
        out = ours(x.to(device), *(a.to(device) if isinstance(a, torch.Tensor) else a for a in args))
        assert out.stride() == expected.stride(), f"{ours.__name__}: {out.stride()} != {expected.stride()}"


def test_layout_helpers():
    x = torch.empty(2, 3, 4, 5)
    assert is_dense(x) and is_dense(x.permute(0, 2, 3, 1)) and not is_dense(x[..., ::2])
    assert merge_dims((2, 3), (12, 4)) == (6, 4)
    assert merge_dims((2, 3), (1, 2)) is None
    cl = x.contiguous(memory_format=torch.channels_last)
    assert view_3d(cl, 1) == ((2, 3, 20), (60, 1, 3))
    assert view_3d(x, 1) == ((2, 3, 20), (60, 20, 1))
    assert max_offset(x) == 119 and not needs_int64(x)
    assert max_offset(torch.empty(0)) == 0
    assert needs_int64(torch.empty(1).expand(2**31 + 1)) is False      # stride 0: offsets stay 0
    assert needs_int64(torch.empty_strided((2,), (2**31,), device="meta"))


def test_backend_and_fallback(device):
    assert nnlib.backend(torch.empty(1, device=device)) in ("triton", "triton-interpreter")
    assert nnlib.backend(torch.empty(1, dtype=torch.float64, device=device)) == "torch"
    with count_launches() as launches:
        x = torch.randn(3, dtype=torch.float64, device=device)
        assert torch.equal(F.relu(x), TF.relu(x))
    assert launches.total == 0
    # Without the interpreter, CPU tensors take torch's path and no kernel runs.
    code = ("import torch, nnlib, nnlib.functional as F\n"
            "x = torch.randn(4)\n"
            "with nnlib.count_launches() as c: y = F.relu(x)\n"
            "assert nnlib.backend(x) == 'torch' and c.total == 0 and torch.equal(y, x.clamp(min=0))\n"
            "print('ok')")
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["CUDA_VISIBLE_DEVICES"] = ""
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]


_NO_KERNEL_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2, torch.float8_e8m0fnu, torch.uint16, torch.uint32,
                     torch.uint64)


def _every_op(f) -> dict:
    """Each op of ``f`` (nnlib.functional or torch's) as a function of x (1, 2, H, W)."""
    def ones(x, *shape):
        return torch.ones(shape, device=x.device).to(x.dtype)
    return {"relu": f.relu, "relu_": f.relu_, "leaky_relu": f.leaky_relu, "prelu": lambda x: f.prelu(x, ones(x, 1)),
            "batch_norm": lambda x: f.batch_norm(x, None, None, training=True), "instance_norm": f.instance_norm,
            "layer_norm": lambda x: f.layer_norm(x, x.shape[1:]), "group_norm": lambda x: f.group_norm(x, 1),
            "max_pool2d": lambda x: f.max_pool2d(x, 2), "conv2d": lambda x: f.conv2d(x, ones(x, 1, 2, 1, 1))}


@pytest.mark.parametrize("dtype", _NO_KERNEL_DTYPES, ids=str)
def test_data_the_kernels_do_not_take_goes_to_torch(dtype, device):
    """float8 and unsigned integers wider than 8 bits take torch's path: torch's
    exception (most ops refuse them) or its result, never a kernel."""
    assert nnlib.backend(torch.empty(1, device=device, dtype=dtype)) == "torch"
    x = torch.tensor([0.5, 1.0, 2.0, 4.0] * 4, device=device).view(1, 2, 2, 4).to(dtype)
    ours, theirs = _every_op(F), _every_op(TF)
    for name, op in ours.items():
        try:
            want = theirs[name](x.clone())
        except Exception as error:
            with count_launches() as launches, pytest.raises(type(error)):
                op(x.clone())
        else:
            with count_launches() as launches:
                got = op(x.clone())
            assert torch.equal(got.view(torch.uint8), want.view(torch.uint8)), name
        assert launches.total == 0, name


def test_threads_launch_at_once(device):
    """A module called from several threads at once gives each its result: under the
    interpreter (which patches triton.language for each launch) the launches take
    turns; on a GPU they share the default stream."""
    import threading
    torch.manual_seed(0)
    conv = nnlib.Conv2d(3, 4, 3, padding=1).to(device)
    inputs = [torch.randn(2, 3, 6, 5, device=device) for _ in range(4)]
    expected = [TF.conv2d(x, conv.weight, conv.bias, padding=1) for x in inputs]
    results, errors = {}, []

    def work(i):
        try:
            with torch.no_grad():
                for _ in range(3):
                    results[i] = conv(inputs[i])
        except Exception as e:  # noqa: BLE001 -- reported below
            errors.append(e)
    with count_launches() as one_call, torch.no_grad():
        conv(inputs[0])
    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    with count_launches() as launches:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert not errors, errors[0]
    assert launches.total == 12 * one_call.total > 0
    for i, want in enumerate(expected):
        torch.testing.assert_close(results[i], want.detach(), atol=1e-4, rtol=1e-4)


def test_outgrown_ticket_buffers_stay_alive():
    """A ticket buffer replaced by a larger one is kept alive (a CUDA graph captured
    before the growth still launches on it), zero, and the new one is zero too."""
    import weakref
    from kernels import _reduce
    device = torch.device("cpu")
    first = _reduce.tickets(device, 1)
    alive = weakref.ref(first)
    grown = _reduce.tickets(device, first.numel() + 1)
    assert grown.numel() > first.numel() and grown.data_ptr() != first.data_ptr()
    del first
    assert alive() is not None and not alive().any() and not grown.any()
    assert _reduce.tickets(device, 1) is grown


def test_interpreter_under_triton_3_6():
    """Triton 3.6 (torch 2.11's) runs the kernels in its interpreter with NumPy 2.4,
    whose int() refuses the 1-element arrays that interpreter indexes loops with
    (``_index_scalars_as_later_interpreters``): values as torch's."""
    from kernels._compile import triton_path
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    path = triton_path("3.6")
    if not os.path.isdir(path):
        pytest.skip(f"triton 3.6 is not installed at {path} (make test installs it)")
    code = ("import os; os.environ['TRITON_INTERPRET'] = '1'\n"
            "import torch, triton, torch.nn.functional as TF, nnlib, nnlib.functional as F\n"
            "assert triton.__version__.startswith('3.6'), triton.__version__\n"
            "x, w = torch.randn(2, 6, 5, 7), torch.randn(4, 6, 3, 3)\n"
            "with nnlib.count_launches() as launches:\n"
            "    y, z = F.group_norm(x, 3), F.conv2d(x, w, padding=1)\n"
            "assert launches.total >= 2, launches\n"       # the interpreter ran them, not torch's path
            "torch.testing.assert_close(y, TF.group_norm(x, 3), atol=1e-5, rtol=1e-5)\n"
            "torch.testing.assert_close(z, TF.conv2d(x, w, padding=1), atol=1e-4, rtol=1e-4)\n"
            "print('ok')")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([path, root])}
    proc = subprocess.run([sys.executable, "-c", code], cwd=root, env=env, capture_output=True, text=True, timeout=600)
    assert proc.stdout.strip() == "ok", proc.stderr[-3000:]


def _specialisation(args) -> tuple:
    """Triton's specialisation of a launch's arguments (what ``JITFunction.run``
    compiles a kernel for): a tensor's dtype and 16-byte alignment, an int's
    divisibility by 16 (1 as a constant), a float's type; other values as they are."""
    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    return tuple(native_specialize_impl(BaseBackend, a, False, True, True)
                 if a is None or isinstance(a, (torch.Tensor, int, float)) else a for a in args)


@pytest.fixture
def direct_launches(monkeypatch):
    """The GPU's direct launches (``kernels._runtime._direct``), simulated in the
    interpreter: a launch through the jitted kernel returns a stand-in for the
    kernel Triton compiled, which remembers Triton's specialisation of that launch;
    its launcher asserts that every launch it takes has the same, then runs it.
    Yields the names of the kernels launched directly."""
    from triton.runtime.interpreter import InterpretedFunction
    from kernels import _runtime
    run, direct = InterpretedFunction.run, []

    class Compiled:
        def __init__(self, fn, args, options):
            self.fn, self.specialisation, self.options = fn, _specialisation(args), options

        def __getitem__(self, grid):
            def launcher(*args, stream):
                assert stream == "stream of 0"
                assert _specialisation(args) == self.specialisation, f"{self.fn.__name__}: another specialisation"
                direct.append(self.fn.__name__)
                run(self.fn, *args, grid=grid, warmup=False, **self.options)
            return launcher

    def compiling_run(self, *args, grid, warmup, **options):
        run(self, *args, grid=grid, warmup=warmup, **options)
        return Compiled(self, args, options)
    monkeypatch.setattr(InterpretedFunction, "run", compiling_run)
    monkeypatch.setattr(_runtime, "_DIRECT", True)
    monkeypatch.setattr(_runtime, "_current_device", lambda: 0, raising=False)
    monkeypatch.setattr(_runtime, "_current_stream", lambda device: f"stream of {device}", raising=False)
    clear_plan_caches()
    try:
        yield direct
    finally:
        clear_plan_caches()     # their launches are bound to the stand-ins


@pytest.mark.skipif(not interpreting(), reason="stands in for a GPU's direct launches in the interpreter; on a GPU "
                    "`python -m bench.launches` checks the real ones")
def test_direct_launches_reuse_only_kernels_of_their_specialisation(direct_launches):
    """On a GPU a bound launch (conv and the stem's padded copies, norms, activations,
    prelu, max pool and its double backward) reuses the kernel Triton compiled for
    an earlier call of the same specialisation, found by the tensors' dtypes and
    alignment alone: calls of one plan in another dtype (a norm's plan is
    dtype-blind) or at an address off 16 bytes take Triton's path and their own
    kernel, and every direct launch has exactly the specialisation its kernel was
    compiled for (ints fixed by its plan, floats free)."""
    torch.manual_seed(0)
    w = torch.randn(16, 16, 3, 3, requires_grad=True)
    for slope in (0.1, 0.2, 0.1):
        x = torch.randn(2, 16, 6, 5, requires_grad=True)
        y = F.conv2d(x, w, padding=1, activation="leaky_relu", negative_slope=slope)
        dx, dw = torch.autograd.grad(y.square().sum(), (x, w))
        ref = TF.leaky_relu(TF.conv2d(x.double(), w.double(), padding=1), slope)
        rdx, rdw = torch.autograd.grad(ref.square().sum(), (x, w))
        for ours, theirs in ((y, ref), (dx, rdx), (dw, rdw)):
            torch.testing.assert_close(ours.double(), theirs.double(), atol=1e-3, rtol=1e-4)
    assert {"_conv_fwd_gemm_kernel", "_conv_dgrad_gemm_kernel", "_conv_wgrad_gemm_kernel"} <= set(direct_launches)
    conv_launches = len(direct_launches)
    storage = torch.randn(2 * 4 * 6 * 5 + 1)
    inputs = [storage[:-1].view(2, 4, 6, 5), storage[:-1].view(2, 4, 6, 5).half(),
              storage[1:].view(2, 4, 6, 5), storage[:-1].view(2, 4, 6, 5)]     # fp32, fp16, 4 bytes off, fp32
    for x in inputs:
        x = x.detach().requires_grad_()
        weight = torch.randn(4, dtype=x.dtype, requires_grad=True)
        y = F.batch_norm(x, None, None, weight, None, True)
        dx, = torch.autograd.grad(y.float().square().sum(), x)
        ref = TF.batch_norm(x.double(), None, None, weight.double(), None, True)
        rdx, = torch.autograd.grad(ref.square().sum(), x)
        tolerance = 2e-3 if x.dtype == torch.half else 1e-5
        torch.testing.assert_close(y.double(), ref, atol=tolerance, rtol=tolerance)
        torch.testing.assert_close(dx.double(), rdx.double(), atol=tolerance * 10, rtol=tolerance * 10)
    assert len(direct_launches) > conv_launches
    for x, slope in zip(inputs, (0.1, 0, 0.1, 0.2)):
        x = x.detach().requires_grad_()
        y = F.max_pool2d(F.leaky_relu(x, slope), 2)
        dx, = torch.autograd.grad(y.float().square().sum(), x)
        ref = TF.max_pool2d(TF.leaky_relu(x.double(), slope), 2)
        rdx, = torch.autograd.grad(ref.square().sum(), x)
        torch.testing.assert_close(y.double(), ref, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(dx.double(), rdx.double(), atol=1e-2, rtol=1e-3)
    assert {"_activation_fwd_kernel", "_activation_bwd_kernel", "_max_pool2d_fwd_kernel",
            "_max_pool2d_bwd_kernel"} <= set(direct_launches)
    stem_w = torch.randn(32, 3, 5, 5, requires_grad=True)      # a FLAT pass: x, w padded to 4 channels
    for slopes in [torch.full((32,), 0.25)] * 2 + [torch.tensor([0.25])] * 2:    # per channel, shared
        x = torch.randn(2, 3, 13, 11, requires_grad=True)
        slopes = slopes.detach().requires_grad_()
        y = F.prelu(F.conv2d(x, stem_w, stride=2, padding=1), slopes)
        grads = torch.autograd.grad(y.square().sum(), (x, stem_w, slopes))
        ref = TF.prelu(TF.conv2d(x.double(), stem_w.double(), stride=2, padding=1), slopes.double())
        ref_grads = torch.autograd.grad(ref.square().sum(), (x, stem_w, slopes))
        for ours, theirs in zip((y, *grads), (ref, *ref_grads)):
            torch.testing.assert_close(ours.double(), theirs.double(), atol=1e-3, rtol=1e-4)
    for _ in range(2):      # max pool's double backward: its gather
        x = torch.randn(2, 4, 6, 5, requires_grad=True)
        probe = torch.randn(2, 4, 6, 5)
        gathered = []
        for f in (F.max_pool2d, TF.max_pool2d):
            y = f(x, 2)
            g = torch.randn_like(y).requires_grad_()
            dx, = torch.autograd.grad(y, x, g, create_graph=True)
            gathered += torch.autograd.grad(dx, g, probe)
        torch.testing.assert_close(*gathered)
    assert {"_pad_channels_kernel", "_sum_partials_kernel", "_max_pool2d_gather_kernel"} <= set(direct_launches)
    # each prelu plan (per channel, shared) direct at its second call
    assert direct_launches.count("_prelu_fwd_kernel") == direct_launches.count("_prelu_bwd_kernel") == 2


def test_direct_launch_keeps_the_kernel_a_future_holds(monkeypatch):
    """Under triton 3.9's AsyncCompileMode, JITFunction.run returns a future of the
    compiled kernel (no ``[grid]``): the direct launch keeps the kernel it holds."""
    from kernels import _runtime
    monkeypatch.setattr(_runtime, "_current_device", lambda: 0, raising=False)
    monkeypatch.setattr(_runtime, "_current_stream", lambda device: "stream", raising=False)
    launched = []

    class Compiled:
        def __getitem__(self, grid):
            return lambda *args, stream: launched.append((grid, args, stream))

    class Future:
        def result(self):
            return Compiled()

    class Kernel:
        def __getitem__(self, grid):
            return lambda *args, **options: launched.append((grid, args, options)) or Future()
    run = _runtime._direct(Kernel(), "kernel", (2,), (7,), {"num_warps": 4})
    x = torch.zeros(4)
    run(x)
    run(x)
    assert launched == [((2,), (x, 7), {"num_warps": 4}), ((2, 1, 1), (x, 7), "stream")]


def test_every_launch_asks_for_fused_multiply_adds(monkeypatch):
    """Every launch passes ``enable_fp_fusion=True`` (``LAUNCH_OPTIONS``), through
    the autotuner (conv's GEMM passes), bound plans (norms, activations, max pool,
    depthwise) and ``launch``: multiply-adds fused as the SASS budgets count them,
    whatever TRITON_DEFAULT_FP_FUSION says (triton 3.9 warns at a launch that
    leaves it to that variable; 3.10's default is off). Each plan's first call goes
    through ``run`` on a GPU too (later ones launch what it compiled)."""
    from triton.runtime.interpreter import InterpretedFunction
    cls = InterpretedFunction if interpreting() else triton.runtime.JITFunction
    run, seen = cls.run, []

    def recording_run(self, *args, **options):
        seen.append((kernel_name(self), options.get("enable_fp_fusion")))
        return run(self, *args, **options)
    monkeypatch.setattr(cls, "run", recording_run)
    clear_plan_caches()
    try:
        torch.manual_seed(0)
        device = "cuda" if torch.cuda.is_available() else "cpu"
        x = torch.randn(2, 16, 6, 5, device=device, requires_grad=True)
        w = torch.randn(16, 16, 3, 3, device=device, requires_grad=True)
        depthwise = torch.randn(16, 1, 3, 3, device=device, requires_grad=True)
        y = F.conv2d(x, w, padding=1) + F.conv2d(x, depthwise, padding=1, groups=16)
        y = F.max_pool2d(F.relu(F.batch_norm(y, None, None, training=True)), 2)
        F.prelu(y, torch.full((1,), 0.25, device=device)).square().sum().backward()
    finally:
        clear_plan_caches()
    kernels = {name for name, _ in seen}
    assert {"_conv_fwd_gemm_kernel", "_conv_dgrad_gemm_kernel", "_conv_wgrad_gemm_kernel", "_activation_fwd_kernel",
            "_max_pool2d_fwd_kernel", "_prelu_bwd_kernel"} <= kernels, kernels
    assert all(fused is True for _, fused in seen), sorted({name for name, fused in seen if fused is not True})


def test_compile_ahead_compiles_instead_of_launching(monkeypatch):
    """Inside ``compile_ahead`` (a GPU stood in for) a launch, through ``launch``
    or a bound (direct) launch, is Triton's warm-up of that launch under the mode,
    on any thread (a backward's launches run on autograd's: the mode is entered
    there for the warm-up and left after it), and nothing runs or is kept: an
    autotuned plan binds no config. What fails to compile, at the warm-up or on
    the pool, is left to its launch and counted in a warning as it ends. Without a
    GPU the launches run."""
    import threading
    import warnings
    from triton.runtime import _async_compile
    from kernels import _runtime
    from kernels.conv import ops as conv_ops

    @triton.jit
    def _fill(out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.arange(0, BLOCK)
        tl.store(out_ptr + offs, 1.0, mask=offs < n)
    out = torch.zeros(8)
    warmed = []

    def warmup(*args, grid, **kwargs):
        if args[1] < 0:
            raise ValueError("cannot bind")
        if args[1] == 0:        # fails on the pool, as a compile does
            _async_compile.active_mode.get().executor.submit(lambda: 1 / 0)
        warmed.append((args, grid, kwargs, _async_compile.active_mode.get()))
    monkeypatch.setattr(_fill, "warmup", warmup, raising=False)
    with _runtime.compile_ahead():      # no GPU: launches run
        assert not _runtime.compiling_ahead()
        launch(_fill, (1,), out, 3, BLOCK=8)
    assert out.sum() == 3 and not warmed
    monkeypatch.setattr(_runtime, "_INTERPRETING", False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    out.zero_()

    class Unlaunchable:         # a bound launch's kernel: warmed, never launched
        def warmup(self, *args, grid, **options):
            warmed.append((args, grid, options, _async_compile.active_mode.get()))

        def __getitem__(self, grid):
            raise AssertionError("launched inside compile_ahead")
    direct = _runtime._direct(Unlaunchable(), "bound", (4,), (7,), {"num_warps": 2})
    tuner = type("Tuner", (), {"best_config": "chosen", "warmup": lambda self, *a, grid, **k: None})()
    tuned = conv_ops._tuned_launch(tuner, (1,), BLOCK=8)
    left_on_thread = []

    def backward_thread():
        launch(_fill, (2,), out, 5, BLOCK=8)
        left_on_thread.append(_async_compile.active_mode.get())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with count_launches() as launches, _runtime.compile_ahead(threads=2):
            mode = _runtime._ahead
            assert _runtime.compiling_ahead()
            launch(_fill, (1,), out, 3, BLOCK=8)
            thread = threading.Thread(target=backward_thread)
            thread.start()
            thread.join()
            direct(out)
            tuned(out)
    assert out.sum() == 0 and launches.counts["_fill"] == 2 and launches.counts["bound"] == 1
    launched = {"BLOCK": 8, "enable_fp_fusion": True}       # launch() adds LAUNCH_OPTIONS
    assert warmed == [((out, 3), (1,), launched, mode), ((out, 5), (2,), launched, mode),
                      ((out, 7), (4,), {"num_warps": 2}, mode)]
    assert left_on_thread == [None] and _async_compile.active_mode.get() is None and not _runtime.compiling_ahead()
    assert tuner.best_config is None        # nothing chosen, so nothing bound: the next launch tunes
    with pytest.warns(RuntimeWarning, match="3 kernels could not be compiled ahead"):
        with _runtime.compile_ahead():
            launch(_fill, (1,), out, -1, BLOCK=8)
            launch(_fill, (1,), out, -2, BLOCK=8)
            launch(_fill, (1,), out, 0, BLOCK=8)
    assert out.sum() == 0 and len(warmed) == 4
    monkeypatch.setattr(_runtime, "_PARALLEL_COMPILE", False)      # NNLIB_PARALLEL_COMPILE=0: launches run
    with _runtime.compile_ahead():
        launch(_fill, (1,), out, 3, BLOCK=8)
    assert out.sum() == 3 and len(warmed) == 4


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiling for a launch needs a CUDA GPU")
def test_compile_ahead_leaves_nothing_to_compile(monkeypatch):
    """On a GPU, a new autotuned kernel's launch inside ``compile_ahead`` compiles
    both its configs (Triton's compile hook sees them) and runs nothing; the same
    launch after it compiles nothing, tunes and runs right."""
    import warnings
    from kernels import _runtime
    monkeypatch.setattr(_runtime, "_AUTOTUNING", True)
    compiles = []
    monkeypatch.setattr(triton.knobs.runtime, "jit_cache_hook", lambda **kwargs: compiles.append(1) and False)
    _fill = _new_two_config_fill()
    out = torch.zeros(300, device="cuda")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with _runtime.compile_ahead():
            launch(_fill, lambda meta: (triton.cdiv(300, meta["BLOCK"]),), out, 300)
        torch.cuda.synchronize()
        assert len(compiles) == 2 and not out.any()
        launch(_fill, lambda meta: (triton.cdiv(300, meta["BLOCK"]),), out, 300)
    assert len(compiles) == 2
    assert torch.equal(out.cpu(), torch.arange(300, dtype=torch.float32))
