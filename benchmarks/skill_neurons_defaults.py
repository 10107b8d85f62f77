"""The skill-neuron finding with the library's defaults alone (issue 32, results.md §1).

MiniLM on SST-2, as a new user would first call it: one 20-token prompt per seed tuned for
one epoch on 1,500 SST-2 train rows (``tune_prompt``'s defaults otherwise: the linear head
with its ``"auto"`` readout, early stopping on the task's validation split), predictivity
with no ``positions=`` (so read where the head decides), and the suppression curve at 3 / 5
/ 10 % per layer against 3 random controls, zeroed (its defaults). For each seed it writes
the accuracy, the positions read and the curve's rows to ``--out/results.json`` as soon as
the seed is done; ``--report`` prints the markdown table of docs/results.md from that file.
``--old-default`` reads predictivity at the previous default instead (``PromptAndAnswer()``:
the soft-prompt positions, which a pooled head never reads), for the same prompts (tuning is
seeded), as a side-by-side control.

    NEURONLENS_DATA_DIR=../shared/data OMP_NUM_THREADS=1 \\
        python benchmarks/skill_neurons_defaults.py --seeds 0 1 2 --out runs/defaults-minilm
    NEURONLENS_DATA_DIR=../shared/data OMP_NUM_THREADS=1 \\
        python benchmarks/skill_neurons_defaults.py --seeds 0 --old-default --out runs/defaults-minilm
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import neuronlens as nl  # noqa: E402
from neuronlens.analysis import suppression_curve  # noqa: E402
from neuronlens.io import write_text_atomic  # noqa: E402
from neuronlens.positions import PromptAndAnswer  # noqa: E402

PERCENTS = (3, 5, 10)


def run_seed(model, task, train, dev, seed: int, positions=None) -> dict:
    t0 = time.perf_counter()
    tuned = nl.tune_prompt(model, task, train=train, n_tokens=20, epochs=1.0, seed=seed)
    acc = nl.evaluate(model, tuned, dev).accuracy
    # no positions=: the default (where the head decides); --old-default: PromptAndAnswer()
    skill = nl.predictivity(model, tuned, task, dev, train=train, positions=positions)
    curve = suppression_curve(model, tuned, dev, skill, percents=PERCENTS, random_repeats=3)
    rows = curve.rows()
    return {
        "seed": seed,
        "readout": tuned.head.readout,
        "positions": skill.meta["positions"],
        "positions_asked": skill.meta["positions_asked"],
        "accuracy": acc,
        "predictivity_max": float(skill.flat().max()),
        "rows": rows,
        "levels_beyond_2sd": sum(r["gap_sd"] is not None and r["gap_sd"] > 2 for r in rows),
        "seconds": round(time.perf_counter() - t0, 1),
    }


def report(rows: list[dict]) -> str:
    lines = [
        "| seed | readout | positions | GLUE dev | "
        + " | ".join(f"{p} %" for p in PERCENTS)
        + " | levels > 2 sd |",
        "|---|---|---|---|" + "---|" * len(PERCENTS) + "---|",
    ]
    for r in rows:
        cells = [
            f"{row['acc_top']:.3f} vs {row['acc_random_mean']:.3f} ± {row['acc_random_std']:.3f}"
            + (f" ({row['gap_sd']:.1f} sd)" if row["gap_sd"] is not None else "")
            for row in r["rows"]
        ]
        lines.append(
            f"| {r['seed']} | {r['readout']} | {r['positions']} | {r['accuracy']:.3f} | "
            + " | ".join(cells)
            + f" | {r['levels_beyond_2sd']} of {len(r['rows'])} |"
        )
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--train-size", type=int, default=1500)
    ap.add_argument("--out", default="runs/defaults-minilm")
    ap.add_argument("--report", action="store_true", help="print the table of --out's results")
    ap.add_argument("--old-default", action="store_true", help="read at PromptAndAnswer()")
    args = ap.parse_args()
    out = Path(args.out)
    path = out / "results.json"
    results = json.loads(path.read_text()) if path.is_file() else {"seeds": []}
    key = "old_default" if args.old_default else "seeds"
    results.setdefault(key, [])
    if args.report:
        print(report(results["seeds"]))
        if results[key] and args.old_default:
            print("\nold default (PromptAndAnswer()):\n" + report(results["old_default"]))
        return
    model = nl.load_minilm()
    task = nl.get_task("sst2")
    train = task.load("train").subset(args.train_size, seed=0)
    dev = task.load("dev")
    results.update(model=model.name, n_train=len(train), n_dev=len(dev), percents=PERCENTS)
    done = {r["seed"] for r in results[key]}
    positions = PromptAndAnswer() if args.old_default else None
    for seed in args.seeds:
        if seed in done:
            continue
        results[key].append(run_seed(model, task, train, dev, seed, positions))
        write_text_atomic(path, json.dumps(results, indent=2, allow_nan=False))
        print(report(results[key]), flush=True)


if __name__ == "__main__":
    main()
