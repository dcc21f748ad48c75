"""``negatives``: false negatives per row, written to ``fn_count`` and ``fn_rate``.

The paper's claim, made countable: frequent concepts yield more false negatives. For a
caption, ``fn_count`` is the number of *other* samples' images whose cosine to it is at
least that of its own image minus ε; for an image, the number of other samples'
captions at least as close as its best own caption minus ε (definitions, tolerance and
the proofs of the skip rule: :mod:`curator.geometry.negatives`). ``fn_rate`` is
``fn_count`` divided by the candidates: the rows of the other modality in the
population that belong to other samples (float32, [0, 1]; high = generic).

**The population.** Only image–text *pairs* take part in contrastive training, so the
population is the image and text rows of samples that have at least one image and one
caption; with ``--where``, among the rows matching the predicate, which therefore
restricts both the rows counted and the candidates they are counted against (the
false negatives *within* the subset you will train on; a caption whose image fails the
predicate has no partner left). Every other row of the table gets ``fn_count`` and
``fn_rate`` null: rows without a partner, rows failing ``--where``, other modalities.
The columns always describe one population, which the result names.

**Exact or partitioned.** Up to 2^30 (image, caption) pairs, or with ``recall=1``, the
counts are exact (one blocked product, both directions). Above, each direction runs the
skip rule of :class:`~curator.geometry.negatives.ProbePlan`: candidates are clustered
(about 2·√n clusters), the margin is calibrated on a seeded sample of queries so that a
``recall`` share of the sample's false-negative pairs is searched, and the pair recall
is measured again on a disjoint audit sample against brute force. No count is ever too
high (every counted pair is computed exactly, once). Both the calibration and the audit
are reported.

What the recall means for curation: the pairs missed are the ones far from their
cluster's mean, and they are spread over rows with *few* false negatives, so counts that
are high are accurate (within the recall) while some rows with one or two false
negatives read 0 (the audit's ``rows_with_fn_found`` says how many; measured on
CLIP-like data, 20k pairs: 82% of the rows that have any). ``fn_count > 0`` is therefore
always true where it says so; for a hard ``fn_count = 0`` filter on a large table, run
with ``recall=1`` (exact, O(n²·d)) or filter on ``fn_rate`` / a count threshold instead.

The work is one function per partition (``count_block``; ``exact_block`` for the exact
path), run by the executor, so ``--engine ray`` runs the same code as Ray tasks. The unit
vectors of the population are held in a temporary file (memory-mapped, 4 bytes × d per
row), not in the process's heap; the columns are written in one commit under the
writer lock, and the statistics record is carried forward.
"""

from __future__ import annotations

import collections
import os
import resource
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from .. import progress as progress_mod
from ..engine.executor import executor
from ..engine.index import read_index
from ..engine.rows import select_rows, where_rowids
from ..engine.spill import scratch
from ..engine.writes import write_columns
from ..errors import BadInput
from ..geometry import negatives as ng
from ..geometry.kmeans import unit_rows
from ..store.arrow import vectors
from ..store.database import Database
from ..store.predicate import parse
from ..store.versions import curation_step

EXACT_PAIRS = 1 << 30  # at most this many (caption, image) pairs (~32k × 32k): exact counts
CALIBRATION_ROWS = 1024
AUDIT_ROWS = 1024
MIN_CALIBRATION_PAIRS = 200  # fewer false-negative pairs in the calibration: enlarge it
MAX_CALIBRATION_ROWS = 8192
QUERY_ROWS_PER_JOB = 32_768
EXACT_ROWS_PER_JOB = 4096
# Counting jobs at once on the local engine (each with one BLAS thread): on 2 cores, 18%
# faster than one job at a time with two BLAS threads (the gathers and comparisons overlap
# the other job's GEMM). Capped by the CPUs available.
COUNT_THREADS = 2
COLUMNS = ("fn_count", "fn_rate")


