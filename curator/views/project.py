"""``project``: 2-D coordinates of every row, stored as ``proj_x``, ``proj_y`` (float32).

Methods (``--method``):

- ``gap`` (default): the report's "Two shells and the gap" view
  (:func:`curator.geometry.projection.gap_view`): x = ⟨x, ĝ⟩ along the unit gap between
  the image and text means, y = the top principal direction of the two modalities'
  pooled covariance with ĝ projected out, about their pooled mean. The view comes from
  the running statistics (exact, whole table, no sample), and the coordinates from one
  streaming pass over the vectors, so it costs one scan at any size. Rows of a third
  modality are placed by the same view. Needs two modalities (image and text, else the
  first two by name).
- ``pca``: the top two principal axes of all rows pooled (each row weighing the same,
  whatever its modality), from the statistics too; one scan.
- ``umap``: umap-learn (``pip install 'clip-curator[browse]'``) fitted with the cosine
  metric on ``sample`` rows chosen with ``seed`` (all modalities together); those rows
  keep their fitted layout, every other row is placed by ``transform`` in a streaming
  pass. Seeded, so a rerun on the same table version writes the same coordinates.

The columns are added on first use (one ``Merge`` commit with their values), else
rewritten (one ``Update`` commit): Lance data evolution, the vectors are never rewritten;
writer lock, statistics record carried forward.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

import numpy as np
import pyarrow as pa

from ..engine.rows import take_vectors
from ..engine.statistics import current
from ..engine.writes import add_columns, map_columns
from ..errors import BadInput, MissingDependency
from ..geometry import projection
from ..store.arrow import vectors
from ..store.database import Database
from ..store.versions import curation_step

METHODS = ("gap", "pca", "umap")
COLUMNS = ("proj_x", "proj_y")
UMAP_SAMPLE = 10_000
_FIELDS = [pa.field(c, pa.float32(), nullable=True) for c in COLUMNS]


@dataclass
class ProjectResult:
    """Which view was written, over how many rows, and its axes in words."""

    method: str
    rows: int
    x_axis: str
    y_axis: str
    table_version_read: int
    table_version: int
    modalities: list[str] = field(default_factory=list)
    sample: int | None = None  # umap: rows fitted
    seed: int | None = None
    ranges: dict = field(default_factory=dict)  # proj_x / proj_y: [min, max]
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        fitted = f", fitted on {self.sample:,} rows (seed {self.seed})" if self.sample else ""
        lines = [f"projected {self.rows:,} rows by {self.method}{fitted} into proj_x, proj_y: "
                 f"table version {self.table_version_read} -> {self.table_version} in "
                 f"{self.seconds:.1f} s",
                 f"  proj_x: {self.x_axis}", f"  proj_y: {self.y_axis}"]
        return "\n".join(lines)


def project(*, db=None, table: str = "embeddings", method: str = "gap", seed: int = 0,
            sample: int = UMAP_SAMPLE, engine: str | None = None) -> ProjectResult:
    """Write ``proj_x``, ``proj_y`` for every row by ``method`` (gap, pca or umap);
    ``sample`` and ``seed`` choose the rows umap is fitted on."""
    if method not in METHODS:
        raise BadInput(f"--method {method!r}: use one of {', '.join(METHODS)}")
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 10:
        raise BadInput("--sample must be an integer ≥ 10")
    if method == "umap":
        _umap_module()  # a missing dependency is an error before the lock is taken
    return _project(db=db, table=table, method=method, seed=int(seed), sample=int(sample),
                    engine=engine)


@curation_step
def _project(*, db, table, method, seed, sample, engine) -> ProjectResult:
    started = time.time()
    database = Database(db)
    dataset = database.dataset(table)
    read_version = dataset.version
    stats = current(database, table, dataset).nonempty()
    if not stats:
        raise BadInput(f"table {table!r} has no rows to project")
    extra = {}
    if method == "gap":
        pair = gap_pair(list(stats))
        if pair is None:
            raise BadInput(f"--method gap needs two modalities; table {table!r} has only "
                           f"{', '.join(stats)}: use --method pca or umap")
        try:
            view = projection.gap_view_of(stats[pair[0]], stats[pair[1]])
        except ValueError as exc:
            raise BadInput(f"--method gap: {exc}") from None
        model = ("view", view)
        modalities = list(pair)
        axes = (f"<x, g>, g the unit gap mean({pair[0]}) - mean({pair[1]}) (raw)",
                f"top principal direction of {pair[0]}+{pair[1]} with g removed (centred)")
    elif method == "pca":
        model = ("view", projection.pca_view_of(list(stats.values())))
        modalities = list(stats)
        axes = ("first principal axis of all rows pooled (centred)",
                "second principal axis of all rows pooled (centred)")
    else:
        rowids, fitted = _fit_umap(dataset, sample, seed)
        model = ("umap", (rowids, fitted[0], fitted[1]))
        modalities = list(stats)
        extra = {"sample": len(rowids), "seed": seed}
        axes = ("UMAP 1 (cosine, fitted on a seeded sample)", "UMAP 2")
    message = f"curator project --method {method}"
    if all(c in dataset.schema.names for c in COLUMNS):
        new, infos = map_columns(dataset, _update, (model,), ["embedding"],
                                 out_schema=pa.schema([("_rowid", pa.uint64()), *_FIELDS]),
                                 message=message, engine=engine)
    elif any(c in dataset.schema.names for c in COLUMNS):
        raise BadInput("the table has only one of proj_x, proj_y: drop it first")
    else:
        new = add_columns(dataset, _coordinates, (model,), ["embedding"],
                          out_schema=pa.schema(_FIELDS), message=message, engine=engine)
    ranges, rows = _ranges(new)
    return ProjectResult(method, rows, axes[0], axes[1], read_version, new.version, modalities,
                         ranges=ranges, seconds=time.time() - started, **extra)


def gap_pair(modalities: list[str]) -> tuple[str, str] | None:
    """The two modalities of the gap: image and text, else the first two by name."""
    names = sorted(modalities)
    if "image" in names and "text" in names:
        return "image", "text"
    return (names[0], names[1]) if len(names) >= 2 else None


def _place(batch: pa.RecordBatch, model) -> np.ndarray:
    kind, value = model
    X = vectors(batch)
    if kind == "view":
        return value.coordinates(X)
    rowids, reducer, layout = value
    ids = batch.column("_rowid").to_numpy()
    out = np.empty((len(ids), 2))
    pos = np.minimum(np.searchsorted(rowids, ids), max(len(rowids) - 1, 0))
    fitted = rowids[pos] == ids if len(rowids) else np.zeros(len(ids), bool)
    out[fitted] = layout[pos[fitted]]
    if (~fitted).any():
        out[~fitted] = reducer.transform(np.asarray(X[~fitted], np.float32))
    return out


def _coordinates(batch: pa.RecordBatch, model) -> pa.RecordBatch:
    xy = _place(batch, model).astype(np.float32)
    return pa.record_batch([pa.array(xy[:, 0]), pa.array(xy[:, 1])], schema=pa.schema(_FIELDS))


def _update(batch: pa.RecordBatch, model):
    xy = _place(batch, model).astype(np.float32)
    return pa.record_batch([batch.column("_rowid"), pa.array(xy[:, 0]), pa.array(xy[:, 1])],
                           schema=pa.schema([("_rowid", pa.uint64()), *_FIELDS])), None


def _ranges(dataset) -> tuple[dict, int]:
    lo = np.full(2, np.inf)
    hi = np.full(2, -np.inf)
    rows = 0
    for batch in dataset.to_batches(columns=list(COLUMNS), batch_size=262_144):
        rows += batch.num_rows
        for k in range(2):
            v = batch.column(k).to_numpy(zero_copy_only=False)
            v = v[np.isfinite(v)]
            if len(v):
                lo[k], hi[k] = min(lo[k], v.min()), max(hi[k], v.max())
    return {c: [float(lo[k]), float(hi[k])] for k, c in enumerate(COLUMNS)}, rows


# -- umap --------------------------------------------------------------------------------

def _umap_module():
    try:
        import umap  # noqa: F401
    except ImportError:
        raise MissingDependency("--method umap needs umap-learn: pip install "
                                "'clip-curator[browse]'") from None
    return umap


def _fit_umap(dataset, sample: int, seed: int):
    """Seeded sample of row ids (sorted), and (fitted reducer, the sample's layout)."""
    umap = _umap_module()
    all_ids = np.concatenate([b.column("_rowid").to_numpy() for b in dataset.to_batches(
        columns=[], with_row_id=True, batch_size=262_144)]) if dataset.count_rows() else \
        np.zeros(0, np.uint64)
    if len(all_ids) < 10:
        raise BadInput("--method umap needs at least 10 rows")
    rng = np.random.default_rng(seed)
    chosen = np.sort(rng.choice(np.sort(all_ids), size=min(sample, len(all_ids)), replace=False))
    X = take_vectors(dataset, chosen)
    reducer = umap.UMAP(n_components=2, metric="cosine", random_state=seed, n_jobs=1,
                        n_neighbors=min(15, len(chosen) - 1))
    layout = reducer.fit_transform(X)
    return chosen.astype(np.uint64), (reducer, np.asarray(layout, np.float64))
