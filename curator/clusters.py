"""Concepts: spherical k-means on unit vectors, per modality, with stored centroids.

``cluster`` trains k centroids per modality on a seeded sample of the unit vectors
(k-means++ seeding, Lloyd iterations on cosine, empty clusters re-seeded), assigns every
row to its nearest centroid (highest cosine) in one streaming pass, and writes the
``cluster`` (int32, 0..k−1 within the modality) and ``cluster_size`` (int64, rows of the
modality in that cluster: the concept's frequency; high = common concept) columns by
Lance data evolution in one commit. Centroids are stored, versioned, in the hidden table
``_curator_centroids_<table>`` (one row per (version, modality) holding the k × d
matrix; old versions are kept). Rows ingested later are assigned to the latest stored
centroids of their modality on arrival (:func:`assign_new_rows`).

The k-means pieces (:func:`spherical_kmeans`, :func:`top_centroids`) work on in-memory
matrices and are reused by ``dedupe`` to partition the vectors.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import distributed_curation
from . import progress as progress_mod
from .engine import RAY, ensure_ray, resolve_engine
from .errors import BadInput
from .stats import curation_step
from .store import HIDDEN_PREFIX, SCAN_BATCH_ROWS, STORAGE_VERSION, Database, vectors, write_columns

DEFAULT_SAMPLE = 200_000
_BLOCK = 8_192  # rows per matmul block
_INIT_ROUNDS = 64
_TOLERANCE = 1e-4  # k-means stops when at most this fraction of labels changed  # k-means++ draws at most ceil(k / 64) centres per round above k = 64


# -- in-memory spherical k-means ---------------------------------------------------------

def unit_rows(X: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (float32, a new array). Zero rows stay zero."""
    X = np.asarray(X, np.float32)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64)).astype(np.float32)
    norms[norms == 0] = 1.0
    return X / norms[:, None]


