"""Two real-shape runs on random weights, checked against the cost model's prediction.

(a) a random-weight Llama of Llama-3.2-1B's shape (16 layers, d_model 2048, FFN 8192, 32
heads, 8 key/value heads, tied embeddings, vocabulary 128256; ``--vocab`` to shrink it);
(b) a random Llama of Llama-2-7B's layer shape (d_model 4096, FFN 11008, 32 heads, vocabulary
32000) with 2 layers, reported per layer too. Both in bfloat16 (``--dtype``), steps timed and
their peak resident memory sampled:

* ``load``: build the random model and wrap it (``nl.load_model(hf, tok, dtype=...)``);
* ``capture``: every FFN site, running mean, ``--examples`` x ``--length`` tokens;
* ``predictivity``: a fake prompt (untrained, verbalizer head), baselines on the train split
  and accuracies on the dev split, ``--examples`` each;
* ``attribution``: ``nl.attribute`` (gradient x activation, prompt positions included) on
  ``--attr-examples`` train examples;
* ``suppression``: ``nl.evaluate`` clean, with ``nl.Zero(skill.top(percent=1))`` and with the
  same counts of random neurons (``random_control``), one level;
* ``prune``: ``nl.prune_model(model, attr.top(percent=50))``;
* ``speed``: the classification forward (``hidden_states``, prompt + input) of the pruned vs
  the unpruned model on one batch, interleaved repeats, next to ``flop_ceiling``.

Before each big run, the same steps run on a small pilot shape; with a cost model
(``--cost-model``: the JSON of ``benchmarks/cost_model.py``), each step is predicted for the
big and the pilot shape, the pilot's measured/predicted ratio corrects the big prediction,
and a step predicted to take longer than ``--max-step-s`` runs on fewer examples (recorded as
``n_requested`` / ``n_run``). The JSON has, per step, measured seconds and peak memory, the
predictions and the ratios measured / predicted.

    python benchmarks/scale_runs.py [--quick] [--out DIR] [--cost-model FILE]
        [--runs a b] [--examples 16] [--length 32] [--attr-examples 16] [--max-step-s 120]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch  # noqa: E402
from cost_model import (  # noqa: E402
    DTYPE_BYTES,
    GemmTable,
    PeakRSS,
    Shape,
    fake_prompt,
    load,
    predict_peak_bytes,
    predict_seconds,
    random_ids,
    rss_bytes,
    trim,
    word_task,
)

from neuronlens.models.placement import dtype_name  # noqa: E402

RUNS = {
    "a": ("Llama-3.2-1B shape", Shape(16, 2048, 8192, vocab=128256, heads=32, kv_heads=8)),
    "b": (
        "Llama-2-7B layer shape, 2 layers",
        Shape(2, 4096, 11008, vocab=32000, heads=32, kv_heads=32, tied=False),
    ),
}
QUICK_RUNS = {
    "a": ("tiny (quick) stand-in for (a)", Shape(2, 128, 512, vocab=2048, heads=2, kv_heads=1)),
    "b": (
        "tiny (quick) stand-in for (b)",
        Shape(2, 256, 688, vocab=2048, heads=2, kv_heads=2, tied=False),
    ),
}
STEP_METHOD = {  # the cost-model method each step is predicted from, and its multiplier
    "capture": ("capture", 1.0),
    "predictivity": ("predictivity", 1.0),
    "attribution": ("attribution", 1.0),
    "suppression": ("predictivity", 1.5),  # 3 forward passes; a predictivity unit is 2
    "speed_unpruned": ("predictivity", 0.5),  # one forward pass per batch
}
MIN_EXAMPLES = {"capture": 1, "predictivity": 2, "attribution": 1, "suppression": 2}


def pilot_shape(shape: Shape) -> Shape:
    """A small shape with the same head width ratio and grouping (2 layers, d 256)."""
    heads = max(1, shape.heads // 8)
    kv = max(1, round(heads * shape.kv_heads / shape.heads))
    ffn = max(64, round(256 * shape.d_ffn / shape.d_model))
    return Shape(2, 256, ffn, vocab=2048, heads=heads, kv_heads=kv, tied=shape.tied)


def quick_pilot(shape: Shape) -> Shape:
    return Shape(1, 64, 4 * 64, vocab=512, heads=1, kv_heads=1, tied=shape.tied)


# ---------------------------------------------------------------------------- predictions


class CostModel:
    """The fits and GEMM table of a ``cost_model.json``, as predictions of this run's steps."""

    def __init__(self, path: Path) -> None:
        data = json.loads(path.read_text())
        self.path = str(path)
        self.fits = data["fits"]
        self.dtype_name = data["dtype"]
        self.gemm = GemmTable(getattr(torch, data["dtype"]), data.get("gemm_row_seconds"))
        self.model = "gemm" if not data.get("quick") else "flops"
        self.calibrated_now: list[str] = []

    def _has_gemms(self, shape: Shape) -> bool:
        need = [(k, n) for _, k, n in shape.gemms()] + [(shape.d_model, shape.vocab)]
        return all(self.gemm.has(k, n, f) for k, n in need for f in ("fwd", "bwd"))

    def seconds(self, shape: Shape, step: str, batches: list[int], seq: int) -> dict:
        """``{"gemm": s, "flops": s}`` predicted for ``step`` over batches of these sizes."""
        method, mult = STEP_METHOD[step]
        if not self._has_gemms(shape):  # time the missing GEMMs now (a few seconds)
            self.calibrated_now.append(str(asdict(shape)))
        out = {}
        for model in ("gemm", "flops"):
            parts = [
                predict_seconds(self.fits, shape, b, seq, method, model, self.gemm) for b in batches
            ]
            out[model] = None if any(p is None for p in parts) else mult * sum(parts)
        return out

    def peak_bytes(self, shape: Shape, step: str, batch: int, seq: int) -> int | None:
        method, _ = STEP_METHOD[step]
        if method not in self.fits or "memory" not in self.fits[method]:
            return None
        dtype = getattr(torch, self.dtype_name)
        return predict_peak_bytes(self.fits, shape, batch, seq, method, dtype)["peak"]


