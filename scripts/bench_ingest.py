"""Ingest of N x D float32 vectors from parquet: curator vs the fastest bare Lance write.

    python scripts/bench_ingest.py [--rows 1000000] [--dim 512] [--dir bench-out]

Baselines, each in a fresh process with the allocator fixed (performance.md):
  lance_from_memory  : arrays already in memory -> lance.write_dataset(storage 2.0)
  lance_from_parquet : pyarrow reads the same parquet in batches -> lance.write_dataset(2.0)
curator ingest (with scoring, and --no-score) reads the same parquet. Ratios are
against lance_from_parquet (same input, same output format); peak RSS per process.
"""

from __future__ import annotations

import argparse
import os
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
from benchlib import child, clip_like, table

PRELUDE = ""
SETUP = ("import curator, lance, numpy, pyarrow, pyarrow.parquet, duckdb; "
         "curator.tune_allocator()")


def write_parquet(path: str, n: int, d: int) -> None:
    writer = None
    for start, X in clip_like(n, d):
        k = len(X)
        batch = pa.table({
            "id": pa.array([f"r{start + i}" for i in range(k)]),
            "sample_id": pa.array([f"s{(start + i) // 2}" for i in range(k)]),
            "modality": pa.array(["image", "text"] * (k // 2) + ["image"] * (k % 2)),
            "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), d),
        })
        writer = writer or pq.ParquetWriter(path, batch.schema, compression="none")
        writer.write_table(batch, row_group_size=65_536)
    writer.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--dir", default="bench-out/ingest")
    args = ap.parse_args()
    args.dir = os.path.abspath(args.dir)  # children run in the checkout they measure
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, "src.parquet")
    if not os.path.exists(src):
        write_parquet(src, args.rows, args.dim)

    def fresh(name):
        path = os.path.join(args.dir, name)
        shutil.rmtree(path, ignore_errors=True)
        return path

    rows = []
    out = fresh("mem.lance")
    r = child(setup=SETUP, code=f"""
import numpy as np, pyarrow as pa, pyarrow.parquet as pq, lance
t = pq.read_table({src!r}, pre_buffer=False, buffer_size=1 << 24)
import time; t0 = time.perf_counter()
lance.write_dataset(t, {out!r}, data_storage_version="2.0")
RESULT = {{"write_only": time.perf_counter() - t0}}
""")
    rows.append({"what": "lance_from_memory (write only)", "seconds": r["write_only"], "peak_rss_mb": r["peak_rss_mb"]})
    out = fresh("parquet.lance")
    r = child(setup=SETUP, code=f"""
import pyarrow as pa, pyarrow.parquet as pq, lance
pf = pq.ParquetFile({src!r}, pre_buffer=False, buffer_size=1 << 24)  # fastest, least memory
reader = pa.RecordBatchReader.from_batches(pf.schema_arrow, pf.iter_batches(batch_size=65536))
lance.write_dataset(reader, {out!r}, data_storage_version="2.0")
""")
    base = r["seconds"]
    rows.append({"what": "lance_from_parquet (read + write)", "seconds": base, "peak_rss_mb": r["peak_rss_mb"]})
    for label, score in (("curator ingest", True), ("curator ingest --no-score", False)):
        db = fresh(f"db-{score}")
        r = child(setup=SETUP, code=f"curator.ingest([{src!r}], db={db!r}, score={score})")
        rows.append({"what": label, "seconds": r["seconds"], "peak_rss_mb": r["peak_rss_mb"]})
    for row in rows:
        row["ratio_vs_lance_from_parquet"] = row["seconds"] / base
    print(f"ingest of {args.rows:,} x {args.dim} float32 from parquet ({os.path.getsize(src) / 2**30:.2f} GiB)")
    print(table(rows, ["what", "seconds", "ratio_vs_lance_from_parquet", "peak_rss_mb"]))


if __name__ == "__main__":
    main()
