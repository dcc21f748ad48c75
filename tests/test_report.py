"""``curator report``: every figure's numbers against numpy oracles, the page, the browser."""

from __future__ import annotations

import json
import os
import re
import shutil
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from conftest import brute_conformity, read_table

from curator import ingest, refresh
from curator.errors import BadInput, CuratorError, NoTable
from curator.geometry.diagnostics import ShiftedConformity as _ShiftedConformity
from curator.geometry.diagnostics import (
    divergences,
    effective_rank,
    linear_separability,
)
from curator.store.arrow import fixed_list
from curator.store.database import Database
from curator.synthetic import make_pairs
from curator.views.report import report

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--no-first-run"]


# ---------------------------------------------------------------------------------------
# Fixtures: a synthetic table with known geometry, image files for some image rows.

@pytest.fixture(scope="module")
def synth():
    return make_pairs(samples=300, dim=24, concepts=6, seed=11)


@pytest.fixture(scope="module")
def built(tmp_path_factory, synth):
    """(db, report result, report.json data, synthetic data, image folder)."""
    from PIL import Image

    tmp = tmp_path_factory.mktemp("report")
    images = tmp / "images"
    images.mkdir()
    table = synth.table()
    paths = []
    for i, (rid, mod) in enumerate(zip(synth.ids, synth.modality)):
        path = images / f"{rid}.png"
        if mod == "image" and i % 2 == 0:  # half the images exist; the others must be skipped
            Image.new("RGB", (40, 30), (i % 255, 80, 160)).save(path)
        paths.append(str(path) if mod == "image" else None)
    table = table.append_column("path", pa.array(paths, pa.string()))
    src = tmp / "src.parquet"
    pq.write_table(table, src)
    db = str(tmp / "db.lancedb")
    ingest([str(src)], db=db)
    refresh(db=db)
    version = Database(db).dataset("embeddings").version
    result = report(db=db, out=str(tmp / "out"), sample=100_000, seed=3)
    assert Database(db).dataset("embeddings").version == version  # the table is unchanged
    data = json.loads(Path(result.report_json).read_text())
    return db, result, data, synth, tmp


def _by_modality(synth):
    return {m: synth.vectors[synth.modality == m].astype(np.float64) for m in ("image", "text")}


# ---------------------------------------------------------------------------------------
# Numbers against numpy.

def test_rows_norms_and_means_match_numpy(built):
    _, result, data, synth, _ = built
    for m, X in _by_modality(synth).items():
        v = data["modalities"][m]
        norms = np.linalg.norm(X, axis=1)
        assert v["rows"] == result.rows[m] == len(X)
        assert v["norm"]["mean"] == pytest.approx(norms.mean(), rel=1e-6)
        assert v["norm"]["std"] == pytest.approx(norms.std(), rel=1e-4)
        hist = v["norm"]["histogram"]
        assert sum(hist["counts"]) == len(X)
        expected, _ = np.histogram(np.clip(norms, hist["edges"][0], hist["edges"][-1]), bins=hist["edges"])
        assert np.abs(np.asarray(hist["counts"]) - expected).sum() <= 2  # float32 vs float64 at bin edges
        mean = X.mean(axis=0)
        sigma = X.std(axis=0)
        assert v["mean_vector_norm"] == pytest.approx(np.linalg.norm(mean), rel=1e-6)
        assert v["offset_ratio"] == pytest.approx(np.linalg.norm(mean) / np.linalg.norm(sigma), rel=1e-5)
        eig = np.sort(np.linalg.eigvalsh(np.cov(X.T, bias=True)))[::-1]
        assert np.allclose(v["spectrum"]["eigenvalues"], eig, rtol=1e-4, atol=1e-6 * eig[0])  # float32 products
        p = eig / eig.sum()
        assert v["spectrum"]["effective_rank"] == pytest.approx(np.exp(-(p * np.log(p)).sum()), rel=1e-6)


def test_gap_norm_and_separability(built):
    _, result, data, synth, _ = built
    X = _by_modality(synth)
    gap = np.linalg.norm(X["image"].mean(axis=0) - X["text"].mean(axis=0))
    assert result.gap_norm == pytest.approx(gap, rel=1e-6)
    assert data["cross"]["gap_norm"] == pytest.approx(gap, rel=1e-6)
    assert result.separability == 1.0  # well-separated shells
    sep = data["cross"]["separability"]
    assert sep["n_train"] + sep["n_test"] == len(synth)


