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
from neuronlens.prompts.tuning import TrainingSettings

VALIDATION = ("auto", "split", "sentences", "none")
READOUTS = ("auto", "prompt", "mask", "last", "pool")
ABLATIONS = ("zero", "mean", "noise")
POSITIONS = ("auto", "prompt", "answer", "pooled")
#: validation examples drawn for early stopping (at most; fewer when ``eval_size`` is smaller)
MAX_VAL = 300


class ConfigError(NeuronLensError, ValueError):
    """A study config with a missing, unknown or ill-typed field."""


_TYPES = {
    "model": str,
    "task": str,
    "data_dir": (str, type(None)),
    "train_size": int,
    "validation": str,
    "eval_split": str,
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
    "prune_keep": (int, float),
    "retrain_steps": int,
}


@dataclass
class StudyConfig:
    """What a study runs on and with which settings (see the module docstring)."""

    model: str
    task: str
    data_dir: str | None = None
    train_size: int = 1000
    validation: str = "auto"
    eval_split: str = "dev"
    eval_size: int = 400
    n_tokens: int = 20
    readout: str = "auto"
    seeds: list[int] = field(default_factory=lambda: [0])
    epochs: float = TrainingSettings.epochs
    lr: float = TrainingSettings.lr
    head_lr: float = TrainingSettings.head_lr
    batch_size: int = TrainingSettings.batch_size
    suppression_percents: list[float] = field(default_factory=lambda: [0, 1, 5, 10])
    random_repeats: int = 2
    per_layer: bool = True
    positions: str = "auto"
    ablation: str = "zero"
    prune_keep: float = 0.5
    retrain_steps: int = 30

    def __post_init__(self) -> None:
        """Every field's type and range, also for a config built directly (not from TOML)."""
        for f in fields(self):
            value, expected = getattr(self, f.name), _TYPES[f.name]
            if (isinstance(value, bool) and expected is not bool) or not isinstance(
                value, expected
            ):
                raise ConfigError(
                    f"config field {f.name!r} has {value!r} ({type(value).__name__}); "
                    f"expected {getattr(expected, '__name__', expected)}"
                )
        if self.readout not in READOUTS:
            raise ConfigError(
                f"config field 'readout' must be one of {list(READOUTS)}, got {self.readout!r}"
            )
        if self.positions not in POSITIONS:
            raise ConfigError(
                f"config field 'positions' must be one of {list(POSITIONS)}, got {self.positions!r}"
            )
        if self.ablation not in ABLATIONS:
            raise ConfigError(
                f"config field 'ablation' must be one of {list(ABLATIONS)}, got {self.ablation!r}"
            )
        if self.validation not in VALIDATION:
            raise ConfigError(
                f"config field 'validation' must be one of {list(VALIDATION)}, "
                f"got {self.validation!r}"
            )
        if not self.seeds or not all(
            isinstance(s, int) and not isinstance(s, bool) for s in self.seeds
        ):
            raise ConfigError("config field 'seeds' must be a non-empty list of integers")
        if not 0 < self.prune_keep <= 1:
            raise ConfigError(f"config field 'prune_keep' must be in (0, 1], got {self.prune_keep}")
        for name in ("train_size", "eval_size", "n_tokens", "batch_size", "random_repeats"):
            if getattr(self, name) < 1:
                raise ConfigError(f"config field {name!r} must be at least 1")
        if not all(
            isinstance(p, (int, float)) and 0 <= p <= 100 for p in self.suppression_percents
        ):
            raise ConfigError("config field 'suppression_percents' must hold numbers within 0..100")

        self.training()  # the training fields, checked as tune_prompt checks them

    def training(self) -> TrainingSettings:
        """The prompt-training settings of this study (one set of defaults with tune_prompt)."""
        try:
            return TrainingSettings(
                epochs=self.epochs, lr=self.lr, head_lr=self.head_lr, batch_size=self.batch_size
            )
        except NeuronLensError as err:
            raise ConfigError(f"config: {err}") from err

    @classmethod
    def from_dict(cls, raw: dict) -> StudyConfig:
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"unknown config field(s) {unknown}; known fields: {sorted(known)}")
        for name in ("model", "task"):
            if name not in raw:
                raise ConfigError(f"config field {name!r} is missing (it has no default)")
        return cls(**raw)  # __post_init__ checks types and ranges

    @classmethod
    def from_toml(cls, path: str | Path) -> StudyConfig:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file {path} does not exist")
        try:
            raw = tomllib.loads(path.read_text())
        except tomllib.TOMLDecodeError as err:
            raise ConfigError(f"{path} is not valid TOML: {err}") from err
        return cls.from_dict(raw)


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
