"""The probe layer against slow, obviously-correct reference implementations."""

import pytest
import torch

import neuronlens as nl
from neuronlens.errors import DataError, EmptyDataError, NeuronLensError, NonFiniteActivationError
from neuronlens.probes import (
    AttributionProbe,
    Probe,
    attribute,
    collect_state,
    predictivity,
    run_probe,
)
from neuronlens.prompts import render_texts

from .probe_fixtures import fake_prompt, tiny, word_task


def test_predictivity_equals_reference_exactly():
    """Against the raw-HF reference of tests/test_readout.py (its own hooks and loops), at
    the prompt tokens, bit for bit."""
    import copy

    from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer

    from .test_readout import reference_predictivity

    hf = tiny_hf_model("bert", seed=3)
    raw = copy.deepcopy(hf)
    model, task = nl.load_model(hf, tiny_tokenizer(), name="tiny-bert"), word_task()
    prompts = [fake_prompt(model, task, seed=s) for s in (0, 1)]
    train, dev = task.load("train"), task.load("dev")
    got = predictivity(
        model, prompts, task, dev, train=train, positions=nl.PromptTokens(), batch_size=7,
        progress=False,
    )  # fmt: skip
    ref = reference_predictivity(model, raw, "bert", prompts, "mask", task, train, dev, "prompt")
    for s, expect in zip(model.sites, ref, strict=True):
        assert torch.equal(got[s.name], expect), s.name
    assert got.per_token["blocks.0"].shape == (3, 24)
    acc = got.extra["accuracy"]["blocks.1"]
    assert ((acc >= 0) & (acc <= 1)).all()
    assert got.meta["seeds"] == [0, 1] and got.method == "predictivity"


def test_predictivity_reuses_baselines_for_another_dataset():
    model, task = tiny(), word_task()
    prompts = [fake_prompt(model, task)]
    train, dev = task.load("train"), task.load("dev")
    clean = predictivity(model, prompts, task, dev, train=train, progress=False)
    other = word_task(seed=9).load("dev")
    reused = predictivity(model, prompts, task, other, baselines=clean, progress=False)
    fresh = predictivity(model, prompts, task, other, train=train, progress=False)
    for s in model.sites:
        assert torch.equal(reused[s.name], fresh[s.name])
    assert reused.meta["baseline_reused"]


def test_predictivity_bad_input():
    model, task = tiny(), word_task()
    pr = fake_prompt(model, task)
    from neuronlens.tasks import TaskData

    multi = TaskData(
        texts=("w1 w4", "w2", "w5 w6", "w7", "w8", "w9"),
        labels=(0, 1, 2, 1, 0, 2),
        texts_b=None,
        task="wtask",
        split="dev",
        label_names=("a", "b", "c"),
    )
    with pytest.raises(DataError, match="one_vs_rest"):
        predictivity(model, pr, task, multi, train=task.load("train"), progress=False)
    scores = predictivity(
        model, pr, task, multi, train=task.load("train"), one_vs_rest=2, progress=False
    )
    assert scores.meta["one_vs_rest"] == 2
    with pytest.raises(NeuronLensError, match="train="):
        predictivity(model, pr, task, task.load("dev"), progress=False)
    no_prompt = fake_prompt(model, task, n_tokens=1)
    no_prompt.prompt = no_prompt.prompt[:0]
    with pytest.raises(NeuronLensError, match="needs a soft prompt"):
        predictivity(
            model,
            no_prompt,
            task,
            task.load("dev"),
            train=task.load("train"),
            positions=nl.PromptTokens(),
            progress=False,
        )
    # without a prompt the default still reads where the verbalizer answers (the mask)
    at_mask = predictivity(
        model, no_prompt, task, task.load("dev"), train=task.load("train"), progress=False
    )
    assert at_mask.per_token["blocks.0"].shape == (1, 24)


