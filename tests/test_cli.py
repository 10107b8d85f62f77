"""The command line: studies from a TOML config (resumable), the demo, help, bad configs."""

import importlib.util
import json
import shutil
import subprocess
import sys
import zlib

import pytest

from neuronlens.cli import main
from neuronlens.errors import NeuronLensError
from neuronlens.study import ConfigError, StudyConfig, study_data
from neuronlens.tasks import Task, count_contained, get_task, register_task

from .conftest import SHARED_DATA
from .probe_fixtures import word_task

CONFIG = """
model = "tiny:bert"
task = "cli_words"
train_size = 40
eval_split = "dev"
eval_size = 23
n_tokens = 3
seeds = [0, 1]
suppression_percents = [0, 10]
random_repeats = 2
prune_keep = 0.5
retrain_steps = 3
"""


@pytest.fixture(scope="module", autouse=True)
def _task():
    register_task(word_task(name="cli_words"), replace=True)


def test_study_runs_resumes_and_writes_a_report(tmp_path, capsys):
    cfg = tmp_path / "study.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    assert main(["study", str(cfg), "--out", str(out)]) == 0
    first = json.loads((out / "summary.json").read_text())
    for name in (
        "report.html",
        "predictivity.safetensors",
        "suppression.json",
        "pruning.json",
        "prompts/seed0.safetensors",
        "prompts/seed1.safetensors",
        "pruned/pruning.json",
    ):
        assert (out / name).exists(), name
    assert not any(s["loaded"] for s in first["steps"].values())
    html = (out / "report.html").read_text()
    assert "plotly" in html.lower() and "suppression" in html
    n_figures = html.count("Plotly.newPlot")
    assert n_figures == 3  # heatmap, predictivity / neuron-accuracy boxes, suppression curve
    assert first["pruning"]["kept_ratio"] == pytest.approx(0.5, abs=0.05)
    capsys.readouterr()
    assert main(["study", str(cfg), "--out", str(out)]) == 0
    second = json.loads((out / "summary.json").read_text())
    assert all(s["loaded"] for s in second["steps"].values())
    assert second["prompt_accuracy"] == first["prompt_accuracy"]
    assert second["predictivity"] == first["predictivity"]
    assert "loaded" in capsys.readouterr().out
    # the resumed report is as complete as the first (figures rebuilt from the saved results)
    assert (out / "report.html").read_text().count("Plotly.newPlot") == n_figures
    # a small report that loads Plotly from its CDN: the same figures, without the library
    assert main(["study", str(cfg), "--out", str(out), "--plotly-js", "cdn"]) == 0
    small = (out / "report.html").read_text()
    assert small.count("Plotly.newPlot") == n_figures and "cdn.plot.ly" in small
    assert len(small) < len(html) - 3_000_000
    if KALEIDO:  # every figure also as a still image, numbered in the report's order
        assert main(["study", str(cfg), "--out", str(out), "--images", "svg"]) == 0
        svgs = sorted((out / "figures").glob("*.svg"))
        assert len(svgs) == n_figures and svgs[0].name.startswith("01-skill-neuron")
        assert all(f.read_text().lstrip().startswith("<svg") for f in svgs)
    assert second["suppression"] == first["suppression"]
    (out / "suppression.json").write_text("[1, 2]")  # damaged: recomputed, not a crash
    assert main(["study", str(cfg), "--out", str(out)]) == 0
    assert "recomputing" in capsys.readouterr().out
    third = json.loads((out / "summary.json").read_text())
    assert not third["steps"]["suppression"]["loaded"] and third["steps"]["pruning"]["loaded"]
    assert third["suppression"] == first["suppression"]  # same seeds, same numbers


