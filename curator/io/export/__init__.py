"""``export``: the rows (or pairs) a predicate selects, streamed to files, with a manifest.

Selection (:mod:`curator.io.export.selection`): ``--where`` is parsed as one boolean
expression (:func:`curator.store.predicate.parse`) before anything is created, then
evaluated per piece of the table pinned to one version (the version the manifest
names), on scalar columns only. Units:

- ``row``: exactly the rows that match;
- ``sample``: a sample is exported when its image row matches and, if it has captions, at
  least one caption matches; it exports the image and the matching captions only. A
  sample with no image row exports its matching captions;
- ``pair``: one record per (image, caption) of a sample where both rows match, with
  ``sample_id``, ``image_id``, ``text_id``, the metadata columns, every score prefixed
  ``image_`` / ``text_`` and both vectors (:mod:`curator.io.export.pairs`).

The vectors are then streamed from that same version by row id, so memory holds one
batch (or one chunk of pairs) plus the selection's row ids and sample ids. Export never
writes to the table.

Formats (in the folder ``out``; written to a temporary sibling and moved into place, so a
failed export leaves nothing behind):

- ``parquet``: ``part-00000.parquet``, … every column of the table (scores included), the
  table's Arrow schema and its metadata (model, dim); pair records for ``--unit pair``.
- ``jsonl`` / ``csv``: ``part-00000.jsonl`` / ``.csv``; the embedding is a JSON list (in csv
  a JSON list string); floats print so that they parse back to the same float32.
- ``npy``: the clip-retrieval layout ``curator ingest`` reads: ``img_emb/img_emb_K.npy``,
  ``text_emb/text_emb_K.npy`` and ``metadata/metadata_K.parquet`` aligned line by line
  (:mod:`curator.io.export.clip`): rows without duplication, or one line per pair.
- ``lance``: a Lance dataset ``data.lance``.

``manifest.json`` (schemas/manifest.v1.json) names the source table and version, the
parsed predicate (DuckDB's normalised text and the columns it reads), unit and format,
records and per-modality row and sample counts, every file with its bytes and sha256,
and the command that reproduces the export.
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
from ...store.predicate import parse
from .clip import check_clip_layout, write_npy, write_pair_npy
from .manifest import MANIFEST, checksums, manifest
from .pairs import check_pair_names, pair_batches, pair_schema
from .selection import UNITS, Source, batches, select, table_schema
from .writers import WRITERS

FORMATS = ("parquet", "jsonl", "csv", "npy", "lance")
ROWS_PER_FILE = {"parquet": 500_000, "jsonl": 500_000, "csv": 500_000, "npy": 100_000,
                 "lance": 1 << 20}


@dataclass
class ExportResult:
    """What an export wrote, from which table version (export never writes the table).

    ``rows`` counts records (rows, or pairs for ``unit='pair'``); ``counts`` the distinct
    table rows and samples written per modality."""

    out: str
    format: str
    unit: str
    predicate: str | None  # the normalised expression
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
        what = "pairs" if self.unit == "pair" else "rows"
        return (f"exported {self.rows} {what} ({per or 'none'}) of table version "
                f"{self.table_version_read} ({where}, unit {self.unit}) as {self.format} to {self.out}: "
                f"{self.files} files, {self.bytes} bytes; table unchanged at version {self.table_version}\n"
                f"manifest: {self.manifest}")


def export(*, db=None, table: str = "embeddings", out, where: str | None = None,
           format: str = "parquet", unit: str = "row", overwrite: bool = False,
           table_version: int | None = None, rows_per_file: int | None = None,
           engine: str | None = None) -> ExportResult:
    """Write the rows (``unit`` row or sample) or pairs (``unit`` pair) matching ``where``
    (all when None) of ``table`` to ``out``. Everything is checked before anything is
    created. ``engine`` ``ray`` runs the selection and reads in Ray tasks (same files)."""
    started = time.time()
    if format not in FORMATS:
        raise BadInput(f"--format must be one of {', '.join(FORMATS)}")
    if unit not in UNITS:
        raise BadInput(f"--unit must be one of {', '.join(UNITS)}")
    rows_per_file = rows_per_file or ROWS_PER_FILE[format]
    if rows_per_file < 1:
        raise BadInput("rows_per_file must be ≥ 1")
    database = Database(db)
    dataset = database.dataset(table, table_version)
    if where is not None and not str(where).strip():
        raise BadInput("--where is empty; leave it out to export every row")
    predicate = parse(where, dataset.schema)
    if unit == "pair":
        check_pair_names(dataset.schema)
    out = _check_out(out, overwrite, database)
    selection = select(dataset, predicate, unit, engine=engine)
    if format == "npy":
        check_clip_layout(dataset.schema, selection)

    source = Source(dataset, engine)
    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".curator-export-", dir=parent)
    try:
        if format == "npy":
            (write_pair_npy if unit == "pair" else write_npy)(source, selection, work, rows_per_file)
        elif unit == "pair":
            WRITERS[format](pair_schema(dataset), pair_batches(source, selection), work, rows_per_file)
        else:
            WRITERS[format](table_schema(dataset), batches(source, selection), work, rows_per_file)
        files = checksums(work)
        record = manifest(database, table, dataset, predicate, unit, format, selection, files, out)
        with open(os.path.join(work, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(record, fh, indent=2)
            fh.write("\n")
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(out, format, unit, predicate.text if predicate is not None else None,
                        selection.records, record["counts"], len(files),
                        sum(f["bytes"] for f in files), os.path.join(out, MANIFEST),
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

