"""SQL (DuckDB) and DataFrame (Polars) access to the tables of a database.

Every dataset table is visible to DuckDB by its name, scanned in place from Lance with
projection and filter pushdown (no copy into memory for a filter), plus the view
``pairs``: one row per text row with its sample's image. Queries run read-only: one
statement, which must be a query; DuckDB's access to files is switched off.
"""

from __future__ import annotations

import json
import os
import sys

import pyarrow as pa

from .errors import BadInput, CuratorError
from .store import Database

FORMATS = ("table", "csv", "json", "parquet")

PAIRS_VIEW = """
CREATE VIEW pairs AS
SELECT t.sample_id, i.id AS image_id, t.id AS text_id,
       t.alignment, t.alignment_centered, t.conformity_mismatch,
       i.conformity AS image_conformity, t.conformity AS text_conformity,
       i.uncertainty AS image_uncertainty, t.uncertainty AS text_uncertainty
FROM "{table}" t JOIN "{table}" i ON t.sample_id = i.sample_id AND i.modality = 'image'
WHERE t.modality = 'text'
"""


def connect(db=None, table: str = "embeddings", *, read_only: bool = True):
    """A DuckDB connection with every table of the database registered by name."""
    import duckdb

    database = Database(db)
    con = duckdb.connect()
    names = database.table_names()
    for name in names:
        con.register(name, database.dataset(name))
    if table in names:
        con.execute(PAIRS_VIEW.format(table=table))
    if read_only:
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    return con


def check_single_query(sql: str, what: str = "query") -> str:
    """Refuse anything but one read-only query (no second statement, no writes)."""
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as exc:
        raise BadInput(f"{what}: {_first_line(exc)}") from None
    if len(statements) != 1:
        raise BadInput(f"{what}: exactly one statement allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise BadInput(f"{what}: only queries are allowed (got {kind.name})")
    return sql


def check_predicate(where: str) -> str:
    """A WHERE predicate must be one expression: no second statement, no subquery writes."""
    check_single_query(f"SELECT 1 FROM t WHERE ({where})", "--where")
    return where


def query(sql: str, *, db=None, table: str = "embeddings") -> pa.Table:
    """Run one read-only SQL query over the database; returns an Arrow table."""
    import duckdb

    check_single_query(sql)
    con = connect(db, table)
    try:
        return con.sql(sql).to_arrow_table()
    except duckdb.Error as exc:
        raise CuratorError(f"query failed: {_first_line(exc)}") from None
    finally:
        con.close()


def scan_where(*, db=None, table: str = "embeddings", where: str | None = None,
               columns: str = "*", batch_rows: int = 65_536):
    """Stream the rows matching a predicate as Arrow batches (a RecordBatchReader)."""
    import duckdb

    sql = f'SELECT {columns} FROM "{table}"' + (f" WHERE ({check_predicate(where)})" if where else "")
    con = connect(db, table)
    try:
        return con.sql(sql).fetch_record_batch(batch_rows)
    except duckdb.Error as exc:
        raise CuratorError(f"--where: {_first_line(exc)}") from None


def lazy(*, db=None, table: str = "embeddings"):
    """A Polars LazyFrame over a table (filters and projections push down into Lance)."""
    import polars as pl

    return pl.scan_pyarrow_dataset(Database(db).dataset(table))


def write_result(result: pa.Table, fmt: str = "table", out: str | None = None) -> None:
    """Print (or write to ``out``) a query result as table, csv, json or parquet."""
    if fmt not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        if not out:
            raise BadInput("--format parquet needs --out FILE")
        pq.write_table(result, out)
        return
    text = render(result, fmt)
    if out:
        with open(out, "w", encoding="utf-8") as fh:
            fh.write(text)
    else:
        sys.stdout.write(text)


def render(result: pa.Table, fmt: str) -> str:
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__


os.environ.setdefault("LANCE_LOG", "error")
