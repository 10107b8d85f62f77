"""Tasks: local formats of the shared data, hub layout (offline, faked), errors, custom tasks."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import datasets
import pytest

from neuronlens.errors import (
    DataError,
    DataFileNotFoundError,
    EmptyDataError,
    ShapeMismatchError,
)
from neuronlens.tasks import (
    DATA_DIR_ENV,
    TASKS,
    Task,
    TaskData,
    generate_toy_sentiment,
    get_task,
    list_tasks,
    register_task,
    resolve_data_dir,
    toy_sentiment_task,
)

DATA_DIR = Path(
    os.environ.get(DATA_DIR_ENV) or Path(__file__).resolve().parents[2] / "shared" / "data"
)
needs_data = pytest.mark.skipif(
    not DATA_DIR.is_dir(),
    reason=f"real data folder {DATA_DIR} absent: set {DATA_DIR_ENV} to the shared data folder",
)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests pass data_dir= explicitly; the environment must not leak into them."""
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


@pytest.fixture
def restore_registry():
    saved = dict(TASKS)
    yield
    TASKS.clear()
    TASKS.update(saved)


class FakeHub:
    """Stands in for ``datasets.load_dataset``: returns given columns, records the calls."""

    def __init__(self, columns: dict[str, list], as_dict: bool = False) -> None:
        self.columns = columns
        self.as_dict = as_dict
        self.calls: list[tuple[str, str | None, str]] = []

    def __call__(self, path, name=None, split=None, **kwargs):
        self.calls.append((path, name, split))
        ds = datasets.Dataset.from_dict(self.columns)
        return datasets.DatasetDict({split: ds}) if self.as_dict else ds


def no_hub(*args, **kwargs):
    raise AssertionError("the hub must not be called here")


def raw_table(rel: str, delimiter: str = "\t", quoted: bool = False) -> list[dict]:
    """A local file's first rows, read here independently of the loader."""
    with (DATA_DIR / rel).open(encoding="utf-8-sig", newline="") as f:
        quoting = csv.QUOTE_MINIMAL if quoted else csv.QUOTE_NONE
        return list(csv.DictReader(f, delimiter=delimiter, quoting=quoting))


def raw_json(rel: str, key: str | None = None) -> list[dict]:
    path = DATA_DIR / rel
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return json.loads(path.read_text())[key]


# --- every local format of the shared data -------------------------------------------------

# (task, split, rows in the data README, exact label counts where checked)
LOCAL_SPLITS = [
    ("sst2", "train", 60614, None),
    ("sst2", "validation", 6735, None),
    ("sst2", "dev", 872, {0: 428, 1: 444}),
    ("sst2", "test", 872, {0: 428, 1: 444}),
    ("adv_sst2", "validation", 148, None),
    ("adv_qqp", "validation", 78, None),
    ("adv_qnli", "validation", 148, None),
    ("adv_mnli", "validation", 121, None),
    ("adv_mnli", "validation_mismatched", 162, None),
    ("ethics_deontology", "train", 18164, None),
    ("ethics_deontology", "test", 3596, None),
    ("ethics_justice", "train", 21791, None),
    ("ethics_justice", "test", 2704, {0: 1350, 1: 1354}),
    ("qnli", "validation", 5463, {0: 2702, 1: 2761}),
    ("mrpc", "train", 3668, None),
    ("mrpc", "validation", 408, None),
    ("agnews", "test", 7600, {0: 1900, 1: 1900, 2: 1900, 3: 1900}),
    # The README says 10,000; the file holds 10,001 rows (11 of them duplicates).
    ("agnews", "validation", 10001, None),
    ("cb", "train", 32, None),
    ("cb", "validation", 56, None),
    ("cb", "dev32", 32, None),
]