def test_pearson_and_line_match_brute_force(built):
    _, result, data, synth, _ = built
    for m, X in _by_modality(synth).items():
        conf = brute_conformity(X)
        mean = X.mean(axis=0)
        est = X @ mean / (np.linalg.norm(X, axis=1) * np.linalg.norm(mean))
        r = np.corrcoef(est, conf)[0, 1]
        slope, intercept = np.polyfit(est, conf, 1)
        c = data["modalities"][m]["conformity"]
        # the image shell is far off-centre (offset ratio ~1.1) and r > 0.999 there; the text
        # shell of make_pairs sits closer to the origin (~0.7) and its r is ~0.998
        assert r > (0.999 if m == "image" else 0.99)
        assert c["pearson"] == pytest.approx(r, abs=2e-5)
        assert result.pearson[m] == c["pearson"]
        assert c["slope"] == pytest.approx(slope, rel=1e-3)
        assert c["intercept"] == pytest.approx(intercept, abs=1e-3)
        assert c["pearson_sample"] == pytest.approx(r, abs=1e-6)  # the sample is the whole modality here
        assert sum(c["histogram"]["counts"]) == len(X)
        edges = np.asarray(c["histogram"]["edges"])
        assert edges[0] <= conf.min() + 1e-4 and edges[-1] >= conf.max() - 1e-4


def test_gap_sweep_matches_pairwise_oracle(built):
    _, _, data, synth, _ = built
    X = _by_modality(synth)
    sweep = data["cross"]["gap_sweep"]
    alphas = np.asarray(sweep["alphas"])
    # the grid: [−1, 1] in steps of 0.1, grown by whole units while the minimum or its basin
    # touched an end (here the minimum sits above 1, so the grid grew upwards)
    assert alphas[0] <= -1 and alphas[-1] >= 1 and np.allclose(np.diff(alphas), 0.1)
    assert sweep["extended"] and alphas[-1] == 2
    oracle = {}
    for alpha in (alphas[0], 0.0, 1.0, sweep["best_alpha"], alphas[-1]):
        ci = brute_conformity(X["image"] - alpha * X["image"].mean(axis=0))
        ct = brute_conformity(X["text"] - alpha * X["text"].mean(axis=0))
        oracle[alpha] = _js_tv(ci, ct, sweep["bins"])
    for alpha in (alphas[0], 0.0, 1.0, alphas[-1]):
        k = int(np.argmin(np.abs(alphas - alpha)))
        assert sweep["jensen_shannon_bits"][k] == pytest.approx(oracle[alpha][0], abs=0.01)
        assert sweep["total_variation"][k] == pytest.approx(oracle[alpha][1], abs=0.01)
    assert sweep["js_at_zero"] == pytest.approx(oracle[0.0][0], abs=0.01)
    # the minimum lies inside the grid, and the refinement (steps of 0.01) is at least as low
    k = int(np.argmin(sweep["jensen_shannon_bits"]))
    assert 0 < k < len(alphas) - 1
    assert abs(sweep["best_alpha"] - alphas[k]) <= 0.1 + 1e-9
    assert sweep["js_min"] <= min(sweep["jensen_shannon_bits"]) + 1e-12
    assert sweep["js_min"] == pytest.approx(oracle[sweep["best_alpha"]][0], abs=0.01)
    # the basin holds the minimum, lies within the grid, and is where JS ≤ minimum + floor
    lo, hi = sweep["basin"]
    assert lo <= sweep["best_alpha"] <= hi and alphas[0] < lo and hi < alphas[-1]
    level = sweep["js_min"] + sweep["noise_floor_bits"]
    inside = [j for a, j in zip(alphas, sweep["jensen_shannon_bits"]) if lo <= a <= hi]
    assert all(j <= level + 1e-12 for j in inside)
    assert sweep["width"] == pytest.approx(hi - lo)
    assert 0 < sweep["noise_floor_bits"] < 0.2
    assert sweep["interval"][0] <= sweep["interval"][1]
    assert sweep["zero_in_basin"] == (lo <= 0 <= hi)


def _js_tv(a, b, bins):
    lo, hi = min(a.min(), b.min()), max(a.max(), b.max())
    p = np.histogram(a, bins=bins, range=(lo, hi))[0] / len(a)
    q = np.histogram(b, bins=bins, range=(lo, hi))[0] / len(b)
    mid = (p + q) / 2
    kl = lambda u: sum(x * np.log2(x / y) for x, y in zip(u, mid) if x > 0)
    return 0.5 * kl(p) + 0.5 * kl(q), 0.5 * np.abs(p - q).sum()


