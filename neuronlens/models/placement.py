"""Where a model's weights live and in what precision: dtypes, devices, device maps.

neuronlens boots the TransformerBridge from a Hugging Face model it loaded itself, so it
casts and places that model itself, before the bridge boots: :func:`resolve_dtype` reads the
``dtype`` argument of :func:`~neuronlens.load_model`, :func:`load_kwargs` turns ``device``,
``device_map``, ``n_devices`` and ``max_memory`` into ``from_pretrained`` arguments, and
:func:`place_built` does the same for an already-built model (``accelerate.dispatch_model``).

What the rest of neuronlens does with the precision:

* the model runs in its own dtype (capture hands probes activations in that dtype);
* probe statistics are summed in float64, attribution's products in float32;
* soft prompts, prefixes and heads are float32 master weights (the forward casts the prompt
  to the model's dtype), so a bfloat16 model trains a prompt as a float32 one would;
* results record the model's dtype, and a prompt tuned at one dtype loads on a model of
  another only with ``PromptResult.load(..., any_dtype=True)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import Tensor

from neuronlens.errors import NeuronLensError

DTYPES = {
    "float32": torch.float32,
    "fp32": torch.float32,
    "float": torch.float32,
    "bfloat16": torch.bfloat16,
    "bf16": torch.bfloat16,
    "float16": torch.float16,
    "fp16": torch.float16,
    "half": torch.float16,
}
"""The names :func:`resolve_dtype` accepts for the three supported floating dtypes."""

MASTER_DTYPE = torch.float32
"""The dtype trained soft prompts, prefixes and heads are kept in, whatever the model's."""


def resolve_dtype(dtype) -> torch.dtype | str | None:
    """``None`` (keep: float32 from disk, a built model as built), ``"auto"`` (the
    checkpoint's own dtype), or one of float32 / bfloat16 / float16 (a ``torch.dtype`` or a
    name such as ``"bf16"``)."""
    if dtype is None or dtype == "auto":
        return dtype
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in DTYPES:
            return DTYPES[key]
    elif dtype in (torch.float32, torch.bfloat16, torch.float16):
        return dtype
    raise NeuronLensError(
        f"dtype must be 'auto', torch.float32, torch.bfloat16 or torch.float16 (or a name: "
        f"{sorted(DTYPES)}), got {dtype!r}"
    )


def dtype_name(dtype: torch.dtype) -> str:
    """``torch.bfloat16`` -> ``"bfloat16"`` (as results record it)."""
    return str(dtype).removeprefix("torch.")


def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as err:
        raise NeuronLensError(
            f"device must be like 'cpu', 'cuda' or 'cuda:1', got {device!r}"
        ) from err
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise NeuronLensError(
            f"device {device!r} asks for CUDA, which this machine does not have (torch "
            f"{torch.__version__}); use device='cpu'"
        )
    return dev


def placement_kwargs(device, device_map, n_devices, max_memory) -> dict:
    """``from_pretrained`` placement arguments: ``{"device_map": ..., "max_memory": ...}``,
    or ``{}`` when the model goes to one ``device`` (moved after loading)."""
    if device_map is not None and device not in (None, "cpu"):
        raise NeuronLensError(
            "pass device= (one device) or device_map= (a split over several), not both"
        )
    if n_devices is not None:
        if not isinstance(n_devices, int) or isinstance(n_devices, bool) or n_devices < 1:
            raise NeuronLensError(f"n_devices must be a positive integer, got {n_devices!r}")
        if device_map is not None:
            raise NeuronLensError("pass n_devices= or device_map=, not both")
        if n_devices > 1:
            have = torch.cuda.device_count() if torch.cuda.is_available() else 0
            if have < n_devices:
                raise NeuronLensError(
                    f"n_devices={n_devices} splits the model over that many CUDA devices; "
                    f"this machine has {have}. Use device_map= for a CPU split"
                )
            device_map = "balanced"
            if max_memory is None:
                max_memory = {i: torch.cuda.mem_get_info(i)[0] for i in range(n_devices)}
    if device_map is None:
        if max_memory is not None:
            raise NeuronLensError("max_memory caps a device_map= split; pass device_map= too")
        return {}
    if isinstance(device_map, dict):
        for where in device_map.values():
            if str(where) in ("meta", "disk"):
                raise NeuronLensError(
                    f"device_map target {where!r} is not supported: the bridge runs every "
                    "module where it lives (use device='meta' for a shape-only model)"
                )
            if not isinstance(where, int):
                _check_device(where)
    elif not isinstance(device_map, str):
        raise NeuronLensError(
            f"device_map must be a dict of module name -> device, or 'auto' / 'balanced' / "
            f"'sequential', got {type(device_map).__name__}"
        )
    out = {"device_map": device_map}
    if max_memory is not None:
        out["max_memory"] = max_memory
    return out


