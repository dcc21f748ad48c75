"""Which rows (or pairs) an export writes, from one pinned table version.

The predicate is a parsed :class:`~curator.store.predicate.Predicate`, evaluated per piece
(:func:`piece_selection`, run by the executor) on scalar columns only: ``_rowid``,
``sample_id``, ``modality`` and the columns the predicate reads. The driver keeps the
matching rows' (row id, sample id, modality), plus, for ``unit='sample'``, four flags per
sample; vectors are read later, by row id, when the files are written.

Units:

- ``row``: exactly the rows that match.
- ``sample``: a sample is exported when its image row matches (or it has none) and, when
  it has captions (rows of other modalities), at least one of them matches; it exports
  its matching rows only: the image and the matching captions. A sample without an
  image exports its matching captions; a row without a ``sample_id`` is a sample of its
  own.
- ``pair``: one record per (image, caption) of a sample where both rows match: the join
  of the matching image rows and the matching text rows on ``sample_id``, in text row-id
  order (the pairs view of ``curator query``, restricted to matching rows).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...engine.executor import LOCAL, executor
from ...engine.fragments import Piece, pieces
from ...engine.rows import ROWS_PER_PIECE, select_rows
from ...store.columns import SCAN_BATCH_ROWS

UNITS = ("row", "sample", "pair")
_FLAGS = ("has_image", "image_match", "has_caption", "caption_match")


@dataclass
class Source:
    """The pinned table version being exported, and the engine that reads its rows."""

    dataset: object
    engine: str | None = None

    def rows(self, rowids: np.ndarray, columns: list[str]):
        """(row ids, batch) of the sorted ``rowids``, in that order."""
        return select_rows(self.dataset, rowids, columns, engine=self.engine)


@dataclass
class Selection:
    """The selected rows of one table version, in row-id order."""

    rowids: np.ndarray  # uint64, sorted
    sample_ids: pa.Array
    modality: pa.Array

    @property
    def records(self) -> int:
        return len(self.rowids)

    def counts(self) -> dict:
        return _counts(self.modality, self.sample_ids)


@dataclass
class PairSelection:
    """(image, caption) pairs of one table version: aligned row ids, in image row-id order,
    then text row-id order."""

    image_rowids: np.ndarray  # uint64
    text_rowids: np.ndarray  # uint64
    sample_ids: pa.Array

    @property
    def records(self) -> int:
        return len(self.text_rowids)

    def slice(self, start: int, stop: int) -> PairSelection:
        return PairSelection(self.image_rowids[start:stop], self.text_rowids[start:stop],
                             self.sample_ids.slice(start, stop - start))

    def counts(self) -> dict:
        """Distinct rows and samples written per modality."""
        if not self.records:
            return {}
        samples = pc.count_distinct(self.sample_ids).as_py()
        return {"image": {"rows": len(np.unique(self.image_rowids)), "samples": samples},
                "text": {"rows": len(np.unique(self.text_rowids)), "samples": samples}}


def piece_selection(piece: Piece, predicate, columns: list[str], unit: str
                    ) -> tuple[pa.Table | None, pa.Table | None]:
    """The selection pass's per-piece function: (``_rowid``, ``sample_id``, ``modality``)
    of the piece's matching rows; for ``unit='sample'`` also, per sample of the piece,
    whether it has an image row, a matching one, a caption row, a matching one."""
    matches, flags = [], []
    for batch in piece.batches(columns, with_row_id=True, batch_size=SCAN_BATCH_ROWS * 4):
        n = batch.num_rows
        hit = predicate.mask(batch) if predicate is not None else np.ones(n, bool)
        sid = batch.column("sample_id").cast(pa.string())
        mods = batch.column("modality")
        keep = pa.array(hit)
        matches.append(pa.table({"_rowid": batch.column("_rowid").filter(keep),
                                 "sample_id": sid.filter(keep), "modality": mods.filter(keep)}))
        if unit != "sample":
            continue
        image = pc.fill_null(pc.equal(mods, "image"), False).to_numpy(zero_copy_only=False)
        part = pa.table({"sample_id": sid, "has_image": image, "image_match": image & hit,
                         "has_caption": ~image, "caption_match": ~image & hit})
        part = part.filter(pc.is_valid(sid))
        if part.num_rows:
            flags.append(_any_by_sample(part))
    return (pa.concat_tables(matches) if matches else None,
            pa.concat_tables(flags) if flags else None)


def _any_by_sample(table: pa.Table) -> pa.Table:
    grouped = table.group_by("sample_id").aggregate([(f, "any") for f in _FLAGS])
    return grouped.select(["sample_id"] + [f"{f}_any" for f in _FLAGS]).rename_columns(
        ["sample_id", *_FLAGS])


def select(dataset, predicate, unit: str = "row", *, engine: str | None = None
           ) -> Selection | PairSelection:
    """The rows (or pairs) of ``dataset`` (one pinned version) that ``predicate`` (a parsed
    :class:`~curator.store.predicate.Predicate`, or None for every row) selects."""
    run = executor(engine)
    columns = list(dict.fromkeys(["sample_id", "modality", *(predicate.columns if predicate else ())]))
    split = None if run.name == LOCAL else ROWS_PER_PIECE
    matches, flags = [], []
    for m, f in run.map(piece_selection, [(p, predicate, columns, unit) for p in pieces(dataset, split)]):
        if m is not None:
            matches.append(m)
        if f is not None:
            flags.append(f)
    table = _sorted(matches)
    if unit == "sample" and table.num_rows:
        table = table.filter(_in_exported_samples(table, flags))
    if unit == "pair":
        return _pairs(table)
    return Selection(table.column("_rowid").to_numpy().astype(np.uint64),
                     table.column("sample_id").combine_chunks(), table.column("modality").combine_chunks())


def _sorted(parts: list[pa.Table]) -> pa.Table:
    if not parts:
        return pa.table({"_rowid": pa.array([], pa.uint64()), "sample_id": pa.array([], pa.string()),
                         "modality": pa.array([], pa.string())})
    table = pa.concat_tables(parts).combine_chunks()
    ids = table.column("_rowid").to_numpy()
    if len(ids) > 1 and not (ids[1:] > ids[:-1]).all():
        table = table.take(pa.array(np.argsort(ids, kind="stable")))
    return table


def _in_exported_samples(table: pa.Table, flags: list[pa.Table]) -> pa.Array:
    """Per matching row: whether its sample is exported (rows without a sample are)."""
    merged = _any_by_sample(pa.concat_tables(flags)) if flags else None
    if merged is None or merged.num_rows == 0:
        return pc.is_null(table.column("sample_id"))
    col = {f: merged.column(f) for f in _FLAGS}
    exported = pc.and_(pc.or_(pc.invert(col["has_image"]), col["image_match"]),
                       pc.or_(pc.invert(col["has_caption"]), col["caption_match"]))
    chosen = merged.column("sample_id").filter(exported).combine_chunks()
    sid = table.column("sample_id")
    return pc.or_(pc.is_null(sid), pc.fill_null(pc.is_in(sid, value_set=chosen), False))


def _pairs(table: pa.Table) -> PairSelection:
    """Matching image rows joined with matching text rows on sample id (scalars only)."""
    sid, mods = table.column("sample_id"), table.column("modality")
    grouped = pc.is_valid(sid)
    images = table.filter(pc.and_(grouped, pc.equal(mods, "image"))).select(["_rowid", "sample_id"])
    texts = table.filter(pc.and_(grouped, pc.equal(mods, "text"))).select(["_rowid", "sample_id"])
    joined = texts.rename_columns(["text_rowid", "sample_id"]).join(
        images.rename_columns(["image_rowid", "sample_id"]), keys="sample_id", join_type="inner")
    joined = joined.sort_by([("image_rowid", "ascending"), ("text_rowid", "ascending")])
    return PairSelection(joined.column("image_rowid").to_numpy().astype(np.uint64),
                         joined.column("text_rowid").to_numpy().astype(np.uint64),
                         joined.column("sample_id").combine_chunks())


def _counts(modality: pa.Array, sample_ids: pa.Array) -> dict:
    out = {}
    mods = modality.to_numpy(zero_copy_only=False)
    for m in sorted(set(mods.tolist())):
        rows = pa.array(mods == m)
        samples = sample_ids.filter(rows)
        distinct = pc.count_distinct(samples, mode="only_valid").as_py()
        out[m] = {"rows": int(rows.true_count), "samples": int(distinct + samples.null_count)}
    return out


def table_schema(dataset) -> pa.Schema:
    """The table's Arrow schema with its metadata in sorted order (files written twice from
    the same version are then byte-identical)."""
    schema = dataset.schema
    return schema.with_metadata(dict(sorted((schema.metadata or {}).items())))


def batches(source: Source, selection: Selection, columns: list[str] | None = None):
    """The selected rows, all (or ``columns``) columns, as batches in row-id order."""
    schema = table_schema(source.dataset)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    for _, batch in source.rows(selection.rowids, schema.names):
        yield pa.RecordBatch.from_arrays([batch.column(n) for n in schema.names], schema=schema)