@needs_data
@pytest.mark.parametrize(("name", "split", "rows", "counts"), LOCAL_SPLITS)
def test_local_split_is_read(name, split, rows, counts, monkeypatch):
    monkeypatch.setattr(datasets, "load_dataset", no_hub)
    task = get_task(name)
    data = task.load(split, data_dir=DATA_DIR, source="local")
    assert len(data) == rows
    assert (data.task, data.split, data.label_names) == (name, split, task.label_names)
    assert set(data.labels) == set(range(task.num_labels))
    assert (data.texts_b is not None) == task.is_pair
    assert all(text.strip() for text in data.texts[:50])
    if counts is not None:
        assert data.label_counts() == counts
    # "auto" picks the local file when the data dir is set
    assert task.load(split, data_dir=DATA_DIR, limit=3) == data.take(3)


@needs_data
def test_qnli_words_map_to_advqnli_numbers():
    qnli, adv = get_task("qnli"), get_task("adv_qnli")
    assert qnli.label_names == adv.label_names == ("entailment", "not_entailment")
    assert qnli.label_space == adv.label_space == "nli2"
    data = qnli.load("dev", data_dir=DATA_DIR, limit=200)
    words = [row["label"] for row in raw_table("qnli/dev.tsv")[:200]]
    assert [qnli.label_names[y] for y in data.labels] == words
    assert data.labels[:2] == (0, 1)  # entailment, not_entailment
    adv_data = adv.load("validation", data_dir=DATA_DIR)
    assert list(adv_data.labels) == [r["label"] for r in raw_json("advglue/dev.json", "qnli")]


@needs_data
def test_mrpc_bom_header_and_bare_quotes():
    data = get_task("mrpc").load("validation", data_dir=DATA_DIR, limit=2)
    assert data.labels == (1, 0)
    assert data.texts[0].startswith("He said the foodservice pie business")
    assert data.texts_b[0].startswith('"The foodservice pie business')  # kept as in the file


@needs_data
def test_agnews_quoted_fields_are_unquoted():
    data = get_task("agnews").load("validation", data_dir=DATA_DIR)
    assert any(t.startswith('"Personal Internet Communicator" is geared') for t in data.texts)
    assert data.label_names == ("World", "Sports", "Business", "Sci/Tech")


@needs_data
def test_cb_uses_mnli_label_order():
    cb = get_task("cb")
    assert cb.label_names == get_task("adv_mnli").label_names
    assert cb.label_names == ("entailment", "neutral", "contradiction")
    data = cb.load("validation", data_dir=DATA_DIR, limit=2)
    assert data.labels == (2, 1)  # contradiction, neutral


# --- the hub path, offline: fake load_dataset with rows in the hub's real layout -----------

GLUE_QNLI = {"entailment": 0, "not_entailment": 1}
SUPERGLUE_CB = {"entailment": 0, "contradiction": 1, "neutral": 2}
AGNEWS = {"World": 0, "Sports": 1, "Business": 2, "Sci/Tech": 3}


def _sst2_dev(n):
    rows = raw_table("sst2/glue_dev.tsv")[:n]
    return {
        "sentence": [r["sentence"] for r in rows],
        "label": [int(r["label"]) for r in rows],
        "idx": list(range(n)),
    }


def _qnli_dev(n):
    rows = raw_table("qnli/dev.tsv")[:n]
    return {
        "question": [r["question"] for r in rows],
        "sentence": [r["sentence"] for r in rows],
        "label": [GLUE_QNLI[r["label"]] for r in rows],
        "idx": list(range(n)),
    }


def _mrpc_dev(n):
    rows = raw_table("mrpc/dev.tsv")[:n]
    return {
        "sentence1": [r["#1 String"] for r in rows],
        "sentence2": [r["#2 String"] for r in rows],
        "label": [int(r["Quality"]) for r in rows],
        "idx": list(range(n)),
    }


def _cb_val(n):
    rows = raw_json("cb/val.jsonl")[:n]
    return {
        "premise": [r["premise"] for r in rows],
        "hypothesis": [r["hypothesis"] for r in rows],
        "idx": list(range(n)),
        "label": [SUPERGLUE_CB[r["label"]] for r in rows],
    }


def _justice_test(n):
    rows = raw_table("ethics/justice_test.csv", delimiter=",", quoted=True)[:n]
    return {"label": [int(r["label"]) for r in rows], "scenario": [r["scenario"] for r in rows]}