def batch_sizes(n: int, bs: int) -> list[int]:
    return [min(bs, n - i) for i in range(0, n, bs)]


# ---------------------------------------------------------------------------- steps


def _step(record: dict, name: str, fn, *, examples: int | None = None):
    """Run ``fn`` under a peak-RSS sampler; record seconds, peak, delta (or the error)."""
    entry: dict = {"n_run": examples}
    try:
        with PeakRSS() as peak:
            t0 = time.perf_counter()
            value = fn()
            entry["seconds"] = round(time.perf_counter() - t0, 3)
        entry["peak_rss_bytes"] = peak.peak
        entry["rss_delta_bytes"] = peak.delta
    except Exception as err:  # recorded (a bf16 dtype mismatch, ...); the run goes on
        entry["error"] = f"{type(err).__name__}: {err}"
        value = None
    record[name] = {**record.get(name, {}), **entry}
    print(f"  {name}: {json.dumps({k: v for k, v in record[name].items()})}", flush=True)
    return value


def run_steps(
    shape: Shape,
    *,
    dtype,
    examples: dict[str, int],
    length: int,
    batch: int,
    repeats: int,
    speed_batch: int = 2,
    plan: dict[str, dict] | None = None,
) -> dict:
    """Every step on a fresh random model of ``shape``; ``examples`` per step."""
    import neuronlens as nl
    from neuronlens.pruning import flop_ceiling

    rec: dict = {k: dict(v) for k, v in (plan or {}).items()}
    trim()
    rec["process"] = {"rss_before_bytes": rss_bytes()}
    loaded = _step(rec, "load", lambda: load(shape, dtype, keep_plain=False))
    if loaded is None:
        return rec
    model, _ = loaded
    n_max = max(examples.values())
    task = word_task(shape, n_max, length)
    train, dev = task.load("train"), task.load("dev")
    pr = fake_prompt(model, task)
    n_cap, n_pred, n_attr, n_sup = (
        examples[k] for k in ("capture", "predictivity", "attribution", "suppression")
    )

    def capture():
        rm = nl.RunningMean()
        nl.capture(model, random_ids(model, n_cap, length), rm, batch_size=batch, progress=False)
        return rm

    _step(rec, "capture", capture, examples=n_cap)
    skill = _step(
        rec,
        "predictivity",
        lambda: nl.predictivity(
            model,
            pr,
            task,
            dev.take(n_pred),
            train=train.take(n_pred),
            batch_size=batch,
            progress=False,
        ),
        examples=n_pred,
    )
    attr = _step(
        rec,
        "attribution",
        lambda: nl.attribute(
            model,
            pr,
            task,
            train,
            n=n_attr,
            batch_size=batch,
            include_prompt=True,
            progress=False,
        ),
        examples=n_attr,
    )
    n_a32 = examples.get("attribution_float32", 0)
    if n_a32 and dtype != torch.float32:  # what to run on a CPU, whose bf16 backward is slow
        a32 = _step(
            rec,
            "attribution_float32",
            lambda: nl.attribute(
                model,
                pr,
                task,
                train,
                n=n_a32,
                batch_size=batch,
                include_prompt=True,
                progress=False,
                compute_dtype=torch.float32,
            ),  # fmt: skip
            examples=n_a32,
        )
        if a32 is not None and attr is not None:
            rec["attribution_float32"]["spearman_vs_model_dtype_min"] = round(
                min(r for r in a32.spearman(attr).rho.values() if r == r), 4
            )

    def suppression():
        data = dev.take(n_sup)
        top = skill.top(percent=1)
        rnd = top.random_control(0)
        kw = {"task": task, "batch_size": batch}
        return {
            "neurons": top.count,
            "clean": nl.evaluate(model, pr, data, **kw).accuracy,
            "top_1pct_zero": nl.evaluate(
                model, pr, data, interventions=[nl.Zero(top)], **kw
            ).accuracy,
            "random_zero": nl.evaluate(
                model, pr, data, interventions=[nl.Zero(rnd)], **kw
            ).accuracy,
        }

    if skill is not None:
        acc = _step(rec, "suppression", suppression, examples=n_sup)
        if acc is not None:
            rec["suppression"]["accuracy"] = acc
    else:
        rec["suppression"] = {"error": "skipped: predictivity failed"}
    keep = attr if attr is not None else skill
    if keep is None:
        rec["prune"] = {"error": "skipped: no scores"}
        return rec
    if attr is None:
        rec["prune_note"] = "attribution failed: pruned by predictivity instead"
    small = _step(rec, "prune", lambda: nl.prune_model(model, keep.top(percent=50)))
    if small is None:
        return rec
    kept = small.pruning.kept_ratio
    rec["prune"]["kept_ratio"] = round(kept, 4)
    rec["prune"]["kept_per_layer"] = [s.width for s in small.sites]

    enc = random_ids(model, speed_batch, length - pr.n_tokens)
    prompt = pr.prompt

    def speed():
        runs = {
            "unpruned": lambda: model.hidden_states(enc, prompt=prompt),
            "pruned": lambda: small.hidden_states(enc, prompt=prompt),
        }
        with torch.no_grad():
            for fn in runs.values():
                fn()
            times = {k: [] for k in runs}
            for r in range(repeats):
                for k in list(runs) if r % 2 == 0 else list(runs)[::-1]:
                    t0 = time.perf_counter()
                    runs[k]()
                    times[k].append(time.perf_counter() - t0)
        med = {k: statistics.median(v) for k, v in times.items()}
        return {
            "unpruned_s": round(med["unpruned"], 4),
            "pruned_s": round(med["pruned"], 4),
            "speedup": round(med["unpruned"] / med["pruned"], 3),
            "flop_ceiling": round(flop_ceiling(model, kept, seq_len=length), 3),
        }

    res = _step(rec, "speed", speed, examples=speed_batch)
    if res is not None:
        rec["speed"].update(res)
    rec["process"]["rss_end_bytes"] = rss_bytes()
    return rec


