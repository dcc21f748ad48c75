"""Progress bars on stderr: shown only on a terminal and never when quiet."""

from __future__ import annotations

import sys


class _Silent:
    def advance(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _Bar:
    def __init__(self, label: str, total: int | None):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeRemainingColumn,
        )

        self.progress = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(),
                                 TimeRemainingColumn(), console=Console(stderr=True),
                                 transient=True)
        self.task = self.progress.add_task(label, total=total)
        self.progress.start()

    def advance(self, n: int = 1) -> None:
        self.progress.advance(self.task, n)

    def close(self) -> None:
        self.progress.stop()


def bar(label: str, total: int | None = None, *, quiet: bool = True):
    """A progress bar, or a silent stand-in when quiet or stderr is not a terminal."""
    if quiet or not sys.stderr.isatty():
        return _Silent()
    return _Bar(label, total)
