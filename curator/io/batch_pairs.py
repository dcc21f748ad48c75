"""Image–caption dots inside one source batch, while its vectors are in memory.

Ingest takes ⟨x_img, x_txt⟩ of each caption whose sample's image is in the same batch
(the pair scores need it, and reading both vectors back later would cost a take per
pair); the sources put a line's image and caption in one batch for that reason.
"""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc


def pair_dots(batch: pa.RecordBatch, X: np.ndarray, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """⟨x_img, x_txt⟩ for captions whose sample's first image of the batch is in it, and
    the key of that image (−1 where none)."""
    n = batch.num_rows
    dots = np.full(n, np.nan)
    with_ = np.full(n, -1, np.int64)
    sample = batch.column("sample_id")
    if sample.null_count == n:
        return dots, with_
    codes = pc.fill_null(sample.dictionary_encode().indices, -1).to_numpy(zero_copy_only=False)
    modality = batch.column("modality")
    is_image = pc.equal(modality, "image").to_numpy(zero_copy_only=False)
    is_text = pc.equal(modality, "text").to_numpy(zero_copy_only=False)
    image_at = np.full(codes.max() + 2, -1, np.int64)
    images = np.flatnonzero(is_image & (codes >= 0))[::-1]  # reversed: the first image wins
    image_at[codes[images]] = images
    texts = np.flatnonzero(is_text & (codes >= 0))
    partner = image_at[codes[texts]]
    texts, partner = texts[partner >= 0], partner[partner >= 0]
    dots[texts] = row_dots(X, texts, partner)
    with_[texts] = keys[partner]
    return dots, with_


def row_dots(X: np.ndarray, rows: np.ndarray, partners: np.ndarray) -> np.ndarray:
    """⟨X[rows[i]], X[partners[i]]⟩ (float32: rel. error ~2e-7). Runs of consecutive rows
    (clip-retrieval's lines: captions after their images) are read in place, others
    copied a block at a time."""
    out = np.empty(len(rows), np.float32)
    step = 4096
    for a in range(0, len(rows), step):
        r, p = rows[a:a + step], partners[a:a + step]
        left = X[r[0]:r[0] + len(r)] if (np.diff(r) == 1).all() else X[r]
        right = X[p[0]:p[0] + len(p)] if (np.diff(p) == 1).all() else X[p]
        out[a:a + len(r)] = np.einsum("ij,ij->i", left, right)
    return out
