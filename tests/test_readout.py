"""Where the answer is read (readout) and where activations are read (positions), on every
family, against per-example raw-HF references (tests/hf_reference.py)."""

import copy

import pytest
import torch

import neuronlens as nl
from neuronlens.capture import AnswerToken, LastToken, Pooled, PromptTokens
from neuronlens.errors import DegenerateScoresError, NeuronLensError
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.probes import predictivity
from neuronlens.prompts import (
    LinearHead,
    PromptResult,
    Verbalizer,
    class_logits,
    encode_task,
    evaluate,
    init_prompt,
    render_texts,
    tune_prompt,
)

from . import hf_reference as ref
from .probe_fixtures import word_task

CASES = [  # (family, head, readout)
    ("bert", "verbalizer", "mask"),
    ("bert", "verbalizer", "prompt"),
    ("roberta", "verbalizer", "prompt"),
    ("gpt2", "verbalizer", "prompt"),
    ("gpt2", "verbalizer", "last"),
    ("llama", "verbalizer", "prompt"),
    ("llama", "verbalizer", "last"),
    ("t5", "verbalizer", "prompt"),
    ("bert", "linear", "pool"),
    ("bert", "linear", "prompt"),
    ("gpt2", "linear", "prompt"),
    ("llama", "linear", "pool"),
    ("t5-gated", "linear", "prompt"),
]


def pair(family, seed=3, **sizes):
    """(NeuronModel, untouched raw HF copy with the same weights)."""
    hf = tiny_hf_model(family, seed=seed, **sizes)
    raw = copy.deepcopy(hf)
    return nl.load_model(hf, tiny_tokenizer(), name=f"tiny-{family}"), raw


def make_head(model, head, readout, task):
    if head == "verbalizer":
        return Verbalizer(model, task.verbalizer, readout=readout)
    torch.manual_seed(0)
    return LinearHead(model.d_model, 2, readout=readout)


def prompt_for(model, head, n=3, seed=1):
    prompt = init_prompt(model, n, seed=seed)
    fixed = head.fixed_rows(model)
    return torch.cat([fixed, prompt[len(fixed) :]])


def _after(family, readout):
    return family in ref.CAUSAL and readout == "prompt"


@pytest.mark.parametrize("family,head,readout", CASES)
def test_class_logits_equal_a_hand_built_forward(family, head, readout):
    """Prompt spliced in by hand, one example at a time, logits read where the readout says."""
    model, raw = pair(family)
    task = word_task()
    hd = make_head(model, head, readout, task)
    data = task.load("dev").take(6)
    prompt = prompt_for(model, hd)
    got = class_logits(model, hd, prompt, encode_task(model, hd, task, data))
    mask_id = model.tokenizer.mask_token_id
    for i, text in enumerate(render_texts(model, hd, task, data)):
        seq, ppos, ipos, ids = ref.sequence(
            raw, model.tokenizer, text, prompt, _after(family, readout)
        )
        pos = ref.answer_position(family, readout, ids, ppos, ipos, mask_id, head)
        if head == "verbalizer":
            logits, _ = ref.run(raw, family, seq)
            row = logits[0 if family.startswith("t5") else pos, hd.token_ids]
        else:
            hidden, _ = ref.run(raw, family, seq, hidden=True)
            feat = hidden[ipos].mean(0) if readout == "pool" else hidden[pos]
            row = hd.linear(feat)
        torch.testing.assert_close(got[i], row, atol=1e-5, rtol=1e-5)


