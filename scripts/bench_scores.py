"""Scoring at the machine's limits: ingest and refresh against the raw libraries, one run.

    python scripts/bench_scores.py [--rows 1000000] [--dim 512] [--repeat 3] [--dir bench-out/scores]
                                   [--compare-with OTHER_CHECKOUT]

Every stage runs in a fresh process (allocator fixed, imports not timed), in ``--repeat``
rounds: a round runs every stage once (order rotated per round), and each ratio is taken
between the stages of one round, reported as its median (min–max) over the rounds; times
are medians with min–max. Baselines, in the same rounds:

- **bare Lance write**: the same clip-retrieval arrays read with numpy and written by
  ``lance.write_dataset`` (storage 2.0), whole or streamed in 65,536-row batches from the
  memory-mapped files; each round's ratio takes the faster of the two — what ``curator
  ingest`` does beyond it is validation, statistics and every score;
- **bare scan + GEMV**: a tuned Lance scan of the vectors and the O(n·d) identity in
  numpy (X @ [U, m_img, m_txt]): the fastest honest way to get every row's conformity;
- **bare statistics pass**: the same arrays read with numpy, each modality's sums and
  Σ(x−c)(x−c)ᵀ (numpy's ``Zᵀ Z`` on 65,536-row blocks): what a one-commit ingest must do
  before any row's final scores exist, so "bare write + bare statistics" is the floor of
  ingest's two passes;
- **GEMM peak**: float32 matrix products on this machine; the whitening ``loglik`` needs
  is an n × d × d product, so "scan + whitening at peak" is the floor of a refresh. (curator
  multiplies by a triangular factor of the whitening, 62% of those multiply–adds at
  d = 512; the floor keeps the full product, the issue's definition, and the table also
  shows the triangular product at peak.)

With ``--compare-with``, ``curator ingest`` and ``curator refresh`` of every row also run
from another checkout (each child runs in its checkout's folder with it first on
``PYTHONPATH``, and checks which curator it imported; e.g. the code before a change, for
issue 11's "no slower than before, same run"), rounds interleaved with this checkout's,
each on a table that checkout made itself. Before 6 December 2026 the children ran in the
caller's folder, where ``python -c`` imports that folder's curator first: a comparison
started from this checkout's root ran this checkout on both sides.

Goals (issue 15): refresh of every row ≤ 1.5 × (scan + whitening at peak); the
conformity family alone (``refresh --columns`` without loglik) ≤ 2 × the scan; writing
the score columns ≤ 15 % of a refresh; ingest ≤ 1.5 × the bare write.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics

from benchlib import child, table, write_npy

from curator.geometry.backend import WHITE_COLUMNS

SETUP = "import curator, lance, numpy as np, pyarrow as pa; curator.tune_allocator()"
NO_LOGLIK = "conformity,conformity_est,uncertainty,alignment,alignment_centered,conformity_mismatch"


def layout(root: str, rows: int, dim: int) -> tuple[str, str]:
    """A clip-retrieval folder: rows/2 images and rows/2 captions, paired line by line."""
    os.makedirs(os.path.join(root, "img_emb"), exist_ok=True)
    os.makedirs(os.path.join(root, "text_emb"), exist_ok=True)
    img = os.path.join(root, "img_emb", "img_emb_0.npy")
    txt = os.path.join(root, "text_emb", "text_emb_0.npy")
    if not os.path.exists(img):
        write_npy(img, rows // 2, dim, seed=1)
        write_npy(txt, rows // 2, dim, seed=2)
    return img, txt


def extra(root: str, rows: int, dim: int) -> str:
    """A small off-distribution batch: ingesting it makes every row of the table stale."""
    import numpy as np

    if not os.path.exists(os.path.join(root, "img_emb")):
        os.makedirs(os.path.join(root, "img_emb"))
        os.makedirs(os.path.join(root, "text_emb"))
        rng = np.random.default_rng(9)
        np.save(os.path.join(root, "img_emb", "img_emb_0.npy"),
                (rng.normal(size=(rows, dim)) + 0.5).astype(np.float32))
        np.save(os.path.join(root, "text_emb", "text_emb_0.npy"),
                (rng.normal(size=(rows, dim)) - 0.5).astype(np.float32))
        import pyarrow as pa
        import pyarrow.parquet as pq

        os.makedirs(os.path.join(root, "metadata"))
        pq.write_table(pa.table({"key": [f"extra-{i}" for i in range(rows)]}),
                       os.path.join(root, "metadata", "metadata_0.parquet"))
    return root


def paired(n: int, run_a, run_b) -> tuple[dict, dict]:
    """``repeat`` for two variants with their rounds interleaved, the first of a round
    alternating (a b, b a, a b, ...), so that machine noise and any cost of going first
    in a round (``bench_cluster.py`` measured one) fall on both alike."""
    a, b = [], []
    for r in range(n):
        if r % 2:
            b.append(run_b())
            a.append(run_a())
        else:
            a.append(run_a())
            b.append(run_b())
    return _summary(a), _summary(b)


def rounds(n: int, stages: dict) -> dict[str, list[dict]]:
    """Each stage's results over ``n`` rounds; a round runs every stage once, in an order
    rotated by one per round, so that a slow spell of the machine (these machines have
    them: the same numpy pass took 6 s and 0.5 s in two runs) falls on a round's stages
    alike, and a ratio of two stages of one round compares like with like."""
    names = list(stages)
    out: dict[str, list[dict]] = {name: [] for name in names}
    for r in range(n):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(stages[name]())
    return out


def _summary(results: list[dict]) -> dict:
    """The median run (its phases and counts), with the median, min and max seconds and the
    largest peak RSS of all runs."""
    seconds = [r["seconds"] for r in results]
    out = dict(sorted(results, key=lambda r: r["seconds"])[len(results) // 2])
    out.update(median=statistics.median(seconds), low=min(seconds), high=max(seconds),
               peak_rss_mb=max(r["peak_rss_mb"] for r in results))
    return out


def fmt(r: dict) -> str:
    return f"{r['median']:.2f} ({r['low']:.2f}–{r['high']:.2f})"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--dir", default="bench-out/scores")
    ap.add_argument("--compare-with", metavar="CHECKOUT",
                    help="another curator checkout: its ingest and refresh run in the same rounds")
    ap.add_argument("--only-compare", action="store_true",
                    help="with --compare-with: run only the ingest and refresh comparison")
    args = ap.parse_args()
    args.dir = os.path.abspath(args.dir)  # children run in the checkout they measure
    os.makedirs(args.dir, exist_ok=True)
    src = os.path.join(args.dir, "clip")
    img, txt = layout(src, args.rows, args.dim)
    stale_batch = extra(os.path.join(args.dir, "extra"), 1000, args.dim)
    d = args.dim

    def path(name):
        p = os.path.join(args.dir, name)
        shutil.rmtree(p, ignore_errors=True)
        return p

    # The scored table, made stale by a small off-distribution batch; copied before each
    # refresh (made once, untimed, before the rounds).
    db = os.path.join(args.dir, "db")
    child(setup=SETUP, code=f"curator.ingest([{src!r}], db={path('db')!r})")
    child(setup=SETUP, code=f"curator.ingest([{stale_batch!r}], db={db!r})")
    stale = os.path.join(args.dir, "db-stale")
    shutil.rmtree(stale, ignore_errors=True)
    shutil.copytree(db, stale)

    def refresh(columns=None):
        work = path("db-refresh")
        shutil.copytree(stale, work)
        return child(setup=SETUP, code=f"RESULT = curator.refresh(db={work!r}, columns={columns!r}).to_dict()")

    if args.compare_with:
        compare(args, src, stale_batch, path, refresh)
        if args.only_compare:
            return
    stages = {
        "bare": lambda: child(setup=SETUP, code=f"""
