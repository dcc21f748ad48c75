"""The ingest transaction: validate, append raw vectors with their final scores, one commit.

Guarantees: vectors are stored exactly as given (float32, never normalised); bad input
raises a one-line :class:`BadInput` and leaves the table at its previous version; the new
rows, their scores, the rescored rows of the samples they touch and any replaced rows
land in ONE Lance commit; re-running with ``on_duplicate='skip'`` is a no-op. Memory is
bounded by a batch (plus the input's ids, which the duplicate check needs, and DuckDB's
memory limit for the scoring's global step).

Sources are files, so they can be read more than once:

0. the ids alone: duplicates within the input and against the table
   (``--on-duplicate error|skip|replace``);
1. the statistics pass: validation (dimension, model, NaN/Inf, zero or extreme norms)
   and the batch's sums; statistics = previous − replaced rows + batch, a new version;
2. the write pass: the rows are shaped to the table's schema and handed to Lance's
   writer as uncommitted fragments while their scores at the new version are computed
   (:class:`curator.engine.scoring.Scoring`: conformity, estimator, loglik, dots with the
   means, in-batch pair dots). Reading, math and writing overlap: the source is read a
   batch ahead, and the next batch is scored while Lance writes this one
   (:func:`curator.engine.prefetch.prefetched`, a thread each);
3. the scoring's global step (sketch, pairs, assembly) writes one score file per new
   fragment and per existing fragment whose rows it rescored (image and text rows of
   the samples the new rows join, rows of a modality that fell below two rows); replaced
   rows get deletion vectors; then one ``Update`` commit. A source that changes between
   the passes is an error (the row counts and sums are compared).

History and snapshot of the new statistics version are written before the commit, the
record after: a crash in between leaves a table whose statistics are rebuilt, with that
version's number, on next use. With ``score=False`` (bulk loads) passes 1 and 2 are one
pass and the rows are left unscored (``stats_version`` null) for one later ``refresh``.
New rows join the stored concept clusters afterwards (a curation-column commit).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import progress as progress_mod
from ..curation.clusters import assign_new_rows
from ..engine.fragments import scan
from ..engine.prefetch import prefetched
from ..engine.rows import take_vectors
from ..engine.scoring import NEW_BASE, Scoring
from ..engine.spill import connect, scan_probes, scratch
from ..engine.statistics import current
from ..engine.targets import choose
from ..errors import BadInput, CuratorError, DuplicateIds, SchemaMismatch
from ..geometry.sums import TableStats, row_norms
from ..store.arrow import groups, vectors
from ..store.database import (
    STORAGE_VERSION,
    Database,
    TableMeta,
    check_table_name,
)
from ..store.evolution import add_columns, additions, check_compatible, conform, undo_columns
from ..store.lock import writer_lock
from ..store.schema import (
    CURATION_COLUMNS,
    DATASET_SCHEMA_VERSION,
    SCORE_COLUMNS,
    column_names,
    dataset_schema,
)
from ..store.statistics import StatsStore
from .batch_pairs import pair_dots
from .sources import ColumnOptions, Source, open_sources

ON_DUPLICATE = ("error", "skip", "replace")
MAX_ID_CHARS = 4096
NORM_RANGE = (1e-12, 1e12)  # raw CLIP norms are ~1-100; outside this float32 moments break
# Recomputed by curator, never taken from a source (an export carries them along).
DERIVED = frozenset(SCORE_COLUMNS) | frozenset(CURATION_COLUMNS)
PAIRED = ("image", "text")


@dataclass
class IngestResult:
    """What an ingest did: rows added, and the table and statistics versions it wrote."""

    rows: int
    table_version: int
    stats_version: int
    skipped: int = 0
    replaced: int = 0
    rescored: int = 0  # existing rows rescored whole (their samples gained or lost rows)
    commits: int = 0
    seconds: float = 0.0
    phases: dict = field(default_factory=dict)  # where the time went (statistics, write, …)

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in (("skipped", self.skipped), ("replaced", self.replaced),
                                                  ("rescored", self.rescored)) if v)
        return (f"ingested {self.rows} rows{extra} in {self.seconds:.1f} s: table version "
                f"{self.table_version}, statistics version {self.stats_version}")


def ingest(sources: list[str], *, db=None, table: str = "embeddings", modality: str | None = None,
           model: str | None = None, id_column: str = "id", vector_column: str = "embedding",
           sample_column: str = "sample_id", modality_column: str = "modality",
           on_duplicate: str = "error", generate_ids: bool = False, ids: str | None = None,
           metadata: str | None = None, score: bool = True, quiet: bool = True) -> IngestResult:
    """Add raw embeddings from parquet, npy/npz or clip-retrieval sources to ``table``.

    With ``score=False`` (bulk loads) statistics are still updated but the new rows are
    left unscored (``stats_version`` null, infinitely stale) for one later ``refresh``.
    """
    check_table_name(table)
    options = ColumnOptions(modality, id_column, vector_column, sample_column, modality_column,
                            generate_ids, ids, metadata)
    return ingest_sources(open_sources(list(sources), options), db=db, table=table, model=model,
                          on_duplicate=on_duplicate, score=score, quiet=quiet)


def ingest_sources(sources: list[Source], *, db=None, table: str = "embeddings",
                   model: str | None = None, on_duplicate: str = "error", score: bool = True,
                   quiet: bool = True) -> IngestResult:
    """The ingest transaction over opened sources (one writer of the table at a time)."""
    check_table_name(table)
    if on_duplicate not in ON_DUPLICATE:
        raise BadInput(f"--on-duplicate must be one of {', '.join(ON_DUPLICATE)}")
    database = Database(db)
    database.check_folder(create=True)
    with writer_lock(database, table):
        return _Ingest(sources, database, table, model, on_duplicate, score, quiet).run()


class _Ingest:
    """One ingest, pass by pass (see the module docstring)."""

    def __init__(self, sources, database, table, model, on_duplicate, score, quiet):
        self.sources, self.database, self.table = sources, database, table
        self.model, self.on_duplicate, self.score, self.quiet = model, on_duplicate, score, quiet
        self.started = time.time()
        self.dataset = database.dataset(table) if database.has_table(table) else None
        self.meta = TableMeta.from_schema(self.dataset.schema) if self.dataset is not None else None
        if self.meta is not None and model and self.meta.model != model:
            raise SchemaMismatch(f"table {table!r} holds vectors of model {self.meta.model!r}, not {model!r}")
        self.dim = self.meta.dim if self.meta else None
        self.store = StatsStore(database, table)
        self.metadata: dict[str, pa.Field] = {}  # the sources' metadata columns (pass 1)

    def run(self) -> IngestResult:
        input_ids, total = _read_ids(self.sources)
        self.skip, replaced = _resolve_duplicates(self.dataset, input_ids, self.on_duplicate)
        new_rows = total - len(self.skip)
        if new_rows <= 0 and total:
            previous = current(self.database, self.table, self.dataset)
            return IngestResult(0, self.dataset.version, previous.version, skipped=len(self.skip),
                                seconds=time.time() - self.started)
        self.skip_set = pa.array(sorted(self.skip), pa.string()) if self.skip else None
        self.plan = _PairPlan()
        try:
            return self._ingest(replaced, new_rows)
        finally:  # also when a batch fails validation: no spill folder left behind
            self.plan.close()

    def _ingest(self, replaced: pa.Table, new_rows: int) -> IngestResult:
        previous = current(self.database, self.table, self.dataset) if self.dataset is not None else None
        if not self.score:
            self.evolved_from = None
            try:
                return self._bulk(previous, replaced, new_rows)
            except BaseException:
                if self.evolved_from is not None:
                    undo_columns(self.database, self.table, self.evolved_from)
                raise
        clock = time.perf_counter()
        batch_stats = self._statistics_pass(new_rows)
        self.phases = {"statistics": time.perf_counter() - clock}
        evolved_from = None
        stats = previous.copy() if previous is not None else TableStats(self.dim)
        removed = self._remove_replaced(stats, replaced)
        stats.merge_from(batch_stats)
        stats.version = self.store.latest_version() + 1
        if self.dataset is None:
            schema = _new_schema(self.metadata, self.dim, self.model)
        else:
            added = additions(self.dataset.schema, pa.schema(list(self.metadata.values())),
                              DERIVED | {"model"})
            if added:  # metadata columns the table lacks: added first, in this lock
                evolved_from = self.dataset.version
                self.dataset = add_columns(self.database, self.table, self.dataset, added)
            schema = self.dataset.schema
        try:
            return self._write_and_score(schema, stats, batch_stats, replaced, removed, previous,
                                         new_rows)
        except BaseException:
            if evolved_from is not None:  # nothing appended: drop the columns added for it
                undo_columns(self.database, self.table, evolved_from)
            raise

    # -- pass 1: validation and statistics --------------------------------------------
    def _statistics_pass(self, new_rows: int) -> TableStats:
        stats = None
        bar = progress_mod.bar("statistics", new_rows, quiet=self.quiet)
        position = 0
        try:
            for index, (batch, norms) in enumerate(self._validated()):
                if stats is None:
                    stats = TableStats(self.dim)
                self._collect_metadata(batch)
                _accumulate(stats, batch, norms)
                self.plan.add(batch, position, index)
                position += batch.num_rows
                bar.advance(batch.num_rows)
        finally:
            bar.close()
        if stats is None:
            raise BadInput("the input holds no rows")
        return stats

    def _collect_metadata(self, batch: pa.RecordBatch) -> None:
        """The metadata columns of every batch (a later source may bring new ones); two
        sources giving one column incompatible types is an error naming both."""
        for f in batch.schema:
            if f.name in column_names() or f.name == "model" or pa.types.is_null(f.type):
                continue
            kind = f.type.value_type if pa.types.is_dictionary(f.type) else f.type
            held = self.metadata.get(f.name)
            if held is None:
                self.metadata[f.name] = pa.field(f.name, kind, nullable=True)
            else:
                check_compatible(f.name, kind, held.type)

    def _validated(self) -> Iterator[tuple[pa.RecordBatch, np.ndarray]]:
        """Source batches without skipped ids, validated; with their float32 norms. Each
        source is read a batch ahead in a thread (:func:`prefetched`): the read overlaps
        the products on the batch before."""
        for source in self.sources:
            for batch in prefetched(source.batches()):
                if self.skip_set is not None:
                    batch = batch.filter(pc.invert(pc.is_in(batch.column("id"), value_set=self.skip_set)))
                if batch.num_rows:
                    yield batch, self._validate(batch, source.path)

    def _validate(self, batch: pa.RecordBatch, path: str) -> np.ndarray:
        """Check one batch; returns the float32 norms of its vectors."""
        dim = batch.column("embedding").type.list_size
        if self.dim is None:
            self.dim = dim
        if dim != self.dim:
            raise SchemaMismatch(f"{path}: vectors of dimension {dim}, the table holds {self.dim}")
        if batch.column("modality").null_count:
            raise BadInput(f"{path}: rows without a modality")
        declared = (batch.schema.metadata or {}).get(b"curator.model")
        declared = None if declared in (None, b"unknown") else declared
        if "model" in batch.schema.names or declared:
            models = (pc.unique(batch.column("model").cast(pa.string())).to_pylist()
                      if "model" in batch.schema.names else [declared.decode()])
            expected = self.model or (self.meta.model if self.meta else None)
            if len(models) > 1 or (expected and models and models[0] != expected):
                raise SchemaMismatch(f"{path}: vectors of model(s) {', '.join(map(str, models))}; "
                                     f"the table takes {expected or models[0]!r} only")
            self.model = self.model or models[0]
        norms = row_norms(vectors(batch))  # float32; NaN/Inf (or a float32 overflow) → non-finite
        inside = (norms >= NORM_RANGE[0]) & (norms <= NORM_RANGE[1])  # False for NaN
        if not inside.all():
            _refuse_norms(vectors(batch)[~inside], path)
        return norms

    def _remove_replaced(self, stats: TableStats, replaced: pa.Table) -> TableStats | None:
        """Take the replaced rows out of the statistics' sums (their vectors, read by row id)."""
        if replaced.num_rows == 0:
            return None
        removed = TableStats(self.dim)
        rowids = replaced.column("_rowid").to_numpy()
        order = np.argsort(rowids)
        X = take_vectors(self.dataset, rowids[order])
        modality = replaced.column("modality").take(pa.array(order))
        for m, rows in groups(modality):
            sel = slice(None) if rows is None else rows
            removed.get(m).add(X[sel])
        for m, s in removed.modalities.items():
            stats.modalities[m] = stats.get(m).subtract(s)
        return removed

    # -- pass 2 and the scoring's global step -------------------------------------------
    def _write_and_score(self, schema, stats, batch_stats, replaced, removed, previous, new_rows):
        import lance

        written = TableStats(self.dim)
        scoring = Scoring(self.dataset, stats)
        keep = self.plan.keep_vectors(self.dataset, new_rows, replaced, scoring.con)
        try:
            def shaped():
                position = 0
                bar = progress_mod.bar("ingest", new_rows, quiet=self.quiet)
                try:
                    for batch, norms in self._validated():
                        X = vectors(batch)
                        _count_norms(written, batch, norms)
                        out = _shape(batch, schema, norms)
                        positions = position + np.arange(batch.num_rows)
                        pair_dot, dot_with = pair_dots(batch, X, NEW_BASE + positions)
                        scoring.add_new(positions, out, X, norms, pair_dot, dot_with,
                                        keep_vectors=keep[positions])
                        position += batch.num_rows
                        bar.advance(batch.num_rows)
                        yield out
                finally:
                    bar.close()

            clock = time.perf_counter()
            fragments = _write_fragments(shaped(), self.database.table_uri(self.table), schema)
            self.phases["write pass"] = time.perf_counter() - clock
            _check_unchanged(written, batch_stats)
            if self.dataset is None:  # a new table: an empty version 1, then this commit
                self.dataset = lance.write_dataset(schema.empty_table(), self.database.table_uri(self.table),
                                                   schema=schema, data_storage_version=STORAGE_VERSION)
                scoring.dataset = self.dataset
            touched = _touched_samples(scoring, replaced)
            shrunk = [m for m, s in stats.modalities.items()
                      if s.n < 2 and previous is not None and previous.get(m).n >= 2]
            deleted = replaced.column("_rowid").to_numpy() if replaced.num_rows else None
            chosen = choose(self.dataset, samples=touched, modalities=shrunk, exclude=deleted,
                            con=scoring.con)
            scoring.score_existing(chosen)
            if deleted is not None:
                scoring.delete(deleted, replaced.column("modality").to_numpy(zero_copy_only=False),
                               replaced.column("conformity").to_numpy(zero_copy_only=False),
                               replaced.column("sample_id"))
            outcome = scoring.finish(fragments)
        finally:
            scoring.close()
        clock = time.perf_counter()
        dataset = outcome.commit(self.dataset, f"curator ingest v{stats.version}")
        self.store.append_history(stats)  # after the commit: a crash before leaves no orphan
        stats.table_version = dataset.version
        self.store.save(stats)
        self.phases["commit"] = time.perf_counter() - clock
        for phase, seconds in outcome.seconds.items():  # vectors ran inside the write pass
            if phase != "vectors":
                self.phases[phase] = seconds
        self.phases["scores (inside write)"] = outcome.seconds.get("vectors", 0.0)
        commits = 1
        clustered = assign_new_rows(self.database, self.table, dataset)
        if clustered.version != dataset.version:
            from ..store.versions import carry_forward

            carry_forward(self.database, self.table, dataset.version, clustered)
            commits += 1
        return IngestResult(new_rows, clustered.version, stats.version, skipped=len(self.skip),
                            replaced=replaced.num_rows, rescored=outcome.rows - new_rows,
                            commits=commits, seconds=time.time() - self.started,
                            phases={k: round(v, 3) for k, v in self.phases.items()})

    def _evolved_schema(self) -> pa.Schema:
        """The table's schema after adding the metadata columns seen so far (bulk loads
        read the source once, so only the first batch's new columns can be added)."""
        added = additions(self.dataset.schema, pa.schema(list(self.metadata.values())),
                          DERIVED | {"model"})
        if added:
            self.evolved_from = self.dataset.version
            self.dataset = add_columns(self.database, self.table, self.dataset, added)
        return self.dataset.schema

    def _bulk(self, previous, replaced, new_rows) -> IngestResult:
        """``score=False``: one pass that validates, sums and appends unscored rows."""
        import lance

        first = None
        batch_stats = TableStats(self.dim) if self.dim else None
        schema_box = {}

        def shaped():
            nonlocal first, batch_stats
            for batch, norms in self._validated():
                if first is None:
                    first = batch
                    batch_stats = batch_stats or TableStats(self.dim)
                    self._collect_metadata(batch)
                    schema_box["schema"] = (self._evolved_schema() if self.dataset is not None
                                            else _new_schema(self.metadata, self.dim, self.model))
                _accumulate(batch_stats, batch, norms)
                yield _shape(batch, schema_box["schema"], norms)

        stream = shaped()
        try:
            head = next(stream)
        except StopIteration:
            raise BadInput("the input holds no rows") from None
        schema = schema_box["schema"]

        def chained():
            yield head
            yield from stream

        fragments = _write_fragments(chained(), self.database.table_uri(self.table), schema)
        if self.dataset is None:
            self.dataset = lance.write_dataset(schema.empty_table(), self.database.table_uri(self.table),
                                               schema=schema, data_storage_version=STORAGE_VERSION)
        stats = previous.copy() if previous is not None else TableStats(self.dim)
        self._remove_replaced(stats, replaced)
        stats.merge_from(batch_stats)
        if replaced.num_rows:  # their stored conformity leaves the sketch
            for m in np.unique(replaced.column("modality").to_numpy(zero_copy_only=False)):
                rows = replaced.column("modality").to_numpy(zero_copy_only=False) == m
                values = replaced.column("conformity").to_numpy(zero_copy_only=False)[rows]
                stats.get(str(m)).add_conformity(values, sign=-1)
        stats.version = self.store.latest_version() + 1
        self.store.append_history(stats)
        updated, removed_ids = [], []
        if replaced.num_rows:
            from ..engine.scoring import _split_by_fragment

            for fid, offsets in _split_by_fragment(replaced.column("_rowid").to_numpy()).items():
                metadata = self.dataset.get_fragment(fid).delete_rows(offsets)
                (removed_ids.append(fid) if metadata is None else updated.append(metadata))
        from ..store.columns import commit

        operation = lance.LanceOperation.Update(removed_fragment_ids=removed_ids,
                                                updated_fragments=updated, new_fragments=fragments)
        dataset = commit(self.dataset, operation, "curator ingest (unscored)")
        stats.table_version = dataset.version
        self.store.save(stats)
        return IngestResult(new_rows, dataset.version, stats.version, skipped=len(self.skip),
                            replaced=replaced.num_rows, commits=1,
                            seconds=time.time() - self.started)


