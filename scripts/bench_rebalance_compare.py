"""``curator rebalance`` of this checkout against another checkout, in the same run.

    python scripts/bench_rebalance_compare.py --compare-with /path/to/other/checkout

The table is ``bench_rebalance_export.py``'s (``make_pairs``: ``--samples`` samples with
their captions, 512-d, 40 concepts), ingested once by this checkout. Each round runs the
same per-sample rebalance with ``--where`` as a fresh ``curator`` process from either
checkout (``PYTHONPATH``), under ``/usr/bin/time``. Who goes first alternates from round to
round. Reported: the median wall seconds (min–max) and peak RSS of each, and whether the
two wrote identical columns (the last two table versions, compared by id).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile

ROOT = os.path.abspath(os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
sys.path.insert(0, ROOT)

WHERE = "not coalesce(is_duplicate, false) and conformity > 0.1"


def run(root: str, db: str, cap: int) -> dict:
    cmd = ["/usr/bin/time", "-f", "__RSS_KB__ %M %e", sys.executable, "-m", "curator", "--db", db,
           "--quiet", "rebalance", "--cap", str(cap), "--by", "concept", "--seed", "1", "--where", WHERE]
    # In ``root``: ``python -m`` puts the working directory first on sys.path.
    proc = subprocess.run(cmd, capture_output=True, text=True, check=True,
                          env={**os.environ, "PYTHONPATH": root}, cwd=root)
    line = next(ln for ln in reversed(proc.stderr.splitlines()) if ln.startswith("__RSS_KB__"))
    _, kb, seconds = line.split()
    return {"seconds": float(seconds), "rss_gb": int(kb) * 1024 / 1e9}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--compare-with", required=True, metavar="CHECKOUT")
    ap.add_argument("--samples", type=int, default=250_000)
    ap.add_argument("--repeat", type=int, default=4)
    args = ap.parse_args()
    import lance

    from curator import ingest, tune_allocator
    from curator.synthetic import make_pairs

    tune_allocator()
    other = os.path.abspath(args.compare_with)
    root = tempfile.mkdtemp(prefix="bench-rbc-")
    try:
        data = make_pairs(samples=args.samples, dim=512, concepts=40, seed=0)
        src = data.write_parquet(os.path.join(root, "src"), parts=2)
        del data
        db = os.path.join(root, "db")
        ingest(src, db=db)
        cap = max(10, args.samples // 80)
        sides = {"this checkout": ROOT, other: other}
        results: dict = {name: [] for name in sides}
        last = {}
        for r in range(args.repeat):
            names = list(sides) if r % 2 == 0 else list(sides)[::-1]
            for name in names:
                results[name].append(run(sides[name], db, cap))
                last[name] = lance.dataset(os.path.join(db, "embeddings.lance")).version
                print(f"round {r + 1}: {name}: {results[name][-1]['seconds']:.2f} s", file=sys.stderr)
        uri = os.path.join(db, "embeddings.lance")
        written = [lance.dataset(uri, version=v).to_table(columns=["id", "rebalance_keep"]).sort_by("id")
                   for v in last.values()]
        n = lance.dataset(uri).count_rows()
        print(f"rebalance per sample by concept, cap {cap}, --where \"{WHERE}\"; {n:,} rows; "
              f"median of {args.repeat} rounds (min–max), who goes first alternating")
        print("| checkout | wall s | peak RSS GB |\n|---|---|---|")
        for name, rs in results.items():
            s = [x["seconds"] for x in rs]
            print(f"| {name} | {statistics.median(s):.2f} ({min(s):.2f}–{max(s):.2f}) | "
                  f"{max(x['rss_gb'] for x in rs):.2f} |")
        print(f"identical columns: {written[0].equals(written[1])}")
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    main()
