"""Interactive Plotly figures of neuron scores.

:func:`neuron_heatmap` draws any :class:`~neuronlens.probes.NeuronScores` as a layer x neuron
heatmap: hover shows stack, layer, neuron, score and rank; the top-k neurons are outlined;
``sort=True`` orders neurons by score within each layer; T5's encoder and decoder stacks are
drawn side by side; wide layers are binned (max of each bin, hover names the bin's best
neuron) so a 32 x 11008 map stays responsive. ``fig.write_html(path)`` saves a standalone
page (Plotly's JavaScript included).
"""

from __future__ import annotations

import numpy as np

from neuronlens.errors import NeuronLensError
from neuronlens.neurons import NeuronScores

MAX_COLUMNS = 1024


def neuron_heatmap(
    scores: NeuronScores,
    *,
    top_k: int | None = None,
    top_percent: float | None = None,
    sort: bool = False,
    max_columns: int = MAX_COLUMNS,
    colorscale: str = "Viridis",
    title: str | None = None,
):
    """A layer x neuron heatmap of ``scores`` (a Plotly ``Figure``)."""
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    if max_columns < 1:
        raise NeuronLensError(f"max_columns must be >= 1, got {max_columns}")
    stacks = list(dict.fromkeys(s.stack for s in scores.sites))
    ranks = scores.ranks()
    top = None
    if top_k is not None or top_percent is not None:
        top = scores.top(k=top_k, percent=top_percent)
    fig = make_subplots(
        rows=1,
        cols=len(stacks),
        subplot_titles=stacks if len(stacks) > 1 else None,
        horizontal_spacing=0.08,
    )
    zmin, zmax = float(scores.flat().min()), float(scores.flat().max())
    for col, stack in enumerate(stacks, start=1):
        sites = [s for s in scores.sites if s.stack == stack]
        width = max(s.width for s in sites)
        bins = min(width, max_columns)
        per_bin = int(np.ceil(width / bins))
        bins = int(np.ceil(width / per_bin))
        z = np.full((len(sites), bins), np.nan)
        text = np.empty((len(sites), bins), dtype=object)
        text[:] = ""
        hx, hy = [], []
        for row, site in enumerate(sites):
            vals = scores[site].double().numpy()
            rk = ranks[site.name].numpy()
            order = np.argsort(-vals, kind="stable") if sort else np.arange(site.width)
            marked = set(top.indices[site.name].tolist()) if top is not None else set()
            for b in range(bins):
                idx = order[b * per_bin : (b + 1) * per_bin]
                if idx.size == 0:
                    continue
                best = idx[np.argmax(vals[idx])]
                z[row, b] = vals[best]
                span = (
                    f"neurons {idx.min()}-{idx.max()} (best {best})"
                    if per_bin > 1 and not sort
                    else f"neuron {best}"
                )
                text[row, b] = (
                    f"{stack} layer {site.layer}<br>{span}<br>score {vals[best]:.4f}"
                    f"<br>rank {int(rk[best])} of {scores.n_neurons}"
                )
                if marked.intersection(idx.tolist()):
                    hx.append(b)
                    hy.append(site.layer)
        fig.add_trace(
            go.Heatmap(
                z=z,
                x=list(range(bins)),
                y=[s.layer for s in sites],
                text=text,
                hovertemplate="%{text}<extra></extra>",
                colorscale=colorscale,
                zmin=zmin,
                zmax=zmax,
                showscale=col == len(stacks),
                colorbar={"title": scores.method},
            ),
            row=1,
            col=col,
        )
        if hx:
            fig.add_trace(
                go.Scatter(
                    x=hx,
                    y=hy,
                    mode="markers",
                    name="top neurons",
                    showlegend=col == 1,
                    marker={
                        "symbol": "square-open",
                        "size": 9,
                        "color": "red",
                        "line": {"width": 2},
                    },
                    hoverinfo="skip",
                ),
                row=1,
                col=col,
            )
        xlabel = "neurons by score" if sort else "neuron"
        if per_bin > 1:
            xlabel += f" (bins of {per_bin})"
        fig.update_xaxes(title_text=xlabel, row=1, col=col)
        layers = [s.layer for s in sites]
        fig.update_yaxes(
            title_text="layer",
            range=[max(layers) + 0.5, min(layers) - 0.5],  # layer 0 on top, no empty rows
            dtick=1,
            row=1,
            col=col,
        )
    fig.update_layout(
        title=title
        or f"{scores.method} of {scores.model}" + (f" on {scores.task}" if scores.task else ""),
        template="plotly_white",
        legend={"orientation": "h", "yanchor": "bottom", "y": 1.02, "xanchor": "right", "x": 1},
        height=max(
            300, 28 * max(len([s for s in scores.sites if s.stack == st]) for st in stacks) + 150
        ),
    )
    return fig
