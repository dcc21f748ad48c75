"""export: selections against numpy oracles, exact round trips, manifests, bad input."""

from __future__ import annotations

import csv
import glob
import hashlib
import json
import os
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import read_table

from curator import ingest
from curator.cli import cli
from curator.errors import CuratorError
from curator.io.export import export
from curator.synthetic import make_pairs

SCHEMAS = Path(__file__).resolve().parents[1] / "schemas"
KEYS = ["id", "sample_id", "modality"]


def _version(db):
    return lance.dataset(f"{db}/embeddings.lance").version


def _read_parquet(folder) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(f"{folder}/part-*.parquet"))])


def _sorted(table: pa.Table) -> pa.Table:
    return table.sort_by("id")


def _assert_same_rows(got: pa.Table, want: pa.Table, metadata=("concept", "caption")):
    got, want = _sorted(got), _sorted(want)
    assert got.num_rows == want.num_rows
    for name in KEYS + list(metadata):
        assert got.column(name).to_pylist() == want.column(name).to_pylist(), name
    g = np.stack(got.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    w = np.stack(want.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float32)
    assert g.tobytes() == w.tobytes()  # bit-identical float32


def _oracle_mask(t: pa.Table) -> np.ndarray:
    """numpy: text rows with conformity > median of text conformity, or images with concept 0."""
    mods = np.array(t.column("modality").to_pylist())
    conf = t.column("conformity").to_numpy(zero_copy_only=False).astype(np.float64)
    concept = t.column("concept").to_numpy()
    return ((mods == "text") & (conf > 0.35)) | ((mods == "image") & (concept == 0))


WHERE = "(modality = 'text' AND conformity > 0.35) OR (modality = 'image' AND concept = 0)"


def test_rows_match_the_predicate_oracle(ingested, tmp_path):
    t = read_table(ingested)
    mask = _oracle_mask(t)
    assert 0 < mask.sum() < len(mask)
    version = _version(ingested)
    result = export(db=ingested, out=str(tmp_path / "out"), where=WHERE)
    got = _read_parquet(tmp_path / "out")
    assert result.rows == got.num_rows == int(mask.sum())
    assert sorted(got.column("id").to_pylist()) == sorted(np.array(t.column("id").to_pylist())[mask])
    assert _version(ingested) == version == result.table_version == result.table_version_read
    # every column is exported, scores included, with the table's types
    assert got.schema.names == t.schema.names
    assert got.schema.field("embedding").type == t.schema.field("embedding").type


def test_unit_sample_keeps_images_with_a_matching_caption(ingested, tmp_path):
    """numpy oracle: a sample is exported when its image matches and one of its captions
    does; it exports the image and its matching captions (more cases: test_export_units)."""
    t = read_table(ingested)
    mask = _oracle_mask(t)
    samples = np.array(t.column("sample_id").to_pylist(), object)
    mods = np.array(t.column("modality").to_pylist())
    image_hit = set(samples[mask & (mods == "image")])
    caption_hit = set(samples[mask & (mods == "text")])
    want = mask & np.array([s in image_hit and s in caption_hit for s in samples])
    assert 0 < want.sum() < mask.sum()
    result = export(db=ingested, out=str(tmp_path / "out"), where=WHERE, unit="sample")
    got = _read_parquet(tmp_path / "out")
    assert sorted(got.column("id").to_pylist()) == sorted(np.array(t.column("id").to_pylist())[want])
    for m in ("image", "text"):
        rows = want & (mods == m)
        assert result.counts[m] == {"rows": int(rows.sum()), "samples": len(set(samples[rows]))}


def test_parquet_round_trip_is_exact(ingested, tmp_path):
    out = str(tmp_path / "out")
    export(db=ingested, out=out, rows_per_file=500)
    assert len(glob.glob(f"{out}/part-*.parquet")) == 3
    again = str(tmp_path / "again.lancedb")
    ingest([out], db=again)
    _assert_same_rows(read_table(again), read_table(ingested))
    assert read_table(again).schema.names == read_table(ingested).schema.names


def test_reingested_subset_is_scored_by_its_new_table(ingested, tmp_path):
    out = str(tmp_path / "out")
    export(db=ingested, out=out, where="modality = 'text'")
    again = str(tmp_path / "again.lancedb")
    result = ingest([out], db=again)
    stats_versions = set(read_table(again).column("stats_version").to_pylist())
    assert stats_versions == {result.stats_version}


def _clip_db(tmp_path, with_caption: bool, detached: int = 0) -> str:
    """Synthetic pairs; ``detached`` samples lose their sample id (rows of their own)."""
    data = make_pairs(samples=120, dim=16, concepts=5, seed=3)
    table = data.table()
    if not with_caption:
        table = table.drop_columns(["caption"])
    if detached:
        samples = table.column("sample_id").to_pylist()
        lost = set(sorted(set(samples))[:detached])
        table = table.set_column(1, "sample_id",
                                 pa.array([None if s in lost else s for s in samples], pa.string()))
    pq.write_table(table, tmp_path / "src.parquet")
    db = str(tmp_path / f"clip-{with_caption}-{detached}.lancedb")
    ingest([str(tmp_path / "src.parquet")], db=db)
    return db


@pytest.mark.parametrize("with_caption", [False, True])
def test_npy_round_trip_is_exact(tmp_path, with_caption):
    db = _clip_db(tmp_path, with_caption, detached=4)
    out = str(tmp_path / "npy")
    export(db=db, out=out, format="npy", rows_per_file=50)
    image_keys = {p.rsplit("_", 1)[1] for p in glob.glob(f"{out}/img_emb/*.npy")}
    text_keys = {p.rsplit("_", 1)[1] for p in glob.glob(f"{out}/text_emb/*.npy")}
    if with_caption:
        assert not image_keys & text_keys  # captions differ from the image's metadata: no lines
    else:
        assert image_keys & text_keys  # paired lines
    total = sum(len(np.load(p)) for p in glob.glob(f"{out}/*_emb/*.npy"))
    assert total == read_table(db).num_rows  # no row written twice
    again = str(tmp_path / "again.lancedb")
    ingest([out], db=again)
    meta = ("concept", "caption") if with_caption else ("concept",)
    _assert_same_rows(read_table(again), read_table(db), metadata=meta)


def test_npy_refuses_other_modalities(tmp_path):
    X = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32) + 2
    pq.write_table(pa.table({"id": [f"a{i}" for i in range(10)], "modality": ["audio"] * 10,
                             "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 4)}),
                   tmp_path / "a.parquet")
    db = str(tmp_path / "db")
    ingest([str(tmp_path / "a.parquet")], db=db)
    with pytest.raises(CuratorError, match="image and text rows only"):
        export(db=db, out=str(tmp_path / "out"), format="npy")
    assert not os.path.exists(tmp_path / "out")


def test_jsonl_csv_and_lance_hold_the_rows_exactly(ingested, tmp_path):
    want = _sorted(read_table(ingested))
    X = np.stack(want.column("embedding").to_numpy(zero_copy_only=False))
    for fmt in ("jsonl", "csv"):
        out = tmp_path / fmt
        export(db=ingested, out=str(out), format=fmt, rows_per_file=700)
        rows = []
        for path in sorted(glob.glob(f"{out}/part-*.{fmt}")):
            with open(path, encoding="utf-8") as fh:
                if fmt == "jsonl":
                    rows += [json.loads(line) for line in fh]
                else:
                    rows += [dict(r, embedding=json.loads(r["embedding"])) for r in csv.DictReader(fh)]
        assert len(glob.glob(f"{out}/part-*.{fmt}")) == 2
        rows.sort(key=lambda r: r["id"])
        assert [r["id"] for r in rows] == want.column("id").to_pylist()
        got = np.array([r["embedding"] for r in rows], np.float64).astype(np.float32)
        assert got.tobytes() == X.tobytes()
        assert "conformity" in rows[0] and "concept" in rows[0]
    export(db=ingested, out=str(tmp_path / "lance"), format="lance", where="modality = 'image'")
    got = lance.dataset(str(tmp_path / "lance" / "data.lance")).to_table()
    images = want.filter(pa.compute.equal(want.column("modality"), "image"))
    _assert_same_rows(got, images)
    assert got.schema.metadata == read_table(ingested).schema.metadata


def _check_against_declaration(manifest: dict) -> None:
    declared = json.loads((SCHEMAS / "manifest.v1.json").read_text())["fields"]
    kinds = {"string": str, "object": dict, "integer": int, "array": list}
    assert set(manifest) == {f["name"] for f in declared}
    for f in declared:
        value = manifest[f["name"]]
        if value is None:
            assert f["nullable"], f["name"]
        else:
            assert isinstance(value, kinds[f["type"]]) and not isinstance(value, bool), f["name"]


@pytest.mark.parametrize("fmt", ["parquet", "npy", "lance"])
def test_manifest_follows_the_schema_and_checksums_match(ingested, tmp_path, fmt):
    out = tmp_path / "out"
    result = export(db=ingested, out=str(out), format=fmt, where="concept < 3", unit="sample")
    manifest = json.loads((out / "manifest.json").read_text())
    _check_against_declaration(manifest)
    assert manifest["schema"] == "curator.manifest.v1"
    assert manifest["source"]["table_version"] == _version(ingested)
    assert manifest["source"]["dim"] == 32 and manifest["source"]["table"] == "embeddings"
    assert manifest["predicate"] == {"text": "(concept < 3)", "columns": ["concept"]}
    assert manifest["unit"] == "sample"
    assert manifest["rows"] == result.rows == sum(c["rows"] for c in manifest["counts"].values())
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*") if p.is_file())
    assert on_disk == sorted([f["path"] for f in manifest["files"]] + ["manifest.json"])
    for f in manifest["files"]:
        data = (out / f["path"]).read_bytes()
        assert len(data) == f["bytes"]
        assert hashlib.sha256(data).hexdigest() == f["sha256"]
    assert "export" in manifest["command"] and "--where '(concept < 3)'" in manifest["command"]


def test_manifest_command_reproduces_the_export(ingested, tmp_path):
    out = tmp_path / "out"
    export(db=ingested, out=str(out), where="concept = 1", format="parquet")
    manifest = json.loads((out / "manifest.json").read_text())
    import shlex

    args = shlex.split(manifest["command"])
    assert args[0] == "curator"
    before = {f["path"]: f["sha256"] for f in manifest["files"]}
    result = CliRunner().invoke(cli, args[1:])
    assert result.exit_code == 0, result.output
    again = json.loads((out / "manifest.json").read_text())
    assert {f["path"]: f["sha256"] for f in again["files"]} == before


@pytest.mark.parametrize("where", ["1=1; DROP TABLE embeddings", "COPY embeddings TO '/tmp/x.csv'",
                                   "conformity >", "no_such_column > 1", "",
                                   "1=1) UNION SELECT 1, 2 FROM read_csv('/etc/passwd') --"])
def test_bad_where_is_a_one_line_error_and_writes_nothing(ingested, tmp_path, where):
    version = _version(ingested)
    listing = sorted(os.listdir(tmp_path))
    with pytest.raises(CuratorError) as info:
        export(db=ingested, out=str(tmp_path / "out"), where=where)
    assert "\n" not in str(info.value)
    assert sorted(os.listdir(tmp_path)) == listing  # no folder, no leftovers
    assert _version(ingested) == version


def test_existing_folder_needs_overwrite(ingested, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(CuratorError, match="--overwrite"):
        export(db=ingested, out=str(out))
    with pytest.raises(CuratorError, match="not a curator export"):
        export(db=ingested, out=str(out), overwrite=True)
    assert (out / "keep.txt").read_text() == "mine"
    first = export(db=ingested, out=str(tmp_path / "exp"), where="concept = 0")
    second = export(db=ingested, out=str(tmp_path / "exp"), where="concept = 1", overwrite=True)
    assert first.rows != second.rows == _read_parquet(tmp_path / "exp").num_rows
    with pytest.raises(CuratorError, match="database"):
        export(db=ingested, out=os.path.join(ingested, "x"))


def test_pinned_version_and_cli(ingested, tmp_path, pairs_small):
    old = _version(ingested)
    rows = read_table(ingested).num_rows
    extra = make_pairs(samples=10, dim=32, concepts=2, seed=99)
    table = extra.table()
    table = table.set_column(0, "id", pa.array([f"new-{i}" for i in range(table.num_rows)]))
    pq.write_table(table, tmp_path / "extra.parquet")
    ingest([str(tmp_path / "extra.parquet")], db=ingested)
    pinned = export(db=ingested, out=str(tmp_path / "old"), table_version=old)
    assert pinned.rows == rows and pinned.table_version_read == old
    out = CliRunner().invoke(cli, ["--db", ingested, "export", "--out", str(tmp_path / "cli"),
                                   "--where", "modality = 'image'", "--json"])
    assert out.exit_code == 0, out.output
    data = json.loads(out.output)
    assert data["rows"] == data["counts"]["image"]["rows"] and data["table_version"] == _version(ingested)
    bad = CliRunner().invoke(cli, ["--db", ingested, "export", "--out", str(tmp_path / "cli")])
    assert bad.exit_code == 1 and len(bad.output.strip().splitlines()) == 1
