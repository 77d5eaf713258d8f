"""How a norm call is laid out: its (N, C, S) views, the tiling of the looped
and single-read paths, the ticket counters the kernels merge with, and each
launch's arguments that follow from them (``LaunchPlan``, from which
``ops``'s launch plans are built). Everything here depends only on sizes,
strides and the call's geometry, and is cached by them (``by_layout``)."""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import torch

from .._runtime import cdiv, memory_format_of, merge_dims, next_power_of_2, offsets_need_int64, plan_cache

# Tiling. A GPU tile holds TILE elements (8 per thread at NUM_WARPS warps: 16-byte
# accesses of 2-byte types); the interpreter, which pays per program and per loop
# iteration, gets INTERPRETER_TILE. When channels are innermost (channels_last) a
# tile is at most CHANNELS_LAST_WIDTH channels wide, else at most ROW_CHANNELS
# channels of long rows. The reduction over (n, S) is split until about
# TARGET_PROGRAMS programs run, none with fewer than MIN_PROGRAM_ELEMENTS elements.
# Merges read tiles of about MERGE_TILE partials of a block's channels (BLOCK_K rows of
# BLOCK_C), and at least STAT_MERGE_TILE of its statistics (BLOCK_KG rows of BLOCK_G).
# (BLOCK_K served both until 2026-11-30: a layer norm's one statistic per sample then
# merged its 392 partials one at a time; on an H200 its forward over 32 x 802816 took
# 1.38 ms, 74 GB/s, about what 16 x 392 merges one after another in L2 cost; not
# re-timed yet. 1024 statistics a tile spilled a group norm's kernel under triton 3.6.)
# Tests lower these to force loops and splits on small shapes.
TILE = 2048
INTERPRETER_TILE = 1 << 14
CHANNELS_LAST_WIDTH = 64
ROW_CHANNELS = 16
TARGET_PROGRAMS = 1024
INTERPRETER_TARGET_PROGRAMS = 1
MIN_PROGRAM_ELEMENTS = 4096
MERGE_TILE = 1024
STAT_MERGE_TILE = 256
MERGE_CHANNELS = 256        # channels per program of the merge across processes
NUM_WARPS = 8
# The single-read path holds a statistic's whole set (padded to powers of two) in
# registers when it has at most SET_LIMIT elements (16 per thread at NUM_WARPS warps:
# the backward then needs 90-160 registers, spill-free; 8192 would spill or leave one
# CTA per SM), SET_TILE or so per tile.
# Layer norm rows run on at most ROW_PROGRAMS programs (each loops over rows), which
# bounds the parameter-gradient partials they leave for a column sum.
SET_LIMIT = 4096
SET_TILE = 2048
ROW_PROGRAMS = 256


class Geometry(NamedTuple):
    """How a norm reads its input. Dims [0, lead) form n, [lead, lead + chan) the
    channels, the rest S, each merged through strides. Statistics cover ``groups``
    groups of consecutive channels, per sample (``per_sample``) or over the whole
    batch; the output keeps a channels_last input's memory format when
    ``keep_format``, else it is contiguous (as torch). A named tuple: built, hashed
    and compared (a plan cache key) at C speed."""
    lead: int
    chan: int
    groups: int
    per_sample: bool
    keep_format: bool


def by_layout(build):
    """``build(layouts, *args) -> value`` as ``cached(tensors, *args)``: each tensor's
    layout, (shape, stride) or None for None, is passed in its place, and the value is
    cached per distinct (layouts, *args) (``plan_cache``; args hashable).
    ``cached.of_layouts(layouts, *args)``: the same from layouts (a plan built from
    other plans)."""
    of_layouts = plan_cache(build)

    @functools.wraps(build)
    def cached(tensors, *args):
        return of_layouts(tuple([None if t is None else (t.shape, t.stride()) for t in tensors]), *args)
    cached.of_layouts = of_layouts
    return cached


