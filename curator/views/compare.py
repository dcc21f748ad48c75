"""``compare``: a table's conformity distribution against a reference table's.

Conformity as a lens on whole datasets (a candidate pool against a trusted corpus, web
data against generated data). What it computes, per modality both tables hold:

- **Scores against the reference**, in one pass over the table, *computed and not
  written* (compare only reads; ``refresh --reference`` is the command that stores
  them): ``ref_conformity`` = mean cosine to the reference's rows (``⟨x̂, U_ref⟩/n_ref``,
  [−1, 1], high = generic for the reference) and ``ref_loglik`` under the reference's
  whitened Gaussian (low = atypical), with :mod:`curator.maintenance.reference`'s
  scoring. The reference's own ``conformity`` and ``loglik`` are recomputed exactly in
  a pass over the reference against its current statistics (its stored columns may be
  stale by up to its ``max_staleness``), so both sides use the same statistics.
- **Distances between the distributions**: the Jensen–Shannon divergence (bits, [0, 1],
  on a common 50-bin histogram spanning both samples; 0 = the same histogram) and the
  two-sample Kolmogorov–Smirnov statistic (exact sup |F − G|, [0, 1]) with its
  asymptotic p-value, for conformity and for the log-likelihood; the share of the
  table's rows below the reference's 1st and above its 99th conformity percentile.
- **Concepts**: the reference's concept clusters (its stored centroids, the latest
  ``curator cluster`` on the reference) assign every row of both tables (nearest
  centroid, the reference's own rows too, so both counts use the same rule). When the
  reference has no clusters for a modality, compare trains ``k`` clusters on a seeded
  sample of the reference (spherical k-means, the same as ``curator cluster``), uses
  them for both tables and does not store them; the result says which. Per cluster:
  counts, shares, ``ratio`` = share in the table / share in the reference (> 1 =
  over-represented; null when the reference has no row there) and a two-proportion z
  score; sorted with the most over-represented first.
- **The rows most atypical for the reference**: lowest ``ref_conformity`` and lowest
  ``ref_loglik`` per modality.

The two tables may live in different databases (``db_reference``); they must hold the
same model and dimension. Writes ``index.html``, ``compare.json`` and PNGs into ``out``
when given; neither table changes.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa

from ..engine.executor import executor
from ..engine.fragments import Piece, pieces
from ..engine.rows import select_rows
from ..engine.statistics import current
from ..errors import BadInput, CuratorError
from ..geometry import diagnostics as dg
from ..geometry.kmeans import spherical_kmeans, top_centroids, unit_rows
from ..geometry.scores import row_scores
from ..store.arrow import groups, vectors
from ..store.centroids import CentroidStore
from ..store.database import Database, check_same_space

HIST_BINS = 50
TRAIN_SAMPLE = 50_000


@dataclass
class CompareResult:
    """The comparison's numbers (all of ``compare.json``) and where the files went."""

    table: str
    reference: str
    db: str
    db_reference: str
    table_version: int
    reference_version: int
    reference_stats_version: int
    modalities: dict[str, dict]
    concepts: list[dict]
    clusters: dict[str, dict]
    atypical: dict[str, dict]
    out: str | None = None
    index_html: str | None = None
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def summary(self) -> str:
        lines = [f"compared {self.table!r} (v{self.table_version}) with reference {self.reference!r} "
                 f"(v{self.reference_version}, stats v{self.reference_stats_version}) in {self.seconds:.1f} s"]
        for m, r in self.modalities.items():
            lines.append(f"  {m}: {r['rows']:,} rows vs {r['reference_rows']:,}; conformity JS "
                         f"{r['js']:.4f} bits, KS {r['ks']:.4f}; median ref_conformity "
                         f"{r['median']:.4f} vs {r['reference_median']:.4f}; "
                         f"{r['below_reference_p01']:.1%} below the reference's 1st percentile")
        over = [c for c in self.concepts if c["ratio"] is None or c["ratio"] > 1][:3]
        if over:
            lines.append("  most over-represented concepts: " + ", ".join(
                f"{c['modality']} #{c['cluster']} ×{'∞' if c['ratio'] is None else format(c['ratio'], '.2f')}"
                f" ({c['count']} vs {c['reference_count']})" for c in over))
        if self.index_html:
            lines.append(f"open {self.index_html}")
        return "\n".join(lines)


