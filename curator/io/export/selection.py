"""Which rows an export writes: the predicate's matches in one pinned table version,
in row-id order, and the reader of their columns."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...engine.rows import select_rows
from ...errors import CuratorError
from ...store.sql import PAIRS_VIEW, first_line


@dataclass
class Source:
    """The pinned table version being exported, and the engine that reads its rows."""

    dataset: object
    engine: str | None = None

    def rows(self, rowids: np.ndarray, columns: list[str]):
        """(row ids, batch) of the sorted ``rowids``, in that order."""
        return select_rows(self.dataset, rowids, columns, engine=self.engine)


@dataclass
class Selection:
    """The selected rows of one table version, in row-id order."""

    rowids: np.ndarray  # uint64, sorted
    ids: pa.Array
    sample_ids: pa.Array
    modality: pa.Array

    def counts(self) -> dict:
        out = {}
        mods = self.modality.to_numpy(zero_copy_only=False)
        for m in sorted(set(mods.tolist())):
            rows = pa.array(mods == m)
            samples = self.sample_ids.filter(rows)
            distinct = pc.count_distinct(samples, mode="only_valid").as_py()
            out[m] = {"rows": int(rows.true_count), "samples": int(distinct + samples.null_count)}
        return out


def select(dataset, table: str, where: str | None, unit: str = "row") -> Selection:
    """Rows of ``dataset`` (one pinned version) matching ``where``, whole samples for
    ``unit='sample'``; a bad predicate is a one-line :class:`CuratorError`."""
    scalars = dataset.to_table(columns=["id", "sample_id", "modality"], with_row_id=True)
    order = np.argsort(scalars.column("_rowid").to_numpy(), kind="stable")
    scalars = scalars.take(pa.array(order))
    ids = _array(scalars, "id")
    samples = _array(scalars, "sample_id")
    if where is None:
        keep = None
    else:
        matched = _match(dataset, table, where)
        keep = pc.is_in(ids, value_set=matched.column("id").combine_chunks().cast(pa.string()))
        if unit == "sample":
            hit = pc.drop_null(pc.unique(matched.column("sample_id").combine_chunks().cast(pa.string())))
            whole = pc.fill_null(pc.is_in(samples, value_set=hit, skip_nulls=True), False)
            keep = pc.or_(keep, whole)
    rowids = scalars.column("_rowid").to_numpy()
    if keep is None:
        return Selection(rowids, ids, samples, _array(scalars, "modality"))
    mask = keep.to_numpy(zero_copy_only=False)
    return Selection(rowids[mask], ids.filter(keep), samples.filter(keep),
                     _array(scalars, "modality").filter(keep))


def _array(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks().cast(pa.string())


def _match(dataset, table: str, where: str) -> pa.Table:
    """Ids and sample ids of the rows the predicate selects (DuckDB over the pinned version)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register(table, dataset)
        con.execute(PAIRS_VIEW.format(table=table))
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con.sql(f'SELECT id, sample_id FROM "{table}" WHERE ({where})').to_arrow_table()
    except duckdb.Error as exc:
        raise CuratorError(f"--where: {first_line(exc)}") from None
    finally:
        con.close()


def table_schema(dataset) -> pa.Schema:
    """The table's Arrow schema with its metadata in sorted order (files written twice from
    the same version are then byte-identical)."""
    schema = dataset.schema
    return schema.with_metadata(dict(sorted((schema.metadata or {}).items())))


def batches(source: Source, selection: Selection, columns: list[str] | None = None):
    """The selected rows, all (or ``columns``) columns, as batches in row-id order."""
    schema = table_schema(source.dataset)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    for _, batch in source.rows(selection.rowids, schema.names):
        yield pa.RecordBatch.from_arrays([batch.column(n) for n in schema.names], schema=schema)

