"""Loading, neuron sites, and activation parity with raw Hugging Face on all six families."""

import pytest
import torch

import neuronlens as nl
from neuronlens.errors import (
    EmptyDataError,
    NeuronLensError,
    SiteError,
    TokenizerMismatchError,
    UnsupportedModelError,
)
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer

from .conftest import random_texts


def _raw_inputs(enc):
    kw = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
    if enc.token_type_ids is not None:
        kw["token_type_ids"] = enc.token_type_ids
    if enc.decoder_input_ids is not None:
        kw["decoder_input_ids"] = enc.decoder_input_ids
    return kw


def _raw_neurons(model, raw, enc):
    """Neuron activations from plain forward pre-hooks on the raw HF model's second linears."""
    got, handles = {}, []
    for stack in model.stacks:
        n_layers = sum(s.stack == stack.bridge_name for s in model.sites)
        for i in range(n_layers):
            ffn = raw.get_submodule(stack.hf_ffn.format(i=i))
            out = ffn.get_submodule(stack.hf_out)

            def pre(mod, args, key=f"{stack.bridge_name}.{i}"):
                got[key] = args[0].detach().clone()

            handles.append(out.register_forward_pre_hook(pre))
    try:
        with torch.no_grad():
            logits = raw(**_raw_inputs(enc)).logits
    finally:
        for h in handles:
            h.remove()
    return got, logits


def test_sites_and_kinds(tiny_pair, family):
    model, raw = tiny_pair
    stacks = {s.stack for s in model.sites}
    if family.startswith("t5"):
        assert stacks == {"encoder_blocks", "decoder_blocks"}
        assert model.kind is nl.ModelKind.ENCODER_DECODER
    else:
        assert stacks == {"blocks"}
    assert len(model.sites) == (4 if family.startswith("t5") else 2)
    assert all(s.width == 24 for s in model.sites)
    assert model.gated == (family in ("t5-gated", "llama"))
    for s in model.sites:
        assert s.hook_name == f"{s.stack}.{s.layer}.mlp.hook_post"
        assert s.hook_name in model.bridge.hook_dict
    assert not model.bridge.compatibility_mode


def test_activations_and_logits_match_raw_hf(tiny_pair, family):
    model, raw = tiny_pair
    texts = random_texts(7, seed=3)
    enc = model.encode(texts)
    ref, ref_logits = _raw_neurons(model, raw, enc)
    got = {}

    def keep(sb):
        got[sb.site.name] = (sb.acts.clone(), sb.valid.clone())

    nl.capture(model, texts, keep, batch_size=7, progress=False)
    assert set(got) == set(ref)
    for name, (acts, valid) in got.items():
        exp = ref[name]
        assert acts.shape == exp.shape
        v = valid.unsqueeze(-1).expand_as(acts)
        torch.testing.assert_close(acts[v], exp[v], atol=1e-5, rtol=0)
    with torch.no_grad():
        logits = model(enc)
    torch.testing.assert_close(logits, ref_logits, atol=1e-5, rtol=0)


def test_batching_does_not_change_activations(tiny_pair):
    model, _ = tiny_pair
    texts = random_texts(9, seed=5)
    means = []
    for bs in (9, 2):
        rm = nl.RunningMean()
        nl.capture(model, texts, rm, batch_size=bs, progress=False)
        means.append({k: rm.mean(k) for k in rm.sums})
    for k in means[0]:
        torch.testing.assert_close(means[0][k], means[1][k], atol=1e-5, rtol=0)


def test_width_read_from_module_shapes_not_cfg():
    hf = tiny_hf_model("t5-gated", d_mlp=40)
    model = nl.load_model(hf, tiny_tokenizer())
    assert model.bridge.cfg.d_mlp != 40  # the bridge's cfg is wrong for T5 ...
    assert {s.width for s in model.sites} == {40}  # ... the sites are right


def test_local_directory_loads_without_network(tmp_path):
    hf = tiny_hf_model("gpt2")
    hf.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model = nl.load_model(tmp_path)
    assert model.kind is nl.ModelKind.CAUSAL_LM
    assert model.has_lm_head
    assert [s.width for s in model.sites] == [24, 24]


