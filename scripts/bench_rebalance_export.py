"""Benchmark rebalance and every export unit against the fastest raw-library way of doing
the same work, in the same run; each measurement a fresh process, medians of ``--repeat``.

On seeded synthetic pairs (``--samples`` samples of one image and 1–5 captions, about 4
rows each, ``--dim``-d, ingested and scored):

- ``rebalance`` per sample by a label, among rows passing a predicate, vs one DuckDB
  query over the Lance dataset (per-concept counts of the passing images, ``random()`` per
  image, joined to every row by sample id) + one Lance ``update_columns`` commit;
- ``export --unit row|sample|pair`` (parquet) vs DuckDB ``COPY (SELECT …) TO … (FORMAT
  parquet)`` over the Lance dataset with the same selection written as SQL (the pair
  baseline joins image and caption rows and writes the same columns);
- ``export --unit pair --format npy`` vs the same DuckDB join fetched to Arrow and written
  with ``np.save`` (img_emb / text_emb) + a metadata parquet (whole result in memory).

    python scripts/bench_rebalance_export.py --samples 250000 --dim 512
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchlib import child, table  # noqa: E402

WHERE = "concept < 12 AND uncertainty > 0.3"
SETUP = ("import os, sys, shutil\n"
         f"sys.path.insert(0, {os.path.join(os.path.dirname(os.path.abspath(__file__)), '..')!r})\n"
         "from curator import tune_allocator\ntune_allocator()\n"
         "import duckdb, lance, numpy as np, pyarrow as pa, pyarrow.parquet as pq\n"
         "from curator.curation.rebalance import rebalance\nfrom curator.io.export import export\n")

SAMPLE_SQL = """
WITH m AS (SELECT id, sample_id, modality, coalesce(({w}), false) AS hit FROM ds),
s AS (SELECT sample_id, bool_or(modality = 'image') AS hi, bool_or(modality = 'image' AND hit) AS ih,
             bool_or(modality <> 'image') AS hc, bool_or(modality <> 'image' AND hit) AS ch
      FROM m WHERE sample_id IS NOT NULL GROUP BY sample_id),
k AS (SELECT m.id FROM m LEFT JOIN s USING (sample_id)
      WHERE m.hit AND (m.sample_id IS NULL OR ((NOT s.hi OR s.ih) AND (NOT s.hc OR s.ch))))
SELECT * FROM ds WHERE id IN (SELECT id FROM k)
"""


def pair_sql(scored: list[str], meta: list[str], where: str) -> str:
    cols = ["t.sample_id", "i.id AS image_id", "t.id AS text_id"]
    cols += [f"coalesce(t.{c}, i.{c}) AS {c}" for c in meta]
    cols += [f"i.{c} AS image_{c}" for c in scored] + [f"t.{c} AS text_{c}" for c in scored]
    cols += ["i.embedding AS image_embedding", "t.embedding AS text_embedding"]
    return (f"SELECT {', '.join(cols)} FROM (SELECT * FROM ds WHERE modality = 'text' AND ({where})) t "
            f"JOIN (SELECT * FROM ds WHERE modality = 'image' AND ({where})) i "
            "ON t.sample_id = i.sample_id")


RAW_REBALANCE = """
ds = lance.dataset(URI)
scalars = ds.to_table(columns=['sample_id', 'modality', 'concept', 'is_duplicate', 'conformity'],
                      with_row_id=True)
con = duckdb.connect()
con.register('ds', scalars)
con.execute("SELECT setseed(0.5)").fetchall()
t = con.sql('''
  WITH img AS (SELECT sample_id, concept FROM ds WHERE modality = 'image' AND ({w})),
  d AS (SELECT sample_id, random() < least(1.0, {cap} / count(*) OVER (PARTITION BY concept)) AS keep FROM img)
  SELECT ds._rowid, coalesce(d.keep AND ({w}), false) AS rebalance_keep FROM ds LEFT JOIN d USING (sample_id)
''').to_arrow_table()
frag = (t.column('_rowid').to_numpy() >> np.uint64(32)).astype(np.int64)
updated, fields = [], set()
for f in ds.get_fragments():
    part = t.filter(pa.array(frag == f.fragment_id))
    meta, mod = f.update_columns(part, left_on='_rowid')
    updated.append(meta); fields.update(mod)
