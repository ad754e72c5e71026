"""Harmonic CNN (Won et al. 2020, "Data-driven harmonic filters for audio representation
learning"): a trainable harmonic filterbank turns the STFT into a [harmonics, bands,
frames] tensor (band b of harmonic h centred at h * f_b, bandwidth learned through one Q),
followed by seven 3x3 blocks and a dense layer. Takes 5 s of 16 kHz PCM.
"""

from __future__ import annotations

import torch
from torch import nn

from pipelines.core.features import (
    FeatureConfig,
    compress,
    harmonic_center_frequencies,
    harmonic_filterbank,
    power_spectrogram,
)
from tagtrain.models.layers import (
    ConvBlock2d,
    HiddenDense,
    ResPoolBlock2d,
    Tagger,
    global_max_pool_2d,
    scaled,
)
from tagtrain.models.registry import InputSpec, register_model

# PCM in; the front end's STFT and harmonic grid are the spec's features (6 x 128).
HCNN_INPUT = InputSpec(kind="pcm", seconds=5.0, standardize="none")


class HarmonicFrontEnd(nn.Module):
    """PCM [B, samples] -> dB harmonic tensor [B, harmonics, bands, frames].

    The centre frequencies are fixed (the pipeline's `harmonic_center_frequencies`); the
    filters' bandwidth is (0.1079 f + 24.7) / Q with Q trainable, as in the paper's
    'only_Q' setting that the reference trains."""

    def __init__(
        self,
        features: FeatureConfig = HCNN_INPUT.features,
        q: float = 1.0,
        learn_q: bool = True,
    ):
        super().__init__()
        self.sample_rate, self.n_fft, self.hop = features.sample_rate, features.n_fft, features.hop
        self.pad_mode = features.pad_mode
        centers = harmonic_center_frequencies(
            features.sample_rate, features.harmonics, features.harmonic_bands
        )
        self.register_buffer("center_hz", torch.tensor(centers, dtype=torch.float32))
        self.q = nn.Parameter(torch.tensor([float(q)]), requires_grad=learn_q)

    def filterbank(self) -> torch.Tensor:
        """[harmonics, bands, n_fft//2+1] triangular filters at the current Q."""
        return harmonic_filterbank(self.center_hz, self.q, self.sample_rate, self.n_fft)

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        if pcm.dim() != 2:
            raise ValueError(f"expected PCM [B, samples], got {tuple(pcm.shape)}")
        # Band energies of loud audio overflow float16, so mixed precision stops here.
        with torch.autocast(device_type=pcm.device.type, enabled=False):
            power = power_spectrogram(pcm.float(), self.n_fft, self.hop, self.pad_mode)
            bands = torch.einsum("hbf,nft->nhbt", self.filterbank(), power)
            return compress(bands, "db")


# (kind, channel factor of the base 128, pooling) of the seven blocks: 128 bands x 313
# frames -> 1 x 1.
_BLOCKS = (
    ("conv", 1, 2),
    ("res", 1, 2),
    ("res", 1, 2),
    ("res", 1, 2),
    ("conv", 2, 2),
    ("res", 2, (2, 3)),
    ("res", 2, (2, 3)),
)


class HarmonicCNN(Tagger):
    def __init__(
        self,
        n_classes: int,
        width: float = 1.0,
        harmonics: int = HCNN_INPUT.harmonics,
        dropout: float = 0.5,
    ):
        base = scaled(128, width)
        super().__init__(2 * base, n_classes, dropout)
        self.front = HarmonicFrontEnd(HCNN_INPUT.with_features(harmonics=harmonics).features)
        self.input_bn = nn.BatchNorm2d(harmonics)
        blocks, in_ch = [], harmonics
        for kind, factor, pool in _BLOCKS:
            out_ch = base * factor
            if kind == "conv":
                blocks.append(ConvBlock2d(in_ch, out_ch, pool))
            else:
                blocks.append(ResPoolBlock2d(in_ch, out_ch, pool))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.hidden = HiddenDense(in_ch, in_ch)

    def embed(self, pcm: torch.Tensor) -> torch.Tensor:
        x = self.input_bn(self.front(pcm))
        return self.hidden(global_max_pool_2d(self.blocks(x)))


@register_model(
    "hcnn",
    input_spec=HCNN_INPUT,
    reference_params=3_631_551,
    description="Harmonic CNN (Won 2020): trainable 6x128 harmonic filterbank from PCM, 7 blocks",
)
def hcnn(n_classes: int, width: float = 1.0, dropout: float = 0.5) -> HarmonicCNN:
    return HarmonicCNN(n_classes, width=width, dropout=dropout)
