"""The Ray engine gives the local engine's results: statistics, scores, refresh.

Runs on a local Ray instance (2 CPUs) started once for the module. Every Ray result is
compared with a numpy oracle where one exists and with the local engine on a copy of
the same seeded database.
"""

from __future__ import annotations

import shutil
import sys

import numpy as np
import pytest

from curator.errors import BadInput, CuratorError, MissingDependency

pytest.importorskip("ray")
pytest.importorskip("ray.data")

from conftest import brute_conformity, read_table

from curator import engine
from curator.store import Database

stats_module = sys.modules["curator.stats"]  # curator.stats is the `stats` command
SCORE_COLUMNS = ["conformity", "conformity_est", "uncertainty", "loglik", "alignment",
                 "alignment_centered", "conformity_mismatch", "pair_dot"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def twins(tmp_path, pairs_small):
    """Two identical databases: pairs_small ingested in three parts (three fragments)."""
    from curator import ingest

    first = str(tmp_path / "local.lancedb")
    for path in pairs_small.write_parquet(str(tmp_path / "src"), parts=3):
        ingest([path], db=first)
    second = str(tmp_path / "ray.lancedb")
    shutil.copytree(first, second)
    return first, second


def by_id(db: str):
    table = read_table(db).sort_by("id")
    return {name: table.column(name).to_numpy(zero_copy_only=False) for name in table.column_names
            if name != "embedding"}


def assert_same_scores(a: dict, b: dict):
    assert list(a["id"]) == list(b["id"])
    for name in SCORE_COLUMNS:
        x, y = np.asarray(a[name], np.float64), np.asarray(b[name], np.float64)
        assert np.array_equal(np.isnan(x), np.isnan(y)), name
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6, equal_nan=True, err_msg=name)
    assert list(a["stats_version"]) == list(b["stats_version"])


# -- the switch -----------------------------------------------------------------------

def test_resolve_engine(monkeypatch):
    monkeypatch.delenv("CURATOR_ENGINE", raising=False)
    assert engine.resolve_engine(None) == "local"
    assert engine.resolve_engine("Ray") == "ray"
    monkeypatch.setenv("CURATOR_ENGINE", "ray")
    assert engine.resolve_engine(None) == "ray"
    assert engine.resolve_engine("local") == "local"
    with pytest.raises(CuratorError, match="unknown engine 'spark'"):
        engine.resolve_engine("spark")


def test_missing_ray_says_what_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(MissingDependency) as info:
        engine.resolve_engine("ray")
    assert str(info.value) == "--engine ray needs Ray: pip install 'clip-curator[ray]'"
    assert engine.resolve_engine("local") == "local"


# -- statistics -------------------------------------------------------------------------

