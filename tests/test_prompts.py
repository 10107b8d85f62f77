"""Prompt tuning, heads, evaluation and saving, on tiny random models."""

import copy

import pytest
import torch

import neuronlens as nl
from neuronlens.errors import (
    EmptyDataError,
    MissingLMHeadError,
    NeuronLensError,
    NonFiniteActivationError,
    ShapeMismatchError,
)
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.prompts import (
    LinearHead,
    PromptResult,
    Verbalizer,
    class_logits,
    encode_task,
    evaluate,
    fit_linear_probe,
    init_prompt,
    pooled_features,
    tune_prompt,
    tune_prompts,
)
from neuronlens.tasks import Task


def word_task(n: int = 96, seed: int = 0, name: str = "wtask", label_space: str = "w2") -> Task:
    """Label 1 iff the text contains w1 (else it contains w2): learnable by a prompt."""
    g = torch.Generator().manual_seed(seed)

    def make(k):
        texts, labels = [], []
        for _ in range(k):
            y = int(torch.randint(2, (1,), generator=g))
            words = [f"w{int(i)}" for i in torch.randint(20, 50, (4,), generator=g)]
            words.insert(int(torch.randint(5, (1,), generator=g)), "w1" if y else "w2")
            texts.append(" ".join(words))
            labels.append(y)
        return texts, labels

    return Task.from_lists(
        name,
        label_names=("neg", "pos"),
        template="{text} w3 {mask} .",
        verbalizer=("w10", "w11"),
        splits={"train": make(n), "validation": make(32), "dev": make(48)},
        label_space=label_space,
    )


def _model(family: str, **kw):
    return nl.load_model(
        tiny_hf_model(family, seed=3, **kw), tiny_tokenizer(), name=f"tiny-{family}"
    )


@pytest.mark.parametrize("family", ["bert", "roberta", "t5", "t5-gated", "gpt2", "llama"])
def test_verbalizer_logits_equal_full_forward_logits(family):
    """Reference: the full forward's logits at the answer position, label-word columns
    (prompt before the input; tests/test_readout.py covers every readout)."""
    model = _model(family)
    task = word_task()
    readout = "last" if family in ("gpt2", "llama") else "auto"
    head = Verbalizer(model, task.verbalizer, readout=readout)
    data = task.load("dev").take(5)
    enc = encode_task(model, head, task, data)
    prompt = init_prompt(model, 3, seed=1)
    got = class_logits(model, head, prompt, enc)
    with torch.no_grad():
        full = model(enc, prompt=prompt)
    ids = [model.tokenizer.convert_tokens_to_ids(w) for w in task.verbalizer]
    for i in range(len(data)):
        if family.startswith("t5"):
            pos = 0
        elif family in ("bert", "roberta"):
            pos = 3 + enc.input_ids[i].tolist().index(model.tokenizer.mask_token_id)
        else:
            pos = 3 + int(enc.attention_mask[i].sum()) - 1
        torch.testing.assert_close(got[i], full[i, pos, ids], atol=1e-5, rtol=1e-5)


def test_causal_rendering_cuts_at_the_mask():
    model = _model("gpt2")
    task = word_task()
    head = Verbalizer(model, task.verbalizer)
    assert head.render(model, task, "w5 w6", None) == "w5 w6 w3"
    bert = _model("bert")
    assert Verbalizer(bert, task.verbalizer).render(bert, task, "w5", None) == "w5 w3 [MASK] ."


