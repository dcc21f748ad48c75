"""``--where`` is one boolean expression over the table's columns, parsed, never pasted:
valid expressions select what DuckDB's own WHERE selects; anything else is refused."""

from __future__ import annotations

import duckdb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from curator.engine.rows import where_rowids
from curator.errors import BadInput
from curator.store.database import Database
from curator.store.predicate import parse

VALID = [
    "modality = 'image' and conformity > 0.3",
    "coalesce(is_duplicate, false) or concept in (1, 2)",
    "id like 'img-00001%'",
    "conformity between 0.2 and 0.6",
    "sample_id is null or norm * 2 > 10",
    "not (modality = 'text') and uncertainty < 0.5",
    "lower(caption) like '%concept%' and length(id) > 3",
    "abs(alignment) >= 0.5 and alignment_centered is not null",
]
HOSTILE = [
    "true) LIMIT 3 --",
    "false) UNION ALL SELECT id, sample_id FROM embeddings WHERE (true",
    "true; DROP TABLE embeddings",
    "conformity > 0 -- and false",
    "conformity > 0 /* and false */",
    "id in (select id from embeddings)",
    "exists (select 1)",
    "conformity > 0 order by id",
    "conformity > 0 limit 1",
    "1, 2",
    "*",
    "conformity",
    "sum(norm) > 1",
    "rank() over () > 1",
    "nope > 1",
    "e.id = 'x'",
    "read_csv('/etc/passwd') is null",
    "(true",
    "true)",
    "'unterminated",
    "",
]


@pytest.fixture
def table(ingested):
    return Database(ingested).dataset("embeddings")


@pytest.mark.parametrize("where", VALID)
def test_valid_expressions_select_what_duckdb_selects(table, where):
    predicate = parse(where, table.schema)
    got = where_rowids(table, predicate)
    # The oracle: DuckDB's own WHERE over a copy of the columns (our constants, not user text).
    scanned = table.to_table(columns=list(predicate.columns) or ["id"], with_row_id=True)
    con = duckdb.connect()
    con.register("t", scanned)
    expected = np.sort(con.sql(f"select _rowid from t where {where}").fetchnumpy()["_rowid"])
    assert np.array_equal(got, expected.astype(np.uint64))
    assert 0 < len(got) < table.count_rows() or where.startswith("sample_id")


@pytest.mark.parametrize("where", HOSTILE)
def test_hostile_strings_are_refused(table, where):
    if where == "":
        assert parse(where, table.schema) is None  # no predicate: every row
        return
    with pytest.raises(BadInput) as info:
        parse(where, table.schema)
    assert "\n" not in str(info.value) and str(info.value).startswith("--where")


def test_the_normalised_text_is_duckdb_rendering(table):
    predicate = parse("  modality='image'   AND conformity>0.3 ", table.schema)
    assert predicate.text == "((modality = 'image') AND (conformity > 0.3))" or \
        predicate.text.replace(" ", "") in ("modality='image'ANDconformity>0.3",
                                             "((modality='image')AND(conformity>0.3))")
    assert predicate.columns == ("modality", "conformity")


_pieces = st.sampled_from(["true", "false", ")", "(", "--", "/*", "*/", ";", "'", "\"", "LIMIT 1",
                           "ORDER BY id", "UNION SELECT 1", "select", "from embeddings", "id",
                           "conformity > 0", "or", "and", "in (select 1)", "\\", "\n", "$1", "?"])


@settings(max_examples=150, deadline=None)
@given(st.lists(_pieces, min_size=1, max_size=8))
def test_random_fragments_are_one_expression_or_refused(table_schema, parts):
    text = " ".join(parts)
    try:
        predicate = parse(text, table_schema)
    except BadInput as exc:
        assert "\n" not in str(exc)
        return
    if predicate is None:
        return
    # What is accepted is one boolean expression over the table's columns only.
    assert set(predicate.columns) <= set(table_schema.names)
    for word in ("select", "limit", "order by", "union", "--", "/*", ";"):
        assert word not in predicate.text.lower().replace("'", "")


@pytest.fixture(scope="module")
def table_schema(tmp_path_factory, pairs_small):
    from curator import ingest

    db = str(tmp_path_factory.mktemp("pred") / "db")
    ingest([pairs_small.write_parquet(str(tmp_path_factory.mktemp("src")))[0]], db=db)
    return Database(db).dataset("embeddings").schema
