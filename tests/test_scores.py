"""Stored scores against brute-force oracles, on synthetic data and the real COCO pairs."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import brute_conformity, read_table

from curator import ingest, refresh
from curator.engine.statistics import current
from curator.maintenance.stats import stats as describe
from curator.store.database import Database


def by_id(db):
    t = read_table(db).to_pydict()
    return t, {i: k for k, i in enumerate(t["id"])}


def column(t, pos, ids, name):
    return np.array([np.nan if t[name][pos[i]] is None else t[name][pos[i]] for i in ids], np.float64)


def exact_cdf(values):
    """Oracle of uncertainty: fraction of the modality's rows with conformity ≤ each value."""
    s = np.sort(values)
    return np.searchsorted(s, values, side="right") / len(values)


def gaussian_loglik(X):
    """Oracle: log-density under N(mean, cov) with numpy (float64), no flooring needed."""
    X = np.asarray(X, np.float64)
    m = X.mean(0)
    cov = np.cov(X.T, bias=True)
    sign, logdet = np.linalg.slogdet(cov)
    D = X - m
    maha = np.einsum("ij,ij->i", D @ np.linalg.inv(cov), D)
    return -0.5 * (X.shape[1] * np.log(2 * np.pi) + logdet + maha)


def check_modality(t, pos, ids, X, db, modality):
    C = brute_conformity(X)
    got = column(t, pos, ids, "conformity")
    assert np.abs(got - C).max() < 2e-5
    m = X.astype(np.float64).mean(0)
    est = (X @ m) / np.linalg.norm(X, axis=1) / np.linalg.norm(m)
    assert np.abs(column(t, pos, ids, "conformity_est") - est).max() < 2e-5
    resolution = describe(db=db)["modalities"][modality]["uncertainty_resolution"]
    unc = column(t, pos, ids, "uncertainty")
    assert np.abs(unc - exact_cdf(C)).max() <= resolution + 1e-6
    return C


def test_scores_match_brute_force_on_synthetic(ingested, pairs_small):
    t, pos = by_id(ingested)
    data = pairs_small
    for modality in ("image", "text"):
        rows = data.modality == modality
        check_modality(t, pos, data.ids[rows], data.vectors[rows], ingested, modality)


def test_loglik_ranks_equal_the_gaussian_oracle(ingested, pairs_small):
    t, pos = by_id(ingested)
    for modality in ("image", "text"):
        rows = pairs_small.modality == modality
        oracle = gaussian_loglik(pairs_small.vectors[rows])
        got = column(t, pos, pairs_small.ids[rows], "loglik")
        # Same ranking: along our order the oracle never drops by more than float32
        # storage resolution (exact ties aside, the two orders are identical).
        along = oracle[np.argsort(got, kind="stable")]
        assert (np.maximum.accumulate(along) - along).max() < 1e-4
        assert np.allclose(got, oracle, rtol=1e-5, atol=1e-4)


def test_pair_scores_exact_with_several_captions(ingested, pairs_small):
    t, pos = by_id(ingested)
    data = pairs_small
    V = data.vectors.astype(np.float64)
    means = {m: V[data.modality == m].mean(0) for m in ("image", "text")}
    conf = {}
    for m in ("image", "text"):
        rows = np.flatnonzero(data.modality == m)
        C = brute_conformity(V[rows])
        conf.update(dict(zip(data.ids[rows], exact_cdf(C))))
    image_of = {data.sample_ids[i]: i for i in np.flatnonzero(data.modality == "image")}
    best = {}
    resolution = max(v["uncertainty_resolution"] for v in describe(db=ingested)["modalities"].values())
    for k in np.flatnonzero(data.modality == "text"):
        i = image_of[data.sample_ids[k]]
        a = V[i] @ V[k] / np.linalg.norm(V[i]) / np.linalg.norm(V[k])
        ci, ck = V[i] - means["image"], V[k] - means["text"]
        c = ci @ ck / np.linalg.norm(ci) / np.linalg.norm(ck)
        mis = conf[data.ids[k]] - conf[data.ids[i]]
        row = pos[data.ids[k]]
        assert t["alignment"][row] == pytest.approx(a, abs=2e-6)
        assert t["alignment_centered"][row] == pytest.approx(c, abs=2e-5)
        assert t["conformity_mismatch"][row] == pytest.approx(mis, abs=2 * resolution + 1e-6)
        prev = best.get(i, (-2, -2, -2))
        best[i] = (max(prev[0], a), max(prev[1], c), max(prev[2], mis))
    for i, (a, c, mis) in best.items():
        row = pos[data.ids[i]]
        assert t["alignment"][row] == pytest.approx(a, abs=2e-6)
        assert t["alignment_centered"][row] == pytest.approx(c, abs=2e-5)
        assert t["conformity_mismatch"][row] == pytest.approx(mis, abs=2 * resolution + 1e-6)
    counts = np.bincount([int(s[1:]) for s in data.sample_ids[data.modality == "text"]])
    assert counts.max() > 1 and (counts == 1).any()  # both one and several captions covered


