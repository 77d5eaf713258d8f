"""Train a small SyncBatchNorm ResNet on scikit-learn's handwritten digits with
DistributedDataParallel, one process per GPU (nccl) or per CPU worker (gloo):

    torchrun --nproc_per_node=2 -m nnlib.examples.ddp_train [--epochs N] [--batch-size B]

Each process trains on its share of every batch; the batch norms take their
statistics over all processes' shares (nnlib.SyncBatchNorm: one all_gather
forward, one all_reduce backward) and DDP averages the gradients, so that every
process holds the same model. Prints the loss per epoch and the final test
accuracy. Without torchrun it runs as one process.

On GPUs nnlib runs its Triton kernels. On CPUs it runs torch's path (nnlib's
fallback), or, with ``TRITON_INTERPRET=1`` in the environment, the same Triton
kernels in Triton's interpreter (exact, but minutes per epoch).
"""
from __future__ import annotations

import argparse
import os
import socket
import time

import torch
import torch.distributed as dist
import torch.nn.functional as TF
from torch.nn.parallel import DistributedDataParallel

import nnlib
from nnlib.demo import load_digits


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m nnlib.examples.ddp_train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=5, help="passes over the training set (default 5)")
    parser.add_argument("--batch-size", type=int, default=32, help="images per process per step (default 32)")
    parser.add_argument("--lr", type=float, default=0.05, help="SGD learning rate (default 0.05)")
    parser.add_argument("--seed", type=int, default=0, help="data split and initial weights (default 0)")
    return parser.parse_args(argv)


def _init_process_group() -> tuple[int, int, torch.device]:
    """(rank, world size, device) of this process; torchrun's environment, or one process."""
    if "RANK" not in os.environ:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        os.environ.update(RANK="0", LOCAL_RANK="0", WORLD_SIZE="1", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    if torch.cuda.is_available():
        device = torch.device("cuda", int(os.environ["LOCAL_RANK"]))
        torch.cuda.set_device(device)
        dist.init_process_group("nccl")
    else:
        device = torch.device("cpu")
        dist.init_process_group("gloo")
    return dist.get_rank(), dist.get_world_size(), device


@torch.no_grad()
def accuracy(model, x, y, batch_size: int = 256) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    model.train()
    return correct / len(x)


def main(argv=None) -> int:
    args = parse_args(argv)
    rank, world, device = _init_process_group()
    torch.manual_seed(args.seed)                    # the same initial weights in every process
    x_train, y_train, x_test, y_test = load_digits(args.seed, 8)
    model = nnlib.models.ResNet(nnlib.models.BasicBlock, [1, 1], num_classes=10, width=8, in_channels=1,
                                small_input=True).to(device)
    ddp = DistributedDataParallel(model)
    # Batch norms -> SyncBatchNorm, in place after wrapping (the same parameters and
    # buffers): DDP refuses SyncBatchNorm modules on CPU when it is built.
    nnlib.SyncBatchNorm.convert_sync_batchnorm(ddp.module)
    optimizer = torch.optim.SGD(ddp.parameters(), lr=args.lr, momentum=0.9)
    step_images = args.batch_size * world
    if rank == 0:
        print(f"{world} process(es) on {device.type} ({dist.get_backend()}), nnlib path: "
              f"{nnlib.backend(x_train.to(device))}; digits: {len(x_train)} training / {len(x_test)} test images; "
              f"{args.batch_size} images per process per step", flush=True)
    for epoch in range(args.epochs):
        start, losses = time.perf_counter(), []
        order = torch.randperm(len(x_train), generator=torch.Generator().manual_seed(args.seed + epoch))
        for first in range(0, len(order) - step_images + 1, step_images):
            mine = order[first + rank * args.batch_size:first + (rank + 1) * args.batch_size]
            optimizer.zero_grad(set_to_none=True)
            loss = TF.cross_entropy(ddp(x_train[mine].to(device)), y_train[mine].to(device))
            loss.backward()
            optimizer.step()
            losses.append(loss.detach())
        mean_loss = torch.stack(losses).mean()
        dist.all_reduce(mean_loss)
        if rank == 0:
            print(f"epoch {epoch + 1}/{args.epochs}: loss {mean_loss.item() / world:.4f} "
                  f"({time.perf_counter() - start:.1f} s)", flush=True)
    if rank == 0:
        print(f"test accuracy: {accuracy(model, x_test.to(device), y_test.to(device)):.4f}", flush=True)
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
