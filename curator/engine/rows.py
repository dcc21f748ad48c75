"""Reading chosen rows (by ``_rowid``) of a table version: the one row reader.

Rows come back in row-id order as (row ids, batch) pairs. Per fragment, a sparse choice
is read by random access (taking a 512-d vector costs here ~40 times what scanning one
does) and a dense one by a scan filtered by row id. The work is one function per piece
(:func:`piece_rows`), run by the executor, so the Ray engine reads the same rows in its
tasks; the local engine streams one piece at a time (memory: one piece's rows).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa

from ..store.arrow import vectors
from ..store.columns import SCAN_BATCH_ROWS
from .executor import LOCAL, executor
from .fragments import Piece, pieces

TAKE_SHARE = 0.025  # at most this share of a fragment's rows: random access, else a scan
ROWS_PER_PIECE = 8 * SCAN_BATCH_ROWS  # rows of a fragment one task scans


def piece_rows(piece: Piece, rowids: np.ndarray | None, columns: list[str], take: bool
               ) -> list[tuple[np.ndarray, pa.RecordBatch]]:
    """The rows pass's per-piece function: :func:`iter_piece_rows` as a list (what a
    task returns)."""
    return list(iter_piece_rows(piece, rowids, columns, take))


def iter_piece_rows(piece: Piece, rowids: np.ndarray | None, columns: list[str], take: bool
                    ) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """The rows of ``piece`` whose ids are in the sorted ``rowids`` (every row when None),
    as (ids, batch) pairs in row-id order, one batch at a time; ``take``: read ``rowids``
    (all in this piece) by random access."""
    if rowids is None:
        for batch in piece.batches(columns, with_row_id=True):
            yield batch.column("_rowid").to_numpy(), batch
        return
    if take:
        dataset = piece.fragment._ds
        for start in range(0, len(rowids), SCAN_BATCH_ROWS):
            chunk = rowids[start:start + SCAN_BATCH_ROWS]
            for batch in dataset._take_rows(chunk.tolist(), columns=columns).to_batches():
                yield chunk[:batch.num_rows], batch
                chunk = chunk[batch.num_rows:]
        return
    last = len(rowids) - 1
    for batch in piece.batches(columns, with_row_id=True):
        ids = batch.column("_rowid").to_numpy()
        hit = rowids[np.minimum(np.searchsorted(rowids, ids), last)] == ids
        if hit.all():
            yield ids, batch
        elif hit.any():
            yield ids[hit], batch.filter(pa.array(hit))


def select_rows(dataset, rowids: np.ndarray, columns: list[str], *, engine: str | None = None
                ) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """(row ids, batch) of the sorted ``rowids`` of ``dataset``, in row-id order."""
    if len(rowids) == 0:
        return
    run = executor(engine)
    jobs = _row_jobs(dataset, rowids, columns, run)
    if run.name == LOCAL:  # in this process: one batch at a time, never a piece's list
        for piece, wanted, cols, take in jobs:
            yield from iter_piece_rows(piece, wanted, cols, take)
        return
    for result in run.map(piece_rows, jobs):
        yield from result


def _row_jobs(dataset, rowids: np.ndarray, columns: list[str], run) -> list[tuple]:
    """The (piece, wanted row ids, columns, take) jobs of :func:`piece_rows` for the sorted
    ``rowids``. Per fragment, only the span from the first to the last wanted row is read:
    by random access when the wanted rows are at most ``TAKE_SHARE`` of it, else by a scan
    of the span (cut into pieces)."""
    split = ROWS_PER_PIECE if run.name != LOCAL else SCAN_BATCH_ROWS * 16
    fragment_of = (rowids >> np.uint64(32)).astype(np.int64)
    jobs = []
    by_id = {}
    for piece in pieces(dataset, split):
        by_id.setdefault(piece.fragment_id, []).append(piece)
    for fid, parts in by_id.items():
        lo, hi = np.searchsorted(fragment_of, [fid, fid + 1])
        if lo == hi:
            continue
        wanted = rowids[lo:hi]
        parts = _spanning(parts, wanted)
        span = sum(p.rows for p in parts) or parts[0].fragment.physical_rows
        if hi - lo <= TAKE_SHARE * span:
            jobs.append((parts[0], wanted, columns, True))
            continue
        shared = run.put(wanted)
        jobs += [(p, shared, columns, False) for p in parts]
    return jobs


def _spanning(parts: list[Piece], wanted: np.ndarray) -> list[Piece]:
    """The pieces of one fragment narrowed to the rows from the first to the last wanted
    one. Without deletions a row's offset in its fragment is ``_rowid`` & 0xFFFFFFFF; with
    deletions every piece is kept whole."""
    fragment = parts[0].fragment
    if fragment.metadata.deletion_file is not None:
        return parts
    offsets = wanted & np.uint64(0xFFFFFFFF)
    first, last = int(offsets[0]), int(offsets[-1]) + 1
    out = []
    for p in parts:
        start, stop = max(p.offset, first), min(p.offset + p.rows, last)
        if start < stop:
            out.append(Piece(fragment, start, stop - start,
                             whole=p.whole and start == p.offset and stop == p.offset + p.rows))
    return out or parts[:1]


def take_vectors(dataset, rowids: np.ndarray, *, engine: str | None = None) -> np.ndarray:
    """Vectors of the given row ids, in the order given (float32, (n, d)); repeated ids
    are read once. With the local engine a scanned batch's chosen rows are copied straight
    into the result (one copy of the vectors); with Ray the tasks return the rows."""
    rowids = np.asarray(rowids, np.uint64)
    dim = dataset.schema.field("embedding").type.list_size
    if len(rowids) == 0:
        return np.zeros((0, dim), np.float32)
    ordered = bool((rowids[1:] > rowids[:-1]).all())  # sorted and unique: no reordering
    unique, inverse = (rowids, None) if ordered else np.unique(rowids, return_inverse=True)
    X = np.empty((len(unique), dim), np.float32)
    run = executor(engine)
    jobs = _row_jobs(dataset, unique, ["embedding"], run)
    if run.name == LOCAL:
        found = (part for piece, wanted, columns, take in jobs
                 for part in _vector_parts(piece, wanted, take))
    else:
        found = ((ids, vectors(batch), None) for result in run.map(piece_rows, jobs)
                 for ids, batch in result)
    for ids, V, hit in found:
        at = np.searchsorted(unique, ids)
        if len(at) and at[-1] - at[0] == len(at) - 1:  # consecutive (rows come in id order)
            target = X[at[0]:at[-1] + 1]
            if hit is None:
                target[:] = V
            else:
                np.compress(hit, V, axis=0, out=target)
        elif len(at):
            X[at] = V if hit is None else V[hit]
    return X if inverse is None else X[inverse]


def _vector_parts(piece: Piece, rowids: np.ndarray, take: bool):
    """(chosen row ids, the batch's vectors, mask of the chosen rows or None) per batch."""
    if take:
        for ids, batch in iter_piece_rows(piece, rowids, ["embedding"], True):
            yield ids, vectors(batch), None
        return
    last = len(rowids) - 1
    for batch in piece.batches(["embedding"], with_row_id=True):
        ids = batch.column("_rowid").to_numpy()
        hit = rowids[np.minimum(np.searchsorted(rowids, ids), last)] == ids
        if hit.any():
            yield ids[hit], vectors(batch), hit


def piece_matches(piece: Piece, predicate, columns: list[str]) -> np.ndarray:
    """The predicate pass's per-piece function: ``_rowid`` of the piece's rows for which
    ``predicate`` (a :class:`~curator.store.predicate.Predicate`) is true, sorted."""
    found = [predicate.rowids(batch) for batch in piece.batches(columns, with_row_id=True)]
    return np.sort(np.concatenate(found)).astype(np.uint64) if found else np.zeros(0, np.uint64)


def where_rowids(dataset, predicate, *, engine: str | None = None) -> np.ndarray:
    """Sorted ``_rowid`` of the rows of ``dataset`` for which ``predicate`` is true (all
    rows when it is None); reads only the predicate's columns, one piece at a time."""
    columns = list(predicate.columns) if predicate is not None else []
    run = executor(engine)
    if predicate is None:
        parts = [np.sort(batch.column("_rowid").to_numpy()) for batch in dataset.to_batches(
            columns=[], with_row_id=True, batch_size=SCAN_BATCH_ROWS * 16)]
    else:
        split = None if run.name == LOCAL else ROWS_PER_PIECE
        parts = list(run.map(piece_matches, [(p, predicate, columns or ["modality"])
                                             for p in pieces(dataset, split)]))
    return np.sort(np.concatenate(parts)).astype(np.uint64) if parts else np.zeros(0, np.uint64)
