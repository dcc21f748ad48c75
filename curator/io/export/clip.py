"""The clip-retrieval layout that ``curator ingest`` reads: ``img_emb/img_emb_K.npy``,
``text_emb/text_emb_K.npy`` and ``metadata/metadata_K.parquet`` aligned line by line.

Rows (``--unit row`` or ``sample``, :func:`write_npy`): a line pairs a sample's first
image with its first caption when their metadata columns agree (the reader puts a line's
metadata on both rows); every other image or caption goes to image-only or text-only
shards, whose ``K`` follow the paired ones. No row is duplicated. Only image and text
rows can be written this way.

Pairs (``--unit pair``, :func:`write_pair_npy`): line i of shard K is one pair, so
``img_emb_K[i]`` and ``text_emb_K[i]`` are aligned, and an image with several captions
is repeated on consecutive lines (what clip-retrieval writes for multi-caption data, and
what ``curator ingest`` reads back as one image row). The metadata holds ``sample_id``,
``image_id``, ``text_id``, each metadata column ``X`` with the pair's value (the caption's,
else the image's), and ``image:X`` / ``text:X`` with each row's own value, so that ingest
restores both rows exactly.
"""

from __future__ import annotations

import itertools
import os

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import BadInput
from ...store.arrow import vectors
from .pairs import chunks, metadata_names
from .selection import PairSelection, Selection, table_schema

_CLIP_RESERVED = ("key", "image_id", "text_id")


def check_clip_layout(schema: pa.Schema, selection: Selection | PairSelection) -> None:
    clash = [n for n in metadata_names(schema) if n in _CLIP_RESERVED or ":" in n]
    if clash:
        raise BadInput(f"--format npy: metadata column(s) {', '.join(clash)} clash with the "
                       "clip-retrieval layout; use --format parquet")
    if isinstance(selection, PairSelection):
        return
    other = sorted(set(pc.unique(selection.modality).to_pylist()) - {"image", "text"})
    if other:
        raise BadInput(f"--format npy holds image and text rows only; the selection has "
                       f"modality {', '.join(other)} (narrow --where or use --format parquet)")


def _pairs(selection: Selection) -> tuple[np.ndarray, np.ndarray]:
    """Positions (image, text) of each sample's first image and first caption."""
    first = {"image": {}, "text": {}}
    for pos, (sample, mod) in enumerate(zip(selection.sample_ids.to_pylist(),
                                            selection.modality.to_pylist())):
        if sample is not None:
            first[mod].setdefault(sample, pos)
    images = first["image"]
    pairs = sorted((p, first["text"][s]) for s, p in images.items() if s in first["text"])
    if not pairs:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    a = np.asarray(pairs, np.int64)
    return a[:, 0], a[:, 1]


