"""rebalance per sample, --where, --into: against a Python oracle over a snapshot of the
table, and against what export then writes."""

from __future__ import annotations

import math
from collections import Counter

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import read_table
from mixed_samples import (TEXT_ONLY, build, counts_of, expected, mixed_table, oracle, snapshot,
                           uniform)

from curator import ingest
from curator.cli import cli
from curator.curation.rebalance import rebalance
from curator.errors import CuratorError
from curator.io.export import export
from curator.store.database import Database
from curator.store.statistics import StatsStore


def _version(db: str) -> int:
    return lance.dataset(f"{db}/embeddings.lance").version


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """The mixed table, clustered and deduped (no rebalance yet); copied per test."""
    return build(tmp_path_factory.mktemp("base"), curate=False)


@pytest.fixture
def mixed(base, tmp_path):
    import shutil

    from curator import cluster, dedupe

    db = str(tmp_path / "db.lancedb")
    shutil.copytree(base, db)
    cluster(db=db, k=5, seed=2)
    dedupe(db=db, eps=0.002, seed=0)
    return db


CASES = [
    dict(cap=10, by="cluster", seed=4, where=None),
    dict(cap=10, by="cluster", seed=4, where="not coalesce(is_duplicate, false)"),
    dict(cap=25, by="concept", seed=1, where="conformity > 0.1 or modality = 'text'"),
    dict(cap=15, by="conformity", bins=6, seed=2, where="not coalesce(is_duplicate, false)"),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['by']}-{c['where']}")
def test_per_sample_follows_the_rule(mixed, case):
    snap = snapshot(mixed)
    result = rebalance(db=mixed, **case)
    values, groups, undecided = expected(snap, **case)
    got = read_table(mixed)
    stored = dict(zip(got.column("id").to_pylist(), got.column("rebalance_keep").to_pylist()))
    assert stored == values  # every row written, no nulls
    # one decision per sample: rows of a sample that pass the predicate agree
    by_sample: dict = {}
    for r in snap.drop_columns(["embedding"]).to_pylist():
        if r["sample_id"] is not None:
            by_sample.setdefault(r["sample_id"], set()).add(values[r["id"]])
    assert any(len(v) == 1 and True in v for v in by_sample.values())
    reported = {(g["modality"], g["group"]): (g["before"], g["after"]) for g in result.groups}
    assert reported == groups
    assert result.units == sum(b for b, _ in groups.values())
    assert result.kept_units == sum(a for _, a in groups.values())
    assert result.expected_kept == pytest.approx(sum(min(b, case["cap"]) for b, _ in groups.values()))
    assert result.undecided_samples == undecided >= len(TEXT_ONLY)
    assert result.rows == snap.num_rows and result.kept == sum(values.values())
    assert result.counts == counts_of(snap, [i for i, v in values.items() if v])
    crowded = [(b, a) for b, a in groups.values() if b > case["cap"]]
    assert crowded  # the cap binds somewhere
    for before, after in crowded:
        p = case["cap"] / before
        assert abs(after - before * p) <= 4 * math.sqrt(before * p * (1 - p)) + 1


def test_per_sample_image_decision_is_the_per_row_one(ingested):
    """With one image per sample and no predicate, an image's per-sample decision is the
    one per row would give it, and its captions share it."""
    rebalance(db=ingested, cap=15, by="concept", seed=9, per="row", modality="image")
    per_row = read_table(ingested)
    rebalance(db=ingested, cap=15, by="concept", seed=9)
    per_sample = read_table(ingested)
    mods = np.array(per_row.column("modality").to_pylist())
    a = np.array(per_row.column("rebalance_keep").to_pylist())
    b = np.array(per_sample.column("rebalance_keep").to_pylist())
    assert (a[mods == "image"] == b[mods == "image"]).all()
    image_of = {s: k for s, m, k in zip(per_sample.column("sample_id").to_pylist(), mods, b) if m == "image"}
    for s, m, k in zip(per_sample.column("sample_id").to_pylist(), mods, b):
        assert k == image_of[s]


