#!/usr/bin/env python3
"""Train a CNN on shardgen shards with DistributedDataParallel, using ``loaders``.

One process per GPU (or per CPU slot with gloo):

    torchrun --nproc_per_node=8 tools/train_ddp.py OUT --epochs 10 --model resnet18   # or resnet50
    torchrun --nproc_per_node=2 tools/train_ddp.py OUT --epochs 2 --workers 2 --batch_size 8   # CPU, gloo
    python tools/train_ddp.py s3://bucket/xray --epochs 1                                     # one process
    torchrun --nproc_per_node=8 tools/train_ddp.py OUT --checkpoint ck.pt --save_every 500 --resume  # preemptible

Each rank prints, per epoch, its number of batches, loss, samples/s and the share of
the epoch it spent waiting for data (with ``--sync``, time the GPU sat idle waiting
for the next batch; without, time the CPU thread waited, which may overlap queued GPU
work). ``--synthetic`` trains on one batch kept on the GPU: the model's own speed,
the rate the loader has to sustain. Rank 0 then checks that all ranks ran the same
number of batches (exit 1 if not), runs an eval pass (``mode="eval"``) and checks
that every sample of the eval split was seen exactly once across ranks.

With ``--checkpoint`` rank 0 saves model, optimizer and loader state (atomically) every
``--save_every`` steps and at each epoch end; ``--resume`` continues from it, mid-epoch,
on any number of ranks (the loader yields exactly the batches not yet seen). ``--trace``
writes, per rank and step, the sample keys, an image checksum and the loss (JSON lines),
``--kill_at N`` makes rank 0 SIGKILL itself after global step N (a preemption drill),
``--augment`` trains with a seeded random flip/shift transform in the workers.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
import xxhash

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from loaders import DevicePrefetcher, make_loader  # noqa: E402


# -- models ---------------------------------------------------------------------------------------------
class SmallCNN(nn.Module):
    """Four conv blocks and a linear head: enough to learn, quick on a CPU."""

    def __init__(self, classes: int, width: int = 16):
        super().__init__()
        layers, c = [], 1
        for i in range(4):
            w = width * 2 ** i
            layers += [nn.Conv2d(c, w, 3, padding=1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True),
                       nn.MaxPool2d(2)]
            c = w
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + (x if self.down is None else self.down(x)), inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (stride here, as torchvision's v1.5), 1x1 expand by 4, with a projection shortcut."""

    def __init__(self, cin: int, width: int, stride: int):
        super().__init__()
        cout = 4 * width
        self.body = nn.Sequential(
            nn.Conv2d(cin, width, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, stride, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(inplace=True),
            nn.Conv2d(width, cout, 1, bias=False), nn.BatchNorm2d(cout))
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        return F.relu(self.body(x) + (x if self.down is None else self.down(x)), inplace=True)


class ResNet(nn.Module):
    """ResNet-18 or ResNet-50 (He et al. 2016) for 1-channel input."""

    LAYOUTS = {"resnet18": (BasicBlock, 1, (2, 2, 2, 2)), "resnet50": (Bottleneck, 4, (3, 4, 6, 3))}

    def __init__(self, classes: int, name: str = "resnet18"):
        super().__init__()
        block, expand, depths = self.LAYOUTS[name]
        self.stem = nn.Sequential(nn.Conv2d(1, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(inplace=True),
                                  nn.MaxPool2d(3, 2, 1))
        blocks, c = [], 64
        for w, s, d in zip((64, 128, 256, 512), (1, 2, 2, 2), depths):
            for i in range(d):
                blocks.append(block(c, w, s if i == 0 else 1))
                c = w * expand
        self.blocks = nn.Sequential(*blocks)
        self.head = nn.Linear(c, classes)

    def forward(self, x):
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.blocks(self.stem(x)), 1), 1))


class ShiftFlip:
    """Random horizontal flip and shift by up to ``pad`` pixels (zero fill), drawing from
    torch's default generator, which the loader seeds per sample: reproducible."""

    def __init__(self, pad: int = 4):
        self.pad = pad

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if torch.rand(()) < 0.5:
            x = x.flip(-1)
        dy, dx = (int(v) for v in torch.randint(-self.pad, self.pad + 1, (2,)))
        out = torch.zeros_like(x)
        S = x.shape[-1]
        out[..., max(dy, 0):S + min(dy, 0), max(dx, 0):S + min(dx, 0)] = \
            x[..., max(-dy, 0):S + min(-dy, 0), max(-dx, 0):S + min(-dx, 0)]
        return out


