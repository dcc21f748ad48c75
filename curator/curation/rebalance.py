"""``rebalance``: MetaCLIP-style frequency caps, seeded, written to ``rebalance_keep``.

Rows are grouped within their modality by a key: the concept ``cluster``, a metadata
column (a label, a source domain), or ``conformity`` cut into ``bins`` equal-width bins
between the modality's min and max conformity. A row of a group holding ``c`` rows is kept
with probability ``p = min(1, cap / c)``: groups at or under the cap stay whole, crowded
groups are thinned to about ``cap`` rows. With ``--by conformity`` the cap thins the
crowded generic middle and keeps the rare tails, so the distribution flattens.

Decisions are reproducible: a row is kept when ``u < p`` where ``u`` ∈ [0, 1) is the first
8 bytes (little endian, top 53 bits) of ``blake2b(f"{seed}:{id}", digest_size=8)``, so the
same seed gives the same decisions whatever the batch or fragment layout, and another seed
gives other ones. Rows with a null key (no cluster, no label, no conformity) form their
own group per modality, capped like any other. With ``modality`` only that modality's
rows are decided; the others keep their ``rebalance_keep`` as it was.

Group counts come from a streaming Arrow group-by over the key columns only (never the
vectors); ``rebalance_keep`` is written by Lance data evolution in one commit.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..engine.executor import executor
from ..engine.fragments import Piece, pieces
from ..engine.writes import map_columns
from ..errors import BadInput
from ..store.columns import SCAN_BATCH_ROWS
from ..store.database import Database
from ..store.versions import curation_step

OUT_SCHEMA = pa.schema([("_rowid", pa.uint64()), ("rebalance_keep", pa.bool_())])
CONFORMITY = "conformity"
_NO_GROUP = ("embedding", "id", "_rowid")


@dataclass
class RebalanceResult:
    """What a rebalance decided, per group, and on which table versions."""

    by: str
    cap: int
    seed: int
    modality: str | None
    bins: int | None
    rows: int  # rows decided
    kept: int
    expected_kept: float  # Σ min(1, cap / c) over the decided rows
    groups: list[dict] = field(default_factory=list)  # {modality, group, before, after, p}
    histograms: dict = field(default_factory=dict)  # conformity: modality -> {edges, before, after}
    table_version_read: int = 0
    table_version: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        what = f"{self.by} ({self.bins} bins)" if self.bins else self.by
        lines = [(f"rebalanced table version {self.table_version_read} by {what}, cap {self.cap}, "
                  f"seed {self.seed}: kept {self.kept} of {self.rows} rows "
                  f"(expected {self.expected_kept:.1f}); wrote version {self.table_version}")]
        by_modality: dict[str, list[dict]] = {}
        for g in self.groups:
            by_modality.setdefault(g["modality"], []).append(g)
        for m, groups in by_modality.items():
            before = [g["before"] for g in groups]
            after = [g["after"] for g in groups]
            lines.append(f"  {m}: {len(groups)} groups; largest {max(before)} -> {max(after)}, "
                         f"smallest {min(before)} -> {min(after)}, "
                         f"max/min {_ratio(before):.3g} -> {_ratio(after):.3g}")
        for m, h in self.histograms.items():
            lines.append(f"  {m} conformity histogram before: {h['before']}")
            lines.append(f"  {m} conformity histogram after:  {h['after']}")
        return "\n".join(lines)


@curation_step
def rebalance(*, db=None, table: str = "embeddings", cap: int, by: str = "cluster",
              bins: int = 20, modality: str | None = None, seed: int = 0,
              engine: str | None = None) -> RebalanceResult:
    """Keep each row of a group of ``c`` rows with probability ``min(1, cap / c)``; writes
    ``rebalance_keep`` (true = kept) in one commit and returns counts before and after.
    ``engine`` ``ray`` counts and decides per fragment on Ray (same decisions)."""
    if not isinstance(cap, (int, np.integer)) or cap < 1:
        raise BadInput("--cap must be an integer ≥ 1")
    if by == CONFORMITY and (not isinstance(bins, (int, np.integer)) or bins < 1):
        raise BadInput("--bins must be an integer ≥ 1")
    dataset = Database(db).dataset(table)
    read_version = dataset.version
    _check_key(dataset.schema, by)
    keyer = _Keyer(by, bins if by == CONFORMITY else None)
    if keyer.bins:
        keyer.ranges = _conformity_ranges(dataset, modality)
    counts = _group_counts(dataset, keyer, modality, engine)
    if not counts:
        where = f" of modality {modality!r}" if modality else ""
        raise BadInput(f"no rows{where} in table {table!r} to rebalance")
    if by == "cluster" and all(key[1] is None for key in counts):
        raise BadInput("column cluster is empty: run `curator cluster` first, or use --by")

    columns = ["id", "modality"] + ([by] if by != "modality" else [])
    new, infos = map_columns(dataset, _decide, (keyer, counts, cap, seed, modality), columns,
                             out_schema=OUT_SCHEMA, engine=engine,
                             message=f"curator rebalance by {by} cap {cap} seed {seed}")
    kept: Counter = Counter()
    for part in infos:
        if part:
            kept.update(part)
    return _result(by, cap, seed, modality, keyer, counts, kept, read_version, new.version)


def _decide(batch: pa.RecordBatch, keyer, counts: Counter, cap: int, seed: int,
            modality: str | None):
    """Per batch: keep a row when ``uniform(seed, id) < min(1, cap / c)`` (c = rows of its
    group). Returns (``_rowid`` + ``rebalance_keep`` or None, kept per group)."""
    if modality is not None:
        batch = batch.filter(pc.equal(batch.column("modality"), modality))
        if batch.num_rows == 0:
            return None, None
    keys = keyer.keys(batch)
    c = np.array([counts[k] for k in keys], np.float64)
    keep = uniforms(batch.column("id"), seed) < np.minimum(1.0, cap / c)
    kept = Counter(k for k, flag in zip(keys, keep) if flag)
    return pa.record_batch([batch.column("_rowid"), pa.array(keep)], schema=OUT_SCHEMA), kept


def uniforms(ids: pa.Array, seed: int) -> np.ndarray:
    """Each id's uniform in [0, 1): top 53 bits of blake2b(f"{seed}:{id}"), little endian."""
    out = np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little")
         for i in ids.to_pylist()), np.uint64, len(ids))
    return (out >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# -- groups ----------------------------------------------------------------------------

def _check_key(schema: pa.Schema, by: str) -> None:
    if not by:
        raise BadInput("--by needs cluster, conformity or a column name")
    if by not in schema.names:
        raise BadInput(f"--by {by}: no column {by!r} in the table (columns: "
                       f"{', '.join(n for n in schema.names if n != 'embedding')})")
    kind = schema.field(by).type
    if by in _NO_GROUP or pa.types.is_nested(kind) or (pa.types.is_floating(kind) and by != CONFORMITY):
        raise BadInput(f"--by {by}: cannot group by a column of type {kind} "
                       "(use a label column, cluster, or conformity with --bins)")


class _Keyer:
    """Turns a batch into (modality, group) keys; conformity becomes a bin index."""

    def __init__(self, by: str, bins: int | None):
        self.by, self.bins = by, bins
        self.ranges: dict[str, tuple[float, float]] = {}

    def keys(self, batch) -> list[tuple]:
        mods = batch.column("modality").to_pylist()
        if not self.bins:
            return list(zip(mods, batch.column(self.by).to_pylist()))
        values = batch.column(CONFORMITY).to_numpy(zero_copy_only=False).astype(np.float64)
        return list(zip(mods, self._bin(mods, values)))

    def _bin(self, mods: list, values: np.ndarray) -> list:
        out = [None] * len(values)
        for i, (m, v) in enumerate(zip(mods, values)):
            if not math.isnan(v) and m in self.ranges:
                lo, hi = self.ranges[m]
                out[i] = min(int((v - lo) / (hi - lo) * self.bins), self.bins - 1) if hi > lo else 0
        return out

    def edges(self, m: str) -> list[float] | None:
        if m not in self.ranges:
            return None
        return np.linspace(*self.ranges[m], self.bins + 1).tolist()


def _filtered(batches, modality):
    for batch in batches:
        if modality is not None:
            batch = batch.filter(pc.equal(batch.column("modality"), modality))
        if batch.num_rows:
            yield batch


def _batches(dataset, columns, modality):
    yield from _filtered(dataset.to_batches(columns=columns, batch_size=SCAN_BATCH_ROWS * 4), modality)


def _conformity_ranges(dataset, modality) -> dict[str, tuple[float, float]]:
    """Min and max conformity of each modality (one scan of two scalar columns)."""
    ranges: dict[str, tuple[float, float]] = {}
    for batch in _batches(dataset, ["modality", CONFORMITY], modality):
        agg = pa.table(batch).group_by("modality").aggregate([(CONFORMITY, "min"), (CONFORMITY, "max")])
        for m, lo, hi in zip(*(agg.column(c).to_pylist() for c in
                               ("modality", f"{CONFORMITY}_min", f"{CONFORMITY}_max"))):
            if lo is None:
                continue
            old = ranges.get(m, (lo, hi))
            ranges[m] = (min(old[0], lo), max(old[1], hi))
    return ranges


def piece_counts(piece: Piece, keyer: _Keyer, modality: str | None) -> Counter:
    """The counting pass's per-piece function: rows per (modality, group) of the piece,
    by a streaming Arrow group-by of the key columns only."""
    counts: Counter = Counter()
    columns = ["modality"] + ([keyer.by] if keyer.by != "modality" else [])
    for batch in _filtered(piece.batches(columns, batch_size=SCAN_BATCH_ROWS * 4), modality):
        if keyer.bins:
            counts.update(keyer.keys(batch))
            continue
        agg = pa.table(batch).group_by(columns).aggregate([([], "count_all")])
        names = (["modality", keyer.by, "count_all"] if keyer.by != "modality"
                 else ["modality", "modality", "count_all"])
        for m, g, c in zip(*(agg.column(n).to_pylist() for n in names)):
            counts[(m, g)] += c
    return counts


def _group_counts(dataset, keyer: _Keyer, modality, engine) -> Counter:
    """Rows per (modality, group): per-piece counts, merged."""
    counts: Counter = Counter()
    for part in executor(engine).map(piece_counts, [(p, keyer, modality) for p in pieces(dataset)]):
        counts.update(part)
    return counts


# -- the result ------------------------------------------------------------------------

def _result(by, cap, seed, modality, keyer, counts, kept, read_version, version) -> RebalanceResult:
    groups = []
    for (m, g), c in sorted(counts.items(), key=lambda kv: (str(kv[0][0]), kv[0][1] is None,
                                                         _sortable(kv[0][1]))):
        groups.append({"modality": m, "group": _plain(g), "before": int(c),
                       "after": int(kept[(m, g)]), "p": min(1.0, cap / c)})
    histograms = {}
    if keyer.bins:
        for m in sorted({m for m, _ in counts}):
            histograms[m] = {
                "edges": keyer.edges(m),
                "before": [int(counts[(m, b)]) for b in range(keyer.bins)],
                "after": [int(kept[(m, b)]) for b in range(keyer.bins)],
                "null_before": int(counts[(m, None)]),
                "null_after": int(kept[(m, None)]),
            }
    rows = int(sum(counts.values()))
    expected = float(sum(min(c, cap) for c in counts.values()))
    return RebalanceResult(by, cap, seed, modality, keyer.bins, rows, int(sum(kept.values())),
                           expected, groups, histograms, read_version, version)


def _sortable(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _ratio(values: list[int]) -> float:
    nonzero = [v for v in values if v > 0]
    return max(nonzero) / min(nonzero) if nonzero else 0.0
