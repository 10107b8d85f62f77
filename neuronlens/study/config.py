"""Study configs: what a study runs on and with which settings, checked when built.

:class:`StudyConfig` is a single-task study (``model``, ``task``); :class:`MultiTaskConfig`
runs the robustness paper's study over several tasks and models (``models``, ``tasks``).
Both read TOML (:func:`load_config` tells them apart by the ``tasks`` field) and reject an
unknown, missing or ill-typed field with a :class:`ConfigError` that names it.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field, fields
from pathlib import Path

from neuronlens.errors import NeuronLensError
from neuronlens.prompts.tuning import DEFAULT_LR, TrainingSettings

VALIDATION = ("auto", "split", "sentences", "train", "none")
READOUTS = ("auto", "prompt", "mask", "last", "pool")
ABLATIONS = ("zero", "mean", "noise")
POSITIONS = ("auto", "prompt", "answer", "pooled")
#: validation examples drawn for early stopping (at most; fewer when ``eval_size`` is smaller)
MAX_VAL = 300


class ConfigError(NeuronLensError, ValueError):
    """A study config with a missing, unknown or ill-typed field."""


_TYPES = {
    "model": (str, type(None)),
    "task": str,
    "models": list,
    "tasks": list,
    "data_dir": (str, type(None)),
    "train_size": int,
    "validation": str,
    "eval_split": (str, type(None)),
    "eval_size": int,
    "n_tokens": int,
    "readout": str,
    "seeds": list,
    "epochs": (int, float),
    "lr": (int, float),
    "head_lr": (int, float),
    "batch_size": int,
    "suppression_percents": list,
    "random_repeats": int,
    "per_layer": bool,
    "positions": str,
    "ablation": str,
    "dtype": str,
    "prune_keep": (int, float),
    "retrain_steps": int,
    "cross_percent": (int, float),
}
_CHOICES = {
    "readout": READOUTS,
    "positions": POSITIONS,
    "ablation": ABLATIONS,
    "validation": VALIDATION,
    "dtype": ("float32", "bfloat16", "float16"),
}
_AT_LEAST_1 = ("train_size", "eval_size", "n_tokens", "batch_size", "random_repeats")


def _check_fields(cfg) -> None:
    """Types, choices and ranges of every field a config has (shared by all configs)."""
    for f in fields(cfg):
        value, expected = getattr(cfg, f.name), _TYPES[f.name]
        if (isinstance(value, bool) and expected is not bool) or not isinstance(value, expected):
            raise ConfigError(
                f"config field {f.name!r} has {value!r} ({type(value).__name__}); "
                f"expected {getattr(expected, '__name__', expected)}"
            )
        if f.name in _CHOICES and value not in _CHOICES[f.name]:
            raise ConfigError(
                f"config field {f.name!r} must be one of {list(_CHOICES[f.name])}, got {value!r}"
            )
        if f.name in _AT_LEAST_1 and value < 1:
            raise ConfigError(f"config field {f.name!r} must be at least 1")
    if not cfg.seeds or not all(isinstance(s, int) and not isinstance(s, bool) for s in cfg.seeds):
        raise ConfigError("config field 'seeds' must be a non-empty list of integers")
    if not all(isinstance(p, int | float) and 0 <= p <= 100 for p in cfg.suppression_percents):
        raise ConfigError("config field 'suppression_percents' must hold numbers within 0..100")
    training_settings(cfg)  # the training fields, checked as tune_prompt checks them


def training_settings(cfg) -> TrainingSettings:
    """A config's prompt-training settings (one set of defaults with tune_prompt)."""
    try:
        return TrainingSettings(
            epochs=cfg.epochs, lr=cfg.lr, head_lr=cfg.head_lr, batch_size=cfg.batch_size
        )
    except NeuronLensError as err:
        raise ConfigError(f"config: {err}") from err


def _from_dict(cls, raw: dict, required: tuple[str, ...]):
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
    for name in required:
        if name not in raw:
            raise ConfigError(f"config field {name!r} is missing (it has no default)")
    return cls(**raw)  # __post_init__ checks types and ranges


def read_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} does not exist")
    try:
        return tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"{path} is not valid TOML: {err}") from err


@dataclass(kw_only=True)
class _Settings:
    """The fields every study config has (data, prompts, predictivity, suppression)."""

    data_dir: str | None = None
    train_size: int = 1000
    validation: str = "auto"
    eval_size: int = 400
    n_tokens: int = 20
    readout: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: float = TrainingSettings.epochs
    lr: float = DEFAULT_LR["prompt"]  # the study tunes soft prompts
    head_lr: float = TrainingSettings.head_lr
    batch_size: int = TrainingSettings.batch_size
    positions: str = "auto"
    suppression_percents: list[float] = field(default_factory=lambda: [0, 1, 5, 10])
    random_repeats: int = 2
    per_layer: bool = True
    ablation: str = "zero"
    dtype: str = "float32"  # what the model runs in (prompts and heads train in float32)

    def training(self) -> TrainingSettings:
        """The prompt-training settings of this study."""
        return training_settings(self)


