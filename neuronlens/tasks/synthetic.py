"""``toy_sentiment``: a small binary sentiment task made from word lists, no outside data.

Sentences are short reviews ("Honestly, the plot was dull.") built from positive or negative
adjectives, nouns and neutral openers; label 1 = positive. A small share
(``negation_rate``) negates an adjective of the other polarity ("the cast was not awful." is
positive), so the task is not pure word spotting but stays easy to learn. Labels are balanced
(half each, one more positive for odd sizes) and everything is fixed by the seed.
"""

from __future__ import annotations

import random
import re

from neuronlens.errors import DataError
from neuronlens.tasks.task import Task

POSITIVE = (
    "good",
    "great",
    "wonderful",
    "excellent",
    "delightful",
    "brilliant",
    "charming",
    "superb",
    "lovely",
    "enjoyable",
    "moving",
    "fantastic",
)
NEGATIVE = (
    "bad",
    "terrible",
    "awful",
    "boring",
    "dreadful",
    "dull",
    "horrible",
    "poor",
    "weak",
    "tedious",
    "clumsy",
    "painful",
)
NOUNS = (
    "movie",
    "film",
    "story",
    "plot",
    "acting",
    "script",
    "ending",
    "cast",
    "soundtrack",
    "direction",
    "dialogue",
    "pacing",
)
OPENERS = ("", "honestly, ", "overall, ", "in my opinion, ", "to be fair, ", "frankly, ")
FRAMES = (
    "{opener}the {noun} was {adj}.",
    "{opener}I found the {noun} {adj}.",
    "{opener}what a {adj} {noun}!",
    "{opener}the {noun} felt {adj} and {adj2}.",
    "{opener}it is a {adj} {noun} with a {adj2} {noun2}.",
)
NEGATED_FRAMES = (
    "{opener}the {noun} was not {adj}.",
    "{opener}I did not find the {noun} {adj}.",
)

TEMPLATE = "{text} It was {mask}."


def toy_vocabulary() -> tuple[str, ...]:
    """Every word and punctuation mark a toy sentence can hold (lower case, sorted), e.g.
    for a word-level tokenizer of a tiny model (``tiny:bert`` in a study)."""
    parts = POSITIVE + NEGATIVE + NOUNS + OPENERS + FRAMES + NEGATED_FRAMES
    parts += (TEMPLATE, "negative positive")  # the template and the label words
    words = set()
    for part in parts:
        words.update(re.findall(r"\w+|[^\w\s]", re.sub(r"\{\w+\}", " ", part).lower()))
    return tuple(sorted(words))


def generate_toy_sentiment(
    n: int, seed: int = 0, negation_rate: float = 0.1
) -> tuple[list[str], list[int]]:
    """``n`` review sentences and their labels (1 = positive), balanced, fixed by ``seed``."""
    if n < 1:
        raise DataError(f"toy_sentiment needs at least one example, got n={n}")
    if not 0.0 <= negation_rate <= 1.0:
        raise DataError(f"negation_rate must be in [0, 1], got {negation_rate}")
    rng = random.Random(seed)
    labels = [0] * (n // 2) + [1] * (n - n // 2)
    rng.shuffle(labels)
    texts = []
    for label in labels:
        same, other = (POSITIVE, NEGATIVE) if label == 1 else (NEGATIVE, POSITIVE)
        negated = rng.random() < negation_rate
        frame = rng.choice(NEGATED_FRAMES if negated else FRAMES)
        adjectives = other if negated else same
        adj, adj2 = rng.sample(adjectives, 2)
        noun, noun2 = rng.sample(NOUNS, 2)
        text = frame.format(opener=rng.choice(OPENERS), noun=noun, noun2=noun2, adj=adj, adj2=adj2)
        texts.append(text[0].upper() + text[1:])
    return texts, labels


def toy_sentiment_task(
    seed: int = 0,
    size: int = 1000,
    eval_size: int = 200,
    negation_rate: float = 0.1,
    name: str = "toy_sentiment",
) -> Task:
    """The toy sentiment task: ``train`` (``size`` examples), ``validation`` and ``test``
    (``eval_size`` each), each split drawn with its own seed derived from ``seed``.

    The registered ``toy_sentiment`` task uses the defaults. It shares SST-2's template,
    verbalizer and label space (``sentiment2``).
    """
    sizes = {"train": size, "validation": eval_size, "test": eval_size}
    splits = {
        split: generate_toy_sentiment(n, seed=seed * 1000 + offset, negation_rate=negation_rate)
        for offset, (split, n) in enumerate(sizes.items())
    }
    return Task.from_lists(
        name,
        label_names=("negative", "positive"),
        template=TEMPLATE,
        verbalizer=("negative", "positive"),
        splits=splits,
        label_space="sentiment2",
        description="Synthetic binary sentiment from word lists (no outside data).",
    )