def _describe(shape, stride, lead: int, chan: int):
    """((N, C, S), (stride_n, stride_c, stride_s)) of a tensor of this layout, or None
    when a part's dims cannot be merged into one stride."""
    bounds = (0, lead, lead + chan, len(shape))
    sizes, strides = [], []
    for lo, hi in zip(bounds, bounds[1:]):
        merged = merge_dims(shape[lo:hi], stride[lo:hi])
        if merged is None:
            return None
        sizes.append(merged[0])
        strides.append(merged[1])
    return tuple(sizes), tuple(strides)


@by_layout
def _mergeable(layouts, lead: int, chan: int) -> bool:
    """``mergeable`` of a tensor of this layout."""
    return _describe(*layouts[0], lead, chan) is not None


def mergeable(t: torch.Tensor, geom: Geometry) -> bool:
    """True when the kernels can read ``t`` as (N, C, S) through strides (no copy):
    always when ``t`` is contiguous, or channels_last with one dim each for N and C
    (its (H, W) merge), else per its layout (cached)."""
    return (t.is_contiguous()
            or (geom.lead == 1 and geom.chan == 1 and t.is_contiguous(memory_format=torch.channels_last))
            or _mergeable((t,), geom.lead, geom.chan))


def ncs_views(layouts, geom: Geometry):
    """Describe the layouts of tensors of one shape (None allowed; each ``mergeable``)
    as (N, C, S): returns ((N, C, S), strides per tensor, (0, 0, 0) for None). Batch
    statistics fold n into S, (1, C, N * S), where every tensor allows it
    (channels_last)."""
    strides, sizes = [], None
    for layout in layouts:
        if layout is None:
            strides.append((0, 0, 0))
            continue
        sizes, stride = _describe(*layout, geom.lead, geom.chan)
        strides.append(stride)
    N, C, S = sizes
    if not geom.per_sample and N > 1:
        merged = [None if l is None else merge_dims((N, S), (st[0], st[2])) for l, st in zip(layouts, strides)]
        if all(m is not None for l, m in zip(layouts, merged) if l is not None):
            sizes = (1, C, N * S)
            strides = [st if m is None else (0, st[1], m[1]) for st, m in zip(strides, merged)]
    return sizes, strides


def empty_output(x: torch.Tensor, geom: Geometry, dtype: torch.dtype | None) -> torch.Tensor:
    """torch.empty of ``dtype`` (None: x's) in torch's layout: layer / instance norm
    contiguous; group norm the memory format torch suggests for x; batch norm that,
    or channels_last whenever x is a non-contiguous channels_last-dense tensor
    (torch's kernel tests that first)."""
    return torch.empty_strided(x.shape, output_stride((x,), geom.keep_format, geom.per_sample),
                               dtype=x.dtype if dtype is None else dtype, device=x.device)


@by_layout
def output_stride(layouts, keep_format: bool, per_sample: bool) -> tuple:
    """Strides of ``empty_output`` for an x of this layout."""
    (shape, stride), = layouts
    fmt = torch.contiguous_format
    if keep_format:
        fmt = memory_format_of(shape, stride)
        channels_last = {4: torch.channels_last, 5: torch.channels_last_3d}.get(len(shape))
        probe = torch.empty_strided(shape, stride, device="meta")
        if (not per_sample and channels_last is not None and not probe.is_contiguous()
                and probe.is_contiguous(memory_format=channels_last)):
            fmt = channels_last
    return torch.empty(shape, device="meta", memory_format=fmt).stride()


def _full_blocks(C: int, Cg: int, GPB: int, BPG: int, BLOCK_C: int) -> bool:
    """True when every channel block (GPB groups, or 1 / BPG of a group) is BLOCK_C
    channels, so that the kernels need no channel mask."""
    if BPG > 1:
        return Cg % BLOCK_C == 0
    return GPB * Cg == BLOCK_C and C % BLOCK_C == 0


# ---------------------------------------------------------------------------
# The looped path

