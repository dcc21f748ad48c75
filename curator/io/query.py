"""``query``: one read-only DuckDB SQL query over the database; ``lazy``: a Polars
LazyFrame over a table. Results print as a table, csv or json, or go to a file."""

from __future__ import annotations

import json

import pyarrow as pa

from ..errors import BadInput, CuratorError
from ..store.database import Database
from ..store.sql import check_single_query, connect, first_line

FORMATS = ("table", "csv", "json", "parquet")


def query(sql: str, *, db=None, table: str = "embeddings", format: str = "table",
          out: str | None = None) -> pa.Table:
    """Run one read-only SQL query over the database; returns an Arrow table.

    With ``out``, the result is also written to that file as ``format`` (table, csv, json
    or parquet).
    """
    import duckdb

    if format not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}")
    if format == "parquet" and not out:
        raise BadInput("--format parquet needs --out FILE")
    check_single_query(sql)
    con = connect(db, table)
    try:
        result = con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise CuratorError(f"query failed: {first_line(exc)}") from None
    finally:
        con.close()
    if out:
        write_result(result, format, out)
    return result


def lazy(*, db=None, table: str = "embeddings"):
    """A Polars LazyFrame over a table (filters and projections push down into Lance)."""
    import polars as pl

    return pl.scan_pyarrow_dataset(Database(db).dataset(table))


def write_result(result: pa.Table, fmt: str, out: str) -> None:
    """Write a query result to the file ``out`` as table, csv, json or parquet."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        pq.write_table(result, out)
        return
    with open(out, "w", encoding="utf-8") as fh:
        fh.write(render(result, fmt))


def rows_json(result: pa.Table, out: str | None = None) -> dict:
    """``query --json``: one object with the columns, the rows and their count."""
    return {"columns": result.column_names, "rows": result.to_pylist(),
            "row_count": result.num_rows, "out": out}


def render(result: pa.Table, fmt: str) -> str:
    """The result as text: an aligned table, csv or a JSON list of rows."""
    rows = result.to_pylist()
    names = result.column_names
    if fmt == "json":
        return json.dumps(rows, default=_jsonable) + "\n"
    cells = [[_cell(r[c]) for c in names] for r in rows]
    if fmt == "csv":
        import csv
        import io

        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(names)
        writer.writerows(cells)
        return buf.getvalue()
    widths = [min(max([len(n)] + [len(c[i]) for c in cells]), 60) for i, n in enumerate(names)]
    lines = ["  ".join(n.ljust(w) for n, w in zip(names, widths)),
             "  ".join("-" * w for w in widths)]
    lines += ["  ".join(c[:w].ljust(w) for c, w in zip(row, widths)) for row in cells]
    lines.append(f"({len(rows)} rows)")
    return "\n".join(lines) + "\n"


def _cell(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, list):
        return json.dumps(value[:4] + (["…"] if len(value) > 4 else []), default=_jsonable)
    return str(value)


def _jsonable(value):
    return str(value)

