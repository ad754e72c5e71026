"""Fully convolutional network (Choi et al. 2016, "Automatic tagging using deep
convolutional neural networks"): five 3x3 blocks whose pools reduce a 29.1 s, 96-band
mel spectrogram to a single 64-d vector.
"""

from __future__ import annotations

from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.layers import ConvBlock2d, MelInput, Tagger, global_max_pool_2d, scaled
from tagtrain.models.registry import InputSpec, register_model

FCN_INPUT = InputSpec(
    kind="mel",
    seconds=29.1,
    features=FeatureConfig(n_mels=96),
    chunk_level=False,
    standardize="none",
)
FCN_128_INPUT = FCN_INPUT.with_features(n_mels=128)

_CHANNELS = (64, 128, 128, 128, 64)
# (frequency, time) pools: 96 x 1819 -> 1 x 1.
_POOLS = ((2, 4), (2, 4), (2, 4), (3, 5), (4, 4))


class FCN(Tagger):
    def __init__(
        self,
        n_classes: int,
        width: float = 1.0,
        n_mels: int = FCN_INPUT.n_mels,
        dropout: float = 0.5,
    ):
        channels = [scaled(c, width) for c in _CHANNELS]
        super().__init__(channels[-1], n_classes, dropout)
        self.input_spec = FCN_INPUT.with_features(n_mels=n_mels)
        self.input = MelInput()
        blocks, in_ch = [], 1
        for out_ch, pool in zip(channels, _POOLS):
            blocks.append(ConvBlock2d(in_ch, out_ch, pool))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)

    def embed(self, mel):
        # At the published size the map is already 1x1; the max makes other lengths work.
        return global_max_pool_2d(self.blocks(self.input(mel)))


@register_model(
    "fcn",
    input_spec=FCN_INPUT,
    reference_params=447_732,
    description="FCN (Choi 2016): 5 conv 3x3 blocks 64-128-128-128-64, song-level",
)
def fcn(
    n_classes: int, width: float = 1.0, n_mels: int = FCN_INPUT.n_mels, dropout: float = 0.5
) -> FCN:
    return FCN(n_classes, width=width, n_mels=n_mels, dropout=dropout)


@register_model(
    "fcn_128",
    input_spec=FCN_128_INPUT,
    reference_params=447_732,
    description="FCN on 128 mel bands (Won et al. 2020, Table 2 row), song-level",
)
def fcn_128(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> FCN:
    return FCN(n_classes, width=width, n_mels=FCN_128_INPUT.n_mels, dropout=dropout)
