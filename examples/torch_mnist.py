"""Train a PyTorch MLP on MNIST with meProp: its hidden nn.Linear layers converted to
meprop_cpu.torch.MePropLinear, updated by meprop_cpu.torch.optim.Adam; the
Sequential's Linear -> ReLU -> Dropout runs train through one autograd node
(convert(..., fuse=True); --no-fuse: module by module).

    pip install ".[torch]"
    python examples/torch_mnist.py                    # 784-500-500-10, k=20, 2 epochs
    python examples/torch_mnist.py --epochs 5 --k 40 --threads 2
    python examples/torch_mnist.py --dense            # the same model with nn.Linear + torch Adam

MNIST comes from meprop_cpu.data.mnist() (cached after the first fetch).
Prints per epoch the training time, the training loss and the dev / test
accuracy; at the end the model is turned back into plain nn.Linear layers
(meprop_cpu.torch.revert) and its state dict saved with torch.save.
"""
import argparse
import time

import numpy as np
import torch
from torch import nn

import meprop_cpu
from meprop_cpu import data as mpdata
from meprop_cpu.torch import convert, optim, revert


def accuracy(model, X, y):
    model.eval()
    with torch.inference_mode():
        pred = model(X).argmax(1)
    model.train()
    return 100.0 * (pred == y).float().mean().item()


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--k", type=int, default=20, help="gradient entries kept per example")
    ap.add_argument("--mode", default=None, help="topk, unified, random, dense "
                    "(default: meprop_cpu.torch.DEFAULT_MODE)")
    ap.add_argument("--hidden", type=int, default=500)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=10)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--dropout", type=float, default=0.2)
    ap.add_argument("--threads", type=int, default=None, help="default: torch's")
    ap.add_argument("--train-subset", type=int, default=0, help="0: all 55,000 examples")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--dense", action="store_true", help="keep nn.Linear + torch.optim.Adam")
    ap.add_argument("--no-fuse", action="store_true",
                    help="keep nn.Sequential (each layer its own autograd node)")
    ap.add_argument("--save", default=None, help="torch.save the final state dict here")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    data = mpdata.mnist()
    Xtr, ytr = (torch.from_numpy(a) for a in data["train"])
    if args.train_subset:
        Xtr, ytr = Xtr[:args.train_subset], ytr[:args.train_subset]
    Xdev, ydev = (torch.from_numpy(a) for a in data["dev"])
    Xte, yte = (torch.from_numpy(a) for a in data["test"])

    torch.manual_seed(args.seed)
    h = args.hidden
    model = nn.Sequential(nn.Linear(784, h), nn.ReLU(), nn.Dropout(args.dropout),
                          nn.Linear(h, h), nn.ReLU(), nn.Dropout(args.dropout),
                          nn.Linear(h, 10))
    if args.dense:
        opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    else:
        # all nn.Linear but the output layer; fuse: the Sequential becomes a MePropSequential
        convert(model, k=args.k, mode=args.mode, fuse=not args.no_fuse)
        opt = optim.Adam(model.parameters(), lr=args.lr)
    print(model)
    print(f"threads: torch {torch.get_num_threads()}, meprop_cpu {meprop_cpu.__version__}")

    loss_fn = nn.CrossEntropyLoss()
    rng = np.random.default_rng(args.seed)
    B = args.batch_size
    for epoch in range(1, args.epochs + 1):
        perm = torch.from_numpy(rng.permutation(Xtr.shape[0]))
        Xp, yp = Xtr[perm], ytr[perm]
        t0 = time.perf_counter()
        total, steps = 0.0, 0
        for i in range(0, Xp.shape[0], B):
            opt.zero_grad()
            loss = loss_fn(model(Xp[i:i + B]), yp[i:i + B])
            loss.backward()
            opt.step()
            total += loss.item()
            steps += 1
        dt = time.perf_counter() - t0
        print(f"epoch {epoch}: {dt:.2f} s, train loss {total / steps:.4f}, "
              f"dev {accuracy(model, Xdev, ydev):.2f} %, test {accuracy(model, Xte, yte):.2f} %",
              flush=True)

    revert(model)                      # plain nn.Linear layers again, same weights
    if args.save:
        torch.save(model.state_dict(), args.save)
        print(f"saved {args.save}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
