"""``verify``'s row checks: every stored score against its exact value now, within its
bound, and against its value at the row's own statistics version (one version per row).

One pass over the vectors (per piece, run by the executor) computes for each row the
exact scalars at the statistics recomputed from the rows ("truth") and at the version
the row claims; they go to a spill with the stored values. Then DuckDB joins each
caption with its sample's first image for the pair scores, and a last streamed query
compares, column by column:

- ``<column>``: |stored − exact now| > bound of the row's (modality, version) group +
  float32 allowance (uncertainty also the two sketches' resolutions): a wrong value;
- ``mixed_version``: a stored value that is not the value at the row's own version, or
  a caption and its image scored at different versions: a row written without its
  version (what rule 1 forbids);
- ``unscored`` / ``unknown_version`` / ``norm``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..engine.executor import executor
from ..engine.fragments import Piece, pieces
from ..engine.scoring import SCORE_COLUMNS, ScoreModel
from ..engine.spill import ScalarSpill
from ..geometry import sketch
from ..geometry.bounds import ALLOWANCE, COLUMNS, LOGLIK_RTOL, window_mass
from ..geometry.scores import IMAGE, TEXT, pair_scores
from ..geometry.sums import ModalityStats, TableStats
from ..store.arrow import vectors

EXAMPLES = 5
NORM_RTOL = 1e-5
OWN_TOLERANCE = 2e-5  # stored vs recomputed at its own version (float32 both times)
_SCALARS = ("conformity", "conformity_est", "loglik", "dot_image", "dot_text")

SPILL = pa.schema(
    [("key", pa.int64()), ("id", pa.string()), ("sample_id", pa.string()), ("modality", pa.string()),
     ("version", pa.int64()), ("norm", pa.float64()), ("norm_exact", pa.float64())]
    + [(f"stored_{c}", pa.float64()) for c in SCORE_COLUMNS if c != "stats_version"]
    + [(f"exact_{c}", pa.float64()) for c in _SCALARS]
    + [(f"own_{c}", pa.float64()) for c in _SCALARS])


@dataclass
class Findings:
    """Per (kind, modality): rows, example ids; the row ids to rescore; largest errors."""

    counts: dict = field(default_factory=dict)
    examples: dict = field(default_factory=dict)
    rowids: list = field(default_factory=list)
    max_error: dict = field(default_factory=dict)  # column -> largest |stored − exact now|

    def flag(self, kind: str, modality: np.ndarray, mask: np.ndarray, ids, keys) -> None:
        if not mask.any():
            return
        for m in np.unique(modality[mask]):
            sel = mask & (modality == m)
            key = (kind, str(m))
            self.counts[key] = self.counts.get(key, 0) + int(sel.sum())
            room = EXAMPLES - len(self.examples.setdefault(key, []))
            if room > 0:
                self.examples[key] += [ids[i] for i in np.flatnonzero(sel)[:room]]
        self.rowids.append(keys[mask].astype(np.uint64))

    def to_fix(self) -> np.ndarray:
        return np.unique(np.concatenate(self.rowids)) if self.rowids else np.zeros(0, np.uint64)


def version_models(history: dict, dim: int) -> dict[int, ScoreModel]:
    """The scoring model of every version the history knows (loglik only where its
    snapshot is kept)."""
    out = {}
    for v in sorted({v for v, _ in history}):
        live, white = {}, {}
        for (ver, m), e in history.items():
            if ver != v or e.n == 0:
                continue
            live[m] = e.snapshot if e.snapshot is not None else ModalityStats(dim, e.n, e.S, e.U)
            white[m] = e.snapshot.whitening() if e.snapshot is not None and e.n > 1 else None
        out[v] = ScoreModel(live, white, loglik=True)
    return out


def piece_check(piece: Piece, truth: ScoreModel, own: dict[int, ScoreModel]) -> pa.Table:
    """The check pass's per-piece function: each row's stored values, and its scalars
    recomputed now (``truth``) and at its own version."""
    columns = ["id", "sample_id", "modality", "embedding", "norm"] + SCORE_COLUMNS
    parts = []
    for batch in piece.batches(columns, with_row_id=True):
        X = vectors(batch)
        n = len(X)
        norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
        now = truth.scalars(X, norms, batch.column("modality"))
        version = batch.column("stats_version").fill_null(-1).to_numpy()
        at_own = {k: np.full(n, np.nan) for k in _SCALARS}
        for v in np.unique(version):
            model = own.get(int(v))
            if model is None:
                continue
            rows = version == v
            values = model.scalars(X[rows], norms[rows], batch.column("modality").filter(pa.array(rows)))
            for k in _SCALARS:
                at_own[k][rows] = values[k]
        arrays = [pa.array(batch.column("_rowid").to_numpy().astype(np.int64)), batch.column("id"),
                  batch.column("sample_id"), batch.column("modality"), pa.array(version, pa.int64()),
                  _f64(batch.column("norm").to_numpy(zero_copy_only=False)), _f64(norms)]
        arrays += [_f64(batch.column(c).to_numpy(zero_copy_only=False)) for c in SCORE_COLUMNS
                   if c != "stats_version"]
        arrays += [_f64(now[k]) for k in _SCALARS] + [_f64(at_own[k]) for k in _SCALARS]
        parts.append(pa.Table.from_arrays(arrays, schema=SPILL))
    return pa.concat_tables(parts) if parts else SPILL.empty_table()


def check_rows(dataset, truth: TableStats, record: TableStats | None, history: dict,
               bound_of: dict | None, *, engine: str | None = None) -> Findings:
    """Compare every stored score with its exact value and its own-version value."""
    findings = Findings()
    run = executor(engine)
    truth_model = run.put(ScoreModel.of(truth))
    own = run.put(version_models(history, truth.dim))
    with ScalarSpill(SPILL) as spill:
        for part in run.map(piece_check, [(p, truth_model, own) for p in pieces(dataset)]):
            spill.add(part)
        exact_hist = _exact_sketches(spill, truth)
        con = spill.connect()
        try:
            pairs = _pairs(con, truth, exact_hist, history)
            _compare(con, pairs, findings, truth, record, exact_hist, history, bound_of)
            if pairs is not None:
                _check_pair_dots(dataset, con, findings)
        finally:
            con.close()
    return findings


PAIR_SAMPLE = 4096  # captions whose stored pair dot is checked against their vectors


def _check_pair_dots(dataset, con, findings: Findings) -> None:
    """A seeded sample of captions: the stored ⟨x_img, x_txt⟩ against the two vectors."""
    from ..engine.rows import take_vectors

    sample = con.sql(f"""SELECT p.text_key, p.image_key, s.stored_pair_dot AS dot, s.id, s.modality
                         FROM pairs p JOIN spill s ON s.key = p.text_key
                         ORDER BY hash(p.text_key) LIMIT {PAIR_SAMPLE}""").to_arrow_table()
    if sample.num_rows == 0:
        return
    t = sample.column("text_key").to_numpy().astype(np.uint64)
    i = sample.column("image_key").to_numpy().astype(np.uint64)
    dot = np.einsum("ij,ij->i", take_vectors(dataset, t), take_vectors(dataset, i), dtype=np.float64)
    stored = sample.column("dot").to_numpy(zero_copy_only=False).astype(np.float64)
    wrong = ~(np.abs(stored - dot) <= 1e-5 * (np.abs(dot) + 1.0))
    findings.flag("pair_dot", sample.column("modality").to_numpy(zero_copy_only=False).astype(str),
                  wrong, sample.column("id").to_pylist(), t.astype(np.int64))


def _exact_sketches(spill: ScalarSpill, truth: TableStats) -> dict[str, np.ndarray]:
    hist = {m: np.zeros(sketch.HIST_BINS, np.int64) for m in truth.modalities}
    con = spill.connect()
    try:
        for batch in con.sql("SELECT modality, exact_conformity FROM spill").to_arrow_reader(1 << 17):
            modality = batch.column(0).to_numpy(zero_copy_only=False)
            values = batch.column(1).to_numpy(zero_copy_only=False).astype(np.float64)
            for m in np.unique(modality):
                v = values[(modality == m) & np.isfinite(values)]
                if str(m) in hist:
                    np.add.at(hist[str(m)], sketch.conformity_bins(v), 1)
    finally:
        con.close()
    return hist


def _pairs(con, truth: TableStats, exact_hist: dict, history: dict) -> pa.Table | None:
    """Per caption (with its first image): exact pair scores now, and the pair scores at
    its own version (None when the caption and image disagree on the version)."""
    if IMAGE not in truth.modalities or TEXT not in truth.modalities:
        return None
    rel = con.sql(f"""
        WITH first_image AS (
            SELECT sample_id, min(key) AS image_key FROM spill
            WHERE modality = '{IMAGE}' AND sample_id IS NOT NULL GROUP BY sample_id)
        SELECT t.key AS text_key, i.key AS image_key, t.version AS tv, i.version AS iv,
               t.stored_pair_dot AS dot, t.norm_exact AS nt, i.norm_exact AS ni,
               t.exact_dot_image AS t_di, t.exact_dot_text AS t_dt, t.exact_conformity AS ct,
               i.exact_dot_image AS i_di, i.exact_dot_text AS i_dt, i.exact_conformity AS ci,
               t.own_dot_image AS t_odi, t.own_dot_text AS t_odt,
               i.own_dot_image AS i_odi, i.own_dot_text AS i_odt,
               t.stored_uncertainty AS ut, i.stored_uncertainty AS ui
        FROM spill t JOIN first_image f ON t.sample_id = f.sample_id JOIN spill i ON i.key = f.image_key
        WHERE t.modality = '{TEXT}'""")
    out = []
    m_i, m_t = truth.modalities[IMAGE].mean, truth.modalities[TEXT].mean
    for batch in rel.to_arrow_reader(1 << 16):
        c = {k: batch.column(k).to_numpy(zero_copy_only=False).astype(np.float64)
             for k in batch.schema.names if k not in ("text_key", "image_key", "tv", "iv")}
        tv, iv = batch.column("tv").to_numpy(), batch.column("iv").to_numpy()
        unc_t = sketch.cdf(exact_hist[TEXT], c["ct"])
        unc_i = sketch.cdf(exact_hist[IMAGE], c["ci"])
        exact = pair_scores(c["dot"], c["ni"], c["nt"], c["i_di"], c["i_dt"], c["t_di"], c["t_dt"],
                            m_i, m_t, unc_i, unc_t)
        own_centered = np.full(len(tv), np.nan)
        for v in np.unique(tv[tv == iv]):
            ei, et = history.get((int(v), IMAGE)), history.get((int(v), TEXT))
            if ei is None or et is None:
                continue
            rows = (tv == v) & (iv == v)
            own_centered[rows] = pair_scores(
                c["dot"][rows], c["ni"][rows], c["nt"][rows], c["i_odi"][rows], c["i_odt"][rows],
                c["t_odi"][rows], c["t_odt"][rows], ei.mean, et.mean, c["ui"][rows], c["ut"][rows],
            )["alignment_centered"]
        known = {v for v, _ in history}
        unsure = np.array([v < 0 or v not in known for v in tv]) | np.array(
            [v < 0 or v not in known for v in iv])  # flagged as unscored / unknown already
        out.append(pa.table({
            "text_key": batch.column("text_key"), "image_key": batch.column("image_key"),
            "same_version": pa.array((tv == iv) | unsure),
            "alignment": _f64(exact["alignment"]),
            "alignment_centered": _f64(exact["alignment_centered"]),
            "conformity_mismatch": _f64(exact["conformity_mismatch"]),
            "own_alignment_centered": _f64(own_centered),
            "own_conformity_mismatch": _f64(c["ut"] - c["ui"]),
        }))
    return pa.concat_tables(out) if out else None


def _compare(con, pairs, findings: Findings, truth: TableStats, record, exact_hist, history,
             bound_of) -> None:
    if pairs is not None:
        con.from_arrow(pairs).create_view("pairs", replace=True)
    else:
        con.execute("CREATE TEMP TABLE pairs (text_key BIGINT, image_key BIGINT, same_version BOOLEAN, "
                    "alignment DOUBLE, alignment_centered DOUBLE, conformity_mismatch DOUBLE, "
                    "own_alignment_centered DOUBLE, own_conformity_mismatch DOUBLE)")
    query = """
        SELECT s.*, coalesce(p.alignment, g.alignment) AS exact_alignment,
               coalesce(p.alignment_centered, g.alignment_centered) AS exact_alignment_centered,
               coalesce(p.conformity_mismatch, g.conformity_mismatch) AS exact_conformity_mismatch,
               coalesce(p.own_alignment_centered, g.own_alignment_centered) AS own_alignment_centered,
               coalesce(p.own_conformity_mismatch, g.own_conformity_mismatch) AS own_conformity_mismatch,
               coalesce(p.same_version, g.same_version, true) AS same_version
        FROM spill s
        LEFT JOIN pairs p ON p.text_key = s.key
        LEFT JOIN (SELECT image_key, max(alignment) AS alignment,
                          max(alignment_centered) AS alignment_centered,
                          max(conformity_mismatch) AS conformity_mismatch,
                          max(own_alignment_centered) AS own_alignment_centered,
                          max(own_conformity_mismatch) AS own_conformity_mismatch,
                          bool_and(same_version) AS same_version
                   FROM pairs GROUP BY image_key) g ON g.image_key = s.key"""
    resolution = {m: sketch.resolution(h) for m, h in exact_hist.items()}
    for batch in con.sql(query).to_arrow_reader(1 << 16):
        col = {k: batch.column(k) for k in batch.schema.names}
        f = {k: v.to_numpy(zero_copy_only=False).astype(np.float64) for k, v in col.items()
             if k not in ("id", "sample_id", "modality", "same_version", "key", "version")}
        keys, version = col["key"].to_numpy(), col["version"].to_numpy()
        modality = col["modality"].to_numpy(zero_copy_only=False).astype(str)
        ids = col["id"].to_pylist()
        same = col["same_version"].to_numpy(zero_copy_only=False).astype(bool)
        findings.flag("norm", modality, ~(np.abs(f["norm"] - f["norm_exact"]) <= NORM_RTOL * f["norm_exact"]),
                      ids, keys)
        unscored = version < 0
        findings.flag("unscored", modality, unscored, ids, keys)
        known = np.array([(int(v), m) in history for v, m in zip(version, modality)])
        findings.flag("unknown_version", modality, ~unscored & ~known, ids, keys)
        scored = ~unscored & known
        exact_unc = np.full(len(keys), np.nan)
        for m in np.unique(modality):
            rows = (modality == m) & np.isfinite(f["exact_conformity"])
            if m in exact_hist and rows.any():
                exact_unc[rows] = sketch.cdf(exact_hist[m], f["exact_conformity"][rows])
        exact = {"conformity": f["exact_conformity"], "conformity_est": f["exact_conformity_est"],
                 "loglik": f["exact_loglik"], "uncertainty": exact_unc,
                 "alignment": f["exact_alignment"], "alignment_centered": f["exact_alignment_centered"],
                 "conformity_mismatch": f["exact_conformity_mismatch"]}
        own_unc = np.full(len(keys), np.nan)
        own_res = np.zeros(len(keys))  # the stored conformity is float32: one bin either way
        for (v, m) in {(int(v), m) for v, m in zip(version[scored], modality[scored])}:
            entry = history.get((v, m))
            rows = scored & (version == v) & (modality == m) & np.isfinite(f["stored_conformity"])
            if entry is not None and entry.snapshot is not None and rows.any():
                own_unc[rows] = sketch.cdf(entry.snapshot.hist, f["stored_conformity"][rows])
                own_res[rows] = 2 * sketch.resolution(entry.snapshot.hist)
        own = {"conformity": f["own_conformity"], "conformity_est": f["own_conformity_est"],
               "loglik": f["own_loglik"], "uncertainty": own_unc,
               "alignment_centered": f["own_alignment_centered"],
               "conformity_mismatch": f["own_conformity_mismatch"]}
        mixed = scored & ~same
        for c in COLUMNS:
            stored = f[f"stored_{c}"]
            err = np.abs(stored - exact[c])
            both_null = np.isnan(stored) & np.isnan(exact[c])
            err = np.where(both_null, 0.0, err)  # a null where a value belongs: inf (nan)
            finite = scored & np.isfinite(err)
            if finite.any():
                findings.max_error[c] = max(findings.max_error.get(c, 0.0), float(err[finite].max()))
            if bound_of is not None:
                allowed = np.array([bound_of.get((m, int(v)), {}).get(c, np.inf)
                                    for m, v in zip(modality, version)]) + _allowance(c, modality, resolution, truth, exact[c])
                findings.flag(c, modality, scored & ~(err <= allowed), ids, keys)
            if c in own:
                drift = np.abs(stored - own[c])
                tolerance = OWN_TOLERANCE * (1 + np.abs(own[c]) * (c == "loglik"))
                if c == "uncertainty":
                    tolerance = tolerance + own_res
                wrong = np.isfinite(own[c]) & ~(drift <= tolerance)
                wrong |= np.isfinite(own[c]) & np.isnan(stored) & (c != "loglik")
                mixed |= scored & wrong
        findings.flag("mixed_version", modality, mixed, ids, keys)


def _allowance(column: str, modality: np.ndarray, resolution: dict, truth: TableStats,
               exact: np.ndarray) -> np.ndarray:
    if column in ("uncertainty", "conformity_mismatch"):
        per = {m: resolution.get(m, 0.0) + truth.get(m).cdf_resolution
               + window_mass(truth.get(m).hist, 2 * ALLOWANCE["conformity"]) for m in np.unique(modality)}
        slack = np.array([per[m] for m in modality]) + 1e-6
        return slack * (2 if column == "conformity_mismatch" else 1)
    if column == "loglik":
        return LOGLIK_RTOL * (np.abs(np.nan_to_num(exact)) + truth.dim) * 4
    return np.full(len(modality), ALLOWANCE[column])


def _f64(values) -> pa.Array:
    values = np.asarray(values, np.float64)
    return pa.array(values, pa.float64(), mask=~np.isfinite(values))
