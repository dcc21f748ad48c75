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

from curator.engine import executor as engine
from curator.engine import statistics as stats_module
from curator.store.database import Database
from curator.store.statistics import StatsStore

SCORE_COLUMNS = ["conformity", "conformity_est", "uncertainty", "loglik", "alignment",
                 "alignment_centered", "conformity_mismatch", "pair_dot"]


@pytest.fixture(scope="module")
def ray_local():
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture
def ray_calls(monkeypatch):
    """The names of the per-piece functions the Ray executor ran (a spy on its map)."""
    from curator.engine.ray import RayExecutor

    calls = []
    original = RayExecutor.map

    def spy(self, fn, jobs, **kw):
        calls.append(fn.__name__)
        return original(self, fn, jobs, **kw)

    monkeypatch.setattr(RayExecutor, "map", spy)
    return calls


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
    ray_stats = stats_module.accumulate(dataset, 32, engine="ray")
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
    s = stats_module.accumulate(dataset, 32, filter="modality = 'text'", engine="ray")
    assert list(s.nonempty()) == ["text"]
    assert s.modalities["text"].n == int((pairs_small.modality == "text").sum())


def test_rebuild_is_a_new_stats_version(ray_local, twins):
    local = stats_module.rebuild(Database(twins[0]), "embeddings")
    remote = stats_module.rebuild(Database(twins[1]), "embeddings", engine="ray")
    assert remote.version == local.version and remote.table_version == local.table_version
    stored = StatsStore(Database(twins[1]), "embeddings").load()
    assert stored.version == remote.version
    for m, s in local.nonempty().items():
        np.testing.assert_allclose(stored.modalities[m].mean, s.mean, rtol=1e-9)
        np.testing.assert_allclose(stored.modalities[m].covariance, s.covariance, rtol=1e-5, atol=1e-7)


# -- scores -------------------------------------------------------------------------------

def test_refresh_gives_the_local_scores(ray_local, twins, pairs_small):
    from curator.maintenance.refresh import refresh

    before = Database(twins[1]).dataset("embeddings").version
    local = refresh(db=twins[0], columns="conformity")
    remote = refresh(db=twins[1], engine="ray", columns="conformity")
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
    again = refresh(db=twins[1], engine="ray", columns="conformity")
    assert again.rows == 0 and again.max_staleness_before == 0.0


def test_score_a_scattered_subset(ray_local, twins):
    """Targets spread over fragments (random access and filtered scans), whole samples."""
    from curator.engine.scoring import Scoring
    from curator.engine.targets import choose

    results = []
    for db, name in ((twins[0], "local"), (twins[1], "ray")):
        database = Database(db)
        dataset = database.dataset("embeddings")
        stats = stats_module.current(database, "embeddings", dataset)
        rowids = np.sort(dataset.to_table(columns=[], with_row_id=True).column("_rowid").to_numpy())
        chosen = choose(dataset, rows=rowids[::7])
        with Scoring(dataset, stats, engine=name) as scoring:
            scoring.score_existing(chosen)
            outcome = scoring.finish()
        new = outcome.commit(dataset, "t")
        assert new.version == dataset.version + 1
        results.append((outcome.rows, by_id(db), stats))
    (rows_a, a, stats_a), (rows_b, b, stats_b) = results
    assert rows_a == rows_b >= int(np.ceil(len(a["id"]) / 7))
    assert_same_scores(a, b)
    for m in stats_a.nonempty():  # the uncertainty sketches were updated alike
        assert np.array_equal(stats_a.modalities[m].hist, stats_b.modalities[m].hist)


def test_bad_tolerance_changes_nothing(ray_local, twins):
    from curator.maintenance.refresh import refresh

    dataset = Database(twins[1]).dataset("embeddings")
    with pytest.raises(BadInput):
        refresh(db=twins[1], tolerance=-1, engine="ray")
    assert Database(twins[1]).dataset("embeddings").version == dataset.version


def test_environment_selects_ray(ray_local, twins, monkeypatch, ray_calls):
    from curator.maintenance.refresh import refresh

    local = refresh(db=twins[0])
    assert not ray_calls
    monkeypatch.setenv("CURATOR_ENGINE", "ray")
    remote = refresh(db=twins[1])
    assert "piece_scalars" in ray_calls and remote.rows == local.rows
    assert_same_scores(by_id(twins[0]), by_id(twins[1]))


