"""Argument checks shared by the public calls: a wrong value is a :class:`NeuronLensError`
that names the argument and says what it takes, never a TypeError from deep inside."""

from __future__ import annotations

import numbers

from neuronlens.errors import NeuronLensError


def integer(name: str, value, *, minimum: int | None = None) -> int:
    """``value`` as an int (not a bool, not a float), at least ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise NeuronLensError(f"{name} must be an integer, got {value!r}")
    if minimum is not None and value < minimum:
        raise NeuronLensError(f"{name} must be >= {minimum}, got {value}")
    return int(value)


def number(name: str, value, *, low: float | None = None, high: float | None = None) -> float:
    """``value`` as a float (not a bool), within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or value != value:
        raise NeuronLensError(f"{name} must be a number, got {value!r}")
    if (low is not None and value < low) or (high is not None and value > high):
        raise NeuronLensError(f"{name} must be within {low}..{high}, got {value}")
    return float(value)


def instance(name: str, value, kind: type, hint: str):
    """``value`` itself when it is a ``kind``; else an error that says what to pass."""
    if not isinstance(value, kind):
        raise NeuronLensError(f"{name} must be {hint}, got {type(value).__name__} {value!r}")
    return value
