"""``python -m bench.one PATTERN [PATTERN ...] [--side ours|torch|both] [--calls N]``:
run the quick benchmark's cases whose id contains a pattern, for a profiler.

Each case is set up (the harness's seed), each side called once (it compiles,
tunes, chooses), then called ``calls`` times between ``cudaProfilerStart`` and
``cudaProfilerStop``, inside an NVTX start / end range named ``<side> <case id>``
(start / end ranges span threads: a backward's kernels run on autograd's). So a
profiler that starts at ``cudaProfilerStart`` sees those calls' kernels only, not
the autotuners' timings or the setup:

    ncu --profile-from-start off --section SpeedOfLight --section Occupancy \\
        --section WarpStateStats python -m bench.one resnet50-32x128x28x28 --calls 1

(``bench/gpu_check.sh`` runs this under ``GPU_CHECK_NCU``). Prints each case's id
as it runs; no timing, no check. Needs a CUDA GPU.
"""
from __future__ import annotations

import argparse
import sys

import torch

from bench.core import collect, setup, suite_names


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.one", description=__doc__.splitlines()[0])
    parser.add_argument("patterns", nargs="+", help="substrings of the quick cases' ids (python -m bench prints them)")
    parser.add_argument("--side", choices=("ours", "torch", "both"), default="both")
    parser.add_argument("--calls", type=int, default=1, help="calls per side under the profiler (default 1)")
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("bench.one: no CUDA GPU")
        return 2
    torch.backends.cudnn.benchmark = True
    cases = [c for c in collect(suite_names(), "cuda", True) if any(p in c.id for p in args.patterns)]
    if not cases:
        print(f"bench.one: no quick case's id contains any of {args.patterns}")
        return 2
    for case in cases:
        ours, baseline, *_ = setup(case)
        for side, fn in (("ours", ours), ("torch", baseline)):
            if args.side not in (side, "both"):
                continue
            fn()
            torch.cuda.synchronize()
            print(f"{side} {case.id}: {args.calls} call(s) profiled", flush=True)
            marker = torch.cuda.nvtx.range_start(f"{side} {case.id}")
            torch.cuda.profiler.start()
            for _ in range(args.calls):
                fn()
            torch.cuda.synchronize()
            torch.cuda.profiler.stop()
            torch.cuda.nvtx.range_end(marker)
        del ours, baseline
        torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
