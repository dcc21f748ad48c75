"""Concepts: spherical k-means on unit vectors, per modality, with stored centroids.

``cluster`` trains k centroids per modality on a seeded sample of the unit vectors
(:mod:`curator.geometry.kmeans`: k-means++ seeding, Lloyd iterations on cosine, empty
clusters re-seeded), assigns every row to its nearest centroid (highest cosine) in one
streaming pass, and writes the ``cluster`` (int32, 0..k−1 within the modality) and
``cluster_size`` (int64, rows of the modality in that cluster: the concept's frequency;
high = common concept) columns by Lance data evolution in one commit. Centroids are
stored, versioned (:mod:`curator.store.centroids`). Rows ingested later are assigned to
the latest stored centroids of their modality on arrival (:func:`assign_new_rows`).

Memory is set by a fragment, not the table: the training sample is chosen by ordinal
within its modality from a scan of the ``modality`` column; the assignment pass spills
each row's label to Parquet by fragment; one write task per fragment then reads its
labels back, looks each row's size up in the (modality × k) counts and writes both
columns. No per-row array of the whole table is held.

The products (the Lloyd assignments and the assignment pass, one GEMM each) run on the
``device`` (:mod:`curator.geometry.backend`: numpy on the CPU, or torch on a GPU); the
per-piece function receives the device's name, so a Ray task rebuilds the same backend.
"""

from __future__ import annotations

import glob
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .. import progress as progress_mod
from ..engine.executor import RAY, executor, resolve_engine
from ..engine.fragments import Piece, pieces, scan
from ..engine.rows import take_vectors
from ..engine.spill import ScalarSpill
from ..errors import BadInput
from ..geometry.backend import get_backend, resolve_device
from ..geometry.kmeans import spherical_kmeans, unit_rows
from ..store.arrow import vectors
from ..store.centroids import CentroidStore
from ..store.columns import commit_updates, update_fragment
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
    present = modality_rows(dataset)
    mods = chosen_modalities(sorted(present), modality)
    for m in mods:
        if present[m] < k:
            raise BadInput(f"modality {m!r} has {present[m]} rows, fewer than k={k}")

    reports, centroids, counts = {}, {}, {}
    with ScalarSpill(LABELS) as spill:
        for m in mods:
            limit = DEFAULT_SAMPLE if sample is None else sample
            rng = np.random.default_rng(seed)
            # The same draw as choosing among the modality's row positions in row-id order.
            chosen = np.sort(rng.choice(present[m], size=min(limit, present[m]), replace=False))
            if len(chosen) < k:
                raise BadInput(f"--sample {len(chosen)} is smaller than k={k}")
            t0 = time.time()
            U = unit_rows(take_vectors(dataset, ordinal_rowids(dataset, m, chosen)), copy=False)
            t_read = time.time()
            C, _ = spherical_kmeans(U, k, seed=seed, iterations=iterations, backend=backend)
            del U
            centroids[m] = {"centroids": C, "seed": seed, "table_version": dataset.version}
            reports[m] = {"trained_on": len(chosen), "read_seconds": round(t_read - t0, 3),
                          "train_seconds": round(time.time() - t_read, 3)}
        t1 = time.time()
        stats = assign_all(dataset, {m: centroids[m]["centroids"] for m in mods}, spill, quiet=quiet,
                           engine=engine, device=device, total=sum(present[m] for m in mods),
                           flt=None if set(mods) == set(present) else modalities_filter(mods))
        assigned, rows = time.time() - t1, max(sum(stats[m]["rows"] for m in mods), 1)
        for m in mods:  # one pass assigns every modality: its time is split by rows
            counts[m] = np.asarray(stats[m]["sizes"], np.int64)
            reports[m] = {**stats[m], **reports[m],
                          "assign_seconds": round(assigned * stats[m]["rows"] / rows, 3)}

        store = CentroidStore(database, table)
        version = store.latest_version() + 1
        new = write_labels(dataset, spill, counts, relabel=True,
                           message=f"curator cluster k={k} centroids v{version}", engine=engine)
    store.append(version, centroids)
    return ClusterResult(table, k, version, dataset.version, new.version, seed, iterations,
                         reports, time.time() - started, device)


def piece_labels(piece: Piece, flt: str | None, centroids: dict[str, np.ndarray], device: str = "cpu"):
    """The pass's per-piece function: nearest centroid of each row of ``piece`` passing
    ``flt`` whose modality has centroids (``centroids``: modality → k × d), among that
    modality's centroids, on the backend of ``device`` (a resolved name).
    Returns (row ids uint64, labels int32, modality index int8 into the sorted names,
    Σ cosine per modality as float64)."""
    backend = get_backend(device)
    names = sorted(centroids)
    ids, labels, codes = [], [], []
    cos_sum = np.zeros(len(names))
    for batch in piece.batches(["embedding", "modality"], filter=flt, with_row_id=True):
        X = vectors(batch)
        label = np.full(len(X), -1, np.int32)
        code = np.full(len(X), -1, np.int8)
        for i, m in enumerate(names):
            at = is_value(batch.column("modality"), m)
            if not at.any():
                continue
            lab, cos = backend.top_centroids(X if at.all() else X[at], centroids[m], 1, unit=False)
            label[at], code[at] = lab[:, 0], i
            cos_sum[i] += float(cos.sum(dtype=np.float64))
        mine = code >= 0  # a row of another modality (or none) keeps its value
        ids.append(batch.column("_rowid").to_numpy()[mine])
        labels.append(label[mine])
        codes.append(code[mine])
    if not ids:
        return np.zeros(0, np.uint64), np.zeros(0, np.int32), np.zeros(0, np.int8), cos_sum
    return np.concatenate(ids), np.concatenate(labels), np.concatenate(codes), cos_sum


