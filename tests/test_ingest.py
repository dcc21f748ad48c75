"""Ingest from every source kind, exact round trips, and every bad input."""

from __future__ import annotations

import json
import os

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import read_table

from curator import ingest
from curator.cli import cli
from curator.errors import BadInput, DuplicateIds, SchemaMismatch
from curator.store.database import Database


def write_parquet(path, X, ids=None, modality="image", sample_ids=None, extra=None, list_type=None):
    n = len(X)
    columns = {
        "id": ids if ids is not None else [f"r{i}" for i in range(n)],
        "modality": [modality] * n,
        "embedding": pa.array(list(np.asarray(X)), list_type or pa.list_(pa.float32())),
    }
    if sample_ids is not None:
        columns["sample_id"] = sample_ids
    columns.update(extra or {})
    pq.write_table(pa.table(columns), path)
    return str(path)


def stored(db, table="embeddings"):
    t = read_table(db, table)
    order = np.argsort(np.asarray(t.column("id").to_pylist(), dtype=object))
    return t.take(pa.array(order))


def test_parquet_round_trip_is_bit_exact_and_keeps_metadata(tmp_path, db):
    rng = np.random.default_rng(1)
    X = (rng.normal(size=(50, 24)) * 7).astype(np.float32)
    path = write_parquet(tmp_path / "a.parquet", X, ids=[f"r{i:02d}" for i in range(50)],
                         extra={"caption": [f"c{i}" for i in range(50)], "score": np.arange(50.0)})
    result = ingest([path], db=db)
    assert result.rows == 50 and result.table_version >= 1 and result.stats_version == 1
    t = stored(db)
    got = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    assert got.dtype == np.float32 and np.array_equal(got.view(np.uint32), X.view(np.uint32))
    assert t.column("caption").to_pylist() == [f"c{i}" for i in range(50)]
    assert np.allclose(t.column("norm").to_numpy(), np.linalg.norm(X, axis=1), rtol=1e-6)


def test_parquet_folder_fixed_size_list_and_float16(tmp_path, db):
    rng = np.random.default_rng(2)
    X16 = rng.normal(size=(30, 8)).astype(np.float16)
    folder = tmp_path / "folder"
    folder.mkdir()
    write_parquet(folder / "p0.parquet", X16[:10].astype(np.float32), ids=[f"a{i}" for i in range(10)],
                  list_type=pa.list_(pa.float32(), 8))
    write_parquet(folder / "p1.parquet", X16[10:], ids=[f"b{i}" for i in range(20)],
                  list_type=pa.list_(pa.float16()))
    assert ingest([str(folder)], db=db).rows == 30
    t = read_table(db)
    got = dict(zip(t.column("id").to_pylist(), t.column("embedding").to_pylist()))
    assert np.array_equal(np.float32(got["b3"]), X16[13].astype(np.float32))


def test_custom_column_names_and_modality_option(tmp_path, db):
    X = np.random.default_rng(3).normal(size=(10, 4)).astype(np.float32)
    pq.write_table(pa.table({"key": [f"k{i}" for i in range(10)], "vec": list(X),
                             "pair": [f"s{i}" for i in range(10)]}), tmp_path / "c.parquet")
    ingest([str(tmp_path / "c.parquet")], db=db, id_column="key", vector_column="vec",
           sample_column="pair", modality="text")
    t = stored(db)
    assert t.column("sample_id").to_pylist()[:2] == ["s0", "s1"]
    assert set(t.column("modality").to_pylist()) == {"text"}


def test_npy_with_ids_and_metadata(tmp_path, db):
    X = np.random.default_rng(4).normal(size=(12, 6)).astype(np.float32)
    np.save(tmp_path / "img.npy", X)
    (tmp_path / "ids.txt").write_text("\n".join(f"id{i}" for i in range(12)) + "\n")
    pq.write_table(pa.table({"url": [f"u{i}" for i in range(12)]}), tmp_path / "meta.parquet")
    ingest([str(tmp_path / "img.npy")], db=db, modality="image", ids=str(tmp_path / "ids.txt"),
           metadata=str(tmp_path / "meta.parquet"))
    t = read_table(db)
    assert t.column("id").to_pylist() == [f"id{i}" for i in range(12)]
    assert t.column("url").to_pylist()[5] == "u5"
    got = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    assert np.array_equal(got, X)


