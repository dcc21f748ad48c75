"""``export``: the rows a SQL predicate selects, streamed to files, with a manifest.

Selection: the predicate (DuckDB SQL, one expression) runs once over the table pinned to
one version (the version the manifest names), projecting only ``id``, ``sample_id`` and the
columns the predicate uses; the vectors are then streamed from that same version in row-id
order, in batches, so memory holds one batch of vectors plus the ids and sample ids.
``unit='sample'`` keeps a whole sample when any of its rows matches (a row without a
``sample_id`` is its own sample). Export never writes to the table.

Formats (in the folder ``out``; written to a temporary sibling and moved into place, so a
failed export leaves nothing behind):

- ``parquet``: ``part-00000.parquet``, … every column of the table (scores included), the
  table's Arrow schema and its metadata (model, dim).
- ``jsonl`` / ``csv``: ``part-00000.jsonl`` / ``.csv``; the embedding is a JSON list (in csv
  a JSON list string); floats print so that they parse back to the same float32.
- ``npy``: the clip-retrieval layout ``curator ingest`` reads: ``img_emb/img_emb_K.npy``,
  ``text_emb/text_emb_K.npy`` and ``metadata/metadata_K.parquet`` aligned line by line.
  A line pairs a sample's first image with its first caption when their metadata columns
  agree (the reader puts a line's metadata on both rows); every other image or caption
  (further captions, unpaired rows, rows without a sample) goes to image-only or text-only
  shards, whose ``K`` follow the paired ones. No row is duplicated. The metadata
  parquet holds ``sample_id``, ``image_id`` / ``text_id`` and the table's metadata columns
  (not the score columns), so re-ingest gives the same ids, samples and metadata. Only
  image and text rows can be written this way.
- ``lance``: a Lance dataset ``data.lance``.

``manifest.json`` (schemas/manifest.v1.json) names the source table and version, the
predicate, unit and format, row and sample counts per modality, every file with its bytes
and sha256, and the command that reproduces the export.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field

from ...errors import BadInput
from ...store.database import Database
from ...store.sql import check_predicate
from .clip import check_clip_layout
from .manifest import MANIFEST, checksums, manifest
from .selection import Source, select
from .writers import WRITERS

FORMATS = ("parquet", "jsonl", "csv", "npy", "lance")
UNITS = ("row", "sample")
ROWS_PER_FILE = {"parquet": 500_000, "jsonl": 500_000, "csv": 500_000, "npy": 100_000,
                 "lance": 1 << 20}


@dataclass
class ExportResult:
    """What an export wrote, from which table version (export never writes the table)."""

    out: str
    format: str
    unit: str
    predicate: str | None
    rows: int
    counts: dict = field(default_factory=dict)  # modality -> {rows, samples}
    files: int = 0
    bytes: int = 0
    manifest: str = ""
    table_version_read: int = 0
    table_version: int = 0  # unchanged: export writes nothing to the table
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        per = ", ".join(f"{m} {c['rows']} rows / {c['samples']} samples" for m, c in self.counts.items())
        where = f"where {self.predicate}" if self.predicate else "all rows"
        return (f"exported {self.rows} rows ({per or 'none'}) of table version "
                f"{self.table_version_read} ({where}, unit {self.unit}) as {self.format} to {self.out}: "
                f"{self.files} files, {self.bytes} bytes; table unchanged at version {self.table_version}\n"
                f"manifest: {self.manifest}")


def export(*, db=None, table: str = "embeddings", out, where: str | None = None,
           format: str = "parquet", unit: str = "row", overwrite: bool = False,
           table_version: int | None = None, rows_per_file: int | None = None,
           engine: str | None = None) -> ExportResult:
    """Write the rows matching ``where`` (all rows when None) of ``table`` to ``out``.
    ``engine`` ``ray`` reads the selected rows in Ray tasks (same files)."""
    started = time.time()
    if format not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}")
    if unit not in UNITS:
        raise BadInput(f"--unit must be one of {', '.join(UNITS)}")
    rows_per_file = rows_per_file or ROWS_PER_FILE[format]
    if rows_per_file < 1:
        raise BadInput("rows_per_file must be ≥ 1")
    if where is not None:
        check_predicate(where)
    database = Database(db)
    dataset = database.dataset(table, table_version)
    out = _check_out(out, overwrite, database)
    selection = select(dataset, table, where, unit)
    if format == "npy":
        check_clip_layout(dataset.schema, selection)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".curator-export-", dir=parent)
    try:
        WRITERS[format](Source(dataset, engine), selection, work, rows_per_file)
        files = checksums(work)
        record = manifest(database, table, dataset, where, unit, format, selection, files, out)
        with open(os.path.join(work, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(out, format, unit, where, len(selection.rowids), record["counts"],
                        len(files), sum(f["bytes"] for f in files), os.path.join(out, MANIFEST),
                        dataset.version, dataset.version, time.time() - started)


def _check_out(out, overwrite: bool, database: Database) -> str:
    if not out:
        raise BadInput("--out needs a folder")
    out = str(out)
    if "://" in out:
        raise BadInput(f"--out {out}: export writes to a local folder")
    out = os.path.abspath(os.path.expanduser(out))
    if database.is_local:
        db = database.uri
        if out == db or out.startswith(db + os.sep) or db.startswith(out + os.sep):
            raise BadInput(f"--out {out}: inside or around the database {db}")
    if os.path.exists(out):
        if not os.path.isdir(out):
            raise BadInput(f"--out {out}: exists and is not a folder")
        if os.listdir(out):
            if not overwrite:
                raise BadInput(f"--out {out}: exists and is not empty (use --overwrite)")
            if not os.path.exists(os.path.join(out, MANIFEST)):
                raise BadInput(f"--out {out}: not a curator export (no {MANIFEST}); refusing to overwrite it")
    return out