@dataclass
class NegativesResult:
    """What ``negatives`` computed, per modality, and the table versions it read and wrote."""

    table: str
    eps: float
    where: str | None
    recall_target: float
    method: str
    table_version_read: int
    table_version: int
    rows_counted: int
    rows_null: int
    modalities: dict[str, dict] = field(default_factory=dict)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"table": self.table, "eps": self.eps, "where": self.where,
                "recall_target": self.recall_target, "method": self.method,
                "table_version_read": self.table_version_read, "table_version": self.table_version,
                "rows_counted": self.rows_counted, "rows_null": self.rows_null,
                "modalities": self.modalities, "seconds": round(self.seconds, 3)}

    def summary(self) -> str:
        scope = f" where {self.where}" if self.where else ""
        lines = [(f"false negatives of {self.table!r} v{self.table_version_read} → v{self.table_version} "
                  f"(ε = {self.eps:g}, {self.method}{scope}) in {self.seconds:.1f} s: "
                  f"{self.rows_counted} rows counted, {self.rows_null} null")]
        for m, r in self.modalities.items():
            other = "text" if m == "image" else "image"
            line = (f"  {m}: {r['rows']} rows against {r['candidates']} {other} rows; mean fn_count "
                    f"{r['mean_fn_count']:.4g}, mean fn_rate {r['mean_fn_rate']:.4g}, "
                    f"{r['zero_share']:.1%} with none, max {r['max_fn_count']}")
            if "audit" in r:
                a = r["audit"]
                line += (f"; searched {r['work_share']:.2%} of pairs, audit recall {a['recall']:.4f} "
                         f"on {a['rows']} rows ({a['rows_exact']:.1%} exact, {a['over_counted']} over)")
            lines.append(line)
        return "\n".join(lines)


@curation_step
def negatives(*, db=None, table: str = "embeddings", eps: float = 0.0, where: str | None = None,
              recall: float = 0.995, seed: int = 0, quiet: bool = True,
              engine: str | None = None) -> NegativesResult:
    """Count false negatives per row; writes ``fn_count`` (int64) and ``fn_rate`` (float32).

    ``eps`` ≥ 0 widens the margin (other partners within ε of the own cosine count);
    ``where`` restricts the population (rows counted and candidates alike); ``recall`` in
    (0, 1] is the calibration target of the skip rule on large tables (1 = exact, brute
    force); ``seed`` picks the calibration and audit samples and the k-means seeds.
    """
    started = time.time()
    if eps is None or not np.isfinite(eps) or not 0 <= eps < 2:
        raise BadInput(f"--eps must be in [0, 2) (a cosine margin), got {eps}")
    if recall is None or not 0 < recall <= 1:
        raise BadInput(f"--recall must be in (0, 1] (1 = exact counts), got {recall}")
    database = Database(db)
    dataset = database.dataset(table)
    read_version = dataset.version
    predicate = parse(where, dataset.schema)
    index = read_index(dataset, samples=True)
    passing = np.ones(len(index), bool)
    if predicate is not None:
        passing = np.isin(index.rowid, where_rowids(dataset, predicate, engine=engine))
    img_pos, txt_pos = _population(index, passing)
    if not len(img_pos) or not len(txt_pos):
        scope = " among the rows matching --where" if predicate is not None else ""
        raise BadInput(f"no image–text pairs{scope} in table {table!r}: false negatives need "
                       "samples with an image row and a text row")

    dim = dataset.schema.field("embedding").type.list_size
    with scratch() as folder:
        T, V = _unit_vectors(dataset, index, txt_pos, img_pos, dim, folder, engine)
        st, sv = index.sample[txt_pos], index.sample[img_pos]
        own_t, own_v = ng.own_cosines(T, V, st, sv)
        theta_t, theta_v = ng.thresholds(own_t, eps), ng.thresholds(own_v, eps)
        pairs = len(T) * len(V)
        run = executor(engine, quiet=quiet)
        if recall >= 1 or pairs <= EXACT_PAIRS:
            method = "exact"
            fn_t, fn_v = _exact(run, T, V, theta_t, theta_v, st, sv, quiet)
            info_t, info_v = {"method": "exact"}, {"method": "exact"}
        else:
            method = f"partitioned (calibrated recall {recall:g})"
            fn_t, info_t = _partitioned(run, "text", T, theta_t, st, V, sv, recall, seed, quiet)
            fn_v, info_v = _partitioned(run, "image", V, theta_v, sv, T, st, recall, seed + 1, quiet)
        del T, V

    cand_t = len(img_pos) - _same_sample_counts(st, sv)
    cand_v = len(txt_pos) - _same_sample_counts(sv, st)
    reports = {"image": _report(fn_v, cand_v, len(txt_pos), info_v),
               "text": _report(fn_t, cand_t, len(img_pos), info_t)}
    count = np.full(len(index), -1, np.int64)
    rate = np.full(len(index), np.nan)
    count[img_pos], count[txt_pos] = fn_v, fn_t
    with np.errstate(divide="ignore", invalid="ignore"):
        rate[img_pos] = np.where(cand_v > 0, fn_v / np.maximum(cand_v, 1), np.nan)
        rate[txt_pos] = np.where(cand_t > 0, fn_t / np.maximum(cand_t, 1), np.nan)
    dataset = _add_columns(database, table, dataset)
    message = f"curator negatives eps={eps:g} recall={recall:g}" + (f" where {predicate.text}" if predicate else "")
    new = write_columns(dataset, index.rowid, {
        "fn_count": pa.array(count, pa.int64(), mask=count < 0),
        "fn_rate": pa.array(rate.astype(np.float32), pa.float32(), mask=~np.isfinite(rate)),
    }, message, engine=engine)
    counted = len(img_pos) + len(txt_pos)
    return NegativesResult(table, float(eps), predicate.text if predicate else None, float(recall),
                           method, read_version, new.version, counted, len(index) - counted,
                           reports, time.time() - started)