# -- helpers ------------------------------------------------------------------------

def _write_fragments(stream, uri: str, schema: pa.Schema) -> list:
    """Lance's writer over the shaped ``stream`` (batches): uncommitted fragments. The
    stream runs a batch ahead in a thread of its own (:func:`prefetched`), so reading and
    scoring the next batch overlaps Lance's encoding and writing of this one. A
    :class:`CuratorError` raised in the stream comes back as itself (Lance's writer would
    report it wrapped in a LanceError)."""
    from lance.fragment import write_fragments

    raised: list[CuratorError] = []

    def guarded():
        try:
            yield from prefetched(stream)
        except CuratorError as exc:
            raised.append(exc)
            raise

    try:
        return write_fragments(pa.RecordBatchReader.from_batches(schema, guarded()), uri,
                               schema=schema, data_storage_version=STORAGE_VERSION,
                               max_rows_per_file=1 << 20)
    except Exception:
        if raised:
            raise raised[0] from None
        raise


def _new_schema(metadata: dict[str, pa.Field], dim: int, model: str | None) -> pa.Schema:
    """The schema of a new table: the declared columns, then the sources' metadata."""
    table_meta = TableMeta(model or "unknown", dim, DATASET_SCHEMA_VERSION).to_metadata()
    return dataset_schema(dim, list(metadata.values()), table_meta)