def _deontology_test(n):
    rows = raw_table("ethics/deontology_test.csv", delimiter=",", quoted=True)[:n]
    return {
        "label": [int(r["label"]) for r in rows],
        "scenario": [r["scenario"] for r in rows],
        "excuse": [r["excuse"] for r in rows],
    }


def _agnews_test(n):
    with (DATA_DIR / "agnews/test.tsv").open(encoding="utf-8", newline="") as f:
        rows = list(csv.reader(f, delimiter="\t"))[:n]
    return {"text": [r[0] for r in rows], "label": [AGNEWS[r[1]] for r in rows]}


def _adv(key, fields):
    def build(n):
        rows = raw_json("advglue/dev.json", key)[:n]
        return {f: [r[f] for r in rows] for f in (*fields, "label", "idx")}

    return build


HUB_CASES = [
    ("sst2", "dev", ("nyu-mll/glue", "sst2", "validation"), _sst2_dev),
    ("qnli", "validation", ("nyu-mll/glue", "qnli", "validation"), _qnli_dev),
    ("mrpc", "validation", ("nyu-mll/glue", "mrpc", "validation"), _mrpc_dev),
    ("cb", "validation", ("aps/super_glue", "cb", "validation"), _cb_val),
    ("ethics_justice", "test", ("hendrycks/ethics", "justice", "validation"), _justice_test),
    ("ethics_deontology", "test", ("hendrycks/ethics", "deontology", "validation"), _deontology_test),
    ("agnews", "test", ("fancyzhx/ag_news", None, "test"), _agnews_test),
    ("adv_sst2", "validation", ("AI-Secure/adv_glue", "adv_sst2", "validation"), _adv("sst2", ["sentence"])),
    ("adv_qqp", "validation", ("AI-Secure/adv_glue", "adv_qqp", "validation"), _adv("qqp", ["question1", "question2"])),
    ("adv_qnli", "validation", ("AI-Secure/adv_glue", "adv_qnli", "validation"), _adv("qnli", ["question", "sentence"])),
    ("adv_mnli", "validation", ("AI-Secure/adv_glue", "adv_mnli", "validation"), _adv("mnli", ["premise", "hypothesis"])),
    ("adv_mnli", "validation_mismatched", ("AI-Secure/adv_glue", "adv_mnli_mismatched", "validation"), _adv("mnli-mm", ["premise", "hypothesis"])),
]  # fmt: skip


@needs_data
@pytest.mark.parametrize(("name", "split", "hub_id", "build"), HUB_CASES)
def test_hub_gives_same_data_as_local(name, split, hub_id, build, monkeypatch):
    n = 12
    fake = FakeHub(build(n), as_dict=name == "cb")
    monkeypatch.setattr(datasets, "load_dataset", fake)
    task = get_task(name)
    from_hub = task.load(split, source="hub")
    assert fake.calls == [hub_id]
    assert from_hub == task.load(split, data_dir=DATA_DIR, source="local", limit=n)
    # "auto" without a data dir goes to the hub
    assert task.load(split, limit=5) == from_hub.take(5)


def test_hub_hold_out_splits_partition_glue_train(monkeypatch):
    n = 7000
    columns = {"sentence": [f"s{i}" for i in range(n)], "label": [i % 2 for i in range(n)]}
    monkeypatch.setattr(datasets, "load_dataset", FakeHub(columns))
    sst2 = get_task("sst2")
    train, validation = sst2.load("train", source="hub"), sst2.load("validation", source="hub")
    assert len(validation) == 6735 and len(train) == n - 6735
    assert set(train.texts).isdisjoint(validation.texts)
    assert set(train.texts) | set(validation.texts) == set(columns["sentence"])
    assert sst2.load("train", source="hub") == train  # seeded


