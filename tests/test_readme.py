"""The README's queries and curation commands work as shown (on a clustered table)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from curator.cli import cli

README = Path(__file__).resolve().parents[1] / "README.md"


def _commands(section: str) -> list[list[str]]:
    """`curator …` lines of the first bash block after ``section`` (continuations joined)."""
    text = README.read_text()
    block = text[text.index(section):]
    block = block[block.index("```bash") + 7:]
    block = block[:block.index("```")]
    commands, current = [], ""
    for line in block.splitlines():
        line = re.sub(r"\s+#.*$", "", line) if not line.strip().startswith("curator query") else line
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("curator"):
            if current:
                commands.append(current)
            current = line
        else:
            current += " " + line.strip()
    if current:
        commands.append(current)
    return [shlex.split(c)[1:] for c in commands]


@pytest.fixture
def clustered(ingested):
    from curator import cluster

    cluster(db=ingested, k=4, seed=1)
    return ingested


def test_readme_queries_run_and_return_rows(clustered):
    commands = _commands("### Queries users run most")
    assert len(commands) == 3
    for args in commands:
        result = CliRunner().invoke(cli, ["--db", clustered, *args, "--format", "csv"])
        assert result.exit_code == 0, (args, result.output)
        assert len(result.stdout.strip().splitlines()) > 1, args  # a header and rows


def _block(section: str) -> list[str]:
    """The lines of the first bash block after ``section``, comments removed."""
    text = README.read_text()
    block = text[text.index(section):]
    block = block[block.index("```bash") + 7:]
    block = block[:block.index("```")]
    lines = [re.sub(r"\s+#\s.*$", "", line).strip() for line in block.splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_curate_block_gives_capped_clusters(tmp_path, monkeypatch):
    """The curate-and-export block, run as written after `curator demo --out curator-demo`
    in a fresh folder: the exported pairs hold at most the cap of images per cluster
    (within binomial noise), exactly the images the rebalance kept."""
    import json
    import math

    import lance
    import numpy as np
    import pyarrow.parquet as pq

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CURATOR_DB", raising=False)
    demo = CliRunner().invoke(cli, ["demo", "--out", "curator-demo"])
    assert demo.exit_code == 0, demo.output
    lines = _block("### Curate and export")
    assert lines[0].startswith("export CURATOR_DB=") and lines[1].startswith("curator ")
    outputs = {}
    for line in lines:
        args = shlex.split(line)
        if args[0] == "export":  # the shell's: an environment variable for what follows
            name, value = args[1].split("=", 1)
            monkeypatch.setenv(name, value)
            continue
        assert args[0] == "curator", line
        result = CliRunner().invoke(cli, args[1:])
        assert result.exit_code == 0, (line, result.output)
        outputs.setdefault(args[1], []).append(result.output)
    rebalance_line = next(a for a in map(shlex.split, lines) if a[1:2] == ["rebalance"])
    cap = int(rebalance_line[rebalance_line.index("--cap") + 1])
    assert "--where" in rebalance_line and "--into" not in rebalance_line

    pairs = pq.read_table("curated/part-00000.parquet", columns=["image_id", "image_cluster"])
    manifest = json.loads(open("curated/manifest.json").read())
    assert manifest["unit"] == "pair" and manifest["predicate"]["columns"] == ["rebalance_keep"]
    images: dict = {}
    for image, cluster in zip(pairs.column("image_id").to_pylist(), pairs.column("image_cluster").to_pylist()):
        images.setdefault(cluster, set()).add(image)
    table = lance.dataset("curator-demo/curator.lancedb/embeddings.lance",
                          version=manifest["source"]["table_version"]).to_table(
        columns=["id", "modality", "cluster", "is_duplicate", "rebalance_keep"])
    rows = table.to_pylist()
    candidates: dict = {}
    for r in rows:
        if r["modality"] == "image" and not r["is_duplicate"]:
            candidates[r["cluster"]] = candidates.get(r["cluster"], 0) + 1
    crowded = 0
    for cluster, before in candidates.items():
        p = min(1.0, cap / before)
        kept = len(images.get(cluster, ()))
        assert kept <= cap + 4 * math.sqrt(before * p * (1 - p)) + 1, (cluster, before, kept)
        crowded += before > cap
        # the export holds exactly the images the rebalance kept
        assert kept == sum(r["rebalance_keep"] for r in rows
                           if r["modality"] == "image" and r["cluster"] == cluster)
    assert crowded >= 3
    assert not any(r["rebalance_keep"] and r["is_duplicate"] for r in rows)
    largest = max(candidates.values())
    assert f"largest {largest} -> " in outputs["rebalance"][0]  # what it reported
    assert (tmp_path / "curated-npy" / "img_emb" / "img_emb_0.npy").exists()
    sizes = sorted((len(v) for v in images.values()), reverse=True)[:3]
    shown = outputs["query"][0].splitlines()[2:5]
    assert [int(line.split()[1]) for line in shown] == sizes
    assert np.all(np.array(sizes) <= cap + 4 * math.sqrt(cap))
