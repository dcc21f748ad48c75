"""Near duplicates: groups of rows whose unit vectors have cosine ≥ 1 − ε, and which to keep.

Pairs are searched within a modality. Small inputs are compared exactly (blocked float32
matmul over all pairs). Larger ones are partitioned by spherical k-means
(:mod:`curator.geometry.neighbours`): every row lives in its nearest centroid's partition and also
probes its next ``probes − 1`` nearest partitions, but only those whose cosine is within
2·√(2ε) of its best one (two rows at cosine ≥ 1 − ε are within √(2ε) of each other, so a
partition farther than that cannot hold a partner of the row). Inside a partition the
search is exact: a block of rows against the partition's members, thresholded. The
database path streams: one scan assigns rows and spills their unit vectors, grouped by
partition, to a temporary file; then one partition at a time is read back and searched,
so memory is bounded by the largest partition plus a 64 MB spill buffer.

Groups are the connected components of the duplicate-pair graph. ``dup_group`` is the
smallest row id (``_rowid``) in the group (null for rows without a duplicate);
``is_duplicate`` is true for every member but the kept one, false for all other rows of
the modalities processed. Cosines are float32; a tolerance of 1e-6 makes exact
duplicates count even with ε = 0. The products (partition training and assignment, the
blocked search) run on the ``device`` (:mod:`curator.geometry.backend`); the per-piece
and per-partition functions receive the device's name, so a Ray task rebuilds the backend.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .. import progress as progress_mod
from ..engine.executor import executor
from ..engine.fragments import Piece, pieces
from ..engine.index import RowIndex, read_index
from ..engine.rows import take_vectors
from ..engine.writes import write_columns
from ..errors import BadInput
from ..geometry.backend import get_backend
from ..geometry.kmeans import unit_rows
from ..geometry.neighbours import (
    COS_TOL,
    DEFAULT_PROBES,
    PartitionPlan,
    auto_partitions,
    check_eps,
    components,
    concat_pairs,
    empty_pairs,
    near_duplicate_pairs,
    partition_pairs,
    sorted_unique,
    threshold,
)
from ..store.arrow import vectors
from ..store.database import Database
from ..store.versions import curation_step
from .clusters import chosen_modalities, modality_filter, pass_device

KEEP_POLICIES = ("least-conformity", "most-conformity", "best-alignment", "random")
IN_MEMORY_ROWS = 65_536  # at most this many rows of a modality: no spill file
_SPILL_BYTES = 64 << 20


# -- streaming search over a table -----------------------------------------------------

class _Spill:
    """Unit vectors grouped by partition in a temporary file, written in bounded chunks."""

    def __init__(self, folder: str, dim: int):
        self.path = os.path.join(folder, "spill.f32")
        self.file = open(self.path, "wb")  # noqa: SIM115 (closed by finish)
        self.dim = dim
        self.rows = 0
        self.pending, self.pending_bytes = [], 0
        self.segments: dict[int, list[tuple[int, int]]] = {}
        self.pos, self.home = [], []

    def add(self, part: np.ndarray, pos: np.ndarray, home: np.ndarray, U: np.ndarray) -> None:
        self.pending.append((part, pos, home, U))
        self.pending_bytes += U.nbytes
        if self.pending_bytes >= _SPILL_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        part = np.concatenate([p[0] for p in self.pending])
        pos = np.concatenate([p[1] for p in self.pending])
        home = np.concatenate([p[2] for p in self.pending])
        U = np.concatenate([p[3] for p in self.pending])
        self.pending, self.pending_bytes = [], 0
        order = np.argsort(part, kind="stable")
        part, pos, home = part[order], pos[order], home[order]
        np.ascontiguousarray(U[order]).tofile(self.file)
        starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
        ends = np.r_[starts[1:], len(part)]
        for s, e in zip(starts.tolist(), ends.tolist()):
            self.segments.setdefault(int(part[s]), []).append((self.rows + s, e - s))
        self.pos.append(pos)
        self.home.append(home)
        self.rows += len(part)

    def finish(self) -> None:
        self.flush()
        self.file.close()
        self.pos = np.concatenate(self.pos) if self.pos else np.zeros(0, np.int64)
        self.home = np.concatenate(self.home) if self.home else np.zeros(0, bool)

    def partition(self, c: int):
        """(unit vectors, positions, is-home flags) of partition c."""
        segs = self.segments.get(c, [])
        row_bytes = self.dim * 4
        chunks = []
        with open(self.path, "rb") as f:
            for off, cnt in segs:
                f.seek(off * row_bytes)
                chunks.append(np.fromfile(f, np.float32, count=cnt * self.dim))
        U = np.concatenate(chunks).reshape(-1, self.dim)
        idx = np.concatenate([np.arange(off, off + cnt) for off, cnt in segs])
        return U, self.pos[idx], self.home[idx]



def piece_units(piece: Piece, flt: str, plan: PartitionPlan | None, device: str = "cpu"):
    """The partition pass's per-piece function: the unit vectors of the piece's rows that
    pass ``flt``. Without a plan: (row ids, U). With one: each row once per usable
    partition, as (partition, row id, is-home, U), assigned on the backend of ``device``."""
    backend = get_backend(device)
    parts = []
    for batch in piece.batches(["embedding"], filter=flt, with_row_id=True):
        U = unit_rows(vectors(batch))
        ids = batch.column("_rowid").to_numpy()
        if plan is None:
            parts.append((ids, U))
            continue
        labels, usable = plan.assign(U, backend=backend)
        r, slot = np.nonzero(usable)
        parts.append((labels[r, slot].astype(np.int64), ids[r], slot == 0, U[r]))
    width = 2 if plan is None else 4
    if not parts:
        return None
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(width))


def search_partition(U: np.ndarray, pos: np.ndarray, home: np.ndarray, thr: float,
                     device: str = "cpu"):
    """The search pass's per-partition function: exact pairs (i, j, cos) among the home
    rows and between visiting and home rows of one partition, cosine ≥ thr, on the
    backend of ``device``."""
    return partition_pairs(U[home], pos[home], U[~home], pos[~home], thr,
                           backend=get_backend(device))


def stream_pairs(dataset, positions_of, rowids: np.ndarray, modality: str, eps: float, *,
                 seed: int = 0, probes: int = DEFAULT_PROBES, partitions: int | None = None,
                 quiet: bool = True, engine: str | None = None, device: str = "cpu"
                 ) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict]:
    """Near-duplicate pairs among the rows of ``modality`` (their sorted ``rowids``).

    ``positions_of(rowids)`` maps row ids to the caller's row numbers, which the pairs use.
    Returns ((i, j, cos), info) where info names the partitions and probes used. Up to
    ``IN_MEMORY_ROWS`` rows are searched in memory; above, one pass assigns rows to
    partitions and spills their unit vectors to a temporary file grouped by partition,
    then each partition is searched exactly (one task per partition), so memory is
    bounded by the largest partition plus a 64 MB spill buffer. The products run on the
    backend of ``device`` (a resolved name).
    """
    backend = get_backend(device)
    n = len(rowids)
    flt = modality_filter(modality)
    k = partitions or auto_partitions(n)
    run = executor(engine)
    if n <= IN_MEMORY_ROWS:
        found = [r for r in run.map(piece_units, [(p, flt, None, device) for p in pieces(dataset)])
                 if r is not None]
        if not found:
            return empty_pairs(), {"partitions": 0, "probes": 0}
        pos = positions_of(np.concatenate([ids for ids, _ in found]))
        U = np.concatenate([u for _, u in found])
        i, j, c = near_duplicate_pairs(U, eps, partitions=k, probes=probes, seed=seed, unit=True,
                                       backend=backend)
        return (pos[i], pos[j], c), {"partitions": k, "probes": probes if k > 1 else 1}

    rng = np.random.default_rng(seed)
    size = min(n, max(20_000, 40 * k))
    sample = np.sort(rng.choice(rowids, size, replace=False))
    plan = PartitionPlan.train(unit_rows(take_vectors(dataset, sample), copy=False), k, eps,
                               probes=probes, seed=seed, backend=backend)
    dim = dataset.schema.field("embedding").type.list_size
    thr = threshold(eps)
    with tempfile.TemporaryDirectory(prefix="curator-dedupe-") as folder:
        spill = _Spill(folder, dim)
        bar = progress_mod.bar(f"partition {modality}", n, quiet=quiet)
        shared = run.put(plan)
        for found in run.map(piece_units, [(p, flt, shared, device) for p in pieces(dataset)]):
            if found is not None:
                part, ids, home, U = found
                spill.add(part, positions_of(ids), home, U)
                bar.advance(int(home.sum()))
        bar.close()
        spill.finish()
        jobs = ((*spill.partition(c), thr, device) for c in range(plan.k) if c in spill.segments)
        bar = progress_mod.bar(f"search {modality}", len(spill.segments), quiet=quiet)
        parts = []
        for pairs in run.map(search_partition, jobs):
            parts.append(pairs)
            bar.advance()
        bar.close()
        visits = spill.rows
    i, j, c = sorted_unique(*concat_pairs(parts))
    return (i, j, c), {"partitions": plan.k, "probes": plan.probes,
                       "visits_per_row": round(visits / max(n, 1), 3)}


# -- the command -----------------------------------------------------------------------------

@dataclass
class DedupeResult:
    """What ``dedupe`` did per modality, and the table versions it read and wrote."""

    table: str
    eps: float
    keep: str
    seed: int
    table_version_read: int
    table_version: int
    modalities: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0
    device: str = "cpu"

    def to_dict(self) -> dict:
        return {"table": self.table, "eps": self.eps, "keep": self.keep, "seed": self.seed,
                "table_version_read": self.table_version_read, "table_version": self.table_version,
                "modalities": self.modalities, "device": self.device,
                "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        lines = [(f"deduped {self.table!r} v{self.table_version_read} → v{self.table_version} "
                  f"(cosine ≥ {1 - self.eps:g}, keep {self.keep}, seed {self.seed}) "
                  f"in {self.seconds:.1f} s on {self.device}")]
        for m, r in self.modalities.items():
            lines.append(f"  {m}: {r['rows']} rows, {r['pairs']} duplicate pairs "
                         f"({r['exact_pairs']} exact), {r['groups']} groups, "
                         f"{r['duplicates']} rows flagged is_duplicate")
        return "\n".join(lines)


@curation_step
def dedupe(*, db=None, table: str = "embeddings", eps: float, modality: str | None = None,
           keep: str = "least-conformity", seed: int = 0, device: str = "auto",
           quiet: bool = True, engine: str | None = None) -> DedupeResult:
    """Find near-duplicate groups (cosine ≥ 1 − eps) per modality; write ``dup_group`` and
    ``is_duplicate`` in one commit. ``keep`` picks the member that stays:
    least-conformity (the most specific), most-conformity, best-alignment (nulls last) or
    random (seeded); ties go to the smallest id. ``engine`` ``ray`` partitions and
    searches on Ray (same pairs). ``device``: ``auto`` (a CUDA GPU when torch sees one,
    else numpy), ``cpu`` (numpy), ``cuda[:N]`` or ``torch-cpu``; pairs agree across
    devices except those within float32 rounding (1e-5) of the threshold."""
    started = time.time()
    check_eps(eps)
    if keep not in KEEP_POLICIES:
        raise BadInput(f"--keep must be one of {', '.join(KEEP_POLICIES)}")
    device = pass_device(device, engine)
    database = Database(db)
    dataset = database.dataset(table)
    index = read_index(dataset, ["id", "conformity", "alignment"], samples=False)
    mods = chosen_modalities(index.names, modality)

    rowid = index.rowid
    n = len(rowid)
    group = np.full(n, -1, np.int64)
    flagged = np.zeros(n, bool)
    processed = np.zeros(n, bool)
    reports = {}
    for m in mods:
        rows_m = index.rows_of(m)
        processed |= rows_m
        (i, j, c), info = stream_pairs(dataset, index.positions, rowid[rows_m], m, eps,
                                       seed=seed, quiet=quiet, engine=engine, device=device)
        label = components(n, i, j) if len(i) else np.arange(n)
        members = np.unique(np.concatenate([i, j]))
        group[members] = rowid[label[members]].astype(np.int64)  # smallest rowid: rowid sorted
        kept = _keepers(index, members, label[members], keep, seed)
        flagged[members] = True
        flagged[kept] = False
        reports[m] = {"rows": int(rows_m.sum()), "pairs": len(i),
                      "exact_pairs": int((c >= 1 - COS_TOL).sum()),
                      "groups": len(kept), "duplicates": int(len(members) - len(kept)),
                      **info}
    new = _write(dataset, rowid, processed, group, flagged,
                 f"curator dedupe eps={eps} keep={keep} seed={seed}", engine)
    return DedupeResult(table, eps, keep, seed, dataset.version, new.version, reports,
                        time.time() - started, device)


def _keepers(index: RowIndex, members: np.ndarray, label: np.ndarray, keep: str, seed: int
             ) -> np.ndarray:
    """Position of the kept member of each group (policy, then smallest id)."""
    if len(members) == 0:
        return np.zeros(0, np.int64)
    take = pa.array(members)
    cols = {"group": pa.array(label, pa.int64()), "id": index["id"].take(take)}
    if keep == "random":
        cols["key"] = pa.array(np.random.default_rng(seed).random(len(members)))
        order = "ascending"
    else:
        name = "alignment" if keep == "best-alignment" else "conformity"
        if name not in index.columns:
            cols["key"] = pa.nulls(len(members), pa.float64())
        else:
            values = index[name][members].astype(np.float64)
            cols["key"] = pa.array(values, pa.float64(), mask=np.isnan(values))
        order = "ascending" if keep == "least-conformity" else "descending"
    cols["member"] = pa.array(members, pa.int64())
    table = pa.table(cols)
    sorted_t = table.sort_by([("group", "ascending", "at_end"), ("key", order, "at_end"),
                              ("id", "ascending", "at_end")])
    g = sorted_t.column("group").to_numpy()
    first = np.r_[True, g[1:] != g[:-1]]
    return sorted_t.column("member").to_numpy()[first]


def _write(dataset, rowid, processed, group, flagged, message: str, engine: str | None):
    positions = np.flatnonzero(processed)
    g = group[positions]
    return write_columns(dataset, rowid[positions], {
        "dup_group": pa.array(g, pa.int64(), mask=g < 0),
        "is_duplicate": pa.array(flagged[positions], pa.bool_()),
    }, message, engine=engine)

