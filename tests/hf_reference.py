"""Slow references on raw Hugging Face models: one example at a time, no padding, the soft
prompt spliced in by hand, neuron activations read by plain PyTorch hooks on the FFN's
second linear (its input is the activation). Nothing here uses neuronlens's capture,
embedding or layout code."""

from __future__ import annotations

import torch

# the second linear of each family's FFN; its input is the neuron activation
FFN_OUT = {
    "bert": ("bert.encoder.layer", "output.dense"),
    "roberta": ("roberta.encoder.layer", "output.dense"),
    "gpt2": ("transformer.h", "mlp.c_proj"),
    "llama": ("model.layers", "mlp.down_proj"),
    "t5": ("encoder.block", "layer.1.DenseReluDense.wo"),
}
CAUSAL = ("gpt2", "llama")


def _get(root, path: str):
    for part in path.split("."):
        root = root[int(part)] if part.isdigit() else getattr(root, part)
    return root


def ffn_outs(hf, family: str) -> list[torch.nn.Module]:
    stack, inner = FFN_OUT[family.replace("-gated", "")]
    return [_get(layer, inner) for layer in _get(hf, stack)]


def sequence(hf, tokenizer, text: str, prompt: torch.Tensor | None, after: bool):
    """``(embeds [T, d], prompt positions, input positions, input ids)`` of one example."""
    ids = tokenizer(text, return_tensors="pt")["input_ids"][0]
    emb = hf.get_input_embeddings()(ids)
    p = 0 if prompt is None else prompt.shape[0]
    if p == 0:
        return emb, [], list(range(len(ids))), ids
    if after:
        seq = torch.cat([emb, prompt])
        return seq, list(range(len(ids), len(ids) + p)), list(range(len(ids))), ids
    seq = torch.cat([prompt, emb])
    return seq, list(range(p)), list(range(p, p + len(ids))), ids


def run(hf, family: str, embeds: torch.Tensor, *, hidden: bool = False, grad: bool = False):
    """``(output [T, ...], acts [layers] of [T, width])`` of one unpadded example.

    ``output``: LM logits ``[T, V]`` (T5: first decoder step ``[1, V]``), or the base
    model's last hidden state with ``hidden=True`` (T5: the encoder's)."""
    acts: list[torch.Tensor] = []
    handles = [
        m.register_forward_pre_hook(lambda mod, args: acts.append(args[0][0]))
        for m in ffn_outs(hf, family)
    ]
    try:
        x = embeds.unsqueeze(0)
        ctx = torch.enable_grad() if grad else torch.no_grad()
        with ctx:
            if family.startswith("t5"):
                if hidden:
                    out = hf.get_encoder()(inputs_embeds=x).last_hidden_state[0]
                else:
                    dec = torch.zeros(1, 1, dtype=torch.long)
                    out = hf(inputs_embeds=x, decoder_input_ids=dec).logits[0]
            elif hidden:
                out = hf.base_model(inputs_embeds=x).last_hidden_state[0]
            else:
                out = hf(inputs_embeds=x).logits[0]
    finally:
        for h in handles:
            h.remove()
    n_enc = len(ffn_outs(hf, family))
    return out, acts[:n_enc]


def answer_position(
    family: str, readout: str, ids, prompt_pos, input_pos, mask_id, head: str = "verbalizer"
) -> int | None:
    """Where each readout reads the answer in the (encoder) sequence, by hand."""
    if (family.startswith("t5") and head == "verbalizer") or readout == "pool":
        return None  # T5's verbalizer reads the decoder; a pooled head no single position
    if readout == "mask":
        return input_pos[ids.tolist().index(mask_id)]
    if readout == "last":
        return input_pos[-1]
    # readout "prompt": first prompt position, or the last one after a causal LM's input
    return prompt_pos[-1] if family in CAUSAL else prompt_pos[0]
