"""OpenCLIP images and captions → raw (unnormalised) embeddings → ingest.

``encode(sources)`` reads images and captions, runs an OpenCLIP model on them and
ingests the raw outputs (``encode_image(x, normalize=False)``, float32) with the same
guarantees as :func:`curator.ingest.ingest`: the embeddings are spooled to a temporary
folder of parquet files, handed to ``ingest`` in one call (one transaction) and the
spool is removed. A failure, or an unreadable image under ``strict=True``, leaves the
table as it was.

Sources (any mix):

- a folder of images (recursive; jpg, jpeg, png, webp): image rows, ``id`` = path
  relative to the folder (``a/b.jpg``), ``sample_id`` = that path without its
  extension (``a/b``), metadata ``path`` (absolute). A folder without images but with
  ``*.tar`` files is read as img2dataset output (the shards).
- an image file: one image row, ``id`` = its file name.
- a ``.txt`` file of captions, one per line (blank lines skipped): text rows, ``id`` =
  ``STEM:LINE`` (0-based line index), no ``sample_id``, metadata ``caption``.
- a CSV or parquet table of captions (column ``caption`` or ``caption_column``): text
  rows; ``id`` = the ``id`` column, else ``<key>:text`` from a ``key`` column, else
  ``STEM:ROW``; ``sample_id`` = the ``sample_id`` column, else ``key``, else null. So a
  caption with ``sample_id`` ``a/b`` pairs with the folder image ``a/b.jpg``.
- a CSV or parquet table with an image-path column (``image`` or ``image_column``) and
  optionally a caption column: one sample per line, rows ``<key>:image`` and
  ``<key>:text`` sharing ``sample_id`` ``<key>``, where key is the ``id`` or ``key``
  column, else ``STEM:ROW``. Relative image paths are resolved against the table's
  folder.
- webdataset ``.tar`` shards as img2dataset writes them (``key.jpg`` + ``key.txt`` [+
  ``key.json``]): rows ``<key>:image`` / ``<key>:text`` with ``sample_id`` ``<key>``; the
  JSON fields become metadata columns of both rows, plus ``shard`` (and ``member`` on
  image rows). The shard is indexed with :mod:`tarfile` (headers and the small
  ``.txt``/``.json`` members only); image bytes are read on demand, by offset, in the
  DataLoader workers, so nothing is extracted to disk.

Other columns of CSV/parquet sources are kept as metadata (a name that collides with a
dataset column, e.g. ``norm``, gets the prefix ``source_``).

Resuming: ids already in the table are skipped before any model work, so rerunning the
same command after adding files encodes only the new ones. With ``commit_every=N`` the
embeddings are ingested every N rows, so a killed run keeps what it committed and a rerun
continues from there (the all-or-nothing guarantee then holds per commit).

torch, open_clip and pillow are imported only inside the functions that need them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import logging
import math
import os
import posixpath
import shutil
import tarfile
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from .errors import BadInput, DuplicateIds, MissingDependency, SchemaMismatch
from .export import sha256  # the checksum the export manifest uses

INSTALL_HINT = "encode needs torch and open_clip: pip install 'clip-curator[clip]'"
IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")
TABLE_EXTENSIONS = (".csv", ".parquet", ".pq")
CHECKPOINT_EXTENSIONS = (".pt", ".pth", ".bin", ".ckpt", ".safetensors", ".npz")
SPOOL_ROWS = 8192  # rows per spooled parquet file
_RESERVED = frozenset({"id", "sample_id", "modality", "embedding", "norm", "model"})


# --------------------------------------------------------------------------------------
# result


@dataclass
class EncodeResult:
    """What one ``encode`` call did.

    ``rows`` = ``images`` + ``texts`` rows ingested; ``skipped``: unreadable images, each
    ``{"path", "reason"}``; ``resumed_skipped``: rows whose id was already in the table;
    ``table_version`` / ``stats_version``: what the (last) ingest wrote, or the table's
    current version and None when nothing was ingested.
    """

    rows: int = 0
    images: int = 0
    texts: int = 0
    skipped: list[dict] = field(default_factory=list)
    resumed_skipped: int = 0
    table_version: int | None = None
    stats_version: int | None = None
    seconds: float = 0.0
    model: str | None = None
    device: str | None = None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


# --------------------------------------------------------------------------------------
# optional dependencies, device, model


def _require():
    """(torch, open_clip), or MissingDependency with the install hint."""
    try:
        import open_clip
        import PIL  # noqa: F401
        import torch
    except ImportError as exc:
        raise MissingDependency(INSTALL_HINT) from exc
    return torch, open_clip


def pick_device(device: str | None = "auto") -> str:
    """The torch device to run on: ``auto`` picks CUDA, then MPS, then CPU.

    An explicit device (``cpu``, ``cuda``, ``cuda:1``, ``mps``) is checked to exist.
    """
    torch, _ = _require()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if device in (None, "", "auto"):
        if torch.cuda.is_available():
            return "cuda"
        return "mps" if mps_ok else "cpu"
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise BadInput(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or mps") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise BadInput(f"device {device!r} is not available: torch sees no CUDA device")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise BadInput(f"device {device!r} is not available: "
                           f"{torch.cuda.device_count()} CUDA device(s)")
    elif dev.type == "mps" and not mps_ok:
        raise BadInput(f"device {device!r} is not available on this machine")
    elif dev.type not in ("cpu", "cuda", "mps"):
        raise BadInput(f"unsupported device {device!r}: use auto, cpu, cuda, cuda:N or mps")
    return str(dev)


def _clean_tag(tag: str) -> str:
    return tag.lower().replace("-", "_")


def _looks_like_path(value: str) -> bool:
    return (os.sep in value or "/" in value or value.startswith(".")
            or value.lower().endswith(CHECKPOINT_EXTENSIONS))


def model_name_for(arch: str, pretrained: str | os.PathLike | None = None, seed: int = 0) -> str:
    """The name a table records for embeddings of ``arch`` with ``pretrained`` weights.

    ``open_clip:ARCH/TAG`` for an open_clip pretrained tag, ``open_clip:ARCH/FILE@sha256:…``
    for a local checkpoint file (so the name follows the weights, not the path), and
    ``open_clip:ARCH/random-init-seed-S`` for a randomly initialised model. Raises
    BadInput for an unknown architecture or tag, or a missing checkpoint file.
    """
    _, open_clip = _require()
    remote = arch.startswith(("hf-hub:", "local-dir:"))
    if not remote and arch not in open_clip.list_models():
        raise BadInput(f"unknown OpenCLIP architecture {arch!r}: python -c 'import open_clip; "
                       f"print(open_clip.list_models())' lists them (e.g. ViT-B-32, ViT-L-14)")
    if pretrained is None or str(pretrained) == "":
        return f"open_clip:{arch}" if remote else f"open_clip:{arch}/random-init-seed-{seed}"
    pretrained = str(pretrained)
    if os.path.isfile(pretrained):
        digest = sha256(pretrained)[:16]
        return f"open_clip:{arch}/{os.path.basename(pretrained)}@sha256:{digest}"
    if remote:
        raise BadInput(f"{pretrained}: no such file or directory")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    for tag in tags:
        if _clean_tag(tag) == _clean_tag(pretrained):
            return f"open_clip:{arch}/{tag}"
    if _looks_like_path(pretrained):
        raise BadInput(f"{pretrained}: no such file or directory")
    known = ", ".join(tags) if tags else "none"
    raise BadInput(f"unknown pretrained tag {pretrained!r} for {arch}: known tags: {known}; "
                   f"or give a local checkpoint file")


class _DropOpenClipNoise(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return "No pretrained weights loaded" not in record.getMessage()


@contextlib.contextmanager
def _quiet_open_clip_logs():
    root, flt = logging.getLogger(), _DropOpenClipNoise()
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _check_checkpoint_is_safe(torch, path: str) -> None:
    """Refuse a checkpoint that needs unpickling code (``torch.load(weights_only=True)``).

    open_clip loads with ``weights_only=True`` too, but falls back to a plain
    ``torch.load`` on TypeError; checking first makes the guarantee ours. Safetensors and
    numpy (.npz, read without pickle) need no check.
    """
    if path.lower().endswith((".safetensors", ".npz", ".npy")):
        return
    try:
        try:
            torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError as exc:
            if "mmap" not in str(exc):
                raise
            torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format
    except Exception as exc:  # any failure: we refuse the file
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"{path}: not a loadable weights-only checkpoint ({first})") from exc


def load_model(arch: str = "ViT-B-32", pretrained: str | os.PathLike | None = None,
               device: str | None = "auto", *, seed: int = 0):
    """Build an OpenCLIP model: ``(model, preprocess, tokenizer, model_name)``.

    ``pretrained``: an open_clip pretrained tag (open_clip fetches or finds it in its
    cache), a local checkpoint file (loaded with ``weights_only=True``; pickled code is
    refused), or None for random initialisation seeded by ``seed``. The model is in eval
    mode on ``pick_device(device)``; ``preprocess`` is the evaluation transform.
    """
    dev = pick_device(device)
    name = model_name_for(arch, pretrained, seed)
    model, preprocess, tokenizer = _build_model(arch, pretrained, dev, seed, name)
    return model, preprocess, tokenizer, name


def _build_model(arch: str, pretrained, dev: str, seed: int, name: str):
    torch, open_clip = _require()
    pretrained = None if pretrained in (None, "") else str(pretrained)
    if pretrained is not None and os.path.isfile(pretrained):
        _check_checkpoint_is_safe(torch, pretrained)
    try:
        with _quiet_open_clip_logs(), torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model, _, preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=dev, weights_only=True)
        tokenizer = open_clip.get_tokenizer(arch)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BadInput(f"cannot load {name}: {first}") from exc
    model.eval()
    return model, preprocess, tokenizer


# --------------------------------------------------------------------------------------
# sources → planned rows


class _Rows:
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
    from .schema import column_names

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


def _add_folder(rows: _Rows, root: Path, reserved) -> None:
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


def _add_image_file(rows: _Rows, path: Path) -> None:
    rows.add(path.name, path.name.rsplit(".", 1)[0], "image", ("file", str(path.resolve())),
             {"path": str(path.resolve())})


def _add_txt(rows: _Rows, path: Path) -> None:
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


def _add_table(rows: _Rows, path: Path, image_column: str, caption_column: str, reserved) -> None:
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


def _add_shard(rows: _Rows, path: Path, reserved) -> None:
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


def _collect(sources: Iterable, image_column: str, caption_column: str) -> _Rows:
    paths = [Path(os.path.expanduser(str(s))) for s in sources]
    if not paths:
        raise BadInput("no sources given: name folders of images, caption files or tar shards")
    for p in paths:
        if not p.exists():
            raise BadInput(f"{p}: no such file or directory")
    reserved = _reserved_names()
    rows = _Rows()
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


def _check_unique(ids: list[str]) -> None:
    seen, dups = set(), []
    for i in ids:
        if i in seen:
            dups.append(i)
        seen.add(i)
    if dups:
        raise DuplicateIds(f"{len(dups)} id(s) occur more than once in the sources, "
                           f"e.g. {dups[0]!r}; give folders or tables with distinct names")


# --------------------------------------------------------------------------------------
# metadata → Arrow


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


def _rows_table(rows: _Rows, keep: np.ndarray, table_schema: pa.Schema | None) -> pa.Table:
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


# --------------------------------------------------------------------------------------
# image loading (DataLoader workers)


def _describe(locator) -> str:
    if locator[0] == "tar":
        return f"{locator[1]}:{locator[4]}"
    return locator[1]


def _open_image(locator):
    from PIL import Image

    if locator[0] == "tar":
        _, shard, offset, size, _member = locator
        with open(shard, "rb") as fh:
            fh.seek(offset)
            data = fh.read(size)
        image = Image.open(io.BytesIO(data))
        image.load()
    else:
        with open(locator[1], "rb") as fh:
            image = Image.open(fh)
            image.load()
    return image if image.mode == "RGB" else image.convert("RGB")


def _failure_reason(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file"
    name = type(exc).__name__
    if name == "UnidentifiedImageError":
        return "not a readable image"
    message = " ".join(str(exc).split())
    return f"{name}: {message}" if message else name


class _ImageDataset:
    """Map-style dataset over image locators: (index, tensor or None, reason or None).

    A plain class (not a torch subclass) so the module imports without torch and the
    dataset pickles to spawned workers.
    """

    def __init__(self, locators: list, indices: list[int], preprocess):
        self.locators, self.indices, self.preprocess = locators, indices, preprocess

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int):
        index = self.indices[i]
        try:
            return index, self.preprocess(_open_image(self.locators[index])), None
        except Exception as exc:  # noqa: BLE001 (an unreadable image is data, not a crash)
            return index, None, _failure_reason(exc)


def _collate(batch):
    import torch

    good = [(i, x) for i, x, _ in batch if x is not None]
    bad = [(i, reason) for i, x, reason in batch if x is None]
    if not good:
        return [], None, bad
    return [i for i, _ in good], torch.stack([x for _, x in good]), bad


def _image_batches(locators, indices, preprocess, batch_size, num_workers, pin_memory):
    """Batches ``(indices, images tensor or None, [(index, reason)])`` decoded in workers.

    Workers are forked (the platform default) and only decode images; the warning Lance
    gives on fork (its threads are not used in the child) is silenced here alone.
    """
    from torch.utils.data import DataLoader

    loader = DataLoader(_ImageDataset(locators, indices, preprocess), batch_size=batch_size,
                        shuffle=False, num_workers=num_workers, collate_fn=_collate,
                        pin_memory=pin_memory, persistent_workers=False)
    with warnings.catch_warnings():  # workers start here
        warnings.filterwarnings("ignore", message="lance is not fork-safe")
        batches = iter(loader)
    yield from batches


# --------------------------------------------------------------------------------------
# forward passes


def _autocast(torch, device: str):
    if device.startswith("cuda"):
        return torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext()


def _encode_images(torch, model, loader, device) -> Iterator[tuple[list[int], np.ndarray, list]]:
    """(indices, raw embeddings float32, [(index, reason) of unreadable images]) per batch."""
    for indices, x, bad in loader:
        if x is None:
            yield [], None, bad
            continue
        with torch.inference_mode(), _autocast(torch, device):
            out = model.encode_image(x.to(device, non_blocking=True), normalize=False)
        yield indices, out.float().cpu().numpy(), bad


def _encode_texts(torch, model, tokenizer, captions: list[str], indices: list[int], device,
                  batch_size) -> Iterator[tuple[list[int], np.ndarray]]:
    for start in range(0, len(indices), batch_size):
        chunk = indices[start:start + batch_size]
        tokens = tokenizer([captions[i] for i in chunk])
        with torch.inference_mode(), _autocast(torch, device):
            out = model.encode_text(tokens.to(device), normalize=False)
        yield chunk, out.float().cpu().numpy()


# --------------------------------------------------------------------------------------
# spool → ingest


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _ingest_spool(spool: str, *, db, table: str, model_name: str, quiet: bool):
    """Hand the spooled parquet folder to the ingest transaction."""
    from .ingest import ingest

    return ingest([spool], db=db, table=table, model=model_name, on_duplicate="error",
                  quiet=quiet)


class _Spool:
    """Parquet files of computed rows in a temporary folder, ingested on commit."""

    def __init__(self, rows_table: pa.Table, *, db, table, model_name, quiet, commit_every):
        self.rows_table = rows_table
        self.db, self.table, self.model_name, self.quiet = db, table, model_name, quiet
        self.commit_every = commit_every
        self.dir = tempfile.mkdtemp(prefix="curator-encode-")
        self.buffer_idx: list[np.ndarray] = []
        self.buffer_emb: list[np.ndarray] = []
        self.buffered = 0
        self.spooled = 0  # rows in spool files not yet ingested
        self.parts = 0
        self.result = None  # last IngestResult
        self.committed = 0

    def add(self, indices: list[int], embeddings: np.ndarray) -> None:
        if not len(indices):
            return
        self.buffer_idx.append(np.asarray(indices, dtype=np.int64))
        self.buffer_emb.append(embeddings)
        self.buffered += len(indices)
        if self.commit_every and self.spooled + self.buffered >= self.commit_every:
            self.commit()
        elif self.buffered >= SPOOL_ROWS:
            self.flush()

    def flush(self) -> None:
        if not self.buffered:
            return
        import pyarrow.parquet as pq

        idx = np.concatenate(self.buffer_idx)
        emb = np.concatenate(self.buffer_emb).astype(np.float32, copy=False)
        part = self.rows_table.take(pa.array(idx))
        part = part.add_column(3, pa.field("embedding", pa.list_(pa.float32(), emb.shape[1]),
                                           nullable=False), _fixed_list(emb))
        pq.write_table(part, os.path.join(self.dir, f"part-{self.parts:05d}.parquet"))
        self.parts += 1
        self.spooled += len(idx)
        self.buffer_idx, self.buffer_emb, self.buffered = [], [], 0

    def commit(self) -> None:
        self.flush()
        if not self.spooled:
            return
        self.result = _ingest_spool(self.dir, db=self.db, table=self.table,
                                    model_name=self.model_name, quiet=self.quiet)
        self.committed += self.spooled
        self.spooled = 0
        for name in os.listdir(self.dir):
            os.remove(os.path.join(self.dir, name))

    def close(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


# --------------------------------------------------------------------------------------
# progress


def _progress(quiet: bool, total: int):
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class ItemsPerSecond(ProgressColumn):
        def render(self, task):
            speed = task.finished_speed or task.speed
            return Text("" if speed is None else f"{speed:,.1f} items/s", style="progress.data.speed")

    console = Console(stderr=True)
    progress = Progress(TextColumn("[progress.description]{task.description}"), BarColumn(),
                        MofNCompleteColumn(), ItemsPerSecond(), TimeElapsedColumn(),
                        TimeRemainingColumn(), console=console,
                        disable=quiet or not console.is_terminal)
    task = progress.add_task("encoding", total=total)
    return progress, task


# --------------------------------------------------------------------------------------
# the verb


def _existing_table(db, table: str):
    """(Database, schema, model) of an existing table, or (Database, None, None)."""
    from .store import Database, check_table_name

    check_table_name(table)
    database = Database(db)
    if not database.has_table(table):
        return database, None, None
    return database, database.dataset(table).schema, database.table_meta(table).model


def encode(sources, *, db=None, table: str = "embeddings", arch: str = "ViT-B-32",
           pretrained: str | os.PathLike | None = None, device: str | None = "auto",
           batch_size: int = 64, num_workers: int | None = None, strict: bool = False,
           image_column: str = "image", caption_column: str = "caption", model=None,
           preprocess=None, tokenizer=None, model_name: str | None = None, quiet: bool = False,
           seed: int = 0, commit_every: int | None = None) -> EncodeResult:
    """Encode images and captions with OpenCLIP and ingest the raw embeddings.

    ``sources``: folders, image files, ``.txt``/CSV/parquet caption files, CSV/parquet
    tables of (image path, caption) and ``.tar`` shards (module docstring). The model is
    ``load_model(arch, pretrained, device, seed=seed)`` unless ``model`` is given, in
    which case ``model_name`` (what the table records) is required, with ``preprocess``
    for images and ``tokenizer`` for captions; such a model stays on its device unless
    ``device`` names another. Ids already in ``table`` are skipped before any model work.
    Unreadable images are skipped and listed in ``result.skipped``; with ``strict`` the
    first one raises BadInput and nothing is ingested. ``commit_every``: ingest every N
    rows (a killed run keeps the committed rows) instead of once at the end.
    """
    started = time.perf_counter()
    torch, _ = _require()
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    if batch_size < 1:
        raise BadInput(f"batch size must be at least 1, not {batch_size}")
    if commit_every is not None and commit_every < 1:
        raise BadInput(f"commit_every must be at least 1, not {commit_every}")

    if model is not None:
        if not model_name:
            raise BadInput("model_name is required with a loaded model (the table records it), "
                           "e.g. 'open_clip:ViT-B-32/laion2b_s34b_b79k'")
    else:
        dev = pick_device(device)
        model_name = model_name_for(arch, pretrained, seed)

    database, table_schema, table_model = _existing_table(db, table)
    if table_model is not None and table_model != model_name:
        raise SchemaMismatch(f"table {table!r} holds embeddings of {table_model}, "
                             f"not {model_name}: use another --table")
    rows = _collect(sources, image_column, caption_column)
    _check_unique(rows.ids)
    present = database.existing_ids(table, rows.ids) if table_schema is not None else set()
    keep = np.array([i for i, id_ in enumerate(rows.ids) if id_ not in present], dtype=np.int64)
    result = EncodeResult(resumed_skipped=len(rows) - len(keep), model=model_name)
    if not len(keep):
        result.table_version = database.dataset(table).version if table_schema is not None else None
        result.seconds = time.perf_counter() - started
        return result

    kept_modality = [rows.modality[i] for i in keep]
    image_idx = [j for j, m in enumerate(kept_modality) if m == "image"]
    text_idx = [j for j, m in enumerate(kept_modality) if m == "text"]
    payload = [rows.payload[i] for i in keep]
    rows_table = _rows_table(rows, keep, table_schema)
    del rows

    if model is None:
        model, preprocess, tokenizer = _build_model(arch, pretrained, dev, seed, model_name)
    else:
        if image_idx and preprocess is None:
            raise BadInput("preprocess is required with a loaded model to encode images")
        if text_idx and tokenizer is None:
            raise BadInput("tokenizer is required with a loaded model to encode captions")
        dev = str(next(model.parameters()).device)
        if device not in (None, "", "auto"):
            wanted = pick_device(device)
            if torch.device(wanted) != torch.device(dev):
                model.to(wanted)
                dev = wanted
    result.device = dev
    was_training = model.training
    model.eval()

    if num_workers is None:
        num_workers = min(4, os.cpu_count() or 1)
    num_workers = max(0, min(num_workers, math.ceil(len(image_idx) / batch_size)))

    spool = _Spool(rows_table, db=db, table=table, model_name=model_name, quiet=quiet,
                   commit_every=commit_every)
    progress, task = _progress(quiet, len(image_idx) + len(text_idx))
    try:
        with progress:
            if image_idx:
                loader = _image_batches(payload, image_idx, preprocess, batch_size, num_workers,
                                       pin_memory=dev.startswith("cuda"))
                for indices, emb, bad in _encode_images(torch, model, loader, dev):
                    for index, reason in bad:
                        where = _describe(payload[index])
                        if strict:
                            committed = (f"; {spool.committed} rows committed earlier stay"
                                         if spool.committed else "; nothing was ingested")
                            raise BadInput(f"{where}: unreadable image ({reason}){committed}")
                        result.skipped.append({"path": where, "reason": reason})
                    if indices:
                        spool.add(indices, emb)
                        result.images += len(indices)
                    progress.advance(task, len(indices) + len(bad))
            if text_idx:
                for indices, emb in _encode_texts(torch, model, tokenizer, payload, text_idx,
                                                  dev, batch_size):
                    spool.add(indices, emb)
                    result.texts += len(indices)
                    progress.advance(task, len(indices))
        spool.commit()
    finally:
        spool.close()
        if was_training:
            model.train()

    result.rows = result.images + result.texts
    if spool.result is not None:
        result.table_version = spool.result.table_version
        result.stats_version = spool.result.stats_version
    elif table_schema is not None:
        result.table_version = database.dataset(table).version
    result.seconds = time.perf_counter() - started
    return result
