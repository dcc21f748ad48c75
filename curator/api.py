"""The library face of curator: one function per command of the ``curator`` CLI, with the
same name and the same keyword arguments as the command's options (``--table-version``
is ``table_version``; the global ``--db``, ``--table``, ``--quiet`` and ``--engine`` are
``db``, ``table``, ``quiet`` and ``engine``). Each returns a result object with
``to_dict()`` and ``summary()`` (``query`` returns an Arrow table).

The functions live in the modules of the data flow; this module only names them.
"""

from __future__ import annotations

from .curation.clusters import cluster
from .curation.dedupe import dedupe
from .curation.negatives import negatives
from .curation.rebalance import rebalance
from .curation.tags import tag
from .io.encode import encode
from .io.export import export
from .io.ingest import ingest
from .io.query import query
from .maintenance.optimize import optimize
from .maintenance.refresh import refresh
from .maintenance.stats import stats
from .maintenance.verify import verify
from .pipeline import demo
from .views.browse import browse
from .views.compare import compare
from .views.project import project
from .views.report import report

COMMANDS = ("ingest", "encode", "stats", "refresh", "cluster", "dedupe", "rebalance", "query",
            "export", "report", "verify", "optimize", "demo", "tag", "project", "browse",
            "negatives", "compare")

__all__ = ["cluster", "dedupe", "demo", "encode", "export", "ingest", "optimize", "query",
           "rebalance", "refresh", "report", "stats", "verify", "tag", "project", "browse",
           "negatives", "compare"]