def test_readout_choices_and_errors():
    bert, task = pair("bert")[0], word_task()
    gpt2 = pair("gpt2")[0]
    assert Verbalizer(bert, task.verbalizer).readout == "mask"
    assert Verbalizer(gpt2, task.verbalizer).readout == "prompt"  # causal: prompt after input
    with pytest.raises(NeuronLensError, match="reads its answer at one of"):
        Verbalizer(bert, task.verbalizer, readout="last")
    with pytest.raises(NeuronLensError, match="linear head reads"):
        LinearHead(16, 2, readout="mask")
    # a masked LM reading at the prompt renders the input alone (the mask is prompt token 0)
    hd = Verbalizer(bert, task.verbalizer, readout="prompt")
    assert hd.render(bert, task, "w5 w6", None) == "w5 w6"
    assert torch.equal(hd.fixed_rows(bert)[0], bert.input_embeddings.weight[4])  # [MASK]
    # a verbalizer of one kind of model cannot read another's answer
    with pytest.raises(NeuronLensError, match="masked_lm"):
        hd.class_logits(gpt2, gpt2.encode(["w1"]), None)
    # a linear head reading a soft-prompt position needs a prompt
    with pytest.raises(NeuronLensError, match="n_tokens must be >= 1"):
        tune_prompt(
            bert,
            task,
            train=task.load("train"),
            validation=False,
            head="linear",
            readout="prompt",
            n_tokens=0,
            max_steps=1,
            progress=False,
        )
    with pytest.raises(NeuronLensError, match="readout='mask' was asked"):
        tune_prompt(
            bert,
            task,
            train=task.load("train"),
            validation=False,
            head=hd.trainable_copy(),
            readout="mask",
            n_tokens=3,
            max_steps=1,
            progress=False,
        )


def test_masked_lm_prompt_readout_keeps_the_mask_embedding_fixed():
    model, task = pair("bert")[0], word_task()
    tuned = tune_prompt(
        model,
        task,
        train=task.load("train"),
        validation=False,
        readout="prompt",
        n_tokens=4,
        max_steps=6,
        lr=0.1,
        progress=False,
    )
    mask_emb = model.input_embeddings.weight[model.tokenizer.mask_token_id]
    assert tuned.head.readout == "prompt" and tuned.n_tokens == 4
    assert torch.equal(tuned.prompt[0], mask_emb)  # position 0 stayed the mask token
    start = init_prompt(model, 4, seed=0)
    assert not torch.equal(tuned.prompt[1:], start[1:])  # the rest trained
    # re-training from it (as after pruning) keeps position 0 fixed again
    again = tune_prompt(
        model,
        task,
        train=task.load("train"),
        validation=False,
        head=tuned.head.trainable_copy(),
        init=tuned.prompt,
        n_tokens=4,
        max_steps=3,
        lr=0.1,
        progress=False,
    )
    assert torch.equal(again.prompt[0], mask_emb)
    with pytest.raises(NeuronLensError, match="at least 2"):
        tune_prompt(
            model,
            task,
            train=task.load("train"),
            validation=False,
            readout="prompt",
            n_tokens=1,
            max_steps=1,
            progress=False,
        )


@pytest.mark.parametrize(
    "family,head,readout",
    [
        ("bert", "verbalizer", "prompt"),
        ("gpt2", "verbalizer", "prompt"),
        ("bert", "linear", "prompt"),
        ("llama", "verbalizer", "last"),
    ],
)
def test_readout_survives_save_and_load(tmp_path, family, head, readout):
    model = pair(family)[0]
    task = word_task()
    hd = make_head(model, head, readout, task).requires_grad_(False)
    pr = PromptResult(
        prompt_for(model, hd),
        hd,
        task.name,
        task.label_space,
        task.label_names,
        0,
        model.name,
        model.kind.value,
    )
    pr.save(tmp_path / "p")
    back = PromptResult.load(tmp_path / "p", model)
    assert back.head.readout == readout
    dev = task.load("dev")
    assert torch.equal(
        evaluate(model, pr, dev, task=task).predictions,
        evaluate(model, back, dev, task=task).predictions,
    )
    other = "mask" if readout != "mask" else "prompt"
    with pytest.raises(NeuronLensError, match="tuned with readout"):
        PromptResult.load(tmp_path / "p", model, readout=other)


