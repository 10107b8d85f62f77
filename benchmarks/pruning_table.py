"""The pruning papers' tables on real data: tuning methods, SKELETON and SKIP on MiniLM
(``--model smollm2``: SmolLM2-135M).

Per task and trial (seed): fine-tuning, prompt tuning, prefix tuning (trained until its
training loss converges, as SKIP prunes it) and P-tuning, each on the same training rows;
SKELETON from the prompt (attribution on 20 examples, 5 % steps, prompt re-training after
each prune, psi = 1 point on held-out validation rows); SKIP from the prefix (1 % steps,
psi = 0.2 on 8 % of the eval set, no re-training). Extras: the neuron-selection comparison
(attribution / activation / gradient / random at one kept ratio, before and after the same
re-training), the module comparison (FFN neurons, attention heads, both), the SKIP psi sweep
and the attribution-examples (n) sweep.

    export NEURONLENS_DATA_DIR=../shared/data OMP_NUM_THREADS=1
    python benchmarks/pruning_table.py --tasks sst2 cb --out runs/pruning-table &    # side
    python benchmarks/pruning_table.py --tasks agnews mrpc --out runs/pruning-table  # by side
    python benchmarks/pruning_table.py --out runs/pruning-table --speed   # alone: speed-ups
    python benchmarks/pruning_table.py --out runs/pruning-table --report  # markdown tables

Every unit of work is one JSON file under ``--out`` (written to a temporary name, then
renamed), reused only when the settings that made it are unchanged.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch  # noqa: E402
from common import random_batch  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.finetune import fine_tune  # noqa: E402
from neuronlens.probes import attribute  # noqa: E402
from neuronlens.prompts import PromptResult, evaluate, init_prompt, tune_prompt  # noqa: E402
from neuronlens.prompts.tuning import DEFAULT_LR  # noqa: E402
from neuronlens.pruning import (  # noqa: E402
    flop_ceiling,
    interleaved_latency,
    keep_top,
    prune_model,
    retrain_prompt,
    skeleton_search,
    skip_search,
)
from neuronlens.tasks import get_task, sentence_disjoint_split  # noqa: E402

TASKS = ("sst2", "agnews", "mrpc", "cb")
METHODS = ("finetune", "prompt", "prefix", "ptuning")
SELECTION = ("attribution", "activation", "gradient", "random")
PSIS = (0.2, 0.5, 1.0, 2.0, 5.0)
NS = (5, 10, 20, 50, 100)
#: the papers' Table 1 numbers are on BERT / RoBERTa; these are how our splits are made
SPLITS = {
    "sst2": "train: GLUE train minus 300 whole validation sentences (and their phrases); "
    "eval: GLUE dev (872)",
    "agnews": "train and 300 validation rows: AG News train rows (local dev.tsv); "
    "eval: 500 rows of AG News test",
    "mrpc": "train and 300 validation rows: MRPC train; eval: MRPC dev (408)",
    "cb": "train: FewGLUE's 32 rows; validation: dev32 (32); eval: SuperGLUE val (56)",
}


def load(name: str):
    """MiniLM (a linear head on the pooled input) or SmolLM2 (its verbalizer at the answer
    position), as section 1 of docs/results.md reads them."""
    return nl.load_minilm() if name == "minilm" else nl.load_smollm2()


def splits(name: str, args) -> tuple:
    task = get_task(name)
    if name == "sst2":
        pool, val = sentence_disjoint_split(task.load("train"), args.val, seed=1)
        return task, pool.subset(args.train, seed=0), val, task.load("dev")
    if name == "cb":
        return task, task.load("train"), task.load("dev32"), task.load("validation")
    full = task.load("validation" if name == "agnews" else "train")
    rest, val = full.split_off(args.val, seed=1)
    evald = task.load("test").subset(args.eval, seed=1) if name == "agnews" else task.load("dev")
    return task, rest.subset(args.train, seed=0), val, evald


class Store:
    """One JSON file per unit, reused only when its settings match."""

    def __init__(self, out: Path, settings: dict) -> None:
        self.out, self.settings = out, settings
        out.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.out / f"{key}.json"

    def get(self, key: str, settings: dict | None = None):
        p = self.path(key)
        if not p.exists():
            return None
        data = json.loads(p.read_text())
        if data.get("settings") != (settings or self.settings):
            print(f"[{key}] settings changed: recomputing", flush=True)
            return None
        return data

    def put(self, key: str, result: dict, settings: dict | None = None) -> dict:
        data = {"settings": settings or self.settings, **result}
        tmp = self.path(key).with_suffix(".tmp")
        tmp.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_text(json.dumps(data))
        os.replace(tmp, self.path(key))
        return data


def acc(model, res, data) -> float:
    return round(100.0 * evaluate(model, res, data, max_length=128).accuracy, 2)


def retrain_kwargs(args) -> dict:
    """Prompt re-training after a prune (SKELETON, the selection and module comparisons)."""
    return {"max_steps": args.retrain, "lr": 1e-2, "head_lr": 1e-3, "batch_size": 16,
            "max_length": 128}  # fmt: skip


def train_kwargs(args, name: str) -> dict:
    return {"max_steps": args.steps, "batch_size": 16, "max_length": 128, "progress": False}


def run_methods(model, task, data, store: Store, args, trial: int) -> dict:
    """Accuracy of each tuning method; the prompt and the prefix are saved for the searches."""
    train, val, evald = data
    kw = train_kwargs(args, task.name)
    out = {}
    for method in METHODS:
        key = f"{task.name}/{method}-{trial}"
        saved = store.out / f"{key}.safetensors"
        keeps = method in ("prompt", "prefix")
        have = store.get(key) is not None and (saved.exists() or not keeps)
        if have and keeps:
            out[method] = PromptResult.load(saved, model)
        elif not have:
            t0 = time.perf_counter()
            row = {}
            if method == "finetune":
                ft, res = fine_tune(
                    model,
                    task,
                    train=train,
                    validation=False,
                    seed=trial,
                    weights_lr=args.ft_lr,
                    **kw,
                )
                a = acc(ft, res, evald)
            else:
                res = make_prompt(model, task, train, kw, method, args, trial)
                a = acc(model, res, evald)
                row = {"steps": res.history[-1]["step"], "converged": _converged(res)}
                if method != "ptuning":
                    res.save(saved)
                    out[method] = res
            store.put(key, {"accuracy": a, "seconds": round(time.perf_counter() - t0, 1)} | row)
        print(f"[{key}] {store.get(key)['accuracy']}", flush=True)
    return out


def _converged(res) -> dict | None:
    for row in res.history:
        if "converged" in row:
            return row["converged"]
    return None


def make_prompt(model, task, train, kw, method, args, trial) -> PromptResult:
    method = "p-tuning" if method == "ptuning" else method
    if method == "prefix":  # SKIP prunes a prefix trained until its loss converged
        kw = kw | {
            "max_steps": 2 * args.steps,
            "converge_window": args.steps // 3,
            "converge_tol": 0.02,
            "min_steps": args.steps // 2,
        }
    return tune_prompt(
        model, task, train=train, validation=False, n_tokens=20, method=method, seed=trial, **kw
    )


def pruned_row(model, res, search, evald) -> dict:
    return {
        "kept_ratio": search.kept_ratio,
        "search_accuracy": round(100 * search.accuracy, 2),
        "search_base": round(100 * search.base_accuracy, 2),
        "accuracy": acc(search.model, search.prompt, evald),
        "base_accuracy": acc(model, res, evald),
        "flop_ceiling": round(flop_ceiling(model, search.kept_ratio, 148), 3),
        "history": search.rows(),
        # None: nothing could go within psi, the search returned the unpruned model
        "kept": getattr(getattr(search.model, "pruning", None), "kept", None),
    }


def run_searches(model, task, data, prompts, store: Store, args, trial: int) -> None:
    train, val, evald = data
    retrain = retrain_kwargs(args)
    key = f"{task.name}/skeleton-{trial}"
    if store.get(key) is None:
        t0 = time.perf_counter()
        s = skeleton_search(
            model,
            prompts["prompt"],
            task,
            train=train,
            eval_data=val,
            psi=1.0,
            retrain=retrain,
            seed=trial,
            progress=False,
        )
        row = pruned_row(model, prompts["prompt"], s, evald)
        store.put(key, row | {"seconds": round(time.perf_counter() - t0, 1)})
    key = f"{task.name}/skip-{trial}"
    if store.get(key) is None:
        t0 = time.perf_counter()
        s = skip_search(
            model,
            prompts["prefix"],
            task,
            train=train,
            eval_data=evald,
            psi=0.2,
            seed=trial,
            progress=False,
        )
        row = pruned_row(model, prompts["prefix"], s, evald)
        store.put(key, row | {"seconds": round(time.perf_counter() - t0, 1)})
    for k in ("skeleton", "skip"):
        r = store.get(f"{task.name}/{k}-{trial}")
        print(
            f"[{task.name}/{k}-{trial}] kept {r['kept_ratio']}: {r['accuracy']} "
            f"(unpruned {r['base_accuracy']})",
            flush=True,
        )


def run_selection(model, task, data, prompt, store: Store, args, trial: int) -> None:
    """Attribution vs activation, gradient and random at one kept ratio, same re-training."""
    train, val, evald = data
    key = f"{task.name}/selection-{trial}"
    if store.get(key) is not None:
        return
    retrain = retrain_kwargs(args)
    rows = {}
    for method in SELECTION:
        scores = attribute(
            model, prompt, task, train, method=method, n=20, seed=trial, progress=False
        )
        pruned = keep_top(model, scores, args.compare_ratio)
        re = retrain_prompt(pruned, prompt, task, train=train, **retrain)
        rows[method] = {
            "no_retrain": acc(pruned, prompt, evald),
            "retrained": acc(pruned, re, evald),
        }
    store.put(key, {"ratio": args.compare_ratio, "rows": rows, "base": acc(model, prompt, evald)})
    print(f"[{key}] {rows}", flush=True)


#: the module comparison: unit key suffix -> rows (name -> the kinds pruned, half each)
MODULE_UNITS = {
    "modules": {"ffn": ("ffn",), "heads": ("heads",), "both": ("ffn", "heads")},
    # the papers' "attention output" (O's inputs) and "all linears" (FFN + O)
    "modules-attn": {"attn_out": ("attn_out",), "all": ("ffn", "attn_out")},
}


def run_modules(model, task, data, prompt, store: Store, args) -> None:
    """FFN neurons vs attention heads vs attention-output inputs vs combinations, half of
    each layer's units kept by attribution."""
    train, val, evald = data
    retrain = retrain_kwargs(args)
    scores = {}
    for unit, rows_spec in MODULE_UNITS.items():
        key = f"{task.name}/{unit}-0"
        if store.get(key) is not None:
            continue
        rows = {}
        for name, kinds in rows_spec.items():
            kept = {}
            for kind in kinds:  # half of every layer's neurons / heads / features
                if kind not in scores:
                    scores[kind] = attribute(
                        model, prompt, task, train, n=20, seed=0, modules=kind, progress=False
                    )
                kept |= scores[kind].top(percent=50, per_layer=True).indices
            pruned = prune_model(model, kept)
            re = retrain_prompt(pruned, prompt, task, train=train, **retrain)
            rec = pruned.pruning
            ceiling = flop_ceiling(model, rec.kept_ratio, 148, heads_kept_ratio=rec.heads_kept_ratio,
                                   attn_out_kept_ratio=rec.attn_out_kept_ratio)  # fmt: skip
            rows[name] = {
                "no_retrain": acc(pruned, prompt, evald),
                "retrained": acc(pruned, re, evald),
                "kept_ratio": rec.kept_ratio,
                "heads_kept_ratio": rec.heads_kept_ratio,
                "attn_out_kept_ratio": rec.attn_out_kept_ratio,
                "flop_ceiling": round(ceiling, 3),
                "kept": rec.kept,
            }
        store.put(key, {"rows": rows, "base": acc(model, prompt, evald)})
        print(
            f"[{key}] " + str({k: (v["no_retrain"], v["retrained"]) for k, v in rows.items()}),
            flush=True,
        )


