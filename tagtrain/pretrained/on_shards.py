"""A published model as a `TrainedRun`: `evaluate --pretrained NAME` and
`robustness --pretrained NAME` score musicnn's published weights on prepared shards
through the one inference path (tagtrain.inference.predict), exactly as they score our runs.

The published models need their own front end (frontend.py: 16 kHz, 96 bands, the mel
rounded to float16 before `log10(1 + 10000 mel)`), which no prepared mel is. So the model
is fed the shards' stored PCM (a card with `pcm` at 16 kHz, as `make demo` prepares) and
computes that front end on the device, per crop: the same evenly spaced chunks
(`--chunks`) our models are evaluated on. A crop carries half an FFT frame of audio on
either side of its 187 frames, so every frame is the one the official front end computes
from the whole track (no zero padding inside the track). The one difference from `tag
--pretrained` (musicnn's extractor) is where the windows are: consecutive windows from
the track's start there, the evaluation protocol's evenly spaced crops here.

Tags are scored on the intersection of the published vocabulary and the dataset's, in
the dataset's order; the dataset's other tags are listed as not scored (never counted as
misses), the model's other outputs are ignored.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.inference.trained_run import RunError, TrainedRun
from tagtrain.loader import plan_input
from tagtrain.models.registry import InputSpec
from tagtrain.pretrained import frontend
from tagtrain.pretrained.musicnn import (
    load_pretrained,
    musicnn_package_dir,
    pretrained_spec,
)
from tagtrain.run.config import RunConfig
from tagtrain.run.runtime import resolve_device

# One window of 187 frames spans 186 hops; CONTEXT samples more on each side are the
# outer halves of its first and last FFT frame.
CONTEXT = frontend.N_FFT // 2
CROP_SAMPLES = (frontend.WINDOW_FRAMES - 1) * frontend.HOP + 2 * CONTEXT
PCM_INPUT = InputSpec(
    kind="pcm",
    seconds=CROP_SAMPLES / frontend.SAMPLE_RATE,
    features=FeatureConfig(sample_rate=frontend.SAMPLE_RATE),
    exact_samples=CROP_SAMPLES,
    standardize="none",
)


def published_log_mel(pcm: torch.Tensor, compression: str = "numpy1") -> torch.Tensor:
    """[B, 96, frames] for 16 kHz PCM [B, samples] in [-1, 1]: frontend.official_log_mel
    in torch (float32, outside any autocast), centred frames with zero padding."""
    from pipelines.core.features import mel_filterbank, power_spectrogram

    with torch.autocast(pcm.device.type, enabled=False):
        power = power_spectrogram(pcm.float(), frontend.N_FFT, frontend.HOP, "constant")
        fb = mel_filterbank(
            frontend.SAMPLE_RATE,
            frontend.N_FFT,
            frontend.N_MELS,
            0.0,
            frontend.SAMPLE_RATE / 2,
            "slaney",
            "slaney",
        )
        half = torch.matmul(fb.to(power.device), power).half()  # as astype(np.float16)
        if compression == "numpy1":
            return torch.log10(10000.0 * half.float() + 1.0)
        if compression == "numpy2":  # numpy's float16 ops: each in float32, then rounded
            scaled = (10000.0 * half.float()).half()  # overflows to +inf, as published today
            return torch.log10((scaled.float() + 1.0).half().float()).half().float()
    raise RunError(f"compression must be one of {frontend.COMPRESSIONS}, got {compression!r}")


class PublishedOnPCM(nn.Module):
    """The published model behind its own front end, reporting the `columns` of its
    output that the dataset also has (in the dataset's order)."""

    def __init__(self, model: nn.Module, columns: list[int], compression: str = "numpy1"):
        super().__init__()
        self.model = model
        self.compression = compression
        self.register_buffer("columns", torch.tensor(columns, dtype=torch.long))
        self.input_spec = PCM_INPUT

    def window(self, pcm: torch.Tensor) -> torch.Tensor:
        """[B, 96, 187] from crops [B, CROP_SAMPLES]: the frames whose FFT windows lie
        inside the crop (the first and last centred frame would see zero padding)."""
        return published_log_mel(pcm, self.compression)[..., 1 : 1 + frontend.WINDOW_FRAMES]

    def forward(self, pcm: torch.Tensor) -> torch.Tensor:
        return self.model(self.window(pcm))[:, self.columns]

    def embed(self, pcm: torch.Tensor) -> torch.Tensor:
        return self.model.embed(self.window(pcm))


def shared_tags(published: list[str], dataset: list[str]) -> tuple[list[str], list[int], list[int]]:
    """(tags both have, in the dataset's order; their columns in the dataset's label
    vector; their columns in the published output)."""
    where = {t: i for i, t in enumerate(published)}
    tags = [t for t in dataset if t in where]
    return tags, [dataset.index(t) for t in tags], [where[t] for t in tags]


def pretrained_run(
    name: str,
    data: str,
    card: dict,
    device: str = "auto",
    out: str | Path | None = None,
    compression: str = "numpy1",
) -> TrainedRun:
    """The published model `name` ready to be scored on `data` (whose card is `card`)."""
    spec = pretrained_spec(name)
    published_model, published = load_pretrained(name)
    dataset = [str(t) for t in card["vocabulary"]]
    tags, label_columns, model_columns = shared_tags(published, dataset)
    if not tags:
        raise RunError(f"{data}: none of its tags is in {name}'s vocabulary")
    model = PublishedOnPCM(published_model, model_columns, compression)
    try:
        plan = plan_input(card, model.input_spec, source=data)
    except ValueError as exc:  # CardError: the card stores no 16 kHz PCM
        raise RunError(
            f"{name} computes its own front end from PCM: {exc} (prepare with --features "
            "mel,pcm at 16000 Hz)"
        ) from None
    torch_device = resolve_device(device, 0)
    run_dir = Path(out) if out else Path("runs") / name
    config = RunConfig(data=data, model=spec.model, out=str(run_dir))
    return TrainedRun(
        dir=run_dir,
        config=config,
        checkpoint=musicnn_package_dir() / spec.checkpoint,
        model=model.to(torch_device).eval(),
        vocabulary=tags,
        plan=dataclasses.replace(plan, mean=None, std=None),
        mean=None,
        std=None,
        card_checksum="",
        device=torch_device,
        autocast_dtype=None,  # float32 as published
        label_columns=label_columns,
        unscored_tags=[t for t in dataset if t not in tags],
    )