@dataclass(frozen=True)
class LoopPlan:
    """The tiling every looped kernel of one call shares. A channel block is GPB
    whole groups (BPG == 1) or 1 / BPG of a group; a program covers one channel
    block, n_per_prog samples and s_per_prog positions (a multiple of BLOCK_S)."""
    N: int
    C: int
    S: int
    G: int
    BLOCK_S: int
    BLOCK_C: int
    BLOCK_G: int
    GPB: int
    BPG: int
    n_per_prog: int
    num_n_chunks: int
    s_per_prog: int
    num_s_chunks: int

    @property
    def Cg(self) -> int:
        return self.C // self.G

    @property
    def num_group_blocks(self) -> int:
        return cdiv(self.G, self.GPB)

    @property
    def grid(self):
        return (self.num_group_blocks * self.BPG * self.num_n_chunks * self.num_s_chunks,)

    def chunks(self, per_sample: bool) -> int:
        """Partials per statistic."""
        return self.BPG * self.num_s_chunks * (1 if per_sample else self.num_n_chunks)

    def num_stats(self, per_sample: bool) -> int:
        return self.N * self.G if per_sample else self.G

    def tickets(self) -> int:
        """Ticket counters a looped kernel of this plan may use."""
        return self.grid[0] + self.num_group_blocks * self.BPG + 1

    def shape_args(self) -> dict:
        """The launch arguments every looped kernel takes from the plan."""
        return dict(N=self.N, C=self.C, S=self.S, G=self.G, Cg=self.Cg, GPB=self.GPB, BPG=self.BPG,
                    group_width=self.GPB * self.Cg, n_per_prog=self.n_per_prog, num_n_chunks=self.num_n_chunks,
                    s_per_prog=self.s_per_prog, num_s_chunks=self.num_s_chunks)

    @property
    def full_blocks(self) -> bool:
        """Every channel block holds exactly BLOCK_C channels (and BLOCK_G groups)."""
        return _full_blocks(self.C, self.Cg, self.GPB, self.BPG, self.BLOCK_C)

    def blocks(self, merging: str = "") -> dict:
        """The constexpr tiling of a launch."""
        out = {"BLOCK_S": self.BLOCK_S, "BLOCK_C": self.BLOCK_C, "BLOCK_G": self.BLOCK_G,
               "FULL_BLOCKS": self.full_blocks}
        if merging:         # "statistics" (BLOCK_KG), "channels" (and statistics: BLOCK_K too)
            out["BLOCK_KG"] = max(1, MERGE_TILE // self.BLOCK_C, STAT_MERGE_TILE // self.BLOCK_G)
        if merging == "channels":
            out["BLOCK_K"] = max(1, MERGE_TILE // self.BLOCK_C)
        return out


def loop_plan(sizes, G: int, stride_c: int, stride_s: int, interpreter: bool) -> LoopPlan:
    """The looped tiling of (N, C, S) in G groups, x's channel and position strides."""
    N, C, S = sizes
    tile = INTERPRETER_TILE if interpreter else TILE
    Cg = C // G
    if stride_c == 1 and stride_s != 1 and S > 1 and C > 1:
        # Channels innermost: a tile is a few positions of many channels.
        width = min(tile, CHANNELS_LAST_WIDTH * max(1, tile // TILE))
    else:
        # Positions innermost: long rows of few channels (at most ROW_CHANNELS on a
        # GPU, to bound the per-channel vectors each thread holds); one position
        # (layer norm): a row of channels.
        width = max(1, tile // next_power_of_2(S))
        if S > 1 and not interpreter:
            width = min(width, ROW_CHANNELS)
    if Cg >= width:
        bpg, gpb, block_c = cdiv(Cg, width), 1, width
    else:
        bpg, gpb = 1, min(width // Cg, G)
        block_c = next_power_of_2(gpb * Cg)
    block_g = next_power_of_2(gpb) if Cg > 1 else block_c
    block_s = min(next_power_of_2(S), max(1, tile // block_c))
    # Split (n, S) until the grid is large enough, keeping programs busy.
    num_cblocks = cdiv(G, gpb) * bpg
    s_blocks = cdiv(S, block_s)
    per_block = max(1, (INTERPRETER_TARGET_PROGRAMS if interpreter else TARGET_PROGRAMS) // num_cblocks)
    per_block = min(per_block, max(1, N * s_blocks * block_s * block_c // MIN_PROGRAM_ELEMENTS))
    num_n_chunks = min(N, per_block)
    n_per_prog = cdiv(N, num_n_chunks)
    num_n_chunks = cdiv(N, n_per_prog)
    num_s_chunks = min(s_blocks, max(1, per_block // num_n_chunks))
    s_per_prog = cdiv(s_blocks, num_s_chunks) * block_s
    num_s_chunks = cdiv(S, s_per_prog)
    return LoopPlan(N, C, S, G, block_s, block_c, block_g, gpb, bpg, n_per_prog, num_n_chunks, s_per_prog,
                    num_s_chunks)


# ---------------------------------------------------------------------------
# The single-read path

@dataclass(frozen=True)
class SetPlan:
    """Tiling of the single-read kernels: ``rows`` (layer norm: S == 1, one group)
    tiles BLOCK_M rows by the BLOCK_C channels of a row; otherwise a tile is the
    BLOCK_M >= S positions of one sample by GPB whole groups (BLOCK_C channels). A
    program covers one channel block and n_per_prog samples."""
    N: int
    C: int
    S: int
    G: int
    rows: bool
    BLOCK_M: int
    BLOCK_C: int
    BLOCK_G: int
    GPB: int
    n_per_prog: int
    num_n_chunks: int
    num_warps: int

    @property
    def Cg(self) -> int:
        return self.C // self.G

    @property
    def grid(self):
        return (cdiv(self.G, self.GPB) * self.num_n_chunks,)

    def shape_args(self) -> dict:
        return dict(N=self.N, C=self.C, S=self.S, G=self.G, Cg=self.Cg, GPB=self.GPB,
                    group_width=self.GPB * self.Cg, n_per_prog=self.n_per_prog, num_n_chunks=self.num_n_chunks)

    def constexprs(self) -> dict:
        return dict(ROWS=self.rows, GROUPED=self.Cg > 1, BLOCK_M=self.BLOCK_M, BLOCK_C=self.BLOCK_C,
                    BLOCK_G=self.BLOCK_G, FULL_BLOCKS=_full_blocks(self.C, self.Cg, self.GPB, 1, self.BLOCK_C))


def set_plan(sizes, G: int, stride_c: int, interpreter: bool) -> SetPlan | None:
    """The single-read tiling of per-sample statistics, or None when a set (Cg * S
    elements, padded to powers of two) is larger than SET_LIMIT, or when channels
    are innermost and fewer than ROW_CHANNELS of them fit a tile."""
    N, C, S = sizes
    Cg = C // G
    target = INTERPRETER_TARGET_PROGRAMS if interpreter else TARGET_PROGRAMS
    tile = INTERPRETER_TILE if interpreter else SET_TILE
    if S == 1 and G == 1:
        block_c = next_power_of_2(C)
        if block_c > SET_LIMIT:
            return None
        block_m = min(next_power_of_2(N), max(1, tile // block_c))
        gpb, block_g = 1, 1
        num_n_chunks = min(cdiv(N, block_m), target, ROW_PROGRAMS)
        n_per_prog = cdiv(cdiv(N, num_n_chunks), block_m) * block_m
    else:
        block_m = next_power_of_2(S)
        if block_m * next_power_of_2(Cg) > SET_LIMIT:
            return None
        # Whole groups, as many as a tile holds: up to a row of CHANNELS_LAST_WIDTH
        # channels when they are innermost (16-byte aligned and coalesced), else up to
        # ROW_CHANNELS rows of S.
        width, tile = (CHANNELS_LAST_WIDTH, SET_LIMIT) if stride_c == 1 else (ROW_CHANNELS, tile)
        gpb = max(1, min(G, width // Cg if Cg < width else 1, max(1, tile // block_m) // Cg))
        while next_power_of_2(gpb * Cg) * block_m > SET_LIMIT:
            gpb -= 1
        if stride_c == 1 and S > 1 and gpb * Cg < min(C, ROW_CHANNELS):
            return None     # rows of a few channels_last channels: uncoalesced; the looped path reads 64
        block_c = next_power_of_2(gpb * Cg)
        block_g = next_power_of_2(gpb) if Cg > 1 else block_c
        num_n_chunks = min(N, max(1, target // cdiv(G, gpb)))
        n_per_prog = cdiv(N, num_n_chunks)
    num_n_chunks = cdiv(N, n_per_prog)
    warps = min(NUM_WARPS, max(1, block_m * block_c // 256))
    return SetPlan(N, C, S, G, S == 1 and G == 1, block_m, block_c, block_g, gpb, n_per_prog, num_n_chunks, warps)


# ---------------------------------------------------------------------------
# Launch plans: what a launch passes that depends only on the call's layouts

@dataclass(frozen=True)
class LaunchPlan:
    """One launch of a norm kernel, as far as its layouts decide it: the tiling
    (LoopPlan or SetPlan), grid, ticket counters it may use, and its keyword
    arguments that depend only on layouts (shape arguments, strides, tiling
    constexprs, INDEX_64, num_warps). Read-only: a launch spreads ``args``."""
    tiling: LoopPlan | SetPlan
    grid: tuple
    tickets: int
    args: dict


def _view_args(plan, prefixes: tuple, strides) -> dict:
    """The plan's shape arguments and stride_{prefix}{n, c, s} of each tensor."""
    args = plan.shape_args()
    for prefix, stride in zip(prefixes, strides):
        args.update({f"stride_{prefix}n": stride[0], f"stride_{prefix}c": stride[1], f"stride_{prefix}s": stride[2]})
    return args


def _index_64(layouts) -> bool:
    """True when some offset into tensors of these layouts does not fit in int32."""
    return any(layout is not None and offsets_need_int64(*layout) for layout in layouts)


def running_stride(layout) -> int:
    """Element stride of running statistics (C elements in one arithmetic progression)."""
    merged = merge_dims(*layout)
    if merged is None:
        raise RuntimeError("running statistics must be a 1-D view (one stride) of C elements")
    return merged[1]


@by_layout
def loop_launch(layouts, prefixes: tuple, running: bool, geom: Geometry, merging: str,
                interpreter: bool) -> LaunchPlan:
    """The plan of a looped kernel's launch. Tensors: the activation-sized ones that
    ``prefixes`` name (x first: the tiling follows its strides; None allowed), then
    with ``running`` the running mean and variance (None allowed: stride 0).
    ``merging``: "" or what the kernel merges partials of: "statistics" (BLOCK_KG
    rows of a tile), "channels" (their sums too: BLOCK_K rows)."""
    views = layouts[:len(prefixes)]
    sizes, strides = ncs_views(views, geom)
    plan = loop_plan(sizes, geom.groups, strides[0][1], strides[0][2], interpreter)
    args = _view_args(plan, prefixes, strides)
    if running:
        args["stride_rm"], args["stride_rv"] = (0 if l is None else running_stride(l) for l in layouts[-2:])
    args.update(GROUPED=plan.Cg > 1, INDEX_64=_index_64(views), **plan.blocks(merging), num_warps=NUM_WARPS)
    return LaunchPlan(plan, plan.grid, plan.tickets(), args)


@by_layout
def set_launch(layouts, prefixes: tuple, geom: Geometry, interpreter: bool) -> LaunchPlan | None:
    """The plan of a single-read kernel's launch over the tensors ``prefixes`` names
    (x first), or None when the sets do not fit (``set_plan``)."""
    sizes, strides = ncs_views(layouts, geom)
    plan = set_plan(sizes, geom.groups, strides[0][1], interpreter)
    if plan is None:
        return None
    args = _view_args(plan, prefixes, strides)
    args.update(INDEX_64=_index_64(layouts), **plan.constexprs(), num_warps=plan.num_warps)
    return LaunchPlan(plan, plan.grid, 0, args)


@by_layout
def fits_single_read(layouts, geom: Geometry, interpreter: bool) -> bool:
    """True when each per-sample statistic's set of a tensor of this layout (or of its
    contiguous copy, when the kernels cannot read it through strides) fits the
    single-read kernels."""
    (shape, stride), = layouts
    described = _describe(shape, stride, geom.lead, geom.chan)
    if described is not None:
        sizes, stride_c = described[0], described[1][1]
    else:
        lead, chan = geom.lead, geom.chan
        sizes = (math.prod(shape[:lead]), math.prod(shape[lead:lead + chan]), math.prod(shape[lead + chan:]))
        stride_c = sizes[2]
    return set_plan(sizes, geom.groups, stride_c, interpreter) is not None
