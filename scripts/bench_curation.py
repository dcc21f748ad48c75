"""Benchmark: near-duplicate dedupe and cluster assignment on N × 512 synthetic rows.

One run: generates seeded clustered vectors with planted near duplicates (cosines spread
over [0.93, 0.9999]) and exact copies, ingests them, then, each phase in its own process
so peak RSS (resource.getrusage) is the phase's own:

- ``curator.dedupe`` (time, peak RSS, pairs), streaming from the table;
- a SemDeDup-style reference written here: all vectors in memory, k-means on a sample,
  assignment, exact pairwise cosine within each cluster (no multi-probe), threshold;
- pair recall of both against brute force on a 50k-row subset (all pairs within the
  subset, float32 exact; the subset holds many planted pairs plus random rows);
- ``curator.cluster`` (k concepts): training time and assignment throughput (rows/s),
  against a raw numpy matmul + argmax over the same vectors in memory.

Usage: python scripts/bench_curation.py --rows 1000000 [--eps 0.05] [--work /tmp/bench]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import numpy as np

D = 512


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def cpu_seconds() -> float:
    """CPU time of this process so far, all threads (the machine is shared: wall time is noisy)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


# -- data ---------------------------------------------------------------------------------

def generate(rows: int, folder: str, seed: int = 0, chunk: int = 100_000) -> str:
    """Parquet parts of clustered unit-ish vectors with planted duplicates; returns the
    path of the planted (duplicate, original) positions."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from curator.store.arrow import fixed_list

    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    concepts = 2000
    mean = rng.normal(size=D)
    mean *= 0.6 / np.linalg.norm(mean)  # shared offset: the modality's off-centre mean
    centres = rng.normal(size=(concepts, D))
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    planted = []
    for part, start in enumerate(range(0, rows, chunk)):
        n = min(chunk, rows - start)
        c = rng.integers(concepts, size=n)
        noise = rng.normal(size=(n, D)) * (0.9 / np.sqrt(D))
        X = (mean + centres[c] + noise).astype(np.float32)
        X *= rng.uniform(0.5, 2.0, size=(n, 1)).astype(np.float32)
        n_near, n_exact = int(0.02 * n), int(0.005 * n)
        src = rng.choice(n, n_near + n_exact, replace=False)
        dst = rng.choice(np.setdiff1d(np.arange(n), src), n_near + n_exact, replace=False)
        # near copies: cosine t to the original, t in [0.93, 0.9999]
        t = 1 - 10 ** rng.uniform(-4, np.log10(0.07), size=n_near)
        u = X[src[:n_near]] / np.linalg.norm(X[src[:n_near]], axis=1, keepdims=True)
        v = rng.normal(size=(n_near, D))
        v -= (v * u).sum(1, keepdims=True) * u
        v /= np.linalg.norm(v, axis=1, keepdims=True)
        X[dst[:n_near]] = (t[:, None] * u + np.sqrt(1 - t[:, None] ** 2) * v).astype(np.float32)
        X[dst[n_near:]] = X[src[n_near:]] * 1.25  # exact duplicates (same direction)
        planted.append(np.stack([start + dst, start + src], axis=1))
        ids = [f"r{start + i:07d}" for i in range(n)]
        pq.write_table(pa.table({"id": ids, "sample_id": ids, "modality": ["image"] * n,
                                 "embedding": fixed_list(X)}),
                       os.path.join(folder, f"part-{part:03d}.parquet"))
    path = os.path.join(folder, "planted.npy")
    np.save(path, np.concatenate(planted))
    return path


def ingest(folder: str, db: str) -> float:
    import glob

    import curator

    t = time.time()
    curator.ingest(sorted(glob.glob(os.path.join(folder, "part-*.parquet"))), db=db)
    return time.time() - t


def prepare(rows: int, src: str, db: str) -> dict:
    t = time.time()
    generate(rows, src)
    return {"generate_seconds": time.time() - t, "ingest_seconds": ingest(src, db)}


# -- phases (each run in its own process) --------------------------------------------------

def phase_dedupe(db: str, eps: float, out: str) -> dict:
    """curator.dedupe on the table; saves the pairs (as row numbers from ids)."""
    from curator.curation import dedupe as dedupe_mod
    from curator.store.database import Database

    saved = {}
    original = dedupe_mod.PairSpill.finish

    def keep_pairs(self):
        original(self)
        found = self.pairs()
        if "pairs" in saved:  # a second modality
            found = tuple(np.r_[a, b] for a, b in zip(saved["pairs"], found))
        saved["pairs"] = found

    dedupe_mod.PairSpill.finish = keep_pairs
    t = time.time()
    result = dedupe_mod.dedupe(db=db, eps=eps, keep="least-conformity")
    seconds = time.time() - t
    i, j, _ = saved["pairs"]
    rows = row_numbers(Database(db).dataset("embeddings"))
    np.save(out, np.stack([rows(i), rows(j)], axis=1))
    info = result.modalities["image"]
    return {"seconds": seconds, "cpu_seconds": cpu_seconds(), "peak_rss_mb": peak_rss_mb(),
            "pairs": info["pairs"],
            "groups": info["groups"], "flagged": info["duplicates"],
            "partitions": info["partitions"], "probes": info["probes"],
            "visits_per_row": info.get("visits_per_row"),
            "versions": [result.table_version_read, result.table_version]}


def row_numbers(dataset):
    """A function from row ids (``_rowid``, as dedupe's pairs give them) to row numbers
    (from the id rNNNNNNN)."""
    t = dataset.to_table(columns=["id"], with_row_id=True)
    rowid = t.column("_rowid").to_numpy().astype(np.int64)
    order = np.argsort(rowid, kind="stable")
    ids = np.asarray(t.column("id").to_pylist(), object)[order]
    numbers = np.fromiter((int(s[1:]) for s in ids), np.int64, len(ids))
    return lambda rowids: numbers[np.searchsorted(rowid[order], rowids)]


def load_matrix(db: str) -> tuple[np.ndarray, np.ndarray]:
    """All vectors in memory, (rows, row numbers): the reference's input."""
    from curator.store.arrow import vectors
    from curator.store.database import Database

    ds = Database(db).dataset("embeddings")
    n = ds.count_rows()
    X = np.empty((n, D), np.float32)
    rows = np.empty(n, np.int64)
    at = 0
    for batch in ds.to_batches(columns=["id", "embedding"], batch_size=65_536):
        V = vectors(batch)
        X[at:at + len(V)] = V
        rows[at:at + len(V)] = [int(s[1:]) for s in batch.column("id").to_pylist()]
        at += len(V)
    return X, rows


def phase_semdedup(db: str, eps: float, k: int, out: str) -> dict:
    """SemDeDup-style reference: k-means (numpy, random init, 8 iterations on a 40k·k… sample),
    every row to its nearest centroid, exact pairwise cosine within each cluster."""
    t0 = time.time()
    X, rows = load_matrix(db)
    t_load = time.time() - t0
    t = time.time()
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    rng = np.random.default_rng(0)
    sample = X[rng.choice(len(X), min(len(X), max(20_000, 40 * k)), replace=False)]
    C = sample[rng.choice(len(sample), k, replace=False)].copy()
    for _ in range(8):
        lab = np.concatenate([(sample[a:a + 8192] @ C.T).argmax(1) for a in range(0, len(sample), 8192)])
        for c in range(k):
            members = sample[lab == c]
            if len(members):
                s = members.sum(0)
                C[c] = s / np.linalg.norm(s)
    lab = np.concatenate([(X[a:a + 8192] @ C.T).argmax(1) for a in range(0, len(X), 8192)])
    order = np.argsort(lab, kind="stable")
    bounds = np.searchsorted(lab[order], np.arange(k + 1))
    pi, pj = [], []
    for c in range(k):
        idx = order[bounds[c]:bounds[c + 1]]
        if len(idx) < 2:
            continue
        G = X[idx] @ X[idx].T
        a, b = np.nonzero(np.triu(G >= 1 - eps - 1e-6, 1))
        pi.append(idx[a])
        pj.append(idx[b])
    i, j = np.concatenate(pi), np.concatenate(pj)
    seconds = time.time() - t
    np.save(out, np.stack([rows[i], rows[j]], axis=1))
    return {"seconds": seconds, "load_seconds": t_load, "cpu_seconds": cpu_seconds(),
            "peak_rss_mb": peak_rss_mb(), "pairs": len(i), "partitions": k}


def phase_cluster(db: str, k: int) -> dict:
    from curator.curation import clusters

    t = time.time()
    result = clusters.cluster(db=db, k=k, seed=0)
    r = result.modalities["image"]
    out = {"seconds": time.time() - t, "train_seconds": r["train_seconds"],
           "assign_seconds": r["assign_seconds"], "rows": r["rows"],
           "rows_per_s": r["rows"] / r["assign_seconds"], "peak_rss_mb": peak_rss_mb(),
           "mean_cosine": r["mean_cosine"], "cpu_seconds": cpu_seconds()}
    # raw baseline: the same centroids, in memory, one matmul + argmax per block
    C = clusters.CentroidStore(clusters.Database(db), "embeddings").latest()["image"][1]
    X, _ = load_matrix(db)
    t = time.time()
    for a in range(0, len(X), 8192):
        B = X[a:a + 8192]
        (B @ C.T).argmax(1)
    out["raw_rows_per_s"] = len(X) / (time.time() - t)
    return out


def phase_truth(folder: str, db: str, eps: float, subset: int, out: str) -> dict:
    """Brute-force pairs within a 50k subset: planted pairs' rows plus random rows."""
    X, rows = load_matrix(db)
    by_row = np.empty(len(rows), np.int64)
    by_row[rows] = np.arange(len(rows))
    planted = np.load(os.path.join(folder, "planted.npy"))
    rng = np.random.default_rng(1)
    chosen = planted[rng.choice(len(planted), min(len(planted), subset // 4), replace=False)].ravel()
    chosen = np.unique(chosen)
    rest = np.setdiff1d(rng.choice(len(rows), subset, replace=False), chosen)
    S = np.sort(np.r_[chosen, rest[:subset - len(chosen)]])
    U = X[by_row[S]]
    U /= np.linalg.norm(U, axis=1, keepdims=True)
    t = time.time()
    pi, pj = [], []
    for a in range(0, len(U), 4096):
        G = U[a:a + 4096] @ U[a:].T
        r, c = np.nonzero(G >= 1 - eps - 1e-6)
        keep = c > r
        pi.append(S[a + r[keep]])
        pj.append(S[a + c[keep]])
    np.save(out, np.stack([np.concatenate(pi), np.concatenate(pj)], axis=1))
    np.save(out + ".subset.npy", S)
    return {"seconds": time.time() - t, "subset": len(S), "pairs": int(sum(map(len, pi)))}


def recall(found_path: str, truth_path: str) -> float:
    truth = np.load(truth_path)
    S = np.load(truth_path + ".subset.npy")
    found = np.load(found_path)
    inside = np.isin(found[:, 0], S) & np.isin(found[:, 1], S)
    f = found[inside]
    key = lambda p: np.minimum(p[:, 0], p[:, 1]) * (1 << 32) + np.maximum(p[:, 0], p[:, 1])
    return float(np.isin(key(truth), key(f)).mean()) if len(truth) else float("nan")


def run_phase(args: list[str]) -> dict:
    env = dict(os.environ, MALLOC_ARENA_MAX="1", MALLOC_MMAP_MAX_="0",
               MALLOC_TRIM_THRESHOLD_="68719476736")
    proc = subprocess.run([sys.executable, __file__, "--phase", *args], capture_output=True,
                          text=True, env=env, check=False)
    if proc.returncode:
        sys.stderr.write(proc.stderr)
        raise SystemExit(f"phase {args[0]} failed")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--rows", type=int, default=1_000_000)
    p.add_argument("--eps", type=float, default=0.05)
    p.add_argument("--k", type=int, default=100, help="concept clusters for the cluster phase")
    p.add_argument("--subset", type=int, default=50_000)
    p.add_argument("--work", default="/tmp/curator-bench")
    p.add_argument("--phase", nargs="*")
    args = p.parse_args()
    from curator.store.database import tune_allocator

    tune_allocator()
    if args.phase:
        name, *rest = args.phase
        fn = {"prepare": lambda rows, src, db: prepare(int(rows), src, db),
              "dedupe": lambda db, eps, out: phase_dedupe(db, float(eps), out),
              "semdedup": lambda db, eps, k, out: phase_semdedup(db, float(eps), int(k), out),
              "cluster": lambda db, k: phase_cluster(db, int(k)),
              "truth": lambda folder, db, eps, subset, out: phase_truth(folder, db, float(eps),
                                                                        int(subset), out)}[name]
        print(json.dumps(fn(*rest)))
        return

    import shutil

    from curator.geometry.neighbours import auto_partitions

    work = os.path.join(args.work, str(args.rows))
    shutil.rmtree(work, ignore_errors=True)
    src, db = os.path.join(work, "src"), os.path.join(work, "db.lancedb")
    prep = run_phase(["prepare", str(args.rows), src, db])
    print(f"{args.rows:,} x {D} rows: generated in {prep['generate_seconds']:.1f} s, "
          f"ingested in {prep['ingest_seconds']:.1f} s (load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores)", flush=True)
    eps = str(args.eps)
    ours = run_phase(["dedupe", db, eps, os.path.join(work, "ours.npy")])
    print("curator.dedupe:", ours, flush=True)
    k = auto_partitions(args.rows)
    ref = run_phase(["semdedup", db, eps, str(k), os.path.join(work, "ref.npy")])
    print("semdedup reference:", ref, flush=True)
    truth = run_phase(["truth", src, db, eps, str(args.subset), os.path.join(work, "truth.npy")])
    print("brute force subset:", truth, flush=True)
    clus = run_phase(["cluster", db, str(args.k)])
    print("curator.cluster:", clus, flush=True)
    r_ours = recall(os.path.join(work, "ours.npy"), os.path.join(work, "truth.npy"))
    r_ref = recall(os.path.join(work, "ref.npy"), os.path.join(work, "truth.npy"))

    print()
    print(f"dedupe of {args.rows:,} x {D}, eps {args.eps} (cosine ≥ {1 - args.eps:g}), "
          f"2 cores; recall on a {truth['subset']:,}-row subset ({truth['pairs']:,} true pairs)")
    print(f"{'method':<34}{'wall s':>8}{'ratio':>7}{'CPU s':>8}{'ratio':>7}{'peak RSS MB':>13}"
          f"{'pairs':>11}{'recall':>9}")
    base = ref["seconds"] + ref["load_seconds"]
    rows = [("curator.dedupe (streamed, table)", ours["seconds"], ours["cpu_seconds"],
             ours["peak_rss_mb"], ours["pairs"], r_ours),
            ("SemDeDup-style, in memory", base, ref["cpu_seconds"], ref["peak_rss_mb"],
             ref["pairs"], r_ref)]
    for name, sec, cpu, rss, pairs, rec in rows:
        print(f"{name:<34}{sec:>8.1f}{sec / base:>7.2f}{cpu:>8.1f}{cpu / ref['cpu_seconds']:>7.2f}"
              f"{rss:>13.0f}{pairs:>11,}{rec:>9.4f}")
    print(f"  (reference time includes loading the vectors: {ref['load_seconds']:.1f} s; "
          f"curator: {ours['partitions']} partitions, {ours['probes']} probes, "
          f"{ours['visits_per_row']} visits/row; table v{ours['versions'][0]} → v{ours['versions'][1]})")
    print()
    print(f"cluster k={args.k}: trained in {clus['train_seconds']:.1f} s, whole command "
          f"{clus['seconds']:.1f} s, peak RSS {clus['peak_rss_mb']:.0f} MB")
    print(f"{'assignment':<34}{'rows/s':>12}{'ratio':>8}")
    print(f"{'curator (scan + assign)':<34}{clus['rows_per_s']:>12,.0f}"
          f"{clus['rows_per_s'] / clus['raw_rows_per_s']:>8.2f}")
    print(f"{'numpy matmul+argmax, in memory':<34}{clus['raw_rows_per_s']:>12,.0f}{1.0:>8.2f}")


if __name__ == "__main__":
    main()
