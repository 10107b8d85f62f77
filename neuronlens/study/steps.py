"""What every study is made of: steps, the key of what made each result, resume, the loop.

A study is a table of :class:`Step` s. Each saved result is reused only when its key, the
record of everything that made it (the config fields the step reads, any further inputs such
as a task's spec, the model's identity, the data, the library version, and the records of
the steps whose results it uses), equals the key of the run now, and every file the step
wrote is there unchanged (:mod:`neuronlens.study.records`: sizes and SHA-256 hashes, schemas,
the record removed before a step writes and written after its last file); otherwise the
step is computed again and the summary says why.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from safetensors import SafetensorError

import neuronlens as nl
from neuronlens.errors import NeuronLensError
from neuronlens.models.placement import dtype_name
from neuronlens.study.records import changed_files, finish_record, read_record, start_record


@dataclass(frozen=True)
class Step:
    """One step of a study.

    ``uses``: the steps whose results it takes (a changed one changes this step's key);
    ``inputs``: the config fields it reads; ``extra``: further inputs for its key (a task's
    spec); ``files(run)``: the files and folders it writes, relative to the study folder
    (hashed into its record, checked before a reuse); ``load(run)``: its saved result
    (raising :class:`~neuronlens.errors.NeuronLensError` when a file does not hold what it
    should); ``compute(run)``: compute and save it; ``summary(run, value)``: its
    ``summary.json`` entries."""

    name: str
    uses: tuple[str, ...]
    inputs: tuple[str, ...]
    files: Callable
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
    """What identifies a model: name, dtype, sites and widths, and a fingerprint of its
    weights."""
    emb = model.input_embeddings.weight[:256].detach().float().cpu().numpy().tobytes()
    return {
        "name": model.name,
        "dtype": dtype_name(model.dtype),
        "widths": {s.name: s.width for s in model.sites},
        "weights": hashlib.sha256(emb).hexdigest()[:16],
    }


def step_key(run, step: Step, records: dict[str, dict]) -> dict:
    """Everything that made a step's result (see the module docstring); the steps it uses
    count by their records (key and file hashes). A step of one task of a multi-task study
    (``extra["task"]``) keys only that task's data (``identity["data_by_task"]``), so
    changing another task does not redo it."""
    data = run.identity["data"]
    by_task = run.identity.get("data_by_task") or {}
    if step.extra.get("task") in by_task:
        data = by_task[step.extra["task"]]
    uses = {u: digest({"key": records[u]["key"], "files": records[u]["files"]}) for u in step.uses}
    return {
        "config": {f: getattr(run.cfg, f) for f in step.inputs},
        "extra": step.extra,
        "model": run.identity["model"],
        "data": data,
        "neuronlens": nl.__version__,
        "uses": uses,
    }


def why_not(saved: dict, key: dict) -> str | None:
    """``None`` when a saved key equals this run's, else why not (the changed inputs)."""
    if json.loads(json.dumps(saved, default=str)) == json.loads(json.dumps(key, default=str)):
        return None
    old = saved.get("config", {})
    changed = [f for f in key["config"] if old.get(f) != key["config"][f]]
    changed += [k for k in ("extra", "model", "data", "neuronlens") if saved.get(k) != key[k]]
    used = saved.get("uses", {})
    changed += [f"results of {u}" for u in key["uses"] if used.get(u) != key["uses"][u]]
    return "changed: " + ", ".join(changed or ["format"])


#: what a damaged saved file raises when a step loads it
LOAD_ERRORS = (NeuronLensError, OSError, ValueError, KeyError, TypeError, SafetensorError)


def _reuse(run, step: Step, key: dict):
    """``(value, record, None)`` when the saved result may be reused, else
    ``(None, None, why not)``; a damaged file is named in the log."""
    record, why = read_record(run.out, step.name)
    if record is None:
        if why != "no finished result":
            run.log(f"[{step.name}] {why}: recomputing it")
        return None, None, why
    why = why_not(record["key"], key)
    if why is not None:
        return None, None, why
    bad = changed_files(run.out, record["files"], step.files(run))
    if bad is not None:
        run.log(f"[{step.name}] {bad} since the step wrote it: recomputing it")
        return None, None, bad
    try:
        return step.load(run), record, None
    except LOAD_ERRORS as err:
        run.log(f"[{step.name}] a saved file cannot be read back ({err}): recomputing it")
        return None, None, f"saved result unreadable: {err}"


def run_step(run, step: Step, key: dict, resume: bool):
    """``(value, loaded, why, record)``: the saved result when its record matches (key and
    files), else computed; the record is removed before the step writes and written after its
    last file, so a step killed at any moment counts as unfinished."""
    why = "--fresh"
    if resume:
        value, record, why = _reuse(run, step, key)
        if record is not None:
            return value, True, None, record
    start_record(run.out, step.name)
    run.step_key = key  # for steps that keep finished parts of themselves (prompt seeds)
    t0 = time.perf_counter()
    value = step.compute(run)
    record = finish_record(run.out, step.name, key, step.files(run), time.perf_counter() - t0)
    return value, False, why, record


def run_steps(run, steps: list[Step], summary: dict, *, resume: bool, log) -> None:
    """Run (or reuse) every step in order: results in ``run.results``, their summaries and
    ``summary["steps"][name] = {seconds, loaded, why, computed_seconds}`` in ``summary``
    (``seconds`` this run, ``computed_seconds`` the run that computed the result); the log
    says which step of how many is running and how long the finished ones took."""
    records: dict[str, dict] = {}
    summary.setdefault("steps", {})
    started = time.perf_counter()
    for i, step in enumerate(steps, start=1):
        log(f"[{step.name}] step {i} of {len(steps)} ({time.perf_counter() - started:.0f} s in)")
        t0 = time.perf_counter()
        key = step_key(run, step, records)
        value, loaded, why, records[step.name] = run_step(run, step, key, resume)
        run.results[step.name] = value
        summary.update(step.summary(run, value))
        seconds = time.perf_counter() - t0
        summary["steps"][step.name] = {"seconds": round(seconds, 1), "loaded": loaded, "why": why,
                                       "computed_seconds": records[step.name]["seconds"]}  # fmt: skip
        log(
            f"[{step.name}] {'loaded (unchanged)' if loaded else f'computed ({why})'} in {seconds:.1f} s"
        )
