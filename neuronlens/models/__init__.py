"""Model loading, the neuron-site table, and the hooked model object."""

from neuronlens.models.families import (
    Family,
    ModelKind,
    Stack,
    families,
    register_family,
    unregister_family,
)
from neuronlens.models.loading import load_model
from neuronlens.models.model import Encoded, NeuronModel
from neuronlens.models.sites import Site

__all__ = [
    "Encoded",
    "Family",
    "ModelKind",
    "NeuronModel",
    "Site",
    "Stack",
    "families",
    "load_model",
    "register_family",
    "unregister_family",
]
