"""Skill neurons read where the model decides: readouts, positions and ablations side by side.

For one model (MiniLM with a linear head, or SmolLM2 with the verbalizer " negative" /
" positive") on SST-2, and each readout given (where the head reads the answer: ``prompt`` =
at a soft-prompt position, as the original skill-neuron code; ``pool`` / ``last`` = the
placements neuronlens used before), this script

1. tunes one 20-token prompt per seed (or loads it from ``--out``) and scores it on GLUE dev
   and AdvSST2;
2. computes predictivity (mean over the seeds' prompts) at each *view* of positions: the
   answer position, the pooled input tokens (pooled linear head), all prompt positions;
   then on AdvSST2 with the clean baselines, and the Spearman rho of the two maps;
3. runs suppression curves (1, 3, 5, 10, 15 % per layer, against 3 random controls with
   the same per-layer counts) under zero, mean replacement (train mean over all positions)
   and noise (one draw per example and neuron, std = 1 x the neuron's std), and the cross
   suppression SST-2 <-> AdvSST2 (top 5 % per layer, zeroed).

Every finished step is saved in ``--out/results.json`` (and the prompts and score maps
beside it) and reused on a re-run with the same folder; ``--report`` prints the markdown
tables of ``docs/results.md`` from that file.

    NEURONLENS_DATA_DIR=../shared/data python benchmarks/skill_neurons_readout.py \
        --model minilm --readouts prompt pool --out runs/readout-minilm
    NEURONLENS_DATA_DIR=../shared/data python benchmarks/skill_neurons_readout.py \
        --model smollm2 --readouts prompt last --eval-size 200 --tune-train 2000 \
        --epochs 0.5 --batch-size 8 --sup-seeds 0 --out runs/readout-smollm2
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np  # noqa: E402
import torch  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.analysis import (  # noqa: E402
    Ablation,
    cross_suppression,
    prompt_activation_stats,
    suppression_curve,
)
from neuronlens.capture import AnswerToken, Pooled, PromptAndAnswer, PromptTokens  # noqa: E402
from neuronlens.probes import NeuronScores, predictivity  # noqa: E402
from neuronlens.prompts import PromptResult, evaluate, tune_prompt  # noqa: E402
from neuronlens.tasks import get_task, sentence_disjoint_split  # noqa: E402

# views of positions per (head, readout): name -> (positions, main view?)
VIEWS = {
    ("linear", "prompt"): {"answer": AnswerToken(), "prompt": PromptAndAnswer()},
    ("linear", "pool"): {"pooled": Pooled(), "prompt": PromptTokens()},
    ("verbalizer", "prompt"): {"answer": AnswerToken(), "prompt": PromptAndAnswer()},
    ("verbalizer", "last"): {"answer": AnswerToken()},
}
MAIN = ("answer", "pooled")  # every ablation; the other views are zeroed only


class Results:
    """``results.json`` in the output folder, written atomically after every step."""

    def __init__(self, out: Path, config: dict) -> None:
        self.path = out / "results.json"
        self.data = json.loads(self.path.read_text()) if self.path.is_file() else {}
        if self.data.get("config", config) != config:
            raise SystemExit(f"{self.path} was made with another configuration: use a new --out")
        self.data["config"] = config

    def get(self, key: str):
        return self.data.get(key)

    def put(self, key: str, value) -> None:
        self.data[key] = value
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.data, indent=1, default=float))
        tmp.replace(self.path)
        print(f"[{time.strftime('%H:%M:%S')}] {key}", flush=True)


def tune(model, args, res, sst2, train, val, readout, seed, out: Path) -> PromptResult:
    path = out / "prompts" / f"{readout}-seed{seed}"
    if path.with_suffix(".safetensors").is_file():
        return PromptResult.load(path, model, readout=readout)
    t0 = time.perf_counter()
    tuned = tune_prompt(
        model,
        sst2,
        train=train,
        validation=val,
        head="linear" if args.model == "minilm" else "verbalizer",
        readout=readout,
        n_tokens=args.n_tokens,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        head_lr=args.head_lr,
        seed=seed,
    )
    tuned.save(path)
    res.put(f"{readout}/train_wall_s/seed{seed}", round(time.perf_counter() - t0, 1))
    return tuned


def map_summary(scores: NeuronScores) -> dict:
    flat = scores.flat()
    top = scores.top(percent=1, per_layer=True)
    top_vals = torch.cat([scores[s][i] for s, i in top.indices.items()])
    return {
        "max": float(flat.max()),
        "top1pct_per_layer_mean": float(top_vals.mean()),
        "top1pct_global_by_layer": scores.top(percent=1).counts(),
    }


def run_readout(model, args, res: Results, sst2, data, readout: str, out: Path) -> None:
    train, val, base_train, evald, dev, adv = data
    head = "linear" if args.model == "minilm" else "verbalizer"
    prompts = [tune(model, args, res, sst2, train, val, readout, s, out) for s in args.seeds]
    key = f"{readout}/accuracy"
    if res.get(key) is None:
        res.put(
            key,
            {
                str(p.seed): {
                    "glue_dev": evaluate(model, p, dev).accuracy,
                    "adv_sst2": evaluate(model, p, adv, task=sst2).accuracy,
                    "eval_subset": evaluate(model, p, evald).accuracy,
                    "steps": p.history[-1]["step"],
                    "val_accuracy": p.val_accuracy,
                }
                for p in prompts
            },
        )
    stats = {}  # seed -> activation stats with its prompt (mean / relative-noise ablations)
    for view, positions in VIEWS[(head, readout)].items():
        path = out / "scores" / f"{readout}-{view}"
        if path.with_suffix(".safetensors").is_file():
            clean = NeuronScores.load(path, model)
            adv_scores = NeuronScores.load(f"{path}-adv", model)
        else:
            clean = predictivity(model, prompts, sst2, evald, train=base_train, positions=positions)
            adv_scores = predictivity(
                model, prompts, sst2, adv, baselines=clean, positions=positions
            )
            clean.save(path)
            adv_scores.save(f"{path}-adv")
        key = f"{readout}/{view}/predictivity"
        if res.get(key) is None:
            res.put(
                key,
                {
                    "clean": map_summary(clean),
                    "adv": map_summary(adv_scores),
                    "spearman_clean_adv": clean.spearman(adv_scores).mean,
                },
            )
        ablations = ("zero", "mean", "noise") if view in MAIN else ("zero",)
        for ablation in ablations:
            seeds = args.sup_seeds if ablation == "zero" and view in MAIN else args.sup_seeds[:1]
            for seed in seeds:
                key = f"{readout}/{view}/suppression/{ablation}/seed{seed}"
                if res.get(key) is not None:
                    continue
                pr = next(p for p in prompts if p.seed == seed)
                if ablation != "zero" and seed not in stats:
                    stats[seed] = prompt_activation_stats(model, pr, sst2, base_train)
                if ablation == "zero":
                    abl = Ablation("zero")
                elif ablation == "mean":
                    abl = Ablation("mean", stats=stats[seed])
                else:
                    abl = Ablation("noise", std=1.0, relative=True, stats=stats[seed])
                t0 = time.perf_counter()
                curve = suppression_curve(
                    model,
                    pr,
                    evald,
                    clean,
                    task=sst2,
                    percents=args.percents,
                    random_repeats=args.repeats,
                    ablation=abl,
                )
                res.put(key, {"rows": curve.rows(), "wall_s": round(time.perf_counter() - t0)})
        key = f"{readout}/{view}/cross"
        if res.get(key) is None:
            pr = prompts[0]
            cross = cross_suppression(
                model,
                pr,
                {"glue_dev": evald, "adv_sst2": adv},
                {
                    "sst2_top": clean.top(percent=args.cross_percent, per_layer=True),
                    "adv_top": adv_scores.top(percent=args.cross_percent, per_layer=True),
                    "random": clean.top(percent=args.cross_percent, per_layer=True).random_control(
                        0
                    ),
                },
                task=sst2,
            )
            res.put(key, cross.accuracy)


def report(out: Path) -> None:
    """Markdown tables from ``results.json``."""
    data = json.loads((out / "results.json").read_text())
    cfg = data["config"]
    print(f"### {cfg['model']}\n")
    print("| readout | seed | GLUE dev | AdvSST2 | eval subset |\n|---|---|---|---|---|")
    for key, value in data.items():
        if key.endswith("/accuracy"):
            for seed, r in value.items():
                print(
                    f"| {key.split('/')[0]} | {seed} | {r['glue_dev']:.3f} | "
                    f"{r['adv_sst2']:.3f} | {r['eval_subset']:.3f} |"
                )
    print("\n| readout / view | max | top-1 % mean | ρ clean vs adv | max (adv) |")
    print("|---|---|---|---|---|")
    for key, value in data.items():
        if key.endswith("/predictivity"):
            name = "/".join(key.split("/")[:2])
            c = value["clean"]
            print(
                f"| {name} | {c['max']:.3f} | {c['top1pct_per_layer_mean']:.3f} | "
                f"{value['spearman_clean_adv']:.3f} | {value['adv']['max']:.3f} |"
            )
    print(
        "\n| readout / view | ablation | seed | "
        + " | ".join(f"{p:g} %" for p in cfg["percents"])
        + " | levels > 2 sd |"
    )
    print("|---|---|---|" + "---|" * len(cfg["percents"]) + "---|")
    for key, value in data.items():
        if "/suppression/" in key:
            readout, view, _, ablation, seed = key.split("/")
            rows = value["rows"]
            cells = [
                f"{r['acc_top']:.3f} vs {r['acc_random_mean']:.3f} ± {r['acc_random_std']:.3f}"
                for r in rows
            ]
            hits = sum(
                np.isfinite(r["gap_sd"]) and r["gap_sd"] > 2 or r["gap_sd"] == np.inf for r in rows
            )
            print(
                f"| {readout}/{view} | {ablation} | {seed[4:]} | "
                + " | ".join(cells)
                + f" | {hits} of {len(rows)} |"
            )
    print(
        "\n| readout / view | neurons off | GLUE dev (eval subset) | AdvSST2 |\n|---|---|---|---|"
    )
    for key, value in data.items():
        if key.endswith("/cross"):
            name = "/".join(key.split("/")[:2])
            for a, row in value.items():
                print(f"| {name} | {a} | {row['glue_dev']:.3f} | {row['adv_sst2']:.3f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--model", choices=["minilm", "smollm2"], default=None, help="required unless --report"
    )
    ap.add_argument("--readouts", nargs="+", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument(
        "--sup-seeds",
        type=int,
        nargs="+",
        default=None,
        help="prompts whose zero-suppression curves are run (default: all seeds)",
    )
    ap.add_argument("--n-tokens", type=int, default=20)
    ap.add_argument("--tune-train", type=int, default=2000)
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--lr", type=float, default=3e-2)
    ap.add_argument("--head-lr", type=float, default=1e-2)
    ap.add_argument("--base-train", type=int, default=1000, help="train rows for baselines")
    ap.add_argument("--eval-size", type=int, default=None, help="GLUE-dev subset (default all)")
    ap.add_argument("--percents", type=float, nargs="+", default=[1, 3, 5, 10, 15])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cross-percent", type=float, default=5.0)
    ap.add_argument("--out", required=True)
    ap.add_argument("--report", action="store_true", help="print the tables of --out and stop")
    args = ap.parse_args()
    out = Path(args.out)
    if args.report:
        report(out)
        return
    if args.model is None:
        ap.error("--model is required (unless --report)")
    args.readouts = args.readouts or (
        ["prompt", "pool"] if args.model == "minilm" else ["prompt", "last"]
    )
    args.sup_seeds = args.sup_seeds or args.seeds
    out.mkdir(parents=True, exist_ok=True)
    config = {k: v for k, v in vars(args).items() if k not in ("out", "report")}
    res = Results(out, config)
    torch.manual_seed(0)
    sst2 = get_task("sst2")
    pool, val = sentence_disjoint_split(sst2.load("train"), 300, seed=0)  # whole sentences
    train = pool.subset(args.tune_train, seed=1)
    base_train = pool.subset(args.base_train, seed=2)
    dev, adv = sst2.load("dev"), get_task("adv_sst2").load("dev")
    evald = dev if args.eval_size is None else dev.subset(args.eval_size, seed=1)
    model = nl.load_minilm() if args.model == "minilm" else nl.load_smollm2()
    res.data.setdefault("threads", torch.get_num_threads())
    for readout in args.readouts:
        run_readout(model, args, res, sst2, (train, val, base_train, evald, dev, adv), readout, out)
    report(out)


if __name__ == "__main__":
    main()
