"""Which existing rows a scoring transaction takes: whole samples.

A row's pair scores depend on its sample's other image and text rows, so scoring works
on whole samples: when a row of a sample is scored, every image and text row of that
sample is scored at the same version. :func:`choose` starts from seeds (stale
(modality, version) groups, whole modalities, sample ids touched by new rows) and adds
the rest of their samples, with DuckDB over two streaming scans of four scalar columns:
the first keeps the seeds, the second the rows of the seeds' samples, so what is held
grows with the rows chosen, not with the table (DuckDB's memory limit applies; the
vectors are never read here).
"""

from __future__ import annotations

import shutil

import numpy as np
import pyarrow as pa

from ..geometry.scores import IMAGE, TEXT
from .fragments import scan
from .spill import connect, make_folder, scan_probes


def choose(dataset, *, groups=(), modalities=(), samples: pa.Array | None = None,
           rows: np.ndarray | None = None, exclude: np.ndarray | None = None, con=None
           ) -> dict[int, np.ndarray | None]:
    """Fragment id → sorted row ids to score (None: every row of the fragment).

    Seeds: rows of the (modality, stats_version) ``groups`` (version −1: never scored),
    rows of ``modalities``, image and text rows whose ``sample_id`` is in ``samples``,
    the row ids ``rows``; then every image and text row of a seed's sample; minus the row ids in ``exclude``.
    """
    groups, modalities = list(groups), list(modalities)
    if not groups and not modalities and (samples is None or len(samples) == 0) and (
            rows is None or len(rows) == 0):
        return {}
    own = con is None
    folder = make_folder() if own else None
    con = connect(folder) if own else con
    try:
        _view(con, "seed_groups", pa.table({
            "modality": pa.array([m for m, _ in groups], pa.string()),
            "version": pa.array([int(v) for _, v in groups], pa.int64())}))
        _view(con, "seed_modalities", pa.table({"modality": pa.array(modalities, pa.string())}))
        _view(con, "seed_samples", pa.table({
            "sample_id": (samples if samples is not None else pa.array([], pa.string())).cast(pa.string())}))
        _view(con, "seed_rows", pa.table({"rowid": pa.array(
            np.asarray(rows if rows is not None else [], np.uint64), pa.uint64())}))
        _view(con, "excluded", pa.table({"rowid": pa.array(
            np.asarray(exclude if exclude is not None else [], np.uint64), pa.uint64())}))
        paired = f"('{IMAGE}', '{TEXT}')"
        # Two streaming scans, nothing of the table held but the seeds: the seeds, then
        # every image and text row of a seed's sample.
        _scan(con, dataset)
        with scan_probes(con):
            con.execute(f"""
            CREATE OR REPLACE TEMP TABLE seed AS
            SELECT _rowid AS rowid, modality IN {paired} AND sample_id IS NOT NULL AS paired, sample_id
            FROM scan
            WHERE (modality, coalesce(stats_version, -1)) IN (SELECT modality, version FROM seed_groups)
               OR modality IN (SELECT modality FROM seed_modalities)
               OR (modality IN {paired} AND sample_id IN (SELECT sample_id FROM seed_samples))
               OR _rowid IN (SELECT rowid FROM seed_rows)""")
        _scan(con, dataset)
        with scan_probes(con):
            con.execute(f"""
            CREATE OR REPLACE TEMP TABLE chosen AS
            SELECT rowid FROM seed
            UNION
            SELECT _rowid AS rowid FROM scan
            WHERE modality IN {paired} AND sample_id IN (SELECT sample_id FROM seed WHERE paired)
            EXCEPT SELECT rowid FROM excluded""")
        counts = con.execute("SELECT rowid >> 32 AS fragment, count(*) AS n FROM chosen "
                             "GROUP BY 1 ORDER BY 1").fetchall()
        live = {f.fragment_id: f.count_rows() for f in dataset.get_fragments()}
        out = {}
        for fragment, n in counts:
            fragment = int(fragment)
            if n == live.get(fragment) and exclude is None:
                out[fragment] = None
                continue
            ids = con.execute("SELECT rowid FROM chosen WHERE rowid >> 32 = ? ORDER BY rowid",
                              [fragment]).fetchnumpy()["rowid"]
            out[fragment] = np.asarray(ids, np.uint64)
        return out
    finally:
        if own:
            con.close()
            shutil.rmtree(folder, ignore_errors=True)


def _scan(con, dataset) -> None:
    """(Re)define the view ``scan`` as a fresh stream of the table's scalar columns (an
    Arrow reader is read once)."""
    reader = scan(dataset, ["modality", "sample_id", "stats_version"], with_row_id=True,
                  batch_size=1 << 17).to_reader()
    con.from_arrow(reader).create_view("scan", replace=True)


def _view(con, name: str, table: pa.Table) -> None:
    con.from_arrow(table).create_view(name, replace=True)


def count(chosen: dict[int, np.ndarray | None], dataset) -> int:
    """How many rows ``chosen`` names."""
    live = {f.fragment_id: f.count_rows() for f in dataset.get_fragments()}
    return sum(live[f] if ids is None else len(ids) for f, ids in chosen.items())
