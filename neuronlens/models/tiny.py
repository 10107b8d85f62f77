"""Small random-weight models of every supported family, built from configs (no download).

Used by the tests (parity with raw Hugging Face), the benchmarks (a BERT-base-sized random
model) and by users who want to try an API in a second. The tokenizer is a word-level one
built in memory over ``vocab`` made-up words plus the special tokens each family needs.
"""

from __future__ import annotations

import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

from neuronlens.errors import UnsupportedModelError

SPECIAL = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "<s>", "</s>")
FAMILIES = ("bert", "roberta", "t5", "t5-gated", "gpt2", "llama")


def tiny_tokenizer(
    n_words: int = 57, extra_words: tuple[str, ...] = ()
) -> transformers.PreTrainedTokenizerFast:
    """A word-level tokenizer over ``w0 ... w{n_words-1}`` and the special tokens.

    Pads with ``[PAD]`` (id 0), masks with ``[MASK]``, wraps single texts as
    ``[CLS] ... [SEP]`` like BERT. ``extra_words`` (lower case) are added after them; with
    any, texts are lower-cased and punctuation is split off words (``"Dull."`` -> ``dull``,
    ``.``), so a real-word task such as ``toy_sentiment`` tokenizes without unknowns.
    """
    words = SPECIAL + tuple(f"w{i}" for i in range(n_words))
    words += tuple(w for w in dict.fromkeys(extra_words) if w not in words)
    vocab = {w: i for i, w in enumerate(words)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if extra_words:
        from tokenizers import normalizers

        tk.normalizer = normalizers.Lowercase()
        tk.pre_tokenizer = pre_tokenizers.Whitespace()
    from tokenizers.processors import TemplateProcessing

    tk.post_processor = TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B:1 [SEP]:1",
        special_tokens=[("[CLS]", vocab["[CLS]"]), ("[SEP]", vocab["[SEP]"])],
    )
    tok = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tk,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        bos_token="<s>",
        eos_token="</s>",
    )
    return tok


def tiny_config(
    family: str,
    *,
    layers: int = 2,
    d_model: int = 16,
    d_mlp: int = 24,
    heads: int = 2,
    vocab: int = 64,
    max_positions: int = 256,
    **overrides,
) -> transformers.PretrainedConfig:
    """A config of the given family and size (random weights are drawn by the model class).

    ``overrides`` set further config attributes (e.g. ``initializer_range=0.2``)."""
    common_bert = dict(
        vocab_size=vocab,
        hidden_size=d_model,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        intermediate_size=d_mlp,
        max_position_embeddings=max_positions,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    if family == "bert":
        cfg = transformers.BertConfig(**common_bert)
    elif family == "roberta":
        cfg = transformers.RobertaConfig(
            **{**common_bert, "max_position_embeddings": max_positions + 2}, pad_token_id=0
        )
    elif family in ("t5", "t5-gated"):
        cfg = transformers.T5Config(
            vocab_size=vocab,
            d_model=d_model,
            d_ff=d_mlp,
            d_kv=d_model // heads,
            num_layers=layers,
            num_decoder_layers=layers,
            num_heads=heads,
            feed_forward_proj="gated-gelu" if family == "t5-gated" else "relu",
            dropout_rate=0.0,
            pad_token_id=0,
            eos_token_id=SPECIAL.index("</s>"),
            decoder_start_token_id=0,
        )
    elif family == "gpt2":
        cfg = transformers.GPT2Config(
            vocab_size=vocab,
            n_embd=d_model,
            n_layer=layers,
            n_head=heads,
            n_inner=d_mlp,
            n_positions=max_positions,
            resid_pdrop=0.0,
            embd_pdrop=0.0,
            attn_pdrop=0.0,
            bos_token_id=SPECIAL.index("<s>"),
            eos_token_id=SPECIAL.index("</s>"),
        )
    elif family == "llama":
        cfg = transformers.LlamaConfig(
            vocab_size=vocab,
            hidden_size=d_model,
            intermediate_size=d_mlp,
            num_hidden_layers=layers,
            num_attention_heads=heads,
            num_key_value_heads=max(1, heads // 2),
            max_position_embeddings=max_positions,
            pad_token_id=0,
        )
    else:
        raise UnsupportedModelError(f"no tiny config for {family!r}; choose from {FAMILIES}")
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


_CLASSES = {
    "bert": "BertForMaskedLM",
    "roberta": "RobertaForMaskedLM",
    "t5": "T5ForConditionalGeneration",
    "t5-gated": "T5ForConditionalGeneration",
    "gpt2": "GPT2LMHeadModel",
    "llama": "LlamaForCausalLM",
}


def tiny_hf_model(family: str, *, seed: int = 0, **sizes) -> transformers.PreTrainedModel:
    """A random-weight HF model (with its LM head, in eval mode) of the given family."""
    cfg = tiny_config(family, **sizes)
    cfg.architectures = [_CLASSES[family]]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = getattr(transformers, _CLASSES[family])(cfg)
    return model.eval()
