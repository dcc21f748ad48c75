"""The ``compare`` page: one self-contained HTML file (no scripts, fonts or URLs) beside
its PNGs, in the report's style."""

from __future__ import annotations

import html

from .page import _CSS

_HELP = ("<b>How to read this:</b> every row of the table is scored against the reference's "
         "statistics (its conformity: the mean cosine to the reference's rows), and the reference's "
         "own rows are scored the same way (self excluded). The grey area is the reference, the line "
         "the table, on common bins; below, the two cumulative distributions. JS is the Jensen–Shannon "
         "divergence of the two histograms (bits, 0 = identical, 1 = disjoint); KS the largest gap "
         "between the cumulative curves. A table shifted to the left holds rarer, less typical content "
         "than the reference; to the right, more generic content.")

_CONCEPT_HELP = ("<b>How to read this:</b> the reference's concept clusters, with every row of both "
                 "tables assigned to its nearest centroid. A bar to the right: the concept is more "
                 "frequent in the table than in the reference (log2 of the ratio of shares; +1 = twice as "
                 "frequent). z is the two-proportion z score: |z| above ~3 is unlikely to be chance.")


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _f(x, spec=".4g") -> str:
    return "–" if x is None else format(x, spec)


def render_compare(data: dict) -> str:
    """The page from ``compare.json``'s data."""
    title = f"“{data['table']}” against the reference “{data['reference']}”"
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(title)} — curator compare</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(title)}</h1>",
        ("<div class='meta'>Conformity as a lens on whole datasets (Levi &amp; Gilboa, ICML 2025): "
         "how typical each row of this table is for the reference corpus, and which of the "
         "reference's concepts this table over- or under-represents.</div>"),
        (f"<div class='meta' style='margin-top:6px'>table <code>{_e(data['table'])}</code> v"
         f"<code>{data['table_version']}</code> in <code>{_e(data['db'])}</code> · reference "
         f"<code>{_e(data['reference'])}</code> v<code>{data['reference_version']}</code> (statistics v"
         f"<code>{data['reference_stats_version']}</code>) in <code>{_e(data['db_reference'])}</code></div>"),
        _cards(data),
        "<h2>Conformity against the reference</h2>",
    ]
    if "conformity.png" in data["figures"]:
        width = 480 * len(data["modalities"]) + 80
        parts.append(f"<figure><img src='conformity.png' alt='conformity distributions' "
                     f"style='max-width:{width}px'>"
                     f"<figcaption>{_HELP}</figcaption></figure>")
    parts += [_distribution_table(data["modalities"]), "<h2>Concepts of the reference</h2>",
              _clusters_line(data["clusters"])]
    if "concepts.png" in data["figures"]:
        parts.append(f"<figure><img src='concepts.png' alt='concept ratios' style='max-width:760px'>"
                     f"<figcaption>{_CONCEPT_HELP}</figcaption></figure>")
    parts += [_concept_table(data["concepts"]), _atypical_html(data["atypical"]),
              ("<footer>Made by <code>curator compare</code>. All numbers are in "
               "<code>compare.json</code> beside this page. Neither table was changed.</footer>"),
              "</main></body></html>"]
    return "\n".join(parts)


def _cards(data: dict) -> str:
    out = ["<div class='cards'>"]
    for m, r in data["modalities"].items():
        out.append(f"<div class='card'><div class='k'>{_e(m)}: Jensen–Shannon</div><div class='v'>"
                   f"{_f(r['js'], '.3f')}</div><div class='s'>bits; KS {_f(r['ks'], '.3f')} "
                   f"(p {_f(r.get('ks_pvalue'), '.2g')}); {r['rows']:,} vs {r['reference_rows']:,} rows</div></div>")
    top = next((c for c in data["concepts"] if c["count"]), None)
    if top:
        ratio = "new" if top["ratio"] is None else f"×{top['ratio']:.2f}"
        out.append(f"<div class='card'><div class='k'>most over-represented concept</div><div class='v'>"
                   f"{_e(top['modality'])} #{top['cluster']}</div><div class='s'>{ratio}: "
                   f"{top['count']:,} rows here, {top['reference_count']:,} in the reference</div></div>")
    out.append("</div>")
    return "".join(out)


