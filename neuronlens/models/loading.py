"""Loading models as hooked transformers: hub names, local directories, built HF models."""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
from pathlib import Path

import torch
import transformers

from neuronlens.errors import NeuronLensError, UnsupportedModelError
from neuronlens.models.attention_heads import fix_bias_hooks, own_head_counts
from neuronlens.models.families import family_for_architecture
from neuronlens.models.model import NeuronModel
from neuronlens.models.placement import cast_floats, place_built, placement_kwargs, resolve_dtype

HEAD_SEED = 0
"""Seed of the LM head given to a model whose checkpoint has none (see :func:`draw_head`)."""


def load_model(
    model: str | os.PathLike | transformers.PreTrainedModel,
    tokenizer: transformers.PreTrainedTokenizerBase | str | os.PathLike | None = None,
    *,
    device: str | torch.device = "cpu",
    dtype: torch.dtype | str | None = None,
    device_map: str | dict | None = None,
    n_devices: int | None = None,
    max_memory: dict | None = None,
    name: str | None = None,
    has_lm_head: bool | None = None,
) -> NeuronModel:
    """Load a model as a :class:`NeuronModel` (a TransformerBridge in its default mode).

    Args:
        model: a Hugging Face hub name (downloaded by ``transformers``; needs a network), a
            local directory with ``config.json`` and weights (no network call), or an
            already-built ``transformers`` model with a head (``BertForMaskedLM``,
            ``T5ForConditionalGeneration``, ``GPT2LMHeadModel``, ``LlamaForCausalLM``, ...).
            A built model is wrapped in place: keep a copy if you need the untouched one.
        tokenizer: the model's tokenizer, or a name / directory to load it from. Required
            with a built model; defaults to ``model`` for names and directories.
        device: where the model runs (``"cpu"``, ``"cuda"``, ``"cuda:1"``...), or
            ``"meta"``: shapes only, no weights (sites, widths, FLOPs and costs of a model
            too big for this machine; it cannot run).
        dtype: ``None`` (float32 from a name or directory, a built model as it is),
            ``"auto"`` (the checkpoint's own dtype), ``torch.float32``, ``torch.bfloat16``
            or ``torch.float16`` (or a name: ``"bf16"``, ``"fp16"``, ...). The model runs in
            it; see :mod:`neuronlens.models.placement` for what stays in float32.
        device_map: a split over several devices, as ``from_pretrained`` takes it: a dict
            of module name -> device (``{"model.layers.0": "cuda:0", ...}``) or ``"auto"``
            / ``"balanced"`` / ``"sequential"`` (accelerate). Inputs go to the embedding's
            device, results come back on CPU.
        n_devices: split the layers evenly over this many CUDA devices.
        max_memory: per-device caps for a string ``device_map`` (``{0: "20GiB", ...}``).
        name: a label for results and errors (defaults to the name or directory).
        has_lm_head: override the detection of a randomly initialised LM head (only needed
            for a built model whose head you know to be untrained).

    Checkpoints that hold only a base model (``BertModel``: sentence-embedding BERTs such as
    all-MiniLM-L6-v2) load into the family's LM-head class; the head weights are then
    missing, and the model is marked ``kind=ModelKind.ENCODER`` so no verbalizer reads it.
    """
    dtype = resolve_dtype(dtype)
    where = placement_kwargs(device, device_map, n_devices, max_memory)
    if isinstance(model, transformers.PreTrainedModel):
        hf, family, label, head = _built(model, tokenizer, name, has_lm_head)
        if isinstance(dtype, torch.dtype):
            cast_floats(hf, dtype)
        hf = place_built(hf, device, where)
    else:
        hf, family, label, head, source = _pretrained(
            model, dtype, name, has_lm_head, where, device
        )
        tokenizer = source if tokenizer is None else tokenizer
    if isinstance(tokenizer, (str, os.PathLike)):
        tokenizer = transformers.AutoTokenizer.from_pretrained(str(tokenizer))
    if not isinstance(tokenizer, transformers.PreTrainedTokenizerBase):
        raise NeuronLensError(
            f"tokenizer must be a Hugging Face tokenizer, a name or a directory, got {type(tokenizer)!r}"
        )
    gated, stacks = family.resolve(hf.config)
    hf.config.architectures = [type(hf).__name__]
    hf.eval()
    hf.requires_grad_(False)  # frozen: neuronlens trains prompts and heads, never the model
    bridge = _boot(label, hf, tokenizer, None if where else device)
    # our copy: right padding, so "last non-padding token" is well defined everywhere
    own = copy.deepcopy(tokenizer)
    own.padding_side = "right"
    if own.pad_token is None:
        own.pad_token = own.eos_token
    return NeuronModel(
        bridge, own, family, name=label, has_lm_head=head, gated=gated, stacks=stacks
    )


