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
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

from neuronlens.analysis import SuppressionCurve, distributions, suppression_curve
from neuronlens.capture import AnswerToken, Pooled, PromptAndAnswer
from neuronlens.io import write_text_atomic
from neuronlens.models import ModelKind
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
from neuronlens.study.report import check_images, check_plotly_js, write_report
from neuronlens.study.steps import Step, data_id, model_id, remove_stale, run_steps
from neuronlens.tasks import get_task, sentence_disjoint_split
from neuronlens.tasks.synthetic import toy_vocabulary


def load_study_model(name: str):
    if name == "minilm":
        return load_minilm()
    if name == "smollm2":
        return load_smollm2()
    if name.startswith("tiny:"):  # tiny random model for quick checks, e.g. "tiny:bert"
        tok = tiny_tokenizer(extra_words=toy_vocabulary())  # also runs the built-in toy task
        hf = tiny_hf_model(name[5:], d_model=32, heads=4, d_mlp=48, vocab=len(tok))
        return load_model(hf, tok, name=name)
    return load_model(name)


def study_data(cfg: StudyConfig, task, eval_split: str | None = None) -> tuple:
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
        and task.splits["validation"] is task.splits.get(eval_split or cfg.eval_split)
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
    step_key: dict = field(default_factory=dict)  # the key of the step being computed


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
    the library version, the steps it uses); otherwise it is computed again, and the log and the report
    say which steps were reused and why the others were not. Every file is written
    atomically, so a study killed at any moment resumes from its last finished step.
    ``plotly_js="cdn"``: a small report that loads Plotly's JavaScript from its CDN;
    ``images="png"`` or ``"svg"``: every figure also as a still image in ``out/figures/``
    (needs kaleido)."""
    check_plotly_js(plotly_js)
    check_images(images)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    remove_stale(out)  # what a killed run left
    write_text_atomic(out / "config.json", json.dumps(asdict(cfg), indent=2))
    model = load_study_model(cfg.model)
    task = get_task(cfg.task)
    train, val, val_from = study_data(cfg, task)
    evald = task.load(cfg.eval_split, data_dir=cfg.data_dir).subset(cfg.eval_size, seed=1)
    identity = {"model": model_id(model), "data": data_id(train, val, evald)}
    run = StudyRun(cfg, out, model, task, train, val, evald, log, identity=identity)
    summary: dict = {
        "model": model.name,
        "task": task.name,
        "eval_split": cfg.eval_split,
        "n_eval": len(evald),
        "validation": {"from": val_from, "n": len(val) if val else 0},
        "steps": {},
    }
    run_steps(run, list(STUDY_STEPS), summary, resume=resume, log=log)
    figures = _figures(run, summary)
    write_report(out / "report.html", summary, figures, plotly_js=plotly_js, images=images)
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
