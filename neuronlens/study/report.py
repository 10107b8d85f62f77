"""The HTML report of a study: Plotly figures (JavaScript inlined once) and tables."""

from __future__ import annotations

import html
from pathlib import Path

from neuronlens.io import write_text_atomic


def write_report(path: Path, summary: dict, figures: dict) -> None:
    """One standalone HTML page: Plotly figures (JS inlined once) and the summary tables."""
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>neuronlens report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
        f"<h1>neuronlens study: {html.escape(summary['model'])} on {html.escape(summary['task'])}</h1>",
    ]
    for i, (title, fig) in enumerate(figures.items()):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    for key, head in (("prompt_accuracy", ("seed", "accuracy")), ("pruning", ("", ""))):
        parts.append(f"<h2>{key.replace('_', ' ')}</h2><table>")
        if any(head):
            parts.append(f"<tr><th>{head[0]}</th><th>{head[1]}</th></tr>")
        parts += [
            f"<tr><th>{html.escape(str(k))}</th><td>{v:.4f}</td></tr>"
            if isinstance(v, float)
            else f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in summary[key].items()
        ]
        parts.append("</table>")
    rows = summary["suppression"]
    parts.append(
        "<h2>suppression</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in rows[0]) + "</tr>"
    )
    parts += [
        "<tr>"
        + "".join(
            f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{v}</td>" for v in r.values()
        )
        + "</tr>"
        for r in rows
    ]
    parts.append("</table><h2>steps</h2><table><tr><th>step</th><th>seconds</th><th></th></tr>")
    parts += [
        f"<tr><th>{step}</th><td>{v['seconds']}</td>"
        f"<td>{'loaded from disk' if v['loaded'] else 'computed'}</td></tr>"
        for step, v in summary["steps"].items()
    ]
    parts.append("</table></body></html>")
    write_text_atomic(path, "\n".join(parts))
