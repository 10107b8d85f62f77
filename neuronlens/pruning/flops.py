"""FLOP counts and the speed-up ceiling of FFN pruning, from a model's own dimensions."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from neuronlens.errors import NeuronLensError
from neuronlens.models.model import NeuronModel
from neuronlens.pruning.prune import PruningRecord


@dataclass(frozen=True)
class ModelDims:
    """The dimensions that set a transformer's matmul FLOPs.

    Attributes:
        d_model: residual width.
        ffn_widths: FFN width of each layer of the encoder (or the only stack).
        gated: gated FFN (three ``d_model x width`` matrices instead of two).
        attn_dim: query / output projection width (heads x head dim; default ``d_model``).
        kv_dim: key / value projection width (smaller with grouped-query attention;
            default ``attn_dim``).
        decoder_ffn_widths: FFN widths of an encoder-decoder model's decoder layers.
        vocab_size: for the optional LM-head count.
    """

    d_model: int
    ffn_widths: tuple[int, ...]
    gated: bool = False
    attn_dim: int | None = None
    kv_dim: int | None = None
    decoder_ffn_widths: tuple[int, ...] = ()
    vocab_size: int = 0

    @classmethod
    def uniform(cls, d_model: int, d_ff: int, n_layers: int, **kwargs) -> ModelDims:
        """Every layer with the same FFN width (e.g. BERT-base: ``uniform(768, 3072, 12)``)."""
        return cls(d_model, (d_ff,) * n_layers, **kwargs)

    @classmethod
    def of(cls, model: NeuronModel) -> ModelDims:
        """A model's dimensions; for a pruned model, those of the *original* model."""
        cfg = model.hf_model.config
        d = model.d_model
        heads = _first_attr(cfg, ("num_attention_heads", "n_head", "num_heads"))
        head_dim = _first_attr(cfg, ("head_dim", "d_kv"))
        if heads and not head_dim:
            head_dim = d // heads
        attn = heads * head_dim if heads and head_dim else d
        kv_heads = _first_attr(cfg, ("num_key_value_heads",)) or heads
        kv = kv_heads * head_dim if kv_heads and head_dim else attn
        record: PruningRecord | None = getattr(model, "pruning", None)
        widths = {s.name: s.width for s in model.sites}
        if record is not None:
            widths = dict(record.original_widths)
        enc = tuple(w for k, w in widths.items() if not k.startswith("decoder_blocks."))
        dec = tuple(w for k, w in widths.items() if k.startswith("decoder_blocks."))
        return cls(
            d_model=d,
            ffn_widths=enc,
            gated=model.gated,
            attn_dim=attn,
            kv_dim=kv,
            decoder_ffn_widths=dec,
            vocab_size=model.vocab_size,
        )


def _first_attr(cfg, names: Sequence[str]) -> int | None:
    for n in names:
        v = getattr(cfg, n, None)
        if isinstance(v, int) and v > 0:
            return v
    return None


@dataclass(frozen=True)
class FlopCount:
    """Matmul FLOPs of one forward pass (2 FLOPs per multiply-add), by part."""

    attention: float
    """q, k, v and output projections (cross-attention included for encoder-decoders)."""
    scores: float
    """``Q K^T`` and ``softmax(.) V``."""
    ffn: float
    """The FFN linears: the only part FFN pruning shrinks."""
    lm_head: float = 0.0

    @property
    def total(self) -> float:
        return self.attention + self.scores + self.ffn + self.lm_head


