"""Crash-safety harness: run a curator command in a subprocess, SIGKILL it at a random
moment, and check that the table survived.

For each command: build a small base database once, run the command to completion once
(measuring its duration after the imports, and its final state), then for each seeded
trial copy the base, start the command, wait until the process has imported everything
(it prints ``ready``), sleep a delay drawn uniformly from [0, 1.3 × duration] (duration: from the
end of the imports to the summary line) and kill
it with SIGKILL. After each kill:

1. the table opens and every column reads;
2. the rows are the base rows, or (ingest) the base rows plus the whole batch: never part;
3. the columns the command writes hold either all the old or all the new values;
4. ``verify`` finds statistics and scores consistent with the rows, or ``verify
   --repair`` makes them so (a second verify is clean);
5. the command can be run again to completion, and then gives the reference result.

Used by tests/test_crash.py; runnable alone for more trials::

    python scripts/crash_harness.py --trials 50 --seed 1 ingest refresh cluster
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

# CURATOR_CRASH_PATCH names a Python file run before the command: only for showing that
# the harness catches a broken guarantee (e.g. an ingest that commits in two parts).
DRIVER = (
    "import os, sys, numpy, pyarrow, lance, duckdb\n"
    "if os.environ.get('CURATOR_CRASH_PATCH'):\n"
    "    exec(open(os.environ['CURATOR_CRASH_PATCH']).read())\n"
    "import curator, curator.cli, curator.api\n"
    "print('ready', flush=True)\n"
    "curator.cli.main(sys.argv[1:])\n"
)

BASE_SAMPLES = 150
SPAN = 1.3  # kill delays are uniform in [0, SPAN x the measured duration]
DIM = 16


@dataclass
class Command:
    """A command under test: its CLI arguments, what it needs first, what it writes."""

    name: str
    args: list[str]
    module: str | None = None  # the module that must exist (find_spec)
    columns: list[str] = field(default_factory=list)  # written by the command
    after: list[list[str]] = field(default_factory=list)  # run on the base before the trials
    adds_batch: bool = False


def commands(batch_path: str) -> dict[str, Command]:
    scores = ["conformity", "conformity_est", "uncertainty", "loglik", "stats_version"]
    return {
        "ingest": Command("ingest", ["ingest", batch_path], "curator.io.ingest", adds_batch=True),
        "refresh": Command("refresh", ["refresh"], "curator.maintenance.refresh", columns=scores),
        "cluster": Command("cluster", ["cluster", "--k", "4", "--seed", "0"], "curator.curation.clusters",
                           columns=["cluster", "cluster_size"]),
        "dedupe": Command("dedupe", ["dedupe", "--eps", "0.02"], "curator.curation.dedupe",
                          columns=["dup_group", "is_duplicate"]),
        "rebalance": Command("rebalance", ["rebalance", "--cap", "5", "--seed", "0"], "curator.curation.rebalance",
                             columns=["rebalance_keep"],
                             after=[["cluster", "--k", "4", "--seed", "0"]]),
    }


def available(name: str, batch_path: str = "") -> bool:
    """Whether the command's module exists in this checkout."""
    module = commands(batch_path)[name].module
    try:
        return module is None or importlib.util.find_spec(module) is not None
    except ModuleNotFoundError:
        return False


@dataclass
class TrialResult:
    delay: float
    interrupted: bool  # killed before it finished
    outcome: str  # "none" / "all" (ingest), "old" / "new" (columns), "" otherwise
    repaired: bool
    problems: list[str]


@dataclass
class CommandReport:
    name: str
    duration: float
    trials: list[TrialResult]

    @property
    def interrupted(self) -> int:
        return sum(t.interrupted for t in self.trials)

    @property
    def problems(self) -> list[str]:
        return [f"{self.name} trial {k} (delay {t.delay:.2f}s): {p}"
                for k, t in enumerate(self.trials) for p in t.problems]

    def line(self) -> str:
        outcomes = {}
        for t in self.trials:
            outcomes[t.outcome] = outcomes.get(t.outcome, 0) + 1
        return (f"{self.name:<10} duration {self.duration:5.2f}s  trials {len(self.trials)}  "
                f"killed mid-run {self.interrupted}  outcomes {outcomes}  "
                f"repaired {sum(t.repaired for t in self.trials)}  problems {len(self.problems)}")