def run_sweeps(model, task, data, prefix, store: Store, args) -> None:
    """SKIP's psi sweep (its Fig. 4) and attribution-examples sweep (its Appendix C)."""
    train, val, evald = data
    key = f"{task.name}/sweeps-0"
    if store.get(key) is not None:
        return
    scores = attribute(model, prefix, task, train, n=20, seed=0, progress=False)
    psi = {}
    for p in PSIS:
        s = skip_search(
            model, prefix, task, train=train, eval_data=evald, psi=p, scores=scores, progress=False
        )
        psi[str(p)] = {"kept_ratio": s.kept_ratio, "accuracy": acc(s.model, s.prompt, evald)}
    ns = {}
    for n in NS:
        sc = attribute(model, prefix, task, train, n=n, seed=0, progress=False)
        s = skip_search(
            model, prefix, task, train=train, eval_data=evald, psi=1.0, scores=sc, progress=False
        )
        half = keep_top(model, sc, 0.5)
        ns[str(n)] = {
            "kept_ratio": s.kept_ratio,
            "accuracy": acc(s.model, s.prompt, evald),
            "half_kept_accuracy": acc(half, prefix, evald),
        }
    store.put(key, {"psi": psi, "n": ns, "base": acc(model, prefix, evald)})
    print(f"[{key}] psi {psi} n {ns}", flush=True)


