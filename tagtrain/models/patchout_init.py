"""Initialise a patchout transformer (MAEST) from a user-supplied PaSST checkpoint file.

Every MAEST result starts from pretrained transformer weights (PaSST-S trained on
AudioSet, or DeiT-B/384 converted to PaSST's layout by PaSST's code); nothing is downloaded
here: the user passes the file. The key mapping is strict: every weight of the model except
its tagging head must come from the checkpoint, and every checkpoint entry must map onto
the model or be one of the known heads, so a checkpoint of another architecture fails with
one line instead of silently leaving layers random.

PaSST (timm ViT naming) -> ours:

    patch_embed.proj.{weight,bias}      patch_embed.{weight,bias} (3 input channels summed)
    freq_new_pos_embed [1, D, F, 1]     freq_pos: the first F' rows (96 bands: 9 of 12)
    time_new_pos_embed [1, D, 1, T]     time_pos: the first T' columns, or linearly
                                        interpolated when the model has more (20/30 s)
    new_pos_embed, cls_token, dist_token  token_pos, cls_token, dist_token
    blocks.i.norm1 / norm2              encoder.layers.i.norm1 / norm2
    blocks.i.attn.qkv                   encoder.layers.i.self_attn.in_proj_{weight,bias}
    blocks.i.attn.proj                  encoder.layers.i.self_attn.out_proj
    blocks.i.mlp.fc1 / fc2              encoder.layers.i.linear1 / linear2
    norm                                norm
    head.*, head_dist.*                 not loaded: the tagging head is new (its classes
                                        differ, and ours averages CLS and dist first)

A DeiT file in timm's own layout (one `pos_embed` over a 2-D grid) is refused: PaSST's
conversion of it is what MAEST starts from.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
import torch.nn.functional as F

from pipelines.core.errors import UserError

_WRAPPERS = ("state_dict", "model", "module")
_PREFIXES = ("net.", "module.", "model.")
_IGNORED = re.compile(r"^(head|head_dist)\.")
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
}


class CheckpointError(UserError):
    """A pretrained-weights file that does not fit the model; one line."""


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint file (weights_only), unwrapped and de-prefixed."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint not found: {path}") from None
    except Exception as exc:  # noqa: BLE001  (unpickling refused or a corrupt file)
        raise CheckpointError(
            f"cannot read checkpoint {path}: {str(exc).splitlines()[0]}"
        ) from None
    for key in _WRAPPERS:
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    out = {}
    for key, value in obj.items():
        for prefix in _PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                break
        out[key] = value
    return out


def map_key(key: str) -> str | None:
    """Our parameter name for a PaSST key; None when the key is unknown."""
    if key in _TOP:
        return _TOP[key]
    match = re.fullmatch(r"blocks\.(\d+)\.(.+)", key)
    if match and match.group(2) in _BLOCK_PARTS:
        return f"encoder.layers.{match.group(1)}.{_BLOCK_PARTS[match.group(2)]}"
    return None


def _fit_positions(name: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Crop (or, for time, interpolate) a position table to the model's grid."""
    if name == "freq_pos" and value.shape[2] >= target.shape[2]:
        return value[:, :, : target.shape[2]]
    if name == "time_pos":
        if value.shape[3] >= target.shape[3]:
            return value[..., : target.shape[3]]
        stretched = F.interpolate(
            value[:, :, 0], size=target.shape[3], mode="linear", align_corners=True
        )
        return stretched[:, :, None]
    return value


def _converted(name: str, value: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    if name == "patch_embed.weight" and value.shape[1] == 3 and target.shape[1] == 1:
        value = value.sum(dim=1, keepdim=True)  # RGB DeiT filters on a one-channel mel
    if name in ("freq_pos", "time_pos") and value.dim() == 4:
        value = _fit_positions(name, value, target)
    if value.shape != target.shape:
        raise CheckpointError(
            f"checkpoint tensor for {name} has shape {tuple(value.shape)}, "
            f"the model needs {tuple(target.shape)}"
        )
    return value.to(target.dtype)


def load_passt_weights(model: torch.nn.Module, path: str | Path) -> list[str]:
    """Load a PaSST-layout checkpoint into a `PatchoutTransformer`; returns the model keys
    left as initialised (the tagging head). Raises CheckpointError on any mismatch."""
    state = read_state_dict(path)
    if "pos_embed" in state:
        raise CheckpointError(
            f"{path} is a plain ViT/DeiT checkpoint (pos_embed); convert it to PaSST's "
            "layout (freq/time position tables) first"
        )
    own = model.state_dict()
    loaded, unknown = {}, []
    for key, value in state.items():
        if _IGNORED.match(key):
            continue
        name = map_key(key)
        if name is None or name not in own:
            unknown.append(key)
            continue
        loaded[name] = _converted(name, value, own[name])
    if unknown:
        shown = ", ".join(sorted(unknown)[:5])
        raise CheckpointError(f"{path}: {len(unknown)} key(s) the model does not have: {shown}")
    missing = sorted(k for k in own if k not in loaded and not k.startswith("classifier."))
    if missing:
        shown = ", ".join(missing[:5])
        raise CheckpointError(f"{path}: {len(missing)} model weight(s) not in it: {shown}")
    model.load_state_dict(loaded, strict=False)
    return sorted(k for k in own if k not in loaded)