def _gather(source, rowids: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows by row id (unique), in the order given, read by :func:`rows_by_id`."""
    srt = np.sort(rowids)
    got, parts = [], []
    for ids, batch in source.rows(srt, columns):
        got.append(ids)
        parts.append(batch.select(columns))
    table = pa.Table.from_batches(parts) if parts else None
    ids = np.concatenate(got)
    order = np.argsort(ids, kind="stable")
    return table.take(pa.array(order[np.searchsorted(ids[order], rowids)]))


def _same_metadata(a: pa.Table, b: pa.Table, names: list[str]) -> np.ndarray:
    same = np.ones(a.num_rows, bool)
    for n in names:
        x, y = a.column(n), b.column(n)
        eq = pc.fill_null(pc.equal(x, y), False)
        both_null = pc.and_(pc.is_null(x), pc.is_null(y))
        same &= pc.or_(eq, both_null).to_numpy(zero_copy_only=False)
    return same


def _paired(source, selection, meta: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Candidate lines (first image, first caption) whose metadata agree (no vectors read)."""
    img, txt = _pairs(selection)
    if not meta or not len(img):
        return img, txt
    same = np.ones(len(img), bool)
    for start in range(0, len(img), 1 << 18):
        i, t = img[start:start + (1 << 18)], txt[start:start + (1 << 18)]
        a, b = (_take_scalars(source.dataset, selection.rowids[p], meta) for p in (i, t))
        same[start:start + len(i)] = _same_metadata(a, b, meta)
    return img[same], txt[same]


def _take_scalars(dataset, rowids: np.ndarray, columns: list[str]) -> pa.Table:
    """Scalar columns of rows by id (cheap by random access), in the order given."""
    order = np.argsort(rowids, kind="stable")
    table = dataset._take_rows(rowids[order].tolist(), columns=columns)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return table.take(pa.array(inverse))


def write_npy(source, selection, folder, rows_per_file):
    """Paired shards first (a shard's images and captions read in one scan), then image-only
    and text-only shards; memory holds one shard."""
    import pyarrow.parquet as pq

    for sub in ("img_emb", "text_emb", "metadata"):
        os.makedirs(os.path.join(folder, sub))
    meta = metadata_names(source.dataset.schema)
    columns = ["id", "sample_id", "embedding"] + meta
    schema = table_schema(source.dataset)
    shard = itertools.count()

    def write(images: pa.Table | None, texts: pa.Table | None):
        k = next(shard)
        base = images if images is not None else texts
        md = {"sample_id": base.column("sample_id").cast(pa.string())}
        fields = [pa.field("sample_id", pa.string())]
        for modality, rows, stem in (("image", images, "img_emb"), ("text", texts, "text_emb")):
            if rows is None:
                continue
            np.save(os.path.join(folder, stem, f"{stem}_{k}.npy"), vectors(rows))
            md[f"{modality}_id"] = rows.column("id").cast(pa.string())
            fields.append(pa.field(f"{modality}_id", pa.string()))
        for n in meta:
            md[n] = base.column(n)
            fields.append(schema.field(n))
        pq.write_table(pa.table(md, schema=pa.schema(fields)),
                       os.path.join(folder, "metadata", f"metadata_{k}.parquet"))

    img_pos, txt_pos = _paired(source, selection, meta)
    unpaired = np.ones(len(selection.rowids), bool)
    unpaired[img_pos] = unpaired[txt_pos] = False
    for start in range(0, len(img_pos), rows_per_file):
        i, t = img_pos[start:start + rows_per_file], txt_pos[start:start + rows_per_file]
        rows = _gather(source, selection.rowids[np.concatenate([i, t])], columns)
        write(rows.slice(0, len(i)), rows.slice(len(i)))
    # unpaired rows: one scan, routed by modality into shards of rows_per_file rows
    pending = {"image": [], "text": []}
    for _, batch in source.rows(selection.rowids[unpaired], columns + ["modality"]):
        mods = batch.column("modality")
        for modality, rows in pending.items():
            part = batch.filter(pc.equal(mods, modality)).select(columns)
            while part.num_rows:
                room = rows_per_file - sum(r.num_rows for r in rows)
                rows.append(part.slice(0, room))
                part = part.slice(room)
                if sum(r.num_rows for r in rows) == rows_per_file:
                    _flush(write, modality, rows)
    for modality, rows in pending.items():
        if rows:
            _flush(write, modality, rows)


def _flush(write, modality: str, rows: list) -> None:
    table = pa.Table.from_batches(rows)
    write(table if modality == "image" else None, table if modality == "text" else None)
    rows.clear()



def write_pair_npy(source, pairs: PairSelection, folder: str, rows_per_file: int) -> None:
    """One line per pair, ``rows_per_file`` lines a shard; the vectors are appended to the
    ``.npy`` files chunk by chunk, so memory holds one chunk of pairs."""
    import pyarrow.parquet as pq

    for sub in ("img_emb", "text_emb", "metadata"):
        os.makedirs(os.path.join(folder, sub))
    schema = table_schema(source.dataset)
    meta = metadata_names(schema)
    dim = schema.field("embedding").type.list_size
    fields = [pa.field(n, pa.string()) for n in ("sample_id", "image_id", "text_id")]
    fields += [schema.field(n).with_nullable(True) for n in meta]
    fields += [schema.field(n).with_name(f"{side}:{n}").with_nullable(True)
               for side in ("image", "text") for n in meta]
    md_schema = pa.schema(fields)
    for k, start in enumerate(range(0, pairs.records, rows_per_file)):
        shard = pairs.slice(start, min(start + rows_per_file, pairs.records))
        files = {stem: _npy_file(os.path.join(folder, stem, f"{stem}_{k}.npy"), shard.records, dim)
                 for stem in ("img_emb", "text_emb")}
        lines = []
        with files["img_emb"], files["text_emb"]:
            for samples, images, texts, image_x, text_x in chunks(source, shard, ["id"] + meta):
                files["img_emb"].write(memoryview(np.ascontiguousarray(image_x, "<f4")))
                files["text_emb"].write(memoryview(np.ascontiguousarray(text_x, "<f4")))
                columns = [samples, images.column("id"), texts.column("id")]
                columns += [pc.coalesce(texts.column(c), images.column(c)) for c in meta]
                columns += [images.column(c) for c in meta] + [texts.column(c) for c in meta]
                lines.append(pa.table([_plain(c).cast(f.type) for c, f in zip(columns, md_schema)],
                                      schema=md_schema))
        pq.write_table(pa.concat_tables(lines) if lines else md_schema.empty_table(),
                       os.path.join(folder, "metadata", f"metadata_{k}.parquet"))


def _npy_file(path: str, rows: int, dim: int):
    """An open ``.npy`` file of float32 (rows, dim) with its header written; the caller
    appends the rows' bytes in order (what ``np.save`` writes, streamed)."""
    fh = open(path, "wb")
    np.lib.format.write_array_header_1_0(fh, {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")),
                                              "fortran_order": False, "shape": (rows, dim)})
    return fh


def _plain(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
