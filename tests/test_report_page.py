"""The report page says what its numbers are: the two-shells caption holds on planted
data, the norm rows are labelled, the footer's time is the command's, no machine path is
shown, and in a real browser at 1400 px no grid row is left half empty and no plot text
is shown smaller than 12 px."""

from __future__ import annotations

import json
import os
import re
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from curator import cluster
from curator.cli import cli
from curator.geometry import projection
from curator.synthetic import make_pairs
from curator.views import figures
from curator.views.report import shown_location

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    """A clustered synthetic table's report, made by the CLI from inside the folder."""
    from curator import ingest, refresh

    tmp = tmp_path_factory.mktemp("page")
    data = make_pairs(samples=400, dim=32, concepts=8, seed=5)
    db = str(tmp / "work" / "my.lancedb")
    for path in data.write_parquet(str(tmp / "src"), parts=2):
        ingest([path], db=db)
    refresh(db=db)
    cluster(db=db, k=6, seed=0)
    cwd = os.getcwd()
    os.chdir(tmp / "work")
    try:
        result = CliRunner().invoke(cli, ["--db", "my.lancedb", "report", "--out", "rep", "--json"])
    finally:
        os.chdir(cwd)
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    html = Path(out["index_html"]).read_text()
    return {"tmp": tmp, "db": db, "result": out, "html": html,
            "data": json.loads(Path(out["report_json"]).read_text())}


def _text(html: str) -> str:
    return " ".join(unescape(re.sub(r"<[^>]+>", " ", html)).split())


def test_two_shells_caption_holds_on_planted_concepts():
    """The caption: the modalities are two groups along the gap direction; clouds along the
    vertical axis are groups of concepts, and images and captions split alike."""
    data = make_pairs(samples=1500, dim=64, seed=0)
    image, text = (data.modality == "image"), (data.modality == "text")
    A, B = data.vectors[image], data.vectors[text]
    A64, B64 = A.astype(np.float64), B.astype(np.float64)
    view = projection.gap_view(A64.mean(0), B64.mean(0), *projection.pooled(
        [projection.sample_moments(A64), projection.sample_moments(B64)]))
    a, b = view.coordinates(A64), view.coordinates(B64)
    assert a[:, 0].min() > b[:, 0].max()  # two separate groups along the gap direction
    ca, cb = data.concept[image], data.concept[text]

    def explained(y, c):  # share of the vertical spread that the planted concept explains
        within = sum(((y[c == k] - y[c == k].mean()) ** 2).sum() for k in np.unique(c))
        return 1 - within / ((y - y.mean()) ** 2).sum()

    assert explained(a[:, 1], ca) > 0.8 and explained(b[:, 1], cb) > 0.8
    concepts = [k for k in np.unique(ca) if (ca == k).sum() >= 5 and (cb == k).sum() >= 5]
    means_a = [a[ca == k, 1].mean() for k in concepts]
    means_b = [b[cb == k, 1].mean() for k in concepts]
    assert np.corrcoef(means_a, means_b)[0, 1] > 0.99  # images and captions split alike


def test_page_caption_explains_several_clouds(page):
    text = _text(page["html"])
    assert "strip on top" in text and "not more shells" in text
    assert "Two separate clouds = two shells" not in text


def test_norm_rows_say_which_number_is_which(page):
    mods = page["data"]["modalities"]
    rows = dict(re.findall(r"<tr><td>([^<]+)</td>((?:<td class='num'>[^<]*</td>)+)</tr>", page["html"]))
    cells = {label: re.findall(r"<td class='num'>([^<]*)</td>", tds) for label, tds in rows.items()}
    assert cells["norm std"] == [format(v["norm"]["std"], ".4g") for v in mods.values()]
    assert cells["shell thickness: norm std / mean norm"] == [
        format(v["norm"]["std"] / v["norm"]["mean"], ".2g") for v in mods.values()]
    assert not any("(" in c for c in cells["norm std"])


def test_footer_time_is_the_time_the_command_reports(page):
    seconds = page["result"]["seconds"]
    assert seconds > 0 and page["data"]["seconds"] == seconds
    assert f"Made by curator report in {seconds:.1f} s" in _text(page["html"])
    summary = CliRunner().invoke(cli, ["--db", page["db"], "report", "--out", str(page["tmp"] / "again")])
    first = summary.stdout.splitlines()[0]
    said = re.search(r"in (\d+\.\d) s:", first).group(1)
    html = (page["tmp"] / "again" / "index.html").read_text()
    assert f"Made by <code>curator report</code> in {said} s" in html


def test_page_shows_no_machine_path(page):
    text = page["html"]
    assert str(page["tmp"]) not in text and os.path.dirname(page["db"]) not in text
    assert "database <code>my.lancedb</code>" in text  # relative to where the command ran
    assert shown_location("s3://bucket/db") == "s3://bucket/db"
    assert shown_location("/somewhere/else/curator.lancedb") == "curator.lancedb"
    assert shown_location(os.path.join(os.getcwd(), "a", "b.lancedb")) == os.path.join("a", "b.lancedb")


def test_layout_and_font_sizes_in_chromium_at_1400px(page):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM}")
    sync_api = pytest.importorskip("playwright.sync_api")
    index = Path(page["result"]["index_html"])
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            tab = browser.new_page(viewport={"width": 1400, "height": 900})
            tab.goto(index.as_uri())
            tab.wait_for_load_state("load")
            grids = tab.evaluate("""() => Array.from(document.querySelectorAll('.grid')).map(g => ({
                width: g.getBoundingClientRect().width,
                cards: Array.from(g.children).map(c => {
                    const r = c.getBoundingClientRect(); return {top: r.top, width: r.width}; })}))""")
            images = tab.evaluate("""() => Array.from(document.querySelectorAll('figure img')).map(i => ({
                src: i.getAttribute('src'), shown: i.clientWidth, natural: i.naturalWidth}))""")
        finally:
            browser.close()
    assert len(grids) >= 2
    for grid in grids:  # every row of cards fills the grid's width
        rows = {}
        for card in grid["cards"]:
            rows.setdefault(round(card["top"]), []).append(card["width"])
        for widths in rows.values():
            assert sum(widths) + 16 * (len(widths) - 1) >= 0.98 * grid["width"], (grid, widths)
    assert any(len(grid["cards"]) == 5 for grid in grids)  # with the clusters card, full width
    assert len(images) >= 7
    for image in images:  # the smallest plot text, in CSS pixels as shown
        px = figures.SMALLEST_PT * figures.DPI / 72 * image["shown"] / image["natural"]
        assert px >= 12.5, (image, px)