def _refuse_norms(X: np.ndarray, path: str) -> None:
    """The error for rows whose float32 norm is not finite or outside ``NORM_RANGE``: their
    norms again in float64, so that a float32 overflow is told apart from NaN or Inf."""
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
    if not np.isfinite(norms).all():
        raise BadInput(f"{path}: {int((~np.isfinite(norms)).sum())} vectors hold NaN or Inf values")
    if not (norms > 0).all():
        raise BadInput(f"{path}: {int((norms <= 0).sum())} zero vectors (no direction)")
    outside = (norms < NORM_RANGE[0]) | (norms > NORM_RANGE[1])
    raise BadInput(f"{path}: {int(max(outside.sum(), 1))} vectors with a norm outside "
                   f"[{NORM_RANGE[0]:g}, {NORM_RANGE[1]:g}] (their squares over- or underflow float32)")


def _shape(batch: pa.RecordBatch, schema: pa.Schema, norms: np.ndarray) -> pa.RecordBatch:
    """The batch in the table's schema: its norms, its metadata, null score columns."""
    n = batch.num_rows
    arrays = []
    for f in schema:
        if f.name == "norm":
            arrays.append(pa.array(norms.astype(np.float32), pa.float32()))
        elif f.name in batch.schema.names and f.name not in DERIVED:
            arrays.append(conform(f.name, batch.column(f.name), f.type))
        else:
            arrays.append(pa.nulls(n, f.type))
    extra = [c for c in batch.schema.names if c not in schema.names and c != "model"
             and c not in DERIVED and batch.column(c).null_count < n]
    if extra:  # only a one-pass bulk load can meet a column its first batch did not have
        raise BadInput(f"columns {', '.join(extra)} appear after the first batch of this bulk "
                       "load; ingest that source on its own, or without --no-score")
    return pa.RecordBatch.from_arrays(arrays, schema=schema)