def test_prompts_saved_before_readouts_load_with_their_old_placement(tmp_path):
    import json

    from safetensors import safe_open
    from safetensors.torch import save_file

    for family, expect in (("bert", "mask"), ("gpt2", "last")):
        model, task = pair(family)[0], word_task()
        hd = Verbalizer(model, task.verbalizer, readout=expect).requires_grad_(False)
        pr = PromptResult(
            init_prompt(model, 3),
            hd,
            task.name,
            task.label_space,
            task.label_names,
            0,
            model.name,
            model.kind.value,
        )
        path = pr.save(tmp_path / family)
        with safe_open(path, "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118
            meta = json.loads(f.metadata()["neuronlens"])
        del meta["readout"]  # as neuronlens wrote it before readouts were recorded
        save_file(tensors, path, metadata={"neuronlens": json.dumps(meta)})
        assert PromptResult.load(tmp_path / family, model).head.readout == expect


# ---------------------------------------------------------------------------- predictivity


def reference_predictivity(model, raw, family, prompts, readout, task, train, dev, which):
    """Loop over prompts, examples, positions and neurons; positions chosen by hand:
    ``which`` = "prompt+answer" | "prompt" | "answer" | "pooled-input"."""
    tok = model.tokenizer
    mask_id = tok.mask_token_id
    per_prompt = []
    for pr in prompts:
        after = _after(family, readout)

        def acts_of(split, pr=pr, after=after):
            out = []
            for text in render_texts(model, pr.head, task, split):
                seq, ppos, ipos, ids = ref.sequence(raw, tok, text, pr.prompt, after)
                _, acts = ref.run(raw, family, seq)
                ans = ref.answer_position(family, readout, ids, ppos, ipos, mask_id, pr.head.kind)
                if which == "pooled-input":
                    out.append([a[ipos].mean(0, keepdim=True) for a in acts])
                    continue
                pos = {
                    "prompt": ppos,
                    "answer": [ans],
                    "prompt+answer": ppos + ([] if ans in ppos else [ans]),
                }[which]
                out.append([a[pos] for a in acts])
            return out  # [example][layer] -> [n, width]

        a_train, a_dev = acts_of(train), acts_of(dev)
        layers = []
        for layer in range(len(a_train[0])):
            tr = torch.stack([x[layer] for x in a_train])  # [N, n, width]
            dv = torch.stack([x[layer] for x in a_dev])
            n_pos, width = tr.shape[1:]
            pred = torch.zeros(width, dtype=torch.float64)
            for n in range(width):
                best = 0.0
                for i in range(n_pos):
                    bsl = torch.tensor(
                        sum(float(tr[x, i, n]) for x in range(tr.shape[0])) / tr.shape[0]
                    )
                    hits = sum(
                        int(bool(dv[x, i, n] > bsl.float()) == bool(dev.labels[x]))
                        for x in range(dv.shape[0])
                    )
                    acc = hits / dv.shape[0]
                    best = max(best, acc, 1 - acc)
                pred[n] = best
            layers.append(pred)
        per_prompt.append(layers)
    return [torch.stack([p[i] for p in per_prompt]).mean(0).float() for i in range(len(layers))]


def fake(model, head, task, seed):
    prompt = prompt_for(model, head, n=3, seed=seed) + 0.5 * torch.randn(3, model.d_model) * (
        torch.arange(3) >= len(head.fixed_rows(model))
    ).unsqueeze(1)
    return PromptResult(
        prompt,
        head,
        task.name,
        task.label_space,
        task.label_names,
        seed,
        model.name,
        model.kind.value,
    )


POSITION_CASES = [  # (family, head, readout, positions, reference positions)
    ("bert", "verbalizer", "mask", None, "prompt+answer"),
    ("bert", "verbalizer", "mask", PromptTokens(), "prompt"),
    ("bert", "verbalizer", "prompt", None, "prompt"),
    ("bert", "linear", "pool", Pooled(), "pooled-input"),
    ("bert", "linear", "pool", None, "pooled-input"),  # the default: where the head decides
    ("llama", "verbalizer", "last", None, "answer"),  # the prompt precedes the input
    ("gpt2", "verbalizer", "prompt", None, "prompt"),
    ("llama", "verbalizer", "prompt", AnswerToken(), "answer"),
    ("llama", "verbalizer", "last", AnswerToken(), "answer"),
    ("gpt2", "linear", "prompt", Pooled(), "pooled-input"),
]


@pytest.mark.parametrize("family,head,readout,positions,which", POSITION_CASES)
def test_predictivity_equals_a_hand_built_reference(family, head, readout, positions, which):
    model, raw = pair(family, layers=2)
    task = word_task()
    torch.manual_seed(0)
    hd = make_head(model, head, readout, task).requires_grad_(False)
    prompts = [fake(model, hd, task, seed) for seed in (0, 1)]
    train, dev = task.load("train").take(25), task.load("dev")
    got = predictivity(
        model, prompts, task, dev, train=train, positions=positions, batch_size=7, progress=False
    )
    want = reference_predictivity(model, raw, family, prompts, readout, task, train, dev, which)
    for site, expect in zip(model.sites, want, strict=True):
        torch.testing.assert_close(got[site.name], expect, atol=1e-6, rtol=0)


def planted_causal(family: str):
    """A 1-layer causal LM whose neuron 7 fires at any position after the token w1, and no
    other neuron sees it. Attention is uniform (q = k = 0); its values carry w1's embedding
    dim 0 into dim 1 and copy dims 2.. (the filler words' noise); neuron 7 reads dim 1 alone,
    every other neuron everything but dim 1."""
    hf = tiny_hf_model(family, layers=1, seed=5, heads=2)
    tok = tiny_tokenizer()
    w1 = tok.convert_tokens_to_ids("w1")
    with torch.no_grad():
        emb = hf.get_input_embeddings().weight
        d = emb.shape[1]
        emb[:, 0] = 0.0
        emb[w1] = 0.0
        emb[w1, 0] = 1.0
        if family == "gpt2":
            hf.transformer.wpe.weight.zero_()
            blk = hf.transformer.h[0]
            w = blk.attn.c_attn.weight  # Conv1D [d, 3d]: q | k | v
            w.zero_()
            blk.attn.c_attn.bias.zero_()
            w[0, 2 * d + 1] = 3.0  # value dim 1 <- input dim 0 (the w1 flag)
            for i in range(2, d):
                w[i, 2 * d + i] = 1.0  # value dims 2.. <- input dims 2.. (noise)
            blk.attn.c_proj.weight.copy_(torch.eye(d))
            blk.attn.c_proj.bias.zero_()
            fc = blk.mlp.c_fc.weight  # [d, width]
            fc[1, :] = 0.0
            fc[:, 7] = 0.0
            fc[1, 7] = 6.0
        else:
            layer = hf.model.layers[0]
            attn = layer.self_attn
            attn.q_proj.weight.zero_()
            attn.k_proj.weight.zero_()
            v, o = attn.v_proj.weight, attn.o_proj.weight  # v: [head_dim, d] (one kv head)
            v.zero_()
            o.zero_()
            v[0, 0] = 3.0  # value dim 0 <- the w1 flag ...
            o[1, 0] = 1.0  # ... written to dim 1
            for j in range(1, v.shape[0]):
                v[j, j + 1] = 1.0  # noise dims 2..head_dim
                o[j + 1, j] = 1.0
            for lin in (layer.mlp.gate_proj, layer.mlp.up_proj):  # [width, d]
                lin.weight[:, 1] = 0.0
                lin.weight[7, :] = 0.0
                lin.weight[7, 1] = 6.0
    return nl.load_model(hf, tok, name=f"planted-{family}")


@pytest.mark.parametrize("family", ["gpt2", "llama"])
def test_planted_neuron_at_the_readout_ranks_first_on_causal_models(family):
    model, task = planted_causal(family), word_task(n=200)
    train, dev = task.load("train"), task.load("dev")
    after = fake(model, Verbalizer(model, task.verbalizer, readout="prompt"), task, 0)
    scores = predictivity(model, after, task, dev, train=train, progress=False)
    assert scores["blocks.0"].argmax() == 7 and scores["blocks.0"][7] > 0.99
    assert scores["blocks.0"].sort().values[-2] < 0.99  # the others see it only indirectly
    # with the prompt before the input its positions are blind: refused, saying what to use
    before = fake(model, Verbalizer(model, task.verbalizer, readout="last"), task, 0)
    for blind in (PromptTokens(), nl.PromptAndAnswer()):
        with pytest.raises(NeuronLensError, match="cannot see the input.*readout='prompt'"):
            predictivity(model, before, task, dev, train=train, positions=blind, progress=False)
    # ... and the answer position of that placement sees the input: neuron 7 again
    at_answer = predictivity(
        model, before, task, dev, train=train, positions=AnswerToken(), progress=False
    )
    assert at_answer["blocks.0"].argmax() == 7
    last = predictivity(
        model, before, task, dev, train=train, positions=LastToken(), progress=False
    )
    assert torch.equal(last["blocks.0"], at_answer["blocks.0"])
    default = predictivity(model, before, task, dev, train=train, progress=False)
    assert torch.equal(default["blocks.0"], at_answer["blocks.0"])  # where the head decides


def test_constant_maps_are_errors():
    model = pair("bert")[0]
    task = word_task()
    hd = Verbalizer(model, task.verbalizer, readout="mask").requires_grad_(False)
    pr = fake(model, hd, task, 0)
    train, dev = task.load("train"), task.load("dev")
    # an FFN that sees nothing of the input: every neuron constant at every position
    hf = tiny_hf_model("bert", seed=3)
    with torch.no_grad():
        for layer in hf.bert.encoder.layer:
            layer.intermediate.dense.weight.zero_()
    blind = nl.load_model(hf, tiny_tokenizer(), name="blind")
    blind_pr = fake(blind, Verbalizer(blind, task.verbalizer).requires_grad_(False), task, 0)
    with pytest.raises(DegenerateScoresError, match="no neuron's activation varies"):
        predictivity(blind, blind_pr, task, dev, train=train, progress=False)
    # one dev example is of one class (and cannot vary)
    with pytest.raises(NeuronLensError, match="dev labels are all class"):
        predictivity(model, pr, task, dev.take(1), train=train, progress=False)
    # baselines below every activation: each neuron's accuracy is the share of label 1
    clean = predictivity(model, pr, task, dev, train=train, progress=False)
    for site, bsl in clean.extra["baseline_0"].items():
        clean.extra["baseline_0"][site] = torch.full_like(bsl, -1e9)
    with pytest.raises(DegenerateScoresError, match="every one of the"):
        predictivity(model, pr, task, dev, baselines=clean, progress=False)
    with pytest.raises(NeuronLensError, match="AllTokens"):
        predictivity(model, pr, task, dev, train=train, positions=nl.AllTokens(), progress=False)
    # the pooled linear probe has no prompt and no answer position: only its pooled input
    lin = fake(model, LinearHead(model.d_model, 2).requires_grad_(False), task, 0)
    lin.prompt = lin.prompt[:0]
    with pytest.raises(NeuronLensError, match="no soft prompt and no answer"):
        predictivity(model, lin, task, dev, train=train, positions=nl.PromptAndAnswer(),
                     progress=False)  # fmt: skip
    pooled = predictivity(model, lin, task, dev, train=train, progress=False)  # the default
    assert pooled.meta["positions"] == repr(Pooled())
    with pytest.raises(NeuronLensError, match="no single answer position"):
        predictivity(model, lin, task, dev, train=train, positions=AnswerToken(), progress=False)


# ---------------------------------------------------------------------------- interventions


def _second_linear_inputs(model, family):
    """Forward pre-hooks on the raw FFN output linears (inside the bridge): what they get is
    the activation after every neuronlens hook."""
    seen = []
    mods = [
        getattr(model.hf_ffn(s), "c_proj" if family == "gpt2" else "down_proj") for s in model.sites
    ]
    mods = [getattr(m, "original_component", m) for m in mods]  # the raw linear, not its wrapper
    handles = [m.register_forward_pre_hook(lambda mod, a: seen.append(a[0].detach())) for m in mods]
    return seen, handles


@pytest.mark.parametrize("positions", ["prompt", "input", "all"])
def test_zero_at_prompt_positions_after_the_input_equals_a_hand_built_forward(positions):
    from neuronlens.interventions import Zero, intervene
    from neuronlens.neurons import NeuronSet

    model, raw = pair("gpt2")
    task = word_task()
    hd = Verbalizer(model, task.verbalizer, readout="prompt")
    prompt = prompt_for(model, hd, n=3)
    data = task.load("dev").take(5)
    neurons = torch.tensor([1, 5, 7, 20])
    nset = NeuronSet(
        {"blocks.0": neurons, "blocks.1": neurons[:2]}, {"blocks.0": 24, "blocks.1": 24}
    )
    with intervene(model, Zero(nset, positions)):
        got = class_logits(model, hd, prompt, encode_task(model, hd, task, data))
    for i, text in enumerate(render_texts(model, hd, task, data)):
        seq, ppos, ipos, ids = ref.sequence(raw, model.tokenizer, text, prompt, True)
        where = {"prompt": ppos, "input": ipos, "all": ppos + ipos}[positions]

        def zero(mod, args, sel, where=where):
            a = args[0].clone()
            a[0, torch.tensor(where).unsqueeze(1), sel] = 0.0
            return (a,)

        mods = ref.ffn_outs(raw, "gpt2")
        handles = [
            mods[0].register_forward_pre_hook(lambda m, a: zero(m, a, neurons)),
            mods[1].register_forward_pre_hook(lambda m, a: zero(m, a, neurons[:2])),
        ]
        try:
            logits, _ = ref.run(raw, "gpt2", seq)
        finally:
            for h in handles:
                h.remove()
        torch.testing.assert_close(got[i], logits[ppos[-1], hd.token_ids], atol=1e-5, rtol=1e-5)


def test_noise_per_example_is_one_draw_added_at_every_position():
    """Skill-Neuron's perturbation: per example and neuron one gaussian draw, at every token."""
    from neuronlens.interventions import Noise, intervene
    from neuronlens.neurons import NeuronSet

    model = pair("llama")[0]
    task = word_task()
    hd = Verbalizer(model, task.verbalizer, readout="prompt")
    prompt = prompt_for(model, hd, n=3)
    enc = encode_task(model, hd, task, task.load("dev").take(6))
    nset = NeuronSet({"blocks.1": torch.tensor([2, 3, 11])}, {"blocks.0": 24, "blocks.1": 24})

    def acts(*ivs):
        seen, handles = _second_linear_inputs(model, "llama")
        try:
            with torch.no_grad(), intervene(model, *ivs):
                hd.class_logits(model, enc, prompt)
        finally:
            for h in handles:
                h.remove()
        return seen[1]

    clean = acts()
    delta = acts(Noise(nset, std=0.5, per="example", seed=4)) - clean  # [B, T, width]
    valid = model.layout(enc, 3, hd.placement(model)).attention_mask.bool()
    inside = torch.zeros(24, dtype=torch.bool)
    inside[[2, 3, 11]] = True
    assert torch.all(delta[..., ~inside] == 0)
    for b in range(delta.shape[0]):
        rows = delta[b, valid[b]][:, inside]
        torch.testing.assert_close(rows, rows[:1].expand_as(rows), atol=1e-6, rtol=0)
    assert not torch.allclose(delta[0, 0, inside], delta[1, 0, inside])  # a new draw per example
    again = acts(Noise(nset, std=0.5, per="example", seed=4)) - clean
    assert torch.equal(delta, again)  # seeded
    per_token = acts(Noise(nset, std=0.5, per="token", seed=4)) - clean
    assert not torch.allclose(per_token[0, 0, inside], per_token[0, 1, inside])
    with pytest.raises(NeuronLensError, match="per must be"):
        Noise(nset, per="batch")


def test_intervene_checks_n_prompt_against_the_forward():
    from neuronlens.interventions import Zero, intervene
    from neuronlens.neurons import NeuronSet

    model = pair("bert")[0]
    task = word_task()
    hd = Verbalizer(model, task.verbalizer)
    enc = encode_task(model, hd, task, task.load("dev").take(3))
    nset = NeuronSet({"blocks.0": torch.tensor([1])}, {"blocks.0": 24})
    with (
        pytest.raises(NeuronLensError, match="prompt length"),
        intervene(model, Zero(nset), n_prompt=-3),
    ):
        pass
    bad = intervene(model, Zero(nset), n_prompt=999)
    with pytest.raises(NeuronLensError, match="soft prompt of 3 tokens"), bad:
        hd.class_logits(model, enc, init_prompt(model, 3))


def test_mean_ablation_values_are_the_train_mean_over_every_position():
    from neuronlens.analysis import prompt_activation_stats

    model, raw = pair("gpt2")
    task = word_task()
    hd = Verbalizer(model, task.verbalizer, readout="prompt")
    pr = fake(model, hd.requires_grad_(False), task, 0)
    train = task.load("train").take(9)
    got = prompt_activation_stats(model, pr, task, train, batch_size=4)
    rows = [[] for _ in model.sites]
    for text in render_texts(model, hd, task, train):
        seq, *_ = ref.sequence(raw, model.tokenizer, text, pr.prompt, True)
        for layer, a in enumerate(ref.run(raw, "gpt2", seq)[1]):
            rows[layer].append(a)
    for site, parts in zip(model.sites, rows, strict=True):
        every = torch.cat(parts)  # every position of every example
        torch.testing.assert_close(got.mean[site.name], every.mean(0), atol=1e-5, rtol=1e-5)


def test_suppression_studies_select_per_layer_as_the_originals():
    """Skill-Neuron: per layer int(p * width) neurons, ties to the lower index."""
    from neuronlens.analysis import suppression_curve

    model = pair("bert")[0]
    task = word_task()
    pr = fake(model, Verbalizer(model, task.verbalizer).requires_grad_(False), task, 0)
    scores = predictivity(
        model, pr, task, task.load("dev"), train=task.load("train"), progress=False
    )
    for percent in (5, 10, 50):
        nset = scores.top(percent=percent, per_layer=True)
        for s in model.sites:
            v = scores[s.name].tolist()
            want = sorted(range(s.width), key=lambda i: (-v[i], i))[: int(percent / 100 * s.width)]
            assert nset.indices[s.name].tolist() == sorted(want)
    dev = task.load("dev")
    curve = suppression_curve(model, pr, dev, scores, task=task, percents=(0, 10), random_repeats=2)
    assert curve.per_layer and curve.counts == [0, 2 * int(0.1 * 24)]
    assert curve.ablation == "zeroed"
    noise = suppression_curve(
        model, pr, dev, scores, task=task, percents=(10,), random_repeats=1, ablation="noise"
    )
    assert noise.ablation == "noise (std 0.1, per example)"
    with pytest.raises(NeuronLensError, match="pass train="):
        suppression_curve(model, pr, dev, scores, task=task, percents=(10,), ablation="mean")
    mean = suppression_curve(
        model,
        pr,
        dev,
        scores,
        task=task,
        percents=(0, 50),
        random_repeats=1,
        ablation="mean",
        train=task.load("train"),
    )
    assert mean.top[0] == curve.top[0]  # nothing switched off: the same accuracy