# -- building blocks -------------------------------------------------------------------------

def python_env() -> dict:
    env = dict(os.environ)
    env.setdefault("LANCE_LOG", "error")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.pop("CURATOR_DB", None)
    return env


def cli_args(db: str, args: list[str]) -> list[str]:
    return [sys.executable, "-c", DRIVER, "--db", db, "--quiet", *args]


def run_to_end(db: str, args: list[str]) -> float:
    """Run a command to completion; returns the time from the end of its imports to its
    summary line (its work, without the interpreter's exit)."""
    proc = subprocess.Popen(cli_args(db, args), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=python_env(), text=True)
    proc.stdout.readline()
    start = time.perf_counter()
    proc.stdout.readline()  # the command's summary: its work is done (exit teardown follows)
    duration = time.perf_counter() - start
    _, err = proc.communicate(timeout=300)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(args)} failed ({proc.returncode}): {err.strip()[-500:]}")
    return duration


def build_base(root: str, seed: int = 0) -> tuple[str, str]:
    """A database with two ingested parts (old rows stale) and a third part to ingest."""
    from curator import ingest
    from curator.synthetic import make_pairs

    data = make_pairs(samples=BASE_SAMPLES, dim=DIM, concepts=6, seed=seed)
    paths = data.write_parquet(os.path.join(root, "src"), parts=3)
    db = os.path.join(root, "base.lancedb")
    for path in paths[:2]:
        ingest([path], db=db)
    return db, paths[2]


def snapshot(db: str, columns: list[str]) -> dict:
    """ids (sorted) and the given columns in id order, read from the latest version."""
    import lance
    import pyarrow.compute as pc

    ds = lance.dataset(os.path.join(db, "embeddings.lance"))
    table = ds.to_table()  # reads every column: the table must open whole
    table = table.take(pc.sort_indices(table, [("id", "ascending")]))
    return {"ids": table.column("id").to_pylist(),
            **{c: table.column(c).to_pylist() for c in columns}}


def classify(state: dict, before: dict, after: dict, columns: list[str]) -> str | None:
    """'old' when the columns equal the base's, 'new' when the reference run's, else None."""
    if all(state[c] == before[c] for c in columns):
        return "old"
    if all(state[c] == after[c] for c in columns):
        return "new"
    return None


def check_trial(db: str, cmd: Command, before: dict, after: dict, batch_ids: set) -> tuple[str, bool, list]:
    from curator.maintenance.verify import verify

    problems = []
    try:
        state = snapshot(db, cmd.columns)
    except Exception as exc:  # noqa: BLE001 (any failure to open is the finding)
        return "", False, [f"table does not open: {exc!r}"]
    ids = set(state["ids"])
    base_ids = set(before["ids"])
    if len(ids) != len(state["ids"]):
        problems.append("duplicate ids")
    outcome = ""
    if cmd.adds_batch:
        if ids == base_ids:
            outcome = "none"
        elif ids == base_ids | batch_ids:
            outcome = "all"
        else:
            problems.append(f"partial batch: {len(ids - base_ids)} of {len(batch_ids)} rows landed")
    elif ids != base_ids:
        problems.append("rows changed")
    if cmd.columns and not problems:
        outcome = classify(state, before, after, cmd.columns) or ""
        if not outcome:
            problems.append(f"columns {cmd.columns} hold a mix of old and new values")
    repaired = False
    try:
        result = verify(db=db)
        if not result.ok:
            verify(db=db, repair=True)
            repaired = True
            again = verify(db=db)
            if not again.ok:
                problems.append("verify --repair left drift: " + again.summary().replace("\n", " | "))
    except Exception as exc:  # noqa: BLE001 (a crash of verify is a finding)
        problems.append(f"verify raised {exc!r}")
    return outcome, repaired, problems


