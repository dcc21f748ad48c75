"""The curator database: a LanceDB directory holding dataset tables and their sidecars.

A database is a LanceDB directory (or object-store URI): ``--db``, else ``$CURATOR_DB``,
else ``./curator.lancedb``. Each dataset table is a Lance dataset ``NAME.lance``
written with storage version 2.0 (measurably faster to write and scan here than 2.1);
its schema metadata records the model, the dimension and the schema version. Curator's
own bookkeeping (statistics, their history, centroids) lives in tables whose names
start with ``_curator_`` and are hidden from ``table_names``.

Score columns are written with Lance data evolution (:mod:`curator.store.columns`),
which writes new column files and never rewrites the vectors.
"""

from __future__ import annotations

import ctypes
import os
import re
from dataclasses import dataclass

import pyarrow as pa

from ..errors import CuratorError, NoDatabase, NoTable, SchemaMismatch
from .schema import DATASET_SCHEMA_VERSION

DEFAULT_DB = "./curator.lancedb"
DEFAULT_TABLE = "embeddings"
STORAGE_VERSION = "2.0"
HIDDEN_PREFIX = "_curator_"
_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,127}$")

_allocator_tuned = False
# mallopt takes a C int: ctypes masks a larger Python int to its low 32 bits, and
# 1 << 36 became 0, a trim threshold that returned the heap's top to the kernel at
# every free (the next batch then page-faulted it back in, zeroed).
_INT_MAX = 2**31 - 1


def tune_allocator() -> bool:
    """Keep freed memory in the process (glibc), so Lance's scans stop page-faulting.

    Measured here: a Lance scan of 1M x 512 float32 goes from ~3 s to ~0.3-0.7 s. It keeps
    freed memory in the process, which suits a CLI run; the CLI calls it at start, a
    library user may opt in. Returns False where glibc is not available.
    """
    global _allocator_tuned
    if _allocator_tuned:
        return True
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    libc.mallopt(-8, 1)  # M_ARENA_MAX
    libc.mallopt(-4, 0)  # M_MMAP_MAX
    libc.mallopt(-1, _INT_MAX)  # M_TRIM_THRESHOLD: 2 GiB of free heap top before a trim
    _allocator_tuned = True
    return True


def release_free_memory() -> None:
    """Return the memory freed so far to the system (glibc ``malloc_trim``), when
    :func:`tune_allocator` keeps it in the process. For commands of several phases: a
    phase's freed arrays would otherwise stay resident (and fragment the heap) under the
    next phase's, and the peak would add them up. A no-op elsewhere."""
    if not _allocator_tuned:
        return
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def resolve_db(db: str | os.PathLike | None) -> str:
    """The database location: the argument, else ``$CURATOR_DB``, else ``./curator.lancedb``."""
    location = str(db) if db else os.environ.get("CURATOR_DB") or DEFAULT_DB
    if "://" in location:
        return location.rstrip("/")
    return os.path.abspath(os.path.expanduser(location))


def check_table_name(name: str) -> str:
    if not _NAME.match(name or "") or name.startswith(HIDDEN_PREFIX):
        raise CuratorError(
            f"invalid table name {name!r}: use letters, digits and underscores, starting with a letter"
        )
    return name


@dataclass(frozen=True)
class TableMeta:
    """What a table records about its vectors."""

    model: str
    dim: int
    schema_version: int

    def to_metadata(self) -> dict[bytes, bytes]:
        return {
            b"curator.model": self.model.encode(),
            b"curator.dim": str(self.dim).encode(),
            b"curator.schema_version": str(self.schema_version).encode(),
        }

    @classmethod
    def from_schema(cls, schema: pa.Schema) -> TableMeta:
        md = schema.metadata or {}
        return cls(
            model=md.get(b"curator.model", b"unknown").decode(),
            dim=int(md.get(b"curator.dim", b"0")),
            schema_version=int(md.get(b"curator.schema_version", str(DATASET_SCHEMA_VERSION).encode())),
        )