# -- curation: cluster, rebalance, export -------------------------------------------------

def _uniform(seed: int, row_id: str) -> float:
    """The rebalance rule, written out: top 53 bits of blake2b(seed:id), little endian."""
    import hashlib

    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) / float(1 << 53)


def test_device_on_ray_tasks(ray_local, twins):
    """Ray tasks rebuild the backend from its name; they get no GPU, so CUDA is refused."""
    pytest.importorskip("torch")
    from curator.curation.clusters import cluster
    from curator.curation.dedupe import dedupe

    local = cluster(db=twins[0], k=4, seed=1, device="cpu")
    remote = cluster(db=twins[1], k=4, seed=1, engine="ray", device="torch-cpu")
    assert remote.device == "torch-cpu"
    assert list(by_id(twins[0])["cluster"]) == list(by_id(twins[1])["cluster"])
    assert remote.modalities["image"]["sizes"] == local.modalities["image"]["sizes"]
    assert cluster(db=twins[1], k=4, seed=1, engine="ray").device == "cpu"  # auto on Ray
    before = Database(twins[1]).dataset("embeddings").version
    for command, options in ((cluster, {"k": 4}), (dedupe, {"eps": 0.01})):
        with pytest.raises(BadInput, match="cuda"):
            command(db=twins[1], engine="ray", device="cuda", **options)
    assert Database(twins[1]).dataset("embeddings").version == before


def test_cluster_assignment_matches_local_and_brute_force(ray_local, twins, pairs_small):
    from curator.curation.clusters import cluster
    from curator.store.centroids import CentroidStore

    local = cluster(db=twins[0], k=5, seed=3)
    remote = cluster(db=twins[1], k=5, seed=3, engine="ray")
    assert remote.table_version == local.table_version == remote.table_version_read + 1
    for m in ("image", "text"):
        assert remote.modalities[m]["sizes"] == local.modalities[m]["sizes"]
        assert remote.modalities[m]["rows"] == local.modalities[m]["rows"]
        assert remote.modalities[m]["mean_cosine"] == pytest.approx(local.modalities[m]["mean_cosine"])
    a, b = by_id(twins[0]), by_id(twins[1])
    assert list(a["cluster"]) == list(b["cluster"])
    assert list(a["cluster_size"]) == list(b["cluster_size"])
    stored = CentroidStore(Database(twins[1]), "embeddings").latest()
    order = np.argsort(pairs_small.ids)
    for m in ("image", "text"):  # oracle: nearest stored centroid by cosine, sizes by count
        rows = b["modality"] == m
        X = pairs_small.vectors[order][rows].astype(np.float64)
        C = stored[m][1].astype(np.float64)
        expected = np.argmax((X / np.linalg.norm(X, axis=1, keepdims=True)) @ C.T, axis=1)
        assert np.array_equal(b["cluster"][rows], expected)
        assert np.array_equal(b["cluster_size"][rows], np.bincount(expected, minlength=5)[expected])


@pytest.mark.parametrize("options", [
    {"by": "concept", "cap": 20, "seed": 5},
    {"by": "conformity", "bins": 6, "cap": 30, "seed": 1, "where": "conformity > 0.1"},
    {"by": "concept", "cap": 12, "seed": 2, "modality": "text", "where": "id > 'txt-000100'",
     "into": "text_keep"}])
def test_rebalance_per_sample_decides_as_local(ray_local, twins, options, ray_calls):
    """Per sample (the default): the same decisions and report on Ray, and the rule's."""
    from mixed_samples import expected, snapshot

    from curator.curation.rebalance import rebalance

    local = rebalance(db=twins[0], **options)
    remote = rebalance(db=twins[1], engine="ray", **options)
    assert "piece_units" in ray_calls and "update_fragment" in ray_calls
    assert remote.to_dict() == local.to_dict()
    into = options.get("into", "rebalance_keep")
    a, b = by_id(twins[0]), by_id(twins[1])
    assert list(a[into]) == list(b[into])
    rule = {k: v for k, v in options.items() if k != "into"}
    values, groups, undecided = expected(snapshot(twins[1]), **rule)
    assert dict(zip(b["id"], (bool(x) for x in b[into]))) == values
    assert {(g["modality"], g["group"]): (g["before"], g["after"]) for g in remote.groups} == groups
    assert remote.undecided_samples == undecided


