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
