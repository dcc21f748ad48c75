"""Spill folders: named after their process; those of dead processes are removed."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time

import pyarrow as pa
import pytest

from curator.engine import spill
from curator.engine.spill import ScalarSpill

pytestmark = pytest.mark.skipif(os.name != "posix", reason="liveness by os.kill(pid, 0)")


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # reaped: the pid names no process now
    return proc.pid


def _folder(parent, name: str, age: float) -> str:
    path = os.path.join(parent, name)
    os.makedirs(os.path.join(path, "duckdb"))
    with open(os.path.join(path, "part-000000.parquet"), "wb") as fh:
        fh.write(b"x")
    past = time.time() - age
    os.utime(path, (past, past))
    return path


def test_new_spill_removes_stale_folders_of_dead_processes(tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    dead = _dead_pid()
    stale = _folder(tmp_path, f"curator-spill-{dead}-abc123_x", age=3600)
    recent = _folder(tmp_path, f"curator-spill-{dead}-recent00", age=0)  # too young to judge
    live = _folder(tmp_path, f"curator-spill-{os.getpid()}-live0000", age=3600)
    other = _folder(tmp_path, f"curator-spill-{dead}-abc.old", age=3600)  # not our pattern
    old_style = _folder(tmp_path, "curator-spill-k2j4h5l6", age=3600)  # no pid: never touched

    with ScalarSpill(pa.schema([("x", pa.int64())])) as s:
        assert os.path.dirname(s.folder) == str(tmp_path)
        assert os.path.basename(s.folder).startswith(f"curator-spill-{os.getpid()}-")
        assert os.path.isdir(s.folder)
    assert not os.path.exists(s.folder)

    assert not os.path.exists(stale)
    for kept in (recent, live, other, old_style):
        assert os.path.isdir(kept), kept


def test_permission_error_means_alive(monkeypatch):
    def kill(pid, sig):
        raise PermissionError

    monkeypatch.setattr(spill.os, "kill", kill)
    assert spill._alive(12345)

    def gone(pid, sig):
        raise ProcessLookupError

    monkeypatch.setattr(spill.os, "kill", gone)
    assert not spill._alive(12345)


def test_joins_against_a_streamed_scan_build_on_the_written_right_side(tmp_path):
    """A table streamed from an Arrow reader has no row count DuckDB can see; inside
    ``scan_probes`` the scan still probes and the ``IN (SELECT …)`` list is built, so a
    duplicate check holds the input's ids, not the table. The rows found are the oracle's."""
    import lance
    import numpy as np

    from curator.engine.fragments import scan

    ids = [f"r{i:05d}" for i in range(20_000)]
    lance.write_dataset(pa.table({"id": ids, "x": np.arange(20_000)}), str(tmp_path / "t.lance"),
                        max_rows_per_file=5_000)
    dataset = lance.dataset(str(tmp_path / "t.lance"))
    wanted = [ids[i] for i in range(3, 20_000, 997)] + ["absent"]
    con = spill.connect(str(tmp_path))
    con.from_arrow(pa.table({"id": wanted})).create_view("input_ids")
    query = "SELECT id, x FROM scan WHERE id IN (SELECT id FROM input_ids) ORDER BY x"
    with spill.scan_probes(con):
        con.from_arrow(scan(dataset, ["id", "x"]).to_reader()).create_view("scan", replace=True)
        plan = con.sql("EXPLAIN " + query).fetchall()[0][1]
        assert "SEMI" in plan and "RIGHT_SEMI" not in plan
        con.from_arrow(scan(dataset, ["id", "x"]).to_reader()).create_view("scan", replace=True)
        found = con.sql(query).fetchall()
    assert found == [(ids[i], i) for i in range(3, 20_000, 997)]
    setting = con.execute("SELECT current_setting('disabled_optimizers')").fetchone()[0]
    assert "build_side_probe_side" not in str(setting)  # reset after the block


def test_commands_that_fail_on_bad_input_leave_no_spill_folder(tmp_path, monkeypatch):
    """An ingest refused in its validation pass, a rebalance refused after its scan and a
    clean run: no ``curator-spill-*`` folder stays in the temp dir."""
    import numpy as np

    from curator import ingest
    from curator.curation.rebalance import rebalance
    from curator.errors import CuratorError

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    db = str(tmp_path / "db")
    good = np.random.default_rng(0).normal(size=(50, 8)).astype(np.float32)
    np.save(tmp_path / "good.npy", good)
    ingest([str(tmp_path / "good.npy")], db=db, modality="image")
    bad = good.copy()
    bad[3, 1] = np.nan
    np.save(tmp_path / "bad.npy", bad)
    with pytest.raises(CuratorError, match="NaN"):
        ingest([str(tmp_path / "bad.npy")], db=db, modality="text")
    with pytest.raises(CuratorError, match="no rows"):
        rebalance(db=db, cap=5, by="conformity", per="row", modality="text")
    rebalance(db=db, cap=5, by="conformity")
    assert not [p for p in os.listdir(scratch) if p.startswith(spill.PREFIX)]


def test_duckdb_memory_from_the_environment(tmp_path, monkeypatch):
    """``CURATOR_DUCKDB_MEMORY`` sets DuckDB's limit; a value that is not a size is a
    one-line error from the CLI, and the table keeps its version."""
    import lance
    import numpy as np
    from click.testing import CliRunner

    from curator import ingest
    from curator.cli import cli

    monkeypatch.setenv(spill.MEMORY_ENV, "300MB")
    con = spill.connect(str(tmp_path))
    limit = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    con.close()
    assert limit.endswith("MiB") and 280 < float(limit.split()[0]) < 300  # 300 MB in MiB
    monkeypatch.delenv(spill.MEMORY_ENV)
    con = spill.connect(str(tmp_path))
    default = con.execute("SELECT current_setting('memory_limit')").fetchone()[0]
    con.close()
    assert default != limit

    db = str(tmp_path / "db")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).normal(size=(40, 8)).astype(np.float32))
    ingest([str(tmp_path / "x.npy")], db=db, modality="image")
    before = lance.dataset(f"{db}/embeddings.lance").version
    for bad in ("lots", "256MB'; SELECT 1; --", "-5GB"):
        monkeypatch.setenv(spill.MEMORY_ENV, bad)
        out = CliRunner().invoke(cli, ["--db", db, "rebalance", "--by", "conformity", "--cap", "5"])
        assert out.exit_code == 1 and out.output.startswith("Error: CURATOR_DUCKDB_MEMORY="), out.output
        assert "Traceback" not in out.output and len(out.output.strip().splitlines()) == 1
        assert lance.dataset(f"{db}/embeddings.lance").version == before


def test_a_keyed_spill_streams_in_key_order_and_refuses_interleaved_parts(tmp_path, monkeypatch):
    import numpy as np

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    schema = pa.schema([("key", pa.int64()), ("value", pa.float64())])
    rng = np.random.default_rng(0)
    parts = [np.arange(100, 140), np.arange(0, 30), rng.permutation(np.arange(50, 90))]
    with ScalarSpill(schema, key="key") as keyed:
        for keys in parts:  # added out of order, the last part itself unsorted
            keyed.add(pa.table({"key": keys, "value": keys * 0.5}, schema=schema))
        got = pa.Table.from_batches(list(keyed.in_key_order(["key", "value"], batch_rows=7)))
        oracle = np.sort(np.concatenate(parts))
        assert got.column("key").to_pylist() == oracle.tolist()
        assert got.column("value").to_pylist() == (oracle * 0.5).tolist()
        keyed.add(pa.table({"key": [25, 200]}, schema=pa.schema([("key", pa.int64())])).append_column(
            "value", pa.array([0.0, 0.0])))  # 25 falls inside the range 0..29
        with pytest.raises(AssertionError, match="interleave"):
            list(keyed.in_key_order(["key"]))
