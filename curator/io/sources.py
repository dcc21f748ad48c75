"""Readers of embedding sources, each a re-readable stream of Arrow record batches.

Every source yields batches with the columns ``id`` (string), ``sample_id`` (string,
may be null), ``modality`` (string), ``embedding`` (fixed_size_list<float32, d>), then
its metadata columns. Vectors are passed through exactly (float16/float64 are cast to
float32), never normalised. Readers stream: no source is loaded whole into memory
(``.npy`` files are memory-mapped; ``.npz`` members are read one at a time).
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..errors import BadInput
from ..store.arrow import fixed_list

BATCH_ROWS = 65_536
MAX_DIM = 8192  # the float64 d x d second moment is 512 MiB at this size
CORE = ("id", "sample_id", "modality", "embedding")


@dataclass
class ColumnOptions:
    """How to find the core columns in a parquet source, and how to name npy rows."""

    modality: str | None = None
    id_column: str = "id"
    vector_column: str = "embedding"
    sample_column: str = "sample_id"
    modality_column: str = "modality"
    generate_ids: bool = False
    ids: str | None = None
    metadata: str | None = None


@dataclass
class Source:
    """One input (file or folder) and how to read it."""

    path: str
    kind: str  # parquet | npy | npz | clip-retrieval
    options: ColumnOptions = field(default_factory=ColumnOptions)

    def batches(self, columns: str = "all") -> Iterator[pa.RecordBatch]:
        """Stream the rows; ``columns='ids'`` reads only what the ids need."""
        reader = {"parquet": _parquet, "npy": _npy, "npz": _npz, "clip-retrieval": _clip_retrieval}
        yield from reader[self.kind](self, columns == "ids")


def open_sources(paths: list[str], options: ColumnOptions) -> list[Source]:
    """Recognise each path's kind; a missing or unknown path is a BadInput."""
    if not paths:
        raise BadInput("no source given")
    sources = []
    for path in paths:
        path = os.fspath(path)
        if not os.path.exists(path):
            raise BadInput(f"{path}: no such file or directory")
        sources.append(Source(path, _kind(path), options))
    return sources


def _kind(path: str) -> str:
    if os.path.isdir(path):
        if glob.glob(os.path.join(path, "img_emb", "*.npy")) or glob.glob(os.path.join(path, "text_emb", "*.npy")):
            return "clip-retrieval"
        if _parquet_files(path):
            return "parquet"
        raise BadInput(f"{path}: folder holds no .parquet files and no clip-retrieval layout (img_emb/, text_emb/)")
    lower = path.lower()
    if lower.endswith(".npy"):
        return "npy"
    if lower.endswith(".npz"):
        return "npz"
    if lower.endswith((".parquet", ".pq")):
        return "parquet"
    with open(path, "rb") as fh:
        head = fh.read(6)
    if head[:4] == b"PAR1":
        return "parquet"
    if head == b"\x93NUMPY":
        return "npy"
    raise BadInput(f"{path}: not a parquet, .npy or .npz file")


def _parquet_files(folder: str) -> list[str]:
    files = glob.glob(os.path.join(folder, "**", "*.parquet"), recursive=True)
    return sorted(f for f in files if "/metadata/" not in f.replace(os.sep, "/"))


# -- parquet -------------------------------------------------------------------------

def _parquet(source: Source, ids_only: bool) -> Iterator[pa.RecordBatch]:
    import pyarrow.parquet as pq

    opt = source.options
    files = _parquet_files(source.path) if os.path.isdir(source.path) else [source.path]
    for path in files:
        try:
            # No pre-buffering: it reads every row group up front (3 GB RSS for a 2 GB
            # file, measured); a 16 MB read buffer keeps memory at one row group.
            pf = pq.ParquetFile(path, pre_buffer=False, buffer_size=1 << 24)
        except Exception as exc:  # pyarrow raises several types for unreadable files
            raise BadInput(f"{path}: not a readable parquet file ({_first_line(exc)})") from None
        names = pf.schema_arrow.names
        if opt.vector_column not in names:
            raise BadInput(f"{path}: no vector column {opt.vector_column!r} (use --vector-column; columns: {', '.join(names)})")
        if opt.id_column not in names and not opt.generate_ids:
            raise BadInput(f"{path}: no id column {opt.id_column!r} (use --id-column or --generate-ids)")
        wanted = names
        if ids_only:
            wanted = [c for c in (opt.id_column, opt.modality_column, opt.sample_column) if c in names]
        offset = 0
        stem = _stem(path)
        model = (pf.schema_arrow.metadata or {}).get(b"curator.model")  # an export's model
        try:
            for batch in pf.iter_batches(batch_size=BATCH_ROWS, columns=wanted):
                batch = _normalise(batch, opt, stem, offset, path, ids_only)
                yield batch.replace_schema_metadata({b"curator.model": model}) if model else batch
                offset += batch.num_rows
        except BadInput:
            raise
        except (OSError, pa.ArrowException) as exc:
            raise BadInput(f"{path}: cannot read ({_first_line(exc)})") from None


