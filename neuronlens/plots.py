"""Every interactive Plotly figure of neuronlens, in one place.

* :func:`neuron_heatmap` - any :class:`~neuronlens.neurons.NeuronScores` as a layer x neuron
  heatmap: hover shows stack, layer, neuron, score and rank; the top-k neurons are outlined
  (the legend says which k); ``sort=True`` orders neurons by score within each layer; T5's
  encoder and decoder stacks side by side; wide layers binned (max of each bin, hover names
  the bin's best neuron; the x axis counts neurons); ``scale="log"`` or ``"rank"`` for
  scores that a few neurons dominate (attribution).
* :func:`suppression_figure`, :func:`matrix_figure`, :func:`scatter_figure`,
  :func:`distributions_figure`, :func:`search_figure` - what the study results'
  ``figure()`` methods draw.

``fig.write_html(path)`` saves a standalone page (Plotly's JavaScript included).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go
from plotly.colors import qualitative
from plotly.subplots import make_subplots

from neuronlens.errors import NeuronLensError
from neuronlens.neurons import NeuronScores

MAX_COLUMNS = 1024
SCALES = ("linear", "log", "rank")


def sample_sd(values) -> float:
    """The sample standard deviation (n - 1 in the denominator; 0 for a single value): the
    spread reported over seeds and over random controls."""
    values = np.asarray(values, dtype=float)
    return float(values.std(ddof=1)) if values.size > 1 else 0.0


def _colour_values(scores: NeuronScores, scale: str) -> dict[str, np.ndarray]:
    """What the colours show per site: the scores, their log10, or their rank as a share
    (1 = the best neuron of the whole model, 0 = the worst)."""
    if scale not in SCALES:
        raise NeuronLensError(f"scale must be one of {SCALES}, got {scale!r}")
    if scale == "rank":
        ranks = scores.ranks()
        n = scores.n_neurons
        return {
            s.name: 1.0 - (ranks[s.name].double().numpy() - 1) / max(1, n - 1) for s in scores.sites
        }
    values = {s.name: scores[s].double().numpy() for s in scores.sites}
    if scale == "log":
        low = min(float(v.min()) for v in values.values())
        if low <= 0:
            raise NeuronLensError(
                f"scale='log' needs positive scores; the lowest is {low:.3g} (use scale='rank')"
            )
        return {k: np.log10(v) for k, v in values.items()}
    return values


def _top_set(scores: NeuronScores, top_k, top_percent, per_layer: bool):
    if top_k is None and top_percent is None:
        return None, ""
    top = scores.top(k=top_k, percent=top_percent, per_layer=per_layer)
    what = f"top {top_k}" if top_k is not None else f"top {top_percent:g} %"
    return top, f"{what} {'per layer' if per_layer else 'overall'} ({top.count} neurons)"


def _stack_grid(scores, stack, colour, top, sort, max_columns):
    """``(z, text, x, marked (x, y))`` of one stack's heatmap."""
    sites = [s for s in scores.sites if s.stack == stack]
    width = max(s.width for s in sites)
    per_bin = int(np.ceil(width / min(width, max_columns)))
    bins = int(np.ceil(width / per_bin))
    z = np.full((len(sites), bins), np.nan)
    text = np.full((len(sites), bins), "", dtype=object)
    ranks = scores.ranks()
    marked = []
    for row, site in enumerate(sites):
        vals, c = scores[site].double().numpy(), colour[site.name]
        order = np.argsort(-vals, kind="stable") if sort else np.arange(site.width)
        chosen = set(top.indices[site.name].tolist()) if top is not None else set()
        for b in range(bins):
            idx = order[b * per_bin : (b + 1) * per_bin]
            if idx.size == 0:
                continue
            best = idx[np.argmax(vals[idx])]
            z[row, b] = c[best]
            span = f"neurons {idx.min()}-{idx.max()} (best {best})" if per_bin > 1 and not sort else f"neuron {best}"  # fmt: skip
            text[row, b] = (
                f"{stack} layer {site.layer}<br>{span}<br>score {vals[best]:.4g}"
                f"<br>rank {int(ranks[site.name][best])} of {scores.n_neurons}"
            )
            if chosen.intersection(idx.tolist()):
                marked.append((b * per_bin, site.layer))
    return z, text, [b * per_bin for b in range(bins)], marked, per_bin, sites


