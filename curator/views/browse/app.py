"""The browse app's page: Panel widgets around HoloViews plots rendered by Datashader.

One page per browser tab (:func:`page`), all over one :class:`BrowseTable`:

- a scatter of ``proj_x``/``proj_y``, rasterised on the server by Datashader (so a
  million points cost the browser one image), coloured by the mean of a numeric column
  or by the categories of a boolean/string column, with box and lasso selection;
- histograms of the score columns, linked to the scatter (HoloViews
  ``link_selections``): brushing any of them selects, and every plot shows the selection;
- a predicate box (``parse``d like every ``--where``; a bad one shows its one-line error)
  that filters what the plots show; a new filter starts a new selection;
- the selection: its size, the predicate that repeats it (for a box or a histogram
  range; a lasso has none), a table of its first rows with captions and thumbnails, a
  tag name box that saves it as a tag (``curator tag``), and its ids as a download
  (the file ``curator tag --ids`` reads);
- for the row clicked in that table: its nearest neighbours (exact, one scan), its
  duplicate group and its pair (the rows of its sample).
"""

from __future__ import annotations

import html
import io
import time

import numpy as np
import pyarrow as pa

from ...errors import CuratorError
from .data import COORDS, BrowseTable
from .selection import to_predicate

TABLE_ROWS = 200  # rows of the selection read into the table
MAX_HISTOGRAMS = 6  # score histograms (each one more plot to build per page)
NEIGHBOURS = 8
PLOT_SIZE = (640, 560)
HIST_SIZE = (280, 170)
CSS = """
.curator-note { color: #555; font-size: 12px; }
.curator-expr { font-family: monospace; font-size: 12px; color: #333; word-break: break-all; }
.curator-detail table { border-collapse: collapse; font-size: 12px; }
.curator-detail td, .curator-detail th { border-bottom: 1px solid #ddd; padding: 2px 6px;
  text-align: left; vertical-align: top; }
"""


def setup():
    """Load Panel and HoloViews with their Bokeh resources (served locally: no internet)."""
    import holoviews as hv
    import panel as pn

    hv.extension("bokeh", logo=False)
    pn.extension("tabulator", raw_css=[CSS], notifications=False)
    return pn, hv


def warm_up() -> None:
    """Compile Datashader's kernels for this frame's types once, before the first page."""
    import datashader as ds
    import pandas as pd

    f32 = np.float32
    df = pd.DataFrame({"x": np.array([0, 1], f32), "y": np.array([0, 1], f32),
                       "v": np.array([1, 2], f32), "c": pd.Categorical(["a", "b"])})
    canvas = ds.Canvas(plot_width=8, plot_height=8)
    for agg in (ds.count(), ds.mean("v"), ds.count_cat("c")):
        canvas.points(df, "x", "y", agg)


def page(bt: BrowseTable):
    """The app for one browser tab."""
    return _Page(bt).layout