def test_extremes_are_the_brute_force_top_and_bottom(built):
    _, _, data, synth, _ = built
    for m in ("image", "text"):
        rows = synth.modality == m
        conf = brute_conformity(synth.vectors[rows])
        ids = synth.ids[rows]
        order = np.argsort(conf)
        most = [r["id"] for r in data["extremes"][m]["most"]]
        least = [r["id"] for r in data["extremes"][m]["least"]]
        assert set(most) == set(ids[order[::-1][:5]])
        assert set(least) == set(ids[order[:5]])
    for r in data["extremes"]["image"]["most"] + data["extremes"]["image"]["least"]:
        assert r["caption"].startswith("a photo of concept")  # a caption of its sample
        assert r["caption"].endswith(f"of sample {int(r['sample_id'][1:])}")


def test_thumbnails_only_for_existing_images(built):
    _, _, data, _, tmp = built
    out = tmp / "out"
    for side in data["extremes"].values():
        for rows in side.values():
            for r in rows:
                if r.get("path") and os.path.isfile(r["path"]):
                    assert (out / r["thumbnail"]).is_file()
                else:
                    assert "thumbnail" not in r


def test_cluster_plot_absent_then_present(built, synth, tmp_path):
    db, _, data, _, _ = built
    assert data["modalities"]["image"]["clusters"] is None
    assert "run <code>curator cluster</code>" in Path(built[1].index_html).read_text()
    copy = str(tmp_path / "db.lancedb")
    shutil.copytree(db, copy)
    _write_clusters(copy, synth)
    result = report(db=copy, out=str(tmp_path / "out"), sample=50)
    clustered = json.loads(Path(result.report_json).read_text())
    for m in ("image", "text"):
        expected = np.bincount(synth.concept[synth.modality == m])
        assert clustered["modalities"][m]["clusters"]["sizes"] == sorted(expected[expected > 0].tolist(),
                                                                          reverse=True)
    assert (tmp_path / "out" / "clusters.png").is_file()
    assert result.sample == {"image": 50, "text": 50}


def _write_clusters(db, synth):
    """Set ``cluster`` to the planted concept (test-only; the real column comes from cluster)."""
    import pyarrow.compute as pc

    from curator.engine.writes import write_columns

    concept = dict(zip(synth.ids.tolist(), synth.concept.tolist()))
    ds = Database(db).dataset("embeddings")
    rows = ds.to_table(columns=["id"], with_row_id=True)
    labels = pa.array([concept[i] for i in rows.column("id").to_pylist()], pa.int32())
    write_columns(ds, rows.column("_rowid").to_numpy(), {"cluster": labels})
    assert pc.max(read_table(db).column("cluster")).as_py() == synth.concept.max()


def test_sample_is_seeded_and_bounded(built, tmp_path):
    db = built[0]
    a = report(db=db, out=str(tmp_path / "a"), sample=40, seed=1)
    b = report(db=db, out=str(tmp_path / "b"), sample=40, seed=1)
    c = report(db=db, out=str(tmp_path / "c"), sample=40, seed=2)
    ja, jb, jc = (json.loads(Path(r.report_json).read_text()) for r in (a, b, c))
    assert a.sample == {"image": 40, "text": 40}
    assert ja["cross"]["gap_sweep"] == jb["cross"]["gap_sweep"]
    assert ja["cross"]["gap_sweep"] != jc["cross"]["gap_sweep"]
    assert ja["modalities"]["text"]["rows"] == built[2]["modalities"]["text"]["rows"]  # aggregates: whole table


# ---------------------------------------------------------------------------------------
# Unit oracles for the sample-based measures.

def test_separability_is_chance_for_one_distribution():
    rng = np.random.default_rng(0)
    same = linear_separability(rng.normal(size=(400, 16)), rng.normal(size=(400, 16)), seed=0)
    assert 0.35 < same["test_accuracy"] < 0.65
    apart = linear_separability(rng.normal(size=(400, 16)) + 3, rng.normal(size=(400, 16)), seed=0)
    assert apart["test_accuracy"] == 1.0


def test_shifted_conformity_matches_pairwise():
    rng = np.random.default_rng(2)
    X = rng.normal(size=(120, 10)) * np.linspace(2, 0.1, 10) + 3.0
    m = X.mean(axis=0)
    shifted = _ShiftedConformity(X, m)
    for alpha in (-1.0, -0.3, 0.0, 0.5, 1.0):
        assert np.allclose(shifted(alpha), brute_conformity(X - alpha * m), atol=1e-12)