def test_statistics_match_numpy_and_local(ray_local, twins, pairs_small):
    db = Database(twins[0])
    dataset = db.dataset("embeddings")
    assert len(dataset.get_fragments()) == 3
    ray_stats = engine.accumulate(dataset, 32, engine="ray")
    local_stats = stats_module.accumulate(dataset, 32)
    assert sorted(ray_stats.nonempty()) == ["image", "text"]
    for m, s in ray_stats.nonempty().items():
        X = pairs_small.vectors[pairs_small.modality == m].astype(np.float64)
        norms = np.linalg.norm(X, axis=1)
        assert s.n == len(X)
        np.testing.assert_allclose(s.S, X.sum(0), rtol=1e-9, atol=1e-9)
        np.testing.assert_allclose(s.U, (X / norms[:, None]).sum(0), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(s.covariance, np.cov(X.T, bias=True), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose([s.a, s.b], [norms.sum(), (norms ** 2).sum()], rtol=1e-6)
        other = local_stats.modalities[m]
        np.testing.assert_allclose(s.covariance, other.covariance, rtol=1e-5, atol=1e-7)
        assert np.array_equal(s.hist, other.hist)  # conformity sketch: same counts


def test_filtered_statistics(ray_local, twins, pairs_small):
    dataset = Database(twins[0]).dataset("embeddings")
    s = engine.accumulate(dataset, 32, filter="modality = 'text'", engine="ray")
    assert list(s.nonempty()) == ["text"]
    assert s.modalities["text"].n == int((pairs_small.modality == "text").sum())


def test_rebuild_is_a_new_stats_version(ray_local, twins):
    local = stats_module.rebuild(Database(twins[0]), "embeddings")
    remote = stats_module.rebuild(Database(twins[1]), "embeddings", engine="ray")
    assert remote.version == local.version and remote.table_version == local.table_version
    stored = stats_module.StatsStore(Database(twins[1]), "embeddings").load()
    assert stored.version == remote.version
    for m, s in local.nonempty().items():
        np.testing.assert_allclose(stored.modalities[m].mean, s.mean, rtol=1e-9)
        np.testing.assert_allclose(stored.modalities[m].covariance, s.covariance, rtol=1e-5, atol=1e-7)


# -- scores -------------------------------------------------------------------------------

def test_refresh_gives_the_local_scores(ray_local, twins, pairs_small):
    from curator.refresh import refresh

    before = Database(twins[1]).dataset("embeddings").version
    local = refresh(db=twins[0])
    remote = refresh(db=twins[1], engine="ray")
    assert remote.rows == local.rows > 0
    assert remote.rows < len(pairs_small)  # the last part was scored with current statistics
    assert remote.table_version_read == before
    assert remote.table_version == local.table_version == before + 1  # one commit
    assert remote.max_staleness_before == pytest.approx(local.max_staleness_before)
    a, b = by_id(twins[0]), by_id(twins[1])
    assert_same_scores(a, b)
    for m in ("image", "text"):  # and the oracle: exact conformity by brute force
        rows = b["modality"] == m
        order = np.argsort(pairs_small.ids[pairs_small.modality == m])
        expected = brute_conformity(pairs_small.vectors[pairs_small.modality == m])[order]
        np.testing.assert_allclose(b["conformity"][rows], expected, atol=1e-5)
    again = refresh(db=twins[1], engine="ray")
    assert again.rows == 0 and again.max_staleness_before == 0.0


def test_score_a_scattered_subset(ray_local, twins):
    """Targets spread over fragments (the per-fragment filter path), same stats object."""
    from curator.rescore import read_index, score_rows

    results = []
    for db, name in ((twins[0], "local"), (twins[1], "ray")):
        database = Database(db)
        dataset = database.dataset("embeddings")
        stats = stats_module.current(database, "embeddings", dataset)
        index = read_index(dataset)
        target = np.zeros(len(index.rowid), bool)
        target[::7] = True
        if name == "local":
            new, rows = score_rows(dataset, stats, target, index, message="t")
        else:
            new, rows = engine.score_rows(dataset, stats, target, index, message="t", engine="ray")
        assert new.version == dataset.version + 1
        results.append((rows, by_id(db), stats))
    (rows_a, a, stats_a), (rows_b, b, stats_b) = results
    assert rows_a == rows_b == int(np.ceil(len(a["id"]) / 7))
    assert_same_scores(a, b)
    for m in stats_a.nonempty():  # the uncertainty sketches were updated alike
        assert np.array_equal(stats_a.modalities[m].hist, stats_b.modalities[m].hist)


def test_bad_tolerance_changes_nothing(ray_local, twins):
    from curator.refresh import refresh

    dataset = Database(twins[1]).dataset("embeddings")
    with pytest.raises(BadInput):
        refresh(db=twins[1], tolerance=-1, engine="ray")
    assert Database(twins[1]).dataset("embeddings").version == dataset.version


def test_environment_selects_ray(ray_local, twins, monkeypatch):
    from curator import distributed
    from curator.refresh import refresh

    calls = []
    original = distributed.score_rows
    monkeypatch.setattr(distributed, "score_rows", lambda *a: calls.append(a) or original(*a))
    local = refresh(db=twins[0])
    monkeypatch.setenv("CURATOR_ENGINE", "ray")
    remote = refresh(db=twins[1])
    assert len(calls) == 1 and remote.rows == local.rows
    assert_same_scores(by_id(twins[0]), by_id(twins[1]))
