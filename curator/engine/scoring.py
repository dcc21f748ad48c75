"""Scoring rows of a table against its statistics, written by Lance data evolution.

One engine serves ``ingest`` (the rows just appended), ``refresh`` (the rows whose
staleness bound exceeds a tolerance) and ``verify --repair``:

1. the row index (:mod:`curator.engine.index`): sample ids, modalities, stored scores
   and pair dots of every row, no vectors;
2. one pass over the vectors of the target rows (plus the few partners of those rows
   that are not targets), one task per piece (:func:`piece_scalars`): conformity, the
   estimator, the log-likelihood and each row's dot with every modality mean;
3. the uncertainty sketch updated by the targets' new conformity, uncertainty as its CDF;
4. pair scores from scalars (``pair_dot`` = ⟨x_img, x_txt⟩ is stored on text rows);
5. one commit that writes only the score columns of the changed rows
   (:func:`curator.engine.writes.write_columns`).
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa

from ..geometry.scores import IMAGE, TEXT, pair_scores, row_scores
from ..geometry.sketch import conformity_bins
from ..geometry.sums import TableStats
from ..store.arrow import groups, vectors
from ..store.columns import SCAN_BATCH_ROWS
from .executor import LOCAL, executor
from .fragments import Piece, pieces
from .index import RowIndex
from .index import read_index as read_row_index
from .rows import TAKE_SHARE, piece_rows, take_vectors
from .writes import write_columns

OUT_COLUMNS = {
    "conformity": pa.float32(),
    "conformity_est": pa.float32(),
    "uncertainty": pa.float32(),
    "loglik": pa.float32(),
    "alignment": pa.float32(),
    "alignment_centered": pa.float32(),
    "conformity_mismatch": pa.float32(),
    "pair_dot": pa.float64(),
    "stats_version": pa.int64(),
}
SCORE_FLOATS = [c for c in OUT_COLUMNS if c != "stats_version"]


def read_index(dataset) -> RowIndex:
    """The row index with the stored scores the scoring engine needs."""
    return read_row_index(dataset, ["stats_version"] + SCORE_FLOATS)


def score_rows(dataset, stats: TableStats, target: np.ndarray | None = None,
               index: RowIndex | None = None, message: str = "curator score",
               all_uncertainty: bool = False, *, engine: str | None = None):
    """Rescore the rows selected by ``target`` (bool mask over ``index``) and commit.

    ``stats`` must describe the table's rows (it is the version recorded on the rows);
    its uncertainty sketches are updated in place. With ``all_uncertainty`` the
    percentiles (and the mismatch built on them) of all other rows are recomputed from
    their stored conformity too (scalars only, no vectors read). ``engine`` runs the
    vector pass and the writes locally or on Ray. Returns (new dataset, rows rescored).
    """
    index = read_index(dataset) if index is None else index
    if target is None:
        target = np.ones(len(index.rowid), bool)
    if not target.any():
        return dataset, 0
    n = len(index.rowid)
    image, text = index.code(IMAGE), index.code(TEXT)
    paired = (index.modality == image) | (index.modality == text)

    # Rows of the samples touched by a target, which the pair scores need.
    touched = np.unique(index.sample[target & paired & (index.sample >= 0)])
    universe = paired & np.isin(index.sample, touched) & (index.sample >= 0)
    needed = target | universe

    scalars = compute_scalars(dataset, stats, index, needed, engine=engine)
    live = stats.nonempty()

    # Pair dots that the ingest could not compute (partner arrived in another batch).
    pair_dot = index["pair_dot"].copy()
    image_of_sample = _first_image(index, universe, image)
    # ... or whose image is itself being scored (new, or replaced: the old dot is void).
    missing = universe & (index.modality == text) & (np.isnan(pair_dot) | _image_is_target(
        index, image_of_sample, target))
    if missing.any():
        _fill_pair_dots(dataset, index, missing, image_of_sample, pair_dot)

    # Uncertainty: the sketch takes the targets' new conformity in place of their old.
    # With ``all_uncertainty`` (refresh) every row's percentile is recomputed from its
    # stored conformity, so no percentile is left behind a changed sketch.
    conformity_now = np.where(needed, scalars["conformity"], index["conformity"])
    scope = np.ones(n, bool) if all_uncertainty else needed
    uncertainty = np.full(n, np.nan)
    for m, s in live.items():
        rows_m = index.modality == index.code(m)
        old = index["conformity"][target & rows_m]
        new = scalars["conformity"][target & rows_m]
        np.subtract.at(s.hist, conformity_bins(old[np.isfinite(old)]), 1)
        np.add.at(s.hist, conformity_bins(new[np.isfinite(new)]), 1)
        np.maximum(s.hist, 0, out=s.hist)
        sel = rows_m & scope & np.isfinite(conformity_now)
        uncertainty[sel] = s.cdf(conformity_now[sel])
    del conformity_now

    computed = _pair_columns(index, stats, scalars, uncertainty, pair_dot, image_of_sample,
                             universe, image, text)
    if all_uncertainty:
        everyone = _first_image(index, paired & (index.sample >= 0), image)
        computed["conformity_mismatch"] = _mismatch(index, uncertainty, everyone, text)
    new = {
        "conformity": scalars.pop("conformity"),
        "conformity_est": scalars.pop("conformity_est"),
        "uncertainty": uncertainty,
        "loglik": scalars.pop("loglik"),
        **computed,
        "pair_dot": pair_dot,
    }
    del scalars, computed, uncertainty, pair_dot  # `new` holds what is still needed
    # Write only rows whose values change: the targets, plus (refresh) rows whose
    # percentile or pair scores moved. Built at those positions only (bounded memory).
    refreshable = {"uncertainty": scope, "conformity_mismatch": scope,
                   "pair_dot": scope & needed, "alignment": scope & needed,
                   "alignment_centered": scope & needed}
    changed, fresh = target.copy(), {}
    for name, allowed in refreshable.items():
        values = new[name]
        fresh[name] = allowed & ~target & np.isfinite(values)
        changed |= fresh[name] & ~_same(values, index[name])
    positions = np.flatnonzero(changed)
    is_target = target[positions]
    out = {}
    for name in list(new):  # column by column, each freed once taken (bounded memory)
        values = new.pop(name)
        keep_old = ~is_target & ~fresh[name][positions] if name in fresh else ~is_target
        stored = index[name]
        column = values[positions].astype(stored.dtype)
        del values
        np.copyto(column, stored[positions], where=keep_old)
        out[name] = column
    versions = np.where(is_target, stats.version, index["stats_version"][positions])
    new_dataset = write_scores(dataset, index.rowid[positions], out, versions, message, engine=engine)
    return new_dataset, int(target.sum())


def scalar_arrays(stats: TableStats, n: int):
    """NaN-filled per-row scalar arrays, the non-empty modalities and their whitenings."""
    scalars = {k: np.full(n, np.nan) for k in ("conformity", "conformity_est", "loglik", "norm")}
    for m in stats.modalities:
        scalars[f"dot_{m}"] = np.full(n, np.nan)
    live = stats.nonempty()
    return scalars, live, {m: s.whitening() if s.n > 1 else None for m, s in live.items()}


def piece_scalars(piece: Piece, rowids: np.ndarray, take: bool, model) -> dict:
    """The pass's per-piece function: scalars of the rows ``rowids`` of one piece.

    Returns ``{"rowid", "norm", "conformity", "conformity_est", "loglik", "dot_M"…}``,
    float64 arrays aligned with the returned row ids (NaN for modalities without
    statistics).
    """
    live, whitening, names = model
    keys = ["norm", "conformity", "conformity_est", "loglik"] + [f"dot_{m}" for m in names]
    parts = {k: [] for k in ["rowid"] + keys}
    for ids, batch in piece_rows(piece, rowids, ["modality", "embedding"], take):
        X = vectors(batch)
        out = {k: np.full(len(ids), np.nan) for k in keys}
        out["norm"] = np.sqrt(np.einsum("ij,ij->i", X, X)).astype(np.float64)  # float32: 6x faster, 2e-7
        for m, rows in groups(batch.column("modality")):
            if m not in live:
                continue
            sel = slice(None) if rows is None else rows
            for key, values in row_scores(X[sel], out["norm"][sel], m, live, whitening[m]).items():
                out[key][sel] = values
        parts["rowid"].append(ids)
        for k in keys:
            parts[k].append(out[k])
    return {k: np.concatenate(v) if v else np.zeros(0) for k, v in parts.items()}


def compute_scalars(dataset, stats: TableStats, index: RowIndex, needed: np.ndarray, *,
                    engine: str | None = None) -> dict:
    """Per-row scalars of the needed rows from one pass over their vectors (NaN elsewhere).

    ``norm``, ``conformity``, ``conformity_est``, ``loglik`` and ``dot_M`` per modality M
    of ``stats``, float64 arrays aligned with ``index``.
    """
    scalars, live, whitening = scalar_arrays(stats, len(index.rowid))
    run = executor(engine)
    model = run.put((live, whitening, sorted(stats.modalities)))
    wanted = index.rowid[needed]  # sorted: the index orders rows by row id
    fragment_of = (wanted >> np.uint64(32)).astype(np.int64)
    split = None if run.name == LOCAL else 1 << 17
    jobs = []
    for piece in pieces(dataset, split):
        fid = piece.fragment_id
        lo, hi = np.searchsorted(fragment_of, [fid, fid + 1])
        if lo == hi:
            continue
        take = hi - lo <= TAKE_SHARE * piece.fragment.physical_rows
        if take and not (piece.offset == 0):
            continue  # a sparse fragment is read once, by its first piece
        jobs.append((piece, wanted[lo:hi], take, model))
    for result in run.map(piece_scalars, jobs):
        pos = index.positions(result.pop("rowid"))
        for key, values in result.items():
            scalars[key][pos] = values
    return scalars


def _same(new: np.ndarray, old: np.ndarray) -> np.ndarray:
    """Equal as stored (old float32 columns compare at float32), NaN equal to NaN."""
    new = new.astype(old.dtype, copy=False)
    return (new == old) | (np.isnan(new) & np.isnan(old))


def _mismatch(index, uncertainty, image_of_sample, text) -> np.ndarray:
    """uncertainty(text) − uncertainty(image) on text rows; image rows: max over captions."""
    n = len(index.rowid)
    out = np.full(n, np.nan)
    t, i = _partners(index, index.modality == text, image_of_sample)
    if len(t) == 0:
        return out
    values = uncertainty[t] - uncertainty[i]
    out[t] = values
    best = np.full(n, -np.inf)
    np.maximum.at(best, i, np.where(np.isnan(values), -np.inf, values))
    out[np.isfinite(best)] = best[np.isfinite(best)]
    return out


def _first_image(index: RowIndex, universe: np.ndarray, image: int) -> np.ndarray:
    """Array: sample code → position of its (first) image row within ``universe``, else -1."""
    n_samples = int(index.sample.max()) + 1 if len(index.sample) else 0
    image_at = np.full(max(n_samples, 1), -1, np.int64)
    positions = np.flatnonzero(universe & (index.modality == image))
    # Assign in reverse so the first image of a sample wins.
    image_at[index.sample[positions[::-1]]] = positions[::-1]
    return image_at


def _image_is_target(index: RowIndex, image_at: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Per row: its sample's image row is among the targets (False without an image)."""
    has = index.sample >= 0
    image = np.full(len(index.sample), -1, np.int64)
    image[has] = image_at[index.sample[has]]
    return (image >= 0) & target[np.maximum(image, 0)]


