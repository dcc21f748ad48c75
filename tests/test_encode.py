"""encode: OpenCLIP images/captions → raw embeddings → ingest.

Oracle: the stored vectors equal a direct ``model.encode_image`` / ``encode_text`` forward
pass on the same inputs. The model is a randomly initialised ``ViT-S-32-alt`` at 64 px,
built once per module (no network, CPU only).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import sys
import tarfile

import numpy as np
import pytest

open_clip = pytest.importorskip("open_clip")
torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

import lance
import pyarrow as pa
import pyarrow.parquet as pq

from curator.errors import BadInput, DuplicateIds, MissingDependency, SchemaMismatch
from curator.io import encode as enc
from curator.io.encode import EncodeResult, encode
from curator.io.encode.model import load_model, model_name_for, pick_device

ARCH = "ViT-S-32-alt"
NAME = "open_clip:ViT-S-32-alt/test-64px"


@pytest.fixture(scope="module")
def clip():
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(
        ARCH, pretrained=None, force_image_size=64)
    model.eval()
    tokenizer = open_clip.get_tokenizer(ARCH)
    return {"model": model, "preprocess": preprocess, "tokenizer": tokenizer, "model_name": NAME}


@pytest.fixture(autouse=True)
def spool_dir(tmp_path, monkeypatch):
    """Spools go under tmp_path, so a test can see that none is left behind."""
    spools = tmp_path / "spools"
    spools.mkdir()
    monkeypatch.setattr(enc.tempfile, "tempdir", str(spools))
    return spools


def make_image(path, seed, size=(48, 40), fmt=None):
    rng = np.random.default_rng(seed)
    pixels = (rng.random((size[1], size[0], 3)) * 255).astype(np.uint8)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(pixels).save(path, format=fmt)
    return path


def oracle_images(clip, images) -> np.ndarray:
    """Direct forward pass: PIL images or paths → raw image embeddings."""
    tensors = []
    for image in images:
        if not hasattr(image, "convert"):
            image = Image.open(image)
        tensors.append(clip["preprocess"](image.convert("RGB")))
    with torch.no_grad():
        return clip["model"].encode_image(torch.stack(tensors), normalize=False).numpy()


def oracle_texts(clip, captions) -> np.ndarray:
    with torch.no_grad():
        return clip["model"].encode_text(clip["tokenizer"](captions), normalize=False).numpy()


def read(db, table="embeddings") -> dict[str, dict]:
    rows = lance.dataset(f"{db}/{table}.lance").to_table().to_pylist()
    return {r["id"]: r for r in rows}


def vectors(rows, ids) -> np.ndarray:
    return np.array([rows[i]["embedding"] for i in ids], dtype=np.float32)


def assert_same_vectors(stored, expected):
    np.testing.assert_allclose(stored, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())


# -- stored vectors are the model's raw outputs -------------------------------------------


def test_folder_and_caption_table_store_raw_model_outputs(tmp_path, clip, spool_dir):
    folder = tmp_path / "images"
    paths = {
        "a/b.jpg": make_image(folder / "a" / "b.jpg", 1),
        "c.png": make_image(folder / "c.png", 2),
        "d.webp": make_image(folder / "d.webp", 3, size=(30, 70)),
    }
    (folder / "notes.md").write_text("not an image")
    captions = tmp_path / "captions.csv"
    with open(captions, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["sample_id", "caption", "source"])
        w.writerow(["a/b", "a photo of a cat", "web"])
        w.writerow(["c", "a red square", "web"])
    db = tmp_path / "db"

    result = encode([str(folder), str(captions)], db=str(db), batch_size=2, num_workers=1,
                    quiet=True, **clip)

    assert isinstance(result, EncodeResult)
    assert (result.rows, result.images, result.texts) == (5, 3, 2)
    assert result.skipped == [] and result.resumed_skipped == 0
    assert result.model == NAME and result.table_version is not None
    assert result.to_dict()["rows"] == 5
    rows = read(db)
    assert set(rows) == {"a/b.jpg", "c.png", "d.webp", "captions:0", "captions:1"}
    image_ids = ["a/b.jpg", "c.png", "d.webp"]
    assert_same_vectors(vectors(rows, image_ids), oracle_images(clip, [paths[i] for i in image_ids]))
    text_ids = ["captions:0", "captions:1"]
    assert_same_vectors(vectors(rows, text_ids),
                        oracle_texts(clip, ["a photo of a cat", "a red square"]))
    # raw, not normalised; pairs share sample_id; metadata kept
    norms = np.linalg.norm(vectors(rows, list(rows)), axis=1)
    assert np.all(np.abs(norms - 1) > 0.1)
    assert rows["a/b.jpg"]["sample_id"] == rows["captions:0"]["sample_id"] == "a/b"
    assert rows["c.png"]["sample_id"] == rows["captions:1"]["sample_id"] == "c"
    assert rows["d.webp"]["sample_id"] == "d"
    assert {rows[i]["modality"] for i in image_ids} == {"image"}
    assert rows["a/b.jpg"]["path"] == str((folder / "a" / "b.jpg").resolve())
    assert rows["captions:0"]["caption"] == "a photo of a cat"
    assert rows["captions:1"]["source"] == "web"
    schema = lance.dataset(f"{db}/embeddings.lance").schema
    assert schema.field("embedding").type == pa.list_(pa.float32(), 256)
    assert schema.metadata[b"curator.model"].decode() == NAME
    assert list(spool_dir.iterdir()) == []  # the spool is removed


def test_spool_is_the_ingest_contract(tmp_path, clip, monkeypatch, spool_dir):
    make_image(tmp_path / "imgs" / "x.jpg", 4)
    (tmp_path / "caps.txt").write_text("first caption\n\n  second caption  \n")
    seen = {}

    def fake_ingest(spool, *, db, table, model_name, quiet):
        seen.update(table=pq.read_table(spool), files=sorted(os.listdir(spool)),
                    model=model_name, target=(db, table))
        return type("R", (), {"table_version": 7, "stats_version": 3})()

    monkeypatch.setattr(enc, "_ingest_spool", fake_ingest)
    result = encode([tmp_path / "imgs", tmp_path / "caps.txt"], db=str(tmp_path / "db"),
                    table="t", quiet=True, **clip)
    spooled = seen["table"]
    assert spooled.column_names[:4] == ["id", "sample_id", "modality", "embedding"]
    assert spooled.schema.field("embedding").type == pa.list_(pa.float32(), 256)
    assert spooled.schema.field("id").type == pa.string()
    assert spooled.column("id").to_pylist() == ["x.jpg", "caps:0", "caps:2"]
    assert spooled.column("sample_id").to_pylist() == ["x", None, None]
    assert spooled.column("caption").to_pylist() == [None, "first caption", "second caption"]
    assert seen["model"] == NAME and seen["target"] == (str(tmp_path / "db"), "t")
    assert (result.table_version, result.stats_version) == (7, 3)
    assert list(spool_dir.iterdir()) == []


# -- unreadable images ------------------------------------------------------------------


def test_corrupt_image_is_skipped_and_reported(tmp_path, clip):
    folder = tmp_path / "images"
    make_image(folder / "good.jpg", 5)
    (folder / "broken.jpg").write_bytes(np.random.default_rng(0).bytes(2000))
    result = encode([folder], db=str(tmp_path / "db"), num_workers=0, quiet=True, **clip)
    assert result.images == 1 and result.rows == 1
    assert result.skipped == [{"path": str((folder / "broken.jpg").resolve()),
                               "reason": "not a readable image"}]
    assert set(read(tmp_path / "db")) == {"good.jpg"}


def test_strict_raises_and_ingests_nothing(tmp_path, clip, spool_dir):
    folder = tmp_path / "images"
    for i in range(4):
        make_image(folder / f"ok{i}.jpg", i)
    (folder / "zz_broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (tmp_path / "caps.txt").write_text("a caption\n")
    db = tmp_path / "db"
    with pytest.raises(BadInput, match=r"zz_broken\.jpg: unreadable image .*nothing was ingested"):
        encode([folder, tmp_path / "caps.txt"], db=str(db), batch_size=2, strict=True,
               num_workers=0, quiet=True, **clip)
    assert not os.path.exists(f"{db}/embeddings.lance")
    assert list(spool_dir.iterdir()) == []


# -- resuming ---------------------------------------------------------------------------


class ExplodingModel(torch.nn.Module):
    """A model that fails if encode does any model work."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))

    def encode_image(self, *a, **k):
        raise AssertionError("model work on a fully resumed run")

    encode_text = encode_image


