"""A full-page screenshot of a report in headless Chromium (the README's picture).

    python scripts/report_screenshot.py docs/report-screenshot.png          # the COCO report
    python scripts/report_screenshot.py shot.png --html curator-demo/report/index.html

Without ``--html`` it builds the report of the 500 MS-COCO pairs
(``scripts/coco_report.py``) in a temporary folder first. Needs Playwright and a
Chromium (``--chromium``, default ``/usr/bin/chromium``); the page is loaded from disk
with the network and every background service switched off.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


def screenshot(html: str, png: str, width: int = 1400, chromium: str = "/usr/bin/chromium",
               colours: int = 256) -> str:
    """Load ``html`` at ``width`` CSS pixels and save the whole page as ``png``, reduced to
    ``colours`` colours (0: full colour; 256 keeps the README's picture ~200 KB)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": width, "height": 900})
            page.goto(Path(html).resolve().as_uri())
            page.wait_for_load_state("load")
            page.screenshot(path=png, full_page=True)
        finally:
            browser.close()
    if colours:
        from PIL import Image

        with Image.open(png) as im:
            reduced = im.convert("RGB").quantize(colors=colours, method=Image.Quantize.MEDIANCUT,
                                                 dither=Image.Dither.NONE)
        reduced.save(png, optimize=True)
    return png


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("png", help="where to write the screenshot")
    parser.add_argument("--html", help="the report's index.html (default: build the COCO report)")
    parser.add_argument("--width", type=int, default=1400, help="viewport width in CSS pixels")
    parser.add_argument("--chromium", default="/usr/bin/chromium")
    parser.add_argument("--features", help="coco_report.py's --features (the COCO .npy)")
    parser.add_argument("--colours", type=int, default=256, help="palette size (0: full colour)")
    args = parser.parse_args(argv)
    if args.html:
        screenshot(args.html, args.png, args.width, args.chromium, args.colours)
        return 0
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import coco_report

    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "report")
        code = coco_report.main([out] + (["--features", args.features] if args.features else []))
        if code:
            return code
        screenshot(os.path.join(out, "index.html"), args.png, args.width, args.chromium, args.colours)
    print(f"wrote {args.png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
