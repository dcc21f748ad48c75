"""store/arrow.py: ``groups`` selects exactly each value's rows (a slice for one run, so
indexing copies nothing; a mask otherwise), against a row-by-row oracle."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from curator.store.arrow import groups


@pytest.mark.parametrize("values", [
    ["image"] * 5,
    ["image"] * 3 + ["text"] * 4,                   # two runs: two slices
    ["text", "image", "image", "text"],             # text split: a mask
    ["image", None, "text", "text", None],          # nulls belong to no group
    ["a", "b", "c", "b", "a", "c"],
    ["x"],
])
def test_groups_select_each_values_rows(values):
    X = np.arange(len(values) * 2, dtype=np.float32).reshape(len(values), 2)
    found = groups(pa.array(values, pa.string()))
    assert sorted(name for name, _ in found) == sorted({v for v in values if v is not None})
    for name, sel in found:
        rows = [i for i, v in enumerate(values) if v == name]
        picked = X if sel is None else X[sel]
        np.testing.assert_array_equal(picked, X[rows])
        if isinstance(sel, slice):
            assert np.shares_memory(picked, X)  # a view: no copy


def test_two_runs_give_slices_and_chunked_input_works():
    column = pa.chunked_array([["image"] * 3, ["image", "text", "text"]])
    assert groups(column) == [("image", slice(0, 4)), ("text", slice(4, 6))]
