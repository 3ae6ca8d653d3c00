"""How the report shows numbers and tables: pandas Styler HTML with no index column, never cut text, every number
with its unit and a precision that suits it (loads as 4, not 4.0; success as 100 %, not 1.0)."""

from __future__ import annotations

import html
import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import pandas as pd

MISSING = "—"


def _missing(value: object) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or value is pd.NA


def number(value: object, decimals: int | None = None) -> str:
    """A number with thousands separators: whole numbers without decimals, others to a precision that suits them."""
    if _missing(value):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, int | float):
        return str(value)
    value = float(value)
    if decimals is None:
        magnitude = abs(value)
        decimals = 0 if value.is_integer() or magnitude >= 100 else 1 if magnitude >= 10 else 2
    return f"{value:,.{decimals}f}"


def percent(fraction: object) -> str:
    """A fraction as a percentage: 1.0 -> '100 %', 0.0375 -> '3.8 %'."""
    if _missing(fraction):
        return MISSING
    value = 100 * float(fraction)  # type: ignore[arg-type]
    return f"{value:.0f} %" if value.is_integer() else f"{value:.1f} %"


def signed_percent(value: object) -> str:
    """A difference already in percent: -1.28 -> '−1.3 %'."""
    if _missing(value):
        return MISSING
    return f"{float(value):+.1f} %".replace("-", "−")  # type: ignore[arg-type]


def whole(value: object) -> str:
    return MISSING if _missing(value) else f"{float(value):,.0f}"  # type: ignore[arg-type]


def formatter_for(column: str) -> Callable[[object], str] | None:
    """The format of a column, read from its name and unit: '(ms)', '(tok/s)', 'MiB', '%', 'success', 'error rate'."""
    name = column.lower()
    if name == "success" or name.startswith("error rate") or name.endswith("share") or name.endswith("over server"):
        return percent
    if name.endswith("%") or name.endswith("(%)"):
        return signed_percent
    if "mib" in name or name in ("rank", "requests", "errors", "prompts", "rounds") or "(j)" in name:
        return whole
    if re.search(r"\((ms|tok/s|req/s|s|tokens)\)", name) or name.endswith("_ms") or name.endswith("tok_s"):
        return number
    return None


def _cell(value: object) -> str:
    if _missing(value):
        return MISSING
    if isinstance(value, float):
        return number(value)
    return str(value)


def table_html(frame: pd.DataFrame, caption: str = "", css_class: str = "report-table", escape: bool = True) -> str:
    """A frame as an HTML table through pandas' Styler: the index hidden, each column formatted by its name, full text.
    `escape=False` keeps HTML in the cells (the index's links)."""
    if frame.empty:
        return ""
    frame = frame.reset_index(drop=not _named_index(frame))
    formats = {column: formatter_for(str(column)) or _cell for column in frame.columns}
    styler = frame.style.hide(axis="index").format(formats, na_rep=MISSING, escape="html" if escape else None)
    styler = styler.set_table_attributes(f'class="{css_class}"')
    numeric = [c for c in frame.columns if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])]
    if numeric:
        styler = styler.set_properties(subset=numeric, **{"text-align": "right"})
    if caption:
        styler = styler.set_caption(html.escape(caption))
    return f'<div class="table-scroll">{styler.to_html()}</div>'


def _named_index(frame: pd.DataFrame) -> bool:
    return any(name is not None for name in frame.index.names)


@dataclass
class Section:
    """One section of the report: a title, its parts in HTML, and a sentence or two around them. Jupyter shows it
    through `_repr_html_`; the report's export keeps that HTML as it is."""

    title: str
    parts: list[str] = field(default_factory=list)
    slug: str = ""

    def __post_init__(self) -> None:
        self.slug = self.slug or re.sub(r"[^a-z0-9]+", "-", self.title.lower()).strip("-")

    def add(self, part: str | object) -> Section:
        """Append HTML, or anything with `_repr_html_` (a Chart)."""
        self.parts.append(part._repr_html_() if hasattr(part, "_repr_html_") else str(part))
        return self

    def text(self, *sentences: str) -> Section:
        for sentence in sentences:
            if sentence:
                self.parts.append(f"<p>{html.escape(sentence)}</p>")
        return self

    def _repr_html_(self) -> str:
        return (
            f'<section class="report-section" id="{self.slug}"><h2>{html.escape(self.title)}</h2>'
            + "".join(self.parts)
            + "</section>"
        )


def definition_list(pairs: Iterable[tuple[str, str]]) -> str:
    items = "".join(f"<dt>{html.escape(k)}</dt><dd>{html.escape(v)}</dd>" for k, v in pairs)
    return f'<dl class="run-facts">{items}</dl>'