def run(args) -> None:
    settings = {
        k: getattr(args, k)
        for k in ("steps", "retrain", "train", "val", "eval", "ft_lr", "compare_ratio")
    }
    settings["prefix_lr"] = DEFAULT_LR["prefix"]  # the library default prefix tuning uses
    if args.model != "minilm":
        settings["model"] = args.model  # (MiniLM's units predate the field)
    store = Store(Path(args.out), settings)
    model = load(args.model)
    loaded = {}
    for name in args.tasks:
        task, train, val, evald = splits(name, args)
        loaded[name] = (task, (train, val, evald))
        print(f"== {name}: {len(train)} train, {len(val)} val, {len(evald)} eval", flush=True)
        counts = torch.bincount(torch.as_tensor(evald.labels)).tolist()
        store.put(
            f"{name}/info",
            {
                "n": [len(train), len(val), len(evald)],
                "majority": round(100 * max(counts) / len(evald), 1),
            },
        )
    for trial in range(args.trials):  # every task's first trial first
        for name, (task, data) in loaded.items():
            prompts = run_methods(model, task, data, store, args, trial)
            run_searches(model, task, data, prompts, store, args, trial)
            if name in args.extras:
                run_selection(model, task, data, prompts["prompt"], store, args, trial)
            if trial == 0:
                run_sweeps(model, task, data, prompts["prefix"], store, args)
                if name in args.extras:
                    run_modules(model, task, data, prompts["prompt"], store, args)


