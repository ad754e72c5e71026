"""The models of Won, Chun, Serra 2019, "Toward interpretable music tagging with
self-attention" (minzwon/self-attention-music-tagging, `MTSA`): a shallow CNN front end
turns the input into a sequence of 512-d vectors, a fixed [CLS] vector is prepended,
sinusoidal positions are added, and a two-layer, 8-head BERT encoder (hidden 512, feed
forward 2048, dropout 0.4 on the hidden states and on the attention probabilities)
summarises it into [CLS]; BERT's tanh pooler, dropout 0.5 and a linear layer tag.

Two front ends, as the paper:
- `won2019_spec` ("pons_won"): 96-band dB mel, 256 frames (4.08 s at 16 kHz, hop 256).
  A learned BatchNorm2d(1) on the input, then Pons et al.'s musically motivated filters
  (six "vertical" shapes spanning 90 % / 40 % of the bands x 7, 3, 1 frames, max over
  frequency; four "horizontal" shapes of 165/129/65/33 frames on the mean over
  frequency), conv -> BN -> ReLU, 8 filters per unit (29 units: Table 1's 32/16/8
  vertical and 64/32/16/8 horizontal filters), then a 1x1 conv to 512 with BN -> ReLU:
  one token per frame (256 + [CLS]).
- `won2019_wave` ("lee_won"): 65,610 samples (4.1 s) of raw audio; Lee et al.'s
  sample-level CNN: a stride-3 conv, four conv 3 -> BN -> ReLU -> max-pool 3 (Table 1's
  first five layers: 128, 128, 128, 256, 256 filters) and a conv 7 to 512 (BN -> ReLU):
  one token per 243 samples (270 + [CLS]).

Widths: Table 1 of the paper is the default. The reference code's README settings
(`conv_channels` 16) build a Spec front end twice as wide (16 filters per unit) and a Raw
front end of 16, 16, 32, 32, 32 filters (8x narrower); they are registered as
`won2019_spec_reference` and `won2019_wave_reference` (the parameter counts of the
reference code: 6,882,452 and 6,718,178 at 50 tags), and every builder takes
`widths="paper"|"reference"`. (The reference's own visualiser, vismodel.py, builds its
Spec model with conv_channels 8: Table 1's width.)

As the reference: the [CLS] vector is `np.random.seed(0); np.random.random(512)`, not
learned; the position table is the fixed sinusoid with position 0 ([CLS]) zero.
"""

from __future__ import annotations

import torch
from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.attention import bert_encoder
from tagtrain.models.cnnsa import fixed_cls_vector
from tagtrain.models.layers import Tagger, heads_multiple, scaled
from tagtrain.models.registry import InputSpec, register_model

# 256 frames of hop 256 (1 + samples // hop): the reference's `input_length` of 256.
# The reference's preprocessing is librosa's mel (Slaney filters, reflect-padded ends).
SPEC_INPUT = InputSpec(
    kind="mel",
    seconds=65280 / 16000,
    features=FeatureConfig(n_mels=96, mel_scale="slaney", mel_norm="slaney"),
    exact_samples=65280,
    standardize="none",
)
WAVE_INPUT = InputSpec(kind="pcm", seconds=65610 / 16000, exact_samples=65610, standardize="none")

_HEADS = 8
_LAYERS = 2
# Vertical (timbral) shapes: (filters in units, fraction of the 96 bands, frames).
_VERTICAL = ((1, 0.9, 7), (2, 0.9, 3), (4, 0.9, 1), (1, 0.4, 7), (2, 0.4, 3), (4, 0.4, 1))
# Horizontal (temporal) shapes on the frequency mean: (filters in units, frames).
_HORIZONTAL = ((1, 165), (2, 129), (4, 65), (8, 33))
# Filters per unit of the Spec shapes: Table 1 (8) or the reference's conv_channels (16).
_SPEC_UNITS = {"paper": 8, "reference": 16}
# The Raw front end's five layers (the strided conv, then four conv+pool blocks).
_RAW_FILTERS = {"paper": (128, 128, 128, 256, 256), "reference": (16, 16, 32, 32, 32)}
WIDTHS = tuple(_SPEC_UNITS)