class Database:
    """A curator database (LanceDB directory or URI)."""

    def __init__(self, db: str | os.PathLike | None = None):
        self.uri = resolve_db(db)

    def __repr__(self) -> str:
        return f"Database({self.uri!r})"

    @property
    def is_local(self) -> bool:
        return "://" not in self.uri

    def table_uri(self, name: str) -> str:
        return f"{self.uri}/{name}.lance"

    def connect(self):
        import lancedb

        return lancedb.connect(self.uri)

    def table_names(self, hidden: bool = False) -> list[str]:
        """Dataset tables of the database, sorted; curator's own tables only with ``hidden``."""
        if self.is_local and not os.path.isdir(self.uri):
            return []
        names = _list_table_names(self.connect())
        return sorted(n for n in names if hidden or not n.startswith(HIDDEN_PREFIX))

    def has_table(self, name: str) -> bool:
        if self.is_local and not os.path.isdir(self.table_uri(name)):
            return False
        try:
            self.dataset(name)
            return True
        except NoTable:
            return False

    def dataset(self, name: str, version: int | None = None):
        """The Lance dataset of a table (latest version unless ``version``).

        A missing table is a :class:`NoTable` whose message says what is there instead:
        no database at all (with what to run), a file where a folder should be, or the
        tables the database does hold.
        """
        import lance

        if self.is_local and not os.path.isdir(self.table_uri(name)):
            raise self._missing(name)
        try:
            return lance.dataset(self.table_uri(name), version=version)
        except (ValueError, OSError, RuntimeError) as exc:
            if version is not None and self.has_table(name):
                raise CuratorError(f"table {name!r} has no version {version}") from exc
            raise self._missing(name) from exc

    def check_folder(self, create: bool = False) -> None:
        """Raise NoDatabase unless the database folder exists (``create``: make it when
        missing); a file in its place is never a database. No-op for object-store URIs."""
        if not self.is_local:
            return
        if os.path.exists(self.uri) and not os.path.isdir(self.uri):
            raise NoDatabase(f"--db {self.uri} is a file, not a database folder: "
                             "pass the folder curator ingest created (e.g. ./curator.lancedb)")
        if create:
            os.makedirs(self.uri, exist_ok=True)
        elif not os.path.isdir(self.uri):
            raise NoDatabase(f"no curator database at {self.uri}: run `curator ingest FILE` "
                             "or pass --db (or set $CURATOR_DB)")

    def _missing(self, name: str) -> NoTable:
        """The error for a table that is not there, with what is there instead."""
        if name.startswith(HIDDEN_PREFIX):
            return NoTable(f"no table {name!r} in {self.uri}")
        try:
            self.check_folder()
            names = self.table_names()
        except NoDatabase as exc:
            return exc
        except Exception:  # listing failed (e.g. an unreachable store): say what we know
            names = None
        if names == [] and self.is_local and not any(
                entry.endswith(".lance") for entry in os.listdir(self.uri)):
            return NoDatabase(f"no curator database at {self.uri} (the folder holds no tables): "
                              "run `curator ingest FILE` or pass --db")
        listed = (f"; its tables: {', '.join(names)} (pass --table NAME)" if names
                  else "; it holds no tables yet: run `curator ingest FILE`" if names == [] else "")
        return NoTable(f"no table {name!r} in {self.uri}{listed}")

    def table_meta(self, name: str) -> TableMeta:
        return TableMeta.from_schema(self.dataset(name).schema)

    def existing_ids(self, name: str, ids: list[str] | pa.Array) -> set[str]:
        """The subset of ``ids`` already present in the table (one scan of the id column)."""
        if not self.has_table(name):
            return set()
        wanted = pa.array(ids, pa.string()) if not isinstance(ids, pa.Array) else ids
        return set(ids_present(self.dataset(name), wanted).to_pylist())


def check_same_space(dataset, ref_dataset, table: str, reference: str) -> None:
    """Scores against another table need its model and dimension: else one error line."""
    mine, theirs = TableMeta.from_schema(dataset.schema), TableMeta.from_schema(ref_dataset.schema)
    if mine.dim != theirs.dim:
        raise SchemaMismatch(f"reference {reference!r} holds {theirs.dim}-d vectors, {table!r} {mine.dim}-d")
    if mine.model != theirs.model:
        raise SchemaMismatch(f"reference {reference!r} holds model {theirs.model!r}, {table!r} {mine.model!r}")


def _list_table_names(conn) -> list[str]:
    if hasattr(conn, "list_tables"):
        try:
            result = conn.list_tables()
            names = getattr(result, "tables", result)
            return list(names)
        except Exception:  # older lancedb
            pass
    return list(conn.table_names())


def ids_present(dataset, wanted: pa.Array) -> pa.Array:
    """Values of ``wanted`` that occur in the table's ``id`` column, streaming the column."""
    import pyarrow.compute as pc

    found = []
    value_set = pc.unique(wanted)
    for batch in dataset.to_batches(columns=["id"], batch_size=262_144):
        ids = batch.column(0)
        hit = pc.is_in(ids, value_set=value_set)
        if pc.any(hit).as_py():
            found.append(pc.filter(ids, hit))
    if not found:
        return pa.array([], pa.string())
    return pa.concat_arrays([a.cast(pa.string()) for a in found])
