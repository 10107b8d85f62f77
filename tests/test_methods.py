"""Prefix tuning and P-tuning, against slow references, through the same results and calls."""

import copy

import pytest
import torch
from transformers import masking_utils, modeling_utils
from transformers.models.bert import modeling_bert
from transformers.models.gpt2 import modeling_gpt2
from transformers.models.llama import modeling_llama

import neuronlens as nl
from neuronlens.errors import NeuronLensError
from neuronlens.models.prefix import Prefix, attention_dims
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.prompts import (
    LinearHead,
    PromptResult,
    Verbalizer,
    class_logits,
    encode_task,
    evaluate,
    render_texts,
    tune_prompt,
)
from neuronlens.pruning import prune_model, retrain_prompt

from .probe_fixtures import word_task

EAGER = {
    "bert": modeling_bert.eager_attention_forward,
    "roberta": modeling_bert.eager_attention_forward,
    "gpt2": modeling_gpt2.eager_attention_forward,
    "llama": modeling_llama.eager_attention_forward,
}


def _with_explicit_prefix(raw, family, prefix: Prefix):
    """The reference: an attention function that puts the prefix's keys and values before
    the layer's own (and opens the mask over them), the model run without any cache."""
    layers, kv_heads, head_dim = attention_dims(raw.config)
    p = prefix.n_tokens

    def attention(module, query, key, value, attention_mask, **kwargs):
        b = key.shape[0]
        k, v = (
            prefix.kv[module.layer_idx, i].view(p, kv_heads, head_dim).transpose(0, 1)
            .unsqueeze(0).expand(b, -1, -1, -1)
            for i in (0, 1)
        )  # fmt: skip
        key, value = torch.cat([k, key], 2), torch.cat([v, value], 2)
        if attention_mask is not None:
            shape = (*attention_mask.shape[:-1], p)
            opened = (
                attention_mask.new_zeros(shape)
                if attention_mask.is_floating_point()
                else attention_mask.new_ones(shape)
            )  # noqa: E501
            attention_mask = torch.cat([opened, attention_mask], -1)
        return EAGER[family](module, query, key, value, attention_mask, **kwargs)

    modeling_utils.AttentionInterface.register("explicit_prefix", attention)
    # a custom attention gets its masks only when a mask function is registered for it
    masking_utils.AttentionMaskInterface.register("explicit_prefix", masking_utils.eager_mask)
    raw.config._attn_implementation = "explicit_prefix"
    for module in raw.modules():
        if hasattr(module, "config"):
            module.config._attn_implementation = "explicit_prefix"
    return raw


