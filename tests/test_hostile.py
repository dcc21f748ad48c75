"""Hostile input: every bad file or statement is one line ``Error: …``, exit 1, and the
table is left exactly as it was (same Lance version, same rows). Files are never unpickled.

Everything goes through the CLI (click's CliRunner), as a user would meet it.
"""

from __future__ import annotations

import io
import os
import pickle
import zipfile

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from curator.cli import cli

DIM = 8
HYPO = settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck),
                derandomize=True)


# -- a base table and the "nothing changed" check ---------------------------------------------

@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A database with 60 rows of dim 8 (image and text), ingested and refreshed."""
    root = tmp_path_factory.mktemp("hostile")
    rng = np.random.default_rng(0)
    X = (rng.normal(size=(60, DIM)) + 1.5).astype(np.float32)
    path = str(root / "base.parquet")
    pq.write_table(pa.table({
        "id": [f"b{i}" for i in range(60)],
        "sample_id": [f"s{i // 2}" for i in range(60)],
        "modality": ["image" if i % 2 == 0 else "text" for i in range(60)],
        "embedding": pa.array(list(X), pa.list_(pa.float32())),
    }), path)
    db = str(root / "db.lancedb")
    assert run(["--db", db, "ingest", path]).exit_code == 0
    return db


def state(db):
    ds = lance.dataset(f"{db}/embeddings.lance")
    return ds.version, ds.count_rows()


def run(args, **kw):
    return CliRunner().invoke(cli, args, catch_exceptions=True, **kw)


def assert_refused(result, db=None, before=None):
    """Exit 1, exactly one line ``Error: …`` (stderr and stdout mixed), no traceback."""
    out = result.output
    assert result.exit_code == 1, f"exit {result.exit_code}: {out!r} {result.exception!r}"
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), out
    assert "Traceback" not in out
    if db is not None:
        assert state(db) == before


def ingest_refused(db, path, *extra):
    before = state(db)
    result = run(["--db", db, "ingest", str(path), *extra])
    assert_refused(result, db, before)
    return result


def ingest_refused_fresh(tmp_path, path, *extra):
    """On a database without the table, a refused ingest creates nothing."""
    db = str(tmp_path / "fresh.lancedb")
    result = run(["--db", db, "ingest", str(path), *extra])
    assert_refused(result)
    assert not os.path.exists(f"{db}/embeddings.lance")


def valid_npy_bytes(n=5, d=DIM) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.random.default_rng(1).normal(size=(n, d)).astype(np.float32) + 1)
    return buf.getvalue()


def valid_parquet_bytes(n=5, d=DIM) -> bytes:
    X = np.random.default_rng(2).normal(size=(n, d)).astype(np.float32) + 1
    buf = io.BytesIO()
    pq.write_table(pa.table({"id": [f"p{i}" for i in range(n)], "modality": ["image"] * n,
                             "embedding": pa.array(list(X), pa.list_(pa.float32()))}), buf)
    return buf.getvalue()


def valid_npz_bytes(n=5, d=DIM) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(3)
    np.savez(buf, image=rng.normal(size=(n, d)).astype(np.float32) + 1,
             text=rng.normal(size=(n, d)).astype(np.float32) + 1)
    return buf.getvalue()


EXT_ARGS = {".npy": ["--modality", "image"], ".npz": [], ".parquet": []}


# -- random and truncated files ----------------------------------------------------------------

@HYPO
@given(data=st.binary(max_size=4096), ext=st.sampled_from(sorted(EXT_ARGS)))
def test_random_bytes_are_refused(base, tmp_path_factory, data, ext):
    path = tmp_path_factory.mktemp("rb") / f"junk{ext}"
    path.write_bytes(data)
    ingest_refused(base, path, *EXT_ARGS[ext])


@HYPO
@given(cut=st.floats(0.0, 0.999), ext=st.sampled_from(sorted(EXT_ARGS)))
def test_truncated_files_are_refused(base, tmp_path_factory, cut, ext):
    whole = {".npy": valid_npy_bytes, ".parquet": valid_parquet_bytes, ".npz": valid_npz_bytes}[ext]()
    path = tmp_path_factory.mktemp("tr") / f"cut{ext}"
    path.write_bytes(whole[: int(len(whole) * cut)])
    ingest_refused(base, path, *EXT_ARGS[ext])


@pytest.mark.parametrize("ext", sorted(EXT_ARGS))
def test_empty_files(base, tmp_path, ext):
    path = tmp_path / f"empty{ext}"
    path.write_bytes(b"")
    ingest_refused(base, path, *EXT_ARGS[ext])
    ingest_refused_fresh(tmp_path, path, *EXT_ARGS[ext])


# -- shapes ----------------------------------------------------------------------------------

@pytest.mark.parametrize("shape", [(8,), (2, 3, 8), (0, 8), (4, 0),
                                   (3, 9), (3, 7)])
def test_wrong_shapes(base, tmp_path, shape):
    path = tmp_path / "shape.npy"
    np.save(path, np.ones(shape, np.float32))
    ingest_refused(base, path, "--modality", "image")


def test_ragged_and_non_numeric_parquet_vectors(base, tmp_path):
    ragged = tmp_path / "ragged.parquet"
    pq.write_table(pa.table({"id": ["x1", "x2"], "modality": ["image"] * 2,
                             "embedding": [[1.0] * DIM, [1.0] * (DIM - 1)]}), ragged)
    ingest_refused(base, ragged)
    strings = tmp_path / "strings.parquet"
    pq.write_table(pa.table({"id": ["x1"], "modality": ["image"], "embedding": ["1,2,3"]}), strings)
    ingest_refused(base, strings)
    nulls = tmp_path / "nulls.parquet"
    pq.write_table(pa.table({"id": ["x1", "x2"], "modality": ["image"] * 2,
                             "embedding": pa.array([[1.0] * DIM, None], pa.list_(pa.float32()))}), nulls)
    ingest_refused(base, nulls)
    inner = tmp_path / "inner_null.parquet"
    pq.write_table(pa.table({"id": ["x1"], "modality": ["image"],
                             "embedding": pa.array([[1.0] * (DIM - 1) + [None]], pa.list_(pa.float32()))}),
                   inner)
    ingest_refused(base, inner)


def test_dimension_of_100000_is_refused_without_exhausting_memory(tmp_path):
    """A huge dimension must be refused up front, not die allocating a d×d moment matrix."""
    path = tmp_path / "wide.npy"
    np.save(path, np.ones((3, 100_000), np.float32))
    ingest_refused_fresh(tmp_path, path, "--modality", "image")


# -- values ----------------------------------------------------------------------------------

@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf, 0.0])
def test_non_finite_and_zero_vectors(base, tmp_path, value):
    X = np.ones((4, DIM), np.float32)
    X[2] = value
    path = tmp_path / "bad.npy"
    np.save(path, X)
    ingest_refused(base, path, "--modality", "image")


def _accepted_consistently(db, result):
    """An accepted extreme input must leave a consistent table with finite scores."""
    from curator.maintenance.verify import verify

    assert result.exit_code == 0, result.output
    check = verify(db=db)
    assert check.ok, check.summary()
    t = lance.dataset(f"{db}/embeddings.lance").to_table(columns=["conformity", "norm"])
    assert np.isfinite(t.column("conformity").to_numpy(zero_copy_only=False)).all()
    assert np.isfinite(t.column("norm").to_numpy(zero_copy_only=False)).all()


@pytest.mark.parametrize("scale", [1e38, 3e38, 1e30,
                                   1e-40,
                                   1e-45, 1e-20])
def test_extreme_magnitudes_are_refused_or_scored_consistently(tmp_path, scale):
    """Norms that overflow float32 (or vectors of subnormals) are refused; else all is finite."""
    rng = np.random.default_rng(4)
    X = (rng.normal(size=(6, DIM)) + 1.0).astype(np.float64) * scale
    path = tmp_path / "extreme.npy"
    np.save(path, X.astype(np.float32))
    db = str(tmp_path / "x.lancedb")
    result = run(["--db", db, "ingest", str(path), "--modality", "image"])
    if result.exit_code == 1:
        assert_refused(result)
        assert not os.path.exists(f"{db}/embeddings.lance")
    else:
        _accepted_consistently(db, result)


def test_one_huge_vector_among_normal_ones(tmp_path):
    """Second moments of 1e38-sized rows overflow float32 products: refuse or stay finite."""
    X = np.random.default_rng(5).normal(size=(20, DIM)).astype(np.float32) + 1
    X[7] *= np.float32(1e37)
    path = tmp_path / "one_huge.npy"
    np.save(path, X)
    db = str(tmp_path / "h.lancedb")
    result = run(["--db", db, "ingest", str(path), "--modality", "image"])
    if result.exit_code == 1:
        assert_refused(result)
    else:
        _accepted_consistently(db, result)


# -- ids -------------------------------------------------------------------------------------

def _ids_parquet(path, ids):
    X = np.random.default_rng(6).normal(size=(len(ids), DIM)).astype(np.float32) + 1
    pq.write_table(pa.table({"id": pa.array(ids, pa.string()), "modality": ["image"] * len(ids),
                             "embedding": pa.array(list(X), pa.list_(pa.float32()))}), path)
    return path


@pytest.mark.parametrize("ids", [["", "a"], ["a", "a"], [None, "a"], ["b0", "new"]],
                         ids=["empty", "duplicate-in-input", "null", "already-in-table"])
def test_bad_ids(base, tmp_path, ids):
    ingest_refused(base, _ids_parquet(tmp_path / "ids.parquet", ids))


def test_unicode_and_enormous_ids_round_trip(tmp_path):
    ids = ["émoji-😀", "רשת", "中文", "nul\x00byte", "x" * 100_000, "quote'\"; DROP TABLE x"]
    db = str(tmp_path / "u.lancedb")
    result = run(["--db", db, "ingest", str(_ids_parquet(tmp_path / "u.parquet", ids))])
    if result.exit_code == 1:  # refusing odd ids is allowed, silently changing them is not
        assert_refused(result)
        return
    got = lance.dataset(f"{db}/embeddings.lance").to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(got) == sorted(ids)


@HYPO
@given(ids=st.lists(st.text(min_size=1, max_size=40), min_size=2, max_size=6, unique=True))
def test_arbitrary_text_ids_are_stored_exactly_or_refused(tmp_path_factory, ids):
    root = tmp_path_factory.mktemp("ids")
    db = str(root / "t.lancedb")
    result = run(["--db", db, "ingest", str(_ids_parquet(root / "t.parquet", ids))])
    if result.exit_code == 1:
        assert_refused(result)
        return
    assert result.exit_code == 0, result.output
    got = lance.dataset(f"{db}/embeddings.lance").to_table(columns=["id"]).column("id").to_pylist()
    assert sorted(got) == sorted(ids)


# -- pickles are never loaded -----------------------------------------------------------------

class _Trap:
    """Unpickling this creates a file: proof that something unpickled untrusted input."""

    def __init__(self, sentinel):
        self.sentinel = sentinel

    def __reduce__(self):
        return (open, (self.sentinel, "w"))


def test_object_npy_is_refused_without_unpickling(base, tmp_path):
    sentinel = tmp_path / "PWNED"
    path = tmp_path / "objects.npy"
    array = np.empty((2, DIM), dtype=object)
    array[:] = 1.0
    array[0, 0] = _Trap(str(sentinel))
    np.save(path, array, allow_pickle=True)
    ingest_refused(base, path, "--modality", "image")
    assert not sentinel.exists()


def test_object_member_in_npz_and_raw_pickle_are_refused(base, tmp_path):
    sentinel = tmp_path / "PWNED"
    array = np.empty((2, DIM), dtype=object)
    array[:] = 1.0
    array[0, 0] = _Trap(str(sentinel))
    npz = tmp_path / "objects.npz"
    np.savez(npz, image=array, allow_pickle=True)
    ingest_refused(base, npz)
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps(_Trap(str(sentinel))))
    ingest_refused(base, raw, "--modality", "image")
    assert not sentinel.exists()


def test_npz_member_that_is_not_npy_is_refused(base, tmp_path):
    sentinel = tmp_path / "PWNED"
    zipped = tmp_path / "zipped.npz"
    with zipfile.ZipFile(zipped, "w") as z:
        z.writestr("image.npy", pickle.dumps(_Trap(str(sentinel))))
    try:
        ingest_refused(base, zipped)
    finally:
        assert not sentinel.exists()


# -- SQL: one read-only statement ---------------------------------------------------------------

HOSTILE_SQL = [
    "select 1; drop table embeddings",
    "drop table embeddings",
    "delete from embeddings",
    "update embeddings set conformity = 0",
    "insert into embeddings (id) values ('x')",
    "create table t as select 1",
    "copy embeddings to '{out}'",
    "copy (select 1) to '{out}'",
    "attach '{out}' as other",
    "install httpfs",
    "load httpfs",
    "set enable_external_access = true",
    "select * from read_csv('/etc/passwd')",
    "select * from read_text('/etc/passwd')",
    "pragma version",
    "export database '{dir}'",
    "",
    "   ;  ",
]


@pytest.mark.parametrize("sql", HOSTILE_SQL)
def test_query_refuses_writes_and_file_access(base, tmp_path, sql):
    out, folder = tmp_path / "leak.csv", tmp_path / "dump"
    before = state(base)
    result = run(["--db", base, "query", sql.format(out=out, dir=folder)])
    assert_refused(result, base, before)
    assert not out.exists() and not folder.exists()


HOSTILE_WHERE = [
    "1=1; DROP TABLE embeddings",
    "true) ; COPY embeddings TO '{out}' ; select (1",
    "1=1) UNION ALL SELECT * FROM read_csv('/etc/passwd') --",
    "id in (select id from read_text('/etc/passwd'))",
    "1=1; COPY (select 1) TO '{out}'",
    "1=1 --",
    "",
]


@pytest.mark.parametrize("where", HOSTILE_WHERE)
def test_export_where_is_one_predicate(base, tmp_path, where):
    pytest.importorskip("curator.io.export")
    out, dest = tmp_path / "leak.csv", tmp_path / "exp"
    before = state(base)
    result = run(["--db", base, "export", "--out", str(dest), "--where", where.format(out=out)])
    if where == "1=1 --" and result.exit_code == 0:
        # A trailing comment is harmless if it selected exactly the rows 1=1 selects.
        assert state(base)[1] == before[1]
        return
    assert_refused(result, base, before)
    assert not out.exists()


def test_query_reads_fine_and_table_is_unchanged(base):
    before = state(base)
    result = run(["--db", base, "query", "select count(*) as n from embeddings", "--format", "csv"])
    assert result.exit_code == 0 and "60" in result.output
    assert state(base) == before