def assign_all(dataset, centroids: dict[str, np.ndarray], spill: ScalarSpill, *,
               flt: str | None = None, quiet: bool = True, engine: str | None = None,
               device: str = "cpu", total: int | None = None) -> dict[str, dict]:
    """Nearest centroid of every row passing ``flt`` (None: every row) whose modality is
    one of ``centroids``, among that modality's centroids: one streaming pass over
    the vectors for all modalities, one task per piece, on the backend of ``device``.
    The (row id, label) of each row go to ``spill``, one part name per fragment
    (:func:`fragment_part`).

    Returns, per modality: {rows, mean_cosine (in [−1, 1], higher = tighter), inertia
    (n − Σ cos), sizes (rows per label)}.
    """
    names = sorted(centroids)
    counts = [np.zeros(len(centroids[m]), np.int64) for m in names]
    cos_sum = np.zeros(len(names))
    run = executor(engine)
    shared = run.put({m: np.ascontiguousarray(C, np.float32) for m, C in centroids.items()})
    bar = progress_mod.bar(f"assign {', '.join(names)}", total or 0, quiet=quiet)
    try:
        jobs = [(p, flt, shared, device) for p in pieces(dataset)]
        for ids, labels, codes, part_sum in run.map(piece_labels, jobs):
            fragment = ids >> np.uint64(32)
            for f in np.unique(fragment):
                at = fragment == f
                spill.add(pa.table({"_rowid": pa.array(ids[at], pa.uint64()),
                                    "cluster": pa.array(labels[at], pa.int32())}),
                          fragment_part(int(f)))
            for i in range(len(names)):
                counts[i] += np.bincount(labels[codes == i], minlength=len(counts[i]))
            cos_sum += part_sum
            bar.advance(len(ids))
    finally:
        bar.close()
    out = {}
    for i, m in enumerate(names):
        n = int(counts[i].sum())
        out[m] = {"rows": n, "mean_cosine": float(cos_sum[i]) / max(n, 1), "inertia": n - float(cos_sum[i]),
                  "sizes": counts[i].tolist()}
    return out


# -- new rows on arrival -----------------------------------------------------------------

def assign_new_rows(database: Database, table: str, dataset, *, engine: str | None = None,
                    device: str = "cpu"):
    """Assign rows whose ``cluster`` is null to the latest stored centroids of their modality
    (on the backend of ``device``, a name :func:`~curator.geometry.backend.resolve_device`
    accepts).

    Also rewrites ``cluster_size`` of every row of the affected modalities so it equals the
    current count of its cluster; one commit, one task per fragment, memory of a fragment.
    Returns the dataset unchanged when no centroids are stored or no unassigned row has a
    clustered modality.
    """
    stored = CentroidStore(database, table).latest()
    if not stored or "cluster" not in dataset.schema.names:
        return dataset
    counts, unassigned = _label_counts(dataset, {m: len(stored[m][1]) for m in stored})
    affected = sorted(m for m in stored if unassigned.get(m, 0))
    if not affected:
        return dataset
    device = resolve_device(device)
    with ScalarSpill(LABELS) as spill:
        stats = assign_all(dataset, {m: stored[m][1] for m in affected}, spill, engine=engine, device=device,
                           flt=f"({modalities_filter(affected)}) AND cluster IS NULL",
                           total=sum(unassigned[m] for m in affected))
        for m in affected:
            counts[m] = counts[m] + np.asarray(stats[m]["sizes"], np.int64)
        return write_labels(dataset, spill, {m: counts[m] for m in affected}, relabel=False,
                            message=f"curator assign clusters ({', '.join(affected)})",
                            engine=engine)


# -- streaming helpers -------------------------------------------------------------------

LABELS = pa.schema([("_rowid", pa.uint64()), ("cluster", pa.int32())])


def fragment_part(fragment_id: int) -> str:
    """The spill part name of one fragment's labels."""
    return f"fragment{fragment_id}"


def modality_rows(dataset) -> dict[str, int]:
    """Rows per modality (one scan of the ``modality`` column)."""
    import pyarrow.compute as pc

    out: dict[str, int] = {}
    for batch in scan(dataset, ["modality"]).to_batches():
        for item in pc.value_counts(batch.column("modality")).to_pylist():
            if item["values"] is not None:
                out[item["values"]] = out.get(item["values"], 0) + item["counts"]
    return out


