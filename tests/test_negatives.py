"""``negatives``: false-negative counts against a hand-worked example and brute force.

Oracles: a 2-d example counted by hand; float64 brute force over every (caption, image)
pair on seeded data with multi-caption samples and planted near duplicates; the
partitioned path (the calibrated skip rule) against the same brute force, where no row
may be over-counted and the pair recall must reach 0.99.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import read_table

import curator
import curator.curation.negatives as negatives_module
from curator.errors import BadInput
from curator.geometry import negatives as ng
from curator.store.arrow import fixed_list
from curator.store.database import Database
from curator.store.statistics import StatsStore
from curator.synthetic import make_pairs


def _write(tmp_path, rows: list[tuple], name: str = "rows.parquet") -> str:
    ids, samples, mods, vecs = zip(*rows)
    path = str(tmp_path / name)
    pq.write_table(pa.table({"id": list(ids), "sample_id": list(samples), "modality": list(mods),
                             "embedding": fixed_list(np.array(vecs, np.float32))}), path)
    return path


def _angle(deg: float, norm: float) -> list[float]:
    return [norm * np.cos(np.radians(deg)), norm * np.sin(np.radians(deg))]


@pytest.fixture
def hand(tmp_path, db):
    """Three samples in 2-d (angles in degrees; raw norms vary and must not matter):
    images A 0°, B 90°, C 45°; captions A 30°, B 80°, C 10°. Plus an image without a
    caption (sample D) and a caption without a sample id: neither has a partner."""
    rows = [("vA", "A", "image", _angle(0, 3.0)), ("tA", "A", "text", _angle(30, 7.0)),
            ("vB", "B", "image", _angle(90, 5.0)), ("tB", "B", "text", _angle(80, 2.0)),
            ("vC", "C", "image", _angle(45, 4.0)), ("tC", "C", "text", _angle(10, 9.0)),
            ("vD", "D", "image", _angle(20, 1.0)), ("tX", None, "text", _angle(5, 3.0))]
    curator.ingest([_write(tmp_path, rows)], db=db)
    return db


def _column(db, name, table="embeddings") -> dict:
    t = read_table(db, table)
    return dict(zip(t.column("id").to_pylist(), t.column(name).to_pylist()))


def test_hand_worked_example(hand):
    # Captions: tA (own cos 30° = .866) is beaten by C (15°); tB (own 10°) by nobody;
    # tC (own 35°) by A (10°). Images: vA (own 30°) is beaten by tC (10°); vB (own 10°)
    # by nobody; vC (own 35°) by tA (15°) and tB (35°: a tie, which counts).
    result = curator.negatives(db=hand)
    count, rate = _column(hand, "fn_count"), _column(hand, "fn_rate")
    assert {k: count[k] for k in ("tA", "tB", "tC", "vA", "vB", "vC")} == \
        {"tA": 1, "tB": 0, "tC": 1, "vA": 1, "vB": 0, "vC": 2}
    assert count["vD"] is None and count["tX"] is None  # no partner: null, not a candidate
    assert rate["tA"] == pytest.approx(0.5) and rate["vC"] == pytest.approx(1.0)
    assert rate["vB"] == 0.0 and rate["vD"] is None
    assert result.method == "exact" and result.rows_counted == 6 and result.rows_null == 2
    assert result.modalities["image"]["max_fn_count"] == 2


def test_hand_worked_example_with_eps(hand):
    curator.negatives(db=hand, eps=0.2)
    count = _column(hand, "fn_count")
    assert {k: count[k] for k in ("tA", "tB", "tC", "vA", "vB", "vC")} == \
        {"tA": 1, "tB": 1, "tC": 1, "vA": 1, "vB": 0, "vC": 2}


def test_where_restricts_rows_and_candidates(hand):
    # Without sample C: tA loses its false negative (image C is no candidate) and vA
    # keeps none (caption C is gone); C's rows are null.
    result = curator.negatives(db=hand, where="sample_id <> 'C'")
    count = _column(hand, "fn_count")
    assert {k: count[k] for k in ("tA", "tB", "vA", "vB")} == {"tA": 0, "tB": 0, "vA": 0, "vB": 0}
    assert count["tC"] is None and count["vC"] is None
    assert result.where and result.rows_counted == 4
    # A caption whose image fails the predicate has no partner left: null.
    curator.negatives(db=hand, where="id <> 'vA'")
    count = _column(hand, "fn_count")
    assert count["tA"] is None and count["vA"] is None and count["tC"] == 0


def _oracle(data, eps, keep=None):
    """float64 brute force: fn_count per row id, and the per-pair margin to the threshold."""
    ids, samples, mods = data.ids, data.sample_ids, data.modality
    keep = np.ones(len(ids), bool) if keep is None else keep
    U = data.vectors.astype(np.float64)
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    img, txt = np.flatnonzero((mods == "image") & keep), np.flatnonzero((mods == "text") & keep)
    both = np.intersect1d(samples[img], samples[txt])
    img, txt = img[np.isin(samples[img], both)], txt[np.isin(samples[txt], both)]
    S = U[txt] @ U[img].T
    same = samples[txt][:, None] == samples[img][None, :]
    own_t = np.where(same, S, -np.inf).max(axis=1)
    own_v = np.where(same, S, -np.inf).max(axis=0)
    gap_t = np.where(same, np.inf, S - (own_t[:, None] - eps))  # ≥ 0: a false negative
    gap_v = np.where(same, np.inf, S - (own_v[None, :] - eps))
    out = {}
    for k, row in zip(txt, gap_t):
        out[ids[k]] = (int((row[np.isfinite(row)] >= 0).sum()), int((np.abs(row) < 1e-5).sum()))
    for k, col in zip(img, gap_v.T):
        out[ids[k]] = (int((col[np.isfinite(col)] >= 0).sum()), int((np.abs(col) < 1e-5).sum()))
    return out


def _assert_matches(got: dict, oracle: dict):
    """Equal to the oracle, up to pairs within 1e-5 of their threshold (float32 vs 64)."""
    assert set(k for k, v in got.items() if v is not None) == set(oracle)
    for k, (count, ambiguous) in oracle.items():
        assert abs(got[k] - count) <= ambiguous, (k, got[k], count, ambiguous)


@pytest.mark.parametrize("eps", [0.0, 0.05])
def test_exact_matches_brute_force(tmp_path, db, eps):
    data = make_pairs(samples=400, dim=24, concepts=6, max_captions=4, duplicates=0.05,
                      duplicate_noise=0.02, seed=3)
    for path in data.write_parquet(str(tmp_path / "src"), parts=3):
        curator.ingest([path], db=db)
    result = curator.negatives(db=db, eps=eps)
    oracle = _oracle(data, eps)
    got = _column(db, "fn_count")
    _assert_matches(got, oracle)
    assert sum(v[0] for v in oracle.values()) > 100  # the data has false negatives to find
    text = [got[i] for i in data.ids[data.modality == "text"]]
    assert result.modalities["text"]["mean_fn_count"] == pytest.approx(np.mean(text))
    # fn_rate = fn_count / other samples' rows of the other modality
    rate = _column(db, "fn_rate")
    n_img = int((data.modality == "image").sum())
    k = data.ids[data.modality == "text"][0]
    assert rate[k] == pytest.approx(got[k] / (n_img - 1), rel=1e-6)


def test_planted_duplicates_are_false_negatives(tmp_path, db):
    # A planted near-duplicate image (cosine ≈ 1 − 0.01²/2 to its original) fits the
    # original's captions within ε = 0.02 of their own image, and vice versa.
    data = make_pairs(samples=300, dim=32, concepts=6, duplicates=0.05, duplicate_noise=0.01, seed=5)
    curator.ingest(data.write_parquet(str(tmp_path / "src")), db=db)
    curator.negatives(db=db, eps=0.02)
    got = _column(db, "fn_count")
    sample_of = dict(zip(data.ids, data.sample_ids))
    planted = 0
    for dup, orig in data.duplicate_of.items():
        for cap in data.ids[(data.modality == "text") & np.isin(data.sample_ids, [sample_of[orig]])]:
            assert got[cap] >= 1
            planted += 1
        for cap in data.ids[(data.modality == "text") & (data.sample_ids == sample_of[dup])]:
            assert got[cap] >= 1
    assert planted >= 10


def test_partitioned_never_over_counts(tmp_path, db, monkeypatch):
    # Force the skip rule on a table small enough to brute-force; every count is ≤ the
    # truth and the pair recall reaches 0.99 (the rule is calibrated for 0.995).
    data = make_pairs(samples=3000, dim=48, concepts=40, zipf=0.8, max_captions=2,
                      duplicates=0.02, seed=11)
    curator.ingest(data.write_parquet(str(tmp_path / "src")), db=db)
    monkeypatch.setattr(negatives_module, "EXACT_PAIRS", 0)
    monkeypatch.setattr(negatives_module, "CALIBRATION_ROWS", 512)
    monkeypatch.setattr(negatives_module, "AUDIT_ROWS", 512)
    result = curator.negatives(db=db)
    assert result.method.startswith("partitioned")
    oracle = _oracle(data, 0.0)
    got = _column(db, "fn_count")
    found = total = 0
    for k, (count, ambiguous) in oracle.items():
        assert got[k] <= count + ambiguous, k  # never over-counted
        found += got[k]
        total += count
    assert total > 1000 and found / total >= 0.99
    for m, r in result.modalities.items():
        assert r["audit"]["over_counted"] == 0 and r["audit"]["recall"] >= 0.98, (m, r["audit"])
        assert 0 < r["work_share"] < 1 and r["partitions"] > 1


def test_skip_rule_is_exact_with_the_radius_margin():
    # With m = R_j (Cauchy–Schwarz) the rule visits every cluster holding a false negative.
    rng = np.random.default_rng(0)
    X = rng.normal(size=(600, 16)).astype(np.float32)
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    Q = rng.normal(size=(200, 16)).astype(np.float32)
    Q /= np.linalg.norm(Q, axis=1, keepdims=True)
    theta = rng.uniform(0.3, 0.8, 200).astype(np.float32)
    sq, sx = np.arange(200), np.arange(1000, 1600)
    plan = ng.ProbePlan.train(X, 12, seed=0)
    assert plan.margin == np.inf  # untrained margin: m_j = R_j
    counts = np.zeros(200, np.int64)
    members = plan.members()
    for j, rows in enumerate(plan.probes(Q, theta)):
        counts[rows] += ng.count_block(Q[rows], theta[rows], sq[rows], X[members[j]], sx[members[j]])
    exact, _, _ = ng.exact_false_negatives(Q, theta, sq, X, sx)
    assert np.array_equal(counts, exact) and exact.sum() > 100


def test_statistics_record_is_carried_forward(ingested):
    before = StatsStore(Database(ingested), "embeddings").load()
    result = curator.negatives(db=ingested)
    after = StatsStore(Database(ingested), "embeddings").load()
    assert after.version == before.version and after.table_version == result.table_version
    assert curator.stats(db=ingested)["modalities"]["image"]["stale_rows"] == 0


@pytest.mark.parametrize("options, message", [
    ({"eps": -0.1}, "--eps"), ({"recall": 0}, "--recall"), ({"recall": 1.5}, "--recall"),
    ({"where": "modality = 'audio'"}, "no image–text pairs"), ({"where": "nope > 1"}, "nope"),
])
def test_bad_input_changes_nothing(ingested, options, message):
    before = Database(ingested).dataset("embeddings").version
    with pytest.raises(BadInput, match=message):
        curator.negatives(db=ingested, **options)
    assert Database(ingested).dataset("embeddings").version == before


def test_cli_json(ingested):
    import json

    from click.testing import CliRunner

    from curator.cli import cli

    out = CliRunner().invoke(cli, ["--db", ingested, "negatives", "--eps", "0.01", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["eps"] == 0.01 and set(data["modalities"]) == {"image", "text"}
    rows = curator.query("select count(*) as n from embeddings where fn_count is not null",
                         db=ingested).to_pylist()[0]["n"]
    assert rows == data["rows_counted"]
    bad = CliRunner().invoke(cli, ["--db", ingested, "negatives", "--eps", "-1"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: --eps")


def test_ray_engine_gives_the_local_counts(tmp_path, pairs_small, monkeypatch):
    pytest.importorskip("ray")
    import shutil

    import ray

    db = str(tmp_path / "a.lancedb")
    curator.ingest(pairs_small.write_parquet(str(tmp_path / "src"), parts=2), db=db)
    twin = str(tmp_path / "b.lancedb")
    shutil.copytree(db, twin)
    curator.negatives(db=db)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    try:
        curator.negatives(db=twin, engine="ray")
        assert _column(db, "fn_count") == _column(twin, "fn_count")
        monkeypatch.setattr(negatives_module, "EXACT_PAIRS", 0)
        monkeypatch.setattr(negatives_module, "CALIBRATION_ROWS", 256)
        monkeypatch.setattr(negatives_module, "AUDIT_ROWS", 256)
        ray_part = curator.negatives(db=twin, engine="ray", where="modality in ('image', 'text')")
    finally:
        ray.shutdown()
    local_part = curator.negatives(db=db, where="modality in ('image', 'text')")
    assert _column(db, "fn_count") == _column(twin, "fn_count")
    assert ray_part.modalities["text"]["margin"] == local_part.modalities["text"]["margin"]