def speed(args) -> None:
    """Measured speed-up of every pruned model found (alone on the machine)."""
    model = load(args.model)
    out = Path(args.out)
    found = {}
    for p in sorted(out.glob("*/*.json")):
        r = json.loads(p.read_text())
        if r.get("kept") is not None:  # a search's pruned model
            found[f"{p.parent.name}/{p.stem}"] = r["kept"]
        if p.stem.startswith("modules-"):  # the module comparison's pruned models
            for name, row in r["rows"].items():
                found[f"{p.parent.name}/{p.stem}/{name}"] = row["kept"]
    models = {"unpruned": model} | {k: prune_model(model, v) for k, v in found.items()}
    enc = random_batch(model, 8, 128)
    times = interleaved_latency(models, enc, prompt=init_prompt(model, 20), repeats=args.repeats)
    res = {k: round(times["unpruned"] / t, 3) for k, t in times.items() if k != "unpruned"}
    (out / "speed.json").write_text(
        json.dumps(
            {
                "threads": torch.get_num_threads(),
                "batch": [8, 148],
                "repeats": args.repeats,
                "speedup": res,
            }
        )
    )
    print(json.dumps(res))


def ms(values) -> str:
    values = [v for v in values if v is not None]
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.1f}"
    return f"{statistics.mean(values):.1f} ± {statistics.stdev(values):.1f}"


def load_all(out: Path) -> dict:
    runs = {}
    for p in sorted(out.glob("*/*.json")):
        runs[f"{p.parent.name}/{p.stem}"] = json.loads(p.read_text())
    return runs


def _speed(speeds: dict, runs: dict, key: str) -> float | None:
    """The measured speed-up of a search's model (1 when the search kept everything)."""
    return 1.0 if runs[key].get("kept") is None else speeds.get(key)


