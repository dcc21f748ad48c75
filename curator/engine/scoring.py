"""Scoring rows at one statistics version, whole samples at a time, in one commit.

Every score column of a row comes from one statistics version, recorded in the row's
``stats_version`` in the same commit (the rule ``verify`` checks). ``ingest`` (new rows
and the old rows of the samples they touch), ``refresh`` (stale rows) and ``verify
--repair`` all score through :class:`Scoring`:

A. the vector pass: per row, from its vector and the statistics, ``conformity``,
   ``conformity_est``, ``loglik`` and its dots with the image and text means; old rows
   are read in pieces by the executor (:func:`piece_scalars`, so Ray runs the same
   function; the local engine runs ``SCORE_THREADS`` pieces at once), new rows are
   handed in by ingest as it streams its source. The scalars go to a spill on disk
   (:mod:`curator.engine.spill`), not to RAM;
B. the sketch: the scored rows' old conformity out, their new conformity in (counted
   per spilled part as the vector pass goes, applied at the end);
C. pairs: for each caption its sample's first image (DuckDB over the spill); the raw
   dot ⟨x_img, x_txt⟩ is reused when still valid, else computed from the two vectors;
   pair scores from scalars (:func:`curator.geometry.scores.pair_scores`);
D. assembly, ordered by row id: the spill read in key order (each part is sorted, and
   parts never interleave), merged with the pair values sorted by key in DuckDB:
   uncertainty (the sketch's CDF at the new conformity), captions' pair scores, each
   image's best over its captions;
E. one score file per fragment holding every score column (rows not scored keep their
   stored values), attached to the fragment in place of the old score columns
   (:func:`write_score_file`, run by the executor); the caller commits one ``Update``.

Memory: one batch of vectors plus DuckDB's memory limit, whatever the table's size.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..geometry import sketch
from ..geometry.scores import IMAGE, TEXT, pair_scores, row_scores
from ..geometry.sums import TableStats
from ..store.arrow import groups, vectors
from ..store.columns import SCAN_BATCH_ROWS, commit, replace_columns
from .executor import available_cpus, executor
from .fragments import Piece, pieces
from .rows import TAKE_SHARE, iter_piece_rows, take_vectors
from .spill import ScalarSpill, VectorSpill

SCORE_FIELDS = [
    ("conformity", pa.float32()),
    ("conformity_est", pa.float32()),
    ("uncertainty", pa.float32()),
    ("loglik", pa.float32()),
    ("alignment", pa.float32()),
    ("alignment_centered", pa.float32()),
    ("conformity_mismatch", pa.float32()),
    ("pair_dot", pa.float64()),
    ("stats_version", pa.int64()),
]
SCORE_COLUMNS = [name for name, _ in SCORE_FIELDS]
SCORE_SCHEMA = pa.schema(SCORE_FIELDS)
STORED_TYPES = {name: np.dtype(kind.to_pandas_dtype()) for name, kind in SCORE_FIELDS}
NEW_BASE = 1 << 62  # keys of rows not yet in the table: NEW_BASE + position in the batch
ROWS_PER_PIECE = 1 << 17  # rows of a fragment one vector-pass job reads
# Vector-pass jobs at once on the local engine, each with one BLAS thread (capped by the
# CPUs available; each job holds one scan's I/O buffer and batch). On 2 cores a refresh
# of every row of 1M × 512 took 0.88× the time of reading one fragment at a time with two
# BLAS threads, whose products shared the cores with Lance's decoding threads
# (``scripts/bench_scores.py --compare-with``, README "Performance").
SCORE_THREADS = 8
READ_COLUMNS = ["modality", "embedding", "sample_id", "norm", "pair_dot", "conformity"]

SPILL_SCHEMA = pa.schema([
    ("key", pa.int64()),  # _rowid of an existing row; NEW_BASE + position of a new one
    ("sample_id", pa.string()),
    ("modality", pa.string()),
    ("norm", pa.float64()),
    ("conformity", pa.float64()),
    ("conformity_est", pa.float64()),
    ("loglik", pa.float64()),
    ("dot_image", pa.float64()),  # ⟨x, m_image⟩ at this version
    ("dot_text", pa.float64()),  # ⟨x, m_text⟩
    ("pair_dot", pa.float64()),  # ⟨x_img, x_txt⟩ on a caption, when known
    ("dot_with", pa.int64()),  # the image key pair_dot was taken with (null: the stored one)
    ("old_conformity", pa.float64()),  # what the sketch holds for this row now (null: nothing)
])
PAIR_SCHEMA = pa.schema([
    ("text_key", pa.int64()), ("image_key", pa.int64()), ("pair_dot", pa.float64()),
    ("alignment", pa.float64()), ("alignment_centered", pa.float64()),
    ("conformity_mismatch", pa.float64()),
])


@dataclass
class ScoreModel:
    """What the vector pass needs of the statistics (shipped to Ray tasks once)."""

    live: dict  # modality -> ModalityStats (sums only matter here)
    whitening: dict  # modality -> Whitening or None
    loglik: bool = True

    @classmethod
    def of(cls, stats: TableStats, loglik: bool = True) -> ScoreModel:
        live = stats.nonempty()
        white = {m: (s.whitening() if s.n > 1 and loglik else None) for m, s in live.items()}
        for w in white.values():
            if w is not None:
                w.factor  # noqa: B018 (computed once here; Ray tasks receive it with the model)
        return cls(live, white, loglik)

    def scalars(self, X: np.ndarray, norms: np.ndarray, modality: pa.Array) -> dict[str, np.ndarray]:
        """conformity, conformity_est, loglik, dot_image, dot_text of rows X (NaN where a
        modality has no statistics); ``norms`` are the rows' norms (float64)."""
        n = len(X)
        out = {k: np.full(n, np.nan) for k in ("conformity", "conformity_est", "loglik",
                                                "dot_image", "dot_text")}
        for m, rows in groups(modality):
            if m not in self.live:
                continue
            sel = slice(None) if rows is None else rows
            scores = row_scores(X[sel], norms[sel], m, self.live, self.whitening.get(m))
            for key in ("conformity", "conformity_est", "loglik"):
                out[key][sel] = scores[key]
            for name in (IMAGE, TEXT):
                if f"dot_{name}" in scores:
                    out[f"dot_{name}"][sel] = scores[f"dot_{name}"]
        return out


