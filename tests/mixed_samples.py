"""A table with every kind of sample an export or a rebalance must handle, and oracles.

Built from ``make_pairs`` (multi-caption samples, planted near-duplicate images in other
samples), then edited so that it also holds:

- text-only samples (their image dropped) and image-only samples (their captions dropped);
- duplicates inside a sample: a second caption that is a near copy of the first, and a
  second image row that is a near copy of the image;
- rows without a sample id (each its own sample);
- a metadata column ``url`` set on image rows only (null on captions), beside the
  synthetic ``caption`` (text on captions, "" on images) and ``concept`` (on both).

The oracles read a snapshot of the table (Lance ``to_table`` at one version) with DuckDB,
using the tests' own constant SQL.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter

import duckdb
import lance
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from curator.store.arrow import fixed_list
from curator.synthetic import make_pairs

TEXT_ONLY = [f"s{s:06d}" for s in range(10, 30)]
IMAGE_ONLY = [f"s{s:06d}" for s in range(30, 50)]
CAPTION_COPY = [f"s{s:06d}" for s in range(50, 60)]
IMAGE_COPY = [f"s{s:06d}" for s in range(60, 65)]
NO_SAMPLE = [f"s{s:06d}" for s in range(70, 75)]


def mixed_table(samples: int = 300, dim: int = 32, seed: int = 11) -> pa.Table:
    data = make_pairs(samples=samples, dim=dim, concepts=6, seed=seed, duplicates=0.05,
                      max_captions=4)
    rng = np.random.default_rng(seed)
    ids = list(data.ids)
    sids = list(data.sample_ids)
    mods = list(data.modality)
    vecs = list(data.vectors)
    concept = list(data.concept)
    caption = list(data.caption)
    keep = [not ((s in TEXT_ONLY and m == "image") or (s in IMAGE_ONLY and m == "text"))
            for s, m in zip(sids, mods)]
    rows = [i for i, k in enumerate(keep) if k]
    extra = []
    for s in CAPTION_COPY + IMAGE_COPY:
        modality = "text" if s in CAPTION_COPY else "image"
        first = next(i for i in rows if sids[i] == s and mods[i] == modality)
        v = vecs[first].astype(np.float64)
        noise = rng.normal(size=len(v))
        copy = v + noise / np.linalg.norm(noise) * np.linalg.norm(v) * 1e-4
        extra.append((f"{ids[first]}-copy", s, modality, copy.astype(np.float32), concept[first],
                      caption[first]))
    out_ids = [ids[i] for i in rows] + [e[0] for e in extra]
    out_sids = [None if sids[i] in NO_SAMPLE else sids[i] for i in rows] + [e[1] for e in extra]
    out_mods = [mods[i] for i in rows] + [e[2] for e in extra]
    out_vecs = np.vstack([vecs[i] for i in rows] + [e[3] for e in extra]).astype(np.float32)
    out_concept = [int(concept[i]) for i in rows] + [int(e[4]) for e in extra]
    out_caption = [caption[i] for i in rows] + [e[5] for e in extra]
    url = [f"https://img.example/{i}.jpg" if m == "image" else None for i, m in zip(out_ids, out_mods)]
    return pa.table({
        "id": pa.array(out_ids, pa.string()),
        "sample_id": pa.array(out_sids, pa.string()),
        "modality": pa.array(out_mods, pa.string()),
        "embedding": fixed_list(out_vecs),
        "concept": pa.array(out_concept, pa.int32()),
        "caption": pa.array(out_caption, pa.string()),
        "url": pa.array(url, pa.string()),
    })


def build(tmp_path, *, curate: bool = True) -> str:
    """Ingest the mixed table in two parts; with ``curate``, cluster, dedupe and rebalance
    (per sample, cap 12, among the non-duplicates)."""
    from curator import cluster, dedupe, ingest, rebalance

    table = mixed_table()
    half = table.num_rows // 2
    db = str(tmp_path / "mixed.lancedb")
    for k, part in enumerate((table.slice(0, half), table.slice(half))):
        path = tmp_path / f"mixed-{k}.parquet"
        pq.write_table(part, path)
        ingest([str(path)], db=db)
    if curate:
        cluster(db=db, k=5, seed=2)
        dedupe(db=db, eps=0.002, seed=0)
        rebalance(db=db, cap=12, by="cluster", seed=4, where="not coalesce(is_duplicate, false)")
    return db


def snapshot(db: str, version: int | None = None) -> pa.Table:
    return lance.dataset(f"{db}/embeddings.lance", version=version).to_table()


def oracle(snap: pa.Table, where: str, query: str) -> pa.Table:
    """Run ``query`` over the view ``m`` (the snapshot with ``hit``: the predicate, null as
    false) with DuckDB."""
    con = duckdb.connect()
    con.register("snap", snap)
    con.execute(f"CREATE VIEW m AS SELECT *, coalesce(({where}), false) AS hit FROM snap")
    return con.sql(query).to_arrow_table()


ROWS = "SELECT id FROM m WHERE hit"
SAMPLES = """
WITH s AS (
  SELECT sample_id,
         bool_or(modality = 'image') AS has_image, bool_or(modality = 'image' AND hit) AS image_hit,
         bool_or(modality <> 'image') AS has_caption, bool_or(modality <> 'image' AND hit) AS caption_hit
  FROM m WHERE sample_id IS NOT NULL GROUP BY sample_id)
