"""The reparameterisations the compared methods train through, then drop.

* :class:`PrefixEncoder` - prefix tuning (Li & Liang 2021): ``p`` embeddings through an MLP
  (``d_model -> hidden -> layers x 2 x kv width``, tanh) give every layer's prefix keys and
  values; after training only the prefix is kept.
* :class:`PromptEncoder` - P-tuning (Liu et al. 2021): ``p`` embeddings through a
  bidirectional LSTM and an MLP give the prompt vectors; after training only the vectors are
  kept, an ordinary soft prompt.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neuronlens.models.prefix import Prefix, attention_dims


class PrefixEncoder(nn.Module):
    """``[p, d_model]`` embeddings -> a :class:`Prefix` for every layer."""

    def __init__(self, d_model: int, config, hidden: int = 512) -> None:
        super().__init__()
        self.layers, kv_heads, head_dim = attention_dims(config)
        self.width = kv_heads * head_dim
        self.mlp = nn.Sequential(
            nn.Linear(d_model, hidden), nn.Tanh(), nn.Linear(hidden, self.layers * 2 * self.width)
        )

    def forward(self, embeddings: Tensor) -> Prefix:
        p = embeddings.shape[0]
        kv = self.mlp(embeddings).view(p, self.layers, 2, self.width).permute(1, 2, 0, 3)
        return Prefix(kv)


class PromptEncoder(nn.Module):
    """``[p, d_model]`` embeddings -> ``[p, d_model]`` prompt vectors (BiLSTM, then MLP)."""

    def __init__(self, d_model: int, hidden: int | None = None) -> None:
        super().__init__()
        hidden = hidden or d_model
        self.lstm = nn.LSTM(
            d_model, hidden // 2, num_layers=2, bidirectional=True, batch_first=True
        )
        self.mlp = nn.Sequential(nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, d_model))

    def forward(self, embeddings: Tensor) -> Tensor:
        out, _ = self.lstm(embeddings.unsqueeze(0))
        return self.mlp(out.squeeze(0))


def encoder_params(encoder: nn.Module, dtype: torch.dtype, device) -> list[nn.Parameter]:
    encoder.to(device, dtype)
    return list(encoder.parameters())