def spill_table(keys, sample_id, modality, norms, scalars: dict, pair_dot, dot_with,
                old_conformity) -> pa.Table:
    """One spill part (NaN → null, so DuckDB's aggregates skip them).

    Every column is a copy: a column of a batch Lance returned (through the Arrow C data
    interface) keeps the whole batch alive, its vectors included, so a part that
    referenced one held 32 MB of vectors per 16k rows until the pass ended."""
    def f64(values):
        values = np.array(values, np.float64)  # a copy, never a view of the batch
        return pa.array(values, pa.float64(), mask=~np.isfinite(values))

    def own(strings):
        strings = strings.cast(pa.string())
        return pa.concat_arrays([strings, strings.slice(0, 0)])  # new buffers

    return pa.table([
        pa.array(np.asarray(keys, np.int64), pa.int64()),
        own(sample_id), own(modality),
        f64(norms), f64(scalars["conformity"]), f64(scalars["conformity_est"]),
        f64(scalars["loglik"]), f64(scalars["dot_image"]), f64(scalars["dot_text"]),
        f64(pair_dot), dot_with, f64(old_conformity),
    ], schema=SPILL_SCHEMA)


def piece_scalars(piece: Piece, rowids: np.ndarray | None, take: bool, model: ScoreModel
                  ) -> pa.Table:
    """The vector pass's per-piece function for existing rows (``rowids``, or every row
    of the piece when None): their spill part."""
    parts = []
    for ids, batch in iter_piece_rows(piece, rowids, READ_COLUMNS, take):
        X = vectors(batch)
        norms = batch.column("norm").to_numpy(zero_copy_only=False).astype(np.float64)
        missing = ~np.isfinite(norms)
        if missing.any():  # an unscored row from an old table: no stored norm
            norms[missing] = np.sqrt(np.einsum("ij,ij->i", X[missing], X[missing], dtype=np.float64))
        scalars = model.scalars(X, norms, batch.column("modality"))
        parts.append(spill_table(
            ids.astype(np.int64), batch.column("sample_id"), batch.column("modality"), norms,
            scalars, batch.column("pair_dot").to_numpy(zero_copy_only=False),
            pa.nulls(len(ids), pa.int64()),
            batch.column("conformity").to_numpy(zero_copy_only=False).astype(np.float64)))
    return pa.concat_tables(parts) if parts else SPILL_SCHEMA.empty_table()


