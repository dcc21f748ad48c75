"""The row reader's vectors by row id against the table read whole (the oracle)."""

from __future__ import annotations

import lance
import numpy as np
import pytest

from curator import ingest
from curator.engine import rows as rows_mod
from curator.engine.executor import LocalExecutor
from curator.engine.rows import take_vectors


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("rows")
    db = str(tmp / "db.lancedb")
    rng = np.random.default_rng(0)
    for part in range(3):  # three fragments
        path = str(tmp / f"p{part}.npy")
        np.save(path, rng.normal(size=(2_000, 16)).astype(np.float32))
        ingest([path], db=db, modality="image", score=False)
    ds = lance.dataset(f"{db}/embeddings.lance")
    t = ds.to_table(columns=["embedding"], with_row_id=True)
    X = np.asarray(t.column("embedding").to_pylist(), np.float32)
    return ds, t.column("_rowid").to_numpy(), X


class RemoteLike(LocalExecutor):
    name = "remote-like"  # not local: take_vectors uses the tasks' (ids, batch) results


@pytest.mark.parametrize("remote", [False, True])
@pytest.mark.parametrize("share", [0.001, 0.01, 0.5, 1.0])  # take path below 2.5%, else scans
def test_take_vectors_equals_the_table(table, monkeypatch, remote, share):
    ds, rowid, X = table
    if remote:
        monkeypatch.setattr(rows_mod, "executor", lambda engine=None: RemoteLike())
    rng = np.random.default_rng(int(share * 1000))
    chosen = np.sort(rng.choice(len(rowid), max(1, int(share * len(rowid))), replace=False))
    np.testing.assert_array_equal(take_vectors(ds, rowid[chosen]), X[chosen])
    mixed = rng.permutation(np.r_[chosen, chosen[: len(chosen) // 3]])  # unsorted, repeats
    np.testing.assert_array_equal(take_vectors(ds, rowid[mixed]), X[mixed])


def test_take_vectors_of_nothing(table):
    ds, _, _ = table
    assert take_vectors(ds, np.zeros(0, np.uint64)).shape == (0, 16)


def test_local_map_on_threads_keeps_job_order_and_bounds_the_window():
    """``threads`` > 1: every job's result, in job order, equal to one job at a time,
    with at most ``window`` jobs taken from the iterator ahead of the consumer."""
    import threading
    import time as time_mod

    from curator.engine.executor import LocalExecutor

    taken = []

    def jobs():
        for i in range(40):
            taken.append(i)
            yield (i, np.arange(i + 1, dtype=np.float64))

    def work(i, x):
        time_mod.sleep(0.001 * (i % 3))  # later jobs may finish first
        return i, threading.get_ident(), float(x @ x)

    run = LocalExecutor()
    serial = list(run.map(work, jobs()))
    taken.clear()
    got = []
    for result in run.map(work, jobs(), threads=2, window=3):
        got.append(result)
        assert len(taken) - len(got) <= 3
    assert [r[0] for r in got] == list(range(40))
    assert [r[2] for r in got] == [r[2] for r in serial]
