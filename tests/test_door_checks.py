"""Every input checked at the door (issue 32): a bad input is a neuronlens error that says
what to do, never a TypeError / RuntimeError / AttributeError / OverflowError from deep
inside torch, and never a silent plausible number."""

import dataclasses
import math

import pytest
import torch

import neuronlens as nl
from neuronlens.errors import (
    DataError,
    EmptyDataError,
    NeuronLensError,
    NonFiniteActivationError,
    NonFiniteScoresError,
    NonFiniteValueError,
    ShapeMismatchError,
)
from neuronlens.neurons import NeuronScores
from neuronlens.prompts import LinearHead, PromptResult
from neuronlens.prompts.tuning import TrainingSettings
from neuronlens.study import StudyConfig
from neuronlens.tasks import Task

from .probe_fixtures import fake_prompt, probe_env


@pytest.fixture(scope="module")
def env():
    return probe_env()


def _one_bad(values, bad):
    values[4] = bad
    return values


def _scores(sites, fill):
    return NeuronScores({s.name: torch.full((s.width,), fill) for s in sites}, sites, "m", "x")


# ---------------------------------------------------------------- 1. non-finite scores
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_scores_refuse_nan_and_inf(env, bad):
    sites = env[5].sites
    with pytest.raises(NonFiniteScoresError, match="site blocks.0: 24 of 24 values"):
        _scores(sites, bad)  # ranked before: inf first, an all-NaN layer as [0, 1, 2]
    one = {s.name: torch.rand(s.width) for s in sites}
    one[sites[1].name][3] = bad
    with pytest.raises(NonFiniteScoresError, match=r"blocks\.1: .*cannot be ranked"):
        NeuronScores(one, sites, "m", "x")


def test_scores_report_how_many_are_nan_and_inf(env):
    sites = env[5].sites
    values = {s.name: torch.rand(s.width) for s in sites}
    values["blocks.0"][:2] = float("nan")
    values["blocks.0"][5] = float("inf")
    with pytest.raises(ValueError, match=r"3 of 24 values are not finite \(2 NaN, 1 infinite\)"):
        NeuronScores(values, sites, "m", "x")


def test_saved_nan_scores_are_refused_on_load(env, tmp_path):
    skill = env[5]
    broken = NeuronScores(dict(skill.scores), skill.sites, "m", "x")
    broken.scores["blocks.1"] = broken.scores["blocks.1"].clone()
    broken.scores["blocks.1"][0] = float("nan")  # mutated after the check, then saved
    path = broken.save(tmp_path / "nan")
    with pytest.raises(NonFiniteScoresError, match=r"nan.safetensors.*not finite \(1 NaN"):
        NeuronScores.load(path)


def test_library_scores_are_finite(env):
    model, task, pr, train, dev, skill = env
    assert bool(torch.isfinite(skill.flat()).all())
    for method in ("attribution", "random"):
        scores = nl.attribute(model, pr, task, train, method=method)
        assert bool(torch.isfinite(scores.flat()).all())


# ---------------------------------------------------------------- 2. interventions
@pytest.mark.parametrize("std", [math.inf, float("nan"), -1.0, "0.1", True])
def test_noise_std_must_be_finite_and_non_negative(env, std):
    with pytest.raises(NeuronLensError, match="std must be a finite number >= 0"):
        nl.Noise(env[5].top(k=3, per_layer=True), std=std)  # inf gave a plausible accuracy


def test_noise_scale_is_checked_when_built(env):
    top = env[5].top(k=3, per_layer=True)
    ones = {s: torch.ones(24) for s in ("blocks.0", "blocks.1")}
    with pytest.raises(NeuronLensError, match="must be a dict site name"):
        nl.Noise(top, scale=-1)  # a TypeError inside the hook before
    with pytest.raises(ShapeMismatchError, match=r"blocks.0 has shape \[3\].*24 neurons"):
        nl.Noise(top, scale={**ones, "blocks.0": torch.ones(3)})  # a RuntimeError at forward
    with pytest.raises(NeuronLensError, match="no per-neuron scale for site blocks.1"):
        nl.Noise(top, scale={"blocks.0": torch.ones(24)})
    with pytest.raises(NonFiniteValueError, match=r"blocks.1: 1 of 24 .*\(1 NaN"):
        nl.Noise(top, scale={**ones, "blocks.1": _one_bad(torch.ones(24), float("nan"))})
    with pytest.raises(NeuronLensError, match="negative values"):
        nl.Noise(top, scale={**ones, "blocks.0": -torch.ones(24)})
    nl.Noise(top, scale={**ones, "blocks.9": torch.ones(5)})  # sites outside the set: as given