def _accumulate(stats: TableStats, batch: pa.RecordBatch, norms: np.ndarray) -> None:
    X = vectors(batch)
    for m, rows in groups(batch.column("modality")):
        sel = slice(None) if rows is None else rows
        stats.get(m).add(X[sel], norms[sel])


def _count_norms(counted: TableStats, batch: pa.RecordBatch, norms: np.ndarray) -> None:
    """What the write pass checks against the statistics' pass: the rows and their norm
    sums per modality (``n``, ``a = Σ‖x‖``, ``b = Σ‖x‖²``), from the norms it computes
    anyway (a float64 ``Σx`` of every vector again cost 0.23 s per 1M × 512 rows). The
    statistics are a multiset's, so reordered rows are no change; a change that keeps
    every norm (a rotation) would go unseen."""
    for m, rows in groups(batch.column("modality")):
        counted.get(m).count(norms if rows is None else norms[rows])


def _check_unchanged(counted: TableStats, summed: TableStats) -> None:
    """The same rows, and norms summing alike to 1e-7: the same code
    (:meth:`ModalityStats.count`) ran on the same bytes in both passes, so only a changed
    source makes them differ."""
    for m in set(counted.modalities) | set(summed.modalities):
        a, b = counted.get(m), summed.get(m)
        if a.n != b.n or not np.allclose([a.a, a.b], [b.a, b.b], rtol=1e-7, atol=0):
            raise BadInput("the source changed between reading its statistics and writing its "
                           "rows; nothing was written")


