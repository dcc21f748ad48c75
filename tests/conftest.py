"""Shared fixtures: seeded synthetic data, a fresh database, the real data folder."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from curator.synthetic import make_pairs

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.fixture
def db(tmp_path) -> str:
    """Path of a database that does not exist yet."""
    return str(tmp_path / "db.lancedb")


@pytest.fixture(scope="session")
def pairs_small():
    """~300 samples, 32-d, with planted duplicates (about 1,200 rows)."""
    return make_pairs(samples=300, dim=32, concepts=8, seed=7)


@pytest.fixture
def ingested(tmp_path, pairs_small):
    """A database with pairs_small ingested in two parquet parts and refreshed."""
    from curator import ingest, refresh

    db = str(tmp_path / "db.lancedb")
    paths = pairs_small.write_parquet(str(tmp_path / "src"), parts=2)
    for path in paths:
        ingest([path], db=db)
    refresh(db=db)
    return db


@pytest.fixture(scope="session")
def coco():
    """Real MS-COCO CLIP ViT-B/16 pairs: (image (500, 512), text (500, 512)) float32."""
    path = SHARED_DATA / "coco500" / "features_clip.npy"
    if not path.exists():
        pytest.skip(f"real data not present at {path}")
    features = np.load(path, allow_pickle=False)
    return features[0].astype(np.float32), features[1].astype(np.float32)


@pytest.fixture(scope="session")
def numpyclip_raw():
    folder = SHARED_DATA / "numpyclip-raw"
    if not folder.exists():
        pytest.skip(f"real data not present at {folder}")
    return (np.load(folder / "image_features.npy", allow_pickle=False),
            np.load(folder / "text_features.npy", allow_pickle=False))


def brute_conformity(X: np.ndarray) -> np.ndarray:
    """O(n²) oracle: mean pairwise cosine to the other rows (float64)."""
    X = np.asarray(X, np.float64)
    U = X / np.linalg.norm(X, axis=1, keepdims=True)
    G = U @ U.T
    np.fill_diagonal(G, 0.0)
    return G.sum(axis=1) / (len(X) - 1)


def read_table(db: str, table: str = "embeddings"):
    import lance

    return lance.dataset(os.path.join(db, f"{table}.lance")).to_table()
