"""``report.html``: a run's report as one self-contained page (charts embedded as base64 PNG).

Built from what a run folder holds, so it works for every run: the dense vs pruned
table from ``metrics.json``, every ``*.png`` chart of the folder (and of its sweep
points) embedded inline, and ``report.md`` shown as text. ``prunekit report RUN_DIR``
writes it if needed and opens it.
"""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .._io import write_text
from ..errors import ConfigError
from .report import metric_rows

__all__ = ["HTML_NAME", "render_html"]

HTML_NAME = "report.html"
_STYLE = """body{font-family:system-ui,sans-serif;max-width:60em;margin:2em auto;padding:0 1em}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.25em .6em}
td.n{text-align:right}img{max-width:100%;border:1px solid #eee;margin:.5em 0}
pre{background:#f6f6f6;padding:1em;overflow-x:auto;font-size:.85em}"""


def render_html(run_dir: str | Path, *, metrics: Mapping[str, Any] | None = None,
                markdown: str | None = None) -> Path:
    """Write ``RUN_DIR/report.html`` (atomically) and return its path.

    Args:
        run_dir: a run's output folder.
        metrics: the run's metrics (default: read ``metrics.json``).
        markdown: the Markdown report (default: read ``report.md`` when present).

    Raises:
        ConfigError: the folder is not a finished run (no ``metrics.json``).
    """
    folder = Path(run_dir)
    if metrics is None:
        path = folder / "metrics.json"
        if not path.is_file():
            raise ConfigError(f"{folder} holds no metrics.json: not a finished prunekit run; "
                              "give the --out folder of a run")
        metrics = json.loads(path.read_text())
    if markdown is None and (folder / "report.md").is_file():
        markdown = (folder / "report.md").read_text()
    page = _page(folder, metrics, markdown)
    write_text(folder / HTML_NAME, page)
    return folder / HTML_NAME


def _page(folder: Path, metrics: Mapping[str, Any], markdown: str | None) -> str:
    title = html.escape(folder.resolve().name)
    rows = metric_rows(metrics.get("dense", {}), metrics.get("pruned", {}))
    table = "".join(f"<tr><td>{html.escape(a)}</td><td class=n>{html.escape(b)}</td>"
                    f"<td class=n>{html.escape(c)}</td></tr>" for a, b, c in rows)
    charts = "".join(_figure(folder, png) for png in sorted(folder.rglob("*.png")))
    text = f"<h2>report.md</h2><pre>{html.escape(markdown)}</pre>" if markdown else ""
    return (f"<!doctype html><html><head><meta charset=utf-8><title>{title}</title>"
            f"<style>{_STYLE}</style></head><body><h1>prunekit run: {title}</h1>"
            f"<h2>Dense vs pruned</h2><table><tr><th></th><th>dense</th><th>pruned</th></tr>"
            f"{table}</table><h2>Charts</h2>{charts or '<p>no charts</p>'}{text}"
            "</body></html>\n")


def _figure(folder: Path, png: Path) -> str:
    name = html.escape(str(png.relative_to(folder)))
    data = base64.b64encode(png.read_bytes()).decode("ascii")
    return (f"<figure><img alt='{name}' src='data:image/png;base64,{data}'>"
            f"<figcaption>{name}</figcaption></figure>")
