"""curator: curate image-text training data by the geometry of raw CLIP embeddings.

Library API (the CLI calls exactly these)::

    import curator
    curator.ingest(["pairs.parquet"], db="curator.lancedb")
    curator.refresh(db="curator.lancedb")
    curator.query("select modality, avg(conformity) from embeddings group by 1")
"""

import os as _os

_os.environ.setdefault("LANCE_LOG", "error")

__version__ = "0.1.0"

from .clusters import ClusterResult, cluster
from .dedupe import DedupeResult, dedupe
from .errors import CuratorError
from .export import ExportResult, export
from .ingest import IngestResult, ingest
from .rebalance import RebalanceResult, rebalance
from .refresh import RefreshResult, refresh
from .report import ReportResult, report
from .stats import describe
from .store import Database, tune_allocator

__all__ = [
           "ClusterResult",
           "CuratorError",
           "Database",
           "DedupeResult",
           "ExportResult",
           "IngestResult",
           "RebalanceResult",
           "RefreshResult",
           "ReportResult",
           "__version__",
           "cluster",
           "dedupe",
           "describe",
           "export",
           "ingest",
           "rebalance",
           "refresh",
           "report",
           "tune_allocator",
]
