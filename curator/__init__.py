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

from .clusters import ClusterResult, cluster  # noqa: E402
from .dedupe import DedupeResult, dedupe  # noqa: E402
from .errors import CuratorError  # noqa: E402
from .export import ExportResult, export  # noqa: E402
from .ingest import IngestResult, ingest  # noqa: E402
from .rebalance import RebalanceResult, rebalance  # noqa: E402
from .refresh import RefreshResult, refresh  # noqa: E402
from .report import ReportResult, report  # noqa: E402
from .stats import describe  # noqa: E402
from .store import Database, tune_allocator  # noqa: E402

__all__ = ["ClusterResult", "CuratorError", "Database", "DedupeResult", "cluster", "dedupe", "ExportResult", "IngestResult", "RebalanceResult",
           "RefreshResult", "ReportResult", "describe", "export", "ingest", "rebalance", "refresh", "report", "tune_allocator",
           "__version__"]
