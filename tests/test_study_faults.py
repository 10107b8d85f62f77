"""Fault injection on a study folder (issue 32): every artifact kind truncated, filled with
garbage or swapped for another step's; kills at several points, with config changes and
reverts; two studies on one folder. Each case must end in a recompute (the same results as
a run that was never disturbed) or a clear neuronlens error, never in a report that mixes
runs."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuronlens.errors import NeuronLensError
from neuronlens.prompts import PromptResult
from neuronlens.pruning import load_pruned
from neuronlens.study import StudyConfig, run_study
from neuronlens.study.config import ConfigError
from neuronlens.study.records import (
    LOCK_FILE,
    DamagedResultError,
    StudyLock,
    StudyLockedError,
    check_schema,
    file_digest,
    read_json,
    read_record,
    remove_stale,
)
from neuronlens.study.single import load_study_model

ROOT = Path(__file__).resolve().parents[1]
BASE = dict(
    model="tiny:bert",
    task="toy_sentiment",
    train_size=40,
    eval_size=24,
    n_tokens=4,
    seeds=[0, 1],
    suppression_percents=[0, 10],
    random_repeats=2,
    retrain_steps=3,
)


class Killed(BaseException):
    """Stands for a kill: nothing in the library catches it."""


class Log(list):
    def __call__(self, line):
        self.append(str(line))

    def text(self) -> str:
        return "\n".join(self)


def _study(cfg: dict, out: Path, log=None) -> dict:
    return run_study(StudyConfig(**cfg), out, log=Log() if log is None else log, plotly_js="cdn")


def _results(summary: dict) -> dict:
    """What a study computed (not how long it took, nor the measured speed-up)."""
    pruning = {k: v for k, v in summary["pruning"].items() if k != "speedup_measured"}
    keep = ("prompt_accuracy", "predictivity", "suppression", "n_train", "n_eval")
    return {**{k: summary[k] for k in keep}, "pruning": pruning}


def _consistent(out: Path, cfg: dict) -> None:
    """Everything in the folder was made by ``cfg``: no mix of runs."""
    model = load_study_model(cfg["model"])
    summary = json.loads((out / "summary.json").read_text())
    for name in ("prompts", "predictivity", "suppression", "pruning"):
        record, why = read_record(out, name)
        assert record is not None, (name, why)
        assert record["key"]["config"].get("n_tokens", cfg["n_tokens"]) == cfg["n_tokens"]
    for seed in cfg["seeds"]:
        assert PromptResult.load(out / "prompts" / f"seed{seed}", model).n_tokens == cfg["n_tokens"]
    pred = json.loads((out / "predictivity.json").read_text())["meta"]
    assert pred["prompt_tokens"] == [cfg["n_tokens"]] * len(cfg["seeds"])
    assert [r["percent"] for r in summary["suppression"]] == cfg["suppression_percents"]
    pruned = load_pruned(out / "pruned")
    saved = json.loads((out / "pruning.json").read_text())
    assert pruned.pruning.kept_ratio == saved["kept_ratio"] == summary["pruning"]["kept_ratio"]
    assert abs(saved["kept_ratio"] - cfg.get("prune_keep", 0.5)) < 0.05


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict]:
    """One undisturbed study, copied for every case."""
    out = tmp_path_factory.mktemp("faults") / "reference"
    summary = _study(BASE, out)
    return out, summary


def _copy(reference, tmp_path) -> Path:
    dst = tmp_path / "study"
    shutil.copytree(reference[0], dst)
    return dst


# ---------------------------------------------------------------------------- damaged files

# an artifact of each kind, and the file of another step that is swapped in for it
ARTIFACTS = {
    "prompts/seed0.safetensors": "pruned_prompt.safetensors",
    "prompts/seed1.json": "pruned_prompt.json",
    "predictivity.safetensors": "attribution.safetensors",
    "predictivity.json": "attribution.json",
    "suppression.json": "pruning.json",
    "pruning.json": "suppression.json",
    "attribution.safetensors": "predictivity.safetensors",
    "pruned/model.safetensors": "predictivity.safetensors",
    "pruned/tokenizer.json": "suppression.json",
    "pruned/pruning.json": "pruning.json",
    "pruned_prompt.safetensors": "prompts/seed1.safetensors",
    "steps/predictivity.json": "steps/suppression.json",
}
STEP_OF = {"prompts": "prompts", "predictivity": "predictivity", "suppression": "suppression"}
#: a step, and the steps recomputed with it (those that use its results)
DOWNSTREAM = {
    "prompts": {"prompts", "predictivity", "suppression", "pruning"},
    "predictivity": {"predictivity", "suppression"},
    "suppression": {"suppression"},
    "pruning": {"pruning"},
}


def _step_of(rel: str) -> str:
    if rel.startswith("steps/"):
        return Path(rel).stem
    first = rel.split("/")[0].split(".")[0]
    return STEP_OF.get(first, "pruning")


def _damage(path: Path, how: str, other: Path) -> None:
    data = path.read_bytes()
    if how == "truncated":
        path.write_bytes(data[: len(data) // 2])
    elif how == "garbage":
        path.write_bytes(os.urandom(len(data)))
    else:  # swapped for another step's file
        path.write_bytes(other.read_bytes())


@pytest.mark.parametrize("how", ["truncated", "garbage", "swapped"])
def test_a_damaged_artifact_is_named_and_recomputed(reference, tmp_path, how):
    """Each kind of artifact, damaged three ways: the log names the file, its step (and the
    steps that use it) are computed again, and the results equal the undisturbed run's."""
    for rel, other in ARTIFACTS.items():
        out = _copy(reference, tmp_path / rel.replace("/", "-"))
        _damage(out / rel, how, out / other)
        log = Log()
        got = _study(BASE, out, log)
        step = _step_of(rel)
        assert not got["steps"][step]["loaded"], (rel, how, log.text())
        named = rel if not rel.startswith("steps/") else Path(rel).name
        assert named in log.text(), (rel, how, log.text())
        assert _results(got) == _results(reference[1]), (rel, how)
        for other_step, v in got["steps"].items():
            if other_step not in DOWNSTREAM[step]:  # steps that do not use it are reused
                assert v["loaded"], (rel, how, other_step, v["why"])
        _consistent(out, BASE)


