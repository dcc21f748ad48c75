"""Where the heavy products run: numpy on the CPU (the default), or torch on a GPU.

Four kernels carry the O(n·d²) and O(n·k·d) work; each takes and returns numpy arrays,
whatever runs it:

- :meth:`second_moment` — Σ (x−c)(x−c)ᵀ of a batch (the statistics' ``Q``), float64 (d, d);
- :meth:`whitened_sq_norms` — ‖(x−m) W‖² per row (the whitened log-likelihood), float64;
- :meth:`top_centroids` — the ``p`` highest-cosine centroids of each row (cluster
  assignment, dedupe partitions), labels int32 and cosines float32 in [−1, 1];
- :meth:`threshold_pairs` — the pairs of rows of A × B (or the upper triangle of A × A)
  with dot product ≥ a threshold (dedupe's exact search), local indices and float32 dots.

Devices (``--device``): ``cpu`` is numpy (float32 BLAS products, as curator always did);
``cuda`` / ``cuda:N`` is torch on that GPU, float32, in row blocks that bound the GPU's
memory; ``torch-cpu`` is torch on the CPU (the same code as ``cuda``: the tests run it
to check the GPU path on machines without one); ``auto`` (the default) is ``cuda`` when
torch is installed and sees a GPU, else ``cpu``. On Linux ``auto`` looks for
``/dev/nvidia*`` first and does not import torch (a second of start-up) when there is none.

A backend is a small picklable object that holds only its device's name: a Ray task
rebuilds the same backend from it, and no live torch object ever crosses a process. There
is no global device: every function that computes takes a ``backend`` argument whose
default is :data:`NUMPY`.

Agreement with a float64 oracle, checked by ``tests/test_backend.py`` (float32 inputs,
d ≤ 1024, every device; ε = 2⁻²³ ≈ 1.2e-7):

- ``second_moment``: max |Q − Q₆₄| ≤ 1e-5 · max |Q₆₄| (shift near the mean);
- ``whitened_sq_norms``: |q − q₆₄| ≤ 1e-4 · q₆₄ + 1e-3 per row;
- ``top_centroids`` (unit rows and centroids): |cos − cos₆₄| ≤ 1e-5, and labels equal
  wherever the next candidate is more than 2e-5 lower;
- ``threshold_pairs`` (unit rows): every pair with dot ≥ thr + 1e-5 is found, none with
  dot < thr − 1e-5, dots within 1e-5.
"""

from __future__ import annotations

import glob
import importlib.util
import sys
import warnings
from dataclasses import dataclass

import numpy as np

from ..errors import BadInput, MissingDependency

DEVICES = ("auto", "cpu", "cuda", "torch-cpu")
COS_ATOL = 1e-5  # stated agreement of cosines / dots of unit rows with float64
_BLOCK = 8_192  # numpy: at most this many rows per top-centroid block
_TOP_ELEMENTS = 1 << 22  # numpy: elements of one top-centroid score block (16 MB, any k)
_PAIR_ELEMENTS = 16 << 20  # numpy: score-matrix block of threshold_pairs, rows × columns
_CUDA_ELEMENTS = 64 << 20  # cuda: elements of one block's input or score matrix (256 MB)


def resolve_device(device: str | None = "auto") -> str:
    """The device name a backend runs on: ``cpu``, ``torch-cpu``, ``cuda`` or ``cuda:N``.

    ``auto`` (or None) picks ``cuda`` when torch is installed and sees a GPU, else
    ``cpu``. Raises :class:`BadInput` (one line) for an unknown name or a CUDA device that
    is not there, :class:`MissingDependency` when a torch device is asked for without torch.
    """
    name = (device or "auto").strip().lower()
    if name == "auto":
        return "cuda" if _cuda_visible() else "cpu"
    if name in ("cpu", "numpy"):
        return "cpu"
    if name == "torch-cpu":
        _torch()
        return name
    if name == "cuda" or (name.startswith("cuda:") and name[5:].isdigit()):
        torch = _torch()
        if not torch.cuda.is_available():
            raise BadInput(f"--device {name}: torch sees no CUDA device (use --device cpu)")
        index = int(name[5:]) if ":" in name else 0
        if index >= torch.cuda.device_count():
            raise BadInput(f"--device {name}: torch sees {torch.cuda.device_count()} CUDA device(s)")
        return name
    raise BadInput(f"unknown device {device!r}: use auto, cpu, cuda, cuda:N or torch-cpu")


def get_backend(device: str | None = "auto") -> Backend:
    """The backend of ``device`` (see :func:`resolve_device`)."""
    name = resolve_device(device)
    return NUMPY if name == "cpu" else TorchBackend(name)