def _built(model, tokenizer, name, has_lm_head):
    """``(hf, family, label, has_lm_head)`` of an already-built HF model."""
    if tokenizer is None:
        raise NeuronLensError(
            "a built model needs its tokenizer: load_model(hf_model, tokenizer); "
            "neuronlens never fetches a tokenizer by name behind your back"
        )
    arch = type(model).__name__
    family, cls_name = family_for_architecture(arch)
    if cls_name != arch:
        raise UnsupportedModelError(
            f"{arch} is a base model without a head; the bridge wraps {cls_name}. Build "
            f"{cls_name} (or load the checkpoint directory with load_model(path)) instead."
        )
    label = name or getattr(model.config, "name_or_path", "") or arch
    return model, family, label, True if has_lm_head is None else has_lm_head


def _pretrained(model, dtype, name, has_lm_head, where: dict, device):
    """``(hf, family, label, has_lm_head, source)`` of a hub name or a local directory,
    loaded in ``dtype`` (``None``: float32) and placed on ``device`` or by ``where``
    (:func:`~neuronlens.models.placement.placement_kwargs`)."""
    source = str(model)
    local = Path(source).expanduser()
    if local.is_dir():
        if not (local / "config.json").is_file():
            raise NeuronLensError(
                f"{local} is a directory without config.json: not a Hugging Face model directory"
            )
        source = str(local)
    elif source.startswith((".", "/", "~")) or local.exists():
        raise NeuronLensError(f"{source} is not a model directory (it does not exist or is a file)")
    try:
        config = transformers.AutoConfig.from_pretrained(source)
    except OSError as err:
        raise UnsupportedModelError(
            f"cannot load model {source!r}: it is not a local model directory, and the Hugging "
            f"Face hub did not give it ({str(err).splitlines()[0]}). Check the name; without a "
            "network use a local directory, or load_minilm() / load_smollm2() for the offline "
            "models"
        ) from err
    archs = list(getattr(config, "architectures", None) or [])
    if not archs:
        raise UnsupportedModelError(
            f"{source}: config.json names no architecture; build the HF model yourself and "
            "pass it to load_model(hf_model, tokenizer)"
        )
    family, cls_name = family_for_architecture(archs[0])
    cls = getattr(transformers, cls_name)
    if str(device) == "meta":  # shapes only: nothing is read but the config
        with torch.device("meta"):
            hf = cls(config)
        if isinstance(dtype, torch.dtype):
            cast_floats(hf, dtype)
        if has_lm_head is None:  # a head the checkpoint lacks, read from its key names
            keys = checkpoint_keys(source)
            has_lm_head = not (
                keys is not None
                and family.head_prefixes
                and not any(k.startswith(family.head_prefixes) for k in keys)
            )
        return hf, family, name or source, has_lm_head, source
    with quiet_transformers():
        hf, info = cls.from_pretrained(
            source,
            dtype=torch.float32 if dtype is None else dtype,
            output_loading_info=True,
            **where,
        )
    if not where:  # one device: moved after loading (a device_map placed it already)
        hf = place_built(hf, device, {})
    missing = list(info.get("missing_keys", []))
    head_missing = bool(family.head_prefixes) and any(
        k.startswith(family.head_prefixes) for k in missing
    )
    if head_missing:
        draw_head(hf)
    head = (not head_missing) if has_lm_head is None else has_lm_head
    return hf, family, name or source, head, source


