"""What the browse app shows, read from the table (no web code here).

:class:`BrowseTable` pins one table version and holds, for the rows being browsed, a
compact frame of the columns one can plot, colour or filter by: numbers as float32,
booleans and low-cardinality strings as categories, plus ``_rowid`` and the 2-D
coordinates. Ids, captions and image paths stay in the table and are read for the rows
shown (a page of the selection, one row's neighbours, its pair, its duplicate group).

Which rows: those ``where`` selects, and past ``sample`` rows a seeded uniform sample of
them (numpy's ``default_rng(seed).choice`` over their sorted row ids), so the frame
holds at most ``sample`` rows whatever the table's size (about 100 bytes a row: 1M rows
take ~0.1 GB). Coordinates are the stored ``proj_x``, ``proj_y`` (``curator project``)
when every browsed row has them, else the ``gap`` view computed from the statistics
while the rows are read (``pca`` for a one-modality table): the vectors pass through in
batches and are never kept.
"""

from __future__ import annotations

import base64
import io
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...engine.rows import select_rows, take_vectors, where_rowids
from ...engine.statistics import current
from ...errors import BadInput
from ...geometry import projection
from ...store.arrow import vectors
from ...store.columns import SCAN_BATCH_ROWS
from ...store.database import Database
from ...store.predicate import parse
from ...store.tags import tag_names

COORDS = ("proj_x", "proj_y")
PATH_COLUMNS = ("path", "image", "image_path")
TEXT_COLUMNS = ("id", "sample_id", "caption", *PATH_COLUMNS)
SCORE_COLUMNS = ("conformity", "uncertainty", "loglik", "alignment", "alignment_centered",
                 "conformity_mismatch", "conformity_est", "norm", "fn_rate")
MAX_CATEGORIES = 64  # a string column with more distinct values is not a colour
THUMB = 96  # thumbnail size, pixels


