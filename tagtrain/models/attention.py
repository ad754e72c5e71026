"""Self-attention encoders as the reference implementations define them.

Two layer types, because the papers use two and they differ in ways that change results:

- `BertLayer` (CNNSA, Won et al. 2019; minzwon/sota-music-tagging-models'
  attention_modules): post-norm, q/k/v with bias, dropout on the attention probabilities
  (`attention_dropout`) and on each sub-layer's output (`hidden_dropout`), no dropout
  inside the feed-forward block, LayerNorm eps 1e-12, exact (erf) GELU.
- `PreNormLayer` (Music Tagging Transformer, Won et al. 2021; lucidrains' ViT as used in
  minzwon/semi-supervised-music-tagging-transformer): pre-norm, one q/k/v projection
  without bias, no dropout on the attention weights, dropout after the output projection
  and inside and after the feed-forward block.

`torch.nn.TransformerEncoderLayer` is neither (it has a q/k/v bias, drops attention
weights with the same rate as everything else, and drops inside BERT's feed-forward), so
both are written out here. Each layer returns its attention probabilities on request, which
the `explain` command plots.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)  # [B, H, N, d_head]


def _attend(q, k, v, key_mask: torch.Tensor | None, dropout: nn.Module | None):
    """Scaled dot-product attention -> (context [B, N, D], probabilities [B, H, N, N]).

    key_mask: optional bool [B, N], False for keys no query may attend to."""
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if key_mask is not None:
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
    probs = scores.softmax(dim=-1)
    weights = dropout(probs) if dropout is not None else probs
    context = (weights @ v).transpose(1, 2)
    return context.reshape(context.shape[0], context.shape[1], -1), probs


class BertLayer(nn.Module):
    """One post-norm BERT encoder layer (see the module docstring)."""

    def __init__(
        self, dim: int, heads: int, ffn_dim: int, hidden_dropout: float, attention_dropout: float
    ):
        super().__init__()
        if dim % heads:
            raise ValueError(f"hidden size {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.query = nn.Linear(dim, dim)
        self.key = nn.Linear(dim, dim)
        self.value = nn.Linear(dim, dim)
        self.attention_dropout = nn.Dropout(attention_dropout)
        self.attention_out = nn.Linear(dim, dim)
        self.attention_norm = nn.LayerNorm(dim, eps=1e-12)
        self.intermediate = nn.Linear(dim, ffn_dim)
        self.output = nn.Linear(ffn_dim, dim)
        self.output_norm = nn.LayerNorm(dim, eps=1e-12)
        self.hidden_dropout = nn.Dropout(hidden_dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None):
        q, k, v = (_split_heads(proj(x), self.heads) for proj in (self.query, self.key, self.value))
        context, probs = _attend(q, k, v, key_mask, self.attention_dropout)
        x = self.attention_norm(x + self.hidden_dropout(self.attention_out(context)))
        hidden = F.gelu(self.intermediate(x))
        x = self.output_norm(x + self.hidden_dropout(self.output(hidden)))
        return x, probs


class PreNormLayer(nn.Module):
    """One pre-norm ViT encoder layer (see the module docstring)."""

    def __init__(self, dim: int, heads: int, ffn_dim: int, dropout: float):
        super().__init__()
        if dim % heads:
            raise ValueError(f"attention size {dim} is not a multiple of {heads} heads")
        self.heads = heads
        self.attention_norm = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim, bias=False)
        self.attention_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim)
        self.ffn = nn.Sequential(
            nn.Linear(dim, ffn_dim),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(ffn_dim, dim),
            nn.Dropout(dropout),
        )
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor | None = None):
        qkv = self.qkv(self.attention_norm(x)).chunk(3, dim=-1)
        q, k, v = (_split_heads(t, self.heads) for t in qkv)
        context, probs = _attend(q, k, v, key_mask, dropout=None)
        x = x + self.dropout(self.attention_out(context))
        return x + self.ffn(self.ffn_norm(x)), probs


class Encoder(nn.Module):
    """A stack of layers; `forward(x, key_mask, return_attention)` returns the last hidden
    states, and with `return_attention=True` also every layer's probabilities."""

    def __init__(self, layers: list[nn.Module]):
        super().__init__()
        self.layers = nn.ModuleList(layers)

    def forward(self, x, key_mask=None, return_attention: bool = False):
        maps = []
        for layer in self.layers:
            x, probs = layer(x, key_mask)
            maps.append(probs)
        return (x, maps) if return_attention else x


def bert_encoder(
    dim: int, layers: int, heads: int, ffn_dim: int, hidden_dropout: float, attention_dropout: float
) -> Encoder:
    return Encoder(
        [BertLayer(dim, heads, ffn_dim, hidden_dropout, attention_dropout) for _ in range(layers)]
    )


def prenorm_encoder(dim: int, layers: int, heads: int, ffn_dim: int, dropout: float) -> Encoder:
    return Encoder([PreNormLayer(dim, heads, ffn_dim, dropout) for _ in range(layers)])
