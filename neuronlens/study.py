"""Whole studies from a config: prompt tuning, predictivity, suppression, pruning, a report.

A study runs these steps, saving each step's artifacts in the output folder; a finished step
is loaded, not recomputed, when the study is run again (``resume``), unless a step whose
results it uses was recomputed (``DEPENDS``):

1. ``prompts``: tune one soft prompt per seed (``prompts/seed{k}.safetensors``);
2. ``predictivity``: skill-neuron predictivity over every FFN neuron (``predictivity``);
3. ``suppression``: suppression curve, top predictive vs random neurons (``suppression.json``);
4. ``pruning``: attribution, prune to ``prune_keep`` of the neurons, re-train the prompt,
   accuracy and measured speed-up (``pruned/``, ``pruning.json``);
5. ``report.html``: the figures and tables in one standalone page.

Config (TOML; every field optional except ``model`` and ``task``)::

    model = "minilm"            # "minilm", "smollm2", a hub name or a local directory
    task = "sst2"               # a registered task name
    data_dir = "../shared/data" # else $NEURONLENS_DATA_DIR (not needed for toy_sentiment)
    train_size = 1000           # examples used for tuning and baselines
    validation = "auto"         # early stopping: "split" (the task's validation split),
                                # "sentences" (whole sentences split off train, see
                                # sentence_disjoint_split), "none"; "auto": "sentences" for
                                # tasks whose train holds phrases of its sentences (SST-2),
                                # else "split" when the task has one, else "none"
    eval_split = "dev"
    eval_size = 400
    n_tokens = 20
    readout = "auto"            # where the answer is read: "prompt" (at a soft-prompt position,
                                # as the original skill-neuron code), "mask", "last", "pool";
                                # "auto": "prompt" on causal LMs and T5 (see neuronlens.prompts)
    seeds = [0, 1]
    epochs = 1.0
    suppression_percents = [0, 1, 5, 10]
    random_repeats = 2
    positions = "auto"          # where predictivity reads: "prompt" (soft-prompt positions
                                # and the answer), "answer", "pooled" (input tokens); "auto":
                                # "pooled" for a pooled linear head, "answer" where a causal
                                # LM's prompt precedes the input, else "prompt"
    per_layer = true            # top neurons per layer (both original implementations)
    ablation = "zero"           # "zero", "mean" (train mean over all positions), "noise"
    prune_keep = 0.5
"""

from __future__ import annotations

import json
import time
import tomllib
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import neuronlens as nl
from neuronlens.analysis import SuppressionCurve, distributions, suppression_curve
from neuronlens.capture import AnswerToken, Pooled, PromptAndAnswer
from neuronlens.errors import NeuronLensError
from neuronlens.models import ModelKind
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.plots import neuron_heatmap
from neuronlens.probes import NeuronScores, attribute, predictivity
from neuronlens.prompts import PromptResult, evaluate, tune_prompt
from neuronlens.prompts.heads import make_head
from neuronlens.pruning import (
    interleaved_latency,
    keep_top,
    load_pruned,
    retrain_prompt,
    save_pruned,
)
from neuronlens.tasks import get_task, sentence_disjoint_split

STEPS = ("prompts", "predictivity", "suppression", "pruning", "report")
#: the steps whose results each step uses: recomputing one recomputes these
DEPENDS = {
    "predictivity": {"prompts"},
    "suppression": {"prompts", "predictivity"},
    "pruning": {"prompts"},
}
VALIDATION = ("auto", "split", "sentences", "none")
READOUTS = ("auto", "prompt", "mask", "last", "pool")
ABLATIONS = ("zero", "mean", "noise")
POSITIONS = ("auto", "prompt", "answer", "pooled")
#: validation examples drawn for early stopping (at most; fewer when ``eval_size`` is smaller)
MAX_VAL = 300


class ConfigError(NeuronLensError, ValueError):
    """A study config with a missing, unknown or ill-typed field."""


_TYPES = {
    "model": str,
    "task": str,
    "data_dir": (str, type(None)),
    "train_size": int,
    "validation": str,
    "eval_split": str,
    "eval_size": int,
    "n_tokens": int,
    "readout": str,
    "seeds": list,
    "epochs": (int, float),
    "lr": (int, float),
    "head_lr": (int, float),
    "batch_size": int,
    "suppression_percents": list,
    "random_repeats": int,
    "per_layer": bool,
    "positions": str,
    "ablation": str,
    "prune_keep": (int, float),
    "retrain_steps": int,
}