def _normalise(batch: pa.RecordBatch, opt: ColumnOptions, stem: str, offset: int, path: str,
               ids_only: bool) -> pa.RecordBatch:
    names = batch.schema.names
    n = batch.num_rows
    if opt.id_column in names:
        ids = batch.column(opt.id_column)
        if not (pa.types.is_string(ids.type) or pa.types.is_large_string(ids.type)):
            ids = ids.cast(pa.string())
        ids = ids.cast(pa.string())
    else:
        ids = pa.array([f"{stem}:{offset + i}" for i in range(n)], pa.string())
    if opt.sample_column in names:
        sample = batch.column(opt.sample_column).cast(pa.string())
    else:
        sample = pa.nulls(n, pa.string())
    if opt.modality_column in names:
        modality = batch.column(opt.modality_column).cast(pa.string())
        if opt.modality:
            modality = pc.fill_null(modality, opt.modality)
    elif opt.modality:
        modality = pa.array([opt.modality] * n, pa.string())
    else:
        raise BadInput(f"{path}: no modality column {opt.modality_column!r}; give --modality")
    columns = {"id": ids, "sample_id": sample, "modality": modality}
    if not ids_only:
        columns["embedding"] = _as_fixed_float32(batch.column(opt.vector_column), path)
        skip = {opt.id_column, opt.sample_column, opt.modality_column, opt.vector_column}
        for name in names:
            if name not in skip and name not in columns:
                columns[name] = batch.column(name)
    return pa.RecordBatch.from_pydict(columns)


def _as_fixed_float32(column: pa.Array, path: str) -> pa.FixedSizeListArray:
    t = column.type
    if pa.types.is_fixed_size_list(t):
        dim = t.list_size
        if column.null_count:
            raise BadInput(f"{path}: null vectors")
        values = column.flatten()
    elif pa.types.is_list(t) or pa.types.is_large_list(t):
        if column.null_count:
            raise BadInput(f"{path}: null vectors")
        lengths = pc.list_value_length(column).to_numpy(zero_copy_only=False)
        if len(lengths) == 0:
            return pa.FixedSizeListArray.from_arrays(pa.array([], pa.float32()), 1)
        dim = int(lengths[0])
        if (lengths != dim).any():
            raise BadInput(f"{path}: vectors of different lengths ({int(lengths.min())} to {int(lengths.max())})")
        values = column.flatten()
    else:
        raise BadInput(f"{path}: vector column has type {t}, expected a list of floats")
    check_dim(dim, path)
    if not (pa.types.is_floating(values.type) or pa.types.is_integer(values.type)):
        raise BadInput(f"{path}: vector values have type {values.type}, expected floats")
    if values.type != pa.float32():
        values = values.cast(pa.float32())
    return pa.FixedSizeListArray.from_arrays(values, dim)


# -- numpy ---------------------------------------------------------------------------

class NpyRows:
    """Rows of a C-ordered .npy file read on demand with ``pread``: no mapping, so reading
    a file larger than memory leaves neither it nor its pages in the process."""

    def __init__(self, path: str):
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = (np.lib.format.read_array_header_1_0 if major == 1
                           else np.lib.format.read_array_header_2_0)
            shape, fortran, dtype = read_header(fh)
            self.offset = fh.tell()
        if dtype.hasobject:
            raise ValueError("object arrays are refused (they would need unpickling)")
        if fortran and len(shape) > 1:
            raise ValueError("Fortran-ordered arrays are not supported; save with C order")
        self.path, self.shape, self.dtype, self.ndim = path, tuple(shape), dtype, len(shape)
        row = int(np.prod(shape[1:], dtype=np.int64)) if len(shape) > 1 else 1
        self.row_bytes = row * dtype.itemsize
        expected = self.offset + self.row_bytes * (shape[0] if shape else 1)
        if os.path.getsize(path) < expected:
            raise ValueError(f"file is truncated ({os.path.getsize(path)} of {expected} bytes)")

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, rows: slice) -> np.ndarray:
        start, stop, _ = rows.indices(len(self))
        count = max(stop - start, 0)
        with open(self.path, "rb") as fh:
            data = os.pread(fh.fileno(), count * self.row_bytes, self.offset + start * self.row_bytes)
        return np.frombuffer(data, dtype=self.dtype).reshape((count,) + self.shape[1:])

    def read_into(self, start: int, out: np.ndarray) -> None:
        """Rows ``start`` … ``start + len(out)`` into ``out`` (C-ordered, this file's row
        shape): read straight into it when the dtypes match, else read and cast."""
        if out.dtype != self.dtype:
            out[...] = self[start:start + len(out)]
            return
        view = memoryview(out.reshape(-1).view(np.uint8))
        with open(self.path, "rb") as fh:
            done = 0
            while done < len(view):
                got = os.preadv(fh.fileno(), [view[done:]], self.offset + start * self.row_bytes + done)
                if got <= 0:
                    raise BadInput(f"{self.path}: file ended while reading rows")
                done += got


