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

import dataclasses
import math
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ...errors import BadInput, SchemaMismatch
from .inputs import check_unique, collect_rows
from .inputs import rows_table as planned_table
from .loader import describe, image_batches
from .model import build_model, encode_images, encode_texts, model_name_for, pick_device, require

SPOOL_ROWS = 8192  # rows per spooled parquet file


@dataclass
class EncodeResult:
    """What one ``encode`` call did.

    ``rows`` = ``images`` + ``texts`` rows ingested; ``skipped``: unreadable images, each
    ``{"path", "reason"}``; ``resumed_skipped``: rows whose id was already in the table;
    ``table_version`` / ``stats_version``: what the (last) ingest wrote, or the table's
    current version and None when nothing was ingested; ``weights``: ``pretrained`` (an
    open_clip tag or hub model), ``checkpoint`` (a local file), ``random`` (no
    ``pretrained``: seeded random initialisation) or ``given`` (a model object).
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
    weights: str | None = None

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        """One line like ingest's, then one line per kind of row left out."""
        if not self.rows:
            where = f" (table version {self.table_version})" if self.table_version is not None else ""
            head = (f"encoded nothing in {self.seconds:.1f} s: all {self.resumed_skipped} rows are "
                    f"already in the table{where}" if self.resumed_skipped
                    else f"encoded nothing in {self.seconds:.1f} s")
        else:
            weights = f" ({self.weights} weights)" if self.weights == "random" else ""
            head = (f"encoded {_count(self.images, 'image')} and {_count(self.texts, 'caption')} "
                    f"with {self.model}{weights} "
                    f"on {self.device} in {self.seconds:.1f} s: table version {self.table_version}, "
                    f"statistics version {self.stats_version}")
        lines = [head]
        if self.rows and self.resumed_skipped:
            lines.append(f"left as they were: {_count(self.resumed_skipped, 'row')} already in the table")
        if self.skipped:
            shown = "; ".join(f"{s['path']} ({s['reason']})" for s in self.skipped[:3])
            more = f"; and {len(self.skipped) - 3} more" if len(self.skipped) > 3 else ""
            lines.append(f"skipped {_count(len(self.skipped), 'unreadable image')}: {shown}{more}")
        return "\n".join(lines)


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


RANDOM_WEIGHTS_NOTICE = ("Notice: no --pretrained given: {arch} has random weights (seed {seed}), so "
                         "its embeddings carry no meaning; pass --pretrained TAG or a checkpoint file")


def weights_kind(arch: str, pretrained) -> str:
    """``pretrained``, ``checkpoint`` or ``random``: what ``load_model(arch, pretrained)`` loads."""
    if pretrained is None or str(pretrained) == "":
        return "pretrained" if arch.startswith(("hf-hub:", "local-dir:")) else "random"
    return "checkpoint" if os.path.isfile(str(pretrained)) else "pretrained"


def _fixed_list(matrix: np.ndarray) -> pa.FixedSizeListArray:
    matrix = np.ascontiguousarray(matrix, dtype=np.float32)
    return pa.FixedSizeListArray.from_arrays(pa.array(matrix.reshape(-1)), matrix.shape[1])


def _ingest_spool(spool: str, *, db, table: str, model_name: str, quiet: bool):
    """Hand the spooled parquet folder to the ingest transaction."""
    from ..ingest import ingest

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


def _existing_table(db, table: str):
    """(Database, schema, model) of an existing table, or (Database, None, None)."""
    from ...store.database import Database, check_table_name

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
    torch, _ = require()
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
    rows = collect_rows(sources, image_column, caption_column)
    check_unique(rows.ids)
    present = database.existing_ids(table, rows.ids) if table_schema is not None else set()
    keep = np.array([i for i, id_ in enumerate(rows.ids) if id_ not in present], dtype=np.int64)
    weights = "given" if model is not None else weights_kind(arch, pretrained)
    result = EncodeResult(resumed_skipped=len(rows) - len(keep), model=model_name, weights=weights)
    if not len(keep):
        result.table_version = database.dataset(table).version if table_schema is not None else None
        result.seconds = time.perf_counter() - started
        return result

    kept_modality = [rows.modality[i] for i in keep]
    image_idx = [j for j, m in enumerate(kept_modality) if m == "image"]
    text_idx = [j for j, m in enumerate(kept_modality) if m == "text"]
    payload = [rows.payload[i] for i in keep]
    rows_table = planned_table(rows, keep, table_schema)
    del rows

    if model is None:
        if weights == "random":  # one line on stderr, before the (long) encoding starts
            print(RANDOM_WEIGHTS_NOTICE.format(arch=arch, seed=seed), file=sys.stderr, flush=True)
        model, preprocess, tokenizer = build_model(arch, pretrained, dev, seed, model_name)
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
                loader = image_batches(payload, image_idx, preprocess, batch_size, num_workers,
                                       pin_memory=dev.startswith("cuda"))
                for indices, emb, bad in encode_images(torch, model, loader, dev):
                    for index, reason in bad:
                        where = describe(payload[index])
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
                for indices, emb in encode_texts(torch, model, tokenizer, payload, text_idx,
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