# ---------------------------------------------------------------------------- planning


def plan_examples(
    cm: CostModel | None,
    shape: Shape,
    pilot: Shape,
    pilot_rec: dict | None,
    requested: dict[str, int],
    length: int,
    batch: int,
    max_step_s: float | None,
) -> tuple[dict[str, int], dict[str, dict]]:
    """Examples per step (shrunk where the pilot-corrected prediction exceeds
    ``max_step_s``) and the plan record (predictions for what will run)."""
    chosen, plan = dict(requested), {}
    for step, n in requested.items():
        entry: dict = {"n_requested": n}
        if cm is not None:
            pred = cm.seconds(shape, step, batch_sizes(n, batch), length)
            entry["predicted_requested_s"] = pred
            corr = _pilot_ratio(cm, pilot, pilot_rec, step, length, batch)
            entry["pilot_ratio"] = corr
            best = pred.get(cm.model) or pred.get("flops")
            if best is not None and corr is not None:
                best *= corr
            entry["predicted_requested_corrected_s"] = best
            if max_step_s and best and best > max_step_s:
                per = best / n
                chosen[step] = max(MIN_EXAMPLES[step], min(n, int(max_step_s / per)))
        plan[step] = entry
    # evaluation data for suppression comes from the predictivity dev split
    chosen["suppression"] = min(chosen["suppression"], max(chosen["predictivity"], 2))
    return chosen, plan


