"""Sources of ``encode`` → planned rows: ids, sample ids, modality, what to encode (an
image locator or a caption) and metadata, from image folders, caption files, tables of
(image, caption) and webdataset tar shards (see :mod:`curator.io.encode`)."""

from __future__ import annotations

import json
import math
import os
import posixpath
import tarfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ...errors import BadInput, DuplicateIds

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TABLE_EXTENSIONS = (".csv", ".parquet", ".pq")
_RESERVED = frozenset({"id", "sample_id", "modality", "embedding", "norm", "model"})


class Rows:
    """Rows planned from sources: ids, sample ids, modality, payload and metadata."""

    def __init__(self):
        self.ids: list[str] = []
        self.sample_ids: list[str | None] = []
        self.modality: list[str] = []
        self.payload: list[Any] = []  # image: locator tuple; text: caption str
        self.meta: dict[str, list] = {}

    def __len__(self) -> int:
        return len(self.ids)

    def add(self, id_: str, sample_id: str | None, modality: str, payload, meta: dict) -> None:
        n = len(self.ids)
        self.ids.append(id_)
        self.sample_ids.append(sample_id)
        self.modality.append(modality)
        self.payload.append(payload)
        for key, value in meta.items():
            column = self.meta.get(key)
            if column is None:
                column = self.meta[key] = [None] * n
            column.append(value)
        for column in self.meta.values():
            if len(column) == n:
                column.append(None)


def _reserved_names() -> frozenset[str]:
    """Dataset column names: source metadata must not shadow them."""
    from ...store.schema import column_names

    return frozenset(column_names()) | _RESERVED


def _metadata_value(value):
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _source_metadata(fields: dict, reserved: frozenset[str]) -> dict:
    """Source metadata fields, with names that collide with dataset columns prefixed."""
    out = {}
    for key, value in fields.items():
        key = str(key)
        out[f"source_{key}" if key in reserved else key] = _metadata_value(value)
    return out


def _image_ext(name: str) -> bool:
    return name.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS if "." in name else False