def test_what_is_reported_is_what_export_writes(mixed, tmp_path):
    result = rebalance(db=mixed, cap=10, by="cluster", seed=3, into="k1",
                       where="not coalesce(is_duplicate, false)")
    rows = export(db=mixed, out=str(tmp_path / "rows"), where="k1")
    assert rows.counts == result.counts and rows.rows == result.kept
    got = pq.read_table(str(tmp_path / "rows" / "part-00000.parquet"))
    images = got.filter(pa.compute.equal(got.column("modality"), "image"))
    per_cluster = Counter(images.column("cluster").to_pylist())
    assert {g["group"]: g["after"] for g in result.groups} == \
        {g["group"]: per_cluster.get(g["group"], 0) for g in result.groups}
    pairs = export(db=mixed, out=str(tmp_path / "pairs"), where="k1", unit="pair")
    records = pq.read_table(str(tmp_path / "pairs" / "part-00000.parquet"))
    distinct = {}
    for i, c in zip(records.column("image_id").to_pylist(), records.column("image_cluster").to_pylist()):
        distinct.setdefault(c, set()).add(i)
    kept_with_captions = {c: len(v) for c, v in distinct.items()}
    for g in result.groups:  # image-only samples have no pair: never more images than reported
        assert kept_with_captions.get(g["group"], 0) <= g["after"]
    assert pairs.counts["image"]["rows"] == sum(kept_with_captions.values())


def test_into_keeps_balances_apart_and_statistics_current(mixed, tmp_path):
    first = rebalance(db=mixed, cap=10, by="cluster", seed=1)
    before = read_table(mixed).column("rebalance_keep").to_pylist()
    second = rebalance(db=mixed, cap=20, by="conformity", bins=5, seed=1, into="flat_keep")
    t = read_table(mixed)
    assert t.column("rebalance_keep").to_pylist() == before
    assert t.schema.field("flat_keep").type == pa.bool_() and t.column("flat_keep").null_count == 0
    assert second.into == "flat_keep" and first.into == "rebalance_keep"
    assert second.table_version == _version(mixed) == first.table_version + 2  # column, values
    record = StatsStore(Database(mixed), "embeddings").load()
    assert record.table_version == _version(mixed)  # the statistics still describe the table
    both = export(db=mixed, out=str(tmp_path / "both"), where="rebalance_keep and flat_keep")
    a, b = np.array(before), np.array(t.column("flat_keep").to_pylist())
    assert both.rows == int((a & b).sum())
    again = rebalance(db=mixed, cap=20, by="conformity", bins=5, seed=1, into="flat_keep")
    assert again.table_version == _version(mixed) and read_table(mixed).column("flat_keep").to_pylist() \
        == t.column("flat_keep").to_pylist()


@pytest.mark.parametrize("into, by, message", [
    ("concept", "cluster", "holds int32"),
    ("caption", "cluster", "holds string"),
    ("conformity", "cluster", "curator's own"),
    ("is_duplicate", "cluster", "curator's own"),
    ("cluster", "cluster", "curator's own"),
    ("Rebalance_Keep", "cluster", "curator's own"),
    ("a b", "cluster", "letters, digits"),
    ("1x", "cluster", "letters, digits"),
    ("", "cluster", "letters, digits"),
    ("select", "cluster", "SQL keyword"),
    ("Concept", "cluster", "not case"),
    ("concept", "concept", "same column as --by"),
])
def test_into_refuses_names_that_clash(mixed, into, by, message):
    version = _version(mixed)
    names = read_table(mixed).schema.names
    with pytest.raises(CuratorError, match=message) as info:
        rebalance(db=mixed, cap=10, by=by, into=into)
    assert "\n" not in str(info.value)
    assert _version(mixed) == version and read_table(mixed).schema.names == names


def _table(tmp_path, name, modalities, samples=None):
    n = len(modalities)
    X = np.random.default_rng(len(name)).normal(size=(n, 8)).astype(np.float32) + 3
    pq.write_table(pa.table({
        "id": [f"{m}-{i:03d}" for i, m in enumerate(modalities)],
        "sample_id": samples if samples is not None else [f"s{i // 2}" for i in range(n)],
        "modality": modalities,
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 8),
        "label": [f"L{i % 3}" for i in range(n)]}), tmp_path / f"{name}.parquet")
    db = str(tmp_path / f"{name}.lancedb")
    ingest([str(tmp_path / f"{name}.parquet")], db=db)
    return db


def test_default_modality_rule(tmp_path):
    text = _table(tmp_path, "text", ["text"] * 60)
    result = rebalance(db=text, cap=5, by="label")
    assert result.modality == "text" and result.units == 30  # samples of two captions each
    mixed = _table(tmp_path, "mixed", ["text", "audio"] * 30)
    version = _version(mixed)
    with pytest.raises(CuratorError, match="--modality"):
        rebalance(db=mixed, cap=5, by="label")
    assert _version(mixed) == version
    chosen = rebalance(db=mixed, cap=5, by="label", modality="audio")
    assert chosen.modality == "audio" and chosen.units == 30


