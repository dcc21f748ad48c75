"""The report's HTML page: one self-contained file (no scripts, fonts or URLs) that
shows the numbers and the PNG figures beside it."""

from __future__ import annotations

import html

_CSS = """
body{font-family:-apple-system,"Segoe UI",Roboto,"Helvetica Neue",Arial,"DejaVu Sans",sans-serif;
 margin:0;background:#f6f7f9;color:#1d2330;line-height:1.45;font-size:15px}
main{max-width:1180px;margin:0 auto;padding:24px 28px 48px}
h1{font-size:26px;margin:0 0 4px}h2{font-size:19px;margin:34px 0 10px;border-bottom:1px solid #dde1e7;padding-bottom:4px}
.meta{color:#5a6472;font-size:13.5px}.meta code{background:#eceff3;padding:1px 5px;border-radius:3px}
.cards{display:grid;grid-template-columns:repeat(auto-fit,minmax(170px,1fr));gap:12px;margin:18px 0 6px}
.card{background:#fff;border:1px solid #dde1e7;border-radius:8px;padding:12px 14px}
.card .k{font-size:13px;color:#5a6472;font-weight:600}
.card .v{font-size:23px;font-weight:600;margin-top:2px}.card .s{font-size:12.5px;color:#5a6472}
.grid{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
figure{background:#fff;border:1px solid #dde1e7;border-radius:8px;margin:0;padding:12px 14px}
figure h3{font-size:15.5px;margin:0 0 6px}figure img{width:100%;height:auto;display:block}
figure.wide{grid-column:1/-1}
figcaption{font-size:13.5px;color:#39414d;margin-top:6px}figcaption b{color:#1d2330}
table{border-collapse:collapse;background:#fff;font-size:13.5px;width:100%}
table.measures td:first-child{width:46%}.pairs{display:grid;grid-template-columns:repeat(auto-fit,minmax(520px,1fr));gap:16px}
.pairs td.num{width:90px}.pairs table.narrow{width:auto;min-width:320px}.pairs td.id{width:150px;word-break:break-all}
th,td{border:1px solid #dde1e7;padding:5px 8px;text-align:left;vertical-align:top}
th{background:#eef1f5;font-weight:600}td.num{text-align:right;font-variant-numeric:tabular-nums}
.note{background:#fff8e1;border:1px solid #f0dc9a;border-radius:6px;padding:8px 12px;font-size:13.5px}
.muted{color:#5a6472}.thumb{max-width:72px;max-height:72px;display:block}
footer{margin-top:36px;color:#5a6472;font-size:12.5px}
"""


def _e(x) -> str:
    return html.escape(str(x), quote=True)


def _fmt(x, spec=".4g") -> str:
    return "–" if x is None else format(x, spec)


