"""Concurrency: several processes ingesting into one table at once all land, statistics
equal a from-scratch recomputation, and a reader querying meanwhile always sees a
consistent version (every batch all or nothing, no duplicate ids, scored rows finite).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curator import ingest
from curator.engine.statistics import accumulate
from curator.maintenance.verify import verify
from curator.store.database import Database
from curator.store.statistics import StatsStore

WRITERS = 3
ROUNDS = 4  # ingests per writer, back to back, so that commits interleave
ROWS = 100
DIM = 16

WRITER = """
import sys, time
from curator import ingest
go = float(sys.argv[3])
while time.time() < go:
    time.sleep(0.005)
for path in sys.argv[4:]:
    r = ingest([path], db=sys.argv[1])
    print(r.rows, r.table_version)
"""

READER = """
import json, sys, time
from curator.io.query import query
db, stop, batches = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
import os
seen, bad, reads = set(), [], 0
while True:
    done = os.path.exists(stop)
    t = query("select id, conformity, stats_version from embeddings", db=db)
    ids = t.column("id").to_pylist()
    reads += 1
    if len(ids) != len(set(ids)):
        bad.append(f"duplicate ids at {len(ids)} rows")
    present = set(ids)
    for name, members in batches.items():
        k = len(present.intersection(members))
        if k not in (0, len(members)):
            bad.append(f"batch {name}: {k} of {len(members)} rows visible")
    seen.add(len(ids))
    if done:
        break
print(json.dumps({"reads": reads, "counts": sorted(seen), "bad": bad[:5]}))
"""


def _part(path, prefix, rng):
    X = (rng.normal(size=(ROWS, DIM)) + 1.0).astype(np.float32)
    pq.write_table(pa.table({
        "id": [f"{prefix}-{i}" for i in range(ROWS)],
        "sample_id": [f"{prefix}-s{i // 2}" for i in range(ROWS)],
        "modality": ["image" if i % 2 == 0 else "text" for i in range(ROWS)],
        "embedding": pa.array(list(X), pa.list_(pa.float32())),
    }), path)
    return str(path)


def test_concurrent_ingests_all_land_with_exact_statistics(tmp_path):
    rng = np.random.default_rng(11)
    db = str(tmp_path / "db.lancedb")
    ingest([_part(tmp_path / "base.parquet", "base", rng)], db=db)
    parts = [[_part(tmp_path / f"w{k}-{r}.parquet", f"w{k}-{r}", rng) for r in range(ROUNDS)]
             for k in range(WRITERS)]
    batches = {f"w{k}-{r}": [f"w{k}-{r}-{i}" for i in range(ROWS)]
               for k in range(WRITERS) for r in range(ROUNDS)}
    env = {**os.environ, "LANCE_LOG": "error"}
    stop = str(tmp_path / "stop")

    reader = subprocess.Popen([sys.executable, "-c", READER, db, stop, json.dumps(batches)],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    go = time.time() + 3.0  # all writers start their ingest at the same moment
    writers = [subprocess.Popen([sys.executable, "-c", WRITER, db, "-", str(go), *p], stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True, env=env) for p in parts]
    outcomes = [w.communicate(timeout=300) + (w.returncode,) for w in writers]
    open(stop, "w").close()
    r_out, r_err = reader.communicate(timeout=120)

    for out, err, code in outcomes:
        assert code == 0, err.strip().splitlines()[-1:] if err else out
    ids = lance.dataset(f"{db}/embeddings.lance").to_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == ROWS * (WRITERS * ROUNDS + 1) == len(set(ids))

    # Statistics: the stored record (when it claims to describe this version) equals the sums.
    database = Database(db)
    dataset = database.dataset("embeddings")
    truth = accumulate(dataset, DIM)
    record = StatsStore(database, "embeddings").load()
    if record.table_version == dataset.version:
        for m, s in truth.modalities.items():
            assert record.modalities[m].n == s.n, f"{m}: stored n {record.modalities[m].n}, rows {s.n}"
            np.testing.assert_allclose(record.modalities[m].S, s.S, rtol=1e-9, atol=1e-6)
            np.testing.assert_allclose(record.modalities[m].U, s.U, rtol=1e-9, atol=1e-6)
    check = verify(db=db)
    assert check.ok, check.summary()
    assert dataset.to_table(columns=["stats_version"]).column(0).null_count == 0

    assert reader.returncode == 0, r_err[-2000:]
    seen = json.loads(r_out.strip().splitlines()[-1])
    assert seen["reads"] >= 2 and not seen["bad"], seen
    assert set(seen["counts"]) <= {ROWS * (1 + k) for k in range(WRITERS * ROUNDS + 1)}, seen
