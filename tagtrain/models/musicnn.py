"""Musicnn (Pons et al. 2018, "End-to-end learning for music audio tagging at scale";
jordipons/musicnn): musically motivated front end (timbral filters spanning 70% and 40% of
the mel axis, temporal filters of 128/64/32 frames, all max-pooled over frequency), a
dense mid-end of three residual 1-D convs, and mean+max temporal pooling into a dense
layer. Faithful to the TensorFlow original, including ReLU-before-BN and the batch-norm on
the pooled features.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from tagtrain.models.layers import (
    ConvReluBN1d,
    FrequencyMaxConv,
    MelInput,
    Tagger,
    mean_max_pool,
    scaled,
)
from tagtrain.registry import InputSpec, register_model

MUSICNN_INPUT = InputSpec(kind="mel", seconds=3.0, n_mels=96)

_TIMBRAL_FILTERS = 204  # int(1.6 * 128)
_TEMPORAL_FILTERS = 51  # int(1.6 * 32)
_TIMBRAL_FREQ_FRACTIONS = (0.4, 0.7)
_TEMPORAL_FRAMES = (128, 64, 32)


class Musicnn(Tagger):
    def __init__(
        self,
        n_classes: int,
        width: float = 1.0,
        n_mels: int = 96,
        big: bool = False,
        dropout: float = 0.5,
    ):
        midend = scaled(512 if big else 64, width)
        dense = scaled(500 if big else 200, width)
        super().__init__(dense, n_classes, dropout)
        self.input_spec = dataclasses.replace(MUSICNN_INPUT, n_mels=n_mels)
        self.input = MelInput()
        timbral = scaled(_TIMBRAL_FILTERS, width)
        temporal = scaled(_TEMPORAL_FILTERS, width)
        self.front = nn.ModuleList(
            [FrequencyMaxConv(timbral, int(f * n_mels), 7) for f in _TIMBRAL_FREQ_FRACTIONS]
            + [FrequencyMaxConv(temporal, 1, t) for t in _TEMPORAL_FRAMES]
        )
        front_ch = 2 * timbral + 3 * temporal
        self.mid = nn.ModuleList(
            [
                ConvReluBN1d(front_ch, midend),
                ConvReluBN1d(midend, midend),
                ConvReluBN1d(midend, midend),
            ]
        )
        pooled = 2 * (front_ch + 3 * midend)
        self.back = nn.Sequential(
            nn.BatchNorm1d(pooled),
            nn.Dropout(dropout),
            nn.Linear(pooled, dense),
            nn.ReLU(),
            nn.BatchNorm1d(dense),
        )

    def embed(self, mel):
        x = self.input(mel)
        front = torch.cat([conv(x) for conv in self.front], dim=1)  # [B, 561, T]
        first = self.mid[0](front)
        second = self.mid[1](first) + first
        third = self.mid[2](second) + second
        features = torch.cat([front, first, second, third], dim=1)  # dense connections
        return self.back(mean_max_pool(features))


@register_model(
    "musicnn",
    input_spec=MUSICNN_INPUT,
    reference_params=787_159,
    description="Musicnn (Pons 2018): timbral+temporal front end, residual mid-end, dense 200",
)
def musicnn(
    n_classes: int, width: float = 1.0, n_mels: int = 96, big: bool = False, dropout: float = 0.5
) -> Musicnn:
    return Musicnn(n_classes, width=width, n_mels=n_mels, big=big, dropout=dropout)


@register_model(
    "musicnn_big",
    input_spec=MUSICNN_INPUT,
    reference_params=None,
    description="Musicnn, MSD 'big' variant: 512-filter mid-end, dense 500",
)
def musicnn_big(
    n_classes: int, width: float = 1.0, n_mels: int = 96, dropout: float = 0.5
) -> Musicnn:
    return Musicnn(n_classes, width=width, n_mels=n_mels, big=True, dropout=dropout)
