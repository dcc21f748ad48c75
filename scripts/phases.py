"""Where a command spends its time and memory: one ``ingest`` or ``dedupe`` in this
process, with RSS sampled every 50 ms and a mark at the start and end of each phase.

    python scripts/phases.py ingest DB FILE [--modality image] [--model NAME]
    python scripts/phases.py dedupe DB --eps 0.01 [--keep least-conformity]

Prints each mark with the peak RSS since the previous one, then the overall peak. It was
used to find what grew with the table in an ingest into a 20M-row table (the duplicate
check's hash rebuilt per table batch, DuckDB building a join on a streamed scan, Lance
decoding four fragments at once) and in a dedupe of 20M rows (the members' scalars and
keys held for the keep policy; the partition pass's score blocks, k wide, and its
segment list; a dense partition's whole pair list returned by one search job). In a
dedupe the partition pass runs from the end of ``train`` to the end of the spill's
``finish``, and the search from there to the end of ``stream_pairs``. Run it on a copy
of a database (``cp -al`` is enough: Lance never rewrites a file): it writes for real.
"""

from __future__ import annotations

import argparse
import os
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


def rss_gib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS"):
                return int(line.split()[1]) / 1048576
    return 0.0


def phases(command: str):
    """(owner, attribute) of each marked phase of ``command``."""
    if command == "ingest":
        import curator.engine.scoring as scoring
        import curator.io.ingest as ing

        return [(ing, "_read_ids"), (ing, "_resolve_duplicates"), (ing, "choose"),
                (ing, "assign_new_rows"), (ing._Ingest, "_statistics_pass"),
                (ing._Ingest, "_write_and_score"), (ing._PairPlan, "keep_vectors"),
                (scoring.Scoring, "score_existing"), (scoring.Scoring, "finish"),
                (scoring.Scoring, "_update_sketch"), (scoring.Scoring, "_pairs"),
                (scoring.Scoring, "_write")]
    import curator.curation.dedupe as dd

    return [(dd, "stream_pairs"), (dd, "ordinal_rowids"), (dd, "take_vectors"),
            (dd.PartitionPlan, "train"), (getattr(dd, "_Spill", None), "finish"), (dd.PairSpill, "finish"),
            (dd.PairSpill, "labels"), (dd, "_keepers"), (getattr(dd, "Groups", None), "add"),
            (getattr(dd, "Groups", None), "mark"), (dd, "_write")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("command", choices=["ingest", "dedupe"])
    ap.add_argument("db")
    ap.add_argument("file", nargs="?", help="ingest: the file to ingest")
    ap.add_argument("--modality")
    ap.add_argument("--model")
    ap.add_argument("--eps", type=float, default=0.01)
    ap.add_argument("--keep", default="least-conformity")
    ap.add_argument("--duckdb-memory", help="DuckDB's memory limit for the command (e.g. 256MB)")
    args = ap.parse_args()
    if args.duckdb_memory:
        import curator.engine.spill as spill

        spill.MEMORY_LIMIT = args.duckdb_memory

    from curator.store.database import tune_allocator

    tune_allocator()
    marks: list[tuple[float, str]] = []
    samples: list[tuple[float, float]] = []

    def sample():
        while True:
            samples.append((time.perf_counter(), rss_gib()))
            time.sleep(0.05)

    threading.Thread(target=sample, daemon=True).start()

    def marked(fn, name):
        def call(*a, **k):
            marks.append((time.perf_counter(), f"start {name}"))
            try:
                return fn(*a, **k)
            finally:
                marks.append((time.perf_counter(), f"end {name}"))
        return call

    for owner, name in phases(args.command):
        if hasattr(owner, name):  # a phase an older checkout lacks is not marked
            setattr(owner, name, marked(getattr(owner, name), name))

    start = time.perf_counter()
    if args.command == "ingest":
        from curator.io.ingest import ingest

        result = ingest([args.file], db=args.db, modality=args.modality, model=args.model)
    else:
        from curator.curation.dedupe import dedupe

        result = dedupe(db=args.db, eps=args.eps, keep=args.keep, modality=args.modality)
    time.sleep(0.1)
    print(result.summary())
    previous = start
    for t, what in sorted(marks):
        peak = max((v for s, v in samples if previous <= s <= t), default=None)
        shown = "(no sample)" if peak is None else f"{peak:.2f} GiB"
        print(f"{t - start:8.2f} s  {what:28s} peak since the previous mark {shown}")
        previous = t
    print(f"overall peak {max(v for _, v in samples):.2f} GiB")


if __name__ == "__main__":
    main()
