"""The library mirrors the CLI: one function per command, the options' names as keywords;
the package docstring's session runs; importing the package and ``--help`` stay light."""

from __future__ import annotations

import doctest
import inspect
import platform
import subprocess
import sys

import click
import pytest

import curator
from curator import api
from curator.cli import cli

GLOBAL = {"db", "table", "quiet", "engine"}  # the group's options, keywords of every function
PRINTING = {"as_json"}  # how the CLI prints, not what the library does
# Keywords only the library has (objects a command line cannot pass), per command.
LIBRARY_ONLY = {
    "encode": {"model", "preprocess", "tokenizer", "model_name"},
    "export": {"rows_per_file"},
    "demo": {"dim"},
}


def test_every_command_is_an_api_function():
    assert sorted(cli.commands) == sorted(api.COMMANDS) == sorted(api.__all__)


@pytest.mark.parametrize("name", sorted(api.COMMANDS))
def test_keywords_match_the_options(name):
    command = cli.commands[name]
    options = {p.name for p in command.params} - PRINTING
    signature = inspect.signature(getattr(api, name))
    keywords = set(signature.parameters) - GLOBAL - LIBRARY_ONLY.get(name, set())
    assert options == keywords, (f"{name}: only the CLI has {sorted(options - keywords)}, "
                                 f"only the library has {sorted(keywords - options)}")
    for param in command.params:  # an option's default is the keyword's default
        if param.name in PRINTING or isinstance(param, click.Argument):
            continue
        default = signature.parameters[param.name].default
        given = param.default if _has_default(param) else (False if param.is_flag else None)
        if default is inspect.Parameter.empty:
            assert param.required, (name, param.name)
        else:
            assert given == default, (name, param.name, given, default)


def _has_default(param) -> bool:
    return param.default is not None and type(param.default).__name__ != "Sentinel"


@pytest.mark.parametrize("name", sorted(api.COMMANDS))
def test_package_names_are_the_api(name):
    assert getattr(curator, name) is getattr(api, name)


def test_package_docstring_session_runs():
    failures, tried = doctest.testmod(curator, verbose=False, optionflags=doctest.ELLIPSIS)
    assert tried >= 8 and failures == 0


def test_help_imports_nothing_heavy():
    code = ("import sys; from curator.cli import cli; "
            "heavy = [m for m in ('numpy', 'pyarrow', 'lance', 'lancedb', 'duckdb', 'torch', "
            "'matplotlib', 'polars', 'ray', 'curator.api') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


@pytest.mark.parametrize("given, expected", [(None, "16"), ("20", "20")])
def test_openblas_idle_threads_sleep_soon_unless_the_user_chose(given, expected):
    """Importing curator before numpy sets OpenBLAS's idle-thread timeout (2^16 cycles),
    and keeps a value the user set."""
    import os

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if given is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = given
    code = "import os, curator, numpy; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         check=True).stdout.strip()
    assert out == expected


def test_tune_allocator_passes_values_a_c_int_holds(monkeypatch):
    """mallopt takes a C int; ctypes masks a larger Python int to its low 32 bits (1 << 36
    became 0, a trim threshold that handed the heap back at every free)."""
    import ctypes

    from curator.store import database

    calls = []

    class Libc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return 1

    monkeypatch.setattr(database, "_allocator_tuned", False)
    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    assert database.tune_allocator()
    assert {p for p, _ in calls} == {-8, -4, -1}
    for param, value in calls:
        assert ctypes.c_int(value).value == value, (param, value)
    assert dict(calls)[-1] >= 1 << 30  # M_TRIM_THRESHOLD: at least 1 GiB of free top kept


@pytest.mark.skipif(not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc",
                    reason="glibc's allocator only")
def test_tuned_allocator_keeps_freed_memory_for_the_next_batch():
    """After tune_allocator, a freed 200 MB array stays in the process (the next batch
    reuses its pages instead of page-faulting fresh zeroed ones)."""
    code = ("import curator; curator.tune_allocator()\n"
            "import numpy as np\n"
            "rss = lambda: int(open('/proc/self/statm').read().split()[1]) * 4096\n"
            "base = rss(); a = np.ones(50_000_000, np.float32); del a\n"
            "print((rss() - base) / 1e6)")
    kept_mb = float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                   check=True).stdout.strip())
    assert kept_mb > 150