def _cuda_visible() -> bool:
    if importlib.util.find_spec("torch") is None:
        return False
    if sys.platform.startswith("linux") and not glob.glob("/dev/nvidia[0-9]*"):
        return False  # no NVIDIA device node: no need to import torch to know
    import torch

    return bool(torch.cuda.is_available())


def _torch():
    try:
        import torch
    except ImportError as exc:
        raise MissingDependency("a torch device needs torch: pip install 'clip-curator[gpu]' "
                                "(a CUDA build of torch for --device cuda)") from exc
    return torch


# Rows per block of the numpy kernels' products: a 512-wide block is 8 MB, reused by the
# allocator from block to block (a whole batch's centred copy was 128 MB of fresh pages).
BLOCK_ROWS = 4096
WHITE_COLUMNS = 128  # columns per block of W in whitened_sq_norms (64 and 256 were slower)


def _column_blocks(W: np.ndarray, width: int) -> list[tuple[int, np.ndarray]]:
    """W (d, d′) as column blocks without their leading all-zero rows: (first non-zero
    row, W[first:, block] contiguous); ``Z @ W`` = the blocks' products side by side."""
    blocks = []
    for c in range(0, W.shape[1], width):
        block = W[:, c:c + width]
        nonzero = np.flatnonzero(block.any(axis=1))
        first = int(nonzero[0]) if len(nonzero) else W.shape[0]
        if first < W.shape[0]:
            blocks.append((first, np.ascontiguousarray(block[first:])))
    return blocks


SPLIT_ROWS = 4 * BLOCK_ROWS  # second_moment: rows per thread at least, when split


def _second_moment(X: np.ndarray, c: np.ndarray) -> np.ndarray:
    Q = np.zeros((X.shape[1], X.shape[1]))
    centred = np.empty((min(BLOCK_ROWS, len(X)), X.shape[1]), np.float32)  # reused per block
    for a in range(0, len(X), BLOCK_ROWS):
        rows = X[a:a + BLOCK_ROWS]
        Z = np.subtract(rows, c, out=centred[:len(rows)])
        Q += Z.T @ Z
    return Q


def _row_ranges(n: int, threads: int) -> list[tuple[int, int]]:
    """[begin, end) ranges covering rows 0..n once, one per thread (at most ``threads``),
    each at least ``SPLIT_ROWS`` rows and cut at multiples of ``BLOCK_ROWS``."""
    parts = max(1, min(threads, n // SPLIT_ROWS))
    cuts = [0] + [round(n * k / parts / BLOCK_ROWS) * BLOCK_ROWS for k in range(1, parts)] + [n]
    return list(zip(cuts[:-1], cuts[1:]))


_BLAS_CONTROLLER = None


def _blas():
    """threadpoolctl's controller of the BLAS libraries numpy loaded (made once: making
    one scans the loaded libraries)."""
    global _BLAS_CONTROLLER
    if _BLAS_CONTROLLER is None:
        from threadpoolctl import ThreadpoolController

        _BLAS_CONTROLLER = ThreadpoolController().select(user_api="blas")
    return _BLAS_CONTROLLER


def available_cpus() -> int:
    """CPUs this process may run on (its affinity set where the platform has one)."""
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _blas_threads() -> int:
    """BLAS threads a product may use now (1 inside a caller's one-thread limit, e.g. an
    executor's jobs running several at once), capped by the CPUs this process may use."""
    threads = max((lib.num_threads for lib in _blas().lib_controllers), default=1)
    return max(1, min(threads, available_cpus()))


class Backend:
    """The four kernels; subclasses say where they run. ``device`` is the resolved name."""

    device = "cpu"

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.device!r})"

    def __eq__(self, other) -> bool:
        return isinstance(other, Backend) and other.device == self.device

    def __hash__(self) -> int:
        return hash(self.device)


