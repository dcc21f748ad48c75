"""``report``: the double-ellipsoid diagnostics of a table as HTML, PNG plots and JSON.

What it computes (geometry.md, "Diagnostics"), and from what:

- **Whole table, streamed in one scan** (batches; memory bounded by the sample): rows
  per modality, the norm histogram (the thin shell), the histogram of stored
  ``conformity``, the Pearson correlation and least-squares line
  ``C ≈ slope·cos(x,m) + intercept`` between stored ``conformity`` and
  ``conformity_est``, cluster sizes (when ``curator cluster`` has run), and the most and
  least conforming rows.
- **From the statistics** (no scan): norm mean/std, the raw mean m and ‖m‖, the
  per-dimension std σ and the offset ratio ‖m‖/‖σ‖, the covariance eigen-spectrum and
  its effective rank, and the gap vector m_img − m_txt.
- **From a seeded sample** (per modality, ``sample`` rows chosen by the smallest
  seeded hash of the row's position: a reservoir, reproducible for a table version):
  the conformity-vs-estimator scatter, the 2-D view of the two shells, the held-out
  accuracy of a linear image-vs-text classifier (separability, [0, 1], 1 = the
  modalities are linearly separable) and the gap sweep (Jensen–Shannon divergence, in
  bits, [0, 1], of the image and text conformity histograms after shifting each
  modality by v − α·m; low = the distributions match).

The report reads the table and writes only into ``out``: the table is never changed.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, field

import numpy as np

from ..engine.statistics import current as current_stats
from ..errors import BadInput, CuratorError
from ..store.database import Database, TableMeta
from . import figures as figs
from .concepts import concept_negatives
from .measures import PATH_COLUMNS, PLOT_POINTS, compute, jsonable, rounded, scan, thin
from .page import render_html

THUMB_SIZE = (112, 112)


@dataclass
class ReportResult:
    """Where the report went and its key numbers (all from ``report.json``)."""

    out: str
    index_html: str
    report_json: str
    table: str
    table_version: int
    stats_version: int
    rows: dict[str, int]
    sample: dict[str, int]
    separability: float | None
    pearson: dict[str, float | None]
    gap_norm: float | None
    figures: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    def summary(self) -> str:
        rows = ", ".join(f"{m} {n:,}" for m, n in self.rows.items())
        lines = [
            (f"report of table {self.table!r} at version {self.table_version} "
             f"(stats v{self.stats_version}; table unchanged) in {self.seconds:.1f} s: {rows} rows"),
            "sample per modality: " + ", ".join(f"{m} {n:,}" for m, n in self.sample.items()),
        ]
        keys = []
        if self.separability is not None:
            keys.append(f"linear separability {self.separability:.1%}")
        keys += [f"Pearson {m} {r:.5f}" for m, r in self.pearson.items() if r is not None]
        if self.gap_norm is not None:
            keys.append(f"gap norm {self.gap_norm:.4g}")
        if keys:
            lines.append("; ".join(keys))
        lines.append(f"open {self.index_html}")
        return "\n".join(lines)


def report(*, db=None, table: str = "embeddings", out, sample: int = 5000, seed: int = 0) -> ReportResult:
    """Write ``out/index.html``, ``out/report.json`` and PNGs of the table's geometry.

    ``sample`` (≥ 10) rows per modality feed the pairwise and plotted parts; everything
    else streams over the whole table. Nothing in the table changes.
    """
    started = time.time()
    if out is None or str(out) == "":
        raise BadInput("--out is required: the folder to write the report into")
    if isinstance(sample, bool) or not isinstance(sample, (int, np.integer)) or sample < 10:
        raise BadInput("--sample must be an integer ≥ 10")
    out = os.path.abspath(os.path.expanduser(str(out)))
    if os.path.exists(out) and not os.path.isdir(out):
        raise BadInput(f"--out {out} exists and is not a folder")
    database = Database(db)
    dataset = database.dataset(table)
    meta = TableMeta.from_schema(dataset.schema)
    stats = current_stats(database, table, dataset)
    if not stats.nonempty():
        raise CuratorError(f"table {table!r} has no rows to report on")
    os.makedirs(out, exist_ok=True)
    timings = {"statistics": time.time() - started}
    scans = scan(dataset, stats, sample, seed)
    timings["scan"] = time.time() - started - sum(timings.values())
    data = compute(dataset, stats, meta, scans, database, table, sample, seed)
    data["concept_negatives"] = concept_negatives(dataset)
    timings["sample_measures"] = time.time() - started - sum(timings.values())
    data["db_shown"] = shown_location(database.uri)
    figures = _draw(out, data, scans, stats)
    data["figures"] = figures
    _thumbnails(out, data)
    timings["figures"] = time.time() - started - sum(timings.values())
    data["timings_seconds"] = timings
    data["seconds"] = seconds = time.time() - started  # the page and the result say this
    json_path = os.path.join(out, "report.json")
    with open(json_path, "w") as f:
        json.dump(data, f, indent=1, default=jsonable)
    html_path = os.path.join(out, "index.html")
    with open(html_path, "w", encoding="utf-8") as f:
        f.write(render_html(data))
    cross = data.get("cross") or {}
    return ReportResult(
        out=out, index_html=html_path, report_json=json_path, table=table,
        table_version=dataset.version, stats_version=stats.version,
        rows={m: v["rows"] for m, v in data["modalities"].items()},
        sample={m: v["sample_rows"] for m, v in data["modalities"].items()},
        separability=(cross.get("separability") or {}).get("test_accuracy"),
        pearson={m: v["conformity"]["pearson"] for m, v in data["modalities"].items()},
        gap_norm=cross.get("gap_norm"), figures=sorted(figures.values()),
        seconds=seconds,
    )


def shown_location(uri: str) -> str:
    """The database as the page shows it: no machine path. An object-store URI as is; a
    local folder relative to the working directory when inside it, else its name."""
    if "://" in uri:
        return uri
    try:
        relative = os.path.relpath(uri)
    except ValueError:  # another drive (Windows)
        relative = None
    if relative is not None and not relative.startswith(os.pardir):
        return relative
    return os.path.basename(uri.rstrip(os.sep)) or uri


def _thumbnails(out: str, data: dict) -> None:
    """Copy a small PNG thumbnail for rows whose path/image/image_path names a readable file."""
    try:
        from PIL import Image
    except ImportError:
        return
    folder = os.path.join(out, "thumbs")
    shutil.rmtree(folder, ignore_errors=True)
    k = 0
    for side in data["extremes"].values():
        for rows in side.values():
            for r in rows:
                path = next((r[c] for c in PATH_COLUMNS if isinstance(r.get(c), str) and r[c]), None)
                if not path or not os.path.isfile(path):
                    continue
                try:
                    with Image.open(path) as im:
                        im = im.convert("RGB")
                        im.thumbnail(THUMB_SIZE)
                        os.makedirs(folder, exist_ok=True)
                        name = f"thumbs/t{k:03d}.png"
                        im.save(os.path.join(out, name))
                        r["thumbnail"] = name
                        k += 1
                except (OSError, ValueError, Image.DecompressionBombError):
                    continue  # unreadable image: no thumbnail, silently


def _draw(out: str, data: dict, scans, stats) -> dict[str, str]:
    """Write the PNGs; returns {figure: file name relative to out}."""
    mods = data["modalities"]
    files = {}

    def save(name, fn, *args):
        fn(os.path.join(out, name), *args)
        files[name.rsplit(".", 1)[0]] = name

    save("norms.png", figs.histograms, {m: {**v["norm"]["histogram"],
         "note": f"mean {v['norm']['mean']:.4g}\nstd/mean {v['norm']['thickness']:.2g}"}
         for m, v in mods.items()}, "‖x‖ (raw norm)", "note")
    save("spectrum.png", figs.spectrum, {m: v["spectrum"] for m, v in mods.items()})
    save("conformity.png", figs.histograms, {m: v["conformity"]["histogram"] for m, v in mods.items()},
         "conformity")
    points = {m: thin(p, PLOT_POINTS) for m, p in data["_points"].items()}
    save("conformity_vs_estimator.png", figs.conformity_scatter, points,
         {m: v["conformity"] for m, v in mods.items()})
    for m, (est, conf) in points.items():
        mods[m]["conformity"]["scatter_points"] = {"cos_to_mean": rounded(est), "conformity": rounded(conf)}
    clusters = {m: v["clusters"]["sizes"] for m, v in mods.items() if v["clusters"]}
    if clusters:
        save("clusters.png", figs.zipf, clusters)
    if (data.get("concept_negatives") or {}).get("available"):
        save("concept_negatives.png", figs.concept_negatives, data["concept_negatives"]["modalities"])
    cross = data.get("cross")
    if cross:
        coords = {m: thin((c,), PLOT_POINTS)[0] for m, c in cross.pop("_coords").items()}
        save("gap_view.png", figs.gap_view, coords, cross["gap_view"]["centres"])
        cross["gap_view"]["points"] = {m: {"gap": rounded(c[:, 0]), "principal": rounded(c[:, 1])}
                                       for m, c in coords.items()}
        sw = cross["gap_sweep"]
        save("gap_sweep.png", figs.gap_sweep, sw["alphas"], sw["jensen_shannon_bits"], sw["total_variation"],
             sw)
    data.pop("_points", None)
    return files

