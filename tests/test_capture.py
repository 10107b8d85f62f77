"""Activation capture: positions, gradients, streaming reductions, hook hygiene, errors."""

import pytest
import torch

import neuronlens as nl
from neuronlens.capture import PositionRange
from neuronlens.errors import NeuronLensError, NonFiniteActivationError, ShapeMismatchError

from .conftest import all_hook_counts, random_texts


def _store_all(model, texts, **kw):
    """Reference: keep every SiteBatch (what a careless user would do)."""
    got = []
    nl.capture(model, texts, lambda sb: got.append(sb), progress=False, **kw)
    return got


def test_positions_select_expected_tokens(tiny_bert):
    model = tiny_bert
    texts = ["w1 w2 [MASK] w3", "w4 [MASK]", "w5 w6 w7 w8 w9 [MASK]"]
    full = nl.collect_activations(model, texts, sites="blocks.1")
    acts, valid = full["blocks.1"], full.valid["blocks.1"]
    enc = model.encode(texts)
    lengths = enc.attention_mask.sum(1)
    assert valid.sum(1).tolist() == lengths.tolist()

    last = nl.collect_activations(model, texts, sites="blocks.1", positions=nl.LastToken())
    for i, n in enumerate(lengths.tolist()):
        torch.testing.assert_close(last["blocks.1"][i, 0], acts[i, n - 1])
    assert [t[0] for t in last.tokens] == ["[SEP]"] * 3

    mask = nl.collect_activations(model, texts, sites="blocks.1", positions=nl.MaskToken())
    mask_pos = (enc.input_ids == model.tokenizer.mask_token_id).float().argmax(1)
    for i, p in enumerate(mask_pos.tolist()):
        torch.testing.assert_close(mask["blocks.1"][i, 0], acts[i, p])
    assert [t[0] for t in mask.tokens] == ["[MASK]"] * 3

    rng = nl.collect_activations(model, texts, sites="blocks.1", positions=PositionRange(1, 3))
    torch.testing.assert_close(rng["blocks.1"], acts[:, 1:3])


def test_prompt_positions_and_input_only(tiny_bert):
    model = tiny_bert
    prompt = torch.randn(4, model.d_model)
    texts = ["w1 w2", "w3 w4 w5 w6"]
    full = nl.collect_activations(model, texts, prompt=prompt)
    assert full["blocks.0"].shape[1] == 4 + model.encode(texts).input_ids.shape[1]
    p = nl.collect_activations(model, texts, prompt=prompt, positions=nl.PromptTokens())
    torch.testing.assert_close(p["blocks.0"], full["blocks.0"][:, :4])
    assert p.tokens[0] == [f"<prompt:{k}>" for k in range(4)]
    inp = nl.collect_activations(model, texts, prompt=prompt, positions=nl.AllTokens(False))
    assert not inp.valid["blocks.0"][:, :4].any()
    assert inp.valid["blocks.0"].sum().item() == model.encode(texts).attention_mask.sum().item()
    with pytest.raises(NeuronLensError, match="soft prompt"):
        nl.collect_activations(model, texts, positions=nl.PromptTokens())


def test_mask_token_errors(tiny_bert):
    with pytest.raises(NeuronLensError, match="exactly one"):
        nl.capture(tiny_bert, ["w1 w2"], lambda sb: None, positions=nl.MaskToken(), progress=False)


