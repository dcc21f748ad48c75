"""``rebalance``: MetaCLIP-style frequency caps, seeded, decided once per sample.

**Groups.** A deciding row falls in a group of its modality: its concept ``cluster``, the
value of a metadata column (a label, a source domain), or its ``conformity`` cut into
``bins`` equal-width bins between the min and max conformity of the modality's deciding
rows. A group holding ``c`` deciding rows keeps each with probability
``p = min(1, cap / c)``: groups at or under the cap stay whole, crowded groups are thinned
to about ``cap``. With ``by='conformity'`` the cap thins the crowded generic middle and
keeps the rare tails. Rows with a null key (no cluster, no label) form their own group.

**Per sample** (``per='sample'``, the default). A sample is decided once, by its
*deciding row*: its row of ``modality`` that passes ``where`` (with several, the one with
the smallest id). ``modality`` defaults to ``image`` when the table has image rows, else
to its only modality (a table of several modalities without images needs ``modality``).
Every row of the sample gets the decision of its deciding row, except rows that fail
``where``, which get false. A sample without a deciding row (captions without an image,
or an image that fails ``where``) gets false on every row: a balance of image concepts
has no place for it, and the result counts such samples (``undecided_samples``). A row
without a ``sample_id`` is a sample of its own. Counts are of samples (deciding rows),
so "largest group 1239 -> 205" counts samples, i.e. images.

**Per row** (``per='row'``). Each row of ``modality`` (of every modality when None) is
decided on its own by its group within its modality; rows failing ``where`` get false,
rows of other modalities keep the column's value.

**Reproducible.** A deciding row is kept when ``u < p`` where ``u`` ∈ [0, 1) is the first
8 bytes (little endian, top 53 bits) of ``blake2b(f"{seed}:{id}", digest_size=8)`` of its
id, so the same seed gives the same decisions whatever the batch or fragment layout or
engine, and another seed gives other ones. Per sample with the image modality, an image
gets the decision ``per='row'`` would give it.

**Where it goes.** The decision is written to ``into`` (default ``rebalance_keep``), a
boolean column added by data evolution when missing, so several balances coexist
(``--into flat_keep``) and combine in one predicate. The pass over the table is one
per-piece function (:func:`piece_units`, run by the executor, so ``engine='ray'`` decides
the same) reading scalar columns only (never the vectors); the driver holds the row ids
and sample ids of the table and one entry per deciding row; one commit writes the column.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..engine.executor import executor
from ..engine.fragments import Piece, pieces
from ..engine.writes import write_columns
from ..errors import BadInput
from ..store.columns import SCAN_BATCH_ROWS
from ..store.database import Database
from ..store.predicate import Predicate, parse
from ..store.schema import column_names
from ..store.versions import curation_step

CONFORMITY = "conformity"
DEFAULT_INTO = "rebalance_keep"
PER = ("sample", "row")
_NO_GROUP = ("embedding", "id", "_rowid")
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass
class RebalanceResult:
    """What a rebalance decided, per group, and on which table versions.

    ``units`` are samples (``per='sample'``) or rows (``per='row'``); group ``before`` and
    ``after`` count units. ``counts`` holds, per modality, the rows and samples set true:
    what an export of ``--where <into>`` writes.
    """

    by: str
    cap: int
    seed: int
    per: str
    modality: str | None  # per sample: the deciding modality; per row: the decided one
    where: str | None  # the normalised predicate
    into: str
    bins: int | None
    units: int  # samples (or rows) decided: their deciding row passed --where
    kept_units: int
    expected_kept: float  # Σ min(c, cap) over the groups: units expected to be kept
    undecided_samples: int  # per sample: samples without a deciding row (all rows false)
    rows: int  # rows written
    kept: int  # rows set true
    counts: dict = field(default_factory=dict)  # modality -> {rows, samples} set true
    groups: list[dict] = field(default_factory=list)  # {modality, group, before, after, p}
    histograms: dict = field(default_factory=dict)  # conformity: modality -> {edges, before, after}
    table_version_read: int = 0
    table_version: int = 0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        what = f"{self.by} ({self.bins} bins)" if self.bins else self.by
        unit = "samples" if self.per == "sample" else "rows"
        how = (f"per sample (decided by the {self.modality} row)" if self.per == "sample"
               else f"per row ({self.modality} rows)" if self.modality else "per row")
        where = f", where {self.where}" if self.where else ""
        per_mod = ", ".join(f"{m} {c['rows']}" for m, c in self.counts.items()) or "none"
        lines = [(f"rebalanced table version {self.table_version_read} by {what} {how}, cap "
                  f"{self.cap}, seed {self.seed}{where}: kept {self.kept_units} of {self.units} "
                  f"{unit} (expected {self.expected_kept:.1f}); {self.into} true on {self.kept} "
                  f"of {self.rows} rows ({per_mod}); wrote version {self.table_version}")]
        by_modality: dict[str, list[dict]] = {}
        for g in self.groups:
            by_modality.setdefault(g["modality"], []).append(g)
        for m, groups in by_modality.items():
            before = [g["before"] for g in groups]
            after = [g["after"] for g in groups]
            lines.append(f"  {m}: {len(groups)} groups of {unit}; largest {max(before)} -> "
                         f"{max(after)}, smallest {min(before)} -> {min(after)}, "
                         f"max/min {_ratio(before):.3g} -> {_ratio(after):.3g}")
        if self.undecided_samples:
            passing = " passing the predicate" if self.where else ""
            lines.append(f"  {self.undecided_samples} samples with no {self.modality} row"
                         f"{passing}: {self.into} false on all their rows")
        for m, h in self.histograms.items():
            lines.append(f"  {m} conformity histogram before: {h['before']}")
            lines.append(f"  {m} conformity histogram after:  {h['after']}")
        return "\n".join(lines)


@curation_step
def rebalance(*, db=None, table: str = "embeddings", cap: int, by: str = "cluster",
              bins: int = 20, modality: str | None = None, per: str = "sample",
              where: str | None = None, into: str = DEFAULT_INTO, seed: int = 0,
              engine: str | None = None) -> RebalanceResult:
    """Keep each sample (or row) of a group of ``c`` with probability ``min(1, cap / c)``;
    writes the boolean column ``into`` in one commit (see the module docstring for the
    rules) and returns counts before and after. Everything is checked before anything is
    written. ``engine`` ``ray`` runs the pass on Ray (same decisions)."""
    if not isinstance(cap, (int, np.integer)) or isinstance(cap, bool) or cap < 1:
        raise BadInput("--cap must be an integer ≥ 1")
    if by == CONFORMITY and (not isinstance(bins, (int, np.integer)) or bins < 1):
        raise BadInput("--bins must be an integer ≥ 1")
    if per not in PER:
        raise BadInput(f"--per must be one of {', '.join(PER)}")
    database = Database(db)
    dataset = database.dataset(table)
    read_version = dataset.version
    schema = dataset.schema
    _check_key(schema, by)
    _check_into(schema, into, by)
    if where is not None and not str(where).strip():
        raise BadInput("--where is empty; leave it out to count every row")
    predicate = parse(where, schema)
    run = executor(engine)
    if per == "sample" and modality is None:
        modality = _deciding_modality(dataset, run)
    plan = Plan(per, modality, predicate, by, seed)
    rows, candidates = _scan(dataset, plan, run)
    deciding = _deciding_rows(candidates, per)
    if deciding.num_rows == 0:
        what = f" of modality {modality!r}" if modality else ""
        passing = " passing --where" if predicate is not None else ""
        raise BadInput(f"no rows{what}{passing} in table {table!r} to rebalance")
    keys, edges = _group_keys(deciding, by, bins if by == CONFORMITY else None)
    if by == "cluster" and keys.null_count == len(keys):
        raise BadInput("column cluster is empty: run `curator cluster` first, or use --by")
    keep, groups = _decide(deciding, keys, cap)
    values = _row_values(rows, deciding, keep, per)

    if into not in schema.names:  # nothing can fail past here but the writes themselves
        dataset.add_columns([pa.field(into, pa.bool_())])
        dataset = database.dataset(table)
    written = write_columns(dataset, rows.column("_rowid").to_numpy(), {into: values},
                            f"curator rebalance {into} by {by} cap {cap} seed {seed}", engine=engine)
    undecided = _undecided_samples(rows, deciding) if per == "sample" else 0
    return _result(plan, into, cap, bins if by == CONFORMITY else None, groups, edges, deciding,
                   keep, undecided, rows, values, read_version, written.version)


# -- the plan and the pass -------------------------------------------------------------

@dataclass(frozen=True)
class Plan:
    """What the pass needs on every piece (pickled to Ray workers)."""

    per: str
    modality: str | None  # the deciding (per sample) or decided (per row) modality
    predicate: Predicate | None
    by: str
    seed: int

    def columns(self) -> list[str]:
        extra = self.predicate.columns if self.predicate is not None else ()
        return list(dict.fromkeys(["id", "sample_id", "modality", self.by, *extra]))


def piece_units(piece: Piece, plan: Plan) -> tuple[pa.Table, pa.Table]:
    """The pass's per-piece function, on scalar columns only. Returns ``rows``
    (``_rowid``, ``sample_id``, ``modality``, ``passes``) of the rows the rebalance writes,
    and ``candidates`` (``_rowid``, ``sample_id``, ``modality``, ``id``, ``u``, ``key``) of the
    rows that may decide: those of the modality that pass the predicate."""
    rows, candidates = [], []
    for batch in piece.batches(plan.columns(), with_row_id=True, batch_size=SCAN_BATCH_ROWS * 4):
        n = batch.num_rows
        passes = plan.predicate.mask(batch) if plan.predicate is not None else np.ones(n, bool)
        mods = batch.column("modality")
        if plan.modality is None:
            scope = np.ones(n, bool)
        else:
            scope = pc.fill_null(pc.equal(mods, plan.modality), False).to_numpy(zero_copy_only=False)
        written = np.ones(n, bool) if plan.per == "sample" else scope
        rows.append(pa.table({
            "_rowid": batch.column("_rowid").filter(pa.array(written)),
            "sample_id": batch.column("sample_id").cast(pa.string()).filter(pa.array(written)),
            "modality": mods.filter(pa.array(written)),
            "passes": pa.array(passes[written]),
        }))
        chosen = pa.array(scope & passes)
        part = batch.filter(chosen)
        candidates.append(pa.table({
            "_rowid": part.column("_rowid"),
            "sample_id": part.column("sample_id").cast(pa.string()),
            "modality": part.column("modality"),
            "id": part.column("id"),
            "u": pa.array(uniforms(part.column("id"), plan.seed)),
            "key": part.column(plan.by),
        }))
    return _concat(rows), _concat(candidates)


def _concat(tables: list[pa.Table]) -> pa.Table | None:
    return pa.concat_tables(tables) if tables else None


def _scan(dataset, plan: Plan, run) -> tuple[pa.Table, pa.Table]:
    """The pass over every piece, merged in piece order (row-id order)."""
    rows, candidates = [], []
    for r, c in run.map(piece_units, [(p, plan) for p in pieces(dataset)]):
        if r is not None:
            rows.append(r)
            candidates.append(c)
    if not rows:
        raise BadInput("the table has no rows to rebalance")
    rows = pa.concat_tables(rows).combine_chunks()
    ids = rows.column("_rowid").to_numpy()
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():  # fragments out of id order
        rows = rows.take(pa.array(np.argsort(ids, kind="stable")))
    return rows, pa.concat_tables(candidates).combine_chunks()


def piece_modalities(piece: Piece) -> set:
    """The modalities present in a piece (the default --modality's pass)."""
    found: set = set()
    for batch in piece.batches(["modality"], batch_size=SCAN_BATCH_ROWS * 4):
        found.update(pc.unique(batch.column("modality")).to_pylist())
    return found


def _deciding_modality(dataset, run) -> str:
    """``image`` when the table has image rows, else its only modality."""
    found: set = set()
    for part in run.map(piece_modalities, [(p,) for p in pieces(dataset)]):
        found |= part
    found.discard(None)
    if "image" in found or not found:
        return "image"
    if len(found) == 1:
        return found.pop()
    raise BadInput(f"the table has no image rows and several modalities ({', '.join(sorted(found))}): "
                   "choose the deciding one with --modality")


def uniforms(ids: pa.Array, seed: int) -> np.ndarray:
    """Each id's uniform in [0, 1): top 53 bits of blake2b(f"{seed}:{id}"), little endian."""
    out = np.fromiter(
        (int.from_bytes(hashlib.blake2b(f"{seed}:{i}".encode(), digest_size=8).digest(), "little")
         for i in ids.to_pylist()), np.uint64, len(ids))
    return (out >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


# -- decisions on the driver -----------------------------------------------------------

def _deciding_rows(candidates: pa.Table, per: str) -> pa.Table:
    """Per sample: each sample's candidate with the smallest id (rows without a sample are
    their own); per row: every candidate."""
    if per == "row" or candidates.num_rows == 0:
        return candidates
    has = pc.is_valid(candidates.column("sample_id"))
    grouped = candidates.filter(has)
    distinct = pc.count_distinct(grouped.column("sample_id")).as_py()
    if distinct < grouped.num_rows:
        grouped = grouped.sort_by([("sample_id", "ascending"), ("id", "ascending")])
        sid = grouped.column("sample_id").combine_chunks()
        first = np.ones(len(sid), bool)
        first[1:] = pc.not_equal(sid.slice(1), sid.slice(0, len(sid) - 1)).to_numpy(zero_copy_only=False)
        grouped = grouped.filter(pa.array(first))
    solo = candidates.filter(pc.invert(has))
    return pa.concat_tables([grouped, solo]).combine_chunks()


def _group_keys(deciding: pa.Table, by: str, bins: int | None) -> tuple[pa.Array, dict]:
    """The group of each deciding row (a conformity bin index with ``bins``); and the bin
    edges per modality."""
    key = deciding.column("key").combine_chunks()
    if not bins:
        return key, {}
    values = key.to_numpy(zero_copy_only=False).astype(np.float64)
    mods = deciding.column("modality").to_numpy(zero_copy_only=False)
    out = np.full(len(values), -1, np.int64)
    edges = {}
    for m in np.unique(mods):
        rows = (mods == m) & ~np.isnan(values)
        if not rows.any():
            continue
        lo, hi = float(values[rows].min()), float(values[rows].max())
        if hi > lo:
            out[rows] = np.minimum(((values[rows] - lo) / (hi - lo) * bins).astype(np.int64), bins - 1)
        else:
            out[rows] = 0
        edges[str(m)] = np.linspace(lo, hi, bins + 1).tolist()
    return pa.array(out, pa.int64(), mask=out < 0), edges


def _codes(array: pa.Array) -> tuple[np.ndarray, list]:
    """Integer codes of an array's values (null gets its own code) and the values."""
    encoded = array.dictionary_encode()
    values = encoded.dictionary.to_pylist()
    codes = pc.fill_null(encoded.indices, len(values)).to_numpy(zero_copy_only=False)
    return codes.astype(np.int64), values + [None]


def _decide(deciding: pa.Table, keys: pa.Array, cap: int) -> tuple[np.ndarray, list[dict]]:
    """keep = u < min(1, cap / c) of each deciding row (c = deciding rows of its group), and
    the groups: {modality, group, before, after, p}."""
    mod_codes, mod_values = _codes(deciding.column("modality").combine_chunks())
    key_codes, key_values = _codes(keys)
    combined = mod_codes * (len(key_values) + 1) + key_codes
    unique, inverse, counts = np.unique(combined, return_inverse=True, return_counts=True)
    p = np.minimum(1.0, cap / counts.astype(np.float64))
    keep = deciding.column("u").to_numpy() < p[inverse]
    kept = np.bincount(inverse, weights=keep, minlength=len(unique)).astype(np.int64)
    groups = []
    for g, code in enumerate(unique):
        m, k = divmod(int(code), len(key_values) + 1)
        groups.append({"modality": mod_values[m], "group": _plain(key_values[k]),
                       "before": int(counts[g]), "after": int(kept[g]), "p": float(p[g])})
    groups.sort(key=lambda g: (str(g["modality"]), g["group"] is None, _sortable(g["group"])))
    return keep, groups


def _row_values(rows: pa.Table, deciding: pa.Table, keep: np.ndarray, per: str) -> pa.Array:
    """The value written on every row of ``rows``: a deciding row's own decision; per
    sample, a row passing the predicate gets its sample's decision; everything else false."""
    rowids = rows.column("_rowid").to_numpy()
    values = np.zeros(len(rowids), bool)
    own = deciding.column("_rowid").to_numpy()
    if per == "sample":
        kept_samples = pc.drop_null(deciding.column("sample_id").filter(pa.array(keep)))
        in_kept = pc.is_in(rows.column("sample_id"), value_set=kept_samples.combine_chunks())
        values = pc.fill_null(in_kept, False).to_numpy(zero_copy_only=False) \
            & rows.column("passes").to_numpy(zero_copy_only=False)
        solo = pc.is_null(deciding.column("sample_id")).to_numpy(zero_copy_only=False)
        own, keep = own[solo], keep[solo]
    at = np.searchsorted(rowids, own)  # rows are in row-id order; deciding rows are among them
    values[at] = keep
    return pa.array(values, pa.bool_())


def _undecided_samples(rows: pa.Table, deciding: pa.Table) -> int:
    """Samples (rows without a sample count as one each) without a deciding row."""
    sid = rows.column("sample_id")
    total = pc.count_distinct(sid, mode="only_valid").as_py() + sid.null_count
    return int(total - deciding.num_rows)


# -- checks ----------------------------------------------------------------------------

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


def _check_into(schema: pa.Schema, into: str, by: str) -> None:
    """``into`` is a boolean column a predicate can name: the default, a new name, or an
    existing boolean column that is not one of curator's own."""
    if not into or not _NAME.fullmatch(str(into)):
        raise BadInput(f"--into {into!r}: a column name of letters, digits and _ "
                       "(not starting with a digit), so that --where can name it")
    own = {c.lower(): c for c in column_names()}
    if into != DEFAULT_INTO and into.lower() in own:
        raise BadInput(f"--into {into}: {own[into.lower()]} is one of curator's own columns; "
                       "choose another name")
    if into.lower() == by.lower():
        raise BadInput(f"--into {into}: the same column as --by")
    same = [n for n in schema.names if n.lower() == into.lower()]
    if same and same[0] != into:
        raise BadInput(f"--into {into}: the table has a column {same[0]!r} (names are not case "
                       "sensitive in predicates)")
    if same and schema.field(into).type != pa.bool_():
        raise BadInput(f"--into {into}: the column holds {schema.field(into).type}, not "
                       "true/false; choose another name")
    probe = schema if same else schema.append(pa.field(into, pa.bool_()))
    try:
        parse(into, probe, what=f"--into {into}")
    except BadInput:
        raise BadInput(f"--into {into}: not usable as a predicate (a SQL keyword?); choose "
                       "another name") from None


# -- the result ------------------------------------------------------------------------

def _result(plan: Plan, into, cap, bins, groups, edges, deciding, keep, undecided, rows, values,
            read_version, version) -> RebalanceResult:
    histograms = {}
    if bins:
        for m in sorted({g["modality"] for g in groups}):
            mine = {g["group"]: g for g in groups if g["modality"] == m}
            histograms[m] = {
                "edges": edges.get(m),
                "before": [mine[b]["before"] if b in mine else 0 for b in range(bins)],
                "after": [mine[b]["after"] if b in mine else 0 for b in range(bins)],
                "null_before": mine[None]["before"] if None in mine else 0,
                "null_after": mine[None]["after"] if None in mine else 0,
            }
    kept_rows = rows.filter(values)
    return RebalanceResult(
        by=plan.by, cap=int(cap), seed=plan.seed, per=plan.per, modality=plan.modality,
        where=plan.predicate.text if plan.predicate is not None else None, into=into, bins=bins,
        units=deciding.num_rows, kept_units=int(keep.sum()),
        expected_kept=float(sum(min(g["before"], cap) for g in groups)),
        undecided_samples=undecided, rows=rows.num_rows, kept=kept_rows.num_rows,
        counts=modality_counts(kept_rows), groups=groups, histograms=histograms,
        table_version_read=read_version, table_version=version)


def modality_counts(rows: pa.Table) -> dict:
    """Per modality: rows, and distinct samples (a row without a sample counts as one)."""
    out = {}
    mods = rows.column("modality").to_numpy(zero_copy_only=False)
    for m in sorted(set(mods.tolist())):
        samples = rows.column("sample_id").filter(pa.array(mods == m))
        distinct = pc.count_distinct(samples, mode="only_valid").as_py()
        out[m] = {"rows": int((mods == m).sum()), "samples": int(distinct + samples.null_count)}
    return out


def _sortable(value):
    return (0, value, "") if isinstance(value, (int, float)) else (1, 0, str(value))


def _plain(value):
    return value.item() if isinstance(value, np.generic) else value


def _ratio(values: list[int]) -> float:
    nonzero = [v for v in values if v > 0]
    return max(nonzero) / min(nonzero) if nonzero else 0.0

