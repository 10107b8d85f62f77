"""Full fine-tuning baseline: every weight of a copy trains, the original stays as it was."""

import pytest
import torch

from neuronlens.errors import NeuronLensError
from neuronlens.finetune import copy_model, fine_tune
from neuronlens.prompts import evaluate

from .probe_fixtures import tiny, word_task


def _weights(model):
    return {k: v.detach().clone() for k, v in model.hf_model.state_dict().items()}


@pytest.mark.parametrize(
    "family,head", [("bert", "verbalizer"), ("bert", "linear"), ("gpt2", "verbalizer")]
)
def test_fine_tuning_trains_a_copy_and_learns(family, head):
    model, task = tiny(family), word_task(n=120)
    before = _weights(model)
    tuned, res = fine_tune(
        model, task, head=head, validation=False, max_steps=120, batch_size=8, weights_lr=3e-3,
        head_lr=3e-2, seed=0, progress=False,
    )  # fmt: skip
    after = _weights(model)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the original is untouched
    moved = [k for k, v in _weights(tuned).items() if not torch.equal(v, before[k])]
    assert len(moved) > len(before) // 2  # most of the copy's weights trained
    assert tuned.name != model.name and res.model_name == tuned.name and res.n_tokens == 0
    assert not any(p.requires_grad for p in tuned.hf_model.parameters())  # frozen again
    acc = evaluate(tuned, res, task.load("dev"), task=task).accuracy
    assert acc >= 0.9, acc  # the word task (w1 vs w2) is learned


def test_fine_tuning_readouts_and_copies():
    model, task = tiny("bert"), word_task()
    with pytest.raises(NeuronLensError, match="fine-tuning has none"):
        fine_tune(model, task, readout="prompt", validation=False, max_steps=1, progress=False)
    with pytest.raises(NeuronLensError, match="weights_lr"):
        fine_tune(model, task, weights_lr=-1, validation=False, max_steps=1)
    twin = copy_model(model, "twin")
    assert twin.name == "twin" and twin.hf_model is not model.hf_model
    enc = model.encode(["w1 w2 w3"])
    with torch.no_grad():
        torch.testing.assert_close(twin(enc), model(enc))