def _touched_samples(scoring: Scoring, replaced: pa.Table) -> pa.Array:
    """Sample ids of the new image/text rows and of the replaced rows."""
    found = scoring.con.sql("SELECT DISTINCT sample_id FROM spill WHERE sample_id IS NOT NULL "
                            "AND modality IN ('image', 'text')").to_arrow_table().column(0)
    parts = [found.combine_chunks().cast(pa.string())]
    if replaced.num_rows:
        parts.append(pc.drop_null(replaced.column("sample_id")).combine_chunks().cast(pa.string()))
    return pc.unique(pa.concat_arrays(parts))


class _PairPlan:
    """Which new rows' vectors a pair dot will need after the write pass, from the ids
    pass-1 saw (position, batch, sample, modality of every new image and caption) and
    the table's existing images and captions of the same samples.

    A caption's dot taken within its batch is the right one when its sample's first
    image (the first existing image, else the first new one) is in that batch; otherwise
    the caption's vector is kept. A first image is kept when a caption of its sample lies
    outside its batch (an existing caption, or one in another batch). Kept vectors go to
    the scoring's vector spill (disk, not memory); typical sources (a sample's rows
    together) keep none.
    """

    SCHEMA = pa.schema([("position", pa.int64()), ("batch", pa.int64()),
                        ("sample_id", pa.string()), ("modality", pa.string())])

    def __init__(self):
        from ..engine.spill import ScalarSpill

        self.rows = ScalarSpill(self.SCHEMA)
        self.batches = 0

    def add(self, batch: pa.RecordBatch, position: int, index: int) -> None:
        self.batches = max(self.batches, index + 1)
        modality = batch.column("modality")
        paired = pc.and_(pc.is_in(modality, value_set=pa.array(list(PAIRED))),
                         batch.column("sample_id").is_valid())
        if not pc.any(paired).as_py():
            return
        chosen = np.flatnonzero(paired.to_numpy(zero_copy_only=False))
        self.rows.add(pa.table([pa.array(position + chosen, pa.int64()),
                                pa.array(np.full(len(chosen), index), pa.int64()),
                                batch.column("sample_id").take(pa.array(chosen)).cast(pa.string()),
                                modality.take(pa.array(chosen)).cast(pa.string())],
                               schema=self.SCHEMA))

    def keep_vectors(self, dataset, rows: int, replaced: pa.Table, con) -> np.ndarray:
        """Which of the ``rows`` new rows' vectors to keep (existing rows being replaced
        are not partners any more), with DuckDB connection ``con``."""
        keep = np.zeros(rows, bool)
        if self.rows.rows == 0 or (dataset is None and self.batches == 1):
            return keep  # one batch into a new table: every pair met in its batch
        self.rows.attach(con, "plan")
        try:
            if dataset is not None:
                reader = scan(dataset, ["sample_id", "modality"], batch_size=1 << 17,
                              filter="modality IN ('image', 'text') AND sample_id IS NOT NULL",
                              with_row_id=True).to_reader()
                con.from_arrow(reader).create_view("scan", replace=True)
                con.from_arrow(replaced.select(["_rowid"])).create_view("replaced", replace=True)
                with scan_probes(con):
                    con.execute("CREATE OR REPLACE TEMP TABLE old AS SELECT DISTINCT sample_id, modality "
                                "FROM scan WHERE sample_id IN (SELECT sample_id FROM plan) "
                                "AND _rowid NOT IN (SELECT _rowid FROM replaced)")
            else:
                con.execute("CREATE OR REPLACE TEMP TABLE old (sample_id VARCHAR, modality VARCHAR)")
            found = con.execute("""
                WITH first_new AS (
                    SELECT sample_id, arg_min(batch, position) AS batch, min(position) AS position
                    FROM plan WHERE modality = 'image' GROUP BY sample_id),
                old_image AS (SELECT DISTINCT sample_id FROM old WHERE modality = 'image'),
                old_text AS (SELECT DISTINCT sample_id FROM old WHERE modality = 'text'),
                captions AS (
                    SELECT s.position FROM plan s
                    LEFT JOIN first_new f USING (sample_id)
                    WHERE s.modality = 'text'
                      AND (s.sample_id IN (SELECT sample_id FROM old_image)
                           OR (f.batch IS NOT NULL AND f.batch <> s.batch))),
                images AS (
                    SELECT f.position FROM first_new f
                    WHERE f.sample_id NOT IN (SELECT sample_id FROM old_image)
                      AND (f.sample_id IN (SELECT sample_id FROM old_text)
                           OR EXISTS (SELECT 1 FROM plan s WHERE s.sample_id = f.sample_id
                                      AND s.modality = 'text' AND s.batch <> f.batch)))
                SELECT position FROM captions UNION SELECT position FROM images""").fetchnumpy()
        finally:
            con.execute("DROP VIEW IF EXISTS plan")
        keep[np.asarray(found["position"], np.int64)] = True
        return keep

    def close(self) -> None:
        self.rows.close()


