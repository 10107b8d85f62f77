"""The task registry and the built-in benchmark tasks.

Each built-in split reads the same examples, with the same label integers, from the local
files of the data directory (``data_dir=`` or ``$NEURONLENS_DATA_DIR``; layout in the
project's data README) or from the Hugging Face hub. Label conventions follow GLUE:

========================  ============  =========================================================
task                      label space   labels (integer order)
========================  ============  =========================================================
sst2, imdb,               sentiment2    0 negative, 1 positive
movie_rationales,
adv_sst2, toy_sentiment
mrpc                      paraphrase2   0 not_equivalent, 1 equivalent
qqp, adv_qqp              paraphrase2   0 not_duplicate, 1 duplicate
qnli, adv_qnli            nli2          0 entailment, 1 not_entailment
mnli, adv_mnli, cb        nli3          0 entailment, 1 neutral, 2 contradiction (MNLI order;
                                        SuperGLUE numbers CB 0 entailment, 1 contradiction,
                                        2 neutral, and is remapped on load)
ethics_deontology,        reasonable2   0 unreasonable, 1 reasonable
ethics_justice
agnews                    news_topic4   0 World, 1 Sports, 2 Business, 3 Sci/Tech
========================  ============  =========================================================

Splits where the hub and the local files are cut differently:

- ``sst2``: ``train`` and ``validation`` are GLUE's train set minus / only a held-out part
  (6,735 rows); ``dev`` (= ``test``) is GLUE's dev set, the set AdvSST2 was built from.
  Locally the held-out rows are ``sst2/train_heldout.tsv``; on the hub they are a seeded
  draw (:class:`~neuronlens.tasks.data.HoldOut`, seed 0), so the two sources hold out
  different rows. GLUE's train set holds every phrase of every parse tree, so most held-out
  rows are phrases of training sentences (306 of 400 rows of >= 8 words); for validation
  that measures generalisation use
  :func:`~neuronlens.tasks.splits.sentence_disjoint_split` on ``train``.
- ``agnews``: ``validation`` is 10,001 rows of AG News train (``agnews/dev.tsv``; on the hub
  a seeded draw of as many), ``train`` the rest of train (hub only here).
- ``cb``: ``train`` is FewGLUE's 32 examples locally but SuperGLUE's full 250 on the hub;
  ``dev32`` is local only.
- ``ethics_*``: ``test`` is ETHICS's test set (the hub's ``validation``), ``test_hard`` its hard
  test set (the hub's ``test``, hub only).

Each task's :attr:`~neuronlens.tasks.Task.eval_split`, where a study evaluates by default,
follows :func:`~neuronlens.tasks.task.default_eval_split`: ``dev`` for the GLUE tasks (GLUE's
dev set, the papers' test set) and the AdvGLUE sets (their only split), ``test`` for IMDB,
Movie Rationales, ETHICS (not ``test_hard``), AG News (its 7,600 test rows; ``validation``
is held out of train) and ``toy_sentiment``. CB names ``validation`` in the table: FewGLUE's
layout uses SuperGLUE's val set as its test set (``dev32`` is its few-shot dev set).
"""

from __future__ import annotations

from dataclasses import dataclass

from neuronlens.errors import DataError
from neuronlens.tasks.sources import HoldOut, HubSource, LocalFile, Split
from neuronlens.tasks.synthetic import toy_sentiment_task
from neuronlens.tasks.task import PAIR_TEMPLATE, Task

TASKS: dict[str, Task] = {}
"""Every registered task, by name."""


