"""CNN with self-attention (Won et al. 2019, "Toward interpretable music tagging with
self-attention"; the CNNSA of minzwon/sota-music-tagging-models): seven residual 3x3
blocks turn a 128-band mel into a sequence of 256-d frames, a two-layer, 8-head BERT
encoder (hidden 256, feed-forward 1024, hidden dropout 0.4, attention dropout 0.5)
summarises it into a [CLS] token, BERT's tanh pooler and a dropout-0.5 linear layer tag.

As the reference: the [CLS] vector is fixed, not learned (uniform [0, 1) numbers drawn
from numpy's generator seeded with 0, a buffer, not a Parameter), and no position
information is added to the sequence. Because nothing depends on the sequence length,
any input length works.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.attention import bert_encoder
from tagtrain.models.layers import MelInput, ResBlock2d, Tagger, heads_multiple, scaled
from tagtrain.models.registry import InputSpec, register_model

CNNSA_INPUT = InputSpec(
    kind="mel", seconds=15.0, features=FeatureConfig(n_mels=128), standardize="none"
)

# (channel factor of the base 128, stride): three full downsamplings, then frequency only,
# so 128 bands reach 1 while the 938 frames keep 118 steps.
_BLOCKS = ((1, 2), (1, 2), (2, 2), (2, (2, 1)), (2, (2, 1)), (2, (2, 1)), (2, (2, 1)))
_HEADS = 8
CLS_SEED = 0  # the reference seeds numpy with 0 before drawing its [CLS] vector


def fixed_cls_vector(dim: int, seed: int = CLS_SEED) -> torch.Tensor:
    """The reference's non-learned [CLS]: `dim` uniform [0, 1) draws after seeding numpy."""
    return torch.from_numpy(np.random.RandomState(seed).random_sample(dim).astype(np.float32))


class CNNSA(Tagger):
    token_frames = 8  # input frames per token: three stride-2 blocks in time

    def __init__(
        self,
        n_classes: int,
        width: float = 1.0,
        layers: int = 2,
        hidden_dropout: float = 0.4,
        attention_dropout: float = 0.5,
        dropout: float = 0.5,
        n_mels: int = CNNSA_INPUT.n_mels,
    ):
        base = scaled(128, width)
        dim = heads_multiple(2 * base, _HEADS)
        super().__init__(dim, n_classes, dropout)
        self.input_spec = CNNSA_INPUT.with_features(n_mels=n_mels)
        self.input = MelInput()
        blocks, in_ch = [], 1
        for i, (factor, stride) in enumerate(_BLOCKS):
            out_ch = dim if i == len(_BLOCKS) - 1 else base * factor
            blocks.append(ResBlock2d(in_ch, out_ch, stride=stride))
            in_ch = out_ch
        self.blocks = nn.Sequential(*blocks)
        self.register_buffer("cls", fixed_cls_vector(dim))
        self.encoder = bert_encoder(dim, layers, _HEADS, 4 * dim, hidden_dropout, attention_dropout)
        self.pooler = nn.Sequential(nn.Linear(dim, dim), nn.Tanh())  # BERT's pooler

    def tokens(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, n_mels, frames] -> [B, 1 + frames/8, D], the [CLS] vector first."""
        x = self.blocks(self.input(mel)).amax(dim=2)  # one band left at 128 mels
        x = x.transpose(1, 2)
        cls = self.cls.to(x.dtype).expand(x.shape[0], 1, -1)
        return torch.cat([cls, x], dim=1)

    def from_tokens(self, tokens, key_mask=None, return_attention: bool = False):
        """Logits from a token sequence (see `tokens`); `key_mask` [B, N+1] (False: a
        token no position may attend to) and, on request, every layer's attention."""
        hidden, maps = self.encoder(tokens, key_mask, return_attention=True)
        logits = self.classifier(self.dropout(self.pooler(hidden[:, 0])))
        return (logits, maps) if return_attention else logits

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        return self.pooler(self.encoder(self.tokens(mel))[:, 0])

    def attention(self, mel: torch.Tensor):
        """(logits, [per layer: attention probabilities [B, heads, N+1, N+1]])."""
        return self.from_tokens(self.tokens(mel), return_attention=True)


@register_model(
    "cnnsa",
    input_spec=CNNSA_INPUT,
    reference_params=10_521_652,
    description="CNN + self-attention (Won 2019): 7 residual blocks, 2-layer 8-head BERT, fixed CLS",
)
def cnnsa(
    n_classes: int,
    width: float = 1.0,
    dropout: float = 0.5,
    hidden_dropout: float = 0.4,
    attention_dropout: float = 0.5,
) -> CNNSA:
    return CNNSA(
        n_classes,
        width=width,
        dropout=dropout,
        hidden_dropout=hidden_dropout,
        attention_dropout=attention_dropout,
    )
