"""What every study is made of: steps, the key of what made each result, resume, the loop.

A study is a table of :class:`Step` s. Each saved result is reused only when its key, the
record of everything that made it (the config fields the step reads, any further inputs such
as a task's spec, the model's identity, the data, the library version, and the keys of the
steps whose results it uses), equals the key of the run now; otherwise the step is computed
again and the summary says why. The key is written after every artifact of the step, so a
study killed before a step ends finds that step unfinished.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import neuronlens as nl
from neuronlens.io import write_text_atomic


@dataclass(frozen=True)
class Step:
    """One step of a study.

    ``uses``: the steps whose results it takes (a changed one changes this step's key);
    ``inputs``: the config fields it reads; ``extra``: further inputs for its key (a task's
    spec); ``load(run)``: its saved result, or ``None`` when there is none to reuse;
    ``compute(run)``: compute and save it; ``summary(run, value)``: its ``summary.json``
    entries."""

    name: str
    uses: tuple[str, ...]
    inputs: tuple[str, ...]
    load: Callable
    compute: Callable
    summary: Callable
    extra: dict = field(default_factory=dict)


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


def data_id(*splits) -> str:
    """A fingerprint of the examples (texts, second texts, labels) of the given splits."""
    rows = [
        None if d is False or d is None else [list(d.texts), list(d.texts_b or ()), list(d.labels)]
        for d in splits
    ]
    return digest(rows)


def model_id(model) -> dict:
    """What identifies a model: name, sites and widths, and a fingerprint of its weights."""
    emb = model.input_embeddings.weight[:256].detach().float().cpu().numpy().tobytes()
    return {
        "name": model.name,
        "widths": {s.name: s.width for s in model.sites},
        "weights": hashlib.sha256(emb).hexdigest()[:16],
    }


def step_key(run, step: Step, keys: dict[str, dict]) -> dict:
    """Everything that made a step's result (see the module docstring). A step of one task
    of a multi-task study (``extra["task"]``) keys only that task's data
    (``identity["data_by_task"]``), so changing another task does not redo it."""
    data = run.identity["data"]
    by_task = run.identity.get("data_by_task") or {}
    if step.extra.get("task") in by_task:
        data = by_task[step.extra["task"]]
    return {
        "config": {f: getattr(run.cfg, f) for f in step.inputs},
        "extra": step.extra,
        "model": run.identity["model"],
        "data": data,
        "neuronlens": nl.__version__,
        "uses": {u: digest(keys[u]) for u in step.uses},
    }


def why_not(saved: dict | None, key: dict) -> str | None:
    """``None`` when a saved result may be reused, else why not (the changed inputs)."""
    if saved is None:
        return "no finished result"
    if saved == key:
        return None
    old = saved.get("config", {})
    changed = [f for f in key["config"] if old.get(f) != key["config"][f]]
    changed += [k for k in ("extra", "model", "data", "neuronlens") if saved.get(k) != key[k]]
    used = saved.get("uses", {})
    changed += [f"results of {u}" for u in key["uses"] if used.get(u) != key["uses"][u]]
    return "changed: " + ", ".join(changed or ["format"])


def _key_file(out: Path, name: str) -> Path:
    return out / "steps" / f"{name.replace('/', '--')}.json"


def run_step(run, step: Step, key: dict, resume: bool):
    """``(value, loaded, why, key)``: the saved result when its key matches, else computed
    (and its key written last, so a step killed before the end counts as unfinished); the
    key returned is the one the result was made with (what later steps' keys digest).

    A key saved when every step keyed the whole study's data (before per-task keys) still
    matches while that whole-study fingerprint is unchanged."""
    key_file = _key_file(run.out, step.name)
    why = "--fresh"
    if resume:
        saved = json.loads(key_file.read_text()) if key_file.is_file() else None
        why = why_not(saved, key)
        older = saved is not None and saved.get("data") == run.identity["data"]
        if why is not None and older and why_not(saved, {**key, "data": saved["data"]}) is None:
            why, key = None, saved  # an older key: all the data is unchanged
        if why is None:
            value = step.load(run)
            if value is not None:
                return value, True, None, key
            why = "saved result missing or unreadable"
    run.step_key = key  # for steps that keep finished parts of themselves (prompt seeds)
    value = step.compute(run)
    write_text_atomic(key_file, json.dumps(key, indent=2, sort_keys=True, default=str))
    return value, False, why, key


def remove_stale(out: Path) -> None:
    """Remove the temporary files a killed run left (they are never read)."""
    for stale in [*out.rglob(".*.tmp-*"), *out.rglob(".*.old-*")]:
        shutil.rmtree(stale) if stale.is_dir() else stale.unlink()


def _computed_seconds(time_file: Path) -> float | None:
    """How long the saved result took to compute (``None``: saved before times were kept)."""
    try:
        return float(json.loads(time_file.read_text())["seconds"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_steps(run, steps: list[Step], summary: dict, *, resume: bool, log) -> None:
    """Run (or reuse) every step in order: results in ``run.results``, their summaries and
    ``summary["steps"][name] = {seconds, loaded, why, computed_seconds}`` in ``summary``
    (``seconds`` this run, ``computed_seconds`` the run that computed the result); the log
    says which step of how many is running and how long the finished ones took."""
    keys: dict[str, dict] = {}
    summary.setdefault("steps", {})
    started = time.perf_counter()
    for i, step in enumerate(steps, start=1):
        log(f"[{step.name}] step {i} of {len(steps)} ({time.perf_counter() - started:.0f} s in)")
        t0 = time.perf_counter()
        keys[step.name] = step_key(run, step, keys)
        value, loaded, why, keys[step.name] = run_step(run, step, keys[step.name], resume)
        run.results[step.name] = value
        summary.update(step.summary(run, value))
        seconds = time.perf_counter() - t0
        time_file = _key_file(run.out, step.name).with_suffix(".time.json")
        computed = _computed_seconds(time_file) if loaded else round(seconds, 1)
        if not loaded:  # how long computing it took, kept for the runs that reuse it
            write_text_atomic(time_file, json.dumps({"seconds": computed}))
        summary["steps"][step.name] = {"seconds": round(seconds, 1), "loaded": loaded, "why": why,
                                       "computed_seconds": computed}  # fmt: skip
        log(
            f"[{step.name}] {'loaded (unchanged)' if loaded else f'computed ({why})'} in {seconds:.1f} s"
        )