def test_npy_default_ids_are_stem_and_row(tmp_path, db):
    np.save(tmp_path / "vecs.npy", np.ones((3, 4), np.float32) + np.eye(3, 4, dtype=np.float32))
    ingest([str(tmp_path / "vecs.npy")], db=db, modality="text")
    assert read_table(db).column("id").to_pylist() == ["vecs:0", "vecs:1", "vecs:2"]


def test_npz_image_and_text_members_pair_up(tmp_path, db):
    rng = np.random.default_rng(5)
    img, txt = rng.normal(size=(7, 5)).astype(np.float32), rng.normal(size=(7, 5)).astype(np.float32)
    np.savez(tmp_path / "pairs.npz", image=img, text=txt)
    assert ingest([str(tmp_path / "pairs.npz")], db=db).rows == 14
    t = read_table(db).to_pydict()
    rows = {i: k for k, i in enumerate(t["id"])}
    assert t["sample_id"][rows["pairs:image:3"]] == t["sample_id"][rows["pairs:text:3"]] == "pairs:3"
    cos = img[3] @ txt[3] / np.linalg.norm(img[3]) / np.linalg.norm(txt[3])
    assert t["alignment"][rows["pairs:text:3"]] == pytest.approx(cos, abs=2e-6)


def test_clip_retrieval_layout_float16(tmp_path, db):
    rng = np.random.default_rng(6)
    root = tmp_path / "cr"
    for sub in ("img_emb", "text_emb", "metadata"):
        (root / sub).mkdir(parents=True)
    img = rng.normal(size=(9, 8)).astype(np.float16)
    txt = rng.normal(size=(9, 8)).astype(np.float16)
    np.save(root / "img_emb" / "img_emb_0.npy", img)
    np.save(root / "text_emb" / "text_emb_0.npy", txt)
    pq.write_table(pa.table({"caption": [f"cap {i}" for i in range(9)], "url": ["u"] * 9}),
                   root / "metadata" / "metadata_0.parquet")
    assert ingest([str(root)], db=db).rows == 18
    t = read_table(db).to_pydict()
    rows = {i: k for k, i in enumerate(t["id"])}
    assert t["sample_id"][rows["0:4:image"]] == t["sample_id"][rows["0:4:text"]]
    assert t["caption"][rows["0:4:text"]] == "cap 4"
    assert np.array_equal(np.float32(t["embedding"][rows["0:4:image"]]), img[4].astype(np.float32))
    assert t["embedding"] and read_table(db).schema.field("embedding").type == pa.list_(pa.float32(), 8)


