"""Tags: boolean columns a person writes with ``curator tag NAME`` (or the browse app).

A tag is an ordinary nullable ``bool`` column of the dataset table, so every ``--where``
reads it like any column (``export --where "not reviewed_bad"``). What makes it a tag is
its field metadata ``curator.tag = true``, written when the column is added: that is how
:func:`tag_names` tells tags from metadata columns that happen to be boolean, how
export's manifest lists the tags a predicate used, and how the statistics record knows
the column is not one it reads.

Rows appended after a tag was written have no value yet (null) until the next ``curator
tag`` of that name, which sets every null to false: write ``coalesce(NAME, false)`` in a
predicate that must also keep rows ingested since.
"""

from __future__ import annotations

import re

import pyarrow as pa

from ..errors import BadInput

TAG_KEY = b"curator.tag"
MAX_NAME = 64
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")
# Columns curator writes itself (declared or added by a command): never a tag's name.
_RESERVED = {"proj_x", "proj_y", "fn_count", "fn_rate", "ref_conformity", "ref_conformity_est",
             "ref_uncertainty", "ref_loglik"}


def tag_field(name: str) -> pa.Field:
    """The Arrow field of a new tag column."""
    return pa.field(name, pa.bool_(), nullable=True, metadata={TAG_KEY: b"true"})


def is_tag(field: pa.Field) -> bool:
    return pa.types.is_boolean(field.type) and (field.metadata or {}).get(TAG_KEY) == b"true"


def tag_names(dataset_or_schema) -> list[str]:
    """The tag columns of a table (a Lance dataset or an Arrow schema), in column order."""
    schema = getattr(dataset_or_schema, "schema", dataset_or_schema)
    return [f.name for f in schema if is_tag(f)]


def tags_used(schema: pa.Schema, where) -> list[str]:
    """The tags a predicate reads: ``where`` is a parsed predicate (with ``columns``), its
    text, or None. Used by export's manifest."""
    if where is None:
        return []
    columns = getattr(where, "columns", None)
    if columns is None:
        from .predicate import parse

        parsed = parse(str(where), schema)
        columns = parsed.columns if parsed is not None else ()
    tags = set(tag_names(schema))
    return [c for c in columns if c in tags]


def check_tag_name(name, schema: pa.Schema) -> str:
    """``name`` when it can name a tag of a table of ``schema``: an identifier (a letter,
    then letters, digits, underscores; at most 64 characters) that is no SQL keyword and
    no column other than an existing tag of that name. Raises BadInput otherwise."""
    from .schema import column_names

    if not isinstance(name, str) or not _NAME.match(name) or len(name) > MAX_NAME:
        raise BadInput(f"tag name {name!r}: use a letter, then letters, digits or underscores "
                       f"(at most {MAX_NAME} characters)")
    lower = name.lower()
    if lower in _reserved_words():
        raise BadInput(f"tag name {name!r} is an SQL keyword; choose another name")
    existing = {f.name.lower(): f for f in schema}
    if lower in existing:
        field = existing[lower]
        if field.name == name and is_tag(field):
            return name
        raise BadInput(f"tag name {name!r}: the table already has a column {field.name!r} "
                       "that is not a tag")
    if lower in {c.lower() for c in column_names()} | _RESERVED:
        raise BadInput(f"tag name {name!r} is reserved for a column curator writes")
    return name


def _reserved_words() -> set[str]:
    import duckdb

    con = duckdb.connect()
    try:
        rows = con.execute("SELECT keyword_name FROM duckdb_keywords() "
                           "WHERE keyword_category <> 'unreserved'").fetchall()
    finally:
        con.close()
    return {r[0].lower() for r in rows} | {"true", "false", "null"}