def place_built(hf: torch.nn.Module, device, kwargs: dict) -> torch.nn.Module:
    """Put an already-built HF model where ``device`` or the ``device_map`` of ``kwargs``
    (from :func:`placement_kwargs`) says."""
    if not kwargs:
        dev = _check_device(device or "cpu")
        return hf.to(dev)
    import accelerate

    device_map = kwargs["device_map"]
    if isinstance(device_map, str):
        device_map = accelerate.infer_auto_device_map(
            hf,
            max_memory=kwargs.get("max_memory"),
            no_split_module_classes=list(getattr(hf, "_no_split_modules", None) or []),
        )
    accelerate.dispatch_model(hf, device_map=device_map)
    hf.hf_device_map = dict(device_map)
    return hf


def devices_of(module: torch.nn.Module) -> list[torch.device]:
    """The distinct devices ``module``'s parameters live on, in first-seen order."""
    seen: dict[str, torch.device] = {}
    for p in module.parameters():
        seen.setdefault(str(p.device), p.device)
    return list(seen.values())


def cast_floats(module: torch.nn.Module, dtype: torch.dtype) -> None:
    """Cast the floating parameters (and floating buffers other than rotary frequencies,
    which stay float32 as transformers keeps them) of ``module`` to ``dtype``, in place."""
    for p in module.parameters():
        if p.is_floating_point() and p.dtype != dtype:
            p.data = p.data.to(dtype)
    for name, b in module.named_buffers():
        if b.is_floating_point() and b.dtype != dtype and "inv_freq" not in name:
            b.data = b.data.to(dtype)


@contextlib.contextmanager
def computing_in(module: torch.nn.Module, dtype) -> Iterator[None]:
    """Run ``module`` in ``dtype`` inside the block, then cast it back, also when the block
    raised. ``None``: as it is. Widening a half-precision model to float32 and back is exact,
    so the weights after the block are bit for bit those before; the block holds the wider
    copy (float32 weights take twice the memory of bfloat16 ones)."""
    target = resolve_dtype(dtype)
    if target == "auto":
        raise NeuronLensError("compute_dtype must be a dtype (e.g. 'float32') or None, not 'auto'")
    before = {name: p.dtype for name, p in module.named_parameters() if p.is_floating_point()}
    if target is None or all(d == target for d in before.values()):
        yield
        return
    narrowing = any(_bits(target) < _bits(d) for d in before.values())
    if narrowing:
        raise NeuronLensError(
            f"compute_dtype={dtype_name(target)} is narrower than the model's weights: casting "
            "back would not restore them. Load the model in that dtype instead"
        )
    buffers = {
        name: b.dtype
        for name, b in module.named_buffers()
        if b.is_floating_point() and "inv_freq" not in name
    }
    cast_floats(module, target)
    try:
        yield
    finally:
        for name, p in module.named_parameters():
            if name in before and p.dtype != before[name]:
                p.data = p.data.to(before[name])
        for name, b in module.named_buffers():
            if name in buffers and b.dtype != buffers[name]:
                b.data = b.data.to(buffers[name])


def _bits(dtype: torch.dtype) -> int:
    return torch.finfo(dtype).bits


def widen(t: Tensor) -> Tensor:
    """``t`` in float32 when it is half precision (bfloat16 / float16), else as it is: what
    sums and products of activations and gradients are computed in."""
    return t.float() if t.dtype in (torch.bfloat16, torch.float16) else t
