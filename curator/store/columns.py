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

    Returns (fragment metadata, modified field ids); nothing is committed yet.
    """
    metadata, modified = fragment.update_columns(table, left_on="_rowid")
    return metadata, list(modified)


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
