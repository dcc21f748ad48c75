"""Column writes by Lance data evolution: new column files, never a rewrite of the vectors.

The primitives of every score and curation write: :func:`update_fragment` writes new
files for some columns of one fragment (joined on ``_rowid``), and :func:`commit_updates`
commits the updated fragments of one pass as one ``LanceOperation.Update``. The passes
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
