"""Schema evolution of a dataset table: metadata columns that arrive later.

A batch may bring metadata columns the table lacks (captions after images, a ``url``
column in a later export). They are added as nullable columns by Lance data evolution
(:func:`add_columns`: a schema-only commit, no data file is written or rewritten; older
rows read null), inside the ingest's writer lock, and the statistics record is carried
forward over that commit, so no row's scores become stale.

A metadata column the table already has keeps its type. A batch's column is accepted
when its type is of the same kind (:func:`check_compatible`): integers into a wider or
narrower integer column, integers or floats into a float column, ``string`` and
``large_string`` (and dictionary-encoded strings) into either, lists of compatible
items, and so on; each value is then cast with overflow checks (:func:`conform`), so a
value that does not fit is refused rather than wrapped. A different kind (text into a
number column, floats into an integer column, booleans into integers) is a
:class:`SchemaMismatch` naming the column and both types.
"""

from __future__ import annotations

import pyarrow as pa
import pyarrow.compute as pc

from ..errors import SchemaMismatch
from .database import Database
from .statistics import StatsStore


def _kind(t: pa.DataType) -> str:
    if pa.types.is_dictionary(t):
        return _kind(t.value_type)
    checks = (
        ("null", pa.types.is_null), ("bool", pa.types.is_boolean), ("integer", pa.types.is_integer),
        ("float", pa.types.is_floating), ("decimal", pa.types.is_decimal),
        ("string", lambda x: pa.types.is_string(x) or pa.types.is_large_string(x)
         or pa.types.is_string_view(x)),
        ("binary", lambda x: pa.types.is_binary(x) or pa.types.is_large_binary(x)
         or pa.types.is_fixed_size_binary(x) or pa.types.is_binary_view(x)),
        ("timestamp", pa.types.is_timestamp), ("date", pa.types.is_date),
        ("time", pa.types.is_time), ("duration", pa.types.is_duration),
        ("list", lambda x: pa.types.is_list(x) or pa.types.is_large_list(x)
         or pa.types.is_fixed_size_list(x) or pa.types.is_list_view(x)),
        ("struct", pa.types.is_struct), ("map", pa.types.is_map),
    )
    for name, test in checks:
        if test(t):
            return name
    return str(t)


def _compatible(given: pa.DataType, held: pa.DataType) -> bool:
    if given == held or pa.types.is_null(given):
        return True
    if pa.types.is_dictionary(given):
        given = given.value_type
    if pa.types.is_dictionary(held):
        held = held.value_type
    a, b = _kind(given), _kind(held)
    if a == "list" and b == "list":
        return _compatible(given.value_type, held.value_type)
    if a == "struct" and b == "struct":
        names = {f.name: f.type for f in held}
        return all(f.name in names and _compatible(f.type, names[f.name]) for f in given)
    if a == "map" and b == "map":
        return _compatible(given.key_type, held.key_type) and _compatible(given.item_type, held.item_type)
    return a == b or (a == "integer" and b == "float")


def check_compatible(name: str, given: pa.DataType, held: pa.DataType) -> None:
    """Raise SchemaMismatch unless values of type ``given`` may go into a column ``held``."""
    if not _compatible(given, held):
        raise SchemaMismatch(f"column {name!r} has type {given} in the input, but the table "
                             f"holds {held}: convert it, or ingest into another --table")


def conform(name: str, column: pa.Array, held: pa.DataType) -> pa.Array:
    """``column`` cast to the table's type ``held``: same kind only, values checked.

    Integers must fit (no wrap-around), integers into floats must be exact, and a float
    too large for float32 is refused instead of becoming infinity.
    """
    if column.type == held:
        return column
    check_compatible(name, column.type, held)
    try:
        out = column.cast(held, safe=True)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise SchemaMismatch(f"column {name!r}: values of type {column.type} do not fit the "
                             f"table's {held} ({reason})") from None
    if pa.types.is_floating(held) and pa.types.is_floating(column.type):
        overflow = pc.and_(pc.is_inf(out), pc.invert(pc.is_inf(column)))
        if pc.any(overflow).as_py():
            raise SchemaMismatch(f"column {name!r}: values of type {column.type} overflow the "
                                 f"table's {held}")
    return out


def additions(table_schema: pa.Schema, batch_schema: pa.Schema, ignore=frozenset()) -> list[pa.Field]:
    """Nullable fields for the batch's columns the table lacks (not ``ignore``), after
    checking that the columns both have are compatible. An all-null column of the batch
    (type null) adds nothing: absent and null read the same."""
    held = {f.name: f.type for f in table_schema}
    out = []
    for f in batch_schema:
        if f.name in ignore:
            continue
        if f.name in held:
            check_compatible(f.name, f.type, held[f.name])
        elif not pa.types.is_null(f.type):
            t = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            out.append(pa.field(f.name, t, nullable=True))
    return out


def add_columns(db: Database, table: str, dataset, fields: list[pa.Field]):
    """Add ``fields`` as all-null columns (one schema-only Lance commit) and carry the
    statistics record forward; returns the dataset at the new version. The caller holds
    the table's writer lock."""
    from .versions import carry_forward

    if not fields:
        return dataset
    before = dataset.version
    dataset.add_columns(fields)
    dataset = db.dataset(table)
    carry_forward(db, table, before, dataset)
    return dataset


def undo_columns(db: Database, table: str, version: int) -> None:
    """After a failed append: restore the table as it was at ``version`` (before columns
    were added), so it holds no trace of the failed ingest, and let the statistics
    record, which described ``version``, describe the restored version."""
    dataset = db.dataset(table)
    if dataset.version == version:
        return
    store = StatsStore(db, table)
    record = store.load()
    dataset.checkout_version(version).restore()
    restored = db.dataset(table)
    if record is not None and record.table_version in (version, dataset.version):
        record.table_version = restored.version
        store.save(record)