@dataclass(kw_only=True)
class StudyConfig(_Settings):
    """What a study runs on and with which settings (see the module docstring)."""

    model: str
    task: str
    eval_split: str | None = None  # None: the task's own (Task.eval_split: SST-2 dev, ...)
    prune_keep: float = 0.5
    retrain_steps: int = 30

    def __post_init__(self) -> None:
        """Every field's type and range, also for a config built directly (not from TOML)."""
        _check_fields(self)
        if not isinstance(self.model, str):
            raise ConfigError("config field 'model' must name a model, e.g. \"minilm\"")
        if not 0 < self.prune_keep <= 1:
            raise ConfigError(f"config field 'prune_keep' must be in (0, 1], got {self.prune_keep}")

    @classmethod
    def from_dict(cls, raw: dict) -> StudyConfig:
        return _from_dict(cls, raw, ("model", "task"))

    @classmethod
    def from_toml(cls, path: str | Path) -> StudyConfig:
        return cls.from_dict(read_toml(path))


DEMO = StudyConfig(
    model="minilm",
    task="toy_sentiment",
    train_size=600,
    eval_split="test",
    eval_size=200,
    n_tokens=10,
    seeds=[0, 1],
    epochs=1.0,
    suppression_percents=[0, 1, 5, 10],
    random_repeats=2,
    prune_keep=0.5,
    retrain_steps=30,
)


@dataclass
class TaskSpec:
    """One task of a multi-task study.

    ``eval_split``: where accuracy, predictivity and suppression are measured (``None``:
    the task's own evaluation split, :attr:`~neuronlens.tasks.Task.eval_split`);
    ``adversarial``: a task scored with this task's prompts and clean train baselines (e.g.
    ``"adv_sst2"``); ``train_split``: where prompts are trained and baselines taken; equal to
    ``eval_split`` (a task with one local split, such as QNLI's dev), the split is divided
    into disjoint train and eval parts (``eval_size`` eval examples; stated in the summary).
    """

    name: str
    eval_split: str | None = None
    adversarial: str | None = None
    train_split: str = "train"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            optional = f.name in ("adversarial", "eval_split")
            if not isinstance(value, str) and not (optional and value is None):
                raise ConfigError(f"task field {f.name!r} has {value!r}; expected a string")


@dataclass(kw_only=True)
class MultiTaskConfig(_Settings):
    """The robustness paper's study over several tasks and models (see
    :mod:`neuronlens.study.multitask`); fields as in :class:`StudyConfig`, plus ``models``
    (or ``model``, one name), ``tasks`` (:class:`TaskSpec` tables, or task names: each then
    evaluated on its own evaluation split) and ``cross_percent`` (the neurons switched off
    in cross suppression, per layer)."""

    tasks: list[TaskSpec]
    models: list[str] = field(default_factory=list)
    model: str | None = None
    suppression_percents: list[float] = field(default_factory=lambda: [1, 3, 5, 10, 15])
    random_repeats: int = 3
    cross_percent: float = 5.0

    def __post_init__(self) -> None:
        if isinstance(self.tasks, list):
            self.tasks = [t if isinstance(t, TaskSpec) else _task_spec(t) for t in self.tasks]
        _check_fields(self)
        if self.model is not None:  # one model: the common case
            if self.models and self.models != [self.model]:
                raise ConfigError(
                    f"config gives both 'model' ({self.model!r}) and 'models' ({self.models}): "
                    "give one of them"
                )
            self.models = [self.model]
        if not self.models:
            raise ConfigError("config field 'models' (or 'model') is missing: name the model(s)")
        if not self.models or not all(isinstance(m, str) for m in self.models):
            raise ConfigError("config field 'models' must be a non-empty list of model names")
        if len(set(self.models)) != len(self.models):
            raise ConfigError(f"config field 'models' must list distinct models, got {self.models}")
        names = [t.name for t in self.tasks]
        if not names or len(set(names)) != len(names):
            raise ConfigError(f"config field 'tasks' must list distinct tasks, got {names}")
        if len(names) + sum(t.adversarial is not None for t in self.tasks) < 2:
            raise ConfigError(
                f"a multi-task study compares datasets, and {names} with no adversarial set is "
                "one: add a task or an 'adversarial' set, or run the single-task study "
                "(a config with 'model' and 'task')"
            )
        if not 0 < self.cross_percent <= 100:
            raise ConfigError(
                f"config field 'cross_percent' must be in (0, 100], got {self.cross_percent}"
            )

    @classmethod
    def from_dict(cls, raw: dict) -> MultiTaskConfig:
        return _from_dict(cls, raw, ("tasks",))


def _task_spec(raw) -> TaskSpec:
    if isinstance(raw, str):
        return TaskSpec(raw)
    if not isinstance(raw, dict):
        raise ConfigError(f"each entry of 'tasks' is a task name or a table, got {raw!r}")
    known = {f.name for f in fields(TaskSpec)}
    unknown = sorted(set(raw) - known)
    if unknown or "name" not in raw:
        raise ConfigError(f"a task table needs 'name' and takes {sorted(known)}; got {sorted(raw)}")
    return TaskSpec(**raw)


def load_config(path: str | Path) -> StudyConfig | MultiTaskConfig:
    """The config in a TOML file: a multi-task study when it lists ``tasks``."""
    raw = read_toml(path)
    return MultiTaskConfig.from_dict(raw) if "tasks" in raw else StudyConfig.from_dict(raw)
