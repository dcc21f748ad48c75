"""curator: curate image–text training data by the geometry of raw CLIP embeddings.

Every command of the ``curator`` CLI is a function of this package with the same name and
the same keyword arguments as the command's options (see :mod:`curator.api`). A session:

    >>> import os, tempfile, curator
    >>> from curator.synthetic import make_pairs
    >>> folder = tempfile.mkdtemp()
    >>> data = make_pairs(samples=200, dim=32, seed=0)
    >>> sources = data.write_parquet(os.path.join(folder, "sources"), parts=2)
    >>> db = os.path.join(folder, "curator.lancedb")
    >>> sum(curator.ingest([path], db=db).rows for path in sources) == len(data)
    True
    >>> curator.stats(db=db)["modalities"]["image"]["n"] == int((data.modality == "image").sum())
    True
    >>> curator.refresh(db=db).rows > 0      # the first batch's rows were stale
    True
    >>> curator.refresh(db=db).rows          # nothing left to do
    0
    >>> rows = curator.query("select modality, count(*) as n from embeddings group by 1 order by 1", db=db)
    >>> [r["modality"] for r in rows.to_pylist()]
    ['image', 'text']

Importing the package is cheap: each name is imported on first use.
"""

import importlib as _importlib
import os as _os

_os.environ.setdefault("LANCE_LOG", "error")
# OpenBLAS's idle threads spin for 2^28 cycles (~0.1 s) after every product before they
# sleep. curator's passes interleave BLAS with Lance's and the reader's threads on the
# same cores, where the spinning burns CPU they need (README, "Performance": wall-clock
# times within noise of the old default in scripts/bench_scores.py). 2^16 cycles here;
# only in effect when numpy is imported after curator; a value the user set is kept.
_os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

__version__ = "0.1.0"

# name -> module that defines it (imported on first access)
_NAMES = {
    "ingest": "curator.io.ingest", "IngestResult": "curator.io.ingest",
    "encode": "curator.io.encode", "EncodeResult": "curator.io.encode",
    "stats": "curator.maintenance.stats",
    "refresh": "curator.maintenance.refresh", "RefreshResult": "curator.maintenance.refresh",
    "cluster": "curator.curation.clusters", "ClusterResult": "curator.curation.clusters",
    "dedupe": "curator.curation.dedupe", "DedupeResult": "curator.curation.dedupe",
    "rebalance": "curator.curation.rebalance", "RebalanceResult": "curator.curation.rebalance",
    "query": "curator.io.query", "lazy": "curator.io.query",
    "export": "curator.io.export", "ExportResult": "curator.io.export",
    "report": "curator.views.report", "ReportResult": "curator.views.report",
    "verify": "curator.maintenance.verify", "VerifyResult": "curator.maintenance.verify",
    "optimize": "curator.maintenance.optimize", "OptimizeResult": "curator.maintenance.optimize",
    "demo": "curator.pipeline", "DemoResult": "curator.pipeline",
    "tag": "curator.curation.tags", "TagResult": "curator.curation.tags",
    "project": "curator.views.project", "ProjectResult": "curator.views.project",
    "browse": "curator.views.browse", "BrowseResult": "curator.views.browse",
    "negatives": "curator.curation.negatives", "NegativesResult": "curator.curation.negatives",
    "compare": "curator.views.compare", "CompareResult": "curator.views.compare",
    "CuratorError": "curator.errors",
    "Database": "curator.store.database", "tune_allocator": "curator.store.database",
}

__all__ = sorted(_NAMES) + ["__version__"]


def __getattr__(name: str):
    module = _NAMES.get(name)
    if module is None:
        try:  # a subpackage or module: curator.synthetic, curator.geometry, …
            return _importlib.import_module(f"{__name__}.{name}")
        except ModuleNotFoundError:
            raise AttributeError(f"module 'curator' has no attribute {name!r}") from None
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__():
    return __all__