SELECT m.id FROM m LEFT JOIN s USING (sample_id)
WHERE m.hit AND (m.sample_id IS NULL OR ((NOT s.has_image OR s.image_hit)
                                         AND (NOT s.has_caption OR s.caption_hit)))
"""
PAIRS = """
SELECT t.sample_id, i.id AS image_id, t.id AS text_id
FROM m t JOIN m i ON t.sample_id = i.sample_id
WHERE t.modality = 'text' AND i.modality = 'image' AND t.hit AND i.hit
"""


def counts_of(snap: pa.Table, ids) -> dict:
    """Per modality: rows and distinct samples (a row without a sample is one) of ``ids``."""
    chosen = set(ids)
    out: dict = {}
    for i, s, m in zip(*(snap.column(c).to_pylist() for c in ("id", "sample_id", "modality"))):
        if i in chosen:
            entry = out.setdefault(m, {"rows": 0, "samples": set()})
            entry["rows"] += 1
            entry["samples"].add(s if s is not None else ("row", i))
    return {m: {"rows": e["rows"], "samples": len(e["samples"])} for m, e in sorted(out.items())}


def uniform(seed: int, row_id: str) -> float:
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return (int.from_bytes(digest, "little") >> 11) / 2.0 ** 53


def expected(snap: pa.Table, *, cap: int, by: str, seed: int, where: str | None = None,
             modality: str = "image", bins: int | None = None):
    """The documented rule, written out: per row, the value rebalance must write; and the
    groups {(modality, group): (before, after)} counted in samples."""
    hit = dict(zip(*(oracle(snap, where or "true", "SELECT id, hit FROM m").column(c).to_pylist()
                     for c in ("id", "hit"))))
    rows = snap.drop_columns(["embedding"]).to_pylist()
    unit = lambda r: r["sample_id"] if r["sample_id"] is not None else ("row", r["id"])
    deciding: dict = {}
    for r in sorted((r for r in rows if r["modality"] == modality and hit[r["id"]]), key=lambda r: r["id"]):
        deciding.setdefault(unit(r), r)
    key = {u: r[by] for u, r in deciding.items()}
    if bins:
        values = [v for v in key.values() if v is not None and not math.isnan(v)]
        lo, hi = min(values), max(values)
        key = {u: None if v is None or math.isnan(v) else
               (min(int((v - lo) / (hi - lo) * bins), bins - 1) if hi > lo else 0)
               for u, v in key.items()}
    counts = Counter(key.values())
    keep = {u: uniform(seed, r["id"]) < min(1.0, cap / counts[key[u]]) for u, r in deciding.items()}
    values = {r["id"]: bool(hit[r["id"]] and keep.get(unit(r), False)) for r in rows}
    groups = {(modality, g): (c, sum(keep[u] for u in key if key[u] == g)) for g, c in counts.items()}
    units = {unit(r) for r in rows}
    return values, groups, len(units) - len(deciding)
