"""How fast ``curator browse`` is usable on a large table, and how much memory it holds.

Builds a table of ``--rows`` CLIP-like vectors (half image, half text, scored at ingest),
then, for the coordinates computed on the fly (gap view) and after ``curator project``
(stored), starts ``curator browse`` and drives it in headless Chromium:

- ready: process start → the address printed (rows read, coordinates, Datashader's
  kernels compiled);
- first page: ``goto`` → the scatter's canvas drawn;
- usable: process start → scatter drawn;
- box selection → its row count shown; a filter → its row count shown;
- the server's peak RSS (VmHWM) at the end.

    python scripts/bench_browse.py --rows 1000000 --runs 3
"""

from __future__ import annotations

import argparse
import os
import re
import socket
import statistics
import subprocess
import sys
import time

from benchlib import table, write_npy

CHROMIUM = "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def curator(db: str, *args: str) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "curator", "--db", db, "--quiet", *args], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - started


def build(folder: str, rows: int, dim: int) -> str:
    db = os.path.join(folder, "db")
    if os.path.isdir(db):
        return db
    half = rows // 2
    for seed, modality in ((0, "image"), (1, "text")):
        path = write_npy(os.path.join(folder, f"{modality}.npy"), half, dim, seed)
        curator(db, "ingest", path, "--modality", modality, "--model", "bench")
    return db


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_once(db: str, log: str) -> dict:
    from playwright.sync_api import sync_playwright

    port = free_port()
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "curator", "--db", db, "browse",
                                 "--no-open", "--port", str(port), "--timeout", "900"],
                                stdout=out, stderr=subprocess.STDOUT)
    try:
        while not re.search(r"^curator browse: .* at http", open(log).read(), re.M):
            if proc.poll() is not None:
                raise RuntimeError(open(log).read()[-2000:])
            time.sleep(0.1)
        ready = time.perf_counter() - started
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
            page = browser.new_page(viewport={"width": 1500, "height": 1100})
            page.set_default_timeout(300_000)
            t = time.perf_counter()
            page.goto(f"http://127.0.0.1:{port}/")
            scatter = page.locator(".curator-scatter canvas").first
            scatter.wait_for()
            first_page = time.perf_counter() - t
            usable = time.perf_counter() - started
            box = scatter.bounding_box()
            t = time.perf_counter()
            page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
            page.mouse.down()
            page.mouse.move(box["x"] + box["width"] * 0.6, box["y"] + box["height"] * 0.7, steps=5)
            page.mouse.up()
            page.locator("text=/Selection: [0-9,]+ rows/").first.wait_for()
            selection = time.perf_counter() - t
            selected = page.locator("text=/Selection: [0-9,]+ rows/").first.inner_text()
            t = time.perf_counter()
            page.locator("input[placeholder^='e.g. modality']").fill("uncertainty > 0.9")
            page.get_by_role("button", name="Apply filter").click()
            page.locator(".curator-filtered").first.wait_for()
            filtered = time.perf_counter() - t
            browser.close()
        status = open(f"/proc/{proc.pid}/status").read()
        peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    return {"ready": ready, "first_page": first_page, "usable": usable, "selection": selection,
            "filter": filtered, "peak_rss_mb": peak, "selected": selected}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=512)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--folder", default="/tmp/curator-bench-browse")
    args = ap.parse_args()
    os.makedirs(args.folder, exist_ok=True)
    db = build(args.folder, args.rows, args.dim)
    results = []
    for mode in ("computed gap", "stored (curator project)"):
        if mode.startswith("computed"):
            import lance

            dataset = lance.dataset(os.path.join(db, "embeddings.lance"))
            if "proj_x" in dataset.schema.names:  # left by an earlier run
                dataset.drop_columns(["proj_x", "proj_y"])
        else:
            seconds = curator(db, "project")
            print(f"curator project --method gap on {args.rows:,} rows: {seconds:.1f} s", flush=True)
        runs = [run_once(db, os.path.join(args.folder, "browse.log")) for _ in range(args.runs)]
        for r in runs:
            print(mode, r, flush=True)
        row = {"coordinates": mode}
        for key in ("ready", "first_page", "usable", "selection", "filter", "peak_rss_mb"):
            values = [r[key] for r in runs]
            row[key] = (f"{statistics.median(values):.1f} ({min(values):.1f}–{max(values):.1f})"
                        if key != "peak_rss_mb" else f"{statistics.median(values):.0f}")
        results.append(row)
    print(table(results, ["coordinates", "ready", "first_page", "usable", "selection", "filter",
                          "peak_rss_mb"]))


if __name__ == "__main__":
    main()
