"""The report's plots: one PNG per figure, drawn with matplotlib's Agg backend.

Each function takes the numbers that ``report.json`` records (plus, for scatter plots,
the sampled points) and writes one PNG; none of them computes a statistic. Modalities
keep one colour throughout (image blue, text orange, others from the tab10 cycle).
"""

from __future__ import annotations

import numpy as np

_COLOURS = {"image": "#1f77b4", "text": "#ff7f0e"}
_CYCLE = ["#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f"]

# Sizes follow the page: a figure in a half-row card is shown about 524 px wide (the
# page's content is at most 1124 px), so at WIDTH inches one point of font is shown at
# 524 / (72 · WIDTH) ≈ 1.39 px: tick labels (TICK_PT) at ~13 px, axis labels at ~15 px,
# beside the page's 13.5–15 px text. A full-row figure is WIDE inches at the same scale.
# DPI makes the PNG twice the shown width, sharp on high-density screens.
WIDTH = 5.25
WIDE = 10.9
DPI = 200
FONT_PT = 10.0
TICK_PT = 9.5
NOTE_PT = 9.5  # notes, legends and annotations inside a plot
LABEL_PT = 10.5
TITLE_PT = 11.5
SMALLEST_PT = min(FONT_PT, TICK_PT, NOTE_PT, LABEL_PT, TITLE_PT)


def colour(modality: str, k: int = 0) -> str:
    return _COLOURS.get(modality, _CYCLE[k % len(_CYCLE)])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    plt.rcParams.update({
        "font.size": FONT_PT, "axes.titlesize": TITLE_PT, "axes.labelsize": LABEL_PT,
        "xtick.labelsize": TICK_PT, "ytick.labelsize": TICK_PT, "legend.fontsize": NOTE_PT,
        "axes.spines.top": False, "axes.spines.right": False,
        "axes.grid": True, "grid.alpha": 0.25, "legend.frameon": False,
    })
    return plt


def _panels(n: int, width: float = WIDTH, height: float = 3.0):
    """One row of ``n`` panels in a figure ``width`` inches wide (the card's width)."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, n, figsize=(width, height), squeeze=False)
    return plt, fig, list(axes[0])


def _save(plt, fig, path: str) -> str:
    if fig.get_layout_engine() is None:
        fig.tight_layout()
    fig.savefig(path, dpi=DPI)
    plt.close(fig)
    return path


def histograms(path: str, hists: dict[str, dict], xlabel: str, note_key: str | None = None) -> str:
    """One panel per modality: a histogram given as ``{"edges": [...], "counts": [...]}``."""
    plt, fig, axes = _panels(len(hists))
    for k, (ax, (m, h)) in enumerate(zip(axes, hists.items())):
        edges = np.asarray(h["edges"], float)
        counts = np.asarray(h["counts"], float)
        ax.stairs(counts, edges, fill=True, color=colour(m, k), alpha=0.8)
        ax.set_title(m)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("rows")
        if note_key and h.get(note_key):  # above the bars: headroom for two lines
            ax.text(0.02, 0.97, h[note_key], transform=ax.transAxes, va="top", fontsize=NOTE_PT)
            ax.set_ylim(0, max(float(counts.max()), 1.0) * 1.45)
        ax.ticklabel_format(axis="x", useOffset=False)
    return _save(plt, fig, path)


def spectrum(path: str, spectra: dict[str, dict]) -> str:
    """Covariance eigenvalues (descending, log scale) and cumulative explained variance."""
    plt, fig, (left, right) = _panels(2)
    for k, (m, s) in enumerate(spectra.items()):
        ev = np.asarray(s["eigenvalues"], float)
        ranks = np.arange(1, len(ev) + 1)
        shown = ranks <= s.get("numerical_rank", len(ev))  # not the zero axes (fewer rows than dims)
        left.semilogy(ranks[shown], ev[shown], color=colour(m, k), lw=1.5)
        total = ev.sum()
        right.plot(ranks, np.cumsum(ev) / total if total > 0 else ranks * 0, color=colour(m, k), lw=1.5,
                   label=f"{m} (eff. rank {s['effective_rank']:.0f})")
    left.set_xlabel("axis (by variance)")
    left.set_ylabel("eigenvalue")
    left.set_title("ellipsoid axes")
    right.legend(loc="lower right", handlelength=1.2)  # the curves rise early: that corner is free
    right.set_xlabel("number of axes")
    right.set_ylabel("share of variance")
    right.set_ylim(0, 1.02)
    right.set_title("cumulative variance")
    return _save(plt, fig, path)


def conformity_scatter(path: str, points: dict[str, tuple[np.ndarray, np.ndarray]],
                       fits: dict[str, dict]) -> str:
    """Per modality: exact conformity against cos(x, m), with the least-squares line."""
    plt, fig, axes = _panels(len(points))
    for k, (ax, (m, (est, conf))) in enumerate(zip(axes, points.items())):
        ax.scatter(est, conf, s=4, alpha=0.35, color=colour(m, k), linewidths=0, rasterized=True)
        f = fits[m]
        if f.get("slope") is not None and len(est):
            xs = np.linspace(float(np.min(est)), float(np.max(est)), 2)
            ax.plot(xs, f["slope"] * xs + f["intercept"], color="black", lw=0.8, ls="--", alpha=0.7)
            sign = "−" if f["intercept"] < 0 else "+"
            ax.text(0.97, 0.03, f"r = {f['pearson']:.5f}\nC ≈ {f['slope']:.3f}·cos {sign} {abs(f['intercept']):.3f}",
                    transform=ax.transAxes, va="bottom", ha="right", fontsize=NOTE_PT)
        ax.set_title(m)
        ax.set_xlabel("cos(x, mean): estimator")
        ax.set_ylabel("conformity (exact)")
    return _save(plt, fig, path)


def zipf(path: str, sizes: dict[str, list[int]]) -> str:
    """Cluster sizes by rank, log-log: a straight line is a Zipf (power-law) frequency.
    A full-row figure (``WIDE``)."""
    plt, fig, axes = _panels(len(sizes), width=WIDE, height=3.1)
    for k, (ax, (m, s)) in enumerate(zip(axes, sizes.items())):
        s = np.sort(np.asarray(s, float))[::-1]
        ax.loglog(np.arange(1, len(s) + 1), s, "o-", ms=3, lw=1, color=colour(m, k))
        _plain_log_ticks(ax)
        ax.set_title(f"{m}: {len(s)} clusters")
        ax.set_xlabel("cluster rank")
        ax.set_ylabel("rows in cluster")
    return _save(plt, fig, path)


def _plain_log_ticks(ax) -> None:
    """Log axes labelled 1, 2, 5, 10, 20, … in plain numbers, no crowded minor labels."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    for axis in (ax.xaxis, ax.yaxis):
        axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        axis.set_minor_formatter(NullFormatter())