def test_base_model_checkpoint_is_marked_headless(tmp_path):
    """A checkpoint with only BertModel weights loads with a random head, marked ENCODER."""
    from transformers import BertModel

    base = BertModel(tiny_hf_model("bert").config)
    base.config.architectures = ["BertModel"]
    base.save_pretrained(tmp_path)
    tiny_tokenizer().save_pretrained(tmp_path)
    model = nl.load_model(tmp_path)
    assert not model.has_lm_head
    assert model.kind is nl.ModelKind.ENCODER
    with pytest.raises(nl.errors.MissingLMHeadError, match="randomly initialised"):
        model.require_lm_head()
    full = tiny_hf_model("bert")
    full.save_pretrained(tmp_path / "full")
    tiny_tokenizer().save_pretrained(tmp_path / "full")
    assert nl.load_model(tmp_path / "full").kind is nl.ModelKind.MASKED_LM


def test_unknown_architecture_names_supported_families():
    from transformers import DistilBertConfig, DistilBertForMaskedLM

    hf = DistilBertForMaskedLM(
        DistilBertConfig(vocab_size=64, dim=16, n_layers=1, n_heads=2, hidden_dim=24)
    )
    with pytest.raises(UnsupportedModelError) as err:
        nl.load_model(hf, tiny_tokenizer())
    msg = str(err.value)
    for fam in ("bert", "roberta", "t5", "gpt2", "llama"):
        assert fam in msg
    assert "register_family" in msg


def test_register_family_for_another_architecture():
    """Mistral is Llama-shaped; registering its table entry makes it loadable."""
    from transformers import MistralConfig, MistralForCausalLM

    hf = MistralForCausalLM(
        MistralConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=24,
            num_hidden_layers=2,
            num_attention_heads=2,
            num_key_value_heads=1,
        )
    ).eval()
    with pytest.raises(UnsupportedModelError):
        nl.load_model(hf, tiny_tokenizer())
    fam = nl.Family(
        name="mistral-test",
        architectures=("MistralForCausalLM",),
        kind=nl.ModelKind.CAUSAL_LM,
        stacks=(nl.Stack("blocks", "model.layers.{i}.mlp", ("gate_proj", "up_proj"), "down_proj"),),
        gated=True,
    )
    nl.register_family(fam)
    try:
        model = nl.load_model(hf, tiny_tokenizer())
        assert [s.width for s in model.sites] == [24, 24]
        rm = nl.RunningMean()
        nl.capture(model, ["w1 w2", "w3"], rm, progress=False)
        assert set(rm.sums) == {"blocks.0", "blocks.1"}
        with pytest.raises(UnsupportedModelError, match="already registered"):
            nl.register_family(fam)
    finally:
        nl.unregister_family("mistral-test")


def test_site_selection_errors(tiny_pair, family):
    model, _ = tiny_pair
    with pytest.raises(SiteError, match="valid sites"):
        model.site("blocks.7")
    with pytest.raises(SiteError):
        model.select_sites(["nonsense"])
    if family.startswith("t5"):
        with pytest.raises(SiteError, match="ambiguous"):
            model.site(0)
        assert model.site(("decoder_blocks", 1)).name == "decoder_blocks.1"
    else:
        assert model.site(1).name == "blocks.1"
        with pytest.raises(SiteError, match="not in this model"):
            model.site(2)
    with pytest.raises(SiteError):
        nl.capture(model, ["w1"], lambda sb: None, sites=["blocks.99"], progress=False)


def test_empty_batch_and_data_errors(tiny_bert):
    with pytest.raises(EmptyDataError):
        nl.capture(tiny_bert, [], lambda sb: None, progress=False)
    with pytest.raises(EmptyDataError):
        tiny_bert.encode([])
    enc = tiny_bert.encode(["w1 w2"])
    with pytest.raises(EmptyDataError):
        tiny_bert(enc[torch.arange(0)])
    with pytest.raises(NeuronLensError, match="cannot read data"):
        nl.capture(tiny_bert, 42, lambda sb: None, progress=False)
    with pytest.raises(NeuronLensError, match="one label per example"):
        nl.capture(tiny_bert, ["w1", "w2"], lambda sb: None, labels=[0, 1, 1], progress=False)


def test_mismatched_tokenizer(tmp_path):
    hf = tiny_hf_model("bert", vocab=40)  # fewer embeddings than the tokenizer's 64 tokens
    with pytest.raises(TokenizerMismatchError, match="tokenizer"):
        nl.load_model(hf, tiny_tokenizer())
    # a tokenizer that fits in size but emits ids the model has not: caught at encode time
    model = nl.load_model(tiny_hf_model("bert", vocab=64), tiny_tokenizer(n_words=40))
    model.tokenizer = tiny_tokenizer(n_words=80)
    with pytest.raises(TokenizerMismatchError):
        model.encode(["w70 w71"])


