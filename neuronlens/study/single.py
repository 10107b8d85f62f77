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
                                # sentence_disjoint_split), "train" (rows split off train),
                                # "none"; "auto": "sentences" for tasks whose train holds
                                # phrases of its sentences (SST-2), else "split" when the
                                # task has one, else "train"
    eval_split = "dev"          # default: the task's own evaluation split (Task.eval_split)
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
    dtype = "float32"           # what the model runs in: "float32", "bfloat16", "float16"
    prune_keep = 0.5
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from neuronlens.analysis import SuppressionCurve, distributions, suppression_curve
from neuronlens.capture import AnswerToken, Pooled, PromptAndAnswer
from neuronlens.errors import NeuronLensError
from neuronlens.io import json_text, write_text_atomic
from neuronlens.models.assets import load_minilm, load_smollm2
from neuronlens.models.loading import load_model
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
from neuronlens.study.config import MAX_VAL, VALIDATION, ConfigError, StudyConfig
from neuronlens.study.records import (
    NUMBER,
    DamagedResultError,
    Opt,
    check_out,
    read_json,
    study_folder,
)
from neuronlens.study.report import check_images, check_plotly_js, write_report
from neuronlens.study.steps import Step, data_id, model_id, run_steps
from neuronlens.tasks import get_task, sentence_disjoint_split
from neuronlens.tasks.synthetic import toy_vocabulary


def load_study_model(name: str, dtype: str = "float32"):
    """The model a study config names (``minilm``, ``smollm2``, ``tiny:FAMILY``, or a hub
    name / directory), in ``dtype``."""
    if name == "minilm":
        return load_minilm(dtype=dtype)
    if name == "smollm2":
        return load_smollm2(dtype=dtype)
    if name.startswith("tiny:"):  # tiny random model for quick checks, e.g. "tiny:bert"
        tok = tiny_tokenizer(extra_words=toy_vocabulary())  # also runs the built-in toy task
        hf = tiny_hf_model(name[5:], d_model=32, heads=4, d_mlp=48, vocab=len(tok))
        return load_model(hf, tok, name=name, dtype=dtype)
    return load_model(name, dtype=dtype)


