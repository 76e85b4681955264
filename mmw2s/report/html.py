"""`report.html` beside `report.md`: the same report in a browser, plots inline, with links to a
browser (`mmw2s browse`) of each bootstrap stage's decisions.

The Markdown is the report's one source; it is rendered by markdown-it with raw HTML disabled (any
`<tag>` in it shows as text), into a Jinja2 template with autoescape. Local PNG plots become
`data:` URIs, so the page is one file that opens anywhere; links to other local reports
(`sweep/*/report.md`) point at their `report.html`, rendered too.

    write_experiment_html(OUT / "report.md", variants)   # what `mmw2s run` calls
    write_report_html(OUT / "report.md")                 # any report.md, no browsers
"""
from __future__ import annotations

import base64
import logging
import os
from pathlib import Path
from typing import Any, Iterable, Sequence

log = logging.getLogger(__name__)

INLINE_TYPES = {".png": "image/png", ".jpg": "image/jpeg", ".jpeg": "image/jpeg", ".svg": "image/svg+xml"}


def _local(folder: Path, ref: str) -> Path | None:
    """The file `ref` names inside `folder`, or None (a URL, an anchor, or a path leading out)."""
    if not ref or "://" in ref or ref.startswith(("#", "/", "data:", "mailto:")):
        return None
    path = (folder / ref).resolve()
    return path if path.is_relative_to(folder.resolve()) and path.is_file() else None


def markdown_html(text: str, folder: Path) -> tuple[str, list[Path]]:
    """HTML of Markdown `text` whose relative paths start at `folder`, and the local reports it links.

    Raw HTML in `text` is escaped (markdown-it's `html` option off); images under `folder` are
    inlined as data URIs; links to local `*.md` files point at the `.html` beside them.
    """
    from markdown_it import MarkdownIt

    md = MarkdownIt("commonmark", {"html": False}).enable("table")
    tokens = md.parse(text)
    linked: list[Path] = []
    for token in (c for t in tokens if t.type == "inline" for c in (t.children or [])):
        if token.type == "image":
            path = _local(folder, str(token.attrGet("src") or ""))
            if path is not None and path.suffix.lower() in INLINE_TYPES:
                data = base64.b64encode(path.read_bytes()).decode("ascii")
                token.attrSet("src", f"data:{INLINE_TYPES[path.suffix.lower()]};base64,{data}")
        elif token.type == "link_open":
            href = str(token.attrGet("href") or "")
            path = _local(folder, href)
            if path is not None and path.suffix == ".md":
                linked.append(path)
                token.attrSet("href", href[: -len(".md")] + ".html")
    return md.renderer.render(tokens, md.options, {}), linked


def write_report_html(report_md: Path, browsers: Sequence[tuple[str, Path]] = (), _seen: set | None = None) -> Path:
    """Write `report.html` beside `report_md` (and beside every local report it links); returns it.

    `browsers` are `(label, index.html)` pairs, linked relative to the report.
    """
    from markupsafe import Markup

    from mmw2s.browse.site import environment

    report_md = Path(report_md)
    folder = report_md.parent
    seen = _seen if _seen is not None else set()
    seen.add(report_md.resolve())
    body, linked = markdown_html(report_md.read_text(encoding="utf-8"), folder)
    links = [{"label": label, "href": Path(os.path.relpath(index, folder)).as_posix()} for label, index in browsers]
    title = next((line[2:].strip() for line in report_md.read_text().splitlines() if line.startswith("# ")),
                 "mmw2s report")
    # markdown-it escaped every raw tag of the Markdown above: its output is safe to mark as such.
    html = environment().get_template("report.html").render(title=title, body=Markup(body), browsers=links)
    out = report_md.with_suffix(".html")
    out.write_text(html, encoding="utf-8")
    for path in linked:
        if path.resolve() not in seen:
            write_report_html(path, (), seen)
    return out


def bootstrap_browsers(variants: Iterable[Any]) -> list[tuple[str, Path]]:
    """Build the browser of every bootstrap stage of the experiment's variants, once per folder.

    Returns `(label, index.html)` pairs, e.g. `("seed 0 · bootstrap-1a2b3c4d", .../browse/index.html)`.
    """
    from mmw2s.browse.config import BrowseConfig
    from mmw2s.browse.site import build

    found: dict[Path, str] = {}
    for variant in variants:
        for seed, steps in variant.steps_by_seed.items():
            for step in steps:
                if step.stage == "bootstrap" and (Path(step.out) / "shards").is_dir() and Path(step.out) not in found:
                    found[Path(step.out)] = f"seed {seed} · {Path(step.out).name}"  # unique in a sweep
    browsers = []
    for folder, label in found.items():
        browsers.append((label, build(BrowseConfig(run=str(folder)))))
    return browsers


def write_experiment_html(report_md: Path, variants: Sequence[Any]) -> Path:
    """`report.html` of an experiment, with a browser of each bootstrap stage (built here)."""
    return write_report_html(report_md, bootstrap_browsers(variants))