def flop_count(
    model: NeuronModel | ModelDims,
    seq_len: int = 128,
    *,
    kept_ratio: float = 1.0,
    decoder_len: int = 1,
    lm_head: bool = False,
    heads_kept_ratio: float = 1.0,
    attn_out_kept_ratio: float = 1.0,
) -> FlopCount:
    """Matmul FLOPs of one forward pass over ``seq_len`` tokens (one sequence).

    Counted per token and layer (in multiply-adds, doubled to FLOPs): attention projections
    ``d·attn + 2·d·kv + attn·d`` (= ``4·d²`` for ordinary multi-head attention), attention
    scores ``2·seq·attn`` (``QK^T`` and the weighted sum of values over all ``seq`` keys; a
    causal mask is not credited, as HF computes the full matrix), FFN ``2·d·width``
    (``3·d·width`` gated). Biases, LayerNorms, activations, softmax and embeddings are not
    counted. An encoder-decoder's decoder runs ``decoder_len`` tokens (1: the first decoder
    step neuronlens reads labels from) with self- and cross-attention (the cross-attention
    keys and values are projected from the ``seq_len`` encoder tokens). ``lm_head=True`` adds
    ``d·vocab`` for every output position (off by default: classification reads one position,
    and the papers' ceilings exclude it). ``kept_ratio`` scales every FFN width,
    ``heads_kept_ratio`` the attention projections and scores (heads pruned evenly),
    ``attn_out_kept_ratio`` the self-attention output projections (their inputs pruned).

    ``model`` is a :class:`NeuronModel` (for a pruned one, the original widths are used:
    pass ``kept_ratio=model.pruning.kept_ratio``) or a :class:`ModelDims`.
    """
    dims = ModelDims.of(model) if isinstance(model, NeuronModel) else model
    if not isinstance(dims, ModelDims):
        raise NeuronLensError(f"flop_count needs a NeuronModel or ModelDims, got {type(model)!r}")
    ratios = (
        ("kept_ratio", kept_ratio),
        ("heads_kept_ratio", heads_kept_ratio),
        ("attn_out_kept_ratio", attn_out_kept_ratio),
    )
    for label, ratio in ratios:
        if not 0.0 <= ratio <= 1.0:
            raise NeuronLensError(f"{label} must be within 0..1, got {ratio}")
    if seq_len < 1 or decoder_len < 1:
        raise NeuronLensError("seq_len and decoder_len must be >= 1")
    d = dims.d_model
    attn = dims.attn_dim or d
    kv = dims.kv_dim or attn
    ffn_mats = 3 if dims.gated else 2
    o_proj = attn * d * attn_out_kept_ratio
    proj = d * attn + 2 * d * kv + o_proj  # per token

    n_enc = len(dims.ffn_widths)
    enc_tokens = seq_len
    attention = enc_tokens * proj * n_enc
    scores = enc_tokens * 2 * seq_len * attn * n_enc
    ffn = enc_tokens * ffn_mats * d * sum(dims.ffn_widths) * kept_ratio
    head_tokens = enc_tokens
    if dims.decoder_ffn_widths:
        n_dec, t = len(dims.decoder_ffn_widths), decoder_len
        # self-attention + cross-attention (q, o on decoder tokens; k, v on encoder tokens)
        attention += n_dec * (t * proj + t * 2 * d * attn + seq_len * 2 * d * kv)
        # (the cross-attention's q and o: 2 * d * attn; its o inputs are not pruned)
        scores += n_dec * (t * 2 * t * attn + t * 2 * seq_len * attn)
        ffn += t * ffn_mats * d * sum(dims.decoder_ffn_widths) * kept_ratio
        head_tokens = t
    head = head_tokens * d * dims.vocab_size if lm_head else 0
    h = heads_kept_ratio
    return FlopCount(
        attention=2.0 * attention * h, scores=2.0 * scores * h, ffn=2.0 * ffn, lm_head=2.0 * head
    )


def flop_ceiling(
    model: NeuronModel | ModelDims,
    kept_ratio: float,
    seq_len: int = 128,
    *,
    decoder_len: int = 1,
    lm_head: bool = False,
    heads_kept_ratio: float = 1.0,
    attn_out_kept_ratio: float = 1.0,
) -> float:
    """Theoretical speed-up of keeping ``kept_ratio`` of the FFN neurons (and
    ``heads_kept_ratio`` of the attention heads, ``attn_out_kept_ratio`` of the attention
    output projections' inputs): matmul FLOPs unpruned / pruned, counted as
    in :func:`flop_count`.

    BERT-base at 128 tokens (``ModelDims.uniform(768, 3072, 12)``): 1.24× at
    ``kept_ratio=0.7``, 1.48× at 0.5, 1.83× at 0.3.
    """
    full = flop_count(model, seq_len, decoder_len=decoder_len, lm_head=lm_head)
    pruned = flop_count(
        model,
        seq_len,
        kept_ratio=kept_ratio,
        decoder_len=decoder_len,
        lm_head=lm_head,
        heads_kept_ratio=heads_kept_ratio,
        attn_out_kept_ratio=attn_out_kept_ratio,
    )
    return full.total / pruned.total
