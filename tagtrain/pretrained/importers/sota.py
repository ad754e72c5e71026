"""State dicts of minzwon/sota-music-tagging-models (seed 000) -> our zoo.

The reference trains nine architectures (`training/model.py`, blocks in `modules.py` and
`attention_modules.py`) and saves `model.state_dict()` as a bare dict (`best_model.pth`).
Each maps one to one onto a registered model of ours (same layers, same shapes, same
forward; the golden test runs the reference itself): only the names differ.

What is not a weight of ours:

- The reference computes its input inside the model: torchaudio's `MelSpectrogram`
  (buffers `spec.spectrogram.window` [n_fft] and `spec.mel_scale.fb` [n_fft/2+1, n_mels])
  and `AmplitudeToDB` (no tensors); the Harmonic CNN's `HarmonicSTFT` has
  `hstft.spec.window`. They are not weights of ours: our front end computes the same
  input (the models' InputSpecs are torchaudio's defaults: HTK mel, no norm, reflect
  padding), so the buffers must be present and equal what it uses for the model's
  InputSpec (`common.check_window`, `common.check_filterbank`): a 128-band checkpoint
  does not go into a 96-band model, nor one trained on another filterbank.
- Tensors the reference recomputes at construction instead of saving, which ours keep as
  buffers: CNNSA's fixed [CLS] vector (numpy seed 0; ours `cls`, drawn the same way) and
  the Harmonic CNN's centre frequencies (`f0`; ours `front.center_hz`, the same grid).
  They keep our freshly built values.
- `num_batches_tracked` of a batch norm is taken when the checkpoint has it (PyTorch >=
  0.4.1 writes it) and left at 0 otherwise; it only matters to a momentum-free batch norm.

Every other tensor of the checkpoint is used exactly once and every other tensor of ours
is filled, with equal shapes (`rename_strict`); the first mismatch is the one-line error.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch

from tagtrain.pretrained.importers.common import (
    WeightsImportError,
    check_window,
    pop_mel_front_end,
    rename_strict,
)

# Tensor names of one module of each kind.
AFFINE = ("weight", "bias")  # Conv*, Linear, LayerNorm
BATCH_NORM = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
GRU_2_LAYERS = tuple(
    f"{kind}_{gate}_l{layer}"
    for layer in (0, 1)
    for kind, gate in (("weight", "ih"), ("weight", "hh"), ("bias", "ih"), ("bias", "hh"))
)

# (reference module, our module, tensor names); no names: the two keys themselves.
Pairs = list[tuple[str, str, tuple[str, ...]]]


@dataclass(frozen=True)
class Architecture:
    reference: str  # class of training/model.py
    model_type: str  # the reference's `--model_type`
    head: str  # reference key of the output layer's weight: [n_classes, features]
    modules: Callable[[Mapping[str, torch.Tensor]], Pairs]  # from our model's state dict
    front_end: str  # "mel" or "harmonic"
    constants: tuple[str, ...] = ()  # ours, recomputed by the reference (not saved)


# --- module pairs shared by several architectures ------------------------------------


def _conv_bn(ref: str, our_conv: str, our_bn: str) -> Pairs:
    """A reference Conv_1d / Conv_2d module `ref` (conv, bn) -> our conv and BN."""
    return [(f"{ref}.conv", our_conv, AFFINE), (f"{ref}.bn", our_bn, BATCH_NORM)]


def _conv_blocks(first: int, count: int, our_first: int = 0) -> Pairs:
    """`layer{i}` (conv, bn) -> our ConvBlock `blocks.{j}` (conv, bn)."""
    pairs = []
    for n in range(count):
        ours = f"blocks.{our_first + n}"
        pairs += _conv_bn(f"layer{first + n}", f"{ours}.conv", f"{ours}.bn")
    return pairs


def _res_blocks(first: int, count: int, target, our_first: int = 0, excite=False) -> Pairs:
    """Res_2d / Res_2d_mp / ResSE_1d `layer{i}` -> our residual `blocks.{j}`; the
    projection (conv_3, bn_3) exists in both exactly when the block changes shape."""
    pairs = []
    for n in range(count):
        ref, ours = f"layer{first + n}", f"blocks.{our_first + n}"
        pairs += [
            (f"{ref}.conv_1", f"{ours}.conv1", AFFINE),
            (f"{ref}.bn_1", f"{ours}.bn1", BATCH_NORM),
            (f"{ref}.conv_2", f"{ours}.conv2", AFFINE),
            (f"{ref}.bn_2", f"{ours}.bn2", BATCH_NORM),
        ]
        if f"{ours}.shortcut.0.weight" in target:
            pairs += [
                (f"{ref}.conv_3", f"{ours}.shortcut.0", AFFINE),
                (f"{ref}.bn_3", f"{ours}.shortcut.1", BATCH_NORM),
            ]
        if excite:  # squeeze-and-excitation: dense1 -> ReLU -> dense2 -> sigmoid
            pairs += [
                (f"{ref}.dense1", f"{ours}.excite.0", AFFINE),
                (f"{ref}.dense2", f"{ours}.excite.2", AFFINE),
            ]
    return pairs


def _hidden_head() -> Pairs:
    """dense1 -> bn -> ReLU -> dropout -> dense2, ours `hidden` (Linear, BN) + classifier."""
    return [
        ("dense1", "hidden.0", AFFINE),
        ("bn", "hidden.1", BATCH_NORM),
        ("dense2", "classifier", AFFINE),
    ]


SPEC_BN = [("spec_bn", "input.bn", BATCH_NORM)]  # BatchNorm2d(1) on the dB mel
DENSE = [("dense", "classifier", AFFINE)]


# --- the nine architectures --------------------------------------------------------------


def _fcn(target) -> Pairs:
    return SPEC_BN + _conv_blocks(1, 5) + DENSE


def _crnn(target) -> Pairs:
    return SPEC_BN + _conv_blocks(1, 4) + [("layer5", "rnn", GRU_2_LAYERS)] + DENSE


def _musicnn(target) -> Pairs:
    # layers.0-1: Conv_V (timbral), layers.2-4: Conv_H (temporal); layer1-3: the mid end
    # (Conv_1d: conv, bn; ours nn.Sequential(conv, bn, relu)); dense1 -> bn -> dense2.
    front = [
        p for j in range(5) for p in _conv_bn(f"layers.{j}", f"front.{j}.conv", f"front.{j}.bn")
    ]
    mid = [p for i in range(3) for p in _conv_bn(f"layer{i + 1}", f"mid.{i}.0", f"mid.{i}.1")]
    head = [("dense1", "dense.0", AFFINE), ("bn", "dense.1", BATCH_NORM)]
    return SPEC_BN + front + mid + head + [("dense2", "classifier", AFFINE)]


def _samplecnn(target) -> Pairs:
    return _conv_blocks(1, 11) + DENSE


def _samplecnn_se(target) -> Pairs:
    return _res_blocks(1, 11, target, excite=True) + _hidden_head()


def _short_chunk_cnn(target) -> Pairs:
    return SPEC_BN + _conv_blocks(1, 7) + _hidden_head()


def _short_chunk_resnet(target) -> Pairs:
    return SPEC_BN + _res_blocks(1, 7, target) + _hidden_head()


def _bert_layer(i: int) -> Pairs:
    ref, ours = f"encoder.layer.{i}", f"encoder.layers.{i}"
    return [
        (f"{ref}.attention.self.query", f"{ours}.query", AFFINE),
        (f"{ref}.attention.self.key", f"{ours}.key", AFFINE),
        (f"{ref}.attention.self.value", f"{ours}.value", AFFINE),
        (f"{ref}.attention.output.dense", f"{ours}.attention_out", AFFINE),
        (f"{ref}.attention.output.LayerNorm", f"{ours}.attention_norm", AFFINE),
        (f"{ref}.intermediate.dense", f"{ours}.intermediate", AFFINE),
        (f"{ref}.output.dense", f"{ours}.output", AFFINE),
        (f"{ref}.output.LayerNorm", f"{ours}.output_norm", AFFINE),
    ]


def _cnnsa(target) -> Pairs:
    layers = sorted({k.split(".")[2] for k in target if k.startswith("encoder.layers.")}, key=int)
    bert = [pair for i in layers for pair in _bert_layer(int(i))]
    return (
        SPEC_BN + _res_blocks(1, 7, target) + bert + [("pooler.dense", "pooler.0", AFFINE)] + DENSE
    )


def _hcnn(target) -> Pairs:
    # layer1 and layer5 are Conv_2d, the others Res_2d_mp (no projection: same channels).
    return (
        [("hstft.bw_Q", "front.q", ()), ("hstft_bn", "input_bn", BATCH_NORM)]
        + _conv_blocks(1, 1)
        + _res_blocks(2, 3, target, our_first=1)
        + _conv_blocks(5, 1, our_first=4)
        + _res_blocks(6, 2, target, our_first=5)
        + _hidden_head()
    )


_FCN = Architecture("FCN", "fcn", "dense.weight", _fcn, "mel")
_CRNN = Architecture("CRNN", "crnn", "dense.weight", _crnn, "mel")
_MUSICNN = Architecture("Musicnn", "musicnn", "dense2.weight", _musicnn, "mel")

# Our registered name -> the reference architecture it takes the weights of.
ARCHITECTURES = {
    "fcn": _FCN,
    "fcn_128": _FCN,
    "crnn": _CRNN,
    "crnn_128": _CRNN,
    "musicnn": _MUSICNN,
    "musicnn_128": _MUSICNN,
    "musicnn_big": _MUSICNN,  # the reference's dataset='msd' width
    "samplecnn": Architecture("SampleCNN", "sample", "dense.weight", _samplecnn, "none"),
    "samplecnn_se": Architecture("SampleCNNSE", "se", "dense2.weight", _samplecnn_se, "none"),
    "short_chunk_cnn": Architecture(
        "ShortChunkCNN", "short", "dense2.weight", _short_chunk_cnn, "mel"
    ),
    "short_chunk_resnet": Architecture(
        "ShortChunkCNN_Res", "short_res", "dense2.weight", _short_chunk_resnet, "mel"
    ),
    "cnnsa": Architecture("CNNSA", "attention", "dense.weight", _cnnsa, "mel", ("cls",)),
    "hcnn": Architecture(
        "HarmonicCNN", "hcnn", "dense2.weight", _hcnn, "harmonic", ("front.center_hz",)
    ),
}

MODELS = {
    name: f"{arch.reference} (--model_type {arch.model_type})"
    + (" with 128 mel bands" if name.endswith("_128") else "")
    + (" with dataset='msd'" if name == "musicnn_big" else "")
    for name, arch in ARCHITECTURES.items()
}


# --- label order ---------------------------------------------------------------------------


def label_order(vocabulary: str, tags: list[str]) -> list[str]:
    """The checkpoints' output order for a named `--vocabulary` (manifests' list in `tags`).

    The reference's MTAT labels (`split/mtat/tags.npy`) put 'metal' before 'female voice'
    (outputs 47 and 48); manifests' list (jongpillee's top-50) has them the other way
    round. Its MSD list (`split/msd/50tagList.txt`) is manifests' order, and its
    MTG-Jamendo labels are sklearn's LabelBinarizer classes, i.e. sorted, as manifests'."""
    if vocabulary != "mtt":
        return tags
    order = list(tags)
    i, j = order.index("female voice"), order.index("metal")
    order[i], order[j] = order[j], order[i]
    return order


# --- conversion ---------------------------------------------------------------------------


def architecture(model: str) -> Architecture:
    if model not in ARCHITECTURES:
        raise WeightsImportError(
            f"--from sota has no weights for model {model!r}; it fills "
            f"{', '.join(sorted(ARCHITECTURES))}"
        )
    return ARCHITECTURES[model]


def head_classes(state: Mapping[str, torch.Tensor], model: str) -> int:
    """Tags of the checkpoint's output layer (our classifier gets the same)."""
    arch = architecture(model)
    head = state.get(arch.head)
    if head is None or head.dim() != 2:
        raise WeightsImportError(
            f"sota {arch.reference} checkpoint: no output layer {arch.head!r} "
            f"[tags, features]; is it a {arch.model_type} checkpoint?"
        )
    return int(head.shape[0])


