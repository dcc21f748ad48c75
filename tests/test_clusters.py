"""Spherical k-means concepts against planted labels and brute-force nearest centroids."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curator import ingest
from curator.curation.clusters import cluster
from curator.errors import CuratorError
from curator.geometry.kmeans import spherical_kmeans, top_centroids, unit_rows
from curator.store.arrow import fixed_list
from curator.store.centroids import CentroidStore
from curator.store.database import Database

K = 6


def separated(n: int, d: int = 24, k: int = K, seed: int = 0, offset: float = 0.0):
    """Rows around k well-separated unit directions (angular noise ≈ 0.1 rad); labels."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(d, d)))[0][:k]  # orthonormal directions
    labels = rng.integers(k, size=n)
    X = centres[labels] + rng.normal(size=(n, d)) * 0.1 / np.sqrt(d)
    X *= rng.uniform(0.5, 3.0, size=(n, 1))  # raw norms vary; direction is what counts
    return (X + offset).astype(np.float32), labels


def matches_up_to_permutation(found: np.ndarray, planted: np.ndarray) -> bool:
    pairs = set(zip(found.tolist(), planted.tolist()))
    return len(pairs) == len(set(found.tolist())) == len(set(planted.tolist()))


def test_kmeans_recovers_planted_clusters():
    X, labels = separated(3000, seed=1)
    C, found = spherical_kmeans(unit_rows(X), K, seed=0, iterations=25)
    assert matches_up_to_permutation(found, labels)
    np.testing.assert_allclose(np.linalg.norm(C, axis=1), 1, atol=1e-5)


def test_kmeans_is_seeded_and_never_leaves_empty_clusters():
    X, _ = separated(500, seed=2)
    a = spherical_kmeans(unit_rows(X), 40, seed=3)
    b = spherical_kmeans(unit_rows(X), 40, seed=3)
    np.testing.assert_array_equal(a[1], b[1])
    assert len(np.unique(a[1])) == 40


def test_top_centroids_brute_force():
    rng = np.random.default_rng(4)
    U, C = unit_rows(rng.normal(size=(300, 16))), unit_rows(rng.normal(size=(20, 16)))
    labels, cos = top_centroids(U, C, 3)
    G = U.astype(np.float64) @ C.T.astype(np.float64)
    np.testing.assert_array_equal(labels, np.argsort(-G, axis=1)[:, :3])
    np.testing.assert_allclose(cos, np.sort(G, axis=1)[:, ::-1][:, :3], atol=1e-5)


def write_source(path, X, labels, modality, start=0):
    n = len(X)
    t = pa.table({
        "id": [f"{modality}-{start + i}" for i in range(n)],
        "sample_id": [f"s{start + i}" for i in range(n)],
        "modality": [modality] * n,
        "embedding": fixed_list(X),
        "planted": pa.array(labels, pa.int32()),
    })
    pq.write_table(t, path)
    return path


@pytest.fixture
def two_modalities(tmp_path):
    db = str(tmp_path / "db.lancedb")
    Xi, li = separated(900, seed=5)
    Xt, lt = separated(700, seed=6, offset=0.0)
    ingest([write_source(tmp_path / "img.parquet", Xi, li, "image"),
            write_source(tmp_path / "txt.parquet", Xt, lt, "text")], db=db)
    return db, tmp_path


def read(db):
    ds = lance.dataset(f"{db}/embeddings.lance")
    return ds, ds.to_table(columns=["modality", "embedding", "planted", "cluster", "cluster_size"])


def check_against_oracle(db, t):
    """Every row's cluster is its nearest stored centroid; sizes equal counts."""
    stored = CentroidStore(Database(db), "embeddings").latest()
    mods = np.asarray(t.column("modality").to_pylist())
    X = np.asarray(t.column("embedding").to_pylist(), np.float64)
    cl = np.asarray(t.column("cluster").to_pylist())
    size = np.asarray(t.column("cluster_size").to_pylist())
    for m, (_, C) in stored.items():
        rows = mods == m
        U = X[rows] / np.linalg.norm(X[rows], axis=1, keepdims=True)
        np.testing.assert_array_equal(cl[rows], np.argmax(U @ C.T.astype(np.float64), axis=1))
        counts = np.bincount(cl[rows], minlength=len(C))
        np.testing.assert_array_equal(size[rows], counts[cl[rows]])
    return mods, cl