@dataclass
class StudyConfig:
    """What a study runs on and with which settings (see the module docstring)."""

    model: str
    task: str
    data_dir: str | None = None
    train_size: int = 1000
    validation: str = "auto"
    eval_split: str = "dev"
    eval_size: int = 400
    n_tokens: int = 20
    readout: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: float = 1.0
    lr: float = 3e-2
    head_lr: float = 1e-2
    batch_size: int = 16
    suppression_percents: list[float] = field(default_factory=lambda: [0, 1, 5, 10])
    random_repeats: int = 2
    per_layer: bool = True
    positions: str = "auto"
    ablation: str = "zero"
    prune_keep: float = 0.5
    retrain_steps: int = 30

    def __post_init__(self) -> None:
        """Every field's type and range, also for a config built directly (not from TOML)."""
        for f in fields(self):
            value, expected = getattr(self, f.name), _TYPES[f.name]
            if (isinstance(value, bool) and expected is not bool) or not isinstance(
                value, expected
            ):
                raise ConfigError(
                    f"config field {f.name!r} has {value!r} ({type(value).__name__}); "
                    f"expected {getattr(expected, '__name__', expected)}"
                )
        if self.readout not in READOUTS:
            raise ConfigError(
                f"config field 'readout' must be one of {list(READOUTS)}, got {self.readout!r}"
            )
        if self.positions not in POSITIONS:
            raise ConfigError(
                f"config field 'positions' must be one of {list(POSITIONS)}, got {self.positions!r}"
            )
        if self.ablation not in ABLATIONS:
            raise ConfigError(
                f"config field 'ablation' must be one of {list(ABLATIONS)}, got {self.ablation!r}"
            )
        if self.validation not in VALIDATION:
            raise ConfigError(
                f"config field 'validation' must be one of {list(VALIDATION)}, "
                f"got {self.validation!r}"
            )
        if not self.seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in self.seeds
        ):
            raise ConfigError("config field 'seeds' must be a non-empty list of integers")
        if not 0 < self.prune_keep <= 1:
            raise ConfigError(f"config field 'prune_keep' must be in (0, 1], got {self.prune_keep}")
        for name in ("train_size", "eval_size", "n_tokens", "batch_size", "random_repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be at least 1")
        if not all(
            isinstance(p, (int, float)) and 0 <= p <= 100 for p in self.suppression_percents
        ):
            raise ConfigError("config field 'suppression_percents' must hold numbers within 0..100")

    @classmethod
    def from_dict(cls, raw: dict) -> StudyConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        for name in ("model", "task"):
            if name not in raw:
                raise ConfigError(f"config field {name!r} is missing (it has no default)")
        return cls(**raw)  # __post_init__ checks types and ranges

    @classmethod
    def from_toml(cls, path: str | Path) -> StudyConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from err
        return cls.from_dict(raw)


DEMO = StudyConfig(
    model="minilm",
    task="toy_sentiment",
    train_size=600,
    eval_split="test",
    eval_size=200,
    n_tokens=10,
    seeds=[0, 1],
    epochs=1.0,
    suppression_percents=[0, 1, 5, 10],
    random_repeats=2,
    prune_keep=0.5,
    retrain_steps=30,
)


def load_study_model(name: str):
    if name == "minilm":
        return nl.load_minilm()
    if name == "smollm2":
        return nl.load_smollm2()
    if name.startswith("tiny:"):  # tiny random model for quick checks, e.g. "tiny:bert"
        return nl.load_model(
            tiny_hf_model(name[5:], d_model=32, heads=4, d_mlp=48), tiny_tokenizer(), name=name
        )
    return nl.load_model(name)


def study_data(cfg: StudyConfig, task) -> tuple:
    """``(train, validation, how)``: the training subset and the early-stopping data.

    ``validation`` is ``False`` for none; ``how`` says where it came from (``"split"``,
    ``"sentences"`` or ``"none"``, ``cfg.validation`` with ``"auto"`` resolved). With
    ``"sentences"`` the validation sentences and their phrases are removed from the training
    data before ``train_size`` examples are drawn.
    """
    how = cfg.validation
    if how == "auto":
        if task.train_has_phrases:
            how = "sentences"
        else:
            how = "split" if "validation" in task.splits else "none"
    if how == "split" and "validation" not in task.splits:
        raise ConfigError(
            f"validation = 'split', but task {task.name!r} has no validation split "
            f"(its splits: {list(task.splits)}); use 'sentences' or 'none'"
        )
    n_val = min(cfg.eval_size, MAX_VAL)
    full = task.load("train", data_dir=cfg.data_dir)
    if how == "sentences":
        full, val = sentence_disjoint_split(full, n_val, seed=0)
    elif how == "split":
        val = task.load("validation", data_dir=cfg.data_dir).subset(n_val, seed=0)
    elif how == "none":
        val = False
    else:  # a field changed after the config was checked
        raise ConfigError(
            f"config field 'validation' must be one of {list(VALIDATION)}, got {how!r}"
        )
    return full.subset(cfg.train_size, seed=0), val, how