@pytest.mark.parametrize("options", [{"by": "concept", "cap": 20, "seed": 5, "per": "row"},
                                     {"by": "conformity", "bins": 6, "cap": 30, "seed": 1,
                                      "modality": "text", "per": "row"}])
def test_rebalance_decides_as_local(ray_local, twins, options):
    from curator.curation.rebalance import rebalance

    before = by_id(twins[1])
    local = rebalance(db=twins[0], **options)
    remote = rebalance(db=twins[1], engine="ray", **options)
    assert remote.to_dict() == local.to_dict()
    a, b = by_id(twins[0]), by_id(twins[1])
    assert list(a["rebalance_keep"]) == list(b["rebalance_keep"])
    # oracle: group counts by numpy, keep = u(seed, id) < min(1, cap / count)
    decided = np.ones(len(b["id"]), bool) if "modality" not in options else b["modality"] == options["modality"]
    if options["by"] == "concept":
        key = np.char.add(b["modality"].astype(str), b["concept"].astype(str))
    else:
        key = np.array([f"{m}:{bin_}" for m, bin_ in _bins(b, options["bins"])])
    _, inverse, counts = np.unique(key[decided], return_inverse=True, return_counts=True)
    u = np.array([_uniform(options["seed"], i) for i in b["id"][decided]])
    expected = u < np.minimum(1.0, options["cap"] / counts[inverse])
    assert np.array_equal(b["rebalance_keep"][decided].astype(bool), expected)
    assert remote.kept == int(expected.sum())
    untouched = ~decided  # other modalities keep what they had
    assert list(b["rebalance_keep"][untouched]) == list(before["rebalance_keep"][untouched])


def _bins(columns: dict, bins: int):
    out = []
    conformity = columns["conformity"].astype(np.float64)
    for m in np.unique(columns["modality"]):
        rows = columns["modality"] == m
        lo, hi = np.nanmin(conformity[rows]), np.nanmax(conformity[rows])
        for i in np.flatnonzero(rows):
            v = conformity[i]
            out.append((i, m, None if np.isnan(v) else min(int((v - lo) / (hi - lo) * bins), bins - 1)))
    return [(m, bin_) for _, m, bin_ in sorted(out)]


@pytest.mark.parametrize("fmt, unit", [("parquet", "row"), ("npy", "row"), ("jsonl", "row"),
                                       ("parquet", "sample"), ("parquet", "pair"), ("npy", "pair")])
def test_export_writes_the_same_files(ray_local, twins, tmp_path, fmt, unit, ray_calls):
    import glob
    import json

    from curator.io.export import export

    where = "modality = 'image' OR concept < 3"
    local = export(db=twins[0], out=str(tmp_path / "a"), where=where, format=fmt, rows_per_file=150,
                   unit=unit)
    remote = export(db=twins[1], out=str(tmp_path / "b"), where=where, format=fmt,
                    rows_per_file=150, engine="ray", unit=unit)
    assert remote.rows == local.rows and remote.counts == local.counts and remote.files == local.files > 2
    assert "piece_selection" in ray_calls  # the predicate ran in Ray tasks
    files = []
    for result in (local, remote):
        with open(result.manifest) as fh:
            files.append(json.load(fh)["files"])
    assert files[0] == files[1]  # same paths, bytes and sha256
    assert "piece_rows" in ray_calls  # the rows were read by Ray tasks
    if fmt == "parquet" and unit == "row":  # oracle: the selected ids, by the predicate in numpy
        import pyarrow.parquet as pq

        parts = sorted(glob.glob(str(tmp_path / "b" / "part-*.parquet")))
        got = [i for p in parts for i in pq.read_table(p).column("id").to_pylist()]
        b = by_id(twins[1])
        chosen = (b["modality"] == "image") | (b["concept"] < 3)
        assert sorted(got) == sorted(b["id"][chosen]) and len(got) == len(set(got))