def gap_view(path: str, coords: dict[str, np.ndarray], centres: dict[str, list[float]]) -> str:
    """The pooled sample on (gap direction, top principal direction of the gap-removed
    sample), with a strip above that counts the rows of each modality along the gap
    direction: one hump per shell, the gap between them."""
    plt = _pyplot()
    fig, (top, ax) = plt.subplots(2, 1, figsize=(WIDTH, 4.3), sharex=True, layout="constrained",
                                  gridspec_kw={"height_ratios": [1, 3.2]})
    fig.get_layout_engine().set(hspace=0.0, h_pad=0.02)
    xs = np.concatenate([xy[:, 0] for xy in coords.values()]) if coords else np.zeros(1)
    edges = np.linspace(float(xs.min()), float(xs.max()) + 1e-12, 61)
    for k, (m, xy) in enumerate(coords.items()):
        top.hist(xy[:, 0], bins=edges, color=colour(m, k), alpha=0.75, density=True)
        ax.scatter(xy[:, 0], xy[:, 1], s=4, alpha=0.3, color=colour(m, k), linewidths=0,
                   label=m, rasterized=True)
    top.set_yticks([])
    top.set_ylabel("rows", rotation=0, ha="right", va="center")
    top.spines["left"].set_visible(False)
    top.grid(False)
    for k, (m, c) in enumerate(centres.items()):
        ax.plot([c[0]], [c[1]], marker="X", ms=10, color="black", mec="white")
        ax.annotate(f"mean {m}", (c[0], c[1]), textcoords="offset points", xytext=(6, 6),
                    fontsize=NOTE_PT)
    ax.set_xlabel("⟨x, ĝ⟩ along the gap direction (m_img − m_txt)")
    ax.set_ylabel("top direction, gap removed")
    leg = ax.legend(markerscale=3, loc="best")
    for handle in leg.legend_handles:
        handle.set_alpha(1)
    return _save(plt, fig, path)


