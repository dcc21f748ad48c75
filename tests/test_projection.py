"""``curator project`` against numpy oracles computed from the rows themselves, and the
report's two-shells view against the stored coordinates (one implementation)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from conftest import read_table

from curator import ingest, project, report
from curator.errors import BadInput
from curator.geometry import projection
from curator.store.arrow import vectors
from curator.store.database import Database
from curator.store.statistics import StatsStore


def _rows(db):
    t = read_table(db)
    X = np.asarray(vectors(t), np.float64)
    mods = np.array(t.column("modality").to_pylist())
    xy = np.stack([t.column("proj_x").to_numpy(zero_copy_only=False),
                   t.column("proj_y").to_numpy(zero_copy_only=False)], axis=1)
    return X, mods, xy


def _oriented(v):
    return v if v[np.argmax(np.abs(v))] >= 0 else -v


def _gap_oracle(X, mods):
    """The paper's picture from scratch: SVD of the centred image+text rows with the gap
    projected out."""
    A, B = X[mods == "image"], X[mods == "text"]
    g = A.mean(axis=0) - B.mean(axis=0)
    g /= np.linalg.norm(g)
    pooled = np.concatenate([A, B])
    c = pooled.mean(axis=0)
    P = (pooled - c) - np.outer((pooled - c) @ g, g)
    p = _oriented(np.linalg.svd(P, full_matrices=False)[2][0])
    return np.stack([X @ g, (X - c) @ p], axis=1), g, p


def test_gap_coordinates_equal_the_numpy_oracle(ingested):
    version = Database(ingested).dataset("embeddings").version
    result = project(db=ingested)
    X, mods, xy = _rows(ingested)
    want, _, _ = _gap_oracle(X, mods)
    scale = np.abs(want).max()
    assert np.abs(xy - want).max() <= 2e-6 * scale + 1e-5
    assert xy.dtype == np.float32 and result.rows == len(X)
    assert result.table_version_read == version and result.table_version == version + 1
    record = StatsStore(Database(ingested), "embeddings").load()
    assert record.table_version == result.table_version  # carried forward, not rebuilt
    # the two shells separate along x (the paper: image and text are linearly separable)
    assert xy[mods == "image", 0].min() > xy[mods == "text", 0].max() or \
        xy[mods == "image", 0].max() < xy[mods == "text", 0].min()


def test_projecting_again_rewrites_and_pca_equals_its_oracle(ingested):
    project(db=ingested)
    r = project(db=ingested, method="pca")
    X, _, xy = _rows(ingested)
    c = X.mean(axis=0)
    V = np.linalg.svd(X - c, full_matrices=False)[2][:2]
    want = (X - c) @ np.stack([_oriented(v) for v in V]).T
    assert np.abs(xy - want).max() <= 2e-6 * np.abs(want).max() + 1e-5
    assert r.ranges["proj_x"][0] == pytest.approx(float(xy[:, 0].min()))


def test_the_report_draws_the_stored_view(ingested, tmp_path):
    """The report's "Two shells" plot and `curator project --method gap` are one function:
    with every row sampled, the report's centres are the stored coordinates' means."""
    project(db=ingested)
    _, mods, xy = _rows(ingested)
    report(db=ingested, out=str(tmp_path / "r"), sample=100_000)
    data = json.loads((tmp_path / "r" / "report.json").read_text())
    centres = data["cross"]["gap_view"]["centres"]
    for m in ("image", "text"):
        assert np.allclose(centres[m], xy[mods == m].astype(np.float64).mean(axis=0), atol=1e-5)


def test_view_from_statistics_equals_view_from_a_sample():
    rng = np.random.default_rng(4)
    A = rng.normal(size=(300, 12)) * np.linspace(3, 0.2, 12) + 2.0
    B = rng.normal(size=(500, 12)) * np.linspace(0.5, 2, 12) - 1.0
    view = projection.gap_view(A.mean(0), B.mean(0), *projection.pooled(
        [projection.sample_moments(A), projection.sample_moments(B)]))
    X = np.concatenate([A, B])
    mods = np.array(["image"] * 300 + ["text"] * 500)
    want, g, p = _gap_oracle(X, mods)
    assert np.allclose(view.axes, [g, p], atol=1e-10)
    assert np.allclose(view.coordinates(X), want, atol=1e-9)


def test_errors(tmp_path, pairs_small):
    db = str(tmp_path / "db")
    table = pairs_small.table()
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    images = table.filter(pc.equal(table.column("modality"), "image"))
    pq.write_table(images, str(tmp_path / "img.parquet"))
    ingest([str(tmp_path / "img.parquet")], db=db)
    with pytest.raises(BadInput, match="needs two modalities"):
        project(db=db)
    with pytest.raises(BadInput, match="--method"):
        project(db=db, method="tsne")
    assert project(db=db, method="pca").rows == images.num_rows


def test_umap_fits_a_seeded_sample_and_places_the_rest(ingested):
    umap = pytest.importorskip("umap", reason="umap-learn (the browse extra) is not installed")
    r = project(db=ingested, method="umap", sample=150, seed=3)
    _, _, xy = _rows(ingested)
    assert r.sample == 150 and np.isfinite(xy).all()
    # oracle: umap-learn itself on the same seeded sample (numpy's choice over row ids)
    ds = Database(ingested).dataset("embeddings")
    t = ds.to_table(columns=["embedding"], with_row_id=True)
    rowids = t.column("_rowid").to_numpy()
    chosen = np.sort(np.random.default_rng(3).choice(np.sort(rowids), 150, replace=False))
    X = vectors(t)[np.searchsorted(rowids, chosen)]
    layout = umap.UMAP(n_components=2, metric="cosine", random_state=3, n_jobs=1,
                       n_neighbors=15).fit_transform(X)
    stored = xy[np.searchsorted(rowids, chosen)]
    assert np.allclose(stored, layout, atol=1e-4)
    again = project(db=ingested, method="umap", sample=150, seed=3)
    assert again.ranges == r.ranges
