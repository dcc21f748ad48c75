"""A set of a table's row ids as one bit per physical row, with rank and select.

Row ids are Lance's ``_rowid`` (``fragment << 32 | offset``, stable row ids off). A
:class:`RowSet` lays the table's fragments end to end, in fragment-id order, and keeps
one bit per physical row (deleted rows included, since offsets count them): 1/8 byte
per table row, plus an int64 count per 64 rows once frozen, so 20M rows take 5 MB
whatever the number of members. The members are numbered 0…len−1 in row-id order:
:meth:`rank` maps a member's row id to its number, :meth:`select` a number to the row id,
:meth:`blocks` lists them in order a bounded block at a time. Dedupe's union-find keeps
one int32 label per member number, instead of the sorted int64 member ids beside it.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import numpy as np

_POP8 = np.array([bin(b).count("1") for b in range(256)], np.uint8)
# _SELECT8[b, r]: the position of the r-th set bit (from bit 0) of byte b; 8 where absent.
_SELECT8 = np.full((256, 8), 8, np.uint8)
for _b in range(256):
    _at = [p for p in range(8) if _b >> p & 1]
    _SELECT8[_b, :len(_at)] = _at
_BLOCK_WORDS = 1 << 14  # words unpacked at a time by blocks(): 1M rows, 1 MB


def popcount(words: np.ndarray) -> np.ndarray:
    """Set bits of each uint64 (int64 result)."""
    if hasattr(np, "bitwise_count"):  # numpy ≥ 2.0
        return np.bitwise_count(words).astype(np.int64)
    as_bytes = np.ascontiguousarray(words, "<u8").view(np.uint8).reshape(-1, 8)
    return _POP8[as_bytes].sum(axis=1, dtype=np.int64)


class RowSet:
    """Row ids of one table version (``fragments``: (fragment id, physical rows) pairs)."""

    def __init__(self, fragments: Iterable[tuple[int, int]]):
        layout = sorted((int(f), int(n)) for f, n in fragments)
        self.fragment_ids = np.array([f for f, _ in layout], np.int64)
        self.fragment_rows = np.array([n for _, n in layout], np.int64)
        self.base = np.r_[0, np.cumsum(self.fragment_rows)].astype(np.int64)  # first ordinal of each
        self.words = np.zeros((int(self.base[-1]) + 63) // 64, np.uint64)
        self._before: np.ndarray | None = None  # members before each word, once frozen

    @classmethod
    def of(cls, dataset) -> RowSet:
        """An empty set over ``dataset``'s fragments."""
        return cls((f.fragment_id, f.physical_rows) for f in dataset.get_fragments())

    # -- row id ↔ position in the table's layout -------------------------------------------

    def ordinals(self, rowids: np.ndarray) -> np.ndarray:
        """Each row id's position in the layout (ValueError for a row id outside it)."""
        rowids = np.asarray(rowids, np.int64)
        fragment, offset = rowids >> 32, rowids & 0xFFFFFFFF
        at = np.searchsorted(self.fragment_ids, fragment)
        inside = at < len(self.fragment_ids)
        inside[inside] = self.fragment_ids[at[inside]] == fragment[inside]
        inside[inside] = offset[inside] < self.fragment_rows[at[inside]]
        if not inside.all():
            raise ValueError(f"row id {int(rowids[~inside][0])} is not in the table's fragments")
        return self.base[at] + offset

    def rowids(self, ordinals: np.ndarray) -> np.ndarray:
        """The row ids at layout positions ``ordinals``."""
        ordinals = np.asarray(ordinals, np.int64)
        at = np.searchsorted(self.base, ordinals, side="right") - 1
        return (self.fragment_ids[at] << 32) | (ordinals - self.base[at])

    # -- building ------------------------------------------------------------------------------

    def add(self, rowids: np.ndarray) -> None:
        """Add row ids (repeats allowed); the set must not be frozen yet."""
        if self._before is not None:
            raise RuntimeError("RowSet.add after rank or select")
        ordinals = self.ordinals(rowids)
        bits = np.left_shift(np.uint64(1), (ordinals & 63).astype(np.uint64))
        np.bitwise_or.at(self.words, ordinals >> 6, bits)

    def freeze(self) -> None:
        """Count the members before each word (for rank and select); later adds fail."""
        if self._before is None:
            counts = popcount(self.words)
            self._before = np.r_[0, np.cumsum(counts)[:-1]].astype(np.int64) if len(counts) else counts

    def __len__(self) -> int:
        self.freeze()
        return int(self._before[-1] + popcount(self.words[-1:])[0]) if len(self.words) else 0

    # -- rank and select -----------------------------------------------------------------------

    def rank(self, rowids: np.ndarray) -> np.ndarray:
        """Each member's number (0…len−1, in row-id order). The row ids must be members."""
        self.freeze()
        o = self.ordinals(rowids)
        word = o >> 6
        below = self.words[word] & (np.left_shift(np.uint64(1), (o & 63).astype(np.uint64)) - np.uint64(1))
        return self._before[word] + popcount(below)

    def select(self, numbers: np.ndarray) -> np.ndarray:
        """The row id of each member number (0 ≤ number < len)."""
        self.freeze()
        k = np.asarray(numbers, np.int64)
        if len(k) and (k.min() < 0 or k.max() >= len(self)):
            raise ValueError("member number out of range")
        word = np.searchsorted(self._before, k, side="right") - 1
        r = k - self._before[word]  # the r-th set bit of that word
        as_bytes = np.ascontiguousarray(self.words[word], "<u8").view(np.uint8).reshape(-1, 8)
        through = np.cumsum(_POP8[as_bytes], axis=1, dtype=np.uint8)  # set bits up to each byte
        byte = (through <= r[:, None]).sum(axis=1)
        r_in_byte = r - np.where(byte > 0, through[np.arange(len(k)), np.maximum(byte - 1, 0)], 0)
        bit = 8 * byte + _SELECT8[as_bytes[np.arange(len(k)), byte], r_in_byte]
        return self.rowids(word * 64 + bit)

    def blocks(self) -> Iterator[np.ndarray]:
        """Every member's row id in order, a block of at most 1M rows of the layout at a time."""
        for w in range(0, len(self.words), _BLOCK_WORDS):
            chunk = self.words[w:w + _BLOCK_WORDS]
            if not chunk.any():
                continue
            bits = np.unpackbits(np.ascontiguousarray(chunk, "<u8").view(np.uint8), bitorder="little")
            yield self.rowids(np.flatnonzero(bits).astype(np.int64) + 64 * w)