def finish(db: str, cmd: Command, after: dict) -> list[str]:
    """Rerun the interrupted command (ingest: skipping what landed); must reach the reference."""
    args = cmd.args + (["--on-duplicate", "skip"] if cmd.adds_batch else [])
    proc = subprocess.run(cli_args(db, args), capture_output=True, text=True, env=python_env(),
                          timeout=300, check=False)
    if proc.returncode != 0:
        return [f"rerun failed: {proc.stderr.strip()[-300:]}"]
    state = snapshot(db, cmd.columns)
    if state["ids"] != after["ids"]:
        return ["rerun did not reach the reference rows"]
    if cmd.columns and classify(state, after, after, cmd.columns) != "old":
        return [f"rerun did not reproduce the reference {cmd.columns}"]
    return []


def one_trial(base_db: str, workdir: str, cmd: Command, delay: float, before: dict, after: dict,
              batch_ids: set, rerun: bool) -> TrialResult:
    db = tempfile.mkdtemp(dir=workdir)
    shutil.rmtree(db)
    shutil.copytree(base_db, db)
    proc = subprocess.Popen(cli_args(db, cmd.args), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            env=python_env(), text=True)
    proc.stdout.readline()  # imports done
    time.sleep(delay)
    interrupted = proc.poll() is None
    if interrupted:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    outcome, repaired, problems = check_trial(db, cmd, before, after, batch_ids)
    if rerun and not problems:
        problems += finish(db, cmd, after)
    shutil.rmtree(db, ignore_errors=True)
    return TrialResult(delay, interrupted, outcome, repaired, problems)


def run_command(name: str, *, trials: int = 20, seed: int = 0, workdir: str | None = None,
                workers: int = 2, rerun_every: int = 4) -> CommandReport:
    """Build the base, measure one clean run, then kill ``trials`` runs at seeded moments."""
    workdir = workdir or tempfile.mkdtemp(prefix=f"crash-{name}-")
    base_db, batch_path = build_base(workdir)
    cmd = commands(batch_path)[name]
    for args in cmd.after:
        run_to_end(base_db, args)
    import pyarrow.parquet as pq

    batch_ids = set(pq.read_table(batch_path, columns=["id"]).column("id").to_pylist())
    before = snapshot(base_db, cmd.columns)
    # The reference run, measured beside (workers - 1) twins so that its duration is that
    # of a trial (trials run side by side too).
    copies = [os.path.join(workdir, f"reference{k}.lancedb") for k in range(max(workers, 1))]
    for copy in copies:
        shutil.copytree(base_db, copy)
    with ThreadPoolExecutor(len(copies)) as pool:
        duration = max(pool.map(lambda c: run_to_end(c, cmd.args), copies))
    after = snapshot(copies[0], cmd.columns)

    rng = np.random.default_rng([seed, sum(map(ord, name))])
    delays = rng.uniform(0.0, SPAN * duration, size=trials)
    with ThreadPoolExecutor(workers) as pool:
        futures = [pool.submit(one_trial, base_db, workdir, cmd, float(d), before, after, batch_ids,
                               rerun_every > 0 and k % rerun_every == 0)
                   for k, d in enumerate(delays)]
        results = [f.result() for f in futures]
    shutil.rmtree(workdir, ignore_errors=True)
    return CommandReport(name, duration, results)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("commands", nargs="*", default=["ingest", "refresh", "cluster", "dedupe", "rebalance"])
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    failed = False
    for name in args.commands:
        if not available(name):
            print(f"{name:<10} skipped: module not present")
            continue
        report = run_command(name, trials=args.trials, seed=args.seed, workers=args.workers)
        print(report.line(), flush=True)
        for p in report.problems:
            print("   ", p)
        failed |= bool(report.problems)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
