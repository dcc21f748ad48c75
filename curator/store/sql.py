"""SQL (DuckDB) over the tables of a database, read-only.

Every dataset table is visible to DuckDB by its name, scanned in place from Lance with
projection and filter pushdown (no copy into memory for a filter), plus the view
``pairs``: one row per text row with its sample's image. Queries run read-only: one
statement, which must be a query; DuckDB's access to files is switched off.
"""

from __future__ import annotations

from ..errors import BadInput
from .database import Database

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
    database.check_folder()
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
        raise BadInput(f"{what}: {first_line(exc)}") from None
    if len(statements) != 1:
        raise BadInput(f"{what}: exactly one statement allowed, got {len(statements)}")
    kind = statements[0].type
    if kind != duckdb.StatementType.SELECT:
        raise BadInput(f"{what}: only queries are allowed (got {kind.name})")
    return sql


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:300] if text else type(exc).__name__

