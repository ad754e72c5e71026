"""Short-chunk CNN and ResNet (Won et al. 2020, "Evaluation of CNN-based automatic music
tagging models"): seven 3x3 blocks halving both axes, global max over time, dense 512.
"""

from __future__ import annotations

from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.layers import (
    ConvBlock2d,
    HiddenDense,
    MelInput,
    ResBlock2d,
    Tagger,
    global_max_pool_2d,
    scaled,
)
from tagtrain.models.registry import InputSpec, register_model

# 59,049 samples at 16 kHz (3.69 s): 231 frames, which seven 2x2 pools bring to 1x1.
SHORT_CHUNK_INPUT = InputSpec(
    kind="mel",
    seconds=59049 / 16000,
    features=FeatureConfig(n_mels=128),
    exact_samples=59049,
    standardize="none",
)

# Channel plan of the seven blocks, in multiples of the base width (128).
_CHANNEL_FACTORS = (1, 1, 2, 2, 2, 2, 4)


class ShortChunkCNN(Tagger):
    """7 x (3x3 conv, BN, ReLU, 2x2 max-pool) [or residual blocks with stride 2], global
    max-pool, dense 512 with BN, classifier."""

    def __init__(
        self,
        n_classes: int,
        residual: bool = False,
        width: float = 1.0,
        base_channels: int = 128,
        dropout: float = 0.5,
    ):
        base = scaled(base_channels, width)
        channels = [base * f for f in _CHANNEL_FACTORS]
        super().__init__(channels[-1], n_classes, dropout)
        self.input = MelInput()
        blocks, in_ch = [], 1
        for out_ch in channels:
            blocks.append(
                ResBlock2d(in_ch, out_ch, stride=2) if residual else ConvBlock2d(in_ch, out_ch, 2)
            )
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.hidden = HiddenDense(in_ch, in_ch)

    def embed(self, mel):
        return self.hidden(global_max_pool_2d(self.blocks(self.input(mel))))


@register_model(
    "short_chunk_cnn",
    input_spec=SHORT_CHUNK_INPUT,
    reference_params=3_687_348,
    description="Short-chunk CNN: 7 VGG-style 3x3 blocks, 2x2 pools, global max, dense 512",
)
def short_chunk_cnn(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> ShortChunkCNN:
    return ShortChunkCNN(n_classes, residual=False, width=width, dropout=dropout)


@register_model(
    "short_chunk_resnet",
    input_spec=SHORT_CHUNK_INPUT,
    reference_params=12_104_244,
    description="Short-chunk ResNet: 7 residual 3x3 blocks with stride 2, global max, dense 512",
)
def short_chunk_resnet(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> ShortChunkCNN:
    return ShortChunkCNN(n_classes, residual=True, width=width, dropout=dropout)
