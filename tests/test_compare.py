"""``compare`` against numpy oracles: conformity by brute force, JS and KS computed here,
concept ratios from the reference's centroids, on seeded tables drawn with different
concept frequencies and on real raw CLIP text vectors."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import SHARED_DATA

import curator
from curator.cli import cli
from curator.errors import BadInput, SchemaMismatch
from curator.store.arrow import fixed_list
from curator.store.centroids import CentroidStore
from curator.store.database import Database
from curator.synthetic import make_pairs

OVER = (2, 5)  # concepts drawn three times as often in the table


def _unit(X):
    X = np.asarray(X, np.float64)
    return X / np.linalg.norm(X, axis=1, keepdims=True)


def _oracle_js(a, b, bins=50):
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    p = np.histogram(a, bins=bins, range=(lo, hi))[0] / len(a)
    q = np.histogram(b, bins=bins, range=(lo, hi))[0] / len(b)
    m = (p + q) / 2
    kl = lambda u: np.sum(u[u > 0] * np.log2(u[u > 0] / m[u > 0]))  # noqa: E731
    return 0.5 * kl(p) + 0.5 * kl(q)


def _oracle_ks(a, b):
    grid = np.concatenate([a, b])
    fa = (a[None, :] <= grid[:, None]).mean(axis=1)
    fb = (b[None, :] <= grid[:, None]).mean(axis=1)
    return np.abs(fa - fb).max()


@pytest.fixture(scope="module")
def two_tables(tmp_path_factory):
    """One seeded geometry, two draws: the reference samples every concept evenly, the
    table draws concepts 2 and 5 three times as often. The reference is clustered."""
    folder = tmp_path_factory.mktemp("compare")
    data = make_pairs(samples=2400, dim=24, concepts=8, zipf=0.0, max_captions=2, duplicates=0.0, seed=4)
    rng = np.random.default_rng(0)
    samples = np.unique(data.sample_ids)
    concept_of = {s: c for s, c in zip(data.sample_ids, data.concept)}
    weight = np.array([3.0 if concept_of[s] in OVER else 1.0 for s in samples])
    ref_samples = rng.choice(samples, 900, replace=False)
    rest = np.setdiff1d(samples, ref_samples)
    w = weight[np.isin(samples, rest)]
    tab_samples = rng.choice(rest, 700, replace=False, p=w / w.sum())
    db = str(folder / "db.lancedb")
    for name, chosen in (("reference", ref_samples), ("candidates", tab_samples)):
        rows = np.flatnonzero(np.isin(data.sample_ids, chosen))
        path = str(folder / f"{name}.parquet")
        pq.write_table(data.table(rows), path)
        curator.ingest([path], db=db, table=name, model="synthetic")
    curator.cluster(db=db, table="reference", k=8, seed=0)
    index = {"reference": np.isin(data.sample_ids, ref_samples),
             "candidates": np.isin(data.sample_ids, tab_samples)}
    return db, data, index, folder


def test_distributions_match_numpy(two_tables):
    db, data, index, folder = two_tables
    result = curator.compare(db=db, table="candidates", reference="reference", out=str(folder / "out"))
    for m in ("image", "text"):
        R = _unit(data.vectors[index["reference"] & (data.modality == m)])
        T = _unit(data.vectors[index["candidates"] & (data.modality == m)])
        own = ((R @ R.T).sum(axis=1) - 1) / (len(R) - 1)  # the reference's own conformity
        mine = (T @ R.T).mean(axis=1)  # the table's, against the reference
        got = result.modalities[m]
        assert got["rows"] == len(T) and got["reference_rows"] == len(R)
        assert got["median"] == pytest.approx(np.median(mine), abs=2e-6)
        assert got["reference_median"] == pytest.approx(np.median(own), abs=2e-6)
        assert got["js"] == pytest.approx(_oracle_js(mine, own), abs=2e-3)
        assert got["ks"] == pytest.approx(_oracle_ks(mine, own), abs=2.0 / len(T))
        assert got["js"] > 0.01 and got["ks"] > 0.05  # different concept mixes are visible
        lowest = sorted(zip(mine, data.ids[index["candidates"] & (data.modality == m)]))[:3]
        assert [r["id"] for r in result.atypical[m]["ref_conformity"][:3]] == [i for _, i in lowest]


def test_over_represented_concepts_rank_first(two_tables):
    db, data, index, _ = two_tables
    result = curator.compare(db=db, table="candidates", reference="reference")
    centroids = CentroidStore(Database(db), "reference").latest()
    for m in ("image", "text"):
        C = centroids[m][1]
        lab_t = np.argmax(_unit(data.vectors[index["candidates"] & (data.modality == m)]) @ C.T, axis=1)
        lab_r = np.argmax(_unit(data.vectors[index["reference"] & (data.modality == m)]) @ C.T, axis=1)
        ct, cr = np.bincount(lab_t, minlength=len(C)), np.bincount(lab_r, minlength=len(C))
        got = {c["cluster"]: c for c in result.concepts if c["modality"] == m}
        for j in range(len(C)):
            assert (got[j]["count"], got[j]["reference_count"]) == (ct[j], cr[j])
            if cr[j]:
                assert got[j]["ratio"] == pytest.approx((ct[j] / ct.sum()) / (cr[j] / cr.sum()))
        # the two clusters holding most of the over-drawn concepts rank first in this modality
        concept_t = data.concept[index["candidates"] & (data.modality == m)]
        planted = {j for j in range(len(C)) if np.isin(concept_t[lab_t == j], OVER).mean() > 0.5}
        ranked = [c["cluster"] for c in result.concepts if c["modality"] == m]
        assert len(planted) == 2 and set(ranked[:2]) == planted
    ratios = [np.inf if c["ratio"] is None else c["ratio"] for c in result.concepts]
    assert ratios == sorted(ratios, reverse=True)
    assert result.clusters["image"]["source"] == "stored"


def test_files_and_json(two_tables, tmp_path):
    db, _, _, _ = two_tables
    out = tmp_path / "cmp"
    res = CliRunner().invoke(cli, ["--db", db, "--table", "candidates", "compare", "--reference",
                                   "reference", "--out", str(out), "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert set(data["modalities"]) == {"image", "text"}
    assert {"js", "ks"} <= set(data["modalities"]["image"])
    assert {"cluster", "count", "reference_count", "ratio"} <= set(data["concepts"][0])
    for name in ("index.html", "compare.json", "conformity.png", "concepts.png"):
        assert (out / name).stat().st_size > 500
    saved = json.loads((out / "compare.json").read_text())
    assert saved["modalities"]["text"]["js"] == data["modalities"]["text"]["js"]
    page = (out / "index.html").read_text()
    assert "Jensen–Shannon" in page and "most over-represented" in page


def _raw_text_table(db, name, path, model="ViT-B/32", table_rows=None):
    X = np.load(path).astype(np.float32)
    if table_rows is not None:
        X = X[table_rows]
    ids = [f"{name}-{i}" for i in range(len(X))]
    pq.write_table(pa.table({"id": ids, "modality": ["text"] * len(X), "embedding": fixed_list(X)}),
                   f"{db}-{name}.parquet")
    curator.ingest([f"{db}-{name}.parquet"], db=db, table=name, model=model)
    return X, ids


def test_real_raw_text_across_databases(tmp_path):
    folder = SHARED_DATA / "real-raw-text"
    if not (folder / "coco80_a_photo_of_a.npy").exists():
        pytest.skip(f"real data not present at {folder}")
    # Reference: 634 COCO-caption concepts ("a {concept}") in one database; the table:
    # the 80 COCO classes ("a photo of a {class}") in another. Raw, unnormalised vectors.
    ref_db, tab_db = str(tmp_path / "ref.lancedb"), str(tmp_path / "tab.lancedb")
    R, _ = _raw_text_table(ref_db, "concepts", folder / "cococap634_a.npy")
    T, ids = _raw_text_table(tab_db, "classes", folder / "coco80_a_photo_of_a.npy")
    result = curator.compare(db=tab_db, table="classes", reference="concepts", db_reference=ref_db,
                             k=6, seed=1, out=str(tmp_path / "out"))
    UR, UT = _unit(R), _unit(T)
    own = ((UR @ UR.T).sum(axis=1) - 1) / (len(UR) - 1)
    mine = (UT @ UR.T).mean(axis=1)
    got = result.modalities["text"]
    assert got["js"] == pytest.approx(_oracle_js(mine, own), abs=2e-3)
    assert got["ks"] == pytest.approx(_oracle_ks(mine, own), abs=1.5 / len(T))
    assert got["median"] == pytest.approx(np.median(mine), abs=1e-5)
    assert [r["id"] for r in result.atypical["text"]["ref_conformity"][:3]] == \
        [ids[i] for i in np.argsort(mine)[:3]]
    assert result.clusters["text"]["source"].startswith("trained now") and result.clusters["text"]["k"] == 6
    assert sum(c["count"] for c in result.concepts) == len(T)
    assert sum(c["reference_count"] for c in result.concepts) == len(R)
    # one prompt template against another: the shift is large and visible
    assert got["ks"] > 0.3
    assert not CentroidStore(Database(ref_db), "concepts").exists()  # nothing stored


def test_model_or_dimension_mismatch_is_one_error(tmp_path):
    db = str(tmp_path / "db.lancedb")
    rng = np.random.default_rng(0)
    for name, dim, model in (("a", 8, "m1"), ("b", 8, "m2"), ("c", 6, "m1")):
        X = rng.normal(size=(20, dim)).astype(np.float32) + 3
        pq.write_table(pa.table({"id": [f"{name}{i}" for i in range(20)], "modality": ["text"] * 20,
                                 "embedding": fixed_list(X)}), str(tmp_path / f"{name}.parquet"))
        curator.ingest([str(tmp_path / f"{name}.parquet")], db=db, table=name, model=model)
    with pytest.raises(SchemaMismatch, match="model"):
        curator.compare(db=db, table="a", reference="b")
    with pytest.raises(SchemaMismatch, match="6-d"):
        curator.compare(db=db, table="a", reference="c")
    with pytest.raises(BadInput, match="itself"):
        curator.compare(db=db, table="a", reference="a")
    res = CliRunner().invoke(cli, ["--db", db, "--table", "a", "compare", "--reference", "c"])
    assert res.exit_code == 1 and res.output.count("\n") == 1 and res.output.startswith("Error:")
    assert not os.path.exists(tmp_path / "out")


def test_ray_engine_gives_the_local_numbers(two_tables):
    pytest.importorskip("ray")
    import ray

    db, _, _, _ = two_tables
    local = curator.compare(db=db, table="candidates", reference="reference")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        remote = curator.compare(db=db, table="candidates", reference="reference", engine="ray")
    finally:
        ray.shutdown()
    assert remote.modalities == local.modalities
    assert remote.concepts == local.concepts and remote.atypical == local.atypical