class Synthetic:
    """``len(loader)`` copies of one random batch on the device: what the model alone can consume."""

    def __init__(self, loader, device, dtype, channels_last):
        S, B = loader.image_size, loader.batch_size
        x = torch.randn(B, 1, S, S, device=device).to(dtype)
        self.x = x.contiguous(memory_format=torch.channels_last) if channels_last else x
        self.y = torch.randint(0, len(loader.classes), (B,), device=device)
        self.n, self.wait_s = len(loader), 0.0

    def set_epoch(self, epoch):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def __iter__(self):
        for _ in range(self.n):
            yield self.x, self.y


# -- training -------------------------------------------------------------------------------------------
def parse_args(argv=None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", help="shardgen build folder, manifest.json or URL")
    ap.add_argument("--split", default="train")
    ap.add_argument("--eval_split", default="test", help="split for the eval pass ('' to skip it)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=0, help="stop each epoch after this many steps (0: whole epoch)")
    ap.add_argument("--batch_size", type=int, default=64, help="per rank")
    ap.add_argument("--workers", type=int, default=4, help="DataLoader workers per rank")
    ap.add_argument("--model", choices=("small", "resnet18", "resnet50"), default="small")
    ap.add_argument("--decoded_cache", default="auto",
                    help="make_loader's decoded_cache: 'auto' (default), a folder, or 'none' to turn it off")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="auto", help="auto, cpu or cuda")
    ap.add_argument("--sync", action="store_true",
                    help="wait for the GPU after every step, so that time spent waiting for data is GPU idle "
                         "time (measurement mode; slightly slower)")
    ap.add_argument("--synthetic", action="store_true",
                    help="train on one fixed random batch already on the device (the model's own speed, no data)")
    ap.add_argument("--augment", action="store_true", help="random flip and shift (seeded per sample)")
    ap.add_argument("--balance", default=None, help="'class' for class-balanced epochs")
    ap.add_argument("--checkpoint", default="", help="checkpoint file (model, optimizer, loader state)")
    ap.add_argument("--save_every", type=int, default=0, help="also save every N steps (0: epoch ends only)")
    ap.add_argument("--resume", action="store_true", help="continue from --checkpoint if it exists")
    ap.add_argument("--trace", default="", help="write per-step keys, image checksum and loss to TRACE.rank<r>")
    ap.add_argument("--kill_at", type=int, default=0, help="rank 0 SIGKILLs itself after this global step")
    return ap.parse_args(argv)


def setup(args) -> tuple[torch.device, bool, int, int]:
    """Device, whether distributed, rank and world size (initialises the process group)."""
    cuda = torch.cuda.is_available() if args.device == "auto" else args.device == "cuda"
    distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
    if cuda:
        local = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if distributed:
        dist.init_process_group("nccl" if cuda else "gloo")
    rank = dist.get_rank() if distributed else 0
    world = dist.get_world_size() if distributed else 1
    return device, distributed, rank, world


def save_checkpoint(path: str, model, opt, feed, step: int) -> None:
    """Model, optimizer and loader position, written atomically (temporary file, rename)."""
    state = {"model": (model.module if hasattr(model, "module") else model).state_dict(),
             "optimizer": opt.state_dict(), "loader": feed.state_dict(), "step": step}
    tmp = f"{path}.tmp{os.getpid()}"
    torch.save(state, tmp)
    os.replace(tmp, path)


def load_checkpoint(path: str, model, opt, feed) -> tuple[int, int]:
    """Restore a checkpoint; returns ``(first epoch, global step)``."""
    state = torch.load(path, map_location="cpu", weights_only=False)
    (model.module if hasattr(model, "module") else model).load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    feed.load_state_dict(state["loader"])
    return int(state["loader"].get("epoch", 0)), int(state["step"])


class Trace:
    """Per-step records of one rank (JSON lines, flushed at once: they survive a SIGKILL)."""

    def __init__(self, path: str, rank: int):
        self.f = open(f"{path}.rank{rank}", "a", encoding="utf-8") if path else None

    def step(self, epoch: int, step: int, x, keys, loss) -> None:
        if self.f is not None:
            rec = {"epoch": epoch, "step": step, "keys": list(keys),
                   "images": xxhash.xxh64(x.float().cpu().numpy().tobytes()).hexdigest(), "loss": float(loss.detach()).hex()}
            self.f.write(json.dumps(rec) + "\n")
            self.f.flush()


def train(args, loader, feed, model, opt, device, rank: int, start_epoch: int, step: int) -> list[int]:
    """The training epochs; returns the batches run per epoch."""
    cuda = device.type == "cuda"
    trace = Trace(args.trace, rank)
    per_epoch = []
    for epoch in range(start_epoch, args.epochs):
        feed.set_epoch(epoch)
        model.train()
        n = seen = 0
        loss_sum = torch.zeros((), device=device)
        t0 = time.perf_counter()
        for batch in feed:
            x, y = batch[0], batch[1]
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum += loss.detach()
            if args.sync and cuda:
                torch.cuda.synchronize()
            n, step = n + 1, step + 1
            seen += int(y.shape[0])
            trace.step(epoch, step, x, batch[2] if len(batch) > 2 else [], loss)
            if args.checkpoint and args.save_every and step % args.save_every == 0 and rank == 0:
                save_checkpoint(args.checkpoint, model, opt, feed, step)
            if args.kill_at and step == args.kill_at and rank == 0:
                os.kill(os.getpid(), signal.SIGKILL)
            if args.steps and n >= args.steps:
                break
        if cuda:
            torch.cuda.synchronize()
        dt = time.perf_counter() - t0
        per_epoch.append(n)
        if args.checkpoint and rank == 0:
            save_checkpoint(args.checkpoint, model, opt, feed, step)
        print(f"rank {rank}: epoch {epoch}: {n} batches (len {len(loader)}), loss {float(loss_sum) / max(n, 1):.4f}, "
              f"{seen / dt:.0f} samples/s, waiting for data {feed.wait_s / dt:.1%} of {dt:.2f} s", flush=True)
    return per_epoch


def evaluate(args, model, device, distributed: bool, rank: int, world: int) -> bool:
    """The eval pass: every sample of the eval split exactly once across ranks."""
    cuda = device.type == "cuda"
    dtype = torch.bfloat16 if cuda else torch.float32
    ev = make_loader(args.source, split=args.eval_split, batch_size=args.batch_size, mode="eval",
                     num_workers=args.workers, with_keys=True)
    model.eval()
    keys: list[str] = []
    correct = total = batches = 0
    with torch.no_grad():
        for x, y, k in DevicePrefetcher(ev, device, dtype=dtype, channels_last=cuda):
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                pred = model(x).argmax(1)
            real = y != -100
            correct += int((pred[real] == y[real]).sum())
            total += int(real.sum())
            keys += [kk for kk in k if kk]
            batches += 1
    if distributed:
        gathered: list = [None] * world
        dist.all_gather_object(gathered, (keys, correct, total, batches))
    else:
        gathered = [(keys, correct, total, batches)]
    if rank != 0:
        return True
    all_keys = [kk for g in gathered for kk in g[0]]
    once = len(all_keys) == len(set(all_keys)) == ev.samples
    same = len({g[3] for g in gathered}) == 1
    acc = sum(g[1] for g in gathered) / max(1, sum(g[2] for g in gathered))
    print(f"eval {args.eval_split!r}: {len(all_keys)} of {ev.samples} samples, "
          f"{'each exactly once' if once else 'NOT exactly once'} across {world} rank(s); "
          f"batches per rank {[g[3] for g in gathered]}; accuracy {acc:.3f}", flush=True)
    return once and same


def main(argv=None) -> int:
    args = parse_args(argv)
    device, distributed, rank, world = setup(args)
    cuda = device.type == "cuda"
    torch.manual_seed(args.seed)
    loader = make_loader(args.source, split=args.split, batch_size=args.batch_size, mode="train",
                         num_workers=args.workers, seed=args.seed, with_keys=bool(args.trace),
                         transform=ShiftFlip() if args.augment else None, balance=args.balance,
                         decoded_cache=None if args.decoded_cache == "none" else args.decoded_cache)
    classes = len(loader.classes)
    model = (SmallCNN(classes) if args.model == "small" else ResNet(classes, args.model)).to(device)
    if cuda:
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr)
    dtype = torch.bfloat16 if cuda else torch.float32
    feed = (Synthetic(loader, device, dtype, cuda) if args.synthetic
            else DevicePrefetcher(loader, device, dtype=dtype, channels_last=cuda))
    start_epoch = step = 0
    if args.resume and args.checkpoint and os.path.exists(args.checkpoint):
        start_epoch, step = load_checkpoint(args.checkpoint, model, opt, feed)
        print(f"rank {rank}: resumed from {args.checkpoint} at epoch {start_epoch}, step {step}", flush=True)
    if distributed:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if cuda else None)
    print(f"rank {rank}/{world}: {loader.samples} samples in split {args.split!r}, {len(loader)} batches of "
          f"{args.batch_size} per epoch, {args.workers} workers, model {args.model} on {device}", flush=True)
    per_epoch = train(args, loader, feed, model, opt, device, rank, start_epoch, step)
    loader.close()
    ok = True
    if distributed:
        counts: list = [None] * world
        dist.all_gather_object(counts, per_epoch)
    else:
        counts = [per_epoch]
    if rank == 0:
        equal = all(c == counts[0] for c in counts)
        ok &= equal
        print(f"batches per epoch on each rank: {counts} -> {'equal' if equal else 'NOT EQUAL'}", flush=True)
    if args.eval_split:
        ok &= evaluate(args, model, device, distributed, rank, world)
    if distributed:
        dist.barrier()
        dist.destroy_process_group()
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
