"""Near duplicates: groups of rows whose unit vectors have cosine ≥ 1 − ε, and which to keep.

Pairs are searched within a modality. Small inputs are compared exactly (blocked float32
matmul over all pairs). Larger ones are partitioned by spherical k-means
(:mod:`curator.clusters`): every row lives in its nearest centroid's partition and also
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
duplicates count even with ε = 0.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import distributed_curation
from . import progress as progress_mod
from .clusters import (
    chosen_modalities,
    modality_filter,
    spherical_kmeans,
    take_vectors,
    top_centroids,
    unit_rows,
)
from .engine import RAY, ensure_ray, resolve_engine
from .errors import BadInput
from .stats import curation_step
from .store import SCAN_BATCH_ROWS, Database, vectors, write_columns

KEEP_POLICIES = ("least-conformity", "most-conformity", "best-alignment", "random")
COS_TOL = 1e-6
EXACT_ROWS = 8_192  # at most this many rows: compare all pairs, no partitioning
IN_MEMORY_ROWS = 65_536  # at most this many rows of a modality: no spill file
DEFAULT_PROBES = 2
_SPILL_BYTES = 64 << 20
_BLOCK_ELEMENTS = 16 << 20  # score-matrix block: rows × columns


# -- pair search on an in-memory matrix -------------------------------------------------

def near_duplicate_pairs(X: np.ndarray, eps: float, *, partitions: int | None = None,
                         probes: int = DEFAULT_PROBES, seed: int = 0, unit: bool = False
                         ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """All pairs (i < j) of rows of ``X`` with cos(x̂_i, x̂_j) ≥ 1 − eps.

    Returns (i, j, cos) arrays sorted by (i, j); cos in [1 − eps, 1]. ``partitions`` = 1
    compares all pairs exactly; otherwise (default: exact up to 8,192 rows, else about
    √(2n) partitions) k-means partitions with multi-probe are searched.
    """
    _check_eps(eps)
    U = np.ascontiguousarray(X, np.float32) if unit else unit_rows(X)
    n = len(U)
    k = partitions or auto_partitions(n)
    if k <= 1 or n <= 1:
        i, j, c = _block_pairs(U, np.arange(n), None, None, threshold(eps))
        return _sorted_unique(i, j, c)
    planner = PartitionPlan.train(U, k, eps, probes=probes, seed=seed)
    labels, keep = planner.assign(U)
    parts = []
    for c in range(planner.k):
        primary = np.flatnonzero(labels[:, 0] == c)
        if len(primary) == 0:
            continue
        secondary = np.flatnonzero(((labels[:, 1:] == c) & keep[:, 1:]).any(axis=1))
        parts.append(partition_pairs(U[primary], primary, U[secondary], secondary,
                                     threshold(eps)))
    return _sorted_unique(*_concat(parts))


def threshold(eps: float) -> float:
    return 1.0 - eps - COS_TOL


def auto_partitions(n: int) -> int:
    """Partitions for n rows: none up to 8,192 rows, else about √(2n) (≤ 4,096)."""
    if n <= EXACT_ROWS:
        return 1
    return int(min(4096, max(2, round(np.sqrt(2.0 * n)))))


@dataclass
class PartitionPlan:
    """k-means centroids that partition unit vectors, and which probes can hold partners."""

    centroids: np.ndarray
    probes: int
    margin: float

    @property
    def k(self) -> int:
        return len(self.centroids)

    @classmethod
    def train(cls, U: np.ndarray, k: int, eps: float, *, probes: int, seed: int) -> PartitionPlan:
        k = min(k, len(U))
        rng = np.random.default_rng(seed)
        size = min(len(U), max(20_000, 40 * k))
        sample = U if size == len(U) else U[np.sort(rng.choice(len(U), size, replace=False))]
        C, _ = spherical_kmeans(sample, k, seed=seed, iterations=8)
        return cls(C, max(1, min(probes, k)), 2.0 * np.sqrt(2.0 * (eps + COS_TOL)) + 1e-5)

    def assign(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels (n, p), usable (n, p)): the p nearest partitions; a probe is usable when
        its cosine is within the margin of the best (column 0 is the home partition)."""
        labels, cos = top_centroids(U, self.centroids, self.probes)
        usable = cos >= cos[:, :1] - self.margin
        return labels, usable