def test_gradients_match_per_example_autograd(tiny_pair, family):
    """grads=True equals torch.autograd.grad of each example's objective separately."""
    model, _ = tiny_pair
    clean = all_hook_counts(model)
    texts = random_texts(5, seed=11)
    labels = torch.tensor([3, 7, 9, 3, 12])
    prompt = torch.randn(3, model.d_model)

    def objective(logits, batch):  # gold "label word" logit at the last step
        if logits.shape[1] == 1:  # T5 decoder
            last = torch.zeros(len(batch.labels), dtype=torch.long)
        else:
            last = batch.encoded.attention_mask.sum(1) - 1 + batch.n_prompt
        return logits[torch.arange(len(last)), last, batch.labels]

    got = {}

    def keep(sb):
        got.setdefault(sb.site.name, []).append((sb.acts, sb.grads, sb.valid))

    nl.capture(
        model,
        texts,
        keep,
        labels=labels,
        prompt=prompt,
        grads=True,
        objective=objective,
        batch_size=2,
        progress=False,
    )

    sites = model.sites
    for i, text in enumerate(texts):
        enc = model.encode([text])
        live = {}
        hooks = [
            (s.hook_name, lambda a, hook, s=s, live=live: live.__setitem__(s.name, a))
            for s in sites
        ]
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            logits = model(enc, prompt=prompt, embeds_require_grad=True)
            from neuronlens.capture import CaptureBatch

            cb = CaptureBatch(torch.tensor([i]), enc, labels[i : i + 1], n_prompt=3)
            target = objective(logits, cb)
            grads = torch.autograd.grad(target.sum(), [live[s.name] for s in sites])
        b, r = divmod(i, 2)
        for s, g in zip(sites, grads, strict=True):
            acts_b, grads_b, valid_b = got[s.name][b]
            n = int(valid_b[r].sum()) if s.stack != "decoder_blocks" else 1
            torch.testing.assert_close(grads_b[r, :n], g[0, :n], atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(
                acts_b[r, :n], live[s.name][0, :n].detach(), atol=1e-5, rtol=0
            )
    assert all_hook_counts(model) == clean


def test_hooks_gone_after_normal_and_failing_calls(tiny_pair):
    model, _ = tiny_pair
    clean = all_hook_counts(model)
    assert clean[0] == 0
    nl.capture(model, ["w1 w2", "w3"], nl.RunningMean(), progress=False)
    assert all_hook_counts(model) == clean

    class Boom(RuntimeError):
        pass

    def explode(sb):
        raise Boom("inside a hook")

    with pytest.raises(Boom):
        nl.capture(model, ["w1 w2", "w3"], explode, progress=False)
    assert all_hook_counts(model) == clean
    with pytest.raises(Boom):
        nl.capture(
            model,
            ["w1 w2"],
            lambda sb: None,
            grads=True,
            objective=lambda lg, b: (_ for _ in ()).throw(Boom("objective")),
            progress=False,
        )
    assert all_hook_counts(model) == clean
    # the model still works and gives the same numbers afterwards
    rm1, rm2 = nl.RunningMean(), nl.RunningMean()
    nl.capture(model, ["w1 w2"], rm1, progress=False)
    nl.capture(model, ["w1 w2"], rm2, progress=False)
    for k in rm1.sums:
        assert torch.equal(rm1.sums[k], rm2.sums[k])


def test_running_mean_matches_stored_reference_and_merges(tiny_bert):
    model = tiny_bert
    texts = random_texts(13, seed=4)
    stored = _store_all(model, texts, batch_size=4)
    rm = nl.RunningMean()
    nl.capture(model, texts, rm, batch_size=4, progress=False)
    for site in model.sites:
        vals = []
        for sb in stored:
            if sb.site == site:
                for b in range(sb.acts.shape[0]):
                    for t in range(sb.acts.shape[1]):
                        if sb.valid[b, t]:
                            vals.append(sb.acts[b, t])
        ref = torch.stack(vals).double().mean(0).float()
        torch.testing.assert_close(rm.mean(site), ref, atol=1e-6, rtol=1e-5)
    a, b = nl.RunningMean(), nl.RunningMean()
    nl.capture(model, texts[:6], a, progress=False)
    nl.capture(model, texts[6:], b, progress=False)
    merged = a.merge(b)
    for site in model.sites:
        torch.testing.assert_close(merged.mean(site), rm.mean(site), atol=1e-6, rtol=1e-5)


def test_labels_and_indices_reach_the_callback(tiny_bert):
    seen = []
    data = type("Split", (), {"texts": ["w1", "w2 w3", "w4"], "labels": [1, 0, 1]})()
    nl.capture(
        tiny_bert,
        data,
        lambda sb: seen.append((sb.batch.index.tolist(), sb.batch.labels.tolist())),
        sites="blocks.0",
        batch_size=2,
        progress=False,
    )
    assert seen == [([0, 1], [1, 0]), ([2], [1])]


def test_nan_activations_are_reported(tiny_bert):
    clean = all_hook_counts(tiny_bert)
    with torch.no_grad():
        tiny_bert.hf_ffn(tiny_bert.site(0)).intermediate.dense.weight[0, 0] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="blocks.0"):
        nl.capture(tiny_bert, ["w1 w2"], lambda sb: None, progress=False)
    assert all_hook_counts(tiny_bert) == clean


def test_grads_need_an_objective_and_bad_objective_shape(tiny_bert):
    with pytest.raises(NeuronLensError, match="objective"):
        nl.capture(tiny_bert, ["w1"], lambda sb: None, grads=True, progress=False)
    with pytest.raises(ShapeMismatchError):
        nl.capture(
            tiny_bert,
            ["w1", "w2"],
            lambda sb: None,
            grads=True,
            objective=lambda lg, b: lg[:, 0, :3].reshape(-1),
            progress=False,
        )


def test_bad_prompt_shape(tiny_bert):
    with pytest.raises(ShapeMismatchError, match="soft prompt"):
        nl.capture(tiny_bert, ["w1"], lambda sb: None, prompt=torch.randn(3, 5), progress=False)


def test_same_seed_same_numbers(tiny_bert):
    """Everything random is seeded: the same seed gives the same prompt, noise and random
    control bit for bit, and another seed gives other numbers (so this can fail)."""
    from neuronlens.interventions import Noise, intervene
    from neuronlens.neurons import NeuronSet
    from neuronlens.prompts import tune_prompt

    from .probe_fixtures import word_task

    task = word_task()

    def tuned(seed):
        return tune_prompt(
            tiny_bert, task, train=task.load("train"), validation=False, n_tokens=3,
            max_steps=4, lr=0.1, seed=seed, progress=False,
        ).prompt  # fmt: skip

    assert torch.equal(tuned(3), tuned(3)) and not torch.equal(tuned(3), tuned(4))
    nset = NeuronSet({"blocks.0": torch.arange(10)}, {"blocks.0": 24})
    assert torch.equal(
        nset.random_control(5).indices["blocks.0"], nset.random_control(5).indices["blocks.0"]
    )
    assert not torch.equal(
        nset.random_control(5).indices["blocks.0"], nset.random_control(6).indices["blocks.0"]
    )
    texts = random_texts(4, seed=1)

    def noised(seed):
        with intervene(tiny_bert, Noise(nset, std=1.0, seed=seed)):
            return nl.collect_activations(tiny_bert, texts)["blocks.1"]

    assert torch.equal(noised(2), noised(2)) and not torch.equal(noised(2), noised(3))


def test_progress_bar_can_be_turned_off(tiny_bert, capsys):
    nl.capture(tiny_bert, random_texts(12), lambda sb: None, batch_size=2, progress=False)
    assert "capture" not in capsys.readouterr().err
    nl.capture(tiny_bert, random_texts(12), lambda sb: None, batch_size=2, progress=True)
    assert "capture" in capsys.readouterr().err
