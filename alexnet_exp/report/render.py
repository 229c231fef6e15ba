"""A report as a list of blocks, written twice: report.md (tables as pipes, figures as links) and report.html
(self-contained, figures embedded). Text blocks are Markdown; the HTML renders them with Python-Markdown, so the
page shows bold, code and emphasis instead of `**` and backticks (issue 13)."""
from __future__ import annotations

import base64
import html
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import markdown
import pandas as pd


@dataclass
class Figure:
    path: Path
    caption: str


Block = Union[str, pd.DataFrame, Figure]  # a str is Markdown: "# ..." a heading, anything else a paragraph


def fmt(value) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _md_table(frame: pd.DataFrame) -> str:
    head = "| " + " | ".join(map(str, frame.columns)) + " |"
    rule = "|" + "---|" * len(frame.columns)
    rows = ["| " + " | ".join(fmt(v).replace("|", "/") for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([head, rule, *rows])


def render_markdown(blocks: list[Block]) -> str:
    out = []
    for block in blocks:
        if isinstance(block, pd.DataFrame):
            out.append(_md_table(block))
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
        if isinstance(block, pd.DataFrame):
            # Cells are data (a failure reason may hold a backtick): escaped, not read as Markdown.
            table = block.to_html(index=False, na_rep="", float_format=lambda v: f"{v:.4g}", border=0,
                                  classes="trials")
            body.append(f'<div class="scroll">{table}</div>')  # a wide table scrolls, the page does not
        elif isinstance(block, Figure):
            data = base64.b64encode(block.path.read_bytes()).decode()
            body.append(f'<figure><img src="data:image/png;base64,{data}" alt="{html.escape(block.path.name)}">'
                        f"<figcaption>{html.escape(block.caption)}</figcaption></figure>")
        else:
            body.append(md.reset().convert(block))
    style = ("body{font-family:system-ui,sans-serif;margin:2em auto;max-width:1200px;color:#222}"
             "div.scroll{overflow-x:auto}"
             "table.trials{border-collapse:collapse;font-size:13px}table.trials td,table.trials th"
             "{padding:3px 8px;border-bottom:1px solid #ddd;text-align:left}figure{margin:1.5em 0}"
             "img{max-width:100%}figcaption{color:#555;font-size:13px}"
             "code{background:#f3f3f3;padding:0 3px;border-radius:3px}")
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n")