def test_by_captions_the_smallest_passing_id_decides(tmp_path):
    db = _table(tmp_path, "caps", ["text"] * 90, samples=[f"s{i // 3}" for i in range(90)])
    snap = snapshot(db)
    where = "id > 'text-010'"
    result = rebalance(db=db, cap=4, by="label", modality="text", where=where, seed=5)
    values, groups, undecided = expected(snap, cap=4, by="label", seed=5, where=where, modality="text")
    got = read_table(db)
    assert dict(zip(got.column("id").to_pylist(), got.column("rebalance_keep").to_pylist())) == values
    assert {(g["modality"], g["group"]): (g["before"], g["after"]) for g in result.groups} == groups
    assert undecided == result.undecided_samples == 3  # s0..s2: every caption fails


def test_per_row_where_counts_only_passing_rows(ingested):
    where = "conformity > 0.25"
    result = rebalance(db=ingested, cap=20, by="concept", per="row", where=where, seed=7)
    snap = snapshot(ingested)
    hit = dict(zip(*(oracle(snap, where, "SELECT id, hit FROM m").column(c).to_pylist()
                     for c in ("id", "hit"))))
    rows = snap.drop_columns(["embedding"]).to_pylist()
    counts = Counter((r["modality"], r["concept"]) for r in rows if hit[r["id"]])
    want = {r["id"]: bool(hit[r["id"]] and uniform(7, r["id"]) < min(1.0, 20 / counts[(r["modality"], r["concept"])]))
            for r in rows}
    got = read_table(ingested)
    assert dict(zip(got.column("id").to_pylist(), got.column("rebalance_keep").to_pylist())) == want
    assert result.units == sum(counts.values()) < len(rows)


def test_cli_per_where_into(mixed):
    runner = CliRunner()
    out = runner.invoke(cli, ["--db", mixed, "rebalance", "--cap", "10", "--per", "sample", "--where",
                              "not coalesce(is_duplicate, false)", "--into", "keep_a", "--json"])
    assert out.exit_code == 0, out.output
    import json

    data = json.loads(out.output)
    assert data["into"] == "keep_a" and data["where"] == "(NOT COALESCE(is_duplicate, false))"
    assert data["per"] == "sample" and data["modality"] == "image"
    text = runner.invoke(cli, ["--db", mixed, "rebalance", "--cap", "10", "--into", "keep_b"])
    assert text.exit_code == 0 and "per sample (decided by the image row)" in text.output
    assert "samples with no image row" in text.output


@pytest.mark.parametrize("case", [CASES[2], CASES[3]], ids=["concept-where", "conformity-bins"])
def test_samples_split_across_many_fragments(tmp_path, monkeypatch, case):
    """Rows shuffled into six fragments, so a sample's image and captions sit in different
    fragments and fragments are not in id order; DuckDB's memory squeezed so its joins
    spill. Per sample, the written column, groups and counts are the rule's; per row too."""
    from curator import dedupe
    from curator.engine import spill

    monkeypatch.setattr(spill, "MEMORY_LIMIT", "64MB")
    table = mixed_table()
    table = table.take(np.random.default_rng(5).permutation(table.num_rows))
    db = str(tmp_path / "db.lancedb")
    step = -(-table.num_rows // 6)
    for k in range(6):
        path = tmp_path / f"part-{k}.parquet"
        pq.write_table(table.slice(k * step, step), path)
        ingest([str(path)], db=db)
    assert len(lance.dataset(f"{db}/embeddings.lance").get_fragments()) >= 6
    dedupe(db=db, eps=0.002, seed=0)
    snap = snapshot(db)
    result = rebalance(db=db, **case)
    values, groups, undecided = expected(snap, **case)
    got = read_table(db)
    assert dict(zip(got.column("id").to_pylist(), got.column("rebalance_keep").to_pylist())) == values
    assert {(g["modality"], g["group"]): (g["before"], g["after"]) for g in result.groups} == groups
    assert result.undecided_samples == undecided and result.rows == snap.num_rows
    assert result.counts == counts_of(snap, [i for i, v in values.items() if v])

    per_row = rebalance(db=db, per="row", modality="text", into="text_keep", **case)
    rows = [r for r in snap.drop_columns(["embedding"]).to_pylist() if r["modality"] == "text"]
    sub, want_groups, _ = expected(snap.filter(pa.compute.equal(snap.column("modality"), "text"))
                                   .drop_columns(["sample_id"]).append_column(
                                       "sample_id", pa.array([None] * len(rows), pa.string())),
                                   modality="text", **case)
    got = read_table(db)
    stored = dict(zip(got.column("id").to_pylist(), got.column("text_keep").to_pylist()))
    assert {r["id"]: stored[r["id"]] for r in rows} == sub
    assert all(stored[i] is None for i, m in zip(got.column("id").to_pylist(),
                                                 got.column("modality").to_pylist()) if m == "image")
    assert {(g["modality"], g["group"]): (g["before"], g["after"]) for g in per_row.groups} == want_groups
