"""A multi-task study's results as Markdown tables, the robustness paper's way: accuracy per
dataset and model beside the paper's Table 1, predictivity and the clean-vs-adversarial
Spearman rho, transferability, task specificity (and its z-scores), suppression against the
random controls, cross suppression and the time of each step.

:func:`multitask_markdown` builds them from a study's ``summary.json``; a study writes them to
``tables.md`` beside ``report.html``, and ``neuronlens tables RUN`` prints them again.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path

from neuronlens.errors import NeuronLensError

# The robustness paper's Table 1 (prompt tuning; RoBERTa-large, T5-large; mean and sd over
# seeds, in %), by neuronlens task name.
PAPER_ACCURACY: dict[str, tuple[tuple[float, float], tuple[float, float]]] = {
    "sst2": ((98.7, 2.6), (94.0, 0.4)),
    "adv_sst2": ((45.3, 4.5), (45.4, 3.3)),
    "qnli": ((90.4, 0.2), (92.4, 0.2)),
    "adv_qnli": ((45.1, 3.5), (60.1, 3.1)),
    "qqp": ((87.1, 0.2), (88.7, 1.1)),
    "adv_qqp": ((37.2, 4.1), (59.2, 8.0)),
    "mrpc": ((74.8, 5.9), (77.5, 2.6)),
    "imdb": ((90.4, 0.3), (88.2, 0.2)),
    "movie_rationales": ((74.1, 2.4), (75.2, 1.4)),
    "ethics_deontology": ((69.9, 2.0), (66.3, 1.6)),
    "ethics_justice": ((65.4, 1.6), (59.1, 2.9)),
}


def _table(header: list[str], rows: list[list]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _pct(stats: Mapping | None) -> str:
    return "" if stats is None else f"{100 * stats['mean']:.1f} ± {100 * stats['std']:.1f}"


def _num(v, digits: int = 3) -> str:
    return "" if v is None else f"{v:.{digits}f}"


def _matrix(rows: Mapping[str, Mapping[str, float]], corner: str, digits: int = 3, order=()) -> str:
    """Rows by source, columns by target: the targets in ``order`` first, in that order."""
    seen = list(dict.fromkeys(t for row in rows.values() for t in row))
    cols = [t for t in order if t in seen] + [t for t in seen if t not in order]
    body = [[src] + [_num(row.get(t), digits) for t in cols] for src, row in rows.items()]
    return _table([corner, *cols], body)


def _datasets(model: Mapping, tasks: list[str], adversarial: Mapping) -> list[tuple]:
    """``(dataset, task, kind)`` rows: each task's eval set, then its adversarial set."""
    out = []
    for task in tasks:
        out.append((task, task, "clean"))
        if model["accuracy"][task].get("adversarial") is not None:
            out.append((adversarial[task], task, "adversarial"))
    return out


def _adversarial_names(summary: Mapping) -> dict[str, str | None]:
    if "adversarial" in summary:
        return dict(summary["adversarial"])
    names: dict[str, str | None] = {}  # a summary from before it listed them: the cross sets
    for m in summary["models"].values():
        for task in summary["tasks"]:
            other = set(m.get("cross", {}).get(task, {})) - {"none", "random", task}
            names.setdefault(task, next(iter(other), None) or f"{task} (adversarial)")
    return names


def multitask_markdown(summary: Mapping) -> str:
    """The study's tables (accuracy in %, other scores as fractions) as one Markdown text."""
    if not isinstance(summary, Mapping) or not {"models", "tasks"} <= set(summary):
        raise NeuronLensError(
            "not a multi-task study's summary (it needs 'models' and 'tasks'); pass the "
            "summary.json that neuronlens study writes for a config with tasks"
        )
    models, tasks = summary["models"], list(summary["tasks"])
    adversarial = _adversarial_names(summary)
    out = ["# Multi-task study: " + ", ".join(models)]

    rows: dict[str, list] = {}
    for m in models.values():
        for dataset, *_ in _datasets(m, tasks, adversarial):
            rows.setdefault(dataset, [dataset])
    for dataset, row in rows.items():
        for m in models.values():
            hit = [(t, k) for d, t, k in _datasets(m, tasks, adversarial) if d == dataset]
            row.append(_pct(m["accuracy"][hit[0][0]][hit[0][1]]) if hit else "")
        paper = PAPER_ACCURACY.get(dataset)
        row += [f"{a:.1f} ± {s:.1f}" for a, s in paper] if paper else ["", ""]
    out += [
        "## Accuracy (%, mean ± sd over seeds)",
        "The paper: prompt tuning on RoBERTa-large and T5-large, full data (its Table 1).",
        _table(["dataset", *models, "paper RoBERTa", "paper T5"], list(rows.values())),
    ]
    for name, m in models.items():
        out += _model_sections(name, m, tasks, adversarial)
    return "\n\n".join(out) + "\n"