def _pilot_ratio(cm, pilot, pilot_rec, step, length, batch) -> float | None:
    """The pilot's measured / predicted seconds for ``step`` (None without a pilot)."""
    if not pilot_rec or "seconds" not in pilot_rec.get(step, {}):
        return None
    n = pilot_rec[step]["n_run"]
    pred = cm.seconds(pilot, step, batch_sizes(n, batch), length)
    best = pred.get(cm.model) or pred.get("flops")
    return None if not best else pilot_rec[step]["seconds"] / best


def compare(
    cm: CostModel | None,
    shape: Shape,
    rec: dict,
    length: int,
    batch: int,
    corr: dict,
    speed_batch: int,
) -> None:
    """Add predictions for what ran, and measured / predicted ratios, to each step."""
    if cm is None:
        return
    for step in ("capture", "predictivity", "attribution", "suppression"):
        e = rec.get(step, {})
        if "seconds" not in e:
            continue
        pred = cm.seconds(shape, step, batch_sizes(e["n_run"], batch), length)
        e["predicted_s"] = pred
        for model, p in pred.items():
            if p:
                e[f"measured_over_predicted_{model}"] = round(e["seconds"] / p, 3)
        c = corr.get(step)
        best = pred.get(cm.model) or pred.get("flops")
        if c and best:
            e["predicted_pilot_corrected_s"] = round(best * c, 2)
            e["measured_over_pilot_corrected"] = round(e["seconds"] / (best * c), 3)
        mem = cm.peak_bytes(shape, step, batch, length)
        if mem:
            e["predicted_peak_bytes"] = mem
            e["measured_over_predicted_peak"] = round(e["peak_rss_bytes"] / mem, 3)
    sp = rec.get("speed", {})
    if "pruned_s" in sp and "kept_ratio" in rec.get("prune", {}):
        pruned = replace(shape, d_ffn=max(1, round(shape.d_ffn * rec["prune"]["kept_ratio"])))
        full = cm.seconds(shape, "speed_unpruned", [speed_batch], length)
        part = cm.seconds(pruned, "speed_unpruned", [speed_batch], length)
        sp["predicted_unpruned_s"] = full
        for m, p in full.items():
            if p:
                sp[f"unpruned_measured_over_predicted_{m}"] = round(sp["unpruned_s"] / p, 3)
        sp["predicted_speedup"] = {
            m: round(full[m] / part[m], 3) for m in full if full[m] and part[m]
        }
        sp["note"] = "pruned shape for the prediction: every layer at the mean kept width"