class _Page:
    def __init__(self, bt: BrowseTable):
        import panel as pn

        self.bt = bt
        self.pn = pn
        self.filter_mask = np.ones(len(bt.frame), bool)
        self.filter_text = None
        self.applied = ""
        self.selected = np.zeros(0, np.uint64)
        self.selection_predicate = None
        self.links = None
        colours = bt.colours()
        self.colour = pn.widgets.Select(name="Colour by", options=["(density)", *colours],
                                        value=colours[0] if colours else "(density)", width=220)
        self.where = pn.widgets.TextInput(name="Filter (SQL predicate over the table's columns)",
                                          placeholder="e.g. modality = 'image' AND uncertainty > 0.9",
                                          width=560)
        self.apply = pn.widgets.Button(name="Apply filter", button_type="primary", width=110)
        self.clear = pn.widgets.Button(name="Clear filter", width=110)
        self.message = pn.pane.Alert("", alert_type="danger", visible=False, width=760)
        self.status = pn.pane.HTML("", width=1200)
        self.summary = pn.pane.Markdown("**Selection:** none (box or lasso on the scatter, or "
                                        "drag on a histogram)", width=740)
        self.expr = pn.pane.HTML("", css_classes=["curator-expr"], width=740)
        self.tag_name = pn.widgets.TextInput(name="Tag name", placeholder="e.g. reviewed_bad",
                                             width=220)
        self.save = pn.widgets.Button(name="Save selection as tag", button_type="success",
                                      width=200, disabled=True)
        self.download = pn.widgets.FileDownload(callback=self._ids_file, filename="selection-ids.txt",
                                                label="Download ids", width=160, disabled=True)
        self.saved = pn.pane.Alert("", alert_type="success", visible=False, width=740)
        from bokeh.models import NumberFormatter

        integers = {c: NumberFormatter(format="0", nan_format="", null_format="")
                    for c in self._empty_rows().columns if _kind(bt.dataset.schema, c) == "integer"}
        self.table = pn.widgets.Tabulator(
            self._empty_rows(), height=330, width=740, pagination="local", page_size=8,
            show_index=False, disabled=True, selectable=1, hidden_columns=["_rowid"],
            formatters={"thumbnail": {"type": "html"}, **integers}, sizing_mode="fixed")
        self.detail = pn.pane.HTML("<i>Click a row of the table to see its neighbours, its "
                                   "duplicate group and its pair.</i>",
                                   css_classes=["curator-detail"], width=680)
        self.plots = pn.Column(self._plots())
        self.apply.on_click(self._apply)
        self.where.param.watch(self._apply, "value")  # Enter in the box applies too
        self.clear.on_click(self._clear)
        self.colour.param.watch(lambda *_: self._redraw(), "value")
        self.save.on_click(self._save)
        self.table.on_click(self._row_clicked)
        self._update_status()
        self.layout = pn.Column(
            pn.pane.Markdown(f"## curator browse · table `{bt.table}`"),
            self.status,
            pn.Row(self.where, pn.Column(pn.Spacer(height=18), pn.Row(self.apply, self.clear)),
                   self.colour),
            self.message,
            self.plots,
            pn.Row(
                pn.Column(self.summary, self.expr,
                          pn.Row(self.tag_name, pn.Column(pn.Spacer(height=18),
                                                          pn.Row(self.save, self.download))),
                          self.saved, self.table),
                pn.Column(pn.pane.Markdown("### One row"), self.detail)),
        )

    # -- plots ---------------------------------------------------------------------------
    def _plots(self):
        import datashader as ds
        import holoviews as hv
        from holoviews.operation.datashader import datashade, dynspread, rasterize

        bt = self.bt
        frame = bt.frame if self.filter_mask.all() else bt.frame[self.filter_mask]
        colour = self.colour.value
        vdims = [] if colour == "(density)" else [colour]
        scores = bt.scores()[:MAX_HISTOGRAMS]
        dims = list(dict.fromkeys([*scores, *vdims]))
        dataset = hv.Dataset(frame[[*COORDS, "_rowid", *dims]], kdims=list(COORDS),
                             vdims=["_rowid", *dims])
        points = hv.Points(dataset, list(COORDS), vdims)
        opts = dict(width=PLOT_SIZE[0], height=PLOT_SIZE[1], tools=["box_select", "lasso_select",
                    "hover"], hooks=[_no_logo], active_tools=["box_select"], xlabel="proj_x", ylabel="proj_y",
                    title=f"{len(frame):,} rows · {self._projection_name()}")
        legend = ""
        if colour != "(density)" and bt.categorical(colour):
            cats = [str(c) for c in frame[colour].cat.categories]
            key = dict(zip(cats, _palette(len(cats))))
            scatter = dynspread(datashade(points, aggregator=ds.count_cat(colour), color_key=key),
                                threshold=0.6).opts(show_legend=False, **opts)
            counts = frame[colour].value_counts()
            legend = "".join(f"<span style='color:{key[c]}'>&#9632;</span> {html.escape(c)} "
                             f"({int(counts.get(c, 0)):,}) &nbsp; " for c in cats
                             if counts.get(c, 0))
        else:
            agg = ds.count() if colour == "(density)" else ds.mean(colour)
            scatter = dynspread(rasterize(points, aggregator=agg), threshold=0.6).opts(
                cmap="viridis" if colour != "(density)" else "fire",
                cnorm="eq_hist" if colour == "(density)" else "linear",
                colorbar=True, clabel=colour if colour != "(density)" else "rows", **opts)
        histograms = [hv.operation.histogram(dataset, dimension=c, num_bins=40).opts(
            width=HIST_SIZE[0], height=HIST_SIZE[1], tools=["xbox_select"], active_tools=[
                "xbox_select"], toolbar=None, title=c, xlabel=c) for c in scores]
        self.links = hv.link_selections.instance(unselected_alpha=0.15)
        self.links.param.watch(self._selected, "selection_expr")
        self.frame_shown = frame
        self.dataset_shown = dataset
        self._set_selection(np.zeros(0, np.uint64), None, None)
        pn = self.pn
        scatter_pane = pn.Column(pn.pane.HoloViews(self.links(scatter), linked_axes=False,
                                                   css_classes=["curator-scatter"]),
                                 pn.pane.HTML(f"<div class='curator-note'>{legend}</div>"))
        grid = pn.GridBox(*[pn.pane.HoloViews(self.links(h), linked_axes=False)
                            for h in histograms], ncols=2)
        return pn.Row(scatter_pane, grid)

    def _projection_name(self) -> str:
        p = self.bt.projection
        return "stored proj_x/proj_y" if p == "stored" else f"{p} view (computed; `curator project` stores it)"

    def _redraw(self):
        self.plots.objects = [self._plots()]

    # -- filter --------------------------------------------------------------------------
    def _apply(self, *_):
        text = (self.where.value or "").strip()
        if text == (self.applied or "") and not self.message.visible:
            return
        try:
            mask, normalised = self.bt.mask(text or None)
        except CuratorError as exc:
            self.message.object = html.escape(str(exc))
            self.message.visible = True
            return
        if not mask.any():
            self.message.object = f"no browsed row matches {html.escape(normalised)}"
            self.message.visible = True
            return
        self.message.visible = False
        self.filter_mask, self.filter_text, self.applied = mask, normalised, text
        self._update_status()
        self._redraw()

    def _clear(self, *_):
        self.filter_mask, self.filter_text, self.applied = np.ones(len(self.bt.frame), bool), None, ""
        self.where.value = ""
        self.message.visible = False
        self._update_status()
        self._redraw()

    def _update_status(self):
        bt = self.bt
        shown = int(self.filter_mask.sum())
        sample = (f"a seeded sample of {len(bt.frame):,} of the {bt.matching:,} rows"
                  if bt.sampled else f"all {bt.matching:,} rows")
        where = f" where <code>{html.escape(bt.where)}</code>" if bt.where else ""
        filt = (f"; filter <code>{html.escape(self.filter_text)}</code>: "
                f"<b class='curator-filtered'>{shown:,} rows</b>" if self.filter_text else "")
        self.status.object = (f"Table version {bt.version}, {bt.total:,} rows; browsing {sample}"
                              f"{where}{filt}. Coordinates: {self._projection_name()}.")

    # -- selection -------------------------------------------------------------------------
    def _selected(self, event):
        expr = event.new
        if expr is None:
            self._set_selection(np.zeros(0, np.uint64), None, None)
            return
        hit = np.asarray(expr.apply(self.dataset_shown, compute=True, keep_index=False), bool)
        rowids = self.frame_shown["_rowid"].to_numpy()[hit]  # the frame the plots were given
        self._set_selection(rowids, to_predicate(expr), expr)

    def _set_selection(self, rowids, predicate, expr):
        self.selected = np.asarray(rowids, np.uint64)
        n = len(self.selected)
        self.save.disabled = self.download.disabled = n == 0
        if expr is None:
            self.summary.object = ("**Selection:** none (box or lasso on the scatter, or drag "
                                   "on a histogram)")
            self.expr.object = ""
        else:
            full = predicate
            if predicate is not None and self.filter_text:
                import duckdb  # one normalised expression, as every --where is recorded

                full = duckdb.SQLExpression(f"({self.filter_text}) AND ({predicate})").get_name()
            sampled = " of the sample" if self.bt.sampled else ""
            self.summary.object = f"**Selection: {n:,} rows**{sampled}"
            self.expr.object = (f"as a predicate: <span class='curator-selection-predicate'>"
                                f"{html.escape(full)}</span>" if full is not None else
                                "a lasso has no predicate: save it as a tag or download its ids")
            if self.bt.sampled:
                self.expr.object += ("<br>Saving tags the selected rows of the sample only"
                                     + ("; every row of the table in this selection: <code>"
                                        f"curator tag NAME --where {html.escape(repr(full))}</code>"
                                        if full is not None else "") + ".")
        self.table.value = (_table_frame(self.bt.rows(self.selected[:TABLE_ROWS]), self.bt.dataset.schema)
                            if n else self._empty_rows())

    def _empty_rows(self):
        return _table_frame(self.bt.rows(np.zeros(0, np.uint64)), self.bt.dataset.schema)

    def _ids_file(self):
        return io.StringIO("".join(f"{i}\n" for i in self.bt.ids(self.selected)))

    def _save(self, *_):
        from ...curation.tags import tag

        name = (self.tag_name.value or "").strip()
        started = time.time()
        try:
            result = tag(name, db=self.bt.database.uri, table=self.bt.table,
                         ids=self.bt.ids(self.selected))
        except CuratorError as exc:
            self.saved.alert_type = "danger"
            self.saved.object = html.escape(str(exc))
            self.saved.visible = True
            return
        self.bt.reload_tag(name)
        options = ["(density)", *self.bt.colours()]
        if self.colour.options != options:
            self.colour.options = options
        self.saved.alert_type = "success"
        self.saved.object = html.escape(result.summary()) + (
            f" ({time.time() - started:.1f} s). Use it in any --where, e.g. "
            f"<code>curator export --where \"{html.escape(name)}\"</code>")
        self.saved.visible = True
        self._update_status()

    # -- one row ---------------------------------------------------------------------------
    def _row_clicked(self, event):
        frame = self.table.value
        if event.row is None or event.row >= len(frame):
            return
        rowid = int(frame["_rowid"].iloc[event.row])
        bt = self.bt
        parts = []
        ids, cos = bt.neighbours(rowid, NEIGHBOURS)
        parts.append(_html_rows(f"Nearest {len(ids)} rows of its modality (cosine, whole table)",
                                bt.rows(ids), {"cosine": cos}))
        group = bt.same_value(rowid, "dup_group")
        if len(group):
            parts.append(_html_rows(f"Its duplicate group ({len(group)} rows)", bt.rows(group[:20])))
        else:
            parts.append("<p><b>Duplicate group:</b> none</p>")
        pair = bt.same_value(rowid, "sample_id")
        parts.append(_html_rows(f"Its pair: the rows of its sample ({len(pair)})",
                                bt.rows(pair[:20])) if len(pair) else
                     "<p><b>Pair:</b> no sample id</p>")
        row = bt.rows(np.array([rowid], np.uint64))
        head = _html_rows(f"Row {row['id'].iloc[0] if 'id' in row else rowid}", row)
        self.detail.object = head + "".join(parts)


