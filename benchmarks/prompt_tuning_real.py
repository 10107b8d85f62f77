"""Real prompt-tuning run on SST-2: MiniLM (linear head) and SmolLM2 (verbalizer).

For each model: tune a soft prompt on an SST-2 training subset, pick the best prompt on a
validation set of whole sentences kept out of training, then report accuracy on GLUE dev (872)
and AdvSST2 (148), the wall time, and the baseline without a trained prompt (MiniLM: a frozen
linear probe on the mean-pooled last hidden state, fitted to the optimum on the same data by
`fit_linear_probe`; SmolLM2: zero-shot with the
verbalizer " negative" / " positive").

    NEURONLENS_DATA_DIR=../shared/data python benchmarks/prompt_tuning_real.py \
        [--models minilm smollm2] [--train 4000] [--epochs 2] [--seeds 0 1] [--out prompts/]
        [--min-words 8] [--minilm-head from-probe|probe|joint] [--val 400]
        [--val-from sentences|heldout] [--ema 0.998] [--batch-size 16] [--min-steps 3000]

Validation (early stopping, the probe's weight decay) is by default 400 whole training
sentences that are kept out of training with all their phrases (`sentence_disjoint_split`):
SST-2's held-out rows are mostly phrases of training sentences (306 of 400 lie inside one).

The last line printed is one JSON object with every number.
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.prompts import Verbalizer, evaluate, fit_linear_probe, tune_prompt  # noqa: E402
from neuronlens.tasks import count_contained, get_task, sentence_disjoint_split  # noqa: E402


def run_model(name: str, args, task, train, val, dev, adv) -> dict:
    model = nl.load_minilm() if name == "minilm" else nl.load_smollm2()
    out: dict = {"model": model.name}
    if name == "minilm":
        t0 = time.perf_counter()
        # L2-regularised logistic regression on the frozen pooled states, solved to the optimum
        # (L-BFGS), weight decay chosen on the validation set: the strongest linear probe
        probe = fit_linear_probe(model, task, train=train, validation=val)
        out["baseline"] = {
            "kind": "frozen linear probe (mean-pooled last hidden state, L-BFGS)",
            "weight_decay": max(
                (h for h in probe.history), key=lambda h: (h["val_accuracy"], h["weight_decay"])
            )["weight_decay"],
            "glue_dev": evaluate(model, probe, dev).accuracy,
            "adv_sst2": evaluate(model, probe, adv).accuracy,
            "wall_s": round(time.perf_counter() - t0, 1),
        }
        # --minilm-head from-probe: the prompt and a head that starts from the fitted probe;
        # probe: the prompt against the probe, frozen; joint: the prompt and a fresh head
        head = {
            "from-probe": probe.head.trainable_copy(),
            "probe": probe.head,
            "joint": "linear",
        }[args.minilm_head]
        out["head"] = args.minilm_head
        kwargs = dict(
            head=head,
            epochs=args.epochs,
            batch_size=args.batch_size or 16,
            lr=args.lr,
            head_lr=args.head_lr,
        )
    else:
        zs = Verbalizer(model, task.verbalizer)
        out["baseline"] = {
            "kind": "zero-shot verbalizer (' negative' / ' positive')",
            "glue_dev": evaluate(model, None, dev, head=zs).accuracy,
            "adv_sst2": evaluate(model, None, adv, head=zs).accuracy,
        }
        kwargs = dict(
            head="verbalizer",
            epochs=args.smollm2_epochs,
            batch_size=args.batch_size or 8,
            lr=args.lr,
        )
    out["batch_size"] = kwargs["batch_size"]
    results = []
    for seed in args.seeds:
        t0 = time.perf_counter()
        tuned = tune_prompt(
            model,
            task,
            train=train,
            validation=val,
            n_tokens=args.n_tokens,
            seed=seed,
            patience=args.patience,
            min_steps=args.min_steps,
            schedule=args.schedule,
            warmup_steps=args.warmup,
            eval_every=args.eval_every,
            ema_decay=args.ema,
            **kwargs,
        )
        wall = time.perf_counter() - t0
        row = {
            "seed": seed,
            "n_tokens": tuned.n_tokens,
            "val_accuracy": tuned.val_accuracy,
            "glue_dev": evaluate(model, tuned, dev).accuracy,
            "adv_sst2": evaluate(model, tuned, adv).accuracy,
            "train_wall_s": round(wall, 1),
            "steps": tuned.history[-1]["step"],
        }
        if args.out:
            row["saved"] = tuned.save(os.path.join(args.out, f"{name}-sst2-seed{seed}"))
        print(json.dumps({"model": model.name, **row}), flush=True)
        results.append(row)
    out["tuned"] = results
    mean_dev = sum(r["glue_dev"] for r in results) / len(results)
    out["gain_glue_dev_points"] = round(100 * (mean_dev - out["baseline"]["glue_dev"]), 2)
    return out


def _min_words(data, n: int):
    return data.where(lambda text, text_b, label: len(text.split()) >= n)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--models", nargs="+", default=["minilm", "smollm2"], choices=["minilm", "smollm2"]
    )
    ap.add_argument("--train", type=int, default=4000, help="SST-2 training sentences (subset)")
    ap.add_argument("--val", type=int, default=400, help="validation examples (see --val-from)")
    ap.add_argument("--epochs", type=float, default=2.0)
    ap.add_argument("--n-tokens", type=int, default=20)
    ap.add_argument("--lr", type=float, default=3e-2, help="prompt learning rate (AdamW)")
    ap.add_argument("--head-lr", type=float, default=1e-2, help="linear-head learning rate")
    ap.add_argument(
        "--batch-size", type=int, default=None, help="training batch (MiniLM 16, SmolLM2 8)"
    )
    ap.add_argument("--smollm2-epochs", type=float, default=0.5)
    ap.add_argument(
        "--minilm-head",
        choices=["from-probe", "probe", "joint"],
        default="from-probe",
        help="MiniLM: train the prompt and a head started from the linear probe, "
        "the prompt against the frozen probe, or the prompt and a fresh head",
    )
    ap.add_argument(
        "--ema",
        type=float,
        default=None,
        help="validate and keep a moving average of the prompt and head (decay, e.g. 0.998)",
    )
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--schedule", choices=["constant", "linear"], default="constant")
    ap.add_argument("--warmup", type=int, default=0, help="warm-up steps of the learning rate")
    ap.add_argument(
        "--patience", type=int, default=3, help="validations without improvement before stopping"
    )
    ap.add_argument(
        "--min-steps", type=int, default=0, help="no early stop before this training step"
    )
    ap.add_argument(
        "--eval-every", type=int, default=None, help="steps between validations (4 per epoch)"
    )
    ap.add_argument(
        "--val-from",
        choices=["sentences", "heldout"],
        default="sentences",
        help="validation: whole SST-2 training sentences kept out of training "
        "(sentence_disjoint_split), or the task's held-out rows (phrases of training sentences)",
    )
    ap.add_argument("--out", default=None, help="folder to save the tuned prompts in")
    ap.add_argument(
        "--min-words",
        type=int,
        default=0,
        help="train / validate only on examples of at least this many words",
    )
    args = ap.parse_args()
    if args.batch_size is not None and args.batch_size < 1:
        ap.error(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.min_steps < 0:
        ap.error(f"--min-steps must be >= 0, got {args.min_steps}")
    torch.manual_seed(0)
    task = get_task("sst2")
    train, val = task.load("train"), task.load("validation")
    if args.min_words:  # SST-2 train holds every phrase of the parse trees; GLUE dev is sentences
        train, val = (_min_words(d, args.min_words) for d in (train, val))
    if args.val_from == "sentences":
        # whole training sentences, none of them (or any phrase of them) trained on
        train, val = sentence_disjoint_split(train, args.val, seed=0)
    else:  # the task's held-out rows: most are phrases of training sentences
        val = val.subset(args.val, seed=0)
    train = train.subset(args.train, seed=0)
    dev, adv = task.load("dev"), get_task("adv_sst2").load("dev")
    report = {
        "task": "sst2",
        "train": len(train),
        "val": len(val),
        "val_from": args.val_from,
        "val_inside_train": count_contained(train, val),
        "glue_dev": len(dev),
        "adv_sst2": len(adv),
        "threads": torch.get_num_threads(),
        "models": [],
    }
    for name in args.models:
        report["models"].append(run_model(name, args, task, train, val, dev, adv))
    print(json.dumps(report))


if __name__ == "__main__":
    main()
