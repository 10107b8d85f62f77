"""Studies reuse a saved step only when everything that made it is unchanged, and a study
killed at any moment resumes from its last finished step without loading a partial file."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from neuronlens.study import StudyConfig, run_study
from neuronlens.tasks import register_task

from .probe_fixtures import word_task

CONFIG = dict(
    model="tiny:bert",
    task="resume_words",
    train_size=40,
    eval_size=23,
    n_tokens=3,
    seeds=[0, 1],
    suppression_percents=[0, 10],
    random_repeats=2,
    retrain_steps=3,
)


@pytest.fixture(scope="module", autouse=True)
def _tasks():
    register_task(word_task(name="resume_words"), replace=True)
    register_task(word_task(seed=7, name="resume_words_b"), replace=True)


def _quiet(*_):
    pass


def test_a_changed_config_recomputes_what_it_changed(tmp_path):
    out = tmp_path / "study"
    first = run_study(StudyConfig(**CONFIG), out, log=_quiet)
    again = run_study(StudyConfig(**CONFIG), out, log=_quiet)
    assert all(s["loaded"] for s in again["steps"].values())
    # another task and other percents: nothing stale is reloaded
    changed = StudyConfig(**{**CONFIG, "task": "resume_words_b", "suppression_percents": [0, 5]})
    third = run_study(changed, out, log=_quiet)
    assert not any(s["loaded"] for s in third["steps"].values())
    assert "task" in third["steps"]["prompts"]["why"]
    assert third["task"] == "resume_words_b"
    assert [r["percent"] for r in third["suppression"]] == [0, 5]
    assert third["prompt_accuracy"] != first["prompt_accuracy"] or third != first
    html = (out / "report.html").read_text()
    assert "resume_words_b" in html and "on resume_words<" not in html
    # only the suppression percents change: prompts, predictivity and pruning are reused
    fourth = run_study(StudyConfig(**{**CONFIG, "task": "resume_words_b"}), out, log=_quiet)
    steps = fourth["steps"]
    assert steps["prompts"]["loaded"] and steps["predictivity"]["loaded"]
    assert steps["pruning"]["loaded"] and not steps["suppression"]["loaded"]
    assert steps["suppression"]["why"] == "changed: suppression_percents"


def _study_cmd(cfg_path: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "neuronlens.cli", "study", str(cfg_path), "--out", str(out)]


def _write_config(path: Path) -> None:
    # the task is registered inside the child through a tiny plugin module on sys.path
    lines = [f"{k} = {json.dumps(v)}" for k, v in CONFIG.items()]
    path.write_text("\n".join(lines) + "\n")


def test_a_killed_study_resumes_to_the_same_results(tmp_path):
    """Kill the study process as soon as a given file appears (during prompt tuning, after
    predictivity, during pruning), resume, and compare with an uninterrupted run: same
    numbers, no partial file loaded, no temporary file left."""
    plugin = tmp_path / "plugin"
    plugin.mkdir()
    (plugin / "sitecustomize.py").write_text(
        "from tests.probe_fixtures import word_task\n"
        "from neuronlens.tasks import register_task\n"
        "register_task(word_task(name='resume_words'), replace=True)\n"
    )
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(plugin), str(Path(__file__).resolve().parents[1])]),
        "OMP_NUM_THREADS": "1",
    }
    cfg = tmp_path / "study.toml"
    _write_config(cfg)
    clean = tmp_path / "clean"
    subprocess.run(_study_cmd(cfg, clean), env=env, check=True, capture_output=True)
    want = json.loads((clean / "summary.json").read_text())
    reused = set()
    for trigger in ("prompts/seed0.safetensors", "steps/predictivity.json", "attribution.json"):
        out = tmp_path / ("killed-" + trigger.replace("/", "-"))
        proc = subprocess.Popen(_study_cmd(cfg, out), env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)  # fmt: skip
        deadline = time.monotonic() + 300
        while not (out / trigger).exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        done = subprocess.run(_study_cmd(cfg, out), env=env, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-3000:]
        got = json.loads((out / "summary.json").read_text())
        for key in ("prompt_accuracy", "predictivity", "suppression"):
            assert got[key] == want[key], (trigger, key)
        assert got["pruning"]["kept_ratio"] == want["pruning"]["kept_ratio"]
        assert not list(out.rglob(".*tmp-*")), "a temporary file was left behind"
        reused.add(tuple(step["loaded"] for step in got["steps"].values()))
    # the kills landed at different steps: what the resumed runs could reuse differs
    assert len(reused) >= 2, reused