def _load_npy(path: str) -> NpyRows:
    try:
        array = NpyRows(path)
    except ValueError as exc:
        raise BadInput(f"{path}: not a numeric .npy array ({_first_line(exc)})") from None
    except Exception as exc:
        raise BadInput(f"{path}: not a readable .npy file ({_first_line(exc)})") from None
    return _check_matrix(array, path)


def _check_matrix(array, path: str):
    if not isinstance(array, (np.ndarray, NpyRows)):
        raise BadInput(f"{path}: not a numeric .npy array")
    if array.dtype.kind not in "fiu":
        raise BadInput(f"{path}: array of dtype {array.dtype}, expected floats")
    if array.ndim != 2:
        raise BadInput(f"{path}: array of shape {array.shape}, expected (rows, dim)")
    check_dim(array.shape[1], path)
    return array


def check_dim(dim: int, path: str) -> int:
    """Vectors need 1..MAX_DIM components (the d x d moment must fit in memory)."""
    if not 1 <= dim <= MAX_DIM:
        raise BadInput(f"{path}: vectors of dimension {dim}; curator takes 1 to {MAX_DIM}")
    return dim


def _npy(source: Source, ids_only: bool) -> Iterator[pa.RecordBatch]:
    opt = source.options
    if not opt.modality:
        raise BadInput(f"{source.path}: give --modality for .npy input")
    matrix = _load_npy(source.path)
    yield from _matrix_batches(matrix, source.path, opt, _stem(source.path), ids_only)


def _matrix_batches(matrix, path, opt, stem, ids_only, modality=None, sample_ids=None,
                    ids=None) -> Iterator[pa.RecordBatch]:
    n = len(matrix)
    if ids is None and opt.ids:
        ids = _read_ids(opt.ids, n)
    meta = _read_metadata(opt.metadata, n) if opt.metadata and not ids_only else None
    for start in range(0, n, BATCH_ROWS):
        stop = min(start + BATCH_ROWS, n)
        rows = stop - start
        batch_ids = (ids.slice(start, rows) if ids is not None
                     else pa.array([f"{stem}:{i}" for i in range(start, stop)], pa.string()))
        columns = {
            "id": batch_ids,
            "sample_id": sample_ids.slice(start, rows) if sample_ids is not None else pa.nulls(rows, pa.string()),
            "modality": pa.array([modality or opt.modality] * rows, pa.string()),
        }
        if not ids_only:
            columns["embedding"] = fixed_list(np.asarray(matrix[start:stop], dtype=np.float32))
            if meta is not None:
                for name in meta.column_names:
                    if name not in columns:
                        columns[name] = meta.column(name).slice(start, rows).combine_chunks()
        yield pa.RecordBatch.from_pydict(columns)


def _npz(source: Source, ids_only: bool) -> Iterator[pa.RecordBatch]:
    opt = source.options
    try:
        archive = np.load(source.path, allow_pickle=False)
        keys = list(archive.keys())
    except Exception as exc:
        raise BadInput(f"{source.path}: not a readable .npz file ({_first_line(exc)})") from None
    stem = _stem(source.path)
    if not keys:
        raise BadInput(f"{source.path}: empty .npz archive")
    modal_keys = [k for k in keys if k in ("image", "text")]
    if modal_keys:
        arrays = {k: _check_matrix(_member(archive, k, source.path), f"{source.path}[{k}]") for k in modal_keys}
        lengths = {len(a) for a in arrays.values()}
        paired = len(arrays) == 2 and len(lengths) == 1
        for k, matrix in arrays.items():
            samples = pa.array([f"{stem}:{i}" for i in range(len(matrix))], pa.string()) if paired else None
            ids = pa.array([f"{stem}:{k}:{i}" for i in range(len(matrix))], pa.string())
            yield from _matrix_batches(matrix, source.path, opt, stem, ids_only, modality=k,
                                       sample_ids=samples, ids=ids)
        return
    if len(keys) != 1:
        raise BadInput(f"{source.path}: .npz holds {len(keys)} arrays; expected one, or members named image and text")
    if not opt.modality:
        raise BadInput(f"{source.path}: give --modality for .npz input")
    matrix = _check_matrix(_member(archive, keys[0], source.path), source.path)
    yield from _matrix_batches(matrix, source.path, opt, stem, ids_only)


