"""Ray implementations of the curation passes: cluster assignment, rebalance, export reads.

Called by :mod:`curator.clusters`, :mod:`curator.rebalance` and :mod:`curator.export` when
the engine is ``ray`` (they connect Ray with :func:`curator.engine.ensure_ray`). Each
function has the contract of the local code it replaces and gives the same results:

- :func:`assign_all` (``cluster``): training stays on the driver (a sample); the pass
  over every row is one Ray task per fragment returning (row ids, nearest centroid,
  Σ cosine); the driver fills the cluster column, computes sizes and writes as before.
  Labels are the same per row: the task runs the same :func:`curator.clusters.top_centroids`.
- :func:`group_counts` and :func:`rebalance_write` (``rebalance``): rows per
  (modality, group) are per-fragment partial counts merged on the driver; decisions are
  a per-fragment map with the same ``blake2b(seed:id)`` rule, each task writing its
  fragment's ``rebalance_keep`` with ``fragment.update_columns``; one driver commit.
- :class:`RayRows` (``export``): the selection (DuckDB predicate) stays on the driver and
  so do the writes (``--out`` is a local folder); Ray tasks scan and filter the fragments'
  rows by row id, one task per slice of a fragment, and the driver receives the batches
  in the local order, so the files are the same bytes.

Workers open the dataset at the version the driver read; nothing is committed on error.
"""

from __future__ import annotations

import pickle
from collections import Counter
from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .store import SCAN_BATCH_ROWS, commit, vectors

SLICE_ROWS = 8 * SCAN_BATCH_ROWS  # rows of a fragment one export read task scans
PREFETCH = 4  # export read tasks in flight ahead of the writer


def _fragment(uri: str, version: int, fragment_id: int):
    import lance

    return lance.dataset(uri, version=version).get_fragment(fragment_id)


def _fragment_ids(dataset) -> list[int]:
    return [f.fragment_id for f in dataset.get_fragments()]


# -- cluster: the assignment pass -------------------------------------------------------

def _assign_fragment(uri: str, version: int, fragment_id: int, flt: str, C: np.ndarray):
    """Nearest centroid of each row of one fragment passing ``flt`` (a Ray task).

    Returns (row ids uint64, labels int32, Σ cosine as float64)."""
    from .clusters import top_centroids, unit_rows

    ids, labels, cos_sum = [], [], 0.0
    for batch in _fragment(uri, version, fragment_id).to_batches(
            columns=["embedding"], filter=flt, with_row_id=True, batch_size=SCAN_BATCH_ROWS):
        if batch.num_rows == 0:
            continue
        lab, cos = top_centroids(unit_rows(vectors(batch)), C, 1)
        ids.append(batch.column("_rowid").to_numpy())
        labels.append(lab[:, 0])
        cos_sum += float(cos.sum(dtype=np.float64))
    if not ids:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), 0.0
    return np.concatenate(ids), np.concatenate(labels), cos_sum


def assign_all(dataset, index, modality: str, C: np.ndarray, cluster_col: np.ndarray,
               quiet: bool = True) -> dict:
    """:func:`curator.clusters._assign_all` on Ray: one task per fragment; fills cluster_col.

    Returns {rows, mean_cosine (in [−1, 1], higher = tighter), inertia (n − Σ cos), sizes}."""
    import ray

    from .clusters import modality_filter

    k = len(C)
    counts = np.zeros(k, np.int64)
    cos_sum, n = 0.0, 0
    task = ray.remote(_assign_fragment)
    centroids = ray.put(np.ascontiguousarray(C, np.float32))
    flt = modality_filter(modality)
    futures = [task.remote(dataset.uri, dataset.version, f, flt, centroids)
               for f in _fragment_ids(dataset)]
    for ids, labels, part_sum in ray.get(futures):
        cluster_col[index.positions(ids)] = labels
        counts += np.bincount(labels, minlength=k)
        cos_sum += part_sum
        n += len(ids)
    return {"rows": n, "mean_cosine": cos_sum / max(n, 1), "inertia": n - cos_sum,
            "sizes": counts.tolist()}


# -- rebalance: partial group counts, then a map of decisions and writes ------------------

def _filtered_batches(fragment, columns: list[str], modality: str | None, with_row_id=False):
    for batch in fragment.to_batches(columns=columns, with_row_id=with_row_id,
                                     batch_size=SCAN_BATCH_ROWS * 4):
        if modality is not None:
            batch = batch.filter(pc.equal(batch.column("modality"), modality))
        if batch.num_rows:
            yield batch


def _count_fragment(uri: str, version: int, fragment_id: int, keyer, modality) -> Counter:
    """Rows per (modality, group) of one fragment (a Ray task); scalar columns only."""
    counts: Counter = Counter()
    columns = ["modality"] + ([keyer.by] if keyer.by != "modality" else [])
    for batch in _filtered_batches(_fragment(uri, version, fragment_id), columns, modality):
        counts.update(keyer.keys(batch))
    return counts