def test_a_file_rewritten_with_its_hash_still_meets_its_schema(reference, tmp_path):
    """pruning.json replaced by {"foo": 1} *and* its record's hash updated (what another
    program could write): the schema check refuses it and the step is computed again."""
    out = _copy(reference, tmp_path)
    (out / "pruning.json").write_text('{"foo": 1}')
    record_file = out / "steps" / "pruning.json"
    record = json.loads(record_file.read_text())
    record["files"]["pruning.json"] = file_digest(out / "pruning.json")
    record_file.write_text(json.dumps(record))
    log = Log()
    got = _study(BASE, out, log)
    assert not got["steps"]["pruning"]["loaded"]
    assert "pruning.json does not hold what neuronlens wrote" in log.text()
    assert "foo" not in json.dumps(got["pruning"])
    assert _results(got) == _results(reference[1])


def test_schemas_and_strict_json(tmp_path):
    with pytest.raises(DamagedResultError, match=r"\$.a: expected a number"):
        check_schema({"a": "x"}, {"a": "number"})
    with pytest.raises(DamagedResultError, match="lacks"):
        check_schema({}, {"a": int})
    with pytest.raises(DamagedResultError, match="unknown"):
        check_schema({"a": 1, "b": 2}, {"a": int})
    with pytest.raises(DamagedResultError, match="expected int"):
        check_schema({"a": True}, {"a": int})  # a bool is not an int
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(DamagedResultError, match="cannot be read as JSON"):
        read_json(bad, {"a": int})