def _partners(index: RowIndex, rows: np.ndarray, image_at: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(text positions, their image positions) for the text rows in ``rows`` with an image."""
    t = np.flatnonzero(rows & (index.sample >= 0))
    i = image_at[index.sample[t]]
    keep = i >= 0
    return t[keep], i[keep]


def _fill_pair_dots(dataset, index, missing, image_of_sample, pair_dot) -> None:
    text_pos, img_pos = _partners(index, missing, image_of_sample)
    if len(text_pos) == 0:
        return
    for start in range(0, len(text_pos), SCAN_BATCH_ROWS):
        t = text_pos[start:start + SCAN_BATCH_ROWS]
        i = img_pos[start:start + SCAN_BATCH_ROWS]
        Xt = take_vectors(dataset, index.rowid[t])
        Xi = take_vectors(dataset, index.rowid[i])
        pair_dot[t] = np.einsum("ij,ij->i", Xt, Xi, dtype=np.float64)


def _pair_columns(index, stats, scalars, uncertainty, pair_dot, image_of_sample, universe,
                  image, text) -> dict[str, np.ndarray]:
    n = len(index.rowid)
    out = {k: np.full(n, np.nan) for k in ("alignment", "alignment_centered", "conformity_mismatch")}
    if IMAGE not in stats.modalities or TEXT not in stats.modalities:
        return out
    t, i = _partners(index, universe & (index.modality == text) & np.isfinite(pair_dot),
                     image_of_sample)
    if len(t) == 0:
        return out
    m_i, m_t = stats.modalities[IMAGE].mean, stats.modalities[TEXT].mean
    scores = pair_scores(pair_dot[t], scalars["norm"][i], scalars["norm"][t],
                         scalars[f"dot_{IMAGE}"][i], scalars[f"dot_{TEXT}"][i],
                         scalars[f"dot_{IMAGE}"][t], scalars[f"dot_{TEXT}"][t],
                         m_i, m_t, uncertainty[i], uncertainty[t])
    for key, values in scores.items():
        out[key][t] = values
        best = np.full(n, -np.inf)
        np.maximum.at(best, i, np.where(np.isnan(values), -np.inf, values))
        has = np.isfinite(best)
        out[key][has] = best[has]
    return out


def write_scores(dataset, rowids, columns: dict[str, np.ndarray], versions: np.ndarray,
                 message: str, *, engine: str | None = None):
    """Write the score columns of the rows ``rowids`` in one commit (data evolution)."""
    arrays = {}
    for name, dtype in OUT_COLUMNS.items():
        if name == "stats_version":
            arrays[name] = pa.array(versions.astype(np.int64, copy=False), pa.int64(), mask=versions < 0)
        else:
            values = columns[name]
            arrays[name] = pa.array(values.astype(dtype.to_pandas_dtype(), copy=False), dtype,
                                    mask=~np.isfinite(values))
    return write_columns(dataset, rowids, arrays, message, engine=engine)