def render_html(data: dict) -> str:
    """The report page from ``report.json``'s data (self-contained; relative image links)."""
    mods = data["modalities"]
    cross = data.get("cross")
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width, initial-scale=1'>",
        f"<title>{_e(data['title'])} — curator report</title><style>{_CSS}</style></head><body><main>",
        f"<h1>{_e(data['title'])}</h1>",
        ("<div class='meta'>The double-ellipsoid geometry of raw CLIP embeddings "
         "(Levi &amp; Gilboa, ICML 2025): each modality lives on its own thin, off-centre, "
         "elongated shell, and the two shells are separated by the modality gap.</div>"),
        (f"<div class='meta' style='margin-top:6px'>table <code>{_e(data['table'])}</code> · version "
         f"<code>{data['table_version']}</code> · statistics v<code>{data['stats_version']}</code> · model "
         f"<code>{_e(data['model'])}</code> · dimension <code>{data['dim']}</code> · database "
         f"<code>{_e(data.get('db_shown', data['db']))}</code> · generated {_e(data['generated'])}</div>"),
        _cards(data),
        _sample_line(data),
        (f"<div class='meta'>Look at the rows behind these plots, filter, select and tag them: "
         f"<code>curator --db {_e(data.get('db_shown', data['db']))} --table {_e(data['table'])} "
         "browse</code></div>"),
    ]
    if cross:
        parts += [f"<h2>Across modalities: {_e(cross['modalities'][0])} vs {_e(cross['modalities'][1])}</h2>",
                  "<div class='grid'>", _figure(data, "gap_view", "Two shells and the gap", _GAP_VIEW_HELP),
                  _figure(data, "gap_sweep", "Gap sweep", _SWEEP_HELP.format(
                      verdict=sweep_verdict(cross["gap_sweep"]))), "</div>"]
    else:
        parts.append("<h2>Across modalities</h2><p class='note'>Only one modality in this table: "
                     "the gap, separability and gap sweep need two.</p>")
    parts += ["<h2>Per modality</h2>", _modality_table(mods), "<div class='grid' style='margin-top:16px'>",
              _figure(data, "norms", "Norms: the thin shell", _NORM_HELP),
              _figure(data, "spectrum", "Covariance eigen-spectrum: the ellipsoid's axes", _SPECTRUM_HELP),
              _figure(data, "conformity", "Conformity", _CONF_HELP),
              _figure(data, "conformity_vs_estimator", "Conformity vs its estimator cos(x, m)", _SCATTER_HELP),
              ]
    if "clusters" in data["figures"]:  # a full row: the four above fill two rows
        parts.append(_figure(data, "clusters", "Concept frequency (clusters)", _ZIPF_HELP, wide=True))
    else:
        parts.append("<figure class='wide'><h3>Concept frequency (clusters)</h3><p class='note'>No clusters yet: "
                     "run <code>curator cluster</code>, then the report again, to see the rank–size "
                     "(Zipf) plot of concept frequencies.</p></figure>")
    parts += ["</div>", concept_negatives_html(data), _extremes_html(data), _footer(data),
              "</main></body></html>"]
    return "\n".join(parts)


_GAP_VIEW_HELP = ("<b>How to read this:</b> every dot is a sampled row. Left–right is its position along "
                  "the gap direction (from the text mean to the image mean), and the strip on top shows where "
                  "each modality's rows lie along it: two groups of colour with a stretch between them are "
                  "the two shells and the gap. "
                  "Up–down is the largest variation left once the gap is removed, and both modalities "
                  "share it: a modality that splits into several clouds along it holds groups of "
                  "concepts within its shell (images and their captions split alike), not more shells.")


_SWEEP_HELP = ("<b>How to read this:</b> each modality is shifted by v − α·m (its own raw mean; α = 0 is the "
               "embedding as trained, α = 1 centres both), conformity is recomputed, and the curve is the "
               "Jensen–Shannon divergence of the two conformity histograms (0 = identical). The grid starts at "
               "α ∈ [−1, 1] and grows until the minimum and its basin end inside it. {verdict}")


def sweep_verdict(sw: dict) -> str:
    """One sentence comparing the sweep with the paper's claim, from its numbers."""
    lo, hi = sw["basin"]
    a, b = sw["interval"]
    where = (f"Here the minimum is at α = {sw['best_alpha']:+.2f} (90% bootstrap interval "
             f"{a:+.2f} to {b:+.2f}); within the noise floor of two samples of one distribution "
             f"({sw['noise_floor_bits']:.3f} bits), the curve is flat for α in [{lo:+.2f}, {hi:+.2f}]"
             + (" (reaching the sweep's limit)" if sw.get("basin_at_limit") else "") + ". ")
    if sw["zero_in_basin"]:
        verdict = ("α = 0 lies in that basin: the trained gap is among the best-matching positions, "
                   "as the paper reports for CLIP on MS-COCO")
        if hi - lo > 1:
            verdict += ", though a basin this wide says the sample cannot single it out"
    else:
        verdict = (f"α = 0 lies outside it (divergence {sw['js_at_zero']:.3f} bits against "
                   f"{sw['js_min']:.3f} at the minimum): on this table, along this family of shifts, "
                   "the trained gap is not where the conformity distributions match best")
    return _e(where + verdict + ".")


