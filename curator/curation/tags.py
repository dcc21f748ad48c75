"""``tag NAME``: mark rows by hand (or from the browse app) in a boolean column.

The rows are named by ``ids`` (a file: one id a line, or a parquet/csv with an ``id``
column; from Python also a list of ids) or by ``where`` (one predicate, parsed by
:func:`curator.store.predicate.parse`). The tag column ``NAME`` becomes, for every row:

- true for the named rows (false with ``remove``);
- its previous value for the other rows, and false where it had none (a new tag, or rows
  ingested since the last write of the tag).

So the column never holds nulls right after a ``tag``, and ``--where "not NAME"`` keeps
every untagged row. A new tag is added with its values in one ``Merge`` commit, an
existing one rewritten in one ``Update`` commit (Lance data evolution: only the tag's own
column files are written), under the table's writer lock, and the statistics record is
carried forward (tags are not read by any score). An id the table does not hold is an
error that names how many and which, and nothing is written.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..engine.rows import where_rowids
from ..engine.writes import add_columns, map_columns
from ..errors import BadInput
from ..store.columns import SCAN_BATCH_ROWS
from ..store.database import Database
from ..store.predicate import parse
from ..store.tags import check_tag_name, tag_field, tag_names
from ..store.versions import curation_step

EXAMPLES = 3


@dataclass
class TagResult:
    """What ``tag`` wrote: rows named, rows whose value changed, and the count after."""

    name: str
    named: int  # rows the ids or the predicate named
    changed: int  # rows whose value is different now (null → false counts; new tag: rows true)
    tagged: int  # rows true after the write
    rows: int  # rows in the table
    created: bool  # the column was added by this command
    remove: bool
    where: str | None
    ids: str | None
    table_version_read: int
    table_version: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        source = (f"where {self.where}" if self.where is not None else
                  f"ids from {self.ids}" if self.ids else "the ids given")
        verb = "removed" if self.remove else "tagged"
        made = "new tag" if self.created else "tag"
        return (f"{verb} {self.named:,} rows ({source}) in {made} {self.name!r}: {self.changed:,} "
                f"changed, {self.tagged:,} of {self.rows:,} rows now tagged; table version "
                f"{self.table_version_read} -> {self.table_version}")


def tag(name: str, *, db=None, table: str = "embeddings", ids=None, where: str | None = None,
        remove: bool = False, engine: str | None = None) -> TagResult:
    """Set the boolean column ``name`` to true (false with ``remove``) for the rows named
    by ``ids`` (a file path, or an iterable of id strings) or ``where`` (a predicate);
    exactly one of the two. Returns counts and the table versions read and written."""
    if (ids is None) == (where is None or not str(where).strip()):
        raise BadInput("tag: give exactly one of --ids FILE or --where PRED")
    return _tag(db=db, table=table, name=name, ids=ids, where=where, remove=remove, engine=engine)


@curation_step
def _tag(*, db, table, name, ids, where, remove, engine) -> TagResult:
    dataset = Database(db).dataset(table)
    read_version = dataset.version
    check_tag_name(name, dataset.schema)
    exists = name in dataset.schema.names
    if remove and not exists:
        raise BadInput(f"no tag {name!r} to remove rows from (tags: "
                       f"{', '.join(tag_names(dataset)) or 'none'})")
    predicate = parse(where, dataset.schema) if ids is None else None
    if predicate is not None:
        rowids = where_rowids(dataset, predicate, engine=engine)
    else:
        rowids = ids_to_rowids(dataset, read_ids(ids))
    value = not remove
    message = f"curator tag {name}{' --remove' if remove else ''}: {len(rowids)} rows"
    if exists:
        new, infos = map_columns(dataset, _update_values, (rowids, value, name), [name],
                                 out_schema=_schema(name, exists=True), message=message,
                                 engine=engine)
    else:
        new = add_columns(dataset, _new_values, (rowids, value, name), [],
                          out_schema=_schema(name, exists=False), message=message, engine=engine)
        infos = None
    tagged, changed, rows = _count(new, name, read_version, dataset, infos)
    return TagResult(name, len(rowids), changed, tagged, rows, not exists, bool(remove),
                     predicate.text if predicate is not None else None,
                     ids if isinstance(ids, (str, os.PathLike)) else None,
                     read_version, new.version)


def _schema(name: str, exists: bool) -> pa.Schema:
    field = tag_field(name)
    return pa.schema([("_rowid", pa.uint64()), field]) if exists else pa.schema([field])


def _named(rowids_of_batch: np.ndarray, named: np.ndarray) -> np.ndarray:
    if len(named) == 0:
        return np.zeros(len(rowids_of_batch), bool)
    pos = np.minimum(np.searchsorted(named, rowids_of_batch), len(named) - 1)
    return named[pos] == rowids_of_batch


def _new_values(batch: pa.RecordBatch, named: np.ndarray, value: bool, name: str) -> pa.RecordBatch:
    """Per batch of a new tag: ``value`` for the named rows, the opposite for the rest."""
    hit = _named(batch.column("_rowid").to_numpy(), named)
    return pa.record_batch([pa.array(hit if value else np.zeros(len(hit), bool))],
                           schema=pa.schema([tag_field(name)]))


def _update_values(batch: pa.RecordBatch, named: np.ndarray, value: bool, name: str):
    """Per batch of an existing tag: named rows get ``value``; the others keep theirs, null
    becoming false. Returns (``_rowid`` + the tag, rows changed)."""
    rowid = batch.column("_rowid")
    old = batch.column(name)
    kept = pc.fill_null(old, False).to_numpy(zero_copy_only=False).astype(bool)
    out = np.where(_named(rowid.to_numpy(), named), value, kept)
    changed = int(old.null_count) + int((out != kept)[old.is_valid().to_numpy(
        zero_copy_only=False)].sum())
    return pa.record_batch([rowid, pa.array(out)], schema=_schema(name, exists=True)), changed


def _count(dataset, name: str, read_version: int, before, infos) -> tuple[int, int, int]:
    """(rows true, rows changed, rows) of the written tag."""
    tagged = rows = 0
    for batch in dataset.to_batches(columns=[name], batch_size=SCAN_BATCH_ROWS * 16):
        rows += batch.num_rows
        tagged += int(pc.sum(pc.cast(pc.fill_null(batch.column(0), False), pa.int64())).as_py() or 0)
    # a new tag changes the rows it sets true (the others start false)
    changed = sum(i for i in infos if i) if infos is not None else tagged
    return tagged, changed, rows


# -- ids --------------------------------------------------------------------------------

def read_ids(ids) -> list[str]:
    """Ids from a file (one a line; or a ``.parquet`` / ``.csv`` with an ``id`` column) or
    an iterable of strings. Blank lines are skipped; repeated ids count once."""
    if isinstance(ids, (str, os.PathLike)):
        path = os.fspath(ids)
        if not os.path.isfile(path):
            raise BadInput(f"--ids {path}: no such file")
        lower = path.lower()
        if lower.endswith((".parquet", ".pq", ".csv")):
            values = _id_column(path)
        else:
            try:
                with open(path, encoding="utf-8") as fh:
                    values = [line.rstrip("\r\n") for line in fh]
            except UnicodeDecodeError:
                raise BadInput(f"--ids {path}: not UTF-8 text (one id a line)") from None
    elif isinstance(ids, Iterable) and not isinstance(ids, (bytes, dict)):
        values = [str(v) for v in ids]
    else:
        raise BadInput("--ids: give a file, or (from Python) a list of ids")
    out = list(dict.fromkeys(v for v in values if v is not None and v.strip() != ""))
    if not out:
        raise BadInput(f"--ids {ids if isinstance(ids, (str, os.PathLike)) else ''}: no ids".strip())
    return out


def _id_column(path: str) -> list[str]:
    try:
        if path.lower().endswith(".csv"):
            import pyarrow.csv as pcsv

            table = pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
                column_types={"id": pa.string()}))
        else:
            import pyarrow.parquet as pq

            table = pq.read_table(path, columns=["id"]) if "id" in pq.read_schema(path).names \
                else pa.table({})
    except (pa.ArrowInvalid, OSError) as exc:
        raise BadInput(f"--ids {path}: cannot read it ({str(exc).splitlines()[0][:200]})") from None
    if "id" not in table.column_names:
        raise BadInput(f"--ids {path}: no column 'id'")
    return table.column("id").cast(pa.string()).to_pylist()


def ids_to_rowids(dataset, ids: list[str]) -> np.ndarray:
    """Sorted ``_rowid`` of the rows with these ids (one scan of the id column). Raises
    BadInput naming the ids the table does not hold."""
    wanted = pa.array(ids, pa.string())
    found_ids, found_rows = [], []
    for batch in dataset.to_batches(columns=["id"], with_row_id=True,
                                    batch_size=SCAN_BATCH_ROWS * 16):
        hit = pc.is_in(batch.column("id"), value_set=wanted)
        if pc.any(hit).as_py():
            found_ids.append(pc.filter(batch.column("id"), hit))
            found_rows.append(pc.filter(batch.column("_rowid"), hit).to_numpy())
    found = set(pa.concat_arrays(found_ids).to_pylist()) if found_ids else set()
    if len(found) < len(ids):
        missing = [i for i in ids if i not in found]
        shown = ", ".join(repr(i) for i in missing[:EXAMPLES])
        raise BadInput(f"--ids: {len(missing):,} of {len(ids):,} ids are not in the table "
                       f"(e.g. {shown}); nothing was written")
    return np.sort(np.concatenate(found_rows)).astype(np.uint64) if found_rows \
        else np.zeros(0, np.uint64)
