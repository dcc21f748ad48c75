"""Pair records (``export --unit pair``): one per (image, caption) of a sample where both
rows match, what a training loader reads.

Columns, in order:

- ``sample_id``, ``image_id``, ``text_id`` (strings);
- every metadata column ``X`` of the table (the columns outside curator's declared ones:
  ``caption``, ``url``, ``path``, labels, tags, ``rebalance --into`` decisions): the
  caption's value, else the image's (``coalesce(text.X, image.X)``);
- ``image_C`` and ``text_C`` for each of curator's row columns ``C`` (``norm``,
  ``conformity`` … ``conformity_mismatch``, ``pair_dot``, ``stats_version``, ``cluster``,
  ``cluster_size``, ``dup_group``, ``is_duplicate``, ``rebalance_keep``): every score, prefixed;
- ``image_embedding``, ``text_embedding``: the two raw vectors.

Records come in image row-id order, then caption row-id order, so the pairs of one image
are adjacent. They are built in chunks of :data:`PAIR_CHUNK` pairs: the chunk's image rows
and caption rows are read together by row id (per fragment a scan of the span that holds
them, or random access when they are few in it: :func:`curator.engine.rows.select_rows`),
each vector copied once into place; memory holds one chunk.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...errors import BadInput
from ...store.arrow import fixed_list, vectors
from ...store.schema import column_names
from .selection import PairSelection, Source, table_schema

PAIR_CHUNK = 16_384
CORE = ("id", "sample_id", "modality", "embedding")
KEYS = ("sample_id", "image_id", "text_id")


def metadata_names(schema: pa.Schema) -> list[str]:
    """The table's metadata columns (outside curator's declared ones), in table order."""
    declared = set(column_names())
    return [n for n in schema.names if n not in declared]


def row_columns(schema: pa.Schema) -> list[str]:
    """Curator's own per-row columns (scores and curation) that the table has."""
    return [n for n in column_names() if n not in CORE and n in schema.names]


def pair_schema(dataset) -> pa.Schema:
    """The schema of a pair record for a table (its metadata, model and dim kept)."""
    schema = table_schema(dataset)
    fields = [pa.field(k, pa.string()) for k in KEYS]
    fields += [schema.field(n).with_nullable(True) for n in metadata_names(schema)]
    for side in ("image", "text"):
        fields += [schema.field(n).with_name(f"{side}_{n}").with_nullable(True)
                   for n in row_columns(schema)]
    embedding = schema.field("embedding")
    fields += [embedding.with_name("image_embedding"), embedding.with_name("text_embedding")]
    return pa.schema(fields, metadata=schema.metadata)


def check_pair_names(schema: pa.Schema) -> None:
    """Metadata columns must not take a name the pair record gives another column."""
    made = set(KEYS) | {f"{side}_{n}" for side in ("image", "text")
                        for n in row_columns(schema) + ["embedding"]}
    clash = [n for n in metadata_names(schema) if n in made]
    if clash:
        raise BadInput(f"--unit pair: metadata column(s) {', '.join(clash)} clash with the pair "
                       "record's columns; use --unit row or sample")


def gather(source: Source, rowids: np.ndarray, columns: list[str]) -> tuple[pa.Table, np.ndarray]:
    """Scalar ``columns`` and vectors (float32, (n, d)) of the rows ``rowids`` (repeats
    allowed), in the order given. Each vector is copied once into place, then once into
    the order asked for."""
    unique, inverse = np.unique(rowids, return_inverse=True)
    dim = source.dataset.schema.field("embedding").type.list_size
    store = np.empty((len(unique), dim), np.float32)
    parts, where = [], []
    for ids, batch in source.rows(unique, ["embedding", *columns]):
        at = np.searchsorted(unique, ids)
        store[at] = vectors(batch)
        parts.append(pa.Table.from_batches([batch.select(columns)]))
        where.append(at)
    order = np.empty(len(unique), np.int64)
    order[np.concatenate(where)] = np.arange(len(unique))
    table = pa.concat_tables(parts).take(pa.array(order[inverse]))
    return table, store[inverse]


def chunks(source: Source, pairs: PairSelection, columns: list[str], chunk: int = PAIR_CHUNK
           ) -> Iterator[tuple[pa.Array, pa.Table, pa.Table, np.ndarray, np.ndarray]]:
    """(sample ids, image rows, text rows, image vectors, text vectors) of consecutive pairs,
    aligned, ``chunk`` at a time (``columns``: the scalar columns of the rows)."""
    for start in range(0, pairs.records, chunk):
        stop = min(start + chunk, pairs.records)
        n = stop - start  # images and captions of a chunk lie near each other: one read
        rows, X = gather(source, np.concatenate([pairs.image_rowids[start:stop],
                                                 pairs.text_rowids[start:stop]]), columns)
        yield pairs.sample_ids.slice(start, n), rows.slice(0, n), rows.slice(n), X[:n], X[n:]


def pair_batches(source: Source, pairs: PairSelection) -> Iterator[pa.RecordBatch]:
    """The pair records, as batches of the schema :func:`pair_schema`."""
    schema = pair_schema(source.dataset)
    base = table_schema(source.dataset)
    meta, scored = metadata_names(base), row_columns(base)
    for samples, images, texts, image_x, text_x in chunks(source, pairs, ["id"] + meta + scored):
        arrays = [samples, images.column("id"), texts.column("id")]
        arrays += [_coalesce(texts.column(n), images.column(n)) for n in meta]
        arrays += [images.column(n) for n in scored] + [texts.column(n) for n in scored]
        arrays += [fixed_list(image_x), fixed_list(text_x)]
        yield pa.RecordBatch.from_arrays([_array(a).cast(f.type) for a, f in zip(arrays, schema)],
                                         schema=schema)


def _coalesce(text: pa.ChunkedArray, image: pa.ChunkedArray):
    return pc.coalesce(text, image)


def _array(column) -> pa.Array:
    return column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