# -- duplicates --------------------------------------------------------------------

def _read_ids(sources: list[Source]) -> tuple[pa.Array, int]:
    parts = []
    for source in sources:
        for batch in source.batches(columns="ids"):
            ids = batch.column("id")
            if ids.null_count:
                raise BadInput(f"{source.path}: {ids.null_count} rows have no id")
            lengths = pc.utf8_length(ids).to_numpy(zero_copy_only=False)
            if (lengths == 0).any():
                raise BadInput(f"{source.path}: {int((lengths == 0).sum())} empty ids")
            if (lengths > MAX_ID_CHARS).any():
                raise BadInput(f"{source.path}: ids longer than {MAX_ID_CHARS} characters")
            parts.append(ids)
    ids = pa.concat_arrays(parts) if parts else pa.array([], pa.string())
    return ids, len(ids)


def _rows_with_ids(dataset, ids: pa.Array) -> pa.Table:
    """The table's rows whose id is among ``ids`` (columns of ``_REPLACED``, in row-id
    order): one streaming scan of four scalar columns, semi-joined in DuckDB against a hash
    of the input's ids built once (an Arrow ``is_in`` per batch would rebuild it for every
    batch of the table). Memory: the input's ids and DuckDB's limit, not the table."""
    with scratch() as folder, connect(folder) as con:
        con.from_arrow(pa.table({"id": ids.cast(pa.string())})).create_view("input_ids")
        reader = scan(dataset, ["id", "modality", "sample_id", "conformity"], with_row_id=True,
                      batch_size=262_144).to_reader()
        con.from_arrow(reader).create_view("scan")
        with scan_probes(con):
            found = con.sql("SELECT id, modality, sample_id, conformity, _rowid FROM scan "
                            "WHERE id IN (SELECT id FROM input_ids) ORDER BY _rowid").to_arrow_table()
        return found.cast(_REPLACED)


_REPLACED = pa.schema([("id", pa.string()), ("modality", pa.string()), ("sample_id", pa.string()),
                       ("conformity", pa.float32()), ("_rowid", pa.uint64())])


def _resolve_duplicates(dataset, ids: pa.Array, on_duplicate: str) -> tuple[set, pa.Table]:
    """(ids to skip, the existing rows to replace: id, modality, sample_id, conformity,
    _rowid)."""
    if len(ids) and pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:3]
        raise DuplicateIds(f"duplicate ids within the input: {', '.join(map(repr, dup))}")
    if dataset is None or len(ids) == 0:
        return set(), _REPLACED.empty_table()
    present = _rows_with_ids(dataset, ids)
    if present.num_rows == 0:
        return set(), _REPLACED.empty_table()
    names = set(present.column("id").to_pylist())
    if on_duplicate == "error":
        sample = ", ".join(repr(x) for x in sorted(names)[:3])
        raise DuplicateIds(f"{len(names)} ids already in the table (e.g. {sample}); "
                           "use --on-duplicate skip or replace")
    if on_duplicate == "skip":
        return names, _REPLACED.empty_table()
    return set(), present
