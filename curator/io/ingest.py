"""The ingest transaction: validate, append raw vectors, update statistics, score.

Guarantees: vectors are stored exactly as given (float32, never normalised); bad input
raises a one-line :class:`BadInput` and leaves the table at its previous version (the
append is one Lance commit that only happens after every batch passed validation);
re-running with ``on_duplicate='skip'`` is a no-op. Memory is bounded by the batch size
(plus the input's ids, which the duplicate check needs).

Steps: (1) read the ids alone and resolve duplicates; (2) stream the batches: validate,
compute norms and in-batch pair dots, accumulate the batch's statistics, append in one
commit; (3) statistics = previous + batch (a new stats version, recorded in the history
first); the new rows are scored against them and their score columns written by Lance
data evolution; the statistics record then names the table version it describes. A
crash between (2) and (3) leaves valid rows with no scores (``stats_version`` null):
the statistics are rebuilt from the rows on next open and ``refresh`` scores them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from .. import progress as progress_mod
from ..curation.clusters import assign_new_rows
from ..engine.scoring import read_index, score_rows
from ..engine.statistics import add_batch, current
from ..errors import BadInput, CuratorError, DuplicateIds, SchemaMismatch
from ..geometry.sums import TableStats
from ..store.arrow import groups, vectors
from ..store.database import (
    STORAGE_VERSION,
    Database,
    TableMeta,
    check_table_name,
    ids_present,
)
from ..store.evolution import add_columns, additions, conform, undo_columns
from ..store.lock import writer_lock
from ..store.schema import (
    CURATION_COLUMNS,
    DATASET_SCHEMA_VERSION,
    SCORE_COLUMNS,
    column_names,
    dataset_schema,
)
from ..store.statistics import StatsStore
from .sources import ColumnOptions, Source, open_sources

ON_DUPLICATE = ("error", "skip", "replace")
_NORM = "__curator_norm"
MAX_ID_CHARS = 4096
NORM_RANGE = (1e-12, 1e12)  # raw CLIP norms are ~1-100; outside this float32 moments break  # the validated norms travel with their batch under this name
# Recomputed by curator, never taken from a source (an export carries them along).
DERIVED = frozenset(SCORE_COLUMNS) | frozenset(CURATION_COLUMNS)


@dataclass
class IngestResult:
    """What an ingest did: rows added, and the table and statistics versions it wrote."""

    rows: int
    table_version: int
    stats_version: int
    skipped: int = 0
    replaced: int = 0
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {**asdict(self), "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        extra = "".join(f", {k} {v}" for k, v in (("skipped", self.skipped), ("replaced", self.replaced)) if v)
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
        return _ingest_locked(sources, database, table, model, on_duplicate, score, quiet)


def _ingest_locked(sources, database, table, model, on_duplicate, score, quiet) -> IngestResult:
    import lance

    started = time.time()
    exists = database.has_table(table)
    dataset = database.dataset(table) if exists else None
    meta = TableMeta.from_schema(dataset.schema) if exists else None
    if meta is not None and model and meta.model != model:
        raise SchemaMismatch(f"table {table!r} holds vectors of model {meta.model!r}, not {model!r}")

    input_ids, total_rows = _read_ids(sources)
    skip_ids, replace_ids = _resolve_duplicates(dataset, input_ids, on_duplicate)
    if total_rows - len(skip_ids) <= 0 and total_rows:
        version = dataset.version
        previous = current(database, table, dataset)
        return IngestResult(0, version, previous.version, skipped=len(skip_ids),
                            seconds=time.time() - started)

    previous = current(database, table, dataset) if exists else None
    writer = _BatchWriter(sources, meta, model, skip_ids, quiet, total_rows)
    first = writer.peek_schema(dataset)
    evolved_from = None
    if writer.added:  # new metadata columns: added before the append, in this lock
        evolved_from = dataset.version
        dataset = add_columns(database, table, dataset, writer.added)
        first = dataset.schema
    replaced_stats = _replaced_statistics(dataset, replace_ids, writer.dim) if replace_ids else None

    reader = pa.RecordBatchReader.from_batches(first, writer.batches(first))
    uri = database.table_uri(table)
    try:
        if replace_ids:
            dataset = _merge_insert(dataset, reader)
        else:
            dataset = lance.write_dataset(reader, uri, mode="append" if exists else "create",
                                          data_storage_version=STORAGE_VERSION,
                                          max_rows_per_file=1 << 20)
    except Exception:
        if evolved_from is not None:  # nothing appended: drop the columns added for it
            undo_columns(database, table, evolved_from)
        if writer.error is not None:  # raised inside the stream; Lance wraps it
            raise writer.error from None
        raise
    finally:
        writer.close()
    if writer.rows == 0:
        return IngestResult(0, dataset.version, previous.version if previous else 0,
                            skipped=len(skip_ids), seconds=time.time() - started)

    new_stats = previous.copy() if previous is not None else TableStats(writer.dim)
    if replaced_stats is not None:
        for m, s in replaced_stats.modalities.items():
            new_stats.modalities[m] = new_stats.get(m).subtract(s)
    for m, s in writer.stats.modalities.items():
        new_stats.modalities[m] = new_stats.get(m).merge(s)
    dataset = score_new_rows(database, table, dataset, new_stats, score=score)
    return IngestResult(writer.rows, dataset.version, new_stats.version, skipped=len(skip_ids),
                        replaced=len(replace_ids), seconds=time.time() - started)


def score_new_rows(database: Database, table: str, dataset, stats: TableStats, score: bool = True):
    """Give ``stats`` a new version, score the never-scored rows with it, save it."""
    store = StatsStore(database, table)
    stats.version = store.latest_version() + 1
    store.append_history(stats)
    if score:
        index = read_index(dataset)
        target = index["stats_version"] < 0
        dataset, _ = score_rows(dataset, stats, target, index,
                                message=f"curator score v{stats.version}")
        dataset = assign_new_rows(database, table, dataset)
    stats.table_version = dataset.version
    store.save(stats)
    return dataset


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


def _resolve_duplicates(dataset, ids: pa.Array, on_duplicate: str) -> tuple[set, set]:
    if len(ids) and pc.count_distinct(ids).as_py() != len(ids):
        counts = pc.value_counts(ids)
        dup = [v["values"] for v in counts.to_pylist() if v["counts"] > 1][:3]
        raise DuplicateIds(f"duplicate ids within the input: {', '.join(map(repr, dup))}")
    if dataset is None or len(ids) == 0:
        return set(), set()
    present = ids_present(dataset, ids)
    if len(present) == 0:
        return set(), set()
    found = set(present.to_pylist())
    if on_duplicate == "error":
        sample = ", ".join(repr(x) for x in sorted(found)[:3])
        raise DuplicateIds(f"{len(found)} ids already in the table (e.g. {sample}); "
                           "use --on-duplicate skip or replace")
    return (found, set()) if on_duplicate == "skip" else (set(), found)


def _replaced_statistics(dataset, ids: set, dim: int) -> TableStats:
    stats = TableStats(dim)
    value_set = pa.array(sorted(ids), pa.string())
    for batch in dataset.to_batches(columns=["id", "modality", "embedding", "conformity"],
                                    batch_size=16_384):
        hit = pc.is_in(batch.column("id"), value_set=value_set)
        if not pc.any(hit).as_py():
            continue
        add_batch(stats, batch.filter(hit))
    return stats


def _merge_insert(dataset, reader):
    builder = dataset.merge_insert("id").when_matched_update_all().when_not_matched_insert_all()
    builder.execute(reader)
    return dataset.__class__(dataset.uri)


# -- the streaming writer ------------------------------------------------------------

class _BatchWriter:
    """Validates source batches and shapes them to the table schema, accumulating stats."""

    def __init__(self, sources, meta, model, skip_ids, quiet, total_rows):
        self.sources, self.meta, self.model = sources, meta, model
        self.skip = pa.array(sorted(skip_ids), pa.string()) if skip_ids else None
        self.dim = meta.dim if meta else None
        self.stats = None
        self.rows = 0
        self.error = None
        self.added: list[pa.Field] = []  # metadata columns the table lacks (peek_schema)
        self._iter = self._validated()
        self._first = None
        self._bar = progress_mod.bar("ingest", total_rows, quiet=quiet)

    def close(self):
        self._bar.close()

    def peek_schema(self, dataset) -> pa.Schema:
        """The schema of the append: the table's, or the declared columns + source metadata."""
        try:
            self._first = next(self._iter)
        except StopIteration:
            raise BadInput("the input holds no rows") from None
        batch = self._first
        if dataset is not None:  # the table's schema, plus the metadata columns it lacks
            self.added = additions(dataset.schema, batch.schema, DERIVED | {"model", _NORM})
            return pa.schema(list(dataset.schema) + self.added, metadata=dataset.schema.metadata)
        model = self.model or "unknown"
        metadata_fields = [f for f in batch.schema if f.name not in column_names() and f.name != _NORM]
        table_meta = TableMeta(model, self.dim, DATASET_SCHEMA_VERSION).to_metadata()
        return dataset_schema(self.dim, metadata_fields, table_meta)

    def batches(self, schema: pa.Schema) -> Iterator[pa.RecordBatch]:
        self.stats = TableStats(self.dim)
        pending = [self._first] if self._first is not None else []
        try:
            for batch in _chain(pending, self._iter):
                shaped = self._shape(batch, schema)
                self._accumulate(shaped)
                self.rows += shaped.num_rows
                self._bar.advance(batch.num_rows)
                yield shaped
        except CuratorError as exc:
            self.error = exc
            raise

    def _validated(self) -> Iterator[pa.RecordBatch]:
        for source in self.sources:
            for batch in source.batches():
                if self.skip is not None:
                    keep = pc.invert(pc.is_in(batch.column("id"), value_set=self.skip))
                    batch = batch.filter(keep)
                if batch.num_rows == 0:
                    continue
                norms = self._validate(batch, source.path)
                yield batch.append_column(_NORM, pa.array(norms.astype(np.float32)))

    def _validate(self, batch: pa.RecordBatch, path: str) -> np.ndarray:
        """Check one batch; returns the float64 norms of its vectors."""
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
        X = vectors(batch)
        # One pass: NaN/Inf make the float64 norm non-finite; zero vectors give 0.
        norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
        if not np.isfinite(norms).all():
            bad = int((~np.isfinite(norms)).sum())
            raise BadInput(f"{path}: {bad} vectors hold NaN or Inf values")
        if not (norms > 0).all():
            raise BadInput(f"{path}: {int((norms <= 0).sum())} zero vectors (no direction)")
        outside = (norms < NORM_RANGE[0]) | (norms > NORM_RANGE[1])
        if outside.any():
            raise BadInput(f"{path}: {int(outside.sum())} vectors with a norm outside "
                           f"[{NORM_RANGE[0]:g}, {NORM_RANGE[1]:g}] (their squares over- or underflow float32)")
        return norms

    def _shape(self, batch: pa.RecordBatch, schema: pa.Schema) -> pa.RecordBatch:
        X = vectors(batch)
        n = batch.num_rows
        given = {"norm": batch.column(_NORM), "pair_dot": _pair_dots(batch, X)}
        arrays = []
        for f in schema:
            if f.name in given:
                arrays.append(given[f.name].cast(f.type))
            elif f.name in batch.schema.names and f.name not in DERIVED:
                arrays.append(conform(f.name, batch.column(f.name), f.type))
            else:
                arrays.append(pa.nulls(n, f.type))
        extra = [c for c in batch.schema.names if c not in schema.names and c not in ("model", _NORM)
                 and c not in DERIVED and batch.column(c).null_count < n]
        if extra:
            raise BadInput(f"columns {', '.join(extra)} appear after the first batch of this ingest; "
                           "a table gains columns at the start of an ingest: ingest that source on its own")
        return pa.RecordBatch.from_arrays(arrays, schema=schema)

    def _accumulate(self, batch: pa.RecordBatch) -> None:
        X = vectors(batch)
        norms = batch.column("norm").to_numpy()
        for m, rows in groups(batch.column("modality")):
            sel = slice(None) if rows is None else rows
            self.stats.get(m).add(X[sel], norms[sel])


def _pair_dots(batch: pa.RecordBatch, X: np.ndarray) -> pa.Array:
    """⟨x_img, x_txt⟩ for text rows whose sample's image is in the same batch."""
    n = batch.num_rows
    out = np.full(n, np.nan)
    sample = batch.column("sample_id")
    if sample.null_count < n:
        codes = pc.fill_null(sample.dictionary_encode().indices, -1).to_numpy(zero_copy_only=False)
        modality = batch.column("modality")
        is_image = pc.equal(modality, "image").to_numpy(zero_copy_only=False)
        is_text = pc.equal(modality, "text").to_numpy(zero_copy_only=False)
        image_at = np.full(codes.max() + 2, -1, np.int64)
        images = np.flatnonzero(is_image & (codes >= 0))[::-1]  # reversed: the first image wins
        image_at[codes[images]] = images
        texts = np.flatnonzero(is_text & (codes >= 0))
        partner = image_at[codes[texts]]
        texts, partner = texts[partner >= 0], partner[partner >= 0]
        out[texts] = np.einsum("ij,ij->i", X[texts], X[partner])  # float32: rel. error ~2e-7
    return pa.array(out, pa.float64(), mask=np.isnan(out))


def _chain(first, rest):
    yield from first
    yield from rest
