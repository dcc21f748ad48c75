"""Ray implementations of curator's reductions and maps over a Lance dataset.

Called through :mod:`curator.engine` (which connects Ray); each function has the same
contract and results as its local counterpart:

- :func:`accumulate` (statistics, a reduction): a Ray Data pipeline,
  ``read_lance`` → ``map_batches`` producing a partial :class:`~curator.stats.TableStats`
  per block (a fragment, or a part of a large one), merged on the driver with
  ``ModalityStats.merge``. Same sums as :func:`curator.stats.accumulate` to float
  tolerance (the second moments are moved onto one shift when merged).
- :func:`score_rows` (scores, a map plus a small global step): one Ray task per fragment
  computes the per-row scalars with :func:`curator.scores.row_scores` (conformity, the
  estimator, log-likelihood, norms and dots with the modality means); the driver does
  the global step over scalars only (uncertainty sketch, pair join), as
  :func:`curator.rescore.score_rows` does; one Ray task per fragment writes the score
  columns with ``fragment.update_columns``; the driver commits once
  (``LanceOperation.Update``). Nothing is committed on error: the table is unchanged.

The workers open the dataset at the version the driver read, so a concurrent writer
cannot change what is scored. lance-ray's ``add_columns``/``merge_columns_from`` only
add *new* columns; curator's score columns already exist, so the backfill is the
``update_columns`` pattern of :func:`curator.rescore.write_scores`, spread over tasks.
"""

from __future__ import annotations

import pickle

import numpy as np
import pyarrow as pa

from .rescore import OUT_COLUMNS, RowIndex, scalar_arrays
from .scores import row_scores
from .stats import TableStats
from .store import SCAN_BATCH_ROWS, commit, vectors

READ_BATCH_ROWS = 131_072  # rows per Ray Data block: one partial statistics record each
STATS_COLUMNS = ["modality", "embedding", "conformity"]


# -- statistics: a reduction ---------------------------------------------------------------

def _partial_stats(dim: int):
    """map_batches function: the statistics of one block, as one pickled row."""

    def partial(block: pa.Table) -> pa.Table:
        part = TableStats(dim)
        X = vectors(block)
        modality = block.column("modality").to_numpy(zero_copy_only=False)
        conformity = block.column("conformity").to_numpy(zero_copy_only=False)
        for m in np.unique(modality):
            rows = modality == m
            s = part.get(str(m))
            s.add(X if rows.all() else X[rows])
            s.add_conformity(np.asarray(conformity[rows], np.float64))
        return pa.table({"rows": [block.num_rows], "partial": [pickle.dumps(part, protocol=5)]})

    return partial


def accumulate(dataset, dim: int, *, filter: str | None = None) -> TableStats:
    """Statistics of the dataset's rows (at its version): Ray Data map, merge on the driver."""
    import ray.data

    fragments = len(dataset.get_fragments())
    stats = TableStats(dim)
    if fragments == 0:
        return stats
    scanner = {"batch_size": READ_BATCH_ROWS, **({"filter": filter} if filter else {})}
    source = ray.data.read_lance(dataset.uri, version=dataset.version, columns=STATS_COLUMNS,
                                 scanner_options=scanner, override_num_blocks=fragments)
    partials = source.map_batches(_partial_stats(dim), batch_format="pyarrow", batch_size=None)
    for batch in partials.iter_batches(batch_format="pyarrow", batch_size=None):
        for blob in batch.column("partial").to_pylist():
            part = pickle.loads(blob)
            for m, s in part.modalities.items():
                stats.modalities[m] = stats.get(m).merge(s)
    return stats


# -- scores: a map over fragments, a global step over scalars, a map of writes ------------