def _walk_images(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if _image_ext(name):
                found.append(Path(dirpath) / name)
    return found


def _add_folder(rows: Rows, root: Path, reserved) -> None:
    images = _walk_images(root)
    if not images:
        shards = sorted(p for p in root.iterdir() if p.is_file() and p.name.lower().endswith(".tar"))
        if shards:
            for shard in shards:
                _add_shard(rows, shard, reserved)
            return
        raise BadInput(f"{root}: no images found (jpg, jpeg, png, webp)")
    for path in images:
        rel = path.relative_to(root).as_posix()
        rows.add(rel, rel.rsplit(".", 1)[0], "image", ("file", str(path.resolve())),
                 {"path": str(path.resolve())})


def _add_image_file(rows: Rows, path: Path) -> None:
    rows.add(path.name, path.name.rsplit(".", 1)[0], "image", ("file", str(path.resolve())),
             {"path": str(path.resolve())})


def _add_txt(rows: Rows, path: Path) -> None:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise BadInput(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc
    stem = path.stem
    for line_no, line in enumerate(text.splitlines()):
        caption = line.strip()
        if caption:
            rows.add(f"{stem}:{line_no}", None, "text", caption, {"caption": caption})


def _read_table(path: Path) -> pa.Table:
    try:
        if path.suffix.lower() == ".csv":
            import pyarrow.csv as pacsv

            return pacsv.read_csv(path)
        import pyarrow.parquet as pq

        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{path}: cannot read the table ({first})") from exc


def _as_str(value) -> str | None:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    return str(value)


def _add_table(rows: Rows, path: Path, image_column: str, caption_column: str, reserved) -> None:
    table = _read_table(path)
    names = table.column_names
    has_image, has_caption = image_column in names, caption_column in names
    if not has_image and not has_caption:
        raise BadInput(f"{path}: no {caption_column!r} or {image_column!r} column "
                       f"(columns: {', '.join(names)}); use --caption-column/--image-column")
    cols = {name: table.column(name).to_pylist() for name in names}
    stem = path.stem
    base_dir = path.resolve().parent
    if has_image:
        used = {image_column, caption_column, "id", "key"}
        extras = [n for n in names if n not in used]
        key_col = "id" if "id" in names else "key" if "key" in names else None
        for i in range(table.num_rows):
            key = _as_str(cols[key_col][i]) if key_col else None
            key = key if key is not None else f"{stem}:{i}"
            meta = _source_metadata({n: cols[n][i] for n in extras}, reserved)
            image = _as_str(cols[image_column][i])
            if image:
                full = Path(os.path.expanduser(image))
                full = str(full if full.is_absolute() else base_dir / full)
                rows.add(f"{key}:image", key, "image", ("file", full), {**meta, "path": full})
            caption = _as_str(cols[caption_column][i]) if has_caption else None
            if caption and caption.strip():
                rows.add(f"{key}:text", key, "text", caption, {**meta, "caption": caption})
        return
    used = {caption_column, "id", "sample_id"}
    extras = [n for n in names if n not in used]
    for i in range(table.num_rows):
        caption = _as_str(cols[caption_column][i])
        if not caption or not caption.strip():
            continue
        key = _as_str(cols["key"][i]) if "key" in names else None
        id_ = _as_str(cols["id"][i]) if "id" in names else None
        id_ = id_ or (f"{key}:text" if key is not None else f"{stem}:{i}")
        sample_id = _as_str(cols["sample_id"][i]) if "sample_id" in names else key
        meta = _source_metadata({n: cols[n][i] for n in extras}, reserved)
        rows.add(id_, sample_id, "text", caption, {**meta, "caption": caption})


def _split_member(name: str) -> tuple[str, str]:
    """webdataset naming: ``dir/key.ext`` where ext is everything after the first dot."""
    dirname, base = posixpath.split(name)
    stem, _, ext = base.partition(".")
    return posixpath.join(dirname, stem) if dirname else stem, ext.lower()


def _add_shard(rows: Rows, path: Path, reserved) -> None:
    shard = str(path.resolve())
    samples: dict[str, dict] = {}
    try:
        with tarfile.open(shard, mode="r:") as tf:  # uncompressed: reads headers, seeks over data
            for member in tf:
                if not member.isfile():
                    continue
                key, ext = _split_member(member.name)
                sample = samples.setdefault(key, {})
                if ext in IMAGE_EXTENSIONS:
                    sample["image"] = (member.offset_data, member.size, member.name)
                elif ext == "txt":
                    raw = tf.extractfile(member).read()
                    sample["text"] = raw.decode("utf-8", errors="replace").strip()
                elif ext == "json":
                    try:
                        fields = json.loads(tf.extractfile(member).read())
                    except ValueError:
                        fields = None
                    if isinstance(fields, dict):
                        sample["json"] = fields
    except tarfile.ReadError as exc:
        raise BadInput(f"{path}: not an uncompressed tar shard ({exc})") from exc
    for key, sample in samples.items():
        meta = _source_metadata(sample.get("json", {}), reserved)
        if "image" in sample:
            offset, size, member = sample["image"]
            rows.add(f"{key}:image", key, "image", ("tar", shard, offset, size, member),
                     {**meta, "shard": shard, "member": member})
        if sample.get("text"):
            rows.add(f"{key}:text", key, "text", sample["text"],
                     {**meta, "shard": shard, "caption": sample["text"]})


def collect_rows(sources: Iterable, image_column: str, caption_column: str) -> Rows:
    paths = [Path(os.path.expanduser(str(s))) for s in sources]
    if not paths:
        raise BadInput("no sources given: name folders of images, caption files or tar shards")
    for p in paths:
        if not p.exists():
            raise BadInput(f"{p}: no such file or directory")
    reserved = _reserved_names()
    rows = Rows()
    for p in paths:
        name = p.name.lower()
        if p.is_dir():
            _add_folder(rows, p, reserved)
        elif name.endswith(".txt"):
            _add_txt(rows, p)
        elif name.endswith(TABLE_EXTENSIONS):
            _add_table(rows, p, image_column, caption_column, reserved)
        elif name.endswith(".tar"):
            _add_shard(rows, p, reserved)
        elif name.endswith((".tar.gz", ".tgz", ".tar.zst", ".tar.bz2", ".tar.xz")):
            raise BadInput(f"{p}: compressed tar shards are not supported; decompress to .tar")
        elif _image_ext(name):
            _add_image_file(rows, p)
        else:
            raise BadInput(f"{p}: unsupported source (a folder of images, an image, .txt, "
                           f".csv, .parquet or .tar)")
    if not len(rows):
        raise BadInput(f"no images or captions found in {', '.join(map(str, paths))}")
    return rows


def check_unique(ids: list[str]) -> None:
    seen, dups = set(), []
    for i in ids:
        if i in seen:
            dups.append(i)
        seen.add(i)
    if dups:
        raise DuplicateIds(f"{len(dups)} id(s) occur more than once in the sources, "
                           f"e.g. {dups[0]!r}; give folders or tables with distinct names")


def _arrow_column(values: list, target: pa.DataType | None = None) -> pa.Array:
    if target is not None:
        try:
            return pa.array(values, type=target)
        except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
            pass
    try:
        array = pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError, TypeError, ValueError, OverflowError):
        array = pa.array([None if v is None else str(v) for v in values], pa.string())
    if pa.types.is_null(array.type):
        array = array.cast(pa.string())
    return array


def rows_table(rows: Rows, keep: np.ndarray, table_schema: pa.Schema | None) -> pa.Table:
    """The kept rows' ids, sample ids, modality and metadata as one Arrow table.

    Metadata types follow the existing table's schema where a column already exists.
    """
    def pick(values):
        return [values[i] for i in keep]

    arrays = {
        "id": pa.array(pick(rows.ids), pa.string()),
        "sample_id": pa.array(pick(rows.sample_ids), pa.string()),
        "modality": pa.array(pick(rows.modality), pa.string()),
    }
    for name, values in rows.meta.items():
        target = None
        if table_schema is not None and table_schema.get_field_index(name) >= 0:
            target = table_schema.field(name).type
        arrays[name] = _arrow_column(pick(values), target)
    return pa.table(arrays)

