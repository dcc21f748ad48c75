"""One version per row: the four ways the first release broke it, each reproduced.

1. captions arriving later rewrote their images' pair columns under the image's old
   ``stats_version``;
2. only conformity had a bound (``refresh --tolerance`` ignored the other columns);
3. a modality shrinking to one row kept a conformity with a zero bound;
4. ``refresh --reference`` made the next command rebuild the statistics as a new version,
   so every row looked stale.
"""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from click.testing import CliRunner
from oracle import table_oracle

from curator import ingest, refresh
from curator.cli import cli
from curator.geometry.bounds import COLUMNS
from curator.maintenance.stats import stats
from curator.maintenance.verify import verify
from curator.store.database import Database

SCORES = list(COLUMNS) + ["pair_dot"]


def _write(path, ids, samples, modality, X):
    pq.write_table(pa.table({"id": ids, "sample_id": samples, "modality": modality,
                             "embedding": pa.array([list(map(float, v)) for v in X],
                                                   pa.list_(pa.float32()))}), path)
    return str(path)


def _rows(db):
    t = Database(db).dataset("embeddings").to_table().to_pydict()
    return {i: {c: t[c][k] for c in SCORES + ["stats_version"]} for k, i in enumerate(t["id"])}


def test_captions_arriving_later_rescore_their_images_whole(tmp_path, db):
    rng = np.random.default_rng(0)
    n = 30
    images = rng.normal(size=(n, 6)) + 2
    ingest([_write(tmp_path / "i.parquet", [f"i{k}" for k in range(n)], [f"s{k}" for k in range(n)],
                   ["image"] * n, images)], db=db)
    others = rng.normal(size=(n, 6)) + 2  # a second batch of images: the first ones turn stale
    ingest([_write(tmp_path / "j.parquet", [f"j{k}" for k in range(n)], [f"q{k}" for k in range(n)],
                   ["image"] * n, others)], db=db)
    before = _rows(db)
    texts = images[:10] + rng.normal(size=(10, 6)) * 0.3 - 1  # captions for s0..s9 only
    result = ingest([_write(tmp_path / "t.parquet", [f"t{k}" for k in range(10)],
                            [f"s{k}" for k in range(10)], ["text"] * 10, texts)], db=db)
    after = _rows(db)
    assert result.commits == 1 and result.rescored == 10  # the ten images of those samples
    # the write pass and the score files are timed apart (one key overwrote the other)
    assert {"statistics", "write pass", "write", "commit"} <= set(result.phases)
    for row_id, old in before.items():
        new = after[row_id]
        changed = [c for c in SCORES if not _same(old[c], new[c])]
        if changed:  # any score that changed came with the row's new version
            assert new["stats_version"] != old["stats_version"], (row_id, changed)
            assert new["stats_version"] == result.stats_version
    assert all(after[f"i{k}"]["alignment"] is not None for k in range(10))
    assert verify(db=db).ok


def _same(a, b):
    if a is None or b is None:
        return a is b
    return a == b


def test_stats_reports_a_bound_per_column_and_refresh_honours_every_one(tmp_path, db):
    rng = np.random.default_rng(1)
    for k, shift in enumerate((0.0, 3.0, -2.0)):
        n = 25
        X = rng.normal(size=(2 * n, 5)) + shift
        ingest([_write(tmp_path / f"b{k}.parquet", [f"r{k}-{i}" for i in range(2 * n)],
                       [f"s{k}-{i % n}" for i in range(2 * n)], ["image"] * n + ["text"] * n, X)], db=db)
    out = CliRunner().invoke(cli, ["--db", db, "stats", "--json"])
    report = json.loads(out.stdout)["modalities"]
    for values in report.values():
        assert set(values["staleness"]) == set(COLUMNS)
        assert values["max_staleness"] == values["staleness"]["conformity"]
        assert values["staleness"]["loglik"] > 0 and values["staleness"]["uncertainty"] > 0
    tolerance = 0.05
    refresh(db=db, tolerance=tolerance)
    report = stats(db=db)["modalities"]
    for values in report.values():
        assert all(v is not None and v <= tolerance for v in values["staleness"].values()), values
    t = Database(db).dataset("embeddings").to_table(with_row_id=True).to_pydict()
    exact = table_oracle(t)
    for c in COLUMNS:
        stored = np.array([np.nan if x is None else x for x in t[c]])
        err = np.abs(stored - exact[c])
        err = np.where(np.isnan(stored) & np.isnan(exact[c]), 0.0, err)
        allowance = max(v["allowance"][c] for v in report.values())
        assert np.nanmax(err) <= tolerance + allowance + 1e-6, c


def test_a_modality_shrinking_to_one_row_has_null_conformity(tmp_path, db):
    rng = np.random.default_rng(2)
    X = rng.normal(size=(2, 4)) + 1
    ingest([_write(tmp_path / "a.parquet", ["a", "b"], [None, None], ["image", "image"], X)], db=db)
    assert all(r["conformity"] is not None for r in _rows(db).values())
    Y = rng.normal(size=(1, 4)) - 1
    ingest([_write(tmp_path / "b.parquet", ["b"], [None], ["text"], Y)], db=db, on_duplicate="replace")
    rows = _rows(db)
    assert rows["a"]["conformity"] is None and rows["a"]["uncertainty"] is None
    report = stats(db=db)["modalities"]
    assert report["image"]["staleness"]["conformity"] == 0.0  # true: null is the exact value
    assert verify(db=db).ok


def test_reference_scoring_keeps_the_statistics_version(tmp_path, db):
    rng = np.random.default_rng(3)
    X = rng.normal(size=(40, 5)) + 1
    ingest([_write(tmp_path / "a.parquet", [f"a{i}" for i in range(40)], [None] * 40, ["image"] * 40, X)],
           db=db, table="fresh", model="m")
    ingest([_write(tmp_path / "r.parquet", [f"r{i}" for i in range(40)], [None] * 40, ["image"] * 40,
                   X + 0.5)], db=db, table="trusted", model="m")
    before = stats(db=db, table="fresh")
    refresh(db=db, table="fresh", reference="trusted")
    after = stats(db=db, table="fresh")
    assert after["stats_version"] == before["stats_version"]
    assert after["modalities"]["image"]["stale_rows"] == 0
    assert refresh(db=db, table="fresh").rows == 0
