"""The report's "concepts and false negatives" section against numpy, and its notes when
clusters or fn_count are missing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import read_table

import curator
from curator.views.concepts import pearson, spearman


def _report(db, tmp_path, name="out"):
    result = curator.report(db=db, out=str(tmp_path / name), sample=200)
    data = json.loads(Path(result.report_json).read_text())
    html = Path(result.index_html).read_text()
    return data, html


def test_section_matches_numpy(ingested, tmp_path):
    curator.cluster(db=ingested, k=6, seed=0)
    curator.negatives(db=ingested, eps=0.02)
    data, html = _report(ingested, tmp_path)
    section = data["concept_negatives"]
    assert section["available"] and set(section["modalities"]) == {"image", "text"}
    t = read_table(ingested).to_pydict()
    for m, got in section["modalities"].items():
        rows = [i for i, mm in enumerate(t["modality"]) if mm == m and t["fn_count"][i] is not None]
        cluster = np.array([t["cluster"][i] for i in rows])
        fn = np.array([t["fn_count"][i] for i in rows], float)
        conf = np.array([t["conformity"][i] for i in rows], float)
        ids = np.unique(cluster)
        size = np.array([(cluster == c).sum() for c in ids])
        mean_fn = np.array([fn[cluster == c].mean() for c in ids])
        mean_conf = np.array([conf[cluster == c].mean() for c in ids])
        assert [c["cluster"] for c in got["clusters"]] == ids.tolist()
        assert [c["rows"] for c in got["clusters"]] == size.tolist()
        assert np.allclose([c["mean_fn_count"] for c in got["clusters"]], mean_fn)
        assert np.allclose([c["mean_conformity"] for c in got["clusters"]], mean_conf, atol=1e-6)
        assert got["pearson_size_fn"] == pytest.approx(np.corrcoef(size, mean_fn)[0, 1])
        rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731 (no ties in these sizes / means)
        if len(set(size)) == len(size) and len(set(mean_fn)) == len(mean_fn):
            assert got["spearman_size_fn"] == pytest.approx(np.corrcoef(rank(size), rank(mean_fn))[0, 1])
        assert got["pearson_conformity_fn"] == pytest.approx(np.corrcoef(mean_conf, mean_fn)[0, 1], abs=1e-6)
    assert "concept_negatives.png" in data["figures"].values()
    assert "Concepts and false negatives" in html and "Spearman" in html


def test_section_notes_what_to_run(ingested, tmp_path):
    data, html = _report(ingested, tmp_path, "a")
    assert not data["concept_negatives"]["available"]
    assert "curator negatives" in data["concept_negatives"]["note"]
    assert "Concepts and false negatives" in html and "concept_negatives" not in data["figures"]
    curator.negatives(db=ingested)
    data, _ = _report(ingested, tmp_path, "b")
    note = data["concept_negatives"]["note"]
    assert "curator cluster" in note and "curator negatives" not in note


def test_rank_correlations():
    assert spearman([1, 2, 3, 4], [10, 20, 25, 100]) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [3, 2, 2, 1]) == pytest.approx(-1.0)  # ties: mean ranks
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert np.isnan(pearson([1, 1, 1], [1, 2, 3]))
