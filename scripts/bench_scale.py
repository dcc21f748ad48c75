"""The whole pipeline at scale: time and peak RSS of every stage, in its own process.

For each size N (default 1M, then 5M if ``--sizes`` says so) × 512: seeded vectors with
a double-ellipsoid shape are written in chunks to four .npy files (image/text, two
halves each), then every stage runs as its own ``curator`` subprocess, so each stage's
peak RSS is its own (``os.wait4`` rusage): ingest ×4 (the second halves make the first
halves stale), refresh, cluster, dedupe, rebalance, export, report, verify, optimize.
The baseline is the fastest raw-library way to touch every vector once in the same
run: one Lance scan of the embedding column (allocator tuned), in its own process.

Also, ``--fragments K``: K small ingests (fragments), query time before/after optimize.

Stages after the ingests, by name: ``baseline`` (the raw scan), ``refresh``, ``cluster``,
``dedupe``, ``rebalance``, ``export``, ``report``, ``verify``, ``optimize`` (these nine,
in this order, are the default), and two more that run only when named:
``extra-ingest`` ingests one fixed-size batch of ``--extra-rows`` image rows (default
1.25M, the quarter of a 5M run; seed ``--extra-seed``, default 7; file ``ima_c.npy``,
so its ids are new) into the big table, and ``refresh-after`` refreshes after it.

``--stages a,b,c`` runs only those stages, in the order given (``--only`` is the older
form: a filter of the default stages, the baseline always run). ``--existing-db PATH``
skips generating and ingesting and runs the stages on a table already built (e.g. one
kept by ``--keep``); the table's row count stands for N (``rebalance --cap`` is N/400),
its dimension comes from the table, scratch (export, report, the extra batch) goes to
``WORKDIR/existing`` and is removed after unless ``--keep``. The table itself is never
removed, but ``extra-ingest`` adds its rows to it and every stage writes its columns.

    python scripts/bench_scale.py --sizes 1000000 --workdir /work/scale
    python scripts/bench_scale.py --sizes 1000000 5000000 --workdir /work/scale
    python scripts/bench_scale.py --fragments 1000 --workdir /tmp/frag
    # the later stages of the 20M × 64 run, on the table its --keep left:
    python scripts/bench_scale.py --existing-db /work/scale64/n20000000/db.lancedb \\
        --stages rebalance,export,report,verify,extra-ingest,refresh-after --json rest20m.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time

import numpy as np

DIM = 512
CHUNK = 250_000
GOAL_RSS = 2_000_000_000  # bytes: the goal is 2 GB, decimal
BASELINE = "raw Lance scan (baseline)"
DEFAULT_STAGES = ["baseline", "refresh", "cluster", "dedupe", "rebalance", "export", "report",
                  "verify", "optimize"]
STAGES = DEFAULT_STAGES + ["extra-ingest", "refresh-after"]
EXTRA_ROWS = 1_250_000  # the extra batch: one quarter of a 5M run
EXTRA_SEED = 7

RAW_SCAN = """
import sys, time
from curator.store.database import tune_allocator
tune_allocator()
import lance
ds = lance.dataset(sys.argv[1])
t = time.perf_counter(); total = 0.0
for b in ds.to_batches(columns=["embedding"], batch_size=16384):
    v = b.column(0).values.to_numpy(zero_copy_only=False)
    total += float(v[:1].sum())
print(time.perf_counter() - t)
"""


def make_vectors(folder: str, n: int, seed: int = 0, dim: int = DIM,
                 limit: int | None = None) -> list[tuple[str, str]]:
    """Four .npy files (image/text × two halves) of a double-ellipsoid, written in chunks.

    ``limit``: stop after that many files (the first ones are the same as without it)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    files = []
    quarter = n // 4
    for modality in ("image", "text"):
        mean = rng.normal(size=dim).astype(np.float32) * 0.6
        scales = (np.geomspace(1.0, 0.05, dim) * 0.5).astype(np.float32)
        rotation, _ = np.linalg.qr(rng.normal(size=(dim, dim)))
        basis = (rotation * scales).astype(np.float32)
        concepts = rng.normal(size=(1000, dim)).astype(np.float32)
        for half in ("a", "b"):
            path = os.path.join(folder, f"{modality[:3]}_{half}.npy")
            out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(quarter, dim))
            for start in range(0, quarter, CHUNK):
                k = min(CHUNK, quarter - start)
                z = concepts[rng.integers(0, 1000, k)] + 0.5 * rng.standard_normal((k, dim), np.float32)
                out[start:start + k] = mean + z @ basis.T
            out.flush()
            del out
            files.append((path, modality))
            if limit is not None and len(files) >= limit:
                return files
    return files