def _coco_db(tmp_path, coco, parts=2):
    image, text = coco
    n = len(image)
    db = str(tmp_path / "coco.lancedb")
    bounds = np.linspace(0, n, parts + 1).astype(int)
    for lo, hi in zip(bounds[:-1], bounds[1:]):
        k = np.arange(lo, hi)
        path = tmp_path / f"coco{lo}.parquet"
        pq.write_table(pa.table({
            "id": [f"i{j}" for j in k] + [f"t{j}" for j in k],
            "sample_id": [f"s{j}" for j in k] * 2,
            "modality": ["image"] * len(k) + ["text"] * len(k),
            "embedding": pa.array(list(np.vstack([image[k], text[k]])), pa.list_(pa.float32())),
        }), path)
        ingest([str(path)], db=db)
    return db


def test_real_coco_scores_after_refresh(tmp_path, coco):
    image, text = coco
    db = _coco_db(tmp_path, coco)
    refresh(db=db)
    t, pos = by_id(db)
    n = len(image)
    check_modality(t, pos, [f"i{k}" for k in range(n)], image, db, "image")
    check_modality(t, pos, [f"t{k}" for k in range(n)], text, db, "text")
    cos = np.einsum("ij,ij->i", image, text) / np.linalg.norm(image, axis=1) / np.linalg.norm(text, axis=1)
    assert np.abs(column(t, pos, [f"t{k}" for k in range(n)], "alignment") - cos).max() < 2e-6
    assert np.abs(column(t, pos, [f"i{k}" for k in range(n)], "alignment") - cos).max() < 2e-6
    assert abs(cos.mean() - 0.310) < 0.01  # data README: mean cosine of a true pair


def test_real_coco_estimator_is_nearly_linear(tmp_path, coco):
    db = _coco_db(tmp_path, coco, parts=1)
    t = read_table(db).to_pandas() if False else read_table(db).to_pydict()
    for m in ("image", "text"):
        rows = [k for k, x in enumerate(t["modality"]) if x == m]
        c = np.array([t["conformity"][k] for k in rows])
        e = np.array([t["conformity_est"][k] for k in rows])
        assert np.corrcoef(c, e)[0, 1] > 0.999


def test_single_row_modality_has_null_conformity(tmp_path, db):
    path = tmp_path / "one.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "modality": ["image", "image", "text"],
                             "embedding": pa.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]],
                                                   pa.list_(pa.float32()))}), path)
    ingest([str(path)], db=db)
    t = read_table(db).to_pydict()
    conf = dict(zip(t["id"], t["conformity"]))
    assert conf["c"] is None  # a single text row: conformity undefined
    assert conf["a"] == pytest.approx(0.0) and conf["b"] == pytest.approx(0.0)
    assert describe(db=db)["modalities"]["text"]["n"] == 1


def test_hand_worked_example(tmp_path, db):
    # Three unit-ish image vectors: cosines (a,b)=0, (a,c)=(b,c)=1/sqrt(2).
    path = tmp_path / "hand.parquet"
    pq.write_table(pa.table({"id": ["a", "b", "c"], "modality": ["image"] * 3,
                             "embedding": pa.array([[2.0, 0.0], [0.0, 3.0], [5.0, 5.0]],
                                                   pa.list_(pa.float32()))}), path)
    ingest([str(path)], db=db)
    t = read_table(db).to_pydict()
    conf = dict(zip(t["id"], t["conformity"]))
    r = 1 / np.sqrt(2)
    assert conf["a"] == pytest.approx(r / 2, abs=1e-6)
    assert conf["b"] == pytest.approx(r / 2, abs=1e-6)
    assert conf["c"] == pytest.approx(r, abs=1e-6)
    norms = dict(zip(t["id"], t["norm"]))
    assert norms["c"] == pytest.approx(np.sqrt(50), rel=1e-6)
    stats = current(Database(db), "embeddings").modalities["image"]
    assert np.allclose(stats.mean, [7 / 3, 8 / 3])


def test_sketch_counts_bin_each_finite_value_once_as_the_stored_float32():
    import numpy as np

    from curator.geometry import sketch

    rng = np.random.default_rng(3)
    values = np.concatenate([rng.uniform(-1.2, 1.2, 5000), [np.nan, np.inf, -1.0, 1.0]])
    oracle = np.zeros(sketch.HIST_BINS, np.int64)
    for v in values:
        if np.isfinite(v):
            oracle[sketch.conformity_bins(np.array([v]))[0]] += 1
    assert np.array_equal(sketch.counts(values), oracle)
    assert sketch.counts(values).sum() == 5002
