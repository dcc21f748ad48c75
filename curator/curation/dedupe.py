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
so the search's memory is bounded by the largest partition plus a 64 MB spill buffer; a
dense partition is searched as blocks of its home rows, so a job's pairs stay within 4M.
The pairs go to Parquet as they are found (:class:`PairSpill`), and their rows into a
bitmap of the table's rows (:class:`~curator.engine.rowset.RowSet`, 1 bit a row); DuckDB
makes them unique and counts them; the groups come from a union-find over the members
(rows in some pair, numbered by rank in the bitmap) with the edges streamed in chunks:
one int32 label is all that is held per member. The keep policy's scalars are read a
block of members at a time and spilled with each member's group (:class:`Groups`), and
DuckDB picks the keepers and partitions the marks by fragment, within its memory limit.

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
import shutil
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .. import progress as progress_mod
from ..engine.executor import LOCAL, executor
from ..engine.fragments import Piece, pieces
from ..engine.rows import select_rows, take_vectors
from ..engine.rowset import RowSet
from ..engine.spill import ScalarSpill, connect, fragment_rows, make_folder, quote, scratch
from ..errors import BadInput
from ..geometry.backend import get_backend
from ..geometry.kmeans import unit_rows
from ..geometry.neighbours import (
    COS_TOL,
    DEFAULT_PROBES,
    PartitionPlan,
    auto_partitions,
    UnionFind,
    check_eps,
    concat_pairs,
    home_blocks,
    near_duplicate_pairs,
    partition_pairs,
    threshold,
)
from ..store.arrow import vectors
from ..store.columns import commit_updates, update_fragment
from ..store.database import Database, release_free_memory
from ..store.versions import curation_step
from .clusters import (
    chosen_modalities,
    is_value,
    modality_filter,
    modality_rows,
    ordinal_rowids,
    pass_device,
)

KEEP_POLICIES = ("least-conformity", "most-conformity", "best-alignment", "random")
IN_MEMORY_ROWS = 65_536  # at most this many rows of a modality: no spill file
_SPILL_BYTES = 64 << 20


# -- streaming search over a table -----------------------------------------------------

class _Spill:
    """Unit vectors grouped by partition in temporary files (with each visit's row position
    and is-home flag beside them), written in bounded chunks: memory is the 64 MB buffer
    and the segment list, not the table."""

    def __init__(self, folder: str, dim: int):
        self.paths = {name: os.path.join(folder, f"spill.{name}") for name in ("f32", "pos", "home")}
        self.files = {name: open(path, "wb") for name, path in self.paths.items()}  # noqa: SIM115
        self.dim = dim
        self.rows = 0
        self.pending, self.pending_bytes = [], 0
        # Segments (partition, first row, rows) of each flush as int64 arrays, not Python
        # tuples (a 20M-row pass writes ~80 flushes × 4,096 partitions of them); finish()
        # orders them by partition for partition().
        self._flushed: list[np.ndarray] = []
        self.segments = np.zeros((0, 3), np.int64)
        self._bounds = np.zeros(1, np.int64)
        self.partitions = np.zeros(0, np.int64)

    def add(self, part: np.ndarray, pos: np.ndarray, home: np.ndarray, U: np.ndarray) -> None:
        self.pending.append((part, pos, home, U))
        self.pending_bytes += U.nbytes
        if self.pending_bytes >= _SPILL_BYTES:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        part = np.concatenate([p[0] for p in self.pending])
        order = np.argsort(part, kind="stable")
        part = part[order]
        np.concatenate([p[1] for p in self.pending]).astype(np.int64)[order].tofile(self.files["pos"])
        np.concatenate([p[2] for p in self.pending]).astype(bool)[order].tofile(self.files["home"])
        np.ascontiguousarray(np.concatenate([p[3] for p in self.pending])[order]).tofile(self.files["f32"])
        self.pending, self.pending_bytes = [], 0
        starts = np.flatnonzero(np.r_[True, part[1:] != part[:-1]])
        counts = np.diff(np.r_[starts, len(part)])
        self._flushed.append(np.stack([part[starts], self.rows + starts, counts], axis=1))
        self.rows += len(part)

    def finish(self) -> None:
        """Close the files; order the segments by partition (stable: file order within
        one), and list the partitions that hold rows."""
        self.flush()
        for f in self.files.values():
            f.close()
        if self._flushed:
            segs = np.concatenate(self._flushed)
            self.segments = segs[np.argsort(segs[:, 0], kind="stable")]
        self._flushed = []
        self.partitions, first = np.unique(self.segments[:, 0], return_index=True)
        self._bounds = np.r_[first, len(self.segments)]

    def partition(self, c: int):
        """(unit vectors, positions, is-home flags) of partition c."""
        at = int(np.searchsorted(self.partitions, c))
        if at == len(self.partitions) or self.partitions[at] != c:
            segs = []
        else:
            segs = self.segments[self._bounds[at]:self._bounds[at + 1], 1:].tolist()
        out = []
        for name, dtype, width in (("f32", np.float32, self.dim), ("pos", np.int64, 1),
                                   ("home", np.bool_, 1)):
            step = np.dtype(dtype).itemsize * width
            chunks = []
            with open(self.paths[name], "rb") as f:
                for off, cnt in segs:
                    f.seek(off * step)
                    chunks.append(np.fromfile(f, dtype, count=cnt * width))
            out.append(np.concatenate(chunks) if chunks else np.zeros(0, dtype))
        return out[0].reshape(-1, self.dim), out[1], out[2]