def test_built_model_needs_tokenizer_and_head():
    with pytest.raises(NeuronLensError, match="tokenizer"):
        nl.load_model(tiny_hf_model("bert"))
    from transformers import BertModel

    with pytest.raises(UnsupportedModelError, match="BertForMaskedLM"):
        nl.load_model(BertModel(tiny_hf_model("bert").config), tiny_tokenizer())


def test_missing_directory_is_a_clear_error(tmp_path):
    with pytest.raises(NeuronLensError, match="not a model directory"):
        nl.load_model(tmp_path / "nope")
    with pytest.raises(NeuronLensError, match="config.json"):
        nl.load_model(tmp_path)


def _tiny(family: str):
    return nl.load_model(tiny_hf_model(family, seed=4), tiny_tokenizer(), name=f"tiny-{family}")


@pytest.mark.parametrize("family", ["bert", "roberta", "gpt2"])
def test_keep_positions_leave_the_input_where_it_was(family):
    """Reference: the raw HF model without a prompt (its own position ids from input_ids).
    With the prompt masked out of attention, "keep" gives the input exactly those states;
    "shift" (the input moved p positions on) does not."""
    from neuronlens.prompts import init_prompt

    model = _tiny(family)
    enc = model.encode(random_texts(4, seed=3))
    prompt = init_prompt(model, 3, seed=0)
    base, real = model.hf_model.base_model, enc.attention_mask.bool()
    kw = {} if enc.token_type_ids is None else {"token_type_ids": enc.token_type_ids}
    with torch.no_grad():
        plain = base(input_ids=enc.input_ids, attention_mask=enc.attention_mask, **kw)
        plain = plain.last_hidden_state
        for mode, same in (("shift", False), ("keep", True)):
            model.prompt_positions = mode
            emb, mask, types = model.embed(enc, prompt)
            blind = mask.clone()
            blind[:, :3] = 0  # nothing attends to the prompt
            out = base(
                inputs_embeds=emb,
                attention_mask=blind,
                **model._embedding_kwargs(enc, mask, types),
            ).last_hidden_state[:, 3:]
            assert torch.allclose(out[real], plain[real], atol=1e-5) is same, mode


def test_keep_positions_match_the_prompt_moved_behind_the_input():
    """Reference: BERT attends both ways, so with positions kept the order of the sequence does
    not matter: the prompt appended after the input (same position ids, built by hand from the
    raw embeddings) gives the same states. The bridge forward's logits (the masked-LM path)
    agree with the hidden states through the LM head."""
    from neuronlens.prompts import init_prompt

    model = _tiny("bert")
    model.prompt_positions = "keep"
    enc = model.encode(["w1 w2 w3 w4", "w5 w6 w7 w8"])  # same length: no padding
    p, length = 4, enc.input_ids.shape[1]
    prompt = init_prompt(model, p, seed=1)
    with torch.no_grad():
        hidden, _ = model.hidden_states(enc, prompt=prompt)
        words = model.input_embeddings(enc.input_ids)
        moved = torch.cat([words, prompt.expand(2, -1, -1)], 1)
        positions = torch.cat([torch.arange(length), torch.arange(p)]).expand(2, -1)
        ref = model.hf_model.base_model(
            inputs_embeds=moved,
            position_ids=positions,
            attention_mask=torch.ones(2, length + p, dtype=torch.long),
            token_type_ids=torch.zeros(2, length + p, dtype=torch.long),
        ).last_hidden_state
        torch.testing.assert_close(hidden[:, p:], ref[:, :length], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(hidden[:, :p], ref[:, length:], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(
            model(enc, prompt=prompt), model.lm_logits(hidden), atol=1e-4, rtol=1e-4
        )
        model.prompt_positions = "shift"
        shifted, _ = model.hidden_states(enc, prompt=prompt)
        assert not torch.allclose(shifted, hidden, atol=1e-3)
        # without a prompt the setting changes nothing
        torch.testing.assert_close(
            model.hidden_states(enc)[0], model.hf_model.base_model(**_raw_inputs(enc))[0]
        )


@pytest.mark.parametrize("family", ["t5", "llama"])
def test_keep_positions_need_absolute_position_embeddings(family):
    model = _tiny(family)
    with pytest.raises(NeuronLensError, match="absolute position embeddings"):
        model.prompt_positions = "keep"
    assert model.prompt_positions == "shift"
    with pytest.raises(NeuronLensError, match="must be one of"):
        _tiny("bert").prompt_positions = "kept"
