"""Music Tagging Transformer (Won et al. 2021, "Semi-supervised music tagging transformer";
minzwon/semi-supervised-music-tagging-transformer): an input batch-norm and three residual
conv blocks turn a 22,050 Hz, 128-band dB mel into one token per 4 frames, a pre-norm
transformer (q/k/v without bias, no dropout on the attention weights; see
`tagtrain.models.attention`) with a learned [CLS] token and learned positions summarises
them, LayerNorm + Linear tag the [CLS] output. Trained on 10 s chunks; at inference any
length works (positions are interpolated past the 512-token table, which the reference
does not do; up to 512 tokens the behaviour is the reference's).

Sizes (50 tags):
- teacher, conv 128 / attention 256: 4,567,732 parameters (`music_tagging_transformer`);
- the released compact student, conv 128 / attention 64: 1,108,852
  (`music_tagging_transformer_small`, the repository's compact_student.ckpt);
- the paper's Table 4 student, conv 64 / attention 64:
  (`music_tagging_transformer_student`), 487,860 (488,628 with a q/k/v bias).
"""

from __future__ import annotations

import torch
from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.attention import prenorm_encoder
from tagtrain.models.layers import (
    LearnedPositions,
    MelInput,
    ResPoolBlock2d,
    Tagger,
    heads_multiple,
    scaled,
)
from tagtrain.models.registry import InputSpec, register_model

TRANSFORMER_INPUT = InputSpec(
    kind="mel",
    seconds=10.0,
    features=FeatureConfig(sample_rate=22050, n_fft=1024, hop=512, n_mels=128, f_max=11025.0),
    standardize="none",  # the reference's only input normalisation is its BatchNorm2d(1)
)


class MusicTaggingTransformer(Tagger):
    token_frames = 4  # input frames per token: two x2 time pools

    def __init__(
        self,
        n_classes: int,
        dim: int = 256,
        width: float = 1.0,
        conv_channels: int = 128,
        layers: int = 4,
        heads: int = 8,
        max_tokens: int = 512,
        n_mels: int = TRANSFORMER_INPUT.n_mels,
        dropout: float = 0.1,
    ):
        dim = heads_multiple(scaled(dim, width), heads)
        # The reference has no dropout before its LayerNorm + Linear head.
        super().__init__(dim, n_classes, dropout=0.0)
        self.input_spec = TRANSFORMER_INPUT.with_features(n_mels=n_mels)
        conv = scaled(conv_channels, width)
        self.input = MelInput()
        self.front = nn.Sequential(
            ResPoolBlock2d(1, conv, (2, 2)),
            ResPoolBlock2d(conv, conv, (2, 2)),
            ResPoolBlock2d(conv, conv, (2, 1)),
        )
        self.to_tokens = nn.Linear(conv * (n_mels // 8), dim)
        self.cls = nn.Parameter(torch.randn(dim))
        self.positions = LearnedPositions(max_tokens, dim)
        self.token_dropout = nn.Dropout(dropout)
        self.encoder = prenorm_encoder(dim, layers, heads, 4 * dim, dropout)
        self.norm = nn.LayerNorm(dim)

    def tokens(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, frames] -> [B, 1 + frames/4, D] with positions, [CLS] first."""
        x = self.front(self.input(mel))  # [B, C, F/8, T/4]
        b, c, f, t = x.shape
        tokens = self.to_tokens(x.permute(0, 3, 1, 2).reshape(b, t, c * f))
        tokens = torch.cat([self.cls.expand(b, 1, -1), tokens], dim=1)
        return self.token_dropout(self.positions(tokens))

    def from_tokens(self, tokens, key_mask=None, return_attention: bool = False):
        """Logits from a token sequence (see `tokens`); `key_mask` [B, N+1] (False: a
        token no position may attend to) and, on request, every layer's attention."""
        hidden, maps = self.encoder(tokens, key_mask, return_attention=True)
        logits = self.classifier(self.norm(hidden[:, 0]))
        return (logits, maps) if return_attention else logits

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        return self.norm(self.encoder(self.tokens(mel))[:, 0])

    def attention(self, mel: torch.Tensor):
        """(logits, [per layer: attention probabilities [B, heads, N+1, N+1]])."""
        return self.from_tokens(self.tokens(mel), return_attention=True)


def _builder(dim: int, conv_channels: int):
    def build(n_classes: int, width: float = 1.0, dropout: float = 0.1):
        return MusicTaggingTransformer(
            n_classes, dim=dim, conv_channels=conv_channels, width=width, dropout=dropout
        )

    return build


register_model(
    "music_tagging_transformer",
    input_spec=TRANSFORMER_INPUT,
    reference_params=4_567_732,
    description="Music Tagging Transformer (Won 2021), teacher: conv 128, 4 x 256-d x 8 heads",
)(_builder(256, 128))

register_model(
    "music_tagging_transformer_small",
    input_spec=TRANSFORMER_INPUT,
    reference_params=1_108_852,
    description="Music Tagging Transformer, released compact student: conv 128, 64-d attention",
)(_builder(64, 128))

register_model(
    "music_tagging_transformer_student",
    input_spec=TRANSFORMER_INPUT,
    reference_params=487_860,  # 488,628 with the q/k/v bias the reference lacks
    description="Music Tagging Transformer, paper's Table 4 student: conv 64, 64-d attention",
)(_builder(64, 64))
