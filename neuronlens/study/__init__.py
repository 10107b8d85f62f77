"""Whole studies from a config file (the ``neuronlens study`` command).

* :mod:`~neuronlens.study.single` - one model on one task: prompts, predictivity,
  suppression, pruning with re-training, a report (``StudyConfig``, :func:`run_study`);
* :mod:`~neuronlens.study.steps` - the machinery: steps, the keys of what made each result,
  resume, atomic saves;
* :mod:`~neuronlens.study.config` - the configs, checked when built;
* :mod:`~neuronlens.study.report` - the HTML report.
"""

from neuronlens.study.config import DEMO, ConfigError, StudyConfig
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

__all__ = [
    "DEMO",
    "STUDY_STEPS",
    "ConfigError",
    "Step",
    "StudyConfig",
    "StudyRun",
    "load_study_model",
    "run_study",
    "study_data",
    "study_positions",
    "write_report",
]
