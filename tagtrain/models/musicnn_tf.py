"""The original TensorFlow musicnn and its VGG baseline (Pons & Serra, jordipons/musicnn,
the graphs of `musicnn/models.py` that the published MTT/MSD weights belong to).

Registered as `musicnn_tf` and `vgg_tf`, so they are never mistaken for `musicnn`, the
seed-000 PyTorch re-implementation. Layer for layer as the TF graph, in TF's order:
ReLU before batch-norm, TF batch-norm epsilon 1e-3 (momentum 0.99 = torch 0.01), TF
'same' padding (the extra row of an even kernel goes after), the flattened
[max, mean] pooling interleaved per channel as `tf.concat(..., 2)` + flatten gives it,
and VGG's pool5 flattened time-major (NHWC). Input: the mel batch [B, 96, 187] already
compressed with `log10(1 + 10000 mel)` (tagtrain/pretrained/frontend.py computes it as
the official extractor does); the first layer is the graph's batch-norm on that input.
Internally tensors are [B, C, time, freq], TF's NHWC with C moved first.

Non-finite values follow TensorFlow-on-CPU exactly, because they are common: the official
float16 compression overflows to +inf on loud bins (see frontend.py), so most real songs
feed +inf into the graph. TF (grappler) fuses conv/dense + bias + ReLU and that fused ReLU
maps NaN (inf - inf) to 0 (`tf_relu`); TF's MaxPool skips NaN and never returns less than
-FLT_MAX (`tf_max`); `reduce_max`/`mean` over time propagate NaN as torch does.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.fast_front_end import TemporalConvMax, TimbralFourierConv
from tagtrain.models.layers import Tagger
from tagtrain.models.registry import InputSpec, register_model

TF_BN_EPSILON = 1e-3
TF_BN_MOMENTUM = 0.01  # TF's momentum 0.99 in torch's convention
N_MELS = 96
N_FRAMES = 187  # librosa.time_to_frames(3 s, sr 16000, n_fft 512, hop 256) + 1

# 187 frames = 1 + samples // 256 for samples = 186 * 256 (the trainer's crop length).
MUSICNN_TF_INPUT = InputSpec(
    kind="mel",
    seconds=(N_FRAMES - 1) * 256 / 16000,
    features=FeatureConfig(
        sample_rate=16000,
        n_mels=N_MELS,
        n_fft=512,
        hop=256,
        f_min=0.0,
        f_max=8000.0,
        log_scale="log10_1p",
        # The published models' front end (tagtrain/pretrained/frontend.py: librosa's
        # Slaney filters, zero-padded ends), so fine-tuning feeds what they were trained on.
        mel_scale="slaney",
        mel_norm="slaney",
        pad_mode="constant",
    ),
    exact_samples=(N_FRAMES - 1) * 256,
    standardize="none",
)

_TIMBRAL_FILTERS = 204  # int(1.6 * 128)
_TEMPORAL_FILTERS = 51  # int(1.6 * 32)
_TIMBRAL_WIDTHS = (int(0.4 * N_MELS), int(0.7 * N_MELS))  # 38, 67 mel bands
_TEMPORAL_LENGTHS = (128, 64, 32)


def channels_last_conv(conv: nn.Conv2d) -> nn.Conv2d:
    """The conv with its weight stored channels-last (NHWC): oneDNN then runs it in that
    layout, 1.3-1.6x faster here for these single-input-channel and 3x3 convs, and hands
    back a channels-last output (ReLU, BN and pooling work on any layout). Only the
    summation order of the conv differs from NCHW (about 1e-7 relative); the state dict
    is unchanged."""
    return conv.to(memory_format=torch.channels_last)


# Eval-mode arithmetic of the front end (musicnn_tf) and convs (vgg_tf): "fast" (default:
# fast_front_end.py, equal up to rounding) or "direct" (torch's conv, the graph's literal
# convolutions). Training always runs the direct graph order.
CONV_ALGORITHMS = ("fast", "direct")


def set_conv_algorithm(model: nn.Module, algorithm: str) -> nn.Module:
    """Set the eval-mode conv arithmetic of every layer of `model` that has a choice."""
    if algorithm not in CONV_ALGORITHMS:
        raise ValueError(f"conv_algorithm must be one of {CONV_ALGORITHMS}, not {algorithm!r}")
    for module in model.modules():
        if hasattr(module, "conv_algorithm"):
            module.conv_algorithm = algorithm
    return model


_FAST_CHUNK = 8
_VGG_CHUNK = 2


def use_fast_path(algorithm: str, x: torch.Tensor) -> bool:
    """The fast arithmetic serves plain inference on the CPU only (the caller checks eval
    mode): not autograd (its Python loops and cached transforms are not for backward),
    not a trace (ONNX export records the direct graph, not a loop unrolled per frame),
    and not a GPU (tuned for the CPU's GEMMs and caches; cuDNN's convs are the better
    choice there)."""
    if algorithm != "fast" or x.device.type != "cpu":
        return False
    return not torch.is_grad_enabled() and not torch.jit.is_tracing()


def tf_batch_norm(channels: int, dims: int) -> nn.Module:
    cls = {1: nn.BatchNorm1d, 2: nn.BatchNorm2d}[dims]
    return cls(channels, eps=TF_BN_EPSILON, momentum=TF_BN_MOMENTUM)


_FLOAT32_LOWEST = float(torch.finfo(torch.float32).min)


def tf_relu(x: torch.Tensor) -> torch.Tensor:
    """ReLU as TF's fused conv/matmul + bias + ReLU computes it: NaN -> 0, inf kept."""
    return torch.nan_to_num(x, nan=0.0, posinf=float("inf"), neginf=0.0).clamp(min=0.0)


