"""MAEST (palonso/MAEST) and PaSST (kkoutini/PaSST) checkpoints -> our patchout models.

Both are timm ViTs in PaSST's layout (MAEST's `models/maest.py` is PaSST's
`models/passt.py` adapted), so one mapping serves `--from maest` and `--from passt`:

    patch_embed.proj.{weight,bias}        patch_embed.{weight,bias}
    freq_new_pos_embed [1, D, F, 1]       freq_pos   (see "Positions")
    time_new_pos_embed [1, D, 1, T]       time_pos   (see "Positions")
    new_pos_embed, cls_token, dist_token  token_pos, cls_token, dist_token
    blocks.I.norm1 / norm2                encoder.layers.I.norm1 / norm2
    blocks.I.attn.qkv                     encoder.layers.I.self_attn.in_proj_{weight,bias}
    blocks.I.attn.proj                    encoder.layers.I.self_attn.out_proj
    blocks.I.mlp.fc1 / fc2                encoder.layers.I.linear1 / linear2
    norm                                  norm
    head.0 / head.1 (LayerNorm, Linear)   classifier.norm / classifier.linear
    head_dist                             not loaded: the reference's default head
                                          (`distilled_type="mean"`) never uses it
    melspectrogram.*                      not loaded: MAEST's torchaudio front-end buffers
                                          (window, filterbank); where present they
                                          must equal our front end's for the model

Containers: a Lightning checkpoint's `net_swa.` weights are taken when present (MAEST's
`get_maest` default, `checkpoint_swa_weigts=True`), else `net.`; `module.`/`model.`
prefixes are cut. A plain ViT/DeiT file (`pos_embed`) and the Hugging Face export
(`audio_spectrogram_transformer.*`, positions already summed) are refused.

Positions, as the reference does it. The reference model for an input of `frames` x
`n_mels` has tables of `n_mels // 10` rows and `frames // 10` columns (PatchEmbed's
`grid_size`); loading a checkpoint whose tables differ, MAEST's `checkpoint_filter_fn`
resizes both with bicubic interpolation (`align_corners=False`): that is how a PaSST
checkpoint (128 bands x 998 frames: 12 x 99) becomes a 96-band MAEST, and how a MAEST
of one length becomes another. At inference the reference then uses the first
`(frames - 16) // 10 + 1` columns (its forward crops the table to the patches); our table
has exactly that many, so it is stored cropped (one column fewer for every MAEST length).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from pathlib import Path

import torch
import torch.nn.functional as F

from tagtrain.models.patchout import STRIDE
from tagtrain.models.registry import InputSpec, create_model, get_entry
from tagtrain.pretrained.importers.common import (
    WeightsImportError,
    pop_mel_front_end,
    rename_strict,
)

MODELS = {
    "maest_5s": "MAEST 5 s (discogs-maest-5s-*; 9 x 31 position tables)",
    "maest_10s": "MAEST 10 s (discogs-maest-10s-*; 9 x 62)",
    "maest_20s": "MAEST 20 s (discogs-maest-20s-*; 9 x 125)",
    "maest_30s": "MAEST 30 s (discogs-maest-30s-*; 9 x 187)",
    "patchout": "PaSST-S layout, 12 x 768, 10 s of 96 bands (a PaSST AudioSet checkpoint)",
}

_TOP = {
    "patch_embed.proj.weight": "patch_embed.weight",
    "patch_embed.proj.bias": "patch_embed.bias",
    "freq_new_pos_embed": "freq_pos",
    "time_new_pos_embed": "time_pos",
    "new_pos_embed": "token_pos",
    "cls_token": "cls_token",
    "dist_token": "dist_token",
    "norm.weight": "norm.weight",
    "norm.bias": "norm.bias",
    "head.0.weight": "classifier.norm.weight",
    "head.0.bias": "classifier.norm.bias",
    "head.1.weight": "classifier.linear.weight",
    "head.1.bias": "classifier.linear.bias",
}
_BLOCK_PARTS = {
    "norm1.weight": "norm1.weight",
    "norm1.bias": "norm1.bias",
    "attn.qkv.weight": "self_attn.in_proj_weight",
    "attn.qkv.bias": "self_attn.in_proj_bias",
    "attn.proj.weight": "self_attn.out_proj.weight",
    "attn.proj.bias": "self_attn.out_proj.bias",
    "norm2.weight": "norm2.weight",
    "norm2.bias": "norm2.bias",
    "mlp.fc1.weight": "linear1.weight",
    "mlp.fc1.bias": "linear1.bias",
    "mlp.fc2.weight": "linear2.weight",
    "mlp.fc2.bias": "linear2.bias",
}
_OURS_TOP = {ours: theirs for theirs, ours in _TOP.items()}
_OURS_BLOCK = {ours: theirs for theirs, ours in _BLOCK_PARTS.items()}
_LAYER_RE = re.compile(r"encoder\.layers\.(\d+)\.(.+)")
HEAD = "head.1.weight"
UNUSED_HEAD = ("head_dist.weight", "head_dist.bias")
FRONT_END = ("melspectrogram.spec.window", "melspectrogram.mel_scale.fb")
_WRAPPERS = ("state_dict", "model", "module")
_PREFIXES = ("net.", "module.", "model.")
SWA = "net_swa."


def reference_key(ours: str) -> str:
    """PaSST's name of one of our tensors."""
    if ours in _OURS_TOP:
        return _OURS_TOP[ours]
    m = _LAYER_RE.fullmatch(ours)
    if m and m[2] in _OURS_BLOCK:
        return f"blocks.{m[1]}.{_OURS_BLOCK[m[2]]}"
    raise WeightsImportError(f"no PaSST name for our tensor {ours!r}")


