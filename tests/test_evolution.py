"""Schema evolution: a later batch's new metadata columns are added (nullable, no data
rewritten), types are reconciled with the table's, the statistics record is carried
forward, and a failed ingest leaves the table as it was.

Oracles: the rows as written (values read back by id), numpy cosines for the pair
scores, the staleness bounds of a twin database that got the same vectors without the
new column, and the Lance transaction log (no data file of the older rows changes).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import read_table

from curator import ingest, stats
from curator.cli import cli
from curator.engine.statistics import current, staleness, version_counts
from curator.errors import BadInput, SchemaMismatch
from curator.store.database import Database
from curator.store.evolution import additions, check_compatible, conform
from curator.store.statistics import StatsStore

DIM = 8


def vectors(seed, n, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.normal(size=(n, DIM)) + shift).astype(np.float32)


def write(file, X, ids, modality, sample_ids=None, **extra):
    columns = {"id": ids, "modality": [modality] * len(ids),
               "embedding": pa.array(list(X), pa.list_(pa.float32(), DIM))}
    if sample_ids is not None:
        columns["sample_id"] = sample_ids
    columns.update(extra)
    pq.write_table(pa.table(columns), file)
    return str(file)


def by_id(db):
    t = read_table(db).to_pylist()
    return {r["id"]: r for r in t}


def data_files(dataset) -> set[str]:
    return {f.path for frag in dataset.get_fragments() for f in frag.metadata.files}


def vector_files(dataset) -> set[str]:
    """Data files holding the ``embedding`` column."""
    field = dataset.lance_schema.field("embedding").id()
    return {f.path for frag in dataset.get_fragments() for f in frag.metadata.files if field in f.fields}


def test_images_then_captions_add_the_caption_column_and_pairs_meet(tmp_path, db):
    images = vectors(1, 20, 1.0)
    texts = vectors(2, 20, -1.0)
    ids = [f"s{i}" for i in range(20)]
    ingest([write(tmp_path / "img.parquet", images, [f"{s}.jpg" for s in ids], "image", ids,
                  path=[f"/data/{s}.jpg" for s in ids], width=pa.array(range(20), pa.int32()))], db=db)
    before = Database(db).dataset("embeddings")
    old_files, old_vectors = data_files(before), vector_files(before)

    result = ingest([write(tmp_path / "cap.parquet", texts, [f"{s}:text" for s in ids], "text", ids,
                           caption=[f"caption {s}" for s in ids])], db=db)
    after = Database(db).dataset("embeddings")
    assert result.rows == 20
    assert after.schema.names[-3:] == ["path", "width", "caption"]
    assert after.schema.field("caption").nullable and after.schema.field("caption").type == pa.string()
    assert after.schema.metadata == before.schema.metadata  # the model and dimension stay
    assert old_vectors <= vector_files(after)  # the older rows' vectors are never rewritten
    # The column was added by a schema-only commit: no data file in it.
    merges = [tx for tx in after.get_transactions(after.version - before.version)
              if type(tx.operation).__name__ == "Merge"]
    assert len(merges) == 1
    merged = {f.path for frag in merges[0].operation.fragments for f in frag.files}
    assert merged == old_files

    rows = by_id(db)
    assert rows["s3.jpg"]["caption"] is None and rows["s3.jpg"]["path"] == "/data/s3.jpg"
    assert rows["s3:text"]["caption"] == "caption s3" and rows["s3:text"]["path"] is None
    assert rows["s3:text"]["width"] is None and rows["s3.jpg"]["width"] == 3
    # Pairs meet by sample_id across the two ingests: alignment = cos(image, text).
    cos = (images * texts).sum(1) / (np.linalg.norm(images, axis=1) * np.linalg.norm(texts, axis=1))
    got = np.array([rows[f"s{i}:text"]["alignment"] for i in range(20)])
    np.testing.assert_allclose(got, cos, atol=2e-6)
    got_img = np.array([rows[f"s{i}.jpg"]["alignment"] for i in range(20)])
    np.testing.assert_allclose(got_img, cos, atol=2e-6)


def test_adding_a_column_leaves_older_rows_bounds_unchanged(tmp_path):
    """Two databases get the same vectors; in one the last batch brings a new column.
    Every (modality, stats_version) bound and the statistics versions must agree."""
    a, b = str(tmp_path / "a.lancedb"), str(tmp_path / "b.lancedb")
    first = write(tmp_path / "1.parquet", vectors(3, 40), [f"x{i}" for i in range(40)], "image")
    second = write(tmp_path / "2.parquet", vectors(4, 30, 0.5), [f"y{i}" for i in range(30)], "image")
    plain = write(tmp_path / "3.parquet", vectors(5, 25, 1.0), [f"z{i}" for i in range(25)], "image")
    tagged = write(tmp_path / "3t.parquet", vectors(5, 25, 1.0), [f"z{i}" for i in range(25)], "image",
                   source=["web"] * 25)
    for db in (a, b):
        ingest([first], db=db)
        ingest([second], db=db)
    ingest([plain], db=a)
    ingest([tagged], db=b)

    def bounds(db):
        database = Database(db)
        dataset = database.dataset("embeddings")
        record = current(database, "embeddings", dataset)
        history = StatsStore(database, "embeddings").history()
        return record.version, staleness(record, history, version_counts(dataset))

    version_a, bounds_a = bounds(a)
    version_b, bounds_b = bounds(b)
    assert version_a == version_b == 3  # no rebuild in between: three ingests, three versions
    assert bounds_a.keys() == bounds_b.keys() and len(bounds_a) == 3
    for key, value in bounds_a.items():
        assert bounds_b[key] == pytest.approx(value, rel=1e-12, abs=1e-15), key
    assert bounds_a[("image", 1)] > 0  # the oldest rows are stale, and stay exactly as stale
    assert stats(db=b)["modalities"]["image"]["max_staleness"] == pytest.approx(
        stats(db=a)["modalities"]["image"]["max_staleness"], rel=1e-12)
    rows = by_id(b)
    assert rows["x0"]["stats_version"] == 1 and rows["x0"]["source"] is None
    assert rows["z0"]["source"] == "web"


def test_carry_forward_accepts_a_schema_only_column_add(tmp_path, db):
    from curator.store.versions import carry_forward

    ingest([write(tmp_path / "1.parquet", vectors(6, 10), [f"r{i}" for i in range(10)], "image")], db=db)
    database = Database(db)
    dataset = database.dataset("embeddings")
    read = dataset.version
    dataset.add_columns([pa.field("note", pa.string())])
    assert carry_forward(database, "embeddings", read, database.dataset("embeddings"))
    # A column added with values writes files for the new field only: still carried.
    dataset = database.dataset("embeddings")
    read = dataset.version
    dataset.add_columns({"double_norm": "norm * 2"})
    assert carry_forward(database, "embeddings", read, database.dataset("embeddings"))
    record = StatsStore(database, "embeddings").load()
    assert record.table_version == database.dataset("embeddings").version
    assert current(database, "embeddings").version == 1  # never rebuilt
    # Changing an existing column's type is not a column add: the record stays behind.
    dataset = database.dataset("embeddings")
    read = dataset.version
    dataset.alter_columns({"path": "norm", "data_type": pa.float64()})
    assert not carry_forward(database, "embeddings", read, database.dataset("embeddings"))


@pytest.mark.parametrize("given, held, values, ok", [
    (pa.int32(), pa.int64(), [1, -2], True),
    (pa.int64(), pa.int32(), [1, 2**31 - 1], True),
    (pa.int64(), pa.int32(), [2**31], False),  # does not fit: refused, never wrapped
    (pa.uint8(), pa.int16(), [255], True),
    (pa.int64(), pa.float64(), [3, 2**53], True),
    (pa.int64(), pa.float64(), [2**53 + 1], False),  # not exact in float64
    (pa.float64(), pa.float32(), [0.5, 1e30], True),
    (pa.float64(), pa.float32(), [1e300], False),  # overflow, not silently infinity
    (pa.string(), pa.large_string(), ["a", None], True),
    (pa.large_string(), pa.string(), ["b"], True),
    (pa.dictionary(pa.int32(), pa.string()), pa.string(), ["c", "c"], True),
    (pa.null(), pa.int64(), [None], True),
    (pa.list_(pa.int32()), pa.large_list(pa.int64()), [[1, 2]], True),
])
def test_safe_casts(given, held, values, ok):
    column = (pa.array(values, given.value_type).dictionary_encode() if pa.types.is_dictionary(given)
              else pa.array(values, given))
    if ok:
        out = conform("c", column, held)
        assert out.type == held
        if pa.types.is_floating(held):
            assert out.to_pylist() == pytest.approx(values, rel=1e-7)  # float32 rounding
        else:
            assert out.to_pylist() == values
    else:
        with pytest.raises(SchemaMismatch, match=f"column 'c': values of type {given}"):
            conform("c", column, held)


@pytest.mark.parametrize("given, held", [
    (pa.string(), pa.int64()), (pa.float64(), pa.int64()), (pa.bool_(), pa.int32()),
    (pa.int64(), pa.string()), (pa.string(), pa.bool_()), (pa.list_(pa.string()), pa.list_(pa.int64())),
    (pa.timestamp("s"), pa.int64()), (pa.string(), pa.list_(pa.string())),
])
def test_real_conflicts_name_the_column_and_both_types(given, held):
    with pytest.raises(SchemaMismatch, match=rf"column 'score' has type {given} in the input, "
                                             rf"but the table holds {held}".replace("[", r"\[")):
        check_compatible("score", given, held)


def test_additions_skip_known_ignored_and_all_null_columns():
    table = pa.schema([("id", pa.string()), ("score", pa.int64())])
    batch = pa.schema([("id", pa.string()), ("score", pa.int32()), ("conformity", pa.float32()),
                       ("empty", pa.null()), ("tag", pa.dictionary(pa.int8(), pa.string())),
                       ("url", pa.large_string())])
    added = additions(table, batch, ignore={"conformity"})
    assert [(f.name, f.type, f.nullable) for f in added] == [
        ("tag", pa.string(), True), ("url", pa.large_string(), True)]


def test_type_conflict_is_one_error_and_changes_nothing(tmp_path, db):
    ingest([write(tmp_path / "1.parquet", vectors(7, 10), [f"r{i}" for i in range(10)], "image",
                  score=pa.array(range(10), pa.int64()))], db=db)
    before = Database(db).dataset("embeddings").version
    path = write(tmp_path / "2.parquet", vectors(8, 5), [f"q{i}" for i in range(5)], "image",
                 score=["high"] * 5, note=["n"] * 5)
    result = CliRunner().invoke(cli, ["--db", db, "ingest", path])
    assert result.exit_code == 1
    assert result.stderr.strip() == ("Error: column 'score' has type string in the input, but the "
                                     "table holds int64: convert it, or ingest into another --table")
    dataset = Database(db).dataset("embeddings")
    assert dataset.version == before and "note" not in dataset.schema.names


def test_narrower_and_wider_types_of_later_batches_are_cast(tmp_path, db):
    ingest([write(tmp_path / "1.parquet", vectors(9, 6), [f"r{i}" for i in range(6)], "image",
                  count=pa.array(range(6), pa.int32()), name=pa.array(list("abcdef"), pa.large_string()),
                  weight=pa.array(np.arange(6.0), pa.float32()))], db=db)
    ingest([write(tmp_path / "2.parquet", vectors(10, 3), ["a", "b", "c"], "image",
                  count=pa.array([7, 8, 2**31 - 1], pa.int64()), name=pa.array(["x", "y", None], pa.string()),
                  weight=pa.array([1, 2, 3], pa.int64()))], db=db)
    schema = Database(db).dataset("embeddings").schema
    assert (schema.field("count").type, schema.field("name").type, schema.field("weight").type) == (
        pa.int32(), pa.large_string(), pa.float32())
    rows = by_id(db)
    assert (rows["c"]["count"], rows["b"]["name"], rows["c"]["name"], rows["a"]["weight"]) == (
        2**31 - 1, "y", None, 1.0)
    before = Database(db).dataset("embeddings").version
    with pytest.raises(SchemaMismatch, match="column 'count': values of type int64 do not fit"):
        ingest([write(tmp_path / "3.parquet", vectors(11, 2), ["d", "e"], "image",
                      count=pa.array([1, 2**40], pa.int64()))], db=db)
    assert Database(db).dataset("embeddings").version == before


def test_failed_append_after_adding_columns_restores_the_table(tmp_path, db):
    from curator.io import sources

    ingest([write(tmp_path / "1.parquet", vectors(12, 10), [f"r{i}" for i in range(10)], "image")], db=db)
    database = Database(db)
    stats_before = current(database, "embeddings").version
    X = vectors(13, 600)
    X[-1, 0] = np.nan  # the last batch is bad; the first one brings a new column
    path = tmp_path / "late.parquet"
    pq.write_table(pa.table({"id": [f"l{i}" for i in range(600)], "modality": ["image"] * 600,
                             "embedding": pa.array(list(X), pa.list_(pa.float32(), DIM)),
                             "caption": ["c"] * 600}), path, row_group_size=200)
    old = sources.BATCH_ROWS
    sources.BATCH_ROWS = 200
    try:
        with pytest.raises(BadInput, match="NaN"):
            ingest([str(path)], db=db)
    finally:
        sources.BATCH_ROWS = old
    dataset = database.dataset("embeddings")
    assert "caption" not in dataset.schema.names and dataset.count_rows() == 10
    assert StatsStore(database, "embeddings").load().table_version == dataset.version
    assert current(database, "embeddings").version == stats_before  # nothing rebuilt
    ingest([write(tmp_path / "2.parquet", vectors(14, 4), ["w0", "w1", "w2", "w3"], "image",
                  caption=["ok"] * 4)], db=db)  # and the next ingest adds it for real
    assert by_id(db)["w2"]["caption"] == "ok"


def test_a_column_only_in_a_later_batch_is_a_clear_error(tmp_path, db):
    ingest([write(tmp_path / "0.parquet", vectors(15, 4), ["a", "b", "c", "d"], "image")], db=db)
    first = write(tmp_path / "1.parquet", vectors(16, 3), ["e", "f", "g"], "image", caption=["x"] * 3)
    second = write(tmp_path / "2.parquet", vectors(17, 3), ["h", "i", "j"], "image", caption=["y"] * 3,
                   url=["u"] * 3)
    before = Database(db).dataset("embeddings")
    with pytest.raises(BadInput, match="columns url appear after the first batch of this ingest"):
        ingest([first, second], db=db)
    after = Database(db).dataset("embeddings")
    assert after.count_rows() == 4 and "caption" not in after.schema.names
    assert after.schema == before.schema
