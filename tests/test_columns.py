"""Column writes (store/columns.py): a fragment's columns rewritten as one file by offset
must equal Lance's own join on ``_rowid``."""

from __future__ import annotations

import lance
import numpy as np
import pyarrow as pa
import pytest

from curator.store.columns import commit_updates, update_fragment


def _table(tmp_path, name):
    n = 120
    data = pa.table({"id": pa.array(np.arange(n), pa.int64()),
                     "x": pa.array(np.zeros(n), pa.float64()),
                     "flag": pa.array([None] * n, pa.bool_()),
                     "label": pa.array([None] * n, pa.string())})
    ds = lance.write_dataset(data, str(tmp_path / name), max_rows_per_file=50, data_storage_version="2.0")
    ds.delete("id % 7 = 3")
    return lance.dataset(str(tmp_path / name))


def _new_values(fragment, rng, share):
    t = fragment.to_table(columns=["id"], with_row_id=True)
    pick = np.sort(rng.permutation(t.num_rows)[:int(round(share * t.num_rows))])
    pick = rng.permutation(pick)  # in no particular order
    ids = t.column("id").to_numpy()[pick]
    return pa.table({"_rowid": t.column("_rowid").take(pa.array(pick)),
                     "x": pa.array(ids * 0.5, pa.float64(), mask=ids % 5 == 0),
                     "flag": pa.array(ids % 2 == 0),
                     "label": pa.array([f"r{i}" for i in ids])})


@pytest.mark.parametrize("share", [1.0, 0.6])
def test_update_fragment_equals_lance_join(tmp_path, share):
    """Every live row (the one-file path) or 60% of them (Lance's join), in shuffled
    order, over fragments with deleted rows: the committed columns equal those written
    by ``update_columns`` on a twin table, and only the whole-fragment case writes the
    one new file."""
    ours, theirs = _table(tmp_path, "ours.lance"), _table(tmp_path, "theirs.lance")
    assert any(f.count_rows() < f.physical_rows for f in ours.get_fragments())
    results, joined = [], []
    for mine, twin in zip(ours.get_fragments(), theirs.get_fragments()):
        values = _new_values(mine, np.random.default_rng(mine.fragment_id), share)
        results.append(update_fragment(mine, values))
        metadata, modified = twin.update_columns(values, left_on="_rowid")
        joined.append((metadata, list(modified)))
    ours = commit_updates(ours, results, "ours")
    theirs = commit_updates(theirs, joined, "theirs")
    got = ours.to_table().sort_by("id")
    want = theirs.to_table().sort_by("id")
    assert got.equals(want)
    assert got.column("label").null_count == (0 if share == 1.0 else got.num_rows - sum(
        round(share * f.count_rows()) for f in ours.get_fragments()))
    one_file = [any(d.path.startswith("columns-") for d in f.metadata.files) for f in ours.get_fragments()]
    assert all(one_file) if share == 1.0 else not any(one_file)
    assert ours.count_rows() == 120 - len(range(3, 120, 7))


def test_update_fragment_takes_the_join_for_a_repeated_row(tmp_path):
    """As many rows as the fragment holds, but one twice: not a layout by offset."""
    ds = _table(tmp_path, "t.lance")
    fragment = ds.get_fragments()[0]
    values = _new_values(fragment, np.random.default_rng(0), 1.0)
    rowid = values.column("_rowid").to_numpy().copy()
    rowid[1] = rowid[0]
    values = values.set_column(0, "_rowid", pa.array(rowid, pa.uint64()))
    metadata, _ = update_fragment(fragment, values)
    assert not any(d.path.startswith("columns-") for d in metadata.files)
