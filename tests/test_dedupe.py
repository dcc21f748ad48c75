"""Near duplicates against the brute-force all-pairs answer (float64 oracle)."""

from __future__ import annotations

import importlib

import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

dedupe_mod = importlib.import_module("curator.curation.dedupe")
neighbours = importlib.import_module("curator.geometry.neighbours")
from curator import ingest
from curator.curation.dedupe import dedupe
from curator.errors import CuratorError
from curator.geometry.kmeans import unit_rows
from curator.geometry.neighbours import components, home_blocks, near_duplicate_pairs, partition_pairs
from curator.synthetic import make_pairs

TOL = 1e-5  # float32 cosines against the float64 oracle


def brute_pairs(X: np.ndarray, eps: float) -> tuple[set, np.ndarray]:
    """Oracle: every pair i < j with float64 cosine ≥ 1 − eps − 1e-6 (the documented
    tolerance that lets exact duplicates count at eps = 0), and the cosine matrix."""
    U = np.asarray(X, np.float64)
    U = U / np.linalg.norm(U, axis=1, keepdims=True)
    G = U @ U.T
    i, j = np.nonzero(np.triu(G >= 1 - eps - 1e-6, k=1))
    return set(zip(i.tolist(), j.tolist())), G


def clustered_with_duplicates(n=3000, d=48, concepts=20, seed=0):
    """Clustered rows plus planted near duplicates at known cosines and exact copies."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(concepts, d)) * 2
    X = centres[rng.integers(concepts, size=n)] + rng.normal(size=(n, d))
    src = rng.choice(n, 300, replace=False)
    planted = []
    for k, s in enumerate(src[:250]):  # cosines spread over 0.97 … 0.9999
        target = 1 - 10 ** rng.uniform(-4, np.log10(0.03))
        u = X[s] / np.linalg.norm(X[s])
        v = rng.normal(size=d)
        v -= v @ u * u
        v /= np.linalg.norm(v)
        planted.append((target * u + np.sqrt(1 - target ** 2) * v) * 3.0)
    copies = X[src[250:]]  # exact duplicates (scaled: same direction)
    return np.vstack([X, np.array(planted), copies * 1.5]).astype(np.float32)


@pytest.mark.parametrize("eps", [0.0, 0.005, 0.02])
@pytest.mark.parametrize("partitions,probes", [(1, 1), (25, 3), (60, 2)])
def test_pairs_match_brute_force(eps, partitions, probes):
    X = clustered_with_duplicates()
    truth, G = brute_pairs(X, eps)
    i, j, c = near_duplicate_pairs(X, eps, partitions=partitions, probes=probes, seed=1)
    found = set(zip(i.tolist(), j.tolist()))
    assert len(truth) >= 50
    assert (i < j).all()
    # recall against the exact answer; nothing below the threshold
    assert len(found & truth) / len(truth) >= 0.99
    assert (G[i, j] >= 1 - eps - TOL).all()
    np.testing.assert_allclose(c, G[i, j], atol=TOL)
    if partitions == 1:
        boundary = {p for p in found ^ truth if abs(G[p] - (1 - eps)) > TOL}
        assert not boundary


def test_pairs_on_real_clip_embeddings(coco):
    image, text = coco
    rng = np.random.default_rng(3)
    picks = rng.choice(len(image), 40, replace=False)
    noise = rng.normal(size=(40, image.shape[1]))
    scale = rng.uniform(0.02, 0.2, size=(40, 1)) * np.linalg.norm(image[picks], axis=1, keepdims=True)
    noisy = (image[picks] + noise / np.linalg.norm(noise, axis=1, keepdims=True) * scale).astype(np.float32)
    X = np.vstack([image, noisy, image[picks[:10]], text])
    truth, G = brute_pairs(X, 0.02)
    assert len(truth) >= 50
    i, j, _ = near_duplicate_pairs(X, 0.02, partitions=12, probes=3, seed=0)
    found = set(zip(i.tolist(), j.tolist()))
    assert len(found & truth) / len(truth) >= 0.99
    assert (G[i, j] >= 0.98 - TOL).all()


@pytest.mark.parametrize("first", [1, 7, 40, 200])
def test_partition_pairs_in_blocks_equal_one_call(first):
    rng = np.random.default_rng(3)
    U = unit_rows(np.repeat(rng.normal(size=(20, 16)), 10, axis=0) + 0.02 * rng.normal(size=(200, 16)))
    U = U.astype(np.float32)
    Up, Uq = U[:120], U[120:]
    pos_p, pos_q = np.arange(120) * 2, np.arange(80) * 2 + 1
    thr = 0.99
    whole = set(zip(*[a.tolist() for a in partition_pairs(Up, pos_p, Uq, pos_q, thr)[:2]]))
    G = U @ U.T
    truth = {(2 * a, 2 * b) for a in range(120) for b in range(a + 1, 120) if G[a, b] >= thr}
    truth |= {(2 * a, 2 * b + 1) for a in range(120) for b in range(80) if G[a, 120 + b] >= thr}
    assert len(truth) > 100 and {tuple(sorted(p)) for p in whole} == truth
    found = []
    for lo in range(0, 120, first):
        i, j, _ = partition_pairs(Up[lo:], pos_p[lo:], Uq, pos_q, thr, first=first)
        found += [tuple(sorted(p)) for p in zip(i.tolist(), j.tolist())]
    assert len(found) == len(set(found)) and set(found) == truth  # each pair once
    assert home_blocks(120, 80, 1000) == 5 and home_blocks(120, 80, 10) == 1
    assert home_blocks(120, 80, 10**9) == 120


def test_components_hand_worked():
    labels = components(7, np.array([0, 4, 3, 6]), np.array([5, 1, 4, 6]))
    assert labels.tolist() == [0, 1, 2, 1, 1, 0, 6]
    chain = components(6, np.array([5, 4, 3, 2, 1]), np.array([4, 3, 2, 1, 0]))
    assert chain.tolist() == [0] * 6


def test_components_in_chunks_equal_one_call():
    rng = np.random.default_rng(0)
    n, m = 400, 500
    i, j = rng.integers(0, n, m), rng.integers(0, n, m)
    whole = components(n, i, j)
    labels = None
    for k in range(0, m, 37):
        labels = components(n, i[k:k + 37], j[k:k + 37], labels=labels)
    np.testing.assert_array_equal(labels, whole)
    assert len(np.unique(whole)) < n  # some merged


def test_pair_spill_counts_each_pair_once_and_streams_the_union(monkeypatch):
    """Pairs found twice (both orders, from two partitions), self pairs and cosines
    rounded above 1: one pair each, the largest cosine capped at 1; members and groups
    equal the in-memory oracle with Parquet parts of 5 pairs and union chunks of 3."""
    from curator.engine.rowset import RowSet
    from curator.geometry.neighbours import sorted_unique

    monkeypatch.setattr(dedupe_mod, "_PAIR_PART_ROWS", 5)
    monkeypatch.setattr(dedupe_mod, "_EDGE_CHUNK", 3)
    rng = np.random.default_rng(4)
    layout = [(0, 40), (3, 70), (9, 25)]  # (fragment id, rows): row ids fragment << 32 | offset
    every = np.concatenate([(f << 32) + np.arange(n) for f, n in layout])
    ids = rng.choice(every, 60, replace=False).astype(np.int64)
    a, b = rng.integers(0, 60, 40), rng.integers(0, 60, 40)
    a[3:5] = b[3:5]  # self pairs: dropped, their row not a member unless in another pair
    c = rng.uniform(0.98, 1.0000001, 40).astype(np.float32)
    c[:3] = np.float32(1.0000001)
    i, j = ids[a], ids[b]
    lo, hi, cu = sorted_unique(np.r_[i, j], np.r_[j, i], np.r_[c, c])  # the oracle
    with dedupe_mod.PairSpill(RowSet(layout)) as pairs:
        for k in range(0, 40, 7):  # both orders, in separate calls
            pairs.add(i[k:k + 7], j[k:k + 7], c[k:k + 7])
            pairs.add(j[k:k + 7], i[k:k + 7], c[k:k + 7])
        pairs.finish()
        assert pairs.count == len(lo) and pairs.spill.parts > 2
        assert pairs.exact == int((cu >= 1 - dedupe_mod.COS_TOL).sum()) >= 3
        got = pairs.pairs()
        np.testing.assert_array_equal(got[0], lo)
        np.testing.assert_array_equal(got[1], hi)
        np.testing.assert_allclose(got[2], cu)
        members = np.unique(np.r_[lo, hi])
        np.testing.assert_array_equal(np.concatenate(list(pairs.members.blocks())), members)
        assert len(pairs.members) == len(members)
        want = components(len(members), np.searchsorted(members, lo), np.searchsorted(members, hi))
        np.testing.assert_array_equal(pairs.labels(), want)


def test_row_set_rank_and_select_against_sorted_ids(monkeypatch):
    """A RowSet over fragments with gaps in their ids, words split across fragments and
    blocks of 2 words: members, rank, select and blocks equal a sorted-array oracle."""
    from curator.engine import rowset as rowset_mod

    monkeypatch.setattr(rowset_mod, "_BLOCK_WORDS", 2)
    rng = np.random.default_rng(8)
    layout = [(7, 300), (2, 1), (4, 130), (11, 64), (12, 0), (30, 517)]
    every = np.concatenate([(np.int64(f) << 32) + np.arange(n, dtype=np.int64) for f, n in sorted(layout)])
    chosen = np.sort(rng.choice(every, 400, replace=False))
    rows = rowset_mod.RowSet(layout)
    for part in np.array_split(rng.permutation(np.r_[chosen, chosen[:50]]), 7):  # repeats too
        rows.add(part)
    assert len(rows) == len(chosen)
    np.testing.assert_array_equal(np.concatenate(list(rows.blocks())), chosen)
    assert max(len(b) for b in rows.blocks()) <= 128
    shuffled = rng.permutation(len(chosen))
    np.testing.assert_array_equal(rows.rank(chosen[shuffled]), shuffled)
    np.testing.assert_array_equal(rows.select(shuffled), chosen[shuffled])
    np.testing.assert_array_equal(rows.rowids(rows.ordinals(every)), every)
    np.testing.assert_array_equal(rows.ordinals(every), np.arange(len(every)))
    with pytest.raises(ValueError, match="not in the table"):
        rows.ordinals(np.array([(np.int64(2) << 32) + 1]))  # past fragment 2's one row
    with pytest.raises(ValueError, match="not in the table"):
        rows.ordinals(np.array([np.int64(5) << 32]))  # no fragment 5
    with pytest.raises(ValueError, match="out of range"):
        rows.select(np.array([len(chosen)]))
    with pytest.raises(RuntimeError):
        rows.add(chosen[:1])  # frozen by rank and select
    assert len(rowset_mod.RowSet([(0, 10)])) == 0 and not list(rowset_mod.RowSet([(0, 10)]).blocks())


def test_popcount_fallback_equals_bin_count(monkeypatch):
    from curator.engine import rowset as rowset_mod

    words = np.random.default_rng(2).integers(0, 2**63, 200, dtype=np.uint64) * np.uint64(2) + np.uint64(1)
    want = [bin(int(w)).count("1") for w in words]
    assert rowset_mod.popcount(words).tolist() == want
    monkeypatch.delattr(np, "bitwise_count", raising=False)
    assert rowset_mod.popcount(words).tolist() == want


def test_union_find_against_breadth_first_search():
    """Components of a random sparse graph (chains, stars, isolated nodes), edges in
    chunks of 13, compressed in blocks of 5: equal labels from a breadth-first search."""
    from collections import deque

    from curator.geometry.neighbours import UnionFind

    rng = np.random.default_rng(3)
    n = 300
    i, j = rng.integers(0, n, 260), rng.integers(0, n, 260)
    i = np.r_[i, np.arange(200, 240)]  # a chain from 240 down to 200
    j = np.r_[j, np.arange(201, 241)]
    adjacent = [[] for _ in range(n)]
    for a, b in zip(i.tolist(), j.tolist()):
        adjacent[a].append(b)
        adjacent[b].append(a)
    want = np.full(n, -1)
    for s in range(n):  # ascending: s is its component's smallest node when first reached
        if want[s] < 0:
            want[s] = s
            queue = deque([s])
            while queue:
                for b in adjacent[queue.popleft()]:
                    if want[b] < 0:
                        want[b] = s
                        queue.append(b)
    forest = UnionFind(n)
    for k in range(0, len(i), 13):
        forest.union(i[k:k + 13], j[k:k + 13])
        assert (forest.parent <= np.arange(n)).all()
    labels = forest.labels(block=5)
    assert labels.dtype == np.int32
    np.testing.assert_array_equal(labels, want)
    assert 1 < len(np.unique(want)) < n


# -- the command on a table -----------------------------------------------------------------

@pytest.fixture(scope="module")
def planted():
    """make_pairs with 5% planted near-duplicate images, plus exact copies we add."""
    data = make_pairs(samples=400, dim=32, concepts=6, duplicates=0.05, seed=11)
    table = data.table()
    where = {i: r for r, i in enumerate(data.ids)}
    originals = sorted(data.duplicate_of.items())
    orig, dup2 = originals[0][1], originals[1][0]
    # exact copies of plain images, of an original and of a near duplicate: groups of 3
    images = np.r_[np.flatnonzero(data.modality == "image")[:6], where[orig], where[dup2]]
    texts = np.flatnonzero(data.modality == "text")[:4]
    extra = np.r_[images, texts]
    copies = pa.table({
        "id": [f"copy-{data.ids[r]}" for r in extra],
        "sample_id": [f"copy-{data.sample_ids[r]}" for r in extra],
        "modality": data.modality[extra].tolist(),
        "embedding": table.column("embedding").take(pa.array(extra)),
        "concept": pa.array(data.concept[extra], pa.int32()),
        "caption": data.caption[extra].tolist(),
    })
    exact = {f"copy-{data.ids[r]}": data.ids[r] for r in extra}
    return data, pa.concat_tables([table, copies.cast(table.schema)]), exact


@pytest.fixture
def deduped_db(tmp_path, planted):
    _, table, _ = planted
    path = str(tmp_path / "src.parquet")
    pq.write_table(table, path)
    db = str(tmp_path / "db.lancedb")
    ingest([path], db=db)
    return db


def rows_of(db):
    ds = lance.dataset(f"{db}/embeddings.lance")
    t = ds.to_table(columns=["id", "modality", "embedding", "conformity", "alignment",
                             "dup_group", "is_duplicate"], with_row_id=True)
    return ds, t


EPS = 2e-4  # planted near duplicates sit at cosine ≈ 1 − 0.01²/2 = 0.99995


def oracle_groups(t, modality, eps):
    mods = np.asarray(t.column("modality").to_pylist())
    rows = np.flatnonzero(mods == modality)
    X = np.asarray(t.column("embedding").to_pylist(), np.float64)[rows]
    truth, G = brute_pairs(X, eps)
    return rows, truth, G


@pytest.mark.parametrize("keep", ["least-conformity", "most-conformity", "best-alignment", "random"])
@pytest.mark.parametrize("streamed", [False, True, "blocks"])
def test_dedupe_table_against_brute_force(deduped_db, planted, monkeypatch, keep, streamed):
    data, _, exact = planted
    if streamed:  # force the spill-file path with several partitions
        monkeypatch.setattr(dedupe_mod, "IN_MEMORY_ROWS", 0)
        monkeypatch.setattr(neighbours, "EXACT_ROWS", 16)
    if streamed == "blocks":  # and every partition searched as blocks of a few home rows
        monkeypatch.setattr(dedupe_mod, "_JOB_PAIRS", 200)
    before = lance.dataset(f"{deduped_db}/embeddings.lance").version
    result = dedupe(db=deduped_db, eps=EPS, keep=keep, seed=5)
    assert result.table_version_read == before and result.table_version == before + 1
    ds, t = rows_of(deduped_db)
    assert ds.version == result.table_version
    ids = np.asarray(t.column("id").to_pylist(), object)
    group = t.column("dup_group").to_pylist()
    flag = t.column("is_duplicate").to_pylist()
    rowid = t.column("_rowid").to_numpy()
    conformity = np.asarray(t.column("conformity").to_pylist(), float)
    alignment = np.array([np.nan if a is None else a for a in t.column("alignment").to_pylist()])

    for m in ("image", "text"):
        rows, truth, _ = oracle_groups(t, m, EPS)
        assert result.modalities[m]["pairs"] == len(truth)
        # oracle components over the brute-force pairs
        a = np.array([p[0] for p in truth], int)
        b = np.array([p[1] for p in truth], int)
        label = components(len(rows), a, b)
        members = np.unique(np.r_[a, b])
        for local in range(len(rows)):
            r = rows[local]
            if local not in set(members.tolist()):
                assert group[r] is None and flag[r] is False  # no partner above the threshold
        groups = {}
        for local in members:
            groups.setdefault(label[local], []).append(rows[local])
        assert result.modalities[m]["groups"] == len(groups)
        for rs in groups.values():
            assert len({group[r] for r in rs}) == 1
            assert group[rs[0]] == int(rowid[rs].min())
            kept = [r for r in rs if not flag[r]]
            assert len(kept) == 1, (m, rs, kept)
            k = kept[0]
            order = sorted(rs, key=lambda r: ids[r])
            if keep == "least-conformity":
                best = min(conformity[rs])
                assert conformity[k] == best and k == min((r for r in rs if conformity[r] == best), key=lambda r: ids[r])
            elif keep == "most-conformity":
                best = max(conformity[rs])
                assert conformity[k] == best and k == min((r for r in rs if conformity[r] == best), key=lambda r: ids[r])
            elif keep == "best-alignment":
                vals = alignment[rs]
                if np.isfinite(vals).any():
                    assert alignment[k] == np.nanmax(vals)
                else:
                    assert k == order[0]
    # every planted duplicate (near and exact) is grouped with its original
    where = {i: r for r, i in enumerate(ids)}
    for dup, orig in list(data.duplicate_of.items()) + list(exact.items()):
        assert group[where[dup]] is not None and group[where[dup]] == group[where[orig]]


def test_groups_of_three(deduped_db, planted):
    result = dedupe(db=deduped_db, eps=EPS)
    _, t = rows_of(deduped_db)
    sizes = np.unique(np.asarray([g for g in t.column("dup_group").to_pylist() if g is not None]),
                      return_counts=True)[1]
    flagged = sum(r["duplicates"] for r in result.modalities.values())
    assert (sizes >= 3).sum() >= 2 and flagged == sizes.sum() - len(sizes)


def test_random_policy_is_seeded(deduped_db):
    flags = []
    for seed in (3, 3, 4):
        dedupe(db=deduped_db, eps=EPS, keep="random", seed=seed)
        flags.append(rows_of(deduped_db)[1].column("is_duplicate").to_pylist())
    assert flags[0] == flags[1]
    assert sum(f is True for f in flags[0]) > 10


def test_one_modality_leaves_the_other(deduped_db):
    result = dedupe(db=deduped_db, eps=EPS, modality="image")
    assert list(result.modalities) == ["image"]
    _, t = rows_of(deduped_db)
    mods = np.asarray(t.column("modality").to_pylist())
    flags = np.asarray(t.column("is_duplicate").to_pylist(), object)
    assert all(f is None for f in flags[mods == "text"])
    assert all(f in (True, False) for f in flags[mods == "image"])
    assert "image" in result.summary() and f"v{result.table_version}" in result.summary()
    assert result.to_dict()["table_version"] == result.table_version


@pytest.mark.parametrize("streamed", [False, True])
def test_one_modality_keeps_the_others_stored_marks_and_skips_deleted_rows(tmp_path, planted, monkeypatch,
                                                                          streamed):
    """Each fragment's marks are written as one file for all its physical rows: after a
    dedupe of both modalities and a deletion, an image-only dedupe (another ε and
    policy) leaves every caption's stored marks as they were, and its image marks equal
    those of a table that never had its captions deduped (by id, deleted rows gone)."""
    if streamed:
        monkeypatch.setattr(dedupe_mod, "IN_MEMORY_ROWS", 0)
    _, table, _ = planted
    path = str(tmp_path / "src.parquet")
    pq.write_table(table, path)
    both, alone = str(tmp_path / "both.lancedb"), str(tmp_path / "alone.lancedb")
    for db in (both, alone):
        ingest([path], db=db)
    dedupe(db=both, eps=EPS)

    def marks(db):  # the two tables were written alike: the same row ids
        _, t = rows_of(db)
        return {i: (m, g, f) for i, m, g, f in zip(
            t.column("id").to_pylist(), t.column("modality").to_pylist(),
            t.column("dup_group").to_pylist(), t.column("is_duplicate").to_pylist())}

    before = marks(both)
    gone = [i for i in sorted(before)[::9]]
    for db in (both, alone):
        lance.dataset(f"{db}/embeddings.lance").delete(
            "id IN (" + ", ".join("'" + i.replace("'", "''") + "'" for i in gone) + ")")
        dedupe(db=db, eps=3 * EPS, keep="random", seed=2, modality="image")
    after, fresh = marks(both), marks(alone)
    assert set(after) == set(before) - set(gone) == set(fresh)
    texts = [i for i in after if after[i][0] == "text"]
    assert texts and all(after[i] == before[i] for i in texts)
    assert sum(after[i][2] is True for i in texts) > 0  # the captions' own marks survived
    images = [i for i in after if after[i][0] == "image"]
    assert all(after[i] == fresh[i] for i in images)
    assert sum(after[i][2] is True for i in images) > 0
    assert all(fresh[i][2] is None for i in texts)


@pytest.mark.parametrize("streamed", [False, True])
def test_torch_device_finds_the_same_groups(deduped_db, monkeypatch, streamed):
    pytest.importorskip("torch")
    if streamed:
        monkeypatch.setattr(dedupe_mod, "IN_MEMORY_ROWS", 0)
        monkeypatch.setattr(neighbours, "EXACT_ROWS", 16)
    columns = []
    for device in ("cpu", "torch-cpu"):
        result = dedupe(db=deduped_db, eps=EPS, seed=5, device=device)
        assert result.device == device and f"on {device}" in result.summary()
        t = rows_of(deduped_db)[1]
        columns.append((t.column("dup_group").to_pylist(), t.column("is_duplicate").to_pylist()))
    assert columns[0] == columns[1]
    assert sum(f is True for f in columns[0][1]) > 10


@pytest.mark.parametrize("kwargs", [{"eps": -0.1}, {"eps": 1.0}, {"eps": 0.01, "keep": "oldest"},
                                    {"eps": 0.01, "modality": "audio"},
                                    {"eps": 0.01, "device": "tpu"}])
def test_errors_leave_table_unchanged(deduped_db, kwargs):
    before = lance.dataset(f"{deduped_db}/embeddings.lance").version
    with pytest.raises(CuratorError):
        dedupe(db=deduped_db, **kwargs)
    assert lance.dataset(f"{deduped_db}/embeddings.lance").version == before


@pytest.mark.parametrize("streamed", [False, True])
def test_many_fragments_give_the_groups_of_one(tmp_path, planted, monkeypatch, streamed):
    """The same rows ingested as four fragments: the same groups and flags, by id, as the
    one-fragment table (each fragment is written by its own task from the members' marks).
    The four-fragment run spills its members a block of 64 table rows at a time: the
    scalars read by block and the seeded uniforms drawn by block must give the one-block
    answer."""
    from curator.engine import rowset as rowset_mod

    if streamed:
        monkeypatch.setattr(dedupe_mod, "IN_MEMORY_ROWS", 0)
    _, table, _ = planted
    one, many = str(tmp_path / "one.lancedb"), str(tmp_path / "many.lancedb")
    whole = str(tmp_path / "all.parquet")
    pq.write_table(table, whole)
    ingest([whole], db=one)
    cuts = np.linspace(0, table.num_rows, 5).astype(int)
    for a, b in zip(cuts[:-1], cuts[1:]):
        part = str(tmp_path / f"part{a}.parquet")
        pq.write_table(table.slice(a, b - a), part)
        ingest([part], db=many)
    assert len(lance.dataset(f"{many}/embeddings.lance").get_fragments()) >= 4
    found = {}
    for db in (one, many):
        if db == many:
            monkeypatch.setattr(rowset_mod, "_BLOCK_WORDS", 1)
        dedupe(db=db, eps=EPS, keep="random", seed=3)
        _, t = rows_of(db)
        ids = t.column("id").to_pylist()
        by_rowid = dict(zip(t.column("_rowid").to_pylist(), ids))
        groups = [None if g is None else by_rowid[g] for g in t.column("dup_group").to_pylist()]
        found[db] = dict(zip(ids, zip(groups, t.column("is_duplicate").to_pylist())))
    assert found[one] == found[many]
    assert sum(flag for _, flag in found[one].values()) > 0