@dataclass
class Outcome:
    """What a scoring transaction prepared: fragment metadata to commit, and counts."""

    updated: list = field(default_factory=list)  # FragmentMetadata of existing fragments
    new: list = field(default_factory=list)  # FragmentMetadata of new fragments (ingest)
    removed: list = field(default_factory=list)  # fragment ids whose rows were all deleted
    rows: int = 0  # rows scored
    seconds: dict = field(default_factory=dict)  # phase -> seconds (vectors, sketch, pairs, write)

    def commit(self, dataset, message: str):
        """One commit: ``Update`` of the score columns (and appended, deleted rows)."""
        import lance

        if not (self.updated or self.new or self.removed):
            return dataset
        ids = [dataset.lance_schema.field(name).id() for name in SCORE_COLUMNS]
        operation = lance.LanceOperation.Update(
            removed_fragment_ids=self.removed, updated_fragments=self.updated,
            new_fragments=self.new, fields_modified=ids)
        return commit(dataset, operation, message)


class Scoring:
    """One scoring transaction at the version of ``stats`` (sums final; its sketch is
    updated in place by :meth:`finish`)."""

    def __init__(self, dataset, stats: TableStats, *, loglik: bool = True,
                 engine: str | None = None):
        self.dataset = dataset
        self.stats = stats
        self.model = ScoreModel.of(stats, loglik)
        self.engine = engine
        self.spill = ScalarSpill(SPILL_SCHEMA, key="key")
        self.sketch_change: dict[str, np.ndarray] = {}  # modality -> the spilled rows' net bin counts
        self.dim = stats.dim
        self.new_vectors = VectorSpill(self.spill.folder, stats.dim)
        self.deleted: dict[int, np.ndarray] = {}  # fragment id -> offsets of deleted rows
        self.deleted_conformity: list[tuple[str, np.ndarray]] = []
        self.seconds: dict[str, float] = {}
        self.lost_images: list[str] = []  # samples whose image rows leave in this commit
        self._con = None

    @property
    def con(self):
        """This transaction's DuckDB connection (one per command: connecting costs)."""
        if self._con is None:
            from .spill import connect

            self._con = connect(self.spill.folder)
        self.spill.attach(self._con)
        return self._con

    # -- A: the vector pass ---------------------------------------------------------
    def score_existing(self, chosen: dict[int, np.ndarray | None]) -> None:
        """Add existing rows to the transaction: fragment id → their sorted row ids, or
        None for every row of the fragment."""
        if not chosen:
            return
        run = executor(self.engine)
        model = run.put(self.model)
        jobs = []
        for piece in pieces(self.dataset, ROWS_PER_PIECE):
            if piece.fragment_id not in chosen:
                continue
            rowids = chosen[piece.fragment_id]
            take = rowids is not None and len(rowids) <= TAKE_SHARE * piece.fragment.physical_rows
            if take and piece.offset != 0:
                continue  # a sparse fragment is read once, by its first piece
            jobs.append((piece, rowids, take, model))
        started = time.perf_counter()
        threads = min(available_cpus(), SCORE_THREADS)
        for part in run.map(piece_scalars, jobs, threads=threads):
            self._spill(part)
        self._clock("vectors", started)

    def add_new(self, positions: np.ndarray, batch: pa.RecordBatch, X: np.ndarray,
                norms: np.ndarray, pair_dot: np.ndarray, dot_with: np.ndarray,
                keep_vectors: np.ndarray | None = None) -> None:
        """Add rows not yet in the table (ingest): ``positions`` in the append order,
        their vectors, norms and in-batch pair dots (``dot_with``: key of the image each
        dot was taken with, −1 for none); ``keep_vectors`` marks rows whose vector a later
        pair dot needs."""
        started = time.perf_counter()
        scalars = self.model.scalars(X, norms, batch.column("modality"))
        keys = NEW_BASE + np.asarray(positions, np.int64)
        with_key = pa.array(dot_with, pa.int64(), mask=np.asarray(dot_with) < 0)
        self._spill(spill_table(keys, batch.column("sample_id"), batch.column("modality"),
                                norms, scalars, pair_dot, with_key, np.full(len(keys), np.nan)))
        if keep_vectors is not None and keep_vectors.any():
            self.new_vectors.add(keys[keep_vectors], X[keep_vectors])
        self._clock("vectors", started)

    def _spill(self, part: pa.Table) -> None:
        """Spill one part of scored rows and count its change to the sketch (its rows'
        old conformity out, their new one in), applied by :meth:`finish`."""
        self.spill.add(part)
        # Binned at the stored precision (float32, :func:`sketch.conformity_bins`), so a
        # rebuild from the table finds the same counts in the same bins.
        new = part.column("conformity").to_numpy(zero_copy_only=False)
        old = part.column("old_conformity").to_numpy(zero_copy_only=False)
        for m, rows in groups(part.column("modality")):
            rows = slice(None) if rows is None else rows
            change = self.sketch_change.setdefault(m, np.zeros(sketch.HIST_BINS, np.int64))
            change += sketch.counts(new[rows]) - sketch.counts(old[rows])

    def delete(self, rowids: np.ndarray, modality: np.ndarray, conformity: np.ndarray,
               sample_id: pa.Array | None = None) -> None:
        """Rows leaving the table in this commit (replaced): out of the sketch, and their
        fragments get deletion vectors; their samples' captions take their dots anew."""
        if sample_id is not None:
            images = pa.array(np.asarray(modality) == IMAGE)
            self.lost_images.extend(s for s in sample_id.filter(images).to_pylist() if s is not None)
        rowids = np.asarray(rowids, np.uint64)
        for fid, offsets in _split_by_fragment(rowids).items():
            self.deleted[fid] = np.union1d(self.deleted.get(fid, np.zeros(0, np.int64)), offsets)
        for m in np.unique(modality):
            self.deleted_conformity.append((str(m), np.asarray(conformity)[modality == m]))

    # -- B to E ----------------------------------------------------------------------
    def finish(self, new_fragments: list | None = None, version: int | None = None) -> Outcome:
        """Sketch, pairs, assembly and score files; returns what to commit. ``version``
        is written to ``stats_version`` (default: the statistics' version)."""
        version = self.stats.version if version is None else version
        con = self.con
        started = time.perf_counter()
        self._update_sketch()
        started = self._clock("sketch", started)
        pairs = ScalarSpill(PAIR_SCHEMA, os.path.join(self.spill.folder, "pairs"))
        os.makedirs(pairs.folder, exist_ok=True)
        self._pairs(con, pairs)
        pairs.attach(con, "pairs")
        started = self._clock("pairs", started)
        outcome = self._write(con, new_fragments or [], version)
        self._clock("write", started)
        outcome.seconds = {k: round(v, 3) for k, v in self.seconds.items()}
        return outcome

    def _clock(self, phase: str, started: float) -> float:
        now = time.perf_counter()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - started
        return now

    def close(self) -> None:
        if self._con is not None:
            self._con.close()
        self.new_vectors.close()
        self.spill.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def _update_sketch(self) -> None:
        for m, values in self.deleted_conformity:
            if m in self.stats.modalities:
                self.stats.modalities[m].add_conformity(values, sign=-1)
        for m, change in self.sketch_change.items():
            if m in self.stats.modalities:
                self.stats.modalities[m].hist += change
        for s in self.stats.modalities.values():
            np.maximum(s.hist, 0, out=s.hist)

    def _uncertainty(self, modality: pa.Array | str, conformity: np.ndarray) -> np.ndarray:
        """The sketch's CDF at each conformity, by the row's modality (a column, or one
        name for every row); NaN where the conformity or the modality's sketch is missing."""
        out = np.full(len(conformity), np.nan)
        for m, rows in [(modality, None)] if isinstance(modality, str) else groups(modality):
            s = self.stats.modalities.get(m)
            if s is None:
                continue
            sel = slice(None) if rows is None else rows
            values = conformity[sel]
            unc = np.full(len(values), np.nan)
            scored = np.isfinite(values)
            if scored.any():
                unc[scored] = s.cdf(values[scored])
            out[sel] = unc
        return out

    def _pairs(self, con, pairs: ScalarSpill) -> None:
        """Every caption with its sample's first image: pair dot and pair scores."""
        if IMAGE not in self.stats.modalities or TEXT not in self.stats.modalities:
            return
        m_i, m_t = self.stats.modalities[IMAGE].mean, self.stats.modalities[TEXT].mean
        con.from_arrow(pa.table({"sample_id": pa.array(self.lost_images, pa.string())})
                       ).create_view("lost_images", replace=True)
        # A stored dot was taken with the sample's first image of its day; it still is the
        # first image unless images of the sample arrived or left in this commit.
        query = f"""
            WITH first_image AS (
                SELECT sample_id, min(key) AS image_key FROM spill
                WHERE modality = '{IMAGE}' AND sample_id IS NOT NULL GROUP BY sample_id),
            changed AS (
                SELECT DISTINCT sample_id FROM spill WHERE modality = '{IMAGE}' AND key >= {NEW_BASE}
                UNION SELECT sample_id FROM lost_images)
            SELECT t.key AS text_key, f.image_key, t.pair_dot, t.dot_with,
                   t.sample_id IN (SELECT sample_id FROM changed) AS changed,
                   t.norm AS nt, t.dot_image AS t_di, t.dot_text AS t_dt, t.conformity AS ct,
                   i.norm AS ni, i.dot_image AS i_di, i.dot_text AS i_dt, i.conformity AS ci
            FROM spill t JOIN first_image f ON t.sample_id = f.sample_id
                 JOIN spill i ON i.key = f.image_key
            WHERE t.modality = '{TEXT}'"""
        for batch in con.sql(query).to_arrow_reader(1 << 16):
            col = {name: batch.column(name) for name in batch.schema.names}
            text_key = col["text_key"].to_numpy()
            image_key = col["image_key"].to_numpy()
            dot = col["pair_dot"].to_numpy(zero_copy_only=False).astype(np.float64)
            with_null = col["dot_with"].is_null().to_numpy(zero_copy_only=False)
            with_ = col["dot_with"].fill_null(-1).to_numpy()
            changed = col["changed"].to_numpy(zero_copy_only=False).astype(bool)
            stored_valid = (image_key < NEW_BASE) & ~changed
            valid = np.isfinite(dot) & np.where(with_null, stored_valid, with_ == image_key)
            if not valid.all():
                redo = ~valid
                dot[redo] = self._dots(text_key[redo], image_key[redo])
            f = {k: col[k].to_numpy(zero_copy_only=False).astype(np.float64)
                 for k in ("nt", "t_di", "t_dt", "ct", "ni", "i_di", "i_dt", "ci")}
            unc_t = self._uncertainty(TEXT, f["ct"])
            unc_i = self._uncertainty(IMAGE, f["ci"])
            scores = pair_scores(dot, f["ni"], f["nt"], f["i_di"], f["i_dt"], f["t_di"], f["t_dt"],
                                 m_i, m_t, unc_i, unc_t)
            pairs.add(pa.table([pa.array(text_key), pa.array(image_key), _f64(dot),
                                _f64(scores["alignment"]), _f64(scores["alignment_centered"]),
                                _f64(scores["conformity_mismatch"])], schema=PAIR_SCHEMA))

    def _dots(self, text_keys: np.ndarray, image_keys: np.ndarray) -> np.ndarray:
        """⟨x_img, x_txt⟩ from the two vectors: existing rows read by row id, new rows
        from the vectors ingest spilled."""
        return np.einsum("ij,ij->i", self._vectors(text_keys), self._vectors(image_keys),
                         dtype=np.float64)

    def _vectors(self, keys: np.ndarray) -> np.ndarray:
        out = np.empty((len(keys), self.dim), np.float32)
        new = keys >= NEW_BASE
        if new.any():
            out[new] = self.new_vectors.take(keys[new])
        if (~new).any():
            out[~new] = take_vectors(self.dataset, keys[~new].astype(np.uint64))
        return out

    def _write(self, con, new_fragments: list, version: int) -> Outcome:
        outcome = Outcome()
        # Each row's pair values: a caption's from its pair, an image's the best of its
        # captions' (a key is a caption's or an image's, never both), sorted by key, merged
        # with the spill read in key order (no join or sort of the whole spill).
        query = """
            WITH pair_values AS (
                SELECT text_key AS key, pair_dot, alignment, alignment_centered,
                       conformity_mismatch FROM pairs
                UNION ALL
                SELECT image_key, NULL, max(alignment), max(alignment_centered),
                       max(conformity_mismatch) FROM pairs GROUP BY image_key)
            SELECT * FROM pair_values ORDER BY key"""
        pair_values = _Merge(con.sql(query).to_arrow_reader(1 << 16), PAIR_VALUES)
        run = executor(self.engine)
        jobs = _FragmentJobs(self.dataset, new_fragments, self.deleted, version)

        def stream():  # each fragment's write job as soon as its last row is assembled
            columns = ["key", "modality", "conformity", "conformity_est", "loglik"]
            for batch in self.spill.in_key_order(columns):
                keys = batch.column("key").to_numpy()
                values = {name: batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                          for name in ("conformity", "conformity_est", "loglik")}
                values.update(pair_values.at(keys))
                values["uncertainty"] = self._uncertainty(batch.column("modality"), values["conformity"])
                outcome.rows += len(keys)
                yield from jobs.add(keys, values)
            pair_values.finish()
            yield from jobs.finish()

        for kind, metadata in run.map(_write_job, stream()):
            if kind == "removed":
                outcome.removed.append(metadata)
            elif kind == "new":
                outcome.new.append(metadata)
            else:
                outcome.updated.append(metadata)
        return outcome