def test_hub_errors_are_data_errors(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError, match="stanfordnlp/imdb.*no network"):
        get_task("imdb").load("train")
    monkeypatch.setattr(datasets, "load_dataset", FakeHub({"sentence": ["a"], "label": [-1]}))
    with pytest.raises(DataError, match="unlabeled"):
        get_task("sst2").load("dev", source="hub")
    monkeypatch.setattr(datasets, "load_dataset", FakeHub({"text": ["a"], "label": [0]}))
    with pytest.raises(DataError, match=r"no column 'sentence'.*\['text', 'label'\]"):
        get_task("sst2").load("dev", source="hub")


# --- errors ----------------------------------------------------------------------------------


def test_no_data_dir_configured():
    with pytest.raises(DataFileNotFoundError, match=f"data_dir=.*{DATA_DIR_ENV}"):
        resolve_data_dir()
    with pytest.raises(DataFileNotFoundError, match=DATA_DIR_ENV):
        get_task("sst2").load("dev", source="local")
    with pytest.raises(DataFileNotFoundError, match=DATA_DIR_ENV):
        get_task("cb").load("dev32")  # local only: "auto" has nowhere else to go


def test_data_dir_from_env_and_missing_folder(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    assert resolve_data_dir() == tmp_path
    (tmp_path / "other").mkdir()
    assert resolve_data_dir(tmp_path / "other") == tmp_path / "other"  # the argument wins
    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        resolve_data_dir(tmp_path / "missing")


def test_missing_file_names_path_and_setting(tmp_path):
    with pytest.raises(DataFileNotFoundError) as err:
        get_task("sst2").load("dev", data_dir=tmp_path, source="local")
    message = str(err.value)
    assert str(tmp_path / "sst2" / "glue_dev.tsv") in message and "data_dir=" in message
    task = Task.from_file("t", {"train": tmp_path / "nope.csv"}, "text", "label", ("a", "b"))
    with pytest.raises(DataFileNotFoundError, match="nope.csv"):
        task.load("train")


def test_wrong_column_names_column_and_columns(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,1\n")
    task = Task.from_file("t", {"train": path}, "sentence", "label", ("neg", "pos"))
    with pytest.raises(DataError, match=r"no column 'sentence'.*\['text', 'label'\]"):
        task.load("train")


def test_unknown_label_string(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"t": "a", "y": "pos"}\n{"t": "b", "y": "maybe"}\n')
    task = Task.from_file("t", {"train": path}, "t", "y", ("neg", "pos"))
    with pytest.raises(DataError, match=r"unknown label 'maybe'.*\['neg', 'pos'\]"):
        task.load("train")
    with pytest.raises(DataError, match="unknown label 'x'"):
        Task.from_lists("t", ["a"], ["x"], label_names=("neg", "pos"))


def test_empty_split(tmp_path):
    path = tmp_path / "d.tsv"
    path.write_text("sentence\tlabel\n")
    task = Task.from_file("t", {"train": path}, "sentence", "label", ("neg", "pos"))
    with pytest.raises(EmptyDataError, match="no rows"):
        task.load("train")
    with pytest.raises(EmptyDataError, match="task 'e', split 'train'"):
        Task.from_lists("e", [], [], label_names=("neg", "pos"))


def test_unknown_task_and_split():
    with pytest.raises(DataError, match="unknown task 'nope'.*'sst2'"):
        get_task("nope")
    with pytest.raises(DataError, match=r"no split 'nope'.*\['train', 'validation', 'dev'"):
        get_task("sst2").load("nope")
    with pytest.raises(DataError, match="source must be"):
        get_task("sst2").load("dev", source="web")
    with pytest.raises(DataError, match="not on the hub"):
        get_task("cb").load("dev32", source="hub")
    with pytest.raises(DataError, match="no local file"):
        get_task("imdb").load("train", source="local")


def test_task_data_checks():
    with pytest.raises(ShapeMismatchError, match="2 texts but 1 labels"):
        TaskData(("a", "b"), (0,), None, "t", "train", ("n", "p"))
    with pytest.raises(ShapeMismatchError, match="second texts"):
        TaskData(("a", "b"), (0, 1), ("x",), "t", "train", ("n", "p"))
    with pytest.raises(DataError, match=r"label 7 \(labels\[1\]\)"):
        TaskData(("a", "b"), (0, 7), None, "t", "train", ("n", "p"))
    with pytest.raises(DataError, match="not a string"):
        TaskData(("a", None), (0, 1), None, "t", "train", ("n", "p"))


def test_template_and_pairing_checks():
    with pytest.raises(DataError, match="no {mask}"):
        Task("t", ("a", "b"), template="{text} is")
    with pytest.raises(DataError, match="unknown fields"):
        Task("t", ("a", "b"), template="{text} {mask} {label}")
    with pytest.raises(DataError, match="gives no second text"):
        Task.from_lists("t", ["a"], [0], label_names=("a", "b"), template="{text} {mask} {text_b}")
    with pytest.raises(DataError, match="gives a second text"):
        Task.from_lists("t", ["a"], [0], label_names=("a", "b"), texts_b=["b"])
    with pytest.raises(ShapeMismatchError, match="verbalizer"):
        Task("t", ("a", "b"), verbalizer=("x",))


# --- custom tasks --------------------------------------------------------------------------


def test_from_lists_single_and_per_split():
    task = Task.from_lists(
        "mine", ["good", "bad", "fine"], ["pos", 0, "1"], label_names=("neg", "pos")
    )
    data = task.load("train")
    assert list(task.splits) == ["train"] and data.labels == (1, 0, 1)
    assert task.verbalizer == ("neg", "pos") and task.label_space == "mine"
    assert task.render(data.texts[0], mask_token="[MASK]") == "good It was [MASK]."
    pair = Task.from_lists(
        "pairs",
        label_names=("no", "yes"),
        template="{text} ? {mask} , {text_b}",
        splits={"train": (["a", "b"], [0, 1], ["c", "d"]), "validation": (["e"], ["yes"], ["f"])},
    )
    assert pair.is_pair and pair.load("validation").labels == (1,)
    assert pair.render_all(pair.load("train")) == ["a ? <mask> , c", "b ? <mask> , d"]
    with pytest.raises(DataError, match="pass text_b"):
        pair.render("a")
    with pytest.raises(DataError, match="not both"):
        Task.from_lists("x", ["a"], [0], label_names=("a", "b"), splits={"train": (["a"], [0])})


def test_from_file_csv_tsv_jsonl_json(tmp_path):
    (tmp_path / "train.csv").write_text('text,label\n"hello, world",pos\nbye,neg\n')
    (tmp_path / "dev.tsv").write_text('text\tlabel\nsay "hi"\t1\n')
    (tmp_path / "test.jsonl").write_text('{"text": "x", "label": 0}\n\n{"text": "y", "label": 1}\n')
    (tmp_path / "more.json").write_text(json.dumps({"part": [{"text": "z", "label": "pos"}]}))
    paths = {
        s: tmp_path / f
        for s, f in [("train", "train.csv"), ("dev", "dev.tsv"), ("test", "test.jsonl")]
    }
    task = Task.from_file("files", paths, "text", "label", ("neg", "pos"))
    assert task.load("train").texts == ("hello, world", "bye")
    assert task.load("train").labels == (1, 0)
    assert task.load("dev").texts == ('say "hi"',)
    assert task.load("test", limit=1).texts == ("x",)
    assert task.load("test").labels == (0, 1)
    as_json = Task.from_file(
        "j", {"train": tmp_path / "more.json"}, "text", "label", ("neg", "pos"), json_key="part"
    )
    assert as_json.load("train").labels == (1,)
    no_key = Task.from_file("j", {"train": tmp_path / "more.json"}, "text", "label", ("n", "p"))
    with pytest.raises(DataError, match="json_key"):
        no_key.load("train")
    with pytest.raises(DataError, match="is not one of"):
        Task.from_file("x", {"train": tmp_path / "a.txt"}, "text", "label", ("n", "p"))


def test_task_data_subset_take_counts():
    task = Task.from_lists(
        "s", [f"t{i}" for i in range(100)], [i % 3 for i in range(100)], label_names=("a", "b", "c")
    )
    data = task.load("train")
    sub = data.subset(10, seed=1)
    assert len(sub) == 10 and sub == data.subset(10, seed=1) and sub != data.subset(10, seed=2)
    assert len(set(sub.texts)) == 10 and set(sub.texts) <= set(data.texts)
    assert data.subset(1000) is data and data.take(1000) == data
    assert data.take(2).texts == ("t0", "t1")
    assert data.label_counts() == {0: 34, 1: 33, 2: 33}
    assert not data.is_binary and get_task("toy_sentiment").load("test").is_binary
    assert "n=100" in repr(data)


# --- synthetic task and registry -------------------------------------------------------------


def test_toy_sentiment_without_data_dir():
    task = get_task("toy_sentiment")
    train = task.load("train")
    assert [len(task.load(s)) for s in ("train", "validation", "test")] == [1000, 200, 200]
    assert train.label_counts() == {0: 500, 1: 500}
    assert train.texts[:20] != task.load("validation").texts[:20]
    assert task.label_space == get_task("sst2").label_space == "sentiment2"


def test_toy_sentiment_deterministic_and_seeded():
    assert generate_toy_sentiment(50, seed=3) == generate_toy_sentiment(50, seed=3)
    assert generate_toy_sentiment(50, seed=3) != generate_toy_sentiment(50, seed=4)
    texts, labels = generate_toy_sentiment(51, seed=0)
    assert labels.count(1) == 26 and labels.count(0) == 25
    small = toy_sentiment_task(seed=5, size=40, eval_size=10, name="toy_small")
    assert len(small.load("train")) == 40 and len(small.load("test")) == 10
    assert small.load("train") == toy_sentiment_task(
        seed=5, size=40, eval_size=10, name="toy_small"
    ).load("train")


def test_registry(restore_registry):
    assert {"sst2", "imdb", "mrpc", "qqp", "qnli", "cb", "agnews", "toy_sentiment"} <= set(
        list_tasks()
    )
    task = Task.from_lists("custom", ["a"], [0], label_names=("x", "y"))
    assert register_task(task) is task and get_task("custom") is task
    other = Task.from_lists("custom", ["b"], [1], label_names=("x", "y"))
    with pytest.raises(DataError, match="already registered"):
        register_task(other)
    register_task(other, replace=True)
    assert get_task("custom") is other


def test_builtin_label_spaces():
    pairs = {"adv_sst2": "sst2", "adv_qqp": "qqp", "adv_qnli": "qnli", "adv_mnli": "mnli"}
    for adv, clean in pairs.items():
        a, c = get_task(adv), get_task(clean)
        assert (a.label_names, a.template, a.verbalizer, a.label_space) == (
            c.label_names, c.template, c.verbalizer, c.label_space,
        )  # fmt: skip
    assert get_task("qnli").verbalizer == ("yes", "no")
    assert get_task("sst2").verbalizer == ("negative", "positive")
    assert get_task("mrpc").label_space == get_task("qqp").label_space == "paraphrase2"
    assert get_task("cb").label_space == get_task("mnli").label_space == "nli3"
    for name in list_tasks():
        task = get_task(name)
        assert len(task.verbalizer) == task.num_labels and task.splits


def test_where_filters_examples_in_order():
    from neuronlens.tasks import Task

    task = Task.from_lists(
        "filt", ["a b c", "a", "a b", "x y z w"], [0, 1, 0, 1], label_names=("n", "p")
    )
    data = task.load("train")
    long = data.where(lambda text, text_b, label: len(text.split()) >= 2)
    assert long.texts == ("a b c", "a b", "x y z w") and long.labels == (0, 0, 1)
    assert data.where(lambda t, b, y: y == 1).texts == ("a", "x y z w")


def test_a_data_dir_that_does_not_exist_is_an_error_not_a_hub_download(tmp_path):
    from neuronlens.errors import DataFileNotFoundError

    with pytest.raises(DataFileNotFoundError, match="does not exist"):
        get_task("sst2").load("dev", data_dir=tmp_path / "no-such-dir")
