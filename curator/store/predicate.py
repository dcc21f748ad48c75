"""``--where PRED``: one boolean expression over a table's columns, parsed, never pasted.

Every command that selects rows by a predicate (export, rebalance, tag, negatives,
compare, browse) takes it through :func:`parse`:

1. DuckDB's tokenizer refuses comments (``--``, ``/* */``), which could cut the text, and
   any ``;`` outside a string (a statement separator has no place in an expression);
2. DuckDB's expression parser (``duckdb.SQLExpression``) must find exactly one
   expression: a second statement, ``LIMIT``, ``ORDER BY`` or an unbalanced parenthesis
   is a parse error;
3. the parsed tree (``json_serialize_sql`` of DuckDB's own rendering) must hold no
   subquery (so no other table, no set operation), no ``*``, no window, no parameter,
   and only columns the table has;
4. bound against an empty table of the table's schema, its type must be BOOLEAN.

The result is a :class:`Predicate`: DuckDB's normalised rendering of the expression
(what manifests record), the columns it reads, and :meth:`Predicate.rowids`, which
evaluates it on a batch with DuckDB's relation API (``relation.filter(expression)``),
with file access off. Nothing the user typed is ever concatenated into a statement.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterable
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..errors import BadInput

MAX_CHARS = 10_000
_REFUSED = {
    "SUBQUERY": "a subquery",
    "STAR": "*",
    "WINDOW": "a window function",
    "PARAMETER": "a parameter",
    "COLUMNS": "COLUMNS(…)",
    "LAMBDA": "a lambda",
}


@dataclass(frozen=True)
class Predicate:
    """A parsed ``--where``: normalised text, the columns it reads, and its evaluation."""

    text: str
    columns: tuple[str, ...]
    _expression: object = field(default=None, repr=False, compare=False)

    def expression(self):
        """The DuckDB expression (parsed again from the normalised text in a new process)."""
        import duckdb

        return self._expression if self._expression is not None else duckdb.SQLExpression(self.text)

    def __reduce__(self):  # ships to Ray workers as its text and columns
        return (Predicate, (self.text, self.columns))

    def rowids(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """``_rowid`` of the rows of ``batch`` for which the predicate is true (null = false).

        The batch must hold ``_rowid`` and :attr:`columns`.
        """
        import duckdb

        con = _evaluator()
        try:
            relation = con.from_arrow(pa.Table.from_batches([batch]) if isinstance(
                batch, pa.RecordBatch) else batch)
            result = relation.filter(self.expression()).select(duckdb.ColumnExpression("_rowid"))
            return result.to_arrow_table().column(0).to_numpy()
        except duckdb.Error as exc:
            raise BadInput(f"--where {self.text}: {_first_line(exc)}") from None

    def mask(self, batch: pa.RecordBatch | pa.Table) -> np.ndarray:
        """Boolean mask over the rows of ``batch`` (which must hold ``_rowid``)."""
        ids = batch.column("_rowid").to_numpy()
        return np.isin(ids, self.rowids(batch), assume_unique=True)


def parse(where: str | None, schema: pa.Schema, *, what: str = "--where") -> Predicate | None:
    """The predicate ``where`` over a table of ``schema``; None when ``where`` is empty.

    Raises :class:`BadInput` (one line, naming ``what``) for anything that is not one
    boolean expression over the table's columns.
    """
    import duckdb

    if where is None or not str(where).strip():
        return None
    where = str(where)
    if len(where) > MAX_CHARS:
        raise BadInput(f"{what}: longer than {MAX_CHARS} characters")
    if "\x00" in where:
        raise BadInput(f"{what}: holds a NUL character")
    try:
        tokens = duckdb.tokenize(where)
    except Exception as exc:  # noqa: BLE001 (any tokenizer failure is a refusal)
        raise BadInput(f"{what}: {_first_line(exc)}") from None
    if any(kind == duckdb.token_type.comment for _, kind in tokens):
        raise BadInput(f"{what}: comments are not allowed in a predicate")
    if any(kind == duckdb.token_type.operator and where[at] == ";" for at, kind in tokens):
        raise BadInput(f"{what}: ';' is not allowed in a predicate (one expression, no statements)")
    try:
        # DuckDB's rendering of the parsed tree (it parses to itself): what is checked,
        # evaluated (here and, parsed again, on Ray workers) and recorded is this text.
        text = duckdb.SQLExpression(where).get_name()
        expression = duckdb.SQLExpression(text)
    except (duckdb.Error, ValueError, TypeError) as exc:
        raise BadInput(f"{what}: not one expression ({_first_line(exc)})") from None
    tree = _tree(text, what)
    used: list[str] = []
    _walk(tree, used, what)
    names = {n.lower(): n for n in schema.names}
    missing = [c for c in dict.fromkeys(used) if c.lower() not in names]
    if missing:
        shown = ", ".join(n for n in schema.names if n != "embedding")
        raise BadInput(f"{what}: no column {missing[0]!r} in the table (columns: {shown})")
    columns = tuple(dict.fromkeys(names[c.lower()] for c in used))
    _check_boolean(expression, text, schema, columns, what)
    return Predicate(text, columns, expression)


def columns_of(schema: pa.Schema, *groups: Iterable[str]) -> list[str]:
    """The distinct columns of ``groups`` that ``schema`` has, in first-seen order."""
    present = set(schema.names)
    return [c for c in dict.fromkeys(c for g in groups for c in g) if c in present]


# -- internals --------------------------------------------------------------------------

def _connection():
    import duckdb

    con = duckdb.connect()
    con.execute("SET enable_external_access = false")
    con.execute("SET lock_configuration = true")
    return con


_local = threading.local()


def _evaluator():
    """This thread's connection for evaluating predicates on batches (opening one costs
    tens of milliseconds, as much as evaluating a batch)."""
    con = getattr(_local, "con", None)
    if con is None:
        con = _local.con = _connection()
    return con


def _tree(text: str, what: str) -> dict:
    """DuckDB's parse tree of the (already single, normalised) expression."""
    row = _evaluator().execute("SELECT json_serialize_sql(?)", ["SELECT " + text]).fetchall()[0]
    tree = json.loads(row[0])
    if tree.get("error") or len(tree.get("statements", [])) != 1:
        raise BadInput(f"{what}: not one expression ({tree.get('error_message', 'parse error')})")
    node = tree["statements"][0]["node"]
    if node.get("type") != "SELECT_NODE" or len(node.get("select_list", [])) != 1 \
            or node.get("from_table", {}).get("type") not in (None, "EMPTY"):
        raise BadInput(f"{what}: not one expression")
    return node["select_list"][0]