def test_resumed_run_adds_only_missing_rows(tmp_path, clip):
    folder = tmp_path / "images"
    for i in range(3):
        make_image(folder / f"im{i}.jpg", 10 + i)
    db = str(tmp_path / "db")
    first = encode([folder], db=db, num_workers=0, quiet=True, **clip)
    assert first.images == 3
    before = read(db)

    new = [make_image(folder / "later" / f"im{i}.jpg", 20 + i) for i in range(2)]
    second = encode([folder], db=db, num_workers=0, quiet=True, **clip)
    assert (second.images, second.resumed_skipped) == (2, 3)
    rows = read(db)
    assert len(rows) == 5
    assert all(rows[i]["embedding"] == before[i]["embedding"] for i in before)
    assert_same_vectors(vectors(rows, ["later/im0.jpg", "later/im1.jpg"]), oracle_images(clip, new))

    third = encode([folder], db=db, quiet=True, model=ExplodingModel(), preprocess=None,
                   tokenizer=None, model_name=NAME)
    assert (third.rows, third.resumed_skipped) == (0, 5)
    assert third.table_version == lance.dataset(f"{db}/embeddings.lance").version


def test_commit_every_ingests_in_chunks(tmp_path, clip):
    folder = tmp_path / "images"
    for i in range(5):
        make_image(folder / f"im{i}.jpg", 30 + i)
    (folder / "zz_broken.jpg").write_bytes(b"junk")
    db = str(tmp_path / "db")
    with pytest.raises(BadInput, match="rows committed earlier stay"):
        encode([folder], db=db, batch_size=2, commit_every=2, strict=True, num_workers=0,
               quiet=True, **clip)
    kept = read(db)
    assert set(kept) == {f"im{i}.jpg" for i in range(5)} - {"im4.jpg"}  # 2 commits of 2 rows
    result = encode([folder], db=db, batch_size=2, commit_every=2, num_workers=0, quiet=True,
                    **clip)  # not strict: the rerun continues
    assert (result.images, result.resumed_skipped, len(result.skipped)) == (1, 4, 1)
    assert len(read(db)) == 5


