"""Training throughput (images/s): this project's data path vs the plain ImageFolder loop.

Three ways to run the same training step (ResNet-18 by default, same image size and batch,
AdamW, cross-entropy) on the same machine in one run:

* ``plain``: the study's way -- ``torchvision.datasets.ImageFolder`` + ``Resize`` /
  ``CenterCrop`` / ``ToTensor`` / ``Normalize`` (every JPEG decoded again each epoch, RGB),
  stock 3-channel torchvision model, fp32, contiguous memory;
* ``arrays``: this project -- images decoded once into a uint8 array (cv2, grayscale, shorter
  side ``--resize``, center crop ``--size``), batches gathered from memory and augmented on the
  tensor (random resized crop + flip + rotation + brightness/contrast), one-channel stem,
  channels_last, bf16 autocast where the CPU has native bf16 (``precision: auto``);
* ``ceiling``: the ``arrays`` model and settings on one fixed in-memory batch (no data path at
  all): the compute ceiling of the model on this machine.

The paths are measured in interleaved rounds (plain, arrays, ceiling, plain, ...) so a change in
machine load hits all of them alike; the medians of the rounds are reported with the ratio
``arrays / plain``. The one-time decode of the arrays is reported separately.

    python bench/train_throughput.py --size 128 --resize 146 --batch 32 --threads 2 \
        --out bench/results/train_throughput.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torchvision
from torchvision import transforms

from pneumocxr.datasets import ArrayDataset, Augment
from pneumocxr.models import create_model, default_normalization
from pneumocxr.train import resolve_precision, train_one_epoch
from pneumocxr.utils import set_threads

REPO = Path(__file__).resolve().parents[1]
KERMANY = REPO.parent / "shared" / "data" / "kermany" / "chest_xray"


def _commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "bench", "src"], cwd=REPO,
                               capture_output=True, text=True, check=True).stdout.strip()
        return out + ("+uncommitted" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def decode_arrays(files: list[str], resize: int, size: int) -> np.ndarray:
    """Decode once: grayscale, shorter side ``resize`` (area interpolation), center crop."""
    out = np.empty((len(files), size, size), dtype=np.uint8)
    for i, f in enumerate(files):
        img = cv2.imread(f, cv2.IMREAD_GRAYSCALE)
        if img is None:
            raise ValueError(f"{f}: not a readable image")
        h, w = img.shape
        s = resize / min(h, w)
        img = cv2.resize(img, (max(size, round(w * s)), max(size, round(h * s))),
                         interpolation=cv2.INTER_AREA)
        h, w = img.shape
        top, left = (h - size) // 2, (w - size) // 2
        out[i] = img[top:top + size, left:left + size]
    return out


def plain_round(loader_iter, model, optimizer, n_batches: int) -> float:
    """images/s of ``n_batches`` steps of the plain loop (decode + transforms + fp32 step)."""
    model.train()
    seen = 0
    t0 = time.perf_counter()
    for _ in range(n_batches):
        x, y = next(loader_iter)
        loss = torch.nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        seen += len(y)
    return seen / (time.perf_counter() - t0)


def ceiling_round(model, optimizer, x, y, n_batches: int, precision: str,
                  channels_last: bool) -> float:
    model.train()
    amp = precision == "bf16"
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    t0 = time.perf_counter()
    for _ in range(n_batches):
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=amp):
            logits = model(x)
        loss = torch.nn.functional.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return n_batches * len(y) / (time.perf_counter() - t0)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--root", default=str(KERMANY / "train"), help="ImageFolder root")
    ap.add_argument("--arch", default="resnet18")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--resize", type=int, default=146)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--batches", type=int, default=4, help="training steps per path per round")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--workers", type=int, default=0, help="DataLoader workers of the plain loop")
    ap.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16"])
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", required=True)
    args = ap.parse_args(argv)

    set_threads(args.threads)
    torch.manual_seed(args.seed)
    n_images = args.batch * args.batches * args.rounds

    # plain: ImageFolder + transforms, decode every time, 3-channel torchvision model
    tf = transforms.Compose([transforms.Resize(args.resize), transforms.CenterCrop(args.size),
                             transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
    folder = torchvision.datasets.ImageFolder(args.root, transform=tf)
    g = torch.Generator().manual_seed(args.seed)
    loader = torch.utils.data.DataLoader(folder, batch_size=args.batch, shuffle=True,
                                         num_workers=args.workers, generator=g, drop_last=True)
    plain_iter = iter(loader)
    plain_model = torchvision.models.get_model(args.arch, num_classes=2)
    plain_opt = torch.optim.AdamW(plain_model.parameters(), lr=1e-3)

    # arrays: decode a sample of the same files once
    rng = np.random.default_rng(args.seed)
    pick = rng.choice(len(folder.samples), size=min(n_images, len(folder.samples)), replace=False)
    files = [folder.samples[i][0] for i in pick]
    labels = np.array([folder.samples[i][1] for i in pick])
    t0 = time.perf_counter()
    images = decode_arrays(files, args.resize, args.size)
    decode_s = time.perf_counter() - t0
    precision = resolve_precision(args.precision, torch.device("cpu"))
    model = create_model(args.arch, 2).to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    crit = torch.nn.CrossEntropyLoss()
    norm = default_normalization(1)
    augment = Augment.from_params()   # params train.augment at the schema defaults
    gen = torch.Generator().manual_seed(args.seed)
    chunks = [ArrayDataset(images[i * args.batch * args.batches:(i + 1) * args.batch * args.batches],
                           labels[i * args.batch * args.batches:(i + 1) * args.batch * args.batches],
                           folder.classes, name=f"round{i}") for i in range(args.rounds)]

    # ceiling: one in-memory batch, same model settings as arrays
    ceil_model = create_model(args.arch, 2).to(memory_format=torch.channels_last)
    ceil_opt = torch.optim.AdamW(ceil_model.parameters(), lr=1e-3)
    xb = torch.randn(args.batch, 1, args.size, args.size)
    yb = torch.randint(0, 2, (args.batch,), generator=torch.Generator().manual_seed(1))

    # warm-up (one step each; oneDNN primitive creation, allocator)
    plain_round(plain_iter, plain_model, plain_opt, 1)
    ceiling_round(ceil_model, ceil_opt, xb, yb, 1, precision, True)
    warm = ArrayDataset(images[:args.batch], labels[:args.batch], folder.classes, name="warm")
    train_one_epoch(model, warm, crit, opt, normalization=norm, batch_size=args.batch,
                    generator=gen, augment=augment, precision=precision, channels_last=True)

    rounds = {"plain": [], "arrays": [], "ceiling": []}
    for r in range(args.rounds):
        rounds["plain"].append(plain_round(plain_iter, plain_model, plain_opt, args.batches))
        res = train_one_epoch(model, chunks[r], crit, opt, normalization=norm,
                              batch_size=args.batch, generator=gen, augment=augment,
                              precision=precision, channels_last=True)
        rounds["arrays"].append(res["images_per_s"])
        rounds["ceiling"].append(ceiling_round(ceil_model, ceil_opt, xb, yb, args.batches,
                                               precision, True))
        print(f"round {r + 1}/{args.rounds}: " + ", ".join(
            f"{k} {v[-1]:.1f} img/s" for k, v in rounds.items()), flush=True)
    med = {k: statistics.median(v) for k, v in rounds.items()}
    result = {
        "command": "python " + " ".join(shlex.quote(a) for a in sys.argv),
        "commit": _commit(),
        "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "machine": {"cpu_capability": torch.backends.cpu.get_cpu_capability(),
                    "native_bf16": bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()),
                    "processor": platform.processor() or platform.machine(),
                    "cores_visible": os.cpu_count(), "threads": torch.get_num_threads(),
                    "load_average": os.getloadavg(), "torch": torch.__version__},
        "settings": {"arch": args.arch, "size": args.size, "resize": args.resize,
                     "batch": args.batch, "batches_per_round": args.batches,
                     "rounds": args.rounds, "plain_workers": args.workers,
                     "arrays_precision": precision, "arrays_channels_last": True,
                     "arrays_in_chans": 1, "plain_in_chans": 3, "optimizer": "AdamW"},
        "images_per_s": {k: round(v, 2) for k, v in med.items()},
        "images_per_s_rounds": {k: [round(x, 2) for x in v] for k, v in rounds.items()},
        "ratio_arrays_over_plain": round(med["arrays"] / med["plain"], 3),
        "ratio_ceiling_over_plain": round(med["ceiling"] / med["plain"], 3),
        "arrays_share_of_ceiling": round(med["arrays"] / med["ceiling"], 3),
        "one_time_decode": {"images": len(files), "seconds": round(decode_s, 2),
                            "images_per_s": round(len(files) / decode_s, 1)},
        "target": ">= 2x the plain loop at 128 px",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: result[k] for k in ("images_per_s", "ratio_arrays_over_plain",
                                             "ratio_ceiling_over_plain")}, indent=2))
    return result


if __name__ == "__main__":
    main()
