"""The HTML report of a study: one standalone page of Plotly figures (JavaScript inlined
once) and tables, in the order given."""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from pathlib import Path

from neuronlens.io import write_text_atomic

_STYLE = (
    "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:"
    "collapse}td,th{border:1px solid #ccc;padding:3px 8px}</style>"
)


def _cell(v, tag: str = "td") -> str:
    text = f"{v:.4f}" if isinstance(v, float) else html.escape(str(v))
    return f"<{tag}>{text}</{tag}>"


def table_html(rows: Sequence[Mapping] | Mapping) -> str:
    """A list of dicts as a table with a header row; a dict as two columns."""
    if isinstance(rows, Mapping):
        return (
            "<table>"
            + "".join(f"<tr>{_cell(k, 'th')}{_cell(v)}</tr>" for k, v in rows.items())
            + "</table>"
        )
    if not rows:
        return "<p>(empty)</p>"
    cols = list(rows[0])
    head = "<tr>" + "".join(_cell(c, "th") for c in cols) + "</tr>"
    body = "".join("<tr>" + "".join(_cell(r.get(c, "")) for c in cols) + "</tr>" for r in rows)
    return f"<table>{head}{body}</table>"


def steps_rows(steps: Mapping[str, dict]) -> list[dict]:
    """The steps table: seconds, and whether each was reused or computed (and why)."""
    return [
        {"step": name, "seconds": v["seconds"],
         "": "loaded from disk" if v["loaded"] else f"computed ({v.get('why') or 'new'})"}
        for name, v in steps.items()
    ]  # fmt: skip


def write_page(path: Path, title: str, sections: Sequence[tuple[str, object]]) -> None:
    """``sections``: ``(heading, content)`` pairs; content is a Plotly figure, a table (a
    list of dicts, or a dict) or a string of text."""
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        _STYLE + "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    plotly_js = True
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if hasattr(content, "to_html"):
            parts.append(content.to_html(full_html=False, include_plotlyjs=plotly_js))
            plotly_js = False
        elif isinstance(content, str):
            parts.append(f"<p>{html.escape(content)}</p>")
        else:
            parts.append(table_html(content))
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))


def write_report(path: Path, summary: dict, figures: dict) -> None:
    """The single-task study's page: its figures, prompt accuracy, pruning, suppression and
    the steps (reused or computed)."""
    accuracy = {f"seed {k}": v for k, v in summary["prompt_accuracy"].items()}
    sections = [
        *figures.items(),
        ("prompt accuracy", accuracy),
        ("pruning", summary["pruning"]),
        ("suppression", summary["suppression"]),
        ("steps", steps_rows(summary["steps"])),
    ]
    write_page(path, f"neuronlens study: {summary['model']} on {summary['task']}", sections)
