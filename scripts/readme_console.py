"""Run the README's console blocks as a new user would, and compare what they print.

    python scripts/readme_console.py            # check: exit 1 and a diff if a block differs
    python scripts/readme_console.py --update   # rewrite the blocks' output from a real run

In a fresh folder, the README's first command (its ``curator …`` part, e.g. ``curator
demo --out curator-demo``) runs first; then every ```` ```console ```` block, in order,
verbatim, through ``bash``: a line starting ``$ `` is a command (a trailing ``\\``
continues it), the lines up to the next ``$ `` are what it prints (stdout and stderr).

A command must exit 1 where its output starts with ``Error:`` and 0 everywhere else.
Its output must match the README's, except what varies from run to run, which is
not compared: durations (``0.3 s``, ``"seconds": 0.074``, a ``"phases"`` object) and the run's own folder (the
README shows paths relative to it). A README line ``…`` stands for any number of lines,
and ``…`` inside a line for any text, for output a block does not want to pin down.
A block right after a line ``<!-- readme-console: not run -->`` is shown but not run (a
server such as ``curator browse`` that does not exit on its own).

``curator`` is whatever ``--curator`` names (default: the one on PATH); the test
(``tests/test_readme_console.py``) points it at the working tree.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"
ELLIPSIS = "…"
NOT_RUN = "<!-- readme-console: not run -->"
_DURATION = re.compile(r"\b\d+(?:\.\d+)?(?: ?s| seconds)\b")
_SECONDS = re.compile(r'("seconds(?:_\w+)?": )-?[\d.]+(?:e-?\d+)?')
_PHASES = re.compile(r'("phases": )\{[^{}]*\}')  # seconds per phase of a command


@dataclass
class Command:
    """One ``$`` command of a console block, what the README shows after it, and where."""

    text: str
    expected: list[str]
    block: int
    first_line: int  # 0-based index in the README of its ``$`` line
    last_line: int  # index one past its last output line
    ran: list[str] = field(default_factory=list)
    code: int | None = None

    @property
    def expected_code(self) -> int:
        return 1 if self.expected and self.expected[0].startswith("Error:") else 0


def console_commands(text: str) -> list[Command]:
    """Every command of every ```console block, in order."""
    lines = text.split("\n")
    commands, block, inside, current = [], -1, False, None
    skip = False
    for i, line in enumerate(lines):
        if not inside:
            if line.strip() == "```console":
                inside, block = True, block + 1
                skip = i > 0 and lines[i - 1].strip() == NOT_RUN
            continue
        if skip:
            inside = line.strip() != "```"
            continue
        if line.strip() == "```":
            inside = False
            if current is not None:
                current.last_line = i
                commands.append(current)
            current = None
            continue
        if current is not None and not current.expected and current.text.endswith("\\"):
            current.text += "\n" + line  # a continued command line (bash reads the backslash)
            current.last_line = i + 1
        elif line.startswith("$ "):
            if current is not None:
                current.last_line = i
                commands.append(current)
            current = Command(line[2:], [], block, i, i + 1)
        elif current is not None:
            current.expected.append(line)
            current.last_line = i + 1
    return commands


def setup_commands(text: str) -> list[str]:
    """The ``curator …`` parts of the README's first ```bash block's first command."""
    block = text[text.index("```bash") + len("```bash"):]
    first = block[:block.index("```")].strip().splitlines()[0]
    return [part.strip() for part in first.split("&&") if part.strip().startswith("curator ")]


def _environment(curator: str | None) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CURATOR_")}
    env.update(COLUMNS="100", NO_COLOR="1", TERM="dumb", PYTHONWARNINGS="ignore")
    if curator:
        folder = tempfile.mkdtemp(prefix="curator-bin-")
        wrapper = Path(folder) / "curator"
        wrapper.write_text(f'#!/bin/sh\nexec {curator} "$@"\n')
        wrapper.chmod(0o755)
        env["PATH"] = f"{folder}{os.pathsep}{env.get('PATH', '')}"
    return env