def without_front_end(state, model: torch.nn.Module, kind: str, what: str) -> dict:
    """`state` without the reference's front-end buffers, which are checked against the
    front end of our `model` (module docstring)."""
    rest = dict(state)
    spec = model.input_spec
    if kind == "mel":
        pop_mel_front_end(
            rest, "spec.spectrogram.window", "spec.mel_scale.fb", spec, what, required=True
        )
    elif kind == "harmonic":
        key = "hstft.spec.window"
        if key not in rest:
            raise WeightsImportError(f"{what}: the checkpoint has no front-end tensor {key!r}")
        check_window(rest.pop(key), model.front.n_fft, key, what)
    return rest


def _key_mapping(pairs: Pairs) -> dict[str, str]:
    mapping = {}
    for ref, ours, names in pairs:
        if not names:
            mapping[ref] = ours
        for name in names:
            mapping[f"{ref}.{name}"] = f"{ours}.{name}"
    return mapping


def guess_model(state: Mapping[str, torch.Tensor]) -> str | None:
    """Our model whose reference architecture the checkpoint's keys look like, for the
    error message when it is imported into another one."""
    keys = set(state)
    fb = state.get("spec.mel_scale.fb")
    bands = "_128" if fb is not None and fb.dim() == 2 and fb.shape[1] == 128 else ""
    if "hstft.bw_Q" in keys:
        return "hcnn"
    if "encoder.layer.0.attention.self.query.weight" in keys:
        return "cnnsa"
    if "layers.0.conv.weight" in keys:
        mid = state.get("layer1.conv.weight")
        return "musicnn_big" if mid is not None and mid.shape[0] == 512 else f"musicnn{bands}"
    if "layer5.weight_ih_l0" in keys:
        return f"crnn{bands}"
    if "layer1.dense1.weight" in keys:
        return "samplecnn_se"
    if "layer1.conv_1.weight" in keys:
        return "short_chunk_resnet"
    if "layer11.conv.weight" in keys:
        return "samplecnn"
    if "layer7.conv.weight" in keys:
        return "short_chunk_cnn"
    if "layer5.conv.weight" in keys:
        return f"fcn{bands}"
    return None


