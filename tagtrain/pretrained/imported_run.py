"""`import-weights --from SOURCE PATH --model NAME --vocabulary V --out RUN`: turn a published checkpoint the user brings into a run directory of ours.

The file is read with `torch.load(weights_only=True)` (nothing unpickled beyond tensors
and plain containers), unwrapped from its container, renamed onto our registered model by
the source's importer (`tagtrain.pretrained.importers`: strict, the first mismatch is one
line) and loaded strictly. The run directory is what training writes for `load_run`:
`config.json` and `best.pt` in the trainer's checkpoint format (model name, vocabulary,
input plan from the model's InputSpec, no dataset statistics), so `evaluate`, `tag --run`,
`embed --run` and `robustness` take it like a trained run. `imported.json` (and the
checkpoint's `imported` entry) records where the weights came from: source, path, sha256,
the reference architecture.

A reference that computed its input inside the model saved its front end's buffers with
the weights (torchaudio's window and mel filterbank); the importer checks that they are
what our front end computes for the model's InputSpec and refuses a checkpoint trained on
another one, so the run reads the pipeline's mel like a trained run.

A named `--vocabulary` is manifests' label list; an importer module may define
`label_order(name, tags)` when its checkpoints order that benchmark's tags otherwise (sota's
MTAT order swaps two tags).
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import torch

from pipelines.core.errors import first_line
from pipelines.core.flags import setting
from pipelines.core.storage import file_sha256
from tagtrain.pretrained.importers import SOURCES, WeightsImportError, importer

# Keys under which the references' training code stores the weights in a larger dict.
CONTAINER_KEYS = ("state_dict", "model", "model_state_dict", "net", "network", "weights")

# --vocabulary NAME -> the label list (in label order) of manifests/splits.
VOCABULARIES = {
    "mtt": "mtat/tags.txt",
    "msd": "msd/tags.txt",
    "msd-cals": "msd/cals/tags.txt",
    "jamendo": "mtg-jamendo/top50tags/tags.txt",
    "jamendo-genre": "mtg-jamendo/genre/tags.txt",
    "jamendo-instrument": "mtg-jamendo/instrument/tags.txt",
    "jamendo-moodtheme": "mtg-jamendo/moodtheme/tags.txt",
}


@dataclass
class ImportOptions:
    path: str = setting(
        "", "the checkpoint file (.pth, .ckpt, .pt)", positional=True, metavar="PATH"
    )  # fmt: skip
    source: str = setting(
        "", "whose checkpoint: sota (minzwon/sota-music-tagging-models), ssmtt "
        "(semi-supervised music tagging transformer), maest, passt",
        option="--from", choices=sorted(SOURCES), required=True,
    )  # fmt: skip
    model: str = setting("", "our registered model to fill", required=True)
    vocabulary: str = setting(
        "", f"the checkpoint's tags in output order: {', '.join(VOCABULARIES)}, or a file "
        "with one tag per line (or a JSON list)", required=True,
    )  # fmt: skip
    out: str = setting("", "run directory to write", required=True)


def import_weights(args: ImportOptions) -> int:
    """Convert the checkpoint and write the run directory."""
    path, out = Path(args.path), Path(args.out)
    source = importer(args.source)
    if args.model not in source.MODELS:
        raise WeightsImportError(
            f"--from {args.source} has no weights for model {args.model!r}; it fills "
            f"{', '.join(sorted(source.MODELS))}"
        )
    _refuse_existing_run(out)
    vocabulary = read_vocabulary(args.vocabulary)
    if args.vocabulary in VOCABULARIES and hasattr(source, "label_order"):
        # A source whose checkpoints order a benchmark's tags differently says so.
        vocabulary = source.label_order(args.vocabulary, vocabulary)
    state = unwrap(load_weights(path), str(path))
    refuse_non_finite(state, str(path))
    converted = source.convert(state, args.model)
    n_classes = output_classes(converted)
    if len(vocabulary) != n_classes:
        raise WeightsImportError(
            f"--vocabulary {args.vocabulary} has {len(vocabulary)} tags, the checkpoint's "
            f"output layer {n_classes}"
        )
    model = build_model(args.model, converted, n_classes)
    provenance = {
        "source": args.source,
        "reference": source.MODELS[args.model],
        "model": args.model,
        "tags": n_classes,
        "path": str(path.resolve()),
        "sha256": file_sha256(path),
        "vocabulary": args.vocabulary,
    }
    write_run(out, args.model, model, vocabulary, provenance)
    print(
        f"imported {provenance['reference']} weights ({path.name}, sha256 "
        f"{provenance['sha256'][:12]}) into {args.model} with {n_classes} tags: {out}"
    )
    return 0


# --- reading ------------------------------------------------------------------------------


def load_weights(path: Path):
    if not path.is_file():
        raise WeightsImportError(f"no checkpoint file at {path}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001  (any unreadable file is one message)
        raise WeightsImportError(f"cannot load {path}: {first_line(exc, 200)}") from None


def _is_state_dict(value) -> bool:
    return (
        isinstance(value, Mapping)
        and bool(value)
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in value.items())
    )


def unwrap(payload, what: str) -> dict[str, torch.Tensor]:
    """The state dict in `payload`: the payload itself (sota's `best_model.pth`), or the
    one under a container key (Lightning's 'state_dict', 'model', ...), one level deep.
    A `module.` prefix on every key (DataParallel) is removed."""
    state = payload if _is_state_dict(payload) else None
    if state is None and isinstance(payload, Mapping):
        for key in CONTAINER_KEYS:
            inner = payload.get(key)
            if _is_state_dict(inner):
                state = inner
                break
            if isinstance(inner, Mapping) and _is_state_dict(inner.get("state_dict")):
                state = inner["state_dict"]
                break
    if state is None:
        keys = list(payload)[:6] if isinstance(payload, Mapping) else type(payload).__name__
        raise WeightsImportError(f"{what} holds no state dict of tensors (found {keys})")
    if all(k.startswith("module.") for k in state):
        state = {k.removeprefix("module."): v for k, v in state.items()}
    return dict(state)


def read_vocabulary(value: str) -> list[str]:
    if value in VOCABULARIES:
        from manifests.tables import read_tag_list

        return read_tag_list(VOCABULARIES[value])
    path = Path(value)
    if not path.is_file():
        raise WeightsImportError(
            f"--vocabulary must be one of {', '.join(VOCABULARIES)} or a file; no file {value}"
        )
    text = path.read_text(encoding="utf-8")
    if text.lstrip().startswith("["):
        try:
            tags = json.loads(text)
        except ValueError as exc:
            raise WeightsImportError(f"--vocabulary {value}: not a JSON list ({exc})") from None
    else:
        tags = [line.strip() for line in text.splitlines() if line.strip()]
    if not isinstance(tags, list) or not tags or not all(isinstance(t, str) for t in tags):
        raise WeightsImportError(f"--vocabulary {value}: expected a non-empty list of tags")
    if len(set(tags)) != len(tags):
        raise WeightsImportError(f"--vocabulary {value}: a tag appears twice")
    return tags


# --- our model and run ---------------------------------------------------------------------


def refuse_non_finite(state: Mapping, source: str) -> None:
    """WeightsImportError naming the checkpoint's first tensor with a NaN or an infinity
    (such weights tag everything NaN); named as the checkpoint names it."""
    from tagtrain.run.checkpoint import CheckpointError, check_finite

    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    try:
        check_finite(tensors, source)
    except CheckpointError as exc:
        raise WeightsImportError(str(exc)) from None


def output_classes(state: Mapping[str, torch.Tensor]) -> int:
    """Tags of our converted state dict: the rows of the classifier's output weight."""
    weights = [v for k, v in state.items() if k.startswith("classifier.") and k.endswith("weight")]
    matrices = [w for w in weights if w.dim() == 2]
    if not matrices:
        raise WeightsImportError("the converted weights have no classifier output layer")
    return int(matrices[-1].shape[0])


def build_model(name: str, state: Mapping[str, torch.Tensor], n_classes: int) -> torch.nn.Module:
    """Our registered model with `state` loaded strictly, in eval mode."""
    from tagtrain.models.registry import create_model

    model = create_model(name, n_classes, seed=0)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise WeightsImportError(f"{name}: {first_line(exc, 300)}") from None
    return model.eval()


def input_plan(spec) -> dict:
    """The plan a run of this model trains with, from its InputSpec alone (no dataset):
    the model's own features, no per-band statistics."""
    from pipelines.core.features import FeatureConfig
    from tagtrain.loader import plan_input

    fields = {f.name for f in dataclasses.fields(FeatureConfig)}
    features = FeatureConfig.from_dict({k: v for k, v in spec.to_dict().items() if k in fields})
    card = {"features": {**features.to_dict(), "stored": [spec.kind]}}
    return dataclasses.asdict(plan_input(card, spec, source="the model's input"))


def _refuse_existing_run(out: Path) -> None:
    from tagtrain.run.directory import RunDir

    rundir = RunDir(out)
    if rundir.has_run() or rundir.checkpoint("best").exists():
        raise WeightsImportError(f"--out {out} already holds a run; choose another directory")


def write_run(
    out: Path,
    name: str,
    model: torch.nn.Module,
    vocabulary: list[str],
    provenance: dict,
) -> None:
    from tagtrain.run.checkpoint import save_checkpoint
    from tagtrain.run.config import RunConfig
    from tagtrain.run.directory import RunDir

    rundir = RunDir(out)
    rundir.create()
    config = RunConfig(model=name, out=str(out))
    payload = {
        "model": model.state_dict(),
        "config": config.to_json(),
        "model_name": name,
        "width": config.width,
        "model_setup": {},
        "vocabulary": list(vocabulary),
        "card_checksum": "",
        "input_plan": input_plan(model.input_spec),
        "normalisation": {"mean": None, "std": None, "source": "none (imported weights)"},
        "imported": provenance,
    }
    (rundir / RunDir.CONFIG).write_text(config.to_json() + "\n")
    (rundir / RunDir.IMPORTED).write_text(json.dumps(provenance, indent=2) + "\n")
    save_checkpoint(rundir.checkpoint("best"), payload)
