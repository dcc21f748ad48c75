"""Out-of-core scratch for one command: per-row scalars as Parquet parts that DuckDB joins
and sorts within a memory limit, and raw vectors kept for a later pair dot.

The scoring transaction needs, for every row it scores, a handful of scalars computed
from the vectors (conformity, estimator, loglik, dots with the modality means) before
its global step (the sketch, the image–text join, the order of writes) can run. Holding
them in RAM would grow with the table; here they go to a temporary folder instead, and
memory stays bounded by a batch plus DuckDB's ``memory_limit``.

Each spill folder is ``curator-spill-<pid>-<random>`` under the temp dir, ``<pid>`` the
process that made it; it is removed when the spill closes. A command killed outright
(SIGKILL, out of memory) cannot remove its own, so making a new folder first removes
the siblings left by dead processes: a ``curator-spill-<pid>-<random>`` folder owned by
this user whose ``<pid>`` is not running (``os.kill(pid, 0)`` says no such process; a
permission error means it runs) and that has not changed for a minute. Folders of any
other name are never touched. (This assumes processes sharing the temp dir share a PID
namespace; POSIX only.)
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import stat
import tempfile
import time

import numpy as np
import pyarrow as pa

from ..errors import BadInput

MEMORY_LIMIT = "256MB"  # DuckDB's working memory; beyond it joins and sorts spill to disk
MEMORY_ENV = "CURATOR_DUCKDB_MEMORY"  # overrides MEMORY_LIMIT, e.g. 256MB or 4GB
PREFIX = "curator-spill-"
STALE_AFTER = 60.0  # seconds unchanged before a dead process's folder is removed
_FOLDER = re.compile(re.escape(PREFIX) + r"(\d+)-[A-Za-z0-9_]+")


def make_folder() -> str:
    """A new ``curator-spill-<pid>-<random>`` folder in the temp dir, after removing the
    folders that dead processes left there (:func:`remove_stale`)."""
    parent = tempfile.gettempdir()
    remove_stale(parent)
    return tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)


@contextlib.contextmanager
def scratch():
    """A new spill folder (:func:`make_folder`) for the block, removed after it. A command
    killed inside the block leaves it to the next command's stale-folder sweep."""
    folder = make_folder()
    try:
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def remove_stale(parent: str) -> list[str]:
    """Remove the spill folders under ``parent`` whose process is dead and that have not
    changed for ``STALE_AFTER`` seconds; return their paths."""
    if os.name != "posix":  # os.kill(pid, 0) is no liveness test elsewhere
        return []
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        match = _FOLDER.fullmatch(entry.name)
        if not match:
            continue
        pid = int(match.group(1))
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if (not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid()
                or now - info.st_mtime < STALE_AFTER or _alive(pid)):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        removed.append(entry.path)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` exists (in doubt: yes)."""
    if pid <= 0 or pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: it exists, under another user
        return True
    return True


def connect(folder: str):
    """A DuckDB connection for curator's own statements: memory limited (``MEMORY_LIMIT``,
    or the environment's ``CURATOR_DUCKDB_MEMORY``), spilling to ``folder``. No user text
    is ever executed on it (the limit from the environment is checked, then quoted)."""
    import duckdb

    con = duckdb.connect()
    limit = os.environ.get(MEMORY_ENV, "").strip() or MEMORY_LIMIT
    if not re.fullmatch(r"[0-9]+(\.[0-9]+)?\s*[KMGT]i?B", limit, re.IGNORECASE):
        con.close()
        raise BadInput(f"{MEMORY_ENV}={limit!r}: give a size such as 256MB or 2GB")
    con.execute(f"SET memory_limit = {quote(limit)}")
    con.execute(f"SET temp_directory = {quote(os.path.join(folder, 'duckdb'))}")
    con.execute("SET preserve_insertion_order = false")
    con.execute("SET enable_progress_bar = false")
    return con


@contextlib.contextmanager
def scan_probes(con):
    """Within the block, DuckDB builds each join's hash table on the side written as the
    right one (an ``IN (SELECT …)`` list, the smaller spilled table) and streams the left.

    For a table scan fed from an Arrow reader DuckDB cannot know the row count and
    estimates one row, so its build-side optimizer would flip the join and build on the
    scan: every scanned row in memory (1.75 GiB for a duplicate check against a 20M-row
    table, 0.9 GiB as written)."""
    import duckdb

    try:
        con.execute("SET disabled_optimizers = 'build_side_probe_side'")
    except duckdb.Error:  # an older DuckDB without that optimizer: joins as it plans them
        yield con
        return
    try:
        yield con
    finally:
        con.execute("RESET disabled_optimizers")


def quote(text: str) -> str:
    """A SQL string literal of one of curator's own paths."""
    return "'" + str(text).replace("'", "''") + "'"


def fragment_rows(folder: str, fragment_id: int, columns: list[str], order: str) -> pa.Table | None:
    """The rows of one fragment from a DuckDB ``COPY … (PARTITION_BY (fragment))`` under
    ``folder`` (``fragment=<id>/*.parquet``), sorted by ``order``; None when it wrote none."""
    import pyarrow.parquet as pq

    files = sorted(glob.glob(os.path.join(folder, f"fragment={int(fragment_id)}", "*.parquet")))
    if not files:
        return None
    return pa.concat_tables([pq.read_table(f, columns=columns) for f in files]).sort_by(order)


class ScalarSpill:
    """Arrow tables of one schema appended as Parquet parts under a temporary folder.

    With ``key`` (an integer column unique across the spill), each part is kept sorted by
    it and its key range recorded, so :meth:`in_key_order` streams the whole spill in key
    order without a sort, as long as parts' ranges do not interleave (a part per piece of
    a fragment, or per batch of new rows, never does)."""

    def __init__(self, schema: pa.Schema, folder: str | None = None, *, key: str | None = None):
        self.schema = schema
        self.folder = folder or make_folder()
        self._own = folder is None
        self.parts = 0
        self.rows = 0
        self.key = key
        self._ranges: list[tuple[int, int, str]] = []  # (first key, last key, path) per part

    def add(self, table: pa.Table | pa.RecordBatch, name: str = "part") -> None:
        import pyarrow.parquet as pq

        if table.num_rows == 0:
            return
        if isinstance(table, pa.RecordBatch):
            table = pa.Table.from_batches([table])
        path = os.path.join(self.folder, f"{name}-{self.parts:06d}.parquet")
        if self.key is not None:
            keys = table.column(self.key).to_numpy()
            if len(keys) > 1 and not (keys[1:] > keys[:-1]).all():
                table = table.sort_by(self.key)
                keys = table.column(self.key).to_numpy()
            self._ranges.append((int(keys[0]), int(keys[-1]), path))
        pq.write_table(table.cast(self.schema), path,
                       compression="none", use_dictionary=False, write_statistics=False)
        self.parts += 1
        self.rows += table.num_rows

    def in_key_order(self, columns: list[str], batch_rows: int = 1 << 16):
        """Record batches of ``columns`` of every part, in ascending key order (parts read
        one at a time: memory is one batch). Raises if two parts' key ranges interleave."""
        import pyarrow.parquet as pq

        if self.key is None:
            raise ValueError("in_key_order needs a spill made with key=")
        ranges = sorted(self._ranges)
        for (_, last, _), (first, _, _) in zip(ranges, ranges[1:]):
            if first <= last:
                raise AssertionError("spill parts' key ranges interleave")
        for _, _, path in ranges:
            yield from pq.ParquetFile(path).iter_batches(batch_rows, columns=columns)

    def glob(self, name: str = "part") -> str:
        return os.path.join(self.folder, f"{name}-*.parquet")

    def connect(self, view: str = "spill"):
        """A DuckDB connection (our own SQL only) with the parts as the view ``view``."""
        con = connect(self.folder)
        self.attach(con, view)
        return con

    def attach(self, con, view: str = "spill", name: str = "part") -> None:
        """(Re)define ``view`` on ``con`` as the parts written so far under ``name``."""
        if self.parts and glob.glob(self.glob(name)):
            con.execute(f"CREATE OR REPLACE VIEW {view} AS SELECT * FROM read_parquet({quote(self.glob(name))})")
        else:
            con.from_arrow(self.schema.empty_table()).create_view(view, replace=True)

    def close(self) -> None:
        if self._own:
            shutil.rmtree(self.folder, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class VectorSpill:
    """float32 rows appended to a file under a key, read back by key (memory-mapped)."""

    def __init__(self, folder: str, dim: int):
        self.path = os.path.join(folder, "vectors.f32")
        self.dim = dim
        self._file = open(self.path, "wb")  # noqa: SIM115 (closed by finish/close)
        self._keys: list[np.ndarray] = []
        self.rows = 0
        self._index = None

    def add(self, keys: np.ndarray, X: np.ndarray) -> None:
        if len(keys) == 0:
            return
        np.ascontiguousarray(X, np.float32).tofile(self._file)
        self._keys.append(np.asarray(keys, np.int64))
        self.rows += len(keys)

    def take(self, keys: np.ndarray) -> np.ndarray:
        """The vectors stored under ``keys`` (each must have been added)."""
        if self._index is None:
            self._file.flush()
            all_keys = np.concatenate(self._keys) if self._keys else np.zeros(0, np.int64)
            order = np.argsort(all_keys, kind="stable")
            self._index = (all_keys[order], order)
        sorted_keys, order = self._index
        at = np.searchsorted(sorted_keys, keys)
        if len(keys) and (np.any(at >= len(sorted_keys)) or np.any(sorted_keys[np.minimum(at, len(sorted_keys) - 1)] != keys)):
            raise KeyError("a vector was not spilled")
        rows = order[at]
        data = np.memmap(self.path, np.float32, mode="r", shape=(self.rows, self.dim))
        return np.array(data[rows])

    def close(self) -> None:
        self._file.close()
