"""verify: drift between rows, statistics and scores is found exactly, and --repair fixes it.

Oracles: brute-force sums and O(n²) conformity from the raw vectors read back from the
table; each corruption is planted by hand so the expected report is known.
"""

from __future__ import annotations

import json

import lance
import numpy as np
import pyarrow as pa
import pytest
from click.testing import CliRunner
from conftest import brute_conformity, read_table

from curator import ingest
from curator.cli import cli
from curator.engine.writes import write_columns
from curator.maintenance.verify import SCORE_SLACK, verify
from curator.store.database import Database
from curator.store.statistics import StatsStore


@pytest.fixture
def unrefreshed(tmp_path, pairs_small):
    """pairs_small ingested in three parts and never refreshed: old rows carry stale scores."""
    db = str(tmp_path / "db.lancedb")
    for path in pairs_small.write_parquet(str(tmp_path / "src"), parts=3):
        ingest([path], db=db)
    return db


def rows(db):
    t = read_table(db)
    X = np.stack(t.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    return t, X, np.asarray(t.column("modality").to_pylist(), dtype=object)


def exact_conformity(db) -> dict[str, float]:
    """id -> O(n²) conformity within its modality."""
    t, X, mods = rows(db)
    ids = t.column("id").to_pylist()
    out = {}
    for m in np.unique(mods):
        sel = np.flatnonzero(mods == m)
        for i, c in zip(sel, brute_conformity(X[sel])):
            out[ids[i]] = float(c)
    return out


def set_column(db, name, dtype, values_by_id: dict):
    """Overwrite one column of the given rows (data evolution, one commit)."""
    ds = lance.dataset(f"{db}/embeddings.lance")
    rows = ds.to_table(columns=["id"], with_row_id=True)
    ids = rows.column("id").to_pylist()
    hit = [i for i, x in enumerate(ids) if x in values_by_id]
    rowids = rows.column("_rowid").to_numpy()[hit]
    values = pa.array([values_by_id[ids[i]] for i in hit], dtype)
    write_columns(ds, rowids, {name: values}, message="test corruption")


def test_stale_rows_within_their_bound_are_consistent(unrefreshed):
    before = lance.dataset(f"{unrefreshed}/embeddings.lance").version
    result = verify(db=unrefreshed)
    assert result.ok, result.summary()
    assert lance.dataset(f"{unrefreshed}/embeddings.lance").version == before
    # The reported largest error is the true one (brute force vs stored).
    t = read_table(unrefreshed)
    exact = exact_conformity(unrefreshed)
    stored = dict(zip(t.column("id").to_pylist(), t.column("conformity").to_pylist()))
    true_max = max(abs(stored[i] - exact[i]) for i in exact)
    assert true_max > 1e-3  # the table really is stale, so the bound is what makes it pass
    assert abs(result.max_conformity_error - true_max) < 1e-5


def test_refreshed_table_is_consistent(unrefreshed):
    from curator import refresh

    refresh(db=unrefreshed)
    result = verify(db=unrefreshed)
    assert result.ok, result.summary()
    assert result.max_conformity_error < SCORE_SLACK


def test_stats_drift_is_found_and_repaired(unrefreshed):
    database = Database(unrefreshed)
    store = StatsStore(database, "embeddings")
    record = store.load()
    record.modalities["text"].n += 5  # a lost update
    record.modalities["text"].S *= 1.01
    store.save(record)
    result = verify(db=unrefreshed)
    assert not result.ok
    kinds = {(i.kind, i.modality) for i in result.issues}
    assert ("stats_sums", "text") in kinds and ("stats_sums", "image") not in kinds

    repaired = verify(db=unrefreshed, repair=True)
    # Rebuilt from the rows, the sums are those of the version the history holds: the
    # rebuilt record takes that version's number and no row turns stale.
    assert repaired.repaired and repaired.stats_version_after == record.version
    assert verify(db=unrefreshed).ok
    _, X, mods = rows(unrefreshed)
    fixed = store.load()
    for m in ("image", "text"):
        sel = mods == m
        assert fixed.modalities[m].n == sel.sum()
        np.testing.assert_allclose(fixed.modalities[m].S, X[sel].astype(np.float64).sum(0), rtol=1e-9)
        U = X[sel] / np.linalg.norm(X[sel].astype(np.float64), axis=1, keepdims=True)
        np.testing.assert_allclose(fixed.modalities[m].U, U.sum(0), rtol=1e-6, atol=1e-6)


def test_corrupted_scores_are_found_by_id_and_rescored_exactly(unrefreshed):
    t = read_table(unrefreshed)
    ids = t.column("id").to_pylist()
    conf = dict(zip(ids, t.column("conformity").to_pylist()))
    victims = [ids[3], ids[100], ids[-1]]
    set_column(unrefreshed, "conformity", pa.float32(), {i: conf[i] + 0.5 for i in victims})
    result = verify(db=unrefreshed)
    issue = [i for i in result.issues if i.kind == "conformity"]
    assert sum(i.rows for i in issue) == 3
    assert sorted(x for i in issue for x in i.examples) == sorted(victims)
    # The sketch counts the stored (corrupted) values too, so it drifts with them; and the
    # corrupted values are not those of the rows' own version either.
    assert {i.kind for i in result.issues} <= {"conformity", "sketch", "mixed_version",
                                               "uncertainty", "conformity_mismatch"}
    assert sorted(x for i in result.issues if i.kind == "mixed_version" for x in i.examples) == sorted(victims)

    repaired = verify(db=unrefreshed, repair=True)
    samples = {s for i, s in zip(ids, t.column("sample_id").to_pylist()) if i in victims}
    whole = [i for i, s in zip(ids, t.column("sample_id").to_pylist()) if s in samples]
    assert repaired.rows_rescored == len(whole)  # the victims' samples, whole
    assert verify(db=unrefreshed).ok
    exact = exact_conformity(unrefreshed)
    t = read_table(unrefreshed)
    now = dict(zip(t.column("id").to_pylist(), t.column("conformity").to_pylist()))
    for v in victims:
        assert abs(now[v] - exact[v]) < 1e-5
    # Rows outside those samples were left alone.
    untouched = [i for i in ids if i not in whole][:50]
    assert all(now[i] == conf[i] for i in untouched)


def test_unscored_rows_and_unknown_versions(unrefreshed):
    t = read_table(unrefreshed)
    ids = t.column("id").to_pylist()
    set_column(unrefreshed, "stats_version", pa.int64(), {ids[0]: None, ids[1]: None, ids[2]: 999})
    result = verify(db=unrefreshed)
    by_kind = {}
    for i in result.issues:
        by_kind[i.kind] = by_kind.get(i.kind, 0) + i.rows
    assert by_kind == {"unscored": 2, "unknown_version": 1}
    verify(db=unrefreshed, repair=True)
    again = verify(db=unrefreshed)
    assert again.ok, again.summary()
    t = read_table(unrefreshed)
    assert t.column("stats_version").null_count == 0


def test_missing_statistics_record(unrefreshed):
    import shutil

    shutil.rmtree(f"{unrefreshed}/_curator_stats_embeddings.lance")
    result = verify(db=unrefreshed)
    assert [i.kind for i in result.issues] == ["stats_missing"]
    verify(db=unrefreshed, repair=True)
    assert verify(db=unrefreshed).ok


@pytest.mark.parametrize("repair", [False, True])
def test_stale_record_is_a_warning_and_verify_moves_it(unrefreshed, repair):
    store = StatsStore(Database(unrefreshed), "embeddings")
    record = store.load()
    record.table_version -= 1
    store.save(record)
    result = verify(db=unrefreshed, repair=repair)
    assert result.ok and "brought forward" in result.warnings[0]
    assert not result.repaired  # nothing to repair: the record was only behind
    moved = store.load()
    assert moved.table_version == record.table_version + 1
    assert moved.version == record.version  # no needless new stats version
    assert not verify(db=unrefreshed).warnings


def test_cli_exit_codes_and_json(unrefreshed):
    runner = CliRunner()
    ok = runner.invoke(cli, ["--db", unrefreshed, "verify", "--json"])
    assert ok.exit_code == 0, ok.output
    data = json.loads(ok.output)
    assert data["ok"] is True and data["rows"] == read_table(unrefreshed).num_rows
    store = StatsStore(Database(unrefreshed), "embeddings")
    record = store.load()
    record.modalities["image"].n -= 1
    store.save(record)
    bad = runner.invoke(cli, ["--db", unrefreshed, "verify"])
    assert bad.exit_code == 1 and "stats_sums" in bad.output
    fixed = runner.invoke(cli, ["--db", unrefreshed, "verify", "--repair"])
    assert fixed.exit_code == 0 and "repaired" in fixed.output
    assert runner.invoke(cli, ["--db", unrefreshed, "verify"]).exit_code == 0


def test_no_table_is_one_line_error(db):
    result = CliRunner().invoke(cli, ["--db", db, "verify"])
    assert result.exit_code == 1 and result.output.startswith("Error: ") and "Traceback" not in result.output


def test_verify_judges_a_refresh_killed_between_its_commit_and_its_record(unrefreshed, tmp_path, monkeypatch):
    """A writer killed after its table commit and before its statistics record: the next
    command rebuilds the record with the number the writer would have saved. verify must
    judge that state (consistent, nothing to repair), and a rerun must equal an
    uninterrupted refresh: same scores, same stats_version."""
    import shutil

    from curator import refresh

    reference = str(tmp_path / "reference.lancedb")
    shutil.copytree(unrefreshed, reference)
    refresh(db=reference)

    def killed(self, stats):
        raise KeyboardInterrupt("killed after the table commit")

    with monkeypatch.context() as m:
        m.setattr(StatsStore, "append_history", killed)
        with pytest.raises(KeyboardInterrupt):
            refresh(db=unrefreshed)
    result = verify(db=unrefreshed)
    assert result.ok, result.summary()
    refresh(db=unrefreshed)
    columns = ["id", "conformity", "conformity_est", "uncertainty", "loglik", "stats_version"]
    got, want = read_table(unrefreshed).select(columns), read_table(reference).select(columns)
    assert got.sort_by("id").equals(want.sort_by("id"))
