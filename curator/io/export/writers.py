"""Writers of the record formats: parquet, jsonl, csv and lance (the clip-retrieval npy
layout lives in :mod:`curator.io.export.clip`). Each takes a schema and a stream of
record batches (rows, or pair records) and cuts files at ``rows_per_file`` records."""

from __future__ import annotations

import itertools
import os

import pyarrow as pa

from ...store.database import STORAGE_VERSION


def _parts(stream, rows_per_file: int):
    """(part, batch) with batches cut so that a part holds at most ``rows_per_file`` rows."""
    part, used = 0, 0
    for batch in stream:
        start = 0
        while start < batch.num_rows:
            if used == rows_per_file:
                part, used = part + 1, 0
            take = min(rows_per_file - used, batch.num_rows - start)
            yield part, batch.slice(start, take)
            used += take
            start += take


def _write_parquet(schema, stream, folder, rows_per_file):
    import pyarrow.parquet as pq

    wrote = False
    for part, group in itertools.groupby(_parts(stream, rows_per_file),
                                         key=lambda pb: pb[0]):
        with pq.ParquetWriter(os.path.join(folder, f"part-{part:05d}.parquet"), schema) as writer:
            for _, batch in group:
                writer.write_batch(batch)
        wrote = True
    if not wrote:
        pq.write_table(schema.empty_table(), os.path.join(folder, "part-00000.parquet"))


def _write_text(kind: str):
    options = {"jsonl": "FORMAT json", "csv": "FORMAT csv, HEADER true"}[kind]

    def write(schema, stream, folder, rows_per_file):
        import duckdb

        con = duckdb.connect()  # no user SQL runs here: the statements are ours
        try:
            groups = itertools.groupby(_parts(stream, rows_per_file),
                                       key=lambda pb: pb[0])
            wrote = False
            for part, group in groups:
                _copy(con, pa.RecordBatchReader.from_batches(schema, (b for _, b in group)),
                      os.path.join(folder, f"part-{part:05d}.{kind}"), options)
                wrote = True
            if not wrote:
                _copy(con, pa.RecordBatchReader.from_batches(schema, []),
                      os.path.join(folder, f"part-00000.{kind}"), options)
        finally:
            con.close()

    return write


def _copy(con, reader, path: str, options: str) -> None:
    con.register("_export_src", reader)
    try:
        con.execute(f"COPY _export_src TO '{path.replace(chr(39), chr(39) * 2)}' ({options})")
    finally:
        con.unregister("_export_src")


def _write_lance(schema, stream, folder, rows_per_file):
    import lance

    reader = pa.RecordBatchReader.from_batches(schema, stream)
    lance.write_dataset(reader, os.path.join(folder, "data.lance"), schema=schema,
                        data_storage_version=STORAGE_VERSION,
                        max_rows_per_file=max(rows_per_file, 1024))


WRITERS = {
    "parquet": _write_parquet,
    "jsonl": _write_text("jsonl"),
    "csv": _write_text("csv"),
    "lance": _write_lance,
}
