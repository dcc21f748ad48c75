"""The README runs as written: every ```console block, in order, verbatim, in a fresh
folder after the README's first command (``scripts/readme_console.py``); each command
exits 1 exactly where the README shows an ``Error:`` after it, and prints what the README
shows, up to durations and the run's folder. The harness itself is tested on small
READMEs, so that a block that stops working is caught."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

import readme_console as rc  # noqa: E402

CURATOR = f"env PYTHONPATH={ROOT} {sys.executable} -m curator"


def test_every_console_block_of_the_readme_runs_as_written(tmp_path):
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    commands = rc.console_commands(text)
    assert len(commands) >= 8 and {c.block for c in commands} >= {0, 1}
    assert rc.setup_commands(text) == ["curator demo --out curator-demo"]
    assert any(c.expected_code == 1 for c in commands)  # the README shows an error too
    rc.run(commands, str(tmp_path), rc.setup_commands(text), CURATOR)
    found = rc.problems(commands)
    assert not found, ("the README differs from a real run (python scripts/readme_console.py "
                       "--update rewrites its output):\n\n" + "\n\n".join(found))


MINI = """# x

```bash
python3 -m venv .venv && curator demo --out d
```

```console
$ echo one; echo "took 0.31 s"
one
took 9.9 s
$ sh -c 'echo "Error: nope" >&2; exit 1'
Error: nope
```

text

```console
$ printf 'a\\nb\\nc\\n' && \\
  echo "$PWD/file" && echo '{"rows": 2, "seconds": 0.074}'
a
…
file
{"rows": 2, "seconds": 12.5}
$ echo "a long line with 42 in it"
a long … in it
```

<!-- readme-console: not run -->
```console
$ sleep 3600
serving forever
```
"""


def test_parser_finds_commands_outputs_and_expected_codes():
    commands = rc.console_commands(MINI)
    assert [c.text for c in commands] == [
        'echo one; echo "took 0.31 s"', "sh -c 'echo \"Error: nope\" >&2; exit 1'",
        "printf 'a\\nb\\nc\\n' && \\\n  echo \"$PWD/file\" && echo '{\"rows\": 2, \"seconds\": 0.074}'",
        'echo "a long line with 42 in it"']
    assert [c.block for c in commands] == [0, 0, 1, 1]
    assert [c.expected_code for c in commands] == [0, 1, 0, 0]
    assert commands[2].expected == ["a", "…", "file", '{"rows": 2, "seconds": 12.5}']
    assert rc.setup_commands(MINI) == ["curator demo --out d"]


def test_harness_passes_a_working_readme_and_catches_every_kind_of_break(tmp_path):
    commands = rc.run(rc.console_commands(MINI), str(tmp_path), [])
    assert rc.problems(commands) == []  # durations, the folder and … are not compared

    broken_output = MINI.replace("a long … in it", "a short … in it")
    commands = rc.run(rc.console_commands(broken_output), str(tmp_path), [])
    assert len(rc.problems(commands)) == 1 and "a short … in it" in rc.problems(commands)[0]

    failing = MINI.replace("echo one;", "false &&")
    commands = rc.run(rc.console_commands(failing), str(tmp_path), [])
    assert "exit status 1, expected 0" in rc.problems(commands)[0]

    no_error = MINI.replace("exit 1'", "exit 0'")
    commands = rc.run(rc.console_commands(no_error), str(tmp_path), [])
    assert "exit status 0, expected 1" in rc.problems(commands)[0]

    numbers = MINI.replace('"rows": 2, "seconds": 12.5', '"rows": 3, "seconds": 12.5')
    commands = rc.run(rc.console_commands(numbers), str(tmp_path), [])
    assert len(rc.problems(commands)) == 1  # a count is compared; only durations are not


def test_update_rewrites_outputs_from_the_run(tmp_path):
    stale = MINI.replace("one\ntook 9.9 s", "two")
    commands = rc.run(rc.console_commands(stale), str(tmp_path), [])
    updated = rc.update(stale, commands)
    assert "$ echo one; echo \"took 0.31 s\"\none\ntook " in updated
    again = rc.run(rc.console_commands(updated), str(tmp_path), [])
    assert rc.problems(again) == []


@pytest.mark.parametrize("expected, actual, ok", [
    (["done in 2.9 s"], ["done in 10.6 s"], True),
    (["(0.3 s)"], ["(12 s)"], True),
    (["3 samples"], ["4 samples"], False),
    (["x", "…"], ["x"], True),
    (["…", "z"], ["x", "y", "z"], True),
    (["…", "z"], ["x", "y"], False),
])
def test_matching(expected, actual, ok):
    assert rc.matches(expected, actual) is ok