def _no_logo(plot, element) -> None:
    """No Bokeh logo in the scatter's toolbar."""
    plot.state.toolbar.logo = None


def _kind(schema: pa.Schema, column: str) -> str:
    """How the table shows a column: ``integer``, ``number``, or ``other`` (text, booleans,
    the thumbnail)."""
    if column not in schema.names:
        return "other"
    kind = schema.field(column).type
    if pa.types.is_integer(kind):
        return "integer"
    return "number" if pa.types.is_floating(kind) else "other"


def _table_frame(frame, schema: pa.Schema):
    """The selection table's frame, with one dtype per column whatever the rows hold:
    numbers as float64 (4 decimals; integers shown as integers by their formatter, a
    null as blank), everything else as objects, the hidden ``_rowid`` as uint64. The
    empty table has the same dtypes, so filling it never changes the Tabulator's column
    configuration (a configuration change re-renders the widget in the browser, and the
    rows sent with it could be lost)."""
    import pandas as pd

    out = {}
    for c in frame.columns:
        kind = _kind(schema, c)
        if c == "_rowid":
            out[c] = frame[c].to_numpy().astype(np.uint64)
        elif kind == "other":
            out[c] = pd.Series(frame[c].to_numpy(dtype=object), dtype=object)
        else:
            values = frame[c].astype(np.float64).to_numpy()
            out[c] = values if kind == "integer" else values.round(4)
    return pd.DataFrame(out, columns=list(frame.columns))


def _html_rows(title: str, frame, extra: dict | None = None) -> str:
    shown = [c for c in ("thumbnail", "id", "modality", "caption", "conformity", "uncertainty",
                         "alignment", "cluster", "dup_group", "is_duplicate") if c in frame.columns]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in (*shown, *(extra or {})))
    body = []
    for k, row in enumerate(frame[shown].itertuples(index=False)):
        cells = []
        for c, v in zip(shown, row):
            cells.append(f"<td>{v}</td>" if c == "thumbnail" else f"<td>{html.escape(_fmt(v))}</td>")
        cells += [f"<td>{float(vals[k]):.4f}</td>" for vals in (extra or {}).values()]
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<p><b>{html.escape(title)}</b></p><table><tr>{head}</tr>{''.join(body)}</table>"


def _fmt(value) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return "" if np.isnan(value) else f"{value:.4g}"
    return str(value)


def _palette(n: int) -> list[str]:
    base = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
            "#7f7f7f", "#bcbd22", "#17becf"]
    if n <= len(base):
        return base[:n]
    import colorcet

    return list(colorcet.glasbey[:n])
