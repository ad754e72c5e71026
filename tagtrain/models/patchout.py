"""Patchout spectrogram transformer (Koutini et al. 2022, PaSST; Alonso-Jiménez et al. 2023,
MAEST): a ViT over overlapping 16x16 patches of a 96-band log-mel (16 kHz, n_fft 512, hop
256, log10(1 + 10000·x)), taken with stride 10x10.

- Positions: a learned frequency embedding per patch row and a learned time embedding per
  patch column, added to each patch (freq_pos[f] + time_pos[t]); CLS and distillation
  tokens have their own learned positions.
- Input: MAEST's chunk of floor(seconds · 16000 / 256) frames (625 for 10 s, 9 x 61
  patches). Frames here are 1 + samples // hop (centred STFT), so the chunk is
  (frames - 1) hops long: 159,744 samples for the nominal 10 s.
- Shorter inputs use a slice of the time table (a random one in training, as PaSST
  does; the start at inference); longer ones get the table linearly interpolated.
- Structured patchout: in training, `time_patchout` random patch columns and
  `freq_patchout` random patch rows are dropped (the same for the whole batch) after the
  positions are added, so the sequence is shorter and training faster. Defaults: 3 time
  columns per second of input (15/30/60/90 for 5/10/20/30 s, as MAEST) and no rows. With
  `inference_patchout=True` the same counts are dropped at inference too, evenly spaced
  (deterministic), trading accuracy for speed.
- Head: LayerNorm + Linear on the mean of the final CLS and distillation tokens (PaSST's
  "mean" head). `distilled_type="separated"` (MAEST's teacher-student model,
  `maest_30s_ts`): LayerNorm + Linear on the CLS token is the tagger, and a second Linear
  (`head_dist`) on the distillation token learns the teacher's targets; with
  `distillation_output` on (the teacher-student recipe sets it), a training forward
  returns both heads' logits side by side ([B, 2 · tags]); inference uses the CLS head
  alone, as MAEST's `predict_labels`. `embed(x)` is the stack [CLS, distillation token, mean of the patch
  tokens] (3 x dims) after the final norm, so `classifier(embed(x))` is the forward pass;
  `embed(x, block=N)` is the same stack taken after block N (0-based, as MAEST's
  `transformer_block`; negative counts from the end), before the final norm.

Presets: `patchout` (12 blocks x 768 dims x 12 heads, ~86 M parameters, PaSST-S/MAEST),
`patchout_small` (6 x 384 x 6) and `patchout_tiny` (4 x 96 x 3) for CPU. Training options
from the papers (AdamW, warm-up and ramp-down, SWA, mixup, masking, balancing) are in
`tagtrain.training.patchout`. Weights are never downloaded: start from scratch or load a
local checkpoint (weights_only).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.layers import Tagger, heads_multiple, scaled, transformer_encoder
from tagtrain.models.registry import InputSpec, register_model

PATCH = 16
STRIDE = 10
N_MELS = 96
SAMPLE_RATE = 16000
HOP = 256
VIT_NORM_EPS = 1e-6
TIME_PATCHOUT_PER_SECOND = 3  # 15/30/60/90 columns for 5/10/20/30 s inputs (docs/FIDELITY.md)
# palonso/MAEST's dataset statistics of the log10(1 + 10000 x) mel (Discogs).
MAEST_MEAN = 2.06755686098554
MAEST_STD = 1.268292820667291
MAEST_SECONDS = (5, 10, 20, 30)


def patchout_input(seconds: float = 10.0, n_mels: int = N_MELS) -> InputSpec:
    """The mel chunk a patchout model eats: MAEST's floor(seconds · sr / hop) frames."""
    frames = int(seconds * SAMPLE_RATE) // HOP
    if frames < PATCH:
        raise ValueError(f"an input of {seconds} s is shorter than one {PATCH}-frame patch")
    return InputSpec(
        kind="mel",
        seconds=seconds,
        # MAEST's torchaudio MelSpectrogram(mel_scale="slaney", norm="slaney"), reflect ends.
        features=FeatureConfig(
            sample_rate=SAMPLE_RATE,
            n_mels=n_mels,
            n_fft=512,
            hop=HOP,
            f_max=8000.0,
            log_scale="log10_1p",
            mel_scale="slaney",
            mel_norm="slaney",
        ),
        exact_samples=(frames - 1) * HOP,
        # MAEST's one global normalisation of the log-mel: (x - mean) / (2 * std).
        standardize="global",
        global_stats=(MAEST_MEAN, 2.0 * MAEST_STD),
    )