# -- the population ------------------------------------------------------------------------

def _population(index, passing: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Index positions of the image and text rows of samples with both (among ``passing``)."""
    image = index.rows_of("image") & passing & (index.sample >= 0)
    text = index.rows_of("text") & passing & (index.sample >= 0)
    both = np.intersect1d(index.sample[image], index.sample[text])
    return (np.flatnonzero(image & np.isin(index.sample, both)),
            np.flatnonzero(text & np.isin(index.sample, both)))


def _same_sample_counts(q_sample: np.ndarray, x_sample: np.ndarray) -> np.ndarray:
    """Per query row: how many candidate rows share its sample."""
    xs = np.sort(x_sample)
    return np.searchsorted(xs, q_sample, "right") - np.searchsorted(xs, q_sample, "left")


def _unit_vectors(dataset, index, txt_pos, img_pos, dim, folder, engine):
    """Unit vectors of the population's captions and images, in index order, in two
    memory-mapped temporary files."""
    T = np.lib.format.open_memmap(os.path.join(folder, "text.npy"), "w+", np.float32, (len(txt_pos), dim))
    V = np.lib.format.open_memmap(os.path.join(folder, "image.npy"), "w+", np.float32, (len(img_pos), dim))
    wanted = np.sort(np.concatenate([index.rowid[txt_pos], index.rowid[img_pos]]))
    where_t = {"rowid": index.rowid[txt_pos], "out": T}
    where_v = {"rowid": index.rowid[img_pos], "out": V}
    for ids, batch in select_rows(dataset, wanted, ["embedding"], engine=engine):
        U = unit_rows(vectors(batch))
        for side in (where_t, where_v):
            at = np.searchsorted(side["rowid"], ids)
            hit = (at < len(side["rowid"])) & (side["rowid"][np.minimum(at, len(side["rowid"]) - 1)] == ids)
            if hit.any():
                side["out"][at[hit]] = U[hit]
    return T, V


def _add_columns(database, table, dataset):
    missing = [pa.field("fn_count", pa.int64()), pa.field("fn_rate", pa.float32())]
    missing = [f for f in missing if f.name not in dataset.schema.names]
    if missing:
        dataset.add_columns(missing)
        dataset = database.dataset(table)
    return dataset


def _report(fn: np.ndarray, candidates: np.ndarray, other: int, info: dict) -> dict:
    rate = fn / np.maximum(candidates, 1)
    return {"rows": len(fn), "candidates": int(other),
            "mean_fn_count": float(fn.mean()), "median_fn_count": float(np.median(fn)),
            "max_fn_count": int(fn.max()), "mean_fn_rate": float(rate.mean()),
            "zero_share": float((fn == 0).mean()), **info}


# -- exact ---------------------------------------------------------------------------------

def _exact(run, T, V, theta_t, theta_v, st, sv, quiet):
    fn_t = np.zeros(len(T), np.int64)
    fn_v = np.zeros(len(V), np.int64)
    shared = run.put((np.asarray(V), theta_v, sv))
    starts = list(range(0, len(T), EXACT_ROWS_PER_JOB))
    bar = progress_mod.bar("false negatives (exact)", len(T), quiet=quiet)
    jobs = ((np.asarray(T[a:a + EXACT_ROWS_PER_JOB]), theta_t[a:a + EXACT_ROWS_PER_JOB],
             st[a:a + EXACT_ROWS_PER_JOB], shared) for a in starts)
    for a, (rows, cols) in zip(starts, run.map(exact_job, jobs)):
        fn_t[a:a + len(rows)] = rows
        fn_v += cols
        bar.advance(len(rows))
    bar.close()
    return fn_t, fn_v


def exact_job(T, theta_t, st, shared):
    """The exact pass's per-block function: a block of captions against every image."""
    V, theta_v, sv = shared
    return ng.exact_block(T, theta_t, st, V, theta_v, sv)


# -- partitioned ---------------------------------------------------------------------------

def _cpu() -> float:
    """CPU seconds of this process so far, all threads (the local engine's work)."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _partitioned(run, name, Q, theta_q, sq, X, sx, recall, seed, quiet):
    """Counts of the queries ``Q`` against the candidates ``X`` by the calibrated skip
    rule; returns (counts, info with calibration, work share and audit)."""
    t0, c0 = time.time(), _cpu()
    plan = ng.ProbePlan.train(X, ng.auto_partitions(len(X)), seed=seed)
    t1, c1 = time.time(), _cpu()
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(Q))
    audit = np.sort(order[:min(AUDIT_ROWS, len(Q))])
    rest = order[len(audit):]
    size = CALIBRATION_ROWS
    while True:
        cal = np.sort(rest[:min(size, len(rest))])
        _, rows, cols = ng.exact_false_negatives(Q[cal], theta_q[cal], sq[cal], X, sx)
        if len(rows) >= MIN_CALIBRATION_PAIRS or size >= MAX_CALIBRATION_ROWS or size >= len(rest):
            break
        size *= 4
    needs = plan.required_margins(Q[cal], theta_q[cal], rows, cols)
    if len(needs) >= MIN_CALIBRATION_PAIRS:
        plan.calibrate(needs, recall)
        margin_rule = "calibrated"
    else:
        plan.margin = float("inf")  # too few false negatives to calibrate: the exact rule
        margin_rule = "exact (too few false negatives in the calibration sample)"
    t2, c2 = time.time(), _cpu()
    probes = plan.probes(Q, theta_q)
    members = plan.members()
    counts = np.zeros(len(Q), np.int64)
    pending = collections.deque()
    work = 0

    def jobs():
        nonlocal work
        for j in range(plan.k):
            if not len(probes[j]) or not len(members[j]):
                continue
            xs = np.asarray(X[members[j]])
            for a in range(0, len(probes[j]), QUERY_ROWS_PER_JOB):
                rows = probes[j][a:a + QUERY_ROWS_PER_JOB]
                pending.append(rows)
                work += len(rows) * len(xs)
                yield np.asarray(Q[rows]), theta_q[rows], sq[rows], xs, sx[members[j]]

    bar = progress_mod.bar(f"false negatives ({name})", plan.k, quiet=quiet)
    for part in run.map(ng.count_block, jobs(), threads=COUNT_THREADS):
        counts[pending.popleft()] += part
        bar.advance()
    bar.close()
    t3, c3 = time.time(), _cpu()
    exact_audit, _, _ = ng.exact_false_negatives(Q[audit], theta_q[audit], sq[audit], X, sx)
    found = counts[audit]
    info = {
        "method": "partitioned", "partitions": plan.k, "margin": round(plan.margin, 6),
        "margin_rule": margin_rule, "exact_clusters": int((plan.radius <= plan.margin).sum()),
        "work_share": work / max(len(Q) * len(X), 1),
        "calibration": {"rows": len(cal), "false_negative_pairs": len(rows),
                        "target_recall": recall},
        "audit": {"rows": len(audit),
                  "recall": float(found.sum() / exact_audit.sum()) if exact_audit.sum() else 1.0,
                  "rows_exact": float((found == exact_audit).mean()) if len(audit) else 1.0,
                  "over_counted": int((found > exact_audit).sum()),
                  "rows_with_fn_found": (float(((found > 0) & (exact_audit > 0)).sum()
                                               / max((exact_audit > 0).sum(), 1))),
                  "false_negative_pairs": int(exact_audit.sum())},
        "seconds": {"partition": round(t1 - t0, 2), "calibrate": round(t2 - t1, 2),
                    "count": round(t3 - t2, 2), "audit": round(time.time() - t3, 2)},
        "cpu_seconds": {"partition": round(c1 - c0, 2), "calibrate": round(c2 - c1, 2),
                        "count": round(c3 - c2, 2), "audit": round(_cpu() - c3, 2)},
    }
    return counts, info
