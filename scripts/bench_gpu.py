"""The compute backends' kernels on every device present, against each device's measured
GEMM peak in the same run; then ``cluster`` and ``dedupe`` end to end per device.

    python scripts/bench_gpu.py                      # defaults: ~2–4 min on a GPU machine
    python scripts/bench_gpu.py --rows 100000 --table-rows 100000 --no-e2e   # quick

Devices: ``cpu`` (numpy), ``torch-cpu`` (when torch is installed) and ``cuda`` (when
torch sees a GPU; otherwise the report says "CUDA not present"). For each device:

- GEMM peak: the median of 3 square float32 products (4096² on a CPU, 8192² on CUDA,
  operands already on the device), in GFLOP/s;
- each kernel of :mod:`curator.geometry.backend` on ``--rows`` × ``--dim`` float32 rows
  from host memory, results back in host memory (as curator calls them): second moment
  (2·n·d² FLOP), whitened squared norms (2·n·d²), top centroid of unit rows against
  ``--k`` centroids (2·n·k·d), threshold pairs of ``--pair-rows`` × ``--pair-rows`` unit
  rows (2·m²·d). Median of 3 runs after one warm-up, min–max, GFLOP/s, share of the
  device's GEMM peak;
- end to end (``--no-e2e`` skips): a ``--table-rows`` × ``--dim`` table (two
  modalities, ingested once with ``--no-score``), then ``curator cluster --k K`` and
  ``curator dedupe --eps 0.01`` with ``--device`` each, every run a fresh process, median
  of 3 (min–max), against a bare Lance scan of the vectors (tuned allocator) in the same
  run.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from bench_scale import RAW_SCAN  # noqa: E402  (one baseline scan for every benchmark)

from curator.geometry.backend import get_backend  # noqa: E402
from curator.geometry.kmeans import unit_rows  # noqa: E402


def devices() -> tuple[list[str], str]:
    """The devices to measure, and a line about CUDA."""
    found = ["cpu"]
    try:
        import torch
    except ImportError:
        return found, "torch not installed: numpy only; CUDA not present"
    found.append("torch-cpu")
    if torch.cuda.is_available():
        found.append("cuda")
        return found, f"CUDA: {torch.cuda.get_device_name(0)} (torch {torch.__version__})"
    return found, f"CUDA not present (torch {torch.__version__} sees no GPU)"


def timed(fn, repeat: int = 3) -> list[float]:
    fn()  # warm-up: allocations, kernels, thread pools
    out = []
    for _ in range(repeat):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return out


def gemm_peak(device: str, repeat: int) -> tuple[float, list[float], int]:
    """(GFLOP/s of the median run, runs, size) of a square float32 GEMM on the device."""
    if device == "cpu":
        size = 4096
        rng = np.random.default_rng(0)
        A = rng.standard_normal((size, size), np.float32)
        B = rng.standard_normal((size, size), np.float32)
        runs = timed(lambda: A @ B, repeat)
    else:
        import torch

        size = 8192 if device == "cuda" else 4096
        dev = torch.device("cuda" if device == "cuda" else "cpu")
        A = torch.randn(size, size, device=dev)
        B = torch.randn(size, size, device=dev)

        def run():
            A @ B
            if device == "cuda":
                torch.cuda.synchronize()

        runs = timed(run, repeat)
    return 2 * size ** 3 / statistics.median(runs) / 1e9, runs, size


def kernels(n: int, d: int, k: int, m: int, seed: int = 0):
    """(name, FLOP, function of a backend) for each kernel, on seeded data."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d).astype(np.float32)
    X = (mean + rng.standard_normal((n, d), np.float32) * np.geomspace(1, 0.05, d).astype(np.float32))
    shift = X[:1000].mean(axis=0)
    W = np.linalg.qr(rng.normal(size=(d, d)))[0].astype(np.float32)
    U = unit_rows(X)
    C = U[rng.choice(n, k, replace=False)]
    A, B = U[:m], U[m:2 * m] if 2 * m <= n else U[:m]
    return [
        ("second moment Σ(x−c)(x−c)ᵀ", 2.0 * n * d * d, lambda b: b.second_moment(X, shift)),
        ("whitened ‖(x−m)W‖²", 2.0 * n * d * d, lambda b: b.whitened_sq_norms(X, shift, W)),
        (f"top centroid (k={k})", 2.0 * n * k * d, lambda b: b.top_centroids(U, C, 1)),
        (f"threshold pairs {m}×{m}", 2.0 * m * m * d, lambda b: b.threshold_pairs(A, B, 0.99)),
    ]