# -- other sources ----------------------------------------------------------------------


def test_webdataset_tar_shard(tmp_path, clip):
    shard = tmp_path / "00000.tar"
    images = {}
    with tarfile.open(shard, "w") as tf:
        def add(name, data):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))

        for key, caption in [("000000000", "a green field"), ("000000001", "a blue sky"),
                             ("000000002", None)]:
            buf = io.BytesIO()
            img = Image.fromarray((np.random.default_rng(int(key)).random((40, 50, 3)) * 255)
                                  .astype(np.uint8))
            img.save(buf, format="JPEG")
            add(f"{key}.jpg", buf.getvalue())
            images[key] = Image.open(io.BytesIO(buf.getvalue()))
            if caption:
                add(f"{key}.txt", caption.encode())
            add(f"{key}.json", json.dumps({"url": f"http://x/{key}.jpg", "width": 50,
                                           "key": key, "exif": {"a": 1}}).encode())
    db = str(tmp_path / "db")
    result = encode([shard], db=db, batch_size=2, num_workers=2, quiet=True, **clip)
    assert (result.images, result.texts) == (3, 2)
    rows = read(db)
    ids = ["000000000:image", "000000001:image", "000000002:image"]
    assert set(rows) == set(ids) | {"000000000:text", "000000001:text"}
    assert_same_vectors(vectors(rows, ids), oracle_images(clip, list(images.values())))
    assert_same_vectors(vectors(rows, ["000000000:text", "000000001:text"]),
                        oracle_texts(clip, ["a green field", "a blue sky"]))
    assert rows["000000001:image"]["sample_id"] == rows["000000001:text"]["sample_id"] == "000000001"
    assert rows["000000001:text"]["url"] == "http://x/000000001.jpg"
    assert rows["000000001:image"]["width"] == 50
    assert rows["000000001:image"]["member"] == "000000001.jpg"
    assert rows["000000001:image"]["shard"] == str(shard.resolve())
    assert json.loads(rows["000000001:image"]["exif"]) == {"a": 1}


