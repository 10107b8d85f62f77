"""Shared fixtures. Tests never reach the Hugging Face hub: HF_HUB_OFFLINE is set first."""

import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import copy  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

from neuronlens.models import load_model  # noqa: E402
from neuronlens.models.tiny import FAMILIES, tiny_hf_model, tiny_tokenizer  # noqa: E402

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(autouse=True)
def _seed():
    """Same seed for every test, so random draws inside tests are reproducible."""
    torch.manual_seed(0)


@pytest.fixture(params=FAMILIES)
def family(request) -> str:
    return request.param


@pytest.fixture
def tiny_pair(family):
    """(NeuronModel, untouched raw HF copy) of a tiny random model of each family."""
    hf = tiny_hf_model(family, seed=1)
    raw = copy.deepcopy(hf)
    return _warm(load_model(hf, tiny_tokenizer(), name=f"tiny-{family}")), raw


@pytest.fixture
def tiny_bert():
    return _warm(load_model(tiny_hf_model("bert", seed=2), tiny_tokenizer(), name="tiny-bert"))


def _warm(model):
    """One forward pass: the bridge wires a few permanent hooks of its own on the first one."""
    with torch.no_grad():
        model(model.encode(["w1 w2"]))
    return model


def random_texts(n: int, *, seed: int = 0, min_len: int = 2, max_len: int = 9) -> list[str]:
    """n texts of random tiny-vocabulary words with different lengths (so padding matters)."""
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        k = int(torch.randint(min_len, max_len + 1, (1,), generator=g))
        out.append(" ".join(f"w{int(i)}" for i in torch.randint(0, 57, (k,), generator=g)))
    return out


def all_hook_counts(model) -> tuple[int, int]:
    """(non-permanent bridge hooks, torch module hooks of any kind) attached to the model.

    The bridge wires a few permanent hooks of its own (at boot and in the first forward
    pass); the first number must be 0 after any neuronlens call, the second must equal its
    value after the first forward pass.
    """
    torch_hooks = 0
    for module in model.bridge.modules():
        torch_hooks += len(module._forward_hooks) + len(module._forward_pre_hooks)
        torch_hooks += len(module._backward_hooks) + len(getattr(module, "_backward_pre_hooks", {}))
    temporary = sum(
        not h.is_permanent
        for hp in model.bridge.hook_dict.values()
        for h in list(hp.fwd_hooks) + list(hp.bwd_hooks)
    )
    return temporary, torch_hooks
