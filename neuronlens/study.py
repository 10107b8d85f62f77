"""Whole studies from a config: prompt tuning, predictivity, suppression, pruning, a report.

A study runs these steps, saving each step's artifacts in the output folder; a finished step
is loaded, not recomputed, when the study is run again (``resume``), unless a step whose
results it uses was recomputed (each :class:`Step` of :data:`STUDY_STEPS` names them):

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

import hashlib
import json
import shutil
import time
import tomllib
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import neuronlens as nl
from neuronlens.analysis import SuppressionCurve, distributions, suppression_curve
from neuronlens.capture import AnswerToken, Pooled, PromptAndAnswer
from neuronlens.errors import NeuronLensError
from neuronlens.io import write_text_atomic
from neuronlens.models import ModelKind
from neuronlens.models.tiny import tiny_hf_model, tiny_tokenizer
from neuronlens.plots import neuron_heatmap
from neuronlens.probes import NeuronScores, attribute, predictivity
from neuronlens.prompts import PromptResult, evaluate, tune_prompt
from neuronlens.prompts.heads import make_head
from neuronlens.prompts.tuning import TrainingSettings
from neuronlens.pruning import (
    interleaved_latency,
    keep_top,
    load_pruned,
    retrain_prompt,
    save_pruned,
)
from neuronlens.tasks import get_task, sentence_disjoint_split

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
    epochs: float = TrainingSettings.epochs
    lr: float = TrainingSettings.lr
    head_lr: float = TrainingSettings.head_lr
    batch_size: int = TrainingSettings.batch_size
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

        self.training()  # the training fields, checked as tune_prompt checks them

    def training(self) -> TrainingSettings:
        """The prompt-training settings of this study (one set of defaults with tune_prompt)."""
        try:
            return TrainingSettings(
                epochs=self.epochs, lr=self.lr, head_lr=self.head_lr, batch_size=self.batch_size
            )
        except NeuronLensError as err:
            raise ConfigError(f"config: {err}") from err

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


@dataclass
class StudyRun:
    """What the steps of one study share: its config, folder, model, data and results."""

    cfg: StudyConfig
    out: Path
    model: object
    task: object
    train: object
    val: object
    evald: object
    log: Callable[[str], None] = print
    results: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)


@dataclass(frozen=True)
class Step:
    """One step of a study.

    ``uses``: the earlier steps whose results it takes (recomputing one recomputes this);
    ``inputs``: the config fields it reads; ``load(run)``: its saved result, or ``None``
    when there is none to reuse; ``compute(run)``: compute and save it; ``summary(run,
    value)``: its entries of ``summary.json``."""

    name: str
    uses: tuple[str, ...]
    inputs: tuple[str, ...]
    load: Callable[[StudyRun], object]
    compute: Callable[[StudyRun], object]
    summary: Callable[[StudyRun, object], dict]


def _readout(run: StudyRun) -> str:
    return make_head(run.model, "auto", run.task, run.cfg.readout).readout


def _load_prompts(run: StudyRun):
    paths = [run.out / "prompts" / f"seed{s}" for s in run.cfg.seeds]
    if not all(p.with_suffix(".safetensors").is_file() for p in paths):
        return None
    prompts = [PromptResult.load(p, run.model) for p in paths]
    if any(p.head.readout != _readout(run) for p in prompts):
        run.log(f"saved prompts were tuned with another readout than {_readout(run)!r}: re-tuning")
        return None
    return prompts


def _tune_prompts(run: StudyRun):
    prompts = []
    for seed in run.cfg.seeds:
        tuned = tune_prompt(
            run.model,
            run.task,
            train=run.train,
            validation=run.val,
            readout=run.cfg.readout,
            n_tokens=run.cfg.n_tokens,
            settings=run.cfg.training(),
            seed=seed,
        )
        tuned.save(run.out / "prompts" / f"seed{seed}")
        prompts.append(tuned)
    return prompts


def _prompts_summary(run: StudyRun, prompts) -> dict:
    acc = {p.seed: evaluate(run.model, p, run.evald, task=run.task).accuracy for p in prompts}
    return {"prompt_accuracy": acc}


def _load_predictivity(run: StudyRun):
    path = run.out / "predictivity"
    return (
        NeuronScores.load(path, run.model) if path.with_suffix(".safetensors").is_file() else None
    )


def _predictivity(run: StudyRun):
    prompts = run.results["prompts"]
    skill = predictivity(
        run.model,
        prompts,
        run.task,
        run.evald,
        train=run.train,
        positions=study_positions(run.cfg, run.model, prompts[0].head),
        one_vs_rest=None if run.task.num_labels == 2 else 0,
    )
    skill.save(run.out / "predictivity")
    return skill


def _predictivity_summary(run: StudyRun, skill) -> dict:
    return {
        "predictivity": {
            "max": float(skill.flat().max()),
            "top1pct_by_layer": skill.top(percent=1, per_layer=False).counts(),
            "mean_by_layer": skill.by_layer(),
            "positions": skill.meta.get("positions"),
        }
    }


def _load_suppression(run: StudyRun):
    path = run.out / "suppression.json"
    if not path.is_file():
        return None
    try:
        return SuppressionCurve(**json.loads(path.read_text()))
    except (TypeError, ValueError):
        run.log(f"{path} is damaged or from an older neuronlens: recomputing it")
        return None


def _suppression(run: StudyRun):
    cfg = run.cfg
    curve = suppression_curve(
        run.model,
        run.results["prompts"][0],
        run.evald,
        run.results["predictivity"],
        task=run.task,
        percents=cfg.suppression_percents,
        random_repeats=cfg.random_repeats,
        per_layer=cfg.per_layer,
        ablation=cfg.ablation,
        train=run.train,
    )
    write_text_atomic(run.out / "suppression.json", json.dumps(asdict(curve), indent=2))
    return curve


def _load_pruning(run: StudyRun):
    path = run.out / "pruning.json"
    if not (path.is_file() and (run.out / "pruned").is_dir()):
        return None
    load_pruned(run.out / "pruned")  # the saved model loads
    return json.loads(path.read_text())


def _pruning(run: StudyRun):
    cfg, model, tuned = run.cfg, run.model, run.results["prompts"][0]
    attr = attribute(model, tuned, run.task, run.train, n=20)
    attr.save(run.out / "attribution")
    small = keep_top(model, attr, cfg.prune_keep)
    retrain = cfg.training()
    retuned = retrain_prompt(
        small, tuned, run.task, train=run.train, max_steps=cfg.retrain_steps,
        lr=retrain.lr, head_lr=retrain.head_lr * 0.1, batch_size=retrain.batch_size,
    )  # fmt: skip
    save_pruned(small, run.out / "pruned")
    retuned.save(run.out / "pruned_prompt")
    enc = model.encode([" ".join(["word"] * 100)] * 8)
    lat = interleaved_latency({"full": model, "pruned": small}, enc, prompt=tuned.prompt)
    pruning = {
        "kept_ratio": small.pruning.kept_ratio,
        "accuracy_before": evaluate(model, tuned, run.evald, task=run.task).accuracy,
        "accuracy_pruned_no_retrain": evaluate(small, tuned, run.evald, task=run.task).accuracy,
        "accuracy_pruned_retrained": evaluate(small, retuned, run.evald, task=run.task).accuracy,
        "speedup_measured": round(lat["full"] / lat["pruned"], 3),
    }
    write_text_atomic(run.out / "pruning.json", json.dumps(pruning, indent=2))
    return pruning


_DATA = ("model", "task", "data_dir", "train_size", "validation", "eval_split", "eval_size")
STUDY_STEPS = (
    Step(
        "prompts",
        (),
        _DATA + ("n_tokens", "readout", "seeds", "epochs", "lr", "head_lr", "batch_size"),
        _load_prompts,
        _tune_prompts,
        _prompts_summary,
    ),  # fmt: skip
    Step(
        "predictivity",
        ("prompts",),
        _DATA + ("positions",),
        _load_predictivity,
        _predictivity,
        _predictivity_summary,
    ),  # fmt: skip
    Step(
        "suppression",
        ("prompts", "predictivity"),
        _DATA + ("suppression_percents", "random_repeats", "per_layer", "ablation"),
        _load_suppression,
        _suppression,
        lambda run, curve: {"suppression": curve.rows()},
    ),  # fmt: skip
    Step(
        "pruning",
        ("prompts",),
        _DATA + ("prune_keep", "retrain_steps", "lr", "head_lr", "batch_size"),
        _load_pruning,
        _pruning,
        lambda run, p: {"pruning": p},
    ),  # fmt: skip
)


def _digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _data_id(*splits) -> str:
    """A fingerprint of the examples (texts, second texts, labels) of the given splits."""
    rows = [
        None if d is False or d is None else [list(d.texts), list(d.texts_b or ()), list(d.labels)]
        for d in splits
    ]
    return _digest(rows)


def _model_id(model) -> dict:
    """What identifies the model: name, sites and widths, and a fingerprint of its weights."""
    emb = model.input_embeddings.weight[:256].detach().float().cpu().numpy().tobytes()
    return {
        "name": model.name,
        "widths": {s.name: s.width for s in model.sites},
        "weights": hashlib.sha256(emb).hexdigest()[:16],
    }


def _step_key(run: StudyRun, step: Step, keys: dict[str, dict]) -> dict:
    """Everything that made a step's result: the config fields it reads, the model, the
    data, the library version, and the keys of the steps whose results it uses."""
    return {
        "config": {f: getattr(run.cfg, f) for f in step.inputs},
        "model": run.identity["model"],
        "data": run.identity["data"],
        "neuronlens": nl.__version__,
        "uses": {u: _digest(keys[u]) for u in step.uses},
    }


def _why_not(saved: dict | None, key: dict) -> str | None:
    """``None`` when a saved result may be reused, else why not (the changed inputs)."""
    if saved is None:
        return "no finished result"
    if saved == key:
        return None
    changed = [f for f in key["config"] if saved.get("config", {}).get(f) != key["config"][f]]
    changed += [k for k in ("model", "data", "neuronlens") if saved.get(k) != key[k]]
    changed += [
        f"results of {u}" for u in key["uses"] if saved.get("uses", {}).get(u) != key["uses"][u]
    ]
    return "changed: " + ", ".join(changed or ["format"])


def _run_step(run: StudyRun, step: Step, key: dict, resume: bool):
    """``(value, loaded, why)``: the saved result when its key matches, else computed (and
    its key written last, so a step killed before the end counts as unfinished)."""
    key_file = run.out / "steps" / f"{step.name}.json"
    why = "--fresh"
    if resume:
        saved = json.loads(key_file.read_text()) if key_file.is_file() else None
        why = _why_not(saved, key)
        if why is None:
            value = step.load(run)
            if value is not None:
                return value, True, None
            why = "saved result missing or unreadable"
    value = step.compute(run)
    write_text_atomic(key_file, json.dumps(key, indent=2, sort_keys=True, default=str))
    return value, False, why


def run_study(cfg: StudyConfig, out: str | Path, *, resume: bool = True, log=print) -> dict:
    """Run (or resume) a study; returns the summary also written to ``out/summary.json``.

    Each step of :data:`STUDY_STEPS` is reused from ``out`` only when everything that made
    it is unchanged (:func:`_step_key`: its config fields, the model, the data, the library
    version, the steps it uses); otherwise it is computed again, and the log and the report
    say which steps were reused and why the others were not. Every file is written
    atomically, so a study killed at any moment resumes from its last finished step."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    for stale in [*out.rglob(".*.tmp-*"), *out.rglob(".*.old-*")]:  # left by a killed run
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()
    write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=2))
    model = load_study_model(cfg.model)
    task = get_task(cfg.task)
    train, val, val_from = study_data(cfg, task)
    evald = task.load(cfg.eval_split, data_dir=cfg.data_dir).subset(cfg.eval_size, seed=1)
    identity = {"model": _model_id(model), "data": _data_id(train, val, evald)}
    run = StudyRun(cfg, out, model, task, train, val, evald, log, identity=identity)
    summary: dict = {
        "model": model.name,
        "task": task.name,
        "eval_split": cfg.eval_split,
        "n_eval": len(evald),
        "validation": {"from": val_from, "n": len(val) if val else 0},
        "steps": {},
    }
    keys: dict[str, dict] = {}
    for i, step in enumerate(STUDY_STEPS, start=1):
        log(f"[{step.name}] step {i} of {len(STUDY_STEPS)} ...")
        t0 = time.perf_counter()
        keys[step.name] = _step_key(run, step, keys)
        value, loaded, why = _run_step(run, step, keys[step.name], resume)
        run.results[step.name] = value
        summary.update(step.summary(run, value))
        seconds = time.perf_counter() - t0
        summary["steps"][step.name] = {"seconds": round(seconds, 1), "loaded": loaded, "why": why}
        done = "loaded (unchanged)" if loaded else f"computed ({why})"
        log(f"[{step.name}] {done} in {seconds:.1f} s")
    write_report(out / "report.html", summary, _figures(run, summary))
    write_text_atomic(out / "summary.json", json.dumps(summary, indent=2, default=str))
    log(f"report: {out / 'report.html'}")
    return summary


def _figures(run: StudyRun, summary: dict) -> dict:
    skill, name = run.results["predictivity"], run.task.name
    accs = summary["prompt_accuracy"].values()
    return {
        "Skill-neuron predictivity (layer × neuron)": neuron_heatmap(skill, top_percent=1),
        "Predictivity and neuron accuracy": distributions(
            {name: skill}, {name: sum(accs) / len(accs)}
        ).figure(),
        "Suppression: top predictive vs random neurons": run.results["suppression"].figure(),
    }


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
    write_text_atomic(path, "\n".join(parts))