class BrowseTable:
    """The browsed rows of one table version, and the reads the app makes."""

    def __init__(self, *, db=None, table: str = "embeddings", where: str | None = None,
                 sample: int = 1_000_000, seed: int = 0):
        if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 1:
            raise BadInput("--sample must be an integer ≥ 1")
        self.database = Database(db)
        self.table = table
        self.dataset = self.database.dataset(table)
        self.predicate = parse(where, self.dataset.schema)
        self.where = self.predicate.text if self.predicate is not None else None
        self.total = self.dataset.count_rows()
        rowids = where_rowids(self.dataset, self.predicate)
        self.matching = len(rowids)
        if not len(rowids):
            raise BadInput(f"no rows of table {table!r} to browse"
                           + (f" where {self.where}" if self.where else ""))
        if len(rowids) > sample:
            rowids = np.sort(np.random.default_rng(seed).choice(rowids, sample, replace=False))
        self.sample, self.seed = int(sample), int(seed)
        self.projection = None  # "stored", or the method computed here
        self.frame = self._load(rowids)

    # -- the frame ---------------------------------------------------------------------
    @property
    def version(self) -> int:
        return self.dataset.version

    @property
    def sampled(self) -> bool:
        return len(self.frame) < self.matching

    def plottable(self, schema: pa.Schema | None = None) -> list[str]:
        """Columns the frame holds besides ``_rowid``: numbers, booleans, short strings."""
        schema = schema or self.dataset.schema
        out = []
        for f in schema:
            if f.name in TEXT_COLUMNS or f.name == "embedding" or f.name == "pair_dot":
                continue
            t = f.type
            if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t) \
                    or pa.types.is_string(t) or pa.types.is_large_string(t):
                out.append(f.name)
        return out

    def _load(self, rowids: np.ndarray):
        import pandas as pd

        schema = self.dataset.schema
        columns = self.plottable(schema)
        stored = all(c in schema.names for c in COORDS)
        view = None
        if stored:
            stored = self._coords_complete(rowids)
        if not stored:
            view = self._view()
            columns = [c for c in columns if c not in COORDS]
        read = columns + (["embedding"] if view is not None else [])
        parts = {c: _Collector(schema.field(c).type) for c in columns}
        ids, xy = [], []
        for got, batch in _stream(self.dataset, rowids, read, every=len(rowids) == self.total):
            ids.append(np.array(got, np.uint64))  # copies: nothing may keep a batch alive
            for c in columns:
                parts[c].add(batch.column(c))
            if view is not None:
                xy.append(view.coordinates(vectors(batch), fast=True).astype(np.float32))
        frame = {"_rowid": np.concatenate(ids) if ids else np.zeros(0, np.uint64)}
        for c in columns:
            frame[c] = parts[c].finish()
        if view is not None:
            both = np.concatenate(xy) if xy else np.zeros((0, 2), np.float32)
            frame["proj_x"], frame["proj_y"] = both[:, 0], both[:, 1]
        df = pd.DataFrame({k: v for k, v in frame.items() if v is not None})
        self.projection = "stored" if stored else view.method
        return df

    def _coords_complete(self, rowids: np.ndarray) -> bool:
        for _, batch in select_rows(self.dataset, rowids, list(COORDS)):
            if batch.column(0).null_count or batch.column(1).null_count:
                return False
        return True

    def _view(self) -> projection.View:
        from ..project import gap_pair

        stats = current(self.database, self.table, self.dataset, rebuild_if_stale=False).nonempty()
        pair = gap_pair(list(stats))
        if pair is not None:
            try:
                return projection.gap_view_of(stats[pair[0]], stats[pair[1]])
            except ValueError:
                pass
        return projection.pca_view_of(list(stats.values()))

    def categorical(self, column: str) -> bool:
        return str(self.frame[column].dtype) == "category"

    def numeric(self) -> list[str]:
        return [c for c in self.frame.columns if c != "_rowid" and not self.categorical(c)]

    def scores(self) -> list[str]:
        """Score columns worth a histogram: present, numeric, not all empty."""
        return [c for c in SCORE_COLUMNS if c in self.frame.columns and not self.categorical(c)
                and bool(np.isfinite(self.frame[c].to_numpy()).any())]

    def colours(self) -> list[str]:
        """Columns the scatter can be coloured by, the most telling first."""
        first = [c for c in ("modality", "conformity", "uncertainty", "loglik", "alignment",
                             "alignment_centered", "conformity_mismatch", "cluster",
                             "is_duplicate", "rebalance_keep", *self.tags())
                 if c in self.frame.columns]
        rest = [c for c in self.frame.columns if c not in first and c != "_rowid"
                and c not in COORDS]
        return first + rest

    def tags(self) -> list[str]:
        return tag_names(self.dataset)

    # -- predicates ----------------------------------------------------------------------
    def mask(self, where: str | None) -> tuple[np.ndarray, str | None]:
        """Rows of the frame ``where`` selects (evaluated on the pinned table version),
        and the predicate's normalised text. Raises BadInput for a bad predicate."""
        predicate = parse(where, self.dataset.schema)
        if predicate is None:
            return np.ones(len(self.frame), bool), None
        hits = where_rowids(self.dataset, predicate)
        return np.isin(self.frame["_rowid"].to_numpy(), hits, assume_unique=True), predicate.text

    # -- rows for display ------------------------------------------------------------------
    def rows(self, rowids, columns: list[str] | None = None, *, thumbnails: bool = True):
        """The given rows (in that order) with id, modality, caption (an image row shows
        its sample's first caption), scores and, where a path column names a readable
        image, a thumbnail (an HTML ``<img>`` with the picture inline)."""
        import pandas as pd

        rowids = np.asarray(rowids, np.uint64)
        names = set(self.dataset.schema.names)
        wanted = [c for c in ("id", "modality", "caption", "conformity", "uncertainty",
                              "alignment", "cluster", "dup_group", "is_duplicate", *self.tags(),
                              "sample_id", *PATH_COLUMNS) if c in names]
        wanted += [c for c in columns or [] if c in names and c not in wanted]
        paths = [c for c in PATH_COLUMNS if c in wanted]
        if not len(rowids):  # the same columns as a non-empty answer (tables keep their layout)
            thumb = ["thumbnail"] if thumbnails and paths else []
            return pd.DataFrame(columns=["_rowid", *thumb, *wanted])
        order = np.unique(rowids)
        got, batches = [], []
        for ids, batch in select_rows(self.dataset, order, wanted):
            got.append(ids)
            batches.append(pa.Table.from_batches([batch]).select(wanted))
        table = pa.concat_tables(batches)
        frame = table.to_pandas()
        frame.insert(0, "_rowid", np.concatenate(got))
        frame = frame.set_index("_rowid").loc[rowids].reset_index()
        if "caption" in frame.columns and "sample_id" in frame.columns:
            self._sample_captions(frame)
        if thumbnails and paths:
            frame.insert(1, "thumbnail", [_thumbnail(_first_path(r, paths)) for r in
                                          frame[paths].itertuples(index=False)])
        return frame

    def _sample_captions(self, frame) -> None:
        missing = frame["caption"].isna() | (frame["caption"] == "")
        wanted = frame.loc[missing, "sample_id"].dropna().unique().tolist()
        if not wanted:
            return
        found = {}
        value_set = pa.array(wanted, pa.string())
        for batch in self.dataset.to_batches(columns=["sample_id", "caption"],
                                             batch_size=SCAN_BATCH_ROWS * 16):
            hit = pc.and_(pc.is_in(batch.column(0), value_set=value_set),
                          pc.greater(pc.utf8_length(pc.fill_null(batch.column(1), "")), 0))
            if not pc.any(hit).as_py():
                continue
            for sid, cap in zip(pc.filter(batch.column(0), hit).to_pylist(),
                                pc.filter(batch.column(1), hit).to_pylist()):
                found.setdefault(sid, cap)
            if len(found) == len(wanted):
                break
        fill = frame.loc[missing, "sample_id"].map(found)
        frame.loc[missing, "caption"] = fill.map(lambda c: f"[sample] {c}" if isinstance(c, str) else c)

    def ids(self, rowids) -> list[str]:
        """The ``id`` of each given row, in row-id order."""
        rowids = np.unique(np.asarray(rowids, np.uint64))
        out = []
        for _, batch in select_rows(self.dataset, rowids, ["id"]):
            out.extend(batch.column(0).to_pylist())
        return out

    def neighbours(self, rowid: int, k: int = 8) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` rows of the same modality most similar to ``rowid`` by cosine, over the
        whole pinned table (exact: one streaming scan), best first: (row ids, cosines)."""
        x = take_vectors(self.dataset, np.array([rowid], np.uint64))[0].astype(np.float64)
        x /= np.linalg.norm(x) or 1.0
        modality = self._value(rowid, "modality")
        best_ids, best_cos = np.zeros(0, np.uint64), np.zeros(0)
        for batch in self.dataset.to_batches(columns=["modality", "embedding"], with_row_id=True,
                                             batch_size=SCAN_BATCH_ROWS * 4):
            same = pc.fill_null(pc.equal(batch.column("modality"), modality), False)
            same = same.to_numpy(zero_copy_only=False)
            if not same.any():
                continue
            X = vectors(batch)[same]
            ids = batch.column("_rowid").to_numpy()[same]
            cos = (X @ x.astype(np.float32)) / np.maximum(np.linalg.norm(X, axis=1), 1e-30)
            keep = ids != rowid
            best_ids = np.concatenate([best_ids, ids[keep]])
            best_cos = np.concatenate([best_cos, cos[keep].astype(np.float64)])
            if len(best_ids) > k:
                top = np.argpartition(-best_cos, k - 1)[:k]
                best_ids, best_cos = best_ids[top], best_cos[top]
        order = np.argsort(-best_cos, kind="stable")
        return best_ids[order], best_cos[order]

    def same_value(self, rowid: int, column: str) -> np.ndarray:
        """Row ids of the rows whose ``column`` equals this row's (none when it is null):
        its pair (``sample_id``) or its duplicate group (``dup_group``)."""
        if column not in self.dataset.schema.names:
            return np.zeros(0, np.uint64)
        value = self._value(rowid, column)
        if value is None:
            return np.zeros(0, np.uint64)
        scalar = pa.scalar(value, self.dataset.schema.field(column).type)
        out = []
        for batch in self.dataset.to_batches(columns=[column], with_row_id=True,
                                             batch_size=SCAN_BATCH_ROWS * 16):
            hit = pc.fill_null(pc.equal(batch.column(0), scalar), False)
            if pc.any(hit).as_py():
                out.append(pc.filter(batch.column("_rowid"), hit).to_numpy())
        return np.sort(np.concatenate(out)).astype(np.uint64) if out else np.zeros(0, np.uint64)

    def _value(self, rowid: int, column: str):
        for _, batch in select_rows(self.dataset, np.array([rowid], np.uint64), [column]):
            return batch.column(0)[0].as_py()
        return None

    # -- after a tag -------------------------------------------------------------------------
    def reload_tag(self, name: str) -> None:
        """Pin the table's latest version and read the tag ``name`` for the frame's rows
        (a tag write changes no row ids)."""
        self.dataset = self.database.dataset(self.table)
        rowids = self.frame["_rowid"].to_numpy()
        values = []
        for _, batch in select_rows(self.dataset, rowids, [name]):
            values.append(batch.column(0))
        self.frame[name] = _column(pa.chunked_array(values, pa.bool_()))


def _stream(dataset, rowids: np.ndarray, columns: list[str], every: bool):
    """(row ids, batch) of the sorted ``rowids``, by one streaming scan in batches of
    16,384 rows (memory: a batch, never a whole fragment of vectors); ``every``: the
    row ids are all the table's rows."""
    last = len(rowids) - 1
    for batch in dataset.to_batches(columns=columns, with_row_id=True,
                                    batch_size=SCAN_BATCH_ROWS):
        got = batch.column("_rowid").to_numpy()
        if every:
            yield got, batch
            continue
        hit = rowids[np.minimum(np.searchsorted(rowids, got), last)] == got
        if hit.all():
            yield got, batch
        elif hit.any():
            yield got[hit], batch.filter(pa.array(hit))


class _Collector:
    """One frame column gathered batch by batch into owned arrays (a kept Arrow slice
    would keep its whole batch, vectors included, alive): numbers as float32 with NaN,
    booleans and strings as category codes; a string column with more than
    ``MAX_CATEGORIES`` values is dropped (``finish`` gives None)."""

    def __init__(self, kind: pa.DataType):
        self.kind = kind
        self.boolean = pa.types.is_boolean(kind)
        self.string = pa.types.is_string(kind) or pa.types.is_large_string(kind)
        self.parts: list[np.ndarray] = []
        self.names: dict[str, int] = {}
        self.dropped = False

    def add(self, array: pa.Array) -> None:
        if self.dropped:
            return
        if self.boolean:
            codes = pc.fill_null(pc.cast(array, pa.int8()), 2)
            self.parts.append(np.array(codes.to_numpy(zero_copy_only=False), np.int8))
        elif self.string:
            encoded = pc.fill_null(array, "(null)").dictionary_encode()
            local = [self.names.setdefault(v, len(self.names))
                     for v in encoded.dictionary.to_pylist()]
            if len(self.names) > MAX_CATEGORIES:
                self.dropped, self.parts = True, []
                return
            indices = encoded.indices.to_numpy(zero_copy_only=False)
            self.parts.append(np.asarray(local, np.int32)[indices])
        else:
            floats = pc.fill_null(pc.cast(array, pa.float64()), float("nan"))
            self.parts.append(floats.to_numpy(zero_copy_only=False).astype(np.float32))

    def finish(self):
        import pandas as pd

        if self.dropped:
            return None
        kind = np.int8 if self.boolean else np.int32 if self.string else np.float32
        values = np.concatenate(self.parts) if self.parts else np.zeros(0, kind)
        if self.boolean:
            return pd.Categorical.from_codes(values, categories=["false", "true", "null"])
        if self.string:
            return pd.Categorical.from_codes(values, categories=list(self.names))
        return values


def _column(array: pa.ChunkedArray):
    """A frame column from an Arrow column (see :class:`_Collector`)."""
    collector = _Collector(array.type)
    for chunk in array.chunks:
        collector.add(chunk)
    return collector.finish()


def _first_path(row, paths) -> str | None:
    for value in row:
        if isinstance(value, str) and value:
            return value
    return None


def _thumbnail(path: str | None) -> str:
    """An inline ``<img>`` of the image at ``path`` (empty when unreadable)."""
    if not path or not os.path.isfile(path):
        return ""
    try:
        from PIL import Image
    except ImportError:
        return ""
    try:
        with Image.open(path) as im:
            im = im.convert("RGB")
            im.thumbnail((THUMB, THUMB))
            buf = io.BytesIO()
            im.save(buf, format="JPEG", quality=80)
    except (OSError, ValueError, Image.DecompressionBombError):
        return ""
    data = base64.b64encode(buf.getvalue()).decode()
    return f'<img src="data:image/jpeg;base64,{data}" width="{im.width}" height="{im.height}">'