PAIR_VALUES = ["pair_dot", "alignment", "alignment_centered", "conformity_mismatch"]


class _Merge:
    """Values keyed by row key from a reader sorted by key, looked up for ascending
    batches of keys (every key the reader gives is one of the batches' keys)."""

    def __init__(self, reader, columns: list[str]):
        self.reader, self.columns = iter(reader), columns
        self.keys = np.zeros(0, np.int64)
        self.values = {name: np.zeros(0) for name in columns}
        self.done = False

    def at(self, keys: np.ndarray) -> dict[str, np.ndarray]:
        """Each column's value at each of ``keys`` (ascending, after the previous call's),
        NaN where the reader has none."""
        if len(keys) == 0:
            return {name: np.zeros(0) for name in self.columns}
        while not self.done and (len(self.keys) == 0 or self.keys[-1] <= keys[-1]):
            batch = next(self.reader, None)
            if batch is None:
                self.done = True
                break
            self.keys = np.concatenate([self.keys, batch.column("key").to_numpy()])
            for name in self.columns:
                column = batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64, copy=False)
                self.values[name] = np.concatenate([self.values[name], column])
        taken = int(np.searchsorted(self.keys, keys[-1], side="right"))
        found, self.keys = self.keys[:taken], self.keys[taken:]
        at = np.searchsorted(keys, found)
        if len(found) and (at.max() >= len(keys) or not np.array_equal(keys[at], found)):
            raise AssertionError("a pair value's key is not a spilled row's")
        out = {}
        for name in self.columns:
            column = np.full(len(keys), np.nan)
            column[at] = self.values[name][:taken]
            self.values[name] = self.values[name][taken:]
            out[name] = column
        return out

    def finish(self) -> None:
        """Check every value was taken."""
        if len(self.keys) or next(self.reader, None) is not None:
            raise AssertionError("a pair value's key is not a spilled row's")