def convert(state: Mapping[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    """Our `model`'s state dict from a sota checkpoint (see the module docstring)."""
    try:
        return _convert(state, model)
    except WeightsImportError as exc:
        guess = guess_model(state)
        if guess is None or guess == model or model not in ARCHITECTURES:
            raise
        reference = ARCHITECTURES[guess].reference
        raise WeightsImportError(
            f"{exc}; the checkpoint looks like {reference}: try --model {guess}"
        ) from None


def _convert(state: Mapping[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    from tagtrain.models.registry import create_model

    arch = architecture(model)
    what = f"sota {arch.reference} checkpoint"
    ours = create_model(model, head_classes(state, model), seed=0)
    target = ours.state_dict()
    reference = without_front_end(state, ours, arch.front_end, what)
    mapping = _key_mapping(arch.modules(target))
    # Batch-norm counters the checkpoint does not have keep ours (0).
    absent = {
        ref: mine
        for ref, mine in mapping.items()
        if ref.endswith(".num_batches_tracked") and ref not in reference
    }
    mapping = {ref: mine for ref, mine in mapping.items() if ref not in absent}
    kept = set(arch.constants) | set(absent.values())
    needed = {k: v for k, v in target.items() if k not in kept}
    converted = rename_strict(reference, mapping, needed, what)
    converted.update({k: target[k] for k in kept})
    return converted


__all__ = [
    "ARCHITECTURES",
    "MODELS",
    "architecture",
    "convert",
    "guess_model",
    "head_classes",
    "label_order",
]