def _tf_pool_input(x: torch.Tensor) -> torch.Tensor:
    return torch.nan_to_num(x, nan=float("-inf"), posinf=float("inf"), neginf=float("-inf"))


def tf_max(x: torch.Tensor, dim: int) -> torch.Tensor:
    """A max-pool over a whole axis as TF's MaxPool: NaN skipped, floor -FLT_MAX."""
    return _tf_pool_input(x).amax(dim=dim).clamp(min=_FLOAT32_LOWEST)


class TFMaxPool2d(nn.MaxPool2d):
    """'valid' max-pooling with TF's MaxPool handling of NaN and -inf (see tf_max)."""

    def forward(self, x):
        return super().forward(_tf_pool_input(x)).clamp(min=_FLOAT32_LOWEST)


def strided_max_pool(
    x: torch.Tensor, kernel: tuple[int, int], stride: tuple[int, int]
) -> torch.Tensor:
    """'valid' 2-d max-pooling of [B, C, H, W] as an elementwise maximum of the kernel's
    strided views: the same values as F.max_pool2d (NaN propagates in both), 3-6x faster
    here on NCHW tensors because no argmax indices are kept."""
    (kh, kw), (sh, sw) = kernel, stride
    out_h, out_w = (x.shape[2] - kh) // sh + 1, (x.shape[3] - kw) // sw + 1
    views = [
        x[:, :, i : i + sh * (out_h - 1) + 1 : sh, j : j + sw * (out_w - 1) + 1 : sw]
        for i in range(kh)
        for j in range(kw)
    ]
    if len(views) == 1:
        return views[0].clone(memory_format=torch.contiguous_format)
    out = torch.maximum(views[0], views[1])
    for view in views[2:]:
        torch.maximum(out, view, out=out)
    return out


def tf_same_padding(kernel: int) -> tuple[int, int]:
    """(before, after) of TF's 'same' at stride 1: the odd pixel goes after."""
    total = kernel - 1
    return total // 2, total - total // 2