_NORM_HELP = ("<b>How to read this:</b> a narrow peak far from zero means the vectors lie on a thin shell "
              "(std/mean is the shell's relative thickness). Vectors that were L2-normalised show a single spike at 1.")


_SPECTRUM_HELP = ("<b>How to read this:</b> variance along each principal axis of the modality's cloud, "
                  "largest first (left, log scale), and the share of variance the first k axes hold (right). "
                  "A steep fall-off means an elongated ellipsoid; effective rank counts the axes that matter.")


_CONF_HELP = ("<b>How to read this:</b> conformity is a row's mean cosine to the other rows of its modality. "
              "High = generic, frequent content near the mean; the low tail = rare or unusual rows.")


_SCATTER_HELP = ("<b>How to read this:</b> each dot is a sampled row: exact conformity against the cosine to "
                 "the modality mean. Points on a line (Pearson r ≈ 1) mean the cheap estimator ranks rows "
                 "like the exact score. r and the line are fitted on the whole table.")


_ZIPF_HELP = ("<b>How to read this:</b> cluster sizes sorted from largest to smallest on log–log axes; a "
              "straight falling line is a Zipf-like concept frequency (a few concepts dominate). Rebalancing caps the head.")


def _cards(data: dict) -> str:
    mods = data["modalities"]
    cross = data.get("cross") or {}
    cards = [("rows", f"{sum(v['rows'] for v in mods.values()):,}",
              " · ".join(f"{v['rows']:,} {_e(m)}" for m, v in mods.items()))]
    sep = (cross.get("separability") or {})
    if sep:
        cards.append(("linear separability", f"{sep['test_accuracy']:.1%}",
                      f"held-out accuracy, {sep['n_test']:,} test rows (paper: 100%)"))
    for m, v in mods.items():
        unit = (v["norm"]["thickness"] or 0) < 1e-3
        cards.append((f"Pearson r, {_e(m)}", _fmt(v["conformity"]["pearson"], ".5f"),
                      "conformity vs cos(x, mean); exact by construction: the vectors are unit-norm"
                      if unit else "conformity vs cos(x, mean), whole table (paper: ≈ 0.9998)"))
    if cross:
        cards.append(("gap norm ‖m_img − m_txt‖", _fmt(cross["gap_norm"]),
                      f"cosine between the means {cross['gap_cosine_of_means']:.3f}"))
        sw = cross["gap_sweep"]
        cards.append(("gap sweep minimum", f"α = {sw['best_alpha']:+.2f}",
                      (f"JS {sw['js_min']:.3f} bits there, {sw['js_at_zero']:.3f} at α = 0; basin "
                       f"[{sw['basin'][0]:+.2f}, {sw['basin'][1]:+.2f}] (paper: the trained gap, α = 0)")))
    out = ["<div class='cards'>"]
    for k, v, s in cards:
        out.append(f"<div class='card'><div class='k'>{k}</div><div class='v'>{v}</div><div class='s'>{s}</div></div>")
    out.append("</div>")
    return "".join(out)


def _sample_line(data: dict) -> str:
    s = data["sample"]
    per = ", ".join(f"{n:,} {_e(m)}" for m, n in s["per_modality"].items())
    return (f"<p class='muted'>Histograms, means, counts, the covariance and Pearson r cover the whole table. "
            f"Scatter plots, the 2-D view, the classifier and the gap sweep use a seeded sample of "
            f"{per} rows (at most {s['requested_per_modality']:,} per modality, seed {s['seed']}).</p>")


def _figure(data: dict, name: str, title: str, help_text: str, wide: bool = False) -> str:
    file = data["figures"].get(name)
    if not file:
        return ""
    return (f"<figure{' class=wide' if wide else ''}><h3>{_e(title)}</h3><img src='{_e(file)}' alt='{_e(title)}'>"
            f"<figcaption>{help_text}</figcaption></figure>")


