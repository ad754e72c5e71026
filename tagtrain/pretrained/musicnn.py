"""musicnn's published checkpoints (the `musicnn` 0.1.0 wheel, ISC licence; see
LICENSE-musicnn next to this file) converted to `musicnn_tf` / `vgg_tf`.

The wheel is installed with `pip install --no-deps musicnn==0.1.0`: only its data files
are used (TF checkpoints and the label lists in `musicnn/configuration.py`, which imports
nothing); no TensorFlow. The TF1 layers were named by creation order
(`conv2d`, `conv2d_1`, ..., `batch_normalization_N`), so the mapping below follows the
order in which `musicnn/models.py` builds its graph. Loading is strict: every model
variable of the checkpoint is used, every parameter and buffer of ours is set, shapes
must agree; the first mismatch is a one-line `CheckpointError`. Adam slots and the
optimizer's counters are the only variables skipped.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from tagtrain.pretrained.tf_checkpoint import CheckpointError, TFCheckpoint


@dataclass(frozen=True)
class PretrainedSpec:
    name: str  # our name, e.g. "musicnn-mtt"
    checkpoint: str  # the folder in the musicnn package, e.g. "MTT_musicnn"
    model: str  # our registered model
    labels: str  # the label list in musicnn/configuration.py


PRETRAINED = {
    spec.name: spec
    for spec in (
        PretrainedSpec("musicnn-mtt", "MTT_musicnn", "musicnn_tf", "MTT_LABELS"),
        PretrainedSpec("musicnn-msd", "MSD_musicnn", "musicnn_tf", "MSD_LABELS"),
        PretrainedSpec("vgg-mtt", "MTT_vgg", "vgg_tf", "MTT_LABELS"),
        PretrainedSpec("vgg-msd", "MSD_vgg", "vgg_tf", "MSD_LABELS"),
    )
}

_OPTIMIZER_VARIABLES = ("beta1_power", "beta2_power", "global_step")


def pretrained_spec(name: str) -> PretrainedSpec:
    if name not in PRETRAINED:
        raise CheckpointError(
            f"unknown pretrained model {name!r}; known: {', '.join(sorted(PRETRAINED))}"
        )
    return PRETRAINED[name]


def musicnn_package_dir() -> Path:
    """The installed `musicnn` package's folder, found without importing it (its
    `extractor` and `tagger` modules import TensorFlow)."""
    spec = importlib.util.find_spec("musicnn")
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            "the musicnn package is not installed: pip install --no-deps musicnn==0.1.0"
        )
    return Path(next(iter(spec.submodule_search_locations)))


def musicnn_labels(list_name: str) -> list[str]:
    """A label list of musicnn/configuration.py, read as a literal (nothing executed)."""
    source = (musicnn_package_dir() / "configuration.py").read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.Assign) and any(
            isinstance(t, ast.Name) and t.id == list_name for t in node.targets
        ):
            return list(ast.literal_eval(node.value))
    raise CheckpointError(f"musicnn/configuration.py has no {list_name}")


# --- name mapping: TF variable -> (our parameter, how to lay it out) -------------------------


def _bn(tf_name: str, ours: str) -> dict[str, tuple[str, str]]:
    return {
        f"{tf_name}/gamma": (f"{ours}.weight", "copy"),
        f"{tf_name}/beta": (f"{ours}.bias", "copy"),
        f"{tf_name}/moving_mean": (f"{ours}.running_mean", "copy"),
        f"{tf_name}/moving_variance": (f"{ours}.running_var", "copy"),
    }


def _layer(tf_name: str, ours: str, kind: str) -> dict[str, tuple[str, str]]:
    return {
        f"{tf_name}/kernel": (f"{ours}.weight", kind),
        f"{tf_name}/bias": (f"{ours}.bias", "copy"),
    }


def _numbered(base: str, i: int) -> str:
    return base if i == 0 else f"{base}_{i}"


def musicnn_mapping() -> dict[str, tuple[str, str]]:
    """build_musicnn's creation order: input BN; 5 front-end conv+BN; 3 mid-end conv+BN;
    pooled BN; dense; dense BN; output dense."""
    m = _bn("batch_normalization", "input_bn")
    for i in range(5):
        m |= _layer(_numbered("conv2d", i), f"front.{i}.conv", "conv2d")
        m |= _bn(_numbered("batch_normalization", i + 1), f"front.{i}.bn")
    for i in range(3):
        m |= _layer(_numbered("conv2d", i + 5), f"mid.{i}.conv", "conv1d")
        m |= _bn(_numbered("batch_normalization", i + 6), f"mid.{i}.bn")
    m |= _bn("batch_normalization_9", "pool_bn")
    m |= _layer("dense", "dense", "dense")
    m |= _bn("batch_normalization_10", "dense_bn")
    m |= _layer("dense_1", "classifier", "dense")
    return m


def vgg_mapping() -> dict[str, tuple[str, str]]:
    m = _bn("batch_normalization", "input_bn")
    for i in range(5):
        m |= _layer(f"{i + 1}CNN", f"convs.{i}", "conv2d")
        m |= _bn(f"batch_normalization_{i + 1}", f"bns.{i}")
    m |= _layer("dense", "classifier", "dense")
    return m


def tf_to_torch(array: np.ndarray, kind: str) -> np.ndarray:
    """TF layouts -> torch: conv2d HWIO -> OIHW; a mid-end conv2d whose kernel spans all
    of its (channel-as-height) input, [7, C, 1, O] -> Conv1d [O, C, 7]; dense [in, out]
    -> Linear [out, in]."""
    if kind == "conv2d":
        return array.transpose(3, 2, 0, 1)
    if kind == "conv1d":
        if array.ndim != 4 or array.shape[2] != 1:
            raise CheckpointError(f"mid-end kernel of shape {array.shape} is not [7, C, 1, O]")
        return array[:, :, 0, :].transpose(2, 1, 0)
    if kind == "dense":
        return array.T
    return array


def checkpoint_state_dict(
    ckpt: TFCheckpoint, mapping: dict[str, tuple[str, str]], model: nn.Module
) -> dict[str, torch.Tensor]:
    """Our state dict from the checkpoint, strictly (see the module docstring)."""
    ours = {k: v for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")}
    model_vars = [n for n in ckpt.names() if "/Adam" not in n and n not in _OPTIMIZER_VARIABLES]
    for name in model_vars:
        if name not in mapping:
            raise CheckpointError(f"{ckpt.prefix}: variable {name!r} has no place in the model")
    state = {}
    for tf_name, (key, kind) in mapping.items():
        if tf_name not in ckpt.entries:
            raise CheckpointError(f"{ckpt.prefix}: no variable {tf_name!r} (for {key})")
        if key not in ours:
            raise CheckpointError(f"model has no {key!r} (for {tf_name})")
        value = tf_to_torch(ckpt.read(tf_name), kind)
        if tuple(value.shape) != tuple(ours[key].shape):
            raise CheckpointError(
                f"{tf_name} {tuple(value.shape)} does not fit {key} {tuple(ours[key].shape)}"
            )
        state[key] = torch.from_numpy(np.ascontiguousarray(value, dtype=np.float32))
    missing = sorted(set(ours) - set(state))
    if missing:
        raise CheckpointError(f"checkpoint {ckpt.prefix} sets no value for {missing[0]}")
    return state


def load_pretrained(name: str) -> tuple[nn.Module, list[str]]:
    """(model in eval mode with the published weights, its vocabulary)."""
    from tagtrain.models.registry import create_model

    spec = pretrained_spec(name)
    labels = musicnn_labels(spec.labels)
    model = create_model(spec.model, len(labels), seed=None)
    ckpt = TFCheckpoint(str(musicnn_package_dir() / spec.checkpoint) + "/")
    mapping = musicnn_mapping() if spec.model == "musicnn_tf" else vgg_mapping()
    model.load_state_dict(checkpoint_state_dict(ckpt, mapping, model), strict=False)
    return model.eval(), labels
