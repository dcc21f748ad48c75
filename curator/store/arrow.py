"""Arrow ↔ numpy for the table's columns: vectors out of batches, matrices into arrays."""

from __future__ import annotations

import numpy as np
import pyarrow as pa


def vectors(batch: pa.RecordBatch | pa.Table, column: str = "embedding") -> np.ndarray:
    """The vectors of a batch as an (n, d) float32 array, without copying when possible."""
    col = batch.column(column)
    if isinstance(col, pa.ChunkedArray):
        col = col.combine_chunks()
    dim = col.type.list_size
    if col.offset or col.null_count:
        col = pa.concat_arrays([col])
    values = col.values
    if col.offset:
        values = values.slice(col.offset * dim, len(col) * dim)
    return values.to_numpy(zero_copy_only=False).reshape(-1, dim)


def fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    """An (n, d) float32 matrix as a fixed_size_list<float32, d> array (no copy)."""
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def groups(column: pa.Array | pa.ChunkedArray) -> list[tuple[str, slice | np.ndarray | None]]:
    """Split row positions by a string column: [(value, selector)], the selector None for
    every row, a slice when the value's rows are one run (no copy when indexing with it),
    else a bool mask."""
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    encoded = column.dictionary_encode()
    codes = encoded.indices.to_numpy(zero_copy_only=False)
    names = encoded.dictionary.to_pylist()
    if len(names) == 1:
        return [(str(names[0]), None)]
    out = []
    for k, name in enumerate(names):
        mask = codes == k
        first = int(mask.argmax())
        last = len(mask) - int(mask[::-1].argmax())
        out.append((str(name), slice(first, last) if mask[first:last].all() else mask))
    return out