def test_cluster_table(two_modalities):
    db, _ = two_modalities
    before = lance.dataset(f"{db}/embeddings.lance").version
    result = cluster(db=db, k=K, seed=0)
    assert (result.table_version_read, result.table_version) == (before, before + 1)
    ds, t = read(db)
    assert ds.version == result.table_version
    mods, cl = check_against_oracle(db, t)
    planted = np.asarray(t.column("planted").to_pylist())
    for m in ("image", "text"):
        assert matches_up_to_permutation(cl[mods == m], planted[mods == m])
        r = result.modalities[m]
        assert r["rows"] == (mods == m).sum() and sum(r["sizes"]) == r["rows"]
        assert 0.9 < r["mean_cosine"] <= 1.0
    assert f"v{result.table_version}" in result.summary()
    assert result.to_dict()["centroid_version"] == 1


def test_sample_training_and_versions_kept(two_modalities):
    db, _ = two_modalities
    first = cluster(db=db, k=K, seed=0, modality="image", sample=300, iterations=10)
    assert first.modalities["image"]["trained_on"] == 300
    second = cluster(db=db, k=3, seed=1, modality="text")
    assert second.centroid_version == 2
    _, t = read(db)
    check_against_oracle(db, t)
    history = lance.dataset(f"{db}/_curator_centroids_embeddings.lance").to_table().to_pydict()
    assert sorted(zip(history["version"], history["modality"])) == [(1, "image"), (2, "text")]
    assert history["k"] == [K, 3]


def test_new_rows_assigned_on_arrival(two_modalities):
    db, tmp = two_modalities
    cluster(db=db, k=K, seed=0)
    Xn, ln = separated(250, seed=5)  # same planted centres as the image rows (seed 5)
    Xn = Xn[:250]
    ingest([write_source(tmp / "more.parquet", Xn, ln, "image", start=10_000)], db=db)
    _, t = read(db)
    assert t.column("cluster").null_count == 0
    mods, cl = check_against_oracle(db, t)
    planted = np.asarray(t.column("planted").to_pylist())
    assert matches_up_to_permutation(cl[mods == "image"], planted[mods == "image"])


def test_ingest_without_centroids_leaves_cluster_null(two_modalities):
    db, _ = two_modalities
    _, t = read(db)
    assert t.column("cluster").null_count == t.num_rows


def test_torch_device_gives_the_same_clusters(two_modalities):
    pytest.importorskip("torch")
    db, _ = two_modalities
    columns = []
    for device in ("cpu", "torch-cpu"):
        result = cluster(db=db, k=K, seed=2, device=device)
        assert result.device == device and result.to_dict()["device"] == device
        _, t = read(db)
        check_against_oracle(db, t)
        columns.append((t.column("cluster").to_pylist(), t.column("cluster_size").to_pylist()))
    assert columns[0] == columns[1]


@pytest.mark.parametrize("kwargs", [{"k": 0}, {"k": 5000}, {"k": 3, "modality": "audio"},
                                    {"k": 3, "iterations": 0}, {"k": 10, "sample": 5},
                                    {"k": 3, "device": "tpu"}])
def test_errors_leave_table_unchanged(two_modalities, kwargs):
    db, _ = two_modalities
    before = lance.dataset(f"{db}/embeddings.lance").version
    with pytest.raises(CuratorError):
        cluster(db=db, **kwargs)
    assert lance.dataset(f"{db}/embeddings.lance").version == before
    assert not Database(db).has_table("_curator_centroids_embeddings")


def test_cli_device_error_is_one_line(two_modalities):
    from click.testing import CliRunner

    from curator.cli import cli

    db, _ = two_modalities
    out = CliRunner().invoke(cli, ["--db", db, "--quiet", "cluster", "--k", "3", "--device", "tpu"])
    assert out.exit_code == 1
    assert out.output.strip().splitlines() == [
        "Error: unknown device 'tpu': use auto, cpu, cuda, cuda:N or torch-cpu"]