def _f64(values) -> pa.Array:
    values = np.asarray(values, np.float64)
    return pa.array(values, pa.float64(), mask=~np.isfinite(values))


def _split_by_fragment(rowids: np.ndarray) -> dict[int, np.ndarray]:
    out = {}
    fragment = (rowids >> np.uint64(32)).astype(np.int64)
    for fid in np.unique(fragment):
        out[int(fid)] = (rowids[fragment == fid] & np.uint64(0xFFFFFFFF)).astype(np.int64)
    return out


class _FragmentJobs:
    """Collects the assembled rows (ordered by key) into one write job per fragment.

    Keys ascend, so a fragment's rows arrive as one contiguous run: they are copied once,
    by slices, into buffers of the fragment's physical size (no per-batch parts to
    concatenate at the end; memory: one fragment's columns)."""

    def __init__(self, dataset, new_fragments: list, deleted: dict, version: int):
        self.dataset, self.version = dataset, version
        self.deleted = dict(deleted)
        self.new = new_fragments
        starts = np.cumsum([0] + [f.physical_rows for f in new_fragments])
        self.new_starts = starts
        self.current: int | None = None
        self.filled = 0
        self.offsets = np.zeros(0, np.int64)
        self.values: dict[str, np.ndarray] = {}

    def add(self, keys: np.ndarray, values: dict):
        """Take assembled rows (ascending keys): existing rows go to their fragment
        (``key >> 32``, offset ``key & 0xFFFFFFFF``), new rows to the new fragment that holds
        their position (target ``−1 − j`` for new fragment j). Yields the write job of each
        fragment whose rows are complete."""
        old = keys < NEW_BASE
        position = keys - NEW_BASE
        j = np.searchsorted(self.new_starts, position, side="right") - 1
        target = np.where(old, keys >> 32, -1 - j)
        offsets = np.where(old, keys & 0xFFFFFFFF, position - self.new_starts[np.maximum(j, 0)])
        for tid, begin, end in _runs(target):
            if tid != self.current:
                yield from self._flush()
                self._open(tid, values)
            count = end - begin
            if self.filled + count > len(self.offsets):
                raise AssertionError(f"more rows than fragment {tid} holds: a key given twice?")
            at = slice(self.filled, self.filled + count)
            self.offsets[at] = offsets[begin:end]
            for name, array in values.items():
                self.values[name][at] = array[begin:end]
            self.filled += count

    def _open(self, tid: int, values: dict) -> None:
        self.current = tid
        size = (self.dataset.get_fragment(tid).metadata.physical_rows if tid >= 0
                else self.new[-tid - 1].physical_rows)
        self.filled = 0
        self.offsets = np.empty(size, np.int64)
        # At the stored types (float32 but pair_dot): half the memory of float64 buffers,
        # and the score file takes them as they are.
        self.values = {name: np.empty(size, STORED_TYPES.get(name, array.dtype))
                       for name, array in values.items()}

    def _flush(self):
        if self.current is None or not self.filled:
            return
        n = self.filled
        offsets, values = self.offsets[:n], {k: v[:n] for k, v in self.values.items()}
        self.filled, self.offsets, self.values = 0, np.zeros(0, np.int64), {}
        if self.current >= 0:
            fragment = self.dataset.get_fragment(self.current)
            yield ("old", fragment, offsets, values, self.deleted.pop(self.current, None),
                   self.version)
        else:
            yield ("new", (self.dataset, self.new[-self.current - 1]), offsets, values, None,
                   self.version)

    def finish(self):
        yield from self._flush()
        for fid, offsets in self.deleted.items():  # fragments with deleted rows only
            yield ("delete", self.dataset.get_fragment(fid), np.zeros(0, np.int64), None, offsets,
                   self.version)