def _member(archive, key, path):
    try:
        member = archive[key]
    except Exception as exc:
        raise BadInput(f"{path}: member {key!r} unreadable ({_first_line(exc)})") from None
    if not isinstance(member, np.ndarray):
        raise BadInput(f"{path}: member {key!r} is not a numeric .npy array")
    return member


def _read_ids(path: str, n: int) -> pa.Array:
    if not os.path.exists(path):
        raise BadInput(f"{path}: no such file or directory")
    if path.endswith(".parquet"):
        import pyarrow.parquet as pq

        table = pq.read_table(path)
        ids = table.column("id" if "id" in table.column_names else 0).combine_chunks().cast(pa.string())
    else:
        with open(path, encoding="utf-8") as fh:
            ids = pa.array([line.rstrip("\n") for line in fh if line.strip()], pa.string())
    if len(ids) != n:
        raise BadInput(f"{path}: {len(ids)} ids for {n} vectors")
    return ids


def _read_metadata(path: str, n: int) -> pa.Table:
    import pyarrow.parquet as pq

    if not os.path.exists(path):
        raise BadInput(f"{path}: no such file or directory")
    try:
        table = pq.read_table(path)
    except Exception as exc:
        raise BadInput(f"{path}: not a readable parquet file ({_first_line(exc)})") from None
    if table.num_rows != n:
        raise BadInput(f"{path}: {table.num_rows} metadata rows for {n} vectors")
    return table


# -- clip-retrieval ------------------------------------------------------------------

def _shard_key(path: str) -> str:
    match = re.search(r"_(\d+)\.(npy|parquet)$", path)
    return match.group(1) if match else os.path.basename(path)


def _clip_retrieval(source: Source, ids_only: bool) -> Iterator[pa.RecordBatch]:
    """img_emb/img_emb_K.npy, text_emb/text_emb_K.npy, metadata/metadata_K.parquet, aligned.

    Image and text rows of line i of shard K share ``sample_id`` (the metadata's
    ``sample_id`` or ``key`` column when present, else ``K:i``). Ids come from the
    metadata's ``image_id``/``text_id`` columns when present, else ``SAMPLE:image`` /
    ``SAMPLE:text``. Every other metadata column is kept on both rows (``image:X`` /
    ``text:X`` give one modality's row its own ``X``). Consecutive lines that repeat an
    image (or caption) id, as clip-retrieval writes an image with several captions (and
    ``export --unit pair --format npy`` does), add that row once; their vectors must be
    identical.
    """
    import pyarrow.parquet as pq

    root = source.path
    images = {_shard_key(p): p for p in glob.glob(os.path.join(root, "img_emb", "img_emb_*.npy"))}
    texts = {_shard_key(p): p for p in glob.glob(os.path.join(root, "text_emb", "text_emb_*.npy"))}
    metas = {_shard_key(p): p for p in glob.glob(os.path.join(root, "metadata", "metadata_*.parquet"))}
    previous: dict = {"image": None, "text": None}  # the last line's (id, vector) per modality
    for key in sorted(set(images) | set(texts), key=lambda k: (len(k), k)):
        img = _load_npy(images[key]) if key in images else None
        txt = _load_npy(texts[key]) if key in texts else None
        n = len(img) if img is not None else len(txt)
        dim = img.shape[1] if img is not None else txt.shape[1]
        if img is not None and txt is not None and txt.shape[1] != dim:
            raise BadInput(f"{root}: shard {key} has {dim}-dimensional image and "
                           f"{txt.shape[1]}-dimensional text vectors")
        if img is not None and txt is not None and len(txt) != n:
            raise BadInput(f"{root}: shard {key} has {n} image and {len(txt)} text vectors")
        meta = None
        if key in metas:
            try:
                meta = pq.read_table(metas[key])
            except Exception as exc:
                raise BadInput(f"{metas[key]}: not a readable parquet file ({_first_line(exc)})") from None
            if meta.num_rows != n:
                raise BadInput(f"{metas[key]}: {meta.num_rows} rows for {n} vectors")
        lines_per_batch = BATCH_ROWS // 2 if img is not None and txt is not None else BATCH_ROWS
        for start in range(0, n, lines_per_batch):  # a batch: at most BATCH_ROWS rows
            stop = min(start + lines_per_batch, n)
            part = meta.slice(start, stop - start) if meta is not None else None
            samples = _meta_column(part, ("sample_id", "key"))
            if samples is None:
                samples = pa.array([f"{key}:{i}" for i in range(start, stop)], pa.string())
            # The image and text rows of these lines in one batch, so each pair meets in
            # it (ingest takes their dot there); metadata one modality lacks is null. The
            # vectors of both are read into one matrix, images first: no stacking copy.
            count = stop - start
            shards = [(m, x) for m, x in (("image", img), ("text", txt)) if x is not None]
            stacked = None if ids_only else np.empty((len(shards) * count, dim), np.float32)
            lines, kept = [], []
            for i, (modality, matrix) in enumerate(shards):
                ids = _meta_column(part, (f"{modality}_id",))
                if ids is None:
                    ids = pc.binary_join_element_wise(samples, pa.scalar(modality), ":")
                columns = {"id": ids, "sample_id": samples,
                           "modality": pa.array([modality] * count, pa.string())}
                block = None
                if not ids_only:
                    block = stacked[i * count:(i + 1) * count]
                    matrix.read_into(start, block)
                repeat = _repeated_lines(ids, block, previous, modality, f"{root}: shard {key}", start)
                if not ids_only and part is not None:
                    columns.update(_line_metadata(part, modality, columns))
                batch = pa.RecordBatch.from_pydict(columns)
                lines.append(batch.filter(pa.array(~repeat)) if repeat.any() else batch)
                kept.append(~repeat)
            batch = _stack(lines)
            if not ids_only:
                if not all(k.all() for k in kept):
                    stacked = stacked[np.concatenate(kept)]
                batch = batch.add_column(3, "embedding", fixed_list(stacked))
            yield batch


