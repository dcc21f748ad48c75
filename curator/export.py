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

import hashlib
import itertools
import json
import os
import shlex
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from . import distributed_curation
from .engine import RAY, ensure_ray, resolve_engine
from .errors import BadInput, CuratorError
from .query import PAIRS_VIEW, _first_line, check_predicate
from .schema import column_names
from .store import SCAN_BATCH_ROWS, STORAGE_VERSION, Database, TableMeta, vectors

FORMATS = ("parquet", "jsonl", "csv", "npy", "lance")
UNITS = ("row", "sample")
ROWS_PER_FILE = {"parquet": 500_000, "jsonl": 500_000, "csv": 500_000, "npy": 100_000,
                 "lance": 1 << 20}
_TAKE_SHARE = 0.02  # below this share of the table, take rows instead of scanning
MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "curator.manifest.v1"
_CLIP_RESERVED = ("key", "image_id", "text_id")


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


@dataclass
class Selection:
    """The selected rows of one table version, in row-id order."""

    rowids: np.ndarray  # uint64, sorted
    ids: pa.Array
    sample_ids: pa.Array
    modality: pa.Array

    def counts(self) -> dict:
        out = {}
        mods = self.modality.to_numpy(zero_copy_only=False)
        for m in sorted(set(mods.tolist())):
            rows = pa.array(mods == m)
            samples = self.sample_ids.filter(rows)
            distinct = pc.count_distinct(samples, mode="only_valid").as_py()
            out[m] = {"rows": int(rows.true_count), "samples": int(distinct + samples.null_count)}
        return out


def export(*, db=None, table: str = "embeddings", out, where: str | None = None,
           format: str = "parquet", unit: str = "row", overwrite: bool = False,
           version: int | None = None, rows_per_file: int | None = None,
           engine: str | None = None) -> ExportResult:
    """Write the rows matching ``where`` (all rows when None) of ``table`` to ``out``.
    ``engine`` ``ray`` reads the selected rows in Ray tasks (same files)."""
    on_ray = resolve_engine(engine) == RAY
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
    dataset = database.dataset(table, version)
    out = _check_out(out, overwrite, database)
    selection = select(dataset, table, where, unit)
    if format == "npy":
        _check_clip_layout(dataset.schema, selection)

    parent = os.path.dirname(out)
    os.makedirs(parent, exist_ok=True)
    work = tempfile.mkdtemp(prefix=".curator-export-", dir=parent)
    try:
        if on_ray:
            ensure_ray()
        reader = distributed_curation.RayRows(dataset) if on_ray else dataset
        WRITERS[format](reader, selection, work, rows_per_file)
        files = _checksums(work)
        manifest = _manifest(database, table, dataset, where, unit, format, selection, files, out)
        with open(os.path.join(work, MANIFEST), "w", encoding="utf-8") as fh:
            json.dump(manifest, fh, indent=2)
            fh.write("\n")
        if os.path.exists(out):
            shutil.rmtree(out)
        os.replace(work, out)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return ExportResult(out, format, unit, where, len(selection.rowids), manifest["counts"],
                        len(files), sum(f["bytes"] for f in files), os.path.join(out, MANIFEST),
                        dataset.version, dataset.version, time.time() - started)


# -- selection -------------------------------------------------------------------------

def select(dataset, table: str, where: str | None, unit: str = "row") -> Selection:
    """Rows of ``dataset`` (one pinned version) matching ``where``, whole samples for
    ``unit='sample'``; a bad predicate is a one-line :class:`CuratorError`."""
    scalars = dataset.to_table(columns=["id", "sample_id", "modality"], with_row_id=True)
    order = np.argsort(scalars.column("_rowid").to_numpy(), kind="stable")
    scalars = scalars.take(pa.array(order))
    ids = _array(scalars, "id")
    samples = _array(scalars, "sample_id")
    if where is None:
        keep = None
    else:
        matched = _match(dataset, table, where)
        keep = pc.is_in(ids, value_set=matched.column("id").combine_chunks().cast(pa.string()))
        if unit == "sample":
            hit = pc.drop_null(pc.unique(matched.column("sample_id").combine_chunks().cast(pa.string())))
            whole = pc.fill_null(pc.is_in(samples, value_set=hit, skip_nulls=True), False)
            keep = pc.or_(keep, whole)
    rowids = scalars.column("_rowid").to_numpy()
    if keep is None:
        return Selection(rowids, ids, samples, _array(scalars, "modality"))
    mask = keep.to_numpy(zero_copy_only=False)
    return Selection(rowids[mask], ids.filter(keep), samples.filter(keep),
                     _array(scalars, "modality").filter(keep))


def _array(table: pa.Table, name: str) -> pa.Array:
    return table.column(name).combine_chunks().cast(pa.string())


