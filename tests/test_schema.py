"""The declared schemas match what the code writes."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa

from curator.store import schema
from curator.store.database import Database

ROOT = Path(__file__).resolve().parents[1]


def test_declarations_are_valid_json_with_required_fields():
    for path in (ROOT / "schemas").glob("*.json"):
        data = json.loads(path.read_text())
        assert {"name", "version"} <= set(data), path
        name, version = path.stem.split(".v")
        assert (data["name"], data["version"]) == (name, int(version))


def test_created_table_matches_declaration(ingested):
    table_schema = Database(ingested).dataset("embeddings").schema
    assert schema.check_table_schema(table_schema) == []
    declared = [c["name"] for c in schema.dataset_columns()]
    assert table_schema.names[: len(declared)] == declared
    for column in schema.dataset_columns():
        field = table_schema.field(column["name"])
        if column["name"] == "embedding":
            assert pa.types.is_fixed_size_list(field.type) and field.type.value_type == pa.float32()


def test_check_reports_a_wrong_type():
    fields = schema.dataset_fields(4)
    broken = pa.schema([pa.field(f.name, pa.string()) if f.name == "norm" else f for f in fields])
    assert schema.check_table_schema(broken) == ["column norm is string, declared float"]


def test_every_cli_md_column_is_declared():
    names = set(schema.column_names())
    for column in ("id", "sample_id", "modality", "embedding", "norm", "conformity", "conformity_est",
                   "uncertainty", "loglik", "alignment", "alignment_centered", "conformity_mismatch",
                   "stats_version", "cluster", "cluster_size", "dup_group", "is_duplicate",
                   "rebalance_keep"):
        assert column in names


def test_manifest_schema_is_shipped():
    assert schema.load("manifest", 1)["name"] == "manifest"