def _clip_folder(root, img, txt, keys=None):
    for sub in ("img_emb", "text_emb"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    np.save(root / "img_emb" / "img_emb_0.npy", img)
    np.save(root / "text_emb" / "text_emb_0.npy", txt)
    if keys is not None:
        (root / "metadata").mkdir(exist_ok=True)
        pq.write_table(pa.table(keys), root / "metadata" / "metadata_0.parquet")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_retrieval_batches_hold_each_lines_image_then_caption(tmp_path, monkeypatch, dtype):
    """Vectors are read straight into one matrix per batch (images, then captions) — the
    batches must equal the files' lines, with repeated image lines (one image, several
    captions) read once, across batch boundaries too."""
    import curator.io.sources as sources

    monkeypatch.setattr(sources, "BATCH_ROWS", 8)  # 4 lines a batch: 3 batches for 11 lines
    rng = np.random.default_rng(11)
    n = 11
    img, txt = rng.normal(size=(n, 6)).astype(dtype), rng.normal(size=(n, 6)).astype(dtype)
    image_ids = [f"i{k}" for k in range(n)]
    for dup in (2, 4, 5):  # lines 2 (in batch), 4 (first of batch 2) and 5 repeat an image
        image_ids[dup], img[dup] = image_ids[dup - 1], img[dup - 1]
    _clip_folder(tmp_path / "cr", img, txt, {"image_id": image_ids, "text_id": [f"t{k}" for k in range(n)],
                                             "key": [f"s{k}" for k in range(n)]})
    [source] = sources.open_sources([str(tmp_path / "cr")], sources.ColumnOptions())
    batches = list(source.batches())
    assert len(batches) == 3
    got_ids, got_vectors = [], []
    for batch in batches:
        modality = batch.column("modality").to_pylist()
        assert modality == sorted(modality)  # images first, then captions
        got_ids += batch.column("id").to_pylist()
        got_vectors.append(np.stack(batch.column("embedding").to_numpy(zero_copy_only=False)))
    expected_ids, expected = [], []
    for a in range(0, n, 4):
        lines = range(a, min(a + 4, n))
        kept = [k for k in lines if k == 0 or image_ids[k] != image_ids[k - 1]]
        expected_ids += [image_ids[k] for k in kept] + [f"t{k}" for k in lines]
        expected.append(np.concatenate([img[kept], txt[list(lines)]]).astype(np.float32))
    assert got_ids == expected_ids
    for got, want in zip(got_vectors, expected):
        np.testing.assert_array_equal(got, want)


def test_clip_retrieval_image_and_text_dimensions_must_agree(tmp_path, db):
    _clip_folder(tmp_path / "cr", np.ones((3, 4), np.float32), np.ones((3, 5), np.float32))
    with pytest.raises(BadInput, match="4-dimensional image and 5-dimensional text"):
        ingest([str(tmp_path / "cr")], db=db)
    assert not Database(db).has_table("embeddings")


def test_row_dots_against_einsum_of_copies():
    from curator.io.batch_pairs import row_dots

    rng = np.random.default_rng(4)
    X = rng.normal(size=(10_000, 16)).astype(np.float32)
    cases = [(np.arange(5_000, 10_000), np.arange(5_000)),           # clip-retrieval: runs
             (np.arange(5_000, 10_000), rng.permutation(5_000)),      # scattered partners
             (np.sort(rng.choice(10_000, 4_500, replace=False)), rng.integers(0, 10_000, 4_500)),
             (np.array([], np.int64), np.array([], np.int64))]
    for rows, partners in cases:
        oracle = (X[rows].astype(np.float64) * X[partners].astype(np.float64)).sum(axis=1)
        got = row_dots(X, rows, partners)
        assert got.shape == (len(rows),)
        np.testing.assert_allclose(got, oracle, rtol=1e-5, atol=1e-4)


def test_real_raw_clip_norms_are_kept(tmp_path, db, numpyclip_raw):
    image, text = numpyclip_raw
    np.save(tmp_path / "image.npy", image.astype(np.float32))
    np.save(tmp_path / "text.npy", text.astype(np.float32))
    ingest([str(tmp_path / "image.npy")], db=db, modality="image", model="openai/ViT-B-32")
    ingest([str(tmp_path / "text.npy")], db=db, modality="text", model="openai/ViT-B-32")
    t = read_table(db).to_pydict()
    norms = dict(zip(t["id"], t["norm"]))
    assert norms["image:0"] == pytest.approx(float(np.linalg.norm(image[0])), rel=1e-6)
    assert 10 < norms["image:0"] < 11 and all(11 < norms[f"text:{i}"] < 12 for i in range(3))
    assert Database(db).table_meta("embeddings").model == "openai/ViT-B-32"


def test_real_coco_pairs(tmp_path, db, coco):
    image, text = coco
    n = len(image)
    path = write_parquet(tmp_path / "coco.parquet", np.vstack([image, text]),
                         ids=[f"i{k}" for k in range(n)] + [f"t{k}" for k in range(n)],
                         sample_ids=[f"s{k}" for k in range(n)] * 2)
    pq.write_table(pq.read_table(path).set_column(1, "modality", pa.array(["image"] * n + ["text"] * n)),
                   path)
    assert ingest([path], db=db).rows == 2 * n
    t = stored(db)
    got = np.stack(t.column("embedding").to_numpy(zero_copy_only=False))
    order = np.argsort(np.asarray([f"i{k}" for k in range(n)] + [f"t{k}" for k in range(n)], object))
    assert np.array_equal(got, np.vstack([image, text])[order])


def test_table_records_model_dim_and_schema_version(tmp_path, db):
    path = write_parquet(tmp_path / "a.parquet", np.ones((3, 5), np.float32) + np.eye(3, 5))
    ingest([path], db=db, model="m1")
    meta = Database(db).table_meta("embeddings")
    assert (meta.model, meta.dim, meta.schema_version) == ("m1", 5, 1)


def test_several_tables_per_database(tmp_path, db):
    a = write_parquet(tmp_path / "a.parquet", np.ones((3, 5), np.float32) + np.eye(3, 5))
    b = write_parquet(tmp_path / "b.parquet", np.ones((4, 7), np.float32) + np.eye(4, 7))
    ingest([a], db=db, table="first")
    ingest([b], db=db, table="second")
    assert Database(db).table_names() == ["first", "second"]


def test_skip_rerun_is_a_no_op(tmp_path, db):
    path = write_parquet(tmp_path / "a.parquet", np.random.default_rng(0).normal(size=(20, 4)))
    ingest([path], db=db)
    version = Database(db).dataset("embeddings").version
    result = ingest([path], db=db, on_duplicate="skip")
    assert result.rows == 0 and result.skipped == 20
    assert Database(db).dataset("embeddings").version == version


def test_skip_adds_only_new_rows(tmp_path, db):
    X = np.random.default_rng(0).normal(size=(30, 4)).astype(np.float32)
    ingest([write_parquet(tmp_path / "a.parquet", X[:20], ids=[f"r{i}" for i in range(20)])], db=db)
    result = ingest([write_parquet(tmp_path / "b.parquet", X, ids=[f"r{i}" for i in range(30)])],
                    db=db, on_duplicate="skip")
    assert (result.rows, result.skipped) == (10, 20)
    assert read_table(db).num_rows == 30


def test_replace_swaps_vectors_and_statistics(tmp_path, db):
    from curator.engine.statistics import current

    rng = np.random.default_rng(0)
    X = rng.normal(size=(20, 4)).astype(np.float32)
    Y = rng.normal(size=(5, 4)).astype(np.float32) + 3
    ingest([write_parquet(tmp_path / "a.parquet", X)], db=db)
    result = ingest([write_parquet(tmp_path / "b.parquet", Y, ids=[f"r{i}" for i in range(5)])],
                    db=db, on_duplicate="replace")
    assert result.replaced == 5
    t = stored(db)
    assert t.num_rows == 20
    expected = np.vstack([Y, X[5:]])
    order = np.argsort(np.asarray([f"r{i}" for i in range(20)], object))
    assert np.array_equal(np.stack(t.column("embedding").to_numpy(zero_copy_only=False)), expected[order])
    stats = current(Database(db), "embeddings").modalities["image"]
    assert stats.n == 20 and np.allclose(stats.S, expected.sum(0, dtype=np.float64), atol=1e-4)


# -- bad input: one line, exit 1, table unchanged -----------------------------------

def _bad_sources(tmp_path):
    rng = np.random.default_rng(9)
    good = rng.normal(size=(10, 6)).astype(np.float32)
    nan = good.copy(); nan[3, 2] = np.nan
    inf = good.copy(); inf[1, 0] = np.inf
    zero = good.copy(); zero[4] = 0
    cases = {
        "nan": (write_parquet(tmp_path / "nan.parquet", nan, ids=[f"n{i}" for i in range(10)]), [], "NaN or Inf"),
        "inf": (write_parquet(tmp_path / "inf.parquet", inf, ids=[f"f{i}" for i in range(10)]), [], "NaN or Inf"),
        "zero": (write_parquet(tmp_path / "zero.parquet", zero, ids=[f"z{i}" for i in range(10)]), [], "zero vector"),
        "dimension": (write_parquet(tmp_path / "dim.parquet", rng.normal(size=(3, 7)), ids=["d0", "d1", "d2"]), [], "dimension"),
        "model": (write_parquet(tmp_path / "m.parquet", good, ids=[f"m{i}" for i in range(10)]), ["--model", "other"], "model"),
        "mixed models": (write_parquet(tmp_path / "mm.parquet", good, ids=[f"x{i}" for i in range(10)],
                                       extra={"model": ["a"] * 5 + ["b"] * 5}), [], "model"),
        "no id column": (_no_column(tmp_path, "id", good), [], "no id column"),
        "no vector column": (_no_column(tmp_path, "embedding", good), [], "no vector column"),
        "duplicate in input": (write_parquet(tmp_path / "dup.parquet", good, ids=["a"] * 2 + [f"q{i}" for i in range(8)]), [], "duplicate ids within"),
        "duplicate against table": (write_parquet(tmp_path / "again.parquet", good, ids=[f"g{i}" for i in range(10)]), [], "already in the table"),
        "not parquet": (_text_file(tmp_path / "notes.parquet", "hello"), [], "not a readable parquet"),
        "unknown file": (_text_file(tmp_path / "notes.txt", "hello"), [], "not a parquet"),
        "missing path": (str(tmp_path / "missing.parquet"), [], "no such file"),
        "ragged": (_ragged(tmp_path), [], "different lengths"),
        "npy without modality": (_npy(tmp_path), [], "--modality"),
    }
    return good, cases


def _no_column(tmp_path, column, X):
    path = write_parquet(tmp_path / f"no_{column}.parquet", X, ids=[f"c{i}" for i in range(len(X))])
    table = pq.read_table(path)
    pq.write_table(table.drop_columns([column]), path)
    return path


def _text_file(path, text):
    path.write_text(text)
    return str(path)


def _ragged(tmp_path):
    path = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"id": ["a", "b"], "modality": ["image"] * 2,
                             "embedding": pa.array([[1.0] * 6, [1.0] * 5], pa.list_(pa.float32()))}), path)
    return str(path)