def _match(dataset, table: str, where: str) -> pa.Table:
    """Ids and sample ids of the rows the predicate selects (DuckDB over the pinned version)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.register(table, dataset)
        con.execute(PAIRS_VIEW.format(table=table))
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        return con.sql(f'SELECT id, sample_id FROM "{table}" WHERE ({where})').to_arrow_table()
    except duckdb.Error as exc:
        raise CuratorError(f"--where: {_first_line(exc)}") from None
    finally:
        con.close()


def table_schema(dataset) -> pa.Schema:
    """The table's Arrow schema with its metadata in sorted order (files written twice from
    the same version are then byte-identical)."""
    schema = dataset.schema
    return schema.with_metadata(dict(sorted((schema.metadata or {}).items())))


def batches(dataset, selection: Selection, columns: list[str] | None = None):
    """The selected rows, all (or ``columns``) columns, as batches in row-id order."""
    schema = table_schema(dataset)
    if columns is not None:
        schema = pa.schema([schema.field(c) for c in columns])
    for _, batch in rows_by_id(dataset, selection.rowids, schema.names):
        yield pa.RecordBatch.from_arrays([batch.column(n) for n in schema.names], schema=schema)


def rows_by_id(dataset, rowids: np.ndarray, columns: list[str]):
    """(row ids, batch) of the given sorted row ids, in that order.

    A scan of the fragments that hold them, filtered by row id; random access (take) only
    for a sparse selection: taking a 512-d vector costs here ~40 times what scanning one does.
    """
    if len(rowids) == 0:
        return
    dense = len(rowids) >= _TAKE_SHARE * dataset.count_rows()
    if dense and hasattr(dataset, "rows_by_id"):  # the Ray engine's reader
        yield from dataset.rows_by_id(rowids, columns)
        return
    if not dense:
        for start in range(0, len(rowids), SCAN_BATCH_ROWS):
            chunk = rowids[start:start + SCAN_BATCH_ROWS]
            for batch in dataset._take_rows(chunk.tolist(), columns=columns).to_batches():
                yield chunk[:batch.num_rows], batch
                chunk = chunk[batch.num_rows:]
        return
    wanted = set((rowids >> np.uint64(32)).tolist())
    fragments = [f for f in dataset.get_fragments() if f.fragment_id in wanted]
    last = len(rowids) - 1
    for batch in dataset.to_batches(columns=columns, with_row_id=True, fragments=fragments,
                                    batch_size=SCAN_BATCH_ROWS):
        ids = batch.column("_rowid").to_numpy()
        hit = rowids[np.minimum(np.searchsorted(rowids, ids), last)] == ids
        if hit.all():
            yield ids, batch
        elif hit.any():
            yield ids[hit], batch.filter(pa.array(hit))


# -- output folder ---------------------------------------------------------------------

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


# -- writers ---------------------------------------------------------------------------

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


def _write_parquet(dataset, selection, folder, rows_per_file):
    import pyarrow.parquet as pq

    schema = table_schema(dataset)
    wrote = False
    for part, group in itertools.groupby(_parts(batches(dataset, selection), rows_per_file),
                                         key=lambda pb: pb[0]):
        with pq.ParquetWriter(os.path.join(folder, f"part-{part:05d}.parquet"), schema) as writer:
            for _, batch in group:
                writer.write_batch(batch)
        wrote = True
    if not wrote:
        pq.write_table(schema.empty_table(), os.path.join(folder, "part-00000.parquet"))


def _write_text(kind: str):
    options = {"jsonl": "FORMAT json", "csv": "FORMAT csv, HEADER true"}[kind]

    def write(dataset, selection, folder, rows_per_file):
        import duckdb

        con = duckdb.connect()  # no user SQL runs here: the statements are ours
        schema = table_schema(dataset)
        try:
            groups = itertools.groupby(_parts(batches(dataset, selection), rows_per_file),
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


def _write_lance(dataset, selection, folder, rows_per_file):
    import lance

    schema = table_schema(dataset)
    reader = pa.RecordBatchReader.from_batches(schema, batches(dataset, selection))
    lance.write_dataset(reader, os.path.join(folder, "data.lance"), schema=schema,
                        data_storage_version=STORAGE_VERSION,
                        max_rows_per_file=max(rows_per_file, 1024))


# -- the clip-retrieval layout -----------------------------------------------------------

def _metadata_names(schema: pa.Schema) -> list[str]:
    declared = set(column_names())
    return [n for n in schema.names if n not in declared]


def _check_clip_layout(schema: pa.Schema, selection: Selection) -> None:
    clash = [n for n in _metadata_names(schema) if n in _CLIP_RESERVED]
    if clash:
        raise BadInput(f"--format npy: metadata column(s) {', '.join(clash)} clash with the "
                       "clip-retrieval layout; use --format parquet")
    other = sorted(set(selection.modality.to_pylist()) - {"image", "text"})
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


def _gather(dataset, rowids: np.ndarray, columns: list[str]) -> pa.Table:
    """Rows by row id (unique), in the order given, read by :func:`rows_by_id`."""
    srt = np.sort(rowids)
    got, parts = [], []
    for ids, batch in rows_by_id(dataset, srt, columns):
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


def _paired(dataset, selection, meta: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Candidate lines (first image, first caption) whose metadata agree (no vectors read)."""
    img, txt = _pairs(selection)
    if not meta or not len(img):
        return img, txt
    same = np.ones(len(img), bool)
    for start in range(0, len(img), 1 << 18):
        i, t = img[start:start + (1 << 18)], txt[start:start + (1 << 18)]
        a, b = (_take_scalars(dataset, selection.rowids[p], meta) for p in (i, t))
        same[start:start + len(i)] = _same_metadata(a, b, meta)
    return img[same], txt[same]


