"""Table versions: carrying the statistics record across commits that leave the rows
alone, the writer step of curation commands, and tags that protect exported versions."""

from __future__ import annotations

import functools

from .database import Database
from .lock import writer_lock
from .statistics import StatsStore

EXPORT_TAG_PREFIX = "export-"


# Commits that leave the rows (and so the statistics) as they were: layout changes,
# updates of columns the statistics do not read, and added columns (Merge, checked below).
_LAYOUT_ONLY = {"Rewrite", "ReserveFragments", "BaseOperation", "CreateIndex"}


_UNREAD_COLUMNS = ("cluster", "cluster_size", "dup_group", "is_duplicate", "rebalance_keep",
                   "ref_conformity", "ref_conformity_est", "ref_uncertainty", "ref_loglik",
                   "proj_x", "proj_y", "fn_count", "fn_rate")


def _unread_fields(dataset) -> set:
    """Field ids of the columns the statistics never read: the curation and reference
    columns, and every column outside the declared schema (metadata, tags, decisions
    written by ``rebalance --into``)."""
    from .schema import column_names

    read = set(column_names()) - set(_UNREAD_COLUMNS)
    unread = set()
    for name in dataset.schema.names:
        if name in read:
            continue
        try:
            unread.add(dataset.lance_schema.field(name).id())
        except (KeyError, ValueError, AttributeError):
            continue
    return unread


def carry_forward(db: Database, table: str, read_version: int, dataset) -> bool:
    """Point the statistics record at ``dataset.version`` when it described ``read_version``
    and every commit since then left the rows alone (curation columns and tags, compaction,
    added columns).

    Without this, the next command would find the record behind the table and rebuild
    the statistics as a new version, making every row look stale. Returns whether the
    record moved.
    """
    if dataset.version == read_version:
        return False
    store = StatsStore(db, table)
    record = store.load()
    if record is None or record.table_version != read_version:
        return False
    unread = _unread_fields(dataset)
    for tx in dataset.get_transactions(dataset.version - read_version):
        kind = type(tx.operation).__name__ if tx is not None else None
        if kind in _LAYOUT_ONLY:
            continue
        if kind == "Merge" and _adds_columns_only(dataset, tx):
            continue
        op = tx.operation
        if (kind == "Update" and set(op.fields_modified or []) <= unread
                and not op.new_fragments and not op.removed_fragment_ids):
            continue
        return False
    record.table_version = dataset.version
    store.save(record)
    return True


def _adds_columns_only(dataset, tx) -> bool:
    """Whether a Merge commit only added columns: every data file of the version it read
    is still there, in the same fragment, with the same fields and rows; new files hold
    only new fields; and every column of that version keeps its name and type."""
    before = dataset.checkout_version(tx.read_version)
    after = dataset.checkout_version(tx.read_version + 1)
    kept = {f.name: f.type for f in after.schema}
    if any(kept.get(f.name) != f.type for f in before.schema):
        return False
    old = {f.fragment_id: f.metadata for f in before.get_fragments()}
    new = {f.id: f for f in tx.operation.fragments}
    if set(old) != set(new):
        return False
    old_fields = {i for meta in old.values() for file in meta.files for i in file.fields}
    for fid, meta in old.items():
        now = new[fid]
        if now.physical_rows != meta.physical_rows or now.deletion_file != meta.deletion_file:
            return False
        before_files = {(file.path, tuple(file.fields)) for file in meta.files}
        files = {(file.path, tuple(file.fields)) for file in now.files}
        if not before_files <= files:
            return False
        if any(old_fields.intersection(fields) for _, fields in files - before_files):
            return False
    return True


def curation_step(command):
    """Decorator of commands that write only curation columns (cluster, dedupe, rebalance):
    one writer of the table at a time, and the statistics record follows the new version."""

    @functools.wraps(command)
    def run(*, db=None, table: str = "embeddings", **options):
        database = Database(db)
        database.dataset(table)  # a missing table is an error before any lock is taken
        with writer_lock(database, table):
            before = database.dataset(table).version
            result = command(db=db, table=table, **options)
            carry_forward(database, table, before, database.dataset(table))
        return result

    return run


def protect_version(dataset, version: int, name: str) -> str:
    """Tag ``version`` of a Lance dataset as ``export-<name>`` so optimize never prunes it.

    Export calls this with the table version it read (``name``: e.g. the export
    folder's name plus a timestamp; characters other than letters, digits, ``-``, ``_``
    and ``.`` are replaced). Returns the tag. An existing tag of that name is moved.
    """
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in str(name)) or "export"
    tag = f"{EXPORT_TAG_PREFIX}{safe}"[:200]
    if tag in dataset.tags.list():
        dataset.tags.update(tag, int(version))
    else:
        dataset.tags.create(tag, int(version))
    return tag


def protected_versions(dataset) -> list[int]:
    """Versions some tag names (export tags among them); cleanup keeps them."""
    return sorted({int(t["version"]) for t in dataset.tags.list().values() if t.get("version")})