def run(commands: list[Command], folder: str, setup: list[str], curator: str | None = None,
        timeout: float = 600) -> list[Command]:
    """Run the set-up and then every command in ``folder``; fills ``ran`` and ``code``."""
    env = _environment(curator)
    for text in setup:
        done = subprocess.run(["bash", "-c", text], cwd=folder, env=env, capture_output=True,
                              text=True, timeout=timeout)
        if done.returncode:
            raise RuntimeError(f"set-up {text!r} failed ({done.returncode}): {done.stderr[-2000:]}")
    for command in commands:
        done = subprocess.run(["bash", "-c", command.text], cwd=folder, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, timeout=timeout)
        command.code = done.returncode
        command.ran = relative(done.stdout, folder)
    return commands


def relative(output: str, folder: str) -> list[str]:
    """Output lines with the run's folder taken out of paths, trailing spaces dropped."""
    for root in {os.path.realpath(folder), os.path.abspath(folder)}:
        output = output.replace(root + os.sep, "").replace(root, ".")
    lines = [line.rstrip() for line in output.split("\n")]
    while lines and not lines[-1]:
        lines.pop()
    return lines


def _masked(line: str) -> str:
    return _PHASES.sub(r"\1{#}", _SECONDS.sub(r"\1#", _DURATION.sub("# s", line.rstrip())))


def matches(expected: list[str], actual: list[str]) -> bool:
    """Whether ``actual`` is ``expected`` up to durations and ``…`` wildcards."""
    parts = []
    expected = list(expected)
    while expected and not expected[-1].strip():
        expected.pop()
    for line in expected:
        if line.strip() == ELLIPSIS:
            parts.append(r"(?:[^\n]*\n)*?")
        else:
            pieces = [re.escape(p) for p in _masked(line).split(ELLIPSIS)]
            parts.append("[^\n]*".join(pieces) + "\n")
    text = "".join(_masked(line) + "\n" for line in actual)
    return re.fullmatch("".join(parts), text) is not None


def problems(commands: list[Command]) -> list[str]:
    """What differs: a wrong exit status, or output unlike the README's."""
    out = []
    for c in commands:
        where = f"README line {c.first_line + 1}: $ {c.text}"
        if c.code != c.expected_code:
            out.append(f"{where}\n  exit status {c.code}, expected {c.expected_code}\n  "
                       + "\n  ".join(c.ran[-20:]))
        elif not matches(c.expected, c.ran):
            out.append(f"{where}\n  README shows:\n    " + "\n    ".join(c.expected)
                       + "\n  the run printed:\n    " + "\n    ".join(c.ran))
    return out


def update(text: str, commands: list[Command]) -> str:
    """The README with each command's output replaced by what the run printed."""
    lines = text.split("\n")
    for c in sorted(commands, key=lambda c: c.first_line, reverse=True):
        head = c.text.count("\n") + 1
        lines[c.first_line + head:c.last_line] = c.ran
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readme", default=str(README))
    parser.add_argument("--update", action="store_true", help="rewrite the blocks' output")
    parser.add_argument("--curator", default=None,
                        help="command that runs curator (default: the curator on PATH)")
    parser.add_argument("--keep", default=None, help="run in this (new) folder and keep it")
    args = parser.parse_args(argv)
    text = Path(args.readme).read_text(encoding="utf-8")
    commands = console_commands(text)
    folder = args.keep or tempfile.mkdtemp(prefix="readme-")
    os.makedirs(folder, exist_ok=True)
    try:
        run(commands, folder, setup_commands(text), args.curator)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    if args.update:
        Path(args.readme).write_text(update(text, commands), encoding="utf-8")
        print(f"updated {len(commands)} commands' output in {args.readme}")
        for c in commands:
            c.expected = c.ran  # what the README shows now; exit statuses are still checked
    found = problems(commands)
    for p in found:
        print(p, end="\n\n")
    print(f"{len(commands) - len(found)} passed, {len(found)} failed")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