X = np.concatenate([np.load({img!r}), np.load({txt!r})])
n = len(X) // 2
t = pa.table({{"id": pa.array([f"r{{i}}" for i in range(len(X))]),
               "modality": pa.array(["image"] * n + ["text"] * n),
               "embedding": pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), {d})}})
lance.write_dataset(t, {path("bare")!r}, data_storage_version="2.0", max_rows_per_file=1 << 20)
"""),
        "ingest": lambda: child(
            setup=SETUP, code=f"RESULT = curator.ingest([{src!r}], db={path('db-ingest')!r}).to_dict()"),
        "bulk": lambda: child(
            setup=SETUP, code=f"RESULT = curator.ingest([{src!r}], db={path('db-bulk')!r}, score=False).to_dict()"),
        "bare_stream": lambda: child(setup=SETUP, code=f"""
schema = pa.schema([("id", pa.string()), ("modality", pa.string()),
                    ("embedding", pa.list_(pa.float32(), {d}))])
def batches():
    start = 0
    for source, name in (({img!r}, "image"), ({txt!r}, "text")):
        V = np.load(source, mmap_mode="r")
        for a in range(0, len(V), 65536):
            X = np.ascontiguousarray(V[a:a + 65536])
            yield pa.record_batch([pa.array([f"r{{i}}" for i in range(start, start + len(X))]),
                                   pa.array([name] * len(X)),
                                   pa.FixedSizeListArray.from_arrays(pa.array(X.reshape(-1)), {d})],
                                  schema=schema)
            start += len(X)