def test_replace_values_are_checked_when_built(env):
    top = env[5].top(k=3, per_layer=True)
    means = {s: torch.zeros(24) for s in ("blocks.0", "blocks.1")}
    with pytest.raises(NeuronLensError, match="no values for site blocks.0"):
        nl.Replace(top, values={})
    with pytest.raises(ShapeMismatchError, match=r"blocks.1 has shape \[23\]"):
        nl.Replace(top, values={**means, "blocks.1": torch.zeros(23)})
    with pytest.raises(NonFiniteValueError, match=r"1 infinite\)"):
        nl.Replace(top, values={**means, "blocks.0": _one_bad(torch.zeros(24), math.inf)})
    per_token = {s: torch.zeros(3, 24) for s in means}
    with pytest.raises(ShapeMismatchError, match=r"\[p, width\]"):
        nl.Replace(top, "prompt", values={**per_token, "blocks.0": torch.zeros(3, 5)})
    with pytest.raises(ShapeMismatchError, match=r"give \[width\] values"):
        nl.Replace(top, "all", values=per_token)  # per prompt token only at the prompt
    with pytest.raises(NeuronLensError, match="must be a dict"):
        nl.Replace(top, values=torch.zeros(24))
    nl.Replace(top, "prompt", values=per_token)
    assert nl.Replace(top, values={s: [0.0] * 24 for s in means}).values["blocks.0"].shape == (24,)


# ---------------------------------------------------------------- 3. non-finite evaluation
def test_evaluate_refuses_a_nan_prompt(env):
    model, task, pr, train, dev, skill = env
    bad = dataclasses.replace(pr, prompt=pr.prompt.clone().fill_(float("nan")))
    with pytest.raises(NonFiniteValueError, match=r"soft prompt: 48 of 48 .*\(48 NaN"):
        nl.evaluate(model, bad, dev, task=task)  # an accuracy before


def test_evaluate_refuses_non_finite_logits(env):
    model, task, pr, train, dev, skill = env
    top = skill.top(percent=50, per_layer=True)
    huge = nl.Replace(top, values={s.name: torch.full((s.width,), 3e38) for s in skill.sites})
    with pytest.raises(NonFiniteActivationError, match=r"interventions \(Replace\)"):
        nl.evaluate(model, pr, dev, task=task, interventions=[huge])
    with pytest.raises(NonFiniteActivationError, match="intervene"), nl.intervene(model, huge):
        nl.evaluate(model, pr, dev, task=task)


def test_prompt_load_refuses_nan_prompt_and_head(env, tmp_path):
    model, task, pr, train, dev, skill = env
    bad = dataclasses.replace(pr, prompt=pr.prompt.clone())
    bad.prompt[1, 2] = float("inf")
    bad.save(tmp_path / "inf")
    with pytest.raises(NonFiniteValueError, match=r"inf.*soft prompt: 1 of 48 .*\(0 NaN, 1 inf"):
        PromptResult.load(tmp_path / "inf", model)
    lin = fake_prompt(model, task, head="linear")
    with torch.no_grad():
        lin.head.linear.bias[0] = float("nan")
    lin.save(tmp_path / "nan-head")
    with pytest.raises(NonFiniteValueError, match="head's linear.bias"):
        PromptResult.load(tmp_path / "nan-head", model)
    with pytest.raises(NonFiniteValueError, match="head's linear.bias"):
        nl.evaluate(model, lin, dev, task=task)


# ---------------------------------------------------------------- 4. saved heads of the wrong shape
@pytest.mark.parametrize("classes, wider", [(3, 0), (2, 4)])
def test_prompt_load_refuses_a_head_of_the_wrong_shape(env, tmp_path, classes, wider):
    model, task, pr, train, dev, skill = env
    lin = fake_prompt(model, task, head="linear")
    other = dataclasses.replace(lin, head=LinearHead(model.d_model + wider, classes))
    other.save(tmp_path / "head")
    saved = f"weight \\[{classes}, {model.d_model + wider}\\], bias \\[{classes}\\]"
    want = f"need weight \\[2, {model.d_model}\\], bias \\[2\\]"
    with pytest.raises(ShapeMismatchError, match=f"head.*{saved}.*{want}"):
        PromptResult.load(tmp_path / "head", model)  # a RuntimeError from copy_ before


# ---------------------------------------------------------------- 5. a task split expected
TEXTS = ["w1 w20 w21", "w2 w22"]