def _model_sections(name: str, m: Mapping, tasks: list[str], adversarial: Mapping) -> list[str]:
    out = [f"## {name}"]
    order = [d for d, *_ in _datasets(m, tasks, adversarial)]
    data = m.get("data", {})
    rows = []
    for dataset, task, kind in _datasets(m, tasks, adversarial):
        how = data.get(task, {})
        notes = [f"divided from {how['divided']}" if how.get("divided") else "",
                 f"validation: {how['validation']}" if how.get("validation") else ""]  # fmt: skip
        seeds = " / ".join(f"{100 * v:.1f}" for v in m["accuracy"][task][kind]["seeds"])
        n_eval = how.get("n_eval", "") if kind == "clean" else "whole set"
        rows.append([dataset, how.get("n_train", ""), how.get("n_val", ""), n_eval, seeds,
                     "; ".join(n for n in notes if n)])  # fmt: skip
    out += ["### Data and accuracy per seed (%)",
            _table(["dataset", "train", "validation", "eval", "per seed", "how"], rows)]  # fmt: skip
    rho = m.get("rho_clean_adversarial", {})
    pred_rows = []
    for dataset, task, kind in _datasets(m, tasks, adversarial):
        p = m["predictivity"].get(dataset, {})
        r = rho.get(task) if kind == "clean" else None
        where = p.get("positions") or ""
        if where and p.get("positions_asked") is False:
            where += " (where the head decides)"
        pred_rows.append([dataset, _num(p.get("max")), _num(p.get("top1pct_per_layer_mean")),
                          _num(r), where])  # fmt: skip
    out += ["### Predictivity (mean over the prompts)", _table(
        ["dataset", "max", "top 1 % per layer, mean", "ρ clean vs adversarial", "read at"],
        pred_rows)]  # fmt: skip
    transfer = m.get("transfer", {})
    if transfer.get("absolute"):
        out += ["### Prompt transferability (accuracy; rows: the prompt's task)",
                _matrix(transfer["absolute"], "prompt of", order=order)]  # fmt: skip
    if transfer.get("relative"):
        out += ["### Prompt transferability, relative to the target's own prompt",
                _matrix(transfer["relative"], "prompt of", 2, order)]  # fmt: skip
    spec = m.get("specificity")
    if spec:
        for key, title in (("rho", "Spearman ρ, per layer then averaged"), ("z", "z-scored")):
            mat = {a: dict(zip(spec["names"], row, strict=True))
                   for a, row in zip(spec["names"], spec[key], strict=True)}  # fmt: skip
            out += [f"### Task specificity ({title})", _matrix(mat, "", 2)]
    supp = m.get("suppression", {})
    if supp:
        percents = list(dict.fromkeys(r["percent"] for rows in supp.values() for r in rows))
        body = []
        for task, rows in supp.items():
            by = {r["percent"]: r for r in rows}
            cells = [_suppression_cell(by[p]) if p in by else "" for p in percents]
            hits = sum(beyond_2sd(r) for r in rows)
            body.append([task, *cells, f"{hits} of {len(rows)}"])
        out += ["### Suppression (accuracy: top neurons off vs random controls, mean ± sd)",
                _table(["dataset", *[f"{p:g} %" for p in percents], "levels > 2 sd"], body)]  # fmt: skip
    for task, acc in m.get("cross", {}).items():
        out += [f"### Cross suppression, {task} (accuracy; rows: the neurons switched off)",
                _matrix(acc, "neurons off", order=order)]  # fmt: skip
    steps = m.get("steps", {})
    if steps:
        out += ["### Steps", _table(
            ["step", "computed in (s)", "this run (s)", "reused"],
            [[s, _num(v.get("computed_seconds"), 0), f"{v['seconds']:.0f}",
              "yes" if v["loaded"] else f"no ({v['why']})"] for s, v in steps.items()])]  # fmt: skip
    return out


def beyond_2sd(row: dict) -> bool:
    """Whether a suppression level's top neurons are below random by more than 2 sd (a
    level whose random controls do not spread has no gap in sd, and does not count)."""
    g = row.get("gap_sd")
    return isinstance(g, int | float) and math.isfinite(g) and g > 2


def _suppression_cell(row: dict) -> str:
    """``top vs random mean ± sd``, with why a level has no gap in sd (older summaries hold
    ``inf`` / ``nan`` there and no note)."""
    cell = f"{row['acc_top']:.3f} vs {row['acc_random_mean']:.3f} ± {row['acc_random_std']:.3f}"
    g = row.get("gap_sd")
    defined = isinstance(g, int | float) and math.isfinite(g)
    note = row.get("gap_note") or ("" if defined else "no spread in the random controls")
    return f"{cell} ({note})" if note else cell


def read_summary(path: str | Path) -> dict:
    """A study's summary: ``path`` is its ``summary.json`` or the run folder holding it."""
    path = Path(path)
    file = path / "summary.json" if path.is_dir() else path
    if not file.is_file():
        raise NeuronLensError(
            f"{file} does not exist: pass a study's output folder or its summary.json"
        )
    try:
        return json.loads(file.read_text())
    except json.JSONDecodeError as err:
        raise NeuronLensError(f"{file} is not a study summary (not JSON: {err})") from None