def top_centroids(U: np.ndarray, C: np.ndarray, p: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """The ``p`` highest-cosine centroids of each unit row, best first.

    Returns (labels (n, p) int32, cosines (n, p) float32); cosines in [−1, 1], higher =
    nearer. Works in blocks of rows, so the n × k score matrix is never held whole.
    """
    n, k = len(U), len(C)
    p = max(1, min(p, k))
    labels = np.empty((n, p), np.int32)
    cos = np.empty((n, p), np.float32)
    Ct = np.ascontiguousarray(C.T, dtype=np.float32)
    rows = np.arange(min(n, _BLOCK))[:, None]
    for a in range(0, n, _BLOCK):
        S = U[a:a + _BLOCK] @ Ct
        r = rows[:len(S), 0]
        for q in range(p):  # p argmax passes: far cheaper than argpartition for small p
            best = S.argmax(axis=1)
            labels[a:a + len(S), q] = best
            cos[a:a + len(S), q] = S[r, best]
            if q + 1 < p:
                S[r, best] = -np.inf
    return labels, cos


def kmeans_pp(U: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """Seeded k-means++ centres on unit rows (distance² = 2(1 − cos)).

    For k ≤ 64 this is exact k-means++; above, each round draws ceil(k/64) centres from
    the same D² distribution (one matmul per round), so seeding costs ≤ 64 passes. Above
    max(20,000, 50·k) rows, seeding draws from a seeded subset of that size.
    """
    n = len(U)
    if n > max(20_000, 50 * k):  # seeding on a seeded subset is as good and much cheaper
        U = U[np.sort(rng.choice(n, max(20_000, 50 * k), replace=False))]
        n = len(U)
    per_round = max(1, -(-k // _INIT_ROUNDS))
    chosen = [int(rng.integers(n))]
    best = np.full(n, -np.inf, np.float32)
    new = U[chosen]
    while len(chosen) < k:
        np.maximum(best, (U @ new.T).max(axis=1), out=best)
        weight = np.maximum(1.0 - best.astype(np.float64), 0.0)
        weight[chosen] = 0.0
        total = weight.sum()
        take = min(per_round, k - len(chosen))
        if total <= 0:  # fewer distinct directions than k: fill with unused rows
            rest = np.setdiff1d(np.arange(n), chosen)
            picks = rng.choice(rest, size=take, replace=False)
        else:
            nonzero = int((weight > 0).sum())
            picks = rng.choice(n, size=min(take, nonzero), replace=False, p=weight / total)
        chosen.extend(int(x) for x in picks)
        new = U[picks]
    return U[np.asarray(chosen[:k])].copy()


def spherical_kmeans(U: np.ndarray, k: int, *, seed: int = 0, iterations: int = 25
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Spherical k-means on unit rows ``U`` (n, d): returns (centroids (k, d) unit, labels).

    Lloyd iterations maximise Σ cos(x̂, c_label); a centroid is the normalised sum of its
    rows. An emptied cluster is re-seeded with the row farthest from its centroid (lowest
    cosine). Stops early when at most 0.01% of labels change. Deterministic for a seed.
    """
    n = len(U)
    if not 1 <= k <= n:
        raise BadInput(f"k must be between 1 and the number of rows ({n}), got {k}")
    rng = np.random.default_rng(seed)
    C = kmeans_pp(U, k, rng)
    labels = np.full(n, -1, np.int32)
    for _ in range(max(1, iterations)):
        new_labels, cos = top_centroids(U, C, 1)
        new_labels, cos = new_labels[:, 0], cos[:, 0]
        changed = (new_labels != labels).mean() > _TOLERANCE
        labels = new_labels
        sums = _cluster_sums(U, labels, k)
        empty = np.flatnonzero(~sums.any(axis=1))
        if len(empty):
            far = np.argsort(cos, kind="stable")[:len(empty)]
            sums[empty] = U[far]
            labels[far] = empty
            changed = True
        C = unit_rows(sums)
        if not changed:
            break
    return C, labels


def _cluster_sums(U: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    sums = np.zeros((k, U.shape[1]), np.float64)
    for a in range(0, len(U), 4 * _BLOCK):
        lab = labels[a:a + 4 * _BLOCK]
        order = np.argsort(lab, kind="stable")
        sorted_lab = lab[order]
        starts = np.flatnonzero(np.r_[True, sorted_lab[1:] != sorted_lab[:-1]])
        sums[sorted_lab[starts]] += np.add.reduceat(U[a:a + 4 * _BLOCK][order], starts, axis=0,
                                                    dtype=np.float64)
    return sums


# -- stored centroids --------------------------------------------------------------------

class CentroidStore:
    """``_curator_centroids_<table>``: one row per (version, modality) with the k × d matrix."""

    def __init__(self, database: Database, table: str):
        self.db, self.table = database, table
        self.name = f"{HIDDEN_PREFIX}centroids_{table}"

    def exists(self) -> bool:
        return self.db.has_table(self.name)

    def latest_version(self) -> int:
        if not self.exists():
            return 0
        t = self.db.dataset(self.name).to_table(columns=["version"])
        return int(max(t.column(0).to_pylist(), default=0))

    def append(self, version: int, rows: dict[str, dict]) -> None:
        import lance

        mods = sorted(rows)
        table = pa.table({
            "version": pa.array([version] * len(mods), pa.int64()),
            "modality": pa.array(mods, pa.string()),
            "k": pa.array([rows[m]["centroids"].shape[0] for m in mods], pa.int32()),
            "dim": pa.array([rows[m]["centroids"].shape[1] for m in mods], pa.int32()),
            "centroids": pa.array([rows[m]["centroids"].astype(np.float32).ravel() for m in mods],
                                  pa.list_(pa.float32())),
            "seed": pa.array([rows[m]["seed"] for m in mods], pa.int64()),
            "table_version": pa.array([rows[m]["table_version"] for m in mods], pa.int64()),
            "created": pa.array([time.time()] * len(mods), pa.float64()),
        })
        mode = "append" if self.exists() else "create"
        lance.write_dataset(table, self.db.table_uri(self.name), mode=mode,
                            data_storage_version=STORAGE_VERSION)

    def latest(self) -> dict[str, tuple[int, np.ndarray]]:
        """modality → (version, centroids (k, d) float32) of its most recent clustering."""
        if not self.exists():
            return {}
        t = self.db.dataset(self.name).to_table(columns=["version", "modality", "k", "dim",
                                                         "centroids"]).to_pydict()
        out = {}
        for i in range(len(t["version"])):
            m, v = t["modality"][i], t["version"][i]
            if m not in out or v > out[m][0]:
                C = np.asarray(t["centroids"][i], np.float32).reshape(t["k"][i], t["dim"][i])
                out[m] = (v, C)
        return out


# -- the command -----------------------------------------------------------------------

@dataclass
class ClusterResult:
    """What ``cluster`` did, per modality, and the table versions it read and wrote."""

    table: str
    k: int
    centroid_version: int
    table_version_read: int
    table_version: int
    seed: int
    iterations: int
    modalities: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"table": self.table, "k": self.k, "centroid_version": self.centroid_version,
                "table_version_read": self.table_version_read, "table_version": self.table_version,
                "seed": self.seed, "iterations": self.iterations, "modalities": self.modalities,
                "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        lines = [(f"clustered {self.table!r} v{self.table_version_read} → v{self.table_version} "
                  f"(centroids v{self.centroid_version}, k={self.k}, seed {self.seed}) "
                  f"in {self.seconds:.1f} s")]
        for m, r in self.modalities.items():
            sizes = r["sizes"]
            lines.append(f"  {m}: {r['rows']} rows, trained on {r['trained_on']}, mean cos to "
                         f"centroid {r['mean_cosine']:.4f}, inertia {r['inertia']:.1f}, sizes "
                         f"min {min(sizes)} / median {int(np.median(sizes))} / max {max(sizes)}")
        return "\n".join(lines)


@curation_step
def cluster(*, db=None, table: str = "embeddings", k: int, modality: str | None = None,
            seed: int = 0, sample_size: int | None = None, iterations: int = 25,
            quiet: bool = True, engine: str | None = None) -> ClusterResult:
    """Spherical k-means concepts per modality; writes ``cluster`` and ``cluster_size``.

    Trains on a seeded sample of ``sample_size`` rows per modality (default: all rows up
    to 200,000), assigns every row to its nearest centroid in one streaming pass, stores
    the centroids as a new version and writes both columns in one commit. ``engine``
    ``ray`` runs the assignment pass as one Ray task per fragment (same labels).
    """
    assign = _assign_all
    if resolve_engine(engine) == RAY:
        ensure_ray()
        assign = distributed_curation.assign_all
    started = time.time()
    if k is None or k < 1:
        raise BadInput("--k must be at least 1")
    if iterations < 1:
        raise BadInput("--iterations must be at least 1")
    if sample_size is not None and sample_size < 1:
        raise BadInput("--sample must be at least 1")
    database = Database(db)
    dataset = database.dataset(table)
    index = read_modalities(dataset)
    mods = chosen_modalities(index.names, modality)
    for m in mods:
        n_m = int((index.modality == index.names.index(m)).sum())
        if n_m < k:
            raise BadInput(f"modality {m!r} has {n_m} rows, fewer than k={k}")

    cluster_col = np.full(len(index.rowid), -1, np.int64)
    reports, centroids = {}, {}
    for m in mods:
        code = index.names.index(m)
        positions = np.flatnonzero(index.modality == code)
        limit = DEFAULT_SAMPLE if sample_size is None else sample_size
        rng = np.random.default_rng(seed)
        train_pos = np.sort(rng.choice(positions, size=min(limit, len(positions)), replace=False))
        if len(train_pos) < k:
            raise BadInput(f"--sample {len(train_pos)} is smaller than k={k}")
        t0 = time.time()
        C, _ = spherical_kmeans(unit_rows(take_vectors(dataset, index.rowid[train_pos])), k,
                                seed=seed, iterations=iterations)
        t1 = time.time()
        stats = assign(dataset, index, m, C, cluster_col, quiet)
        centroids[m] = {"centroids": C, "seed": seed, "table_version": dataset.version}
        reports[m] = {**stats, "trained_on": len(train_pos), "train_seconds": round(t1 - t0, 3),
                      "assign_seconds": round(time.time() - t1, 3)}

    store = CentroidStore(database, table)
    version = store.latest_version() + 1
    selected = cluster_col >= 0
    sizes = _sizes(index, cluster_col)
    new = write_cluster_columns(dataset, index.rowid, selected, cluster_col, sizes,
                                f"curator cluster k={k} centroids v{version}")
    store.append(version, centroids)
    return ClusterResult(table, k, version, dataset.version, new.version, seed, iterations,
                         reports, time.time() - started)


def _assign_all(dataset, index, modality, C, cluster_col, quiet) -> dict:
    """Nearest centroid of every row of ``modality`` (one streaming pass); fills cluster_col."""
    k = len(C)
    counts = np.zeros(k, np.int64)
    cos_sum, n = 0.0, 0
    code = index.names.index(modality)
    total = int((index.modality == code).sum())
    bar = progress_mod.bar(f"assign {modality}", total, quiet=quiet)
    try:
        for batch in dataset.to_batches(columns=["embedding"], filter=modality_filter(modality),
                                        with_row_id=True, batch_size=SCAN_BATCH_ROWS):
            U = unit_rows(vectors(batch))
            labels, cos = top_centroids(U, C, 1)
            pos = index.positions(batch.column("_rowid").to_numpy())
            cluster_col[pos] = labels[:, 0]
            counts += np.bincount(labels[:, 0], minlength=k)
            cos_sum += float(cos.sum(dtype=np.float64))
            n += len(U)
            bar.advance(len(U))
    finally:
        bar.close()
    return {"rows": n, "mean_cosine": cos_sum / max(n, 1), "inertia": n - cos_sum,
            "sizes": counts.tolist()}


# -- new rows on arrival -----------------------------------------------------------------

def assign_new_rows(database: Database, table: str, dataset):
    """Assign rows whose ``cluster`` is null to the latest stored centroids of their modality.

    Also rewrites ``cluster_size`` of every row of the affected modalities so it equals the
    current count of its cluster; one commit. Returns the dataset unchanged when no
    centroids are stored or no unassigned row has a clustered modality.
    """
    stored = CentroidStore(database, table).latest()
    if not stored:
        return dataset
    index = read_modalities(dataset, with_cluster=True)
    unassigned = index.cluster < 0
    affected = [m for m in stored if m in index.names
                and (unassigned & (index.modality == index.names.index(m))).any()]
    if not affected:
        return dataset
    cluster_col = index.cluster.copy()
    for m in affected:
        C = stored[m][1]
        flt = f"({modality_filter(m)}) AND cluster IS NULL"
        for batch in dataset.to_batches(columns=["embedding"], filter=flt, with_row_id=True,
                                        batch_size=SCAN_BATCH_ROWS):
            labels, _ = top_centroids(unit_rows(vectors(batch)), C, 1)
            cluster_col[index.positions(batch.column("_rowid").to_numpy())] = labels[:, 0]
    codes = [index.names.index(m) for m in affected]
    selected = np.isin(index.modality, codes) & (cluster_col >= 0)
    sizes = _sizes(index, cluster_col)
    return write_cluster_columns(dataset, index.rowid, selected, cluster_col, sizes,
                                 f"curator assign clusters ({', '.join(affected)})")


# -- shared helpers ----------------------------------------------------------------------

@dataclass
class ModalityIndex:
    """Row ids (sorted) with their modality codes (and stored cluster, −1 = null)."""

    rowid: np.ndarray
    modality: np.ndarray
    names: list[str]
    cluster: np.ndarray | None = None

    def positions(self, rowids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.rowid, rowids)


def read_modalities(dataset, with_cluster: bool = False) -> ModalityIndex:
    """One scalar scan: row ids sorted, modality codes (and the stored cluster column)."""
    columns = ["modality"] + (["cluster"] if with_cluster else [])
    t = dataset.to_table(columns=columns, with_row_id=True)
    rowid = t.column("_rowid").to_numpy()
    order = np.argsort(rowid, kind="stable")
    mod = t.column("modality").combine_chunks().dictionary_encode()
    index = ModalityIndex(rowid[order], mod.indices.to_numpy(zero_copy_only=False)[order].astype(np.int32),
                          [str(x) for x in mod.dictionary.to_pylist()])
    if with_cluster:
        c = pc.fill_null(t.column("cluster"), -1).to_numpy().astype(np.int64)
        index.cluster = c[order]
    return index


def take_vectors(dataset, rowids: np.ndarray) -> np.ndarray:
    """Vectors of the given sorted row ids, in that order (float32, (n, d))."""
    parts = []
    for a in range(0, len(rowids), SCAN_BATCH_ROWS):
        t = dataset._take_rows(rowids[a:a + SCAN_BATCH_ROWS].tolist(), columns=["embedding"])
        parts.append(np.array(vectors(t)))
    if not parts:
        dim = dataset.schema.field("embedding").type.list_size
        return np.zeros((0, dim), np.float32)
    return np.concatenate(parts)


def chosen_modalities(names: list[str], modality: str | None) -> list[str]:
    if modality is None:
        return sorted(names)
    if modality not in names:
        present = ", ".join(sorted(names)) or "none"
        raise BadInput(f"no rows of modality {modality!r} (present: {present})")
    return [modality]


def modality_filter(modality: str) -> str:
    return "modality = '" + modality.replace("'", "''") + "'"


def _sizes(index: ModalityIndex, cluster_col: np.ndarray) -> np.ndarray:
    """cluster_size of each row: rows of its modality in its cluster (−1 where unassigned)."""
    sizes = np.full(len(cluster_col), -1, np.int64)
    ok = cluster_col >= 0
    if not ok.any():
        return sizes
    key = index.modality[ok].astype(np.int64) * (int(cluster_col.max()) + 1) + cluster_col[ok]
    _, inverse, counts = np.unique(key, return_inverse=True, return_counts=True)
    sizes[ok] = counts[inverse]
    return sizes


def write_cluster_columns(dataset, rowids, selected, cluster_col, sizes, message: str):
    """Write ``cluster`` and ``cluster_size`` of the selected rows in one commit."""
    positions = np.flatnonzero(selected)
    return write_columns(dataset, rowids[positions], {
        "cluster": pa.array(cluster_col[positions].astype(np.int32), pa.int32()),
        "cluster_size": pa.array(sizes[positions], pa.int64()),
    }, message)
