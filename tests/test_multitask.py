"""The robustness paper's multi-task study as one command, on the built-in toy task (with an
adversarial counterpart: harder toy sentences, the same label space) and one tiny word task
whose single split is divided into train and eval."""

import json
import statistics

import pytest

from neuronlens.cli import main
from neuronlens.study import ConfigError, MultiTaskConfig, load_config, run_multitask_study
from neuronlens.tasks import Task, generate_toy_sentiment, get_task, register_task

from .probe_fixtures import word_task

CONFIG = """
models = ["tiny:bert"]
seeds = [0, 1]
train_size = 40
eval_size = 20
n_tokens = 3
epochs = 1.0
suppression_percents = [0, 10]
random_repeats = 2
cross_percent = 10

[[tasks]]
name = "toy_sentiment"
eval_split = "test"
adversarial = "mt_toy_adv"

[[tasks]]
name = "mt_other"
eval_split = "dev"
train_split = "dev"
"""


@pytest.fixture(scope="module", autouse=True)
def _tasks():
    toy = get_task("toy_sentiment")  # built in
    adv = Task.from_lists(  # mostly negated sentences: toy's labels, template, label space
        "mt_toy_adv", label_names=toy.label_names, template=toy.template,
        verbalizer=toy.verbalizer, label_space=toy.label_space,
        splits={"dev": generate_toy_sentiment(60, seed=77, negation_rate=0.6)},
    )  # fmt: skip
    register_task(adv, replace=True)
    other = word_task(n=120, seed=9, name="mt_other")
    single = Task.from_lists(
        "mt_other", label_names=other.label_names, template=other.template,
        verbalizer=other.verbalizer, label_space=other.label_space,
        splits={"dev": (other.load("train").texts, other.load("train").labels)},
    )  # fmt: skip
    register_task(single, replace=True)


