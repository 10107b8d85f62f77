"""Whole studies from a config file (the ``neuronlens study`` command).

* :mod:`~neuronlens.study.single` - one model on one task: prompts, predictivity,
  suppression, pruning with re-training, a report (``StudyConfig``, :func:`run_study`);
* :mod:`~neuronlens.study.multitask` - the robustness paper's whole study over several tasks
  and models (``MultiTaskConfig``, :func:`run_multitask_study`);
* :mod:`~neuronlens.study.steps` - the machinery: steps, the keys of what made each result,
  resume;
* :mod:`~neuronlens.study.records` - a folder you can trust: each step's record (key, file
  hashes), the schemas of what is read back, the lock, temporary files;
* :mod:`~neuronlens.study.config` - the configs, checked when built;
* :mod:`~neuronlens.study.report` - the HTML report;
* :mod:`~neuronlens.study.tables` - a multi-task study's tables in Markdown, beside the
  paper's numbers.
"""

from neuronlens.study.config import (
    DEMO,
    ConfigError,
    MultiTaskConfig,
    StudyConfig,
    TaskSpec,
    load_config,
)
from neuronlens.study.multitask import run_multitask_study
from neuronlens.study.report import write_report
from neuronlens.study.single import (
    STUDY_STEPS,
    StudyRun,
    load_study_model,
    run_study,
    study_data,
    study_positions,
)
from neuronlens.study.steps import Step
from neuronlens.study.tables import PAPER_ACCURACY, multitask_markdown, read_summary

__all__ = [
    "DEMO",
    "PAPER_ACCURACY",
    "STUDY_STEPS",
    "ConfigError",
    "MultiTaskConfig",
    "TaskSpec",
    "load_config",
    "run_multitask_study",
    "Step",
    "StudyConfig",
    "StudyRun",
    "load_study_model",
    "multitask_markdown",
    "read_summary",
    "run_study",
    "study_data",
    "study_positions",
    "write_report",
]
