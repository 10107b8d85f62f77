"""bfloat16 against float32 on the same inputs: do the scores and accuracies agree?

For each model, the same weights are loaded twice (float32, bfloat16) and given the same
prompt (tuned in float32 on the real models, a few epochs on a word task on the tiny models).
Measured: Spearman rho of predictivity and of attribution between the two dtypes (per
layer: the mean and the lowest layer's), the
overlap of their top neurons (top 1 % per layer on the real models, top 10 % on the tiny
ones, whose 1 % rounds to nothing), and evaluation accuracy in each dtype; on the real
models also the accuracy of a prompt tuned in bfloat16 from the start.

    python benchmarks/half_precision.py --quick          # the tiny models of every family
    python benchmarks/half_precision.py                  # + MiniLM and SmolLM2 on SST-2

The last line printed is one JSON object; ``--out FILE`` also writes it.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.models.tiny import FAMILIES, tiny_hf_model, tiny_tokenizer  # noqa: E402


def top_overlap(a: nl.NeuronScores, b: nl.NeuronScores, percent: float) -> float:
    """Share of ``a``'s top ``percent`` per layer that is also in ``b``'s."""
    sa, sb = a.top(percent=percent, per_layer=True), b.top(percent=percent, per_layer=True)
    both = sum(int((sa.mask(s) & sb.mask(s)).sum()) for s in sa.counts())
    return both / max(1, sa.count)


def _rho(a: nl.NeuronScores, b: nl.NeuronScores) -> tuple[float, float]:
    """Mean and lowest per-layer Spearman rho, over the layers whose scores vary (a causal
    LM read at a soft prompt after the input has no path from its last layer's input
    positions to the answer: attribution there is all zero)."""
    rho = [r for r in a.spearman(b).rho.values() if r == r]
    return sum(rho) / len(rho), min(rho)


def compare(m32, m16, prompt, task, dev, train, *, n_attr: int, percent: float) -> dict:
    """The float32 / bfloat16 agreement of predictivity, attribution and accuracy."""
    out = {}
    p32 = nl.predictivity(m32, prompt, task, dev, train=train, progress=False)
    p16 = nl.predictivity(m16, prompt, task, dev, train=train, progress=False)
    out["predictivity_rho"], out["predictivity_rho_min"] = _rho(p32, p16)
    out["predictivity_top_overlap"] = top_overlap(p32, p16, percent)
    a32 = nl.attribute(m32, prompt, task, train, n=n_attr, progress=False)
    a16 = nl.attribute(m16, prompt, task, train, n=n_attr, progress=False)
    out["attribution_rho"], out["attribution_rho_min"] = _rho(a32, a16)
    out["attribution_top_overlap"] = top_overlap(a32, a16, percent)
    out["accuracy_float32"] = nl.evaluate(m32, prompt, dev, task=task).accuracy
    out["accuracy_bfloat16"] = nl.evaluate(m16, prompt, dev, task=task).accuracy
    return out


def tiny_rows() -> list[dict]:
    from tests.probe_fixtures import word_task

    task = word_task(96)
    train, dev = task.load("train"), task.load("dev")
    rows = []
    for family in FAMILIES:
        hf = tiny_hf_model(family, seed=3, d_model=32, d_mlp=64, heads=4)
        m32 = nl.load_model(copy.deepcopy(hf), tiny_tokenizer(), name=f"tiny-{family}")
        m16 = nl.load_model(hf, tiny_tokenizer(), name=f"tiny-{family}", dtype=torch.bfloat16)
        pr = nl.tune_prompt(m32, task, n_tokens=3, epochs=8, lr=0.1, progress=False)
        row = compare(m32, m16, pr, task, dev, train, n_attr=48, percent=10)
        rows.append({"model": f"tiny-{family}", **row})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def real_rows(n_train: int, n_dev: int) -> list[dict]:
    task = nl.get_task("sst2")
    train = task.load("train").take(n_train)
    dev = task.load("validation").take(n_dev)
    rows = []
    for loader, readout in ((nl.load_minilm, "auto"), (nl.load_smollm2, "auto")):
        m32, m16 = loader(), loader(dtype=torch.bfloat16)
        t0 = time.perf_counter()
        pr = nl.tune_prompt(
            m32, task, train=train, validation=None, n_tokens=20, readout=readout, epochs=1,
            progress=False,
        )  # fmt: skip
        t32 = time.perf_counter() - t0
        t0 = time.perf_counter()
        pr16 = nl.tune_prompt(
            m16, task, train=train, validation=None, n_tokens=20, readout=readout, epochs=1,
            progress=False,
        )  # fmt: skip
        t16 = time.perf_counter() - t0
        row = compare(m32, m16, pr, task, dev, train, n_attr=64, percent=1)
        row["tuned_in_bfloat16_accuracy"] = nl.evaluate(m16, pr16, dev, task=task).accuracy
        row["tune_seconds"] = {"float32": round(t32, 1), "bfloat16": round(t16, 1)}
        rows.append({"model": m32.name, "train": len(train), "dev": len(dev), **row})
        print(json.dumps(rows[-1]), flush=True)
    return rows


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny models only")
    ap.add_argument("--train", type=int, default=1000)
    ap.add_argument("--dev", type=int, default=400)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args(argv)
    torch.manual_seed(0)
    result = {"date": time.strftime("%Y-%m-%d"), "tiny": tiny_rows()}
    if not args.quick:
        result["real"] = real_rows(args.train, args.dev)
    print(json.dumps(result))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
