"""A cost model of capture, predictivity and attribution on Llama-shaped models, on this CPU.

Measures, on growing random-weight Llama models in bfloat16 (``--dtype``), the median time of
a plain Hugging Face forward, of ``neuronlens.capture`` of every FFN site with a running mean,
of a whole ``neuronlens.predictivity`` call (baselines on B train examples, accuracies on B
dev examples: two passes) and of ``neuronlens.attribute`` (forward + backward on B examples),
interleaved over repeats; and the peak resident memory of each, sampled in a fresh process
per configuration. Then it fits, per method (non-negative least squares on relative error),

    seconds = a*L*T*d*f + b*L*T*d*(d + d_kv)/2 + c*L*B*S^2*d + o*batches + U

(``T = B*S`` tokens, ``d_kv`` the key/value width, so the ``b`` term is ``L*T*d^2`` without
grouped-query attention), where ``U``, the unembedding, is not fitted but measured separately
(a GEMM of the vocabulary matrix at its real size: all positions for the plain forward and
capture, the answer rows for the probes). A second model, ``gemm``, replaces the two weight
terms by the measured time of each of the layer's weight GEMMs at its real shape (forward
``x @ W.T``; for attribution also the backward ``g @ W``), plus an elementwise term
``e*L*T*(f + d)`` (the GEMM seconds enter with coefficient 1; the other terms are fitted to
what remains): on a CPU without native bf16 GEMMs (AVX2 only), PyTorch runs bf16
``g @ W`` in a scalar fallback whose speed falls with the matrix size (pytorch/pytorch#146508),
so a per-FLOP cost fitted on small models under-predicts large ones.

Memory (bytes): process baseline + weights + probe state (``L*f*8`` x statistics) + the
activation peak, fitted per method as ``bytes*(k*T*f + m*T*d + j*B*h*S^2) + r`` (attribution:
times ``L``, everything kept for the backward).

From the fits it predicts seconds per 1,000 examples of 128 tokens (batch 8) and peak memory
for Llama-3.2-1B, Llama-2-7B and Llama-2-70B shapes (read from ``device="meta"`` loads), and
the eager-attention score memory at 512 and 2,048 tokens.

    python benchmarks/cost_model.py [--quick] [--out DIR] [--repeats 3] [--dtype bf16]

Writes ``DIR/cost_model.json`` and ``DIR/cost_model.md``; the last line printed is the JSON
summary of the predictions.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import math
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # common.py, also when imported from tests
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from common import with_attention  # noqa: E402

from neuronlens.models.placement import dtype_name  # noqa: E402

METHODS = ("plain", "capture", "predictivity", "attribution")
PASSES = {"plain": 1, "capture": 1, "predictivity": 2, "attribution": 1}
"""Batches of B examples each method runs per measurement (predictivity: train + dev)."""
FULL_LOGITS = {"plain": True, "capture": True, "predictivity": False, "attribution": False}
"""Whether the method projects every position onto the vocabulary (else the answer rows)."""
N_PROMPT = 4
"""Soft-prompt tokens of the fake prompt (part of each example's S tokens)."""
LABEL_WORDS = ("w10", "w11")
DTYPE_BYTES = {torch.float32: 4, torch.bfloat16: 2, torch.float16: 2}


# ---------------------------------------------------------------------------- shapes


@dataclass(frozen=True)
class Shape:
    """A Llama architecture: what the cost model needs of it."""

    layers: int
    d_model: int
    d_ffn: int
    vocab: int = 2048
    heads: int = 4
    kv_heads: int = 2
    tied: bool = True

    @property
    def head_dim(self) -> int:
        return self.d_model // self.heads

    @property
    def d_kv(self) -> int:
        return self.kv_heads * self.head_dim

    def config(self, max_positions: int = 4096):
        import transformers

        cfg = transformers.LlamaConfig(
            vocab_size=self.vocab,
            hidden_size=self.d_model,
            intermediate_size=self.d_ffn,
            num_hidden_layers=self.layers,
            num_attention_heads=self.heads,
            num_key_value_heads=self.kv_heads,
            max_position_embeddings=max_positions,
            tie_word_embeddings=self.tied,
            pad_token_id=0,
        )
        cfg.architectures = ["LlamaForCausalLM"]
        return cfg

    def param_count(self) -> int:
        """Analytic parameter count (unique tensors: a tied head counts once)."""
        d, f, kv = self.d_model, self.d_ffn, self.d_kv
        per_layer = d * (2 * d + 2 * kv) + 3 * d * f + 2 * d  # q, o, k, v; gate, up, down; norms
        emb = self.vocab * d * (1 if self.tied else 2)
        return emb + self.layers * per_layer + d

    def gemms(self) -> list[tuple[str, int, int]]:
        """``(name, in, out)`` of each weight GEMM of one layer (``F.linear(x, W[out, in])``)."""
        d, f, kv = self.d_model, self.d_ffn, self.d_kv
        return [
            ("q", d, d),
            ("k", d, kv),
            ("v", d, kv),
            ("o", d, d),
            ("gate", d, f),
            ("up", d, f),
            ("down", f, d),
        ]


TARGETS = {
    "Llama-3.2-1B": Shape(16, 2048, 8192, vocab=128256, heads=32, kv_heads=8, tied=True),
    "Llama-2-7B": Shape(32, 4096, 11008, vocab=32000, heads=32, kv_heads=32, tied=False),
    "Llama-2-70B": Shape(80, 8192, 28672, vocab=32000, heads=64, kv_heads=8, tied=False),
}
PREDICT_BATCH, PREDICT_SEQ, PREDICT_EXAMPLES = 8, 128, 1000
ATTN_SEQS = (512, 2048)


@dataclass(frozen=True)
class Config:
    """One measured point: a shape and a batch of B examples of S tokens (prompt included)."""

    shape: Shape
    batch: int
    seq: int

    @property
    def tokens(self) -> int:
        return self.batch * self.seq


def _grid(quick: bool) -> list[Config]:
    """The measured configurations: each factor varied around a base (head width 64)."""

    def c(layers, d, f, b, s):
        heads = max(1, d // 64)
        return Config(Shape(layers, d, f, heads=heads, kv_heads=max(1, heads // 2)), b, s)

    if quick:
        return [
            c(1, 64, 256, 2, 16),
            c(2, 64, 256, 2, 16),
            c(2, 128, 256, 2, 16),
            c(2, 64, 512, 2, 32),
            c(1, 128, 512, 2, 64),
        ]
    return [
        c(2, 256, 1024, 4, 64),  # base
        c(1, 256, 1024, 4, 64),  # layers
        c(4, 256, 1024, 4, 64),
        c(2, 128, 512, 4, 64),  # width
        c(2, 512, 1024, 4, 64),
        c(2, 512, 2048, 2, 64),
        c(2, 768, 3072, 2, 64),
        c(2, 256, 512, 4, 64),  # FFN width
        c(2, 256, 2048, 4, 64),
        c(2, 256, 4096, 2, 64),
        c(2, 256, 1024, 8, 64),  # tokens
        c(2, 256, 1024, 2, 128),  # sequence length at fixed tokens (attention)
        c(2, 256, 1024, 2, 256),
        c(1, 256, 1024, 2, 512),
    ]


# ---------------------------------------------------------------------------- memory


def rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def max_rss_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def trim(full: bool = True) -> None:
    """Collect garbage (``full=False``: the young generations only, a few ms instead of a few
    hundred) and give freed heap back to the OS, so RSS deltas mean something."""
    gc.collect() if full else gc.collect(1)
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class PeakRSS:
    """Peak RSS above the level at entry, sampled every ``interval`` seconds in a thread."""

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.base = self.peak = 0
        self._done = threading.Event()
        self._thread: threading.Thread | None = None

    def _sample(self) -> None:
        while not self._done.is_set():
            self.peak = max(self.peak, rss_bytes())
            time.sleep(self.interval)

    def __enter__(self) -> PeakRSS:
        trim(full=False)
        self.base = self.peak = rss_bytes()
        self._done.clear()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._done.set()
        assert self._thread is not None
        self._thread.join()
        self.peak = max(self.peak, rss_bytes())

    @property
    def delta(self) -> int:
        return self.peak - self.base


# ---------------------------------------------------------------------------- models and data


def build_hf(shape: Shape, seed: int = 0, dtype: torch.dtype = torch.float32):
    """A random-weight ``LlamaForCausalLM`` of ``shape`` (built directly in ``dtype``)."""
    import transformers

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        old = torch.get_default_dtype()
        torch.set_default_dtype(dtype)
        try:
            hf = transformers.LlamaForCausalLM(shape.config())
        finally:
            torch.set_default_dtype(old)
    return hf.eval()


def tokenizer_for(shape: Shape):
    """A word-level tokenizer filling the vocabulary (``w0 ...``, 7 special tokens)."""
    from neuronlens.models.tiny import tiny_tokenizer

    return tiny_tokenizer(n_words=shape.vocab - 7)


def load(shape: Shape, dtype: torch.dtype, *, keep_plain: bool = False, seed: int = 0):
    """``(NeuronModel, plain HF copy or None)`` of a random model of ``shape``."""
    import neuronlens as nl
    from neuronlens.models.placement import cast_floats

    hf = build_hf(shape, seed, dtype)
    raw = None
    if keep_plain:
        raw = with_attention(hf)  # eager, as the bridge runs it
        cast_floats(raw, dtype)
        raw.requires_grad_(False)
    model = nl.load_model(hf, tokenizer_for(shape), dtype=dtype, name=f"random-{shape.layers}L")
    return model, raw


def meta_model(shape: Shape):
    """A shapes-only ``device="meta"`` NeuronModel of ``shape`` in bfloat16."""
    import transformers

    import neuronlens as nl

    with torch.device("meta"):
        hf = transformers.LlamaForCausalLM(shape.config())
    return nl.load_model(hf, tokenizer_for(shape), dtype=torch.bfloat16, device="meta")


def meta_info(shape: Shape) -> dict:
    """Sites, widths and parameter counts of a meta load, next to the analytic count."""
    t0 = time.perf_counter()
    model = meta_model(shape)
    params = sum(p.numel() for p in model.hf_model.parameters())
    widths = sorted({s.width for s in model.sites})
    info = {
        "meta_params": int(params),
        "analytic_params": shape.param_count(),
        "sites": len(model.sites),
        "ffn_widths": widths,
        "n_neurons": int(model.n_neurons),
        "d_model": int(model.d_model),
        "vocab": int(model.vocab_size),
        "dtype": dtype_name(model.dtype),
        "device": str(model.device),
        "meta_load_s": round(time.perf_counter() - t0, 2),
    }
    del model
    trim()
    return info


def word_task(shape: Shape, batch: int, seq: int, n_prompt: int = N_PROMPT, seed: int = 0):
    """A binary task of random words whose rendered examples, with the prompt, are ``seq``
    tokens (``[CLS] words w3 [SEP]`` + ``n_prompt``); train and dev splits of ``batch``."""
    from neuronlens.tasks import Task

    words = seq - n_prompt - 3
    if words < 1:
        raise ValueError(f"seq {seq} leaves no room for a word after {n_prompt} prompt tokens")
    g = torch.Generator().manual_seed(seed)
    hi = shape.vocab - 7

    def make(n):
        ids = torch.randint(20, hi, (n, words), generator=g)
        return [" ".join(f"w{int(i)}" for i in row) for row in ids], [i % 2 for i in range(n)]

    return Task.from_lists(
        "cost",
        label_names=("neg", "pos"),
        template="{text} w3 {mask} .",
        verbalizer=LABEL_WORDS,
        splits={"train": make(batch), "dev": make(batch)},
        label_space="cost",
    )


def fake_prompt(model, task, n_tokens: int = N_PROMPT, seed: int = 0):
    """An untrained prompt with a verbalizer head, as ``tune_prompt`` would return it."""
    from neuronlens.prompts import PromptResult, Verbalizer, init_prompt

    g = torch.Generator().manual_seed(seed)
    head = Verbalizer(model, task.verbalizer).requires_grad_(False)
    prompt = init_prompt(model, n_tokens, seed=seed)
    prompt = prompt + 0.5 * prompt.std() * torch.randn(prompt.shape, generator=g)
    return PromptResult(
        prompt=prompt,
        head=head,
        task=task.name,
        label_space=task.label_space,
        label_names=task.label_names,
        seed=seed,
        model_name=model.name,
        model_kind=model.kind.value,
    )


def random_ids(model, batch: int, seq: int, seed: int = 0):
    from neuronlens.models import Encoded

    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(20, model.vocab_size, (batch, seq), generator=g)
    return Encoded(input_ids=ids, attention_mask=torch.ones_like(ids), token_type_ids=None)


def method_runs(model, raw, cfg: Config) -> dict[str, Callable[[], None]]:
    """The four measured calls on one configuration's data."""
    import neuronlens as nl

    task = word_task(cfg.shape, cfg.batch, cfg.seq)
    train, dev = task.load("train"), task.load("dev")
    pr = fake_prompt(model, task)
    enc = random_ids(model, cfg.batch, cfg.seq)
    b = cfg.batch
    if b < 2:
        raise ValueError("predictivity needs both classes among the dev examples: batch >= 2")
    rendered = pr.head.render(model, task, train.texts[0], None)
    got = model.encode([rendered]).input_ids.shape[1] + pr.n_tokens
    if got != cfg.seq:
        raise RuntimeError(f"examples are {got} tokens, expected {cfg.seq}")

    def plain():
        with torch.no_grad():
            raw(input_ids=enc.input_ids, attention_mask=enc.attention_mask)

    def capture():
        rm = nl.RunningMean()
        nl.capture(model, enc, rm, batch_size=b, progress=False)
        assert len(rm.sums) == len(model.sites)

    def predictivity():
        nl.predictivity(model, pr, task, dev, train=train, batch_size=b, progress=False)

    def attribution():
        nl.attribute(model, pr, task, train, n=b, batch_size=b, progress=False, include_prompt=True)

    runs = {"capture": capture, "predictivity": predictivity, "attribution": attribution}
    return ({"plain": plain} if raw is not None else {}) | runs


def interleaved(runs: dict[str, Callable[[], None]], repeats: int) -> dict[str, list[float]]:
    """Times of each run over ``repeats`` rounds, the order reversed every other round."""
    times: dict[str, list[float]] = {k: [] for k in runs}
    keys = list(runs)
    for r in range(repeats):
        for key in keys if r % 2 == 0 else keys[::-1]:
            t0 = time.perf_counter()
            runs[key]()
            times[key].append(time.perf_counter() - t0)
    return times


def measure_config(cfg: Config, repeats: int, dtype: torch.dtype) -> dict:
    """One configuration in this process: a memory (and warm-up) run of each method, then
    interleaved timed repeats. A method that raises is recorded with its error."""
    import warnings

    warnings.filterwarnings("ignore")
    torch.manual_seed(0)
    trim()
    rss0 = rss_bytes()
    t0 = time.perf_counter()
    model, raw = load(cfg.shape, dtype, keep_plain=True)
    load_s = time.perf_counter() - t0
    trim()
    rss_loaded = rss_bytes()
    runs = method_runs(model, raw, cfg)
    out: dict = {
        "config": {"shape": asdict(cfg.shape), "batch": cfg.batch, "seq": cfg.seq},
        "dtype": dtype_name(dtype),
        "threads": torch.get_num_threads(),
        "rss_baseline_bytes": rss0,
        "rss_loaded_bytes": rss_loaded,
        "weights_bytes": cfg.shape.param_count() * DTYPE_BYTES[dtype],
        "load_s": round(load_s, 3),
        "mem_delta_bytes": {},
        "errors": {},
    }
    ok = {}
    for key, fn in runs.items():
        try:
            with PeakRSS() as peak:
                fn()
            out["mem_delta_bytes"][key] = peak.delta
            ok[key] = fn
        except Exception as err:  # recorded (e.g. a bf16 dtype mismatch), the rest goes on
            out["errors"][key] = f"{type(err).__name__}: {err}"
    times = interleaved(ok, repeats)
    out["times_s"] = times
    out["median_s"] = {k: statistics.median(v) for k, v in times.items()}
    out["max_rss_bytes"] = max_rss_bytes()
    return out


def run_child(cfg: Config, repeats: int, dtype: str, timeout: float = 900) -> dict:
    """:func:`measure_config` in a fresh interpreter (clean RSS and allocator)."""
    spec = json.dumps(
        {"shape": asdict(cfg.shape), "batch": cfg.batch, "seq": cfg.seq, "repeats": repeats}
    )
    proc = subprocess.run(
        [sys.executable, __file__, "--child", spec, "--dtype", dtype],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"config": json.loads(spec), "failed": " | ".join(tail)}
    return json.loads(lines[-1].removeprefix("RESULT "))


# ---------------------------------------------------------------------------- GEMM calibration


def gemm_row_seconds(k_in: int, n_out: int, form: str, dtype: torch.dtype, rows: int) -> float:
    """Seconds per row of one weight GEMM ``W[n_out, k_in]``: ``form="fwd"`` is
    ``F.linear(x[rows, k_in], W)`` (x @ W.T), ``"bwd"`` is ``g[rows, n_out] @ W`` (what
    autograd runs for a linear layer's input gradient)."""
    g = torch.Generator().manual_seed(0)

    def rand(*size):  # drawn in place in the GEMM's dtype (no float32 copy of a big matrix)
        return torch.empty(*size, dtype=dtype).uniform_(-1, 1, generator=g)

    w = rand(n_out, k_in)
    if form == "fwd":
        x = rand(rows, k_in)

        def fn():
            return torch.nn.functional.linear(x, w)
    else:
        x = rand(rows, n_out)

        def fn():
            return x @ w

    small = k_in * n_out * rows <= 2**26
    with torch.no_grad():
        if small:
            fn()  # warm-up where it is cheap
        reps = 3 if small else 1
        best = math.inf
        for _ in range(reps):
            t0 = time.perf_counter()
            fn()
            best = min(best, time.perf_counter() - t0)
    return best / rows


def calibration_rows(k_in: int, n_out: int, form: str) -> int:
    """Rows to time a GEMM at: the scalar bf16 ``g @ W`` costs the same per row at any row
    count (memory bound), so a few rows do; ``x @ W.T`` gains from rows up to a few hundred."""
    big = k_in * n_out > 2**24
    if form == "bwd":
        return 2 if big else 8
    return 64 if big else 256


class GemmTable:
    """Measured seconds per row of weight GEMMs, keyed ``"form:in:out"``."""

    def __init__(self, dtype: torch.dtype, table: dict[str, float] | None = None) -> None:
        self.dtype = dtype
        self.table: dict[str, float] = dict(table or {})

    def row(self, k_in: int, n_out: int, form: str) -> float:
        key = f"{form}:{k_in}:{n_out}"
        if key not in self.table:
            rows = calibration_rows(k_in, n_out, form)
            self.table[key] = gemm_row_seconds(k_in, n_out, form, self.dtype, rows)
        return self.table[key]

    def has(self, k_in: int, n_out: int, form: str) -> bool:
        return f"{form}:{k_in}:{n_out}" in self.table

    def layer(self, shape: Shape, form: str) -> float:
        """Seconds per token of one layer's weight GEMMs."""
        return sum(self.row(k, n, form) for _, k, n in shape.gemms())

    def unembedding(self, shape: Shape, rows: int, backward: bool) -> float:
        """Seconds of projecting ``rows`` hidden states on the vocabulary (and back)."""
        t = rows * self.row(shape.d_model, shape.vocab, "fwd")
        if backward:
            t += rows * self.row(shape.d_model, shape.vocab, "bwd")
        return t


# ---------------------------------------------------------------------------- fitting


def nnls_fit(
    X: np.ndarray, y: np.ndarray, relative: bool = True, scale_by: np.ndarray | None = None
) -> np.ndarray:
    """Non-negative least squares ``X @ coef ~ y``; ``relative``: each row weighted by
    ``1/y`` (relative error, so small configurations count as much as large ones), or by
    ``1/scale_by`` where the error should be relative to another quantity (a total of which
    ``y`` is the fitted part)."""
    from scipy.optimize import nnls

    X, y = np.asarray(X, float), np.asarray(y, float)
    if relative:
        ref = y if scale_by is None else np.asarray(scale_by, float)
        w = 1.0 / np.maximum(np.abs(ref), 1e-12)
        Xw, yw = X * w[:, None], y * w
    else:
        Xw, yw = X, y
    scale = np.where(np.abs(Xw).max(0) > 0, np.abs(Xw).max(0), 1.0)  # column scaling
    coef, _ = nnls(Xw / scale, yw)
    return coef / scale


def fit_quality(X: np.ndarray, y: np.ndarray, coef: np.ndarray) -> dict:
    pred = np.asarray(X, float) @ coef
    rel = (pred - y) / y
    ss_res = float(((y - pred) ** 2).sum())
    ss_tot = float(((y - y.mean()) ** 2).sum()) or 1.0
    return {
        "r2": round(1 - ss_res / ss_tot, 4),
        "max_rel_err": round(float(np.abs(rel).max()), 3),
        "median_rel_err": round(float(np.median(np.abs(rel))), 3),
    }


TIME_TERMS = {
    "flops": ("ffn: L*T*d*f", "proj: L*T*d*(d+d_kv)/2", "attn: L*B*S^2*d", "per batch"),
    "gemm": (
        "gemm fwd (s)",
        "gemm bwd (s)",
        "elementwise: L*T*(f+d)",
        "attn: L*B*S^2*d",
        "per batch",
    ),
}


N_GEMM_TERMS = 2
"""The ``gemm`` model's first two terms (timed GEMM seconds) have coefficient 1, not fitted."""


def time_features(
    shape: Shape, batch: int, seq: int, method: str, model: str, gemm: GemmTable | None
) -> list[float]:
    """One row of the time model's design matrix (``model``: "flops" or "gemm")."""
    passes = PASSES[method]
    L, d, f, t = shape.layers, shape.d_model, shape.d_ffn, batch * seq * passes
    attn = L * passes * batch * seq**2 * d
    if model == "flops":
        return [L * t * d * f, L * t * d * (d + shape.d_kv) / 2, attn, passes]
    assert gemm is not None
    fwd = L * t * gemm.layer(shape, "fwd")
    bwd = L * t * gemm.layer(shape, "bwd") if method == "attribution" else 0.0
    return [fwd, bwd, L * t * (f + d), attn, passes]


def unembedding_seconds(shape: Shape, batch: int, seq: int, method: str, gemm: GemmTable) -> float:
    rows = batch * seq if FULL_LOGITS[method] else batch
    return PASSES[method] * gemm.unembedding(shape, rows, backward=method == "attribution")


def mem_features(shape: Shape, batch: int, seq: int, method: str, nbytes: int) -> list[float]:
    """Activation-peak design row (bytes): tokens x FFN width, tokens x d_model, attention
    scores, constant; attribution keeps every layer's for the backward (times L)."""
    t = batch * seq
    L = shape.layers if method == "attribution" else 1
    return [
        L * t * shape.d_ffn * nbytes,
        L * t * shape.d_model * nbytes,
        L * batch * shape.heads * seq**2 * nbytes,
        1.0,
    ]


MEM_TERMS = ("k: T*f*bytes", "m: T*d*bytes", "j: B*h*S^2*bytes", "fixed")


def logits_bytes(shape: Shape, batch: int, seq: int, method: str, nbytes: int) -> int:
    """The vocabulary projection's output (not fitted: the measured vocabulary is small)."""
    rows = batch * seq if FULL_LOGITS[method] else batch
    return rows * shape.vocab * max(nbytes, 4 if method == "attribution" else nbytes)


def state_bytes(shape: Shape, method: str, n_prompt: int = N_PROMPT) -> int:
    """Probe state: float64 per neuron per statistic (predictivity: a baseline and a count
    per read position, the prompt and the answer)."""
    stats = {"plain": 0, "capture": 2, "predictivity": 2 * (n_prompt + 1), "attribution": 1}
    return shape.layers * shape.d_ffn * 8 * stats[method]


def fit_all(results: list[dict], gemm: GemmTable, dtype: torch.dtype) -> dict:
    """Per method: the time fits (flops, gemm) and the memory fit, with their quality."""
    nbytes = DTYPE_BYTES[dtype]
    fits: dict = {}
    good = [r for r in results if "median_s" in r]
    for method in METHODS:
        rows = [r for r in good if method in r["median_s"]]
        if len(rows) < 3:
            fits[method] = {"error": f"only {len(rows)} measured configurations"}
            continue
        shapes = [
            (Shape(**r["config"]["shape"]), r["config"]["batch"], r["config"]["seq"]) for r in rows
        ]
        y = np.array([r["median_s"][method] for r in rows])
        u = np.array([unembedding_seconds(s, b, q, method, gemm) for s, b, q in shapes])
        entry: dict = {"n_configs": len(rows)}
        for model in ("flops", "gemm"):
            X = np.array([time_features(s, b, q, method, model, gemm) for s, b, q in shapes])
            if model == "flops":
                coef = nnls_fit(X, np.maximum(y - u, 1e-6))
            else:  # the weight GEMMs cost what they were timed at: fit only the rest
                fixed = X[:, :N_GEMM_TERMS].sum(1)
                rest = nnls_fit(X[:, N_GEMM_TERMS:], np.maximum(y - u - fixed, 0.0), scale_by=y)
                coef = np.concatenate([np.ones(N_GEMM_TERMS), rest])
            entry[model] = {
                "terms": list(TIME_TERMS[model]),
                "coef": [float(c) for c in coef],
                **fit_quality(X, y - u, coef),
            }
        m = np.array([r["mem_delta_bytes"].get(method, 0) for r in rows], float)
        lb = np.array([logits_bytes(s, b, q, method, nbytes) for s, b, q in shapes])
        Xm = np.array([mem_features(s, b, q, method, nbytes) for s, b, q in shapes])
        coef = nnls_fit(Xm, np.maximum(m - lb, 1.0), relative=False)
        entry["memory"] = {
            "terms": list(MEM_TERMS),
            "coef": [float(c) for c in coef],
            **fit_quality(Xm, np.maximum(m - lb, 1.0), coef),
        }
        fits[method] = entry
    # the process without weights: RSS once loaded (imports done), less the model and its
    # plain copy
    baselines = [r["rss_loaded_bytes"] - 2 * r["weights_bytes"] for r in good]
    fits["rss_baseline_bytes"] = int(statistics.median(baselines)) if baselines else 0
    return fits


# ---------------------------------------------------------------------------- prediction


def predict_seconds(
    fits: dict, shape: Shape, batch: int, seq: int, method: str, model: str, gemm: GemmTable
) -> float | None:
    """Predicted seconds of one measurement unit (``PASSES`` batches of ``batch``)."""
    f = fits.get(method, {}).get(model)
    if not f:
        return None
    x = time_features(shape, batch, seq, method, model, gemm)
    return float(np.dot(x, f["coef"])) + unembedding_seconds(shape, batch, seq, method, gemm)


def predict_peak_bytes(fits: dict, shape: Shape, batch: int, seq: int, method: str, dtype) -> dict:
    nbytes = DTYPE_BYTES[dtype]
    f = fits.get(method, {}).get("memory")
    act = float(np.dot(mem_features(shape, batch, seq, method, nbytes), f["coef"])) if f else 0.0
    act += logits_bytes(shape, batch, seq, method, nbytes)
    weights = shape.param_count() * nbytes
    state = state_bytes(shape, method)
    base = fits.get("rss_baseline_bytes", 0)
    return {
        "weights": weights,
        "state": state,
        "activations": int(act),
        "baseline": base,
        "peak": int(base + weights + state + act),
    }


def attention_memory(shape: Shape, nbytes: int) -> dict:
    """Eager attention scores per example: ``heads * S^2 * bytes`` per layer; a forward pass
    holds about one layer's (plus a float32 softmax copy), the backward keeps every layer's."""
    out = {}
    for s in ATTN_SEQS:
        per_layer = shape.heads * s * s * nbytes
        out[str(s)] = {
            "per_layer_bytes": per_layer,
            "forward_transient_bytes": per_layer + shape.heads * s * s * 4,
            "all_layers_bytes": per_layer * shape.layers,
        }
    return out


def predictions(fits: dict, gemm: GemmTable | None, dtype, metas: dict) -> dict:
    out = {}
    batches = PREDICT_EXAMPLES / PREDICT_BATCH
    for name, shape in TARGETS.items():
        row: dict = {"shape": asdict(shape), "meta": metas.get(name), "methods": {}}
        for method in METHODS:
            unit = PASSES[method]  # a unit is `unit` batches of PREDICT_BATCH examples
            per = {}
            for model in ("flops", "gemm"):
                s = (
                    None
                    if gemm is None
                    else predict_seconds(
                        fits, shape, PREDICT_BATCH, PREDICT_SEQ, method, model, gemm
                    )
                )
                per[f"s_per_1000_{model}"] = None if s is None else s * batches / unit
            mem = predict_peak_bytes(fits, shape, PREDICT_BATCH, PREDICT_SEQ, method, dtype)
            row["methods"][method] = per | {"memory": mem}
        row["attention_memory"] = attention_memory(shape, DTYPE_BYTES[dtype])
        out[name] = row
    return out


# ---------------------------------------------------------------------------- report


def _fmt_s(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "-"
    for unit, div in (("d", 86400), ("h", 3600), ("min", 60)):
        if s >= 2 * div:
            return f"{s / div:.1f} {unit}"
    return f"{s:.1f} s"


def _fmt_b(b: float) -> str:
    for unit, div in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20)):
        if b >= div:
            return f"{b / div:.1f} {unit}"
    return f"{b / 2**10:.0f} KiB"


def markdown(summary: dict) -> str:
    lines = [
        f"# Cost model ({summary['dtype']}, {summary['threads']} threads, this CPU)",
        "",
        f"Per {PREDICT_EXAMPLES:,} examples of {PREDICT_SEQ} tokens (batch {PREDICT_BATCH}); "
        "predictivity: per 1,000 examples of either pass (train baselines, dev accuracies). "
        "`flops`: the per-FLOP fit; `gemm`: the layer GEMMs timed at their real shapes.",
        "",
    ]
    if summary.get("quick"):
        lines += [
            "**Quick run**: tiny, overhead-dominated configurations, one repeat, no GEMM timing "
            "at the target shapes: these predictions only show that the pipeline works.",
            "",
        ]
    lines += [
        "| model | params (meta) | method | time flops | time gemm | peak memory | activations |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, row in summary["predictions"].items():
        meta = row.get("meta") or {}
        params = meta.get("meta_params")
        for method, p in row["methods"].items():
            mem = p["memory"]
            lines.append(f"| {name} | {params / 1e9:.2f} B |" if params else f"| {name} | - |")
            lines[-1] += (
                f" {method} | {_fmt_s(p['s_per_1000_flops'])} | {_fmt_s(p['s_per_1000_gemm'])} "
                f"| {_fmt_b(mem['peak'])} | {_fmt_b(mem['activations'])} |"
            )
    lines += [
        "",
        "Eager attention scores per example (bf16: heads x S^2 x 2 bytes per layer; "
        "attribution keeps every layer's):",
        "",
        f"| model | S | per layer | all layers | per layer, batch {PREDICT_BATCH} "
        f"| all layers, batch {PREDICT_BATCH} |",
        "|---|---|---|---|---|---|",
    ]
    for name, row in summary["predictions"].items():
        for s, a in row["attention_memory"].items():
            one, every = a["per_layer_bytes"], a["all_layers_bytes"]
            lines.append(
                f"| {name} | {s} | {_fmt_b(one)} | {_fmt_b(every)} | "
                f"{_fmt_b(one * PREDICT_BATCH)} | {_fmt_b(every * PREDICT_BATCH)} |"
            )
    table = summary.get("gemm_row_seconds") or {}
    gemm_rows = []
    for name, shape in TARGETS.items():
        keys = [(f, k, n) for _, k, n in shape.gemms() for f in ("fwd", "bwd")]
        if all(f"{f}:{k}:{n}" in table for f, k, n in keys):
            flops = 2 * sum(k * n for _, k, n in shape.gemms())
            fwd = sum(table[f"fwd:{k}:{n}"] for _, k, n in shape.gemms())
            bwd = sum(table[f"bwd:{k}:{n}"] for _, k, n in shape.gemms())
            gemm_rows.append(
                f"| {name} | {fwd * shape.layers:.3g} | {flops / fwd / 1e9:.2f} | "
                f"{bwd * shape.layers:.3g} | {flops / bwd / 1e9:.2f} |"
            )
    if gemm_rows:
        lines += [
            "",
            "Weight GEMMs at the targets' shapes (seconds per token, all layers; GFLOP/s). "
            "`x @ W.T` is the forward, `g @ W` the input gradient attribution needs:",
            "",
            "| model | x @ W.T s/token | GFLOP/s | g @ W s/token | GFLOP/s |",
            "|---|---|---|---|---|",
            *gemm_rows,
        ]
    lines += ["", "Fits (relative-error NNLS; seconds, bytes):", ""]
    lines += ["| method | model | coefficients | R^2 | median rel. err | max rel. err |"]
    lines += ["|---|---|---|---|---|---|"]
    for method in METHODS:
        f = summary["fits"].get(method, {})
        for model in ("flops", "gemm", "memory"):
            if model not in f:
                continue
            coefs = ", ".join(
                f"{t}={c:.3g}" for t, c in zip(f[model]["terms"], f[model]["coef"], strict=True)
            )
            lines.append(
                f"| {method} | {model} | {coefs} | {f[model]['r2']} | "
                f"{f[model]['median_rel_err']} | {f[model]['max_rel_err']} |"
            )
    lines += ["", "Measured configurations (median seconds):", ""]
    lines += ["| L | d | f | B x S | " + " | ".join(METHODS) + " | errors |"]
    lines += ["|---|---|---|---|" + "---|" * len(METHODS) + "---|"]
    for r in summary["measured"]:
        c = r["config"]
        sh = c["shape"]
        med = r.get("median_s", {})
        cells = " | ".join(f"{med[m]:.3f}" if m in med else "-" for m in METHODS)
        errs = "; ".join(f"{k}: {v[:80]}" for k, v in r.get("errors", {}).items())
        errs = errs or r.get("failed", "")
        lines.append(
            f"| {sh['layers']} | {sh['d_model']} | {sh['d_ffn']} | {c['batch']} x {c['seq']} "
            f"| {cells} | {errs} |"
        )
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- main


def calibrate(dtype, measured: Sequence[Config], shapes: Sequence[Shape]) -> GemmTable:
    """Time every weight GEMM the measured configurations and ``shapes`` contain."""
    table = GemmTable(dtype)
    for shape in [c.shape for c in measured] + list(shapes):
        table.layer(shape, "fwd")
        table.layer(shape, "bwd")
        table.unembedding(shape, 1, backward=True)
    return table


def run(args) -> dict:
    from neuronlens.models.placement import resolve_dtype

    dtype = resolve_dtype(args.dtype)
    t_start = time.perf_counter()
    grid = _grid(args.quick)
    measured = []
    for i, cfg in enumerate(grid):
        t0 = time.perf_counter()
        r = run_child(cfg, args.repeats, args.dtype)
        measured.append(r)
        med = {k: round(v, 3) for k, v in r.get("median_s", {}).items()}
        print(
            f"[{i + 1}/{len(grid)}] L={cfg.shape.layers} d={cfg.shape.d_model} "
            f"f={cfg.shape.d_ffn} BxS={cfg.batch}x{cfg.seq}: {med} "
            f"{r.get('errors') or r.get('failed') or ''} ({time.perf_counter() - t0:.0f} s)",
            flush=True,
        )
    t_measure = time.perf_counter() - t_start
    metas = {}
    for name, shape in TARGETS.items():
        try:
            metas[name] = meta_info(shape)
        except Exception as err:
            metas[name] = {"error": f"{type(err).__name__}: {err}"}
    t0 = time.perf_counter()
    targets = [] if args.quick else list(TARGETS.values())
    gemm = calibrate(dtype, grid, targets)
    t_gemm = time.perf_counter() - t0
    fits = fit_all(measured, gemm, dtype)
    summary = {
        "benchmark": "cost_model",
        "quick": args.quick,
        "dtype": dtype_name(dtype),
        "threads": torch.get_num_threads(),
        "repeats": args.repeats,
        "measure_s": round(t_measure, 1),
        "gemm_calibration_s": round(t_gemm, 1),
        "fits": fits,
        "gemm_row_seconds": gemm.table,
        "predictions": predictions(fits, gemm if not args.quick else None, dtype, metas),
        "measured": measured,
    }
    if args.quick:  # the GEMM table has no target shape: flop-fit predictions only
        for row in summary["predictions"].values():
            for name, p in row["methods"].items():
                p["s_per_1000_flops"] = _flops_only(fits, row["shape"], name, gemm)
    return summary


def _flops_only(fits: dict, shape_dict: dict, method: str, gemm: GemmTable) -> float | None:
    """Quick mode: the flop fit with the unembedding extrapolated per FLOP from the largest
    calibrated vocabulary GEMM (the real one is too slow to time in a quick run)."""
    f = fits.get(method, {}).get("flops")
    if not f:
        return None
    shape = Shape(**shape_dict)
    x = time_features(shape, PREDICT_BATCH, PREDICT_SEQ, method, "flops", None)
    ref = max((k for k in gemm.table if k.startswith("fwd:")), key=lambda k: int(k.split(":")[2]))
    _, k_in, n_out = ref.split(":")
    per_flop = gemm.table[ref] / (2 * int(k_in) * int(n_out))
    rows = PREDICT_BATCH * PREDICT_SEQ if FULL_LOGITS[method] else PREDICT_BATCH
    u = PASSES[method] * rows * 2 * shape.d_model * shape.vocab * per_flop
    if method == "attribution":
        bref = ref.replace("fwd:", "bwd:")
        u += (
            rows
            * 2
            * shape.d_model
            * shape.vocab
            * gemm.table.get(bref, 0)
            / (2 * int(k_in) * int(n_out))
        )
    unit = float(np.dot(x, f["coef"])) + u
    return unit * (PREDICT_EXAMPLES / PREDICT_BATCH) / PASSES[method]


def main(argv: Sequence[str] | None = None) -> dict | None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="tiny configurations, one repeat")
    ap.add_argument("--out", default="neuronlens-out/cost_model", help="output directory")
    ap.add_argument("--repeats", type=int, default=None, help="timed repeats (default 3; 1 quick)")
    ap.add_argument("--dtype", default="bf16")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child is not None:
        from neuronlens.models.placement import resolve_dtype

        spec = json.loads(args.child)
        cfg = Config(Shape(**spec["shape"]), spec["batch"], spec["seq"])
        res = measure_config(cfg, spec["repeats"], resolve_dtype(args.dtype))
        print("RESULT " + json.dumps(res), flush=True)
        return None
    if args.repeats is None:
        args.repeats = 1 if args.quick else 3
    summary = run(args)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "cost_model.json").write_text(json.dumps(summary, indent=1))
    (out / "cost_model.md").write_text(markdown(summary))
    print(markdown(summary))
    brief = {
        name: {
            m: {
                k: (round(v, 1) if isinstance(v, float) else v)
                for k, v in p.items()
                if k != "memory"
            }
            | {"peak_gib": round(p["memory"]["peak"] / 2**30, 2)}
            for m, p in row["methods"].items()
        }
        for name, row in summary["predictions"].items()
    }
    print(json.dumps({"benchmark": "cost_model", "out": str(out), "predictions": brief}))
    return summary


if __name__ == "__main__":
    main()
