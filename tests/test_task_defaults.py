"""A task's default evaluation split, and data errors that say how to point at the data."""

from __future__ import annotations

import datasets
import pytest

from neuronlens.errors import DataError, DataFileNotFoundError
from neuronlens.tasks import DATA_DIR_ENV, TASKS, LocalFile, Split, Task, get_task
from neuronlens.tasks.task import EVAL_SPLITS, default_eval_split
from tests.conftest import SHARED_DATA

EXPECTED = {
    "sst2": "dev",
    "mrpc": "dev",
    "qqp": "dev",
    "qnli": "dev",
    "mnli": "dev",
    "adv_sst2": "dev",
    "adv_qqp": "dev",
    "adv_qnli": "dev",
    "adv_mnli": "dev",
    "imdb": "test",
    "movie_rationales": "test",
    "ethics_deontology": "test",
    "ethics_justice": "test",
    "agnews": "test",
    "cb": "validation",
    "toy_sentiment": "test",
}
SETTINGS = ("data_dir=", DATA_DIR_ENV)


@pytest.fixture(autouse=True)
def _no_env_data_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(DATA_DIR_ENV, raising=False)


# ---------------------------------------------------------------------- eval_split
@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_builtin_eval_split(name):
    task = get_task(name)
    assert task.eval_split == EXPECTED[name]
    assert task.eval_split in task.splits


def test_every_builtin_task_names_an_existing_eval_split():
    for name, task in TASKS.items():
        assert task.eval_split in task.splits, name


def test_sst2_evaluates_on_glue_dev_not_on_held_out_train():
    sst2 = get_task("sst2")
    assert sst2.splits[sst2.eval_split] is sst2.splits["test"]
    assert sst2.splits[sst2.eval_split] is not sst2.splits["validation"]


def test_default_eval_split_rule():
    assert EVAL_SPLITS == ("dev", "test", "validation")
    assert default_eval_split({"train": 0, "validation": 0, "test": 0}) == "test"
    assert default_eval_split({"train": 0, "validation": 0, "dev": 0}) == "dev"
    assert default_eval_split({"train": 0, "validation": 0}) == "validation"
    assert default_eval_split({"train": 0, "heldout": 0, "other": 0}) == "heldout"
    assert default_eval_split({"train": 0}) == "train"
    assert default_eval_split({}) is None


def test_from_lists_sets_eval_split():
    two = (["a", "b"], [0, 1])
    kw = {"label_names": ("n", "p")}
    assert Task.from_lists("t", *two, **kw).eval_split == "train"  # only training data
    assert Task.from_lists("t", splits={"train": two, "test": two}, **kw).eval_split == "test"
    assert Task.from_lists("t", splits={"train": two, "eval": two}, **kw).eval_split == "eval"
    chosen = Task.from_lists("t", splits={"train": two, "test": two}, eval_split="train", **kw)
    assert chosen.eval_split == "train"
    with pytest.raises(DataError, match="eval_split 'dev' is not one of its splits"):
        Task.from_lists("t", splits={"train": two, "test": two}, eval_split="dev", **kw)


def test_explicit_eval_split_is_checked(tmp_path):
    local = Split(local=LocalFile("x.csv", "text", "label"))
    assert Task("t", ("a", "b"), splits={"train": local, "a": local}, eval_split="a").eval_split
    with pytest.raises(DataError, match="eval_split 'b'"):
        Task("t", ("a", "b"), splits={"train": local}, eval_split="b")
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,1\n")
    task = Task.from_file("t", {"train": path, "heldout": path}, "text", "label", ("n", "p"))
    assert task.eval_split == "heldout"


# ---------------------------------------------------------------------- data errors
def _message(err) -> str:
    return str(err.value)


def _names_settings(message: str) -> None:
    for setting in SETTINGS:
        assert setting in message, message


def test_offline_hub_without_data_dir_names_the_settings():
    # HF_HUB_OFFLINE=1 (conftest): the hub is unreachable, and no data directory is set
    with pytest.raises(DataError) as err:
        get_task("sst2").load("train")
    message = _message(err)
    _names_settings(message)
    assert "hub was tried" in message and "no data directory is configured" in message
    assert "sst2/train.tsv" in message


def test_file_missing_from_data_dir_falls_back_to_hub_and_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path))
    with pytest.raises(DataError) as err:
        get_task("sst2").load("dev")
    message = _message(err)
    _names_settings(message)
    assert "hub was tried" in message and str(tmp_path / "sst2" / "glue_dev.tsv") in message


def test_local_file_missing_names_the_settings(tmp_path):
    with pytest.raises(DataFileNotFoundError) as err:
        get_task("sst2").load("dev", data_dir=tmp_path, source="local")
    message = _message(err)
    _names_settings(message)
    assert str(tmp_path / "sst2" / "glue_dev.tsv") in message


def test_no_data_dir_for_a_local_only_split_names_the_settings():
    with pytest.raises(DataFileNotFoundError) as err:
        get_task("cb").load("dev32")
    _names_settings(_message(err))
    with pytest.raises(DataFileNotFoundError) as err:
        get_task("sst2").load("dev", source="local")
    _names_settings(_message(err))


def test_missing_data_dir_names_the_settings(tmp_path, monkeypatch):
    with pytest.raises(DataFileNotFoundError) as err:
        get_task("sst2").load("dev", data_dir=tmp_path / "nowhere")
    _names_settings(_message(err))
    monkeypatch.setenv(DATA_DIR_ENV, str(tmp_path / "nowhere"))
    with pytest.raises(DataFileNotFoundError) as err:
        get_task("cb").load("dev32")
    _names_settings(_message(err))


def test_hub_only_split_offline_names_the_settings():
    with pytest.raises(DataError) as err:
        get_task("imdb").load("test")
    message = _message(err)
    _names_settings(message)
    assert "no local file" in message and "Hugging Face hub" in message


def test_explicit_hub_source_offline_names_the_settings(monkeypatch):
    def offline(*args, **kwargs):
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(DataError) as err:
        get_task("sst2").load("dev", source="hub")
    message = _message(err)
    _names_settings(message)
    assert "no network" in message and "source='local'" in message


def test_source_local_on_a_hub_only_split_names_the_settings():
    with pytest.raises(DataError) as err:
        get_task("imdb").load("test", source="local")
    _names_settings(_message(err))


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="the shared data folder is absent")
def test_with_the_data_dir_the_same_split_loads(monkeypatch):
    monkeypatch.setenv(DATA_DIR_ENV, str(SHARED_DATA))
    assert len(get_task("sst2").load("dev")) == 872
    assert len(get_task("sst2").load(get_task("sst2").eval_split, limit=5)) == 5