def partition_pairs(Up: np.ndarray, pos_p: np.ndarray, Uq: np.ndarray, pos_q: np.ndarray,
                    thr: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs within the home rows ``Up`` (each pair once) and between visiting rows ``Uq``
    and the home rows, with cosine ≥ thr; positions are the global row numbers."""
    i1, j1, c1 = _block_pairs(Up, pos_p, None, None, thr)
    if len(Uq) == 0:
        return i1, j1, c1
    i2, j2, c2 = _block_pairs(Uq, pos_q, Up, pos_p, thr)
    return np.concatenate([i1, i2]), np.concatenate([j1, j2]), np.concatenate([c1, c2])


def _block_pairs(A, pos_a, B, pos_b, thr):
    """Pairs of rows of A × B (or the upper triangle of A × A when B is None) above thr."""
    out_i, out_j, out_c = [], [], []
    same = B is None
    if same:
        B, pos_b = A, pos_a
    if len(A) == 0 or len(B) == 0:
        return _empty()
    rows = max(1, min(len(A), _BLOCK_ELEMENTS // max(1, len(B))))
    for a in range(0, len(A), rows):
        block = A[a:a + rows]
        start = a if same else 0  # triangle: columns from the block's first row on
        S = block @ B[start:].T
        r, c = np.nonzero(S >= thr)
        if same:
            upper = c + start > r + a
            r, c = r[upper], c[upper]
        if len(r):
            out_i.append(pos_a[a + r])
            out_j.append(pos_b[start + c])
            out_c.append(S[r, c])
    if not out_i:
        return _empty()
    return np.concatenate(out_i), np.concatenate(out_j), np.concatenate(out_c)


def _empty():
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _concat(parts):
    if not parts:
        return _empty()
    return (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]),
            np.concatenate([p[2] for p in parts]))


def _sorted_unique(i, j, c):
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    lo, hi = np.minimum(i, j), np.maximum(i, j)
    keep = lo != hi
    lo, hi, c = lo[keep], hi[keep], np.asarray(c, np.float32)[keep]
    order = np.lexsort((hi, lo))
    lo, hi, c = lo[order], hi[order], c[order]
    first = np.r_[True, (lo[1:] != lo[:-1]) | (hi[1:] != hi[:-1])] if len(lo) else np.zeros(0, bool)
    return lo[first], hi[first], np.minimum(c[first], 1.0)


def _check_eps(eps) -> None:
    if eps is None or not 0 <= eps < 1:
        raise BadInput(f"--eps must be in [0, 1) (near duplicates: cosine ≥ 1 − eps), got {eps}")


# -- connected components -----------------------------------------------------------------

def components(n: int, i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Component label (the smallest node of its component) of each of n nodes, given edges.

    Union-find by vectorised min-label hooking and pointer jumping."""
    labels = np.arange(n, dtype=np.int64)
    i, j = np.asarray(i, np.int64), np.asarray(j, np.int64)
    while len(i):
        li, lj = labels[i], labels[j]
        differ = li != lj
        if not differ.any():
            break
        i, j, li, lj = i[differ], j[differ], li[differ], lj[differ]
        np.minimum.at(labels, np.maximum(li, lj), np.minimum(li, lj))
        while True:
            jumped = labels[labels]
            if np.array_equal(jumped, labels):
                break
            labels = jumped
    return labels


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


def stream_pairs(dataset, positions_of, rowids: np.ndarray, modality: str, eps: float, *,
                 seed: int = 0, probes: int = DEFAULT_PROBES, partitions: int | None = None,
                 quiet: bool = True) -> tuple[tuple[np.ndarray, np.ndarray, np.ndarray], dict]:
    """Near-duplicate pairs among the rows of ``modality`` (their sorted ``rowids``).

    ``positions_of(rowids)`` maps row ids to the caller's row numbers, which the pairs use.
    Returns ((i, j, cos), info) where info names the partitions and probes used.
    """
    n = len(rowids)
    flt = modality_filter(modality)
    k = partitions or auto_partitions(n)
    if n <= IN_MEMORY_ROWS:
        U, pos = [], []
        for batch in dataset.to_batches(columns=["embedding"], filter=flt, with_row_id=True,
                                        batch_size=SCAN_BATCH_ROWS):
            U.append(unit_rows(vectors(batch)))
            pos.append(positions_of(batch.column("_rowid").to_numpy()))
        if not U:
            return _empty(), {"partitions": 0, "probes": 0}
        U, pos = np.concatenate(U), np.concatenate(pos)
        i, j, c = near_duplicate_pairs(U, eps, partitions=k, probes=probes, seed=seed, unit=True)
        return (pos[i], pos[j], c), {"partitions": k, "probes": probes if k > 1 else 1}

    rng = np.random.default_rng(seed)
    size = min(n, max(20_000, 40 * k))
    sample = np.sort(rng.choice(rowids, size, replace=False))
    plan = PartitionPlan.train(unit_rows(take_vectors(dataset, sample)), k, eps, probes=probes,
                               seed=seed)
    dim = dataset.schema.field("embedding").type.list_size
    with tempfile.TemporaryDirectory(prefix="curator-dedupe-") as folder:
        spill = _Spill(folder, dim)
        bar = progress_mod.bar(f"partition {modality}", n, quiet=quiet)
        for batch in dataset.to_batches(columns=["embedding"], filter=flt, with_row_id=True,
                                        batch_size=SCAN_BATCH_ROWS):
            U = unit_rows(vectors(batch))
            pos = positions_of(batch.column("_rowid").to_numpy())
            labels, usable = plan.assign(U)
            r, slot = np.nonzero(usable)
            spill.add(labels[r, slot], pos[r], slot == 0, U[r])
            bar.advance(len(U))
        bar.close()
        spill.finish()
        parts = []
        bar = progress_mod.bar(f"search {modality}", plan.k, quiet=quiet)
        for c in range(plan.k):
            if c in spill.segments:
                U, pos, home = spill.partition(c)
                if home.any():
                    parts.append(partition_pairs(U[home], pos[home], U[~home], pos[~home],
                                                 threshold(eps)))
            bar.advance()
        bar.close()
        visits = spill.rows
    i, j, c = _sorted_unique(*_concat(parts))
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

    def to_dict(self) -> dict:
        return {"table": self.table, "eps": self.eps, "keep": self.keep, "seed": self.seed,
                "table_version_read": self.table_version_read, "table_version": self.table_version,
                "modalities": self.modalities, "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        lines = [(f"deduped {self.table!r} v{self.table_version_read} → v{self.table_version} "
                  f"(cosine ≥ {1 - self.eps:g}, keep {self.keep}, seed {self.seed}) "
                  f"in {self.seconds:.1f} s")]
        for m, r in self.modalities.items():
            lines.append(f"  {m}: {r['rows']} rows, {r['pairs']} duplicate pairs "
                         f"({r['exact_pairs']} exact), {r['groups']} groups, "
                         f"{r['duplicates']} rows flagged is_duplicate")
        return "\n".join(lines)


