"""Classification tasks: built-in benchmarks, custom tasks, and their data.

``get_task("sst2").load("dev")`` reads a split from the data directory (``data_dir=`` or
``$NEURONLENS_DATA_DIR``) or from the Hugging Face hub; see :mod:`neuronlens.tasks.builtin`
for the built-in tasks, their splits and label conventions.
"""

from neuronlens.tasks.builtin import TASKS, get_task, list_tasks, register_task
from neuronlens.tasks.data import DATA_DIR_ENV, TaskData, resolve_data_dir
from neuronlens.tasks.sources import HoldOut, HubSource, LocalFile, Split
from neuronlens.tasks.splits import count_contained, sentence_disjoint_split
from neuronlens.tasks.synthetic import generate_toy_sentiment, toy_sentiment_task
from neuronlens.tasks.task import Task

__all__ = [
    "DATA_DIR_ENV",
    "TASKS",
    "HoldOut",
    "HubSource",
    "LocalFile",
    "Split",
    "Task",
    "TaskData",
    "count_contained",
    "generate_toy_sentiment",
    "get_task",
    "list_tasks",
    "register_task",
    "resolve_data_dir",
    "sentence_disjoint_split",
    "toy_sentiment_task",
]
