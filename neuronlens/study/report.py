"""The HTML report of a study: one standalone page of Plotly figures (JavaScript inlined
once) and tables, in the order given."""

from __future__ import annotations

import html
import importlib.util
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from neuronlens.errors import NeuronLensError
from neuronlens.io import atomic_dir, write_text_atomic

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
        {"step": name, "seconds": v["seconds"], "computed in (s)": "" if v.get("computed_seconds") is None else v["computed_seconds"],
         "": "loaded from disk" if v["loaded"] else f"computed ({v.get('why') or 'new'})"}
        for name, v in steps.items()
    ]  # fmt: skip


PLOTLY_JS = ("inline", "cdn")
"""Where a report's Plotly JavaScript comes from: written into the page (about 4.7 MB, works
offline) or loaded from Plotly's CDN when the page is opened (a small page, needs a network)."""


def check_plotly_js(plotly_js: str) -> None:
    if plotly_js not in PLOTLY_JS:
        raise NeuronLensError(f"plotly_js must be one of {PLOTLY_JS}, got {plotly_js!r}")


IMAGE_FORMATS = ("png", "svg")
"""The still images a study can write of its figures (``images=``), beside the report."""


def check_images(images: str | None) -> None:
    """Refuse an unknown image format, or images without kaleido, before a study starts."""
    if images is None:
        return
    if images not in IMAGE_FORMATS:
        raise NeuronLensError(f"images must be one of {IMAGE_FORMATS} or None, got {images!r}")
    if importlib.util.find_spec("kaleido") is None:
        raise NeuronLensError(
            "still images of the figures need kaleido (and Chrome or Chromium): "
            "pip install 'neuronlens[images]', or leave images out"
        )


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()[:80] or "figure"


def write_images(folder: Path, sections: Sequence[tuple[str, object]], images: str) -> list[Path]:
    """Every figure of ``sections`` as ``folder/NN-heading.<images>`` (numbered in page
    order); returns the paths. The folder is replaced as a whole, once every image is
    drawn: it never holds images of an earlier report."""
    check_images(images)
    names = []
    figures = [(h, c) for h, c in sections if hasattr(c, "to_image")]
    with atomic_dir(folder) as tmp:
        for i, (heading, fig) in enumerate(figures, start=1):
            names.append(f"{i:02d}-{_slug(heading)}.{images}")
            (tmp / names[-1]).write_bytes(_draw(fig, heading, images))
    return [folder / n for n in names]


def _draw(fig, heading: str, fmt: str, tries: int = 2) -> bytes:
    """One figure drawn by kaleido, without MathJax (the figures use none, and kaleido's
    default fetches it from a CDN); a browser that failed once is given a second try."""
    import kaleido

    failed: Exception | None = None
    for _ in range(tries):
        try:
            return kaleido.calc_fig_sync(
                fig.to_dict(), opts={"format": fmt, "width": 1000, "height": 600},
                kopts={"mathjax": False},
            )  # fmt: skip
        except Exception as err:  # kaleido's own errors: no browser, a browser that failed
            failed = err
    raise NeuronLensError(
        f"could not draw {heading!r} as {fmt} ({type(failed).__name__}: {failed}); "
        "kaleido needs Chrome or Chromium (kaleido.get_chrome_sync() installs one)"
    )


def write_page(
    path: Path,
    title: str,
    sections: Sequence[tuple[str, object]],
    *,
    plotly_js: str = "inline",
    images: str | None = None,
) -> None:
    """``sections``: ``(heading, content)`` pairs; content is a Plotly figure, a table (a
    list of dicts, or a dict) or a string of text. ``plotly_js``: see :data:`PLOTLY_JS`;
    ``images="png"`` or ``"svg"``: every figure also as a still image in ``figures/`` beside
    the page (:func:`write_images`)."""
    check_plotly_js(plotly_js)
    if images is not None:  # (write_images checks the format and kaleido first)
        write_images(path.parent / "figures", sections, images)
    parts = [
        f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>",
        _STYLE + "</head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    js: bool | str = True if plotly_js == "inline" else "cdn"
    for heading, content in sections:
        parts.append(f"<h2>{html.escape(heading)}</h2>")
        if hasattr(content, "to_html"):
            parts.append(content.to_html(full_html=False, include_plotlyjs=js))
            js = False
        elif isinstance(content, str):
            parts.append(f"<p>{html.escape(content)}</p>")
        else:
            parts.append(table_html(content))
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts))


def write_report(
    path: Path, summary: dict, figures: dict, *, plotly_js: str = "inline", images=None
) -> None:
    """The single-task study's page: its figures, prompt accuracy, pruning, suppression and
    the steps (reused or computed)."""
    accuracy = {f"seed {k}": v for k, v in summary["prompt_accuracy"].items()}
    pred = summary["predictivity"]
    read = {
        "positions read": pred.get("positions"),
        "chosen": "by hand (config positions)" if pred.get("positions_asked") else
                  "where the head decides (positions = auto)",
        "the head decides at": pred.get("head_decides_at"),
    }  # fmt: skip
    data = {
        "train examples": summary.get("n_train"),
        f"eval examples ({summary.get('eval_split')})": summary.get("n_eval"),
        "validation": f"{summary['validation']['n']} ({summary['validation']['from']})",
        **{f"{k} (asked)": v["asked"] for k, v in summary.get("sizes", {}).items()},
    }
    sections = [
        ("data", data),
        *figures.items(),
        ("predictivity", read),
        ("prompt accuracy", accuracy),
        ("pruning", summary["pruning"]),
        ("suppression", summary["suppression"]),
        ("steps", steps_rows(summary["steps"])),
    ]
    title = f"neuronlens study: {summary['model']} on {summary['task']}"
    write_page(path, title, sections, plotly_js=plotly_js, images=images)