def checkpoint_keys(source: str) -> list[str] | None:
    """The tensor names a local checkpoint directory holds, read from its file headers only
    (safetensors headers and index, or a memory-mapped ``pytorch_model.bin``); ``None`` when
    ``source`` is not a local directory with one of those files, or they cannot be read."""
    local = Path(source)
    if not local.is_dir():
        return None
    try:
        return _keys_in(local)
    except Exception:  # noqa: BLE001 - unreadable headers: the head cannot be told, not an error
        return None


def _keys_in(local: Path) -> list[str] | None:
    index = [local / f"{stem}.index.json" for stem in ("model.safetensors", "pytorch_model.bin")]
    for path in index:
        if path.is_file():
            return list(json.loads(path.read_text())["weight_map"])
    if (local / "model.safetensors").is_file():
        from safetensors import safe_open

        with safe_open(str(local / "model.safetensors"), framework="pt") as f:
            return list(f.keys())
    if (local / "pytorch_model.bin").is_file():
        state = torch.load(local / "pytorch_model.bin", mmap=True, weights_only=True)
        return list(state)
    return None


def draw_head(hf: transformers.PreTrainedModel, seed: int = HEAD_SEED) -> None:
    """Draw the LM head of a checkpoint that has none from a fixed seed.

    Nothing reads such a head (the model is ``kind=ModelKind.ENCODER``), but it still makes
    the model's full-forward logits: drawn from ``seed`` rather than from the global random
    state, they are the same in every process, and after ``save_pruned`` (which leaves the
    head out) and ``load_pruned`` (which draws it again). Tied weights (the head's decoder is
    the input embedding) keep their values.
    """
    base = hf.base_model
    if base is hf:
        return
    in_base = {id(m) for m in base.modules()}
    shared = {id(p) for p in base.parameters()}
    head = [m for m in hf.modules() if m is not hf and id(m) not in in_base]
    tied = [p for m in head for p in m.parameters(recurse=False) if id(p) in shared]
    kept = [p.detach().clone() for p in tied]
    with torch.random.fork_rng(devices=[]), torch.no_grad():
        torch.manual_seed(seed)
        for module in head:
            hf._init_weights(module)
        for param, value in zip(tied, kept, strict=True):
            param.copy_(value)


def _boot(label: str, hf: torch.nn.Module, tokenizer, device) -> torch.nn.Module:
    from transformer_lens.model_bridge import TransformerBridge

    # The bridge alters (and may re-load by name) the tokenizer it gets: give it a copy
    # marked as already adding BOS, so it never reloads anything.
    bridge_tok = copy.deepcopy(tokenizer)
    bridge_tok.init_kwargs.setdefault("name_or_path", label)
    bridge_tok.init_kwargs["add_bos_token"] = True
    with quiet_transformers(), own_head_counts():  # a head-pruned GPT-2's layers differ
        bridge = TransformerBridge.boot_transformers(
            label, hf_model=hf, tokenizer=bridge_tok, device=device
        )
    fix_bias_hooks(bridge)  # a head-pruned T5's score hooks read its heads' bias columns
    if getattr(bridge, "compatibility_mode", False):  # never fold LayerNorm / centre weights
        raise NeuronLensError(
            "the bridge booted in compatibility mode; neuronlens needs the default mode"
        )
    bridge.eval()
    return bridge


@contextlib.contextmanager
def quiet_transformers():
    """Silence transformers' load reports (missing head weights are handled by neuronlens)."""
    logger = logging.getLogger("transformers")
    level = logger.level
    verbosity = transformers.logging.get_verbosity()
    bars = transformers.utils.logging.is_progress_bar_enabled()
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    try:
        yield
    finally:
        transformers.logging.set_verbosity(verbosity)
        logger.setLevel(level)
        if bars:
            transformers.utils.logging.enable_progress_bar()