def study_positions(cfg: StudyConfig, model, head):
    """The positions predictivity reads (``cfg.positions``; ``"auto"``: the soft-prompt
    positions with the answer position, but only the answer where a causal LM's prompt
    precedes the input, and the pooled input tokens for a pooled linear head)."""
    how = cfg.positions
    if how == "auto":
        if head.readout == "pool":
            how = "pooled"
        elif model.kind is ModelKind.CAUSAL_LM and head.readout != "prompt":
            how = "answer"
        else:
            how = "prompt"
    return {"prompt": PromptAndAnswer(), "answer": AnswerToken(), "pooled": Pooled()}[how]


def run_study(cfg: StudyConfig, out: str | Path, *, resume: bool = True, log=print) -> dict:
    """Run (or resume) a study; returns the summary also written to ``out/summary.json``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(asdict(cfg), indent=2))
    model = load_study_model(cfg.model)
    task = get_task(cfg.task)
    train, val, val_from = study_data(cfg, task)
    evald = task.load(cfg.eval_split, data_dir=cfg.data_dir).subset(cfg.eval_size, seed=1)
    summary: dict = {
        "model": model.name,
        "task": task.name,
        "eval_split": cfg.eval_split,
        "n_eval": len(evald),
        "validation": {"from": val_from, "n": len(val) if val else 0},
        "steps": {},
    }

    computed: set[str] = set()

    def reuse(step: str) -> bool:
        """Whether a saved result of ``step`` may be loaded: none of its inputs was recomputed."""
        return resume and not (DEPENDS[step] & computed)

    def done(step: str, seconds: float, loaded: bool) -> None:
        if not loaded:
            computed.add(step)
        summary["steps"][step] = {"seconds": round(seconds, 1), "loaded": loaded}
        log(f"[{step}] {'loaded' if loaded else 'done'} in {seconds:.1f} s")

    # 1. prompts
    t0 = time.perf_counter()
    readout = make_head(model, "auto", task, cfg.readout).readout
    prompts, loaded = [], True
    for seed in cfg.seeds:
        path = out / "prompts" / f"seed{seed}"
        if resume and path.with_suffix(".safetensors").is_file():
            saved = PromptResult.load(path, model)
            if saved.head.readout == readout:
                prompts.append(saved)
                continue
            log(f"{path}: tuned with readout {saved.head.readout!r}, not {readout!r}: re-tuning")
        loaded = False
        tuned = tune_prompt(
            model,
            task,
            train=train,
            validation=val,
            readout=cfg.readout,
            n_tokens=cfg.n_tokens,
            epochs=cfg.epochs,
            lr=cfg.lr,
            head_lr=cfg.head_lr,
            batch_size=cfg.batch_size,
            seed=seed,
        )
        tuned.save(path)
        prompts.append(tuned)
    summary["prompt_accuracy"] = {
        p.seed: evaluate(model, p, evald, task=task).accuracy for p in prompts
    }
    done("prompts", time.perf_counter() - t0, loaded)

    # 2. predictivity
    t0 = time.perf_counter()
    pred_path = out / "predictivity"
    binary = task.num_labels == 2
    if reuse("predictivity") and pred_path.with_suffix(".safetensors").is_file():
        skill = NeuronScores.load(pred_path, model)
        done("predictivity", time.perf_counter() - t0, True)
    else:
        skill = predictivity(
            model,
            prompts,
            task,
            evald,
            train=train,
            positions=study_positions(cfg, model, prompts[0].head),
            one_vs_rest=None if binary else 0,
        )
        skill.save(pred_path)
        done("predictivity", time.perf_counter() - t0, False)
    top = skill.top(percent=1)
    summary["predictivity"] = {
        "max": float(skill.flat().max()),
        "top1pct_by_layer": top.counts(),
        "mean_by_layer": skill.by_layer(),
    }

    # 3. suppression
    t0 = time.perf_counter()
    sup_path = out / "suppression.json"
    curve = None
    if reuse("suppression") and sup_path.is_file():
        try:
            curve = SuppressionCurve(**json.loads(sup_path.read_text()))
        except (TypeError, ValueError):
            log(f"{sup_path} is damaged or from an older neuronlens: recomputing it")
    if curve is not None:
        done("suppression", time.perf_counter() - t0, True)
    else:
        curve = suppression_curve(
            model,
            prompts[0],
            evald,
            skill,
            task=task,
            percents=cfg.suppression_percents,
            random_repeats=cfg.random_repeats,
            per_layer=cfg.per_layer,
            ablation=cfg.ablation,
            train=train,
        )
        sup_path.write_text(json.dumps(asdict(curve), indent=2))
        done("suppression", time.perf_counter() - t0, False)
    sup_rows = curve.rows()
    summary["suppression"] = sup_rows

    # 4. pruning
    t0 = time.perf_counter()
    prune_json = out / "pruning.json"
    if reuse("pruning") and prune_json.is_file() and (out / "pruned").is_dir():
        pruning = json.loads(prune_json.read_text())
        load_pruned(out / "pruned")  # the saved model loads
        done("pruning", time.perf_counter() - t0, True)
    else:
        attr = attribute(model, prompts[0], task, train, n=20)
        attr.save(out / "attribution")
        small = keep_top(model, attr, cfg.prune_keep)
        retuned = retrain_prompt(
            small,
            prompts[0],
            task,
            train=train,
            max_steps=cfg.retrain_steps,
            lr=cfg.lr,
            head_lr=cfg.head_lr * 0.1,
            batch_size=cfg.batch_size,
        )
        save_pruned(small, out / "pruned")
        retuned.save(out / "pruned_prompt")
        enc = model.encode([" ".join(["word"] * 100)] * 8)
        lat = interleaved_latency({"full": model, "pruned": small}, enc, prompt=prompts[0].prompt)
        speed = round(lat["full"] / lat["pruned"], 3)
        pruning = {
            "kept_ratio": small.pruning.kept_ratio,
            "accuracy_before": summary["prompt_accuracy"][prompts[0].seed],
            "accuracy_pruned_no_retrain": evaluate(small, prompts[0], evald, task=task).accuracy,
            "accuracy_pruned_retrained": evaluate(small, retuned, evald, task=task).accuracy,
            "speedup_measured": speed,
        }
        prune_json.write_text(json.dumps(pruning, indent=2))
        done("pruning", time.perf_counter() - t0, False)
    summary["pruning"] = pruning

    # 5. report
    mean_acc = sum(summary["prompt_accuracy"].values()) / len(prompts)
    figs = {
        "Skill-neuron predictivity (layer × neuron)": neuron_heatmap(skill, top_percent=1),
        "Predictivity and neuron accuracy": distributions(
            {task.name: skill}, {task.name: mean_acc}
        ).figure(),
        "Suppression: top predictive vs random neurons": curve.figure(),
    }
    write_report(out / "report.html", summary, figs)
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    log(f"report: {out / 'report.html'}")
    return summary


def write_report(path: Path, summary: dict, figures: dict) -> None:
    """One standalone HTML page: Plotly figures (JS inlined once) and the summary tables."""
    import html

    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>neuronlens report</title>",
        "<style>body{font-family:sans-serif;max-width:1100px;margin:auto}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:3px 8px}</style></head><body>",
        f"<h1>neuronlens study: {html.escape(summary['model'])} on {html.escape(summary['task'])}</h1>",
    ]
    for i, (title, fig) in enumerate(figures.items()):
        parts.append(f"<h2>{html.escape(title)}</h2>")
        parts.append(fig.to_html(full_html=False, include_plotlyjs=(i == 0)))
    for key, head in (("prompt_accuracy", ("seed", "accuracy")), ("pruning", ("", ""))):
        parts.append(f"<h2>{key.replace('_', ' ')}</h2><table>")
        if any(head):
            parts.append(f"<tr><th>{head[0]}</th><th>{head[1]}</th></tr>")
        parts += [
            f"<tr><th>{html.escape(str(k))}</th><td>{v:.4f}</td></tr>"
            if isinstance(v, float)
            else f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>"
            for k, v in summary[key].items()
        ]
        parts.append("</table>")
    rows = summary["suppression"]
    parts.append(
        "<h2>suppression</h2><table><tr>" + "".join(f"<th>{c}</th>" for c in rows[0]) + "</tr>"
    )
    parts += [
        "<tr>"
        + "".join(
            f"<td>{v:.4f}</td>" if isinstance(v, float) else f"<td>{v}</td>" for v in r.values()
        )
        + "</tr>"
        for r in rows
    ]
    parts.append("</table><h2>steps</h2><table><tr><th>step</th><th>seconds</th><th></th></tr>")
    parts += [
        f"<tr><th>{step}</th><td>{v['seconds']}</td>"
        f"<td>{'loaded from disk' if v['loaded'] else 'computed'}</td></tr>"
        for step, v in summary["steps"].items()
    ]
    parts.append("</table></body></html>")
    path.write_text("\n".join(parts))
