"""rebalance: MetaCLIP caps against counting oracles, reproducibility, the written column."""

from __future__ import annotations

import hashlib
import math

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from conftest import read_table

from curator import ingest
from curator.cli import cli
from curator.curation.rebalance import rebalance
from curator.errors import CuratorError


def _version(db):
    return lance.dataset(f"{db}/embeddings.lance").version


def _decisions(db) -> dict:
    t = read_table(db)
    return dict(zip(t.column("id").to_pylist(), t.column("rebalance_keep").to_pylist()))


def _oracle_uniform(seed, row_id) -> float:
    h = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(h, "little") >> 11) / 2.0 ** 53


def test_caps_per_group_within_binomial_tolerance(ingested):
    cap = 25
    result = rebalance(db=ingested, cap=cap, by="concept", seed=3, per="row")
    t = read_table(ingested)
    mods = np.array(t.column("modality").to_pylist())
    concept = t.column("concept").to_numpy()
    keep = np.array(t.column("rebalance_keep").to_pylist())
    assert keep.dtype == bool  # every row decided, no nulls
    total_p = total_var = 0.0
    crowded = 0
    for m in np.unique(mods):
        for c in np.unique(concept[mods == m]):
            rows = (mods == m) & (concept == c)
            count = int(rows.sum())
            p = min(1.0, cap / count)
            kept = int(keep[rows].sum())
            var = count * p * (1 - p)
            assert abs(kept - count * p) <= 4 * math.sqrt(var) + 1, (m, c, count, kept)
            if count <= cap:
                assert kept == count  # groups under the cap stay whole
            else:
                crowded += 1
            total_p += count * p
            total_var += var
    assert crowded >= 2  # the test data has groups over the cap
    assert abs(keep.sum() - total_p) <= 4 * math.sqrt(total_var) + 1
    assert result.kept == int(keep.sum())
    assert result.expected_kept == pytest.approx(total_p)
    # the result reports the oracle's counts per group, before and after
    for g in result.groups:
        rows = (mods == g["modality"]) & (concept == g["group"])
        assert g["before"] == int(rows.sum()) and g["after"] == int(keep[rows].sum())


def test_decisions_follow_the_documented_hash_rule(ingested):
    cap = 30
    rebalance(db=ingested, cap=cap, by="concept", seed=11, per="row")
    t = read_table(ingested)
    mods, concept = t.column("modality").to_pylist(), t.column("concept").to_pylist()
    counts = {}
    for key in zip(mods, concept):
        counts[key] = counts.get(key, 0) + 1
    expected = [_oracle_uniform(11, i) < min(1.0, cap / counts[k])
                for i, k in zip(t.column("id").to_pylist(), zip(mods, concept))]
    assert t.column("rebalance_keep").to_pylist() == expected


def test_same_seed_same_decisions_across_layouts_other_seed_differs(tmp_path, pairs_small):
    one, three = str(tmp_path / "one.lancedb"), str(tmp_path / "three.lancedb")
    ingest(pairs_small.write_parquet(str(tmp_path / "a"), parts=1), db=one)
    for path in pairs_small.write_parquet(str(tmp_path / "b"), parts=3):
        ingest([path], db=three)  # other fragments and batch boundaries
    assert len(lance.dataset(f"{three}/embeddings.lance").get_fragments()) > 1
    rebalance(db=one, cap=20, by="concept", seed=5)
    rebalance(db=three, cap=20, by="concept", seed=5)
    first = _decisions(one)
    assert first == _decisions(three)
    rebalance(db=three, cap=20, by="concept", seed=6)
    other = _decisions(three)
    assert sum(first[k] != other[k] for k in first) > 20


def test_modality_leaves_other_rows_unchanged(ingested):
    rebalance(db=ingested, cap=10, by="concept", seed=1, per="row")
    before = read_table(ingested)
    result = rebalance(db=ingested, cap=60, by="concept", modality="text", seed=2, per="row")
    after = read_table(ingested)
    mods = np.array(after.column("modality").to_pylist())
    b, a = (np.array(x.column("rebalance_keep").to_pylist()) for x in (before, after))
    assert (a[mods == "image"] == b[mods == "image"]).all()
    assert (a[mods == "text"] != b[mods == "text"]).any()
    assert {g["modality"] for g in result.groups} == {"text"}
    assert result.rows == int((mods == "text").sum())
    assert result.table_version == result.table_version_read + 1 == _version(ingested)


def test_conformity_bins_flatten_the_distribution(ingested):
    bins = 12
    result = rebalance(db=ingested, cap=30, by="conformity", bins=bins, seed=0, per="row")
    t = read_table(ingested)
    mods = np.array(t.column("modality").to_pylist())
    conf = t.column("conformity").to_numpy(zero_copy_only=False).astype(np.float64)
    keep = np.array(t.column("rebalance_keep").to_pylist())
    for m in ("image", "text"):
        x = conf[mods == m]
        before, edges = np.histogram(x, bins=bins, range=(x.min(), x.max()))
        after, _ = np.histogram(x[keep[mods == m]], bins=edges)
        h = result.histograms[m]
        assert h["before"] == before.tolist()
        assert h["after"] == after.tolist()
        assert np.allclose(h["edges"], edges)
        ratio = lambda v: v[v > 0].max() / v[v > 0].min()
        assert ratio(after) < ratio(before)
        assert after.max() < before.max()
        # the tails (bins under the cap) are kept whole
        small = before <= 30
        assert (after[small] == before[small]).all()


def test_null_group_is_its_own_group(tmp_path):
    rng = np.random.default_rng(0)
    n = 300
    label = pa.array([None if i % 3 == 0 else f"L{i % 2}" for i in range(n)], pa.string())
    X = rng.normal(size=(n, 8)).astype(np.float32) + 3
    table = pa.table({"id": [f"r{i}" for i in range(n)], "modality": ["image"] * n,
                      "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), 8),
                      "label": label})
    pq.write_table(table, tmp_path / "x.parquet")
    db = str(tmp_path / "db")
    ingest([str(tmp_path / "x.parquet")], db=db)
    result = rebalance(db=db, cap=10, by="label", seed=0)
    groups = {g["group"]: g for g in result.groups}
    assert groups[None]["before"] == 100
    assert abs(groups[None]["after"] - 10) <= 4 * math.sqrt(100 * 0.1 * 0.9) + 1


@pytest.mark.parametrize("kwargs, message", [
    ({"cap": 10, "by": "no_such_column"}, "no column"),
    ({"cap": 0, "by": "concept"}, "--cap"),
    ({"cap": 10, "by": "conformity", "bins": 0}, "--bins"),
    ({"cap": 10, "by": "embedding"}, "cannot group"),
    ({"cap": 10, "by": "cluster"}, "curator cluster"),
    ({"cap": 10, "by": "concept", "modality": "audio"}, "no rows"),
])
def test_bad_arguments_are_one_line_errors_and_write_nothing(ingested, kwargs, message):
    version = _version(ingested)
    with pytest.raises(CuratorError, match=message) as info:
        rebalance(db=ingested, **kwargs)
    assert "\n" not in str(info.value)
    assert _version(ingested) == version


def test_cli(ingested):
    runner = CliRunner()
    out = runner.invoke(cli, ["--db", ingested, "rebalance", "--cap", "20", "--by", "concept", "--json"])
    assert out.exit_code == 0, out.output
    assert '"table_version"' in out.output
    bad = runner.invoke(cli, ["--db", ingested, "rebalance", "--cap", "20", "--by", "nope"])
    assert bad.exit_code == 1 and bad.output.strip().startswith("Error:")
    assert len(bad.output.strip().splitlines()) == 1
