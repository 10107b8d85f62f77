"""Real SKELETON run on MiniLM / SST-2, and a comparison of neuron-selection methods.

1. Take an SST-2 prompt for all-MiniLM-L6-v2 (``--prompt`` a saved one, else tune one).
2. SKELETON: attribution on 20 training examples, binary search of the kept ratio in 5 %
   steps, prompt re-training after each prune, accept within psi = 1 point on validation
   sentences kept out of training (``sentence_disjoint_split``). Report the ratio found,
   GLUE-dev and AdvSST2 accuracy before / after, and the measured CPU speed-up of the pruned
   model (batch 8 x (128 + 20 prompt tokens), interleaved, median) next to its FLOP ceiling.
3. At one fixed kept ratio, prune by attribution / activation / gradient / random scores,
   re-train the prompt the same way, and report GLUE-dev accuracy of each.

    NEURONLENS_DATA_DIR=../shared/data python benchmarks/skeleton_real.py [--prompt PATH]

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from common import random_batch  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.probes import attribute  # noqa: E402
from neuronlens.prompts import PromptResult, evaluate, tune_prompt  # noqa: E402
from neuronlens.pruning import (  # noqa: E402
    flop_ceiling,
    interleaved_latency,
    keep_top,
    retrain_prompt,
    skeleton_search,
)
from neuronlens.tasks import get_task, sentence_disjoint_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompt", default=None, help="saved MiniLM SST-2 prompt (.safetensors)")
    ap.add_argument("--psi", type=float, default=1.0)
    ap.add_argument("--retrain-steps", type=int, default=60)
    ap.add_argument(
        "--compare-ratio", type=float, default=0.5, help="kept ratio for the method comparison"
    )
    ap.add_argument("--val", type=int, default=400)
    args = ap.parse_args()
    model = nl.load_minilm()
    sst2 = get_task("sst2")
    # validation: whole sentences kept out of train (held-out rows would be phrases of it)
    pool, val = sentence_disjoint_split(sst2.load("train"), args.val, seed=1)
    train = pool.subset(4000, seed=0)
    dev, adv = sst2.load("dev"), get_task("adv_sst2").load("dev")
    t0 = time.perf_counter()
    if args.prompt:
        tuned = PromptResult.load(args.prompt, model)
    else:
        tuned = tune_prompt(
            model,
            sst2,
            train=train.subset(2000, seed=3),
            validation=val,
            n_tokens=20,
            epochs=1,
            head_lr=1e-2,
            seed=0,
        )
    retrain = {"max_steps": args.retrain_steps, "lr": 1e-2, "head_lr": 1e-3, "batch_size": 16}
    report = {
        "model": model.name,
        "psi_points": args.psi,
        "retrain": retrain,
        "before": {
            "val": evaluate(model, tuned, val).accuracy,
            "glue_dev": evaluate(model, tuned, dev).accuracy,
            "adv_sst2": evaluate(model, tuned, adv).accuracy,
        },
    }
    res = skeleton_search(
        model, tuned, sst2, train=train, eval_data=val, psi=args.psi, retrain=retrain
    )
    report["search_wall_s"] = round(time.perf_counter() - t0, 1)
    report["kept_ratio"] = res.kept_ratio
    report["removed_ratio"] = round(res.removed_ratio, 4)
    report["history"] = res.rows()
    report["after"] = {
        "val": res.accuracy,
        "glue_dev": evaluate(res.model, res.prompt, dev).accuracy,
        "adv_sst2": evaluate(res.model, res.prompt, adv).accuracy,
    }
    lat = interleaved_latency(
        {"unpruned": model, "pruned": res.model},
        random_batch(model, 8, 128),
        prompt=tuned.prompt,
        repeats=7,
    )
    report["speedup_measured"] = round(lat["unpruned"] / lat["pruned"], 3)
    report["flop_ceiling"] = round(flop_ceiling(model, res.kept_ratio, seq_len=148), 3)
    print(json.dumps(report), flush=True)

    compare = {}
    for method in ("attribution", "activation", "gradient", "random"):
        scores = attribute(model, tuned, sst2, train, method=method, n=20, progress=False)
        pruned = keep_top(model, scores, args.compare_ratio)
        prompt = retrain_prompt(pruned, tuned, sst2, train=train, **retrain)
        compare[method] = {
            "glue_dev": evaluate(pruned, prompt, dev).accuracy,
            "no_retrain_glue_dev": evaluate(pruned, tuned, dev).accuracy,
        }
        print(json.dumps({method: compare[method]}), flush=True)
    report["method_comparison"] = {"kept_ratio": args.compare_ratio, **compare}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
