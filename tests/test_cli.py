"""The command line mirrors the library and keeps the cli.md contract."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from curator.cli import cli

CLI_MD = Path(__file__).resolve().parents[2] / "shared" / "docs" / "cli.md"
COMMANDS = ["ingest", "encode", "stats", "refresh", "cluster", "dedupe", "rebalance", "query",
            "export", "report", "verify", "optimize", "demo"]


@pytest.mark.parametrize("command", COMMANDS)
def test_every_contract_command_exists_with_help(command):
    result = CliRunner().invoke(cli, [command, "--help"])
    assert result.exit_code == 0 and "Usage:" in result.output


def test_contract_commands_match_cli_md():
    if not CLI_MD.exists():
        pytest.skip(f"{CLI_MD} not present")
    text = CLI_MD.read_text()
    section = text[text.index("## Commands"):text.index("## Sources")]
    documented = set(re.findall(r"^\| `(\w+)[ `]", section, flags=re.MULTILINE))
    assert len(documented) >= 13
    assert documented <= set(cli.commands), documented - set(cli.commands)


def test_python_dash_m(tmp_path):
    result = subprocess.run([sys.executable, "-m", "curator", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "ingest" in result.stdout


def test_stats_json_is_one_object(ingested):
    result = CliRunner().invoke(cli, ["--db", ingested, "stats", "--json"])
    assert result.exit_code == 0
    data = json.loads(result.stdout)
    assert set(data["modalities"]) == {"image", "text"}
    assert {"n", "dim", "model", "stats_version", "mean_norm", "norm_std", "max_staleness"} <= set(
        data["modalities"]["image"])


def test_stats_text_output(ingested):
    result = CliRunner().invoke(cli, ["--db", ingested, "stats"])
    assert result.exit_code == 0 and "image" in result.stdout and "max_staleness" in result.stdout


def test_refresh_json(ingested):
    result = CliRunner().invoke(cli, ["--db", ingested, "refresh", "--json"])
    data = json.loads(result.stdout)
    assert data["rows"] == 0 and data["table_version"] == data["table_version_read"]


def test_missing_table_is_an_error(tmp_path):
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "none"), "stats"])
    assert result.exit_code == 1 and result.stderr.startswith("Error: no curator database at ")


def test_invalid_table_name(tmp_path):
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "x"), "--table", "bad name", "ingest",
                                      str(tmp_path)])
    assert result.exit_code == 1 and "invalid table name" in result.stderr
