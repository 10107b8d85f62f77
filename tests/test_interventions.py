"""Interventions and the ablation studies, including a planted-neuron model."""

import copy

import numpy as np
import pytest
import torch

import neuronlens as nl
import neuronlens.analysis.studies as studies
from neuronlens.analysis import (
    SuppressionCurve,
    adversarial_analysis,
    cross_suppression,
    distributions,
    suppression_curve,
    task_specificity,
    transferability,
)
from neuronlens.errors import NeuronLensError
from neuronlens.interventions import Noise, Replace, Retain, Zero, activation_stats, intervene
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.probes import NeuronSet, attribute, predictivity
from neuronlens.prompts import evaluate

from .conftest import all_hook_counts, random_texts
from .probe_fixtures import fake_prompt, planted_model, planted_probe, tiny, word_task


def _all_neurons(model, site):
    return NeuronSet({site.name: torch.arange(site.width)}, {s.name: s.width for s in model.sites})


def _logits(model, texts, prompt=None):
    with torch.no_grad():
        return model(model.encode(texts), prompt=prompt)


@pytest.mark.parametrize("family", ["bert", "roberta", "t5-gated", "gpt2", "llama"])
def test_zeroing_a_site_equals_removing_the_ffn_but_its_bias(family):
    hf = tiny_hf_model(family, seed=4)
    raw = copy.deepcopy(hf)
    model = nl.load_model(hf, tiny_tokenizer())
    site = model.sites[1]
    stack = next(st for st in model.stacks if st.bridge_name == site.stack)
    out = raw.get_submodule(stack.hf_ffn.format(i=site.layer)).get_submodule(stack.hf_out)
    with torch.no_grad():
        out.weight.zero_()  # output = its bias only (GPT-2 Conv1D too)
    texts = random_texts(4, seed=2)
    enc = model.encode(texts)
    kw = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
    if enc.decoder_input_ids is not None:
        kw["decoder_input_ids"] = enc.decoder_input_ids
    if enc.token_type_ids is not None:
        kw["token_type_ids"] = enc.token_type_ids
    with torch.no_grad():
        expect = raw(**kw).logits
    with intervene(model, Zero(_all_neurons(model, site))):
        got = _logits(model, texts)
    torch.testing.assert_close(got, expect, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(_logits(model, texts), expect, atol=1e-4)  # and it did change


def test_retain_all_and_zero_noise_change_nothing():
    model = tiny("llama")
    texts = random_texts(5, seed=1)
    base = _logits(model, texts)
    everything = NeuronSet(
        {s.name: torch.arange(s.width) for s in model.sites}, {s.name: s.width for s in model.sites}
    )
    with intervene(model, Retain(everything), Noise(everything, std=0.0)):
        assert torch.equal(_logits(model, texts), base)
    with intervene(model, Noise(everything, std=0.5, seed=1)):
        a = _logits(model, texts)
    with intervene(model, Noise(everything, std=0.5, seed=1)):
        b = _logits(model, texts)
    assert torch.equal(a, b) and not torch.allclose(a, base)


def test_replace_and_positions_act_where_asked():
    model, task = tiny(), word_task()
    pr = fake_prompt(model, task, n_tokens=3)
    site = model.sites[0]
    nset = NeuronSet({site.name: torch.tensor([2, 5])}, {s.name: s.width for s in model.sites})
    texts = ["w1 w4 w5", "w2 w6"]
    values = {site.name: torch.full((site.width,), 7.0)}
    with intervene(model, Replace(nset, "input", values=values), n_prompt=3):
        acts = nl.collect_activations(model, texts, sites=site, prompt=pr.prompt)
    a, v = acts[site.name], acts.valid[site.name]
    assert torch.all(a[:, 3:][v[:, 3:]][:, [2, 5]] == 7.0)  # input positions replaced
    assert not torch.any(a[:, :3, [2, 5]] == 7.0)  # prompt positions untouched
    per_token = {site.name: torch.arange(3 * site.width, dtype=torch.float32).view(3, site.width)}
    with intervene(model, Replace(nset, "prompt", values=per_token), n_prompt=3):
        acts = nl.collect_activations(model, texts, sites=site, prompt=pr.prompt)
    torch.testing.assert_close(acts[site.name][0, :3, [2, 5]], per_token[site.name][:, [2, 5]])
    with (
        pytest.raises(NeuronLensError, match="no soft prompt"),
        intervene(model, Zero(nset, "prompt")),
    ):
        _logits(model, texts)


def test_hooks_removed_after_an_exception():
    model = tiny()
    _logits(model, ["w1"])
    clean = all_hook_counts(model)
    nset = _all_neurons(model, model.sites[0])
    with pytest.raises(RuntimeError, match="boom"), intervene(model, Zero(nset)):
        raise RuntimeError("boom")
    assert all_hook_counts(model) == clean


def test_activation_stats_match_stored_activations():
    model = tiny()
    texts = random_texts(6, seed=3)
    stats = activation_stats(model, texts, progress=False)
    acts = nl.collect_activations(model, texts)
    for s in model.sites:
        vals = acts[s.name][acts.valid[s.name]].double()
        torch.testing.assert_close(stats.mean[s.name], vals.mean(0).float(), atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            stats.std[s.name], vals.std(0, unbiased=False).float(), atol=1e-4, rtol=1e-4
        )


def test_planted_neuron_is_found_and_suppressing_it_hurts_more_than_random():
    model, task = planted_model(), word_task(n=80)
    probe = planted_probe(model, task)
    dev = task.load("dev")
    assert evaluate(model, probe, dev, task=task).accuracy >= 0.95
    scores = attribute(model, probe, task, task.load("train"), n=20, progress=False)
    assert int(scores["blocks.0"].argmax()) == 7
    assert int(scores.ranks()["blocks.0"][7]) == 1
    curve = suppression_curve(
        model, probe, dev, scores, task=task, percents=(0, 5), random_repeats=5
    )
    rows = curve.rows()
    assert rows[1]["neurons"] == 1
    assert rows[1]["acc_top"] <= 0.65 < rows[1]["acc_random_mean"]
    assert rows[0]["acc_top"] == rows[0]["acc_random_mean"]  # nothing suppressed at 0 %
    fig = curve.figure()
    assert len(fig.data) == 3
    assert "| percent |" in curve.to_markdown()


def test_studies_run_and_shape_up(monkeypatch):
    model = tiny()
    a, b = word_task(name="a"), word_task(seed=5, name="b")
    pa, pb = fake_prompt(model, a, seed=0), fake_prompt(model, b, seed=1)
    pa.task, pb.task = "a", "b"
    sa = predictivity(model, pa, a, a.load("dev"), train=a.load("train"), progress=False)
    sb = predictivity(model, pa, b, b.load("dev"), train=b.load("train"), progress=False)
    spec = task_specificity({"a": sa, "b": sb})
    assert spec.rho.shape == (2, 2) and spec.rho[0, 0] == pytest.approx(1.0)
    assert spec.rho[0, 1] == pytest.approx(sa.spearman(sb).mean)
    assert spec.per_layer_p.shape == (2, 2, 2)
    assert spec.zscore[0, 1] == spec.zscore[1, 0] == 0.0  # two equal off-diagonal entries
    three = task_specificity({"a": sa, "b": sb, "c": sa})
    off = three.zscore[~torch.eye(3, dtype=torch.bool).numpy()]
    assert off.mean() == pytest.approx(0.0, abs=1e-9) and off.std() == pytest.approx(1.0)
    cross = cross_suppression(
        model,
        pa,
        {"a": a.load("dev"), "b": b.load("dev")},
        {"a": sa.top(percent=10), "b": sb.top(percent=10)},
        task=a,
    )
    assert set(cross.accuracy) == {"none", "a", "b"} and set(cross.accuracy["a"]) == {"a", "b"}
    adv = adversarial_analysis(model, pa, a, a.load("train"), a.load("dev"), b.load("dev"))
    assert adv.adversarial.meta["baseline_reused"]
    assert adv.spearman == pytest.approx(adv.clean.spearman(adv.adversarial).mean)
    tr = transferability(
        model, {"a": pa, "b": pb}, {"a": (a, a.load("dev")), "b": (b, b.load("dev"))}
    )
    assert tr.relative["a"]["a"] == pytest.approx(1.0)
    assert tr.absolute["b"]["a"] == pytest.approx(
        evaluate(model, pb, a.load("dev"), task=a).accuracy
    )
    # accuracies already measured are taken as given; only the others are evaluated
    calls = []
    real = studies.evaluate
    monkeypatch.setattr(studies, "evaluate", lambda *a, **k: calls.append(a[1]) or real(*a, **k))
    part = transferability(
        model, {"a": pa, "b": pb}, {"a": (a, a.load("dev")), "b": (b, b.load("dev"))},
        known={"a": {"a": 0.25}, "b": {"b": tr.absolute["b"]["b"]}}, progress=False,
    )  # fmt: skip
    monkeypatch.undo()
    assert calls == [pa, pb]  # a on b, b on a
    assert part.absolute["a"] == {"a": 0.25, "b": tr.absolute["a"]["b"]}
    assert part.absolute["b"] == tr.absolute["b"]
    assert part.relative["b"]["a"] == pytest.approx(tr.absolute["b"]["a"] / 0.25)
    with pytest.raises(NeuronLensError, match="known accuracies"):
        transferability(model, {"a": pa}, {"a": (a, a.load("dev"))}, known={"a": {"z": 0.5}})
    dist = distributions({"a": sa, "b": sb}, {"a": 0.6, "b": 0.5})
    assert [r["dataset"] for r in dist.rows()] == ["a", "b"]
    boxes = [t for t in dist.figure().data if t.type == "box"]
    # one predictivity box and one neuron-accuracy box per dataset, in separate panels
    assert len(boxes) == 4 and len({t.yaxis for t in boxes}) == 2
    acc_a = [t for t in boxes if t.name == "a" and t.yaxis == boxes[-1].yaxis][0]
    want = torch.cat([sa.extra["accuracy"][s.name] for s in sa.sites]).numpy()
    np.testing.assert_allclose(np.asarray(acc_a.y), want)
    for result in (spec, cross, adv, tr, dist):
        result.figure()
        assert result.to_markdown().startswith("|")


def test_suppression_gaps_use_the_sample_sd_of_the_random_controls():
    import statistics

    curve = SuppressionCurve(
        percents=[1, 5, 10], top=[0.5, 0.6, 0.7], random=[[0.6, 0.8, 0.7], [0.65], [0.7, 0.7]],
        counts=[1, 5, 10], method="predictivity", dataset="d", per_layer=True,
    )  # fmt: skip
    rows = curve.rows()
    sd = statistics.stdev([0.6, 0.8, 0.7])  # n - 1 in the denominator
    assert rows[0]["acc_random_std"] == pytest.approx(sd)
    assert rows[0]["gap_sd"] == pytest.approx((0.7 - 0.5) / sd)
    assert rows[0]["gap_note"] == ""
    # no spread: no gap in sd (strict JSON null), and the row says why
    assert rows[1]["acc_random_std"] == 0.0 and rows[1]["gap_sd"] is None  # one control
    assert rows[1]["gap_note"] == "no spread: 1 random control (top lower)"
    assert rows[2]["gap_sd"] is None  # top equals the random controls, which do not spread
    assert rows[2]["gap_note"] == "no spread: the 2 random controls are equal (top equal)"
    band = curve.figure().data[0].y  # the figure's band: mean ± the same sd
    assert band[0] == pytest.approx(0.7 + sd)