def _fragment_scalars(uri: str, version: int, fragment_id: int, rowids: np.ndarray, model):
    """Per-row scalars of the given rows of one fragment (a Ray task).

    Returns ``{"rowid", "norm", "conformity", "conformity_est", "loglik", "dot_M"…}``
    as float64 arrays aligned with the returned row ids.
    """
    import lance

    live, whitening, names = model
    fragment = lance.dataset(uri, version=version).get_fragment(fragment_id)
    keys = ["norm", "conformity", "conformity_est", "loglik"] + [f"dot_{m}" for m in names]
    parts = {k: [] for k in ["rowid"] + keys}
    everything = len(rowids) == fragment.count_rows()
    for batch in fragment.to_batches(columns=["modality", "embedding"], with_row_id=True,
                                     batch_size=SCAN_BATCH_ROWS):
        ids = batch.column("_rowid").to_numpy()
        if not everything:
            keep = np.isin(ids, rowids, assume_unique=True)
            if not keep.any():
                continue
            if not keep.all():
                batch, ids = batch.filter(pa.array(keep)), ids[keep]
        X = vectors(batch)
        out = {k: np.full(len(ids), np.nan) for k in keys}
        out["norm"] = np.sqrt(np.einsum("ij,ij->i", X, X)).astype(np.float64)  # as rescore: float32
        mods = np.asarray(batch.column("modality").to_pylist(), dtype=object)
        for m in np.unique(mods):
            if m not in live:
                continue
            rows = mods == m
            for key, values in row_scores(X[rows], out["norm"][rows], m, live, whitening[m]).items():
                out[key][rows] = values
        parts["rowid"].append(ids)
        for k in keys:
            parts[k].append(out[k])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def _write_fragment(uri: str, version: int, fragment_id: int, table: pa.Table):
    """Write one fragment's score columns (a Ray task); returns its pickled metadata."""
    import lance

    fragment = lance.dataset(uri, version=version).get_fragment(fragment_id)
    metadata, modified = fragment.update_columns(table, left_on="_rowid")
    return pickle.dumps(metadata), list(modified)


def _by_fragment(rowids: np.ndarray) -> dict[int, np.ndarray]:
    """Sorted row ids grouped by fragment (row id >> 32 for stable row ids off)."""
    fragment = (rowids >> np.uint64(32)).astype(np.int64)
    bounds = np.flatnonzero(np.diff(fragment)) + 1
    return {int(chunk_f[0]): chunk for chunk, chunk_f in
            zip(np.split(rowids, bounds), np.split(fragment, bounds)) if len(chunk)}


def compute_scalars(dataset, stats: TableStats, index: RowIndex, needed: np.ndarray) -> dict:
    """The per-row scalars of ``score_rows`` for the needed rows, one Ray task a fragment."""
    import ray

    scalars, live, whitening = scalar_arrays(stats, len(index.rowid))
    model = ray.put((live, whitening, sorted(live)))
    task = ray.remote(_fragment_scalars)
    wanted = index.rowid[needed]  # sorted: read_index orders rows by row id
    futures = [task.remote(dataset.uri, dataset.version, f, ids, model)
               for f, ids in _by_fragment(wanted).items()]
    for result in ray.get(futures):
        pos = index.positions(result.pop("rowid"))
        for key, values in result.items():
            scalars[key][pos] = values
    return scalars


def score_rows(dataset, stats: TableStats, target: np.ndarray | None = None,
               index: RowIndex | None = None, message: str = "curator score",
               all_uncertainty: bool = False):
    """:func:`curator.rescore.score_rows` with the vector pass and the writes on Ray.

    The global step over scalars (sketch, pair join) is rescore's own code, on the
    driver; same arguments, same result: (new dataset, rows rescored).
    """
    from .rescore import score_rows as local_score_rows

    return local_score_rows(dataset, stats, target, index, message, all_uncertainty,
                            scalar_pass=compute_scalars, writer=write_scores)


def write_scores(dataset, rowids: np.ndarray, target: np.ndarray, columns: dict[str, np.ndarray],
                 versions: np.ndarray, message: str):
    """:func:`curator.rescore.write_scores` with one Ray task a fragment, one driver commit."""
    import lance
    import ray

    positions = np.flatnonzero(target)
    fragment_of = (rowids[positions] >> np.uint64(32)).astype(np.int64)
    schema = pa.schema([("_rowid", pa.uint64())] + list(OUT_COLUMNS.items()))
    task = ray.remote(_write_fragment)
    futures = []
    for fragment_id in np.unique(fragment_of).tolist():
        sel = positions[fragment_of == fragment_id]
        arrays = [pa.array(rowids[sel], pa.uint64())]
        for name, dtype in OUT_COLUMNS.items():
            if name == "stats_version":
                v = versions[sel]
                arrays.append(pa.array(v.astype(np.int64), pa.int64(), mask=v < 0))
                continue
            values = columns[name][sel]
            arrays.append(pa.array(values.astype(dtype.to_pandas_dtype()), dtype,
                                   mask=~np.isfinite(values)))
        futures.append(task.remote(dataset.uri, dataset.version, fragment_id,
                                   pa.table(arrays, schema=schema)))
    if not futures:
        return dataset
    updated, fields = [], set()
    for blob, modified in ray.get(futures):
        updated.append(pickle.loads(blob))
        fields.update(modified)
    operation = lance.LanceOperation.Update(updated_fragments=updated, fields_modified=sorted(fields))
    return commit(dataset, operation, message)
