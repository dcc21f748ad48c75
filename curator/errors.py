"""Errors a user can cause. Each carries one line that says what is wrong.

The CLI turns every :class:`CuratorError` into ``Error: <message>`` on stderr and exit
code 1, in one place (``cli.py``). Anything else is a bug and keeps its traceback.
"""


class CuratorError(Exception):
    """A user mistake or an unusable input; the message is one line."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


class NoTable(CuratorError):
    """The named table does not exist in the database."""


class NoDatabase(NoTable):
    """No database at the given place (nothing there, or a file); so no table either."""


class BadInput(CuratorError):
    """A source file or value that cannot be ingested (nothing was written)."""


class SchemaMismatch(CuratorError):
    """Vectors of another dimension or model than the table holds."""


class DuplicateIds(CuratorError):
    """Ids that already exist, in the input or in the table."""


class MissingDependency(CuratorError):
    """An optional extra is needed; the message says what to install."""