PATCHOUT_INPUT = patchout_input(10.0)


def grid_size(n_mels: int, frames: int) -> tuple[int, int]:
    """(frequency rows, time columns) of patches over an [n_mels, frames] input."""
    if n_mels < PATCH or frames < PATCH:
        raise ValueError(f"input [{n_mels}, {frames}] is smaller than a {PATCH}x{PATCH} patch")
    return (n_mels - PATCH) // STRIDE + 1, (frames - PATCH) // STRIDE + 1


def default_time_patchout(seconds: float) -> int:
    return int(round(TIME_PATCHOUT_PER_SECOND * seconds))


def random_keep(n: int, drop: int) -> torch.Tensor:
    """Sorted indices of the n - drop positions kept by random structured patchout."""
    drop = min(drop, n - 1)
    return torch.randperm(n)[: n - drop].sort().values


def even_keep(n: int, drop: int) -> torch.Tensor:
    """Sorted indices of n - drop evenly spaced positions: inference patchout, deterministic."""
    keep = n - min(drop, n - 1)
    return torch.linspace(0, n - 1, keep).round().long().unique()


def _trunc_normal(t: torch.Tensor) -> torch.Tensor:
    return nn.init.trunc_normal_(t, std=0.02, a=-0.04, b=0.04)


class TokenHead(nn.Module):
    """LayerNorm + Linear on the leading tokens of the embedding stack [CLS, dist, patches]:
    PaSST's head takes the mean of the CLS and distillation tokens (tokens=2), MAEST's
    "separated" tagging head the CLS token alone (tokens=1)."""

    def __init__(self, dim: int, n_classes: int, tokens: int):
        super().__init__()
        if tokens not in (1, 2):
            raise ValueError(f"a token head reads 1 or 2 tokens, not {tokens}")
        self.dim, self.tokens = dim, tokens
        self.norm = nn.LayerNorm(dim)
        self.linear = nn.Linear(dim, n_classes)

    def forward(self, stack: torch.Tensor) -> torch.Tensor:
        d = self.dim
        pooled = stack[:, :d]
        if self.tokens == 2:
            pooled = (pooled + stack[:, d : 2 * d]) / 2
        return self.linear(self.norm(pooled))


DISTILLED_TYPES = ("mean", "separated")