def sinusoid_positions(length: int, dim: int) -> torch.Tensor:
    """[length, dim]: sin (even dims) / cos (odd dims) of pos / 10000^(2*(j//2)/dim), with
    row 0 all zeros (the reference keeps position 0 for its [CLS]). The values depend only
    on (pos, dim), so any length gives the reference's table as its prefix."""
    pos = torch.arange(length, dtype=torch.float64)[:, None]
    rates = torch.pow(10000.0, 2 * (torch.arange(dim) // 2).double() / dim)
    angles = pos / rates[None, :]
    table = torch.where(torch.arange(dim) % 2 == 0, torch.sin(angles), torch.cos(angles))
    table[0] = 0.0
    return table.float()


class _ConvBNReLU(nn.Sequential):
    """conv -> BN -> ReLU (BN before the nonlinearity in every front-end layer here)."""

    def __init__(self, conv: nn.Module, channels: int, dims: int = 1):
        bn = nn.BatchNorm2d(channels) if dims == 2 else nn.BatchNorm1d(channels)
        super().__init__(conv, bn, nn.ReLU())


class VerticalConv(nn.Module):
    """[B, 1, F, T] -> [B, C, T]: a band-spanning conv ('same' in time), max over bands."""

    def __init__(self, out_ch: int, bands: int, frames: int):
        super().__init__()
        conv = nn.Conv2d(1, out_ch, (bands, frames), padding=(0, frames // 2))
        self.block = _ConvBNReLU(conv, out_ch, dims=2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x).amax(dim=2)


class HorizontalConv(nn.Module):
    """[B, 1, F, T] -> [B, C, T]: mean over bands (the energy envelope), then a 'same'
    Conv1d -> BN -> ReLU."""

    def __init__(self, out_ch: int, frames: int):
        super().__init__()
        self.block = _ConvBNReLU(nn.Conv1d(1, out_ch, frames, padding=frames // 2), out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x.mean(dim=2))


class PonsFrontEnd(nn.Module):
    """[B, n_mels, T] -> [B, dim, T]: input BN, ten filter shapes, 1x1 conv to `dim`."""

    def __init__(self, units: int, dim: int, n_mels: int = SPEC_INPUT.n_mels):
        super().__init__()
        self.input_bn = nn.BatchNorm2d(1)
        self.shapes = nn.ModuleList(
            [VerticalConv(k * units, int(frac * n_mels), t) for k, frac, t in _VERTICAL]
            + [HorizontalConv(k * units, t) for k, t in _HORIZONTAL]
        )
        channels = units * (sum(s[0] for s in _VERTICAL) + sum(s[0] for s in _HORIZONTAL))
        self.project = _ConvBNReLU(nn.Conv1d(channels, dim, 1), dim)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 3:
            raise ValueError(f"expected a mel batch [B, n_mels, frames], got {tuple(mel.shape)}")
        x = self.input_bn(mel.unsqueeze(1))
        return self.project(torch.cat([shape(x) for shape in self.shapes], dim=1))


class SampleLevelFrontEnd(nn.Module):
    """[B, samples] -> [B, dim, samples / 243]: Lee et al.'s sample-level CNN as the
    reference cuts it for the attention back end (five x3 reductions, then a conv 7)."""

    def __init__(self, filters: tuple[int, ...], dim: int):
        super().__init__()
        first, *rest = filters
        layers = [_ConvBNReLU(nn.Conv1d(1, first, 3, stride=3, padding=1), first)]
        for c_in, c_out in zip(filters, rest):
            conv = nn.Conv1d(c_in, c_out, 3, padding=1)
            layers += [_ConvBNReLU(conv, c_out), nn.MaxPool1d(3)]
        layers.append(_ConvBNReLU(nn.Conv1d(filters[-1], dim, 7, padding=3), dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        if pcm.dim() != 2:
            raise ValueError(f"expected PCM [B, samples], got {tuple(pcm.shape)}")
        return self.layers(pcm.unsqueeze(1))


class SelfAttentionTagger(Tagger):
    """Front end -> [CLS] + sinusoidal positions -> BERT encoder -> pooler -> tags.

    `tokens` / `from_tokens` / `token_frames` (or `token_samples`) are the interface of
    `tagtrain.commands.explain`."""

    def __init__(self, front: nn.Module, dim: int, n_classes: int, attention_dropout: float,
                 dropout: float):  # fmt: skip
        super().__init__(dim, n_classes, dropout)
        self.front = front
        self.register_buffer("cls", fixed_cls_vector(dim))
        self.encoder = bert_encoder(
            dim, _LAYERS, _HEADS, 4 * dim, attention_dropout, attention_dropout
        )
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())  # BERT's pooler

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Model input -> [B, 1 + steps, D]: [CLS] first, positions added."""
        seq = self.front(x).transpose(1, 2)
        cls = self.cls.to(seq.dtype).expand(seq.shape[0], 1, -1)
        seq = torch.cat([cls, seq], dim=1)
        return seq + sinusoid_positions(seq.shape[1], seq.shape[2]).to(seq)

    def from_tokens(self, tokens, key_mask=None, return_attention: bool = False):
        hidden, maps = self.encoder(tokens, key_mask, return_attention=True)
        logits = self.classifier(self.dropout(self.pooler(hidden[:, 0])))
        return (logits, maps) if return_attention else logits

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.encoder(self.tokens(x))[:, 0])

    def attention(self, x: torch.Tensor):
        return self.from_tokens(self.tokens(x), return_attention=True)


def _check_widths(widths: str) -> None:
    if widths not in WIDTHS:
        raise ValueError(f"widths must be one of {WIDTHS}, not {widths!r}")


def _dim(width: float) -> int:
    return heads_multiple(scaled(512, width), _HEADS)


def _spec(n_classes, width, attention_dropout, dropout, widths) -> SelfAttentionTagger:
    _check_widths(widths)
    dim = _dim(width)
    front = PonsFrontEnd(scaled(_SPEC_UNITS[widths], width), dim)
    model = SelfAttentionTagger(front, dim, n_classes, attention_dropout, dropout)
    model.token_frames = 1
    return model


def _wave(n_classes, width, attention_dropout, dropout, widths) -> SelfAttentionTagger:
    _check_widths(widths)
    dim = _dim(width)
    front = SampleLevelFrontEnd(tuple(scaled(c, width) for c in _RAW_FILTERS[widths]), dim)
    model = SelfAttentionTagger(front, dim, n_classes, attention_dropout, dropout)
    model.token_samples = 3**5  # one token per 243 samples
    model.token_frames = model.token_samples / WAVE_INPUT.hop
    return model


@register_model(
    "won2019_spec",
    input_spec=SPEC_INPUT,
    reference_params=6_738_532,  # Table 1 built (the paper prints no count)
    description="Won 2019 self-attention: Pons filters (Table 1) on 96-band mel, 2-layer BERT",
)
def won2019_spec(
    n_classes: int,
    width: float = 1.0,
    attention_dropout: float = 0.4,
    dropout: float = 0.5,
    widths: str = "paper",
) -> SelfAttentionTagger:
    return _spec(n_classes, width, attention_dropout, dropout, widths)


@register_model(
    "won2019_wave",
    input_spec=WAVE_INPUT,
    reference_params=7_908_402,  # Table 1 built (the paper prints no count)
    description="Won 2019 self-attention: sample-level CNN (Table 1) on 65,610 samples, 2-layer BERT",
)
def won2019_wave(
    n_classes: int,
    width: float = 1.0,
    attention_dropout: float = 0.4,
    dropout: float = 0.5,
    widths: str = "paper",
) -> SelfAttentionTagger:
    return _wave(n_classes, width, attention_dropout, dropout, widths)


@register_model(
    "won2019_spec_reference",
    input_spec=SPEC_INPUT,
    reference_params=6_882_452,
    description="won2019_spec at the reference code's widths (16 filters per unit: 2x Table 1)",
)
def won2019_spec_reference(
    n_classes: int, width: float = 1.0, attention_dropout: float = 0.4, dropout: float = 0.5
) -> SelfAttentionTagger:
    return _spec(n_classes, width, attention_dropout, dropout, "reference")


@register_model(
    "won2019_wave_reference",
    input_spec=WAVE_INPUT,
    reference_params=6_718_178,
    description="won2019_wave at the reference code's widths (16-32 filters: Table 1 / 8)",
)
def won2019_wave_reference(
    n_classes: int, width: float = 1.0, attention_dropout: float = 0.4, dropout: float = 0.5
) -> SelfAttentionTagger:
    return _wave(n_classes, width, attention_dropout, dropout, "reference")