def compare(*, db=None, table: str = "embeddings", reference: str, db_reference=None, out=None,
            k: int = 16, seed: int = 0, top: int = 10, quiet: bool = True,
            engine: str | None = None) -> CompareResult:
    """Score ``table`` against ``reference``'s statistics and compare the distributions.

    ``db_reference``: the reference's database (default: ``db``). ``k`` and ``seed``:
    clusters trained on the reference when it has none stored. ``top``: atypical rows
    listed per modality and measure. ``out``: folder for index.html, PNGs and JSON.
    """
    started = time.time()
    if not reference:
        raise BadInput("--reference is required: the table to compare against")
    if k is None or k < 1:
        raise BadInput("--k must be at least 1")
    if top is None or top < 0:
        raise BadInput("--top must be ≥ 0")
    database = Database(db)
    ref_database = Database(db_reference) if db_reference else database
    if reference == table and ref_database.uri == database.uri:
        raise BadInput("--reference names the table itself")
    dataset = database.dataset(table)
    ref_dataset = ref_database.dataset(reference)
    check_same_space(dataset, ref_dataset, table, reference)
    out = _out_folder(out)
    ref_stats = current(ref_database, reference, ref_dataset)
    live = ref_stats.nonempty()
    if not live:
        raise CuratorError(f"reference {reference!r} has no rows")
    whitening = {m: s.whitening() if s.n > 1 else None for m, s in live.items()}
    centroids, clusters = _reference_clusters(ref_database, reference, ref_dataset, live, k, seed)
    model = (live, whitening, centroids, top)
    run = executor(engine, quiet=quiet)
    mine_scores = _merge(run.map(piece_scores, [(p, model, False) for p in pieces(dataset)]), top)
    ref_scores = _merge(run.map(piece_scores, [(p, model, True) for p in pieces(ref_dataset)]), top)
    modalities = {m: _distributions(mine_scores[m], ref_scores[m]) for m in sorted(mine_scores)
                  if m in ref_scores}
    if not modalities:
        raise CuratorError(f"{table!r} and {reference!r} share no modality")
    concepts = _concepts(mine_scores, ref_scores, modalities)
    for m in modalities:
        clusters[m]["k"] = int(len(centroids[m]))
    atypical = _atypical(dataset, mine_scores, modalities, top)
    result = CompareResult(table, reference, database.uri, ref_database.uri, dataset.version,
                           ref_dataset.version, ref_stats.version, modalities, concepts,
                           {m: clusters[m] for m in modalities}, atypical)
    if out:
        _write(out, result, mine_scores, ref_scores)
    result.seconds = time.time() - started
    if out:
        _save_json(out, result)
    return result


def _out_folder(out) -> str | None:
    if out is None or str(out) == "":
        return None
    out = os.path.abspath(os.path.expanduser(str(out)))
    if os.path.exists(out) and not os.path.isdir(out):
        raise BadInput(f"--out {out} exists and is not a folder")
    return out


# -- the reference's concepts --------------------------------------------------------------

def _reference_clusters(ref_database, reference, ref_dataset, live, k, seed):
    """Centroids per modality: stored ones, else trained now on a seeded sample."""
    stored = CentroidStore(ref_database, reference).latest()
    centroids, info = {}, {}
    for m, s in live.items():
        if m in stored:
            centroids[m] = stored[m][1]
            info[m] = {"source": "stored", "centroid_version": int(stored[m][0])}
            continue
        flt = "modality = '" + m.replace("'", "''") + "'"
        ids = ref_dataset.to_table(columns=[], filter=flt, with_row_id=True).column("_rowid").to_numpy()
        rng = np.random.default_rng(seed)
        take = np.sort(rng.choice(ids, min(len(ids), TRAIN_SAMPLE), replace=False))
        X = np.concatenate([vectors(b) for _, b in select_rows(ref_dataset, take, ["embedding"])])
        C, _ = spherical_kmeans(unit_rows(X), min(k, len(X)), seed=seed)
        centroids[m] = C
        info[m] = {"source": "trained now on the reference (not stored)", "seed": seed,
                   "trained_on": int(len(X))}
    return centroids, info