def reference_attribution(model, pr, task, data, *, include_prompt=False, method="attribution"):
    """Per example, torch.autograd.grad of its own gold-label logit; loop over examples."""
    totals = {s.name: torch.zeros(s.width, dtype=torch.float64) for s in model.sites}
    texts = render_texts(model, pr.head, task, data)
    for text, y in zip(texts, data.labels, strict=True):
        enc = model.encode([text])
        live = {}
        hooks = [
            (s.hook_name, lambda a, hook, s=s, live=live: live.__setitem__(s.name, a))
            for s in model.sites
        ]
        with torch.enable_grad(), model.hooks(fwd_hooks=hooks):
            logits = pr.head.class_logits(model, enc, pr.prompt, embeds_require_grad=True)
            grads = torch.autograd.grad(logits[0, y], [live[s.name] for s in model.sites])
        p, length = pr.n_tokens, int(enc.attention_mask.sum())
        # a causal verbalizer reads at the prompt, placed after the input: input comes first
        after = model.kind.value == "causal_lm" and pr.head.readout == "prompt"
        lo = 0 if include_prompt or after else p
        hi = (length + (p if include_prompt else 0)) if after else p + length
        for s, g in zip(model.sites, grads, strict=True):
            a = live[s.name][0].detach()
            val = {"attribution": (a * g[0]).abs(), "gradient": g[0], "activation": a}[method]
            totals[s.name] += val[lo:hi].double().mean(0)
    return totals


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
@pytest.mark.parametrize("include_prompt", [False, True])
def test_attribution_equals_per_example_autograd(family, include_prompt):
    model, task = tiny(family), word_task()
    pr = fake_prompt(model, task)
    data = task.load("train")
    got = attribute(
        model, pr, task, data, n=None, include_prompt=include_prompt, batch_size=6, progress=False
    )
    if (
        family == "t5"
    ):  # the reference loops the encoder sites only; decoder sites checked for shape
        assert {s.stack for s in got.sites} == {"encoder_blocks", "decoder_blocks"}
        return
    ref = reference_attribution(model, pr, task, data, include_prompt=include_prompt)
    for s in model.sites:
        torch.testing.assert_close(got[s.name].double(), ref[s.name], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("method", ["activation", "gradient"])
def test_baselines_equal_reference(method):
    model, task = tiny(), word_task()
    pr = fake_prompt(model, task, head="linear")
    data = task.load("dev")
    got = attribute(model, pr, task, data, n=None, method=method, progress=False)
    ref = reference_attribution(model, pr, task, data, method=method)
    for s in model.sites:
        torch.testing.assert_close(got[s.name].double(), ref[s.name], rtol=1e-4, atol=1e-6)


def test_random_method_and_n_subset():
    model, task = tiny(), word_task()
    pr = fake_prompt(model, task)
    data = task.load("train")
    r1 = attribute(model, pr, task, data, method="random", seed=4)
    r2 = attribute(model, pr, task, data, method="random", seed=4)
    assert torch.equal(r1.flat(), r2.flat())
    a = attribute(model, pr, task, data, n=20, progress=False)
    assert a.meta["n_examples"] == 20
    with pytest.raises(NeuronLensError, match="unknown"):
        attribute(model, pr, task, data, method="saliency")


def test_merge_property():
    """The state of two shards merged equals the state of their union."""
    model, task = tiny(), word_task()
    pr = fake_prompt(model, task)
    texts = render_texts(model, pr.head, task, task.load("train"))
    labels = torch.tensor(task.load("train").labels)
    probe = AttributionProbe("attribution")

    def fwd(enc, prompt, grads):
        return pr.head.class_logits(model, enc, prompt, embeds_require_grad=grads)

    def gold(lg, b):
        return lg[torch.arange(lg.shape[0]), b.labels]

    def state(rows):
        st, _, _ = collect_state(
            model,
            probe,
            [texts[i] for i in rows],
            labels=labels[rows],
            prompt=pr.prompt,
            forward=fwd,
            objective=gold,
            progress=False,
        )
        return st

    whole = state(list(range(40)))
    merged = probe.merge(state(list(range(17))), state(list(range(17, 40))))
    for k in whole:
        torch.testing.assert_close(merged[k], whole[k], rtol=1e-10, atol=1e-12)


def test_same_seed_same_scores():
    outs = []
    for _ in range(2):
        model, task = tiny(), word_task()
        pr = fake_prompt(model, task, seed=2)
        outs.append(
            predictivity(
                model, pr, task, task.load("dev"), train=task.load("train"), progress=False
            )
        )
        outs.append(attribute(model, pr, task, task.load("train"), progress=False))
    assert torch.equal(outs[0].flat(), outs[2].flat())
    assert torch.equal(outs[1].flat(), outs[3].flat())


def test_nan_activations_raise():
    model, task = tiny(), word_task()
    pr = fake_prompt(model, task)
    pr.prompt[0, 0] = float("nan")
    with pytest.raises(NonFiniteActivationError):
        attribute(model, pr, task, task.load("train"), progress=False)
    with pytest.raises(NonFiniteActivationError):
        predictivity(model, pr, task, task.load("dev"), train=task.load("train"), progress=False)


def test_empty_split_is_an_error():
    model, task = tiny(), word_task()
    pr = fake_prompt(model, task)
    with pytest.raises(EmptyDataError, match="empty|no examples"):
        attribute(model, pr, task, task.load("train").take(0), progress=False)


def test_custom_probe_in_a_few_lines():
    class FiringRate(Probe):
        name = "firing_rate"

        def init_state(self, sites):
            st = {f"{s.name}/fired": torch.zeros(s.width, dtype=torch.float64) for s in sites}
            st.update({f"{s.name}/tokens": torch.zeros((), dtype=torch.float64) for s in sites})
            return st

        def update(self, state, sb):
            state[f"{sb.site.name}/fired"] += ((sb.acts > 0) & sb.valid.unsqueeze(-1)).sum((0, 1))
            state[f"{sb.site.name}/tokens"] += sb.valid.sum()

        def finish(self, state, sites, info):
            return {s.name: state[f"{s.name}/fired"] / state[f"{s.name}/tokens"] for s in sites}

    model = tiny()
    texts = ["w1 w2 w3", "w4 w5", "w6"]
    rates = run_probe(model, FiringRate(), texts, progress=False)
    ref = nl.collect_activations(model, texts)
    for s in model.sites:
        v = ref.valid[s.name]
        expect = (ref[s.name][v] > 0).double().mean(0).float()
        torch.testing.assert_close(rates[s.name], expect)
    assert rates.method == "firing_rate"


def test_attribution_methods_are_classes_with_one_signature():
    from neuronlens.probes import (
        Activation,
        AttributionMethod,
        Gradient,
        GradientXActivation,
        RandomScores,
    )

    model, task = tiny(), word_task()
    pr = fake_prompt(model, task)
    data = task.load("train")
    for cls in (GradientXActivation, Activation, Gradient, RandomScores):
        assert issubclass(cls, AttributionMethod)
        by_class = cls(model).attribute(pr, task, data, n=12, seed=3, progress=False)
        by_name = attribute(model, pr, task, data, method=cls.name, n=12, seed=3, progress=False)
        assert by_class.method == cls.name and torch.equal(by_class.flat(), by_name.flat())
    with pytest.raises(NeuronLensError, match="unknown attribution method"):
        attribute(model, pr, task, data, method=len)


def test_one_vs_rest_must_name_a_class():
    model, task = tiny(), word_task()
    pr = fake_prompt(model, task)
    for bad in (2, -1, True, "pos"):
        with pytest.raises(DataError, match="not a class"):
            predictivity(
                model, pr, task, task.load("dev"), train=task.load("train"), one_vs_rest=bad,
                progress=False,
            )  # fmt: skip


def test_noise_scale_must_cover_the_sites():
    from neuronlens.interventions import Noise
    from neuronlens.neurons import NeuronSet

    model, task = tiny(), word_task()
    nset = NeuronSet({"blocks.0": torch.tensor([1, 2])}, {"blocks.0": 24})
    with pytest.raises(NeuronLensError, match="no per-neuron scale for site blocks.0"):
        noise = Noise(nset, std=1.0, scale={"blocks.1": torch.ones(24)})  # checked when built
        nl.evaluate(
            model, fake_prompt(model, task), task.load("dev"), task=task, interventions=[noise]
        )