def piece_units(piece: Piece, flt: str, plan: PartitionPlan | None, device: str = "cpu"):
    """The partition pass's per-piece function: the unit vectors of the piece's rows that
    pass ``flt``. Without a plan: (row ids, U). With one: each row once per usable
    partition, as (partition, row id, is-home, U), assigned on the backend of ``device``."""
    backend = get_backend(device)
    parts = [batch_units(batch, plan, backend)
             for batch in piece.batches(["embedding"], filter=flt, with_row_id=True)]
    if not parts:
        return None
    return tuple(np.concatenate([p[k] for p in parts]) for k in range(len(parts[0])))


def batch_units(batch: pa.RecordBatch, plan: PartitionPlan | None, backend):
    """:func:`piece_units` of one batch."""
    U = unit_rows(vectors(batch))
    ids = batch.column("_rowid").to_numpy()
    if plan is None:
        return ids, U
    labels, usable = plan.assign(U, backend=backend)
    r, slot = np.nonzero(usable)
    return labels[r, slot].astype(np.int64), ids[r], slot == 0, U[r]


def _partition_pass(dataset, run, flt: str, plan: PartitionPlan, device: str):
    """The (partition, row id, is-home, U) parts of every row, in row order. Locally one
    batch at a time (memory: a batch's visits, not a fragment's); on Ray one per piece."""
    if run.name == LOCAL:
        backend = get_backend(device)
        for piece in pieces(dataset):
            for batch in piece.batches(["embedding"], filter=flt, with_row_id=True):
                yield batch_units(batch, plan, backend)
        return
    shared = run.put(plan)
    yield from (found for found in run.map(piece_units, [(p, flt, shared, device) for p in pieces(dataset)])
                if found is not None)


def search_partition(Up: np.ndarray, pos_p: np.ndarray, Uq: np.ndarray, pos_q: np.ndarray,
                     first: int, thr: float, device: str = "cpu"):
    """The search pass's per-job function: exact pairs (i, j, cos), cosine ≥ thr, of the
    first ``first`` home rows ``Up`` of a partition with the later home rows and with its
    visiting rows ``Uq``, on the backend of ``device``; and how many home rows that was."""
    i, j, c = partition_pairs(Up, pos_p, Uq, pos_q, thr, first=first, backend=get_backend(device))
    return i, j, c, min(first, len(Up))


def search_jobs(spill: "_Spill", thr: float, device: str):
    """The search pass's jobs, partition by partition: a partition's home rows in blocks
    whose pairs stay within ``_JOB_PAIRS`` even if every comparison were a hit, so a
    dense clump of duplicates cannot make one job's pair list grow with the table."""
    for c in spill.partitions.tolist():
        U, pos, home = spill.partition(c)
        Up, pos_p, Uq, pos_q = U[home], pos[home], U[~home], pos[~home]
        step = home_blocks(len(Up), len(Uq), _JOB_PAIRS)
        for lo in range(0, len(Up), step):
            yield Up[lo:], pos_p[lo:], Uq, pos_q, step, thr, device


