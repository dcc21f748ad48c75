"""export --unit row | sample | pair against DuckDB oracles over a snapshot of the table,
after dedupe and a per-sample rebalance, on multi-caption, text-only, image-only samples,
duplicates inside samples and rows without a sample."""

from __future__ import annotations

import glob
import json

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from mixed_samples import PAIRS, ROWS, SAMPLES, build, counts_of, oracle, snapshot

from curator import ingest
from curator.errors import CuratorError
from curator.io.export import export
from curator.io.export.pairs import PAIR_CHUNK
from curator.store.schema import column_names

WHERES = [
    "rebalance_keep",
    "rebalance_keep and not coalesce(is_duplicate, false)",
    "(modality = 'image' and cluster in (0, 1)) or (modality = 'text' and conformity > 0.2)",
    "coalesce(alignment, 0) between 0.5 and 1 or url like '%img-00001%'",
]


@pytest.fixture(scope="module")
def mixed(tmp_path_factory):
    db = build(tmp_path_factory.mktemp("mixed"))
    return db, snapshot(db)


def _parquet(folder) -> pa.Table:
    return pa.concat_tables([pq.read_table(p) for p in sorted(glob.glob(f"{folder}/part-*.parquet"))])


def _by_id(snap: pa.Table) -> dict:
    return {row["id"]: row for row in snap.to_pylist()}


@pytest.mark.parametrize("where", WHERES)
def test_unit_row_is_exactly_the_matching_rows(mixed, tmp_path, where):
    db, snap = mixed
    want = oracle(snap, where, ROWS).column("id").to_pylist()
    result = export(db=db, out=str(tmp_path / "x"), where=where, unit="row")
    got = _parquet(tmp_path / "x").column("id").to_pylist()
    assert sorted(got) == sorted(want) and len(got) == len(set(got))
    assert result.rows == len(want) and result.counts == counts_of(snap, want)


@pytest.mark.parametrize("where", WHERES)
def test_unit_sample_follows_the_image_and_its_matching_captions(mixed, tmp_path, where):
    db, snap = mixed
    want = oracle(snap, where, SAMPLES).column("id").to_pylist()
    rows = oracle(snap, where, ROWS).column("id").to_pylist()
    assert set(want) <= set(rows)
    if "rebalance_keep" in where:  # one decision per sample: whole samples already
        assert set(want) == set(rows)
    elif "cluster" in where:  # some matching rows are dropped with their sample
        assert set(want) < set(rows)
    result = export(db=db, out=str(tmp_path / "x"), where=where, unit="sample")
    got = _parquet(tmp_path / "x")
    assert sorted(got.column("id").to_pylist()) == sorted(want)
    assert result.counts == counts_of(snap, want)
    manifest = json.loads((tmp_path / "x" / "manifest.json").read_text())
    assert manifest["counts"] == result.counts and manifest["rows"] == len(want)


def test_unit_sample_rules_by_kind_of_sample(mixed, tmp_path):
    """Hand-checked kinds: text-only samples export matching captions; an image whose
    captions all fail is not exported; a caption whose image fails is not exported."""
    db, snap = mixed
    where = "modality = 'text' or cluster = 0"
    export(db=db, out=str(tmp_path / "x"), where=where, unit="sample")
    got = set(_parquet(tmp_path / "x").column("id").to_pylist())
    rows = _by_id(snap)
    samples: dict = {}
    for r in rows.values():
        samples.setdefault(r["sample_id"] or ("row", r["id"]), []).append(r)
    kinds = set()
    for members in samples.values():
        images = [r for r in members if r["modality"] == "image"]
        captions = [r for r in members if r["modality"] == "text"]
        image_ok = not images or any(r["cluster"] == 0 for r in images)
        if not images:
            kinds.add("text-only")
        elif not captions:
            kinds.add("image-only")
        expected = {r["id"] for r in members if (r["modality"] == "text" or r["cluster"] == 0)} \
            if image_ok else set()  # every caption matches here
        assert {r["id"] for r in members} & got == expected
    assert kinds == {"text-only", "image-only"}