lance.write_dataset(pa.RecordBatchReader.from_batches(schema, batches()), {path("bare-stream")!r},
                    data_storage_version="2.0", max_rows_per_file=1 << 20)
"""),
        "stats": lambda: child(setup=SETUP, code=f"""
for source in ({img!r}, {txt!r}):  # each modality: its sums and Σ(x−c)(x−c)ᵀ, c its first rows' mean
    V = np.load(source, mmap_mode="r")  # read block by block (a whole load page-faults 1 GB)
    c = V[:1000].mean(axis=0)
    S, Q = np.zeros({d}), np.zeros(({d}, {d}))
    for a in range(0, len(V), 65536):
        S += V[a:a + 65536].sum(axis=0, dtype=np.float64)
        Z = V[a:a + 65536] - c
        Q += Z.T @ Z
"""),
        "full": refresh,
        "family": lambda: refresh(NO_LOGLIK),
        "scan": lambda: child(setup=SETUP, code=f"""
ds = lance.dataset({stale!r} + "/embeddings.lance")
M = np.random.default_rng(0).normal(size=({d}, 3)).astype(np.float32)
s = 0.0
for batch in ds.to_batches(columns=["embedding"], batch_size=16384):
    X = batch.column(0).values.to_numpy(zero_copy_only=True).reshape(-1, {d})
    s += float((X @ M).sum())
"""),
        "only_scan": lambda: child(setup=SETUP, code=f"""
ds = lance.dataset({stale!r} + "/embeddings.lance")
s = 0
for batch in ds.to_batches(columns=["embedding"], batch_size=16384):
    s += batch.num_rows
"""),
        "gemm": lambda: child(setup=SETUP, code=f"""
import time
A = np.random.default_rng(0).standard_normal((65536, {d}), dtype=np.float32)
W = np.random.default_rng(1).standard_normal(({d}, {d}), dtype=np.float32)
A @ W
best = 0.0
for _ in range(5):
    t0 = time.perf_counter(); A @ W; best = max(best, 2 * A.shape[0] * {d} * {d} / (time.perf_counter() - t0))
RESULT = {{"gflops": best / 1e9}}
"""),
        "white": lambda: child(setup=SETUP, code=f"""
