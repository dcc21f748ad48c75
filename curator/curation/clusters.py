"""Concepts: spherical k-means on unit vectors, per modality, with stored centroids.

``cluster`` trains k centroids per modality on a seeded sample of the unit vectors
(:mod:`curator.geometry.kmeans`: k-means++ seeding, Lloyd iterations on cosine, empty
clusters re-seeded), assigns every row to its nearest centroid (highest cosine) in one
streaming pass, and writes the ``cluster`` (int32, 0..k−1 within the modality) and
``cluster_size`` (int64, rows of the modality in that cluster: the concept's frequency;
high = common concept) columns by Lance data evolution in one commit. Centroids are
stored, versioned (:mod:`curator.store.centroids`). Rows ingested later are assigned to
the latest stored centroids of their modality on arrival (:func:`assign_new_rows`).

The products (the Lloyd assignments and the assignment pass, one GEMM each) run on the
``device`` (:mod:`curator.geometry.backend`: numpy on the CPU, or torch on a GPU); the
per-piece function receives the device's name, so a Ray task rebuilds the same backend.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .. import progress as progress_mod
from ..engine.executor import RAY, executor, resolve_engine
from ..engine.fragments import Piece, pieces
from ..engine.index import RowIndex, read_index
from ..engine.rows import take_vectors
from ..engine.writes import write_columns
from ..errors import BadInput
from ..geometry.backend import get_backend, resolve_device
from ..geometry.kmeans import spherical_kmeans, unit_rows
from ..store.arrow import vectors
from ..store.centroids import CentroidStore
from ..store.database import Database
from ..store.versions import curation_step

DEFAULT_SAMPLE = 200_000


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
    device: str = "cpu"

    def to_dict(self) -> dict:
        return {"table": self.table, "k": self.k, "centroid_version": self.centroid_version,
                "table_version_read": self.table_version_read, "table_version": self.table_version,
                "seed": self.seed, "iterations": self.iterations, "modalities": self.modalities,
                "device": self.device, "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        lines = [(f"clustered {self.table!r} v{self.table_version_read} → v{self.table_version} "
                  f"(centroids v{self.centroid_version}, k={self.k}, seed {self.seed}) "
                  f"in {self.seconds:.1f} s on {self.device}")]
        for m, r in self.modalities.items():
            sizes = r["sizes"]
            lines.append(f"  {m}: {r['rows']} rows, trained on {r['trained_on']}, mean cos to "
                         f"centroid {r['mean_cosine']:.4f}, inertia {r['inertia']:.1f}, sizes "
                         f"min {min(sizes)} / median {int(np.median(sizes))} / max {max(sizes)}")
        return "\n".join(lines)



@curation_step
def cluster(*, db=None, table: str = "embeddings", k: int, modality: str | None = None,
            seed: int = 0, sample: int | None = None, iterations: int = 25,
            device: str = "auto", quiet: bool = True, engine: str | None = None
            ) -> ClusterResult:
    """Spherical k-means concepts per modality; writes ``cluster`` and ``cluster_size``.

    Trains on a seeded sample of ``sample`` rows per modality (default: all rows up
    to 200,000; :func:`~curator.geometry.kmeans.spherical_kmeans` says when its Lloyd
    iterations stop), assigns every row to its nearest centroid in one streaming pass,
    stores the centroids as a new version and writes both columns in one commit.
    ``engine`` ``ray`` runs the assignment pass as Ray tasks (same labels). ``device``:
    ``auto`` (a CUDA GPU when torch sees one, else numpy), ``cpu`` (numpy), ``cuda[:N]``
    or ``torch-cpu``; labels agree across devices up to float32 rounding of near ties.
    """
    started = time.time()
    if k is None or k < 1:
        raise BadInput("--k must be at least 1")
    if iterations < 1:
        raise BadInput("--iterations must be at least 1")
    if sample is not None and sample < 1:
        raise BadInput("--sample must be at least 1")
    device = pass_device(device, engine)
    backend = get_backend(device)
    database = Database(db)
    dataset = database.dataset(table)
    index = read_index(dataset, samples=False)
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
        limit = DEFAULT_SAMPLE if sample is None else sample
        rng = np.random.default_rng(seed)
        train_pos = np.sort(rng.choice(positions, size=min(limit, len(positions)), replace=False))
        if len(train_pos) < k:
            raise BadInput(f"--sample {len(train_pos)} is smaller than k={k}")
        t0 = time.time()
        U = unit_rows(take_vectors(dataset, index.rowid[train_pos]), copy=False)
        t_read = time.time()
        C, _ = spherical_kmeans(U, k, seed=seed, iterations=iterations, backend=backend)
        del U
        t1 = time.time()
        stats = assign_all(dataset, index, m, C, cluster_col, quiet=quiet, engine=engine,
                           device=device)
        centroids[m] = {"centroids": C, "seed": seed, "table_version": dataset.version}
        reports[m] = {**stats, "trained_on": len(train_pos),
                      "read_seconds": round(t_read - t0, 3), "train_seconds": round(t1 - t_read, 3),
                      "assign_seconds": round(time.time() - t1, 3)}

    store = CentroidStore(database, table)
    version = store.latest_version() + 1
    selected = cluster_col >= 0
    sizes = _sizes(index, cluster_col)
    new = write_cluster_columns(dataset, index.rowid, selected, cluster_col, sizes,
                                f"curator cluster k={k} centroids v{version}", engine=engine)
    store.append(version, centroids)
    return ClusterResult(table, k, version, dataset.version, new.version, seed, iterations,
                         reports, time.time() - started, device)


def piece_labels(piece: Piece, flt: str, C: np.ndarray, device: str = "cpu"):
    """The pass's per-piece function: nearest centroid of each row of ``piece`` passing
    ``flt``, on the backend of ``device`` (a resolved name). Returns (row ids uint64,
    labels int32, Σ cosine as float64)."""
    backend = get_backend(device)
    ids, labels, cos_sum = [], [], 0.0
    for batch in piece.batches(["embedding"], filter=flt, with_row_id=True):
        lab, cos = backend.top_centroids(vectors(batch), C, 1, unit=False)
        ids.append(batch.column("_rowid").to_numpy())
        labels.append(lab[:, 0])
        cos_sum += float(cos.sum(dtype=np.float64))
    if not ids:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), 0.0
    return np.concatenate(ids), np.concatenate(labels), cos_sum


def assign_all(dataset, index: RowIndex, modality: str, C: np.ndarray, cluster_col: np.ndarray,
               *, flt: str | None = None, quiet: bool = True, engine: str | None = None,
               device: str = "cpu") -> dict:
    """Nearest centroid of every row of ``modality`` (one streaming pass, one task per
    piece, on the backend of ``device``); fills ``cluster_col`` at the rows' index
    positions.

    Returns {rows, mean_cosine (in [−1, 1], higher = tighter), inertia (n − Σ cos), sizes}.
    """
    k = len(C)
    counts = np.zeros(k, np.int64)
    cos_sum, n = 0.0, 0
    run = executor(engine)
    centroids = run.put(np.ascontiguousarray(C, np.float32))
    flt = flt or modality_filter(modality)
    bar = progress_mod.bar(f"assign {modality}", int(index.rows_of(modality).sum()), quiet=quiet)
    try:
        jobs = [(p, flt, centroids, device) for p in pieces(dataset)]
        for ids, labels, part_sum in run.map(piece_labels, jobs):
            cluster_col[index.positions(ids)] = labels
            counts += np.bincount(labels, minlength=k)
            cos_sum += part_sum
            n += len(ids)
            bar.advance(len(ids))
    finally:
        bar.close()
    return {"rows": n, "mean_cosine": cos_sum / max(n, 1), "inertia": n - cos_sum,
            "sizes": counts.tolist()}


# -- new rows on arrival -----------------------------------------------------------------

def assign_new_rows(database: Database, table: str, dataset, *, engine: str | None = None,
                    device: str = "cpu"):
    """Assign rows whose ``cluster`` is null to the latest stored centroids of their modality
    (on the backend of ``device``, a name :func:`~curator.geometry.backend.resolve_device`
    accepts).

    Also rewrites ``cluster_size`` of every row of the affected modalities so it equals the
    current count of its cluster; one commit. Returns the dataset unchanged when no
    centroids are stored or no unassigned row has a clustered modality.
    """
    stored = CentroidStore(database, table).latest()
    if not stored:
        return dataset
    index = read_index(dataset, ["cluster"], samples=False)
    unassigned = index["cluster"] < 0
    affected = [m for m in stored if m in index.names and (unassigned & index.rows_of(m)).any()]
    if not affected:
        return dataset
    cluster_col = index["cluster"].copy()
    device = resolve_device(device)
    for m in affected:
        assign_all(dataset, index, m, stored[m][1], cluster_col,
                   flt=f"({modality_filter(m)}) AND cluster IS NULL", engine=engine, device=device)
    codes = [index.names.index(m) for m in affected]
    selected = np.isin(index.modality, codes) & (cluster_col >= 0)
    sizes = _sizes(index, cluster_col)
    return write_cluster_columns(dataset, index.rowid, selected, cluster_col, sizes,
                                 f"curator assign clusters ({', '.join(affected)})", engine=engine)


# -- helpers -----------------------------------------------------------------------------

def chosen_modalities(names: list[str], modality: str | None) -> list[str]:
    if modality is None:
        return sorted(names)
    if modality not in names:
        present = ", ".join(sorted(names)) or "none"
        raise BadInput(f"no rows of modality {modality!r} (present: {present})")
    return [modality]


def pass_device(device: str | None, engine: str | None) -> str:
    """The device a command's passes run on (:func:`~curator.geometry.backend.resolve_device`).

    Ray gives its tasks no GPU, so with the Ray engine ``auto`` means ``cpu`` and a CUDA
    device is refused (one line) before anything is read or written.
    """
    if resolve_engine(engine) != RAY:
        return resolve_device(device)
    name = (device or "auto").strip().lower()
    resolved = "cpu" if name == "auto" else resolve_device(name)
    if resolved.startswith("cuda"):
        raise BadInput(f"--device {name} with --engine ray: Ray tasks are given no GPU; "
                       "use --device cpu, or the local engine for the GPU")
    return resolved


def modality_filter(modality: str) -> str:
    return "modality = '" + modality.replace("'", "''") + "'"


def _sizes(index: RowIndex, cluster_col: np.ndarray) -> np.ndarray:
    """cluster_size of each row: rows of its modality in its cluster (−1 where unassigned)."""
    sizes = np.full(len(cluster_col), -1, np.int64)
    ok = cluster_col >= 0
    if not ok.any():
        return sizes
    key = index.modality[ok].astype(np.int64) * (int(cluster_col.max()) + 1) + cluster_col[ok]
    sizes[ok] = np.bincount(key)[key]  # counts per (modality, cluster): no sort of every row
    return sizes


def write_cluster_columns(dataset, rowids, selected, cluster_col, sizes, message: str, *,
                          engine: str | None = None):
    """Write ``cluster`` and ``cluster_size`` of the selected rows in one commit."""
    positions = np.flatnonzero(selected)
    return write_columns(dataset, rowids[positions], {
        "cluster": pa.array(cluster_col[positions].astype(np.int32), pa.int32()),
        "cluster_size": pa.array(sizes[positions], pa.int64()),
    }, message, engine=engine)