def _strict(text: str):
    def refuse(name):
        raise ValueError(f"non-standard JSON constant {name}")

    return json.loads(text, parse_constant=refuse)


def test_no_spread_is_null_in_strict_json_and_the_table_says_why(tmp_path):
    """One random control: the gap in sd is undefined, written as null (strict JSON), with
    the reason beside it; every JSON file the study wrote parses strictly."""
    cfg = {**BASE, "random_repeats": 1, "seeds": [0]}
    out = tmp_path / "study"
    summary = _study(cfg, out)
    rows = summary["suppression"]
    assert all(r["gap_sd"] is None for r in rows)
    assert all(r["gap_note"].startswith("no spread: 1 random control") for r in rows)
    for path in out.rglob("*.json"):
        _strict(path.read_text())


# ---------------------------------------------------------------------------- kills


def _crash_at(monkeypatch, n: int) -> None:
    """The n-th atomic rename raises :class:`Killed` before renaming (a kill, in process)."""
    real, calls = os.replace, [0]

    def replace(src, dst, *a, **k):
        calls[0] += 1
        if calls[0] == n:
            raise Killed(f"killed at rename {n}: {dst}")
        return real(src, dst, *a, **k)

    monkeypatch.setattr(os, "replace", replace)


def _renames(cfg: dict, tmp_path: Path, monkeypatch) -> int:
    """How many atomic renames a study of ``cfg`` makes on a folder holding the reference."""
    real, calls = os.replace, [0]

    def replace(src, dst, *a, **k):
        calls[0] += 1
        return real(src, dst, *a, **k)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        _study(cfg, tmp_path)
    return calls[0]


@pytest.mark.parametrize("change", [{"n_tokens": 6}, {"prune_keep": 0.3}])
def test_a_kill_after_a_config_change_then_a_revert_never_mixes_runs(
    reference, tmp_path, monkeypatch, change
):
    """The issue's cases: a finished study; the config changed (n_tokens 4 -> 6, or
    prune_keep 0.5 -> 0.3), the run killed at several points; the config reverted and the
    study resumed: everything in the folder comes from the reverted config, and its results
    equal the undisturbed run's."""
    changed = {**BASE, **change}
    total = _renames(changed, _copy(reference, tmp_path / "count"), monkeypatch)
    points = sorted({1, 2, total // 4, total // 2, (3 * total) // 4, total - 2, total - 1})
    for n in points:
        out = _copy(reference, tmp_path / f"kill{n}")
        with monkeypatch.context() as m:
            _crash_at(m, n)
            with pytest.raises(Killed):
                _study(changed, out)
        log = Log()
        got = _study(BASE, out, log)
        assert _results(got) == _results(reference[1]), (change, n, log.text())
        _consistent(out, BASE)
        # and forward again: the changed config's results, all of them
        again = _study(changed, out)
        _consistent(out, changed)
        assert again["pruning"]["kept_ratio"] == pytest.approx(
            changed.get("prune_keep", 0.5), abs=0.05
        )


def _child(cfg: dict, out: Path, tmp_path: Path, *args) -> subprocess.Popen:
    config = tmp_path / f"config-{time.monotonic_ns()}.json"
    config.write_text(json.dumps(cfg))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "tests.study_child", str(config), str(out), *map(str, args)]
    return subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip


def test_a_real_kill_leaves_a_stale_lock_and_temporary_files_that_are_taken_over(tmp_path):
    """A child killed (os._exit) in the middle of writing: its lock and its temporary file
    stay behind; the next study takes the lock over, says so, removes the temporary file,
    and finishes with the undisturbed results."""
    out = tmp_path / "study"
    proc = _child(BASE, out, tmp_path, "--kill-at", 9)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 137, err[-2000:]
    holder = (out / LOCK_FILE).read_text()
    assert f"pid {proc.pid}" in holder
    left = [p for p in out.rglob(".*") if ".tmp-" in p.name]
    assert left, "the kill left no temporary file (the test kills inside a rename)"
    log = Log()
    got = _study(BASE, out, log)
    assert f"took over the lock of {out} left by a stopped study (pid {proc.pid}" in log.text()
    assert not [p for p in out.rglob(".*") if ".tmp-" in p.name]
    assert (out / LOCK_FILE).read_text() == ""  # released cleanly
    _consistent(out, BASE)
    assert got["prompt_accuracy"] == _study(BASE, tmp_path / "clean")["prompt_accuracy"]


# ---------------------------------------------------------------------------- two studies


def test_a_second_study_on_the_folder_is_refused_and_the_first_finishes(tmp_path):
    """The first study is paused inside a rename (its temporary file in place): the second
    is refused with an error that names the first one's process, before it touches
    anything; the first then finishes as if alone."""
    out, gate = tmp_path / "study", tmp_path / "gate"
    gate.mkdir()
    first = _child(BASE, out, tmp_path, "--pause-at", 12, "--gate", gate)
    deadline = time.monotonic() + 300
    while not (gate / "paused").exists() and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (gate / "paused").exists(), first.communicate()[1][-2000:]
    temps = sorted(p for p in out.rglob(".*") if ".tmp-" in p.name)
    assert temps
    with pytest.raises(StudyLockedError, match=f"in use by another study \\(pid {first.pid} "):
        _study(BASE, out)
    with pytest.raises(StudyLockedError):  # the folder's own API refuses the same way
        StudyLock(out).__enter__()
    assert sorted(p for p in out.rglob(".*") if ".tmp-" in p.name) == temps  # not removed
    (gate / "go").write_text("")
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-3000:]
    _consistent(out, BASE)