def stream_pairs(dataset, n: int, modality: str, eps: float, *, pairs: "PairSpill",
                 seed: int = 0, probes: int = DEFAULT_PROBES, partitions: int | None = None,
                 quiet: bool = True, engine: str | None = None, device: str = "cpu") -> dict:
    """Near-duplicate pairs among the ``n`` rows of ``modality``, as row ids (int64), added
    to ``pairs`` as they are found (a pair found from two partitions comes twice).

    Returns info naming the partitions and probes used. Up to
    ``IN_MEMORY_ROWS`` rows are searched in memory; above, one pass assigns rows to
    partitions and spills their unit vectors to a temporary file grouped by partition,
    then each partition is searched exactly (one or more tasks per partition), so memory is
    bounded by the largest partition plus a 64 MB spill buffer, and each search job's
    pairs by ``_JOB_PAIRS`` (:func:`search_jobs`). The products run on the
    backend of ``device`` (a resolved name).
    """
    backend = get_backend(device)
    flt = modality_filter(modality)
    k = partitions or auto_partitions(n)
    run = executor(engine)
    if n <= IN_MEMORY_ROWS:
        found = [r for r in run.map(piece_units, [(p, flt, None, device) for p in pieces(dataset)])
                 if r is not None]
        if not found:
            return {"partitions": 0, "probes": 0}
        pos = np.concatenate([ids for ids, _ in found]).astype(np.int64)
        U = np.concatenate([u for _, u in found])
        i, j, c = near_duplicate_pairs(U, eps, partitions=k, probes=probes, seed=seed, unit=True,
                                       backend=backend)
        pairs.add(pos[i], pos[j], c)
        return {"partitions": k, "probes": probes if k > 1 else 1}

    rng = np.random.default_rng(seed)
    size = min(n, max(20_000, 40 * k))
    # The same draw as choosing among the modality's row ids in order.
    sample = ordinal_rowids(dataset, modality, np.sort(rng.choice(n, size, replace=False)))
    plan = PartitionPlan.train(unit_rows(take_vectors(dataset, sample), copy=False), k, eps,
                               probes=probes, seed=seed, backend=backend)
    dim = dataset.schema.field("embedding").type.list_size
    thr = threshold(eps)
    with scratch() as folder:
        spill = _Spill(folder, dim)
        bar = progress_mod.bar(f"partition {modality}", n, quiet=quiet)
        for part, ids, home, U in _partition_pass(dataset, run, flt, plan, device):
            spill.add(part, ids.astype(np.int64), home, U)
            bar.advance(int(home.sum()))
        bar.close()
        spill.finish()
        bar = progress_mod.bar(f"search {modality}", n, quiet=quiet)
        for i, j, c, searched in run.map(search_partition, search_jobs(spill, thr, device)):
            pairs.add(i, j, c)
            bar.advance(searched)
        bar.close()
        visits = spill.rows
    return {"partitions": plan.k, "probes": plan.probes,
            "visits_per_row": round(visits / max(n, 1), 3)}


PAIRS = pa.schema([("i", pa.int64()), ("j", pa.int64()), ("c", pa.float32())])
_JOB_PAIRS = 1 << 22  # a search job's pairs at most (80 MB), were every comparison a hit
_PAIR_PART_ROWS = 1 << 20  # pairs buffered before a Parquet part is written (20 MB)
_EDGE_CHUNK = 1 << 20  # pairs per chunk of the union-find


