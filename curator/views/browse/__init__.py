"""``browse``: a local web app over a table: look, filter, select, tag.

Built on Panel, HoloViews and Datashader (the ``browse`` extra:
``pip install 'clip-curator[browse]'``), served by this process on ``host:port``: the
browser gets rendered images of the scatter and histograms, never the rows, so a
million rows cost it no more than a thousand, and nothing is fetched from the internet
(Bokeh's scripts are served locally). The rows browsed are read once
(:class:`~curator.views.browse.data.BrowseTable`: ``where``, then at most ``sample`` of
them, seeded); every predicate, neighbour search and tag runs against the table itself.
The server runs until interrupted (Ctrl-C), or for ``timeout`` seconds when given.
"""

from __future__ import annotations

import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass

from ...errors import BadInput, MissingDependency

DEFAULT_SAMPLE = 1_000_000


@dataclass
class BrowseResult:
    """Where the app was served and what it held."""

    url: str
    table: str
    table_version: int
    rows: int  # rows in the app
    matching: int  # rows the --where selects
    total: int  # rows in the table
    projection: str
    seconds_to_ready: float

    def to_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        return (f"browsed {self.rows:,} of {self.total:,} rows of table {self.table!r} "
                f"(version {self.table_version}) at {self.url}")


def browse(*, db=None, table: str = "embeddings", where: str | None = None,
           sample: int = DEFAULT_SAMPLE, port: int = 0, host: str = "127.0.0.1",
           no_open: bool = False, seed: int = 0, timeout: float | None = None,
           quiet: bool = False) -> BrowseResult:
    """Serve the browse app on ``host:port`` (``port`` 0: a free one) over the rows
    ``where`` selects (at most ``sample`` of them, chosen with ``seed``); opens a browser
    tab unless ``no_open``. Prints the address, then serves until Ctrl-C (or ``timeout``
    seconds)."""
    started = time.time()
    try:
        import datashader  # noqa: F401
        import holoviews  # noqa: F401
        import panel  # noqa: F401
    except ImportError as exc:
        raise MissingDependency(f"curator browse needs the browse extra ({exc.name} is "
                                "missing): pip install 'clip-curator[browse]'") from None
    if isinstance(port, bool) or not isinstance(port, int) or not 0 <= port <= 65535:
        raise BadInput("--port must be an integer in [0, 65535]")
    from .app import page, setup, warm_up
    from .data import BrowseTable

    pn, _ = setup()
    compiling = threading.Thread(target=warm_up, daemon=True)  # numba, while the rows load
    compiling.start()
    bt = BrowseTable(db=db, table=table, where=where, sample=sample, seed=seed)
    compiling.join()
    port = port or _free_port(host)
    url = f"http://{host}:{port}/"
    server = pn.serve({"/": lambda: page(bt)}, port=port, address=host, show=False,
                      start=False, title=f"curator browse · {table}", threaded=False,
                      websocket_origin=[f"localhost:{port}", f"127.0.0.1:{port}",
                                        f"{host}:{port}"])
    ready = time.time() - started
    result = BrowseResult(url, table, bt.version, len(bt.frame), bt.matching, bt.total,
                          bt.projection, ready)
    if not quiet:
        sampled = f" (a seeded sample of {bt.matching:,})" if bt.sampled else ""
        print(f"curator browse: {len(bt.frame):,} rows{sampled} of table {table!r} version "
              f"{bt.version} at {url}  (ready in {ready:.1f} s; Ctrl-C stops)", flush=True)
    if not no_open:
        import webbrowser

        webbrowser.open(url)
    loop = server.io_loop
    if timeout is not None:
        loop.call_later(float(timeout), server.stop)
        loop.call_later(float(timeout), loop.stop)
    server.start()
    try:
        loop.start()
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    finally:
        server.stop()
    return result


def _free_port(host: str) -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]
