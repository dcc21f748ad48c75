"""Crash safety: SIGKILL a command at 20 seeded random moments; the table always survives.

After every kill the table opens, holds all or none of an interrupted ingest's batch,
the command's columns are all old or all new, ``verify`` is clean (or ``--repair`` makes
it clean), and a rerun reaches the uninterrupted result. The machinery, and a CLI for
longer runs, is scripts/crash_harness.py. cluster/dedupe/rebalance are covered when
their modules exist. About 30 s per command on 2 cores.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))

import crash_harness

TRIALS = 20
COMMANDS = ["ingest", "refresh", "cluster", "dedupe", "rebalance"]


@pytest.mark.parametrize("name", COMMANDS)
def test_sigkill_at_random_moments(name, tmp_path):
    assert crash_harness.available(name), f"{name}: the command's module is missing"
    report = crash_harness.run_command(name, trials=TRIALS, seed=7, workdir=str(tmp_path),
                                       rerun_every=5)
    print(report.line())
    assert len(report.trials) == TRIALS
    assert not report.problems, "\n".join(report.problems)
    # The kills must land while the command runs, or the test proves nothing.
    assert report.interrupted >= TRIALS // 2, report.line()
