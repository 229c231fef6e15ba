"""A report as a list of blocks, written twice: report.md (tables as pipes, figures as links) and report.html
(self-contained, figures embedded). Text blocks are Markdown; the HTML renders them with Python-Markdown, so the
page shows bold, code and emphasis instead of `**` and backticks (issue 13)."""
from __future__ import annotations

import base64
import html
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import markdown
import pandas as pd


@dataclass
class Figure:
    path: Path
    caption: str


@dataclass
class Table:
    """A table with what a plain DataFrame cannot say: a link per row in some columns (a trial's MLflow run),
    and columns of prose that the page shows on a row of their own under each row, so that a long note
    neither widens the table nor wraps one word per line."""
    frame: pd.DataFrame
    links: dict[str, list[Optional[str]]] = field(default_factory=dict)  # column -> each row's URL, or None
    below: tuple[str, ...] = ()  # prose columns, shown under their row in the HTML page
    wrap: tuple[str, ...] = ()  # short prose columns, wrapped in their cells on the page


Block = Union[str, pd.DataFrame, Table, Figure]  # a str is Markdown: "# ..." a heading, anything else a paragraph


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md_cell(text: str, url: Optional[str]) -> str:
    text = text.replace("|", "/")
    return f"[{text}]({url})" if url and text else text


def _md_table(table: Table) -> str:
    frame = table.frame
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(_md_cell(fmt(v), table.links.get(col, [None] * (i + 1))[i])
                              for col, v in zip(frame.columns, row)) + " |"
            for i, row in enumerate(frame.itertuples(index=False))]
    return "\n".join([head, rule, *rows])


def _header_html(name: str) -> str:
    """A column name that may break after its dots, underscores and brackets (`weight_decay_scale`,
    `lr[optimizer=sgd]`): a header wider than its values widened the whole table."""
    return re.sub(r"([._\[=])", r"\1<wbr>", html.escape(str(name)))


def _html_table(table: Table) -> str:
    """Cells are data (a failure reason may hold a backtick or a tag): escaped, never read as Markdown or HTML."""
    frame = table.frame
    shown = [c for c in frame.columns if c not in table.below]
    numeric = {c for c in shown if pd.api.types.is_numeric_dtype(frame[c]) and not pd.api.types.is_bool_dtype(frame[c])}
    head = "".join(f'<th{" class=num" if c in numeric else ""}>{_header_html(c)}</th>' for c in shown)
    rows = []
    for i in range(len(frame)):
        cells = []
        for c in shown:
            text = html.escape(fmt(frame[c].iloc[i]))
            url = table.links.get(c, [None] * len(frame))[i]
            if url and text:
                text = f'<a href="{html.escape(url, quote=True)}">{text}</a>'
            kind = "num" if c in numeric else "wrap" if c in table.wrap else ""
            cells.append(f'<td{f" class={kind}" if kind else ""}>{text}</td>')
        rows.append(f"<tr>{''.join(cells)}</tr>")
        prose = [(c, fmt(frame[c].iloc[i])) for c in table.below if c in frame.columns and fmt(frame[c].iloc[i])]
        if prose:
            text = "; ".join(f"{html.escape(str(c))}: {html.escape(v)}" for c, v in prose)
            rows.append(f'<tr class=below><td colspan={len(shown)}>{text}</td></tr>')
    return f'<table class="trials"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, (pd.DataFrame, Table)):
            out.append(_md_table(block if isinstance(block, Table) else Table(block)))
        elif isinstance(block, Figure):
            out.append(f"![{block.caption}]({block.path.name})\n\n*{block.caption}*")
        else:
            out.append(block)
    return "\n\n".join(out) + "\n"


def _markdown_to_html() -> markdown.Markdown:
    """Python-Markdown with raw HTML switched off: the text holds values from the study (names, commands, failure
    reasons), which must show as text, never become markup. Deregistering these two processors is how
    Python-Markdown 3 escapes raw HTML (its old safe_mode is gone). nl2br: a line break in a block stays one."""
    md = markdown.Markdown(extensions=["nl2br"], output_format="html")
    md.preprocessors.deregister("html_block")
    md.inlinePatterns.deregister("html")
    return md


def render_html(blocks: list[Block], title: str) -> str:
    """One file with the figures embedded (data URIs), so it can be mailed or archived as it is."""
    md = _markdown_to_html()
    body = []
    for block in blocks:
        if isinstance(block, (pd.DataFrame, Table)):
            table = _html_table(block if isinstance(block, Table) else Table(block))
            body.append(f'<div class="scroll">{table}</div>')  # a table too wide scrolls, the page does not
        elif isinstance(block, Figure):
            data = base64.b64encode(block.path.read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.path.name)}">'
                        f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        else:
            body.append(md.reset().convert(block))
    # The page is as wide as a 1400 px window allows, for the trials table (one column per parameter); prose
    # keeps a readable line length.
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;padding:0 1em;max-width:1340px;color:#222}"
             "p{max-width:1100px}"
             "div.scroll{overflow-x:auto}"
             "table.trials{border-collapse:collapse;font-size:12px}table.trials td,table.trials th"
             "{padding:3px 5px;border-bottom:1px solid #ddd;text-align:left;vertical-align:bottom}"
             "table.trials td{white-space:nowrap}table.trials .num{text-align:right}"
             "table.trials td.wrap{white-space:normal;min-width:5em}"
             "table.trials tr.below td{white-space:normal;color:#555;border-top:0;padding-top:0}"
             "table.trials tr:has(+ tr.below) td{border-bottom:0}"
             "figure{margin:1.5em 0}"
             "img{max-width:100%}figcaption{color:#555;font-size:13px}"
             "code{background:#f3f3f3;padding:0 3px;border-radius:3px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
