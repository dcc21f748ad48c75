"""Every stored score is within its reported bound of brute force, after every step of
random ingest sequences (partners arriving later, replacements, modalities shrinking to
0–1 rows, off-distribution batches), and refresh brings every error to float32 noise.
Each bound, scaled by 0.3, is caught by the same check (the bounds are not vacuous)."""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from oracle import table_oracle

from curator import ingest, refresh
from curator.engine.statistics import bounds, current
from curator.geometry import bounds as bounds_module
from curator.geometry.bounds import COLUMNS
from curator.maintenance.stats import stats as describe
from curator.store.database import Database
from curator.store.statistics import StatsStore


class Violation(AssertionError):
    def __init__(self, column, excess):
        super().__init__(f"{column}: stored value {excess:.3g} beyond its bound")
        self.column = column


def check(db: str, table: str = "embeddings") -> dict[str, float]:
    """Assert |stored − exact| ≤ bound + allowance for every row and column; return the
    largest error per column."""
    database = Database(db)
    dataset = database.dataset(table)
    t = dataset.to_table(with_row_id=True).to_pydict()
    exact = table_oracle(t)
    record = current(database, table, dataset)
    _, bound_of = bounds(dataset, record, StatsStore(database, table).history())
    report = describe(db=db, table=table)["modalities"]
    worst = {}
    for c in COLUMNS:
        stored = np.array([np.nan if x is None else x for x in t[c]], np.float64)
        err = np.abs(stored - exact[c])
        err = np.where(np.isnan(stored) & np.isnan(exact[c]), 0.0, err)
        err = np.where(np.isnan(err), np.inf, err)  # a null where a value belongs, or back
        allowed = np.array([
            bound_of[(m, -1 if v is None else v)][c]
            + (report[m]["allowance"][c] if m in report else 0.0) + 1e-6
            for m, v in zip(t["modality"], t["stats_version"])])
        bad = ~(err <= allowed)
        if bad.any():
            raise Violation(c, float((err - allowed)[bad].max()))
        worst[c] = float(err.max(initial=0.0))
        for m, values in report.items():  # `stats` reports the largest group bound
            mine = [bound_of[(mm, v)][c] for (mm, v) in bound_of if mm == m]
            reported = values["staleness"][c]
            assert (math.inf if reported is None else reported) == max(mine, default=0.0)
    return worst


# -- a random history of ingests -------------------------------------------------------------

class History:
    """Ingests into one table, with the sample bookkeeping the steps need."""

    def __init__(self, tmp_path, dim: int, rng):
        self.tmp, self.dim, self.rng = tmp_path, dim, rng
        self.db = str(tmp_path / "db")
        self.next_id = 0
        self.pending: list[str] = []  # samples whose image arrived without captions
        self.ids: dict[str, str] = {}  # id -> modality
        self.k = 0

    def _vectors(self, n, modality, shift=0.0):
        base = {"image": 2.0, "text": -1.0}[modality]
        return (self.rng.normal(size=(n, self.dim)) + base + shift).astype(np.float32)

    def _ingest(self, rows, on_duplicate="error"):
        ids, samples, mods, vecs = zip(*rows)
        path = self.tmp / f"b{self.k}.parquet"
        self.k += 1
        pq.write_table(pa.table({"id": list(ids), "sample_id": list(samples), "modality": list(mods),
                                 "embedding": pa.array([list(map(float, v)) for v in vecs],
                                                       pa.list_(pa.float32()))}), path)
        ingest([str(path)], db=self.db, on_duplicate=on_duplicate)
        for i, m in zip(ids, mods):
            self.ids[i] = m

    def pairs(self, n, shift=0.0):
        rows = []
        for _ in range(n):
            s = f"s{self.next_id}"
            self.next_id += 1
            rows.append((f"{s}-i", s, "image", self._vectors(1, "image", shift)[0]))
            for c in range(int(self.rng.integers(1, 3))):
                rows.append((f"{s}-t{c}", s, "text", self._vectors(1, "text", shift)[0]))
        self._ingest(rows)

    def images(self, n, shift=0.0):
        rows = []
        for _ in range(n):
            s = f"s{self.next_id}"
            self.next_id += 1
            rows.append((f"{s}-i", s, "image", self._vectors(1, "image", shift)[0]))
            self.pending.append(s)
        self._ingest(rows)

    def captions(self, shift=0.0):
        if not self.pending:
            return self.pairs(2, shift)
        rows = [(f"{s}-late", s, "text", self._vectors(1, "text", shift)[0]) for s in self.pending]
        self.pending = []
        self._ingest(rows)

    def replace(self, n, flip: bool):
        if not self.ids:
            return self.pairs(2)
        chosen = self.rng.choice(sorted(self.ids), size=min(n, len(self.ids)), replace=False)
        rows = []
        for i in chosen:
            m = self.ids[i]
            if flip:
                m = "text" if m == "image" else "image"
            rows.append((i, i.split("-")[0], m, self._vectors(1, m, 3.0)[0]))
        self._ingest(rows, on_duplicate="replace")


