"""``curator cluster`` on N × 512 against a bare tuned Lance scan of the same vectors.

    python scripts/bench_cluster.py                         # 1M rows, k 100, 3 rounds
    python scripts/bench_cluster.py --compare-with /path/to/other/checkout
    python scripts/bench_cluster.py --faiss                 # + faiss k-means, if importable

The table is the one ``scripts/bench_scale.py`` builds (four .npy quarters, image/text ×
two halves, a double-ellipsoid with 1,000 concepts per modality), ingested with
``--no-score`` (clustering reads only the vectors) and kept in ``--workdir`` for later
runs. Each round runs, each in a fresh process: the bare Lance scan of the embedding
column (allocator tuned, storage 2.0), then ``curator cluster --k K --seed 0 --device D``
for every ``--devices`` entry, then the same command from ``--compare-with`` (another
checkout, e.g. the main branch, for a before/after in one run). Rounds interleave, so
load drift on a shared machine hits every command alike, and the command that goes first
rotates from round to round: whichever ran first in a round read its 200k-row training
sample slower (measured both ways round: 12.9 s against 9.3 s with either checkout first),
so use an even ``--repeat`` with ``--compare-with``. Reported: median wall seconds
of ``--repeat`` rounds (min–max), × the scan, CPU seconds (user + system of the
process, from ``/usr/bin/time``), and where the time went (cluster's own ``read``/``train``/
``assign`` seconds; "rest" = start-up, the row index, the column writes).

``--faiss``: in one process, on the image modality's training sample (200k rows), our
``spherical_kmeans`` against ``faiss.Kmeans(spherical=True, niter=25)`` (faiss-cpu,
not a dependency): seconds and inertia Σ(1 − cos) on the sample, median of the rounds.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
sys.path.insert(0, ROOT)

from bench_scale import RAW_SCAN, make_vectors  # noqa: E402


def run(cmd: list[str], pythonpath: str = ROOT) -> dict:
    """A command in a fresh process: wall seconds, CPU seconds (user + system, from
    ``/usr/bin/time`` where present, else NaN), stdout."""
    timer = ["/usr/bin/time", "-f", "__CPU__ %U %S"] if os.path.exists("/usr/bin/time") else []
    start = time.perf_counter()
    proc = subprocess.run([*timer, *cmd], capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": pythonpath}, cwd=pythonpath)
    wall = time.perf_counter() - start
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed: {proc.stderr[-2000:]}")
    lines = [x for x in proc.stderr.splitlines() if x.startswith("__CPU__")]
    cpu = sum(map(float, lines[-1].split()[1:])) if lines else float("nan")
    return {"seconds": wall, "cpu": cpu, "out": proc.stdout}


def build(workdir: str, rows: int) -> str:
    db = os.path.join(workdir, f"n{rows}", "db")
    if os.path.exists(os.path.join(db, "embeddings.lance")):
        print(f"reusing the table in {db}", file=sys.stderr)
        return db
    src = os.path.join(workdir, f"n{rows}", "src")
    files = make_vectors(src, rows)
    for path, modality in [files[0], files[2], files[1], files[3]]:
        run([sys.executable, "-m", "curator", "--db", db, "--quiet", "ingest", path,
             "--modality", modality, "--model", "synthetic-512", "--no-score"])
        print(f"ingested {os.path.basename(path)}", file=sys.stderr, flush=True)
    for path, _ in files:
        os.remove(path)
    return db


def faiss_round(db: str, k: int, seed: int = 0) -> dict:
    """Our k-means and faiss's on the image modality's training sample (same rows)."""
    import faiss

    from curator.curation.clusters import DEFAULT_SAMPLE
    from curator.engine.index import read_index
    from curator.engine.rows import take_vectors
    from curator.geometry.kmeans import spherical_kmeans, top_centroids, unit_rows
    from curator.store.database import Database

    dataset = Database(db).dataset("embeddings")
    index = read_index(dataset, samples=False)
    positions = np.flatnonzero(index.modality == index.names.index("image"))
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(positions, min(DEFAULT_SAMPLE, len(positions)), replace=False))
    U = unit_rows(take_vectors(dataset, index.rowid[chosen]), copy=False)

    def inertia(C):
        return float(len(U) - top_centroids(U, np.asarray(C, np.float32), 1)[1].sum(dtype=np.float64))

    t = time.perf_counter()
    ours, _ = spherical_kmeans(U, k, seed=seed)
    ours_s = time.perf_counter() - t
    km = faiss.Kmeans(U.shape[1], k, niter=25, spherical=True, seed=seed + 1,
                      max_points_per_centroid=len(U) // k + 1, verbose=False)
    t = time.perf_counter()
    km.train(U)
    faiss_s = time.perf_counter() - t
    return {"ours_s": ours_s, "ours_inertia": inertia(ours), "faiss_s": faiss_s,
            "faiss_inertia": inertia(km.centroids), "rows": len(U)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--devices", nargs="*", default=["cpu"])
    ap.add_argument("--workdir", default="/tmp/bench-cluster")
    ap.add_argument("--compare-with", help="another curator checkout, run the same way")
    ap.add_argument("--faiss", action="store_true")
    ap.add_argument("--json", help="also write the raw results here")
    args = ap.parse_args(argv)

    db = build(args.workdir, args.rows)
    lance_path = os.path.join(db, "embeddings.lance")
    commands = {f"curator cluster --device {d}": (ROOT, d) for d in args.devices}
    if args.compare_with:
        commands[f"cluster from {args.compare_with}"] = (os.path.abspath(args.compare_with), None)
    results = {"scan": [], **{name: [] for name in commands}, "faiss": []}
    for r in range(args.repeat):
        scan = run([sys.executable, "-c", RAW_SCAN, lance_path])
        scan["seconds"] = float(scan["out"].strip().splitlines()[-1])  # the scan alone
        results["scan"].append(scan)
        names = list(commands)
        shift = r % len(names)  # who goes first rotates: the first run of a round reads slower
        for name in names[shift:] + names[:shift]:
            path, device = commands[name]
            cmd = [sys.executable, "-m", "curator", "--db", db, "--quiet", "cluster", "--k",
                   str(args.k), "--seed", "0", "--json"] + (["--device", device] if device else [])
            res = run(cmd, path)
            res["report"] = json.loads(res.pop("out"))
            results[name].append(res)
            print(f"round {r + 1}: {name}: {res['seconds']:.1f} s (scan {scan['seconds']:.2f} s)",
                  file=sys.stderr, flush=True)
        if args.faiss:
            results["faiss"].append(faiss_round(db, args.k))
            print(f"round {r + 1}: faiss {results['faiss'][-1]}", file=sys.stderr, flush=True)

    base = statistics.median(x["seconds"] for x in results["scan"])
    med = lambda xs: statistics.median(xs)  # noqa: E731
    span = lambda xs: f"{min(xs):.2f}–{max(xs):.2f}"  # noqa: E731
    print(f"cluster --k {args.k} on {args.rows:,} × 512 (two modalities, 200k-row training "
          f"samples); median of {args.repeat} rounds (min–max)\n")
    print("| command | wall s | min–max | × bare scan | CPU s | read s | train s | assign s | rest s |")
    print("|---|---|---|---|---|---|---|---|---|")
    scans = [x["seconds"] for x in results["scan"]]
    print(f"| bare Lance scan of the vectors | {med(scans):.2f} | {span(scans)} | 1.0 | "
          f"{med([x['cpu'] for x in results['scan']]):.1f} (process) | | | | |")
    for name in commands:
        runs = results[name]
        walls = [x["seconds"] for x in runs]
        stage = {}
        for key in ("read_seconds", "train_seconds", "assign_seconds"):
            stage[key] = med([sum(m.get(key, 0.0) for m in x["report"]["modalities"].values())
                              for x in runs])
        rest = med([x["seconds"] - sum(m.get(key, 0.0) for m in x["report"]["modalities"].values()
                                       for key in stage) for x in runs])
        read = "–" if not stage["read_seconds"] else f"{stage['read_seconds']:.2f}"  # older: in train
        print(f"| {name} | {med(walls):.2f} | {span(walls)} | {med(walls) / base:.1f} | "
              f"{med([x['cpu'] for x in runs]):.1f} | {read} | "
              f"{stage['train_seconds']:.2f} | {stage['assign_seconds']:.2f} | {rest:.2f} |")
    if results["faiss"]:
        f = results["faiss"]
        print(f"\nk-means alone on {f[0]['rows']:,} unit rows, k {args.k} (one process):\n")
        print("| k-means | seconds | min–max | inertia Σ(1 − cos) |\n|---|---|---|---|")
        for who in ("ours", "faiss"):
            secs = [x[f"{who}_s"] for x in f]
            print(f"| {'curator spherical_kmeans' if who == 'ours' else 'faiss.Kmeans(spherical, 25 it)'}"
                  f" | {med(secs):.2f} | {span(secs)} | {med([x[f'{who}_inertia'] for x in f]):.1f} |")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
