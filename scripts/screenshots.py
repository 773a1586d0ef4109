"""Makes the README's pictures from real output, in Debian's Chromium through Playwright.

    .venv/bin/python scripts/screenshots.py [RUN_DIR] [--out docs]
    .venv/bin/python scripts/screenshots.py --sweep runs/lr-seed [--out docs]

* ``docs/report.png``: the report of RUN_DIR (default: the newest run under runs/ that has a
  report.html, e.g. what ``make demo`` wrote), scrolled to its training curves;
  ``docs/report_detections.png``: the same report at its detections on val images.
* ``docs/anchors.png``: ``notebooks/anchors.ipynb`` running in JupyterLab on the demo dataset,
  with the interactive explorer switched to level 2.
* ``docs/sweep_report.png`` (only this, with ``--sweep``): a sweep's report (``ssdwb report
  runs/<sweep>``) at its mAP against the swept values.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from lab_server import CHROMIUM, CHROMIUM_ARGS, jupyterlab, run_all, write_notebook  # noqa: E402


def report_png(browser, run: Path, out: Path, heading: str = "Curves") -> None:
    page = browser.new_page(viewport={"width": 1280, "height": 1100})
    page.goto((run / "report.html").as_uri())
    page.wait_for_load_state("load")
    page.locator("h2", has_text=heading).first.evaluate(
        "e => window.scrollTo(0, e.getBoundingClientRect().top + window.scrollY - 10)")
    page.screenshot(path=str(out))
    page.close()


def anchors_png(browser, data_dir: Path, out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        write_notebook("anchors", tmp / "lab", {"data_dir": str(data_dir), "max_images": 200})
        with jupyterlab(tmp / "lab", tmp / "state") as (url, token):
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            run_all(page, url, token, "anchors.ipynb", "covered small")
            select = page.locator(".widget-dropdown select").first
            before = page.locator(".widget-output img").first.get_attribute("src")
            select.select_option(index=2)
            page.wait_for_function(
                "prev => { const i = document.querySelector('.widget-output img');"
                " return i && i.getAttribute('src') !== prev; }", arg=before, timeout=60_000)
            # the level change moves row and column too: each redraws; wait until it settles
            img, same, last = page.locator(".widget-output img").first, 0, None
            while same < 4:
                page.wait_for_timeout(500)
                src = img.get_attribute("src")
                same, last = (same + 1, last) if src == last else (0, src)
            img.evaluate("e => e.decode()")
            img.scroll_into_view_if_needed()
            box = page.locator(".jp-OutputArea-output:has(.widget-dropdown)").first
            box.screenshot(path=str(out))
            page.close()


def main() -> None:
    from playwright.sync_api import sync_playwright

    from ssdwb.data.synthetic import ensure_shapes

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run_dir", nargs="?", help="a run folder with report.html")
    p.add_argument("--out", default=str(ROOT / "docs"))
    p.add_argument("--data", default="data/shapes", help="dataset of the anchors notebook")
    p.add_argument("--skip-anchors", action="store_true", help="only the report's pictures")
    p.add_argument("--sweep", help="a sweep folder with report.html: only its picture")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if args.sweep:
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            report_png(browser, Path(args.sweep).resolve(), out / "sweep_report.png",
                       heading="The sweep")
            browser.close()
        print(out / "sweep_report.png")
        return
    if args.run_dir:
        run = Path(args.run_dir).resolve()
    else:
        reports = sorted((f for f in (ROOT / "runs").glob("*/report.html")
                          if not (f.parent / "sweep.json").exists()),  # a run's, not a sweep's
                         key=lambda f: f.stat().st_mtime)
        if not reports:
            raise SystemExit("no runs/*/report.html: run `make demo` first or pass RUN_DIR")
        run = reports[-1].parent
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        report_png(browser, run, out / "report.png")
        report_png(browser, run, out / "report_detections.png", heading="detections")
        if not args.skip_anchors:
            anchors_png(browser, ensure_shapes(args.data), out / "anchors.png")
        browser.close()
    print(f"{out / 'report.png'}, {out / 'report_detections.png'} (from {run})"
          + ("" if args.skip_anchors else f"\n{out / 'anchors.png'}"))


if __name__ == "__main__":
    main()