@pytest.mark.parametrize(
    "call",
    [
        lambda m, t, p, tr, d: nl.evaluate(m, p, TEXTS, task=t),
        lambda m, t, p, tr, d: nl.evaluate(m, p, TEXTS),
        lambda m, t, p, tr, d: nl.tune_prompt(m, t, train=TEXTS, validation=False, max_steps=1),
        lambda m, t, p, tr, d: nl.tune_prompt(m, t, train=tr, validation=TEXTS, max_steps=1),
        lambda m, t, p, tr, d: nl.predictivity(m, p, t, TEXTS, train=tr),
        lambda m, t, p, tr, d: nl.attribute(m, p, t, TEXTS),
    ],
    ids=["evaluate", "no task", "tune train", "tune validation", "predictivity", "attribute"],
)
def test_texts_where_a_split_is_expected(env, call):
    model, task, pr, train, dev, _ = env
    with pytest.raises(DataError, match=r"a task split: task.load\('dev'\).*list of 2 strings"):
        call(model, task, pr, train, dev)  # AttributeError: 'list' object has no attribute ...


def test_none_a_string_or_the_task_instead_of_a_split(env):
    model, task, pr, train, dev, _ = env
    with pytest.raises(DataError, match="evaluate's data must be a task split.*got None"):
        nl.evaluate(model, pr, None, task=task)
    with pytest.raises(DataError, match=r"the string 'dev' \(load the split first"):
        nl.evaluate(model, pr, "dev", task=task)
    with pytest.raises(DataError, match="the task 'wtask' itself"):
        nl.predictivity(model, pr, task, task, train=train)
    with pytest.raises(EmptyDataError, match="train is empty"):
        nl.tune_prompt(model, task, train=[], validation=False, max_steps=1)
    with pytest.raises(EmptyDataError, match="predictivity's train is empty"):
        nl.predictivity(model, pr, task, dev, train=[])
    with pytest.raises(DataError, match=r"validation \(or False: no validation\)"):
        nl.tune_prompt(model, task, train=train, validation=True, max_steps=1)


def test_predictivity_takes_train_texts_for_its_baselines(env):
    model, task, pr, train, dev, skill = env
    from_texts = nl.predictivity(model, pr, task, dev, train=list(train.texts), progress=False)
    assert torch.equal(from_texts.flat(), skill.flat())
    assert from_texts.meta["n_train"] == len(train)
    pair = Task.from_lists(
        "pairs", label_names=("a", "b"), template="{text} ? {mask} , {text_b}",
        splits={"dev": (["w1", "w2"], [0, 1], ["w3", "w4"])},
    )  # fmt: skip
    with pytest.raises(DataError, match="pair task"):
        nl.predictivity(model, pr, pair, pair.load("dev"), train=TEXTS)


# ---------------------------------------------------------------- 6. numeric settings
@pytest.mark.parametrize(
    "field, value",
    [
        ("epochs", math.inf),  # an OverflowError before
        ("epochs", -1.0),
        ("lr", math.inf),
        ("head_lr", float("nan")),
        ("weight_decay", math.inf),
        ("converge_tol", "0.1"),
        ("batch_size", "16"),
        ("max_steps", 2.5),
        ("patience", None),
        ("max_length", 0),
        ("val_limit", -3),
    ],
)
def test_training_settings_refuse_bad_numbers(field, value):
    with pytest.raises(NeuronLensError, match=field):
        TrainingSettings(**{"max_steps": None, field: value})


def test_infinite_epochs_in_tune_prompt_and_a_study_config(env):
    model, task, pr, train, dev, _ = env
    with pytest.raises(NeuronLensError, match="epochs must be a finite number"):
        nl.tune_prompt(model, task, train=train, validation=False, n_tokens=2, epochs=math.inf)
    with pytest.raises(NeuronLensError, match="epochs"):
        StudyConfig(model="minilm", task="toy_sentiment", epochs=math.inf)


# ---------------------------------------------------------------- 7. one-class dev labels
def test_predictivity_refuses_dev_labels_of_one_class(env):
    model, task, pr, train, dev, _ = env
    ones = dev.where(lambda a, b, y: y == 1)
    with pytest.raises(DataError, match=r"all class 1 \('pos'\): predictivity needs both"):
        nl.predictivity(model, pr, task, ones, train=train)  # predictivity ~0.67 before
    with pytest.raises(DataError, match=r"all not class 0 \(one_vs_rest=0\)"):
        nl.predictivity(model, pr, task, ones, train=train, one_vs_rest=0)


def test_evaluate_of_an_unregistered_task_asks_for_it(env):
    model, task, pr, train, dev, skill = env
    with pytest.raises(NeuronLensError, match=r"not registered.*task=my_task"):
        nl.evaluate(model, pr, dev)
    assert nl.evaluate(model, pr, dev, task=task).n == len(dev)
