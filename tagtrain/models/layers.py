"""Building blocks shared by the model zoo.

The blocks follow the reference implementations (minzwon/sota-music-tagging-models,
jordipons/musicnn) so that parameter counts match the papers at width 1.0.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def scaled(channels: int, width: float) -> int:
    """Channel count under the width multiplier (at least 1)."""
    if width <= 0:
        raise ValueError(f"width must be positive, got {width}")
    return max(1, int(round(channels * width)))


class Tagger(nn.Module):
    """Base of every tagger: `forward(x) = classifier(dropout(embed(x)))`.

    Subclasses implement `embed(x) -> [B, embed_dim]` (the penultimate representation,
    used by the `embed` command) and set `self.classifier`. Outputs are logits.
    """

    embed_dim: int

    def __init__(self, embed_dim: int, n_classes: int, dropout: float):
        super().__init__()
        self.embed_dim = embed_dim
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(embed_dim, n_classes)

    def embed(self, x: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.embed(x)))


class MelInput(nn.Module):
    """[B, n_mels, frames] -> [B, 1, n_mels, frames], batch-normalised.

    The references put BatchNorm2d(1) on the dB mel and normalise nothing else; their
    InputSpecs say `standardize="none"`, so this layer is the models' only input
    normalisation, as in the papers.
    """

    def __init__(self):
        super().__init__()
        self.bn = nn.BatchNorm2d(1)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        if mel.dim() != 3:
            raise ValueError(f"expected a mel batch [B, n_mels, frames], got {tuple(mel.shape)}")
        return self.bn(mel.unsqueeze(1))


class HiddenDense(nn.Sequential):
    """Linear -> BatchNorm1d -> ReLU: the hidden dense layer before most classifiers."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__(
            nn.Linear(in_features, out_features), nn.BatchNorm1d(out_features), nn.ReLU()
        )


class ConvBlock2d(nn.Module):
    """3x3 conv -> BN -> ReLU -> max-pool."""

    def __init__(self, in_ch: int, out_ch: int, pooling=2, kernel: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, padding=kernel // 2)
        self.bn = nn.BatchNorm2d(out_ch)
        self.pool = nn.MaxPool2d(pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


class ResBlock2d(nn.Module):
    """Two 3x3 convs with a (strided, projected where needed) shortcut; downsamples by
    striding the first conv, as in the short-chunk ResNet."""

    def __init__(self, in_ch: int, out_ch: int, stride=2, kernel: int = 3):
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, kernel, padding=pad)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            # The reference projects with a 3x3 conv, not 1x1; kept for the parameter count.
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, kernel, stride=stride, padding=pad),
                nn.BatchNorm2d(out_ch),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return torch.relu(out + self.shortcut(x))


class ResPoolBlock2d(nn.Module):
    """Two 3x3 convs with a shortcut (a 3x3 projection when the channels change), then
    max-pool: the HCNN's and the Music Tagging Transformer's front-end block."""

    def __init__(self, in_ch: int, out_ch: int, pooling=2):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.shortcut = nn.Identity()
        if in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_ch, out_ch, 3, padding=1), nn.BatchNorm2d(out_ch)
            )
        self.pool = nn.MaxPool2d(pooling)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        return self.pool(torch.relu(self.shortcut(x) + out))


class ConvBlock1d(nn.Module):
    """1-D conv -> BN -> ReLU -> max-pool (sample-level CNN block)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, pooling: int = 3):
        super().__init__()
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=kernel // 2)
        self.bn = nn.BatchNorm1d(out_ch)
        self.pool = nn.MaxPool1d(pooling) if pooling > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(torch.relu(self.bn(self.conv(x))))


class ResSEBlock1d(nn.Module):
    """Residual 1-D block with squeeze-and-excitation (Kim et al. 2018), then max-pool."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 3, stride: int = 1, pooling: int = 3):
        super().__init__()
        pad = kernel // 2
        self.conv1 = nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=pad)
        self.bn1 = nn.BatchNorm1d(out_ch)
        self.conv2 = nn.Conv1d(out_ch, out_ch, kernel, padding=pad)
        self.bn2 = nn.BatchNorm1d(out_ch)
        # The reference's excitation keeps the full width (no reduction ratio).
        self.excite = nn.Sequential(
            nn.Linear(out_ch, out_ch), nn.ReLU(), nn.Linear(out_ch, out_ch), nn.Sigmoid()
        )
        self.shortcut = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(
                nn.Conv1d(in_ch, out_ch, kernel, stride=stride, padding=pad),
                nn.BatchNorm1d(out_ch),
            )
        self.pool = nn.MaxPool1d(pooling) if pooling > 1 else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x)))))
        out = out * self.excite(out.mean(dim=-1)).unsqueeze(-1)
        return self.pool(torch.relu(self.shortcut(x) + out))