@pytest.mark.parametrize(
    "family,head",
    [
        ("bert", "verbalizer"),
        ("roberta", "linear"),
        ("gpt2", "verbalizer"),
        ("llama", "verbalizer"),
        ("llama", "linear"),
    ],
)
def test_a_prefix_equals_explicit_extra_keys_and_values(family, head):
    hf = tiny_hf_model(family, seed=3)
    raw = copy.deepcopy(hf)
    model = nl.load_model(hf, tiny_tokenizer(), name=f"tiny-{family}")
    task = word_task()
    torch.manual_seed(0)
    layers, kv_heads, head_dim = attention_dims(hf.config)
    prefix = Prefix(torch.randn(layers, 2, 3, kv_heads * head_dim))
    readout = {"bert": "mask", "roberta": "pool", "gpt2": "last", "llama": "last"}[family]
    hd = (
        Verbalizer(model, task.verbalizer, readout=readout)
        if head == "verbalizer"
        else LinearHead(model.d_model, 2, readout="pool")
    )
    data = task.load("dev").take(6)
    got = class_logits(model, hd, prefix, encode_task(model, hd, task, data))  # padded batch
    ref_model = _with_explicit_prefix(raw, family, prefix)
    for i, text in enumerate(render_texts(model, hd, task, data)):
        ids = model.tokenizer(text, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = ref_model.base_model(input_ids=ids).last_hidden_state[0]
        if head == "verbalizer":
            pos = ids[0].tolist().index(model.tokenizer.mask_token_id) if readout == "mask" else -1
            lm = getattr(ref_model, model.family.hf_head)
            want = lm(out[pos])[hd.token_ids]
        else:
            want = hd.linear(out.mean(0))
        torch.testing.assert_close(got[i], want, atol=1e-5, rtol=1e-5)
    # the prefix changes the answer (the reference is not a no-op)
    plain = class_logits(model, hd, None, encode_task(model, hd, task, data))
    assert not torch.allclose(plain, got, atol=1e-4)


@pytest.mark.parametrize("family", ["bert", "gpt2"])
def test_prefix_tuning_trains_saves_and_runs_through_every_call(tmp_path, family):
    model = nl.load_model(tiny_hf_model(family, seed=3), tiny_tokenizer(), name=f"tiny-{family}")
    task = word_task(n=80)
    train, dev = task.load("train"), task.load("dev")
    res = tune_prompt(model, task, train=train, validation=False, method="prefix", n_tokens=4,
                      max_steps=40, lr=1e-2, encoder_hidden=32, seed=0, progress=False)  # fmt: skip
    assert res.is_prefix and res.method == "prefix" and res.n_tokens == 4
    assert res.head.readout == ("mask" if family == "bert" else "last")
    layers, kv_heads, head_dim = attention_dims(model.hf_model.config)
    assert res.prompt.kv.shape == (layers, 2, 4, kv_heads * head_dim)
    acc = evaluate(model, res, dev, task=task).accuracy
    res.save(tmp_path / "p")
    back = PromptResult.load(tmp_path / "p", model)
    assert back.is_prefix and torch.equal(back.prompt.kv, res.prompt.kv)
    assert evaluate(model, back, dev, task=task).accuracy == acc
    # predictivity reads the answer position (a prefix has no sequence positions)
    skill = nl.predictivity(model, res, task, dev, train=train, progress=False)
    assert skill.per_token["blocks.0"].shape[0] == 1
    attr = nl.attribute(model, res, task, train, n=10, progress=False)
    with nl.intervene(model, nl.Zero(skill.top(percent=10))):
        evaluate(model, res, dev, task=task)
    small = prune_model(model, attr.top(percent=50))
    again = retrain_prompt(small, res, task, train=train, max_steps=3)
    assert again.is_prefix and again.prompt.kv.shape == res.prompt.kv.shape
    assert not torch.equal(again.prompt.kv, res.prompt.kv)


def test_prefix_tuning_refuses_what_it_cannot_do():
    task = word_task()
    t5 = nl.load_model(tiny_hf_model("t5", seed=3), tiny_tokenizer(), name="tiny-t5")
    with pytest.raises(NeuronLensError, match="T5"):
        tune_prompt(
            t5, task, validation=False, method="prefix", n_tokens=2, max_steps=1, progress=False
        )
    bert = nl.load_model(tiny_hf_model("bert", seed=3), tiny_tokenizer(), name="tiny-bert")
    with pytest.raises(NeuronLensError, match="no soft-prompt position"):
        tune_prompt(bert, task, validation=False, method="prefix", readout="prompt", n_tokens=2)
    with pytest.raises(NeuronLensError, match="method must be"):
        tune_prompt(bert, task, validation=False, method="lora", n_tokens=2)
    with pytest.raises(NeuronLensError, match="ema_decay"):
        tune_prompt(bert, task, validation=False, method="prefix", n_tokens=2, max_steps=1,
                    ema_decay=0.99, progress=False)  # fmt: skip


def test_p_tuning_trains_an_ordinary_prompt_through_an_encoder():
    model = nl.load_model(tiny_hf_model("bert", seed=3), tiny_tokenizer(), name="tiny-bert")
    task = word_task(n=80)
    res = tune_prompt(model, task, train=task.load("train"), validation=False, method="p-tuning",
                      readout="prompt", n_tokens=4, max_steps=30, lr=1e-2, seed=0, progress=False)  # fmt: skip
    assert res.method == "p-tuning" and not res.is_prefix and res.prompt.shape == (4, model.d_model)
    mask = model.input_embeddings.weight[model.tokenizer.mask_token_id]
    assert torch.equal(res.prompt[0], mask)  # the readout row stays the mask embedding
    again = tune_prompt(model, task, train=task.load("train"), validation=False, method="p-tuning",
                        readout="prompt", n_tokens=4, max_steps=30, lr=1e-2, seed=0, progress=False)  # fmt: skip
    assert torch.equal(res.prompt, again.prompt)  # seeded, encoder included


def test_each_method_trains_with_its_own_default_learning_rate():
    from neuronlens.prompts.tuning import DEFAULT_LR

    model = nl.load_model(tiny_hf_model("bert", seed=3), tiny_tokenizer(), name="tiny-bert")
    task = word_task(n=40)
    kw = dict(train=task.load("train"), validation=False, n_tokens=2, max_steps=4, seed=0,
              progress=False)  # fmt: skip
    assert DEFAULT_LR == {"prompt": 3e-2, "p-tuning": 3e-2, "prefix": 1e-3}
    for method, other in (("prefix", 3e-2), ("prompt", 1e-3)):
        default = tune_prompt(model, task, method=method, **kw)
        same = tune_prompt(model, task, method=method, lr=DEFAULT_LR[method], **kw)
        moved = tune_prompt(model, task, method=method, lr=other, **kw)
        a, b, c = (getattr(r.prompt, "kv", r.prompt) for r in (default, same, moved))
        assert torch.equal(a, b) and not torch.allclose(a, c)
    with pytest.raises(NeuronLensError, match="lr must be"):
        tune_prompt(model, task, lr=-1.0, **kw)


def test_training_stops_once_the_loss_has_converged():
    model = nl.load_model(tiny_hf_model("bert", seed=3), tiny_tokenizer(), name="tiny-bert")
    task = word_task(n=80)
    kw = dict(train=task.load("train"), validation=False, n_tokens=2, lr=1e-2, seed=0,
              progress=False)  # fmt: skip
    # a tolerance of 0.99: any window whose loss fell by less than 99 % counts as converged,
    # so training stops at the first step with two full windows
    quick = tune_prompt(model, task, max_steps=60, converge_window=5, converge_tol=0.99, **kw)
    mark = [h for h in quick.history if "converged" in h]
    assert [h["step"] for h in mark] == [10]
    w = mark[0]["converged"]
    assert w["window_before"] - w["window_now"] < 0.99 * w["window_before"]
    # min_steps holds the stop off; without a window the full length runs
    held = tune_prompt(model, task, max_steps=60, converge_window=5, converge_tol=0.99,
                       min_steps=25, **kw)  # fmt: skip
    assert [h["step"] for h in held.history if "converged" in h] == [25]
    full = tune_prompt(model, task, max_steps=30, **kw)
    assert not any("converged" in h for h in full.history)
    with pytest.raises(NeuronLensError, match="converge_window"):
        tune_prompt(model, task, max_steps=5, converge_window=0, **kw)
    with pytest.raises(NeuronLensError, match="converge_tol"):
        tune_prompt(model, task, max_steps=5, converge_window=3, converge_tol=1.5, **kw)


def test_skip_runs_on_a_converged_prefix():
    from neuronlens.pruning import skip_search

    model = nl.load_model(tiny_hf_model("gpt2", seed=3), tiny_tokenizer(), name="tiny-gpt2")
    task = word_task(n=80)
    res = tune_prompt(model, task, train=task.load("train"), validation=False, method="prefix",
                      n_tokens=3, max_steps=200, lr=1e-2, converge_window=10, converge_tol=0.05,
                      seed=0, progress=False)  # fmt: skip
    assert any("converged" in h for h in res.history)
    dev = word_task(n=300, seed=4).load("train")
    found = skip_search(model, res, task, train=task.load("train"), eval_data=dev, psi=0.2,
                        step=0.01, eval_fraction=0.08, progress=False)  # fmt: skip
    assert found.model.pruning.kept_ratio == pytest.approx(found.kept_ratio, abs=0.01)
    assert found.accuracy >= found.base_accuracy - 0.002 - 1e-9