def register_task(task: Task, *, replace: bool = False) -> Task:
    """Add ``task`` to the registry under ``task.name`` and return it.

    A different task already registered under that name is an error unless ``replace``.
    """
    if not isinstance(task, Task):
        raise DataError(f"register_task takes a Task, got {type(task).__name__}")
    if task.name in TASKS and TASKS[task.name] is not task and not replace:
        raise DataError(f"a task named {task.name!r} is already registered; pass replace=True")
    TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name``."""
    if name not in TASKS:
        raise DataError(f"unknown task {name!r}; registered tasks are {list_tasks()}")
    return TASKS[name]


def list_tasks() -> list[str]:
    """The names of all registered tasks, sorted."""
    return sorted(TASKS)


GLUE = "nyu-mll/glue"
ADV_GLUE = "AI-Secure/adv_glue"
ETHICS = "hendrycks/ethics"

SENTIMENT = ("negative", "positive")
SENTIMENT_TEMPLATE = "{text} It was {mask}."
NLI3 = ("entailment", "neutral", "contradiction")
NLI3_WORDS = ("yes", "maybe", "no")
PARAPHRASE_TEMPLATE = "{text} {mask} , {text_b}"
QUESTION_TEMPLATE = "{text} {mask} , {text_b}"  # the question brings its own "?"
SST2_HELD_OUT = 6735
AGNEWS_HELD_OUT = 10001


def _glue(
    config: str,
    split: str,
    text: str,
    text_b: str | None = None,
    hold_out: HoldOut | None = None,
) -> HubSource:
    return HubSource(GLUE, config, split, text, "label", text_b, hold_out=hold_out)


def _adv(config: str, text: str, text_b: str | None = None) -> HubSource:
    return HubSource(ADV_GLUE, config, "validation", text, "label", text_b)


def _advglue_file(key: str, text: str, text_b: str | None = None) -> LocalFile:
    return LocalFile("advglue/dev.json", text, "label", text_b, json_key=key)


def _sst2() -> Task:
    dev = Split(
        local=LocalFile("sst2/glue_dev.tsv", "sentence", "label"),
        hub=_glue("sst2", "validation", "sentence"),
        description="GLUE SST-2 dev (872), the papers' test set; AdvSST2 was built from it",
    )
    return Task(
        name="sst2",
        label_names=SENTIMENT,
        template=SENTIMENT_TEMPLATE,
        verbalizer=SENTIMENT,
        label_space="sentiment2",
        description="Stanford Sentiment Treebank, binary (GLUE SST-2).",
        train_has_phrases=True,
        splits={
            "train": Split(
                local=LocalFile("sst2/train.tsv", "sentence", "label"),
                hub=_glue("sst2", "train", "sentence", hold_out=HoldOut(SST2_HELD_OUT, "rest")),
                description="GLUE train minus the held-out validation rows",
            ),
            "validation": Split(
                local=LocalFile("sst2/train_heldout.tsv", "sentence", "label"),
                hub=_glue("sst2", "train", "sentence", hold_out=HoldOut(SST2_HELD_OUT, "holdout")),
                description="6,735 rows held out of GLUE train",
            ),
            "dev": dev,
            "test": dev,
        },
    )


@dataclass(frozen=True)
class _HubSentiment:
    """A binary sentiment task with hub splits only (same labels, template, label space)."""

    name: str
    path: str
    text: str
    splits: tuple[str, ...]
    description: str

    def task(self) -> Task:
        return Task(
            name=self.name,
            label_names=SENTIMENT,
            template=SENTIMENT_TEMPLATE,
            verbalizer=SENTIMENT,
            label_space="sentiment2",
            description=self.description,
            splits={
                split: Split(hub=HubSource(self.path, None, split, self.text, "label"))
                for split in self.splits
            },
        )


@dataclass(frozen=True)
class _GlueTask:
    """A GLUE pair task whose local .tsv files and hub splits line up, split for split.

    ``files``: split name -> (local file stem, hub split); ``dev`` names the split that is
    also ``validation`` and ``dev``."""

    name: str
    config: str
    label_names: tuple[str, ...]
    template: str
    verbalizer: tuple[str, ...]
    label_space: str
    description: str
    local_columns: tuple[str, str, str]  # text, label, text_b in the .tsv files
    hub_columns: tuple[str, str]  # text, text_b on the hub
    files: tuple[tuple[str, str, str], ...]  # (split, local stem, hub split)
    dev: str
    dev_description: str = ""

    def split(self, stem: str, hub_split: str, description: str = "") -> Split:
        text, label, text_b = self.local_columns
        return Split(
            local=LocalFile(f"{self.config}/{stem}.tsv", text, label, text_b),
            hub=_glue(self.config, hub_split, *self.hub_columns),
            description=description,
        )

    def task(self) -> Task:
        splits = {name: self.split(stem, hub) for name, stem, hub in self.files}
        dev = splits.pop(self.dev)
        dev = Split(dev.local, dev.hub, description=self.dev_description)
        return Task(
            name=self.name,
            label_names=self.label_names,
            template=self.template,
            verbalizer=self.verbalizer,
            label_space=self.label_space,
            description=self.description,
            splits={**splits, "validation": dev, "dev": dev},
        )


HUB_SENTIMENT = (
    _HubSentiment("imdb", "stanfordnlp/imdb", "text", ("train", "test"),
                  "IMDB movie reviews, binary sentiment (hub only)."),
    _HubSentiment("movie_rationales", "eraser-benchmark/movie_rationales", "review",
                  ("train", "validation", "test"),
                  "ERASER Movie Rationales reviews, binary sentiment (hub only)."),
)  # fmt: skip

GLUE_TASKS = (
    _GlueTask("mrpc", "mrpc", ("not_equivalent", "equivalent"), PARAPHRASE_TEMPLATE,
              ("no", "yes"), "paraphrase2",
              "Microsoft Research Paraphrase Corpus (GLUE MRPC); the test set is unlabeled.",
              ("#1 String", "Quality", "#2 String"), ("sentence1", "sentence2"),
              (("train", "train", "train"), ("dev", "dev", "validation")), "dev",
              "GLUE MRPC dev (408)"),
    _GlueTask("qqp", "qqp", ("not_duplicate", "duplicate"), PARAPHRASE_TEMPLATE,
              ("no", "yes"), "paraphrase2",
              "Quora Question Pairs (GLUE QQP); local files in GLUE's .tsv layout.",
              ("question1", "is_duplicate", "question2"), ("question1", "question2"),
              (("train", "train", "train"), ("dev", "dev", "validation")), "dev"),
    _GlueTask("qnli", "qnli", ("entailment", "not_entailment"), QUESTION_TEMPLATE,
              ("yes", "no"), "nli2",
              "Question NLI (GLUE QNLI): does the sentence answer the question?",
              ("question", "label", "sentence"), ("question", "sentence"),
              (("train", "train", "train"), ("dev", "dev", "validation")), "dev"),
    _GlueTask("mnli", "mnli", NLI3, PAIR_TEMPLATE, NLI3_WORDS, "nli3",
              "MultiNLI (GLUE MNLI); local files in GLUE's .tsv layout.",
              ("sentence1", "gold_label", "sentence2"), ("premise", "hypothesis"),
              (("train", "train", "train"), ("dev", "dev_matched", "validation_matched"),
               ("validation_mismatched", "dev_mismatched", "validation_mismatched")), "dev"),
)  # fmt: skip

#: AdvGLUE tasks: (name, clean task, key in advglue/dev.json, text column, text_b column)
ADVERSARIAL = (
    ("adv_sst2", "sst2", "sst2", "sentence", None),
    ("adv_qqp", "qqp", "qqp", "question1", "question2"),
    ("adv_qnli", "qnli", "qnli", "question", "sentence"),
    ("adv_mnli", "mnli", "mnli", "premise", "hypothesis"),
)


def _cb() -> Task:
    def local(name: str) -> LocalFile:
        return LocalFile(f"cb/{name}.jsonl", "premise", "label", "hypothesis")

    def hub(split: str) -> HubSource:
        # SuperGLUE numbers CB 0 entailment, 1 contradiction, 2 neutral; this task uses MNLI's
        # order so that it shares the nli3 label space with MNLI.
        remap = {0: 0, 1: 2, 2: 1}
        return HubSource(
            "aps/super_glue", "cb", split, "premise", "label", "hypothesis", label_map=remap
        )

    return Task(
        name="cb",
        label_names=NLI3,
        template=PAIR_TEMPLATE,
        verbalizer=NLI3_WORDS,
        label_space="nli3",
        description="CommitmentBank (SuperGLUE CB), labels in MNLI order.",
        eval_split="validation",  # FewGLUE's test set; dev32 is its few-shot dev set
        splits={
            "train": Split(
                local=local("train"),
                hub=hub("train"),
                description="FewGLUE's 32 examples locally; SuperGLUE's full 250 on the hub",
            ),
            "validation": Split(
                local=local("val"), hub=hub("validation"), description="SuperGLUE val (56)"
            ),
            "dev32": Split(local=local("dev32"), description="FewGLUE's 32-example dev set"),
        },
    )


def _ethics(config: str) -> Task:
    deontology = config == "deontology"
    text_b = "excuse" if deontology else None

    def local(name: str) -> LocalFile:
        return LocalFile(f"ethics/{config}_{name}.csv", "scenario", "label", text_b)

    def hub(split: str) -> HubSource:
        return HubSource(ETHICS, config, split, "scenario", "label", text_b)

    return Task(
        name=f"ethics_{config}",
        label_names=("unreasonable", "reasonable"),
        template="{text} {text_b} Is that a reasonable excuse? {mask}."
        if deontology
        else "{text} Is that reasonable? {mask}.",
        verbalizer=("no", "yes"),
        label_space="reasonable2",
        description=f"ETHICS {config}: is the "
        + ("excuse (text_b) for the request (text)" if deontology else "claim")
        + " reasonable?",
        splits={
            "train": Split(local=local("train"), hub=hub("train")),
            "test": Split(
                local=local("test"), hub=hub("validation"), description="ETHICS test set"
            ),
            "test_hard": Split(hub=hub("test"), description="ETHICS hard test set (hub only)"),
        },
    )


def _agnews() -> Task:
    def local(name: str) -> LocalFile:
        return LocalFile(f"agnews/{name}.tsv", 0, 1, header=False, quotes=True)

    def hub(split: str, hold_out: HoldOut | None = None) -> HubSource:
        return HubSource("fancyzhx/ag_news", None, split, "text", "label", hold_out=hold_out)

    return Task(
        name="agnews",
        label_names=("World", "Sports", "Business", "Sci/Tech"),
        template="{text} Topic: {mask}.",
        verbalizer=("world", "sports", "business", "science"),
        label_space="news_topic4",
        description="AG News topic classification, 4 classes.",
        splits={
            "train": Split(
                hub=hub("train", HoldOut(AGNEWS_HELD_OUT, "rest")),
                description="AG News train minus the validation rows (hub only)",
            ),
            "validation": Split(
                local=local("dev"),
                hub=hub("train", HoldOut(AGNEWS_HELD_OUT, "holdout")),
                description="10,001 rows of AG News train",
            ),
            "test": Split(local=local("test"), hub=hub("test"), description="AG News test (7,600)"),
        },
    )


def _adversarial(name: str, clean: Task, key: str, text: str, text_b: str | None) -> Task:
    """An AdvGLUE task: its clean task's labels, template and label space, one dev split."""
    dev = Split(
        local=_advglue_file(key, text, text_b),
        hub=_adv(name, text, text_b),
        description="AdvGLUE dev",
    )
    splits = {"validation": dev, "dev": dev}
    if name == "adv_mnli":
        splits["validation_mismatched"] = Split(
            local=_advglue_file("mnli-mm", text, text_b),
            hub=_adv("adv_mnli_mismatched", text, text_b),
            description="AdvGLUE dev, MNLI mismatched",
        )
    return Task(
        name=name,
        label_names=clean.label_names,
        template=clean.template,
        verbalizer=clean.verbalizer,
        label_space=clean.label_space,
        description=f"AdvGLUE adversarial version of {clean.name}.",
        splits=splits,
    )


def _register_builtins() -> None:
    for task in (_sst2(), *(t.task() for t in HUB_SENTIMENT), *(t.task() for t in GLUE_TASKS),
                 _cb(), _ethics("deontology"), _ethics("justice"), _agnews()):  # fmt: skip
        register_task(task)
    for name, clean, key, text, text_b in ADVERSARIAL:
        register_task(_adversarial(name, get_task(clean), key, text, text_b))
    register_task(toy_sentiment_task())


_register_builtins()