# -- the scoring pass ----------------------------------------------------------------------

def piece_scores(piece: Piece, model, in_reference: bool) -> dict:
    """The pass's per-piece function: per modality, conformity and log-likelihood against
    the reference's statistics (``in_reference``: the piece is the reference's own), the
    nearest reference centroid's counts, and the ``top`` lowest rows by each score."""
    live, whitening, centroids, top = model
    parts: dict[str, dict] = {}
    for batch in piece.batches(["modality", "embedding"], with_row_id=True):
        X = vectors(batch)
        norms = np.sqrt(np.einsum("ij,ij->i", X, X, dtype=np.float64))
        rowid = batch.column("_rowid").to_numpy()
        for m, rows in groups(batch.column("modality")):
            if m not in live:
                continue
            rows = slice(None) if rows is None else rows
            scores = row_scores(X[rows], norms[rows], m, live, whitening[m], in_reference=in_reference)
            labels, _ = top_centroids(unit_rows(X[rows]), centroids[m], 1)
            p = parts.setdefault(m, {"conformity": [], "loglik": [], "rowid": [],
                                     "counts": np.zeros(len(centroids[m]), np.int64)})
            p["conformity"].append(scores["conformity"].astype(np.float32))
            p["loglik"].append(scores["loglik"].astype(np.float32))
            p["rowid"].append(rowid[rows])
            p["counts"] += np.bincount(labels[:, 0], minlength=len(centroids[m]))
    out = {}
    for m, p in parts.items():
        conf, ll, ids = (np.concatenate(p[key]) for key in ("conformity", "loglik", "rowid"))
        out[m] = {"conformity": conf, "loglik": ll, "counts": p["counts"],
                  "low_conformity": _lowest(conf, ids, top), "low_loglik": _lowest(ll, ids, top)}
    return out


