"""Proven bounds on how far a stored score can be from its exact value now.

A row scored under statistics version v keeps every score column at v (its
``stats_version`` says so) while the statistics move on to the current version w. For
each column this module bounds |stored − exact now| from what curator keeps without
reading a vector: the versions' sums (n, S, U and, while rows still reference the
version, its full snapshot: second moment and uncertainty sketch) and per
(modality, version) maxima and minima of stored scalars (norms, centred norms).
``docs/bounds.md`` derives each bound; the tests check each against brute force, and
fail when any bound is scaled down.

Bounds are on the exact-arithmetic values. Stored values also carry float32 rounding
of computation and storage, at most :data:`ALLOWANCE` per column (uncertainty: plus
the sketch's resolution), which ``stats`` reports beside the bounds.

All bounds are ≥ 0, may be ``inf`` (nothing can be said: the version is unknown, a
row was never scored, a modality fell below two rows), and are capped at the column's
range (2 for cosines, 1 for percentiles).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import sketch
from .scores import AT_MEAN
from .sums import ModalityStats

INF = float("inf")
COLUMNS = ("conformity", "conformity_est", "uncertainty", "loglik", "alignment",
           "alignment_centered", "conformity_mismatch")
RANGE = {"conformity": 2.0, "conformity_est": 2.0, "uncertainty": 1.0, "loglik": INF,
         "alignment": 2.0, "alignment_centered": 2.0, "conformity_mismatch": 2.0}
# float32 computation and storage: |stored − exact at its own version| stays below these.
ALLOWANCE = {"conformity": 2e-5, "conformity_est": 2e-5, "uncertainty": 0.0, "loglik": 0.0,
             "alignment": 2e-5, "alignment_centered": 2e-5, "conformity_mismatch": 0.0}
LOGLIK_RTOL = 1e-5  # loglik's allowance: 4e-5 × (max |loglik| + |log det Σ| + 2d), float32 whitening
EPS32 = float(np.finfo(np.float32).eps)
CENTERED_RTOL = 1e-6  # alignment_centered's allowance grows with ((max‖x‖ + ‖m‖) / min‖x − m‖)²


@dataclass
class HistoryEntry:
    """What the history keeps of one (version, modality): the sums every bound needs,
    and, while rows still reference the version, its full snapshot (second moment and
    sketch) for the loglik and uncertainty bounds."""

    version: int
    modality: str
    n: int
    S: np.ndarray
    U: np.ndarray
    snapshot: ModalityStats | None = None

    @property
    def mean(self) -> np.ndarray:
        return self.S / max(self.n, 1)


@dataclass
class RowGroup:
    """The rows of one (modality, stats_version), as stored: how many, and the extremes
    of ‖x‖ and of ‖x − m_v‖ (m_v the modality mean of their version; computed from the
    stored norm and estimator: ‖x − m‖² = ‖x‖² − 2‖x‖‖m‖·cos(x, m) + ‖m‖²)."""

    modality: str
    version: int  # -1: never scored
    rows: int
    max_norm: float = 0.0
    min_centered: float = INF
    max_centered: float = 0.0
    max_abs_loglik: float = 0.0  # of the stored values (their float32 allowance scales with it)


# -- one column each --------------------------------------------------------------------

def conformity_bound(old: HistoryEntry | None, current: ModalityStats) -> float:
    """|C_v − C_w| ≤ ‖U_v/(n_v−1) − U_w/(n_w−1)‖ + |1/(n_v−1) − 1/(n_w−1)| (‖x̂‖ = 1).

    0 when both versions had fewer than two rows (null then and now); infinite when the
    version is unknown or exactly one of the two had fewer than two rows (a value that
    should be null, or a null that should be a value).
    """
    if old is None:
        return INF
    if old.n < 2 or current.n < 2:
        return 0.0 if (old.n < 2 and current.n < 2) else INF
    if old.n == current.n and np.array_equal(old.U, current.U):
        return 0.0
    diff = old.U / (old.n - 1) - current.U / (current.n - 1)
    return _cap(float(np.linalg.norm(diff) + abs(1.0 / (old.n - 1) - 1.0 / (current.n - 1))),
                "conformity")


def estimator_bound(old: HistoryEntry | None, current: ModalityStats) -> float:
    """|cos(x, m_v) − cos(x, m_w)| = |⟨x̂, m̂_v − m̂_w⟩| ≤ ‖m̂_v − m̂_w‖."""
    if old is None:
        return INF
    if old.n == current.n and np.array_equal(old.S, current.S):
        return 0.0
    a, b = np.linalg.norm(old.S), np.linalg.norm(current.S)
    if a == 0 or b == 0:
        return INF
    return _cap(float(np.linalg.norm(old.S / a - current.S / b)), "conformity_est")


def loglik_bound(old: ModalityStats | None, current: ModalityStats, max_centered: float) -> float:
    """|ℓ_v(x) − ℓ_w(x)| for rows with ‖x − m_v‖ ≤ R (``max_centered``).

    With precisions P (floored inverse covariances), δ = m_v − m_w and a = x − m_v:
    q_v − q_w = aᵀ(P_v − P_w)a − 2δᵀP_w a − δᵀP_w δ, so
    |ℓ_v − ℓ_w| ≤ ½(‖P_v − P_w‖R² + 2‖P_w δ‖R + δᵀP_wδ) + ½|log det Σ_v − log det Σ_w|,
    with the Frobenius norm (≥ the spectral one, and no eigen-decomposition).
    Infinite without the version's snapshot.
    """
    if old is None:
        return INF
    if old.n < 2 or current.n < 2:  # loglik is null below two rows
        return 0.0 if (old.n < 2 and current.n < 2) else INF
    if not math.isfinite(max_centered):
        return INF
    if (old.n == current.n and np.array_equal(old.S, current.S)
            and np.array_equal(old.Q_about(current.shift), current.Q)):
        return 0.0
    wv, ww = old.whitening(), current.whitening()
    Pv = wv.matrix.astype(np.float64) @ wv.matrix.astype(np.float64).T
    Pw = ww.matrix.astype(np.float64) @ ww.matrix.astype(np.float64).T
    spread = float(np.linalg.norm(Pv - Pw))
    delta = old.mean - current.mean
    Pd = Pw @ delta
    R = float(max_centered)
    q = spread * R * R + 2.0 * float(np.linalg.norm(Pd)) * R + float(delta @ Pd)
    return 0.5 * q + 0.5 * abs(wv.log_det - ww.log_det)


def sketch_distance(old_hist: np.ndarray | None, current_hist: np.ndarray) -> float:
    """sup_t |G_v(t) − G_w(t)| of the two sketch CDFs (linear within bins, so the
    supremum is at a bin edge); 1 without the old sketch."""
    if old_hist is None:
        return 1.0
    a, b = old_hist.sum(), current_hist.sum()
    if a <= 0 or b <= 0:
        return 0.0 if a == b else 1.0
    return float(np.abs(np.cumsum(old_hist) / a - np.cumsum(current_hist) / b).max())


def window_mass(hist: np.ndarray, width: float) -> float:
    """The largest share of sketched values in any interval of length ``width`` (an
    interval of that length meets at most ceil(width / bin) + 1 bins); 0 for width 0."""
    if width <= 0:
        return 0.0
    total = hist.sum()
    if total <= 0:
        return 0.0
    if not math.isfinite(width):
        return 1.0
    bins = min(sketch.HIST_BINS, int(math.ceil(width / sketch.BIN_WIDTH)) + 1)
    cum = np.concatenate([[0], np.cumsum(hist)])
    return float(min(1.0, (cum[bins:] - cum[:-bins]).max() / total))


def uncertainty_bound(old_hist: np.ndarray | None, current_hist: np.ndarray,
                      conformity: float, beta: float) -> float:
    """|u_v − u*| ≤ KS(G_v, G_w) + mass of G_w in a window of width b_v + β.

    u_v = G_v(s) (the sketch of version v at the stored conformity s); u* = the exact
    percentile of the exact conformity now. b_v bounds |s − c*| for these rows and β
    bounds it for every row of the modality (the largest conformity bound present), so
    the exact percentile lies between G_w(s − b_v − β) and G_w(s + b_v + β), up to the
    sketch's resolution (reported separately).
    """
    if not math.isfinite(conformity):
        return INF  # the conformity (and so its percentile) may be null then and a value now
    if not math.isfinite(beta):
        return 1.0
    return _cap(sketch_distance(old_hist, current_hist)
                + window_mass(current_hist, conformity + beta), "uncertainty")


def centered_alignment_bound(image: RowGroup, shift_image: float, scale_image: float,
                             text: RowGroup, shift_text: float, scale_text: float) -> float:
    """|cos(a_i, a_t) − cos(a_i + δ_i, a_t + δ_t)| ≤ ‖â_i − â_i'‖ + ‖â_t − â_t'‖ with
    a = x − m^v, δ = m^v − m^w: moving a by δ (‖δ‖ < ‖a‖) turns it by at most
    arcsin(ρ), ρ = ‖δ‖/‖a‖, so its unit vector moves by at most the chord
    2 sin(arcsin(ρ)/2) = √(2 − 2√(1 − ρ²)) ≈ ρ, largest for the row nearest the mean
    (‖a‖ = the group's smallest ‖x − m^v‖). The same holds for an image's maximum over
    its captions (|max f − max g| ≤ max |f − g|).

    The centred alignment is null for a row at its modality's mean (‖x − m‖² at most
    ``AT_MEAN`` × (‖x‖ + ‖m‖)², ``scale`` = max ‖x‖ + ‖m‖ over the group). Infinite when a
    row of the group may cross that line between v and now (null then, value now, or
    back): ‖x − m^w‖ ≥ ‖x − m^v‖ − ‖δ‖ must stay above it.
    """
    terms = []
    for group, shift, scale in ((image, shift_image, scale_image), (text, shift_text, scale_text)):
        floor = math.sqrt(AT_MEAN) * scale
        radius = group.min_centered
        if not (math.isfinite(shift) and math.isfinite(radius)) or radius <= floor * 1.01 \
                or radius - shift <= floor * 1.01:
            return INF
        rho = shift / radius
        terms.append(math.sqrt(max(0.0, 2.0 - 2.0 * math.sqrt(max(0.0, 1.0 - rho * rho)))))
    return _cap(sum(terms), "alignment_centered")


def _cap(value: float, column: str) -> float:
    return min(value, RANGE[column]) if math.isfinite(value) else value


# -- every column of every (modality, version) group ------------------------------------

def centered_norms(norm: np.ndarray, estimator: np.ndarray, mean_norm: float) -> np.ndarray:
    """‖x − m‖ from the stored ‖x‖ and cos(x, m), with a margin for float32 storage
    (returns the range [low, high] as two arrays stacked: (2, n))."""
    norm = np.asarray(norm, np.float64)
    est = np.clip(np.asarray(estimator, np.float64), -1.0, 1.0)
    sq = norm * norm - 2.0 * norm * mean_norm * est + mean_norm * mean_norm
    margin = 4e-7 * (norm + mean_norm) ** 2 + 1e-12  # est stored as float32
    return np.stack([np.sqrt(np.maximum(sq - margin, 0.0)), np.sqrt(np.maximum(sq + margin, 0.0))])


def table_bounds(groups: list[RowGroup], history: dict[tuple[int, str], HistoryEntry],
                 current: dict[str, ModalityStats], current_version: int
                 ) -> dict[tuple[str, int], dict[str, float]]:
    """Per (modality, version) group of rows: a bound for every score column.

    ``current`` maps each modality to its statistics now (with its sketch); rows of the
    current version have bound 0 for every column except the uncertainty family, whose
    bound then only reflects other rows' staleness (β).
    """
    conf = {}
    for g in groups:
        cur = current.get(g.modality)
        if g.version < 0 or cur is None:
            conf[(g.modality, g.version)] = INF
        elif g.version == current_version:
            conf[(g.modality, g.version)] = 0.0
        else:
            conf[(g.modality, g.version)] = conformity_bound(history.get((g.version, g.modality)), cur)
    beta = {}
    for (m, v), b in conf.items():
        beta[m] = max(beta.get(m, 0.0), b)
    unc = {}
    for g in groups:
        key = (g.modality, g.version)
        cur = current.get(g.modality)
        if cur is None or g.version < 0:
            unc[key] = 1.0
            continue
        entry = history.get((g.version, g.modality))
        old_hist = cur.hist if g.version == current_version else (
            entry.snapshot.hist if entry is not None and entry.snapshot is not None else None)
        unc[key] = uncertainty_bound(old_hist, cur.hist, conf[key], beta[g.modality])
    by_version: dict[int, dict[str, RowGroup]] = {}
    for g in groups:
        by_version.setdefault(g.version, {})[g.modality] = g
    out = {}
    for g in groups:
        key = (g.modality, g.version)
        cur = current.get(g.modality)
        entry = history.get((g.version, g.modality))
        if g.version < 0 or cur is None:
            out[key] = dict.fromkeys(COLUMNS, INF)
            continue
        fresh = g.version == current_version
        row = {
            "conformity": conf[key],
            "conformity_est": 0.0 if fresh else estimator_bound(entry, cur),
            "uncertainty": unc[key],
            "loglik": 0.0 if fresh else loglik_bound(
                entry.snapshot if entry is not None else None, cur, g.max_centered),
            "alignment": 0.0,
        }
        pair = by_version.get(g.version, {})
        image, text = pair.get("image"), pair.get("text")
        if image is None or text is None or fresh:
            row["alignment_centered"] = 0.0
        else:
            shifts, scales = [], []
            for m, grp in (("image", image), ("text", text)):
                old, now = history.get((g.version, m)), current.get(m)
                shifts.append(_mean_shift(old, now))
                means = [np.linalg.norm(e.mean) for e in (old, now) if e is not None and e.n]
                scales.append(grp.max_norm + max(means, default=0.0))
            row["alignment_centered"] = centered_alignment_bound(
                image, shifts[0], scales[0], text, shifts[1], scales[1])
        row["conformity_mismatch"] = _cap(
            unc.get(("image", g.version), 0.0) + unc.get(("text", g.version), 0.0),
            "conformity_mismatch")
        out[key] = row
    return out


def _mean_shift(entry: HistoryEntry | None, current: ModalityStats | None) -> float:
    if entry is None or current is None or current.n == 0:
        return INF
    return float(np.linalg.norm(entry.mean - current.mean))


def loglik_allowance(s: ModalityStats, groups: list[RowGroup]) -> float:
    """Float32 error of ℓ = −½(d log 2π + ‖y‖² + log det Σ), y = (x − m)W: x − m is rounded
    at ε₃₂(‖x‖ + ‖m‖) per component and W amplifies it by ‖W‖₂ = λ_min^{-½}, so
    |Δ‖y‖²| ≤ 2‖y‖·Δy with Δy ≤ 4ε₃₂√d(‖x‖ + ‖m‖)‖W‖₂ and ‖y‖² ≤ 2|ℓ| + |log det| + d log 2π;
    plus float32 storage of ℓ."""
    if s.n < 2 or not groups:
        return 0.0
    white = s.whitening()
    spread = float(np.sqrt((white.matrix.astype(np.float64) ** 2).sum(axis=0)).max())
    scale = max(g.max_norm for g in groups) + float(np.linalg.norm(s.mean))
    worst = max(g.max_abs_loglik for g in groups)
    q = 2 * worst + abs(white.log_det) + s.dim * math.log(2 * math.pi)
    dy = 4 * EPS32 * math.sqrt(s.dim) * scale * spread
    return math.sqrt(max(q, 0.0)) * dy + dy * dy / 2 + 2 * EPS32 * worst + LOGLIK_RTOL


def allowances(modality: str, groups: list[RowGroup], current: dict[str, ModalityStats]) -> dict:
    """Float32 allowance per column for the rows of ``modality`` (added to the bounds):
    what float32 computation and storage may add to the exact-arithmetic value."""
    s = current[modality]
    out = dict(ALLOWANCE)
    out["uncertainty"] = s.cdf_resolution + window_mass(s.hist, 2 * ALLOWANCE["conformity"])
    out["conformity_mismatch"] = sum(
        current[m].cdf_resolution + window_mass(current[m].hist, 2 * ALLOWANCE["conformity"])
        for m in ("image", "text") if m in current)
    mine = [g for g in groups if g.modality == modality]
    out["loglik"] = loglik_allowance(s, mine)
    kappa = 0.0
    for m in ("image", "text"):
        if m not in current:
            continue
        mean = float(np.linalg.norm(current[m].mean))
        for g in groups:
            if g.modality == m and g.min_centered > 0 and math.isfinite(g.min_centered):
                kappa += ((g.max_norm + mean) / g.min_centered) ** 2
    out["alignment_centered"] = ALLOWANCE["alignment_centered"] + CENTERED_RTOL * kappa
    return out
