"""The compute backends against float64 oracles, within the tolerances that
curator/geometry/backend.py states; the torch path runs on the CPU here (``torch-cpu``),
and on CUDA too where a GPU is visible."""

from __future__ import annotations

import importlib.util
import pickle

import numpy as np
import pytest

from curator.errors import BadInput
from curator.geometry.backend import NUMPY, get_backend, resolve_device
from curator.geometry.kmeans import unit_rows
from curator.geometry.sums import ModalityStats
from curator.geometry.whitening import Whitening

HAS_TORCH = importlib.util.find_spec("torch") is not None


def _devices():
    out = ["cpu"]
    if HAS_TORCH:
        import torch

        out.append("torch-cpu")
        if torch.cuda.is_available():
            out.append("cuda")
    return out


DEVICES = _devices()


def clip_like(n, d, seed=0):
    """Off-centre anisotropic raw vectors (a CLIP-like cone), float32."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d) * 6 / np.sqrt(d)
    scales = np.geomspace(1.0, 0.02, d)
    rotation = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return (mean + (rng.normal(size=(n, d)) * scales) @ rotation.T).astype(np.float32)


@pytest.fixture(params=DEVICES)
def backend(request):
    return get_backend(request.param)


@pytest.mark.parametrize("d", [16, 512])
def test_second_moment_against_float64(backend, d):
    X = clip_like(20_000, d, seed=d)
    shift = X[:100].mean(axis=0)  # near the mean, as ModalityStats takes it
    Z = X.astype(np.float64) - shift.astype(np.float32).astype(np.float64)
    oracle = Z.T @ Z
    got = backend.second_moment(X, shift)
    assert got.dtype == np.float64 and got.shape == (d, d)
    assert np.abs(got - oracle).max() <= 1e-5 * np.abs(oracle).max()


def test_second_moment_through_modality_stats(backend):
    X = clip_like(3_000, 32, seed=3)
    a, b = ModalityStats(32), ModalityStats(32)
    a.add(X)
    b.add(X, backend=backend)
    np.testing.assert_array_equal(a.S, b.S)
    assert np.abs(a.Q - b.Q).max() <= 1e-5 * np.abs(a.Q).max()
    cov = np.cov(X.astype(np.float64), rowvar=False, bias=True)
    assert np.abs(b.covariance - cov).max() <= 1e-5 * np.abs(cov).max()


@pytest.mark.parametrize("d", [16, 512])
def test_whitened_sq_norms_against_float64(backend, d):
    X = clip_like(20_000, d, seed=10 + d)
    X64 = X.astype(np.float64)
    w = Whitening.from_covariance(X64.mean(axis=0), np.cov(X64, rowvar=False, bias=True))
    Y = (X64 - w.mean.astype(np.float32).astype(np.float64)) @ w.matrix.astype(np.float64)
    oracle = (Y * Y).sum(axis=1)
    got = backend.whitened_sq_norms(X, w.mean.astype(np.float32), w.matrix)
    assert got.dtype == np.float64 and got.shape == (len(X),)
    assert np.all(np.abs(got - oracle) <= 1e-4 * oracle + 1e-3)
    loglik = w.loglik(X, backend=backend)  # −½(d log 2π + q + log det): the same bound, halved
    assert np.all(np.abs(loglik - w.loglik(X)) <= 0.5 * (2e-4 * oracle + 2e-3))


def test_whitened_norms_on_real_clip_vectors(backend, coco):
    image, _ = coco
    X64 = image.astype(np.float64)
    w = Whitening.from_covariance(X64.mean(axis=0), np.cov(X64, rowvar=False, bias=True)
                                  + 1e-4 * np.eye(X64.shape[1]))
    Y = (X64 - w.mean.astype(np.float32).astype(np.float64)) @ w.matrix.astype(np.float64)
    oracle = (Y * Y).sum(axis=1)
    got = backend.whitened_sq_norms(image, w.mean.astype(np.float32), w.matrix)
    assert np.all(np.abs(got - oracle) <= 1e-4 * oracle + 1e-3)


@pytest.mark.parametrize("d", [16, 300, 512])
def test_triangular_factor_gives_the_eigen_forms_norms(backend, d):
    """Whitening.factor is lower triangular, T Tᵀ = W Wᵀ, and the whitened norms (which
    loglik takes through it) equal the float64 oracle of the eigen form ``matrix``."""
    X = clip_like(8_000, d, seed=20 + d)
    X64 = X.astype(np.float64)
    w = Whitening.from_covariance(X64.mean(axis=0), np.cov(X64, rowvar=False, bias=True))
    T = w.factor
    assert T.dtype == np.float32 and T.shape == (d, d)
    assert not np.triu(T, 1).any()
    W64, T64 = w.matrix.astype(np.float64), T.astype(np.float64)
    P = W64 @ W64.T
    assert np.abs(T64 @ T64.T - P).max() <= 1e-5 * np.abs(P).max()
    Y = (X64 - w.mean.astype(np.float32).astype(np.float64)) @ W64
    oracle = (Y * Y).sum(axis=1)
    got = backend.whitened_sq_norms(X, w.mean.astype(np.float32), T)
    assert np.all(np.abs(got - oracle) <= 1e-4 * oracle + 1e-3)
    loglik = -0.5 * (d * np.log(2 * np.pi) + oracle + w.log_det)
    assert np.all(np.abs(w.loglik(X, backend=backend) - loglik) <= 0.5 * (1e-4 * oracle + 1e-3))


def test_whitened_norms_skip_only_zero_rows_of_each_column_block():
    """W with zero blocks in any place (leading rows of a block, a whole block, rows in
    the middle): the numpy kernel equals the float64 product of the whole W."""
    rng = np.random.default_rng(5)
    d = 300
    X = rng.normal(size=(5_000, d)).astype(np.float32)
    m = rng.normal(size=d).astype(np.float32)
    W = rng.normal(size=(d, 260)).astype(np.float32)
    W[:200, :128] = 0  # a block's leading rows
    W[:, 128:256] = 0  # a whole block
    W[10:250, 256:] = 0  # rows inside a block (not skipped: not leading)
    Y = (X.astype(np.float64) - m) @ W.astype(np.float64)
    oracle = (Y * Y).sum(axis=1)
    got = NUMPY.whitened_sq_norms(X, m, W)
    assert np.all(np.abs(got - oracle) <= 1e-5 * oracle + 1e-3)


def _cosines64(U, C):
    U64 = U.astype(np.float64)
    U64 /= np.maximum(np.linalg.norm(U64, axis=1, keepdims=True), 1e-300)
    return U64 @ C.astype(np.float64).T


@pytest.mark.parametrize("p", [1, 3])
@pytest.mark.parametrize("unit", [True, False])
def test_top_centroids_against_float64(backend, p, unit):
    X = clip_like(30_000, 64, seed=p)  # a narrow cone: cosines close together
    C = unit_rows(X[np.random.default_rng(p).choice(len(X), 40, replace=False)])
    U = unit_rows(X) if unit else X
    labels, cos = backend.top_centroids(U, C, p, unit=unit)
    assert labels.shape == cos.shape == (len(X), p)
    assert labels.dtype == np.int32 and cos.dtype == np.float32
    G = _cosines64(X, C)
    order = np.argsort(-G, axis=1, kind="stable")
    best = np.take_along_axis(G, order, axis=1)
    np.testing.assert_allclose(cos, best[:, :p], atol=1e-5, rtol=0)
    clear = best[:, p - 1] - best[:, p] > 2e-5  # no near tie among the first p + 1
    gaps = np.diff(best[:, :p + 1], axis=1)
    clear &= (-gaps > 2e-5).all(axis=1)
    assert clear.mean() > 0.9
    np.testing.assert_array_equal(labels[clear], order[clear, :p])


def test_top_centroids_of_a_zero_row(backend):
    C = unit_rows(np.eye(3, dtype=np.float32))
    labels, cos = backend.top_centroids(np.zeros((2, 3), np.float32), C, 1, unit=False)
    np.testing.assert_array_equal(cos, 0)


def planted_duplicates(n=3_000, d=48, seed=0):
    rng = np.random.default_rng(seed)
    U = unit_rows(rng.normal(size=(n, d)).astype(np.float32) + 2.0)
    copies = rng.choice(n, n // 10, replace=False)
    U[copies[: len(copies) // 2]] = U[copies[len(copies) // 2:]]  # exact copies
    U += (rng.normal(size=U.shape) * 0.003).astype(np.float32) * (rng.random((n, 1)) < 0.2)
    return unit_rows(U)


@pytest.mark.parametrize("thr", [0.999, 0.99, 0.9])
def test_threshold_pairs_triangle_against_float64(backend, thr):
    U = planted_duplicates()
    r, c, s = backend.threshold_pairs(U, None, thr)
    assert r.dtype == c.dtype == np.int64 and s.dtype == np.float32
    assert np.all(r < c)
    G = U.astype(np.float64) @ U.astype(np.float64).T
    found = set(zip(r.tolist(), c.tolist()))
    must = np.argwhere(np.triu(G >= thr + 1e-5, 1))
    assert len(must) > 50
    assert set(map(tuple, must.tolist())) <= found
    assert np.all(G[r, c] >= thr - 1e-5)
    np.testing.assert_allclose(s, G[r, c], atol=1e-5, rtol=0)
    assert len(found) == len(r)  # each pair once


def test_threshold_pairs_rectangle_against_float64(backend):
    U = planted_duplicates(seed=1)
    A, B = U[:1_000], U[1_000:]
    r, c, s = backend.threshold_pairs(A, B, 0.99)
    G = A.astype(np.float64) @ B.astype(np.float64).T
    must = np.argwhere(G >= 0.99 + 1e-5)
    assert len(must) > 10
    assert set(map(tuple, must.tolist())) <= set(zip(r.tolist(), c.tolist()))
    assert np.all(G[r, c] >= 0.99 - 1e-5)
    np.testing.assert_allclose(s, G[r, c], atol=1e-5, rtol=0)
    empty = backend.threshold_pairs(A[:0], B, 0.5)
    assert all(len(x) == 0 for x in empty)


@pytest.mark.skipif(not HAS_TORCH, reason="torch not installed")
def test_torch_and_numpy_agree_on_every_kernel():
    torch_cpu = get_backend("torch-cpu")
    X = clip_like(5_000, 128, seed=7)
    shift = X[:50].mean(axis=0)
    a, b = NUMPY.second_moment(X, shift), torch_cpu.second_moment(X, shift)
    assert np.abs(a - b).max() <= 2e-5 * np.abs(a).max()
    W = np.linalg.qr(np.random.default_rng(0).normal(size=(128, 128)))[0].astype(np.float32)
    np.testing.assert_allclose(torch_cpu.whitened_sq_norms(X, shift, W),
                               NUMPY.whitened_sq_norms(X, shift, W), rtol=2e-4, atol=2e-3)
    U, C = unit_rows(X), unit_rows(X[:30])
    (la, ca), (lb, cb) = NUMPY.top_centroids(U, C, 2), torch_cpu.top_centroids(U, C, 2)
    np.testing.assert_allclose(ca, cb, atol=2e-5, rtol=0)
    assert (la == lb).mean() > 0.99


def test_devices_resolve():
    assert resolve_device("cpu") == resolve_device("numpy") == resolve_device(" CPU ") == "cpu"
    assert get_backend("cpu") is NUMPY
    auto = resolve_device("auto")
    assert auto in ("cpu", "cuda") and resolve_device(None) == auto
    if HAS_TORCH:
        import torch

        assert (auto == "cuda") == torch.cuda.is_available()
        assert resolve_device("torch-cpu") == "torch-cpu"
        if not torch.cuda.is_available():
            with pytest.raises(BadInput, match="no CUDA device"):
                resolve_device("cuda")
    with pytest.raises(BadInput, match="unknown device 'tpu'"):
        resolve_device("tpu")
    with pytest.raises(BadInput, match="unknown device"):
        resolve_device("cuda:x")


@pytest.mark.parametrize("device", DEVICES)
def test_backend_is_its_name_across_processes(device):
    b = get_backend(device)
    again = pickle.loads(pickle.dumps(b))
    assert again == b and again.device == device and len(pickle.dumps(b)) < 200


def test_without_torch(monkeypatch):
    """No torch: auto is numpy without importing anything; a torch device says what to install."""
    import sys

    from curator.errors import MissingDependency
    from curator.geometry import backend as backend_mod

    monkeypatch.setitem(sys.modules, "torch", None)  # import torch raises ImportError
    monkeypatch.setattr(backend_mod.importlib.util, "find_spec", lambda name: None)
    assert resolve_device("auto") == "cpu" and get_backend() is NUMPY
    for device in ("torch-cpu", "cuda"):
        with pytest.raises(MissingDependency, match=r"clip-curator\[gpu\]"):
            resolve_device(device)


def test_second_moment_split_across_threads_meets_float64(monkeypatch):
    """A batch of several ``SPLIT_ROWS`` is summed in row ranges on threads of their own
    (forced to three here, whatever this machine's CPUs): the same float64 oracle holds,
    and the ranges cover every row once, at block boundaries."""
    from curator.geometry import backend as kernels

    monkeypatch.setattr(kernels, "_blas_threads", lambda: 3)
    n = 3 * kernels.SPLIT_ROWS + 1234
    ranges = kernels._row_ranges(n, 3)
    assert len(ranges) == 3 and ranges[0][0] == 0 and ranges[-1][1] == n
    assert all(b == c for (_, b), (c, _) in zip(ranges, ranges[1:]))
    assert all(a % kernels.BLOCK_ROWS == 0 and b - a >= kernels.SPLIT_ROWS for a, b in ranges)
    assert kernels._row_ranges(kernels.SPLIT_ROWS * 2 - 1, 8) == [(0, kernels.SPLIT_ROWS * 2 - 1)]
    X = clip_like(n, 48, seed=21)
    shift = X[:100].mean(axis=0)
    Z = X.astype(np.float64) - shift.astype(np.float32).astype(np.float64)
    oracle = Z.T @ Z
    got = NUMPY.second_moment(X, shift)
    assert np.abs(got - oracle).max() <= 1e-5 * np.abs(oracle).max()
