"""DuckDB SQL and Polars over the tables: results against numpy, read-only, formats."""

from __future__ import annotations

import json

import numpy as np
import polars as pl
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import read_table

from curator.cli import cli
from curator.errors import BadInput, CuratorError
from curator.io.query import lazy, query


def test_sql_aggregates_equal_numpy(ingested):
    t = read_table(ingested).to_pydict()
    result = query("select modality, count(*) as n, avg(conformity) as c from embeddings "
                   "group by modality order by modality", db=ingested).to_pydict()
    for m, n, c in zip(result["modality"], result["n"], result["c"]):
        values = [x for x, mm in zip(t["conformity"], t["modality"]) if mm == m]
        assert n == len(values) and c == pytest.approx(np.mean(values), rel=1e-6)


def test_pairs_view_joins_text_rows_to_their_image(ingested, pairs_small):
    result = query("select sample_id, image_id, text_id, alignment from pairs", db=ingested).to_pydict()
    data = pairs_small
    assert len(result["text_id"]) == int((data.modality == "text").sum())
    image_of = {s: i for s, i, m in zip(data.sample_ids, data.ids, data.modality) if m == "image"}
    assert all(image_of[s] == i for s, i in zip(result["sample_id"], result["image_id"]))


def test_every_table_visible_by_name(ingested, tmp_path):
    from curator import ingest

    path = tmp_path / "x.npy"
    np.save(path, np.ones((4, 3), np.float32) + np.eye(4, 3, dtype=np.float32))
    ingest([str(path)], db=ingested, table="other", modality="image")
    result = query("select (select count(*) from other) as a, (select count(*) from embeddings) as b",
                   db=ingested).to_pydict()
    assert result["a"] == [4] and result["b"] == [read_table(ingested).num_rows]


@pytest.mark.parametrize("sql", ["select 1; drop table embeddings", "copy embeddings to 'x.csv'",
                                 "insert into embeddings select * from embeddings",
                                 "create table t as select 1", "attach 'x.db'"])
def test_only_one_read_only_statement(ingested, sql):
    with pytest.raises(BadInput):
        query(sql, db=ingested)


def test_no_file_access_from_sql(ingested):
    with pytest.raises(CuratorError):
        query("select * from read_csv('/etc/passwd')", db=ingested)


def test_polars_lazyframe(ingested, pairs_small):
    frame = lazy(db=ingested).filter(pl.col("modality") == "image").select("id", "conformity").collect()
    assert frame.height == int((pairs_small.modality == "image").sum())


@pytest.mark.parametrize("fmt", ["csv", "json", "table"])
def test_cli_formats(ingested, fmt):
    result = CliRunner().invoke(cli, ["--db", ingested, "query", "select count(*) as n from embeddings",
                                      "--format", fmt])
    assert result.exit_code == 0, result.output
    n = read_table(ingested).num_rows
    if fmt == "csv":
        assert result.stdout.strip().splitlines()[-1] == str(n)
    elif fmt == "json":
        assert json.loads(result.stdout) == [{"n": n}]
    else:
        assert str(n) in result.stdout


def test_cli_parquet_out(ingested, tmp_path):
    out = tmp_path / "q.parquet"
    result = CliRunner().invoke(cli, ["--db", ingested, "query", "select id, embedding from embeddings",
                                      "--format", "parquet", "--out", str(out)])
    assert result.exit_code == 0
    assert pq.read_table(out).num_rows == read_table(ingested).num_rows


def test_cli_bad_sql_is_one_line(ingested):
    result = CliRunner().invoke(cli, ["--db", ingested, "query", "select nope from embeddings"])
    assert result.exit_code == 1
    assert result.stderr.startswith("Error: ") and len(result.stderr.strip().splitlines()) == 1