def make_table(folder: str, rows: int, d: int) -> str:
    """A two-modality table of ``rows`` clustered vectors, ingested without scores."""
    db = os.path.join(folder, "db")
    if os.path.exists(db):
        return db
    rng = np.random.default_rng(1)
    for modality in ("image", "text"):
        concepts = rng.normal(size=(500, d)).astype(np.float32)
        mean = rng.normal(size=d).astype(np.float32) * 0.6
        z = concepts[rng.integers(0, 500, rows // 2)] + 0.5 * rng.standard_normal((rows // 2, d), np.float32)
        X = mean + z * np.geomspace(1, 0.05, d).astype(np.float32)
        X[: rows // 200] = X[rows // 200: rows // 100] * 1.01  # some exact-direction copies
        path = os.path.join(folder, f"{modality}.npy")
        np.save(path, X)
        subprocess.run([sys.executable, "-m", "curator", "--db", db, "--quiet", "ingest", path,
                        "--modality", modality, "--no-score"], check=True, cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT})
        os.remove(path)
    return db


def run_cli(db: str, args: list[str]) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "curator", "--db", db, "--quiet", *args], check=True,
                   cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t


def raw_scan(db: str) -> float:
    out = subprocess.run([sys.executable, "-c", RAW_SCAN, os.path.join(db, "embeddings.lance")],
                         capture_output=True, text=True, check=True, cwd=ROOT,
                         env={**os.environ, "PYTHONPATH": ROOT})
    return float(out.stdout.strip().splitlines()[-1])


def fmt(runs: list[float]) -> tuple[str, str]:
    return f"{statistics.median(runs):.3f}", f"{min(runs):.3f}–{max(runs):.3f}"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=262_144, help="rows of the kernel inputs")
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--k", type=int, default=100, help="centroids (kernels and cluster)")
    ap.add_argument("--pair-rows", type=int, default=16_384, help="rows of each side of the pairs")
    ap.add_argument("--table-rows", type=int, default=200_000, help="rows of the end-to-end table")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-e2e", action="store_true", help="kernels only")
    ap.add_argument("--devices", nargs="*", help="only these (default: every one present)")
    ap.add_argument("--workdir", default=None, help="keep the end-to-end table here")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args(argv)

    present, cuda_line = devices()
    chosen = [d for d in present if not args.devices or d in args.devices]
    print(cuda_line)
    import numpy

    print(f"numpy {numpy.__version__}, {os.cpu_count()} CPUs; rows {args.rows:,} × {args.dim}, "
          f"k {args.k}, pairs {args.pair_rows:,}²; median of {args.repeat} (min–max)\n")
    results = {"cuda": cuda_line, "peaks": {}, "kernels": [], "e2e": []}
    for device in chosen:
        peak, runs, size = gemm_peak(device, args.repeat)
        results["peaks"][device] = {"gflops": peak, "runs": runs, "size": size}
        print(f"{device}: GEMM peak {peak:.0f} GFLOP/s ({size}² float32, median {fmt(runs)[0]} s)",
              flush=True)
    print()
    lines = ["| kernel | device | median s | min–max s | GFLOP/s | share of the device's GEMM peak |",
             "|---|---|---|---|---|---|"]
    for name, flop, fn in kernels(args.rows, args.dim, args.k, args.pair_rows):
        for device in chosen:
            b = get_backend(device)
            runs = timed(lambda b=b: fn(b), args.repeat)
            rate = flop / statistics.median(runs) / 1e9
            share = rate / results["peaks"][device]["gflops"]
            results["kernels"].append({"kernel": name, "device": device, "runs": runs,
                                       "gflops": rate, "share": share})
            lines.append(f"| {name} | {device} | {fmt(runs)[0]} | {fmt(runs)[1]} | {rate:.0f} | "
                         f"{100 * share:.0f}% |")
            print(lines[-1], flush=True)
    print("\n" + "\n".join(lines))

    if not args.no_e2e:
        folder = args.workdir or tempfile.mkdtemp(prefix="curator-bench-gpu-")
        os.makedirs(folder, exist_ok=True)
        try:
            db = make_table(folder, args.table_rows, args.dim)
            scans = [raw_scan(db) for _ in range(args.repeat)]
            base = statistics.median(scans)
            e2e = ["", f"end to end on a {args.table_rows:,} × {args.dim} table (two modalities), "
                   f"each run a fresh process", "",
                   "| command | device | median s | min–max s | × bare Lance scan |", "|---|---|---|---|---|",
                   f"| bare Lance scan of the vectors | – | {fmt(scans)[0]} | {fmt(scans)[1]} | 1.0 |"]
            for label, cmd in ((f"cluster --k {args.k}", ["cluster", "--k", str(args.k), "--seed", "0"]),
                               ("dedupe --eps 0.01", ["dedupe", "--eps", "0.01"])):
                for device in chosen:
                    runs = [run_cli(db, [*cmd, "--device", device]) for _ in range(args.repeat)]
                    results["e2e"].append({"command": label, "device": device, "runs": runs,
                                           "scan": scans})
                    e2e.append(f"| {label} | {device} | {fmt(runs)[0]} | {fmt(runs)[1]} | "
                               f"{statistics.median(runs) / base:.1f} |")
                    print(e2e[-1], flush=True)
            print("\n".join(e2e))
        finally:
            if not args.workdir:
                shutil.rmtree(folder, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
