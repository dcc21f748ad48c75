"""Column-writing passes: one task per fragment writes new column files, one commit.

- :func:`write_columns`: set columns of given rows to given values (the caller computed
  them, e.g. cluster labels or duplicate flags);
- :func:`map_columns`: compute columns from each fragment's rows with a module-level
  function (e.g. rebalance decisions), in the task that reads them;
- :func:`add_columns`: the same for columns the table does not have yet (a tag, 2-D
  coordinates): new nullable columns and their values in one ``Merge`` commit.

Both run on either engine with the same per-fragment function and commit once, from the
caller; nothing is committed when a task fails. The vectors are never rewritten.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pyarrow as pa

from ..store.columns import commit_updates, update_fragment
from .executor import executor


def write_columns(dataset, rowids: np.ndarray, arrays: dict[str, pa.Array], message: str = "", *,
                  engine: str | None = None):
    """Set existing columns of the rows ``rowids`` (uint64) to ``arrays`` (aligned); one
    commit. Returns the new dataset (the same one when ``rowids`` is empty)."""
    rowids = np.asarray(rowids, np.uint64)
    fragment_of = (rowids >> np.uint64(32)).astype(np.int64)
    schema = pa.schema([("_rowid", pa.uint64())] + [(name, a.type) for name, a in arrays.items()])

    def jobs():
        for fragment in dataset.get_fragments():
            sel = np.flatnonzero(fragment_of == fragment.fragment_id)
            if len(sel):
                take = pa.array(sel)
                table = pa.table([pa.array(rowids[sel], pa.uint64())]
                                 + [a.take(take) for a in arrays.values()], schema=schema)
                yield fragment, table

    return commit_updates(dataset, executor(engine).map(update_fragment, jobs()), message)


def _map_fragment(fragment, fn: Callable, args: tuple, read_columns: list[str],
                  out_schema: pa.Schema, filter: str | None):
    """Read one fragment's ``read_columns`` (+ ``_rowid``), compute ``fn(batch, *args)`` →
    (table of ``_rowid`` + out columns or None, info) per batch, write; returns
    (metadata, modified fields, [info…])."""
    parts, infos = [], []
    for batch in fragment.to_batches(columns=read_columns, filter=filter, with_row_id=True):
        out, info = fn(batch, *args)
        infos.append(info)
        if out is not None and out.num_rows:
            parts.append(pa.Table.from_batches([out]) if isinstance(out, pa.RecordBatch) else out)
    if not parts:
        return None, [], infos
    metadata, modified = update_fragment(fragment, pa.concat_tables(parts).cast(out_schema))
    return metadata, modified, infos


def map_columns(dataset, fn: Callable, args: tuple, read_columns: list[str], *,
                out_schema: pa.Schema, filter: str | None = None, message: str = "",
                engine: str | None = None):
    """Compute and write columns of every fragment in one commit.

    ``fn(batch, *args)`` (a module-level function, so Ray can ship it) receives batches of
    ``read_columns`` plus ``_rowid`` and returns (a table with ``_rowid`` and the columns of
    ``out_schema`` or None, an info value). Returns (new dataset, the infos of every
    batch in fragment order).
    """
    run = executor(engine)
    shared = run.put(args)
    jobs = [(f, fn, shared, read_columns, out_schema, filter) for f in dataset.get_fragments()]
    results, infos = [], []
    for metadata, modified, info in run.map(_map_fragment, jobs):
        results.append((metadata, modified))
        infos.extend(info)
    return commit_updates(dataset, results, message), infos


def _add_fragment(fragment, fn: Callable, args: tuple, read_columns: list[str],
                  out_schema: pa.Schema):
    """New column files of one fragment holding ``fn(batch, *args)`` for its rows (Lance
    may call ``fn`` once more on a probe batch); returns (metadata, new Lance schema)."""

    def values(batch):
        out = fn(batch, *args)
        return pa.record_batch([out.column(f.name) for f in out_schema], schema=out_schema)

    return fragment.merge_columns(values, columns=["_rowid", *read_columns])


def add_columns(dataset, fn: Callable, args: tuple, read_columns: list[str], *,
                out_schema: pa.Schema, message: str = "", engine: str | None = None):
    """Add the (nullable) columns of ``out_schema`` to the table, computed per fragment by
    ``fn(batch, *args)`` (a module-level function) from batches of ``read_columns`` plus
    ``_rowid``; it returns a record batch of the out columns aligned with the batch. One
    ``Merge`` commit adds the columns with their values; nothing is committed when a task
    fails. Returns the new dataset."""
    import lance

    from ..store.columns import commit

    missing = [f.name for f in out_schema if not f.nullable]
    if missing:
        raise ValueError(f"added columns must be nullable: {missing}")
    run = executor(engine)
    shared = run.put(args)
    jobs = [(f, fn, shared, read_columns, out_schema) for f in dataset.get_fragments()]
    fragments, schema = [], None
    for metadata, schema in run.map(_add_fragment, jobs):
        fragments.append(metadata)
    if schema is None:  # an empty table: the columns alone
        dataset.add_columns(list(out_schema))
        return lance.dataset(dataset.uri)
    operation = lance.LanceOperation.Merge(fragments, schema, preserves_nullability=True)
    return commit(dataset, operation, message)
