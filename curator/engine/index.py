"""The row index: scalar columns of every row of a table version, aligned by position.

One reader for every command that needs rows' modalities, samples or stored scalars
(scoring, clusters, dedupe, export): one scan of the named scalar columns (never the
vectors), rows sorted by ``_rowid``, converted column by column so that only one Arrow
column and its numpy copy coexist.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


@dataclass
class RowIndex:
    """Row ids (sorted), modality codes into ``names``, sample codes (−1 = no sample id)
    and the requested columns: floats as numpy (NaN = null, stored precision), integers
    as int64 numpy (−1 = null), booleans as numpy (null = False), strings as Arrow."""

    rowid: np.ndarray  # uint64, sorted
    modality: np.ndarray  # int16 code into names
    names: list[str]
    sample: np.ndarray | None = None  # int32 code, -1 = no sample id
    columns: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.rowid)

    def code(self, modality: str) -> int:
        """The code of ``modality`` (−2 when the table has no such row)."""
        return self.names.index(modality) if modality in self.names else -2

    def rows_of(self, modality: str) -> np.ndarray:
        """Boolean mask of the rows of ``modality``."""
        return self.modality == self.code(modality)

    def positions(self, rowids: np.ndarray) -> np.ndarray:
        """Positions of the given row ids (which must be in the index)."""
        return np.searchsorted(self.rowid, rowids)

    def __getitem__(self, name: str):
        return self.columns[name]


def read_index(dataset, columns: list[str] | tuple = (), *, samples: bool = True) -> RowIndex:
    """The row index of ``dataset`` (its pinned version) with the given scalar columns
    (those the table lacks are left out)."""
    present = set(dataset.schema.names)
    wanted = [c for c in dict.fromkeys(columns) if c in present and c not in ("modality", "sample_id")]
    scan = ["modality"] + (["sample_id"] if samples else []) + wanted
    table = dataset.to_table(columns=scan, with_row_id=True)
    rowids = table.column("_rowid").to_numpy()
    if len(rowids) > 1 and not (np.diff(rowids.astype(np.int64)) > 0).all():  # scans come sorted
        table = table.take(pa.array(np.argsort(rowids, kind="stable")))
        rowids = table.column("_rowid").to_numpy()

    def pop(name):
        nonlocal table
        column = table.column(name).combine_chunks()
        table = table.drop_columns([name])
        return column

    modality = pop("modality").dictionary_encode()
    sample = None
    if samples:
        sample = (pc.fill_null(pop("sample_id").dictionary_encode().indices, -1)
                  .to_numpy(zero_copy_only=False).astype(np.int32))
    out = {}
    for name in wanted:
        out[name] = _numpy(pop(name))
    return RowIndex(
        rowid=rowids,
        modality=modality.indices.to_numpy(zero_copy_only=False).astype(np.int16),
        names=[str(x) for x in modality.dictionary.to_pylist()],
        sample=sample,
        columns=out,
    )


def _numpy(column: pa.Array):
    kind = column.type
    if pa.types.is_floating(kind):
        dtype = np.float64 if kind == pa.float64() else np.float32
        return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False)
    if pa.types.is_integer(kind):
        return pc.fill_null(column, -1).to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
    if pa.types.is_boolean(kind):
        return pc.fill_null(column, False).to_numpy(zero_copy_only=False)
    return column.cast(pa.string()) if pa.types.is_dictionary(kind) else column
