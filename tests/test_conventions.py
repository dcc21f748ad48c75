"""One convention for every command: documented options, whole summaries in
``curator --help``, ``--json`` on every reporting command (exactly one JSON object),
click's exit code 2 for usage errors, and one ``Error:`` line with exit code 1, with a
hint, for everything else.

The commands are walked from click itself, so a command added later is held to the
same rules.
"""

from __future__ import annotations

import inspect
import json

import click
import pytest
from click.testing import CliRunner

from curator.cli import cli

NOT_REPORTING = {"browse"}  # an interactive app: it serves a page instead of reporting


def _commands():
    return sorted(cli.commands.items())


@pytest.mark.parametrize("name, command", _commands())
def test_every_option_and_argument_is_documented(name, command):
    for param in command.params:
        if isinstance(param, click.Argument):
            assert param.human_readable_name in (command.help or ""), (
                f"{name}: the help text does not explain {param.human_readable_name}")
        else:
            assert (param.help or "").strip(), f"{name} {param.opts[0]}: no help text"
    for param in cli.params:
        assert (getattr(param, "help", None) or "").strip(), f"curator {param.opts[0]}: no help"


def test_top_level_help_shows_whole_one_line_summaries():
    result = CliRunner().invoke(cli, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    listing = result.output[result.output.index("Commands:"):]
    assert "…" not in listing and "..." not in listing
    flat = " ".join(listing.split())
    for name, command in _commands():
        first = " ".join(inspect.cleandoc(command.help or "").split("\n\n")[0].split())
        assert first and f"{name} {first}" in flat, name
        assert len(first) <= 66, f"{name}: summary longer than one line at 80 columns: {first!r}"


@pytest.mark.parametrize("name, command", _commands())
def test_every_reporting_command_has_json(name, command):
    if name in NOT_REPORTING:
        pytest.skip("not a reporting command")
    assert "as_json" in {p.name for p in command.params}, f"{name} has no --json"


@pytest.mark.parametrize("args", [
    ["cluster"],  # a required option is missing
    ["stats", "--bogus"],  # an unknown option
    ["dedupe", "--eps", "0.1", "--keep", "oldest"],  # not a choice
    ["report", "--out", "r", "--sample", "many"],  # not an integer
    ["nosuchcommand"],
    ["ingest"],  # a required argument is missing
])
def test_usage_errors_keep_clicks_exit_code_2(args, tmp_path):
    result = CliRunner().invoke(cli, ["--db", str(tmp_path / "db"), *args])
    assert result.exit_code == 2, result.output
    assert "Usage:" in result.stderr and "Error:" in result.stderr


FAILING = [["stats"], ["refresh"], ["cluster", "--k", "2"], ["dedupe", "--eps", "0.1"],
           ["rebalance", "--cap", "3"], ["query", "select count(*) from embeddings"],
           ["export", "--out", "exported"], ["report", "--out", "report"], ["verify"], ["optimize"]]


def _one_error_line(result) -> str:
    assert result.exit_code == 1, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: "), lines
    assert "Traceback" not in result.output
    return lines[0]


@pytest.mark.parametrize("args", FAILING, ids=lambda a: a[0])
def test_no_database_here_says_what_to_run(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("CURATOR_DB", raising=False)
    line = _one_error_line(CliRunner().invoke(cli, args))
    assert line == (f"Error: no curator database at {tmp_path / 'curator.lancedb'}: run `curator "
                    "ingest FILE` or pass --db (or set $CURATOR_DB)")
    assert not (tmp_path / "curator.lancedb").exists() and not (tmp_path / "report").exists()


@pytest.mark.parametrize("args", FAILING + [["ingest", "x.parquet"]], ids=lambda a: a[0])
def test_a_file_as_db_is_not_a_database_folder(args, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "x.parquet").write_bytes(b"PAR1")
    not_a_db = tmp_path / "passwd"
    not_a_db.write_text("root:x:0:0\n")
    line = _one_error_line(CliRunner().invoke(cli, ["--db", str(not_a_db), *args]))
    assert line.startswith(f"Error: --db {not_a_db} is a file, not a database folder")
    assert not_a_db.read_text() == "root:x:0:0\n"


@pytest.mark.parametrize("args", [["report", "--out", "{f}/sub"], ["export", "--out", "{f}/sub"],
                                  ["query", "select 1 as x", "--format", "csv", "--out", "{f}/sub/x.csv"],
                                  ["demo", "--out", "{f}/sub", "--samples", "50"]],
                         ids=lambda a: a[0])
def test_an_unwritable_out_is_one_error_line(args, ingested, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    args = [a.replace("{f}", str(blocker)) for a in args]
    line = _one_error_line(CliRunner().invoke(cli, ["--db", ingested, *args]))
    assert str(blocker) in line  # "Not a directory" or "File exists", with the path


def test_a_folder_without_tables_is_no_database(tmp_path):
    (tmp_path / "notes").mkdir()
    line = _one_error_line(CliRunner().invoke(cli, ["--db", str(tmp_path / "notes"), "stats"]))
    assert line == (f"Error: no curator database at {tmp_path / 'notes'} (the folder holds no "
                    "tables): run `curator ingest FILE` or pass --db")


@pytest.mark.parametrize("args", FAILING[:3] + [["report", "--out", "r"]], ids=lambda a: a[0])
def test_a_missing_table_names_the_tables_there(args, ingested, tmp_path, monkeypatch):
    from curator import ingest

    monkeypatch.chdir(tmp_path)
    path = next((tmp_path / "src").glob("*.parquet"))
    ingest([str(path)], db=ingested, table="other")
    line = _one_error_line(CliRunner().invoke(cli, ["--db", ingested, "--table", "nope", *args]))
    assert line == (f"Error: no table 'nope' in {ingested}; its tables: embeddings, other "
                    "(pass --table NAME)")


JSON_COMMANDS = [["stats"], ["refresh"], ["cluster", "--k", "3"], ["dedupe", "--eps", "0.05"],
                 ["rebalance", "--cap", "50"], ["query", "select modality, count(*) as n from "
                                                         "embeddings group by modality"],
                 ["export", "--out", "{tmp}/exported"], ["report", "--out", "{tmp}/report"],
                 ["verify"], ["optimize"], ["project"],
                 ["tag", "picked", "--where", "modality = 'image'"], ["negatives"],
                 ["compare", "--reference", "ref", "--out", "{tmp}/compared"]]


def test_json_is_exactly_one_object_for_every_reporting_command(ingested, tmp_path):
    from curator import api

    seen = set()
    for args in JSON_COMMANDS + [["ingest", "{tmp}/more.parquet"]]:
        if args[0] == "ingest":
            import numpy as np
            import pyarrow as pa
            import pyarrow.parquet as pq

            X = np.random.default_rng(0).normal(size=(4, 32)).astype(np.float32)
            pq.write_table(pa.table({"id": [f"more{i}" for i in range(4)], "modality": ["image"] * 4,
                                     "embedding": pa.array(list(X), pa.list_(pa.float32(), 32))}),
                           tmp_path / "more.parquet")
        if args[0] == "compare":  # a reference table: the first source part alone
            from curator import ingest

            ingest([str(sorted((tmp_path / "src").glob("*.parquet"))[0])], db=ingested, table="ref")
        args = [a.replace("{tmp}", str(tmp_path)) for a in args]
        result = CliRunner().invoke(cli, ["--db", ingested, *args, "--json"])
        assert result.exit_code == 0, (args, result.output)
        data = json.loads(result.stdout)  # the whole of stdout is one JSON value…
        assert isinstance(data, dict), args  # …and it is an object
        seen.add(args[0])
    assert seen == set(api.COMMANDS) - {"encode", "demo"} - NOT_REPORTING  # encode: test_encode; demo: below


def test_demo_json(tmp_path):
    result = CliRunner().invoke(cli, ["demo", "--out", str(tmp_path / "d"), "--samples", "60", "--json"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["rows"] > 0 and {s["step"] for s in data["steps"]} >= {"ingest", "report"}