def _line(slope, intercept) -> str:
    if slope is None or intercept is None:
        return "–"
    return f"{slope:.4g}·cos {'−' if intercept < 0 else '+'} {abs(intercept):.4g}"


def _modality_table(mods: dict) -> str:
    rows = [
        ("rows", lambda v: f"{v['rows']:,}"),
        ("mean norm ‖x‖", lambda v: _fmt(v["norm"]["mean"])),
        ("norm std", lambda v: _fmt(v["norm"]["std"])),
        ("shell thickness: norm std / mean norm", lambda v: _fmt(v["norm"]["thickness"], ".2g")),
        ("norm of the mean ‖m‖", lambda v: _fmt(v["mean_vector_norm"])),
        ("offset ratio ‖m‖/‖σ‖", lambda v: _fmt(v["offset_ratio"])),
        ("effective rank of the covariance", lambda v: _fmt(v["spectrum"]["effective_rank"], ".1f")),
        ("variance in the top 10 axes", lambda v: _fmt(v["spectrum"]["top10_variance_share"], ".1%")),
        ("Pearson r, conformity vs cos(x, m)", lambda v: _fmt(v["conformity"]["pearson"], ".5f")),
        ("least-squares line C ≈ slope·cos + intercept",
         lambda v: _line(v["conformity"]["slope"], v["conformity"]["intercept"])),
        ("rows without scores (run curator refresh)", lambda v: f"{v['conformity']['rows_unscored']:,}"),
    ]
    head = "".join(f"<th>{_e(m)}</th>" for m in mods)
    body = "".join(f"<tr><td>{_e(label)}</td>" + "".join(f"<td class='num'>{_e(fn(v))}</td>" for v in mods.values())
                   + "</tr>" for label, fn in rows)
    return f"<table class='measures'><tr><th>measure</th>{head}</tr>{body}</table>"


def _extremes_html(data: dict) -> str:
    out = ["<h2>Most and least conforming rows</h2>",
           ("<p class='muted'>Over the whole table. The most conforming rows are the most generic of their "
            "modality; the least conforming are the rarest or most unusual (worth a look: outliers, errors, "
            "or the long tail). Image rows show a caption of their sample.</p>")]
    every = [r for side in data["extremes"].values() for rows in side.values() for r in rows]
    thumbs = any(r.get("thumbnail") for r in every)
    captions = any(r.get("caption") for r in every)
    if not captions:
        out[-1] = out[-1].replace(" Image rows show a caption of their sample.", " The table has no "
                                  "<code>caption</code> column, so rows are shown by id.")
    for m, side in data["extremes"].items():
        out.append("<div class='pairs' style='margin-bottom:14px'>")
        for which, label in (("most", "most conforming"), ("least", "least conforming")):
            out.append(f"<div><h3 style='font-size:15px;margin:10px 0 6px'>{_e(m)}: {label}</h3>")
            out.append(_rows_table(side[which], thumbs and any(r.get("thumbnail") for r in side[which]),
                                   captions))
            out.append("</div>")
        out.append("</div>")
    return "".join(out)


def _rows_table(rows: list[dict], thumbs: bool, captions: bool) -> str:
    if not rows:
        return "<p class='muted'>no scored rows</p>"
    out = [f"<table{'' if captions else ' class=narrow'}><tr>" + ("<th>image</th>" if thumbs else "")
           + "<th>conformity</th><th>id</th>" + ("<th>caption</th>" if captions else "") + "</tr>"]
    for r in rows:
        thumb = ""
        if thumbs:
            thumb = (f"<td><img class='thumb' src='{_e(r['thumbnail'])}' alt=''></td>" if r.get("thumbnail")
                     else "<td></td>")
        cap = r.get("caption") or ""
        out.append(f"<tr>{thumb}<td class='num'>{_fmt(r.get('conformity'), '.4f')}</td>"
                   f"<td class='id'>{_e(r['id'])}</td>"
                   + (f"<td>{_e(cap) if cap else '<span class=muted>–</span>'}</td>" if captions else "")
                   + "</tr>")
    out.append("</table>")
    return "".join(out)