def test_only_a_stopped_process_s_temporary_files_are_removed(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (tmp_path / f".a.json.tmp-{dead.pid}").write_text("x")
        (tmp_path / f".b.json.tmp-{live.pid}").write_text("x")
        (tmp_path / "sub").mkdir()
        (tmp_path / "sub" / f".pruned.old-{dead.pid}").mkdir()
        log = Log()
        remove_stale(tmp_path, log)
        names = {p.name for p in tmp_path.rglob(".*")}
        assert names == {f".b.json.tmp-{live.pid}"}
        assert f".a.json.tmp-{dead.pid}" in log.text()
    finally:
        live.kill()
        live.wait()


# ---------------------------------------------------------------------------- the folder


def test_a_failed_config_leaves_nothing_behind(tmp_path):
    out = tmp_path / "new"
    with pytest.raises(ConfigError, match="no_such_task"):
        _study({**BASE, "task": "no_such_task"}, out)
    assert not out.exists()
    with pytest.raises(NeuronLensError, match="split"):
        _study({**BASE, "eval_split": "no_such_split"}, out)
    assert not out.exists()


def test_out_on_a_file_is_a_clear_error(tmp_path, capsys):
    from neuronlens.cli import main

    target = tmp_path / "a-file"
    target.write_text("not a folder")
    with pytest.raises(NeuronLensError, match="is a file, not a folder"):
        _study(BASE, target)
    config = tmp_path / "study.toml"
    config.write_text("\n".join(f"{k} = {json.dumps(v)}" for k, v in BASE.items()) + "\n")
    for argv in (["study", str(config), "--out", str(target)], ["demo", "--out", str(target)]):
        assert main(argv) == 2
        assert "is a file, not a folder" in capsys.readouterr().err
    assert target.read_text() == "not a folder"


def test_a_clamped_size_is_logged_and_reported(tmp_path):
    log = Log()
    summary = _study({**BASE, "train_size": 1_000_000_000, "seeds": [0]}, tmp_path / "s", log)
    used = summary["sizes"]["train_size"]["used"]
    assert summary["sizes"]["train_size"]["asked"] == 1_000_000_000
    assert used == summary["n_train"] < 1_000_000_000
    assert "train_size = 1000000000, but" in log.text() and f"using {used}" in log.text()
