"""Sample-level CNNs on raw 16 kHz waveforms: SampleCNN (Lee et al. 2017) and its
residual squeeze-and-excitation variant (Kim et al. 2018). 59,049 = 3^10 samples: a
strided first conv and nine pools of 3 reduce them to one frame.
"""

from __future__ import annotations

import torch
from torch import nn

from tagtrain.models.layers import ConvBlock1d, HiddenDense, ResSEBlock1d, Tagger, scaled
from tagtrain.models.registry import InputSpec, register_model

SAMPLE_INPUT = InputSpec(kind="pcm", seconds=59049 / 16000, exact_samples=59049, standardize="none")

# (out channels, kernel, stride, pool) of the eleven layers.
_LAYERS = (
    (128, 3, 3, 1),
    (128, 3, 1, 3),
    (128, 3, 1, 3),
    (256, 3, 1, 3),
    (256, 3, 1, 3),
    (256, 3, 1, 3),
    (256, 3, 1, 3),
    (256, 3, 1, 3),
    (256, 3, 1, 3),
    (512, 3, 1, 3),
    (512, 1, 1, 1),
)


class SampleCNN(Tagger):
    def __init__(
        self, n_classes: int, squeeze_excite: bool = False, width: float = 1.0, dropout: float = 0.5
    ):
        channels = [scaled(c, width) for c, *_ in _LAYERS]
        super().__init__(channels[-1], n_classes, dropout)
        block = ResSEBlock1d if squeeze_excite else ConvBlock1d
        layers, in_ch = [], 1
        for out_ch, (_, kernel, stride, pool) in zip(channels, _LAYERS):
            layers.append(block(in_ch, out_ch, kernel=kernel, stride=stride, pooling=pool))
            in_ch = out_ch
        self.blocks = nn.Sequential(*layers)
        # Kim et al. add a hidden dense layer; plain SampleCNN goes straight to the output.
        self.hidden = HiddenDense(in_ch, in_ch) if squeeze_excite else nn.Identity()

    def embed(self, pcm: torch.Tensor) -> torch.Tensor:
        if pcm.dim() != 2:
            raise ValueError(f"expected PCM [B, samples], got {tuple(pcm.shape)}")
        x = self.blocks(pcm.unsqueeze(1))
        return self.hidden(x.amax(dim=-1))  # one frame at 59,049 samples


@register_model(
    "samplecnn",
    input_spec=SAMPLE_INPUT,
    reference_params=1_869_874,
    description="Sample-level CNN (Lee 2017): 10 x (conv 3, BN, ReLU, pool 3) on raw PCM",
)
def samplecnn(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> SampleCNN:
    return SampleCNN(n_classes, squeeze_excite=False, width=width, dropout=dropout)


@register_model(
    "samplecnn_se",
    input_spec=SAMPLE_INPUT,
    reference_params=6_951_858,
    description="Sample-level CNN with residual squeeze-and-excitation blocks (Kim 2018)",
)
def samplecnn_se(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> SampleCNN:
    return SampleCNN(n_classes, squeeze_excite=True, width=width, dropout=dropout)
