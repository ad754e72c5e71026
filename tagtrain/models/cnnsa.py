"""CNN with self-attention (Won et al. 2019, "Toward interpretable music tagging with
self-attention"): seven residual 3x3 blocks turn the mel into a sequence of 256-d frames,
a two-layer, 8-head BERT-style encoder summarises it into a [CLS] token.

The reference prepended a fixed random vector as [CLS] and had no position information;
here the [CLS] token is learned and a sinusoidal position encoding is added, which also
extends to any input length.
"""

from __future__ import annotations

import torch
from torch import nn

from tagtrain.models.layers import (
    ClsToken,
    MelInput,
    ResBlock2d,
    Tagger,
    heads_multiple,
    scaled,
    sinusoidal_positions,
    transformer_encoder,
)
from tagtrain.registry import InputSpec, register_model

CNNSA_INPUT = InputSpec(kind="mel", seconds=15.0, n_mels=128)

# (channel factor of the base 128, stride): three full downsamplings, then frequency only,
# so 128 bands reach 1 while the 938 frames keep 118 steps.
_BLOCKS = ((1, 2), (1, 2), (2, 2), (2, (2, 1)), (2, (2, 1)), (2, (2, 1)), (2, (2, 1)))
_HEADS = 8


class CNNSA(Tagger):
    def __init__(
        self,
        n_classes: int,
        width: float = 1.0,
        layers: int = 2,
        attention_dropout: float = 0.4,
        dropout: float = 0.5,
    ):
        base = scaled(128, width)
        dim = heads_multiple(2 * base, _HEADS)
        super().__init__(dim, n_classes, dropout)
        self.input = MelInput()
        blocks, in_ch = [], 1
        for i, (factor, stride) in enumerate(_BLOCKS):
            out_ch = dim if i == len(_BLOCKS) - 1 else base * factor
            blocks.append(ResBlock2d(in_ch, out_ch, stride=stride))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.cls = ClsToken(dim)
        self.encoder = transformer_encoder(
            dim, layers, _HEADS, 4 * dim, attention_dropout, pre_norm=False
        )
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())  # BERT's pooler

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.input(mel)).amax(dim=2)  # [B, D, T']; one band left at 128 mels
        tokens = self.cls(x.transpose(1, 2))
        tokens = tokens + sinusoidal_positions(tokens.shape[1], tokens.shape[2], tokens.device)
        return self.pooler(self.encoder(tokens)[:, 0])


@register_model(
    "cnnsa",
    input_spec=CNNSA_INPUT,
    reference_params=10_521_652,
    description="CNN + self-attention (Won 2019): 7 residual blocks, 2-layer 8-head encoder, CLS",
)
def cnnsa(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> CNNSA:
    return CNNSA(n_classes, width=width, dropout=dropout)
