"""Leak-free validation splits for phrase-level data such as SST-2.

GLUE's SST-2 train set holds every phrase of every parse tree of about 6,900 sentences, so a
random held-out part of it shares sentences with the rest: 306 of 400 held-out SST-2 phrases
of at least 8 words lie inside a training phrase (76 %), against 1 of GLUE dev's 872
sentences. Validation accuracy on such a split measures memorised sentences, and early
stopping and model selection that read it favour overfitted checkpoints.

:func:`sentence_disjoint_split` groups the phrases by the whole sentence that contains them
and keeps every sentence on one side; :func:`count_contained` measures the overlap of any two
splits. Texts are compared as whitespace-separated word sequences (SST-2's phrases are
tokenised and lower-cased the same way as its sentences).
"""

from __future__ import annotations

import numbers
import random

from neuronlens.errors import DataError
from neuronlens.tasks.data import TaskData


def _spans(words: tuple[str, ...], min_len: int):
    """Every contiguous word span of ``words`` at least ``min_len`` words long."""
    n = len(words)
    for i in range(n):
        for j in range(i + max(min_len, 1), n + 1):
            yield words[i:j]


def _words(data: TaskData, name: str) -> list[tuple[str, ...]]:
    if not isinstance(data, TaskData):
        raise DataError(
            f"{name} must be a TaskData (a task split, e.g. get_task('sst2').load('train'), or "
            f"Task.from_lists(...).load(...)), got {type(data).__name__}"
        )
    return [tuple(t.split()) for t in data.texts]


def sentence_disjoint_split(
    data: TaskData, n_val: int, *, seed: int = 0
) -> tuple[TaskData, TaskData]:
    """``(train, validation)`` with no sentence on both sides.

    A *sentence* is a text that lies inside no other text of ``data`` (as a contiguous run of
    words); every other text is a phrase of the sentences containing it. ``validation`` is
    ``n_val`` sentences drawn with ``seed`` (whole sentences, like GLUE dev); ``train`` is
    every text of ``data`` that lies inside none of them (the other sentences and their
    phrases). Both keep the order of ``data``. Filter ``data`` first (e.g. with
    :meth:`TaskData.where`) to train on longer phrases only.
    """
    if isinstance(n_val, bool) or not isinstance(n_val, numbers.Integral) or n_val < 1:
        raise DataError(f"n_val must be an integer >= 1, got {n_val!r}")
    words = _words(data, "data")
    min_len = min((len(w) for w in words), default=1)
    # longest first: a text already inside a sentence seen is a phrase, else a new sentence
    inside: set[tuple[str, ...]] = set()
    sentences = []
    for i in sorted(range(len(words)), key=lambda i: (-len(words[i]), i)):
        if words[i] not in inside:
            sentences.append(i)
            inside.update(_spans(words[i], min_len))
    if n_val >= len(sentences):
        raise DataError(
            f"{data.task!r} {data.split!r}: {len(data)} texts hold {len(sentences)} sentences; "
            f"n_val={n_val} would leave none for training"
        )
    val_rows = sorted(random.Random(seed).sample(sorted(sentences), int(n_val)))
    in_val: set[tuple[str, ...]] = set()
    for i in val_rows:
        in_val.update(_spans(words[i], min_len))
    train_rows = [i for i, w in enumerate(words) if w not in in_val]
    return data._select(train_rows), data._select(val_rows)


def count_contained(a: TaskData, b: TaskData) -> int:
    """How many texts of ``b`` lie inside (or equal) some text of ``a``, as word runs.

    ``count_contained(train, validation)`` is the number of validation examples a model may
    have seen, whole or as part of a longer training text.
    """
    words_b = _words(b, "b")
    lengths = {len(w) for w in words_b}
    seen: set[tuple[str, ...]] = set()
    for w in _words(a, "a"):
        n = len(w)
        seen.update(w[i : i + k] for k in lengths if k <= n for i in range(n - k + 1))
    return sum(w in seen for w in words_b)
