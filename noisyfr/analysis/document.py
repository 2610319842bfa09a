"""The report as a document: headings, paragraphs, tables and figures, rendered to Markdown
and to plain HTML (no JavaScript, no network)."""
from __future__ import annotations

import html
import math
import re

import numpy as np
import pandas as pd


def format_number(v) -> str:
    """A table cell: NaN as '-', whole numbers without decimals, else 3 decimals (1 above 100)."""
    if isinstance(v, (float, np.floating)):
        if math.isnan(v):
            return "-"
        if float(v).is_integer() and abs(v) >= 1:
            return str(int(v))
        return f"{v:.3f}" if abs(v) < 100 else f"{v:.1f}"
    return str(v)


def markdown_table(df: pd.DataFrame) -> str:
    """A GitHub-flavoured Markdown table of ``df`` (floats with 3 decimals, NaN as '-')."""
    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(format_number(v).replace("|", "/") for v in row) + " |")
    return "\n".join(lines)


class Document:
    """Blocks rendered to both Markdown and HTML."""

    def __init__(self):
        self.blocks: list[tuple] = []

    def h(self, level: int, text: str):
        self.blocks.append(("h", level, text))

    def p(self, text: str):
        self.blocks.append(("p", text))

    def table(self, df: pd.DataFrame, csv_name: str | None = None):
        self.blocks.append(("table", df, csv_name))

    def img(self, rel: str, caption: str):
        self.blocks.append(("img", rel, caption))

    def markdown(self) -> str:
        out = []
        for b in self.blocks:
            if b[0] == "h":
                out.append("#" * b[1] + " " + b[2])
            elif b[0] == "p":
                out.append(b[1])
            elif b[0] == "table":
                out.append(markdown_table(b[1]) if len(b[1]) else "_(empty)_")
                if b[2]:
                    out.append(f"CSV: [{b[2]}]({b[2]})")
            elif b[0] == "img":
                out.append(f"![{b[2]}]({b[1]})\n\n_{b[2]}_")
        return "\n\n".join(out) + "\n"

    def html(self, title: str) -> str:
        out = ["<!DOCTYPE html>", "<html><head><meta charset=\"utf-8\">", f"<title>{html.escape(title)}</title>",
               "<style>body{font-family:sans-serif;max-width:1200px;margin:auto;padding:1em}"
               "table{border-collapse:collapse;font-size:13px;margin:0.5em 0}"
               "td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}"
               "img{max-width:100%}figcaption{font-style:italic;font-size:13px}</style>",
               "</head><body>"]
        for b in self.blocks:
            if b[0] == "h":
                out.append(f"<h{b[1]}>{html.escape(b[2])}</h{b[1]}>")
            elif b[0] == "p":
                text = html.escape(b[1])
                text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
                text = re.sub(r"\*\*([^*]+)\*\*", r"<b>\1</b>", text)
                text = re.sub(r"\*([^*]+)\*", r"<i>\1</i>", text)
                out.append(f"<p>{text}</p>")
            elif b[0] == "table":
                out.append(b[1].to_html(index=False, na_rep="-", float_format=lambda v: format_number(float(v)),
                                        border=0) if len(b[1]) else "<p><i>(empty)</i></p>")
                if b[2]:
                    out.append(f"<p>CSV: <a href=\"{html.escape(b[2])}\">{html.escape(b[2])}</a></p>")
            elif b[0] == "img":
                out.append(f"<figure><img src=\"{html.escape(b[1])}\" alt=\"{html.escape(b[2])}\">"
                           f"<figcaption>{html.escape(b[2])}</figcaption></figure>")
        out.append("</body></html>")
        return "\n".join(out) + "\n"
