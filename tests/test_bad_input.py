"""Wrong input to a public call is a neuronlens error that says what to pass, never a bare
TypeError from deep inside torch (an audit of the public API, one case a line)."""

import pytest
import torch

import neuronlens as nl
from neuronlens.analysis import (
    cross_suppression,
    distributions,
    suppression_curve,
    task_specificity,
    transferability,
)
from neuronlens.errors import NeuronLensError
from neuronlens.neurons import NeuronScores, NeuronSet
from neuronlens.plots import neuron_heatmap
from neuronlens.pruning import flop_ceiling, load_pruned, prune_model, skeleton_search, skip_search
from neuronlens.study import DEMO, run_study

from .probe_fixtures import probe_env, tiny


@pytest.fixture(scope="module")
def env():
    return probe_env()


CASES = {
    "top k bool": lambda m, t, p, tr, d, s: s.top(k=True),
    "top percent str": lambda m, t, p, tr, d, s: s.top(percent="5"),
    "top k float": lambda m, t, p, tr, d, s: s.top(k=2.5),
    "random control seed str": lambda m, t, p, tr, d, s: s.top(k=3).random_control("a"),
    "suppression no percents": lambda m, t, p, tr, d, s: suppression_curve(
        m, p, d, s, task=t, percents=()
    ),
    "suppression percent 150": lambda m, t, p, tr, d, s: suppression_curve(
        m, p, d, s, task=t, percents=(150,)
    ),
    "suppression ablation": lambda m, t, p, tr, d, s: suppression_curve(
        m, p, d, s, task=t, percents=(1,), ablation="drop"
    ),
    "suppression positions": lambda m, t, p, tr, d, s: suppression_curve(
        m, p, d, s, task=t, percents=(1,), positions="mid"
    ),
    "prompt of another model": lambda m, t, p, tr, d, s: nl.evaluate(tiny("gpt2"), p, d, task=t),
    "cross without sets": lambda m, t, p, tr, d, s: cross_suppression(m, p, {"d": d}, {}, task=t),
    "evaluate empty data": lambda m, t, p, tr, d, s: nl.evaluate(m, p, d.take(0), task=t),
    "evaluate batch 0": lambda m, t, p, tr, d, s: nl.evaluate(m, p, d, task=t, batch_size=0),
    "tune n_tokens -1": lambda m, t, p, tr, d, s: nl.tune_prompt(
        m, t, train=tr, validation=False, n_tokens=-1, max_steps=1
    ),
    "tune n_tokens str": lambda m, t, p, tr, d, s: nl.tune_prompt(
        m, t, train=tr, validation=False, n_tokens="3", max_steps=1
    ),
    "tune unknown setting": lambda m, t, p, tr, d, s: nl.tune_prompt(
        m, t, train=tr, validation=False, n_tokens=2, epochz=1
    ),
    "tune readout": lambda m, t, p, tr, d, s: nl.tune_prompt(
        m, t, train=tr, validation=False, n_tokens=2, readout="cls"
    ),
    "attribute n 0": lambda m, t, p, tr, d, s: nl.attribute(m, p, t, tr, n=0),
    "attribute n str": lambda m, t, p, tr, d, s: nl.attribute(m, p, t, tr, n="20"),
    "prune index out of range": lambda m, t, p, tr, d, s: prune_model(m, {"blocks.0": [100]}),
    "flop ratio 2": lambda m, t, p, tr, d, s: flop_ceiling(m, 2.0),
    "flop attn_out ratio 2": lambda m, t, p, tr, d, s: flop_ceiling(m, 1.0, attn_out_kept_ratio=2),
    "prune attn_out out of range": lambda m, t, p, tr, d, s: prune_model(
        m, {"blocks.0.attn_out": [0, 99]}
    ),
    "report plotly_js": lambda m, t, p, tr, d, s: run_study(DEMO, "/tmp/x", plotly_js="offline"),
    "skeleton psi -1": lambda m, t, p, tr, d, s: skeleton_search(
        m, p, t, train=tr, eval_data=d, psi=-1
    ),
    "skip fraction 0.5": lambda m, t, p, tr, d, s: skip_search(
        m, p, t, train=tr, eval_data=d, eval_fraction=0.5
    ),
    "capture positions str": lambda m, t, p, tr, d, s: nl.capture(
        m, ["w1"], lambda sb: None, positions="last"
    ),
    "capture unknown site": lambda m, t, p, tr, d, s: nl.capture(
        m, ["w1"], lambda sb: None, sites=["blocks.9"]
    ),
    "collect no texts": lambda m, t, p, tr, d, s: nl.collect_activations(m, []),
    "noise std -1": lambda m, t, p, tr, d, s: nl.Noise(s.top(k=2), std=-1),
    "zero of a list": lambda m, t, p, tr, d, s: nl.Zero([1, 2]),
    "specificity of one": lambda m, t, p, tr, d, s: task_specificity({"a": s}),
    "transfer of nothing": lambda m, t, p, tr, d, s: transferability(m, {}, {}),
    "distributions of nothing": lambda m, t, p, tr, d, s: distributions({}, {}),
    "predictivity positions str": lambda m, t, p, tr, d, s: nl.predictivity(
        m, p, t, d, train=tr, positions="prompt"
    ),
    "predictivity no prompts": lambda m, t, p, tr, d, s: nl.predictivity(m, [], t, d, train=tr),
    "load_model of a number": lambda m, t, p, tr, d, s: nl.load_model(42),
    "unknown task": lambda m, t, p, tr, d, s: nl.get_task("sst3"),
    "unknown split": lambda m, t, p, tr, d, s: t.load("validation_x"),
    "scores file missing": lambda m, t, p, tr, d, s: NeuronScores.load("/nonexistent/x", m),
    "prompt file missing": lambda m, t, p, tr, d, s: nl.PromptResult.load("/nonexistent/x", m),
    "pruned model missing": lambda m, t, p, tr, d, s: load_pruned("/nonexistent/x"),
    "heatmap top_k -1": lambda m, t, p, tr, d, s: neuron_heatmap(s, top_k=-1),
    "intervention on a missing site": lambda m, t, p, tr, d, s: nl.evaluate(
        m,
        p,
        d,
        task=t,
        interventions=[nl.Zero(NeuronSet({"blocks.7": torch.tensor([1])}, {"blocks.7": 24}))],
    ),  # fmt: skip
}


@pytest.mark.parametrize("case", list(CASES))
def test_bad_input_is_a_neuronlens_error(env, case):
    with pytest.raises(NeuronLensError):
        CASES[case](*env)
