"""Local engine vs Ray (local instance) on 1M x 512 rows: statistics rebuild and rescoring.

    python scripts/bench_ray.py [--rows 1000000] [--dim 512] [--parts 4] [--repeat 3]

Builds a database of image-text pairs (``--parts`` ingests, so ``--parts`` fragments),
then times, in one run, medians of ``--repeat``:

- raw: the fastest raw-library way of doing the same arithmetic (a Lance scan of the
  vectors plus the numpy products the computation needs), the baseline of the ratios;
- statistics: ``curator.engine.statistics.accumulate`` on the local and the Ray engine;
- refresh: ``score_rows`` of every row with ``all_uncertainty`` (what ``refresh`` does
  when all rows are stale), local vs Ray; the Ray time split into the vector map, the
  driver's global step over scalars and the per-fragment writes.

It then prints an estimate for 1B rows from the measured per-row costs.
"""

from __future__ import annotations

import argparse
import logging
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curator.store.arrow import fixed_list
from curator.store.database import tune_allocator

tune_allocator()


def make_parts(folder: str, rows: int, dim: int, parts: int, seed: int = 0) -> list[str]:
    """Image-text pairs on two off-centre anisotropic ellipsoids, as parquet parts."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    scales = (1.0 / np.sqrt(np.arange(1, dim + 1))).astype(np.float32)
    means = {m: (rng.standard_normal(dim) * 0.5 + 2.0).astype(np.float32) for m in ("image", "text")}
    samples = rows // 2
    paths, per = [], samples // parts
    for k in range(parts):
        lo, hi = k * per, samples if k == parts - 1 else (k + 1) * per
        z = rng.standard_normal((hi - lo, dim), dtype=np.float32) * scales
        img = means["image"] + z + 0.3 * rng.standard_normal((hi - lo, dim), dtype=np.float32) * scales
        txt = means["text"] + z + 0.5 * rng.standard_normal((hi - lo, dim), dtype=np.float32) * scales
        sid = [f"s{i:09d}" for i in range(lo, hi)]
        table = pa.table({
            "id": [f"i{i:09d}" for i in range(lo, hi)] + [f"t{i:09d}" for i in range(lo, hi)],
            "sample_id": sid + sid,
            "modality": ["image"] * (hi - lo) + ["text"] * (hi - lo),
            "embedding": fixed_list(np.concatenate([img, txt])),
        })
        paths.append(os.path.join(folder, f"part-{k:03d}.parquet"))
        pq.write_table(table, paths[-1])
    return paths


def timed(fn, repeat: int):
    times, result = [], None
    for _ in range(repeat):
        start = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times), result


def raw_stats(dataset) -> float:
    """Scan + the sums and the d x d product, numpy only."""
    from curator.store.arrow import vectors

    total = 0.0
    for batch in dataset.to_batches(columns=["embedding"], batch_size=65_536):
        X = vectors(batch)
        Q = X.T @ X
        total += float(X.sum(dtype=np.float64)) + float(Q[0, 0])
    return total


def raw_scores(dataset, W: np.ndarray, M: np.ndarray) -> float:
    """Scan + the products a rescoring needs: X @ [U, means] and the whitening X @ W."""
    from curator.store.arrow import vectors

    total = 0.0
    for batch in dataset.to_batches(columns=["embedding"], batch_size=65_536):
        X = vectors(batch)
        Y = X @ W
        total += float(np.einsum("ij,ij->i", Y, Y).sum()) + float((X @ M).sum())
    return total


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--parts", type=int, default=4)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--cpus", type=int, default=os.cpu_count())
    args = parser.parse_args(argv)

    import ray

    from curator.engine import scoring
    from curator.engine import statistics as stats_mod
    from curator.engine.scoring import read_index, score_rows
    from curator.io.ingest import ingest
    from curator.store.database import Database

    work = tempfile.mkdtemp(prefix="bench_ray_")
    try:
        start = time.perf_counter()
        for path in make_parts(os.path.join(work, "src"), args.rows, args.dim, args.parts):
            ingest([path], db=os.path.join(work, "db"))
        print(f"built {args.rows:,} x {args.dim} rows in {args.parts} fragments "
              f"in {time.perf_counter() - start:.1f} s", file=sys.stderr)
        database = Database(os.path.join(work, "db"))
        dataset = database.dataset("embeddings")
        n = dataset.count_rows()

        start = time.perf_counter()
        ray.init(num_cpus=args.cpus, include_dashboard=False, log_to_driver=False,
                 logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        logging.getLogger("ray.data").setLevel(logging.ERROR)
        ray_init = time.perf_counter() - start

        rows = {}
        raw_stats(dataset)  # the first pass pays the heap growth once
        rows["stats: raw scan + numpy"] = timed(lambda: raw_stats(dataset), args.repeat)[0]
        rows["stats: local engine"], local = timed(
            lambda: stats_mod.accumulate(dataset, args.dim), args.repeat)
        stats_mod.accumulate(dataset, args.dim, engine="ray")  # the first run warms the workers
        rows["stats: ray engine"], remote = timed(
            lambda: stats_mod.accumulate(dataset, args.dim, engine="ray"), args.repeat)
        worst = max(float(np.abs(remote.modalities[m].covariance - s.covariance).max()
                          / np.abs(s.covariance).max()) for m, s in local.nonempty().items())

        base = stats_mod.current(database, "embeddings", dataset)
        index = read_index(dataset)
        index_bytes = sum(getattr(index, k).nbytes for k in ("rowid", "sample", "modality"))
        index_bytes += sum(a.nbytes for a in index.columns.values())
        live = base.nonempty()
        W = live["image"].whitening().matrix
        M = np.stack([live["image"].U, live["image"].mean, live["text"].mean], 1).astype(np.float32)
        rows["refresh: raw scan + numpy"] = timed(lambda: raw_scores(dataset, W, M), args.repeat)[0]

        def rescore(engine):
            ds = database.dataset("embeddings")
            return score_rows(ds, base.copy(), None, read_index(ds), "bench", True, engine=engine)

        rows["refresh: local engine"] = timed(lambda: rescore("local"), args.repeat)[0]
        parts = {"map": [], "write": []}

        def clocked(name, fn):
            def wrapper(*a, **k):
                start = time.perf_counter()
                try:
                    return fn(*a, **k)
                finally:
                    parts[name].append(time.perf_counter() - start)
            return wrapper

        scoring.compute_scalars = clocked("map", scoring.compute_scalars)
        scoring.write_scores = clocked("write", scoring.write_scores)
        rows["refresh: ray engine"] = timed(lambda: rescore("ray"), args.repeat)[0]
        ray_map, ray_write = statistics.median(parts["map"]), statistics.median(parts["write"])
        ray_driver = rows["refresh: ray engine"] - ray_map - ray_write
    finally:
        ray.shutdown()
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{n:,} rows x {args.dim}, {args.parts} fragments, Ray local with {args.cpus} CPUs "
          f"(ray.init {ray_init:.1f} s, not counted); medians of {args.repeat}")
    print(f"{'operation':<28} {'time':>8} {'vs raw':>7} {'rows/s':>12}")
    for name, seconds in rows.items():
        raw = rows[name.split(":")[0] + ": raw scan + numpy"]
        print(f"{name:<28} {seconds:8.2f} {seconds / raw:6.2f}x {n / seconds:12,.0f}")
    print(f"ray refresh split: vector map {ray_map:.2f} s, driver global step "
          f"{ray_driver:.2f} s, fragment writes {ray_write:.2f} s")
    print(f"ray / local: stats {rows['stats: ray engine'] / rows['stats: local engine']:.2f}x, "
          f"refresh {rows['refresh: ray engine'] / rows['refresh: local engine']:.2f}x; "
          f"covariance max relative difference {worst:.1e}")

    # -- 1B rows, from the measured per-row costs --------------------------------------
    target, cores_per_node = 1_000_000_000, 32
    stats_core = rows["stats: ray engine"] * args.cpus / n  # core-seconds per row
    map_core = (ray_map + ray_write) * args.cpus / n
    driver_row = ray_driver / n  # single-process seconds per row (scalars only)
    per_row = index_bytes / n * 2.5  # index + scalars + new columns on the driver, measured index
    print(f"\nestimate for {target:,} rows x {args.dim} ({target * args.dim * 4 / 1e12:.2f} TB "
          f"of float32 vectors); driver row index {index_bytes / n:.0f} B/row measured:")
    print(f"  statistics: {stats_core * 1e6:.2f} core-us/row x 1e9 = "
          f"{stats_core * target / 3600:.0f} core-hours")
    print(f"  scoring map + writes: {map_core * 1e6:.2f} core-us/row x 1e9 = "
          f"{map_core * target / 3600:.0f} core-hours")
    print(f"  driver global step: {driver_row * 1e6:.2f} us/row x 1e9 = "
          f"{driver_row * target / 3600:.1f} h on one process, ~{per_row * target / 2**30:.0f} GiB "
          f"of scalars at its peak (index x 2.5)")
    for nodes in (8, 32, 64):
        cores = nodes * cores_per_node
        print(f"  {nodes:>3} nodes x {cores_per_node} cores: statistics "
              f"{stats_core * target / cores / 60:.1f} min, refresh "
              f"{(map_core * target / cores + driver_row * target) / 60:.1f} min "
              f"(of which driver {driver_row * target / 60:.1f} min)")


if __name__ == "__main__":
    main()