def neuron_heatmap(
    scores: NeuronScores,
    *,
    top_k: int | None = None,
    top_percent: float | None = None,
    per_layer: bool = False,
    sort: bool = False,
    scale: str = "linear",
    max_columns: int = MAX_COLUMNS,
    colorscale: str = "Viridis",
    title: str | None = None,
):
    """A layer x neuron heatmap of ``scores`` (a Plotly ``Figure``); ``top_k`` /
    ``top_percent`` (over the whole model, or ``per_layer``) outline the top neurons.

    Examples:
        >>> neuron_heatmap(skill, top_percent=1).write_html("skill.html")  # doctest: +SKIP
        >>> neuron_heatmap(attr, scale="rank")                             # doctest: +SKIP
    """
    if max_columns < 1:
        raise NeuronLensError(f"max_columns must be >= 1, got {max_columns}")
    stacks = list(dict.fromkeys(s.stack for s in scores.sites))
    colour = _colour_values(scores, scale)
    top, top_name = _top_set(scores, top_k, top_percent, per_layer)
    fig = make_subplots(rows=1, cols=len(stacks), horizontal_spacing=0.08,
                        subplot_titles=stacks if len(stacks) > 1 else None)  # fmt: skip
    zmin = min(float(np.nanmin(v)) for v in colour.values())
    zmax = max(float(np.nanmax(v)) for v in colour.values())
    bar = {"linear": scores.method, "log": f"log10 {scores.method}", "rank": "rank (1 = best)"}
    for col, stack in enumerate(stacks, start=1):
        z, text, x, marked, per_bin, sites = _stack_grid(
            scores, stack, colour, top, sort, max_columns
        )
        fig.add_trace(
            go.Heatmap(z=z, x=x, y=[s.layer for s in sites], text=text,
                       hovertemplate="%{text}<extra></extra>", colorscale=colorscale, zmin=zmin,
                       zmax=zmax, showscale=col == len(stacks), colorbar={"title": bar[scale]}),
            row=1, col=col,
        )  # fmt: skip
        if marked:
            mx, my = zip(*marked, strict=True)
            fig.add_trace(
                go.Scatter(x=list(mx), y=list(my), mode="markers", name=top_name,
                           showlegend=col == 1, hoverinfo="skip",
                           marker={"symbol": "square-open", "size": 9, "color": "red",
                                   "line": {"width": 2}}),
                row=1, col=col,
            )  # fmt: skip
        xlabel = "neurons, by score within the layer" if sort else "neuron"
        if per_bin > 1:
            xlabel += f" (each column: the best of {per_bin})"
        layers = [s.layer for s in sites]  # layer 0 on top, no empty rows
        fig.update_xaxes(title_text=xlabel, row=1, col=col)
        fig.update_yaxes(title_text="layer", range=[max(layers) + 0.5, min(layers) - 0.5],
                         dtick=1, row=1, col=col)  # fmt: skip
    n_rows = max(len([s for s in scores.sites if s.stack == st]) for st in stacks)
    fig.update_layout(
        title=title or f"{scores.method} of {scores.model}" + (f" on {scores.task}" if scores.task else ""),
        template="plotly_white",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1},
        height=max(300, 28 * n_rows + 150),
    )  # fmt: skip
    return fig


def suppression_figure(
    percents: Sequence[float],
    top: Sequence[float],
    random: Sequence[Sequence[float]],
    *,
    method: str,
    dataset: str,
    per_layer: bool,
    ablation: str,
):
    """Accuracy of the top neurons switched off against the random controls (mean +- sample
    sd); the accuracy axis spans at least 0.1, so a one-example difference does not look
    large."""
    mean = np.array([np.mean(r) for r in random])
    std = np.array([sample_sd(r) for r in random])
    percents = list(percents)
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=percents + percents[::-1],
                             y=list(mean + std) + list((mean - std)[::-1]), fill="toself",
                             mode="lines", line={"width": 0}, fillcolor="rgba(120,120,120,0.25)",
                             name="random ± std", hoverinfo="skip"))  # fmt: skip
    fig.add_trace(go.Scatter(x=percents, y=mean, mode="lines+markers", name="random neurons",
                             line={"color": "gray", "dash": "dash"}))  # fmt: skip
    fig.add_trace(go.Scatter(x=percents, y=list(top), mode="lines+markers",
                             name=f"top {method} neurons", line={"color": "crimson"}))  # fmt: skip
    where = "per layer" if per_layer else "over the whole model"
    values = [*top, *(mean + std), *(mean - std)]
    mid, half = (max(values) + min(values)) / 2, max((max(values) - min(values)) / 2, 0.05)
    fig.update_layout(
        title=f"Suppression on {dataset}: top neurons {where}, {ablation}",
        xaxis_title="% neurons switched off",
        yaxis_title="accuracy",
        yaxis_range=[mid - 1.1 * half, mid + 1.1 * half],
        template="plotly_white",
    )
    return fig