def per_layer(rec: dict, layers: int) -> None:
    for step in ("capture", "predictivity", "attribution", "suppression"):
        if "seconds" in rec.get(step, {}):
            rec[step]["seconds_per_layer"] = round(rec[step]["seconds"] / layers, 3)
    sp = rec.get("speed", {})
    if "unpruned_s" in sp:
        sp["unpruned_s_per_layer"] = round(sp["unpruned_s"] / layers, 4)
        sp["pruned_s_per_layer"] = round(sp["pruned_s"] / layers, 4)


# ---------------------------------------------------------------------------- main


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="both runs at tiny size")
    ap.add_argument("--out", default="neuronlens-out/scale_runs")
    ap.add_argument("--cost-model", default="neuronlens-out/cost_model/cost_model.json")
    ap.add_argument("--runs", nargs="+", choices=sorted(RUNS), default=sorted(RUNS))
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--vocab", type=int, default=None, help="override run (a)'s vocabulary")
    ap.add_argument("--examples", type=int, default=None, help="per split (default 16; 8 quick)")
    ap.add_argument("--attr-examples", type=int, default=None, help="default: --examples")
    ap.add_argument(
        "--attr-float32-examples",
        type=int,
        default=None,
        help="attribution with compute_dtype=float32 on a half-precision model (64; 4 quick; 0 "
        "to skip); never shrunk by --max-step-s",
    )
    ap.add_argument("--length", type=int, default=None, help="tokens per example, prompt included")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=None, help="speed repeats (3; 1 quick)")
    ap.add_argument("--speed-batch", type=int, default=2, help="batch of the speed step")
    ap.add_argument("--max-step-s", type=float, default=120.0, help="0: never shrink a step")
    ap.add_argument("--no-pilot", action="store_true")
    args = ap.parse_args(argv)
    from neuronlens.models.placement import resolve_dtype

    warnings.filterwarnings("ignore")
    dtype = resolve_dtype(args.dtype)
    repeats = args.repeats or (1 if args.quick else 3)
    n = args.examples or (8 if args.quick else 16)
    length = args.length or (24 if args.quick else 32)
    batch = min(args.batch, n) if not args.quick else min(args.batch, 4)
    requested = {
        "capture": n,
        "predictivity": n,
        "attribution": args.attr_examples or n,
        "suppression": n,
    }
    a32 = args.attr_float32_examples
    extra = {"attribution_float32": (4 if args.quick else 64) if a32 is None else a32}
    path = Path(args.cost_model)
    cm = CostModel(path) if path.is_file() else None
    runs = QUICK_RUNS if args.quick else RUNS
    summary: dict = {
        "benchmark": "scale_runs",
        "quick": args.quick,
        "dtype": dtype_name(dtype),
        "threads": torch.get_num_threads(),
        "cost_model": cm.path if cm else None,
        "cost_model_time_model": cm.model if cm else None,
        "length": length,
        "batch": batch,
        "runs": {},
    }
    if cm is None:
        print(f"no cost model at {path}: measuring only (run benchmarks/cost_model.py first)")
    t_all = time.perf_counter()
    for key in args.runs:
        label, shape = runs[key]
        if key == "a" and args.vocab:
            shape = replace(shape, vocab=args.vocab)
        print(f"run ({key}): {label} {asdict(shape)}", flush=True)
        pilot = quick_pilot(shape) if args.quick else pilot_shape(shape)
        pilot_rec = None
        if not args.no_pilot:
            print(f" pilot {asdict(pilot)}", flush=True)
            pilot_rec = run_steps(pilot, dtype=dtype, examples={**requested, **extra}, length=length,
                                  batch=batch, repeats=repeats, speed_batch=args.speed_batch)  # fmt: skip
            trim()
        chosen, plan = plan_examples(
            cm, shape, pilot, pilot_rec, requested, length, batch, args.max_step_s or None
        )
        print(f" plan {json.dumps(plan)} -> examples {chosen}", flush=True)
        t0 = time.perf_counter()
        rec = run_steps(shape, dtype=dtype, examples={**chosen, **extra}, length=length, batch=batch,
                        repeats=repeats, speed_batch=args.speed_batch, plan=plan)  # fmt: skip
        corr = {s: plan[s].get("pilot_ratio") for s in plan}
        compare(cm, shape, rec, length, batch, corr, args.speed_batch)
        if key == "b":
            per_layer(rec, shape.layers)
        rec["total_s"] = round(time.perf_counter() - t0, 1)
        summary["runs"][key] = {
            "label": label,
            "shape": asdict(shape),
            "params": shape.param_count(),
            "weights_bytes": shape.param_count() * DTYPE_BYTES[dtype],
            "pilot_shape": asdict(pilot),
            "pilot": pilot_rec,
            "examples": chosen,
            "steps": rec,
        }
        trim()
    summary["total_s"] = round(time.perf_counter() - t_all, 1)
    if cm is not None and cm.calibrated_now:
        summary["gemm_calibrated_during_run"] = cm.calibrated_now
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale_runs.json").write_text(json.dumps(summary, indent=1, default=str))
    (out / "scale_runs.md").write_text(markdown(summary))
    print(markdown(summary))
    print(json.dumps({"benchmark": "scale_runs", "out": str(out), "total_s": summary["total_s"]}))
    return summary


