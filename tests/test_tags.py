"""``curator tag``: boolean columns named by ids or a predicate, checked against the rows
themselves (the oracle is the table read back and evaluated with numpy/pyarrow)."""

from __future__ import annotations

import json
import os

import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import read_table

from curator import export, ingest, tag
from curator.cli import cli
from curator.errors import BadInput
from curator.store.database import Database
from curator.store.statistics import StatsStore
from curator.store.tags import tag_names, tags_used


def _flags(db, name):
    t = read_table(db)
    return dict(zip(t.column("id").to_pylist(), t.column(name).to_pylist()))


def test_tag_where_marks_exactly_the_matching_rows(ingested):
    before = read_table(ingested)
    version = Database(ingested).dataset("embeddings").version
    result = tag("generic", db=ingested, where="uncertainty > 0.9 AND modality = 'text'")
    flags = _flags(ingested, "generic")
    want = {i for i, u, m in zip(before.column("id").to_pylist(),
                                 before.column("uncertainty").to_pylist(),
                                 before.column("modality").to_pylist())
            if u is not None and u > 0.9 and m == "text"}
    assert {i for i, v in flags.items() if v} == want and len(want) > 10
    assert all(v is False for i, v in flags.items() if i not in want)  # no nulls
    assert result.named == result.tagged == result.changed == len(want) and result.created
    assert result.table_version_read == version and result.table_version == version + 1
    ds = Database(ingested).dataset("embeddings")
    assert tag_names(ds) == ["generic"]
    assert ds.schema.field("generic").metadata == {b"curator.tag": b"true"}
    # the statistics record followed the commit: no rebuild, nothing turned stale
    record = StatsStore(Database(ingested), "embeddings").load()
    assert record.table_version == ds.version


def test_tag_accumulates_removes_and_fills_later_rows(tmp_path, pairs_small):
    db = str(tmp_path / "db")
    first, second = pairs_small.write_parquet(str(tmp_path / "src"), parts=2)
    ingest([first], db=db)
    ids = read_table(db).column("id").to_pylist()
    tag("keep", db=db, ids=ids[:5])
    r = tag("keep", db=db, ids=ids[3:8])
    assert r.changed == 3 and r.tagged == 8 and not r.created
    r = tag("keep", db=db, ids=ids[0:2], remove=True)
    assert r.changed == 2 and r.tagged == 6
    ingest([second], db=db)  # new rows: no value yet
    flags = _flags(db, "keep")
    assert sum(v is None for v in flags.values()) == read_table(db).num_rows - len(ids)
    r = tag("keep", db=db, ids=[ids[10]])
    flags = _flags(db, "keep")
    assert all(v is not None for v in flags.values())  # nulls became false
    assert {i for i, v in flags.items() if v} == set(ids[2:8]) | {ids[10]}
    assert r.changed == read_table(db).num_rows - len(ids) + 1


@pytest.mark.parametrize("kind", ["txt", "parquet", "csv"])
def test_tag_ids_files(ingested, tmp_path, kind):
    ids = read_table(ingested).column("id").to_pylist()[::37]
    path = str(tmp_path / f"ids.{kind}")
    if kind == "txt":
        with open(path, "w") as fh:
            fh.write("\n".join(ids) + "\n\n")
    elif kind == "parquet":
        pq.write_table(pa.table({"id": ids, "note": ["x"] * len(ids)}), path)
    else:
        pcsv.write_csv(pa.table({"note": ["x"] * len(ids), "id": ids}), path)
    r = tag("picked", db=ingested, ids=path)
    assert r.ids == path and r.named == len(ids)
    flags = _flags(ingested, "picked")
    assert {i for i, v in flags.items() if v} == set(ids)


def test_unknown_ids_are_an_error_and_nothing_is_written(ingested, tmp_path):
    version = Database(ingested).dataset("embeddings").version
    path = tmp_path / "ids.txt"
    path.write_text("img-000001\nno-such-id\nnor-this\n")
    with pytest.raises(BadInput, match=r"2 of 3 ids are not in the table \(e\.g\. 'no-such-id'"):
        tag("picked", db=ingested, ids=str(path))
    assert Database(ingested).dataset("embeddings").version == version
    assert "picked" not in read_table(ingested).column_names