@pytest.mark.parametrize(
    "family,head",
    [("bert", "verbalizer"), ("gpt2", "verbalizer"), ("bert", "linear"), ("t5", "verbalizer")],
)
def test_training_loss_falls_and_only_the_prompt_moves(family, head):
    # GPT-2's default init (std 0.02) makes a tiny random model nearly input-blind
    model = _model(family, initializer_range=0.5) if family == "gpt2" else _model(family)
    before = copy.deepcopy(model.hf_model.state_dict())
    task = word_task()
    res = tune_prompt(
        model,
        task,
        head=head,
        n_tokens=4,
        max_steps=60,
        batch_size=16,
        lr=0.1,
        head_lr=0.05,
        eval_every=10,
        patience=100,
        progress=False,
    )
    first, last = res.history[0]["train_loss"], res.history[-1]["train_loss"]
    assert last < first, res.history
    after = model.hf_model.state_dict()
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"model weight {k} changed"
    assert res.prompt.shape == (4, model.d_model)
    assert res.val_accuracy is not None
    assert isinstance(res.head, LinearHead if head == "linear" else Verbalizer)


def test_prompt_learns_the_task():
    model = _model("bert", d_model=32, d_mlp=48, heads=4)
    task = word_task(n=256)
    res = tune_prompt(
        model,
        task,
        head="linear",
        n_tokens=4,
        epochs=6,
        batch_size=16,
        lr=0.05,
        head_lr=0.05,
        patience=100,
        progress=False,
    )
    untrained = evaluate(
        model, None, task.load("dev"), task=task, head=LinearHead(model.d_model, 2)
    )
    tuned = evaluate(model, res, task.load("dev"), task=task)
    assert tuned.accuracy >= 0.85 > untrained.accuracy
    probe = tune_prompt(
        model,
        task,
        head="linear",
        n_tokens=0,
        epochs=6,
        batch_size=16,
        head_lr=0.05,
        patience=100,
        progress=False,
    )
    assert probe.n_tokens == 0
    assert evaluate(model, probe, task.load("dev"), task=task).n == 48


def test_prompt_against_a_frozen_linear_probe():
    """head=probe.head: the fitted probe stays bit for bit, only the prompt learns."""
    model = _model("bert", d_model=32, d_mlp=48, heads=4)
    task = word_task(n=128)
    kw = dict(batch_size=16, patience=100, progress=False)
    # a weak probe (few steps), so that the prompt has something left to learn
    probe = tune_prompt(model, task, head="linear", n_tokens=0, max_steps=3, head_lr=0.05, **kw)
    frozen = copy.deepcopy(probe.head.state_dict())
    res = tune_prompt(
        model, task, head=probe.head, n_tokens=4, max_steps=40, eval_every=10, lr=0.1, **kw
    )
    assert res.head is probe.head
    for k, v in probe.head.state_dict().items():
        assert torch.equal(v, frozen[k]), k
    assert res.history[-1]["train_loss"] < res.history[0]["train_loss"], res.history
    with pytest.raises(NeuronLensError, match="nothing to train"):
        tune_prompt(model, task, head=probe.head, n_tokens=0, max_steps=2, **kw)
    other = _model("bert")  # d_model 16, the probe reads 32-wide states
    with pytest.raises(ShapeMismatchError, match="head made for this model"):
        tune_prompt(other, task, head=probe.head, n_tokens=2, max_steps=2, **kw)
    with pytest.raises(ShapeMismatchError, match="d_model"):
        evaluate(other, None, task.load("dev"), task=task, head=probe.head)


def test_learning_rate_schedules():
    from neuronlens.prompts.tuning import lr_factor

    # by hand: 2 warm-up steps, then linear decay over the remaining 3 of 5 steps
    assert [lr_factor(i, 5, schedule="linear", warmup_steps=2) for i in range(5)] == pytest.approx(
        [0.5, 1.0, 1.0, 2 / 3, 1 / 3]
    )
    assert [lr_factor(i, 4, warmup_steps=1) for i in range(4)] == [1.0] * 4
    assert [lr_factor(i, 4, schedule="linear") for i in range(4)] == [1.0, 0.75, 0.5, 0.25]
    task, kw = word_task(), dict(n_tokens=3, max_steps=6, progress=False, validation=False)
    # a decaying learning rate moves the prompt less than a constant one from the same start
    start = tune_prompt(_model("bert"), task, **{**kw, "max_steps": 1}, lr=0.0).prompt
    const = tune_prompt(_model("bert"), task, **kw, lr=0.05).prompt
    decay = tune_prompt(_model("bert"), task, **kw, lr=0.05, schedule="linear").prompt
    assert 0 < (decay - start).norm() < (const - start).norm()
    with pytest.raises(NeuronLensError, match="schedule"):
        tune_prompt(_model("bert"), task, **kw, schedule="cosine")
    with pytest.raises(NeuronLensError, match="warmup_steps"):
        tune_prompt(_model("bert"), task, **kw, warmup_steps=-1)


