"""Checkpoints of the semi-supervised Music Tagging Transformer
(minzwon/semi-supervised-music-tagging-transformer, Won et al. 2021) -> our
`music_tagging_transformer*` models.

The reference saves `PLModel.state_dict()` (src/train.py): the network under `network.`,
the teacher of knowledge expansion under `teacher_network.` (empty unless the run was a
student's). Its README loads them by dropping the first 8 characters and every
`teacher*` key; so do we (a state dict already stripped is accepted too).

Reference key (after `network.`)              ours
    frontend.input_bn.*                       input.bn.*
    frontend.layerK.conv_1 / bn_1             front.{K-1}.conv1 / bn1
    frontend.layerK.conv_2 / bn_2             front.{K-1}.conv2 / bn2
    frontend.layerK.conv_3 / bn_3             front.{K-1}.shortcut.0 / shortcut.1
    frontend.fc.*                             to_tokens.*
    pos_embedding, cls_token                  positions.table, cls
    transformer.layers.I.0.fn.norm.*          encoder.layers.I.attention_norm.*
    transformer.layers.I.0.fn.fn.to_qkv       encoder.layers.I.qkv
    transformer.layers.I.0.fn.fn.to_out.0     encoder.layers.I.attention_out
    transformer.layers.I.1.fn.norm.*          encoder.layers.I.ffn_norm.*
    transformer.layers.I.1.fn.fn.net.{0,3}    encoder.layers.I.ffn.{0,3}
    mlp_head.0.* / mlp_head.1.*               norm.* / classifier.*

`spec.spectrogram.window` and `spec.mel_scale.fb` are torchaudio's fixed front-end
buffers (a Hann window, a mel filterbank), not weights: where present they must equal
what our front end uses for the model's InputSpec (torchaudio's defaults, as the
reference's) and are not loaded; our front end computes the mel itself (docs/FIDELITY.md,
"Importing published checkpoints").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

import torch

from tagtrain.models.registry import create_model, get_entry
from tagtrain.pretrained.importers.common import (
    WeightsImportError,
    pop_mel_front_end,
    rename_strict,
)

MODELS = {
    "music_tagging_transformer": "the teacher (teacher.ckpt: conv_ndim 128, attention_ndim 256)",
    "music_tagging_transformer_small": (
        "the released compact student (compact_student.ckpt: conv_ndim 128, attention_ndim 64)"
    ),
    "music_tagging_transformer_student": (
        "the paper's Table 4 student (conv_ndim 64, attention_ndim 64)"
    ),
}

NETWORK = "network."
TEACHER = "teacher_network."
HEAD = "mlp_head.1.weight"
FRONT_END = ("spec.spectrogram.window", "spec.mel_scale.fb")

# Our key (regex) -> the reference key, as a template of the match's groups.
_BLOCK = {"conv1": "conv_1", "bn1": "bn_1", "conv2": "conv_2", "bn2": "bn_2",
          "shortcut.0": "conv_3", "shortcut.1": "bn_3"}  # fmt: skip
_LAYER = {"attention_norm": "0.fn.norm", "qkv": "0.fn.fn.to_qkv",
          "attention_out": "0.fn.fn.to_out.0", "ffn_norm": "1.fn.norm",
          "ffn.0": "1.fn.fn.net.0", "ffn.3": "1.fn.fn.net.3"}  # fmt: skip
_FIXED = {"positions.table": "pos_embedding", "cls": "cls_token"}
_PREFIXES = {"input.bn.": "frontend.input_bn.", "to_tokens.": "frontend.fc.",
             "norm.": "mlp_head.0.", "classifier.": "mlp_head.1."}  # fmt: skip
_FRONT_RE = re.compile(r"front\.(\d+)\.(conv1|bn1|conv2|bn2|shortcut\.[01])\.(\w+)")
_LAYER_RE = re.compile(
    r"encoder\.layers\.(\d+)\.(attention_norm|qkv|attention_out|ffn_norm|ffn\.[03])\.(\w+)"
)  # noqa: E501


def reference_key(ours: str) -> str:
    """The reference's name (without `network.`) of one of our tensors."""
    if ours in _FIXED:
        return _FIXED[ours]
    if m := _FRONT_RE.fullmatch(ours):
        return f"frontend.layer{int(m[1]) + 1}.{_BLOCK[m[2]]}.{m[3]}"
    if m := _LAYER_RE.fullmatch(ours):
        return f"transformer.layers.{m[1]}.{_LAYER[m[2]]}.{m[3]}"
    for prefix, theirs in _PREFIXES.items():
        if ours.startswith(prefix):
            return theirs + ours[len(prefix) :]
    raise WeightsImportError(f"no reference name for our tensor {ours!r}")


def network_state(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The student/teacher network's tensors: `teacher_network.*` dropped, `network.` cut."""
    return {
        key[len(NETWORK) :] if key.startswith(NETWORK) else key: value
        for key, value in state.items()
        if not key.startswith(TEACHER)
    }


def _check_front_end(state: dict[str, torch.Tensor], model: str) -> None:
    """The torchaudio buffers, where present, must be our front end's for the model."""
    spec = get_entry(model).input_spec
    what = f"ssmtt checkpoint for {model}"
    pop_mel_front_end(state, *FRONT_END, spec, what, required=False)


def convert(state: Mapping[str, torch.Tensor], model: str) -> dict[str, torch.Tensor]:
    """A reference checkpoint's state dict -> `model`'s state dict (strict)."""
    if model not in MODELS:
        raise WeightsImportError(f"--from ssmtt fills {', '.join(MODELS)}; not {model!r}")
    net = network_state(state)
    if HEAD not in net:
        raise WeightsImportError(f"ssmtt checkpoint: no tensor {NETWORK}{HEAD} (the tag head)")
    _check_front_end(net, model)
    with torch.device("meta"):  # shapes only: nothing is allocated or initialised
        target = create_model(model, int(net[HEAD].shape[0]), seed=None).state_dict()
    mapping = {reference_key(ours): ours for ours in target}
    return rename_strict(net, mapping, target, f"ssmtt checkpoint for {model}")
