"""Column writes by Lance data evolution: new column files, never a rewrite of the vectors.

The primitives of every score and curation write: :func:`update_fragment` writes new
files for some columns of one fragment (joined on ``_rowid``), :func:`replace_columns`
writes one file holding some columns for every physical row of a fragment (no join: the
caller has them in offset order), and :func:`commit_updates` commits the updated
fragments of one pass as one ``LanceOperation.Update``. The passes
that call them live in :mod:`curator.engine.writes`.
"""

from __future__ import annotations

import pyarrow as pa

SCAN_BATCH_ROWS = 16_384


def update_fragment(fragment, table: pa.Table):
    """New column files for ``table``'s columns (keyed by ``_rowid``) in one fragment.

    When ``table`` holds every live row of the fragment once (a pass that rewrites the
    columns of whole fragments, the common case), its values are laid out by offset and
    written as one file (:func:`replace_columns`, no join; deleted rows get nulls); else
    Lance joins them on ``_rowid`` (``update_columns``). Returns (fragment metadata,
    modified field ids); nothing is committed yet.
    """
    laid_out = _by_offset(fragment, table)
    if laid_out is not None:
        return replace_columns(fragment._ds, fragment.metadata, laid_out)
    metadata, modified = fragment.update_columns(table, left_on="_rowid")
    return metadata, list(modified)


def _by_offset(fragment, table: pa.Table) -> pa.Table | None:
    """``table``'s columns (all but ``_rowid``) for every physical row of ``fragment`` in
    offset order, cast to the dataset's types; None unless it covers each live row once
    and every column is nullable (deleted rows are null)."""
    import numpy as np

    if table.num_rows == 0 or table.num_rows != fragment.count_rows():
        return None
    schema = fragment._ds.schema
    names = [name for name in table.column_names if name != "_rowid"]
    fields = [schema.field(name) for name in names]
    if not all(f.nullable for f in fields):
        return None
    rowid = table.column("_rowid").to_numpy().astype(np.uint64)
    offsets = (rowid & np.uint64(0xFFFFFFFF)).astype(np.int64)
    n = fragment.metadata.physical_rows
    if (rowid >> np.uint64(32) != np.uint64(fragment.fragment_id)).any() or offsets.max() >= n:
        return None
    at = np.full(n, -1, np.int64)
    at[offsets] = np.arange(len(offsets))
    if np.count_nonzero(at >= 0) != len(offsets):  # a row given twice
        return None
    take = pa.array(at, mask=at < 0)
    return pa.table([table.column(name).take(take).cast(f.type) for name, f in zip(names, fields)],
                    schema=pa.schema(fields))


def replace_columns(dataset, metadata, table: pa.Table, prefix: str = "columns"):
    """Write ``table`` (columns of the table's schema, one row per physical row of the
    fragment of ``metadata``, in offset order) as one new data file, and return the
    fragment's metadata with that file in place of those columns' old files, and the
    replaced field ids. Nothing is committed."""
    import uuid
    from dataclasses import replace

    import lance
    from lance.file import LanceFileWriter

    from .database import STORAGE_VERSION

    if table.num_rows != metadata.physical_rows:
        raise ValueError(f"{table.num_rows} rows for a fragment of {metadata.physical_rows}")
    relative = f"{prefix}-{uuid.uuid4().hex}.lance"
    path = f"{dataset.uri.rstrip('/')}/data/{relative}"
    with LanceFileWriter(path, table.schema, version=STORAGE_VERSION) as writer:
        writer.write_batch(table)
    new_file = lance.fragment.DataFile.create(dataset, relative)
    replaced = set(new_file.fields)
    files = []
    for data_file in metadata.files:
        fields = [(-2 if f in replaced else f) for f in data_file.fields]
        if all(f == -2 for f in fields):
            continue  # every column of this file is superseded
        if fields != list(data_file.fields):
            data_file = lance.fragment.DataFile(
                data_file._path, fields, data_file.column_indices, data_file.file_major_version,
                data_file.file_minor_version, data_file.file_size_bytes, data_file.base_id)
        files.append(data_file)
    return replace(metadata, files=files + [new_file]), sorted(replaced)


def commit_updates(dataset, results, message: str = ""):
    """Commit the (fragment metadata, modified fields) of one pass as one Update; returns
    the new dataset (``dataset`` itself when nothing was updated)."""
    import lance

    updated, fields = [], set()
    for metadata, modified in results:
        if metadata is None:
            continue
        updated.append(metadata)
        fields.update(modified)
    if not updated:
        return dataset
    operation = lance.LanceOperation.Update(updated_fragments=updated, fields_modified=sorted(fields))
    return commit(dataset, operation, message)


def commit(dataset, operation, message: str = ""):
    """Commit an operation read at ``dataset.version``; Lance retries compatible conflicts."""
    import lance

    return lance.LanceDataset.commit(
        dataset.uri, operation, read_version=dataset.version, commit_message=message or None
    )