def _footer(data: dict) -> str:
    return (f"<footer>Made by <code>curator report</code> in {data.get('seconds', 0):.1f} s (reading the "
            f"table, computing and drawing: the time the command reports). All numbers are in "
            f"<code>report.json</code> beside this page. The report reads the table (version "
            f"{data['table_version']}) and never changes it.</footer>")



_FN_HELP = ("<b>How to read this:</b> each dot is a concept cluster: its size (how frequent the concept "
            "is) against the mean number of false negatives of its rows (other samples' partners that "
            "fit a row at least as well as its own; <code>curator negatives</code>), coloured by the "
            "concept's mean conformity. The paper: frequent concepts yield more false negatives, which "
            "makes them more uncertain; a rising cloud (Spearman ρ &gt; 0) agrees.")


def concept_negatives_html(data: dict) -> str:
    """The "concepts and false negatives" section (or a note saying what to run)."""
    section = data.get("concept_negatives") or {"available": False, "note": "not computed"}
    out = ["<h2>Concepts and false negatives</h2>"]
    if not section.get("available"):
        out.append(f"<p class='note'>Frequent concepts and their false negatives: {_e(section['note'])}.</p>")
        return "".join(out)
    out.append("<div class='grid'>")
    out.append(_figure(data, "concept_negatives", "Concept size against false negatives", _FN_HELP))
    rows = [("rows with a cluster and fn_count", lambda r: f"{r['rows']:,}"),
            ("clusters", lambda r: f"{len(r['clusters'])}"),
            ("Spearman ρ: cluster size vs mean fn_count", lambda r: _fmt(r["spearman_size_fn"], "+.3f")),
            ("Pearson r: cluster size vs mean fn_count", lambda r: _fmt(r["pearson_size_fn"], "+.3f")),
            ("Spearman ρ: mean conformity vs mean fn_count", lambda r: _fmt(r["spearman_conformity_fn"], "+.3f")),
            ("Spearman ρ per row: conformity vs fn_count", lambda r: _fmt(r["row_spearman_conformity_fn"], "+.3f"))]
    mods = section["modalities"]
    head = "".join(f"<th>{_e(m)}</th>" for m in mods)
    body = "".join(f"<tr><td>{_e(label)}</td>" + "".join(f"<td class='num'>{_e(fn(v))}</td>" for v in mods.values())
                   + "</tr>" for label, fn in rows)
    out.append(f"<div><table class='measures'><tr><th>measure</th>{head}</tr>{body}</table>")
    for m, r in mods.items():
        top = sorted(r["clusters"], key=lambda c: -c["mean_fn_count"])[:5]
        cells = "".join(f"<tr><td class='num'>{c['cluster']}</td><td class='num'>{c['rows']:,}</td>"
                        f"<td class='num'>{_fmt(c['mean_conformity'], '.4f')}</td>"
                        f"<td class='num'>{c['mean_fn_count']:.3g}</td></tr>" for c in top)
        out.append(f"<h3 style='font-size:15px;margin:12px 0 6px'>{_e(m)}: clusters with the most false "
                   f"negatives</h3><table><tr><th>cluster</th><th>rows</th><th>mean conformity</th>"
                   f"<th>mean fn_count</th></tr>{cells}</table>")
    out.append("<p class='muted'>Curate with it: <code>curator export --where \"fn_count = 0\"</code> "
               "keeps the rows no other sample fits as well as their own partner; "
               "<code>--where \"fn_rate &lt; 0.01\"</code> drops the most generic ones.</p></div></div>")
    return "".join(out)
