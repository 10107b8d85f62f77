"""Module-specific localization: whole attention heads and the attention output projection's
inputs as sites, for attribution and interventions, on every family.

The references gate or zero the input of each attention output projection with plain
PyTorch forward pre-hooks on the unwrapped Hugging Face module, one example at a time."""

import pytest
import torch

from neuronlens import (
    NeuronScores,
    NeuronSet,
    Noise,
    Replace,
    Retain,
    Zero,
    attribute,
    intervene,
    predictivity,
)
from neuronlens.errors import NeuronLensError, SiteError
from neuronlens.models.sites import module_kinds
from neuronlens.prompts.heads import render_texts
from tests.probe_fixtures import fake_prompt, tiny, word_task

# the attention output projection of each family's blocks (raw HF names)
ATTN_OUT = {
    "bert": ("bert.encoder.layer", "attention.output.dense"),
    "roberta": ("roberta.encoder.layer", "attention.output.dense"),
    "gpt2": ("transformer.h", "attn.c_proj"),
    "llama": ("model.layers", "self_attn.o_proj"),
    "t5": ("encoder.block", "layer.0.SelfAttention.o"),
}


def _raw(module):
    return getattr(module, "original_component", None) or module


def o_projections(model, family):
    root = _raw(model.hf_model)
    stack, inner = ATTN_OUT[family]
    for part in stack.split("."):
        root = _raw(getattr(root, part))
    out = []
    for layer in root:
        m = _raw(layer)
        for part in inner.split("."):
            m = _raw(m[int(part)] if part.isdigit() else getattr(m, part))
        out.append(m)
    return out


def input_span(model, pr, enc):
    """Input positions of one unpadded example (the prompt before it, or after on a causal
    LM read at the prompt)."""
    p, length = pr.n_tokens, int(enc.attention_mask.sum())
    after = model.kind.value == "causal_lm" and pr.head.readout == "prompt"
    return (0, length) if after else (p, p + length)


