"""The spherical k-means (warm start, stopping rule, any backend) against a plain float64
implementation of the documented algorithm, planted labels, and full Lloyd's inertia."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from curator.geometry.backend import NumpyBackend, get_backend
from curator.geometry.kmeans import kmeans_pp, spherical_kmeans, unit_rows

HAS_TORCH = importlib.util.find_spec("torch") is not None


def separated(n, d=24, k=6, seed=0):
    """Rows around k orthonormal directions (angular noise ≈ 0.1 rad); planted labels."""
    rng = np.random.default_rng(seed)
    centres = np.linalg.qr(rng.normal(size=(d, d)))[0][:k]
    labels = rng.integers(k, size=n)
    X = centres[labels] + rng.normal(size=(n, d)) * 0.1 / np.sqrt(d)
    return unit_rows((X * rng.uniform(0.5, 3.0, size=(n, 1))).astype(np.float32)), labels


def cone(n, d=32, concepts=200, seed=0):
    """Off-centre, anisotropic rows with many overlapping concepts (CLIP-like, unit)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d) * 0.6
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0] * np.geomspace(1.0, 0.05, d) * 0.5
    z = rng.normal(size=(concepts, d))[rng.integers(concepts, size=n)] + 0.5 * rng.normal(size=(n, d))
    return unit_rows((mean + z @ basis.T).astype(np.float32))


def lloyd64(U, C, iterations, tolerance):
    """Plain Lloyd in float64 with the documented stopping rules and empty re-seeding."""
    U64, C = U.astype(np.float64), C.astype(np.float64)
    n, k = len(U), len(C)
    labels, inertia = np.full(n, -1), np.inf
    for _ in range(iterations):
        G = U64 @ C.T
        new, cos = G.argmax(axis=1), G.max(axis=1)
        changed = (new != labels).sum() > 1e-4 * n
        last, inertia = inertia, n - cos.sum()
        converged = not changed or inertia > (1 - tolerance) * last
        labels = new
        empty = np.flatnonzero(np.bincount(labels, minlength=k) == 0)
        if len(empty):
            labels[np.argsort(cos, kind="stable")[:len(empty)]] = empty
            converged = False
        sums = np.zeros_like(C)
        np.add.at(sums, labels, U64)
        C = sums / np.linalg.norm(sums, axis=1, keepdims=True)
        if converged:
            break
    return C, labels


def kmeans64(U, k, seed, iterations=25, full_lloyd=False):
    """The documented algorithm in float64 (``full_lloyd``: no warm start, no inertia rule)."""
    rng = np.random.default_rng(seed)
    C = kmeans_pp(U, k, rng)
    if full_lloyd:
        return lloyd64(U, C, iterations, 0.0)
    warm = max(20_000, 256 * k)
    if len(U) > 2 * warm:
        C, _ = lloyd64(U[np.sort(rng.choice(len(U), warm, replace=False))], C, iterations, 0.0)
    return lloyd64(U, C, iterations, 1e-3)


def inertia(U, C):
    return len(U) - (U.astype(np.float64) @ C.T.astype(np.float64)).max(axis=1).sum()


def same_partition(a, b) -> bool:
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


class CountingBackend(NumpyBackend):
    """numpy, recording the rows and cosines of every assignment."""

    def __init__(self):
        self.calls = []

    def top_centroids(self, U, C, p=1, *, unit=True):
        labels, cos = super().top_centroids(U, C, p, unit=unit)
        self.calls.append((len(U), labels[:, 0].copy(), cos[:, 0].astype(np.float64)))
        return labels, cos


@pytest.mark.parametrize("n,k,seed", [(3_000, 6, 0), (500, 40, 3), (4_000, 12, 5)])
def test_equals_the_float64_oracle(n, k, seed):
    U, planted = separated(n, k=min(k, 6), seed=seed)
    C, labels = spherical_kmeans(U, k, seed=seed)
    C64, labels64 = kmeans64(U, k, seed)
    np.testing.assert_array_equal(labels, labels64)
    np.testing.assert_allclose(C, C64, atol=1e-5)
    assert len(np.unique(labels)) == k  # no empty cluster left
    if k == 6:
        assert same_partition(labels, planted)


def test_warm_start_equals_the_oracle_and_finds_the_planted_clusters():
    U, planted = separated(45_000, k=8, seed=9)  # > 2 × 20,000 rows: warm start
    counter = CountingBackend()
    C, labels = spherical_kmeans(U, 8, seed=3, backend=counter)
    assert [c[0] for c in counter.calls] == [20_000, 20_000, 45_000, 45_000]
    C64, labels64 = kmeans64(U, 8, 3)
    np.testing.assert_array_equal(labels, labels64)
    np.testing.assert_allclose(C, C64, atol=1e-5)
    assert same_partition(labels, planted)


def test_stopping_rule_and_quality_against_full_lloyd():
    """On a CLIP-like cone Lloyd keeps moving labels; the run on all rows stops at the first
    iteration that lowered the inertia by < 0.1%, within 0.5% of 25 full iterations."""
    U = cone(50_000)
    counter = CountingBackend()
    C, labels = spherical_kmeans(U, 20, seed=0, backend=counter)
    warm = [c for c in counter.calls if c[0] == 20_000]
    full = [c for c in counter.calls if c[0] == 50_000]
    assert len(warm) + len(full) == len(counter.calls) and warm and full
    assert len(warm) == 25  # the warm run stops on labels only: here never before 25
    changes = [(a[1] != b[1]).mean() for a, b in zip(warm, warm[1:])]
    assert min(changes) > 1e-4
    inertias = [len(U) - cos.sum() for _, _, cos in full]
    gains = [1 - b / a for a, b in zip(inertias, inertias[1:])]
    assert all(g >= 1e-3 for g in gains[:-1]) and gains[-1] < 1e-3
    np.testing.assert_array_equal(labels, full[-1][1])
    C25, _ = kmeans64(U, 20, 0, full_lloyd=True)
    assert inertia(U, C) <= 1.005 * inertia(U, C25)
    assert len(counter.calls) * 20_000 < 25 * 50_000 * 0.6  # far fewer rows scored


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_backend_gives_the_same_clusters():
    U, planted = separated(6_000, k=6, seed=4)
    a = spherical_kmeans(U, 6, seed=1)
    b = spherical_kmeans(U, 6, seed=1, backend=get_backend("torch-cpu"))
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], atol=1e-5)
    assert same_partition(b[1], planted)