def test_many_fragments_streamed_one_at_a_time(tmp_path):
    """Fragments of mixed modalities: every row labelled and sized right after cluster and
    after arrivals, and the training sample's ordinals map to the same rows as positions
    in row-id order (the draw before streaming)."""
    from curator.curation.clusters import modality_rows, ordinal_rowids

    db = str(tmp_path / "db.lancedb")
    parts = []
    for i, (modality, seed) in enumerate([("image", 5), ("text", 6), ("image", 7), ("text", 8)]):
        X, lab = separated(300 + 50 * i, seed=seed)
        parts.append(write_source(tmp_path / f"p{i}.parquet", X, lab, modality, start=1000 * i))
    for p in parts:
        ingest([p], db=db)
    ds = lance.dataset(f"{db}/embeddings.lance")
    assert len(ds.get_fragments()) >= 4
    t = ds.to_table(columns=["modality"], with_row_id=True)
    order = np.argsort(t.column("_rowid").to_numpy())
    rowid = t.column("_rowid").to_numpy()[order]
    mods = np.asarray(t.column("modality").to_pylist())[order]
    assert modality_rows(ds) == {"image": int((mods == "image").sum()), "text": int((mods == "text").sum())}
    for m in ("image", "text"):
        positions = np.flatnonzero(mods == m)
        chosen = np.sort(np.random.default_rng(3).choice(len(positions), 200, replace=False))
        np.testing.assert_array_equal(ordinal_rowids(ds, m, chosen), rowid[positions[chosen]])

    cluster(db=db, k=K, seed=0)
    check_against_oracle(db, read(db)[1])
    X, lab = separated(120, seed=9)
    ingest([write_source(tmp_path / "late.parquet", X, lab, "text", start=90_000)], db=db)
    _, t = read(db)
    assert t.column("cluster").null_count == 0
    check_against_oracle(db, t)


def test_one_pass_over_batches_of_mixed_modalities(tmp_path):
    """Image and text rows interleaved in every batch: one pass labels each row by its own
    modality's centroids (the oracle), the reported rows, sizes and mean cosine equal brute
    force; rows of a modality without centroids (cluster --modality, then arrivals of both)
    stay unlabelled."""
    db = str(tmp_path / "db.lancedb")
    Xi, li = separated(400, seed=5)
    Xt, lt = separated(400, seed=6)
    X = np.empty((800, Xi.shape[1]), np.float32)
    X[0::2], X[1::2] = Xi, Xt
    t = pa.table({"id": [f"r{i}" for i in range(800)], "sample_id": [f"s{i // 2}" for i in range(800)],
                  "modality": ["image", "text"] * 400, "embedding": fixed_list(X),
                  "planted": pa.array(np.r_[li, lt].reshape(2, -1).T.ravel(), pa.int32())})
    pq.write_table(t, tmp_path / "mixed.parquet")
    ingest([str(tmp_path / "mixed.parquet")], db=db)
    result = cluster(db=db, k=K, seed=0)
    _, t = read(db)
    mods, cl = check_against_oracle(db, t)
    stored = CentroidStore(Database(db), "embeddings").latest()
    E = np.asarray(t.column("embedding").to_pylist(), np.float64)
    for m in ("image", "text"):
        U = E[mods == m] / np.linalg.norm(E[mods == m], axis=1, keepdims=True)
        cos = (U @ stored[m][1].T.astype(np.float64)).max(axis=1)
        r = result.modalities[m]
        assert r["rows"] == 400 and r["sizes"] == np.bincount(cl[mods == m], minlength=K).tolist()
        assert r["mean_cosine"] == pytest.approx(cos.mean(), abs=1e-5)
        assert r["inertia"] == pytest.approx(400 - cos.sum(), abs=1e-3)

    db2 = str(tmp_path / "db2.lancedb")
    ingest([str(tmp_path / "mixed.parquet")], db=db2)
    cluster(db=db2, k=K, seed=0, modality="image")
    Xn = np.empty((100, X.shape[1]), np.float32)
    Xn[0::2], Xn[1::2] = separated(50, seed=5)[0], separated(50, seed=6)[0]
    pq.write_table(pa.table({"id": [f"n{i}" for i in range(100)], "sample_id": [f"m{i // 2}" for i in range(100)],
                             "modality": ["image", "text"] * 50, "embedding": fixed_list(Xn),
                             "planted": pa.array(np.zeros(100), pa.int32())}), tmp_path / "more.parquet")
    ingest([str(tmp_path / "more.parquet")], db=db2)
    _, t = read(db2)
    mods = np.asarray(t.column("modality").to_pylist())
    labelled = np.asarray(t.column("cluster").is_valid().to_pylist())
    assert labelled[mods == "image"].all() and not labelled[mods == "text"].any()
    C = CentroidStore(Database(db2), "embeddings").latest()["image"][1]
    E = np.asarray(t.column("embedding").to_pylist(), np.float64)[mods == "image"]
    U = E / np.linalg.norm(E, axis=1, keepdims=True)
    cl = np.asarray(t.column("cluster").to_pylist(), object)[mods == "image"].astype(np.int64)
    np.testing.assert_array_equal(cl, np.argmax(U @ C.T.astype(np.float64), axis=1))
    size = np.asarray(t.column("cluster_size").to_pylist(), object)[mods == "image"].astype(np.int64)
    np.testing.assert_array_equal(size, np.bincount(cl, minlength=K)[cl])