@pytest.mark.parametrize("name, message", [
    ("select", "SQL keyword"), ("conformity", "not a tag"), ("1abc", "use a letter"),
    ("a-b", "use a letter"), ("proj_x", "reserved"), ("Conformity", "not a tag"),
    ("x" * 65, "at most 64"),
])
def test_bad_tag_names(ingested, name, message):
    with pytest.raises(BadInput, match=message):
        tag(name, db=ingested, where="true")


def test_exactly_one_source_and_remove_needs_the_tag(ingested, tmp_path):
    with pytest.raises(BadInput, match="exactly one"):
        tag("t", db=ingested)
    with pytest.raises(BadInput, match="exactly one"):
        tag("t", db=ingested, where="true", ids=["img-000001"])
    with pytest.raises(BadInput, match="no tag 't' to remove"):
        tag("t", db=ingested, where="true", remove=True)
    with pytest.raises(BadInput, match="no column 'nope'"):
        tag("t", db=ingested, where="nope > 1")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(BadInput, match="no ids"):
        tag("t", db=ingested, ids=str(tmp_path / "empty.txt"))


def test_export_where_tag_and_manifest_tags(ingested, tmp_path):
    ids = read_table(ingested).column("id").to_pylist()
    bad = ids[::11]
    tag("reviewed_bad", db=ingested, ids=bad)
    out = tmp_path / "out"
    r = export(db=ingested, out=str(out), where="not reviewed_bad")
    got = pa.concat_tables(pq.read_table(str(f)) for f in sorted(out.glob("*.parquet"))
                           ).column("id").to_pylist()
    assert sorted(got) == sorted(set(ids) - set(bad)) and r.rows == len(ids) - len(bad)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["tags"] == ["reviewed_bad"]
    export(db=ingested, out=str(tmp_path / "plain"), where="modality = 'image'")
    assert json.loads((tmp_path / "plain" / "manifest.json").read_text())["tags"] == []
    schema = Database(ingested).dataset("embeddings").schema
    assert tags_used(schema, "reviewed_bad AND conformity > 0") == ["reviewed_bad"]
    assert tags_used(schema, None) == []


def test_cli_tag_json_matches_the_table(ingested, tmp_path):
    runner = CliRunner()
    res = runner.invoke(cli, ["--db", ingested, "tag", "rare", "--where", "uncertainty < 0.05",
                              "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    flags = _flags(ingested, "rare")
    assert out["tagged"] == sum(bool(v) for v in flags.values()) > 0
    assert out["where"] == "(uncertainty < 0.05)"  # the parsed, normalised expression
    res = runner.invoke(cli, ["--db", ingested, "tag", "rare", "--ids",
                              os.path.join(str(tmp_path), "missing.txt")])
    assert res.exit_code == 1 and res.stderr.startswith("Error: --ids")


def test_a_tag_is_a_column_for_sql(ingested):
    from curator import query

    tag("trusted", db=ingested, where="modality = 'image'")
    t = read_table(ingested)
    n = query("select count(*) as n from embeddings where trusted", db=ingested).column(0)[0].as_py()
    assert n == sum(m == "image" for m in t.column("modality").to_pylist())


def test_a_new_tag_on_a_table_with_deleted_rows_keeps_the_statistics(tmp_path, pairs_small):
    """A Merge that only adds a column is recognised as such (fragments, deletions and
    the old columns' files unchanged), so the statistics are not rebuilt."""
    db = str(tmp_path / "db")
    first, _ = pairs_small.write_parquet(str(tmp_path / "src"), parts=2)
    ingest([first], db=db)
    some = str(tmp_path / "some.parquet")
    pq.write_table(pq.read_table(first).slice(0, 100), some)
    ingest([some], db=db, on_duplicate="replace")  # deletes 100 old rows of a fragment
    store = StatsStore(Database(db), "embeddings")
    before = store.load().version
    r = tag("seen", db=db, where="modality = 'image'")
    record = store.load()
    assert record.version == before and record.table_version == r.table_version
    assert any(f.metadata.deletion_file is not None
               for f in Database(db).dataset("embeddings").get_fragments())
