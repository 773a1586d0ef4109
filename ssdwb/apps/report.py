"""Executed notebooks of a run -> one self-contained HTML report (``runs/<id>/report.html``).

    ssdwb report runs/<run_id>               # train.ipynb (+ results.ipynb ...) found in the folder
    ssdwb report runs/<run_id> --show-code   # keep every code cell

The run's executed notebooks (``train.ipynb`` first, then the others in name order; papermill
writes them there) are merged into one and exported with nbconvert's ``lab`` template. Images are
already base64 PNGs in the outputs, so the page needs no other file; script tags that would load
require.js / MathJax from a CDN are dropped (widgets cannot run in a static report anyway).
Cells tagged ``hide-input`` show only their output, cells tagged ``remove-cell`` vanish,
the papermill parameter cells stay (they say how the run was made). Every figure gets an
alternative text naming the section it is in ("Curves, figure 1"): nbconvert's lab template
writes none, and would fill in "No description has been provided" with a warning per report.
"""

from __future__ import annotations

import logging
import os
import re
from pathlib import Path

__all__ = ["render_report", "notebooks_of"]


def notebooks_of(run_dir: Path) -> list[Path]:
    """The executed notebooks in a run folder: ``train.ipynb`` first, then the rest by name."""
    found = sorted(p for p in run_dir.glob("*.ipynb") if not p.name.startswith("."))
    return sorted(found, key=lambda p: (p.name != "train.ipynb", p.name))


class _NoAltWarning(logging.Filter):
    """Drops nbconvert's "Alternative text is missing" warning: _figure_alt_texts writes them."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Alternative text is missing")


def _figure_alt_texts(html: str) -> str:
    """Gives each image without its own description "<section heading>, figure <k>"."""
    # lazy: only report rendering needs bs4 and nbconvert (seconds to import)
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(html, features="html.parser")
    counts: dict[str, int] = {}
    generic = "No description has been provided for this image"
    for img in soup.find_all("img"):
        if img.get("alt") and img["alt"] != generic:
            continue
        heading = img.find_previous(["h1", "h2", "h3"])
        # nbconvert appends a pilcrow anchor link to each heading.
        section = heading.get_text(" ", strip=True).rstrip("¶").strip() if heading else "Report"
        counts[section] = counts.get(section, 0) + 1
        img["alt"] = f"{section}, figure {counts[section]}"
    return str(soup)


def render_report(run_dir: str | os.PathLike, out: str | os.PathLike | None = None,
                  show_code: bool = False, notebooks: list[str | os.PathLike] | None = None) -> Path:
    """Writes ``report.html`` (or ``out``) for a run folder and returns its path.

    Raises:
        FileNotFoundError: the folder has no executed notebook.
        ValueError: a notebook is not valid JSON / nbformat (named in the message).
    """
    # lazy: only report rendering needs nbconvert (seconds to import)
    import nbformat
    from nbconvert import HTMLExporter
    from nbconvert.preprocessors import TagRemovePreprocessor
    from traitlets.config import Config

    run = Path(run_dir)
    paths = [Path(p) for p in notebooks] if notebooks else notebooks_of(run)
    if not paths:
        raise FileNotFoundError(
            f"{run}: no executed notebook to report on. Run e.g. `papermill notebooks/train.ipynb "
            f"{run}/train.ipynb -p run_id {run.name}` first.")
    merged = None
    for path in paths:
        try:
            nb = nbformat.read(path, as_version=4)
        except Exception as e:
            raise ValueError(f"{path}: not a readable notebook ({e})") from e
        if merged is None:
            merged = nb
        else:
            title = nbformat.v4.new_markdown_cell(f"---\n# {path.stem}")
            merged.cells.extend([title, *nb.cells])
    merged.metadata["title"] = f"ssdwb run {run.name}"

    c = Config()
    c.TagRemovePreprocessor.enabled = True
    c.TagRemovePreprocessor.remove_cell_tags = {"remove-cell"}
    c.TagRemovePreprocessor.remove_input_tags = set() if show_code else {"hide-input"}
    exporter = HTMLExporter(config=c, template_name="lab")
    exporter.register_preprocessor(TagRemovePreprocessor(config=c), enabled=True)
    quiet = _NoAltWarning()
    exporter.log.addFilter(quiet)
    try:
        html, _ = exporter.from_notebook_node(merged)
    finally:
        exporter.log.removeFilter(quiet)
    html = _figure_alt_texts(html)
    # Self-contained: no external scripts (require.js, MathJax) that an offline browser waits for.
    html = re.sub(r'<script[^>]*\bsrc="https?://[^"]*"[^>]*>\s*</script>', "", html)
    target = Path(out) if out else run / "report.html"
    tmp = target.with_name(f".{target.name}.tmp")
    tmp.write_text(html, encoding="utf-8")
    os.replace(tmp, target)
    return target