class PairSpill:
    """Near-duplicate pairs on disk, and what ``dedupe`` needs of them out of core.

    :meth:`add` buffers raw pairs, writes Parquet parts and marks both rows in
    ``members`` (a :class:`RowSet` over the table: one bit per table row); :meth:`finish`
    makes each unordered pair unique in DuckDB (within its memory limit: the cosine kept
    is the largest found, capped at 1) and closes DuckDB (an open connection keeps what
    its largest step allocated). :meth:`labels` streams the unique pairs into a
    union-find over the member numbers: one int32 per member is all it holds, never the
    pair list nor the member ids."""

    def __init__(self, members: RowSet):
        self.members = members
        self.spill = ScalarSpill(PAIRS)
        self.buffer, self.buffered = [], 0
        self.unique = os.path.join(self.spill.folder, "unique.parquet")
        self.count = self.exact = 0

    def add(self, i: np.ndarray, j: np.ndarray, c: np.ndarray) -> None:
        if len(i):
            self.buffer.append((np.asarray(i, np.int64), np.asarray(j, np.int64), np.asarray(c, np.float32)))
            self.buffered += len(i)
        if self.buffered >= _PAIR_PART_ROWS:
            self._flush()

    def _flush(self) -> None:
        if self.buffer:
            i, j, c = concat_pairs(self.buffer)
            apart = i != j
            self.members.add(i[apart])
            self.members.add(j[apart])
            self.spill.add(pa.table([i, j, c], schema=PAIRS))
        self.buffer, self.buffered = [], 0

    def finish(self) -> None:
        """Write the unique pairs (lo < hi) to ``unique``; count them and the exact ones."""
        self._flush()
        with self.spill.connect("raw") as con:
            con.execute(f"COPY (SELECT least(i, j) AS lo, greatest(i, j) AS hi, max(least(c, 1.0)) AS c "
                        f"FROM raw WHERE i <> j GROUP BY 1, 2) TO {quote(self.unique)} (FORMAT parquet)")
            count, exact = con.execute(
                f"SELECT count(*), count(*) FILTER (WHERE c >= CAST({1 - COS_TOL!r} AS FLOAT)) "
                f"FROM read_parquet({quote(self.unique)})").fetchone()
        self.count, self.exact = int(count), int(exact)

    def labels(self) -> np.ndarray:
        """Each member's component label, by member number (:class:`RowSet` order): the
        number of its component's smallest member."""
        import pyarrow.parquet as pq

        forest = UnionFind(len(self.members))
        with pq.ParquetFile(self.unique, pre_buffer=False) as edges:
            for batch in edges.iter_batches(_EDGE_CHUNK, columns=["lo", "hi"]):
                forest.union(self.members.rank(batch.column(0).to_numpy()),
                             self.members.rank(batch.column(1).to_numpy()))
        pa.default_memory_pool().release_unused()
        return forest.labels()

    def pairs(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every unique pair in memory (lo, hi, cos), sorted: for tests and benchmarks."""
        import pyarrow.parquet as pq

        t = pq.read_table(self.unique).sort_by([("lo", "ascending"), ("hi", "ascending")])
        return (t.column("lo").to_numpy(), t.column("hi").to_numpy(), t.column("c").to_numpy())

    def close(self) -> None:
        self.spill.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


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
    present = modality_rows(dataset)
    mods = chosen_modalities(sorted(present), modality)

    reports = {}
    with Groups(dataset, keep, seed) as groups:
        for m in mods:
            with PairSpill(RowSet.of(dataset)) as pairs:
                info = stream_pairs(dataset, present[m], m, eps, pairs=pairs, seed=seed, quiet=quiet,
                                    engine=engine, device=device)
                pairs.finish()
                label = pairs.labels()
            n_members, n_groups = groups.add(pairs.members, label)
            del label
            release_free_memory()  # the next modality's search starts from this one's floor
            reports[m] = {"rows": present[m], "pairs": pairs.count, "exact_pairs": pairs.exact,
                          "groups": n_groups, "duplicates": n_members - n_groups, **info}
        groups.mark()
        release_free_memory()
        new = _write(dataset, mods, groups, f"curator dedupe eps={eps} keep={keep} seed={seed}", engine)
    return DedupeResult(table, eps, keep, seed, dataset.version, new.version, reports,
                        time.time() - started, device)


class Groups:
    """Every member's group and keep key, on disk; the keepers and each fragment's marks
    come from DuckDB over that spill, within its memory limit.

    :meth:`add` spills one modality's members a block at a time: row id, group (the
    group's smallest row id), the policy's key and ``id``. :meth:`mark` picks each group's
    keeper, the member with the smallest (key is null, key, id is null, id, row id): key
    ascending for least-conformity and random (a seeded uniform per member in row-id
    order, one generator per modality), descending (negated) for most-conformity and
    best-alignment, NaN as null; then writes every member's group and flag partitioned by
    fragment for :meth:`fragment`."""

    def __init__(self, dataset, keep: str, seed: int):
        self.dataset, self.keep, self.seed = dataset, keep, seed
        name = "alignment" if keep == "best-alignment" else "conformity"
        self.key = name if keep != "random" and name in dataset.schema.names else None
        self.columns = ["id"] + ([self.key] if self.key else [])
        self.schema = pa.schema([("rowid", pa.int64()), ("grp", pa.int64()), ("key", pa.float64()),
                                 ("id", dataset.schema.field("id").type)])
        self.folder = make_folder()
        self.files = 0

    def add(self, members: RowSet, label: np.ndarray) -> tuple[int, int]:
        """Spill one modality's members with their group (``label``: by member number, the
        number of the group's smallest member); returns (members, groups)."""
        import pyarrow.parquet as pq

        if len(label) == 0:
            return 0, 0
        rng = np.random.default_rng(self.seed)
        groups = start = 0  # a group's label is its smallest member's number: one root per group
        path = os.path.join(self.folder, f"groups-{self.files}.parquet")
        self.files += 1
        with pq.ParquetWriter(path, self.schema) as writer:
            for rows in members.blocks():
                mine = label[start:start + len(rows)]
                scalars = self._scalars(rows)
                if self.keep == "random":
                    key = pa.array(rng.random(len(rows)))
                elif self.key:
                    values = scalars.column(self.key).cast(pa.float64()).to_numpy(zero_copy_only=False)
                    if self.keep != "least-conformity":
                        values = -values
                    key = pa.array(values, pa.float64(), mask=np.isnan(values))
                else:
                    key = pa.nulls(len(rows), pa.float64())
                root = mine == np.arange(start, start + len(rows))
                groups += int(np.count_nonzero(root))
                group = np.empty(len(rows), np.int64)
                group[root] = rows[root]
                group[~root] = members.select(mine[~root])
                writer.write_table(pa.table([pa.array(rows), pa.array(group), key, scalars.column("id")],
                                            schema=self.schema))
                start += len(rows)
        return start, groups

    def _scalars(self, rows: np.ndarray) -> pa.Table:
        """The policy's columns of the sorted row ids ``rows``, in their order."""
        found, parts = [], []
        for ids, batch in select_rows(self.dataset, rows.astype(np.uint64), self.columns):
            found.append(np.asarray(ids, np.int64))
            parts.append(pa.Table.from_batches([batch]).select(self.columns))
        if not np.array_equal(np.concatenate(found), rows):
            raise RuntimeError("dedupe: a member row was not found in the table")
        return pa.concat_tables(parts)

    def mark(self) -> None:
        """Each member's (fragment, row id, group, flagged) under ``marks/``, partitioned
        by fragment; flagged is every member but its group's keeper."""
        if not self.files:
            return
        members = quote(os.path.join(self.folder, "groups-*.parquet"))
        with connect(self.folder) as con:  # closed after: DuckDB keeps what it allocated while open
            con.execute(
                f"COPY (SELECT m.rowid >> 32 AS fragment, m.rowid, m.grp, m.rowid <> k.keeper AS flagged "
                f"FROM read_parquet({members}) m JOIN (SELECT grp, arg_min(rowid, struct_pack("
                f"n := key IS NULL, k := coalesce(key, 0), idn := id IS NULL, id := id, r := rowid)) AS keeper "
                f"FROM read_parquet({members}) GROUP BY grp) k ON m.grp = k.grp) "
                f"TO {quote(os.path.join(self.folder, 'marks'))} (FORMAT parquet, PARTITION_BY (fragment))")

    def fragment(self, fragment_id: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(sorted member row ids, group, flagged) of one fragment."""
        part = fragment_rows(os.path.join(self.folder, "marks"), fragment_id, ["rowid", "grp", "flagged"],
                             "rowid")
        if part is None:
            return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, bool)
        return (part.column("rowid").to_numpy(), part.column("grp").to_numpy(),
                part.column("flagged").to_numpy(zero_copy_only=False))

    def close(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _write(dataset, mods: list[str], groups: Groups, message: str, engine: str | None):
    """``dup_group`` and ``is_duplicate`` of every row of ``mods``: from ``groups``' marks
    for members, null and false for the others; one task per fragment, one commit. Locally
    the memory each fragment's write freed is returned before the next one's marks are
    read: the heap otherwise grew with every fragment (with Lance's join on ``_rowid``,
    20 fragments of 1M rows peaked at 0.83 GiB without it and 0.59 GiB with it)."""
    run = executor(engine)

    def jobs():
        for fragment in dataset.get_fragments():
            if run.name == LOCAL:
                release_free_memory()
            yield (fragment, mods, *groups.fragment(fragment.fragment_id))

    return commit_updates(dataset, run.map(mark_fragment, jobs()), message)


def mark_fragment(fragment, mods: list[str], members, group, flagged):
    """One fragment's part of :func:`_write` (a module-level function for Ray). When
    ``mods`` covers every row of the fragment, :func:`update_fragment` writes one file
    laid out by offset; otherwise Lance joins on ``_rowid`` and other rows keep theirs."""
    table = fragment.to_table(columns=["modality"], with_row_id=True)
    mine = np.zeros(table.num_rows, bool)
    for m in mods:
        mine |= is_value(table.column("modality"), m)
    if not mine.any():
        return None, []
    rowid = table.column("_rowid").to_numpy()[mine].astype(np.int64)
    hit = np.zeros(len(rowid), bool)
    g = np.full(len(rowid), -1, np.int64)
    duplicate = np.zeros(len(rowid), bool)
    if len(members):
        at = np.minimum(np.searchsorted(members, rowid), len(members) - 1)
        hit = members[at] == rowid
        g[hit] = group[at[hit]]
        duplicate[hit] = flagged[at[hit]]
    out = pa.table({"_rowid": pa.array(rowid, pa.uint64()),
                    "dup_group": pa.array(g, pa.int64(), mask=~hit),
                    "is_duplicate": pa.array(duplicate, pa.bool_())})
    return update_fragment(fragment, out)