def _npy(tmp_path):
    np.save(tmp_path / "x.npy", np.ones((2, 6), np.float32))
    return str(tmp_path / "x.npy")


@pytest.mark.parametrize("case", ["nan", "inf", "zero", "dimension", "model", "mixed models",
                                  "no id column", "no vector column", "duplicate in input",
                                  "duplicate against table", "not parquet", "unknown file",
                                  "missing path", "ragged", "npy without modality"])
def test_bad_input_is_one_line_error_and_changes_nothing(tmp_path, db, case):
    good, cases = _bad_sources(tmp_path)
    seed = write_parquet(tmp_path / "seed.parquet", good, ids=[f"g{i}" for i in range(10)])
    runner = CliRunner()
    assert runner.invoke(cli, ["--db", db, "ingest", seed, "--model", "m0"]).exit_code == 0
    before = Database(db).dataset("embeddings")
    path, extra, message = cases[case]
    result = runner.invoke(cli, ["--db", db, "ingest", path, *extra])
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and message in lines[0], lines
    assert "Traceback" not in result.output
    after = Database(db).dataset("embeddings")
    assert after.version == before.version and after.count_rows() == 10


def test_error_in_a_late_batch_leaves_no_partial_batch(tmp_path, db):
    from curator.io import sources

    rng = np.random.default_rng(0)
    X = rng.normal(size=(3 * sources.BATCH_ROWS // 64, 4)).astype(np.float32)
    ingest([write_parquet(tmp_path / "ok.parquet", X[:10], ids=[f"ok{i}" for i in range(10)])], db=db)
    X[-1, 0] = np.nan
    path = tmp_path / "late.parquet"
    pq.write_table(pa.table({"id": [f"l{i}" for i in range(len(X))], "modality": ["image"] * len(X),
                             "embedding": pa.array(list(X), pa.list_(pa.float32()))}),
                   path, row_group_size=256)
    old = sources.BATCH_ROWS
    sources.BATCH_ROWS = 256
    try:
        with pytest.raises(BadInput):
            ingest([str(path)], db=db)
    finally:
        sources.BATCH_ROWS = old
    assert Database(db).dataset("embeddings").count_rows() == 10


def test_exceptions_are_library_errors(tmp_path, db):
    good = np.ones((3, 4), np.float32) + np.eye(3, 4)
    ingest([write_parquet(tmp_path / "a.parquet", good)], db=db, model="m")
    with pytest.raises(DuplicateIds):
        ingest([write_parquet(tmp_path / "b.parquet", good)], db=db)
    with pytest.raises(SchemaMismatch):
        ingest([write_parquet(tmp_path / "c.parquet", good, ids=["x", "y", "z"])], db=db, model="other")


def test_cli_json_shape(tmp_path, db):
    path = write_parquet(tmp_path / "a.parquet", np.random.default_rng(0).normal(size=(5, 3)))
    result = CliRunner().invoke(cli, ["--db", db, "ingest", path, "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert data["rows"] == 5 and {"table_version", "stats_version"} <= set(data)


def test_db_path_rule(tmp_path, monkeypatch):
    path = write_parquet(tmp_path / "a.parquet", np.random.default_rng(0).normal(size=(5, 3)))
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CURATOR_DB", raising=False)
    assert CliRunner().invoke(cli, ["ingest", path]).exit_code == 0
    assert os.path.isdir(tmp_path / "curator.lancedb" / "embeddings.lance")
    monkeypatch.setenv("CURATOR_DB", str(tmp_path / "env.lancedb"))
    assert CliRunner().invoke(cli, ["ingest", path]).exit_code == 0
    assert os.path.isdir(tmp_path / "env.lancedb" / "embeddings.lance")
    assert CliRunner().invoke(cli, ["--db", str(tmp_path / "flag.lancedb"), "ingest", path]).exit_code == 0
    assert os.path.isdir(tmp_path / "flag.lancedb" / "embeddings.lance")


@pytest.mark.parametrize("scale, message", [(1e20, "norm outside"), (1e15, "norm outside"),
                                            (1e-20, "norm outside"), (0.0, "zero vectors")])
def test_norm_errors_name_the_cause_even_where_float32_squares_overflow(tmp_path, db, scale, message):
    """The norms are float32 sums of squares; a row whose squares overflow (1e20²) or
    underflow float32 is still told apart from NaN/Inf, from its float64 norm."""
    X = np.random.default_rng(3).normal(size=(20, 8)).astype(np.float32)
    X[[4, 11]] = scale
    with pytest.raises(BadInput, match=f"2 .*{message}"):
        ingest([write_parquet(tmp_path / "odd.parquet", X)], db=db)


@pytest.mark.parametrize("change", ["rewritten", "one row scaled by 1.01"])
def test_a_source_changed_between_the_passes_writes_nothing(tmp_path, db, monkeypatch, change):
    from curator.io import ingest as ingest_module

    rng = np.random.default_rng(4)
    ingest([write_parquet(tmp_path / "seed.parquet", rng.normal(size=(5, 8)).astype(np.float32),
                          ids=[f"s{i}" for i in range(5)])], db=db)
    before = Database(db).dataset("embeddings").version
    X = (rng.normal(size=(1000, 8)) + 2).astype(np.float32)
    path = tmp_path / "x.npy"
    np.save(path, X)
    original = ingest_module._Ingest._statistics_pass

    def then_change(self, new_rows):
        stats = original(self, new_rows)
        Y = X.copy()
        if change == "rewritten":
            Y = rng.permutation(Y) * np.float32(1.5)
        else:
            Y[500] *= np.float32(1.01)
        np.save(path, Y)
        return stats

    monkeypatch.setattr(ingest_module._Ingest, "_statistics_pass", then_change)
    with pytest.raises(BadInput, match="source changed"):
        ingest([str(path)], db=db, modality="image")
    after = Database(db).dataset("embeddings")
    assert after.version == before and after.count_rows() == 5
