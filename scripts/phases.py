"""Where an ingest spends its time and memory: one ingest in this process, with RSS
sampled every 50 ms and a mark at the start and end of each phase.

    python scripts/ingest_phases.py DB FILE [--modality image] [--model NAME]

Prints each mark with the peak RSS since the previous one, then the overall peak. It was
used to find what grew with the table in an ingest into a 20M-row table (the duplicate
check's hash rebuilt per table batch, DuckDB building a join on a streamed scan, Lance
decoding four fragments at once). Run it on a copy of a database (``cp -al`` is enough:
Lance never rewrites a file): it ingests for real.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("db")
    ap.add_argument("file")
    ap.add_argument("--modality")
    ap.add_argument("--model")
    args = ap.parse_args()

    from curator.store.database import tune_allocator

    tune_allocator()
    import curator.engine.scoring as scoring
    import curator.io.ingest as ing

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

    for owner, name in [(ing, "_read_ids"), (ing, "_resolve_duplicates"), (ing, "choose"),
                        (ing, "assign_new_rows"), (ing._Ingest, "_statistics_pass"),
                        (ing._Ingest, "_write_and_score"), (ing._PairPlan, "keep_vectors"),
                        (scoring.Scoring, "score_existing"), (scoring.Scoring, "finish"),
                        (scoring.Scoring, "_update_sketch"), (scoring.Scoring, "_pairs"),
                        (scoring.Scoring, "_write")]:
        setattr(owner, name, marked(getattr(owner, name), name))

    start = time.perf_counter()
    result = ing.ingest([args.file], db=args.db, modality=args.modality, model=args.model)
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
