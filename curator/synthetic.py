"""Seeded synthetic image–text embeddings with the double-ellipsoid geometry of CLIP.

Each modality lives on its own off-centre, anisotropic shell: raw vectors are
``x = μ_mod + R_mod · diag(s_mod) · z`` where ``μ_mod`` is a modality mean far from the
origin, ``R_mod`` a random rotation and ``s_mod`` decaying axis scales (an ellipsoid).
The latent ``z`` of a sample is its concept's centre plus sample noise; concepts have
Zipf-distributed sizes; each image has 1..``max_captions`` captions whose latents are the
image's latent plus caption noise (so true pairs align). Some images are planted as
near duplicates of others at known cosines. Used by tests, the demo and benchmarks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pyarrow as pa

from .store.arrow import fixed_list


@dataclass
class SyntheticData:
    """Rows in long format plus the planted truth."""

    ids: np.ndarray  # object (str)
    sample_ids: np.ndarray
    modality: np.ndarray
    vectors: np.ndarray  # (n, d) float32
    concept: np.ndarray  # int, the planted concept of the row's sample
    caption: np.ndarray  # object (str), text rows only (empty for images)
    duplicate_of: dict[str, str]  # planted near-duplicate image id -> original id
    seed: int

    def __len__(self) -> int:
        return len(self.ids)

    def table(self, rows: slice | np.ndarray | None = None) -> pa.Table:
        """The rows as an Arrow table in the ingest layout (extra columns are metadata)."""
        sel = slice(None) if rows is None else rows
        return pa.table({
            "id": pa.array(self.ids[sel].tolist(), pa.string()),
            "sample_id": pa.array(self.sample_ids[sel].tolist(), pa.string()),
            "modality": pa.array(self.modality[sel].tolist(), pa.string()),
            "embedding": fixed_list(self.vectors[sel]),
            "concept": pa.array(self.concept[sel], pa.int32()),
            "caption": pa.array(self.caption[sel].tolist(), pa.string()),
        })

    def write_parquet(self, folder: str, parts: int = 1) -> list[str]:
        """Write the rows as ``parts`` parquet files (samples kept whole); returns paths."""
        import os

        import pyarrow.parquet as pq

        os.makedirs(folder, exist_ok=True)
        bounds = _sample_bounds(self.sample_ids, parts)
        paths = []
        for k, (lo, hi) in enumerate(bounds):
            path = os.path.join(folder, f"part-{k:03d}.parquet")
            pq.write_table(self.table(slice(lo, hi)), path)
            paths.append(path)
        return paths


def _sample_bounds(sample_ids: np.ndarray, parts: int) -> list[tuple[int, int]]:
    n = len(sample_ids)
    cuts = [0]
    for k in range(1, parts):
        i = int(n * k / parts)
        while 0 < i < n and sample_ids[i] == sample_ids[i - 1]:
            i += 1
        cuts.append(i)
    cuts.append(n)
    return [(a, b) for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _rotation(rng: np.random.Generator, d: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(d, d)))
    return q * np.sign(np.diag(r))


def make_pairs(samples: int = 2000, dim: int = 64, *, concepts: int = 24, zipf: float = 1.1,
               max_captions: int = 5, duplicates: float = 0.02, duplicate_noise: float = 0.01,
               seed: int = 0) -> SyntheticData:
    """Seeded image–text pairs on two off-centre ellipsoid shells.

    ``duplicates`` is the fraction of extra images planted as near duplicates of existing
    ones (the copy is the original plus noise of relative size ``duplicate_noise``, which
    puts their cosine near 1 − duplicate_noise²/2). Rows are ordered sample by sample:
    the image, then its captions.
    """
    rng = np.random.default_rng(seed)
    weights = 1.0 / np.arange(1, concepts + 1) ** zipf
    weights /= weights.sum()
    centres = rng.normal(size=(concepts, dim)) * 1.5
    sample_concept = rng.choice(concepts, size=samples, p=weights)
    latent = centres[sample_concept] + rng.normal(size=(samples, dim))

    # One latent-to-shell map shared by both modalities (so true pairs align after the
    # means are removed); two off-centre means whose directions meet at cos ≈ 0.3, as
    # the modality means of CLIP do on MS-COCO.
    scales = {m: np.geomspace(1.0, 0.05, dim) for m in ("image", "text")}
    shared = _rotation(rng, dim)
    rotation = {"image": shared, "text": shared}
    direction = rng.normal(size=(2, dim))
    first = direction[0] / np.linalg.norm(direction[0])
    other = direction[1] - (direction[1] @ first) * first
    other /= np.linalg.norm(other)
    mean = {"image": first * 6.0, "text": (0.3 * first + np.sqrt(1 - 0.09) * other) * 4.0}

    def embed(modality: str, z: np.ndarray) -> np.ndarray:
        return (mean[modality] + (z * scales[modality]) @ rotation[modality].T).astype(np.float32)

    n_dup = int(round(duplicates * samples))
    originals = rng.choice(samples, size=n_dup, replace=False) if n_dup else np.array([], int)
    ids, sids, mods, vecs, conc, caps = [], [], [], [], [], []
    image_vectors = embed("image", latent)
    duplicate_of = {}
    total = samples + n_dup
    for s in range(total):
        if s < samples:
            src = s
            img = image_vectors[s]
        else:
            src = int(originals[s - samples])
            base = image_vectors[src]
            noise = rng.normal(size=dim).astype(np.float32)
            img = (base + noise / np.linalg.norm(noise) * np.linalg.norm(base) * duplicate_noise).astype(np.float32)
            duplicate_of[f"img-{s:06d}"] = f"img-{src:06d}"
        sid = f"s{s:06d}"
        ids.append(f"img-{s:06d}"), sids.append(sid), mods.append("image"), vecs.append(img)
        conc.append(int(sample_concept[src])), caps.append("")
        for c in range(int(rng.integers(1, max_captions + 1))):
            z = latent[src] + rng.normal(size=dim) * 0.7
            ids.append(f"txt-{s:06d}-{c}"), sids.append(sid), mods.append("text")
            vecs.append(embed("text", z[None])[0]), conc.append(int(sample_concept[src]))
            caps.append(f"a photo of concept {int(sample_concept[src])}, caption {c} of sample {s}")
    return SyntheticData(np.array(ids, object), np.array(sids, object), np.array(mods, object),
                         np.vstack(vecs).astype(np.float32), np.array(conc), np.array(caps, object),
                         duplicate_of, seed)
