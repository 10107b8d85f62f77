"""Real skill-neuron run: MiniLM SST-2 prompts, predictivity and suppression, GLUE dev vs AdvSST2.

Tunes (or loads) SST-2 prompts of several seeds on all-MiniLM-L6-v2, computes skill-neuron
predictivity over all 6 x 1536 FFN neurons on GLUE dev (baselines from an SST-2 train
subset), then on AdvSST2 with the *same clean baselines*, and reports: the predictivity of the
top neurons on both sets, how many neurons pass 0.7, where the top neurons sit by layer, and
the Spearman correlation of the two predictivity maps (per layer, averaged). With
``--suppression`` it also runs the suppression curves (top predictive vs random neurons, on
GLUE dev and on AdvSST2) and the cross suppression (SST-2's skill neurons suppressed on
AdvSST2 and AdvSST2's on GLUE dev), evaluating the seed-0 prompt.

    NEURONLENS_DATA_DIR=../shared/data python benchmarks/skill_neurons_real.py \
        [--prompts DIR] [--seeds 0 1 2] [--train 2000] [--suppression] [--out results/]

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.probes import predictivity  # noqa: E402
from neuronlens.prompts import PromptResult, evaluate, tune_prompt  # noqa: E402
from neuronlens.tasks import get_task, sentence_disjoint_split  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", default=None, help="folder of saved MiniLM SST-2 prompts")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--tune-train", type=int, default=2000)
    ap.add_argument("--train", type=int, default=2000, help="train examples for the baselines")
    ap.add_argument("--top-percent", type=float, default=1.0)
    ap.add_argument("--suppression", action="store_true")
    ap.add_argument("--cross-percent", type=float, default=5.0)
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    model = nl.load_minilm()
    sst2, adv_task = get_task("sst2"), get_task("adv_sst2")
    dev, adv = sst2.load("dev"), adv_task.load("dev")
    t0 = time.perf_counter()
    if args.prompts:
        prompts = [
            PromptResult.load(p, model)
            for p in sorted(glob.glob(os.path.join(args.prompts, "minilm-*.safetensors")))
        ]
    else:
        # validation: whole sentences kept out of train (held-out rows are phrases of it)
        pool, val = sentence_disjoint_split(sst2.load("train"), 300, seed=0)
        train = pool.subset(args.tune_train, seed=1)
        prompts = [
            tune_prompt(
                model,
                sst2,
                train=train,
                validation=val,
                n_tokens=20,
                epochs=1,
                head_lr=1e-2,
                seed=s,
            )
            for s in args.seeds
        ]
    tune_s = time.perf_counter() - t0
    accs = [
        {
            "seed": p.seed,
            "glue_dev": evaluate(model, p, dev).accuracy,
            "adv_sst2": evaluate(model, p, adv).accuracy,
        }
        for p in prompts
    ]
    print(json.dumps({"prompts": accs}), flush=True)

    t0 = time.perf_counter()
    base_train = sst2.load("train").subset(args.train, seed=2)
    clean = predictivity(model, prompts, sst2, dev, train=base_train)
    pred_s = time.perf_counter() - t0
    adversarial = predictivity(model, prompts, sst2, adv, baselines=clean)
    if args.out:
        clean.save(os.path.join(args.out, "predictivity-glue-dev"))
        adversarial.save(os.path.join(args.out, "predictivity-adv-sst2"))

    top = clean.top(percent=args.top_percent)
    adv_top = adversarial.top(percent=args.top_percent)

    def mean_over(scores, nset):
        vals = [scores[s][nset.indices[s]] for s in nset.indices if len(nset.indices[s])]
        return float(torch.cat(vals).mean())

    acc = clean.extra["accuracy"]
    top_acc = torch.cat([acc[s][top.indices[s]] for s in top.indices])
    report = {
        "model": model.name,
        "prompts": accs,
        "n_prompts": len(prompts),
        "baseline_train_examples": len(base_train),
        "tune_wall_s": round(tune_s, 1),
        "predictivity_wall_s": round(pred_s, 1),
        "top_percent": args.top_percent,
        "n_top": top.count,
        "max_predictivity_glue_dev": float(clean.flat().max()),
        "max_predictivity_adv_sst2": float(adversarial.flat().max()),
        "top_mean_predictivity_glue_dev": mean_over(clean, top),
        "same_neurons_mean_predictivity_adv_sst2": mean_over(adversarial, top),
        "adv_own_top_mean_predictivity": mean_over(adversarial, adv_top),
        "neurons_over_0.7_glue_dev": int((clean.flat() > 0.7).sum()),
        "neurons_over_0.7_adv_sst2": int((adversarial.flat() > 0.7).sum()),
        "top_by_layer_glue_dev": top.counts(),
        "top_by_layer_adv_sst2": adv_top.counts(),
        "top_excitatory_share": float((top_acc > 0.5).float().mean()),
        "mean_predictivity_by_layer_glue_dev": clean.by_layer(),
        "spearman_glue_dev_vs_adv": adversarial.spearman(clean).mean,
    }
    if args.suppression:
        from neuronlens.analysis import cross_suppression, suppression_curve

        t0 = time.perf_counter()
        tuned = prompts[0]
        for name, data in (("glue_dev", dev), ("adv_sst2", adv)):
            curve = suppression_curve(model, tuned, data, clean, task=sst2, random_repeats=3)
            report[f"suppression_{name}"] = curve.rows()
            print(curve.to_markdown(), flush=True)
            if args.out:
                curve.figure().write_html(os.path.join(args.out, f"suppression-{name}.html"))
        cross = cross_suppression(
            model,
            tuned,
            {"glue_dev": dev, "adv_sst2": adv},
            {
                "sst2_neurons": clean.top(percent=args.cross_percent),
                "adv_sst2_neurons": adversarial.top(percent=args.cross_percent),
            },
            task=sst2,
        )
        report["cross_suppression_percent"] = args.cross_percent
        report["cross_suppression"] = cross.accuracy
        report["suppression_wall_s"] = round(time.perf_counter() - t0, 1)
        print(cross.to_markdown(), flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
