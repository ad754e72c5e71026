"""Musicnn as seed 000 (Won et al. 2020) trained and evaluated it: the PyTorch
re-implementation in minzwon/sota-music-tagging-models of Pons & Serra's musicnn.

- Input: 3 s at 16 kHz, 96-band dB mel, BatchNorm2d(1) on it (no other normalisation).
- Front end: two "timbral" Conv2d filters of 204 channels spanning 67 and 38 mel bands
  (int(0.7 * 96), int(0.4 * 96): fixed by the reference even with 128 bands) x 7 frames,
  each BN -> ReLU -> max over frequency; three "temporal" Conv1d of 51 channels with
  kernels 129/65/33 on the mean over frequency, each BN -> ReLU. 561 channels in all.
- Mid end: three 'same' Conv1d 7 of 64 channels (BN -> ReLU), the second and third
  residual, densely concatenated with the front end.
- Back end: max and mean over time, Linear 200 -> BN -> ReLU -> dropout 0.5 -> Linear.
784,300 parameters at 50 tags. The 'msd' variant (`musicnn_big`) has a 512-channel mid end
and a 500-unit dense layer.

This is not the TensorFlow musicnn (ReLU before BN, max over frequency for the temporal
filters, BN on the pooled features): that one, with its published weights, is `musicnn_tf`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.layers import MelInput, Tagger, mean_max_pool, scaled
from tagtrain.models.registry import InputSpec, register_model

MUSICNN_INPUT = InputSpec(
    kind="mel", seconds=3.0, features=FeatureConfig(n_mels=96), standardize="none"
)
MUSICNN_128_INPUT = MUSICNN_INPUT.with_features(n_mels=128)

_TIMBRAL_FILTERS = 204
_TEMPORAL_FILTERS = 51
_TIMBRAL_BANDS = (int(0.7 * 96), int(0.4 * 96))  # 67, 38 (the reference fixes 96)
_TEMPORAL_KERNELS = (129, 65, 33)


class TimbralConv(nn.Module):
    """Conv2d (bands x 7, valid in frequency, 'same' in time) -> BN -> ReLU -> max over
    frequency: [B, 1, F, T] -> [B, C, T]."""

    def __init__(self, out_ch: int, bands: int, frames: int = 7):
        super().__init__()
        self.conv = nn.Conv2d(1, out_ch, (bands, frames), padding=(0, frames // 2))
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x))).amax(dim=2)


class TemporalConv(nn.Module):
    """Mean over frequency -> Conv1d ('same', odd kernel) -> BN -> ReLU: [B, 1, F, T] ->
    [B, C, T]."""

    def __init__(self, out_ch: int, kernel: int):
        super().__init__()
        self.conv = nn.Conv1d(1, out_ch, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x.mean(dim=2))))


class ConvBNRelu1d(nn.Sequential):
    """'same' Conv1d 7 -> BN -> ReLU (the reference's Conv_1d without pooling)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 7):
        super().__init__(
            nn.Conv1d(in_ch, out_ch, kernel, padding=kernel // 2), nn.BatchNorm1d(out_ch), nn.ReLU()
        )


class Musicnn(Tagger):
    def __init__(
        self,
        n_classes: int,
        width: float = 1.0,
        n_mels: int = MUSICNN_INPUT.n_mels,
        big: bool = False,
        dropout: float = 0.5,
    ):
        if n_mels < _TIMBRAL_BANDS[0]:
            raise ValueError(f"musicnn needs at least {_TIMBRAL_BANDS[0]} mel bands, got {n_mels}")
        midend = scaled(512 if big else 64, width)
        dense = scaled(500 if big else 200, width)
        super().__init__(dense, n_classes, dropout)
        self.input_spec = MUSICNN_INPUT.with_features(n_mels=n_mels)
        self.input = MelInput()
        timbral = scaled(_TIMBRAL_FILTERS, width)
        temporal = scaled(_TEMPORAL_FILTERS, width)
        self.front = nn.ModuleList(
            [TimbralConv(timbral, bands) for bands in _TIMBRAL_BANDS]
            + [TemporalConv(temporal, k) for k in _TEMPORAL_KERNELS]
        )
        front_ch = len(_TIMBRAL_BANDS) * timbral + len(_TEMPORAL_KERNELS) * temporal
        self.mid = nn.ModuleList(
            [
                ConvBNRelu1d(front_ch, midend),
                ConvBNRelu1d(midend, midend),
                ConvBNRelu1d(midend, midend),
            ]
        )
        self.dense = nn.Sequential(
            nn.Linear(2 * (front_ch + 3 * midend), dense), nn.BatchNorm1d(dense), nn.ReLU()
        )

    def embed(self, mel):
        x = self.input(mel)
        front = torch.cat([conv(x) for conv in self.front], dim=1)  # [B, 561, T]
        first = self.mid[0](front)
        second = self.mid[1](first) + first
        third = self.mid[2](second) + second
        features = torch.cat([front, first, second, third], dim=1)  # dense connections
        return self.dense(mean_max_pool(features))


@register_model(
    "musicnn",
    input_spec=MUSICNN_INPUT,
    reference_params=784_300,
    description="Musicnn as Won et al. 2020 (PyTorch re-implementation): timbral+temporal, dense 200",
)
def musicnn(
    n_classes: int,
    width: float = 1.0,
    n_mels: int = MUSICNN_INPUT.n_mels,
    big: bool = False,
    dropout: float = 0.5,
) -> Musicnn:
    return Musicnn(n_classes, width=width, n_mels=n_mels, big=big, dropout=dropout)


@register_model(
    "musicnn_128",
    input_spec=MUSICNN_128_INPUT,
    reference_params=784_300,
    description="Musicnn on 128 mel bands (Won et al. 2020, Table 2 row)",
)
def musicnn_128(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> Musicnn:
    return Musicnn(n_classes, width=width, n_mels=MUSICNN_128_INPUT.n_mels, dropout=dropout)


@register_model(
    "musicnn_big",
    input_spec=MUSICNN_INPUT,
    reference_params=None,
    description="Musicnn, Won et al. 2020's MSD variant: 512-channel mid end, dense 500",
)
def musicnn_big(
    n_classes: int, width: float = 1.0, n_mels: int = MUSICNN_INPUT.n_mels, dropout: float = 0.5
) -> Musicnn:
    return Musicnn(n_classes, width=width, n_mels=n_mels, big=True, dropout=dropout)