def matrix_figure(data: Mapping[str, Mapping[str, float]], title: str, xlabel: str, ylabel: str):
    """A labelled heatmap of ``data[row][column]`` (cross suppression, specificity, transfer)."""
    rows = list(data)
    cols = sorted(
        {c for r in data.values() for c in r},
        key=lambda c: (c not in rows, rows.index(c) if c in rows else 0, c),
    )
    z = [[data[r].get(c, np.nan) for c in cols] for r in rows]
    fig = go.Figure(
        go.Heatmap(z=z, x=cols, y=rows, colorscale="Viridis",
                   text=[[f"{v:.3f}" for v in row] for row in z], texttemplate="%{text}",
                   hovertemplate="%{y} → %{x}: %{z:.4f}<extra></extra>")
    )  # fmt: skip
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, template="plotly_white")
    return fig


def scatter_figure(x: np.ndarray, y: np.ndarray, title: str, xlabel: str, ylabel: str):
    """One point per neuron (e.g. clean vs adversarial predictivity)."""
    fig = go.Figure(go.Scattergl(x=x, y=y, mode="markers", marker={"size": 3, "opacity": 0.4}))
    fig.update_layout(title=title, xaxis_title=xlabel, yaxis_title=ylabel, template="plotly_white")
    return fig


def distributions_figure(
    model_accuracy: Mapping[str, float],
    predictivity: Mapping[str, np.ndarray],
    neuron_accuracy: Mapping[str, np.ndarray],
):
    """Per dataset: model accuracy bars on top of predictivity (and signed neuron accuracy)
    box plots (robustness paper Fig. 2, 9)."""
    names = list(predictivity)
    cols = 2 if neuron_accuracy else 1
    fig = make_subplots(
        rows=2, cols=cols, row_heights=[0.3, 0.7], vertical_spacing=0.16, horizontal_spacing=0.1,
        specs=[[{"colspan": cols}] + [None] * (cols - 1), [{}] * cols],
        subplot_titles=["model accuracy", "neuron predictivity"]
        + (["neuron accuracy (signed; 0.5 = chance)"] if neuron_accuracy else []),
    )  # fmt: skip
    fig.add_trace(go.Bar(x=names, y=[model_accuracy.get(n, np.nan) for n in names],
                         marker_color="steelblue", showlegend=False), row=1, col=1)  # fmt: skip
    palette = qualitative.Plotly
    for i, n in enumerate(names):
        boxes = [(1, predictivity[n])] + ([(2, neuron_accuracy[n])] if n in neuron_accuracy else [])
        for col, values in boxes:
            fig.add_trace(go.Box(y=values, name=n, boxpoints=False, showlegend=False,
                                 marker_color=palette[i % len(palette)]), row=2, col=col)  # fmt: skip
    fig.update_yaxes(title_text="accuracy", row=1, col=1)
    fig.update_yaxes(title_text="predictivity", row=2, col=1)
    if neuron_accuracy:
        fig.update_yaxes(title_text="accuracy", row=2, col=2)
    fig.update_layout(title="Predictivity and neuron-accuracy distributions",
                      template="plotly_white", height=600)  # fmt: skip
    return fig


def search_figure(steps, speedups: Sequence[float], base_accuracy: float, psi: float, method: str):
    """Accuracy vs FLOP-ceiling speed-up of every kept ratio a pruning search tried
    (``steps``: objects with ``kept_ratio``, ``n_kept``, ``accuracy``, ``accepted``)."""
    fig = go.Figure()
    fig.add_trace(
        go.Scatter(
            x=list(speedups), y=[s.accuracy for s in steps], mode="markers+lines",
            name="kept ratios tried", showlegend=False, line={"color": "lightgray"},
            marker={"size": 10, "color": ["seagreen" if s.accepted else "crimson" for s in steps]},
            text=[f"kept {s.kept_ratio:.0%} ({s.n_kept} neurons), "
                  f"{'accepted' if s.accepted else 'rejected'}" for s in steps],
            hovertemplate="%{text}<br>speed-up ceiling %{x:.2f}x<br>accuracy %{y:.4f}<extra></extra>",
        )
    )  # fmt: skip
    for accepted, color in ((True, "seagreen"), (False, "crimson")):  # legend entries only
        fig.add_trace(go.Scatter(x=[None], y=[None], mode="markers",
                                 marker={"size": 10, "color": color},
                                 name="accepted" if accepted else "rejected"))  # fmt: skip
    fig.add_hline(y=base_accuracy, line_dash="dot", line_color="gray",
                  annotation_text=f"unpruned {base_accuracy:.3f}")  # fmt: skip
    fig.add_hline(y=base_accuracy - psi / 100, line_dash="dash",
                  annotation_text=f"acceptance: unpruned - {psi} points",
                  annotation_position="bottom right")  # fmt: skip
    fig.update_layout(title=f"Pruning search ({method}): accuracy vs speed-up",
                      xaxis_title="FLOP-ceiling speed-up", yaxis_title="accuracy",
                      template="plotly_white")  # fmt: skip
    return fig