def test_divergences_bounds():
    rng = np.random.default_rng(1)
    a = rng.normal(size=5000)
    js, tv = divergences(a, a.copy())
    assert js == pytest.approx(0.0, abs=1e-12) and tv == pytest.approx(0.0, abs=1e-12)
    js, tv = divergences(a, a + 100)
    assert js == pytest.approx(1.0) and tv == pytest.approx(1.0)


def test_effective_rank_extremes():
    assert effective_rank(np.array([5.0, 0, 0, 0])) == pytest.approx(1.0)
    assert effective_rank(np.ones(7)) == pytest.approx(7.0)


# ---------------------------------------------------------------------------------------
# The page and the result object.

class _Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs = []

    def handle_starttag(self, tag, attrs):
        for k, v in attrs:
            if k in ("src", "href") and v is not None:
                self.refs.append((tag, v))


def test_html_references_only_existing_local_files(built):
    _, result, _, _, _ = built
    text = Path(result.index_html).read_text()
    parser = _Refs()
    parser.feed(text)
    assert len([t for t, _ in parser.refs if t == "img"]) >= 6
    for _, ref in parser.refs:
        assert not re.match(r"^[a-z]+:", ref) and not ref.startswith("/"), ref
        assert (Path(result.out) / ref).is_file(), ref
    assert "<script" not in text.lower() and "@import" not in text and "url(" not in text


def test_result_summary_and_json(built):
    _, result, data, _, _ = built
    json.dumps(result.to_dict())
    assert result.index_html in result.summary()
    assert f"version {result.table_version}" in result.summary()
    assert result.index_html.endswith("index.html") and result.report_json.endswith("report.json")
    assert data["sample"]["per_modality"] == result.sample
    assert set(data["figures"]) >= {"norms", "spectrum", "conformity", "conformity_vs_estimator",
                                    "gap_view", "gap_sweep"}


def test_errors(built, tmp_path):
    db = built[0]
    with pytest.raises(BadInput):
        report(db=db, out=str(tmp_path / "x"), sample=3)
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(BadInput):
        report(db=db, out=str(blocker))
    with pytest.raises(NoTable):
        report(db=db, table="nope", out=str(tmp_path / "y"))
    with pytest.raises(CuratorError):
        report(db=str(tmp_path / "missing.lancedb"), out=str(tmp_path / "z"))


def test_cli_report(built, tmp_path):
    from click.testing import CliRunner

    from curator.cli import cli

    out = tmp_path / "cli"
    res = CliRunner().invoke(cli, ["--db", built[0], "report", "--out", str(out), "--sample", "60", "--json"])
    assert res.exit_code == 0, res.output
    payload = json.loads(res.output)
    assert payload["index_html"] == str(out / "index.html") and payload["sample"]["image"] == 60
    res = CliRunner().invoke(cli, ["--db", built[0], "report", "--out", str(out), "--sample", "2"])
    assert res.exit_code == 1 and "Error:" in res.output


# ---------------------------------------------------------------------------------------
# Real data: 500 MS-COCO pairs, CLIP ViT-B/16.

def test_coco_separable_and_estimator_exact(coco, tmp_path):
    image, text = coco
    n = len(image)
    table = pa.table({
        "id": [f"i{k}" for k in range(n)] + [f"t{k}" for k in range(n)],
        "sample_id": [f"s{k}" for k in range(n)] * 2,
        "modality": ["image"] * n + ["text"] * n,
        "embedding": fixed_list(np.concatenate([image, text])),
    })
    pq.write_table(table, tmp_path / "coco.parquet")
    db = str(tmp_path / "db.lancedb")
    ingest([str(tmp_path / "coco.parquet")], db=db)
    refresh(db=db)
    result = report(db=db, out=str(tmp_path / "out"))
    assert result.separability >= 0.99
    assert min(result.pearson.values()) >= 0.999
    gap = np.linalg.norm(image.astype(np.float64).mean(0) - text.astype(np.float64).mean(0))
    assert result.gap_norm == pytest.approx(gap, rel=1e-6)


# ---------------------------------------------------------------------------------------
# The page in a real browser (headless Chromium via Playwright).

def test_page_loads_in_headless_chromium(built):
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"no Chromium at {CHROMIUM} (apt-get install chromium)")
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")
    index = Path(built[1].index_html)
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            errors = []
            page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            failed = []
            page.on("requestfailed", lambda req: failed.append(req.url))
            page.goto(index.as_uri())
            page.wait_for_load_state("load")
            loaded = page.evaluate("Array.from(document.images).map(i => i.complete && i.naturalWidth > 0)")
            title = page.title()
        finally:
            browser.close()
    assert len(loaded) >= 6 and all(loaded), loaded
    assert errors == [] and failed == []
    assert "curator report" in title
