"""The "basic" models of Pons et al. 2018 ("End-to-end learning for music audio tagging at
scale"; jordipons/music-audio-tagging-at-scale-models): a spectrogram front end with many
vertical (timbral) and horizontal (temporal) filter shapes, or a 7-layer sample-level
waveform front end, sharing one back end of three 512-filter 1-D convs (two residual), a
temporal pool, mean+max pooling and a dense layer of 500. 15 s inputs at 16 kHz as in the
paper's MSD experiments (`pons_spec`, `pons_wave`); 3 s inputs as in its MagnaTagATune
experiments (`pons_spec_3s`, `pons_wave_3s`; same architecture, see docs/FIDELITY.md).

Input normalisation of the spectrogram models: "band" by default, as the paper says (the
log-mel is "normalized to have zero-mean and unit-var": per-band mean/std of the training
split, from the dataset card). `input_norm` of the spectrogram builders names the
alternatives: "none" (the reference code, music-audio-tagging-at-scale-models'
`spec_frontend`, feeds the log-mel to the first convolutions as it is) and "batchnorm" (a
learned BatchNorm on the input, as every model of jordipons/musicnn-training, the authors'
later code, has). The waveform models take PCM as it is, in the paper and the reference.
"""

from __future__ import annotations

import dataclasses

import torch
from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.layers import (
    ConvReluBN1d,
    EnvelopeConv,
    FrequencyMaxConv,
    Tagger,
    mean_max_pool,
    scaled,
)
from tagtrain.models.registry import InputSpec, register_model

# librosa's mel as the reference computed it in 2018 (Slaney filters, reflect-padded ends).
PONS_SPEC_INPUT = InputSpec(
    kind="mel",
    seconds=15.0,
    features=FeatureConfig(n_mels=96, log_scale="log10_1p", mel_scale="slaney", mel_norm="slaney"),
    standardize="band",  # the paper's zero-mean unit-variance input (reference: "none")
)
PONS_WAVE_INPUT = InputSpec(kind="pcm", seconds=15.0, standardize="none")

# Spectrogram front end, in multiples of num_filt (16): (filters, frequency fraction, frames)
_TIMBRAL = ((1, 0.9, 7), (2, 0.9, 3), (4, 0.9, 1), (1, 0.4, 7), (2, 0.4, 3), (4, 0.4, 1))
_TEMPORAL = ((1, 165), (2, 128), (4, 64), (8, 32))
# Waveform front end: filters of the strided conv and the six conv+pool layers.
_WAVE_FILTERS = (64, 64, 64, 128, 128, 128, 256)
INPUT_NORMS = ("none", "batchnorm", "band")


class PonsBackEnd(nn.Module):
    """[B, C, T] -> [B, dense]: conv 7 (valid), two residual convs 7 around a x2 time
    pool, mean+max pooling, dense with ReLU and BN."""

    def __init__(self, in_ch: int, filters: int, dense: int, dropout: float):
        super().__init__()
        self.conv1 = ConvReluBN1d(in_ch, filters, padding=0)
        self.conv2 = ConvReluBN1d(filters, filters)
        self.pool = nn.MaxPool1d(2)
        self.conv3 = ConvReluBN1d(filters, filters)
        self.head = nn.Sequential(
            nn.Dropout(dropout), nn.Linear(2 * filters, dense), nn.ReLU(), nn.BatchNorm1d(dense)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv1(x)
        x = self.pool(self.conv2(x) + x)
        x = self.conv3(x) + x
        return self.head(mean_max_pool(x))


class PonsSpecFrontEnd(nn.Module):
    def __init__(self, num_filt: int, n_mels: int, input_bn: bool = False):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1) if input_bn else nn.Identity()
        self.timbral = nn.ModuleList(
            FrequencyMaxConv(k * num_filt, int(frac * n_mels), frames)
            for k, frac, frames in _TIMBRAL
        )
        self.temporal = nn.ModuleList(EnvelopeConv(k * num_filt, frames) for k, frames in _TEMPORAL)
        self.out_channels = num_filt * (sum(k for k, *_ in _TIMBRAL) + sum(k for k, _ in _TEMPORAL))

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(mel.unsqueeze(1))  # identity unless input_norm="batchnorm"
        return torch.cat([m(x) for m in [*self.timbral, *self.temporal]], dim=1)


