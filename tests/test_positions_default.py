"""Predictivity reads where the model decides by default: one rule
(neuronlens.positions.decision_positions) for the library and the study; the meta says
which positions were read; positions the head never reads, not asked for, are warned of."""

import warnings

import pytest
import torch

from neuronlens.analysis import suppression_curve
from neuronlens.errors import NeuronLensError
from neuronlens.positions import (
    AllTokens,
    AnswerToken,
    LastToken,
    Pooled,
    PositionRange,
    PromptAndAnswer,
    PromptTokens,
    ReadoutWarning,
    decision_positions,
    positions_from_spec,
    positions_spec,
    reads_where_head_decides,
)
from neuronlens.probes import predictivity
from neuronlens.study import StudyConfig, study_positions

from .probe_fixtures import word_task
from .test_readout import fake, make_head, pair


def test_the_rule():
    assert decision_positions("pool") == Pooled(AllTokens(include_prompt=False))
    assert decision_positions("last") == AnswerToken()
    assert decision_positions("prompt") == PromptAndAnswer()
    assert decision_positions("mask") == PromptAndAnswer()
    assert reads_where_head_decides(AnswerToken(), "mask")
    assert reads_where_head_decides(LastToken(), "last")
    assert not reads_where_head_decides(PromptTokens(), "pool")
    assert not reads_where_head_decides(Pooled(), "prompt")
    with pytest.raises(NeuronLensError, match="unknown readout"):
        decision_positions("middle")
    # the study's "auto" is the same rule: it leaves the choice to predictivity
    assert study_positions(StudyConfig(model="tiny:bert", task="toy_sentiment")) is None
    cfg = StudyConfig(model="tiny:bert", task="toy_sentiment", positions="pooled")
    assert study_positions(cfg) == Pooled()


@pytest.mark.parametrize(
    "positions",
    [Pooled(), AnswerToken(), PositionRange(1, 3), Pooled(PromptTokens()), AllTokens(False)],
)
def test_positions_round_trip_through_json(positions):
    assert positions_from_spec(positions_spec(positions)) == positions


def _scores(family, head, readout, seeds=(0, 1), **kw):
    model, _ = pair(family)
    task = word_task()
    hd = make_head(model, head, readout, task)
    prompts = [fake(model, hd, task, s) for s in seeds]
    return (
        model,
        task,
        prompts,
        predictivity(model, prompts, task, task.load("dev"), train=task.load("train"), **kw),
    )


@pytest.mark.parametrize(
    "family,head,readout",
    [("bert", "linear", "pool"), ("llama", "verbalizer", "last"), ("bert", "verbalizer", "mask"),
     ("gpt2", "verbalizer", "prompt")],
)  # fmt: skip
def test_the_default_reads_where_the_head_decides_and_says_so(family, head, readout):
    model, task, prompts, auto = _scores(family, head, readout)
    want = decision_positions(readout)
    assert auto.meta["positions"] == repr(want)
    assert auto.meta["positions_asked"] is False
    assert auto.meta["head_decides_at"] == repr(want)
    asked = predictivity(model, prompts, task, task.load("dev"), train=task.load("train"),
                         positions=want)  # fmt: skip
    assert asked.meta["positions_asked"] is True
    for s in auto.sites:
        torch.testing.assert_close(auto[s], asked[s])


def test_a_pooled_head_s_default_is_not_the_prompt_positions():
    """The issue's case: a pooled linear head's prompt positions are never read by the head;
    the default now reads the pooled input tokens, not the prompt."""
    model, task, prompts, auto = _scores("bert", "linear", "pool")
    prompt = predictivity(model, prompts, task, task.load("dev"), train=task.load("train"),
                          positions=PromptAndAnswer())  # fmt: skip
    assert any(not torch.equal(auto[s], prompt[s]) for s in auto.sites)


def test_reused_baselines_keep_their_positions():
    model, task, prompts, clean = _scores("bert", "linear", "pool", positions=PromptTokens())
    adv = predictivity(model, prompts, task, task.load("dev"), baselines=clean)
    assert adv.meta["positions"] == repr(PromptTokens()) and adv.meta["positions_asked"]


def test_prompts_of_different_readouts_have_no_one_default():
    model, _ = pair("bert")
    task = word_task()
    a = fake(model, make_head(model, "linear", "pool", task), task, 0)
    b = fake(model, make_head(model, "linear", "prompt", task), task, 1)
    with pytest.raises(NeuronLensError, match="different readouts"):
        predictivity(model, [a, b], task, task.load("dev"), train=task.load("train"))


def test_a_suppression_study_warns_of_scores_read_where_its_head_never_reads():
    model, task, prompts, pooled = _scores("bert", "linear", "pool", seeds=(0,))
    other = fake(model, make_head(model, "linear", "prompt", task), task, 0)
    dev = task.load("dev")
    with pytest.warns(ReadoutWarning, match="never reads"):
        suppression_curve(model, other, dev, pooled, task=task, percents=(5,), random_repeats=1)
    with warnings.catch_warnings():  # the scores' own prompt: read where it decides
        warnings.simplefilter("error", ReadoutWarning)
        suppression_curve(model, prompts[0], dev, pooled, task=task, percents=(5,),
                          random_repeats=1)  # fmt: skip
        asked = predictivity(model, prompts, task, dev, train=task.load("train"),
                             positions=PromptTokens())  # fmt: skip
        suppression_curve(model, prompts[0], dev, asked, task=task, percents=(5,),
                          random_repeats=1)  # asked for: no warning  # fmt: skip
    legacy = pooled.meta.copy()  # saved before positions were recorded as data
    for k in ("positions_spec", "positions_asked"):
        legacy.pop(k)
    pooled.meta = legacy
    with pytest.warns(ReadoutWarning):
        suppression_curve(model, other, dev, pooled, task=task, percents=(5,), random_repeats=1)