def group_counts(dataset, keyer, modality: str | None) -> Counter:
    """:func:`curator.rebalance._group_counts` on Ray: partial counts per fragment, merged."""
    import ray

    task = ray.remote(_count_fragment)
    keyer_ref = ray.put(keyer)
    counts: Counter = Counter()
    for part in ray.get([task.remote(dataset.uri, dataset.version, f, keyer_ref, modality)
                         for f in _fragment_ids(dataset)]):
        counts.update(part)
    return counts


def _decide_fragment(uri: str, version: int, fragment_id: int, keyer, counts: Counter,
                     cap: int, seed: int, modality: str | None):
    """Decide and write one fragment's ``rebalance_keep`` (a Ray task).

    Keep a row when ``uniform(seed, id) < min(1, cap / c)`` (c = rows of its group).
    Returns (pickled fragment metadata or None, modified fields, kept per group)."""
    from .rebalance import OUT_SCHEMA, uniforms

    fragment = _fragment(uri, version, fragment_id)
    columns = ["id", "modality"] + ([keyer.by] if keyer.by != "modality" else [])
    kept: Counter = Counter()
    parts = []
    for batch in _filtered_batches(fragment, columns, modality, with_row_id=True):
        keys = keyer.keys(batch)
        c = np.array([counts[k] for k in keys], np.float64)
        keep = uniforms(batch.column("id"), seed) < np.minimum(1.0, cap / c)
        kept.update(k for k, flag in zip(keys, keep) if flag)
        parts.append(pa.table([batch.column("_rowid"), pa.array(keep)], schema=OUT_SCHEMA))
    if not parts:
        return None, [], kept
    metadata, modified = fragment.update_columns(pa.concat_tables(parts), left_on="_rowid")
    return pickle.dumps(metadata), list(modified), kept


def rebalance_write(dataset, keyer, counts: Counter, cap: int, seed: int,
                    modality: str | None, message: str):
    """Decide every row and write ``rebalance_keep`` on Ray; one commit on the driver.

    Returns (new dataset, kept per (modality, group))."""
    import lance
    import ray

    task = ray.remote(_decide_fragment)
    keyer_ref, counts_ref = ray.put(keyer), ray.put(counts)
    futures = [task.remote(dataset.uri, dataset.version, f, keyer_ref, counts_ref, cap, seed,
                           modality) for f in _fragment_ids(dataset)]
    updated, fields, kept = [], set(), Counter()
    for blob, modified, part in ray.get(futures):
        kept.update(part)
        if blob is not None:
            updated.append(pickle.loads(blob))
            fields.update(modified)
    if not updated:
        return dataset, kept
    operation = lance.LanceOperation.Update(updated_fragments=updated, fields_modified=sorted(fields))
    return commit(dataset, operation, message), kept


# -- export: the reads of the selected rows -----------------------------------------------

def _read_slice(uri: str, version: int, fragment_id: int, offset: int, limit: int,
                rowids: np.ndarray, columns: list[str]):
    """The selected rows (sorted ``rowids``) of rows [offset, offset+limit) of one fragment,
    as (row ids, batch) per scan batch (a Ray task)."""
    out = []
    last = len(rowids) - 1
    for batch in _fragment(uri, version, fragment_id).to_batches(
            columns=columns, with_row_id=True, batch_size=SCAN_BATCH_ROWS,
            offset=offset, limit=limit):
        ids = batch.column("_rowid").to_numpy()
        hit = rowids[np.minimum(np.searchsorted(rowids, ids), last)] == ids
        if hit.all():
            out.append((ids, batch))
        elif hit.any():
            out.append((ids[hit], batch.filter(pa.array(hit))))
    return out


class RayRows:
    """A Lance dataset whose dense row-by-id reads (:func:`curator.export.rows_by_id`)
    run as Ray tasks; every other attribute is the dataset's own."""

    def __init__(self, dataset):
        self._dataset = dataset

    def __getattr__(self, name):
        return getattr(self._dataset, name)

    def rows_by_id(self, rowids: np.ndarray, columns: list[str]) -> Iterator[tuple[np.ndarray, pa.RecordBatch]]:
        """(row ids, batch) of the sorted ``rowids`` in row-id order, as the local scan
        yields them: fragment by fragment, slices of whole scan batches, ``PREFETCH``
        tasks ahead of the consumer."""
        import ray

        task = ray.remote(_read_slice)
        fragment_of = (rowids >> np.uint64(32)).astype(np.int64)
        jobs = []
        for fragment in self._dataset.get_fragments():
            fid = fragment.fragment_id
            lo, hi = np.searchsorted(fragment_of, [fid, fid + 1])
            if lo == hi:
                continue
            wanted = ray.put(rowids[lo:hi])
            total = fragment.count_rows()
            for offset in range(0, total, SLICE_ROWS):
                jobs.append((fid, offset, min(SLICE_ROWS, total - offset), wanted))
        pending = []
        for fid, offset, limit, wanted in jobs:
            pending.append(task.remote(self._dataset.uri, self._dataset.version, fid, offset,
                                       limit, wanted, columns))
            if len(pending) > PREFETCH:
                yield from ray.get(pending.pop(0))
        for ref in pending:
            yield from ray.get(ref)