@curation_step
def dedupe(*, db=None, table: str = "embeddings", eps: float, modality: str | None = None,
           keep: str = "least-conformity", seed: int = 0, quiet: bool = True,
           engine: str | None = None) -> DedupeResult:
    """Find near-duplicate groups (cosine ≥ 1 − eps) per modality; write ``dup_group`` and
    ``is_duplicate`` in one commit. ``keep`` picks the member that stays:
    least-conformity (the most specific), most-conformity, best-alignment (nulls last) or
    random (seeded); ties go to the smallest id. ``engine`` ``ray`` partitions and
    searches on Ray (same pairs)."""
    search = stream_pairs
    if resolve_engine(engine) == RAY:
        ensure_ray()
        search = distributed_curation.stream_pairs
    started = time.time()
    _check_eps(eps)
    if keep not in KEEP_POLICIES:
        raise BadInput(f"--keep must be one of {', '.join(KEEP_POLICIES)}")
    database = Database(db)
    dataset = database.dataset(table)
    index = _read_index(dataset)
    names = index["names"]
    mods = chosen_modalities(names, modality)

    rowid = index["rowid"]
    n = len(rowid)
    group = np.full(n, -1, np.int64)
    flagged = np.zeros(n, bool)
    processed = np.zeros(n, bool)
    reports = {}
    for m in mods:
        rows_m = index["modality"] == names.index(m)
        processed |= rows_m
        (i, j, c), info = search(dataset, lambda r: np.searchsorted(rowid, r), rowid[rows_m],
                                 m, eps, seed=seed, quiet=quiet)
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
                 f"curator dedupe eps={eps} keep={keep} seed={seed}")
    return DedupeResult(table, eps, keep, seed, dataset.version, new.version, reports,
                        time.time() - started)


def _read_index(dataset) -> dict:
    names = dataset.schema.names
    columns = ["id", "modality"] + [c for c in ("conformity", "alignment") if c in names]
    t = dataset.to_table(columns=columns, with_row_id=True)
    order = np.argsort(t.column("_rowid").to_numpy(), kind="stable")
    t = t.take(pa.array(order))
    mod = t.column("modality").combine_chunks().dictionary_encode()
    return {"rowid": t.column("_rowid").to_numpy(), "table": t,
            "modality": mod.indices.to_numpy(zero_copy_only=False).astype(np.int32),
            "names": [str(x) for x in mod.dictionary.to_pylist()]}


def _keepers(index: dict, members: np.ndarray, label: np.ndarray, keep: str, seed: int
             ) -> np.ndarray:
    """Position of the kept member of each group (policy, then smallest id)."""
    if len(members) == 0:
        return np.zeros(0, np.int64)
    t = index["table"]
    take = pa.array(members)
    cols = {"group": pa.array(label, pa.int64()), "id": t.column("id").take(take)}
    if keep == "random":
        cols["key"] = pa.array(np.random.default_rng(seed).random(len(members)))
        order = "ascending"
    else:
        name = "alignment" if keep == "best-alignment" else "conformity"
        if name not in t.column_names:
            cols["key"] = pa.nulls(len(members), pa.float64())
        else:
            cols["key"] = pc.cast(t.column(name).take(take), pa.float64())
        order = "ascending" if keep == "least-conformity" else "descending"
    cols["member"] = pa.array(members, pa.int64())
    table = pa.table(cols)
    sorted_t = table.sort_by([("group", "ascending", "at_end"), ("key", order, "at_end"),
                              ("id", "ascending", "at_end")])
    g = sorted_t.column("group").to_numpy()
    first = np.r_[True, g[1:] != g[:-1]]
    return sorted_t.column("member").to_numpy()[first]


def _write(dataset, rowid, processed, group, flagged, message: str):
    positions = np.flatnonzero(processed)
    g = group[positions]
    return write_columns(dataset, rowid[positions], {
        "dup_group": pa.array(g, pa.int64(), mask=g < 0),
        "is_duplicate": pa.array(flagged[positions], pa.bool_()),
    }, message)
