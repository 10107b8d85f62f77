"""Sentence-disjoint splits of phrase-level data: checked against slow, pairwise references."""

from __future__ import annotations

import random

import pytest

from neuronlens.errors import DataError
from neuronlens.tasks import TaskData, count_contained, get_task, sentence_disjoint_split
from tests.conftest import SHARED_DATA


def inside(a: str, b: str) -> bool:
    """Slow reference: the words of ``a`` are a contiguous run of the words of ``b``."""
    wa, wb = a.split(), b.split()
    return any(wb[i : i + len(wa)] == wa for i in range(len(wb) - len(wa) + 1))


def phrase_data(n_sentences: int = 12, seed: int = 0) -> TaskData:
    """SST-2-like rows: random sentences, each with some of its phrases, shuffled."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(30)]
    rows = []
    for _ in range(n_sentences):
        words = [rng.choice(vocab) for _ in range(rng.randint(4, 9))]
        label = rng.randint(0, 1)
        rows.append((" ".join(words), label))
        for _ in range(rng.randint(0, 5)):
            i = rng.randrange(len(words))
            j = rng.randint(i + 1, len(words))
            rows.append((" ".join(words[i:j]), label))
    rows.append(rows[0])  # a duplicated sentence
    rng.shuffle(rows)
    return TaskData(
        texts=[t for t, _ in rows],
        labels=[y for _, y in rows],
        texts_b=None,
        task="phrases",
        split="train",
        label_names=("negative", "positive"),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sentence_disjoint_split_matches_pairwise_reference(seed):
    data = phrase_data(seed=seed)
    train, val = sentence_disjoint_split(data, 3, seed=seed)
    texts = list(data.texts)
    # the reference: a sentence is a text inside no other text (equal copies: the first one)
    sentences = {
        t
        for k, t in enumerate(texts)
        if not any(inside(t, u) and (u != t or m < k) for m, u in enumerate(texts) if m != k)
    }
    assert len(val) == 3 and set(val.texts) <= sentences
    expected_train = [
        (t, y)
        for t, y in zip(data.texts, data.labels, strict=True)
        if not any(inside(t, v) for v in val.texts)
    ]
    assert list(zip(train.texts, train.labels, strict=True)) == expected_train
    assert count_contained(train, val) == 0
    # every row is on one side, except copies of validation sentences and their phrases
    assert len(train) + len(val) <= len(data)


def test_sentence_disjoint_split_is_seeded():
    data = phrase_data(n_sentences=30)
    a = sentence_disjoint_split(data, 5, seed=0)
    assert sentence_disjoint_split(data, 5, seed=0) == a
    assert sentence_disjoint_split(data, 5, seed=1)[1].texts != a[1].texts


def test_count_contained_matches_reference():
    a, b = phrase_data(seed=3), phrase_data(seed=4)
    for x, y in ((a, b), (b, a), (a, a)):
        expected = sum(any(inside(t, u) for u in x.texts) for t in y.texts)
        assert count_contained(x, y) == expected
    assert count_contained(a, a) == len(a)


def test_sentence_disjoint_split_errors():
    data = phrase_data(n_sentences=4)
    for bad in (0, -1, 2.5, True):
        with pytest.raises(DataError, match="n_val"):
            sentence_disjoint_split(data, bad)
    with pytest.raises(DataError, match="sentences"):
        sentence_disjoint_split(data, 100)
    with pytest.raises(DataError, match="must be a TaskData"):
        sentence_disjoint_split(list(data.texts), 1)
    with pytest.raises(DataError, match="b must be a TaskData"):
        count_contained(data, ["w1 w2"])


@pytest.mark.skipif(not (SHARED_DATA / "sst2").is_dir(), reason="needs ../shared/data")
def test_sst2_heldout_rows_leak_and_the_disjoint_split_does_not(monkeypatch):
    monkeypatch.setenv("NEURONLENS_DATA_DIR", str(SHARED_DATA))
    sst2 = get_task("sst2")
    long = lambda d: d.where(lambda text, text_b, label: len(text.split()) >= 8)  # noqa: E731
    pool = long(sst2.load("train"))
    heldout = long(sst2.load("validation")).subset(400, seed=0)
    assert count_contained(pool, heldout) > 200  # most held-out rows are training phrases
    train, val = sentence_disjoint_split(pool, 400, seed=0)
    assert len(val) == 400 and count_contained(train, val) == 0
    assert len(train) > 0.9 * len(pool)
