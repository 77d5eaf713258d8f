"""Train a small CNN from nnlib layers on scikit-learn's handwritten digits (8x8
images shipped inside the package: nothing is downloaded), side by side with the same
network in torch.nn from the same initial weights. Prints progress, then test accuracy
and time per training step of both, and writes a PNG of the two loss curves.

    python -m nnlib.demo [--model cnn|resnet|lenet5] [--epochs N] [--batch-size B] ...

On a GPU nnlib runs its Triton kernels; on a CPU it runs the same kernels in
Triton's interpreter (the demo re-executes itself with ``TRITON_INTERPRET=1``),
which is slow but exact: by default the CPU run stops after 30 steps (about a
minute and a half on two cores); ``--steps 0`` trains the full epochs.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import statistics
import sys
import time

import torch

MODELS = {
    "cnn": "DigitsCNN: conv+ReLU, max pool, conv, batch norm+ReLU, max pool, linear (8x8 input)",
    "resnet": "a small ResNet: 3x3 stem, two stages of one BasicBlock each, width 8 (8x8 input)",
    "lenet5": "LeNet-5 on the digits upsampled to 32x32 (slowest under the interpreter)",
}


def _positive(kind):
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}") from None
        if not value > 0:
            raise argparse.ArgumentTypeError(f"expected a positive {kind.__name__}, got {text!r}")
        return value
    return parse


def _missing_extras() -> list[str]:
    """The demo's optional dependencies (the ``demo`` extra) that are not installed."""
    return [name for module, name in (("sklearn", "scikit-learn"), ("matplotlib", "matplotlib"))
            if importlib.util.find_spec(module) is None]


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m nnlib.demo", description=__doc__.split("\n\n")[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="models:\n" + "\n".join(f"  {k:8s}{v}" for k, v in MODELS.items()))
    parser.add_argument("--model", choices=sorted(MODELS), default="cnn", help="network to train (default cnn)")
    parser.add_argument("--epochs", type=_positive(int), default=None,
                        help="passes over the training set (default 1 on a CPU, 10 on a GPU)")
    parser.add_argument("--steps", type=int, default=None,
                        help="stop after this many training steps, 0 for no limit (default 30 on a CPU, none on a GPU)")
    parser.add_argument("--batch-size", type=_positive(int), default=32, help="examples per step (default 32)")
    parser.add_argument("--lr", type=_positive(float), default=0.02, help="SGD learning rate (default 0.02)")
    parser.add_argument("--seed", type=int, default=0, help="seed for the split, the weights and the batch order")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                        help="auto: cuda when available, else cpu (Triton interpreter)")
    parser.add_argument("--out", default="demo_out", help="folder for the loss-curve PNG (default demo_out)")
    args = parser.parse_args(argv)
    missing = _missing_extras()
    if missing:     # before any training: the data and the plot need them
        parser.error(f"needs {' and '.join(missing)} (the demo extra): pip install {' '.join(missing)}")
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is visible")
    if args.epochs is None:
        args.epochs = 10 if args.device == "cuda" else 1
    if args.steps is None:
        args.steps = 0 if args.device == "cuda" else 30
    if args.steps < 0:
        parser.error(f"--steps must be >= 0, got {args.steps}")
    try:
        os.makedirs(args.out, exist_ok=True)
    except OSError as exc:
        parser.error(f"--out {args.out!r}: cannot create the folder ({exc.strerror})")
    if not os.access(args.out, os.W_OK):
        parser.error(f"--out {args.out!r}: the folder is not writable")
    return args


def load_digits(seed: int, size: int):
    """(train x, train y, test x, test y): 80 / 20 split, x (n, 1, size, size) float32
    standardized with the training set's mean and std."""
    from sklearn.datasets import load_digits as sk_load_digits
    data = sk_load_digits()
    x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1)
    y = torch.tensor(data.target, dtype=torch.long)
    if size != 8:
        x = torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    n_train = int(0.8 * len(x))
    train, test = order[:n_train], order[n_train:]
    mean, std = x[train].mean(), x[train].std()
    x = (x - mean) / std
    return x[train], y[train], x[test], y[test]


def build(model: str):
    """(nnlib model, torch.nn twin with the same weights, input size)."""
    from . import models
    from .models import reference
    if model == "cnn":
        ours, theirs, size = models.digits_cnn(), reference.DigitsCNN(), 8
    elif model == "resnet":
        kw = dict(num_classes=10, width=8, in_channels=1, small_input=True)
        ours, theirs, size = (models.ResNet(models.BasicBlock, [1, 1], **kw),
                              reference.ResNet(reference.BasicBlock, [1, 1], **kw), 8)
    else:
        ours, theirs, size = models.lenet5(), reference.LeNet5(), 32
    ours.load_state_dict(theirs.state_dict())
    return ours, theirs, size


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def train_step(model, optimizer, x, y, device: str) -> tuple[float, float]:
    """One SGD step; (loss, seconds)."""
    _sync(device)
    start = time.perf_counter()
    optimizer.zero_grad(set_to_none=True)
    loss = torch.nn.functional.cross_entropy(model(x), y)
    loss.backward()
    optimizer.step()
    value = loss.item()
    _sync(device)
    return value, time.perf_counter() - start


