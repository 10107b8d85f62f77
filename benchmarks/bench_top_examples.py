"""top_examples against a plain capture of the same sites, side by side in one run.

MiniLM (``--quick``: a tiny random BERT), ``--n`` SST-2 train sentences (default 10,000) from
the data directory, ``--neurons`` neurons (the first of each layer's, spread evenly). Times,
interleaved over ``--repeats``:

* ``capture``: ``nl.capture`` of the same sites with a running mean (the plain baseline);
* ``top_examples``: ``nl.top_examples(..., k=20)`` of those neurons.

It also reports the size of the top-examples state after a quarter of the data and after all
of it (the state is bounded: the two are equal once every slot is filled).

    python benchmarks/bench_top_examples.py [--quick] [--n 10000] [--neurons 100] [--repeats 2]

The last line printed is a JSON summary; the target is top_examples / capture <= 1.3.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.capture import CaptureData  # noqa: E402
from neuronlens.probes.top_examples import TopExamplesProbe  # noqa: E402


def _model_and_texts(quick: bool, n: int):
    if quick:
        from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer

        model = nl.load_model(tiny_hf_model("bert", layers=2), tiny_tokenizer(), name="tiny")
        g = torch.Generator().manual_seed(0)
        texts = [" ".join(f"w{int(i)}" for i in torch.randint(5, 50, (12,), generator=g))
                 for _ in range(n)]  # fmt: skip
        return model, texts
    model = nl.load_minilm()
    texts = list(nl.get_task("sst2").load("train", limit=n).texts)
    return model, texts


def _neurons(model, count: int) -> dict[str, list[int]]:
    per = max(1, count // len(model.sites))
    return {s.name: list(range(0, s.width, max(1, s.width // per)))[:per] for s in model.sites}


def _state_bytes(model, neurons, texts, batch: int) -> int:
    probe = TopExamplesProbe({k: torch.tensor(v) for k, v in neurons.items()}, k=20)
    data = CaptureData(texts=list(texts), max_length=128)
    state, _, _ = nl.probes.collect_state(model, probe, data, batch_size=batch, progress=False,
                                          sites=list(neurons))  # fmt: skip
    return sum(t.numel() * t.element_size() for t in state.values())


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--n", type=int, default=None, help="sentences (10,000; 200 quick)")
    ap.add_argument("--neurons", type=int, default=100)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args(argv)
    n = args.n or (200 if args.quick else 10_000)
    model, texts = _model_and_texts(args.quick, n)
    neurons = _neurons(model, args.neurons)
    sites = list(neurons)
    runs = {
        "capture": lambda: nl.capture(
            model,
            texts,
            nl.RunningMean(),
            sites=sites,
            batch_size=args.batch,
            progress=False,
            max_length=128,
        ),  # fmt: skip
        "top_examples": lambda: nl.top_examples(
            model, texts, neurons, k=20, batch_size=args.batch, progress=False
        ),  # fmt: skip
    }
    times: dict[str, list[float]] = {k: [] for k in runs}
    for r in range(args.repeats):
        for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            t0 = time.perf_counter()
            runs[k]()
            times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    summary = {
        "benchmark": "top_examples_vs_capture",
        "model": model.name,
        "examples": n,
        "neurons": sum(len(v) for v in neurons.values()),
        "threads": torch.get_num_threads(),
        "seconds": {k: round(v, 3) for k, v in med.items()},
        "top_examples_over_capture": round(med["top_examples"] / med["capture"], 3),
        "target": 1.3,
        "state_bytes_quarter": _state_bytes(model, neurons, texts[: n // 4], args.batch),
        "state_bytes_all": _state_bytes(model, neurons, texts, args.batch),
    }
    print(json.dumps(summary))
    return summary


if __name__ == "__main__":
    main()