# -- dedupe: partition map, per-partition exact search -------------------------------------

def _partition_fragment(uri: str, version: int, fragment_id: int, flt: str, plan, groups: int):
    """Assign one fragment's rows to their usable partitions (a Ray task, ``groups`` returns).

    Return g holds (partition, row id, is-home, unit vector) of the visits whose partition
    is ≡ g (mod groups), in scan order."""
    from .clusters import unit_rows

    parts = []
    for batch in _fragment(uri, version, fragment_id).to_batches(
            columns=["embedding"], filter=flt, with_row_id=True, batch_size=SCAN_BATCH_ROWS):
        if batch.num_rows == 0:
            continue
        U = unit_rows(vectors(batch))
        ids = batch.column("_rowid").to_numpy().astype(np.int64)
        labels, usable = plan.assign(U)
        r, slot = np.nonzero(usable)
        parts.append((labels[r, slot].astype(np.int64), ids[r], slot == 0, U[r]))
    dim = plan.centroids.shape[1]
    if parts:
        part, ids, home, U = (np.concatenate([p[k] for p in parts]) for k in range(4))
    else:
        part, ids, home = np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
        U = np.zeros((0, dim), np.float32)
    out = []
    for g in range(groups):
        sel = np.flatnonzero(part % groups == g)
        out.append((part[sel], ids[sel], home[sel], U[sel]))
    return out[0] if groups == 1 else tuple(out)


def _search_group(thr: float, *pieces):
    """Exact pairs within each partition of a group (a Ray task): [(c, i, j, cos)] with
    i, j row ids; the pieces come fragment by fragment, so rows keep the scan order."""
    from .dedupe import partition_pairs

    part = np.concatenate([p[0] for p in pieces])
    ids = np.concatenate([p[1] for p in pieces])
    home = np.concatenate([p[2] for p in pieces])
    U = np.concatenate([p[3] for p in pieces])
    order = np.argsort(part, kind="stable")
    part, ids, home, U = part[order], ids[order], home[order], U[order]
    starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]]) if len(part) else np.zeros(0, int)
    ends = np.r_[starts[1:], len(part)]
    out = []
    for s, e in zip(starts.tolist(), ends.tolist()):
        h = home[s:e]
        if h.any():
            Uc, ic = U[s:e], ids[s:e]
            out.append((int(part[s]), *partition_pairs(Uc[h], ic[h], Uc[~h], ic[~h], thr)))
    return out, len(part)


def stream_pairs(dataset, positions_of, rowids: np.ndarray, modality: str, eps: float, *,
                 seed: int = 0, probes: int | None = None, partitions: int | None = None,
                 quiet: bool = True):
    """:func:`curator.dedupe.stream_pairs` on Ray: the same pairs and info.

    A modality of at most ``dedupe.IN_MEMORY_ROWS`` rows is searched on the driver (the
    local code). Above, the partition plan is trained on the driver (the same seeded
    sample), the partition step is one Ray task per fragment, and the exact search one
    task per group of partitions (partition c in group c mod G); pairs are merged on the
    driver in partition order, as the local spill does."""
    import importlib

    import ray

    from .clusters import modality_filter, take_vectors, unit_rows

    local = importlib.import_module("curator.dedupe")  # `curator.dedupe` is also the command
    probes = local.DEFAULT_PROBES if probes is None else probes
    n = len(rowids)
    if n <= local.IN_MEMORY_ROWS:
        return local.stream_pairs(dataset, positions_of, rowids, modality, eps, seed=seed,
                                  probes=probes, partitions=partitions, quiet=quiet)
    k = partitions or local.auto_partitions(n)
    rng = np.random.default_rng(seed)
    size = min(n, max(20_000, 40 * k))
    sample = np.sort(rng.choice(rowids, size, replace=False))
    plan = local.PartitionPlan.train(unit_rows(take_vectors(dataset, sample)), k, eps,
                                     probes=probes, seed=seed)
    cpus = int(ray.cluster_resources().get("CPU", 1))
    groups = max(1, min(plan.k, 2 * cpus))
    assign = ray.remote(_partition_fragment).options(num_returns=groups)
    plan_ref = ray.put(plan)
    flt = modality_filter(modality)
    outputs = [assign.remote(dataset.uri, dataset.version, f, flt, plan_ref, groups)
               for f in _fragment_ids(dataset)]
    if groups == 1:
        outputs = [[o] for o in outputs]
    search = ray.remote(_search_group)
    thr = local.threshold(eps)
    found = ray.get([search.remote(thr, *[o[g] for o in outputs]) for g in range(groups)])
    per_partition = sorted((r for results, _ in found for r in results), key=lambda r: r[0])
    visits = sum(v for _, v in found)
    i, j, c = local._concat([r[1:] for r in per_partition])
    i = positions_of(i.astype(np.uint64)) if len(i) else i
    j = positions_of(j.astype(np.uint64)) if len(j) else j
    i, j, c = local._sorted_unique(i, j, c)
    return (i, j, c), {"partitions": plan.k, "probes": plan.probes,
                       "visits_per_row": round(visits / max(n, 1), 3)}