class FrontEndBlock(nn.Module):
    """conv (kernel [time, freq]) -> ReLU -> BN -> max over all remaining frequency bins."""

    def __init__(self, filters: int, time: int, freq: int, time_padding: tuple[int, int]):
        super().__init__()
        self.time_padding = time_padding
        self.conv = channels_last_conv(nn.Conv2d(1, filters, (time, freq)))
        self.bn = tf_batch_norm(filters, 2)
        self.conv_algorithm = "fast"
        self._fast_cache: tuple[tuple, object] | None = None

    def forward(self, x):  # [B, 1, T, F] -> [B, filters, T]
        padded = F.pad(x, (0, 0, *self.time_padding))
        if self.training or not conv_output_is_finite(self.conv, padded):
            return tf_max(self.bn(tf_relu(self.conv(padded))), dim=3)
        if use_fast_path(self.conv_algorithm, x):
            return self.fast_pooled(x[:, 0])
        return self.pooled_first(padded)

    def fast_pooled(self, x: torch.Tensor) -> torch.Tensor:
        """pooled_first's result from fast_front_end's arithmetic (conv_algorithm "fast",
        eval mode without autograd): the same max over frequency of the sign-folded conv,
        up to rounding, for x [B, T, F] unpadded."""
        sign = bn_scale_sign(self.bn)
        operator = self._fast_operator(sign)
        # At most _FAST_CHUNK windows at a time: the GEMMs' operands then stay in cache
        # (measured 16 ms a window for 4-16 windows, 19 for 32).
        chunks = -(-len(x) // _FAST_CHUNK)
        best = torch.cat([operator(part) for part in x.split(-(-len(x) // chunks))])
        picked = (best + (self.conv.bias * sign).view(1, -1, 1)) * sign.view(1, -1, 1)
        return self.bn(tf_relu(picked).unsqueeze(3)).squeeze(3)

    def _fast_operator(self, sign: torch.Tensor):
        """The fast conv for the current weights (transformed once, rebuilt when the
        weights or the BN signs change)."""
        tensors = (self.conv.weight, self.bn.weight, self.bn.running_var)
        key = tuple((t.data_ptr(), t._version) for t in tensors)
        if self._fast_cache is None or self._fast_cache[0] != key:
            with torch.inference_mode(False), torch.no_grad():
                weight = self.conv.weight.detach() * sign.detach().view(-1, 1, 1, 1)
                if weight.shape[3] == 1:  # a temporal filter [C, 1, L, 1]
                    operator = TemporalConvMax(weight[:, 0, :, 0], self.time_padding)
                else:
                    operator = TimbralFourierConv(weight, self.time_padding)
            self._fast_cache = (key, operator)
        return self._fast_cache[1]

    def pooled_first(self, x: torch.Tensor) -> torch.Tensor:
        """The same result, in eval mode for a finite conv output z, from one max over
        frequency: ReLU and BN are monotone per channel and float rounding keeps order,
        so max(BN(ReLU(z))) is BN(ReLU(max z)) where BN increases and BN(ReLU(min z))
        where it decreases. The conv runs with those channels' weight and bias negated
        (exact in float: -z bit for bit), so min z is -max(-z) and one max serves all
        channels: the element the full computation picks, bit for bit, for 1/F of the
        ReLU/BN work and one reduction."""
        sign = bn_scale_sign(self.bn)
        z = F.conv2d(x, self.conv.weight * sign.view(-1, 1, 1, 1), self.conv.bias * sign)
        # Reduce over frequency in the conv's channels-last layout [B, T, F, C]:
        # elementwise over contiguous channel rows, 3x faster than a strided reduction.
        picked = z.permute(0, 2, 3, 1).amax(dim=2).transpose(1, 2) * sign.view(1, -1, 1)
        return self.bn(tf_relu(picked).unsqueeze(3)).squeeze(3)


def bn_scale_sign(bn: nn.Module) -> torch.Tensor:
    """+1 where an eval-mode BN is non-decreasing per channel, -1 where it is decreasing."""
    scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return torch.where(scale >= 0, 1.0, -1.0)


# Far below float32's 3.4e38: the bound below ignores the accumulation's rounding.
_SAFE_MAGNITUDE = 1e36


def conv_output_is_finite(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    """True when conv(x) cannot hold inf or NaN: x is finite and |x| times the largest
    sum of |weights| of a filter, plus |bias|, stays far from overflow. Checked on the
    input (small) instead of the output, so that pooling first needs no pass over z."""
    largest = x.abs().amax()  # NaN or inf if x has one
    weight_sum, bias = _weight_bounds(conv)
    return bool(largest * weight_sum + bias < _SAFE_MAGNITUDE)


def _weight_bounds(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(largest sum of |weights| of a filter, largest |bias|), cached per weight version
    (computing them copies the channels-last weight: 25 times per VGG file otherwise)."""
    key = tuple((t.data_ptr(), t._version) for t in (conv.weight, conv.bias))
    cached = conv.__dict__.get("_bounds_cache")
    if cached is None or cached[0] != key:
        with torch.inference_mode(False), torch.no_grad():
            weight_sum = conv.weight.detach().abs().flatten(1).sum(1).amax()
            bounds = (weight_sum, conv.bias.detach().abs().amax())
        cached = conv.__dict__["_bounds_cache"] = (key, bounds)
    return cached[1]


class MidEndLayer(nn.Module):
    """conv spanning all channels over 7 frames (padded 3+3) -> ReLU -> BN."""

    def __init__(self, in_channels: int, filters: int):
        super().__init__()
        self.conv = nn.Conv1d(in_channels, filters, 7, padding=3)
        self.bn = tf_batch_norm(filters, 1)

    def forward(self, x):  # [B, C, T]
        return self.bn(tf_relu(self.conv(x)))


class MusicnnTF(Tagger):
    """musicnn (`build_musicnn`): `features(mel)` returns the official named layers."""

    def __init__(
        self,
        n_classes: int = 50,
        midend: int = 64,
        dense: int = 200,
        timbral_filters: int = _TIMBRAL_FILTERS,
        temporal_filters: int = _TEMPORAL_FILTERS,
    ):
        super().__init__(dense, n_classes, dropout=0.5)
        self.input_spec = MUSICNN_TF_INPUT
        self.input_bn = tf_batch_norm(1, 2)
        timbral = [FrontEndBlock(timbral_filters, 7, w, (3, 3)) for w in _TIMBRAL_WIDTHS]
        temporal = [
            FrontEndBlock(temporal_filters, t, 1, tf_same_padding(t)) for t in _TEMPORAL_LENGTHS
        ]
        self.front = nn.ModuleList(timbral + temporal)
        front_channels = 2 * timbral_filters + 3 * temporal_filters  # 561
        self.mid = nn.ModuleList(
            [MidEndLayer(front_channels, midend), MidEndLayer(midend, midend)]
            + [MidEndLayer(midend, midend)]
        )
        pooled = 2 * (front_channels + 3 * midend)  # 1506
        self.pool_bn = tf_batch_norm(pooled, 1)
        self.pool_dropout = nn.Dropout(0.5)
        self.dense = nn.Linear(pooled, dense)
        self.dense_bn = tf_batch_norm(dense, 1)

    def features(self, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        """The official extractor's layers for mel [B, 96, T]: timbral/temporal/cnn1-3 as
        [B, T, C] (TF layout), mean_pool/max_pool [B, 753], penultimate [B, 200], logits."""
        x = self.input_bn(mel.transpose(1, 2).unsqueeze(1))  # [B, 1, T, F]
        front = [block(x) for block in self.front]
        front_out = torch.cat(front, dim=1)  # [B, 561, T]
        cnn1 = self.mid[0](front_out)
        cnn2 = self.mid[1](cnn1) + cnn1
        cnn3 = self.mid[2](cnn2) + cnn2
        stacked = torch.cat([front_out, cnn1, cnn2, cnn3], dim=1)  # [B, 753, T]
        max_pool, mean_pool = stacked.amax(dim=2), stacked.mean(dim=2)
        # tf.concat([max, mean], 2) then flatten: max and mean interleaved per channel.
        flat = torch.stack([max_pool, mean_pool], dim=2).flatten(1)
        hidden = tf_relu(self.dense(self.pool_dropout(self.pool_bn(flat))))
        penultimate = self.dense_bn(hidden)
        logits = self.classifier(self.dropout(penultimate))
        return {
            "timbral": torch.cat(front[:2], dim=1).transpose(1, 2),
            "temporal": torch.cat(front[2:], dim=1).transpose(1, 2),
            "cnn1": cnn1.transpose(1, 2),
            "cnn2": cnn2.transpose(1, 2),
            "cnn3": cnn3.transpose(1, 2),
            "mean_pool": mean_pool,
            "max_pool": max_pool,
            "penultimate": penultimate,
            "logits": logits,
        }

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        return self.features(mel)["penultimate"]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        return self.features(mel)["logits"]


# (pool kernel, pool stride) after each of VGG's five 3x3 convs, as [time, freq].
_VGG_POOLS = (((4, 1), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)), ((2, 2), (2, 2)))
_VGG_POOLS += (((4, 4), (4, 4)),)


class VggTF(Tagger):
    """The VGG-like baseline (`vgg`): five conv3x3 -> ReLU -> BN -> max-pool blocks,
    dropout 0.25 between them, dropout 0.5 and one dense layer on the flattened pool5."""

    def __init__(self, n_classes: int = 50, filters: int = 128):
        pooled_frames, pooled_bands = N_FRAMES, N_MELS
        for (kt, kf), (st, sf) in _VGG_POOLS:
            pooled_frames = (pooled_frames - kt) // st + 1
            pooled_bands = (pooled_bands - kf) // sf + 1
        super().__init__(pooled_frames * pooled_bands * filters, n_classes, dropout=0.5)
        self.input_spec = MUSICNN_TF_INPUT
        self.input_bn = tf_batch_norm(1, 2)
        self.convs = nn.ModuleList(
            channels_last_conv(nn.Conv2d(1 if i == 0 else filters, filters, 3, padding=1))
            for i in range(5)
        )
        self.bns = nn.ModuleList(tf_batch_norm(filters, 2) for _ in range(5))
        self.pools = nn.ModuleList(TFMaxPool2d(k, s) for k, s in _VGG_POOLS)
        self.block_dropout = nn.Dropout(0.25)
        self.conv_algorithm = "fast"

    def features(self, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        """pool1..pool5 in TF layout [B, T, F, C], the flattened pool5 and the logits.
        Eval mode with conv_algorithm "fast" runs _VGG_CHUNK windows at a time (each
        window is computed on its own): block 1's conv output of 10 windows is 92 MB,
        and fresh tensors that large cost more in page faults than the pooling itself."""
        return self._chunked(mel, self.window_features)

    def _chunked(self, mel: torch.Tensor, layers) -> dict[str, torch.Tensor]:
        if self.training or not use_fast_path(self.conv_algorithm, mel) or len(mel) <= _VGG_CHUNK:
            return layers(mel)
        parts = [layers(part) for part in mel.split(_VGG_CHUNK)]
        return {key: torch.cat([part[key] for part in parts]) for key in parts[0]}

    def window_features(self, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.input_bn(mel.transpose(1, 2).unsqueeze(1))
        out = {}
        for i in range(len(self.convs)):
            if i > 0:
                x = self.block_dropout(x)
            x = self.block(i, x)
            out[f"pool{i + 1}"] = x.permute(0, 2, 3, 1)
        out["flat_pool5"] = out["pool5"].flatten(1)  # NHWC order, as TF's flatten
        out["logits"] = self.classifier(self.dropout(out["flat_pool5"]))
        return out

    def block(self, i: int, x: torch.Tensor) -> torch.Tensor:
        """conv -> ReLU -> BN -> max-pool, in the graph's order (training, non-finite z)
        or pooled first (eval, z finite: the same values bit for bit, see pooled_first)."""
        conv, bn, pool = self.convs[i], self.bns[i], self.pools[i]
        if not self.training:
            pooled = self.pooled_first(conv, bn, pool, x)
            if pooled is not None:
                return pooled
        return pool(bn(tf_relu(conv(x))))

    @staticmethod
    def pooled_first(
        conv: nn.Conv2d, bn: nn.Module, pool: nn.MaxPool2d, x: torch.Tensor
    ) -> torch.Tensor | None:
        """Max-pool the conv output before ReLU and BN (monotone per channel), with the
        conv's weights and bias negated where BN decreases, so that one max-pool picks
        each channel's element: negation is exact in float (conv(x, -w, -b) is -conv(x,
        w, b) bit for bit), so this is FrontEndBlock.pooled_first's argument for a
        windowed pool. The ReLU/BN/NaN passes then run on the pooled quarter (or less)
        of the tensor. None when z could hold inf or NaN (the graph's order handles it)."""
        if not conv_output_is_finite(conv, x):
            return None
        sign = bn_scale_sign(bn)
        weight = conv.weight * sign.view(-1, 1, 1, 1)  # keeps the weight's (NHWC) strides
        # A pool one element wide along an axis (block 1's (4, 1) with stride 2 in
        # frequency) reads only every stride-th conv output there: the conv runs at that
        # stride (the same dot products, bit for bit), for half the work and memory.
        (kh, kw), (sh, sw) = pool.kernel_size, pool.stride
        conv_stride = (sh if kh == 1 else 1, sw if kw == 1 else 1)
        z = F.conv2d(x, weight, conv.bias * sign, stride=conv_stride, padding=conv.padding)
        pool_stride = (sh // conv_stride[0], sw // conv_stride[1])
        pooled = strided_max_pool(z, pool.kernel_size, pool_stride)
        # tf_relu of finite values is clamp(min=0); in place on the pooled copy.
        return bn(pooled.mul_(sign.view(1, -1, 1, 1)).clamp_(min=0.0))

    def embed(self, mel: torch.Tensor) -> torch.Tensor:
        return self.features(mel)["flat_pool5"]

    def forward(self, mel: torch.Tensor) -> torch.Tensor:
        # Only the logits are joined across chunks (pool1 alone is 22 MB for 10 windows).
        return self._chunked(mel, self._logits_only)["logits"]

    def _logits_only(self, mel: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"logits": self.window_features(mel)["logits"]}


def _scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


@register_model(
    "musicnn_tf",
    input_spec=MUSICNN_TF_INPUT,
    reference_params=None,
    description="Pons & Serra's TF musicnn (published MTT/MSD weights: --pretrained)",
)
def musicnn_tf(n_classes: int = 50, width: float = 1.0) -> MusicnnTF:
    """`width` scales every layer (1.0 = the published model, the only one with weights)."""
    return MusicnnTF(
        n_classes,
        midend=_scaled(64, width),
        dense=_scaled(200, width),
        timbral_filters=_scaled(_TIMBRAL_FILTERS, width),
        temporal_filters=_scaled(_TEMPORAL_FILTERS, width),
    )


@register_model(
    "vgg_tf",
    input_spec=MUSICNN_TF_INPUT,
    reference_params=None,
    description="Pons & Serra's TF VGG baseline (published MTT/MSD weights: --pretrained)",
)
def vgg_tf(n_classes: int = 50, width: float = 1.0) -> VggTF:
    return VggTF(n_classes, filters=_scaled(128, width))
