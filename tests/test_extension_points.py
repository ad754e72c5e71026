"""Each extension point is one place (docs/ARCHITECTURE.md): a throwaway model, deformation,
augmentation, metric and dataset builder added here, the way a contributor would, work end to end
without touching anything else."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pytest
import torch
from torch import nn

from manifests.__main__ import main as manifests_main
from manifests.builders import BenchmarkRows, BuildOptions, register_builder, track_row
from manifests.schema import read_manifest
from manifests.vocabulary import vocabulary_of
from pipelines.core import muda_compat
from pipelines.core.deformations import Deformation, DeformationError, parse_deformation
from pipelines.core.features import FeatureConfig
from pipelines.core.transforms import Augmentation
from tagtrain.models.registry import InputSpec, create_model, get_entry, register_model
from tagtrain.training.augment_chain import AugmentError, TrainingAugmentChain, resolve_chain


def test_a_model_is_one_registered_builder():
    spec = InputSpec(kind="mel", seconds=1.0, features=FeatureConfig(n_mels=16))

    @register_model("throwaway_mean_mel", spec)
    class MeanMel(nn.Module):
        def __init__(self, n_classes: int, width: float = 1.0):
            super().__init__()
            self.head = nn.Linear(16, n_classes)

        def forward(self, x):
            return self.head(x.mean(-1))

    assert get_entry("throwaway_mean_mel").input_spec.frames == 1 + 16000 // 256
    model = create_model("throwaway_mean_mel", n_classes=3)
    assert model(torch.zeros(2, 16, 63)).shape == (2, 3)


@dataclass(frozen=True)
class Halve(Deformation):
    """A throwaway deformation: clip at half the signal's range, via muda."""

    kind: ClassVar[str] = "throwaway_halve"

    def default_name(self):
        return "halve"

    def muda_step(self, rng, jam):
        transformer = muda_compat.Clipping(clip_limit=0.5)
        return transformer, next(transformer.states(jam))


def test_a_deformation_is_one_class():
    deformation = parse_deformation({"type": "throwaway_halve"})
    assert isinstance(deformation, Halve) and deformation.name == "halve"
    t = np.arange(16000) / 16000
    pcm = (0.8 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
    out, provenance = deformation.apply(pcm, 16000, np.random.default_rng(0))
    assert provenance["type"] == "throwaway_halve"
    assert abs(np.abs(out).max() - 0.4) < 1e-3
    with pytest.raises(DeformationError, match="unknown parameter"):
        parse_deformation({"type": "throwaway_halve", "gain": 2})


@dataclass(frozen=True)
class ScaledInversion(Augmentation):
    """A throwaway augmentation: the crop inverted and scaled by `gain`."""

    kind: ClassVar[str] = "throwaway_scaled_inversion"
    gain: float = 1.0

    def check(self):
        if self.gain <= 0:
            raise AugmentError(f"{self.kind}: gain must be positive")

    def process(self, samples, sample_rate):
        return -np.float32(self.gain) * samples


def test_an_augmentation_is_one_class_the_training_chain_uses_by_name():
    entries = resolve_chain([{"transform": "throwaway_scaled_inversion", "gain": 0.5}])
    assert entries == [{"transform": "throwaway_scaled_inversion", "p": 1.0, "gain": 0.5}]
    crop = (1000 * np.sin(np.arange(4000) / 7)).astype(np.int16)
    augment = TrainingAugmentChain(entries, sample_rate=16000)
    out, fired = augment.apply(crop, seed=3)
    assert fired == ("throwaway_scaled_inversion",)
    np.testing.assert_allclose(out, -0.5 * crop.astype(np.float32), rtol=1e-6)
    # p is the chain's: a half-probability entry fires on some seeds only, the same way
    # every time for a seed.
    half = TrainingAugmentChain([{"transform": "throwaway_scaled_inversion", "p": 0.5}], 16000)
    fires = [bool(half.apply(crop, seed)[1]) for seed in range(40)]
    assert 5 < sum(fires) < 35
    assert fires == [bool(half.apply(crop, seed)[1]) for seed in range(40)]
    # Its parameters are checked like every transform's, and the default chain (seed
    # 003's recipe) does not grow by defining one.
    with pytest.raises(AugmentError, match="unknown parameter"):
        resolve_chain([{"transform": "throwaway_scaled_inversion", "volume": 2}])
    with pytest.raises(AugmentError, match="gain must be positive"):
        resolve_chain([{"transform": "throwaway_scaled_inversion", "gain": 0}])
    assert "throwaway_scaled_inversion" not in {e["transform"] for e in resolve_chain("default")}


def test_deformations_and_augmentations_share_one_registry_of_named_transforms():
    from pipelines.core import deformations
    from pipelines.core.transforms import REGISTRY
    from tagtrain.training import augment_chain as augment

    # Two families, one registry: a name means one class within its family.
    assert REGISTRY["deformation"]["noise"] is deformations.Noise
    assert REGISTRY["augmentation"]["noise"] is augment.Noise
    assert REGISTRY["augmentation"]["throwaway_scaled_inversion"] is ScaledInversion
    with pytest.raises(TypeError, match="defined twice"):

        @dataclass(frozen=True)
        class AnotherGain(Augmentation):
            kind: ClassVar[str] = "gain"

    assert REGISTRY["augmentation"]["gain"] is augment.Gain


@register_builder(
    "throwaway-two-clips", help="two clips of a throwaway set", options=("split_variant",)
)
def two_clips(options: BuildOptions) -> BenchmarkRows:
    rows = [
        track_row("tw", options.dataset, split, f"clip{i}", f"clip{i}.mp3", ["loud"])
        for i, split in enumerate(("train", "test"))
    ]
    return BenchmarkRows(rows, ["loud", "quiet"], None, [f"variant {options.split_variant}"])


def test_a_dataset_builder_is_one_registered_function(tmp_path, capsys):
    assert manifests_main(["build", "--help"]) == 0
    listing = capsys.readouterr().out
    assert "throwaway-two-clips" in listing and "two clips of a throwaway set" in listing
    for name in ("clip0.mp3", "clip1.mp3"):
        (tmp_path / name).touch()
    out = tmp_path / "m.parquet"
    argv = ["--audio-root", str(tmp_path), "--out", str(out)]
    assert manifests_main(["build", "throwaway-two-clips", *argv, "--split-variant", "full"]) == 0
    assert "note: variant full" in capsys.readouterr().err
    table = read_manifest(out)
    assert sorted(table.column("key").to_pylist()) == ["tw_clip0", "tw_clip1"]
    assert set(table.column("dataset").to_pylist()) == {"throwaway-two-clips"}
    assert vocabulary_of(table) == ["loud", "quiet"]
    assert table.schema.metadata[b"builder"] == b"throwaway-two-clips"
    # An option it does not take is refused, naming the builders that take it; a
    # mistyped name is one line with a suggestion.
    assert manifests_main(["build", "throwaway-two-clips", *argv, "--msd-layout", "trackid"]) == 2
    assert "--msd-layout applies only to msd and msd-cals" in capsys.readouterr().err
    assert manifests_main(["build", "throwaway-two-clip", *argv]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "did you mean throwaway-two-clips?" in err
