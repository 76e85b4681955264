"""Report Markdown rendered from Jinja2 templates (`templates/*.md.j2`), so that each template reads
as the page it makes.

Whitespace is the template's own: block tags on their own line leave no line behind
(`trim_blocks`, `lstrip_blocks`) and a template's last newline is kept (`keep_trailing_newline`).
Nothing is escaped (the output is Markdown, made HTML-safe by `report.html`). Templates format
numbers with the `fmt` filter (`{{ value | fmt }}`, `{{ spread | fmt(pct=False) }}`: a `MeanStd` or a
`Spread` shows as `mean ± std`; `{{ value | na }}` shows None as `n/a`) and build tables with `table(header, rows)`.
"""
from __future__ import annotations

import functools
from typing import Any

from mmw2s.report.tables import fmt, fmt_spread, markdown_table, or_na, signed


def _fmt(value: Any, pct: bool = True) -> str:
    """A plain number (`fmt`) or a mean over seeds with its std (`fmt_spread`)."""
    return fmt(value, pct=pct) if value is None or isinstance(value, (int, float)) else fmt_spread(value, pct)


@functools.lru_cache(maxsize=1)
def environment():
    """The Jinja2 environment of every report page: templates from this package, nothing escaped."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("mmw2s.report", "templates"), autoescape=False,
                             undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
                             trim_blocks=True, lstrip_blocks=True)
    env.filters.update(fmt=_fmt, signed=signed, na=or_na)
    env.globals.update(table=markdown_table)
    return env


def render(template: str, **context: Any) -> str:
    """The Markdown of `templates/TEMPLATE` with `context`."""
    return environment().get_template(template).render(**context)