def unwrapped(state: Mapping[str, torch.Tensor], what: str) -> dict[str, torch.Tensor]:
    """The ViT's tensors: SWA weights when the checkpoint has them, prefixes cut,
    layouts we cannot map refused."""
    if any(key.startswith(SWA) for key in state):
        state = {key[len(SWA) :]: v for key, v in state.items() if key.startswith(SWA)}
    out = {}
    for key, value in state.items():
        prefix = next((p for p in _PREFIXES if key.startswith(p)), "")
        out[key[len(prefix) :]] = value
    if "pos_embed" in out:
        raise WeightsImportError(
            f"{what} is a plain ViT/DeiT checkpoint (pos_embed); convert it to PaSST's "
            "layout (freq/time position tables) first"
        )
    if any(key.startswith("audio_spectrogram_transformer.") for key in out):
        raise WeightsImportError(
            f"{what} is the Hugging Face (AST) export, whose positions are summed; "
            "import the original MAEST checkpoint instead"
        )
    return out


def _drop_front_end(state: dict[str, torch.Tensor], spec: InputSpec, what: str) -> None:
    pop_mel_front_end(state, *FRONT_END, spec, what, required=False)


def fit_positions(
    state: dict[str, torch.Tensor], spec: InputSpec, target: Mapping[str, torch.Tensor]
) -> None:
    """Resize the freq/time tables to the reference grid for `spec` as MAEST's
    `checkpoint_filter_fn` does (bicubic), then crop them to our patch grid."""
    freq, time = state.get("freq_new_pos_embed"), state.get("time_new_pos_embed")
    if freq is None or time is None or freq.dim() != 4 or time.dim() != 4:
        return  # rename_strict names what is missing or misshapen
    rows, cols = spec.n_mels // STRIDE, spec.frames // STRIDE
    if freq.shape[2] != rows or time.shape[3] != cols:
        freq = F.interpolate(freq.float(), size=(rows, 1), mode="bicubic", align_corners=False)
        time = F.interpolate(time.float(), size=(1, cols), mode="bicubic", align_corners=False)
    state["freq_new_pos_embed"] = freq[:, :, : target["freq_pos"].shape[2]]
    state["time_new_pos_embed"] = time[..., : target["time_pos"].shape[3]]


def to_ours(
    state: Mapping[str, torch.Tensor],
    target: Mapping[str, torch.Tensor],
    spec: InputSpec,
    what: str,
    head: bool = True,
) -> dict[str, torch.Tensor]:
    """A PaSST-layout state dict -> the tensors of a patchout model whose state dict is
    `target` (strict); without `head`, the tag head is neither read nor filled."""
    vit = unwrapped(state, what)
    _drop_front_end(vit, spec, what)
    for key in UNUSED_HEAD:
        vit.pop(key, None)
    if not head:
        vit = {k: v for k, v in vit.items() if not k.startswith("head.")}
        target = {k: v for k, v in target.items() if not k.startswith("classifier.")}
    fit_positions(vit, spec, target)
    mapping = {reference_key(ours): ours for ours in target}
    return rename_strict(vit, mapping, target, what)


def convert(state: Mapping[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    """A MAEST/PaSST checkpoint's state dict -> `model`'s state dict (strict)."""
    if model not in MODELS:
        raise WeightsImportError(f"--from maest/passt fills {', '.join(MODELS)}; not {model!r}")
    what = f"MAEST/PaSST checkpoint for {model}"
    vit = unwrapped(state, what)
    if HEAD not in vit:
        raise WeightsImportError(f"{what}: no tensor {HEAD!r} (the tag head)")
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        target = create_model(model, int(vit[HEAD].shape[0]), seed=None).state_dict()
    return to_ours(vit, target, get_entry(model).input_spec, what)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (weights_only), unwrapped from its container."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise WeightsImportError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # noqa: BLE001  (unpickling refused or a corrupt file)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise WeightsImportError(f"cannot read checkpoint {path}: {first}") from None
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsImportError(f"{path} does not hold a state dict of tensors")
    return obj


def load_passt_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Initialise a patchout model (any size, any length) from a PaSST/MAEST checkpoint
    file for fine-tuning: everything but the tag head, strictly; returns the keys left as
    initialised (the head's)."""
    own = model.state_dict()
    loaded = to_ours(read_state_dict(path), own, model.input_spec, str(path), head=False)
    model.load_state_dict(loaded, strict=False)
    return sorted(k for k in own if k not in loaded)


def init_from_checkpoint_file(
    model: torch.nn.Module, model_name: str, init: str, vocabulary: list[str]
) -> str:
    """`--init FILE` of a patchout run (the trainer's init hook): the transformer from a
    PaSST/MAEST checkpoint file, strictly (a tensor missing, extra or misshapen is one
    line), the tag head new for the run's `vocabulary`; returns what was loaded."""
    from tagtrain.models.patchout import PATCHOUT_MODELS

    if model_name not in PATCHOUT_MODELS:
        raise WeightsImportError(
            f"--init {init}: a checkpoint file initialises patchout models "
            f"({', '.join(PATCHOUT_MODELS)}), not {model_name}; use pretrained:NAME"
        )
    if not Path(init).is_file():
        raise WeightsImportError(f"--init {init}: no such checkpoint file")
    fresh = load_passt_weights(model, init)
    return (
        f"initialised from {init} (PaSST/MAEST layout), with a new {len(vocabulary)}-tag "
        f"head ({len(fresh)} tensors)"
    )
