"""Running statistics: sums against numpy, merge/subtract, persistence, the staleness bound."""

from __future__ import annotations

import numpy as np
import pytest

from curator.engine.statistics import accumulate, current
from curator.geometry.bounds import conformity_bound as staleness_bound
from curator.geometry.sums import ModalityStats
from curator.maintenance.stats import stats as describe
from curator.store.database import Database
from curator.store.statistics import StatsStore


def make(X):
    s = ModalityStats(X.shape[1])
    for part in np.array_split(X, 3):
        s.add(part)
    return s


def test_sums_equal_numpy_in_float64():
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(500, 16)) + 5).astype(np.float32)
    s = make(X)
    X64 = X.astype(np.float64)
    U = X64 / np.linalg.norm(X64, axis=1, keepdims=True)
    assert s.n == 500
    assert np.allclose(s.S, X64.sum(0), rtol=1e-10)
    assert np.allclose(s.U, U.sum(0), atol=1e-4)
    assert np.allclose(s.covariance, np.cov(X64.T, bias=True), atol=1e-5)
    norms = np.linalg.norm(X64, axis=1)
    assert s.mean_norm == pytest.approx(norms.mean(), rel=1e-6)
    assert s.norm_std == pytest.approx(norms.std(), rel=1e-4)


def test_merge_and_subtract_equal_recomputation():
    rng = np.random.default_rng(1)
    A = (rng.normal(size=(200, 8)) + 3).astype(np.float32)
    B = (rng.normal(size=(100, 8)) - 2).astype(np.float32)
    union = make(A).merge(make(B))
    direct = make(np.vstack([A, B]))
    assert union.n == 300
    assert np.allclose(union.S, direct.S) and np.allclose(union.U, direct.U)
    assert np.allclose(union.covariance, direct.covariance, atol=1e-5)
    back = union.subtract(make(B))
    assert back.n == 200
    assert np.allclose(back.covariance, np.cov(A.astype(np.float64).T, bias=True), atol=1e-5)


def test_sketch_cdf_within_stated_resolution():
    rng = np.random.default_rng(2)
    values = rng.normal(0.5, 0.05, size=5000)
    s = ModalityStats(2)
    s.add_conformity(values)
    exact = np.searchsorted(np.sort(values), values, side="right") / len(values)
    assert np.abs(s.cdf(values) - exact).max() <= s.cdf_resolution + 1e-9
    assert s.cdf_resolution < 0.01


def test_statistics_persist_and_rebuild_when_missing(ingested):
    database = Database(ingested)
    stored = StatsStore(database, "embeddings").load()
    rebuilt = accumulate(database.dataset("embeddings"), stored.dim)
    for m, s in stored.modalities.items():
        assert s.n == rebuilt.modalities[m].n
        assert np.allclose(s.S, rebuilt.modalities[m].S, rtol=1e-9)
        assert np.allclose(s.U, rebuilt.modalities[m].U, rtol=1e-9)
    # Remove the record: statistics are rebuilt from the rows (the table is the truth).
    import shutil

    shutil.rmtree(database.table_uri(StatsStore(database, "embeddings").current_name))
    again = current(database, "embeddings")
    # The same sums as the version the rows were scored with: the same version, so no
    # row turns stale (statistics equal within float noise are one version).
    assert again.version == stored.version
    assert np.allclose(again.modalities["image"].S, stored.modalities["image"].S)


def test_stats_describe_shape(ingested, pairs_small):
    d = describe(db=ingested)
    assert set(d["modalities"]) == {"image", "text"}
    image = d["modalities"]["image"]
    X = pairs_small.vectors[pairs_small.modality == "image"].astype(np.float64)
    assert image["n"] == len(X)
    assert image["mean_norm"] == pytest.approx(np.linalg.norm(X, axis=1).mean(), rel=1e-6)
    assert image["max_staleness"] == 0.0


# -- the staleness bound (every column: tests/test_bounds.py) --------------------------------

def test_bound_formula_is_zero_for_same_version_and_infinite_for_unknown():
    s = ModalityStats(3)
    s.add(np.eye(3, dtype=np.float32) + 1)
    from curator.geometry.bounds import HistoryEntry

    entry = HistoryEntry(1, "image", s.n, s.S.copy(), s.U.copy())
    assert staleness_bound(entry, s) == 0.0
    assert staleness_bound(None, s) == float("inf")


def test_record_cells_equal_to_pydict_with_nulls_and_slices():
    """The statistics records are read cell by cell as numpy arrays (store/statistics
    ``_cells``): equal to pyarrow's own ``to_pydict``, for null list cells and for a
    chunked, sliced table whose list offsets do not start at 0."""
    import pyarrow as pa

    from curator.store.statistics import _cells

    lists = pa.array([[1.0, 2.0], None, [], [3.5, 4.5, 5.5]], pa.list_(pa.float64()))
    table = pa.table({"modality": ["a", "b", "c", "d"], "n": [1, 2, 3, 4], "S": lists})
    chunked = pa.concat_tables([table, table]).slice(3, 4)
    for t in (table, chunked, table.slice(2, 2)):
        got, want = _cells(t), t.to_pydict()
        assert got["modality"] == want["modality"] and got["n"] == want["n"]
        assert [None if c is None else c.tolist() for c in got["S"]] == want["S"]
        cell = next(c for c in got["S"] if c is not None and len(c))
        cell += 1  # its own writable copy (the statistics add into it)
    assert _cells(table)["S"][0].tolist() == [1.0, 2.0]
