"""optimize: compaction changes no value, keeps statistics valid, prunes only what it may."""

from __future__ import annotations

import json

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from curator import ingest
from curator.cli import cli
from curator.engine.statistics import current
from curator.maintenance.optimize import optimize
from curator.maintenance.verify import verify
from curator.store.database import Database
from curator.store.statistics import StatsStore
from curator.store.versions import protect_version

PARTS = 12


@pytest.fixture
def fragmented(tmp_path):
    """12 small ingests (one fragment each) of 40 rows, 16-d, two modalities."""
    rng = np.random.default_rng(3)
    db = str(tmp_path / "db.lancedb")
    for k in range(PARTS):
        X = (rng.normal(size=(40, 16)) + 2.0).astype(np.float32)
        path = str(tmp_path / f"p{k}.parquet")
        pq.write_table(pa.table({
            "id": [f"r{k}-{i}" for i in range(40)],
            "modality": ["image" if i % 2 else "text" for i in range(40)],
            "embedding": pa.array(list(X), pa.list_(pa.float32())),
        }), path)
        ingest([path], db=db)
    return db


def snapshot(db, version=None):
    t = lance.dataset(f"{db}/embeddings.lance", version=version).to_table()
    return t.take(pa.compute.sort_indices(t, [("id", "ascending")]))


def test_compaction_changes_no_value_and_keeps_stats_valid(fragmented):
    before = snapshot(fragmented)
    database = Database(fragmented)
    stats_before = StatsStore(database, "embeddings").load()
    assert len(database.dataset("embeddings").get_fragments()) == PARTS

    result = optimize(db=fragmented)
    ds = database.dataset("embeddings")
    assert result.fragments_before == PARTS and result.fragments_after == 1
    assert len(ds.get_fragments()) == 1 and ds.data_storage_version == "2.0"
    assert result.table_version == ds.version > result.table_version_read
    after = snapshot(fragmented)
    assert after.equals(before)  # every column, bit for bit (vectors included)

    # The record moved to the compacted version: no rebuild, same stats version.
    assert result.stats_record_moved
    record = StatsStore(database, "embeddings").load()
    assert record.table_version == ds.version and record.version == stats_before.version
    assert current(database, "embeddings").version == stats_before.version
    assert verify(db=fragmented).ok
    # Hidden tables of this table were compacted too.
    assert result.hidden_tables["_curator_history_embeddings"]["fragments_after"] == 1


def test_retention_prunes_old_versions_but_keeps_protected_ones(fragmented):
    database = Database(fragmented)
    ds = database.dataset("embeddings")
    protected = 5
    expected = snapshot(fragmented, protected)
    protect_version(ds, protected, "my export/2024")

    kept = optimize(db=fragmented)  # default retention: 7 days, nothing is that old
    assert kept.versions_removed == 0
    assert len(database.dataset("embeddings").versions()) == kept.versions_before + (
        kept.table_version - kept.table_version_read)

    pruned = optimize(db=fragmented, keep_versions=0)
    versions = [v["version"] for v in database.dataset("embeddings").versions()]
    assert versions == sorted({protected, pruned.table_version})
    assert pruned.protected_versions == [protected]
    assert snapshot(fragmented, protected).equals(expected)  # the export's version still reads
    with pytest.raises((ValueError, OSError)):
        lance.dataset(f"{fragmented}/embeddings.lance", version=protected + 1).to_table()
    assert verify(db=fragmented).ok


def test_record_not_moved_when_it_was_already_stale(fragmented):
    database = Database(fragmented)
    store = StatsStore(database, "embeddings")
    record = store.load()
    record.table_version -= 1
    store.save(record)
    result = optimize(db=fragmented)
    assert not result.stats_record_moved
    assert store.load().table_version == record.table_version


def test_other_tables_hidden_tables_are_left_alone(fragmented, tmp_path):
    path = str(tmp_path / "other.parquet")
    pq.write_table(pa.table({"id": ["a", "b"], "modality": ["image"] * 2,
                             "embedding": pa.array([[1.0] * 16, [2.0] + [1.0] * 15],
                                                   pa.list_(pa.float32()))}), path)
    ingest([path], db=fragmented, table="embeddings_b")
    result = optimize(db=fragmented)
    assert all(name.endswith("_embeddings") for name in result.hidden_tables)


def test_cli_json_and_bad_retention(fragmented):
    runner = CliRunner()
    out = runner.invoke(cli, ["--db", fragmented, "optimize", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["fragments_after"] == 1 and data["table"] == "embeddings"
    version = Database(fragmented).dataset("embeddings").version
    bad = runner.invoke(cli, ["--db", fragmented, "optimize", "--keep-versions", "-1"])
    assert bad.exit_code == 1 and bad.output.startswith("Error: ")
    assert Database(fragmented).dataset("embeddings").version == version
