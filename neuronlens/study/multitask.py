"""The robustness paper's whole study over several tasks and models, as one command.

For each model of a :class:`~neuronlens.study.config.MultiTaskConfig`:

1. a prompt per task and seed;
2. accuracy on each task's eval split and on its adversarial counterpart, mean ± sample sd over
   the seeds (the paper's Table 1);
3. predictivity per task, and on the adversarial set with the clean train baselines, and the
   Spearman rho of the two maps;
4. prompt transferability within each label space, absolute and relative (Fig. 1, 7);
5. task specificity: Spearman per layer then averaged over layers, and its z-normalised
   matrix (Fig. 3, 8); predictivity and neuron-accuracy distributions under the model's
   accuracy (Fig. 2, 9);
6. suppression curves per task, top neurons against random controls (Fig. 4, 10);
7. cross suppression clean <-> adversarial (Fig. 6).

Each step is reused only when everything that made it is unchanged
(:mod:`neuronlens.study.steps`); ``report.html`` and ``summary.json`` cover every model.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from neuronlens.analysis import (
    CrossSuppression,
    SuppressionCurve,
    TaskSpecificity,
    Transferability,
    cross_suppression,
    distributions,
    suppression_curve,
    task_specificity,
    transferability,
)
from neuronlens.io import json_text, write_text_atomic
from neuronlens.plots import sample_sd
from neuronlens.probes import NeuronScores, predictivity
from neuronlens.progress import tqdm
from neuronlens.prompts import PromptResult, evaluate, tune_prompt
from neuronlens.study.config import MAX_VAL, ConfigError, MultiTaskConfig, TaskSpec
from neuronlens.study.records import (
    NUMBER,
    MapOf,
    Opt,
    check_out,
    finish_part,
    part_done,
    read_json,
    study_folder,
)
from neuronlens.study.report import check_images, check_plotly_js, steps_rows, write_page
from neuronlens.study.single import (
    SUPPRESSION_SCHEMA,
    load_scores,
    load_study_model,
    sized,
    study_data,
    study_positions,
)
from neuronlens.study.steps import Step, data_id, digest, model_id, run_steps
from neuronlens.study.tables import multitask_markdown
from neuronlens.tasks import get_task


@dataclass
class TaskSplits:
    """One task's data in a study: train, validation, eval, and the adversarial set."""

    spec: TaskSpec
    task: object
    train: object
    val: object
    evald: object
    adv: object | None
    how: dict

    def splits(self) -> tuple:
        return self.train, self.val, self.evald, self.adv