def global_max_pool_2d(x: torch.Tensor) -> torch.Tensor:
    """[B, C, F, T] -> [B, C]; the references squeeze F (=1) and max over T."""
    return x.amax(dim=(2, 3))


def same_time_padding(time_size: int) -> tuple[int, int]:
    """(left, right) zero padding that keeps the frame count; for even sizes the extra
    frame goes on the right, as TensorFlow's 'same' does."""
    left = (time_size - 1) // 2
    return left, time_size - 1 - left


class FrequencyMaxConv(nn.Module):
    """Conv2d over [B, 1, F, T] -> ReLU -> BN -> max over frequency -> [B, C, T].

    Pons' musically motivated filters: "timbral" shapes span a fraction of the mel axis,
    "temporal" shapes span one band and many frames. Valid in frequency (the max-pool
    spans it anyway), 'same' in time. ReLU comes before BN as in the TensorFlow originals.
    """

    def __init__(self, out_ch: int, freq_size: int, time_size: int):
        super().__init__()
        self.time_padding = same_time_padding(time_size)
        self.conv = nn.Conv2d(1, out_ch, (freq_size, time_size))
        self.bn = nn.BatchNorm2d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.pad(x, self.time_padding))
        return self.bn(torch.relu(x)).amax(dim=2)


class EnvelopeConv(nn.Module):
    """Mean over frequency (the energy envelope), then Conv1d 'same' -> ReLU -> BN:
    Pons' efficient temporal filters."""

    def __init__(self, out_ch: int, time_size: int):
        super().__init__()
        self.time_padding = same_time_padding(time_size)
        self.conv = nn.Conv1d(1, out_ch, time_size)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.pad(x.mean(dim=2), self.time_padding))
        return self.bn(torch.relu(x))


class LearnedPositions(nn.Module):
    """Learned position embedding for `max_len` tokens plus a CLS slot.

    Sequences longer than `max_len` (inference on long inputs) get the table linearly
    interpolated to their length, so the model accepts any length; shorter ones use a prefix,
    so training-length behaviour is exactly the reference's.
    """

    def __init__(self, max_len: int, dim: int):
        super().__init__()
        self.max_len = max_len
        self.table = nn.Parameter(torch.randn(1, max_len + 1, dim))

    def forward(self, tokens_with_cls: torch.Tensor) -> torch.Tensor:
        n = tokens_with_cls.shape[1] - 1
        if n <= self.max_len:
            return tokens_with_cls + self.table[:, : n + 1]
        body = self.table[:, 1:].transpose(1, 2)  # [1, dim, max_len]
        body = F.interpolate(body, size=n, mode="linear", align_corners=True).transpose(1, 2)
        return tokens_with_cls + torch.cat([self.table[:, :1], body], dim=1)


def transformer_encoder(
    dim: int,
    layers: int,
    heads: int,
    ffn_dim: int,
    dropout: float,
    pre_norm: bool,
    norm_eps: float = 1e-5,
) -> nn.TransformerEncoder:
    """A stack of GELU encoder layers (batch first); pre-norm as in ViT, post-norm as BERT."""
    layer = nn.TransformerEncoderLayer(
        dim,
        heads,
        ffn_dim,
        dropout=dropout,
        activation="gelu",
        layer_norm_eps=norm_eps,
        batch_first=True,
        norm_first=pre_norm,
    )
    return nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)


def heads_multiple(dim: int, heads: int) -> int:
    """Round a (width-scaled) model dimension to a positive multiple of the head count."""
    return max(heads, int(round(dim / heads)) * heads)


class ConvReluBN1d(nn.Module):
    """'same' Conv1d -> ReLU -> BN (the mid-end layers of musicnn and the Pons back end)."""

    def __init__(self, in_ch: int, out_ch: int, kernel: int = 7, padding: int | None = None):
        super().__init__()
        pad = kernel // 2 if padding is None else padding
        self.conv = nn.Conv1d(in_ch, out_ch, kernel, padding=pad)
        self.bn = nn.BatchNorm1d(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(torch.relu(self.conv(x)))


def mean_max_pool(x: torch.Tensor) -> torch.Tensor:
    """[B, C, T] -> [B, 2C]: max then mean over time, as both Pons back ends do."""
    return torch.cat([x.amax(dim=-1), x.mean(dim=-1)], dim=1)