def _distribution_table(mods: dict) -> str:
    rows = [("rows (table / reference)", lambda r: f"{r['rows']:,} / {r['reference_rows']:,}"),
            ("conformity: Jensen–Shannon (bits)", lambda r: _f(r["js"], ".4f")),
            ("conformity: Kolmogorov–Smirnov D (p)", lambda r: f"{_f(r['ks'], '.4f')} ({_f(r.get('ks_pvalue'), '.2g')})"),
            ("median conformity (table / reference)",
             lambda r: f"{_f(r['median'], '.4f')} / {_f(r['reference_median'], '.4f')}"),
            ("table rows below the reference's 1st percentile", lambda r: _f(r["below_reference_p01"], ".1%")),
            ("table rows above the reference's 99th percentile", lambda r: _f(r["above_reference_p99"], ".1%")),
            ("log-likelihood: JS (bits) / KS D",
             lambda r: (f"{_f(r['loglik']['js'], '.4f')} / {_f(r['loglik']['ks'], '.4f')}" if r.get("loglik") else "–")),
            ("median log-likelihood (table / reference)",
             lambda r: (f"{_f(r['loglik']['median'], '.1f')} / {_f(r['loglik']['reference_median'], '.1f')}"
                        if r.get("loglik") else "–"))]
    head = "".join(f"<th>{_e(m)}</th>" for m in mods)
    body = "".join(f"<tr><td>{_e(label)}</td>" + "".join(f"<td class='num'>{_e(fn(r))}</td>" for r in mods.values())
                   + "</tr>" for label, fn in rows)
    return f"<table class='measures' style='margin-top:12px'><tr><th>measure</th>{head}</tr>{body}</table>"


def _clusters_line(clusters: dict) -> str:
    parts = []
    for m, c in clusters.items():
        if c["source"] == "stored":
            parts.append(f"{_e(m)}: the reference's stored clusters (centroids v{c['centroid_version']}, k={c['k']})")
        else:
            parts.append(f"{_e(m)}: the reference has no clusters, so k={c['k']} were trained now on "
                         f"{c['trained_on']:,} of its rows (seed {c['seed']}) and not stored; run "
                         "<code>curator cluster</code> on the reference to fix them")
    return "<p class='muted'>" + "; ".join(parts) + ".</p>"


def _concept_table(concepts: list[dict], show: int = 20) -> str:
    head = ("<tr><th>modality</th><th>cluster</th><th>rows here</th><th>rows in reference</th>"
            "<th>share here</th><th>share in reference</th><th>ratio</th><th>z</th></tr>")
    body = []
    for c in concepts[:show]:
        ratio = "new" if c["ratio"] is None else f"{c['ratio']:.3g}"
        body.append(f"<tr><td>{_e(c['modality'])}</td><td class='num'>{c['cluster']}</td>"
                    f"<td class='num'>{c['count']:,}</td><td class='num'>{c['reference_count']:,}</td>"
                    f"<td class='num'>{c['share']:.2%}</td><td class='num'>{c['reference_share']:.2%}</td>"
                    f"<td class='num'>{ratio}</td><td class='num'>{c['z']:+.1f}</td></tr>")
    more = (f"<p class='muted'>{len(concepts) - show} more in <code>compare.json</code>.</p>"
            if len(concepts) > show else "")
    return f"<table style='margin-top:12px'>{head}{''.join(body)}</table>{more}"


def _atypical_html(atypical: dict) -> str:
    out = ["<h2>Rows most atypical for the reference</h2>",
           "<p class='muted'>Lowest conformity against the reference (rarest for it) and lowest "
           "log-likelihood under its whitened Gaussian.</p>", "<div class='pairs'>"]
    for m, lists in atypical.items():
        for key, label in (("ref_conformity", "lowest conformity"), ("ref_loglik", "lowest log-likelihood")):
            rows = lists[key]
            out.append(f"<div><h3 style='font-size:15px;margin:10px 0 6px'>{_e(m)}: {label}</h3>")
            if not rows:
                out.append("<p class='muted'>none</p></div>")
                continue
            caption = any(r.get("caption") for r in rows)
            out.append(f"<table><tr><th>{_e(key)}</th><th>id</th>" + ("<th>caption</th>" if caption else "") + "</tr>")
            for r in rows:
                out.append(f"<tr><td class='num'>{r[key]:.4g}</td><td class='id'>{_e(r.get('id', ''))}</td>"
                           + (f"<td>{_e(r.get('caption') or '')}</td>" if caption else "") + "</tr>")
            out.append("</table></div>")
    out.append("</div>")
    return "".join(out)
