"""Convolutional recurrent network (Choi et al. 2017, "Convolutional recurrent neural
networks for music classification"): four 3x3 conv blocks collapse frequency, a two-layer
GRU summarises the remaining frames.
"""

from __future__ import annotations

from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.layers import ConvBlock2d, MelInput, Tagger, scaled
from tagtrain.models.registry import InputSpec, register_model

CRNN_INPUT = InputSpec(
    kind="mel",
    seconds=29.1,
    features=FeatureConfig(n_mels=96),
    chunk_level=False,
    standardize="none",
)
CRNN_128_INPUT = CRNN_INPUT.with_features(n_mels=128)

_CHANNELS = (64, 128, 128, 128)
_POOLS = ((2, 2), (3, 3), (4, 4), (4, 4))  # 96 bands -> 1; 1819 frames -> 18 steps


class CRNN(Tagger):
    def __init__(
        self,
        n_classes: int,
        width: float = 1.0,
        n_mels: int = CRNN_INPUT.n_mels,
        rnn_units: int = 32,
        dropout: float = 0.5,
    ):
        channels = [scaled(c, width) for c in _CHANNELS]
        hidden = scaled(rnn_units, width)
        super().__init__(hidden, n_classes, dropout)
        self.input_spec = CRNN_INPUT.with_features(n_mels=n_mels)
        self.input = MelInput()
        blocks, in_ch = [], 1
        for out_ch, pool in zip(channels, _POOLS):
            blocks.append(ConvBlock2d(in_ch, out_ch, pool))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.rnn = nn.GRU(in_ch, hidden, num_layers=2, batch_first=True)

    def embed(self, mel):
        x = self.blocks(self.input(mel))  # [B, C, F', T']
        x = x.amax(dim=2).transpose(1, 2)  # F' is 1 at 96 bands; [B, T', C]
        out, _ = self.rnn(x)
        return out[:, -1]


@register_model(
    "crnn",
    input_spec=CRNN_INPUT,
    reference_params=394_100,
    description="CRNN (Choi 2017): 4 conv blocks + 2-layer GRU(32), song-level",
)
def crnn(
    n_classes: int, width: float = 1.0, n_mels: int = CRNN_INPUT.n_mels, dropout: float = 0.5
) -> CRNN:
    return CRNN(n_classes, width=width, n_mels=n_mels, dropout=dropout)


@register_model(
    "crnn_128",
    input_spec=CRNN_128_INPUT,
    reference_params=394_100,
    description="CRNN on 128 mel bands (Won et al. 2020, Table 2 row), song-level",
)
def crnn_128(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> CRNN:
    return CRNN(n_classes, width=width, n_mels=CRNN_128_INPUT.n_mels, dropout=dropout)
