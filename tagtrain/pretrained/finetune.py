"""`train --init pretrained:NAME`: start a `musicnn_tf` / `vgg_tf` run from musicnn's
published weights (the hook the trainer calls; see `init_from_pretrained`).

Everything is loaded strictly except the output layer when the run's vocabulary is not
the published one (MTT or MSD top-50 in their order): then the run keeps its own freshly
initialised head. Note on features: our shards' `log10_1p` mel is float32 throughout,
while the published models saw the mel rounded to float16 before the log (frontend.py,
"numpy1"); the difference is below one float16 step per bin.
"""

from __future__ import annotations

from torch import nn

from pipelines.core.errors import UserError
from tagtrain.pretrained.musicnn import (
    PRETRAINED,
    checkpoint_state_dict,
    musicnn_labels,
    musicnn_mapping,
    musicnn_package_dir,
    pretrained_spec,
    vgg_mapping,
)
from tagtrain.pretrained.tf_checkpoint import TFCheckpoint

INIT_PREFIX = "pretrained:"
HEAD = "classifier."


def parse_init(value: str) -> str:
    """'pretrained:musicnn-msd' -> 'musicnn-msd' (a one-line error otherwise)."""
    if not value.startswith(INIT_PREFIX):
        raise UserError(f"--init must be pretrained:NAME, got {value!r}")
    name = value[len(INIT_PREFIX) :]
    pretrained_spec(name)
    return name


def init_from_pretrained(
    model: nn.Module, model_name: str, init: str, vocabulary: list[str]
) -> str:
    """Load the published weights named by `init` into `model` (built as the registered
    `model_name` for `vocabulary`); returns one line saying what was loaded."""
    name = parse_init(init)
    spec = pretrained_spec(name)
    if model_name != spec.model:
        raise UserError(
            f"--init {init} holds {spec.model} weights, but the run's model is {model_name}"
        )
    published = musicnn_labels(spec.labels)
    same_head = list(vocabulary) == published
    reference = model if same_head else _with_published_head(model_name, len(published))
    mapping = musicnn_mapping() if spec.model == "musicnn_tf" else vgg_mapping()
    ckpt = TFCheckpoint(str(musicnn_package_dir() / spec.checkpoint) + "/")
    state = checkpoint_state_dict(ckpt, mapping, reference)
    if not same_head:
        state = {k: v for k, v in state.items() if not k.startswith(HEAD)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if unexpected or any(not k.startswith(HEAD) for k in missing) or (same_head and missing):
        raise UserError(f"--init {init}: cannot load {(unexpected or missing)[0]}")
    head = "its output layer" if same_head else f"a new {len(vocabulary)}-tag output layer"
    return f"initialised from {name} ({spec.checkpoint}, musicnn 0.1.0) with {head}"


def _with_published_head(model_name: str, n_classes: int) -> nn.Module:
    from tagtrain.models.registry import create_model

    return create_model(model_name, n_classes, seed=None)


__all__ = ["INIT_PREFIX", "PRETRAINED", "init_from_pretrained", "parse_init"]