def run_stage(db: str, args: list[str]) -> dict:
    """One curator command in its own process: wall time, peak RSS, exit status.

    Peak RSS comes from ``/usr/bin/time`` (a fresh, small parent): a child forked from
    this process would inherit this process's high-water mark in ``ru_maxrss``.
    """
    cmd = ["/usr/bin/time", "-f", "__RSS_KB__ %M", sys.executable, "-m", "curator", "--db", db,
           "--quiet", *args]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    lines = proc.stderr.strip().splitlines()
    rss = next((int(ln.split()[1]) * 1024 for ln in reversed(lines) if ln.startswith("__RSS_KB__")), 0)
    errors = [ln for ln in lines if not ln.startswith("__RSS_KB__") and not ln.startswith("Command exited")]
    return {"seconds": wall, "rss": rss, "ok": proc.returncode == 0,
            "error": errors[-1] if proc.returncode and errors else "", "out": proc.stdout[-400:]}


def raw_scan(db: str) -> float:
    out = subprocess.run([sys.executable, "-c", RAW_SCAN, os.path.join(db, "embeddings.lance")],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def pipeline(n: int, workdir: str, keep: bool = False, dim: int = DIM,
             only: list[str] | None = None, stages: list[str] | None = None,
             extra_rows: int = EXTRA_ROWS, extra_seed: int = EXTRA_SEED) -> dict:
    root = os.path.join(workdir, f"n{n}")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    db = os.path.join(root, "db.lancedb")
    results = {}
    t = time.perf_counter()
    files = make_vectors(os.path.join(root, "src"), n, dim=dim)
    results["generate (numpy)"] = {"seconds": time.perf_counter() - t, "rss": 0, "ok": True}
    order = [files[0], files[2], files[1], files[3]]  # img_a, txt_a, img_b, txt_b
    for k, (path, modality) in enumerate(order):
        results[f"ingest {os.path.basename(path)}"] = run_stage(
            db, ["ingest", path, "--modality", modality, "--model", f"synthetic-{dim}"])
        _progress(n, results)
    shutil.rmtree(os.path.join(root, "src"), ignore_errors=True)  # disk: the table holds them now
    if stages is None:
        stages = ["baseline"] + [s for s in DEFAULT_STAGES[1:] if not only or s in only]
    run_stages(db, root, n, stages, results, dim=dim, extra_rows=extra_rows, extra_seed=extra_seed)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return results


def existing(db: str, workdir: str, stages: list[str], keep: bool = False,
             extra_rows: int = EXTRA_ROWS, extra_seed: int = EXTRA_SEED) -> tuple[int, dict]:
    """The stages on a table already built: (its row count before them, the results)."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from curator.store.database import Database

    database = Database(db)
    n = database.dataset("embeddings").count_rows()
    dim = database.table_meta("embeddings").dim
    root = os.path.join(workdir, "existing")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    results = {}
    run_stages(db, root, n, stages, results, dim=dim, extra_rows=extra_rows, extra_seed=extra_seed)
    if not keep:
        shutil.rmtree(root, ignore_errors=True)
    return n, results


def run_stages(db: str, root: str, n: int, names: list[str], results: dict, dim: int = DIM,
               extra_rows: int = EXTRA_ROWS, extra_seed: int = EXTRA_SEED) -> None:
    """The named stages, in order, on the table of ``n`` rows; outputs go under ``root``."""
    commands = {
        "refresh": ["refresh"],
        "cluster": ["cluster", "--k", "100", "--seed", "0"],
        "dedupe": ["dedupe", "--eps", "0.01"],
        "rebalance": ["rebalance", "--cap", str(max(n // 400, 1)), "--seed", "0"],
        "export": ["export", "--out", os.path.join(root, "export"), "--where", "rebalance_keep",
                   "--format", "parquet", "--overwrite"],
        "report": ["report", "--out", os.path.join(root, "report")],
        "verify": ["verify"],
        "optimize": ["optimize"],
    }
    for name in names:
        if name == "baseline":
            results[BASELINE] = {"seconds": raw_scan(db), "rss": 0, "ok": True}
            continue
        if name == "extra-ingest":
            # the first image quarter of a 4 × extra_rows run of seed extra_seed, renamed so
            # that its ids (file stem and row) are new to the table
            src = os.path.join(root, "extra")
            t = time.perf_counter()
            path, modality = make_vectors(src, 4 * extra_rows, seed=extra_seed, dim=dim, limit=1)[0]
            os.rename(path, path := os.path.join(src, "ima_c.npy"))
            results["generate extra (numpy)"] = {"seconds": time.perf_counter() - t, "rss": 0, "ok": True}
            name = f"ingest {extra_rows / 1e6:g}M into {n / 1e6:g}M"
            results[name] = run_stage(db, ["ingest", path, "--modality", modality, "--model", f"synthetic-{dim}"])
            shutil.rmtree(src, ignore_errors=True)
        elif name == "refresh-after":
            results["refresh after"] = run_stage(db, ["refresh"])
        else:
            results[name] = run_stage(db, commands[name])
        _progress(n, results)


def _stage_list(text: str) -> list[str]:
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [s for s in names if s not in STAGES]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown stage(s) {unknown}; choose from {','.join(STAGES)}")
    return names


def _progress(n, results):
    name, r = list(results.items())[-1]
    status = "ok" if r["ok"] else f"FAILED: {r.get('error', '')}"
    print(f"[{n:,}] {name}: {r['seconds']:.1f} s, {r['rss'] / 2**30:.2f} GiB, {status}", file=sys.stderr, flush=True)


def table(all_results: dict[int, dict]) -> str:
    sizes = sorted(all_results)
    label = {n: f"{n / 1e6:g}M" for n in sizes}
    head = "| stage | " + " | ".join(f"{label[n]} time (s) | {label[n]} peak RSS (GiB) | {label[n]} × raw scan"
                                       for n in sizes)
    if len(sizes) == 2:
        head += f" | {label[sizes[1]]}/{label[sizes[0]]} time"
    lines = [head + " |", "|" + "---|" * (1 + 3 * len(sizes) + (len(sizes) == 2))]
    names = list(all_results[sizes[0]])
    for name in names:
        cells = []
        for n in sizes:
            r = all_results[n].get(name)
            base = all_results[n].get(BASELINE, {}).get("seconds")
            if r is None:
                cells += ["–", "–", "–"]
                continue
            flag = "" if r["ok"] else " (failed)"
            over = " ⚠" if r["rss"] > GOAL_RSS else ""
            cells += [f"{r['seconds']:.1f}{flag}", f"{r['rss'] / 2**30:.2f}{over}" if r["rss"] else "–",
                      f"{r['seconds'] / base:.0f}×" if base else "–"]
        if len(sizes) == 2:
            a, b = all_results[sizes[0]].get(name), all_results[sizes[1]].get(name)
            cells.append(f"{b['seconds'] / a['seconds']:.2f}" if a and b else "–")
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def fragments(k: int, workdir: str, rows: int = 100, score: bool = True) -> str:
    """K small ingests, then the time of a scalar query and a vector scan before/after optimize.

    ``score=False`` ingests without scoring (one refresh at the end), which only makes the
    K ingests cheaper: the fragments left are the same."""
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from curator import ingest
    from curator.io.query import query
    from curator.maintenance.optimize import optimize
    from curator.store.database import Database, tune_allocator

    tune_allocator()
    root = os.path.join(workdir, f"frag{k}")
    shutil.rmtree(root, ignore_errors=True)
    os.makedirs(root)
    db = os.path.join(root, "db.lancedb")
    rng = np.random.default_rng(0)
    path = os.path.join(root, "part.npy")
    t = time.perf_counter()
    for i in range(k):
        np.save(path, (rng.normal(size=(rows, DIM)) + 1).astype(np.float32))
        os.rename(path, p := os.path.join(root, f"p{i}.npy"))
        ingest([p], db=db, modality="image" if i % 2 else "text", score=score)
        os.remove(p)
        if i % 100 == 99:
            print(f"{i + 1} ingests, {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
    ingest_s = time.perf_counter() - t
    if not score:
        from curator import refresh

        refresh(db=db)

    def measure():
        ds = Database(db).dataset("embeddings")
        timings = {}
        for label, fn in [
            ("count + avg (DuckDB)", lambda: query("select modality, count(*), avg(conformity) from embeddings group by 1", db=db)),
            ("filter ids (DuckDB)", lambda: query("select id from embeddings where conformity > 0.5", db=db)),
            ("vector scan (Lance)", lambda: sum(b.num_rows for b in Database(db).dataset("embeddings").to_batches(columns=["embedding"]))),
        ]:
            fn()
            runs = []
            for _ in range(3):
                s = time.perf_counter()
                fn()
                runs.append(time.perf_counter() - s)
            timings[label] = float(np.median(runs))
        return len(ds.get_fragments()), timings

    frags_before, before = measure()
    size_before = _du(db)
    t = time.perf_counter()
    result = optimize(db=db, keep_versions=0)
    opt_s = time.perf_counter() - t
    frags_after, after = measure()
    size_after = _du(db)
    lines = [(f"{k} ingests of {rows} × {DIM}: {ingest_s:.0f} s; optimize {opt_s:.1f} s "
              f"({result.versions_removed} versions removed); "
              f"database {size_before / 1e6:.0f} MB → {size_after / 1e6:.0f} MB"),
             "", f"| query | before ({frags_before} fragments) | after ({frags_after}) | speed-up |", "|---|---|---|---|"]
    for label in before:
        lines.append(f"| {label} | {before[label] * 1000:.0f} ms | {after[label] * 1000:.0f} ms | "
                     f"{before[label] / after[label]:.1f}× |")
    shutil.rmtree(root, ignore_errors=True)
    return "\n".join(lines)


def _du(path: str) -> int:
    total = 0
    for folder, _, files in os.walk(path):
        for f in files:
            total += os.path.getsize(os.path.join(folder, f))
    return total


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="*", default=[1_000_000])
    parser.add_argument("--workdir", default="/work/scale")
    parser.add_argument("--fragments", type=int, default=0)
    parser.add_argument("--keep", action="store_true")
    parser.add_argument("--dim", type=int, default=DIM)
    parser.add_argument("--only", nargs="*", help="after the ingests, only these stages (e.g. refresh)")
    parser.add_argument("--stages", type=_stage_list,
                        help=f"comma-separated stages to run after the ingests, in this order, "
                             f"from: {','.join(STAGES)} (default: {','.join(DEFAULT_STAGES)})")
    parser.add_argument("--existing-db", metavar="PATH",
                        help="run the stages on this already built database (no generate, no "
                             "ingest; N is its row count, the dimension its own)")
    parser.add_argument("--extra-rows", type=int, default=EXTRA_ROWS,
                        help="rows of the extra-ingest batch (default: %(default)s)")
    parser.add_argument("--extra-seed", type=int, default=EXTRA_SEED,
                        help="seed of the extra-ingest batch (default: %(default)s)")
    parser.add_argument("--no-score", action="store_true", help="--fragments: ingest unscored")
    parser.add_argument("--json", help="also write the raw results here")
    args = parser.parse_args(argv)
    if args.fragments:
        print(fragments(args.fragments, args.workdir, score=not args.no_score))
        return 0
    if args.existing_db:
        if not os.path.isdir(args.existing_db):
            parser.error(f"--existing-db {args.existing_db}: no such folder")
        stages = args.stages or DEFAULT_STAGES
        n, results = existing(args.existing_db, args.workdir, stages, keep=args.keep,
                              extra_rows=args.extra_rows, extra_seed=args.extra_seed)
        print(table({n: results}), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({str(n): results}, fh, indent=1)
        return 0
    free = shutil.disk_usage(os.path.dirname(os.path.abspath(args.workdir)) or "/").free
    need = max(args.sizes) * args.dim * 4 * 3.5
    if free < need:
        print(f"not enough disk: {free / 1e9:.0f} GB free, about {need / 1e9:.0f} GB needed", file=sys.stderr)
        return 1
    all_results = {}
    for n in args.sizes:
        all_results[n] = pipeline(n, args.workdir, keep=args.keep, dim=args.dim, only=args.only,
                                  stages=args.stages, extra_rows=args.extra_rows,
                                  extra_seed=args.extra_seed)
        print(table(all_results), flush=True)
        if args.json:
            with open(args.json, "w") as fh:
                json.dump({str(k): v for k, v in all_results.items()}, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
