"""The declared schemas (``schemas/*.json``) and checks of tables against them.

The JSON files are the language-neutral contract; this module turns the dataset
declaration into an Arrow schema and checks existing tables against it.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import pyarrow as pa

DATASET_SCHEMA_VERSION = 1

_TYPES = {
    "string": pa.string(),
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int32": pa.int32(),
    "int64": pa.int64(),
    "bool": pa.bool_(),
}


def _schema_dirs() -> list[Path]:
    package = Path(__file__).resolve().parents[1]
    return [package / "_schemas", package.parent / "schemas"]


@cache
def load(name: str, version: int) -> dict:
    """The declaration ``schemas/{name}.v{version}.json`` (shipped in the wheel)."""
    for folder in _schema_dirs():
        path = folder / f"{name}.v{version}.json"
        if path.exists():
            return json.loads(path.read_text())
    raise FileNotFoundError(f"schema {name}.v{version}.json is not installed")


def dataset_columns(version: int = DATASET_SCHEMA_VERSION) -> list[dict]:
    return load("dataset", version)["columns"]


def column_names() -> list[str]:
    return [c["name"] for c in dataset_columns()]


SCORE_COLUMNS = (
    "norm",
    "conformity",
    "conformity_est",
    "uncertainty",
    "loglik",
    "alignment",
    "alignment_centered",
    "conformity_mismatch",
    "pair_dot",
    "stats_version",
)
CURATION_COLUMNS = ("cluster", "cluster_size", "dup_group", "is_duplicate", "rebalance_keep")


def arrow_type(type_name: str, dim: int) -> pa.DataType:
    if type_name.startswith("fixed_size_list"):
        return pa.list_(pa.float32(), dim)
    return _TYPES[type_name]


def dataset_fields(dim: int) -> list[pa.Field]:
    """Arrow fields of the declared columns for vectors of dimension ``dim``."""
    return [
        pa.field(c["name"], arrow_type(c["type"], dim), nullable=c["nullable"])
        for c in dataset_columns()
    ]


def dataset_schema(dim: int, metadata_fields: list[pa.Field] = (), table_metadata=None) -> pa.Schema:
    """The full table schema: declared columns, then the source's metadata columns."""
    return pa.schema(list(dataset_fields(dim)) + list(metadata_fields), metadata=table_metadata)


def check_table_schema(schema: pa.Schema) -> list[str]:
    """Differences between a table's schema and the declaration; empty when it conforms."""
    problems = []
    dim = None
    if "embedding" in schema.names and pa.types.is_fixed_size_list(schema.field("embedding").type):
        dim = schema.field("embedding").type.list_size
    for want in dataset_fields(dim or 1):
        if want.name not in schema.names:
            problems.append(f"missing column {want.name}")
            continue
        got = schema.field(want.name)
        if got.type != want.type:
            problems.append(f"column {want.name} is {got.type}, declared {want.type}")
    names = schema.names[: len(dataset_columns())]
    if names != column_names() and not problems:
        problems.append("declared columns are not first and in order")
    return problems