def gap_sweep(path: str, alphas: list[float], js: list[float], tv: list[float],
              sweep: dict | None = None) -> str:
    """Divergence of the image and text conformity histograms against the shift α, with
    (from ``sweep``) the refined minimum, its bootstrap interval, the noise floor and the
    basin where the curve is within that floor of its minimum."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(WIDTH, 4.3))
    ax.plot(alphas, js, "o-", ms=4, label="Jensen–Shannon (bits)", color="#333333")
    ax.plot(alphas, tv, "s--", ms=3, label="total variation", color="#999999")
    ax.axvline(0, color="#bbbbbb", lw=1)
    if sweep:
        lo, hi = sweep["basin"]
        ax.axvspan(lo, hi, color="#2ca02c", alpha=0.12, label=f"basin: α in [{lo:+.2f}, {hi:+.2f}]")
        ax.axhline(sweep["js_min"] + sweep["noise_floor_bits"], color="#2ca02c", lw=0.8, ls=":",
                   label=f"minimum + noise floor ({sweep['noise_floor_bits']:.3f})")
        best, err = sweep["best_alpha"], sweep["interval"]
        ax.errorbar([best], [sweep["js_min"]], xerr=[[best - err[0]], [err[1] - best]], fmt="o", ms=8,
                    mfc="none", mec="#d62728", mew=2, ecolor="#d62728", capsize=3,
                    label=f"minimum at α = {best:+.2f} (90%: {err[0]:+.2f}…{err[1]:+.2f})")
    else:
        best = int(np.nanargmin(js))
        ax.plot([alphas[best]], [js[best]], "o", ms=9, mfc="none", mec="#d62728", mew=2,
                label=f"minimum at α = {alphas[best]:+.1f}")
    ax.set_xlabel("α   (each modality shifted by v − α·m_modality)")
    ax.set_ylabel("divergence of conformity histograms")
    ax.set_ylim(bottom=0)
    ax.legend()
    return _save(plt, fig, path)


def compare_distributions(path: str, hists: dict[str, dict], numbers: dict[str, dict],
                          table: str, reference: str) -> str:
    """Per modality: the table's conformity against the reference (as a share of rows per
    bin, common bins) above, and the two empirical CDFs (the KS statistic is their largest
    vertical distance) below."""
    plt = _pyplot()
    fig, axes = plt.subplots(2, len(hists), figsize=(max(4.4 * len(hists), 4.8), 5.6), squeeze=False)
    for k, (m, h) in enumerate(hists.items()):
        edges = np.asarray(h["edges"], float)
        mine, ref = (np.asarray(h[key], float) for key in ("table", "reference"))
        top, bottom = axes[0][k], axes[1][k]
        top.stairs(ref / max(ref.sum(), 1), edges, fill=True, color="#bbbbbb", alpha=0.8,
                   label=f"reference {reference}")
        top.stairs(mine / max(mine.sum(), 1), edges, color=colour(m, k), lw=1.8, label=f"table {table}")
        r = numbers[m]
        top.set_title(f"{m}: JS {r['js']:.3f} bits, KS {r['ks']:.3f}")
        top.set_ylabel("share of rows")
        top.legend(fontsize=8)
        centres = edges[1:]
        bottom.plot(centres, np.cumsum(ref) / max(ref.sum(), 1), color="#888888", lw=1.5, label="reference")
        bottom.plot(centres, np.cumsum(mine) / max(mine.sum(), 1), color=colour(m, k), lw=1.5, label="table")
        bottom.set_xlabel("conformity against the reference")
        bottom.set_ylabel("cumulative share")
        bottom.set_ylim(0, 1.02)
    return _save(plt, fig, path)


def concept_ratios(path: str, concepts: list[dict], show: int = 12) -> str:
    """The most over- and under-represented reference concepts: log2 of the share ratio."""
    finite = [c for c in concepts if c["ratio"] is not None and c["count"] + c["reference_count"] > 0]
    over = [c for c in finite if c["ratio"] >= 1][: show // 2]
    under = [c for c in finite if c["ratio"] < 1][-(show // 2):]
    rows = over + under
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, max(2.4, 0.32 * len(rows) + 1.2)))
    if rows:
        values = [np.log2(max(c["ratio"], 1e-3)) for c in rows]
        labels = [f"{c['modality']} #{c['cluster']}  ({c['count']} / {c['reference_count']})" for c in rows]
        y = np.arange(len(rows))[::-1]
        ax.barh(y, values, color=["#d62728" if v > 0 else "#1f77b4" for v in values])
        ax.set_yticks(y, labels, fontsize=8.5)
        ax.axvline(0, color="#333333", lw=0.8)
    ax.set_xlabel("log2(share in table / share in reference)   (> 0: over-represented)")
    ax.set_title("concepts of the reference (count in table / in reference)")
    return _save(plt, fig, path)


def concept_negatives(path: str, modalities: dict[str, dict]) -> str:
    """Per modality: each concept cluster's size (x, log) against its mean fn_count (y),
    coloured by its mean conformity: the paper's "frequent concepts yield more false
    negatives" as one cloud of points."""
    plt, fig, axes = _panels(len(modalities), width=3.9, height=3.4)
    for ax, (m, r) in zip(axes, modalities.items()):
        c = r["clusters"]
        size = np.array([x["rows"] for x in c], float)
        fn = np.array([x["mean_fn_count"] for x in c], float)
        conf = np.array([np.nan if x["mean_conformity"] is None else x["mean_conformity"] for x in c], float)
        dots = ax.scatter(size, fn, c=conf, cmap="viridis", s=28, edgecolors="white", linewidths=0.5)
        ax.set_xscale("log")
        from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("cluster size (rows)")
        ax.set_ylabel("mean fn_count of its rows")
        rho = r.get("spearman_size_fn")
        ax.set_title(f"{m}: Spearman ρ = {rho:+.2f}" if rho is not None else m)
        fig.colorbar(dots, ax=ax, label="mean conformity", fraction=0.046, pad=0.03)
    return _save(plt, fig, path)
