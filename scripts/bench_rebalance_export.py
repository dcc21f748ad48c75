"""Benchmark rebalance and export against the fastest raw-library way of doing the same.

On seeded synthetic pairs (``--samples`` samples, about 3.5 rows each, ``--dim``-d):

- rebalance by a label: ``curator.rebalance`` vs raw Arrow group-by counts + numpy RNG
  decisions (not reproducible per id) + one Lance ``fragment.update_columns`` commit;
- export parquet of a predicate: ``curator.export`` vs DuckDB predicate over Lance then
  ``lance to_table(filter)`` + ``pq.write_table`` (whole selection in memory);
- export npy (clip-retrieval) of all rows: vs ``to_table`` + ``np.save`` of the vectors;
- export lance: vs ``lance.write_dataset(to_batches(filter))``.

    python scripts/bench_rebalance_export.py --samples 50000 --dim 512
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from curator import ingest, tune_allocator
from curator.curation.rebalance import rebalance
from curator.io.export import export
from curator.synthetic import make_pairs


def best(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


def raw_rebalance(uri: str, cap: int) -> None:
    import lance
    import pyarrow as pa

    ds = lance.dataset(uri)
    counts = ds.to_table(columns=["modality", "concept"]).group_by(["modality", "concept"]) \
        .aggregate([([], "count_all")])
    lookup = {(m, c): n for m, c, n in zip(*(counts.column(i).to_pylist() for i in range(3)))}
    rng = np.random.default_rng(0)
    updated, fields = [], set()
    for fragment in ds.get_fragments():
        t = fragment.to_table(columns=["modality", "concept"], with_row_id=True)
        c = np.array([lookup[k] for k in zip(t.column("modality").to_pylist(),
                                             t.column("concept").to_pylist())], np.float64)
        keep = rng.random(len(c)) < np.minimum(1, cap / c)
        meta, mod = fragment.update_columns(pa.table({"_rowid": t.column("_rowid"),
                                                      "rebalance_keep": keep}), left_on="_rowid")
        updated.append(meta)
        fields.update(mod)
    op = lance.LanceOperation.Update(updated_fragments=updated, fields_modified=sorted(fields))
    lance.LanceDataset.commit(uri, op, read_version=ds.version)


def raw_parquet(uri: str, where: str, out: str) -> None:
    import duckdb
    import lance
    import pyarrow.parquet as pq

    ds = lance.dataset(uri)
    con = duckdb.connect()
    con.register("embeddings", ds)
    ids = con.sql(f"SELECT id FROM embeddings WHERE {where}").to_arrow_table().column("id")
    import pyarrow.compute as pc

    table = ds.to_table()
    table = table.filter(pc.is_in(table.column("id"), value_set=ids.combine_chunks()))
    pq.write_table(table, os.path.join(out, "x.parquet"))


def raw_npy(uri: str, out: str) -> None:
    import lance

    from curator.store.arrow import vectors

    t = lance.dataset(uri).to_table(columns=["id", "modality", "embedding"])
    np.save(os.path.join(out, "x.npy"), vectors(t))


def raw_lance(uri: str, where: str, out: str) -> None:
    import lance

    ds = lance.dataset(uri)
    lance.write_dataset(ds.scanner(filter=where).to_reader(), os.path.join(out, "x.lance"),
                        data_storage_version="2.0")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=20_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    tune_allocator()
    root = tempfile.mkdtemp(prefix="bench-rb-")
    try:
        data = make_pairs(samples=args.samples, dim=args.dim, concepts=40, seed=0)
        src = data.write_parquet(os.path.join(root, "src"), parts=2)
        db = os.path.join(root, "db")
        ingest(src, db=db)
        uri = os.path.join(db, "embeddings.lance")
        n, cap = len(data), max(10, len(data) // 200)
        where = "concept < 5 AND conformity > 0.2"
        rows = []

        def out_dir(name):
            path = os.path.join(root, name)
            shutil.rmtree(path, ignore_errors=True)
            os.makedirs(path)
            return path

        t_raw = best(lambda: raw_rebalance(uri, cap), args.repeat)
        t_cur = best(lambda: rebalance(db=db, cap=cap, by="concept"), args.repeat)
        rows.append(("rebalance --by concept", t_cur, t_raw, "Arrow group_by + numpy RNG + update_columns"))
        t_raw = best(lambda: raw_parquet(uri, where, out_dir("raw_pq")), args.repeat)
        t_cur = best(lambda: export(db=db, out=os.path.join(root, "pq"), where=where, overwrite=True),
                     args.repeat)
        rows.append(("export parquet --where", t_cur, t_raw, "DuckDB ids + to_table + pq.write_table"))
        t_raw = best(lambda: raw_npy(uri, out_dir("raw_npy")), args.repeat)
        t_cur = best(lambda: export(db=db, out=os.path.join(root, "npy"), format="npy", overwrite=True),
                     args.repeat)
        rows.append(("export npy (all rows)", t_cur, t_raw, "to_table + np.save"))
        t_raw = best(lambda: raw_lance(uri, where, out_dir("raw_lance")), args.repeat)
        t_cur = best(lambda: export(db=db, out=os.path.join(root, "lance"), where=where,
                                    format="lance", overwrite=True), args.repeat)
        rows.append(("export lance --where", t_cur, t_raw, "lance.write_dataset(scanner(filter))"))
        t_cur = best(lambda: export(db=db, out=os.path.join(root, "jsonl"), where=where,
                                    format="jsonl", overwrite=True), args.repeat)
        rows.append(("export jsonl --where", t_cur, float("nan"), "(no raw baseline)"))

        print(f"{n} rows x {args.dim}-d, cap {cap}, where: {where}; best of {args.repeat}")
        print(f"{'operation':<26}{'curator s':>10}{'raw s':>8}{'ratio':>7}  baseline")
        for name, cur, raw, what in rows:
            print(f"{name:<26}{cur:>10.3f}{raw:>8.3f}{cur / raw:>7.2f}  {what}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
