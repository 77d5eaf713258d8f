"""Runnable examples: ``python -m nnlib.examples.<name>``.

* ``ddp_train``: data-parallel training with SyncBatchNorm on several processes
  (``torchrun``), CPU (gloo) or GPUs (nccl).
"""