class PatchoutTransformer(Tagger):
    def __init__(
        self,
        n_classes: int,
        dim: int = 768,
        layers: int = 12,
        heads: int = 12,
        width: float = 1.0,
        seconds: float = 10.0,
        n_mels: int = N_MELS,
        time_patchout: int | None = None,
        freq_patchout: int = 0,
        inference_patchout: bool = False,
        dropout: float = 0.0,
        distilled_type: str = "mean",
    ):
        if distilled_type not in DISTILLED_TYPES:
            raise ValueError(f"distilled_type must be one of {DISTILLED_TYPES}")
        dim = heads_multiple(scaled(dim, width), heads)
        super().__init__(3 * dim, n_classes, dropout=0.0)  # PaSST: no dropout before the head
        self.dim = dim
        self.input_spec = patchout_input(seconds, n_mels)
        self.grid = grid_size(n_mels, self.input_spec.frames)
        self.patch_embed = nn.Conv2d(1, dim, PATCH, stride=STRIDE)
        self.freq_pos = nn.Parameter(_trunc_normal(torch.zeros(1, dim, self.grid[0], 1)))
        self.time_pos = nn.Parameter(_trunc_normal(torch.zeros(1, dim, 1, self.grid[1])))
        self.token_pos = nn.Parameter(_trunc_normal(torch.zeros(1, 2, dim)))
        self.cls_token = nn.Parameter(_trunc_normal(torch.zeros(1, 1, dim)))
        self.dist_token = nn.Parameter(_trunc_normal(torch.zeros(1, 1, dim)))
        self.token_dropout = nn.Dropout(dropout)
        # timm's ViT, as PaSST and MAEST build it: LayerNorm eps 1e-6 in the blocks and the
        # final norm (the head's LayerNorm keeps PyTorch's 1e-5, as theirs).
        self.encoder = transformer_encoder(
            dim, layers, heads, 4 * dim, dropout, pre_norm=True, norm_eps=VIT_NORM_EPS
        )
        self.norm = nn.LayerNorm(dim, eps=VIT_NORM_EPS)
        self.distilled_type = distilled_type
        self.distillation_output = False
        if distilled_type == "separated":
            self.classifier = TokenHead(dim, n_classes, tokens=1)
            self.head_dist = nn.Linear(dim, n_classes)
        else:
            self.classifier = TokenHead(dim, n_classes, tokens=2)
        self.set_patchout(
            default_time_patchout(seconds) if time_patchout is None else time_patchout,
            freq_patchout,
            inference_patchout,
        )

    def set_patchout(
        self, time: int | None = None, freq: int | None = None, inference: bool | None = None
    ) -> None:
        """Patch columns/rows dropped in training (and at inference when `inference`)."""
        time = self.time_patchout if time is None else time
        freq = self.freq_patchout if freq is None else freq
        rows, cols = self.grid
        if not 0 <= time < cols:
            raise ValueError(f"time patchout must be in [0, {cols}) for {cols} columns, got {time}")
        if not 0 <= freq < rows:
            raise ValueError(f"freq patchout must be in [0, {rows}) for {rows} rows, got {freq}")
        self.time_patchout, self.freq_patchout = int(time), int(freq)
        if inference is not None:
            self.inference_patchout = bool(inference)

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        stack = self.embed(mel)
        logits = self.classifier(stack)
        if self.distilled_type != "separated" or not self.training:
            return logits
        dist = self.head_dist(stack[:, self.dim : 2 * self.dim])
        if self.distillation_output:
            return torch.cat([logits, dist], dim=1)  # [B, 2 · tags]: CLS head, then dist head
        # Without a teacher the distillation head has nothing to learn; keeping it in the
        # graph with a zero gradient lets DDP (and gradient checks) see every parameter.
        return logits + 0.0 * dist

    def set_distillation_output(self, on: bool = True) -> None:
        """Training forwards return [CLS logits, distillation-token logits] (separated
        models only; the teacher-student recipe turns it on)."""
        if on and self.distilled_type != "separated":
            raise ValueError("distillation output needs a separated model (maest_30s_ts)")
        self.distillation_output = bool(on)

    @property
    def blocks(self) -> nn.ModuleList:
        return self.encoder.layers

    def _time_positions(self, columns: int) -> torch.Tensor:
        table = self.time_pos
        length = table.shape[-1]
        if columns == length:
            return table
        if columns < length:
            start = int(torch.randint(length - columns + 1, ())) if self.training else 0
            return table[..., start : start + columns]
        return F.interpolate(table[:, :, 0], size=columns, mode="linear", align_corners=True)[
            :, :, None
        ]

    def keep_indices(self, rows: int, cols: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(rows kept, columns kept) of a [rows, cols] patch grid under the current mode."""
        if self.training:
            return random_keep(rows, self.freq_patchout), random_keep(cols, self.time_patchout)
        if self.inference_patchout:
            return even_keep(rows, self.freq_patchout), even_keep(cols, self.time_patchout)
        return torch.arange(rows), torch.arange(cols)

    def patch_tokens(self, mel: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Patch embeddings with their positions, after patchout: ([B, rows_kept ·
        cols_kept, D] in row-major (frequency, time) order, rows kept, columns kept)."""
        if mel.dim() != 3 or mel.shape[1] != self.input_spec.n_mels:
            raise ValueError(
                f"expected a mel batch [B, {self.input_spec.n_mels}, frames], got {tuple(mel.shape)}"
            )
        x = self.patch_embed(mel.unsqueeze(1))  # [B, D, rows, cols]
        x = x + self.freq_pos + self._time_positions(x.shape[-1])
        rows, cols = self.keep_indices(x.shape[2], x.shape[3])
        x = x.index_select(2, rows.to(x.device)).index_select(3, cols.to(x.device))
        return x.flatten(2).transpose(1, 2), rows, cols

    def sequence(self, mel: torch.Tensor) -> torch.Tensor:
        """[B, 2 + patches, D]: CLS and distillation tokens, then the patch tokens."""
        patches = self.patch_tokens(mel)[0]
        special = torch.cat([self.cls_token, self.dist_token], dim=1) + self.token_pos
        tokens = torch.cat([special.expand(patches.shape[0], -1, -1), patches], dim=1)
        return self.token_dropout(tokens)

    def embed(self, mel: torch.Tensor, block: int | None = None) -> torch.Tensor:
        """[B, 3 · dim]: CLS, distillation token and mean patch token after the final norm,
        or after block `block` (0-based; negative from the end) without it."""
        tokens = self.sequence(mel)
        if block is None:
            out = self.norm(self.encoder(tokens))
        else:
            n = len(self.blocks)
            if not -n <= block < n:
                raise ValueError(f"block must be in [{-n}, {n}) for {n} blocks, got {block}")
            out = tokens
            for layer in self.blocks[: block % n + 1]:
                out = layer(out)
        return torch.cat([out[:, 0], out[:, 1], out[:, 2:].mean(dim=1)], dim=1)


PRESETS = {
    # name: (dims, blocks, heads, description)
    "patchout": (
        768,
        12,
        12,
        "Patchout transformer (PaSST/MAEST): 96-band mel, 16x16 patches stride 10, 12 x 768-d",
    ),
    "patchout_small": (384, 6, 6, "Patchout transformer, CPU preset: 6 blocks x 384-d x 6 heads"),
    "patchout_tiny": (96, 4, 3, "Patchout transformer, CPU preset: 4 blocks x 96-d x 3 heads"),
}
SEPARATED_MODELS = ("maest_30s_ts",)  # MAEST's teacher-student model (distilled "separated")
PATCHOUT_MODELS = (*PRESETS, *(f"maest_{s}s" for s in MAEST_SECONDS), *SEPARATED_MODELS)


def _register(name: str, dims: int, blocks: int, heads: int, description: str) -> None:
    @register_model(name, input_spec=PATCHOUT_INPUT, description=description)
    def build(
        n_classes: int,
        width: float = 1.0,
        dropout: float = 0.0,
        seconds: float = 10.0,
        time_patchout: int | None = None,
        freq_patchout: int = 0,
        inference_patchout: bool = False,
    ) -> PatchoutTransformer:
        return PatchoutTransformer(
            n_classes,
            dim=dims,
            layers=blocks,
            heads=heads,
            width=width,
            seconds=seconds,
            time_patchout=time_patchout,
            freq_patchout=freq_patchout,
            inference_patchout=inference_patchout,
            dropout=dropout,
        )


for _name, (_dims, _blocks, _heads, _text) in PRESETS.items():
    _register(_name, _dims, _blocks, _heads, _text)


def _register_maest(
    seconds: int, name: str = "", distilled_type: str = "mean", description: str = ""
) -> None:
    """MAEST at one input length: the 768-d, 12-block model with that length's time
    positions and time patchout (Alonso-Jiménez et al. 2023, Section 4.3)."""

    @register_model(
        name or f"maest_{seconds}s",
        input_spec=patchout_input(float(seconds)),
        description=description
        or f"MAEST {seconds} s (PaSST-S architecture, time patchout "
        f"{default_time_patchout(seconds)})",
    )
    def build(
        n_classes: int,
        width: float = 1.0,
        dropout: float = 0.0,
        time_patchout: int | None = None,
        freq_patchout: int = 0,
        inference_patchout: bool = False,
    ) -> PatchoutTransformer:
        return PatchoutTransformer(
            n_classes,
            width=width,
            seconds=float(seconds),
            time_patchout=time_patchout,
            freq_patchout=freq_patchout,
            inference_patchout=inference_patchout,
            dropout=dropout,
            distilled_type=distilled_type,
        )


for _seconds in MAEST_SECONDS:
    _register_maest(_seconds)

# palonso/MAEST `maest_30s_from_passt_teacher_student_pretrain` (distilled_type
# "separated"); trained with `train-patchout --teacher RUN` (recipe maest_30s_ts).
_register_maest(
    30,
    "maest_30s_ts",
    "separated",
    "MAEST 30 s teacher-student: CLS head for tags, distillation-token head for the "
    "teacher's targets",
)
