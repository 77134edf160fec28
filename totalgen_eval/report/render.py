"""The report's content as a list of blocks, rendered to self-contained HTML or to Markdown.

Every text that reaches the output is escaped here (tables come from files users can edit).
"""
from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass
from typing import Mapping, Sequence, Union

import pandas as pd


@dataclass(frozen=True)
class Heading:
    text: str
    level: int = 2


@dataclass(frozen=True)
class Paragraph:
    text: str


@dataclass(frozen=True)
class Notice:
    """A prominent warning box (phantom data, overall-only comparison)."""

    text: str


@dataclass(frozen=True)
class Items:
    items: tuple[str, ...]


@dataclass(frozen=True)
class Table:
    """A table of display strings; ``collapsed`` tables sit in an HTML <details> element."""

    frame: pd.DataFrame
    caption: str = ""
    collapsed: bool = False


@dataclass(frozen=True)
class FigureRef:
    """A figure saved as ``figures/<name>.png`` (and .svg)."""

    name: str
    caption: str


Block = Union[Heading, Paragraph, Notice, Items, Table, FigureRef]

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Helvetica,Arial,sans-serif;max-width:1200px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em;border-bottom:2px solid #2f4b7c}h2{font-size:1.3em;margin-top:1.8em;color:#2f4b7c}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}th,td{border:1px solid #ccc;padding:.2em .5em;
text-align:left}th{background:#eef1f5}td.num{text-align:right}
.notice{background:#fff3cd;border:2px solid #d39e00;padding:.6em 1em;font-weight:600;margin:1em 0}
figure{margin:1em 0}figure img{max-width:100%;height:auto;border:1px solid #ddd}figcaption{font-size:.85em;color:#555}
.v-eq{background:#d9f0d9}.v-diff{background:#f8d4d4}.v-few,.v-na{background:#eee}.v-ns{background:#fdf3dc}
details summary{cursor:pointer;color:#2f4b7c}
"""
VERDICT_CLASSES = (("equivalent", "v-eq"), ("differs", "v-diff"), ("too few", "v-few"), ("no data", "v-na"),
                   ("within margin", "v-ns"), ("outside margin", "v-ns"))
_NUMBER = re.compile(r"^[+-]?(\d|\.\d)[\d.,eE+-]*%?$")


def _cell_class(text: str) -> str:
    for prefix, cls in VERDICT_CLASSES:
        if text.startswith(prefix):
            return f' class="{cls}"'
    return ' class="num"' if _NUMBER.match(text) else ""


def _html_table(block: Table) -> str:
    esc = html.escape
    head = "".join(f"<th>{esc(str(c))}</th>" for c in block.frame.columns)
    body = "\n".join("<tr>" + "".join(f"<td{_cell_class(str(v))}>{esc(str(v))}</td>" for v in row) + "</tr>"
                     for row in block.frame.itertuples(index=False))
    table = f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>"
    if block.collapsed:
        return f"<details><summary>{esc(block.caption or 'table')}</summary>\n{table}\n</details>"
    caption = f"<p><em>{esc(block.caption)}</em></p>\n" if block.caption else ""
    return caption + table


def render_html(title: str, blocks: Sequence[Block], images: Mapping[str, bytes]) -> str:
    """A self-contained HTML page: inline CSS, each figure's PNG (``images[name]``) embedded as base64."""
    esc = html.escape
    parts = ["<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
             f"<title>{esc(title)}</title>", f"<style>{CSS}</style>", "</head>", "<body>", f"<h1>{esc(title)}</h1>"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{esc(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            parts.append(f"<p>{esc(b.text)}</p>")
        elif isinstance(b, Notice):
            parts.append(f'<div class="notice">{esc(b.text)}</div>')
        elif isinstance(b, Items):
            parts.append("<ul>" + "".join(f"<li>{esc(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            parts.append(_html_table(b))
        elif isinstance(b, FigureRef):
            data = base64.b64encode(images[b.name]).decode("ascii")
            parts.append(f'<figure id="fig-{esc(b.name)}"><img src="data:image/png;base64,{data}" '
                         f'alt="{esc(b.caption)}"><figcaption>{esc(b.caption)} '
                         f"(figures/{esc(b.name)}.png, .svg)</figcaption></figure>")
    parts += ["</body>", "</html>", ""]
    return "\n".join(parts)


_MD_SPECIAL = re.compile(r"([\\|<>*`\[\]])")


def md_escape(text: str) -> str:
    """Backslash-escape the characters that would change Markdown structure (pipes, HTML, emphasis, links)."""
    return _MD_SPECIAL.sub(r"\\\1", str(text)).replace("\n", " ")


def _md_table(block: Table) -> str:
    cols = [md_escape(c) for c in block.frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    lines += ["| " + " | ".join(md_escape(v) for v in row) + " |" for row in block.frame.itertuples(index=False)]
    caption = f"*{md_escape(block.caption)}*\n\n" if block.caption else ""
    return caption + "\n".join(lines)


def render_markdown(title: str, blocks: Sequence[Block]) -> str:
    """The same content as Markdown, figures linked as ``figures/<name>.png``."""
    parts = [f"# {md_escape(title)}"]
    for b in blocks:
        if isinstance(b, Heading):
            parts.append(f"{'#' * b.level} {md_escape(b.text)}")
        elif isinstance(b, Paragraph):
            parts.append(md_escape(b.text))
        elif isinstance(b, Notice):
            parts.append(f"> **{md_escape(b.text)}**")
        elif isinstance(b, Items):
            parts.append("\n".join(f"- {md_escape(i)}" for i in b.items))
        elif isinstance(b, Table):
            parts.append(_md_table(b))
        elif isinstance(b, FigureRef):
            parts.append(f"![{md_escape(b.caption)}](figures/{b.name}.png)\n\n*{md_escape(b.caption)}* "
                         f"([SVG](figures/{b.name}.svg))")
    return "\n\n".join(parts) + "\n"