class NumpyBackend(Backend):
    """numpy on the CPU: float32 BLAS products (the path curator always took)."""

    device = "cpu"

    def second_moment(self, X: np.ndarray, shift: np.ndarray) -> np.ndarray:
        """Σ (x−c)(x−c)ᵀ over the rows of X (n, d), float64 (d, d): float32 products
        (BLAS's syrk: numpy sees Zᵀ Z) of ``BLOCK_ROWS``-row blocks, summed in float64.

        OpenBLAS's syrk scales poorly across threads at this shape (d × d out, a long
        inner dimension): on two cores 130 GFLOP/s with both its threads on one product,
        186 with the rows split in two, one BLAS thread each (GEMM: 274). So a batch of at
        least ``2 × SPLIT_ROWS`` rows is cut into contiguous row ranges, one per BLAS
        thread available, each summed on a thread of its own with one BLAS thread, and
        the ranges' sums added in order (the same split for the same rows: deterministic)."""
        X, c = np.asarray(X, np.float32), np.asarray(shift, np.float32)
        ranges = _row_ranges(len(X), _blas_threads())
        if len(ranges) < 2:
            return _second_moment(X, c)
        from concurrent.futures import ThreadPoolExecutor

        with _blas().limit(limits=1), ThreadPoolExecutor(len(ranges)) as pool:
            parts = list(pool.map(lambda r: _second_moment(X[r[0]:r[1]], c), ranges))
        return sum(parts[1:], parts[0])

    def whitened_sq_norms(self, X: np.ndarray, mean: np.ndarray, W: np.ndarray) -> np.ndarray:
        """‖(x−m) W‖² of each row of X (n, d), float64 (n,); W is (d, d′). Blocks of
        ``BLOCK_ROWS`` rows: the centred copy and the product stay a few MB. Each
        ``WHITE_COLUMNS``-wide column block of W is multiplied from its first non-zero
        row on, so a lower-triangular W (``Whitening.factor``) costs (d + 128)/2d of a full
        product: 62% at d = 512, measured 1.5× faster. The squares are summed in float32
        (einsum's SIMD lanes: 3.4e-7 relative at d′ = 512, within the float32 product's
        own error, 4.5× faster than a float64 sum)."""
        X, m, W = np.asarray(X, np.float32), np.asarray(mean, np.float32), np.asarray(W, np.float32)
        blocks = _column_blocks(W, WHITE_COLUMNS)
        out = np.empty(len(X))
        # One centred block reused (8-10% faster than a new array per block, measured).
        centred = np.empty((min(BLOCK_ROWS, len(X)), X.shape[1]), np.float32)
        for a in range(0, len(X), BLOCK_ROWS):
            rows = X[a:a + BLOCK_ROWS]
            Z = np.subtract(rows, m, out=centred[:len(rows)])
            sq = np.zeros(len(Z), np.float32)
            for first, Wk in blocks:
                Y = Z[:, first:] @ Wk
                sq += np.einsum("ij,ij->i", Y, Y)
            out[a:a + len(Z)] = sq
        return out

    def top_centroids(self, U: np.ndarray, C: np.ndarray, p: int = 1, *, unit: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
        """The ``p`` highest-cosine rows of C (k, d; unit) for each row of U, best first.

        Returns (labels (n, p) int32, cosines (n, p) float32 in [−1, 1]). ``unit=False``:
        the rows of U are raw (any norm); the cosines are divided by their norms, and no
        normalised copy is made (a zero row gets cosine 0 and label 0).
        """
        U = np.asarray(U, np.float32)
        n, k = len(U), len(C)
        p = max(1, min(p, k))
        labels = np.empty((n, p), np.int32)
        cos = np.empty((n, p), np.float32)
        Ct = np.ascontiguousarray(np.asarray(C, np.float32).T)
        # Rows per block: the score block stays 16 MB whatever k (k = 4,096 partitions
        # with 8,192-row blocks held 134 MB, and ran slower than 1,024-row blocks).
        step = max(256, min(_BLOCK, _TOP_ELEMENTS // max(1, k)))
        rows = np.arange(min(n, step))
        for a in range(0, n, step):
            block = U[a:a + step]
            S = block @ Ct
            r = rows[:len(S)]
            for q in range(p):  # p argmax passes: far cheaper than argpartition for small p
                best = S.argmax(axis=1)
                labels[a:a + len(S), q] = best
                cos[a:a + len(S), q] = S[r, best]
                if q + 1 < p:
                    S[r, best] = -np.inf
            if not unit:  # float32 norms (5× faster than float64 here; relative error ~2e-7)
                norms = np.sqrt(np.einsum("ij,ij->i", block, block))
                norms[norms == 0] = np.inf
                cos[a:a + len(S)] /= norms[:, None]
        return labels, cos

    def threshold_pairs(self, A: np.ndarray, B: np.ndarray | None, thr: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(r, c, dot): every pair of a row of A and a row of B with A[r]·B[c] ≥ thr, or,
        when B is None, every pair r < c of rows of A. int64, int64, float32; row-major."""
        same = B is None
        A = np.asarray(A, np.float32)
        B = A if same else np.asarray(B, np.float32)
        if len(A) == 0 or len(B) == 0:
            return _empty()
        out_r, out_c, out_s = [], [], []
        step = max(1, min(len(A), _PAIR_ELEMENTS // max(1, len(B))))
        for a in range(0, len(A), step):
            start = a if same else 0  # triangle: columns from the block's first row on
            S = A[a:a + step] @ B[start:].T
            r, c = np.nonzero(S >= thr)
            if same:
                upper = c + start > r + a
                r, c = r[upper], c[upper]
            if len(r):
                out_r.append(r + a)
                out_c.append(c + start)
                out_s.append(S[r, c])
        return _joined(out_r, out_c, out_s)


@dataclass(frozen=True, eq=False, repr=False)
class TorchBackend(Backend):
    """torch, float32, on ``device`` (``cuda``, ``cuda:N`` or ``torch-cpu``). Inputs go to
    the device in row blocks (64M elements on CUDA, 16M on the CPU); results come back as
    numpy."""

    device: str = "torch-cpu"

    @property
    def _dev(self):
        torch = _torch()
        return torch.device("cpu" if self.device == "torch-cpu" else self.device)

    def _put(self, X: np.ndarray):
        torch = _torch()
        with warnings.catch_warnings():  # read-only Arrow buffers: torch only reads them
            warnings.simplefilter("ignore", UserWarning)
            t = torch.from_numpy(np.ascontiguousarray(X, np.float32))
        return t if self.device == "torch-cpu" else t.to(self._dev, non_blocking=False)

    def _rows_per_block(self, width: int) -> int:
        elements = _PAIR_ELEMENTS if self.device == "torch-cpu" else _CUDA_ELEMENTS
        return max(1, elements // max(1, width))

    def second_moment(self, X: np.ndarray, shift: np.ndarray) -> np.ndarray:
        torch = _torch()
        X = np.asarray(X, np.float32)
        d = X.shape[1]
        c = self._put(np.asarray(shift, np.float32))
        Q = torch.zeros((d, d), dtype=torch.float64, device=self._dev)
        with torch.inference_mode():
            for a in range(0, len(X), self._rows_per_block(d)):
                Z = self._put(X[a:a + self._rows_per_block(d)]) - c
                Q += (Z.T @ Z).double()
        return Q.cpu().numpy()

    def whitened_sq_norms(self, X: np.ndarray, mean: np.ndarray, W: np.ndarray) -> np.ndarray:
        torch = _torch()
        X = np.asarray(X, np.float32)
        out = np.empty(len(X), np.float64)
        m, Wt = self._put(np.asarray(mean, np.float32)), self._put(W)
        step = self._rows_per_block(max(X.shape[1], Wt.shape[1]))
        with torch.inference_mode():
            for a in range(0, len(X), step):
                Y = (self._put(X[a:a + step]) - m) @ Wt
                out[a:a + len(Y)] = (Y * Y).sum(dim=1, dtype=torch.float64).cpu().numpy()
        return out

    def top_centroids(self, U: np.ndarray, C: np.ndarray, p: int = 1, *, unit: bool = True
                      ) -> tuple[np.ndarray, np.ndarray]:
        torch = _torch()
        n, k = len(U), len(C)
        p = max(1, min(p, k))
        labels = np.empty((n, p), np.int32)
        cos = np.empty((n, p), np.float32)
        Ct = self._put(C).T.contiguous()
        step = self._rows_per_block(max(U.shape[1], k))
        with torch.inference_mode():
            for a in range(0, n, step):
                block = self._put(U[a:a + step])
                S = block @ Ct
                if not unit:
                    norms = torch.linalg.vector_norm(block, dim=1, dtype=torch.float64)
                    S /= torch.where(norms > 0, norms, torch.inf).float()[:, None]
                if p == 1:
                    values, index = S.max(dim=1, keepdim=True)
                else:
                    values, index = torch.topk(S, p, dim=1, largest=True, sorted=True)
                labels[a:a + len(S)] = index.int().cpu().numpy()
                cos[a:a + len(S)] = values.cpu().numpy()
        return labels, cos

    def threshold_pairs(self, A: np.ndarray, B: np.ndarray | None, thr: float
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        torch = _torch()
        same = B is None
        if len(A) == 0 or (not same and len(B) == 0):
            return _empty()
        Bt = self._put(A if same else B)
        out_r, out_c, out_s = [], [], []
        step = max(1, min(len(A), self._rows_per_block(len(Bt))))
        with torch.inference_mode():
            for a in range(0, len(A), step):
                start = a if same else 0
                S = Bt[a:a + step] @ Bt[start:].T if same else self._put(A[a:a + step]) @ Bt.T
                hit = S >= thr
                if same:  # strictly upper triangle: column (global) > row (global)
                    hit &= torch.ones_like(hit).triu(1)
                rc = hit.nonzero()
                if len(rc):
                    r, c = rc[:, 0], rc[:, 1]
                    out_s.append(S[r, c].cpu().numpy())
                    out_r.append(r.cpu().numpy() + a)
                    out_c.append(c.cpu().numpy() + start)
        return _joined(out_r, out_c, out_s)


def _empty():
    return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)


def _joined(r, c, s):
    if not r:
        return _empty()
    return (np.concatenate(r).astype(np.int64), np.concatenate(c).astype(np.int64),
            np.concatenate(s).astype(np.float32))


NUMPY = NumpyBackend()
