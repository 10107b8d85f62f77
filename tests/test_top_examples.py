"""top_examples (streaming top-k per neuron, token by token) and the direct logit effect,
each against an independent slow reference: a full sort, own hooks, module calls."""

import json
import math

import pytest
import torch

import neuronlens as nl
from neuronlens.capture import SiteBatch
from neuronlens.errors import NeuronLensError, SiteError
from neuronlens.logit_effect import logit_effect, logit_vector
from neuronlens.models.layout import make_layout
from neuronlens.models.sites import Site
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.probes.top_examples import (
    PAD,
    TopExamples,
    TopExamplesProbe,
    priorities,
    top_examples,
)
from tests.probe_fixtures import fake_prompt, planted_model, tiny, word_task

# ---------------------------------------------------------------- the streaming state


class _Batch:  # what a SiteBatch's batch holds, as the probe reads it
    def __init__(self, index, layout):
        self.index, self.layout = index, layout


def _random_batches(seed: int, n: int = 37, width: int = 6, batch: int = 5):
    """Random activations on integer levels (many ties) with right padding of random length."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for start in range(0, n, batch):
        b = min(batch, n - start)
        lengths = torch.randint(1, 9, (b,), generator=g)
        t = int(lengths.max())
        mask = (torch.arange(t) < lengths.unsqueeze(1)).long()
        ids = torch.randint(5, 50, (b, t), generator=g) * mask
        acts = torch.randint(-3, 4, (b, t, width), generator=g).float()
        layout = make_layout(ids, mask, 0)
        out.append((torch.arange(start, start + b), acts, layout))
    return out


def _run(probe, site, batches, rows=None):
    state = probe.init_state([site])
    for index, acts, layout in batches:
        if rows is not None:
            keep = torch.isin(index, rows)
            if not keep.any():
                continue
            local = torch.searchsorted(rows, index[keep])
            index, acts = local, acts[keep]
            layout = make_layout(layout.input_ids[keep], layout.attention_mask[keep], 0)
        sb = SiteBatch(site, acts, layout.attention_mask.bool(), _Batch(index, layout))
        probe.update(state, sb)
    return state


def _reference(batches, neuron, k, descending=True):
    """Every example's maximum over its real tokens, fully sorted: ``[(value, index, row)]``."""
    rows = []
    for index, acts, layout in batches:
        for i in range(len(index)):
            n = int(layout.attention_mask[i].sum())
            vals = acts[i, :n, neuron]
            rows.append((float(vals.max()), int(index[i]), acts[i, :n, neuron].tolist()))
    key = (lambda r: (-r[0], r[1])) if descending else (lambda r: (r[0], r[1]))
    return sorted(rows, key=key)[:k]


