"""Fine-tuning MiniLM on SST-2 at several lengths and learning rates (the pruning table's
fine-tuning row at 60 steps varied by 15 points between trials).

The same 1,000 training rows and 872-row GLUE dev set as ``pruning_table.py`` (its
``splits("sst2")``), batch 16, 128 tokens, no validation, the linear head on the pooled
input; 3 trials (seeds) per setting. Each run is one JSON file under ``--out``, reused when
its settings match.

    export NEURONLENS_DATA_DIR=../shared/data OMP_NUM_THREADS=1
    python benchmarks/finetune_lengths.py --out runs/finetune-lengths [--report]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from pruning_table import acc, splits  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.finetune import fine_tune  # noqa: E402

SETTINGS = [(60, 1e-4), (60, 3e-5), (200, 1e-4), (200, 3e-5)]


def run(args) -> None:
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = nl.load_minilm()
    task, train, _, evald = splits("sst2", argparse.Namespace(train=1000, val=300, eval=500))
    for trial in range(args.trials):
        for steps, lr in SETTINGS:
            path = out / f"steps{steps}-lr{lr:g}-seed{trial}.json"
            settings = {"steps": steps, "lr": lr, "seed": trial, "train": len(train)}
            if path.exists() and json.loads(path.read_text()).get("settings") == settings:
                continue
            t0 = time.perf_counter()
            ft, res = fine_tune(model, task, train=train, validation=False, seed=trial,
                                weights_lr=lr, max_steps=steps, batch_size=16, max_length=128,
                                progress=False)  # fmt: skip
            row = {"settings": settings, "accuracy": acc(ft, res, evald),
                   "final_loss": res.history[-1].get("train_loss"),
                   "seconds": round(time.perf_counter() - t0, 1)}  # fmt: skip
            tmp = path.with_suffix(".tmp")
            tmp.write_text(json.dumps(row))
            os.replace(tmp, path)
            print(f"[{path.stem}] {row['accuracy']}", flush=True)


def report(args) -> None:
    rows = [json.loads(p.read_text()) for p in sorted(Path(args.out).glob("*.json"))]
    print("| steps | weights lr | accuracy (mean ± sd) | per seed |\n|---|---|---|---|")
    for steps, lr in SETTINGS:
        a = [
            r["accuracy"]
            for r in rows
            if (r["settings"]["steps"], r["settings"]["lr"]) == (steps, lr)
        ]
        if a:
            sd = f" ± {statistics.stdev(a):.1f}" if len(a) > 1 else ""
            print(
                f"| {steps} | {lr:g} | {statistics.mean(a):.1f}{sd} | {' / '.join(map(str, a))} |"
            )


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/finetune-lengths")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--report", action="store_true")
    a = ap.parse_args()
    report(a) if a.report else run(a)