def _take_scalars(dataset, rowids: np.ndarray, columns: list[str]) -> pa.Table:
    """Scalar columns of rows by id (cheap by random access), in the order given."""
    order = np.argsort(rowids, kind="stable")
    table = dataset._take_rows(rowids[order].tolist(), columns=columns)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return table.take(pa.array(inverse))


def _write_npy(dataset, selection, folder, rows_per_file):
    """Paired shards first (a shard's images and captions read in one scan), then image-only
    and text-only shards; memory holds one shard."""
    import pyarrow.parquet as pq

    for sub in ("img_emb", "text_emb", "metadata"):
        os.makedirs(os.path.join(folder, sub))
    meta = _metadata_names(dataset.schema)
    columns = ["id", "sample_id", "embedding"] + meta
    schema = table_schema(dataset)
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

    img_pos, txt_pos = _paired(dataset, selection, meta)
    unpaired = np.ones(len(selection.rowids), bool)
    unpaired[img_pos] = unpaired[txt_pos] = False
    for start in range(0, len(img_pos), rows_per_file):
        i, t = img_pos[start:start + rows_per_file], txt_pos[start:start + rows_per_file]
        rows = _gather(dataset, selection.rowids[np.concatenate([i, t])], columns)
        write(rows.slice(0, len(i)), rows.slice(len(i)))
    # unpaired rows: one scan, routed by modality into shards of rows_per_file rows
    pending = {"image": [], "text": []}
    for _, batch in rows_by_id(dataset, selection.rowids[unpaired], columns + ["modality"]):
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


WRITERS = {
    "parquet": _write_parquet,
    "jsonl": _write_text("jsonl"),
    "csv": _write_text("csv"),
    "npy": _write_npy,
    "lance": _write_lance,
}


# -- manifest --------------------------------------------------------------------------

def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _checksums(folder: str) -> list[dict]:
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files.append({"path": os.path.relpath(path, folder).replace(os.sep, "/"),
                          "bytes": os.path.getsize(path), "sha256": sha256(path)})
    return sorted(files, key=lambda f: f["path"])


def _manifest(database, table, dataset, where, unit, fmt, selection, files, out) -> dict:
    from . import __version__
    from .optimize import protect_version

    meta = TableMeta.from_schema(dataset.schema)
    created = datetime.now(timezone.utc)
    # A tag keeps the exported version from `curator optimize`'s pruning, so the manifest
    # can always be reproduced from (table, version, predicate).
    tag = protect_version(dataset, dataset.version,
                          f"{os.path.basename(os.path.abspath(out))}-{created:%Y%m%dT%H%M%S}")
    return {
        "schema": MANIFEST_SCHEMA,
        "curator_version": __version__,
        "created": created.isoformat(timespec="seconds"),
        "source": {"db": database.uri, "table": table, "table_version": dataset.version,
                   "model": meta.model, "dim": meta.dim, "tag": tag},
        "predicate": where,
        "unit": unit,
        "format": fmt,
        "rows": len(selection.rowids),
        "counts": selection.counts(),
        "files": files,
        "command": command(database.uri, table, dataset.version, out, where, fmt, unit),
    }


def command(db: str, table: str, version: int, out: str, where, fmt: str, unit: str) -> str:
    """The curator command line that writes this export again (from the same version when
    the CLI's export takes ``--version``)."""
    args = ["curator", "--db", db, "--table", table, "export", "--out", out, "--format", fmt,
            "--unit", unit]
    if where is not None:
        args += ["--where", where]
    flag = _cli_version_flag()
    if flag:
        args += [flag, str(version)]
    return shlex.join(args + ["--overwrite"])


def _cli_version_flag() -> str | None:
    """The export command's option that pins the table version, if the CLI has one."""
    try:
        from .cli import export as export_command
    except ImportError:
        return None
    return next((p.opts[0] for p in export_command.params if p.name == "version"), None)