@pytest.mark.parametrize(
    "text,field",
    [
        ('model = "tiny:bert"', "task"),
        (CONFIG + "\nsedes = [1]", "sedes"),
        (CONFIG.replace("seeds = [0, 1]", 'seeds = "0"'), "seeds"),
        (CONFIG.replace("prune_keep = 0.5", "prune_keep = 1.5"), "prune_keep"),
        (CONFIG.replace("n_tokens = 3", "n_tokens = 0"), "n_tokens"),
        (CONFIG + '\nvalidation = "heldout"', "validation"),
        (CONFIG + '\nreadout = "cls"', "readout"),
        (CONFIG + '\nablation = "shuffle"', "ablation"),
        (CONFIG + "\nper_layer = 1", "per_layer"),
        (CONFIG + '\npositions = "all"', "positions"),
    ],
)
def test_bad_config_names_the_field(tmp_path, capsys, text, field):
    cfg = tmp_path / "bad.toml"
    cfg.write_text(text)
    with pytest.raises(ConfigError, match=field):
        StudyConfig.from_toml(cfg)
    assert main(["study", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert field in capsys.readouterr().err


def test_shipped_real_configs_are_valid():
    """The real-data study configs in benchmarks/ stay in step with the config classes."""
    from pathlib import Path

    from neuronlens.study import MultiTaskConfig, load_config

    path = Path(__file__).parents[1] / "benchmarks" / "study_minilm_sst2.toml"
    cfg = StudyConfig.from_toml(path)
    assert (cfg.model, cfg.task, cfg.eval_split, cfg.eval_size) == ("minilm", "sst2", "dev", 872)
    multi = load_config(path.with_name("study_multitask_minilm.toml"))
    assert isinstance(multi, MultiTaskConfig) and len(multi.tasks) == 5


def _phrase_task(train_has_phrases: bool) -> Task:
    """Sentences of 6-8 words, each with its prefixes of >= 3 words (phrases), and a
    validation split of held-out phrases (which leak: they lie inside training sentences)."""
    rows = []
    for i in range(30):
        words = [f"s{i}w{j}" for j in range(6 + i % 3)]
        rows += [(" ".join(words[:k]), i % 2) for k in range(3, len(words) + 1)]
    task = Task.from_lists(
        "phrase_words",
        label_names=("neg", "pos"),
        splits={
            "train": list(zip(*rows[::2], strict=True)),
            "validation": list(zip(*rows[1::2], strict=True)),
        },
    )
    task.train_has_phrases = train_has_phrases
    return task


def test_study_validation_choice():
    """'auto' splits whole sentences off train for phrase tasks, else uses the validation
    split when there is one; the split-off sentences and their phrases leave train."""
    # evaluated elsewhere than its validation split (which, were it the task's eval split,
    # would never validate: see test_validation_is_never_the_evaluation_split)
    cfg = StudyConfig(model="tiny:bert", task="phrase_words", train_size=1000, eval_size=5,
                      eval_split="dev")  # fmt: skip
    task = _phrase_task(True)
    train, val, how = study_data(cfg, task)
    pool = task.load("train").texts
    whole = [t for t in val.texts if not any(t != u and u.startswith(t + " ") for u in pool)]
    assert how == "sentences" and len(val) == 5 and len(whole) == 5  # longest rows, not phrases
    assert count_contained(train, val) == 0 and len(train) > 0
    # the naive split leaks: its phrases are prefixes of training sentences
    train, val, how = study_data(cfg, _phrase_task(False))
    assert how == "split" and len(val) == 5 and count_contained(train, val) > 0
    for choice, expect in (("none", False), ("split", "split"), ("sentences", "sentences")):
        cfg.validation = choice
        _, val, how = study_data(cfg, _phrase_task(True))
        assert how == choice and (val is False) == (expect is False)
    cfg.validation = "heldout"  # changed after the checks in StudyConfig
    with pytest.raises(ConfigError, match="validation"):
        study_data(cfg, _phrase_task(True))
    with pytest.raises(ConfigError, match="validation"):  # a config built directly is checked
        StudyConfig(model="tiny:bert", task="phrase_words", validation="heldout")
    with pytest.raises(ConfigError, match="prune_keep"):
        StudyConfig(model="tiny:bert", task="phrase_words", prune_keep=2.0)
    cfg = StudyConfig(model="tiny:bert", task="cli_words", validation="auto")
    train, val, how = study_data(cfg, get_task("cli_words"))  # no validation split:
    assert how == "split off train" and len(val) > 0  # rows split off train, disjoint
    assert not set(zip(val.texts, val.labels, strict=True)) & set(
        zip(train.texts, train.labels, strict=True)
    )
    cfg.validation = "none"
    assert study_data(cfg, get_task("cli_words"))[1:] == (False, "none")
    cfg.validation = "auto"
    cfg.validation = "split"
    with pytest.raises(ConfigError, match="no validation split"):
        study_data(cfg, get_task("cli_words"))


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="needs ../shared/data")
def test_sst2_study_validates_on_unseen_sentences():
    cfg = StudyConfig(model="minilm", task="sst2", data_dir=str(SHARED_DATA), train_size=2000)
    train, val, how = study_data(cfg, get_task("sst2"))
    assert how == "sentences" and len(val) == 300 and len(train) == 2000
    assert count_contained(train, val) == 0


def test_missing_or_broken_config_file(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        StudyConfig.from_toml(tmp_path / "nope.toml")
    (tmp_path / "x.toml").write_text("model = ")
    with pytest.raises(ConfigError, match="TOML"):
        StudyConfig.from_toml(tmp_path / "x.toml")


@pytest.mark.parametrize("args", [["--help"], ["demo", "--help"], ["study", "--help"]])
def test_help_for_every_command(args):
    out = subprocess.run(
        [sys.executable, "-m", "neuronlens.cli", *args], capture_output=True, text=True
    )
    assert out.returncode == 0 and "usage: neuronlens" in out.stdout


@pytest.mark.slow
def test_demo_on_minilm(tmp_path):
    """The real demo: MiniLM, offline, a few minutes."""
    assert main(["demo", "--out", str(tmp_path)]) == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "all-MiniLM-L6-v2"
    assert (tmp_path / "report.html").is_file()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KALEIDO = CHROMIUM is not None and importlib.util.find_spec("kaleido") is not None
CHROME_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
    "--virtual-time-budget=15000",
]


def _png_pixels_vary(path) -> bool:
    """Whether a PNG's decompressed scanlines hold more than a handful of byte values."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat = 8, b""
    while pos < len(data):
        length = int.from_bytes(data[pos : pos + 4], "big")
        kind = data[pos + 4 : pos + 8]
        if kind == b"IDAT":
            idat += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    return len(set(zlib.decompress(idat))) > 16


@pytest.mark.skipif(
    CHROMIUM is None,
    reason="headless Chromium not installed (apt-get install chromium; .ci/run installs it)",
)
def test_report_renders_in_headless_chromium(tmp_path):
    cfg = tmp_path / "study.toml"
    cfg.write_text(CONFIG)
    out = tmp_path / "out"
    assert main(["study", str(cfg), "--out", str(out)]) == 0
    url = (out / "report.html").resolve().as_uri()
    profile = tmp_path / "profile"
    dom = subprocess.run(
        [CHROMIUM, *CHROME_FLAGS, f"--user-data-dir={profile}", "--dump-dom", url],
        capture_output=True,
        text=True,
        timeout=180,
    ).stdout
    assert dom.count('class="main-svg"') >= 2  # Plotly drew the figures
    assert "hoverlayer" in dom  # hover layer attached
    assert "heatmaplayer" in dom or "hm" in dom
    shot = tmp_path / "shot.png"
    subprocess.run(
        [
            CHROMIUM,
            *CHROME_FLAGS,
            f"--user-data-dir={profile}",
            "--window-size=1200,900",
            f"--screenshot={shot}",
            url,
        ],
        capture_output=True,
        timeout=180,
    )
    assert shot.is_file() and _png_pixels_vary(shot)


def test_study_reads_the_answer_where_the_config_says(tmp_path, capsys):
    """readout, per-layer selection and the ablation reach the prompts and the curve; a
    resumed study re-tunes prompts of another readout instead of loading them."""
    text = CONFIG.replace('model = "tiny:bert"', 'model = "tiny:gpt2"').replace(
        "seeds = [0, 1]", "seeds = [0]"
    )
    cfg = tmp_path / "study.toml"
    cfg.write_text(text + '\nablation = "mean"\n')
    out = tmp_path / "out"
    assert main(["study", str(cfg), "--out", str(out)]) == 0
    from neuronlens.prompts import PromptResult
    from neuronlens.study import load_study_model

    model = load_study_model("tiny:gpt2")
    assert PromptResult.load(out / "prompts" / "seed0", model).head.readout == "prompt"
    curve = json.loads((out / "suppression.json").read_text())
    assert curve["per_layer"] and curve["ablation"] == "mean-replaced"
    cfg.write_text(text + '\nreadout = "last"\n')
    capsys.readouterr()
    assert main(["study", str(cfg), "--out", str(out)]) == 0
    log = capsys.readouterr().out
    assert "[prompts] computed (changed: readout)" in log
    assert "[predictivity] computed (changed: results of prompts)" in log  # not the stale map
    assert PromptResult.load(out / "prompts" / "seed0", model).head.readout == "last"
    summary = json.loads((out / "summary.json").read_text())
    assert not any(s["loaded"] for s in summary["steps"].values())


def test_validation_is_never_the_evaluation_split():
    """GLUE tasks name their dev set both validation and dev: early stopping then takes
    examples split off train, never the data the study evaluates on."""
    from neuronlens.tasks import Split

    base = word_task(n=80, name="val_is_dev")
    dev = base.splits["dev"]
    task = Task(
        name="val_is_dev", label_names=base.label_names, template=base.template,
        verbalizer=base.verbalizer, label_space=base.label_space,
        splits={"train": base.splits["train"], "validation": dev, "dev": Split(data=dev.data)},
    )  # fmt: skip
    task.splits["dev"] = dev  # the same split object, as the built-in GLUE tasks have
    cfg = StudyConfig(model="tiny:bert", task="val_is_dev", train_size=1000, eval_size=40)
    train, val, how = study_data(cfg, task)
    assert how == "split off train" and (len(val), len(train)) == (20, 60)  # 80 rows split
    assert set(val.texts) <= set(task.load("train").texts)


@pytest.mark.skipif(not KALEIDO, reason="kaleido or Chromium missing (pip install '.[images]')")
def test_figures_as_still_images(tmp_path):
    import plotly.graph_objects as go

    from neuronlens.study.report import write_page

    fig = go.Figure(go.Heatmap(z=[[0.0, 1.0], [1.0, 0.5]]))
    sections = [("A heatmap: layer x neuron", fig), ("a table", [{"a": 1}]), ("curve", go.Figure(
        go.Scatter(x=[0, 1, 2], y=[0.8, 0.7, 0.5])))]  # fmt: skip
    write_page(tmp_path / "report.html", "t", sections, images="png")
    pngs = sorted((tmp_path / "figures").glob("*.png"))
    assert [p.name for p in pngs] == ["01-a-heatmap-layer-x-neuron.png", "02-curve.png"]
    assert all(_png_pixels_vary(p) for p in pngs)  # drawn, not blank
    assert not list(tmp_path.glob(".*"))  # no temporary folder left
    write_page(tmp_path / "report.html", "t", sections[1:], images="png")  # one figure now
    assert [p.name for p in (tmp_path / "figures").iterdir()] == ["01-curve.png"]


def test_still_images_need_kaleido_and_a_known_format(tmp_path, monkeypatch, capsys):
    from neuronlens.study.report import check_images

    with pytest.raises(NeuronLensError, match="png"):
        check_images("jpg")
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "kaleido" else real(n, *a)
    )
    cfg = tmp_path / "study.toml"
    cfg.write_text(CONFIG)
    assert main(["study", str(cfg), "--out", str(tmp_path / "o"), "--images", "png"]) == 2
    assert "pip install 'neuronlens[images]'" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # refused before anything ran
