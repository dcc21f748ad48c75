"""Scoring a table against another table's statistics (a trusted reference corpus).

``refresh --reference REF`` writes ``ref_conformity`` (mean cosine to REF's rows of the
same modality, the out-of-set formula ``⟨x̂, U⟩/n``, [-1, 1], high = generic relative to
REF), ``ref_conformity_est`` (cos(x, m_REF)), ``ref_uncertainty`` (percentile of
ref_conformity among REF's own rows, [0, 1]) and ``ref_loglik`` (under REF's whitened
Gaussian). Modalities absent from REF get nulls. The reference must hold vectors of
the same dimension and model.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import pyarrow as pa

from ..engine.statistics import current
from ..engine.writes import map_columns
from ..errors import BadInput
from ..geometry.scores import row_scores
from ..store.arrow import groups, vectors
from ..store.database import Database, check_same_space
from ..store.lock import writer_lock

REF_COLUMNS = ("ref_conformity", "ref_conformity_est", "ref_uncertainty", "ref_loglik")
OUT_SCHEMA = pa.schema([("_rowid", pa.uint64())] + [(c, pa.float32()) for c in REF_COLUMNS])


@dataclass
class ReferenceResult:
    table: str
    reference: str
    reference_version: int
    reference_stats_version: int
    rows: int
    table_version_read: int
    table_version: int

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"scored {self.rows} rows of {self.table} against {self.reference} "
                f"(version {self.reference_version}, stats v{self.reference_stats_version}): "
                f"{', '.join(REF_COLUMNS)}; table version {self.table_version_read} -> {self.table_version}")


def score_against(*, db=None, table: str = "embeddings", reference: str,
                  quiet: bool = True, engine: str | None = None) -> ReferenceResult:
    """Write ``ref_*`` score columns of ``table`` computed against ``reference``'s statistics."""
    if reference == table:
        raise BadInput("--reference names the table itself; use refresh without --reference")
    database = Database(db)
    dataset = database.dataset(table)
    ref_dataset = database.dataset(reference)
    check_same_space(dataset, ref_dataset, table, reference)
    with writer_lock(database, table):
        return _score_locked(database, table, reference, ref_dataset, engine)


def _score_locked(database, table, reference, ref_dataset, engine) -> ReferenceResult:
    dataset = database.dataset(table)
    ref_stats = current(database, reference, ref_dataset)
    live = ref_stats.nonempty()
    whitening = {m: s.whitening() if s.n > 1 else None for m, s in live.items()}
    read_version = dataset.version
    missing = [pa.field(c, pa.float32()) for c in REF_COLUMNS if c not in dataset.schema.names]
    if missing:
        dataset.add_columns(missing)
        dataset = database.dataset(table)
    model = (live, whitening)
    dataset, _ = map_columns(dataset, _reference_scores, (model,), ["modality", "embedding"],
                             out_schema=OUT_SCHEMA, message=f"curator reference {reference}",
                             engine=engine)
    return ReferenceResult(table, reference, ref_dataset.version, ref_stats.version,
                           dataset.count_rows(), read_version, dataset.version)


def _reference_scores(batch, model):
    """Per batch: the ``ref_*`` columns against the reference's statistics."""
    live, whitening = model
    X = vectors(batch)
    norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
    out = {c: np.full(len(X), np.nan) for c in REF_COLUMNS}
    for m, rows in groups(batch.column("modality")):
        if m not in live:
            continue
        rows = slice(None) if rows is None else rows
        scores = row_scores(X[rows], norms[rows], m, live, whitening[m], in_reference=False)
        out["ref_conformity"][rows] = scores["conformity"]
        out["ref_conformity_est"][rows] = scores["conformity_est"]
        out["ref_loglik"][rows] = scores["loglik"]
        out["ref_uncertainty"][rows] = live[m].cdf(scores["conformity"])
    arrays = [batch.column("_rowid")] + [
        pa.array(out[c].astype(np.float32), pa.float32(), mask=~np.isfinite(out[c]))
        for c in REF_COLUMNS]
    return pa.table(arrays, schema=OUT_SCHEMA), None
