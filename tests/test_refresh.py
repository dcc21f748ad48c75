"""Refresh: exactly the stale rows, one commit, score columns only, and reference scoring."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import brute_conformity, read_table

from curator import ingest, refresh
from curator.maintenance.stats import stats as describe
from curator.store.database import Database


def _batch(tmp_path, name, X, modality="image", prefix="r"):
    path = tmp_path / f"{name}.parquet"
    pq.write_table(pa.table({"id": [f"{prefix}{i}" for i in range(len(X))],
                             "modality": [modality] * len(X),
                             "embedding": pa.array(list(X), pa.list_(pa.float32()))}), path)
    return str(path)


def test_refresh_rescores_only_rows_above_tolerance(tmp_path, db):
    rng = np.random.default_rng(0)
    A = (rng.normal(size=(100, 8)) + 2).astype(np.float32)
    B = (rng.normal(size=(5, 8)) + 2).astype(np.float32)
    C = (rng.normal(size=(100, 8)) - 2).astype(np.float32)
    ingest([_batch(tmp_path, "a", A, prefix="a")], db=db)
    ingest([_batch(tmp_path, "b", B, prefix="b")], db=db)  # small change: small bound for A
    small = describe(db=db)["modalities"]["image"]["max_staleness"]
    ingest([_batch(tmp_path, "c", C, prefix="c")], db=db)  # large change: A and B far off
    # bounds of conformity are < 1 here? then nothing to do (loglik's, in nats, are not)
    result = refresh(db=db, tolerance=1.0, columns="conformity")
    bounds = describe(db=db)["modalities"]["image"]
    assert 0 < small < bounds["max_staleness"]
    if bounds["max_staleness"] <= 1.0:
        assert result.rows == 0
    result = refresh(db=db, tolerance=0.0, columns="conformity")
    assert result.rows == 105  # A and B; C was scored with the current statistics
    assert describe(db=db)["modalities"]["image"]["max_staleness"] == 0.0
    # Counting every column, C's percentiles were stale too (the sketch held A and B's
    # stale conformities when C was scored); a full refresh leaves every bound at 0.
    again = refresh(db=db, tolerance=0.0)
    assert 0 < again.rows <= 205
    assert all(v == 0.0 for v in describe(db=db)["modalities"]["image"]["staleness"].values())
    t = read_table(db).to_pydict()
    X = np.array(t["embedding"], np.float32)
    assert np.abs(np.array(t["conformity"]) - brute_conformity(X)).max() < 2e-5


def test_refresh_writes_score_columns_only(tmp_path, db):
    rng = np.random.default_rng(1)
    ingest([_batch(tmp_path, "a", (rng.normal(size=(50, 8)) + 1).astype(np.float32), prefix="a")], db=db)
    ingest([_batch(tmp_path, "b", (rng.normal(size=(50, 8)) - 1).astype(np.float32), prefix="b")], db=db)
    before = Database(db).dataset("embeddings")
    files_before = {f.path for frag in before.get_fragments() for f in frag.data_files()
                    if 3 in f.fields}  # field 3 = embedding
    refresh(db=db)
    after = Database(db).dataset("embeddings")
    files_after = {f.path for frag in after.get_fragments() for f in frag.data_files() if 3 in f.fields}
    assert files_before == files_after  # the vectors were not rewritten
    assert after.version == before.version + 1  # one commit


def test_refresh_is_idempotent(ingested):
    version = Database(ingested).dataset("embeddings").version
    result = refresh(db=ingested)
    assert result.rows == 0
    assert Database(ingested).dataset("embeddings").version == version


def test_negative_tolerance_is_an_error(ingested):
    from curator.errors import BadInput

    with pytest.raises(BadInput):
        refresh(db=ingested, tolerance=-1)


def test_reference_scoring_uses_the_other_tables_rows(tmp_path, db):
    from curator.maintenance.reference import score_against

    rng = np.random.default_rng(3)
    R = (rng.normal(size=(80, 6)) + 1).astype(np.float32)
    N = (rng.normal(size=(20, 6)) - 1).astype(np.float32)
    ingest([_batch(tmp_path, "ref", R, prefix="ref")], db=db, table="trusted", model="m")
    ingest([_batch(tmp_path, "new", N, prefix="new")], db=db, table="fresh", model="m")
    result = score_against(db=db, table="fresh", reference="trusted")
    assert result.rows == 20
    t = read_table(db, "fresh").to_pydict()
    Ru = R / np.linalg.norm(R, axis=1, keepdims=True)
    Nu = np.array(t["embedding"], np.float64)
    Nu /= np.linalg.norm(Nu, axis=1, keepdims=True)
    expected = (Nu @ Ru.T).mean(axis=1)  # mean cosine to every reference row
    assert np.abs(np.array(t["ref_conformity"]) - expected).max() < 2e-5
    ref_conf = brute_conformity(R)
    cdf = np.array([(ref_conf <= c).mean() for c in expected])
    assert np.abs(np.array(t["ref_uncertainty"]) - cdf).max() < 0.02


def test_reference_of_another_dimension_or_model_is_an_error(tmp_path, db):
    from curator.errors import SchemaMismatch
    from curator.maintenance.reference import score_against

    rng = np.random.default_rng(4)
    ingest([_batch(tmp_path, "a", rng.normal(size=(5, 6)).astype(np.float32))], db=db, table="a", model="m")
    ingest([_batch(tmp_path, "b", rng.normal(size=(5, 7)).astype(np.float32))], db=db, table="b", model="m")
    ingest([_batch(tmp_path, "c", rng.normal(size=(5, 6)).astype(np.float32))], db=db, table="c", model="x")
    version = Database(db).dataset("a").version
    with pytest.raises(SchemaMismatch):
        score_against(db=db, table="a", reference="b")
    with pytest.raises(SchemaMismatch):
        score_against(db=db, table="a", reference="c")
    assert Database(db).dataset("a").version == version


def test_curation_commands_leave_statistics_current(ingested):
    """cluster/dedupe/rebalance write curation columns only: no rebuild, nothing stale."""
    from curator import cluster, dedupe, rebalance

    before = describe(db=ingested)
    cluster(db=ingested, k=4, seed=1)
    dedupe(db=ingested, eps=0.001)
    rebalance(db=ingested, cap=50, by="cluster", seed=1)
    after = describe(db=ingested)
    assert after["stats_version"] == before["stats_version"]
    assert after["table_version"] == before["table_version"] + 3
    assert all(m["max_staleness"] == 0.0 for m in after["modalities"].values())
    assert refresh(db=ingested).rows == 0


def test_replacing_an_image_renews_its_captions_pair_scores(tmp_path, db):
    rng = np.random.default_rng(8)
    I = (rng.normal(size=(6, 8)) + 1).astype(np.float32)
    T = (rng.normal(size=(6, 8)) + 1).astype(np.float32)
    path = tmp_path / "pairs.parquet"
    pq.write_table(pa.table({"id": [f"i{k}" for k in range(6)] + [f"t{k}" for k in range(6)],
                             "sample_id": [f"s{k}" for k in range(6)] * 2,
                             "modality": ["image"] * 6 + ["text"] * 6,
                             "embedding": pa.array(list(np.vstack([I, T])), pa.list_(pa.float32()))}), path)
    ingest([str(path)], db=db)
    J = (rng.normal(size=(1, 8)) - 2).astype(np.float32)  # a very different image for sample s2
    new = tmp_path / "new.parquet"
    pq.write_table(pa.table({"id": ["i2"], "sample_id": ["s2"], "modality": ["image"],
                             "embedding": pa.array(list(J), pa.list_(pa.float32()))}), new)
    ingest([str(new)], db=db, on_duplicate="replace")
    refresh(db=db)
    t = read_table(db).to_pydict()
    row = t["id"].index("t2")
    expected = float(J[0] @ T[2] / np.linalg.norm(J[0]) / np.linalg.norm(T[2]))
    assert t["alignment"][row] == pytest.approx(expected, abs=2e-6)
    assert t["alignment"][t["id"].index("i2")] == pytest.approx(expected, abs=2e-6)


def test_a_vector_pass_cut_into_small_pieces_run_two_at_once_meets_the_oracle(tmp_path, db,
                                                                              monkeypatch):
    """The local engine reads fragments in pieces of ``ROWS_PER_PIECE`` rows, several at
    once: pieces of 7 rows (a fragment's rows split across many jobs; whole fragments,
    a scan filtered by row id, and a sparse read by random access) give every column of
    the brute-force oracle."""
    import curator.engine.scoring as scoring
    from oracle import table_oracle

    from curator.geometry.bounds import COLUMNS
    from curator.maintenance.stats import stats

    monkeypatch.setattr(scoring, "ROWS_PER_PIECE", 7)
    monkeypatch.setattr(scoring, "TAKE_SHARE", 0.2)
    reads = []
    original = scoring.iter_piece_rows

    def recorded(piece, rowids, columns, take):
        reads.append("take" if take else "all" if rowids is None else "filtered")
        return original(piece, rowids, columns, take)

    monkeypatch.setattr(scoring, "iter_piece_rows", recorded)
    rng = np.random.default_rng(11)

    def batch(name, images, texts, pairs, shift):
        n = images + texts + 2 * pairs
        X = (rng.normal(size=(n, 6)) + shift).astype(np.float32)
        samples = [None] * (images + texts) + [f"{name}-s{i % pairs}" for i in range(2 * pairs)]
        modality = ["image"] * images + ["text"] * texts + ["image"] * pairs + ["text"] * pairs
        path = tmp_path / f"{name}.parquet"
        pq.write_table(pa.table({"id": [f"{name}{i}" for i in range(n)], "sample_id": samples,
                                 "modality": modality,
                                 "embedding": pa.array(list(X), pa.list_(pa.float32()))}), path)
        return str(path)

    def meets_the_oracle(db, counted=COLUMNS):
        report = stats(db=db)["modalities"]
        assert all(values["staleness"][c] == 0.0 for values in report.values() for c in counted)
        t = Database(db).dataset("embeddings").to_table(with_row_id=True).to_pydict()
        exact = table_oracle(t)
        resolution = max(v["uncertainty_resolution"] for v in report.values())
        for c in COLUMNS:
            stored = np.array([np.nan if x is None else x for x in t[c]])
            assert np.array_equal(np.isnan(stored), np.isnan(exact[c])), c
            if np.isnan(exact[c]).all():  # no pairs: null throughout, as checked
                continue
            if c in ("uncertainty", "conformity_mismatch"):  # a sketch's CDF: its resolution
                bound = (1 + (c == "conformity_mismatch")) * resolution + 1e-6
            else:
                bound = 2e-5 * (np.abs(exact[c]).max() if c == "loglik" else 1.0)
            assert np.nanmax(np.abs(stored - exact[c])) <= bound, c

    # Every row stale: whole fragments, pairs included.
    ingest([batch("a", 40, 60, 10, 1.0)], db=db)
    ingest([batch("b", 4, 36, 5, 1.2)], db=db)
    assert refresh(db=db, tolerance=0.0).rows == 170 and set(reads) == {"all"}
    meets_the_oracle(db)
    # Only the images stale (no pairs; the unpaired texts' pair-column bounds do not
    # count): d's images by a scan filtered by row id, e's few by random access (f's
    # images, scored before d's and e's changed the sketch, are rescored too).
    counted = ("conformity", "conformity_est", "uncertainty", "loglik")
    other = str(tmp_path / "other.lancedb")
    ingest([batch("d", 40, 60, 0, 1.0)], db=other)
    ingest([batch("e", 4, 36, 0, 1.2)], db=other)
    refresh(db=other, tolerance=0.0)
    ingest([batch("f", 30, 0, 0, -1.0)], db=other)
    reads.clear()
    result = refresh(db=other, tolerance=0.0, columns=",".join(counted))
    assert result.rows == 74 and {"take", "filtered"} <= set(reads), set(reads)
    meets_the_oracle(other, counted)


def test_snapshots_kept_are_exactly_the_versions_rows_and_the_record_reference(tmp_path, db):
    """After a partial and after a full refresh, the snapshots kept are the statistics
    versions some row's stats_version names, plus the current record's (oracle: a read of
    the whole table's column)."""
    from curator.store.statistics import StatsStore

    rng = np.random.default_rng(7)
    ingest([_batch(tmp_path, "a", (rng.normal(size=(60, 8)) + 2).astype(np.float32), prefix="a")], db=db)
    ingest([_batch(tmp_path, "t", (rng.normal(size=(40, 8)) + 1).astype(np.float32),
                   modality="text", prefix="t")], db=db)
    ingest([_batch(tmp_path, "c", (rng.normal(size=(60, 8)) - 2).astype(np.float32), prefix="c")], db=db)
    store = StatsStore(Database(db), "embeddings")

    def kept_and_referenced():
        kept = {v for v, _ in store.snapshots()}
        versions = read_table(db).column("stats_version").drop_null().to_pylist()
        return kept, set(versions) | {store.load().version}

    partial = refresh(db=db, tolerance=0.0, columns="conformity")
    kept, referenced = kept_and_referenced()
    assert partial.rows > 0 and kept == referenced
    assert len(referenced) > 1  # rows of other versions remain after a partial refresh
    again = refresh(db=db, tolerance=0.0)
    kept, referenced = kept_and_referenced()
    assert again.rows > 0 and kept == referenced
    # An off-distribution batch makes every row stale, its own rows' percentiles included:
    # the refresh rescores every row, which then all name its version.
    ingest([_batch(tmp_path, "d", (rng.normal(size=(20, 8)) * 5).astype(np.float32), prefix="d"),
            _batch(tmp_path, "e", (rng.normal(size=(20, 8)) * 5).astype(np.float32),
                   modality="text", prefix="e")], db=db)
    full = refresh(db=db, tolerance=0.0)
    kept, referenced = kept_and_referenced()
    assert full.rows == 200 and kept == referenced == {full.stats_version}


def test_a_refresh_reuses_the_whitening_its_version_stored_and_meets_the_loglik_oracle(
        tmp_path, db, monkeypatch):
    """The record's statistics version has a snapshot with the same sums and the whitening
    it scored with: the refresh's bounds, its loglik and the new version's snapshot take
    that one, and no covariance is eigen-decomposed again."""
    from oracle import gaussian_loglik

    from curator.geometry.whitening import Whitening

    rng = np.random.default_rng(5)
    ingest([_batch(tmp_path, "a", (rng.normal(size=(80, 6)) + 1).astype(np.float32), prefix="a"),
            _batch(tmp_path, "t", (rng.normal(size=(50, 6)) - 1).astype(np.float32),
                   modality="text", prefix="t")], db=db)
    ingest([_batch(tmp_path, "b", (rng.normal(size=(30, 6)) * 3).astype(np.float32), prefix="b"),
            _batch(tmp_path, "u", (rng.normal(size=(20, 6)) * 3).astype(np.float32),
                   modality="text", prefix="u")], db=db)
    decomposed = []
    original = Whitening.from_covariance.__func__

    def counted(cls, mean, cov):
        decomposed.append(cov.shape)
        return original(cls, mean, cov)

    monkeypatch.setattr(Whitening, "from_covariance", classmethod(counted))
    result = refresh(db=db, tolerance=0.0)
    assert result.rows == 180 and decomposed == []
    t = read_table(db).to_pydict()
    X = np.array(t["embedding"], np.float64)
    modality = np.array(t["modality"])
    stored = np.array(t["loglik"], np.float64)
    for m in ("image", "text"):
        exact = gaussian_loglik(X[modality == m])
        assert np.abs(stored[modality == m] - exact).max() <= 2e-5 * np.abs(exact).max(), m