@pytest.mark.parametrize("where", WHERES)
def test_unit_pair_records_match_the_join_oracle(mixed, tmp_path, where):
    db, snap = mixed
    want = oracle(snap, where, PAIRS)
    result = export(db=db, out=str(tmp_path / "x"), where=where, unit="pair")
    got = _parquet(tmp_path / "x")
    key = lambda t: sorted(zip(*(t.column(c).to_pylist() for c in ("sample_id", "image_id", "text_id"))))
    assert key(got) == key(want) and result.rows == want.num_rows > 0
    # order: image row id, then text row id; counts: distinct rows and samples written
    assert result.counts["image"]["rows"] == len(set(want.column("image_id").to_pylist()))
    assert result.counts["text"]["rows"] == len(set(want.column("text_id").to_pylist()))
    assert result.counts["text"]["samples"] == len(set(want.column("sample_id").to_pylist()))
    rows = _by_id(snap)
    scored = [c for c in column_names() if c not in ("id", "sample_id", "modality", "embedding")]
    for rec in got.to_pylist():
        image, text = rows[rec["image_id"]], rows[rec["text_id"]]
        assert rec["sample_id"] == image["sample_id"] == text["sample_id"]
        for c in scored:
            assert _same(rec[f"image_{c}"], image[c]) and _same(rec[f"text_{c}"], text[c]), c
        assert rec["url"] == image["url"] and text["url"] is None  # the image's, as captions lack it
        assert rec["caption"] == text["caption"] and rec["concept"] == text["concept"]
        assert np.array(rec["image_embedding"], np.float32).tobytes() == \
            np.array(image["embedding"], np.float32).tobytes()
        assert np.array(rec["text_embedding"], np.float32).tobytes() == \
            np.array(text["embedding"], np.float32).tobytes()


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is None and b is None
    return np.float32(a) == np.float32(b) if isinstance(a, float) else a == b


def test_pair_order_and_chunks(mixed, tmp_path, monkeypatch):
    """Pairs come in image row-id order, then text; small chunks give the same file."""
    import curator.io.export.pairs as pairs_module

    db, snap = mixed
    export(db=db, out=str(tmp_path / "a"), unit="pair")
    monkeypatch.setattr(pairs_module, "PAIR_CHUNK", 7)
    monkeypatch.setattr(pairs_module.chunks, "__defaults__", (7,))
    export(db=db, out=str(tmp_path / "b"), unit="pair")
    a, b = _parquet(tmp_path / "a"), _parquet(tmp_path / "b")
    assert a.equals(b) and PAIR_CHUNK > 7
    rowid = dict(zip(*(lance.dataset(f"{db}/embeddings.lance").to_table(
        columns=["id"], with_row_id=True).column(c).to_pylist() for c in ("id", "_rowid"))))
    order = [(rowid[i], rowid[t]) for i, t in zip(a.column("image_id").to_pylist(),
                                                   a.column("text_id").to_pylist())]
    assert order == sorted(order)


