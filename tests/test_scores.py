"""NeuronScores / NeuronSet: selection, random controls, ranks, Spearman, saving."""

import pytest
import torch

from neuronlens.errors import NeuronLensError, ShapeMismatchError
from neuronlens.models.sites import Site
from neuronlens.probes import NeuronScores

from .probe_fixtures import tiny


def make_scores(seed=0, widths=(10, 6, 8), method="m"):
    g = torch.Generator().manual_seed(seed)
    sites = [Site("blocks", i, f"blocks.{i}.mlp.hook_post", w) for i, w in enumerate(widths)]
    return NeuronScores(
        {s.name: torch.rand(s.width, generator=g) for s in sites}, sites, method, "toy"
    )


def test_top_k_per_layer_and_overall_against_sorting():
    sc = make_scores()
    per = sc.top(2, per_layer=True)
    for s in sc.sites:
        expect = sorted(range(s.width), key=lambda i: -float(sc[s.name][i]))[:2]
        assert per.indices[s.name].tolist() == sorted(expect)
    overall = sc.top(percent=25)
    flat = [(float(sc[s.name][i]), s.name, i) for s in sc.sites for i in range(s.width)]
    best = sorted(flat, reverse=True)[: int(24 * 0.25)]
    got = {(name, int(i)) for name, idx in overall.indices.items() for i in idx}
    assert got == {(n, i) for _, n, i in best}
    assert overall.count == 6
    assert sc.top(percent=50, per_layer=True).counts() == {
        "blocks.0": 5,
        "blocks.1": 3,
        "blocks.2": 4,
    }
    with pytest.raises(NeuronLensError):
        sc.top(3, percent=4)
    with pytest.raises(NeuronLensError):
        sc.top(percent=140)


def test_random_control_counts_and_reproducibility():
    sc = make_scores()
    top = sc.top(percent=30)
    ctrl = top.random_control(seed=3)
    assert ctrl.counts() == top.counts()
    assert {k: v.tolist() for k, v in ctrl.indices.items()} == {
        k: v.tolist() for k, v in top.random_control(seed=3).indices.items()
    }
    assert any(
        ctrl.indices[k].tolist() != top.random_control(seed=4).indices[k].tolist()
        for k in ctrl.indices
    )
    for k, idx in ctrl.indices.items():
        assert len(set(idx.tolist())) == len(idx)
        assert all(0 <= i < top.widths[k] for i in idx.tolist())


def test_ranks():
    sc = make_scores()
    ranks = sc.ranks()
    flat = torch.cat([ranks[s.name] for s in sc.sites])
    assert sorted(flat.tolist()) == list(range(1, 25))
    best = max((float(sc[s.name][i]), s.name, i) for s in sc.sites for i in range(s.width))
    assert int(ranks[best[1]][best[2]]) == 1
    per = sc.ranks(per_layer=True)
    assert sorted(per["blocks.1"].tolist()) == list(range(1, 7))


def naive_spearman(x, y):
    """Pearson correlation of average ranks (ties share the mean rank)."""

    def rank(v):
        v = v.tolist()
        out = [0.0] * len(v)
        for i, a in enumerate(v):
            less = sum(b < a for b in v)
            equal = sum(b == a for b in v)
            out[i] = less + (equal + 1) / 2
        return torch.tensor(out, dtype=torch.float64)

    rx, ry = rank(x), rank(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / torch.sqrt((rx**2).sum() * (ry**2).sum()))


def test_spearman_per_layer_then_averaged():
    a, b = make_scores(0), make_scores(1)
    b.scores["blocks.0"] = a.scores["blocks.0"] * 2 + 1  # perfectly monotone on one layer
    b.scores["blocks.1"][0] = b.scores["blocks.1"][1]  # a tie
    res = a.spearman(b)
    for s in a.sites:
        assert res.rho[s.name] == pytest.approx(naive_spearman(a[s.name], b[s.name]), abs=1e-12)
    assert res.rho["blocks.0"] == pytest.approx(1.0)
    assert res.mean == pytest.approx(sum(res.rho.values()) / 3)
    assert 0 <= res.p_value["blocks.2"] <= 1
    with pytest.raises(ShapeMismatchError):
        a.spearman(make_scores(widths=(10, 6)))


def test_save_load_round_trip_and_model_check(tmp_path):
    model = tiny()
    g = torch.Generator().manual_seed(0)
    sc = NeuronScores(
        {s.name: torch.rand(s.width, generator=g) for s in model.sites},
        list(model.sites),
        "predictivity",
        model.name,
        "wtask",
        {"seeds": [0, 1]},
        per_token={s.name: torch.rand(3, s.width) for s in model.sites},
        extra={"accuracy": {s.name: torch.rand(s.width) for s in model.sites}},
    )
    sc.save(tmp_path / "s")
    back = NeuronScores.load(tmp_path / "s", model)
    assert torch.equal(back.flat(), sc.flat())
    assert back.meta["seeds"] == [0, 1] and back.task == "wtask"
    assert torch.equal(back.per_token["blocks.1"], sc.per_token["blocks.1"])
    assert torch.equal(back.extra["accuracy"]["blocks.0"], sc.extra["accuracy"]["blocks.0"])
    import neuronlens as nl
    from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer

    other = nl.load_model(tiny_hf_model("bert", d_mlp=30), tiny_tokenizer())
    with pytest.raises(ShapeMismatchError, match="neurons"):
        NeuronScores.load(tmp_path / "s", other)


def test_scores_shape_is_checked():
    sites = [Site("blocks", 0, "blocks.0.mlp.hook_post", 4)]
    with pytest.raises(ShapeMismatchError):
        NeuronScores({"blocks.0": torch.zeros(5)}, sites, "m", "toy")