def test_export_bad_engine_writes_nothing(ray_local, twins, tmp_path):
    from curator.io.export import export

    with pytest.raises(CuratorError, match="unknown engine"):
        export(db=twins[1], out=str(tmp_path / "c"), engine="spark")
    assert not (tmp_path / "c").exists()


def _brute_groups(columns: dict, vectors: np.ndarray, eps: float) -> dict[str, frozenset]:
    """Oracle: id -> the ids of its near-duplicate component (all pairs, per modality)."""
    out = {}
    for m in np.unique(columns["modality"]):
        rows = np.flatnonzero(columns["modality"] == m)
        U = vectors[rows] / np.linalg.norm(vectors[rows], axis=1, keepdims=True)
        linked = (U @ U.T) >= 1 - eps - 1e-6
        label = np.arange(len(rows))
        for _ in range(len(rows)):  # min-label propagation to a fixed point
            new = np.where(linked, label[None, :], len(rows)).min(axis=1)
            if np.array_equal(new, label):
                break
            label = new
        for lab in np.unique(label):
            members = rows[label == lab]
            if len(members) > 1:
                group = frozenset(columns["id"][members])
                out.update({i: group for i in group})
    return out


@pytest.mark.parametrize("keep", ["least-conformity", "random"])
def test_dedupe_partitioned_on_ray_matches_local(ray_local, twins, pairs_small, monkeypatch, keep,
                                                 ray_calls):
    """Small limits force the partitioned (spill) path on 1,200 rows: ~35 partitions."""
    import importlib

    dedupe_module = importlib.import_module("curator.curation.dedupe")
    monkeypatch.setattr(dedupe_module, "IN_MEMORY_ROWS", 100)
    monkeypatch.setattr(importlib.import_module("curator.geometry.neighbours"), "EXACT_ROWS", 50)
    eps = 0.002
    local = dedupe_module.dedupe(db=twins[0], eps=eps, keep=keep, seed=2)
    assert not ray_calls
    remote = dedupe_module.dedupe(db=twins[1], eps=eps, keep=keep, seed=2, engine="ray")
    # image and text partitioned and searched by Ray tasks
    assert ray_calls.count("piece_units") == 2 and ray_calls.count("search_partition") == 2
    assert remote.modalities["image"]["partitions"] > 10
    assert remote.modalities == local.modalities
    assert remote.table_version == local.table_version
    a, b = by_id(twins[0]), by_id(twins[1])
    np.testing.assert_array_equal(a["dup_group"], b["dup_group"])  # nulls read as NaN
    np.testing.assert_array_equal(a["is_duplicate"], b["is_duplicate"])
    order = np.argsort(pairs_small.ids)
    expected = _brute_groups(b, pairs_small.vectors[order].astype(np.float64), eps)
    assert len(expected) > 0
    grouped = ~np.isnan(np.asarray(b["dup_group"], np.float64))
    assert set(b["id"][grouped]) == set(expected)
    for g in np.unique(b["dup_group"][grouped]):
        members = frozenset(b["id"][b["dup_group"] == g])
        assert all(expected[i] == members for i in members)
        assert int((~b["is_duplicate"][b["dup_group"] == g].astype(bool)).sum()) == 1  # one kept


def test_cli_passes_the_engine(ray_local, twins, ray_calls):
    import json

    from click.testing import CliRunner

    from curator.cli import cli

    args = ["rebalance", "--by", "concept", "--cap", "25", "--seed", "4", "--json"]
    local = CliRunner().invoke(cli, ["--db", twins[0]] + args)
    remote = CliRunner().invoke(cli, ["--db", twins[1], "--engine", "ray"] + args)
    assert local.exit_code == remote.exit_code == 0, remote.output
    assert json.loads(remote.output) == json.loads(local.output)
    assert ray_calls == ["piece_modalities", "piece_units", "update_fragment"]
    bad = CliRunner().invoke(cli, ["--db", twins[1], "--engine", "spark"] + args)
    assert bad.exit_code == 1 and "unknown engine 'spark'" in bad.output
