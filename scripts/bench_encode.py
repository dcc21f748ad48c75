"""Benchmark encode: images/s, and how the time splits between decoding and the model.

Generates JPEGs (photo-like: smooth gradients plus noise), builds a randomly initialised
OpenCLIP model (no download) and, for each batch size, measures

- decode:   the DataLoader alone (file read, JPEG decode, preprocess), as encode runs it;
- forward:  ``model.encode_image(x, normalize=False)`` on already decoded tensors;
- pipeline: both together, as encode runs them (workers decode while the model runs);
- encode:   the whole ``curator.encode.encode`` call (spool and ingest included), once.

    python scripts/bench_encode.py                      # ViT-S-32, CPU, 256 images
    python scripts/bench_encode.py --device cuda --arch ViT-B-32 --images 2048
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from curator.io.encode import encode
from curator.io.encode.loader import image_batches as _image_batches
from curator.io.encode.model import autocast as _autocast
from curator.io.encode.model import load_model, pick_device


def make_jpegs(folder: str, n: int, size=(400, 300), seed: int = 0) -> list[str]:
    from PIL import Image

    rng = np.random.default_rng(seed)
    w, h = size
    yy, xx = np.mgrid[0:h, 0:w]
    paths = []
    for i in range(n):
        base = rng.random(3) * 255
        slope = rng.normal(size=(2, 3)) * 0.4
        img = base + xx[..., None] * slope[0] + yy[..., None] * slope[1]
        img += rng.normal(scale=12, size=img.shape)
        path = os.path.join(folder, f"{i:05d}.jpg")
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, quality=90)
        paths.append(path)
    return paths


def timed(fn, repeat: int = 1) -> float:
    """Best of ``repeat`` wall times (the least disturbed by other processes)."""
    best = float("inf")
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - started)
    return best


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--arch", default="ViT-S-32")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--images", type=int, default=256)
    ap.add_argument("--batch-sizes", default="8,32,64")
    ap.add_argument("--repeat", type=int, default=3, help="best of N runs per measurement")
    ap.add_argument("--num-workers", type=int, default=None,
                    help="decoding workers (default: encode's, min(4, cpus))")
    args = ap.parse_args()

    import torch

    device = pick_device(args.device)
    workers = args.num_workers if args.num_workers is not None else min(4, os.cpu_count() or 1)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    model, preprocess, _, name = load_model(args.arch, None, device)

    with tempfile.TemporaryDirectory(prefix="bench-encode-") as tmp:
        folder = os.path.join(tmp, "images")
        os.makedirs(folder)
        paths = make_jpegs(folder, args.images)
        locators = [("file", p) for p in paths]
        indices = list(range(len(paths)))
        pin = device.startswith("cuda")

        def sync():
            if pin:
                torch.cuda.synchronize()

        def forward(x):
            with torch.inference_mode(), _autocast(torch, device):
                out = model.encode_image(x.to(device, non_blocking=True), normalize=False)
            return out.float().cpu()

        decoded = torch.stack([preprocess(_open(p)) for p in paths[:max(batch_sizes)]])
        forward(decoded[:max(batch_sizes)])  # warm up
        sync()

        print(f"# {name} on {device} ({torch.get_num_threads()} torch threads), "
              f"{len(paths)} JPEGs {400}x{300}, {workers} decoding workers, "
              f"torch {torch.__version__}, best of {args.repeat}, "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cpus")
        header = ("batch", "decode img/s", "forward img/s", "pipeline img/s", "decode share")
        print("| " + " | ".join(header) + " |")
        print("|" + "|".join("---:" for _ in header) + "|")
        for bs in batch_sizes:
            n = len(paths)

            def decode_only(bs=bs):
                for _ in _image_batches(locators, indices, preprocess, bs, workers, pin):
                    pass

            def forward_only(bs=bs, n=n):
                for start in range(0, n, bs):
                    size = min(bs, n - start)
                    x = decoded[np.arange(start, start + size) % len(decoded)]
                    forward(x)
                sync()

            def pipeline(bs=bs):
                for _, x, _ in _image_batches(locators, indices, preprocess, bs, workers, pin):
                    forward(x)
                sync()

            t_dec, t_fwd, t_all = (timed(f, args.repeat)
                                   for f in (decode_only, forward_only, pipeline))
            print(f"| {bs} | {n / t_dec:,.1f} | {n / t_fwd:,.1f} | {n / t_all:,.1f} "
                  f"| {t_dec / (t_dec + t_fwd):.0%} |")

        bs = batch_sizes[-1]
        db = os.path.join(tmp, "db")
        result = encode([folder], db=db, batch_size=bs, num_workers=workers, quiet=True,
                        model=model, preprocess=preprocess, tokenizer=None, model_name=name)
        print(f"\nencode() end to end, batch {bs}: {result.images} images in "
              f"{result.seconds:.2f} s = {result.images / result.seconds:,.1f} img/s "
              f"(collect, resume check, decode+forward, spool, ingest with scores)")


def _open(path):
    from PIL import Image

    with Image.open(path) as img:
        return img.convert("RGB")


if __name__ == "__main__":
    main()