def _walk(node, used: list[str], what: str) -> None:
    if isinstance(node, list):
        for item in node:
            _walk(item, used, what)
        return
    if not isinstance(node, dict):
        return
    kind = node.get("class")
    if kind in _REFUSED:
        raise BadInput(f"{what}: {_REFUSED[kind]} is not allowed in a predicate "
                       "(one expression over this table's columns)")
    if kind == "COLUMN_REF":
        names = node.get("column_names") or []
        if len(names) != 1:
            raise BadInput(f"{what}: {'.'.join(names)}: name columns of this table only")
        used.append(names[0])
    if kind == "FUNCTION" and node.get("is_operator") is False and node.get("window") is not None:
        raise BadInput(f"{what}: a window function is not allowed in a predicate")
    for key, value in node.items():
        if key in ("class", "type", "alias", "query_location", "query_location_length"):
            continue
        _walk(value, used, what)


def _check_boolean(expression, text: str, schema: pa.Schema, columns: tuple[str, ...],
                   what: str) -> None:
    """Bind the expression against an empty table of the columns it reads: it must be
    known to DuckDB and BOOLEAN."""
    import duckdb

    fields = [schema.field(c) for c in columns]
    con = _evaluator()
    try:
        empty = pa.table({f.name: pa.array([], f.type) for f in fields}) if fields else \
            pa.table({"_": pa.array([], pa.int8())})
        relation = con.from_arrow(empty)
        kind = str(relation.select(expression).types[0]).upper()
        relation.filter(expression).limit(0).fetchall()  # binds as a filter: no aggregates
    except duckdb.Error as exc:
        raise BadInput(f"{what}: {_first_line(exc)}") from None
    if kind not in ("BOOLEAN", '"NULL"', "NULL"):
        raise BadInput(f"{what}: {text!r} is {kind}, not a true/false condition")


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0][:300] if lines else type(exc).__name__
