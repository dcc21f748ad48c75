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


def piece_rows(piece: Piece, rowids: np.ndarray, columns: list[str], take: bool
               ) -> list[tuple[np.ndarray, pa.RecordBatch]]:
    """The rows of ``piece`` whose ids are in the sorted ``rowids``, as (ids, batch) pairs
    in row-id order; ``take``: read ``rowids`` (all in this piece) by random access."""
    out = []
    if take:
        dataset = piece.fragment._ds
        for start in range(0, len(rowids), SCAN_BATCH_ROWS):
            chunk = rowids[start:start + SCAN_BATCH_ROWS]
            for batch in dataset._take_rows(chunk.tolist(), columns=columns).to_batches():
                out.append((chunk[:batch.num_rows], batch))
                chunk = chunk[batch.num_rows:]
        return out
    last = len(rowids) - 1
    for batch in piece.batches(columns, with_row_id=True):
        ids = batch.column("_rowid").to_numpy()
        hit = rowids[np.minimum(np.searchsorted(rowids, ids), last)] == ids
        if hit.all():
            out.append((ids, batch))
        elif hit.any():
            out.append((ids[hit], batch.filter(pa.array(hit))))
    return out


def select_rows(dataset, rowids: np.ndarray, columns: list[str], *, engine: str | None = None
                ) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
    """(row ids, batch) of the sorted ``rowids`` of ``dataset``, in row-id order."""
    if len(rowids) == 0:
        return
    run = executor(engine)
    for result in run.map(piece_rows, _row_jobs(dataset, rowids, columns, run)):
        yield from result


def _row_jobs(dataset, rowids: np.ndarray, columns: list[str], run) -> list[tuple]:
    """The (piece, wanted row ids, columns, take) jobs of :func:`piece_rows` for the sorted
    ``rowids``: random access where a fragment's share is small, else scans of its pieces."""
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
        physical = parts[0].fragment.physical_rows
        if hi - lo <= TAKE_SHARE * physical:
            jobs.append((parts[0], wanted, columns, True))
            continue
        shared = run.put(wanted)
        jobs += [(p, shared, columns, False) for p in parts]
    return jobs


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
        for ids, batch in piece_rows(piece, rowids, ["embedding"], True):
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
