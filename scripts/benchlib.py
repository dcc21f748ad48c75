"""Shared helpers of the benchmarks: timing, peak memory of a child process, data files."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import numpy as np


ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # this checkout


def child(code: str, env: dict | None = None, setup: str = "", checkout: str = ROOT) -> dict:
    """Run Python ``code`` in a fresh process after ``setup`` (imports; not timed), with
    ``import curator`` taken from ``checkout`` (default: this one).

    The process runs in ``checkout`` with it first on ``PYTHONPATH``: ``python -c`` puts
    its working directory first on ``sys.path``, so a child started from another checkout's
    root imported that checkout's curator whatever ``PYTHONPATH`` said.

    Returns the child's ``RESULT`` dict plus ``seconds`` (of ``code``), peak RSS (MB) and
    ``curator_file`` (the curator it imported, if any; checked to lie in ``checkout``).
    """
    wrapper = (
        "import json, resource, time, sys\n"
        f"{setup}\n"
        "t0 = time.perf_counter()\n"
        f"{code}\n"
        "out = dict(globals().get('RESULT', {}))\n"
        "out['seconds'] = time.perf_counter() - t0\n"
        # VmHWM is this process's own peak (ru_maxrss would include the parent's at fork).
        "hwm = [l for l in open('/proc/self/status') if l.startswith('VmHWM')][0]\n"
        "out['peak_rss_mb'] = int(hwm.split()[1]) / 1024\n"
        "out['curator_file'] = getattr(sys.modules.get('curator'), '__file__', None)\n"
        "print('RESULT ' + json.dumps(out))\n"
    )
    checkout = os.path.abspath(checkout)
    env = {**os.environ, **(env or {})}
    env["PYTHONPATH"] = os.pathsep.join([checkout] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep)
                                                      if p and os.path.abspath(p) != checkout])
    proc = subprocess.run([sys.executable, "-c", wrapper], capture_output=True, text=True,
                          env=env, cwd=checkout)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-3000:])
    line = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")][-1]
    out = json.loads(line[len("RESULT "):])
    imported = out.get("curator_file")
    if imported and not os.path.abspath(imported).startswith(checkout + os.sep):
        raise RuntimeError(f"the child imported {imported}, not the curator of {checkout}")
    return out


def clip_like(n: int, d: int, seed: int = 0, chunk: int = 100_000):
    """Yield float32 chunks of off-centre anisotropic vectors (CLIP-like raw embeddings)."""
    rng = np.random.default_rng(seed)
    mean = rng.normal(size=d).astype(np.float32)
    mean *= 6 / np.linalg.norm(mean)
    scales = np.geomspace(1.0, 0.05, d).astype(np.float32)
    for start in range(0, n, chunk):
        k = min(chunk, n - start)
        yield start, (mean + rng.standard_normal((k, d), dtype=np.float32) * scales)


def write_npy(path: str, n: int, d: int, seed: int = 0) -> str:
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(n, d))
    for start, X in clip_like(n, d, seed):
        out[start:start + len(X)] = X
    out.flush()
    del out
    return path


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for r in rows:
        lines.append("| " + " | ".join(_fmt(r.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


def _fmt(v) -> str:
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def stopwatch():
    t0 = time.perf_counter()
    return lambda: time.perf_counter() - t0
