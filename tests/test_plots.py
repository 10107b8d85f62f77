"""Plotly figures of neuron scores."""

import numpy as np
import pytest
import torch

from neuronlens.errors import NeuronLensError
from neuronlens.models.sites import Site
from neuronlens.plots import neuron_heatmap
from neuronlens.probes import NeuronScores


def scores_of(widths, stacks=("blocks",), seed=0):
    g = torch.Generator().manual_seed(seed)
    sites = [
        Site(st, i, f"{st}.{i}.mlp.hook_post", w) for st in stacks for i, w in enumerate(widths)
    ]
    return NeuronScores(
        {s.name: torch.rand(s.width, generator=g) for s in sites}, sites, "m", "toy"
    )


def test_heatmap_values_hover_and_top_k(tmp_path):
    sc = scores_of((8, 8, 8))
    fig = neuron_heatmap(sc, top_k=3)
    heat = fig.data[0]
    assert np.allclose(
        np.array(heat.z, dtype=float), torch.stack([sc[s] for s in sc.sites]).numpy()
    )
    best = max((float(sc[s.name][i]), s.layer, i) for s in sc.sites for i in range(8))
    assert "rank 1 of 24" in heat.text[best[1]][best[2]]
    marks = fig.data[1]
    assert len(marks.x) == 3 and (best[2], best[1]) in set(zip(marks.x, marks.y, strict=True))
    path = tmp_path / "h.html"
    fig.write_html(path)
    assert "plotly" in path.read_text()[:5000].lower()


def test_heatmap_bins_wide_layers_and_sorts():
    sc = scores_of((11008,) * 4)
    fig = neuron_heatmap(sc, max_columns=512)
    z = np.array(fig.data[0].z, dtype=float)
    assert z.shape[1] <= 512
    assert np.isclose(np.nanmax(z[0]), float(sc["blocks.0"].max()))
    srt = neuron_heatmap(scores_of((6, 6)), sort=True)
    row = np.array(srt.data[0].z, dtype=float)[0]
    assert np.all(np.diff(row) <= 0)
    with pytest.raises(NeuronLensError):
        neuron_heatmap(sc, max_columns=0)


def test_t5_stacks_side_by_side():
    fig = neuron_heatmap(scores_of((4, 4), stacks=("encoder_blocks", "decoder_blocks")))
    heatmaps = [d for d in fig.data if d.type == "heatmap"]
    assert len(heatmaps) == 2
    assert [a.text for a in fig.layout.annotations] == ["encoder_blocks", "decoder_blocks"]


def test_heatmap_axis_counts_neurons_and_the_legend_names_k():
    sc = scores_of((3000, 3000))
    fig = neuron_heatmap(sc, top_percent=1, max_columns=500)
    heat = fig.data[0]
    per_bin = 6  # 3000 neurons over at most 500 columns
    assert list(heat.x[:3]) == [0, 6, 12] and heat.x[-1] == 2994
    assert "best of 6" in fig.layout.xaxis.title.text
    marks = fig.data[1]
    assert marks.name == "top 1 % overall (60 neurons)"
    assert all(x % per_bin == 0 for x in marks.x)
    per_layer = neuron_heatmap(sc, top_k=2, per_layer=True)
    assert per_layer.data[1].name == "top 2 per layer (4 neurons)"


def test_heatmap_log_and_rank_scales():
    sc = scores_of((10, 10))
    log = np.array(neuron_heatmap(sc, scale="log").data[0].z, dtype=float)
    np.testing.assert_allclose(log[0], np.log10(sc["blocks.0"].double().numpy()), rtol=1e-6)
    rank = np.array(neuron_heatmap(sc, scale="rank").data[0].z, dtype=float)
    assert np.nanmax(rank) == 1.0 and np.nanmin(rank) == 0.0  # best and worst of 20
    best = int(sc.flat().argmax())
    assert rank[best // 10, best % 10] == 1.0
    neg = scores_of((4,))
    neg.scores["blocks.0"] = neg.scores["blocks.0"] - 2
    with pytest.raises(NeuronLensError, match="scale='rank'"):
        neuron_heatmap(neg, scale="log")
    with pytest.raises(NeuronLensError, match="scale must be"):
        neuron_heatmap(sc, scale="sqrt")


def test_suppression_axis_spans_at_least_a_tenth():
    from neuronlens.plots import suppression_figure

    fig = suppression_figure(
        [0, 1], [0.962, 0.961], [[0.963, 0.963], [0.962, 0.964]],
        method="predictivity", dataset="d", per_layer=True, ablation="zeroed",
    )  # fmt: skip
    low, high = fig.layout.yaxis.range
    assert high - low >= 0.1 and low < 0.961 and high > 0.964
    assert "per layer, zeroed" in fig.layout.title.text
