"""The LAION aesthetic predictor heads, with the original parameter names.

v2 ("improved aesthetic predictor", ``sac+logos+ava1-l14-linearMSE.pth``): an MLP
768 -> 1024 -> 128 -> 64 -> 16 -> 1 with dropout 0.2/0.2/0.1 and no activations, stored under
``layers.{0,2,4,6,7}.{weight,bias}``. v1: one ``nn.Linear(768, 1)``. Both read L2-normalised
CLIP image embeddings and answer on the AVA 1-10 scale. ``embed_dim`` and ``hidden`` are
parameters so the miniworld predictor uses the same class at a smaller width.
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

V2_HIDDEN = (1024, 128, 64, 16)
V2_DROPOUT = (0.2, 0.2, 0.1)


class AestheticMLP(nn.Module):
    """v2 head. forward: (N, embed_dim) float, L2-normalised -> (N, 1)."""

    def __init__(self, embed_dim: int = 768, hidden: Sequence[int] = V2_HIDDEN) -> None:
        super().__init__()
        if len(hidden) != 4:
            raise ValueError(f"AestheticMLP needs 4 hidden sizes like {V2_HIDDEN}, got {tuple(hidden)}")
        h1, h2, h3, h4 = hidden
        self.embed_dim = embed_dim
        self.hidden = tuple(hidden)
        self.layers = nn.Sequential(
            nn.Linear(embed_dim, h1),
            nn.Dropout(V2_DROPOUT[0]),
            nn.Linear(h1, h2),
            nn.Dropout(V2_DROPOUT[1]),
            nn.Linear(h2, h3),
            nn.Dropout(V2_DROPOUT[2]),
            nn.Linear(h3, h4),
            nn.Linear(h4, 1),
        )

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.layers(embeds)


class AestheticLinear(nn.Module):
    """v1 head: one linear layer. forward: (N, embed_dim) -> (N, 1)."""

    def __init__(self, embed_dim: int = 768) -> None:
        super().__init__()
        self.embed_dim = embed_dim
        self.linear = nn.Linear(embed_dim, 1)

    def forward(self, embeds: torch.Tensor) -> torch.Tensor:
        return self.linear(embeds)