def _runs(values: np.ndarray) -> list[tuple[int, int, int]]:
    """(value, begin, end) of each run of equal values in ``values`` (sorted by key, so a
    fragment's rows are one run)."""
    if len(values) == 0:
        return []
    begins = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
    ends = np.r_[begins[1:], len(values)]
    return [(int(values[b]), int(b), int(e)) for b, e in zip(begins, ends)]


def _write_job(kind, target, offsets, values, deleted, version):
    """The write pass's per-fragment function (run by the executor)."""
    if kind == "new":
        dataset, metadata = target
        return "new", write_score_file(dataset, metadata, offsets, values, version, new=True)
    fragment = target
    metadata = fragment.metadata
    if deleted is not None and len(deleted):
        metadata = fragment.delete_rows(deleted)
        if metadata is None:
            return "removed", fragment.fragment_id
    if values is None:
        return "updated", metadata
    return "updated", write_score_file(fragment._ds, metadata, offsets, values, version,
                                       fragment=fragment)


def write_score_file(dataset, metadata, offsets: np.ndarray, values: dict, version: int, *,
                     fragment=None, new: bool = False):
    """Write one file with every score column for all ``metadata.physical_rows`` rows of a
    fragment (rows at ``offsets`` get ``values`` and ``stats_version = version``; an
    existing fragment's other rows keep their stored values) and return the fragment's
    metadata with that file in place of the old score columns."""
    n = metadata.physical_rows
    if len(offsets) == n and np.array_equal(offsets, np.arange(n)):  # every row, in order
        columns = {name: values[name] for name in SCORE_COLUMNS if name != "stats_version"}
        version_col = np.full(n, version, np.int64)
    else:
        columns = {name: np.full(n, np.nan) for name in SCORE_COLUMNS if name != "stats_version"}
        version_col = np.full(n, -1, np.int64)
        if not new and len(offsets) < fragment.count_rows():
            _stored(fragment, columns, version_col)
        for name, array in columns.items():
            array[offsets] = values[name]
        version_col[offsets] = version
    arrays = [pa.array(columns[name].astype(kind.to_pandas_dtype(), copy=False), kind,
                       mask=~np.isfinite(columns[name])) for name, kind in SCORE_FIELDS[:-1]]
    arrays.append(pa.array(version_col, pa.int64(), mask=version_col < 0))
    metadata, _ = replace_columns(dataset, metadata, pa.table(arrays, schema=SCORE_SCHEMA), "scores")
    return metadata


def _stored(fragment, columns: dict, version_col: np.ndarray) -> None:
    """Fill the arrays with the fragment's stored score columns, at physical offsets."""
    for batch in fragment.to_batches(columns=SCORE_COLUMNS, with_row_id=True,
                                     batch_size=SCAN_BATCH_ROWS * 4):
        at = (batch.column("_rowid").to_numpy() & np.uint64(0xFFFFFFFF)).astype(np.int64)
        for name in columns:
            columns[name][at] = batch.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        version_col[at] = batch.column("stats_version").fill_null(-1).to_numpy()
