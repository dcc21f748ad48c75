"""``curator demo``: the whole pipeline on seeded synthetic data, end to end.

Writes into one folder: the database (``curator.lancedb``), the synthetic sources, a
curated export with its manifest, and the geometry report. Takes seconds at the
default size.
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import asdict, dataclass, field

from .errors import BadInput


@dataclass
class DemoResult:
    out: str
    db: str
    rows: int
    steps: list[dict] = field(default_factory=list)
    report: str | None = None
    export: str | None = None
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        lines = [f"curator demo: {self.rows} rows in {self.db}"]
        for step in self.steps:
            lines.append(f"  {step['step']:<10} {step['what']}  ({step['seconds']:.1f} s)")
        if self.export:
            lines.append(f"export:  {self.export}")
        if self.report:
            lines.append(f"report:  {self.report}")
        lines.append(f"done in {self.seconds:.1f} s")
        return "\n".join(lines)


def demo(*, out: str = "curator-demo", samples: int = 4000, seed: int = 0, dim: int = 128,
         quiet: bool = True) -> DemoResult:
    """Synthetic data → ingest (3 batches) → refresh → cluster → dedupe → negatives →
    rebalance per sample among the non-duplicates → export of the kept (image, caption)
    pairs → report, into ``out`` (replaced if it holds an earlier demo)."""
    from .io.ingest import ingest
    from .maintenance.refresh import refresh
    from .maintenance.stats import stats
    from .synthetic import make_pairs

    if samples < 50:
        raise BadInput("--samples must be at least 50")
    started = time.time()
    _prepare(out)
    db = os.path.join(out, "curator.lancedb")
    result = DemoResult(out=out, db=db, rows=0)

    def step(name: str, what):
        t0 = time.time()
        text = what()
        result.steps.append({"step": name, "what": text, "seconds": time.time() - t0})

    data = make_pairs(samples=samples, dim=dim, seed=seed, duplicates=0.02)
    paths = data.write_parquet(os.path.join(out, "sources"), parts=3)
    result.rows = len(data)

    def do_ingest():
        for path in paths:
            ingest([path], db=db, model="synthetic/double-ellipsoid", quiet=quiet)
        s = stats(db=db)["modalities"]
        return (f"{len(data)} rows in 3 batches; max staleness image "
                f"{s['image']['max_staleness']:.2e}, text {s['text']['max_staleness']:.2e}")

    step("ingest", do_ingest)
    step("refresh", lambda: f"rescored {refresh(db=db).rows} stale rows; max staleness now 0")
    _curation_steps(step, db, seed)
    _export_and_report(step, result, db, out, seed)
    result.seconds = time.time() - started
    return result


def _curation_steps(step, db, seed):
    from .curation.clusters import cluster
    from .curation.dedupe import dedupe
    from .curation.negatives import negatives
    from .curation.rebalance import rebalance

    step("cluster", lambda: _line(cluster(db=db, k=16, seed=seed)))
    step("dedupe", lambda: _line(dedupe(db=db, eps=0.002, modality="image")))
    step("negatives", lambda: _line(negatives(db=db)))
    step("rebalance", lambda: _line(rebalance(db=db, cap=200, by="cluster", seed=seed,
                                              where="not coalesce(is_duplicate, false)")))


def _export_and_report(step, result, db, out, seed):
    from .io.export import export
    from .views.report import report

    export_dir = os.path.join(out, "export")
    step("export", lambda: _line(export(db=db, out=export_dir, where="rebalance_keep", unit="pair",
                                        format="parquet")))
    result.export = export_dir
    report_dir = os.path.join(out, "report")
    step("report", lambda: _line(report(db=db, out=report_dir, seed=seed)))
    result.report = os.path.join(report_dir, "index.html")


def _line(result) -> str:
    """A step's summary on one line (its first two lines joined)."""
    text = result.summary() if hasattr(result, "summary") else str(result)
    return "; ".join(line.strip() for line in text.splitlines()[:2])


def _prepare(out: str) -> None:
    """Create ``out``; an earlier demo there is replaced, anything else is refused."""
    if os.path.exists(out):
        marker = os.path.join(out, ".curator-demo")
        if os.listdir(out) and not os.path.exists(marker):
            raise BadInput(f"{out} exists and is not a curator demo folder; choose another --out")
        shutil.rmtree(out)
    os.makedirs(out)
    open(os.path.join(out, ".curator-demo"), "w").close()
