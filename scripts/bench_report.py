"""Benchmark ``curator report`` against one bare Lance scan of the embedding column.

Goal: the report costs under a minute beyond one scan of the table at 1M × 512.
Vectors are generated with numpy straight into two .npy files (an off-centre,
axis-aligned ellipsoid shell per modality; ``make_pairs`` is too slow at this size) and
ingested with ``curator.ingest(..., modality=...)``. Then, in one process with the
allocator tuned: a bare scan of ``embedding`` (the raw-library baseline, median of
``--repeat``), and the report (median of ``--repeat``), with the report's own phases.

    python scripts/bench_report.py [--rows 1000000] [--dim 512] [--sample 5000] [--repeat 3] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from curator.store.arrow import vectors
from curator.store.columns import SCAN_BATCH_ROWS
from curator.store.database import Database, tune_allocator

tune_allocator()

from curator import ingest
from curator.views.report import report

CHUNK = 100_000


def write_modality(path: str, rows: int, dim: int, radius: float, seed: int) -> str:
    """rows × dim float32: mean of norm ``radius`` plus decaying per-axis noise, in chunks."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=dim)
    mean = (mean / np.linalg.norm(mean) * radius).astype(np.float32)
    scales = np.geomspace(1.0, 0.05, dim).astype(np.float32)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(rows, dim))
    for lo in range(0, rows, CHUNK):
        hi = min(rows, lo + CHUNK)
        out[lo:hi] = mean + rng.standard_normal((hi - lo, dim), dtype=np.float32) * scales
    out.flush()
    del out
    return path


def bare_scan(db: str) -> float:
    dataset = Database(db).dataset("embeddings")
    started = time.perf_counter()
    rows = 0
    for batch in dataset.to_batches(columns=["embedding"], batch_size=SCAN_BATCH_ROWS):
        rows += len(vectors(batch))
    return time.perf_counter() - started


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000, help="total rows (half image, half text)")
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--sample", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--workdir", default=None, help="keep data here (default: a temp folder, removed)")
    args = parser.parse_args(argv)
    work = args.workdir or tempfile.mkdtemp(prefix="bench_report_")
    os.makedirs(work, exist_ok=True)
    db = os.path.join(work, "db.lancedb")
    try:
        if not Database(db).has_table("embeddings"):
            t = time.perf_counter()
            half = args.rows // 2
            sources = [write_modality(os.path.join(work, "image.npy"), half, args.dim, 6.0, 1),
                       write_modality(os.path.join(work, "text.npy"), args.rows - half, args.dim, 4.0, 2)]
            generated = time.perf_counter() - t
            t = time.perf_counter()
            for path, modality in zip(sources, ("image", "text")):
                ingest([path], db=db, modality=modality)
            print(f"generated {args.rows:,} × {args.dim} in {generated:.1f} s; "
                  f"ingested in {time.perf_counter() - t:.1f} s", file=sys.stderr)
        scans, reports, phases = [], [], []
        for k in range(args.repeat):
            scans.append(bare_scan(db))
            t = time.perf_counter()
            result = report(db=db, out=os.path.join(work, "report"), sample=args.sample, seed=k)
            reports.append(time.perf_counter() - t)
            phases.append(json.loads(Path(result.report_json).read_text())["timings_seconds"])
        scan_s, report_s = statistics.median(scans), statistics.median(reports)
        phase = {k: statistics.median(p[k] for p in phases) for k in phases[0]}
        print(f"\ncurator report on {args.rows:,} × {args.dim} float32 rows, sample {args.sample:,} per "
              f"modality; median of {args.repeat}\n")
        print("| step | seconds | vs bare scan |")
        print("|---|---|---|")
        print(f"| bare Lance scan of `embedding` ({SCAN_BATCH_ROWS:,}-row batches) | {scan_s:.2f} | 1.00× |")
        print(f"| `curator report` (total) | {report_s:.2f} | {report_s / scan_s:.2f}× |")
        for name, seconds in phase.items():
            print(f"| · report phase: {name} | {seconds:.2f} | {seconds / scan_s:.2f}× |")
        print(f"| **report − scan** (goal: < 60 s) | **{report_s - scan_s:.2f}** | |")
    finally:
        if not args.workdir:
            shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