def test_multitask_study_runs_resumes_and_reports(tmp_path, capsys):
    cfg_path = tmp_path / "multi.toml"
    cfg_path.write_text(CONFIG)
    cfg = load_config(cfg_path)
    assert isinstance(cfg, MultiTaskConfig) and [t.name for t in cfg.tasks] == [
        "toy_sentiment",
        "mt_other",
    ]
    out = tmp_path / "out"
    assert main(["study", str(cfg_path), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    s = summary["models"]["tiny:bert"]
    acc = s["accuracy"]
    assert (
        len(acc["toy_sentiment"]["clean"]["seeds"]) == 2
        and acc["toy_sentiment"]["adversarial"] is not None
    )
    assert acc["mt_other"]["adversarial"] is None
    seeds = acc["toy_sentiment"]["clean"]["seeds"]  # the sample sd over seeds
    assert acc["toy_sentiment"]["clean"]["std"] == pytest.approx(statistics.stdev(seeds))
    assert s["data"]["mt_other"]["divided"] == "dev"  # one split, divided into train and eval
    d = s["data"]["mt_other"]
    assert d["n_eval"] == 20 and d["n_train"] + d["n_val"] + d["n_eval"] <= 120
    assert "toy_sentiment" in s["rho_clean_adversarial"]
    transfer = s["transfer"]["absolute"]  # within each label space only
    assert set(transfer["toy_sentiment"]) == {"toy_sentiment", "mt_toy_adv"}
    assert set(transfer["mt_other"]) == {"mt_other"}
    # each prompt on its own task's data is the accuracy step's measurement, not a second one
    assert transfer["toy_sentiment"]["mt_toy_adv"] == pytest.approx(
        acc["toy_sentiment"]["adversarial"]["mean"]
    )
    assert transfer["mt_other"]["mt_other"] == pytest.approx(acc["mt_other"]["clean"]["mean"])
    assert s["specificity"]["names"] == ["toy_sentiment", "mt_toy_adv", "mt_other"]
    assert [r["percent"] for r in s["suppression"]["mt_other"]] == [0, 10]
    assert set(s["cross"]) == {"toy_sentiment"}
    assert set(s["cross"]["toy_sentiment"]) == {"none", "toy_sentiment", "mt_toy_adv", "random"}
    html = (out / "report.html").read_text()
    assert html.count("Plotly.newPlot") >= 8 and "accuracy by dataset and model" in html
    tables = (out / "tables.md").read_text()  # the same numbers, in Markdown
    clean = acc["toy_sentiment"]["clean"]
    want = f"| toy_sentiment | {100 * clean['mean']:.1f} ± {100 * clean['std']:.1f} |"
    assert want in tables and "| mt_toy_adv |" in tables
    capsys.readouterr()
    assert main(["tables", str(out)]) == 0 and capsys.readouterr().out == tables
    # resumed: every step reused, the same numbers
    capsys.readouterr()
    assert main(["study", str(cfg_path), "--out", str(out)]) == 0
    again = json.loads((out / "summary.json").read_text())["models"]["tiny:bert"]
    assert all(step["loaded"] for step in again["steps"].values())
    for name, step in again["steps"].items():  # how long each took when it was computed
        assert step["computed_seconds"] == s["steps"][name]["computed_seconds"], name
        assert s["steps"][name]["computed_seconds"] <= s["steps"][name]["seconds"] + 0.1, name
    assert again["accuracy"] == s["accuracy"] and again["suppression"] == s["suppression"]
    # another percent list: only the suppression steps are recomputed
    changed = run_multitask_study(
        MultiTaskConfig(**{**_raw(cfg), "suppression_percents": [0, 5]}), out, log=lambda *_: None
    )["models"]["tiny:bert"]["steps"]
    assert [n for n, st in changed.items() if not st["loaded"]] == [
        "suppression/toy_sentiment",
        "suppression/mt_other",
    ]


def _raw(cfg: MultiTaskConfig) -> dict:
    from dataclasses import fields

    return {f.name: getattr(cfg, f.name) for f in fields(cfg)}


@pytest.mark.parametrize(
    "extra,field",
    [
        ('\n[[tasks]]\nname = "toy_sentiment"\n', "distinct"),
        ('\n[[tasks]]\nnam = "x"\n', "needs 'name'"),
        ("\ncross_percent = 0\n", "cross_percent"),
    ],
)
def test_bad_multitask_configs_name_the_field(tmp_path, extra, field):
    path = tmp_path / "bad.toml"
    path.write_text(CONFIG + extra)
    with pytest.raises(ConfigError, match=field):
        load_config(path)


def test_an_adversarial_set_of_another_label_space_is_refused(tmp_path):
    register_task(word_task(name="mt_words_ls"), replace=True)
    other = word_task(name="mt_bad_adv")
    other.label_space = "elsewhere"
    register_task(other, replace=True)
    cfg = MultiTaskConfig(
        models=["tiny:bert"], tasks=[{"name": "mt_words_ls", "adversarial": "mt_bad_adv"}]
    )
    with pytest.raises(ConfigError, match="label space"):
        run_multitask_study(cfg, tmp_path / "o", log=lambda *_: None)


def test_an_interrupted_prompt_step_keeps_its_finished_seeds(tmp_path, monkeypatch):
    import neuronlens.study.multitask as mt

    cfg = load_config(_write(tmp_path, CONFIG))
    out = tmp_path / "out"
    run_multitask_study(cfg, out, log=lambda *_: None)
    # as if killed while tuning seed 1: the step's key and seed 1's files are not there
    model_dir = next(p for p in out.iterdir() if (p / "steps").is_dir())
    (model_dir / "steps" / "prompts--toy_sentiment.json").unlink()
    for f in (model_dir / "prompts" / "toy_sentiment").glob("seed1*"):
        f.unlink()
    calls = []
    real = mt.tune_prompt
    monkeypatch.setattr(mt, "tune_prompt", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    logged = []
    again = run_multitask_study(cfg, out, log=logged.append)["models"]["tiny:bert"]
    assert calls == [1]  # seed 0 reused, seed 1 tuned again, the other task's step loaded
    assert any("seed 0: reused" in line for line in logged)
    assert not again["steps"]["prompts/toy_sentiment"]["loaded"]
    # another input (here epochs): no seed is reused
    (model_dir / "steps" / "prompts--toy_sentiment.json").unlink()
    calls.clear()
    run_multitask_study(MultiTaskConfig(**{**_raw(cfg), "epochs": 2.0}), out, log=lambda *_: None)
    assert calls[:2] == [0, 1]


def _write(tmp_path, text: str):
    path = tmp_path / "multi.toml"
    path.write_text(text)
    return path


def _swap_task(seed: int) -> None:
    rows = word_task(n=120, seed=seed, name="mt_swap").load("train")
    other = word_task(n=10, name="mt_swap")
    register_task(
        Task.from_lists(
            "mt_swap", label_names=other.label_names, template=other.template,
            verbalizer=other.verbalizer, label_space=other.label_space,
            splits={"dev": (rows.texts, rows.labels)},
        ),
        replace=True,
    )  # fmt: skip


def test_a_changed_task_recomputes_only_its_steps(tmp_path):
    """Each task's steps key that task's data: new rows for one task redo its steps and the
    steps across tasks, and reuse the other task's. A record saved by an older version
    (before files were hashed) is computed again."""
    _swap_task(seed=9)
    cfg = load_config(_write(tmp_path, CONFIG.replace('"mt_other"', '"mt_swap"')))
    out = tmp_path / "out"
    first = run_multitask_study(cfg, out, log=lambda *_: None)["models"]["tiny:bert"]["steps"]
    # new rows for mt_swap: its steps and the cross-task ones are redone, toy_sentiment's not
    _swap_task(seed=10)
    try:
        steps = run_multitask_study(cfg, out, log=lambda *_: None)["models"]["tiny:bert"]["steps"]
    finally:
        _swap_task(seed=9)
    redone = sorted(n for n, s in steps.items() if not s["loaded"])
    assert redone == sorted(
        ["prompts/mt_swap", "predictivity/mt_swap", "suppression/mt_swap", "accuracy",
         "transfer", "specificity"]
    )  # fmt: skip
    assert "data" in steps["prompts/mt_swap"]["why"]
    run_multitask_study(cfg, out, log=lambda *_: None)  # back to the first rows
    model_dir = next(p for p in out.iterdir() if (p / "steps").is_dir())
    files = {n: model_dir / "steps" / f"{n.replace('/', '--')}.json" for n in first}
    keys = {n: json.loads(f.read_text())["key"] for n, f in files.items()}
    assert keys["prompts/toy_sentiment"]["data"] != keys["accuracy"]["data"]  # its own data
    # a record an older version wrote (the bare key, no file hashes) is not trusted
    files["accuracy"].write_text(json.dumps(keys["accuracy"]))
    steps = run_multitask_study(cfg, out, log=lambda *_: None)["models"]["tiny:bert"]["steps"]
    assert not steps["accuracy"]["loaded"]
    assert steps["accuracy"]["why"] == "saved by an older neuronlens, before files were hashed"
    assert steps["prompts/toy_sentiment"]["loaded"]


def test_a_study_of_two_models_reports_both_side_by_side(tmp_path):
    """``models`` lists several models: each runs every step into its own folder, the summary
    holds each, and the report's first table has one column per model."""
    text = CONFIG.replace('models = ["tiny:bert"]', 'models = ["tiny:bert", "tiny:gpt2"]')
    text = text.split("[[tasks]]")[0] + '[[tasks]]\nname = "toy_sentiment"\neval_split = "test"\n'
    text += 'adversarial = "mt_toy_adv"\n'
    out = tmp_path / "out"
    summary = run_multitask_study(load_config(_write(tmp_path, text)), out, log=lambda *_: None)
    assert list(summary["models"]) == ["tiny:bert", "tiny:gpt2"]
    bert, gpt2 = (
        summary["models"][m]["accuracy"]["toy_sentiment"]["clean"] for m in summary["models"]
    )
    assert len(bert["seeds"]) == len(gpt2["seeds"]) == 2
    assert (out / "tiny-bert" / "steps").is_dir() and (out / "tiny-gpt2" / "steps").is_dir()
    html = (out / "report.html").read_text()
    head = html.split("accuracy by dataset and model")[1].split("</table>")[0]
    assert "tiny:bert" in head and "tiny:gpt2" in head
    assert f"{gpt2['mean']:.3f} ± {gpt2['std']:.3f}" in head


@pytest.mark.parametrize(
    "models,match",
    [
        (["tiny:bert", "tiny:bert"], "distinct"),
        (["tiny:bert", "tiny/bert"], "results folder"),
        (["tiny:bert"], "compares datasets"),  # one task, no adversarial set
    ],
)
def test_a_model_listed_twice_or_one_dataset_is_refused(tmp_path, models, match):
    tasks = ["toy_sentiment"] if match == "compares datasets" else ["toy_sentiment", "mt_other"]
    with pytest.raises(ConfigError, match=match):
        cfg = MultiTaskConfig(models=models, tasks=tasks)
        run_multitask_study(cfg, tmp_path / "o", log=lambda *_: None)


def test_tables_put_the_papers_numbers_beside_a_summary():
    from neuronlens.study import multitask_markdown

    acc = {"mean": 0.8, "std": 0.02, "seeds": [0.78, 0.8, 0.82]}
    adv = {"mean": 0.4, "std": 0.01, "seeds": [0.39, 0.4, 0.41]}
    rows = [{"percent": p, "acc_top": 0.6, "acc_random_mean": 0.7, "acc_random_std": 0.01,
             "gap_sd": g} for p, g in ((1, 3.0), (5, 1.0), (10, 4.0))]  # fmt: skip
    # a level whose controls do not spread has no gap (null) and says why; it never counts
    rows.append({"percent": 15, "acc_top": 0.6, "acc_random_mean": 0.7, "acc_random_std": 0.0,
                 "gap_sd": None, "gap_note": "no spread: 1 random control (top lower)"})  # fmt: skip
    model = {
        "accuracy": {"sst2": {"clean": acc, "adversarial": adv}},
        "predictivity": {"sst2": {"max": 0.9, "top1pct_per_layer_mean": 0.7}},
        "rho_clean_adversarial": {"sst2": 0.25},
        "transfer": {"absolute": {"sst2": {"adv_sst2": 0.4, "sst2": 0.8}}},
        "suppression": {"sst2": rows},
    }
    text = multitask_markdown({"models": {"m": model}, "tasks": ["sst2"],
                               "adversarial": {"sst2": "adv_sst2"}})  # fmt: skip
    # the paper's Table 1: SST-2 98.7 ± 2.6 (RoBERTa), 94.0 ± 0.4 (T5); AdvSST2 45.3 / 45.4
    assert "| sst2 | 80.0 ± 2.0 | 98.7 ± 2.6 | 94.0 ± 0.4 |" in text
    assert "| adv_sst2 | 40.0 ± 1.0 | 45.3 ± 4.5 | 45.4 ± 3.3 |" in text
    assert "| sst2 | 0.900 | 0.700 | 0.250 |" in text
    assert "| prompt of | sst2 | adv_sst2 |\n|---|---|---|\n| sst2 | 0.800 | 0.400 |" in text
    assert "| 0.600 vs 0.700 ± 0.000 (no spread: 1 random control (top lower)) | 2 of 4 |" in text
    # an older summary's inf (no spread) is not counted either
    rows[-1] = {**rows[-1], "gap_sd": float("inf"), "gap_note": None}
    text = multitask_markdown({"models": {"m": model}, "tasks": ["sst2"],
                               "adversarial": {"sst2": "adv_sst2"}})  # fmt: skip
    assert "0.600 vs 0.700 ± 0.000 (no spread in the random controls) | 2 of 4 |" in text


@pytest.mark.parametrize("content,match", [(None, "does not exist"), ("{", "not JSON"),
                                           ('{"model": 1}', "multi-task")])  # fmt: skip
def test_tables_of_something_else_is_a_clear_error(tmp_path, capsys, content, match):
    if content is not None:
        (tmp_path / "summary.json").write_text(content)
    assert main(["tables", str(tmp_path)]) == 2
    assert match in capsys.readouterr().err


# ---------------------------------------------------------------------------- faults (issue 32)


def _results(summary: dict) -> dict:
    """What the study computed, as summary.json holds it (strict JSON: NaN is null)."""
    from neuronlens.io import json_text

    m = summary["models"]["tiny:bert"]
    return json.loads(json_text({k: v for k, v in m.items() if k != "steps"}))


class _Killed(BaseException):
    pass


def test_a_killed_seed_of_a_changed_config_is_not_reused_after_a_revert(tmp_path, monkeypatch):
    """Killed right after seed 0's prompt was saved under a changed config (n_tokens 3 -> 5),
    then reverted: seed 0 of the changed run is not taken for the reverted one, every prompt
    has 3 tokens, and the results equal an undisturbed run's."""
    import os

    from neuronlens.prompts import PromptResult
    from neuronlens.study.single import load_study_model

    cfg = load_config(_write(tmp_path, CONFIG))
    want = _results(run_multitask_study(cfg, tmp_path / "clean", log=lambda *_: None))
    out = tmp_path / "out"
    run_multitask_study(cfg, out, log=lambda *_: None)
    changed = MultiTaskConfig(**{**_raw(cfg), "n_tokens": 5})
    real = os.replace

    def replace(src, dst, *a, **k):
        real(src, dst, *a, **k)
        if str(dst).endswith("toy_sentiment/seed0.key.json"):
            raise _Killed(dst)

    with monkeypatch.context() as m:
        m.setattr(os, "replace", replace)
        with pytest.raises(_Killed):
            run_multitask_study(changed, out, log=lambda *_: None)
    logged = []
    got = _results(run_multitask_study(cfg, out, log=logged.append))
    assert got == want
    assert not any("seed 0: reused" in line for line in logged)
    model = load_study_model("tiny:bert")
    for f in (out / "tiny-bert" / "prompts").rglob("seed*.safetensors"):
        assert PromptResult.load(f.with_suffix(""), model).n_tokens == 3, f


def test_a_finished_seed_with_a_damaged_file_is_tuned_again(tmp_path, monkeypatch):
    import neuronlens.study.multitask as mt

    cfg = load_config(_write(tmp_path, CONFIG))
    out = tmp_path / "out"
    run_multitask_study(cfg, out, log=lambda *_: None)
    model_dir = out / "tiny-bert"
    (model_dir / "steps" / "prompts--toy_sentiment.json").unlink()  # as if killed in the step
    seed0 = model_dir / "prompts" / "toy_sentiment" / "seed0.safetensors"
    seed0.write_bytes(seed0.read_bytes()[:-10])
    calls = []
    real = mt.tune_prompt
    monkeypatch.setattr(mt, "tune_prompt", lambda *a, **k: calls.append(k["seed"]) or real(*a, **k))
    logged = []
    run_multitask_study(cfg, out, log=logged.append)
    assert calls == [0]  # seed 0's file changed: tuned again; seed 1 is whole: reused
    assert any("seed 1: reused" in line for line in logged)


@pytest.mark.parametrize(
    "rel,how",
    [("accuracy.json", "garbage"), ("specificity.json", "truncated"),
     ("transfer.json", "swapped"), ("scores/toy_sentiment-adv.safetensors", "swapped"),
     ("cross--toy_sentiment.json", "truncated"), ("prompts/mt_other/seed1.json", "garbage")],
)  # fmt: skip
def test_a_damaged_multitask_artifact_is_recomputed(tmp_path, rel, how):
    cfg = load_config(_write(tmp_path, CONFIG))
    out = tmp_path / "out"
    want = _results(run_multitask_study(cfg, out, log=lambda *_: None))
    path = out / "tiny-bert" / rel
    swap = {"transfer.json": "accuracy.json",
            "scores/toy_sentiment-adv.safetensors": "scores/toy_sentiment.safetensors"}  # fmt: skip
    data = path.read_bytes()
    if how == "garbage":
        path.write_bytes(b"\x00garbage" * (len(data) // 8 + 1))
    elif how == "truncated":
        path.write_bytes(data[: len(data) // 3])
    else:
        path.write_bytes((out / "tiny-bert" / swap[rel]).read_bytes())
    logged = []
    got = run_multitask_study(cfg, out, log=logged.append)
    assert any(rel in line for line in logged), logged
    assert _results(got) == want


def test_one_model_and_task_names_each_on_its_own_eval_split(tmp_path):
    """The issue's config: ``model = "..."`` (one model) and ``tasks`` as names; each task is
    evaluated on its own default split (toy_sentiment: test, SST-2: dev)."""
    from .conftest import SHARED_DATA

    if not (SHARED_DATA / "sst2").is_dir():
        pytest.skip("needs ../shared/data")
    text = (
        'model = "tiny:bert"\ntasks = ["toy_sentiment", "sst2"]\nseeds = [0]\ntrain_size = 30\n'
        f'eval_size = 20\nn_tokens = 2\nsuppression_percents = [5]\ndata_dir = "{SHARED_DATA}"\n'
    )
    cfg = load_config(_write(tmp_path, text))
    assert cfg.models == ["tiny:bert"]
    summary = run_multitask_study(cfg, tmp_path / "out", log=lambda *_: None)
    data = summary["models"]["tiny:bert"]["data"]
    assert data["toy_sentiment"]["eval_split"] == "test" and data["sst2"]["eval_split"] == "dev"
    with pytest.raises(ConfigError, match="both 'model'"):
        MultiTaskConfig(model="tiny:bert", models=["tiny:gpt2"], tasks=["toy_sentiment", "sst2"])
    with pytest.raises(ConfigError, match="'models' \\(or 'model'\\) is missing"):
        MultiTaskConfig(tasks=["toy_sentiment", "sst2"])