@torch.no_grad()
def accuracy(model, x, y, batch_size: int) -> float:
    model.eval()
    correct = sum((model(x[i:i + batch_size]).argmax(1) == y[i:i + batch_size]).sum().item()
                  for i in range(0, len(x), batch_size))
    model.train()
    return correct / len(x)


def plot(losses: dict, path: str, title: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(7, 4))
    for (name, values), style in zip(losses.items(), ("-", "--")):
        ax.plot(range(1, len(values) + 1), values, style, label=name)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse_args(argv)
    from kernels._runtime import backend, interpreting
    if args.device == "cpu" and not interpreting():
        # Triton reads TRITON_INTERPRET when it is imported: start again with it set.
        print("No GPU: running nnlib's Triton kernels in the interpreter (TRITON_INTERPRET=1).", flush=True)
        os.environ["TRITON_INTERPRET"] = "1"
        sys.stdout.flush()
        os.execv(sys.executable, [sys.executable, "-m", "nnlib.demo", *argv])

    torch.manual_seed(args.seed)
    ours, theirs, size = build(args.model)
    x_train, y_train, x_test, y_test = load_digits(args.seed, size)
    device = args.device
    ours, theirs = ours.to(device), theirs.to(device)
    x_train, y_train, x_test, y_test = (t.to(device) for t in (x_train, y_train, x_test, y_test))
    sides = {"nnlib": ours, "torch.nn": theirs}
    optimizers = {name: torch.optim.SGD(m.parameters(), lr=args.lr, momentum=0.9, weight_decay=5e-4)
                  for name, m in sides.items()}
    losses = {name: [] for name in sides}
    seconds = {name: [] for name in sides}
    steps_per_epoch = -(-len(x_train) // args.batch_size)
    total = args.epochs * steps_per_epoch if not args.steps else min(args.steps, args.epochs * steps_per_epoch)
    print(f"digits: {len(x_train)} training / {len(x_test)} test images ({size}x{size}); model {args.model}; "
          f"{args.epochs} epoch(s) x {steps_per_epoch} steps of {args.batch_size}"
          f"{'' if total == args.epochs * steps_per_epoch else f', stopping after {total} steps'}; "
          f"device {device}; nnlib path {backend(x_train)}", flush=True)
    generator = torch.Generator().manual_seed(args.seed)
    report_every = max(1, min(steps_per_epoch, total) // 8)
    for epoch in range(1, args.epochs + 1):
        order = torch.randperm(len(x_train), generator=generator).to(device)
        for step in range(min(steps_per_epoch, total - (epoch - 1) * steps_per_epoch)):
            idx = order[step * args.batch_size:(step + 1) * args.batch_size]
            for name, model in sides.items():
                loss, sec = train_step(model, optimizers[name], x_train[idx], y_train[idx], device)
                losses[name].append(loss)
                seconds[name].append(sec)
            if (step + 1) % report_every == 0 or step + 1 == steps_per_epoch or len(losses["nnlib"]) == total:
                print(f"epoch {epoch}/{args.epochs} step {step + 1:3d}/{steps_per_epoch}  loss: nnlib "
                      f"{losses['nnlib'][-1]:.4f}  torch.nn {losses['torch.nn'][-1]:.4f}  s/step: nnlib "
                      f"{seconds['nnlib'][-1]:.3f}  torch.nn {seconds['torch.nn'][-1]:.4f}", flush=True)

    print("\nresults")
    print(f"{'':10s}{'test accuracy':>15s}{'final loss':>12s}{'ms / step (median)':>20s}")
    for name, model in sides.items():
        print(f"{name:10s}{accuracy(model, x_test, y_test, 4 * args.batch_size):15.4f}{losses[name][-1]:12.4f}"
              f"{1e3 * statistics.median(seconds[name]):20.2f}")
    gap = max(abs(a - b) for a, b in zip(losses["nnlib"], losses["torch.nn"]))
    print(f"largest per-step loss difference nnlib vs torch.nn: {gap:.2e}")
    path = os.path.join(args.out, f"digits_{args.model}_loss.png")
    plot(losses, path, f"digits, {args.model}: nnlib vs torch.nn from the same weights ({device})")
    print(f"loss curves: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
