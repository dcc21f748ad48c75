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


def test_readme_curation_commands_run(clustered, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    commands = _commands("### Curate and export")
    assert [c[0] for c in commands] == ["cluster", "dedupe", "rebalance", "rebalance", "export", "report"]
    for args in commands:
        args = [a if a != "64" else "4" for a in args]  # a small table: fewer clusters
        result = CliRunner().invoke(cli, ["--db", clustered, *args])
        assert result.exit_code == 0, (args, result.output)
    assert (tmp_path / "curated" / "manifest.json").exists()
    assert (tmp_path / "report" / "index.html").exists()