def task_splits(cfg: MultiTaskConfig, spec: TaskSpec, log=print) -> TaskSplits:
    """A task's splits (its eval split: the spec's, else the task's own). When
    ``train_split == eval_split`` the split is divided: eval examples first, then
    validation, the rest for training, none in two parts; a size larger than the data is
    logged and the number used reported."""
    try:
        task = get_task(spec.name)
        adv_task = None if spec.adversarial is None else get_task(spec.adversarial)
    except Exception as err:  # an unknown task name
        raise ConfigError(f"config task {spec.name!r}: {err}") from err
    if adv_task is not None and adv_task.label_space != task.label_space:
        raise ConfigError(
            f"config task {spec.name!r}: its adversarial set {spec.adversarial!r} has label "
            f"space {adv_task.label_space!r}, not {task.label_space!r}"
        )
    eval_split = spec.eval_split or task.eval_split
    if spec.train_split == eval_split:
        full = task.load(eval_split, data_dir=cfg.data_dir)
        if cfg.eval_size > len(full) // 2:
            log(f"eval_size = {cfg.eval_size}, but {spec.name} {eval_split} is divided into "
                f"train and eval parts: using {len(full) // 2} eval examples")  # fmt: skip
        rest, evald = full.split_off(min(cfg.eval_size, len(full) // 2), seed=1)
        rest, val = rest.split_off(min(MAX_VAL, len(rest) // 4), seed=2)
        train = sized(rest, cfg.train_size, "train_size", log)
        how = {"divided": eval_split, "validation": "split off the same split"}
    else:
        train, val, val_from = study_data(cfg, task, eval_split, log=log)
        evald = sized(task.load(eval_split, data_dir=cfg.data_dir), cfg.eval_size, "eval_size",
                      log, seed=1)  # fmt: skip
        how = {"divided": None, "validation": val_from}
    how["eval_split"] = eval_split
    adv = None
    if adv_task is not None:
        adv = adv_task.load("dev", data_dir=cfg.data_dir)
    how.update(n_train=len(train), n_val=len(val) if val else 0, n_eval=len(evald),
               train_size=cfg.train_size, eval_size=cfg.eval_size)  # fmt: skip
    return TaskSplits(spec, task, train, val, evald, adv, how)


@dataclass
class MultiRun:
    """What the steps of one model share."""

    cfg: MultiTaskConfig
    out: Path
    model: object
    tasks: dict[str, TaskSplits]
    log: object = print
    results: dict = field(default_factory=dict)
    identity: dict = field(default_factory=dict)
    step_key: dict = field(default_factory=dict)  # the key of the step being computed


_DATA = ("data_dir", "train_size", "validation", "eval_size")
_TUNE = _DATA + ("n_tokens", "readout", "seeds", "epochs", "lr", "head_lr", "batch_size")


def _prompt_steps(name: str) -> Step:
    def stem(seed):
        return f"prompts/{name}/seed{seed}"

    def files(run):
        return [f"{stem(s)}.{ext}" for s in run.cfg.seeds for ext in ("safetensors", "json")]

    def load(run):
        return [PromptResult.load(run.out / stem(s), run.model) for s in run.cfg.seeds]

    def compute(run):
        """Tune each seed's prompt; a seed finished by an interrupted run with the same key
        (every input but the list of seeds) and unchanged files is loaded instead."""
        ts = run.tasks[name]
        key = dict(run.step_key, config={k: v for k, v in run.step_key["config"].items()
                                         if k != "seeds"})  # fmt: skip
        prompts = []
        for seed in run.cfg.seeds:
            done = run.out / f"{stem(seed)}.key.json"
            mine = [f"{stem(seed)}.safetensors", f"{stem(seed)}.json"]
            if part_done(run.out, done, digest(key)):
                prompts.append(PromptResult.load(run.out / stem(seed), run.model))
                run.log(f"[prompts/{name}] seed {seed}: reused (finished earlier, same inputs)")
                continue
            if done.exists():
                done.unlink()  # this seed is being written again
            tuned = tune_prompt(
                run.model, ts.task, train=ts.train, validation=ts.val, readout=run.cfg.readout,
                n_tokens=run.cfg.n_tokens, settings=run.cfg.training(), seed=seed,
            )  # fmt: skip
            tuned.save(run.out / stem(seed))
            finish_part(run.out, done, digest(key), mine)  # after the prompt's files
            prompts.append(tuned)
        return prompts

    return Step(f"prompts/{name}", (), _TUNE, files, load, compute, lambda run, v: {},
                {"task": name})  # fmt: skip


def _json_step(name, uses, inputs, compute, schema, load_as=None, extra=None) -> Step:
    """A step whose result is saved as ``{name}.json`` (checked against ``schema`` when read
    back; ``load_as`` rebuilds an object)."""
    rel = f"{name.replace('/', '--')}.json"

    def load(run):
        raw = read_json(run.out / rel, schema)
        return load_as(raw) if load_as else raw

    def run_compute(run):
        value = compute(run)
        text = json_text(_jsonable(value), indent=2)
        write_text_atomic(run.out / rel, text)
        raw = json.loads(text)  # as a later run reads it back
        return load_as(raw) if load_as else raw

    return Step(name, uses, inputs, lambda run: [rel], load, run_compute, lambda run, v: {},
                extra or {})  # fmt: skip


def _jsonable(value):
    if hasattr(value, "__dataclass_fields__"):
        value = asdict(value)
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def _accuracy(run) -> dict:
    sets = [(name, kind, data) for name, ts in run.tasks.items()
            for kind, data in (("clean", ts.evald), ("adversarial", ts.adv))]  # fmt: skip
    bar = tqdm(total=len(run.cfg.seeds) * sum(d is not None for *_, d in sets), desc="accuracy")
    out: dict = {name: {"clean": None, "adversarial": None} for name in run.tasks}
    for name, kind, data in sets:
        if data is None:
            continue
        out[name][kind] = []
        for p in run.results[f"prompts/{name}"]:
            out[name][kind].append(evaluate(run.model, p, data, task=run.tasks[name].task).accuracy)
            bar.update()
    bar.close()
    return out


def _predictivity_step(name: str) -> Step:
    def stems(run):
        return [f"scores/{name}"] + (
            [f"scores/{name}-adv"] if run.tasks[name].adv is not None else []
        )

    def files(run):
        return [f"{st}.{ext}" for st in stems(run) for ext in ("safetensors", "json")]

    def load(run):
        clean, *adv = [load_scores(run.out / st, run.model, "predictivity") for st in stems(run)]
        return clean, (adv[0] if adv else None)

    def compute(run):
        ts, prompts = run.tasks[name], run.results[f"prompts/{name}"]
        positions = study_positions(run.cfg)
        binary = None if ts.task.num_labels == 2 else 0
        clean = predictivity(run.model, prompts, ts.task, ts.evald, train=ts.train,
                             positions=positions, one_vs_rest=binary)  # fmt: skip
        adv = None
        if ts.adv is not None:  # the clean baselines, at the positions they were read
            adv = predictivity(run.model, prompts, ts.task, ts.adv, baselines=clean,
                               positions=positions, one_vs_rest=binary)  # fmt: skip
            adv.save(run.out / f"scores/{name}-adv")
        clean.save(run.out / f"scores/{name}")
        return clean, adv

    return Step(f"predictivity/{name}", (f"prompts/{name}",), _DATA + ("positions",), files,
                load, compute, lambda run, v: {}, {"task": name})  # fmt: skip


def _transfer(run) -> dict:
    """Each task's prompt on every task of its label space (and the adversarial sets),
    averaged over the seeds; relative to the target task's own prompt."""
    targets = {}
    for name, ts in run.tasks.items():
        targets[name] = (ts.task, ts.evald)
        if ts.adv is not None:
            targets[ts.spec.adversarial] = (ts.task, ts.adv)
    acc = run.results["accuracy"]

    def known(i):  # each prompt on its own task's eval and adversarial data: measured already
        out = {}
        for name, ts in run.tasks.items():
            out[name] = {name: acc[name]["clean"][i]}
            if ts.adv is not None:
                out[name][ts.spec.adversarial] = acc[name]["adversarial"][i]
        return out

    per_seed = [
        transferability(
            run.model,
            {n: run.results[f"prompts/{n}"][i] for n in run.tasks},
            targets,
            known=known(i),
        )  # fmt: skip
        for i in range(len(run.cfg.seeds))
    ]

    def mean(kind):
        """Per source and target, the mean over the seeds that have the entry (a relative
        entry is missing where the target's own prompt scored 0)."""
        rows = {}
        for src in per_seed[0].absolute:
            have = [getattr(p, kind).get(src, {}) for p in per_seed]
            cols = sorted({t for row in have for t in row})
            rows[src] = {t: float(np.mean([row[t] for row in have if t in row])) for t in cols}
        return rows

    return Transferability(mean("absolute"), mean("relative"))


def _specificity(run) -> TaskSpecificity:
    maps = {}
    for name, ts in run.tasks.items():
        clean, adv = run.results[f"predictivity/{name}"]
        maps[name] = clean
        if adv is not None:
            maps[ts.spec.adversarial] = adv
    return task_specificity(maps)  # two datasets at least: the config checks it


def _suppression_step(name: str) -> Step:
    def compute(run):
        ts = run.tasks[name]
        clean, _ = run.results[f"predictivity/{name}"]
        cfg = run.cfg
        return suppression_curve(
            run.model, run.results[f"prompts/{name}"][0], ts.evald, clean, task=ts.task,
            percents=cfg.suppression_percents, random_repeats=cfg.random_repeats,
            per_layer=cfg.per_layer, ablation=cfg.ablation, train=ts.train, progress=True,
        )  # fmt: skip

    inputs = _DATA + ("suppression_percents", "random_repeats", "per_layer", "ablation")
    uses = (f"prompts/{name}", f"predictivity/{name}")
    return _json_step(f"suppression/{name}", uses, inputs, compute, SUPPRESSION_SCHEMA,
                      lambda raw: SuppressionCurve(**raw), {"task": name})  # fmt: skip


def _cross_step(name: str) -> Step:
    def compute(run):
        ts = run.tasks[name]
        clean, adv = run.results[f"predictivity/{name}"]
        p = run.cfg.cross_percent
        top = clean.top(percent=p, per_layer=True)
        sets = {name: top, ts.spec.adversarial: adv.top(percent=p, per_layer=True),
                "random": top.random_control(0)}  # fmt: skip
        data = {name: ts.evald, ts.spec.adversarial: ts.adv}
        return cross_suppression(run.model, run.results[f"prompts/{name}"][0], data, sets,
                                 task=ts.task, ablation=run.cfg.ablation, train=ts.train)  # fmt: skip

    uses = (f"prompts/{name}", f"predictivity/{name}")
    return _json_step(f"cross/{name}", uses, _DATA + ("cross_percent", "ablation"), compute,
                      CROSS_SCHEMA, lambda raw: CrossSuppression(**raw), {"task": name})  # fmt: skip


def study_steps(run: MultiRun) -> list[Step]:
    """The steps of one model, in order."""
    names = list(run.tasks)
    specs = {n: asdict(ts.spec) for n, ts in run.tasks.items()}
    prompts = tuple(f"prompts/{n}" for n in names)
    preds = tuple(f"predictivity/{n}" for n in names)
    steps = [_prompt_steps(n) for n in names]
    steps.append(_json_step("accuracy", prompts, _DATA, _accuracy, ACCURACY_SCHEMA,
                            extra={"tasks": specs}))  # fmt: skip
    steps += [_predictivity_step(n) for n in names]
    steps.append(_json_step("transfer", prompts + ("accuracy",), _DATA, _transfer,
                            TRANSFER_SCHEMA, lambda raw: Transferability(**raw),
                            {"tasks": specs}))  # fmt: skip
    steps.append(_json_step("specificity", preds, _DATA + ("positions",), _specificity,
                            SPECIFICITY_SCHEMA, _load_specificity, {"tasks": specs}))  # fmt: skip
    steps += [_suppression_step(n) for n in names]
    steps += [_cross_step(n) for n in names if run.tasks[n].adv is not None]
    return steps


# the schemas of the JSON results (checked when read back); ``None`` stands for a number
# that was not finite (strict JSON)
ACCURACY_SCHEMA = MapOf({"clean": Opt([NUMBER]), "adversarial": Opt([NUMBER])})
TRANSFER_SCHEMA = {"absolute": MapOf(MapOf(Opt(NUMBER))), "relative": MapOf(MapOf(Opt(NUMBER)))}
SPECIFICITY_SCHEMA = {
    "names": [str],
    "rho": [[Opt(NUMBER)]],
    "per_layer_rho": [[[Opt(NUMBER)]]],
    "per_layer_p": [[[Opt(NUMBER)]]],
    "layers": [str],
}
CROSS_SCHEMA = {"accuracy": MapOf(MapOf(NUMBER)), "ablation": str}


def _load_specificity(raw) -> TaskSpecificity:
    arrays = {k: np.asarray(raw[k], dtype=float) for k in ("rho", "per_layer_rho", "per_layer_p")}
    return TaskSpecificity(raw["names"], layers=raw["layers"], **arrays)


def _slug(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "-", name).strip("-") or "model"


def _model_summary(run: MultiRun) -> dict:
    r = run.results
    acc = {}
    for name, v in r["accuracy"].items():
        acc[name] = {k: None if s is None else {"mean": float(np.mean(s)), "std": sample_sd(s),
                                                "seeds": s} for k, s in v.items()}  # fmt: skip
    preds, rho = {}, {}
    for name in run.tasks:
        clean, adv = r[f"predictivity/{name}"]
        preds[name] = {"max": float(clean.flat().max()),
                       "top1pct_per_layer_mean": _top_mean(clean),
                       "positions": clean.meta.get("positions"),
                       "positions_asked": clean.meta.get("positions_asked")}  # fmt: skip
        if adv is not None:
            preds[run.tasks[name].spec.adversarial] = {
                "max": float(adv.flat().max()), "top1pct_per_layer_mean": _top_mean(adv),
                "positions": adv.meta.get("positions"),
                "positions_asked": adv.meta.get("positions_asked"),
            }  # fmt: skip
            rho[name] = clean.spearman(adv).mean
    spec = r["specificity"]
    return {
        "data": {n: ts.how for n, ts in run.tasks.items()},
        "accuracy": acc,
        "predictivity": preds,
        "rho_clean_adversarial": rho,
        "transfer": {"absolute": r["transfer"].absolute, "relative": r["transfer"].relative},
        "specificity": {"names": spec.names, "rho": spec.rho.tolist(), "z": spec.zscore.tolist()},
        "suppression": {n: r[f"suppression/{n}"].rows() for n in run.tasks},
        "cross": {n: r[f"cross/{n}"].accuracy for n in run.tasks if run.tasks[n].adv is not None},
    }


def _top_mean(scores: NeuronScores) -> float:
    top = scores.top(percent=1, per_layer=True)
    vals = [scores[s][i] for s, i in top.indices.items() if len(i)]
    return float(np.concatenate([v.numpy() for v in vals]).mean()) if vals else float("nan")


def _sections(name: str, run: MultiRun, summary: dict) -> list:
    r = run.results
    acc_rows = []
    for task, v in summary["accuracy"].items():
        row = {"task": task}
        for kind, s in v.items():
            row[kind] = "" if s is None else f"{s['mean']:.3f} ± {s['std']:.3f}"
        acc_rows.append(row)
    scores, model_acc = {}, {}
    for task in run.tasks:
        clean, adv = r[f"predictivity/{task}"]
        scores[task] = clean
        model_acc[task] = summary["accuracy"][task]["clean"]["mean"]
        if adv is not None:
            adv_name = run.tasks[task].spec.adversarial
            scores[adv_name] = adv
            model_acc[adv_name] = summary["accuracy"][task]["adversarial"]["mean"]
    rho_rows = [{"task": t, "spearman clean vs adversarial": v}
                for t, v in summary["rho_clean_adversarial"].items()]  # fmt: skip
    read = [{"dataset": d, "positions read": v.get("positions"),
             "chosen": "by hand" if v.get("positions_asked") else "where the head decides"}
            for d, v in summary["predictivity"].items()]  # fmt: skip
    sections = [
        (f"{name}: accuracy (mean ± sd over seeds)", acc_rows),
        (f"{name}: where predictivity was read", read),
        (f"{name}: predictivity and neuron accuracy", distributions(scores, model_acc).figure()),
        (f"{name}: clean vs adversarial predictivity", rho_rows or "no adversarial set"),
        (f"{name}: prompt transferability", r["transfer"].figure()),
        (f"{name}: prompt transferability (relative)", r["transfer"].figure(relative=True)),
        (f"{name}: task specificity (Spearman)", r["specificity"].figure()),
        (f"{name}: task specificity (z-scored)", r["specificity"].figure(z=True)),
    ]
    sections += [(f"{name}: suppression on {t}", r[f"suppression/{t}"].figure()) for t in run.tasks]
    sections += [(f"{name}: cross suppression {t}", r[f"cross/{t}"].figure())
                 for t in run.tasks if run.tasks[t].adv is not None]  # fmt: skip
    return sections


def run_multitask_study(
    cfg: MultiTaskConfig,
    out: str | Path,
    *,
    resume: bool = True,
    log=print,
    plotly_js: str = "inline",
    images: str | None = None,
) -> dict:
    """Run (or resume) a multi-task study; returns the summary also written to
    ``out/summary.json``; ``out/report.html`` shows every model's tables and figures
    (``plotly_js="cdn"``: a small page that loads Plotly from its CDN), ``out/tables.md``
    the tables in Markdown (:func:`~neuronlens.study.tables.multitask_markdown`);
    ``images="png"`` or ``"svg"``: every figure also as a still image in ``out/figures/``
    (needs kaleido)."""
    check_plotly_js(plotly_js)
    check_images(images)
    slugs = [_slug(name) for name in cfg.models]
    if len(set(slugs)) != len(slugs):
        raise ConfigError(f"models {cfg.models} would share a results folder ({slugs}); rename one")
    out = check_out(out)
    # what can refuse the config runs before the folder is touched: tasks, data, first model
    splits = {spec.name: task_splits(cfg, spec, log) for spec in cfg.tasks}
    first = load_study_model(cfg.models[0], cfg.dtype)
    summary: dict = {
        "models": {},
        "tasks": [t.name for t in cfg.tasks],
        "adversarial": {t.name: t.adversarial for t in cfg.tasks},
    }
    sections: list = []
    with study_folder(out, log):
        write_text_atomic(out / "config.json", json_text(_jsonable(cfg), indent=2))
        for i, name in enumerate(cfg.models, start=1):
            log(f"model {i} of {len(cfg.models)}: {name}")
            model = first if i == 1 else load_study_model(name, cfg.dtype)
            if model.name in summary["models"]:
                raise ConfigError(
                    f"models {cfg.models} name the same model {model.name!r} twice; list it once"
                )
            run, steps = _run_model(cfg, out / _slug(name), model, splits, resume, log)
            summary["models"][model.name] = {**_model_summary(run), "steps": steps}
            sections += _sections(model.name, run, summary["models"][model.name])
            sections.append((f"{model.name}: steps", steps_rows(steps)))
        sections.insert(0, ("accuracy by dataset and model", _overview(summary)))
        title = f"neuronlens multi-task study: {', '.join(summary['models'])}"
        write_page(out / "report.html", title, sections, plotly_js=plotly_js, images=images)
        text = json_text(summary, indent=2)
        write_text_atomic(out / "summary.json", text)
        write_text_atomic(out / "tables.md", multitask_markdown(json.loads(text)))  # as saved
    log(f"report: {out / 'report.html'} (tables: {out / 'tables.md'})")
    return summary


def _run_model(cfg, out: Path, model, splits: dict, resume: bool, log) -> tuple:
    """Run (or reuse) one model's steps: ``(run, the steps' summary)``."""
    every = [split for ts in splits.values() for split in ts.splits()]
    identity = {
        "model": model_id(model),
        "data": data_id(*every),
        "data_by_task": {t: data_id(*ts.splits()) for t, ts in splits.items()},
    }
    run = MultiRun(cfg, out, model, splits, log, identity=identity)
    steps_summary: dict = {}
    run_steps(run, study_steps(run), steps_summary, resume=resume, log=log)
    return run, steps_summary["steps"]


def _overview(summary: dict) -> list[dict]:
    """Rows: dataset (clean and adversarial) x model, accuracy mean ± sample sd."""
    rows: dict[str, dict] = {}
    for model, s in summary["models"].items():
        for task, v in s["accuracy"].items():
            for kind, stats in v.items():
                if stats is None:
                    continue
                label = task if kind == "clean" else f"{task} (adversarial)"
                rows.setdefault(label, {"dataset": label})[model] = (
                    f"{stats['mean']:.3f} ± {stats['std']:.3f}"
                )
    return list(rows.values())