def test_table_with_image_and_caption_columns(tmp_path, clip):
    (tmp_path / "data" / "img").mkdir(parents=True)
    first = make_image(tmp_path / "data" / "img" / "p.jpg", 40)
    second = make_image(tmp_path / "elsewhere" / "q.png", 41)
    table = tmp_path / "data" / "pairs.csv"
    with open(table, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["id", "file", "text", "license"])
        w.writerow(["s1", "img/p.jpg", "a cat on a mat", "cc-by"])
        w.writerow(["s2", str(second), "a dog", "cc0"])
        w.writerow(["s3", "", "only a caption", "cc0"])
    db = str(tmp_path / "db")
    result = encode([table], db=db, image_column="file", caption_column="text", num_workers=0,
                    quiet=True, **clip)
    assert (result.images, result.texts) == (2, 3)
    rows = read(db)
    assert_same_vectors(vectors(rows, ["s1:image", "s2:image"]), oracle_images(clip, [first, second]))
    assert_same_vectors(vectors(rows, ["s1:text", "s2:text", "s3:text"]),
                        oracle_texts(clip, ["a cat on a mat", "a dog", "only a caption"]))
    assert rows["s1:image"]["sample_id"] == rows["s1:text"]["sample_id"] == "s1"
    assert rows["s1:image"]["path"] == str(first)
    assert rows["s2:text"]["license"] == "cc0"

    # parquet without a key column: keys are STEM:ROW
    pq.write_table(pa.table({"image": [str(first)], "caption": ["again"]}),
                   tmp_path / "more.parquet")
    encode([tmp_path / "more.parquet"], db=db, num_workers=0, quiet=True, **clip)
    rows = read(db)
    assert rows["more:0:image"]["sample_id"] == rows["more:0:text"]["sample_id"] == "more:0"


def test_images_then_captions_then_pairs_into_one_table(tmp_path, clip):
    """Three encodes into one table: each later one brings metadata columns the table lacks
    (caption, then license), which are added; captions meet their images by sample_id."""
    db = str(tmp_path / "db")
    first = make_image(tmp_path / "imgs" / "cat.jpg", 60)
    second = make_image(tmp_path / "imgs" / "dog.png", 61)
    encode([tmp_path / "imgs"], db=db, num_workers=0, quiet=True, **clip)
    captions = tmp_path / "caps.csv"
    captions.write_text("sample_id,caption\ncat,a cat\ndog,a dog\n")
    encode([captions], db=db, quiet=True, **clip)
    third = make_image(tmp_path / "more" / "bird.jpg", 62)
    pairs = tmp_path / "pairs.csv"
    pairs.write_text(f"id,image,caption,license\nb1,{third},a bird,cc0\n")
    result = encode([pairs], db=db, num_workers=0, quiet=True, **clip)
    assert (result.images, result.texts) == (1, 1)

    rows = read(db)
    assert set(rows) == {"cat.jpg", "dog.png", "caps:0", "caps:1", "b1:image", "b1:text"}
    schema = lance.dataset(f"{db}/embeddings.lance").schema
    assert {"path", "caption", "license"} <= set(schema.names)
    assert rows["cat.jpg"]["caption"] is None and rows["cat.jpg"]["license"] is None
    assert rows["caps:0"]["caption"] == "a cat" and rows["b1:text"]["license"] == "cc0"
    image = oracle_images(clip, [first, second, third]).astype(np.float64)
    text = oracle_texts(clip, ["a cat", "a dog", "a bird"]).astype(np.float64)
    cos = (image * text).sum(1) / (np.linalg.norm(image, axis=1) * np.linalg.norm(text, axis=1))
    for k, (img_id, txt_id) in enumerate([("cat.jpg", "caps:0"), ("dog.png", "caps:1"),
                                          ("b1:image", "b1:text")]):
        assert rows[img_id]["sample_id"] == rows[txt_id]["sample_id"]
        assert rows[txt_id]["alignment"] == pytest.approx(cos[k], abs=1e-4)
        assert rows[img_id]["alignment"] == pytest.approx(cos[k], abs=1e-4)