op = lance.LanceOperation.Update(updated_fragments=updated, fields_modified=sorted(fields))
lance.LanceDataset.commit(URI, op, read_version=ds.version)
"""

RAW_COPY = """
con = duckdb.connect()
con.register('ds', lance.dataset(URI))
os.makedirs(OUT)
con.execute(f"COPY ({SQL}) TO '{OUT}/x.parquet' (FORMAT parquet)")
"""

RAW_NPY = """
con = duckdb.connect()
con.register('ds', lance.dataset(URI))
os.makedirs(OUT)
t = con.sql(SQL).to_arrow_table()
from curator.store.arrow import vectors
np.save(f'{OUT}/img_emb.npy', vectors(t, 'image_embedding'))
np.save(f'{OUT}/text_emb.npy', vectors(t, 'text_embedding'))
pq.write_table(t.drop_columns(['image_embedding', 'text_embedding']), f'{OUT}/metadata.parquet')
"""


def run(code: str, repeat: int, out: str | None = None) -> dict:
    times, peaks = [], []
    for _ in range(repeat):
        if out:
            shutil.rmtree(out, ignore_errors=True)
        r = child(code, setup=SETUP)
        times.append(r["seconds"])
        peaks.append(r["peak_rss_mb"])
    return {"median": statistics.median(times), "min": min(times), "max": max(times),
            "peak_mb": max(peaks)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--samples", type=int, default=50_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    from curator import ingest, tune_allocator
    from curator.curation.rebalance import rebalance
    from curator.io.export.pairs import metadata_names, row_columns
    from curator.synthetic import make_pairs

    tune_allocator()
    root = tempfile.mkdtemp(prefix="bench-rbx-")
    try:
        data = make_pairs(samples=args.samples, dim=args.dim, concepts=40, seed=0)
        n = len(data)
        src = data.write_parquet(os.path.join(root, "src"), parts=2)
        del data
        db = os.path.join(root, "db")
        ingest(src, db=db)
        uri = os.path.join(db, "embeddings.lance")
        cap = max(10, args.samples // 80)
        rebalance(db=db, cap=cap, by="concept", seed=0)  # so that rebalance_keep exists
        import lance

        schema = lance.dataset(uri).schema
        meta, scored = metadata_names(schema), row_columns(schema)
        rows = []

        def measure(name, ours, raw, out, baseline):
            a = run(ours, args.repeat, out + "-ours")
            b = run(raw, args.repeat, out + "-raw")
            rows.append({"operation": name, "curator s (min–max)": f"{a['median']:.2f} ({a['min']:.2f}–{a['max']:.2f})",
                         "raw s (min–max)": f"{b['median']:.2f} ({b['min']:.2f}–{b['max']:.2f})",
                         "ratio": a["median"] / b["median"], "curator peak MB": a["peak_mb"],
                         "raw peak MB": b["peak_mb"], "baseline": baseline})

        where_r = "not coalesce(is_duplicate, false) and conformity > 0.1"
        measure("rebalance per sample --where",
                f"rebalance(db={db!r}, cap={cap}, by='concept', seed=1, where={where_r!r})",
                f"URI = {uri!r}\n" + RAW_REBALANCE.format(w=where_r, cap=cap),
                os.path.join(root, "rb"), "DuckDB window count + random() + join; update_columns")
        for unit, sql in (("row", f"SELECT * FROM ds WHERE {WHERE}"),
                          ("sample", SAMPLE_SQL.format(w=WHERE)),
                          ("pair", pair_sql(scored, meta, WHERE))):
            out = os.path.join(root, f"x-{unit}")
            measure(f"export --unit {unit} (parquet)",
                    f"export(db={db!r}, out={out + '-ours'!r}, where={WHERE!r}, unit={unit!r})",
                    f"URI = {uri!r}\nOUT = {out + '-raw'!r}\nSQL = {sql!r}\n" + RAW_COPY,
                    out, "DuckDB COPY (SELECT … same selection) TO parquet")
        out = os.path.join(root, "x-npy")
        measure("export --unit pair --format npy",
                f"export(db={db!r}, out={out + '-ours'!r}, where={WHERE!r}, unit='pair', format='npy')",
                f"URI = {uri!r}\nOUT = {out + '-raw'!r}\nSQL = {pair_sql(scored, meta, WHERE)!r}\n"
                + RAW_NPY, out, "DuckDB join to Arrow + np.save + metadata parquet")
        import duckdb

        con = duckdb.connect()
        con.register("ds", lance.dataset(uri))
        sizes = {unit: con.sql(f"SELECT count(*) FROM ({sql})").fetchall()[0][0] for unit, sql in (
            ("row", f"SELECT id FROM ds WHERE {WHERE}"), ("sample", SAMPLE_SQL.format(w=WHERE)),
            ("pair", pair_sql(scored, meta, WHERE)))}
        print(f"{n} rows x {args.dim}-d ({args.samples} samples), where: {WHERE}; cap {cap}; "
              f"median of {args.repeat} fresh processes; selected: {sizes['row']} rows, "
              f"{sizes['sample']} rows by sample, {sizes['pair']} pairs")
        print(table(rows, ["operation", "curator s (min–max)", "raw s (min–max)", "ratio",
                           "curator peak MB", "raw peak MB", "baseline"]))
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