def study_data(cfg: StudyConfig, task, eval_split: str | None = None, log=print) -> tuple:
    """``(train, validation, how)``: the training subset and the early-stopping data.

    ``validation`` is ``False`` for none; ``how`` says where it came from (``"split"``,
    ``"sentences"``, ``"split off train"`` or ``"none"``, ``cfg.validation`` with ``"auto"``
    resolved; ``"train"`` and a task without a validation split under ``"auto"`` give
    ``"split off train"``). With ``"sentences"`` the validation sentences and their phrases are removed
    from the training data before ``train_size`` examples are drawn. When the task's
    validation split is the evaluation split itself (GLUE tasks whose dev set is both),
    validation is split off train instead, so early stopping never sees the test data.
    """
    how = cfg.validation
    if how == "auto":
        if task.train_has_phrases:
            how = "sentences"
        else:
            how = "split" if "validation" in task.splits else "train"
    if how == "split" and "validation" not in task.splits:
        raise ConfigError(
            f"validation = 'split', but task {task.name!r} has no validation split "
            f"(its splits: {list(task.splits)}); use 'sentences' or 'none'"
        )
    n_val = min(cfg.eval_size, MAX_VAL)
    full = task.load("train", data_dir=cfg.data_dir)
    if how == "sentences":
        full, val = sentence_disjoint_split(full, n_val, seed=0)
    elif how == "train" or (
        how == "split"
        and task.splits["validation"]
        is task.splits.get(eval_split or cfg.eval_split or task.eval_split)
    ):
        full, val = full.split_off(min(n_val, len(full) // 4), seed=0)
        how = "split off train"
    elif how == "split":
        val = task.load("validation", data_dir=cfg.data_dir).subset(n_val, seed=0)
    elif how == "none":
        val = False
    else:  # a field changed after the config was checked
        raise ConfigError(
            f"config field 'validation' must be one of {list(VALIDATION)}, got {how!r}"
        )
    return sized(full, cfg.train_size, "train_size", log), val, how


def study_positions(cfg):
    """The positions predictivity reads (``cfg.positions``): ``None`` for ``"auto"``, so
    that predictivity reads where the prompt's head decides
    (:func:`neuronlens.positions.decision_positions`, the one copy of that rule: the pooled
    input tokens for a pooled linear head, the answer where a causal LM's prompt precedes
    the input, else the soft-prompt positions and the answer)."""
    if cfg.positions == "auto":
        return None
    return {"prompt": PromptAndAnswer(), "answer": AnswerToken(), "pooled": Pooled()}[cfg.positions]


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
    step_key: dict = field(default_factory=dict)  # the key of the step being computed


def _readout(run: StudyRun) -> str:
    return make_head(run.model, "auto", run.task, run.cfg.readout).readout


def _pair(stem: str) -> list[str]:
    """The two files of a saved result (:func:`neuronlens.io.save_result`)."""
    return [f"{stem}.safetensors", f"{stem}.json"]


def _prompt_files(run: StudyRun) -> list[str]:
    return [f for s in run.cfg.seeds for f in _pair(f"prompts/seed{s}")]


def _load_prompts(run: StudyRun):
    prompts = [
        PromptResult.load(run.out / "prompts" / f"seed{s}", run.model) for s in run.cfg.seeds
    ]
    if any(p.head.readout != _readout(run) for p in prompts):
        raise DamagedResultError(
            f"saved prompts were tuned for another readout than {_readout(run)!r}"
        )
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


def load_scores(path: Path, model, method: str) -> NeuronScores:
    """Saved scores of ``method`` (a file holding another method's scores is refused)."""
    scores = NeuronScores.load(path, model)
    if scores.method != method:
        raise DamagedResultError(f"{path} holds {scores.method} scores, not {method}")
    return scores


def _load_predictivity(run: StudyRun):
    return load_scores(run.out / "predictivity", run.model, "predictivity")


def _predictivity(run: StudyRun):
    prompts = run.results["prompts"]
    skill = predictivity(
        run.model,
        prompts,
        run.task,
        run.evald,
        train=run.train,
        positions=study_positions(run.cfg),
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
            "positions_asked": skill.meta.get("positions_asked"),
            "head_decides_at": skill.meta.get("head_decides_at"),
        }
    }


#: ``suppression.json`` (a :class:`~neuronlens.analysis.SuppressionCurve`)
SUPPRESSION_SCHEMA = {
    "percents": [NUMBER],
    "top": [NUMBER],
    "random": [[NUMBER]],
    "counts": [int],
    "method": str,
    "dataset": str,
    "per_layer": bool,
    "ablation": str,
}


def _load_suppression(run: StudyRun):
    return SuppressionCurve(**read_json(run.out / "suppression.json", SUPPRESSION_SCHEMA))


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
    write_text_atomic(run.out / "suppression.json", json_text(asdict(curve), indent=2))
    return curve


#: ``pruning.json``
PRUNING_SCHEMA = {
    "kept_ratio": NUMBER,
    "accuracy_before": NUMBER,
    "accuracy_pruned_no_retrain": NUMBER,
    "accuracy_pruned_retrained": NUMBER,
    "speedup_measured": Opt(NUMBER),
}
_PRUNING_FILES = [*_pair("attribution"), "pruned", *_pair("pruned_prompt"), "pruning.json"]


def _load_pruning(run: StudyRun):
    pruning = read_json(run.out / "pruning.json", PRUNING_SCHEMA)
    small = load_pruned(run.out / "pruned")  # the saved model loads, with the saved ratio
    if small.pruning.kept_ratio != pruning["kept_ratio"]:
        raise DamagedResultError(
            f"{run.out / 'pruned'} keeps {small.pruning.kept_ratio} of the neurons, "
            f"pruning.json says {pruning['kept_ratio']}"
        )
    PromptResult.load(run.out / "pruned_prompt", small)
    load_scores(run.out / "attribution", run.model, "attribution")
    return pruning


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
    write_text_atomic(run.out / "pruning.json", json_text(pruning, indent=2))
    return pruning


_DATA = ("model", "task", "data_dir", "train_size", "validation", "eval_split", "eval_size")
STUDY_STEPS = (
    Step(
        "prompts",
        (),
        _DATA + ("n_tokens", "readout", "seeds", "epochs", "lr", "head_lr", "batch_size"),
        _prompt_files,
        _load_prompts,
        _tune_prompts,
        _prompts_summary,
    ),  # fmt: skip
    Step(
        "predictivity",
        ("prompts",),
        _DATA + ("positions",),
        lambda run: _pair("predictivity"),
        _load_predictivity,
        _predictivity,
        _predictivity_summary,
    ),  # fmt: skip
    Step(
        "suppression",
        ("prompts", "predictivity"),
        _DATA + ("suppression_percents", "random_repeats", "per_layer", "ablation"),
        lambda run: ["suppression.json"],
        _load_suppression,
        _suppression,
        lambda run, curve: {"suppression": curve.rows()},
    ),  # fmt: skip
    Step(
        "pruning",
        ("prompts",),
        _DATA + ("prune_keep", "retrain_steps", "lr", "head_lr", "batch_size"),
        lambda run: _PRUNING_FILES,
        _load_pruning,
        _pruning,
        lambda run, p: {"pruning": p},
    ),  # fmt: skip
)


def run_study(
    cfg: StudyConfig,
    out: str | Path,
    *,
    resume: bool = True,
    log=print,
    plotly_js: str = "inline",
    images: str | None = None,
) -> dict:
    """Run (or resume) a study; returns the summary also written to ``out/summary.json``.

    Each step of :data:`STUDY_STEPS` is reused from ``out`` only when everything that made
    it is unchanged (:mod:`neuronlens.study.steps`: its config fields, the model, the data,
    the library version, the steps it uses) and every file it wrote is there unchanged
    (:mod:`neuronlens.study.records`: sizes and hashes, schemas); otherwise it is computed
    again, and the log and the report say which steps were reused and why the others were
    not. A study killed at any moment resumes from its last finished step. The folder is
    locked while the study runs (a second study on it is refused); a config that cannot run
    is refused before the folder is touched.
    ``plotly_js="cdn"``: a small report that loads Plotly's JavaScript from its CDN;
    ``images="png"`` or ``"svg"``: every figure also as a still image in ``out/figures/``
    (needs kaleido)."""
    check_plotly_js(plotly_js)
    check_images(images)
    out = check_out(out)
    # everything that can refuse the config runs before the folder is touched
    model = load_study_model(cfg.model, cfg.dtype)
    task = study_task(cfg.task)
    eval_split = cfg.eval_split or task.eval_split
    train, val, val_from = study_data(cfg, task, eval_split, log=log)
    evald = sized(
        task.load(eval_split, data_dir=cfg.data_dir), cfg.eval_size, "eval_size", log, seed=1
    )
    identity = {"model": model_id(model), "data": data_id(train, val, evald)}
    summary: dict = {
        "model": model.name,
        "task": task.name,
        "eval_split": eval_split,
        "n_train": len(train),
        "n_eval": len(evald),
        "sizes": {"train_size": {"asked": cfg.train_size, "used": len(train)},
                  "eval_size": {"asked": cfg.eval_size, "used": len(evald)}},
        "validation": {"from": val_from, "n": len(val) if val else 0},
        "steps": {},
    }  # fmt: skip
    with study_folder(out, log):
        write_text_atomic(out / "config.json", json_text(asdict(cfg), indent=2))
        run = StudyRun(cfg, out, model, task, train, val, evald, log, identity=identity)
        run_steps(run, list(STUDY_STEPS), summary, resume=resume, log=log)
        figures = _figures(run, summary)
        write_report(out / "report.html", summary, figures, plotly_js=plotly_js, images=images)
        write_text_atomic(out / "summary.json", json_text(summary, indent=2))
    log(f"report: {out / 'report.html'}")
    return summary


def study_task(name: str):
    """A registered task, or a :class:`ConfigError` that names the config's field."""
    try:
        return get_task(name)
    except NeuronLensError as err:
        raise ConfigError(f"config task {name!r}: {err}") from err


def sized(data, n: int, field: str, log, seed: int = 0):
    """A seeded subset of ``n`` examples; when the split has fewer, all of them, and the log
    says how many were used (the summary reports it too)."""
    if n > len(data):
        log(f"{field} = {n}, but {getattr(data, 'task', 'the data')} {getattr(data, 'split', '')} "
            f"has {len(data)} examples: using {len(data)}")  # fmt: skip
    return data.subset(n, seed=seed)


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
