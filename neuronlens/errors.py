"""neuronlens's own exception types.

Every error a user can cause (unknown model or site, bad data, a file that does not
match the model, NaN activations) raises one of these, with a message that says what
to do. All derive from :class:`NeuronLensError`, so ``except NeuronLensError`` catches
them all; the ones that also make sense as a built-in type (``ValueError``,
``KeyError``, ``FileNotFoundError``) derive from it too.
"""

from __future__ import annotations


class NeuronLensError(Exception):
    """Base class of every error neuronlens raises on purpose."""


class UnsupportedModelError(NeuronLensError, ValueError):
    """The model's architecture has no entry in the neuron-site table."""


class SiteError(NeuronLensError, KeyError):
    """A neuron site (stack, layer) that the model does not have."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class EmptyDataError(NeuronLensError, ValueError):
    """A batch, split or dataset with no examples."""


class TokenizerMismatchError(NeuronLensError, ValueError):
    """The tokenizer produces ids the model's embedding matrix does not have."""


class MissingLMHeadError(NeuronLensError, RuntimeError):
    """The model's LM head weights were randomly initialised; a verbalizer would read noise."""


class NonFiniteActivationError(NeuronLensError, FloatingPointError):
    """NaN or infinite activations (or gradients) reached a probe."""


class ShapeMismatchError(NeuronLensError, ValueError):
    """Labels, inputs or saved tensors whose shapes do not fit together."""


class DataError(NeuronLensError, ValueError):
    """A data file or dataset that cannot be read as the task expects."""


class DataFileNotFoundError(DataError, FileNotFoundError):
    """A data file that should be in the data directory is missing."""


class DegenerateScoresError(NeuronLensError, ValueError):
    """A score map that cannot rank anything (no neuron varies, every score the same)."""


class NonFiniteValueError(NeuronLensError, ValueError):
    """NaN or infinite numbers where finite ones are needed: a saved prompt or head,
    intervention values, scores."""


class NonFiniteScoresError(NonFiniteValueError):
    """Neuron scores holding NaN or inf, which cannot be ranked."""
