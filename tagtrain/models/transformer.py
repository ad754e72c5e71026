"""Music Tagging Transformer (Won et al. 2021, "Semi-supervised music tagging transformer";
minzwon/semi-supervised-music-tagging-transformer): three residual conv blocks turn a
22,050 Hz, 128-band mel into one token per 4 frames, a pre-norm transformer with a
learned [CLS] token and learned positions summarises them. Trained on 10 s chunks; at
inference any length works (positions are interpolated past the table).

The teacher has 256-d attention, the compact student 64-d.
"""

from __future__ import annotations

import torch
from torch import nn

from tagtrain.models.layers import (
    ClsToken,
    LearnedPositions,
    MelInput,
    ResPoolBlock2d,
    Tagger,
    heads_multiple,
    scaled,
    transformer_encoder,
)
from tagtrain.registry import InputSpec, register_model

TRANSFORMER_INPUT = InputSpec(
    kind="mel", seconds=10.0, sample_rate=22050, n_fft=1024, hop=512, n_mels=128, f_max=11025.0
)


class MusicTaggingTransformer(Tagger):
    def __init__(
        self,
        n_classes: int,
        dim: int = 256,
        width: float = 1.0,
        conv_channels: int = 128,
        layers: int = 4,
        heads: int = 8,
        max_tokens: int = 512,
        n_mels: int = 128,
        dropout: float = 0.1,
    ):
        dim = heads_multiple(scaled(dim, width), heads)
        # The reference has no dropout before its LayerNorm + Linear head.
        super().__init__(dim, n_classes, dropout=0.0)
        conv = scaled(conv_channels, width)
        self.input = MelInput()
        self.front = nn.Sequential(
            ResPoolBlock2d(1, conv, (2, 2)),
            ResPoolBlock2d(conv, conv, (2, 2)),
            ResPoolBlock2d(conv, conv, (2, 1)),
        )
        self.to_tokens = nn.Linear(conv * (n_mels // 8), dim)
        self.cls = ClsToken(dim)
        self.positions = LearnedPositions(max_tokens, dim)
        self.token_dropout = nn.Dropout(dropout)
        self.encoder = transformer_encoder(dim, layers, heads, 4 * dim, dropout, pre_norm=True)
        self.norm = nn.LayerNorm(dim)

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.front(self.input(mel))  # [B, C, F/8, T/4]
        b, c, f, t = x.shape
        tokens = self.to_tokens(x.permute(0, 3, 1, 2).reshape(b, t, c * f))
        tokens = self.token_dropout(self.positions(self.cls(tokens)))
        return self.norm(self.encoder(tokens)[:, 0])


@register_model(
    "music_tagging_transformer",
    input_spec=TRANSFORMER_INPUT,
    reference_params=4_567_732,
    description="Music Tagging Transformer (Won 2021), teacher: 3 res blocks, 4 x 256-d x 8 heads",
)
def music_tagging_transformer(
    n_classes: int, width: float = 1.0, dropout: float = 0.1
) -> MusicTaggingTransformer:
    return MusicTaggingTransformer(n_classes, dim=256, width=width, dropout=dropout)


@register_model(
    "music_tagging_transformer_small",
    input_spec=TRANSFORMER_INPUT,
    reference_params=1_108_852,
    description="Music Tagging Transformer, compact student: 64-d attention",
)
def music_tagging_transformer_small(
    n_classes: int, width: float = 1.0, dropout: float = 0.1
) -> MusicTaggingTransformer:
    return MusicTaggingTransformer(n_classes, dim=64, width=width, dropout=dropout)