def ordinal_rowids(dataset, modality: str, ordinals: np.ndarray) -> np.ndarray:
    """Row ids of the rows of ``modality`` at the sorted ``ordinals`` (0 = its first row in
    row-id order); one scan of the ``modality`` column, memory of a batch plus the result."""
    out = np.empty(len(ordinals), np.uint64)
    seen, done = 0, 0
    for fragment in sorted(dataset.get_fragments(), key=lambda f: f.fragment_id):
        for batch in fragment.to_batches(columns=["modality"], with_row_id=True):
            if done == len(ordinals):
                return out
            mine = np.flatnonzero(is_value(batch.column("modality"), modality))
            hi = np.searchsorted(ordinals, seen + len(mine), "left")
            if hi > done:
                ids = batch.column("_rowid").to_numpy()
                out[done:hi] = ids[mine[ordinals[done:hi] - seen]]
                done = hi
            seen += len(mine)
    return out[:done]


def is_value(column, value: str) -> np.ndarray:
    """Boolean numpy mask of ``column == value`` (nulls false)."""
    import pyarrow.compute as pc

    return pc.fill_null(pc.equal(column, value), False).to_numpy(zero_copy_only=False)


def _label_counts(dataset, ks: dict[str, int]) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Per modality of ``ks`` (name → k): rows per stored label, and rows with no label."""
    counts = {m: np.zeros(k, np.int64) for m, k in ks.items()}
    unassigned = dict.fromkeys(ks, 0)
    for batch in scan(dataset, ["modality", "cluster"]).to_batches():
        labels = batch.column("cluster").fill_null(-1).to_numpy(zero_copy_only=False)
        for m in ks:
            at = is_value(batch.column("modality"), m)
            if at.any():
                lab = labels[at]
                unassigned[m] += int((lab < 0).sum())
                lab = lab[(lab >= 0) & (lab < ks[m])]
                counts[m] += np.bincount(lab, minlength=ks[m])[:ks[m]]
    return counts, unassigned


def write_labels(dataset, spill: ScalarSpill, counts: dict[str, np.ndarray], *, relabel: bool,
                 message: str, engine: str | None = None):
    """Write ``cluster`` (the spilled label, else the stored one) and ``cluster_size`` (its
    count in ``counts``) of every row of the modalities in ``counts``, one task per
    fragment, one commit. ``relabel``: every such row has a spilled label (a new
    clustering); else rows without one keep theirs (new rows assigned on arrival)."""
    import pyarrow.parquet as pq

    names = sorted(counts)
    width = max(len(c) for c in counts.values())
    sizes = np.full((len(names), width), -1, np.int64)
    for i, m in enumerate(names):
        sizes[i, :len(counts[m])] = counts[m]
    run = executor(engine)
    shared = run.put((names, sizes, relabel))

    def jobs():
        for fragment in dataset.get_fragments():
            files = sorted(glob.glob(spill.glob(fragment_part(fragment.fragment_id))))
            labels = pa.concat_tables([pq.read_table(f) for f in files]) if files else None
            if labels is None and relabel:
                continue
            yield fragment, labels, shared

    return commit_updates(dataset, run.map(label_fragment, jobs()), message)


def label_fragment(fragment, labels: pa.Table | None, shared):
    """One fragment's part of :func:`write_labels` (a module-level function for Ray)."""
    names, sizes, relabel = shared
    columns = ["modality"] if relabel else ["modality", "cluster"]
    table = fragment.to_table(columns=columns, with_row_id=True)
    code = np.full(table.num_rows, -1, np.int64)
    for i, m in enumerate(names):
        code[is_value(table.column("modality"), m)] = i
    keep = np.flatnonzero(code >= 0)
    if not len(keep):
        return None, []
    rowid = table.column("_rowid").to_numpy()[keep]
    label = (np.full(len(keep), -1, np.int64) if relabel
             else table.column("cluster").fill_null(-1).to_numpy(zero_copy_only=False)[keep].astype(np.int64))
    if labels is not None and labels.num_rows:
        new_ids = labels.column("_rowid").to_numpy()
        order = np.argsort(new_ids)
        at = np.searchsorted(new_ids[order], rowid)
        at = np.minimum(at, len(new_ids) - 1)
        hit = new_ids[order][at] == rowid
        label[hit] = labels.column("cluster").to_numpy()[order][at[hit]]
    code = code[keep]
    valid = (label >= 0) & (label < sizes.shape[1])
    size = np.where(valid, sizes[code, np.where(valid, label, 0)], -1)
    out = pa.table({"_rowid": pa.array(rowid, pa.uint64()),
                    "cluster": pa.array(label.astype(np.int32), pa.int32(), mask=label < 0),
                    "cluster_size": pa.array(size, pa.int64(), mask=size < 0)})
    return update_fragment(fragment, out)


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


def modalities_filter(modalities) -> str:
    """A Lance filter: the row's modality is one of ``modalities``."""
    return "(" + " OR ".join(modality_filter(m) for m in sorted(modalities)) + ")"
