"""Batch, layer, instance and group norm in Triton, forward and backward, on one
statistics core.

Every norm sees its input as ``(N, C, S)`` through strides (no copy unless the
dims cannot be merged that way, then one contiguous copy) and normalizes over
statistics of ``G`` groups of ``C // G`` consecutive channels:

=============  ============================  ======  ===========  ==========
norm           (N, C, S)                     G       per sample   affine on
=============  ============================  ======  ===========  ==========
batch norm     (batch, channels, spatial)    C       no           channel
instance norm  (batch, channels, spatial)    C       yes          channel
group norm     (batch, channels, spatial)    groups  yes          channel
layer norm     (leading, normalized, 1)      1       yes          "channel"
=============  ============================  ======  ===========  ==========

channels_last is other strides (batch norm folds n into S there).

* ``_kernels``: the Triton kernels.
* ``_plan``: views, tilings (looped and single-read) and each launch's
  layout-decided arguments, cached per call layout (``by_layout``).
* ``ops``: the primitives (launchers taking schema types only, each running a
  launch plan cached per layout and arguments), the operators
  registered from them (``norm_statistics_op``, ``norm_apply_op``, ...) and the
  entry points ``batch_norm``, ...
* ``sync``: batch norm across processes (SyncBatchNorm's Function).
* ``_cases``: the compile cases, recorded from the primitives' own launches
  (``COMPILE_CASES``, built on first use: recording takes a while at import).

Launches and bytes per call, T = one pass over the activation (the residual
and g are activation-sized):

==========================================  ========  ===========================
call                                        launches  bytes
==========================================  ========  ===========================
batch statistics forward (looped)           2         3T (+1T residual)
per-sample set fits (single read) forward   1         2T
eval forward                                1         2T (+1T residual)
backward, batch statistics (looped)         2         5T; residual + activation 7T
backward, single read                       1 (+1)    3T (+ a column sum of
                                                      per-program partials)
backward, eval                              1         3T (dx and parameters)
SyncBatchNorm forward                       3         3T, + one all_gather of
                                                      (3, C) floats
SyncBatchNorm backward                      2         5T, + one all_reduce of
                                                      (2, C) floats
==========================================  ========  ===========================

Running statistics, ``num_batches_tracked`` and the cumulative-average momentum
live in the statistics kernel; the parameter gradients are cast to their dtype
in the kernels. Cross-program merges are deterministic: fp32 partials and an
integer ticket that lets the last program merge them in a fixed order (no float
atomics); the ticket counters are one persistent buffer per device and stream
(``kernels._reduce.tickets``, shared with conv's split reductions).

Second derivatives: the normalizations' backward is the ``norm_gradients``
operator (the kernels above), whose own backward differentiates
``ops._reference_forward``, the same forward in torch ops, twice with
torch.func; under ``create_graph`` that is a torch graph, so third and higher
derivatives follow.
"""
from __future__ import annotations

from ._plan import Geometry
from .ops import (batch_norm, group_norm, instance_norm, layer_norm, norm_apply, norm_apply_running, norm_backward,
                  norm_backward_dx, norm_backward_reduce, norm_merge_moments, norm_moments, norm_per_sample,
                  norm_single_read, norm_statistics, single_read_fits)
from .sync import SyncNormFunction, sync_batch_norm

__all__ = ["Geometry", "batch_norm", "instance_norm", "group_norm",
           "layer_norm", "norm_statistics", "norm_moments", "norm_merge_moments", "norm_apply", "norm_apply_running",
           "norm_single_read", "norm_per_sample", "single_read_fits", "norm_backward", "norm_backward_reduce",
           "norm_backward_dx", "SyncNormFunction", "sync_batch_norm", "COMPILE_CASES"]


def __getattr__(name: str):
    if name == "COMPILE_CASES":
        from ._cases import compile_cases
        globals()["COMPILE_CASES"] = cases = compile_cases()
        return cases
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