def table1(runs: dict, speeds: dict, tasks) -> list[str]:
    names = {
        "finetune": "Fine-tuning",
        "prompt": "Prompt tuning",
        "prefix": "Prefix tuning",
        "ptuning": "P-tuning",
        "skeleton": "SKELETON (prompt, ψ = 1)",
        "skip": "SKIP (prefix, ψ = 0.2)",
    }
    lines = ["| method | " + " | ".join(tasks) + " |", "|---" * (len(tasks) + 1) + "|"]
    for m, label in names.items():
        cells = []
        for t in tasks:
            rows = [r for k, r in runs.items() if k.startswith(f"{t}/{m}-")]
            cells.append(ms([r["accuracy"] for r in rows]) + f" ({len(rows)})")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    maj = [str(runs.get(f"{t}/info", {}).get("majority", "-")) for t in tasks]
    lines.append("| majority class | " + " | ".join(maj) + " |")
    lines += [
        "",
        "| search | task | removed % | accuracy | unpruned | relative % | speed-up "
        "(measured) | FLOP ceiling |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for m in ("skeleton", "skip"):
        for t in tasks:
            ks = [k for k in runs if k.startswith(f"{t}/{m}-")]
            if not ks:
                continue
            rows = [runs[k] for k in ks]
            lines.append(
                f"| {m} | {t} | {ms([100 * (1 - r['kept_ratio']) for r in rows])} | "
                f"{ms([r['accuracy'] for r in rows])} | {ms([r['base_accuracy'] for r in rows])} | "
                f"{ms([100 * r['accuracy'] / r['base_accuracy'] for r in rows])} | "
                f"{ms([_speed(speeds, runs, k) for k in ks])} | {ms([r['flop_ceiling'] for r in rows])} |"
            )
    return lines


def extras(runs: dict, speeds: dict, tasks) -> list[str]:
    lines = []
    for t in tasks:
        sel = [r for k, r in runs.items() if k.startswith(f"{t}/selection-")]
        if sel:
            lines += [
                f"\nSelection at {sel[0]['ratio']:.0%} kept, {t} ({len(sel)} trials; "
                f"unpruned {ms([r['base'] for r in sel])}):",
                "",
                "| scores | no re-training | re-trained |",
                "|---|---|---|",
            ]
            for m in SELECTION:
                lines.append(
                    f"| {m} | {ms([r['rows'][m]['no_retrain'] for r in sel])} | "
                    f"{ms([r['rows'][m]['retrained'] for r in sel])} |"
                )
        mods = [(u, runs[f"{t}/{u}-0"]) for u in MODULE_UNITS if f"{t}/{u}-0" in runs]
        if mods:
            lines += [
                f"\nModules, {t} (half of each layer's units kept by attribution; "
                f"unpruned {mods[0][1]['base']}):",
                "",
                "| pruned | FFN kept | heads kept | attn_out kept | no re-training | re-trained | "
                "speed-up (measured) | FLOP ceiling |",
                "|---|---|---|---|---|---|---|---|",
            ]
            for unit, mod in mods:
                for name, r in mod["rows"].items():
                    sp = speeds.get(f"{t}/{unit}-0/{name}")
                    lines.append(
                        f"| {name} | {r['kept_ratio']:.2f} | {r['heads_kept_ratio']:.2f} | "
                        f"{r.get('attn_out_kept_ratio', 1.0):.2f} | {r['no_retrain']} | "
                        f"{r['retrained']} | {sp or '-'} | {r['flop_ceiling']} |"
                    )
        sw = runs.get(f"{t}/sweeps-0")
        if sw:
            lines += [
                f"\nSKIP sweeps, {t} (trial 0, prefix at {sw['base']}):",
                "",
                "| ψ | removed % | eval accuracy |",
                "|---|---|---|",
            ]
            lines += [
                f"| {p} | {100 * (1 - r['kept_ratio']):.0f} | {r['accuracy']} |"
                for p, r in sw["psi"].items()
            ]
            lines += [
                "",
                "| n examples | removed % (ψ = 1) | eval accuracy | 50 % kept, no re-training |",
                "|---|---|---|---|",
            ]
            lines += [
                f"| {n} | {100 * (1 - r['kept_ratio']):.0f} | {r['accuracy']} | "
                f"{r['half_kept_accuracy']} |"
                for n, r in sw["n"].items()
            ]
    return lines


def report(args) -> None:
    out = Path(args.out)
    runs = load_all(out)
    sp = out / "speed.json"
    speeds = json.loads(sp.read_text())["speedup"] if sp.exists() else {}
    tasks = [t for t in TASKS if any(k.startswith(f"{t}/") for k in runs)]
    print("\n".join(table1(runs, speeds, tasks) + extras(runs, speeds, tasks)))
    for t in tasks:
        print(f"- {t}: {SPLITS[t]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    ap.add_argument("--out", default="runs/pruning-table")
    ap.add_argument("--model", choices=["minilm", "smollm2"], default="minilm")
    ap.add_argument("--trials", type=int, default=3)
    ap.add_argument("--steps", type=int, default=60, help="training steps of every method")
    ap.add_argument("--retrain", type=int, default=30, help="re-training steps after a prune")
    ap.add_argument("--train", type=int, default=1000, help="training rows")
    ap.add_argument("--val", type=int, default=300, help="validation rows (SKELETON's search)")
    ap.add_argument("--eval", type=int, default=500, help="AG News test rows evaluated")
    ap.add_argument("--ft-lr", type=float, default=1e-4, help="fine-tuning weights' lr")
    ap.add_argument("--compare-ratio", type=float, default=0.3, help="selection: kept ratio")
    ap.add_argument(
        "--extras",
        nargs="*",
        default=["sst2"],
        help="tasks with the selection and module comparisons",
    )
    ap.add_argument("--speed", action="store_true", help="time the pruned models found")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--report", action="store_true", help="print the tables")
    args = ap.parse_args()
    torch.manual_seed(0)
    if args.report:
        report(args)
    elif args.speed:
        speed(args)
    else:
        run(args)


if __name__ == "__main__":
    main()