STEPS = st.lists(st.tuples(st.sampled_from(["pairs", "images", "captions", "replace", "flip",
                                             "shifted"]), st.integers(1, 6)), min_size=2, max_size=6)


@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(STEPS, st.integers(0, 2 ** 16), st.integers(3, 6))
def test_every_column_within_its_bound_after_every_step(tmp_path_factory, steps, seed, dim):
    history = History(tmp_path_factory.mktemp("bounds"), dim, np.random.default_rng(seed))
    for kind, n in steps:
        if kind == "pairs":
            history.pairs(n)
        elif kind == "images":
            history.images(n)
        elif kind == "captions":
            history.captions()
        elif kind == "shifted":
            history.pairs(n, shift=4.0)
        else:
            history.replace(n, flip=kind == "flip")
        check(history.db)
    refresh(db=history.db)
    worst = check(history.db)
    report = describe(db=history.db)["modalities"]
    for values in report.values():  # after refresh every bound is 0
        assert all(v in (0.0, None) or values["n"] < 2 for v in values["staleness"].values()), values
    assert worst["conformity"] < 2e-5 and worst["conformity_est"] < 2e-5


def scenario(tmp_path) -> str:
    """A fixed history that leaves every bound nearly attained by some row: images and
    captions on rings around their modalities' means, then a small batch that moves
    both means (d = 2, so some row lies along every direction that matters)."""
    rng = np.random.default_rng(0)
    db = str(tmp_path / "db")
    n, m = 40, 10
    angle = rng.uniform(0, 2 * np.pi, n)
    images = np.c_[10 + 5 * np.cos(angle), 5 * np.sin(angle)]
    texts = np.c_[-3 + 5 * np.cos(angle + 0.3), 8 + 5 * np.sin(angle + 0.3)]
    later_images = np.c_[rng.normal(size=m) * 0.1 + 10, rng.normal(size=m) * 0.1 + 12]
    later_texts = np.c_[rng.normal(size=m) * 0.1 - 3, rng.normal(size=m) * 0.1 - 4]
    for k, (I, T) in enumerate(((images, texts), (later_images, later_texts))):
        path = tmp_path / f"ring{k}.parquet"
        samples = [f"s{k}-{i}" for i in range(len(I))] * 2
        pq.write_table(pa.table({
            "id": [f"i{k}-{i}" for i in range(len(I))] + [f"t{k}-{i}" for i in range(len(T))],
            "sample_id": samples, "modality": ["image"] * len(I) + ["text"] * len(T),
            "embedding": pa.array([list(map(float, v)) for v in np.vstack([I, T])],
                                  pa.list_(pa.float32()))}), path)
        ingest([str(path)], db=db)
    return db


@pytest.mark.parametrize("column", [c for c in COLUMNS if c != "alignment"])
def test_a_bound_scaled_by_a_third_is_caught(tmp_path, monkeypatch, column):
    db = scenario(tmp_path)
    check(db)  # the true bounds hold
    original = bounds_module.table_bounds

    def scaled(*args, **kwargs):
        out = original(*args, **kwargs)
        for row in out.values():
            row[column] *= 0.3
        return out

    import curator.engine.statistics as statistics

    monkeypatch.setattr(statistics, "table_bounds", scaled)
    with pytest.raises(Violation) as info:
        check(db)
    assert info.value.column == column