SITE = Site("blocks", 0, "blocks.0.mlp.hook_post", 6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_streaming_top_k_equals_a_full_sort_with_ties_and_padding(seed):
    batches = _random_batches(seed)
    neurons = torch.tensor([0, 2, 5])
    probe = TopExamplesProbe({"blocks.0": neurons}, k=7, lowest=True, sample=9, seed=seed)
    st = _run(probe, SITE, batches)
    for j, neuron in enumerate(neurons.tolist()):
        for kind, desc in (("top", True), ("low", False)):
            want = _reference(batches, neuron, 7, desc)
            assert st[f"blocks.0/{kind}_idx"][j].tolist() == [r[1] for r in want]
            assert st[f"blocks.0/{kind}_val"][j].tolist() == [r[0] for r in want]
            for slot, r in enumerate(want):  # the kept token row is the example's own
                row = st[f"blocks.0/{kind}_act"][j, slot]
                assert row[: len(r[2])].tolist() == r[2]
                assert bool(row[len(r[2]) :].isnan().all())
                codes = st[f"blocks.0/{kind}_code"][j, slot]
                assert bool((codes[len(r[2]) :] == PAD).all()) and bool(
                    (codes[: len(r[2])] >= 0).all()
                )
    # the sample: the 9 examples of smallest priority, whatever the batching
    pri = priorities(torch.arange(37), seed)
    want = sorted(range(37), key=lambda i: (float(pri[i]), i))[:9]
    assert st["blocks.0/res_idx"].tolist() == want


def test_shards_merged_equal_one_pass():
    batches = _random_batches(4)
    probe = TopExamplesProbe({"blocks.0": torch.tensor([1, 3])}, k=5, lowest=True, sample=8)
    whole = _run(probe, SITE, batches)
    parts = []
    for rank in range(3):
        rows = torch.arange(rank, 37, 3)
        shard = TopExamplesProbe(
            {"blocks.0": torch.tensor([1, 3])}, k=5, lowest=True, sample=8, rows=rows
        )
        parts.append(_run(shard, SITE, batches, rows=rows))
    merged = probe.merge(probe.merge(parts[0], parts[1]), parts[2])
    assert merged.keys() == whole.keys()
    for key in whole:
        a, b = whole[key], merged[key]
        if a.is_floating_point():
            assert torch.equal(a.nan_to_num(-7.5), b.nan_to_num(-7.5)), key
        else:
            assert torch.equal(a, b), key


# ---------------------------------------------------------------- on models


def test_a_planted_neuron_tops_on_its_token():
    """Neuron 7 of the planted BERT fires on w1: its top examples all hold w1 and peak there;
    its lowest hold none."""
    model, task = planted_model(), word_task(60)
    data = task.load("train")
    n_w1 = sum("w1" in t.split() for t in data.texts)
    view = top_examples(model, data, [("blocks.0", 7)], k=min(n_w1, 10), lowest=True)
    rec = view.record("blocks.0", 7)
    assert len(rec.top) == min(n_w1, 10)
    for ex in rec.top:
        assert "w1" in data.texts[ex.index].split()
        peak = max(range(len(ex.tokens)), key=lambda i: ex.activations[i])
        assert ex.tokens[peak] == "w1" and ex.value == pytest.approx(ex.activations[peak])
    assert all("w1" not in data.texts[ex.index].split() for ex in rec.lowest)
    assert rec.max_activation > 5 * max(abs(e.value) for e in rec.lowest)


def _own_hook_activations(model, pr, task, text_row, site, neuron):
    """The neuron's activation at every position of one example, by own hooks."""
    from neuronlens.prompts.heads import render_texts

    texts = render_texts(model, pr.head, task, text_row)
    enc = model.encode(texts, max_length=128)
    kept = {}

    def keep(t, hook):
        kept["a"] = t.detach()
        return t

    with torch.no_grad(), model.hooks([(site.hook_name, keep)]):
        pr.head.class_logits(model, enc, pr.prompt)
    layout = model.layout(enc, pr.n_tokens, pr.head.placement(model))
    real = layout.attention_mask[0].bool()
    return kept["a"][0, real, neuron].tolist(), layout.prompt_mask()[0][real].tolist(), enc


@pytest.mark.parametrize("family", ["bert", "gpt2", "llama", "t5", "roberta"])
def test_token_rows_match_own_hooks_with_a_prompt(family):
    model, task = tiny(family), word_task(30)
    data = task.load("dev")
    pr = fake_prompt(model, task, seed=2)
    site = model.sites[0]
    view = top_examples(model, data, {site.name: [1, 4]}, k=3, prompt=pr, task=task,
                        sample=10, per_quantile=1)  # fmt: skip
    for rec in view:
        for ex in rec.top + rec.random:
            acts, in_prompt, enc = _own_hook_activations(
                model, pr, task, data._select([ex.index]), site, rec.neuron
            )
            assert ex.in_prompt == in_prompt and sum(in_prompt) == pr.n_tokens
            assert ex.activations == pytest.approx(acts, abs=1e-6)
            words = [t for t, p in zip(ex.tokens, ex.in_prompt, strict=True) if not p]
            ids = enc.input_ids[0][enc.attention_mask[0].bool()].tolist()
            assert words == [model.tokenizer.convert_ids_to_tokens(i) for i in ids]
            assert ex.value == pytest.approx(
                max(a for a, p in zip(acts, in_prompt, strict=True) if not p), abs=1e-6
            )


def test_quantile_samples_moments_and_determinism():
    model, task = tiny("gpt2"), word_task(80)
    data = task.load("train")
    kw = {"k": 4, "sample": 40, "quantiles": 4, "per_quantile": 2}
    a = top_examples(model, data, {"blocks.1": [0, 5]}, seed=3, **kw)
    again = top_examples(model, data, {"blocks.1": [0, 5]}, seed=3, **kw)
    b = top_examples(model, data, {"blocks.1": [0, 5]}, seed=3, batch_size=7, **kw)
    c = top_examples(model, data, {"blocks.1": [0, 5]}, seed=4, **kw)
    assert a.to_dict() == again.to_dict()  # same seed, same numbers
    for ra, rb in zip(a, b, strict=True):  # other batching: the same examples
        for part in ("top", "random"):
            assert [e.index for e in getattr(ra, part)] == [e.index for e in getattr(rb, part)]
        assert ra.mean == pytest.approx(rb.mean, rel=1e-6)
    assert [e.index for e in a[0].random] != [e.index for e in c[0].random]
    rec = a[0]
    assert len(rec.sample_values) == 40 and len(rec.quantile_boundaries) == 3
    for q, group in enumerate(rec.by_quantile):
        lo = -math.inf if q == 0 else rec.quantile_boundaries[q - 1]
        hi = math.inf if q == 3 else rec.quantile_boundaries[q]
        assert group and all(lo <= e.value and (e.value < hi or q == 3) for e in group)
    # moments over every input token of the data, by own hooks
    site = model.sites[1]
    vals = []
    for text in data.texts:
        enc = model.encode([text])
        with torch.no_grad():
            cache = {}
            with model.hooks([(site.hook_name, lambda t, hook, c=cache: c.setdefault("a", t))]):
                model(enc)
        vals += cache["a"][0, :, 0].double().tolist()
    v = torch.tensor(vals, dtype=torch.float64)
    assert rec.mean == pytest.approx(float(v.mean()), rel=1e-5)
    assert rec.variance == pytest.approx(float(v.var(unbiased=False)), rel=1e-4)
    z = (v - v.mean()) / v.std(unbiased=False)
    assert rec.skewness == pytest.approx(float((z**3).mean()), rel=1e-3, abs=1e-4)


def test_save_load_and_the_neuron_explainer_layout(tmp_path):
    model, task = tiny("llama"), word_task(30)
    pr = fake_prompt(model, task)
    view = top_examples(model, task.load("dev"), nl.NeuronSet({"blocks.1": torch.tensor([2, 9])},
                        {"blocks.1": model.sites[1].width}), k=3, prompt=pr, task=task,
                        sample=12)  # fmt: skip
    path = view.save(tmp_path / "view.json")
    back = TopExamples.load(path)
    assert back.to_dict() == view.to_dict() and back.meta["k"] == 3
    doc = json.loads(path.read_text())
    doc["body"]["records"][0]["top"][0]["value"] += 1.0
    path.write_text(json.dumps(doc))
    with pytest.raises(NeuronLensError, match="checksum"):
        TopExamples.load(path)
    path.write_text(path.read_text()[:50])
    with pytest.raises(NeuronLensError, match="readable"):
        TopExamples.load(path)
    files = view.to_neuron_explainer(tmp_path / "records")
    assert sorted(p.relative_to(tmp_path / "records").as_posix() for p in files) == [
        "1/2.json", "1/9.json"
    ]  # fmt: skip
    rec = json.loads(files[0].read_text())
    assert rec["dataclass_name"] == "NeuronRecord"
    assert rec["neuron_id"] == {"dataclass_name": "NeuronId", "layer_index": 1, "neuron_index": 2}
    top = rec["most_positive_activation_records"][0]
    assert top["dataclass_name"] == "ActivationRecord"
    assert len(top["tokens"]) == len(top["activations"]) == len(view[0].top[0].tokens) - 3
    assert not any(t.startswith("<prompt") for t in top["tokens"])
    assert len(rec["random_sample_by_quantile"]) == 5 and len(rec["quantile_boundaries"]) == 4


def test_top_examples_refuses_what_it_cannot_rank():
    model, task = tiny("t5"), word_task(20)
    data = task.load("dev")
    with pytest.raises(NeuronLensError, match="no neurons"):
        top_examples(model, data, {})
    with pytest.raises(NeuronLensError, match="out of range"):
        top_examples(model, data, {"encoder_blocks.0": [10**6]})
    with pytest.raises(SiteError):
        top_examples(model, data, {"encoder_blocks.9": [0]})
    with pytest.raises(NeuronLensError, match="k must"):
        top_examples(model, data, {"encoder_blocks.0": [0]}, k=0)
    with pytest.raises(SiteError, match="decoder"):
        top_examples(model, data, {"decoder_blocks.0": [0]})
    bad = tiny("bert")
    with torch.no_grad():
        bad.hf_model.bert.embeddings.word_embeddings.weight.fill_(float("nan"))
    with pytest.raises(NeuronLensError, match="NaN or infinite"):
        top_examples(bad, data, {"blocks.0": [0]})


# ---------------------------------------------------------------- logit effect


def _reference_logits(model, site, neuron):
    """Through the modules themselves: the second linear on a one-hot input (minus its
    response to zero), the final norm's scale (a LayerNorm centred), the unembedding."""
    hf = model.hf_model
    with torch.no_grad():
        ffn = model.hf_ffn(site)
        out = {"gpt2": "c_proj", "llama": "down_proj"}.get(model.family.name) or "wo"
        lin = getattr(ffn, out)
        e = torch.zeros(1, site.width)
        e[0, neuron] = 1.0
        w = (lin(e) - lin(torch.zeros_like(e)))[0]
        if model.family.name == "gpt2":
            norm = hf.transformer.ln_f
            w = (w - w.mean()) * norm.weight
        elif model.family.name == "llama":
            w = w * hf.model.norm.weight
        else:
            w = w * hf.decoder.final_layer_norm.weight
            if hf.config.scale_decoder_outputs:
                w = w * hf.config.d_model**-0.5
        return torch.stack([hf.lm_head.weight[t] @ w for t in range(hf.lm_head.weight.shape[0])])


@pytest.mark.parametrize("family", ["gpt2", "llama", "t5"])
def test_logit_effect_matches_a_slow_reference(family):
    model = tiny(family)
    site = model.sites[-1]
    for neuron in (0, 3):
        want = _reference_logits(model, site, neuron)
        got = logit_vector(model, site.name, neuron)
        assert torch.allclose(got, want, rtol=1e-5, atol=1e-7)
        eff = logit_effect(model, site.name, neuron, k=4)
        assert eff.promoted_ids == torch.topk(want, 4).indices.tolist()
        assert eff.suppressed_ids == torch.topk(-want, 4).indices.tolist()
        assert eff.promoted[0][1] == pytest.approx(float(want.max()), rel=1e-5)
        tok = model.tokenizer.convert_ids_to_tokens(eff.promoted_ids[0])
        assert eff.promoted[0][0] == tok


def test_logit_effect_says_where_it_is_undefined():
    with pytest.raises(NeuronLensError, match="transforms the hidden state"):
        logit_effect(tiny("bert"), "blocks.0", 0)
    with pytest.raises(NeuronLensError, match="encoder site"):
        logit_effect(tiny("t5"), "encoder_blocks.0", 0)
    with pytest.raises(NeuronLensError, match="out of range"):
        logit_effect(tiny("llama"), "blocks.0", 10**6)
    headless = nl.load_model(tiny_hf_model("gpt2"), tiny_tokenizer(), name="h", has_lm_head=False)
    with pytest.raises(NeuronLensError, match="LM head"):
        logit_effect(headless, "blocks.0", 0)