from curator.geometry.whitening import Whitening
X = np.concatenate([np.load({img!r}), np.load({txt!r})])
w = Whitening.from_covariance(X[:50000].mean(0).astype(np.float64), np.cov(X[:50000].T))
import time
t0 = time.perf_counter()
for s in range(0, len(X), 65536):
    w.loglik(X[s:s + 65536])
RESULT = {{"whitening_seconds": time.perf_counter() - t0}}
"""),
    }
    runs = rounds(args.repeat, stages)
    n = args.rows + 2000
    for r in runs["white"]:  # the product alone, without loading the arrays
        r["seconds"] = r["whitening_seconds"]
    at_peak = [2.0 * n * d * d / (g["gflops"] * 1e9) for g in runs["gemm"]]
    # The bare write of a round: the faster of its two ways (whole arrays, streamed).
    bare = [min(a["seconds"], b["seconds"]) for a, b in zip(runs["bare"], runs["bare_stream"])]
    per_round = {  # each ratio from the stages of one round, then its median over rounds
        "ingest": [a["seconds"] / b for a, b in zip(runs["ingest"], bare)],
        "bulk": [a["seconds"] / b for a, b in zip(runs["bulk"], bare)],
        "two_pass": [a["seconds"] / (b + c["seconds"])
                     for a, b, c in zip(runs["ingest"], bare, runs["stats"])],
        "white": [a["seconds"] / p for a, p in zip(runs["white"], at_peak)],
        "full": [a["seconds"] / (b["seconds"] + p) for a, b, p in zip(runs["full"], runs["scan"], at_peak)],
        "family": [a["seconds"] / b["seconds"] for a, b in zip(runs["family"], runs["scan"])],
    }
    med = {name: _summary(results) for name, results in runs.items()}
    full, family = med["full"], med["family"]
    peak = statistics.median(g["gflops"] for g in runs["gemm"])
    tri_share = sum((d - c) * min(WHITE_COLUMNS, d - c) for c in range(0, d, WHITE_COLUMNS)) / d ** 2
    write_share = [r["phases"].get("write", 0) / r["seconds"] for r in runs["full"]]

    def ratio(name):
        values = per_round[name]
        return f"{statistics.median(values):.3g} ({min(values):.3g}–{max(values):.3g})"

    rows = [
        {"stage": "bare Lance write (numpy read + write_dataset 2.0)", "seconds": fmt(med["bare"])},
        {"stage": "bare Lance write, streamed (65,536-row batches of the memory-mapped arrays)",
         "seconds": fmt(med["bare_stream"])},
        {"stage": "curator ingest (validation, statistics, every score, one commit)",
         "seconds": fmt(med["ingest"]), "vs": "bare write (the faster)", "ratio": ratio("ingest"),
         "goal": "≤ 1.5", "peak_rss_mb": med["ingest"]["peak_rss_mb"]},
        {"stage": "curator ingest --no-score", "seconds": fmt(med["bulk"]), "vs": "bare write (the faster)",
         "ratio": ratio("bulk"), "peak_rss_mb": med["bulk"]["peak_rss_mb"]},
        {"stage": "bare statistics pass (memory-mapped numpy read, sums, Σ(x−c)(x−c)ᵀ; 65,536-row blocks)",
         "seconds": fmt(med["stats"])},
        {"stage": "curator ingest, against its two passes done bare", "seconds": fmt(med["ingest"]),
         "vs": "bare write + bare statistics", "ratio": ratio("two_pass")},
        {"stage": "bare tuned Lance scan of the vectors", "seconds": fmt(med["only_scan"])},
        {"stage": "bare scan + GEMV (X @ [U, m_img, m_txt])", "seconds": fmt(med["scan"])},
        {"stage": f"GEMM peak (float32, measured): {peak:.0f} GFLOP/s "
                  f"({min(g['gflops'] for g in runs['gemm']):.0f}–{max(g['gflops'] for g in runs['gemm']):.0f}); "
                  f"whitening of {n:,} rows at peak", "seconds": f"{statistics.median(at_peak):.2f}"},
        {"stage": f"  the triangular product curator runs ({tri_share:.0%} of those multiply-adds) "
                  "at peak", "seconds": f"{tri_share * statistics.median(at_peak):.2f}"},
        {"stage": "whitening product alone (Whitening.loglik, numpy)", "seconds": fmt(med["white"]),
         "vs": "full product at peak", "ratio": ratio("white")},
        {"stage": f"curator refresh of every row ({full['rows']:,})", "seconds": fmt(full),
         "vs": "scan+GEMV + whitening at peak", "ratio": ratio("full"), "goal": "≤ 1.5",
         "peak_rss_mb": full["peak_rss_mb"]},
        {"stage": "refresh, conformity family (no loglik)", "seconds": fmt(family),
         "vs": "scan+GEMV", "ratio": ratio("family"), "goal": "≤ 2",
         "peak_rss_mb": family["peak_rss_mb"]},
        {"stage": "  of which writing the nine score columns", "seconds": f"{full['phases'].get('write', 0):.2f}",
         "vs": "refresh", "ratio": f"{statistics.median(write_share):.3g} "
                                   f"({min(write_share):.3g}–{max(write_share):.3g})", "goal": "≤ 0.15"},
    ]
    print(f"{n:,} rows x {d} (half image, half text, paired); {args.repeat} rounds, each running "
          "every stage once in a fresh process (order rotated per round); seconds: medians "
          "(min–max); ratios: each round's ratio of its own stages, median (min–max) over rounds")
    print(table(rows, ["stage", "seconds", "vs", "ratio", "goal", "peak_rss_mb"]))
    print("refresh phases (s, the median run):", full["phases"])
    print("conformity-family phases (s, the median run):", family["phases"])
    print("ingest phases (the median run):", med["ingest"].get("phases"))


def compare(args, src: str, stale_batch: str, path, refresh) -> None:
    """This checkout against ``args.compare_with``: ingest (with scores) and refresh of
    every row of a table made stale by a small off-distribution batch, interleaved."""
    other = os.path.abspath(args.compare_with)

    def other_refresh():
        work = path("db-other-refresh")
        shutil.copytree(other_stale, work)
        return child(setup=SETUP, checkout=other, code=f"RESULT = curator.refresh(db={work!r}).to_dict()")

    ingest_here, ingest_other = paired(args.repeat, lambda: child(
        setup=SETUP, code=f"RESULT = curator.ingest([{src!r}], db={path('db-cmp')!r}).to_dict()"),
        lambda: child(setup=SETUP, checkout=other,
                      code=f"RESULT = curator.ingest([{src!r}], db={path('db-other')!r}).to_dict()"))
    other_db = os.path.join(args.dir, "db-other")
    child(setup=SETUP, checkout=other, code=f"curator.ingest([{stale_batch!r}], db={other_db!r})")
    other_stale = os.path.join(args.dir, "db-other-stale")
    shutil.rmtree(other_stale, ignore_errors=True)
    shutil.copytree(other_db, other_stale)
    refresh_here, refresh_other = paired(args.repeat, refresh, other_refresh)
    rows = []
    for stage, here, there in (("curator ingest (every score)", ingest_here, ingest_other),
                               ("curator refresh of every row", refresh_here, refresh_other)):
        rows.append({"stage": stage, "this checkout": fmt(here), "other": fmt(there),
                     "ratio": here["median"] / there["median"],
                     "rss this / other (MB)": f"{here['peak_rss_mb']:.0f} / {there['peak_rss_mb']:.0f}"})
    print(f"this checkout vs {other}, {args.rows + 2000:,} rows x {args.dim}, rounds interleaved, "
          f"medians of {args.repeat} (min–max); ratio < 1.10 = within 10%")
    print(table(rows, ["stage", "this checkout", "other", "ratio", "rss this / other (MB)"]))
    print(flush=True)


if __name__ == "__main__":
    main()