def _f(v, nd=2):
    return (
        "-"
        if v is None or (isinstance(v, float) and not math.isfinite(v))
        else (f"{v:.{nd}f}" if isinstance(v, float) else str(v))
    )


def markdown(summary: dict) -> str:
    lines = [f"# Scale runs ({summary['dtype']}, {summary['threads']} threads)", ""]
    for key, run in summary["runs"].items():
        st = run["steps"]
        lines += [
            f"## ({key}) {run['label']}: {run['params'] / 1e9:.3f} B params, "
            f"{run['weights_bytes'] / 2**30:.2f} GiB weights",
            "",
            "| step | examples | seconds | peak RSS GiB | predicted s | measured / predicted "
            "| pilot-corrected ratio | peak / predicted |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for step in (
            "load",
            "capture",
            "predictivity",
            "attribution",
            "attribution_float32",
            "suppression",
            "prune",
            "speed",
        ):
            e = st.get(step, {})
            if "error" in e:
                lines.append(f"| {step} | {e.get('n_run', '-')} | error: {e['error'][:120]} |||||")
                continue
            pred = e.get("predicted_s") or {}
            p = pred.get(summary.get("cost_model_time_model") or "gemm") or pred.get("flops")
            ratio = e.get(f"measured_over_predicted_{summary.get('cost_model_time_model')}")
            n_txt = "-" if e.get("n_run") is None else e["n_run"]
            if e.get("n_requested") and e.get("n_run") != e.get("n_requested"):
                n_txt = f"{e['n_run']} (of {e['n_requested']})"
            peak = e.get("peak_rss_bytes")
            lines.append(
                f"| {step} | {n_txt} | {_f(e.get('seconds'))} | "
                f"{_f(peak / 2**30 if peak else None)} | {_f(p)} | {_f(ratio)} | "
                f"{_f(e.get('measured_over_pilot_corrected'))} | "
                f"{_f(e.get('measured_over_predicted_peak'))} |"
            )
        sp = st.get("speed", {})
        if "speedup" in sp:
            lines += [
                "",
                f"Pruned (kept {st['prune'].get('kept_ratio')}) forward: {sp['pruned_s']} s vs "
                f"{sp['unpruned_s']} s unpruned, speed-up {sp['speedup']} (FLOP ceiling "
                f"{sp['flop_ceiling']}, predicted {sp.get('predicted_speedup')}).",
            ]
        a32 = st.get("attribution_float32", {})
        if "spearman_vs_model_dtype_min" in a32:
            lines += ["", "attribution_float32: `compute_dtype=torch.float32` on the "
                      f"{summary['dtype']} model; lowest per-layer Spearman ρ against the "
                      f"{summary['dtype']} attribution {a32['spearman_vs_model_dtype_min']} "
                      "(different example counts when that step was shrunk)."]  # fmt: skip
        sup = st.get("suppression", {}).get("accuracy")
        if sup:
            lines += ["", f"Suppression (1 %, zero): {sup}."]
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