def _lowest(values: np.ndarray, ids: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    ok = np.flatnonzero(np.isfinite(values))
    if len(ok) > k:
        ok = ok[np.argpartition(values[ok], k - 1)[:k]] if k else ok[:0]
    return values[ok], ids[ok]


def _merge(results, top: int) -> dict:
    merged: dict[str, dict] = {}
    for part in results:
        for m, p in part.items():
            into = merged.setdefault(m, {"conformity": [], "loglik": [], "counts": 0,
                                         "low_conformity": [], "low_loglik": []})
            into["conformity"].append(p["conformity"])
            into["loglik"].append(p["loglik"])
            into["counts"] = into["counts"] + p["counts"]
            into["low_conformity"].append(p["low_conformity"])
            into["low_loglik"].append(p["low_loglik"])
    for p in merged.values():
        p["conformity"] = np.concatenate(p["conformity"])
        p["loglik"] = np.concatenate(p["loglik"])
        for key in ("low_conformity", "low_loglik"):
            values = np.concatenate([v for v, _ in p[key]])
            ids = np.concatenate([i for _, i in p[key]])
            order = np.lexsort((ids, values))[:top]
            p[key] = (values[order], ids[order])
    return merged


# -- the numbers ---------------------------------------------------------------------------

def _distributions(mine: dict, ref: dict) -> dict:
    a, b = mine["conformity"], ref["conformity"]
    a, b = a[np.isfinite(a)], b[np.isfinite(b)]
    out = {"rows": int(len(mine["conformity"])), "reference_rows": int(len(ref["conformity"]))}
    if not len(a) or not len(b):
        return {**out, "js": None, "ks": None, "ks_pvalue": None, "median": None,
                "reference_median": None, "below_reference_p01": None, "above_reference_p99": None}
    js, tv = dg.divergences(a, b, HIST_BINS)
    ks, p = dg.ks_statistic(a, b)
    p01, p99 = np.quantile(b, [0.01, 0.99])
    out.update({"js": js, "ks": ks, "ks_pvalue": p, "total_variation": tv,
                "mean": float(a.mean()), "reference_mean": float(b.mean()),
                "median": float(np.median(a)), "reference_median": float(np.median(b)),
                "below_reference_p01": float((a < p01).mean()),
                "above_reference_p99": float((a > p99).mean())})
    la, lb = mine["loglik"], ref["loglik"]
    la, lb = la[np.isfinite(la)], lb[np.isfinite(lb)]
    if len(la) and len(lb):
        ljs, _ = dg.divergences(la, lb, HIST_BINS)
        lks, lp = dg.ks_statistic(la, lb)
        out["loglik"] = {"js": ljs, "ks": lks, "ks_pvalue": lp, "median": float(np.median(la)),
                         "reference_median": float(np.median(lb))}
    return out


def _concepts(mine: dict, ref: dict, modalities: dict) -> list[dict]:
    """Per (modality, reference cluster): counts, shares, ratio, z; over-represented first."""
    rows = []
    for m in modalities:
        c, r = np.asarray(mine[m]["counts"], np.int64), np.asarray(ref[m]["counts"], np.int64)
        n, nr = max(int(c.sum()), 1), max(int(r.sum()), 1)
        for j in range(len(c)):
            share, ref_share = c[j] / n, r[j] / nr
            pooled = (c[j] + r[j]) / (n + nr)
            se = np.sqrt(pooled * (1 - pooled) * (1 / n + 1 / nr))
            rows.append({"modality": m, "cluster": j, "count": int(c[j]), "reference_count": int(r[j]),
                         "share": float(share), "reference_share": float(ref_share),
                         "ratio": float(share / ref_share) if r[j] else None,
                         "z": float((share - ref_share) / se) if se > 0 else 0.0})
    rows.sort(key=lambda e: (-(np.inf if e["ratio"] is None else e["ratio"]), -e["count"],
                             e["modality"], e["cluster"]))
    return rows


def _atypical(dataset, mine: dict, modalities: dict, top: int) -> dict:
    """The lowest rows by ref_conformity and by ref_loglik, with id / sample / caption."""
    names = set(dataset.schema.names)
    extra = [c for c in ("caption", "path", "image", "image_path") if c in names]
    columns = ["id", "sample_id", "modality", *extra]
    picked = [mine[m][key][1] for m in modalities for key in ("low_conformity", "low_loglik")]
    wanted = np.unique(np.concatenate(picked)) if picked else np.zeros(0, np.uint64)
    found = {}
    for ids, batch in select_rows(dataset, wanted.astype(np.uint64), columns):
        for i, row in zip(ids.tolist(), batch.to_pylist()):
            found[i] = row
    out = {}
    for m in modalities:
        out[m] = {}
        for key, label in (("low_conformity", "ref_conformity"), ("low_loglik", "ref_loglik")):
            values, ids = mine[m][key]
            out[m][label] = [{**found.get(int(i), {}), label: float(v)} for v, i in zip(values, ids)]
    return out


# -- files ---------------------------------------------------------------------------------

def _write(out: str, result: CompareResult, mine: dict, ref: dict) -> None:
    from . import figures as figs
    from .compare_page import render_compare

    os.makedirs(out, exist_ok=True)
    files = []
    hists = {}
    for m in result.modalities:
        a = mine[m]["conformity"][np.isfinite(mine[m]["conformity"])]
        b = ref[m]["conformity"][np.isfinite(ref[m]["conformity"])]
        if len(a) and len(b):
            edges = np.linspace(min(a.min(), b.min()), max(a.max(), b.max()), HIST_BINS + 1)
            hists[m] = {"edges": edges.tolist(), "table": np.histogram(a, edges)[0].tolist(),
                        "reference": np.histogram(b, edges)[0].tolist()}
            result.modalities[m]["histogram"] = hists[m]
    if hists:
        figs.compare_distributions(os.path.join(out, "conformity.png"), hists, result.modalities,
                                   result.table, result.reference)
        files.append("conformity.png")
    if result.concepts:
        figs.concept_ratios(os.path.join(out, "concepts.png"), result.concepts)
        files.append("concepts.png")
    result.out, result.figures = out, files
    result.index_html = os.path.join(out, "index.html")
    with open(result.index_html, "w", encoding="utf-8") as f:
        f.write(render_compare(result.to_dict()))


def _save_json(out: str, result: CompareResult) -> None:
    with open(os.path.join(out, "compare.json"), "w") as f:
        json.dump(result.to_dict(), f, indent=1, default=_jsonable)


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, (pa.Scalar,)):
        return value.as_py()
    return str(value)

