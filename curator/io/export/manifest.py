"""``manifest.json``: what an export holds and how to write it again.

Declared in ``schemas/manifest.v1.json``: the source table and version (tagged so that
``optimize`` keeps it), the parsed predicate (``{"text": DuckDB's normalised expression,
"columns": [the columns it reads]}``, null for every row), unit and format, records and
counts per modality, every file with its bytes and sha256, and the command that
reproduces the export (with the normalised predicate, which parses to itself).
"""

from __future__ import annotations

import hashlib
import os
import shlex
from datetime import datetime, timezone

from ...store.database import TableMeta
from ...store.tags import tags_used
from ...store.versions import protect_version

MANIFEST = "manifest.json"
MANIFEST_SCHEMA = "curator.manifest.v1"


def sha256(path: str) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def checksums(folder: str) -> list[dict]:
    files = []
    for root, _, names in os.walk(folder):
        for name in names:
            path = os.path.join(root, name)
            files.append({"path": os.path.relpath(path, folder).replace(os.sep, "/"),
                          "bytes": os.path.getsize(path), "sha256": sha256(path)})
    return sorted(files, key=lambda f: f["path"])


def manifest(database, table, dataset, predicate, unit, fmt, selection, files, out) -> dict:
    from ... import __version__

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
        "predicate": ({"text": predicate.text, "columns": list(predicate.columns)}
                      if predicate is not None else None),
        "tags": tags_used(dataset.schema, predicate),
        "unit": unit,
        "format": fmt,
        "rows": selection.records,
        "counts": selection.counts(),
        "files": files,
        "command": command(database.uri, table, dataset.version, out,
                           predicate.text if predicate is not None else None, fmt, unit),
    }


def command(db: str, table: str, version: int, out: str, where, fmt: str, unit: str) -> str:
    """The curator command line that writes this export again, from the same version."""
    args = ["curator", "--db", db, "--table", table, "export", "--out", out, "--format", fmt,
            "--unit", unit]
    if where is not None:
        args += ["--where", where]
    args += ["--table-version", str(version)]
    return shlex.join(args + ["--overwrite"])

