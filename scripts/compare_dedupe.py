"""Another checkout's dedupe against this one's on the same table: every keep policy,
streamed and in memory; prints whether the written dup_group and is_duplicate columns
are identical.

    python scripts/compare_dedupe.py CHECKOUT [--work DIR]

The table: 3,000 seeded pairs × 32 plus 600 copies of random rows under new ids (ties in
the keys, and rows without a pair, so null alignments).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
ap.add_argument("checkout")
ap.add_argument("--work", default="/tmp/compare-dedupe")
args = ap.parse_args()
work = args.work
here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
shutil.rmtree(work, ignore_errors=True); os.makedirs(work)
sys.path.insert(0, here)
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curator import ingest  # noqa: E402
from curator.synthetic import make_pairs
data = make_pairs(samples=3000, dim=32, concepts=8, seed=2)
t = data.table()
rng = np.random.default_rng(0)
extra = rng.choice(t.num_rows, 600, replace=False)
copies = t.take(pa.array(extra))
ids = [f"c{i}-{x}" for i, x in enumerate(copies.column("id").to_pylist())]
copies = copies.set_column(copies.schema.get_field_index("id"), "id", pa.array(ids))
copies = copies.set_column(copies.schema.get_field_index("sample_id"), "sample_id", pa.array([f"cs{i}" for i in range(len(ids))]))
big = pa.concat_tables([t, copies.cast(t.schema)])
pq.write_table(big, f"{work}/src.parquet")
ingest([f"{work}/src.parquet"], db=f"{work}/base")
code = r'''
import sys, lance, json
sys.path.insert(0, sys.argv[1])
import curator.curation.dedupe as dd
if sys.argv[4] == "1":
    dd.IN_MEMORY_ROWS = 0
from curator import dedupe
r = dedupe(db=sys.argv[2], eps=0.02, keep=sys.argv[3], seed=7)
t = lance.dataset(sys.argv[2] + "/embeddings.lance").to_table(columns=["id", "dup_group", "is_duplicate"])
print(json.dumps([r.modalities, t.column("id").to_pylist(), t.column("dup_group").to_pylist(), t.column("is_duplicate").to_pylist()]))
'''
bad = 0
for keep in ["least-conformity", "most-conformity", "best-alignment", "random"]:
    for streamed in ("0", "1"):
        out = []
        for src in (args.checkout, here):
            db = f"{work}/{keep}-{streamed}-{'other' if src == args.checkout else 'this'}"
            shutil.copytree(f"{work}/base", db)
            p = subprocess.run([sys.executable, "-c", code, src, db, keep, streamed], capture_output=True, text=True)
            if p.returncode:
                print(p.stderr[-2000:]); sys.exit(1)
            out.append(json.loads(p.stdout.strip().splitlines()[-1]))
        same = out[0] == out[1]
        bad += not same
        print(keep, "streamed" if streamed == "1" else "memory", "identical" if same else "DIFFERENT",
              {m: (r["groups"], r["duplicates"]) for m, r in out[1][0].items()}, flush=True)
print("differences", bad)