def reference_head_scores(model, family, pr, task, data):
    """Per example: a gate [L, heads] on each o projection's input, d logit_y / d gate by
    autograd, |.| averaged over the input positions, summed over examples."""
    hd = model.head_dim
    outs = o_projections(model, family)
    totals = [torch.zeros(_in(m) // hd, dtype=torch.float64) for m in outs]
    for text, y in zip(render_texts(model, pr.head, task, data), data.labels, strict=True):
        enc = model.encode([text])
        gates = []

        def pre(mod, args, gates=gates):
            x = args[0]
            gate = torch.ones(x.shape[1], x.shape[-1] // hd, requires_grad=True)
            gates.append(gate)
            return (x * gate.repeat_interleave(hd, -1),)

        grads = gold_grads(model, pr, enc, y, outs, pre, gates)
        lo, hi = input_span(model, pr, enc)
        for total, g in zip(totals, grads, strict=True):
            total += g[lo:hi].abs().double().mean(0)
    return totals


def gold_grads(model, pr, enc, y, modules, pre_hook, wrt):
    """Gradients of the gold logit w.r.t. the tensors ``wrt`` that ``pre_hook`` (on every
    module) collects during one forward pass; the hooks are removed after."""
    handles = [m.register_forward_pre_hook(pre_hook) for m in modules]
    try:
        with torch.enable_grad():
            logits = pr.head.class_logits(model, enc, pr.prompt, embeds_require_grad=True)
            return torch.autograd.grad(logits[0, y], wrt)
    finally:
        for h in handles:
            h.remove()


def _in(linear):
    w = linear.weight
    return int(w.shape[0]) if type(linear).__name__ == "Conv1D" else int(w.shape[1])


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_head_sites_on_every_family(family):
    model = tiny(family)
    heads = model.module_sites("heads")
    outs = model.module_sites("attn_out")
    n_blocks = len(model.sites)
    assert len(heads) == len(outs) == n_blocks
    for h, o in zip(heads, outs, strict=True):
        assert h.name.endswith(".heads") and o.name.endswith(".attn_out")
        assert h.width * h.group == o.width and o.group == 1
        assert h.width == model.hf_model.config.num_attention_heads
    assert model.site(heads[0].name) == heads[0]
    assert [s.module for s in model.module_sites("all")] == ["ffn"] * n_blocks + [
        "attn_out"
    ] * n_blocks


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama"])
def test_head_attribution_equals_gate_gradient(family):
    model, task = tiny(family), word_task()
    pr = fake_prompt(model, task)
    data = task.load("train").take(9)
    got = attribute(model, pr, task, data, n=None, modules="heads", batch_size=4, progress=False)
    ref = reference_head_scores(model, family, pr, task, data)
    assert [s.module for s in got.sites] == ["heads"] * len(model.sites)
    for site, r in zip(got.sites, ref, strict=True):
        torch.testing.assert_close(got[site.name].double(), r, rtol=1e-4, atol=1e-9)
    # (a causal LM's last block cannot reach the answer from the input positions: zero there)
    assert float(got[got.sites[0].name].min()) > 0


def test_t5_head_attribution_equals_gate_gradient():
    """T5: encoder heads as above; decoder self-attention heads gated at every decoder
    position (the first decoder block's heads read only the start token, so the input
    cannot change them, but their gradient is defined)."""
    model, task = tiny("t5"), word_task()
    pr = fake_prompt(model, task)
    data = task.load("train").take(6)
    got = attribute(model, pr, task, data, n=None, modules="heads", batch_size=3, progress=False)
    enc_ref = reference_head_scores(model, "t5", pr, task, data)
    hd = model.head_dim
    dec = [_raw(_raw(b).layer[0].SelfAttention.o) for b in _raw(_raw(model.hf_model).decoder).block]
    dec_ref = [torch.zeros(_in(m) // hd, dtype=torch.float64) for m in dec]
    for text, y in zip(render_texts(model, pr.head, task, data), data.labels, strict=True):
        gates = []

        def pre(mod, args, gates=gates):
            gate = torch.ones(args[0].shape[1], args[0].shape[-1] // hd, requires_grad=True)
            gates.append(gate)
            return (args[0] * gate.repeat_interleave(hd, -1),)

        for total, g in zip(dec_ref, gold_grads(model, pr, model.encode([text]), y, dec, pre,
                                                gates), strict=True):  # fmt: skip
            total += g.abs().double().mean(0)
    sites = got.sites
    assert [s.stack for s in sites] == ["encoder_blocks"] * 2 + ["decoder_blocks"] * 2
    for site, r in zip(sites, enc_ref + dec_ref, strict=True):
        torch.testing.assert_close(got[site.name].double(), r, rtol=1e-4, atol=1e-9)
    assert float(got[sites[2].name].min()) > 0  # the first decoder block's heads count too


def test_attn_out_features_equal_hooked_reference():
    model, task = tiny("llama"), word_task()
    pr = fake_prompt(model, task)
    data = task.load("dev").take(5)
    got = attribute(model, pr, task, data, n=None, modules="attn_out", progress=False)
    outs = o_projections(model, "llama")
    totals = [torch.zeros(_in(m), dtype=torch.float64) for m in outs]
    for text, y in zip(render_texts(model, pr.head, task, data), data.labels, strict=True):
        enc = model.encode([text])
        seen = []
        grads = gold_grads(model, pr, enc, y, outs, lambda m, a, seen=seen: seen.append(a[0]), seen)
        lo, hi = input_span(model, pr, enc)
        for total, a, g in zip(totals, seen, grads, strict=True):
            total += (a[0] * g[0]).abs()[lo:hi].double().mean(0)
    for site, r in zip(got.sites, totals, strict=True):
        torch.testing.assert_close(got[site.name].double(), r, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5"])
def test_zeroing_heads_equals_zeroing_their_slices_by_hand(family):
    model, task = tiny(family), word_task()
    pr = fake_prompt(model, task)
    enc = model.encode(render_texts(model, pr.head, task, task.load("dev").take(3)))
    sites = model.module_sites("heads")
    chosen = NeuronSet({sites[0].name: torch.tensor([1]), sites[-1].name: torch.tensor([0])},
                       {s.name: s.width for s in sites})  # fmt: skip
    with torch.no_grad(), intervene(model, Zero(chosen)):
        got = pr.head.class_logits(model, enc, pr.prompt)
    hd = model.head_dim
    outs = o_projections(model, family)

    def zero(head):
        def pre(mod, args):
            x = args[0].clone()
            x[..., head * hd : (head + 1) * hd] = 0
            return (x,)

        return pre

    handles = [outs[0].register_forward_pre_hook(zero(1))]
    handles.append(outs[len(outs) - 1].register_forward_pre_hook(zero(0)))
    if family == "t5":  # the last head site is the decoder's last self-attention
        handles[-1].remove()
        dec = _raw(_raw(model.hf_model).decoder)
        last = _raw(_raw(dec.block[-1]).layer[0])
        handles[-1] = _raw(_raw(last.SelfAttention).o).register_forward_pre_hook(zero(0))
    try:
        with torch.no_grad():
            ref = pr.head.class_logits(model, enc, pr.prompt)
    finally:
        for h in handles:
            h.remove()
    with torch.no_grad():
        clean = pr.head.class_logits(model, enc, pr.prompt)
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-6)
    assert not torch.allclose(got, clean)


def test_retain_and_noise_on_heads_and_what_is_refused():
    model, task = tiny("gpt2"), word_task()
    pr = fake_prompt(model, task)
    enc = model.encode(render_texts(model, pr.head, task, task.load("dev").take(2)))
    sites = model.module_sites("heads")
    widths = {s.name: s.width for s in sites}
    every = NeuronSet({s.name: torch.arange(s.width) for s in sites}, widths)
    none = NeuronSet({s.name: torch.tensor([], dtype=torch.long) for s in sites}, widths)
    with torch.no_grad():
        clean = pr.head.class_logits(model, enc, pr.prompt)
        with intervene(model, Retain(every)):
            kept = pr.head.class_logits(model, enc, pr.prompt)
        with intervene(model, Retain(none)):
            none_kept = pr.head.class_logits(model, enc, pr.prompt)
        with intervene(model, Zero(every)):
            zeroed = pr.head.class_logits(model, enc, pr.prompt)
        with intervene(model, Noise(every, std=0.0)):
            no_noise = pr.head.class_logits(model, enc, pr.prompt)
    torch.testing.assert_close(kept, clean)
    torch.testing.assert_close(none_kept, zeroed)
    torch.testing.assert_close(no_noise, clean)
    with (
        pytest.raises(NeuronLensError, match="whole heads"),
        intervene(model, Replace(every, values={k: torch.zeros(w) for k, w in widths.items()})),
    ):
        pass
    assert not model.bridge.hook_dict[sites[0].hook_name].fwd_hooks


def test_heads_refused_where_single_values_are_scored():
    model, task = tiny("bert"), word_task()
    pr = fake_prompt(model, task)
    with pytest.raises(SiteError, match="whole attention heads"):
        predictivity(model, pr, task, task.load("dev"), train=task.load("train"),
                     sites=["blocks.0.heads"], progress=False)  # fmt: skip
    with pytest.raises(SiteError, match="unknown module"):
        module_kinds("attention")
    with pytest.raises(SiteError, match="same tensor"):
        module_kinds(["heads", "attn_out"])
    with pytest.raises(SiteError, match="not in this model"):
        model.site("blocks.9.heads")


def test_head_scores_save_and_load(tmp_path):
    model, task = tiny("bert"), word_task()
    pr = fake_prompt(model, task)
    scores = attribute(model, pr, task, task.load("dev"), modules="heads", progress=False)
    path = scores.save(tmp_path / "heads")
    again = NeuronScores.load(path, model=model)
    assert again.sites == scores.sites
    torch.testing.assert_close(again.flat(), scores.flat())
    top = again.top(k=1, per_layer=True)
    assert top.count == len(model.sites)


# ---------------------------------------------------------------------- pruning whole heads
def _heads_set(model, keep: dict[int, list[int]]):
    sites = model.module_sites("heads")
    return NeuronSet(
        {s.name: torch.tensor(keep.get(s.layer, list(range(s.width)))) for s in sites},
        {s.name: s.width for s in sites},
    )


@pytest.mark.parametrize("family", ["bert", "roberta", "llama", "gpt2", "t5", "t5-gated"])
def test_pruned_heads_equal_zeroed_heads(family, tmp_path):
    from neuronlens import prune_model
    from neuronlens.pruning import load_pruned, save_pruned

    heads = 4
    model = nl_model(family, heads=heads)
    task = word_task()
    pr = fake_prompt(model, task)
    enc = model.encode(render_texts(model, pr.head, task, task.load("dev").take(4)))
    # llama: 4 query heads over 2 key/value heads; keep one per group in layer 0
    keep = {0: [1, 3] if family == "llama" else [2], 1: [0, 1, 3]}
    if family == "llama":
        keep[1] = [0, 1]  # a whole group (and its key/value head) removed
    kept = _heads_set(model, keep)
    ffn = model.sites[1]
    both = NeuronSet(
        {**kept.indices, ffn.name: torch.arange(0, ffn.width, 2)},
        {**kept.widths, ffn.name: ffn.width},
    )
    small = prune_model(model, both)
    head_sites = model.module_sites("heads")  # T5: the encoder's, then the decoder's
    assert [s.width for s in small.module_sites("heads")] == [
        len(keep[s.layer]) for s in head_sites
    ]
    assert small.site(ffn.name).width == ffn.width // 2
    with torch.no_grad(), intervene(model, Zero(small.pruning.removed_set())):
        ref = pr.head.class_logits(model, enc, pr.prompt)
    with torch.no_grad():
        got = pr.head.class_logits(small, enc, pr.prompt)
        clean = pr.head.class_logits(model, enc, pr.prompt)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, clean, atol=1e-4)
    total = len(head_sites) * heads
    kept_heads = sum(len(keep[s.layer]) for s in head_sites)
    assert small.pruning.heads_kept_ratio == pytest.approx(kept_heads / total)
    assert small.pruning.kept_ratio == pytest.approx(1 - ffn.width / 2 / model.n_neurons)

    again = load_pruned(save_pruned(small, tmp_path / "p"))
    with torch.no_grad():
        torch.testing.assert_close(pr.head.class_logits(again, enc, pr.prompt), got)
    assert again.pruning.kept == small.pruning.kept

    # pruning again composes: indices stay the original model's
    first = again.module_sites("heads")[1]
    twice = prune_model(again, {first.name: [0]})
    assert twice.pruning.kept[first.name] == [keep[1][0]]
    with torch.no_grad(), intervene(model, Zero(twice.pruning.removed_set())):
        ref2 = pr.head.class_logits(model, enc, pr.prompt)
        torch.testing.assert_close(pr.head.class_logits(twice, enc, pr.prompt), ref2,
                                   rtol=1e-4, atol=1e-5)  # fmt: skip


@pytest.mark.parametrize("family", ["gpt2", "t5"])
def test_head_pruned_layers_hook_and_score_their_own_heads(family):
    """GPT-2's fused QKV (the bridge reshapes per layer) and T5's shared position bias (a
    pruned layer reads its heads' columns): in the first block, whose input pruning does
    not change, the pruned model's attention patterns and scores are the kept heads' ones,
    and heads of the pruned model can be scored again."""
    from neuronlens import prune_model

    model = nl_model(family, heads=4)
    task = word_task()
    keep = {0: [1, 3], 1: [0, 2, 3]}
    small = prune_model(model, _heads_set(model, keep))
    stack = model.sites[0].stack
    attn = "attn"
    hooks = [f"{stack}.0.{attn}.hook_pattern", f"{stack}.0.{attn}.hook_attn_scores"]
    enc = model.encode(["w21 w33 w40", "w25 w30"])
    kw = {"decoder_input": enc.input_ids[:, :1]} if family == "t5" else {}
    with torch.no_grad():
        _, big = model.bridge.run_with_cache(enc.input_ids, names_filter=hooks, **kw)
        _, got = small.bridge.run_with_cache(enc.input_ids, names_filter=hooks, **kw)
    for hook in hooks:
        assert got[hook].shape[1] == 2
        torch.testing.assert_close(got[hook], big[hook][:, keep[0]], rtol=1e-5, atol=1e-6)
    pr = fake_prompt(small, task)
    scores = attribute(small, pr, task, task.load("train").take(4), n=None, modules="heads",
                       batch_size=2, progress=False)  # fmt: skip
    assert [s.width for s in scores.sites] == [len(keep[s.layer]) for s in scores.sites]
    assert all(bool(torch.isfinite(scores[s.name]).all()) for s in scores.sites)


def nl_model(family, **sizes):
    from neuronlens import load_model
    from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer

    return load_model(tiny_hf_model(family, seed=4, **sizes), tiny_tokenizer(), name=family)


# ---------------------------------------------------------------------- pruning attn_out inputs
def _reference_o_zeroed(model, family, pr, enc, removed: dict[int, list[int]]):
    """Class logits with input features ``removed[layer]`` of each (encoder / only stack)
    attention output projection zeroed by a plain forward pre-hook."""

    def pre_for(cols):
        def pre(mod, args):
            x = args[0].clone()
            x[..., cols] = 0
            return (x,)

        return pre

    outs = o_projections(model, family)
    handles = [m.register_forward_pre_hook(pre_for(removed[i])) for i, m in enumerate(outs)]
    try:
        with torch.no_grad():
            return pr.head.class_logits(model, enc, pr.prompt)
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", ["bert", "roberta", "llama", "gpt2", "t5"])
def test_pruned_attn_out_features_equal_zeroed_features(family, tmp_path):
    """The output projection reads only the kept features of the attention's full-width
    output: the same logits as zeroing the others by hand, saved and loaded, composing."""
    from neuronlens import prune_model
    from neuronlens.pruning import load_pruned, save_pruned

    model = nl_model(family, heads=4)
    task = word_task()
    pr = fake_prompt(model, task)
    enc = model.encode(render_texts(model, pr.head, task, task.load("dev").take(4)))
    g = torch.Generator().manual_seed(1)
    sites = [s for s in model.module_sites("attn_out") if s.stack != "decoder_blocks"]
    keep = {s.layer: sorted(torch.randperm(s.width, generator=g)[: s.width // 2].tolist())
            for s in sites}  # fmt: skip
    small = prune_model(model, {s.name: keep[s.layer] for s in sites})
    removed = {i: [j for j in range(sites[i].width) if j not in keep[i]] for i in keep}
    ref = _reference_o_zeroed(model, family, pr, enc, removed)
    with torch.no_grad():
        got = pr.head.class_logits(small, enc, pr.prompt)
    torch.testing.assert_close(got, ref, rtol=1e-4, atol=1e-5)
    assert not torch.allclose(got, pr.head.class_logits(model, enc, pr.prompt), atol=1e-4)
    # the sites keep their width; the record keeps the original indices
    assert [s.width for s in small.module_sites("attn_out")] == [
        s.width for s in model.module_sites("attn_out")
    ]
    every = model.module_sites("attn_out")  # T5: the decoder's stay whole
    whole = sum(s.width for s in every if s.stack == "decoder_blocks")
    assert small.pruning.attn_out_kept_ratio == pytest.approx(
        (sum(len(v) for v in keep.values()) + whole) / sum(s.width for s in every)
    )
    assert small.pruning.kept_ratio == 1.0  # FFN neurons are counted apart
    again = load_pruned(save_pruned(small, tmp_path / "p"))
    with torch.no_grad():
        torch.testing.assert_close(pr.head.class_logits(again, enc, pr.prompt), got)
    # again: indices are the original ones, and keeping composes as an intersection
    first = sites[0].name
    twice = prune_model(again, {first: keep[0][:2] + removed[0][:2]})
    assert twice.pruning.kept[first] == keep[0][:2]
    removed[0] = [j for j in range(sites[0].width) if j not in keep[0][:2]]
    with torch.no_grad():
        torch.testing.assert_close(
            pr.head.class_logits(twice, enc, pr.prompt),
            _reference_o_zeroed(model, family, pr, enc, removed),
            rtol=1e-4,
            atol=1e-5,
        )


def test_attn_out_pruning_from_scores_and_refusals():
    """`attribute(modules="all").top(...)` prunes FFN neurons and attention-output inputs in
    one call; heads and single features of one layer are refused."""
    from neuronlens import prune_model

    model, task = nl_model("bert", heads=4), word_task()
    pr = fake_prompt(model, task)
    scores = attribute(model, pr, task, task.load("train").take(6), modules="all",
                       progress=False)  # fmt: skip
    small = prune_model(model, scores.top(percent=50, per_layer=True))
    assert small.pruning.kept_ratio == pytest.approx(0.5)
    assert small.pruning.attn_out_kept_ratio == pytest.approx(0.5)
    with pytest.raises(NeuronLensError, match="both whole heads and single"):
        prune_model(model, {"blocks.0.heads": [0, 1], "blocks.0.attn_out": [0, 1, 2]})
    with pytest.raises(NeuronLensError, match="both whole heads and single"):
        prune_model(small, {"blocks.0.heads": [0, 1]})
    heads_cut = prune_model(model, {"blocks.0.heads": [0, 1]})
    with pytest.raises(NeuronLensError, match="both whole heads and single"):
        prune_model(heads_cut, {"blocks.0.attn_out": [0, 1]})
    # another layer is fine; the head-pruned layer's features are its kept heads' ones
    both = prune_model(heads_cut, {"blocks.1.attn_out": [0, 5]})
    hd = model.head_dim
    assert both.pruning.kept["blocks.0.attn_out"] == list(range(2 * hd))
    assert both.pruning.original_widths["blocks.0.attn_out"] == 4 * hd
    assert both.pruning.kept["blocks.1.attn_out"] == [0, 5]
    # the head-pruned layer can lose more heads; the feature-pruned one cannot lose heads
    fewer = prune_model(both, {"blocks.0.heads": [1]})
    assert fewer.pruning.kept["blocks.0.heads"] == [1]
    assert fewer.pruning.kept["blocks.0.attn_out"] == list(range(hd, 2 * hd))
    with pytest.raises(NeuronLensError, match="both whole heads and single"):
        prune_model(both, {"blocks.1.heads": [0, 1, 2]})


def test_head_pruning_refusals():
    from neuronlens import prune_model
    from neuronlens.errors import UnsupportedModelError

    bert = nl_model("bert")
    with pytest.raises(NeuronLensError, match="every head"):
        prune_model(bert, {"blocks.0.heads": []})
    llama = nl_model("llama", heads=4)
    with pytest.raises(UnsupportedModelError, match="same number of kept heads"):
        prune_model(llama, {"blocks.0.heads": [0, 1, 2]})