# -- loading and errors -------------------------------------------------------------------


def test_load_model_random_init_is_seeded_and_named():
    model, preprocess, tokenizer, name = load_model(ARCH, None, "cpu", seed=3)
    again, *_ = load_model(ARCH, None, "cpu", seed=3)
    assert name == f"open_clip:{ARCH}/random-init-seed-3"
    assert not model.training
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)
    assert tokenizer(["hi"]).shape[0] == 1 and callable(preprocess)


def test_encode_loads_the_model_by_arch(tmp_path):
    make_image(tmp_path / "imgs" / "x.jpg", 50)
    result = encode([tmp_path / "imgs"], db=str(tmp_path / "db"), arch=ARCH, device="cpu",
                    num_workers=0, quiet=True)
    assert result.model == f"open_clip:{ARCH}/random-init-seed-0" and result.device == "cpu"
    model, preprocess, _, _ = load_model(ARCH, None, "cpu", seed=0)
    stored = vectors(read(tmp_path / "db"), ["x.jpg"])
    with torch.no_grad():
        x = preprocess(Image.open(tmp_path / "imgs" / "x.jpg").convert("RGB"))[None]
        assert_same_vectors(stored, model.encode_image(x, normalize=False).numpy())


def test_cli_says_the_weights_are_random_and_prints_a_summary_like_ingest(tmp_path):
    from click.testing import CliRunner

    from curator.cli import cli

    make_image(tmp_path / "imgs" / "x.jpg", 51)
    db = str(tmp_path / "db")
    args = ["--db", db, "encode", str(tmp_path / "imgs"), "--arch", ARCH, "--device", "cpu",
            "--num-workers", "0"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    assert result.stderr.splitlines() == [
        f"Notice: no --pretrained given: {ARCH} has random weights (seed 0), so its embeddings "
        "carry no meaning; pass --pretrained TAG or a checkpoint file"]
    assert re.fullmatch(rf"encoded 1 image and 0 captions with open_clip:{ARCH}/random-init-seed-0 "
                        r"\(random weights\) on cpu in \d+\.\d s: table version \d+, statistics version 1\n",
                        result.stdout), result.stdout

    (tmp_path / "caps.txt").write_text("a caption\n")
    result = CliRunner().invoke(cli, [*args[:3], str(tmp_path / "caps.txt"), *args[4:], "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert (data["rows"], data["texts"], data["weights"]) == (1, 1, "random")
    assert data["seconds"] == round(data["seconds"], 3) and data["seconds"] > 0
    assert "caption" in lance.dataset(f"{db}/embeddings.lance").schema.names  # added by the 2nd


def test_open_clips_random_init_warning_is_silenced_and_nothing_else(caplog):
    import logging

    from curator.io.encode.model import _quiet_open_clip_logs

    caplog.set_level(logging.INFO)
    open_clip.create_model_and_transforms(ARCH, pretrained=None)  # the oracle: open_clip warns
    assert any("No pretrained weights loaded" in r.getMessage() for r in caplog.records)
    caplog.clear()
    load_model(ARCH, None, "cpu")
    assert not any("No pretrained weights loaded" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with _quiet_open_clip_logs():  # however it is routed, only that message is dropped
        logging.getLogger("open_clip.factory").warning("No pretrained weights loaded for model 'x'.")
        logging.getLogger("open_clip.factory").warning("QuickGELU mismatch")
    assert [r.getMessage() for r in caplog.records] == ["QuickGELU mismatch"]


def test_summary_lines():
    base = dict(model="open_clip:ViT-B-32/laion2b_s34b_b79k", device="cuda", table_version=4,
                stats_version=2, seconds=12.3456, weights="pretrained")
    r = EncodeResult(rows=5, images=3, texts=2, resumed_skipped=1,
                     skipped=[{"path": "a.jpg", "reason": "truncated"}], **base)
    assert r.summary().splitlines() == [
        "encoded 3 images and 2 captions with open_clip:ViT-B-32/laion2b_s34b_b79k on cuda in 12.3 s: "
        "table version 4, statistics version 2",
        "left as they were: 1 row already in the table",
        "skipped 1 unreadable image: a.jpg (truncated)"]
    assert r.to_dict()["seconds"] == 12.346
    assert EncodeResult(resumed_skipped=4, table_version=3, seconds=0.5).summary() == (
        "encoded nothing in 0.5 s: all 4 rows are already in the table (table version 3)")


class NotWeights:
    """Any class: unpickling it would import and run code, so weights_only refuses it."""


def test_local_checkpoint_is_loaded_weights_only(tmp_path, clip):
    path = tmp_path / "mine.pt"
    model, *_ = load_model(ARCH, None, "cpu", seed=1)
    torch.save(model.state_dict(), path)
    loaded, _, _, name = load_model(ARCH, str(path), "cpu")
    assert name.startswith(f"open_clip:{ARCH}/mine.pt@sha256:")
    assert torch.equal(loaded.state_dict()["logit_scale"], model.state_dict()["logit_scale"])

    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": NotWeights()}, evil)
    with pytest.raises(BadInput, match="not a loadable weights-only checkpoint"):
        load_model(ARCH, str(evil), "cpu")


def test_pick_device():
    assert pick_device("cpu") == "cpu"
    assert pick_device("auto") in {"cuda", "mps", "cpu"}
    if not torch.cuda.is_available():
        with pytest.raises(BadInput, match="not available"):
            pick_device("cuda")
    with pytest.raises(BadInput, match="unknown device"):
        pick_device("tpu9")


def test_user_errors(tmp_path, clip):
    db = str(tmp_path / "db")
    with pytest.raises(BadInput, match="nope: no such file or directory"):
        encode([tmp_path / "nope"], db=db, **clip)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput, match="no images found"):
        encode([tmp_path / "empty"], db=db, **clip)
    with pytest.raises(BadInput, match="unknown OpenCLIP architecture 'ViT-Q-99'.*list_models"):
        encode([tmp_path / "empty"], db=db, arch="ViT-Q-99")
    with pytest.raises(BadInput, match="unknown pretrained tag 'nonsense' for ViT-B-32: known tags"):
        model_name_for("ViT-B-32", "nonsense")
    assert model_name_for("ViT-B-32", "LAION2B-S34B-B79K") == "open_clip:ViT-B-32/laion2b_s34b_b79k"
    with pytest.raises(BadInput, match="model_name is required"):
        encode([tmp_path / "empty"], db=db, model=clip["model"], preprocess=clip["preprocess"])
    (tmp_path / "t.csv").write_text("a,b\n1,2\n")
    with pytest.raises(BadInput, match="no 'caption' or 'image' column"):
        encode([tmp_path / "t.csv"], db=db, **clip)
    make_image(tmp_path / "one" / "x.jpg", 1)
    make_image(tmp_path / "two" / "x.jpg", 2)
    with pytest.raises(DuplicateIds, match="'x.jpg'"):
        encode([tmp_path / "one", tmp_path / "two"], db=db, **clip)

    encode([tmp_path / "one"], db=db, num_workers=0, quiet=True, **clip)
    other = dict(clip, model=ExplodingModel(), model_name="open_clip:ViT-B-32/openai")
    with pytest.raises(SchemaMismatch, match="holds embeddings of"):  # before any model work
        encode([tmp_path / "two"], db=db, quiet=True, **other)


def test_missing_torch_gives_the_install_hint(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)
    with pytest.raises(MissingDependency, match=r"pip install 'clip-curator\[clip\]'"):
        encode([tmp_path], db=str(tmp_path / "db"))