def test_moving_average_matches_a_step_by_step_reference():
    """ema_decay: the returned prompt and head are the moving average of the trained weights,
    recomputed here from the weights after each step (constant lr: a run of t steps is the
    first t steps of a longer one)."""
    task, decay, n = word_task(), 0.5, 5
    kw = dict(
        head="linear", n_tokens=3, lr=0.05, head_lr=0.05, validation=False, progress=False, seed=2
    )
    model = _model("bert")
    init = tune_prompt(model, task, max_steps=1, **{**kw, "lr": 0.0, "head_lr": 0.0})
    avg_p = init.prompt.double()
    avg_w = init.head.linear.weight.double()
    for t in range(1, n + 1):
        step = tune_prompt(model, task, max_steps=t, **kw)
        d = min(decay, (1 + t) / (10 + t))
        avg_p = d * avg_p + (1 - d) * step.prompt.double()
        avg_w = d * avg_w + (1 - d) * step.head.linear.weight.double()
    res = tune_prompt(model, task, max_steps=n, ema_decay=decay, **kw)
    torch.testing.assert_close(res.prompt.double(), avg_p, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(res.head.linear.weight.double(), avg_w, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(res.prompt, step.prompt)  # the average, not the last weights
    # with validation, the kept state is the validated average
    val = tune_prompt(
        model, task, max_steps=20, eval_every=5, ema_decay=0.9, **{**kw, "validation": None}
    )
    assert evaluate(model, val, task.load("validation"), task=task).accuracy == pytest.approx(
        val.val_accuracy
    )
    for bad in (0.0, 1.0, 1.5, float("nan"), "0.9", True):
        with pytest.raises(NeuronLensError, match="ema_decay"):
            tune_prompt(model, task, max_steps=1, ema_decay=bad, **kw)


def test_same_seed_same_prompt_bit_for_bit():
    task = word_task()
    runs = [
        tune_prompt(
            _model("bert"), task, n_tokens=3, max_steps=8, eval_every=4, seed=5, progress=False
        )
        for _ in range(2)
    ]
    assert torch.equal(runs[0].prompt, runs[1].prompt)
    other = tune_prompt(
        _model("bert"), task, n_tokens=3, max_steps=8, eval_every=4, seed=6, progress=False
    )
    assert not torch.equal(runs[0].prompt, other.prompt)


def test_tune_prompts_with_several_seeds():
    res = tune_prompts(
        _model("gpt2"), word_task(), seeds=(0, 1), n_tokens=2, max_steps=3, progress=False
    )
    assert [r.seed for r in res] == [0, 1]
    assert not torch.equal(res[0].prompt, res[1].prompt)


def test_save_load_round_trip(tmp_path):
    model = _model("bert")
    task = word_task()
    for head in ("linear", "verbalizer"):
        res = tune_prompt(
            model, task, head=head, n_tokens=3, max_steps=5, eval_every=5, progress=False
        )
        path = res.save(tmp_path / f"p-{head}")
        assert (tmp_path / f"p-{head}.json").is_file()
        back = PromptResult.load(path, model)
        assert torch.equal(back.prompt, res.prompt)
        assert back.metadata() == res.metadata()
        dev = task.load("dev")
        a = evaluate(model, res, dev, task=task)
        b = evaluate(model, back, dev, task=task)
        assert torch.equal(a.predictions, b.predictions)
    meta = back.metadata()
    assert meta["hidden_size"] == model.d_model and meta["task"] == "wtask"


def test_loading_into_another_model_is_an_error(tmp_path):
    task = word_task()
    res = tune_prompt(_model("bert"), task, n_tokens=3, max_steps=2, progress=False)
    res.save(tmp_path / "p")
    with pytest.raises(ShapeMismatchError, match="hidden size"):
        PromptResult.load(tmp_path / "p", _model("bert", d_model=32, heads=4))
    with pytest.raises(NeuronLensError, match="tuned on 'tiny-bert', not on 'tiny-gpt2'"):
        PromptResult.load(tmp_path / "p", _model("gpt2"))  # the same width, another model
    with pytest.raises(NeuronLensError, match="cannot run"):
        PromptResult.load(tmp_path / "p", _model("gpt2"), other_model=True)
    with pytest.raises(NeuronLensError, match="not a"):
        from neuronlens.io import load_result

        load_result(tmp_path / "p", kind="neuron_scores")


def test_verbalizer_on_headless_model_is_an_error(tmp_path):
    from transformers import BertModel

    base = BertModel(tiny_hf_model("bert").config)
    base.config.architectures = ["BertModel"]
    base.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model = nl.load_model(tmp_path)
    with pytest.raises(MissingLMHeadError):
        Verbalizer(model, ("w10", "w11"))
    with pytest.raises(MissingLMHeadError):
        tune_prompt(model, word_task(), head="verbalizer", max_steps=1, progress=False)
    res = tune_prompt(model, word_task(), n_tokens=2, max_steps=2, progress=False)  # auto: linear
    assert isinstance(res.head, LinearHead)


def test_transfer_needs_the_same_label_space():
    model = _model("bert")
    a = word_task(name="a", label_space="w2")
    b = word_task(seed=1, name="b", label_space="w2")
    c = word_task(seed=2, name="c", label_space="other")
    res = tune_prompt(model, a, n_tokens=2, max_steps=2, progress=False)
    assert evaluate(model, res, b.load("dev"), task=b).n == 48  # A's prompt on B
    with pytest.raises(NeuronLensError, match="label space"):
        evaluate(model, res, c.load("dev"), task=c)


def test_bad_inputs():
    model = _model("bert")
    task = word_task()
    with pytest.raises(NeuronLensError, match="single token"):
        Verbalizer(model, ("w10 w11", "w12"))
    with pytest.raises(NeuronLensError, match="n_tokens must be >= 0"):
        init_prompt(model, -1)
    with pytest.raises(NeuronLensError, match="nothing to train"):
        tune_prompt(model, task, head="verbalizer", n_tokens=0, max_steps=1, progress=False)
    with pytest.raises(ShapeMismatchError):
        tune_prompt(model, task, init=torch.zeros(3, 7), max_steps=1, progress=False)
    with pytest.raises(NeuronLensError, match="unknown head"):
        tune_prompt(model, task, head="mlp", max_steps=1, progress=False)
    # training-length settings that divided by zero, trained nothing or climbed the loss
    for bad, match in [
        (dict(batch_size=0), "batch_size"),
        (dict(batch_size=-1), "batch_size"),
        (dict(max_steps=0), "max_steps"),
        (dict(max_steps=None, epochs=0), "epochs"),
        (dict(max_steps=None, epochs=float("nan")), "epochs"),
        (dict(eval_every=-2), "eval_every"),
        (dict(patience=0), "patience"),
        (dict(min_steps=-1), "min_steps"),
        (dict(lr=-1.0), "lr"),
        (dict(head="linear", head_lr=-1e-3), "head_lr"),
    ]:
        with pytest.raises(NeuronLensError, match=match):
            tune_prompt(model, task, n_tokens=3, **{"max_steps": 3, **bad}, progress=False)


def test_min_steps_holds_off_early_stopping():
    """With nothing learning (lr 0) every validation after the first is no better."""
    model = _model("bert")
    task = word_task(n=64)
    kw = dict(head="linear", n_tokens=2, max_steps=12, eval_every=2, lr=0.0, head_lr=0.0)
    kw.update(batch_size=8, patience=1, progress=False)
    steps = [h["step"] for h in tune_prompt(model, task, **kw).history]
    assert steps == [2, 4]  # stopped at the first validation without a new best
    res = tune_prompt(model, task, min_steps=7, **kw)
    assert [h["step"] for h in res.history] == [2, 4, 6, 8]  # first stop allowed at step >= 7
    assert res.val_accuracy == res.history[0]["val_accuracy"]  # the best (first) one kept


# ---------------------------------------------------------------------------- linear probe


def _slow_pooled(model, task, data):
    """Reference: one example at a time, the mean of its last hidden states (no padding)."""
    head = LinearHead(model.d_model, task.num_labels)
    rows = []
    with torch.no_grad():
        for text in data.texts:
            enc = model.encode([head.render(model, task, text, None)])
            hidden, _ = model.hidden_states(enc)
            rows.append(hidden[0].double().mean(0))
    return torch.stack(rows)


def test_linear_probe_features_and_optimum():
    """Features equal the one-at-a-time reference; the fit is the regularised optimum."""
    model = _model("bert", d_model=32, d_mlp=48, heads=4)
    task = word_task(n=128)
    train = task.load("train")
    before = copy.deepcopy(model.hf_model.state_dict())
    probe = fit_linear_probe(model, task, weight_decays=(1e-2,), progress=False)
    for k, v in model.hf_model.state_dict().items():
        assert torch.equal(v, before[k]), k
    head = LinearHead(model.d_model, 2)
    x = pooled_features(model, head, task, train, batch_size=7, progress=False)
    torch.testing.assert_close(x, _slow_pooled(model, task, train), rtol=1e-5, atol=1e-5)
    # optimality: the gradient of  mean CE + wd * ||W||^2  vanishes at the fitted head
    lin = torch.nn.Linear(32, 2, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(probe.head.linear.weight)
        lin.bias.copy_(probe.head.linear.bias)
    y = torch.tensor(train.labels)
    loss = torch.nn.functional.cross_entropy(lin(x), y) + 1e-2 * lin.weight.pow(2).sum()
    gw, gb = torch.autograd.grad(loss, [lin.weight, lin.bias])
    assert gw.abs().max() < 1e-4 and gb.abs().max() < 1e-4, (gw, gb)
    # ... so no head trained by SGD through the model does better on that objective
    sgd = tune_prompt(
        model, task, head="linear", n_tokens=0, epochs=3, head_lr=0.05, weight_decay=0.0,
        patience=100, progress=False,
    )  # fmt: skip
    with torch.no_grad():
        lin.weight.copy_(sgd.head.linear.weight)
        lin.bias.copy_(sgd.head.linear.bias)
    sgd_loss = torch.nn.functional.cross_entropy(lin(x), y) + 1e-2 * lin.weight.pow(2).sum()
    assert loss.item() <= sgd_loss.item() + 1e-9
    assert probe.n_tokens == 0 and probe.history[0]["weight_decay"] == 1e-2
    assert probe.history[0]["step"] > 0  # L-BFGS iterations
    assert not any(p.requires_grad for p in probe.head.parameters())


def test_linear_probe_picks_the_best_weight_decay_and_is_deterministic(tmp_path):
    model = _model("bert", d_model=32, d_mlp=48, heads=4)
    task = word_task(n=128)
    decays = (1.0, 0.0, 1e-3, 10.0)
    probe = fit_linear_probe(model, task, weight_decays=decays, progress=False)
    hist = probe.history
    assert [h["weight_decay"] for h in hist] == sorted(decays)
    best = max(h["val_accuracy"] for h in hist)
    assert probe.val_accuracy == best
    chosen = max(w for w in sorted(decays) if hist[sorted(decays).index(w)]["val_accuracy"] == best)
    # the head kept is the head fitted with the chosen weight decay alone
    alone = fit_linear_probe(model, task, weight_decays=(chosen,), progress=False)
    assert torch.equal(alone.head.linear.weight, probe.head.linear.weight)
    again = fit_linear_probe(model, task, weight_decays=decays, progress=False)
    assert torch.equal(again.head.linear.weight, probe.head.linear.weight)
    assert torch.equal(again.head.linear.bias, probe.head.linear.bias)
    # a huge penalty shrinks the weights
    assert hist[-1]["train_accuracy"] <= hist[0]["train_accuracy"] + 1e-9
    # evaluation agrees with the validation accuracy; save / load round trip
    val = task.load("validation")
    assert evaluate(model, probe, val, task=task).accuracy == pytest.approx(best)
    path = probe.save(tmp_path / "probe")
    loaded = PromptResult.load(path, model)
    assert loaded.n_tokens == 0
    dev = task.load("dev")
    assert torch.equal(
        evaluate(model, loaded, dev, task=task).predictions,
        evaluate(model, probe, dev, task=task).predictions,
    )
    # and it is a head a prompt can be tuned against
    res = tune_prompt(
        model, task, head=probe.head, n_tokens=2, max_steps=4, progress=False, patience=100
    )
    assert torch.equal(res.head.linear.weight, probe.head.linear.weight)
    # ... or trained on from it: the copy moves, the probe stays
    fitted = probe.head.linear.weight.clone()
    warm = probe.head.trainable_copy()
    res = tune_prompt(
        model, task, head=warm, n_tokens=2, max_steps=4, head_lr=0.05, progress=False,
        patience=100,
    )  # fmt: skip
    assert res.head is warm and not torch.equal(warm.linear.weight, fitted)
    assert torch.equal(probe.head.linear.weight, fitted)
    assert not any(p.requires_grad for p in probe.head.parameters())


def test_linear_probe_bad_inputs():
    model = _model("bert")
    task = word_task()
    with pytest.raises(NeuronLensError, match="needs a validation split"):
        fit_linear_probe(model, task, validation=False, progress=False)
    with pytest.raises(NeuronLensError, match=">= 0"):
        fit_linear_probe(model, task, weight_decays=(-1.0,), progress=False)
    with pytest.raises(NeuronLensError, match=">= 0"):
        fit_linear_probe(model, task, weight_decays=(), progress=False)
    with pytest.raises(EmptyDataError, match="no examples"):  # an empty split cannot exist
        empty = task.load("train").where(lambda text, text_b, label: False)
        fit_linear_probe(model, task, train=empty, progress=False)
    with pytest.raises(NeuronLensError, match="max_iter"):
        fit_linear_probe(model, task, max_iter=0, progress=False)
    with pytest.raises(NeuronLensError, match="batch_size"):
        fit_linear_probe(model, task, batch_size=0, progress=False)
    with pytest.raises(NeuronLensError, match="what a LinearHead reads"):
        pooled_features(model, Verbalizer(model, task.verbalizer), task, task.load("dev"))
    probe = fit_linear_probe(model, task, validation=False, weight_decays=(0.1,), progress=False)
    assert probe.val_accuracy is None and probe.history[0]["val_accuracy"] is None
    broken = _model("bert")
    with torch.no_grad():
        broken.input_embeddings.weight[broken.tokenizer.convert_tokens_to_ids("w1")] = float("nan")
    with pytest.raises(NonFiniteActivationError, match="NaN or infinite hidden states"):
        fit_linear_probe(broken, task, progress=False)