class PonsWaveFrontEnd(nn.Module):
    """Lee et al.'s sample-level front end: strided conv 3, then six (conv 3, pool 3),
    'valid' convs, ReLU before BN."""

    def __init__(self, filters: list[int]):
        super().__init__()
        first = filters[0]
        layers = [nn.Conv1d(1, first, 3, stride=3), nn.ReLU(), nn.BatchNorm1d(first)]
        for in_ch, out_ch in zip(filters[:-1], filters[1:]):
            layers += [
                nn.Conv1d(in_ch, out_ch, 3),
                nn.ReLU(),
                nn.BatchNorm1d(out_ch),
                nn.MaxPool1d(3),
            ]
        self.layers = nn.Sequential(*layers)
        self.out_channels = filters[-1]

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        if pcm.dim() != 2:
            raise ValueError(f"expected PCM [B, samples], got {tuple(pcm.shape)}")
        return self.layers(pcm.unsqueeze(1))


class PonsTagger(Tagger):
    def __init__(self, front: nn.Module, n_classes: int, width: float, dropout: float):
        dense = scaled(500, width)
        super().__init__(dense, n_classes, dropout)
        self.front = front
        self.back = PonsBackEnd(front.out_channels, scaled(512, width), dense, dropout)

    def embed(self, x):
        return self.back(self.front(x))


@register_model(
    "pons_spec",
    input_spec=PONS_SPEC_INPUT,
    reference_params=5_926_198,
    description="Pons 2018 basic model: many vertical+horizontal filters on the mel, 512-conv back end",
)
def pons_spec(
    n_classes: int,
    width: float = 1.0,
    n_mels: int = PONS_SPEC_INPUT.n_mels,
    dropout: float = 0.5,
    seconds: float = PONS_SPEC_INPUT.seconds,
    input_norm: str = "band",
) -> PonsTagger:
    if input_norm not in INPUT_NORMS:
        raise ValueError(f"input_norm must be one of {INPUT_NORMS}, not {input_norm!r}")
    front = PonsSpecFrontEnd(scaled(16, width), n_mels, input_bn=input_norm == "batchnorm")
    model = PonsTagger(front, n_classes, width, dropout)
    model.input_spec = dataclasses.replace(
        PONS_SPEC_INPUT.with_features(n_mels=n_mels),
        seconds=seconds,
        standardize="band" if input_norm == "band" else "none",
    )
    return model


@register_model(
    "pons_wave",
    input_spec=PONS_WAVE_INPUT,
    reference_params=5_379_126,
    description="Pons 2018 basic model: 7-layer sample-level waveform front end, 512-conv back end",
)
def pons_wave(
    n_classes: int,
    width: float = 1.0,
    dropout: float = 0.5,
    seconds: float = PONS_WAVE_INPUT.seconds,
) -> PonsTagger:
    front = PonsWaveFrontEnd([scaled(c, width) for c in _WAVE_FILTERS])
    model = PonsTagger(front, n_classes, width, dropout)
    model.input_spec = dataclasses.replace(PONS_WAVE_INPUT, seconds=seconds)
    return model


@register_model(
    "pons_spec_3s",
    input_spec=dataclasses.replace(PONS_SPEC_INPUT, seconds=3.0),
    reference_params=5_926_198,
    description="Pons 2018 spectrogram model at 3 s (the paper's MagnaTagATune setting)",
)
def pons_spec_3s(
    n_classes: int, width: float = 1.0, dropout: float = 0.5, input_norm: str = "band"
) -> PonsTagger:
    return pons_spec(n_classes, width=width, dropout=dropout, seconds=3.0, input_norm=input_norm)


@register_model(
    "pons_wave_3s",
    input_spec=dataclasses.replace(PONS_WAVE_INPUT, seconds=3.0),
    reference_params=5_379_126,
    description="Pons 2018 waveform model at 3 s (the paper's MagnaTagATune setting)",
)
def pons_wave_3s(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> PonsTagger:
    return pons_wave(n_classes, width=width, dropout=dropout, seconds=3.0)