def test_pair_npy_is_aligned_and_reingests_as_the_same_pairs(mixed, tmp_path):
    db, snap = mixed
    where = "rebalance_keep"
    out = tmp_path / "npy"
    result = export(db=db, out=str(out), where=where, unit="pair", format="npy", rows_per_file=40)
    want = oracle(snap, where, PAIRS)
    rows = _by_id(snap)
    shards = sorted(glob.glob(f"{out}/img_emb/*.npy"), key=lambda p: int(p.rsplit("_", 1)[1][:-4]))
    assert len(shards) == -(-want.num_rows // 40) > 1
    lines = []
    for path in shards:
        k = path.rsplit("_", 1)[1][:-4]
        img, txt = np.load(path), np.load(f"{out}/text_emb/text_emb_{k}.npy")
        meta = pq.read_table(f"{out}/metadata/metadata_{k}.parquet")
        assert len(img) == len(txt) == meta.num_rows
        for i, (image_id, text_id) in enumerate(zip(meta.column("image_id").to_pylist(),
                                                    meta.column("text_id").to_pylist())):
            assert img[i].tobytes() == np.array(rows[image_id]["embedding"], np.float32).tobytes()
            assert txt[i].tobytes() == np.array(rows[text_id]["embedding"], np.float32).tobytes()
        lines += list(zip(*(meta.column(c).to_pylist() for c in ("sample_id", "image_id", "text_id"))))
    assert sorted(lines) == sorted(zip(*(want.column(c).to_pylist()
                                         for c in ("sample_id", "image_id", "text_id"))))
    assert result.rows == len(lines)
    # ingest reads the folder back: one row per image and caption, the same pairs, exact rows
    again = str(tmp_path / "again.lancedb")
    ingest([str(out)], db=again)
    back = snapshot(again)
    assert back.num_rows == result.counts["image"]["rows"] + result.counts["text"]["rows"]
    assert sorted(oracle(back, "true", PAIRS).to_pylist(), key=str) == \
        sorted(want.to_pylist(), key=str)
    for row in back.to_pylist():
        original = rows[row["id"]]
        for c in ("sample_id", "modality", "concept", "caption", "url"):
            assert row[c] == original[c], (row["id"], c)
        assert np.array(row["embedding"], np.float32).tobytes() == \
            np.array(original["embedding"], np.float32).tobytes()


def test_repeated_image_lines_must_hold_the_same_vector(mixed, tmp_path):
    db, _ = mixed
    out = tmp_path / "npy"
    export(db=db, out=str(out), where="rebalance_keep", unit="pair", format="npy")
    path = f"{out}/img_emb/img_emb_0.npy"
    img = np.load(path)
    meta = pq.read_table(f"{out}/metadata/metadata_0.parquet")
    ids = meta.column("image_id").to_pylist()
    j = next(i for i in range(1, len(ids)) if ids[i] == ids[i - 1])
    img[j, 0] += 1.0
    np.save(path, img)
    with pytest.raises(CuratorError, match="repeats the previous line's id with another vector"):
        ingest([str(out)], db=str(tmp_path / "bad.lancedb"))
    assert not (tmp_path / "bad.lancedb" / "embeddings.lance").exists()  # nothing ingested


@pytest.mark.parametrize("fmt", ["jsonl", "lance"])
def test_pair_records_in_other_formats(mixed, tmp_path, fmt):
    db, snap = mixed
    want = oracle(snap, "rebalance_keep", PAIRS)
    export(db=db, out=str(tmp_path / "x"), where="rebalance_keep", unit="pair", format=fmt)
    if fmt == "jsonl":
        records = [json.loads(line) for p in sorted(glob.glob(f"{tmp_path}/x/part-*.jsonl"))
                   for line in open(p, encoding="utf-8")]
    else:
        records = lance.dataset(f"{tmp_path}/x/data.lance").to_table().to_pylist()
    assert sorted((r["image_id"], r["text_id"]) for r in records) == \
        sorted(zip(want.column("image_id").to_pylist(), want.column("text_id").to_pylist()))
    assert "image_conformity" in records[0] and len(records[0]["text_embedding"]) == 32


def test_pair_refuses_clashing_metadata(tmp_path):
    X = np.random.default_rng(0).normal(size=(4, 4)).astype(np.float32) + 2
    pq.write_table(pa.table({
        "id": ["i", "t", "i2", "t2"], "sample_id": ["a", "a", "b", "b"],
        "modality": ["image", "text", "image", "text"],
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.ravel()), 4),
        "image_conformity": [1.0, 2.0, 3.0, 4.0]}), tmp_path / "x.parquet")
    db = str(tmp_path / "db")
    ingest([str(tmp_path / "x.parquet")], db=db)
    with pytest.raises(CuratorError, match="clash with the pair record"):
        export(db=db, out=str(tmp_path / "out"), unit="pair")
    assert not (tmp_path / "out").exists()
    export(db=db, out=str(tmp_path / "rows"), unit="row")  # rows are fine


def test_pair_selected_by_caption_alone(mixed, tmp_path):
    """The README's recipe: a condition on captions, every image kept."""
    db, snap = mixed
    where = "modality = 'image' or caption like '%caption 1 %'"
    want = oracle(snap, where, PAIRS)
    result = export(db=db, out=str(tmp_path / "x"), where=where, unit="pair")
    got = _parquet(tmp_path / "x")
    assert result.rows == want.num_rows > 0
    assert all("caption 1 " in c for c in got.column("caption").to_pylist())
    rows = snap.drop_columns(["embedding"]).to_pylist()
    images = {r["sample_id"] for r in rows if r["modality"] == "image" and r["sample_id"]}
    paired = {r["id"] for r in rows if r["modality"] == "text" and "caption 1 " in r["caption"]
              and r["sample_id"] in images}
    assert set(got.column("text_id").to_pylist()) == paired
