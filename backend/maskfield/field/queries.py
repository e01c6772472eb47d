"""Scene-level queries: fixed sinusoidal codes of their index through two small MLPs."""
from __future__ import annotations

import math

import torch
from torch import nn


def sinusoidal_codes(count: int, num_freqs: int = 10) -> torch.Tensor:
    """(count, 2 * num_freqs): sin and cos of the index at octave frequencies.

    The index is scaled to [0, 1) so the lowest frequency sweeps once over all queries and
    the highest separates neighbours; every code is distinct and fixed (not learned).
    """
    t = torch.arange(count, dtype=torch.float32)[:, None] / count
    freqs = (2.0 ** torch.arange(num_freqs, dtype=torch.float32))[None, :] * math.pi
    return torch.cat([torch.sin(t * freqs), torch.cos(t * freqs)], dim=1)


def _mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, hidden),
                         nn.ReLU(inplace=True), nn.Linear(hidden, out))


class QueryNetworks(nn.Module):
    """K queries -> mask embeddings m (K, feature_dim) and semantic embeddings c (K, embed_dim)."""

    def __init__(self, num_queries: int = 240, feature_dim: int = 16, embed_dim: int = 512,
                 num_freqs: int = 10, hidden: int = 256):
        super().__init__()
        self.num_queries = num_queries
        self.feature_dim = feature_dim
        self.embed_dim = embed_dim
        self.register_buffer("codes", sinusoidal_codes(num_queries, num_freqs))
        self.mask_mlp = _mlp(2 * num_freqs, hidden, feature_dim)
        self.embed_mlp = _mlp(2 * num_freqs, hidden, embed_dim)

    def forward(self) -> tuple[torch.Tensor, torch.Tensor]:
        m = self.mask_mlp(self.codes)
        c = self.embed_mlp(self.codes)
        return m, c

    def semantic(self, rows: torch.Tensor) -> torch.Tensor:
        """The semantic embeddings of some queries only (training needs gradients for the
        matched few; the rest are read for the matching cost, without gradients)."""
        return self.embed_mlp(self.codes[rows])

    def config(self) -> dict:
        return {"num_queries": self.num_queries, "feature_dim": self.feature_dim, "embed_dim": self.embed_dim,
                "num_freqs": self.codes.shape[1] // 2, "hidden": self.mask_mlp[0].out_features}