def _stack(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    names = list(dict.fromkeys(n for b in batches for n in b.schema.names))
    kinds = {}
    for b in batches:
        for f in b.schema:
            kinds.setdefault(f.name, f.type)
    arrays = []
    for name in names:
        parts = [b.column(name) if name in b.schema.names else pa.nulls(b.num_rows, kinds[name])
                 for b in batches]
        try:
            arrays.append(pa.concat_arrays([p.cast(kinds[name]) for p in parts]))
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
            raise BadInput(f"metadata column {name!r} has different types for images and "
                           "captions") from None
    return pa.RecordBatch.from_arrays(arrays, names=names)


def _repeated_lines(ids: pa.Array, block, previous: dict, modality: str, where: str,
                    offset: int) -> np.ndarray:
    """Lines whose id is the previous line's (one image, several captions): True where the
    row was already read. Their vectors (when read) must equal the first line's."""
    values = ids.to_numpy(zero_copy_only=False)
    repeat = np.zeros(len(values), bool)
    if len(values) == 0:
        return repeat
    repeat[1:] = values[1:] == values[:-1]
    last = previous[modality]
    repeat[0] = last is not None and last[0] == values[0]
    if block is not None and repeat.any():
        bits = block.view(np.uint32)
        same = np.ones(len(values), bool)
        inner = np.flatnonzero(repeat[1:]) + 1
        same[inner] = (bits[inner] == bits[inner - 1]).all(axis=1)
        if repeat[0] and last[1] is not None:
            same[0] = np.array_equal(bits[0], last[1].view(np.uint32))
        if not same.all():
            j = int(np.flatnonzero(~same)[0])
            raise BadInput(f"{where}, line {offset + j}: {modality} id {values[j]!r} repeats the previous "
                           "line's id with another vector")
    previous[modality] = (values[-1], None if block is None else block[-1].copy())
    return repeat


def _line_metadata(part: pa.Table, modality: str, taken) -> dict[str, pa.Array]:
    """Metadata of a line for one modality's row: shared columns, plus ``MODALITY:X`` as X."""
    out = {}
    for name in part.column_names:
        owner, sep, plain = name.partition(":")
        if sep and owner in ("image", "text"):
            if owner == modality:
                out[plain] = part.column(name).combine_chunks()
        elif name not in taken and name not in ("image_id", "text_id", "key"):
            out[name] = part.column(name).combine_chunks()
    return out


def _meta_column(part, names) -> pa.Array | None:
    if part is None:
        return None
    for name in names:
        if name in part.column_names:
            return part.column(name).combine_chunks().cast(pa.string())
    return None


def _stem(path: str) -> str:
    base = os.path.basename(path.rstrip("/"))
    return base.rsplit(".", 1)[0] if "." in base else base


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0][:200] if text else type(exc).__name__
