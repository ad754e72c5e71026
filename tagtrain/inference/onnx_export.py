"""`export --run RUN --out OUT.onnx`: a run as one ONNX graph for serving.

The graph is the whole inference path of `tag` for one batch of windows: waveform ->
the run's features (log-mel or harmonic tensor, from the run's feature configuration) ->
the normalisation it trained with -> the model -> sigmoid. Input `waveform`: float32
[batch, samples], mono, in [-1, 1], at the run's sample rate, `samples` = the model's
window; output `probabilities`: float32 [batch, tags]. The batch axis is dynamic. As in
`tag`, a longer file is cut into windows and the probabilities averaged over them.
The vocabulary, sample rate and window length travel in the model's metadata.

`--pretrained NAME` (musicnn's published models: tagtrain.pretrained.cli) exports the
network alone: input `log_mel` float32 [batch, 96, 187], the official front
end's windows (tagtrain/pretrained/frontend.py: its float16 rounding and window cutting
stay outside the graph, so the graph's numbers are the published model's exactly).

The feature path is traced from the very code `tag` runs (`predict.pcm_input`), with one
substitution while tracing: the STFT is computed as a convolution with a windowed DFT
basis, which is the same arithmetic as `torch.stft` (centred, zero-padded, periodic Hann)
but exportable, where the complex `torch.stft` is not (the TorchScript exporter has no
complex tensors, and the dynamo exporter needs onnxscript). The test compares the ONNX
Runtime outputs with `tag`'s torch outputs.
"""

from __future__ import annotations

import contextlib
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from pipelines.core import features
from pipelines.core.flags import setting
from tagtrain.inference.predict import pcm_input, probabilities
from tagtrain.inference.trained_run import CHECKPOINTS, RunError, TrainedRun, load_run

OPSET = 17
PCM_SCALE = 32767.0  # DeviceInput divides int16 PCM by this


@dataclass
class ExportOptions:
    """`export`'s settings (`--pretrained` is added by tagtrain.pretrained.cli)."""

    run: str | None = setting(None, "run directory (config.json, best.pt, ...)")
    # --onnx: the flag's name before every command wrote with --out; argparse's `required`
    # would not count the hidden alias, so check() requires the value.
    out: Path | None = setting(
        None, "output .onnx file (required)", metavar="FILE.onnx", hidden_aliases=("--onnx",)
    )
    checkpoint: str = setting("best", "checkpoint of the run", choices=tuple(CHECKPOINTS))
    pretrained: str | None = None  # a published model instead of --run (no flag here)

    def check(self) -> None:
        if self.out is None:
            raise RunError("the following arguments are required: --out")
        if Path(self.out).suffix != ".onnx":
            raise RunError(f"--out must name a .onnx file, got {self.out}")


def dft_power_spectrogram(
    pcm: torch.Tensor, n_fft: int, hop: int, pad_mode: str = "reflect"
) -> torch.Tensor:
    """|STFT|^2 [..., n_fft//2+1, frames] as `features.power_spectrogram` computes it
    (centred frames padded by `pad_mode`, periodic Hann), with real convolutions only."""
    bins = n_fft // 2 + 1
    n = torch.arange(n_fft, dtype=torch.float64)
    f = torch.arange(bins, dtype=torch.float64)
    angle = 2.0 * math.pi * f[:, None] * n[None, :] / n_fft
    window = torch.hann_window(n_fft, periodic=True, dtype=torch.float64)
    basis = torch.cat([torch.cos(angle) * window, -torch.sin(angle) * window])
    kernel = basis.to(torch.float32, copy=True)[:, None, :].to(pcm.device)  # [2*bins, 1, n_fft]
    lead = pcm.shape[:-1]
    flat = pcm.reshape(-1, 1, pcm.shape[-1]).float()
    flat = nn.functional.pad(flat, (n_fft // 2, n_fft // 2), mode=pad_mode)
    spec = nn.functional.conv1d(flat, kernel, stride=hop)  # [N, 2*bins, frames]
    power = spec[:, :bins].square() + spec[:, bins:].square()
    return power.reshape(*lead, *power.shape[-2:])


@contextlib.contextmanager
def exportable_ops():
    """The STFT as a DFT convolution, and no fused transformer fast path (one
    `_transformer_encoder_layer_fwd` op that the exporter cannot translate)."""
    original = features.power_spectrogram
    fastpath = torch.backends.mha.get_fastpath_enabled()
    features.power_spectrogram = dft_power_spectrogram
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        features.power_spectrogram = original
        torch.backends.mha.set_fastpath_enabled(fastpath)


class ServingModel(nn.Module):
    """waveform [B, samples] in [-1, 1] -> probabilities [B, tags]: `tag`'s path."""

    def __init__(self, run: TrainedRun):
        super().__init__()
        self.model = run.model
        self.device_input = pcm_input(run)

    def forward(self, waveform: torch.Tensor) -> torch.Tensor:
        return probabilities(self.model)(self.device_input(waveform * PCM_SCALE))


class WindowModel(nn.Module):
    """Model input windows -> probabilities (a pretrained model's network alone)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return probabilities(self.model)(x)


def metadata(run: TrainedRun) -> dict[str, str]:
    return {
        "vocabulary": json.dumps(run.vocabulary),
        "sample_rate": str(run.spec.sample_rate),
        "window_samples": str(run.spec.samples),
        "model": run.model_name,
        "run": run.name,
        "input": "waveform: float32 [batch, window_samples], mono, in [-1, 1]",
        "output": "probabilities: float32 [batch, len(vocabulary)], sigmoid of the logits",
    }


def write_onnx(module: nn.Module, example: torch.Tensor, name: str, out: Path, meta: dict) -> Path:
    """Trace `module` on `example` into `out` (opset 17, dynamic batch) with `meta`."""
    import onnx

    out.parent.mkdir(parents=True, exist_ok=True)
    with exportable_ops(), torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module.eval(),
            (example,),
            str(out),
            dynamo=False,
            opset_version=OPSET,
            input_names=[name],
            output_names=["probabilities"],
            dynamic_axes={name: {0: "batch"}, "probabilities": {0: "batch"}},
        )
    graph = onnx.load(str(out))
    for key, value in meta.items():
        graph.metadata_props.add(key=key, value=value)
    onnx.save(graph, str(out))
    return out


def export_onnx(run: TrainedRun, out: Path, batch: int = 2) -> Path:
    """Write `out` for the run's whole `tag` path, on the CPU."""
    run.model.to("cpu").eval()
    run.device = torch.device("cpu")
    example = torch.zeros(batch, run.spec.samples)
    return write_onnx(ServingModel(run), example, "waveform", out, metadata(run))


def export_run(options: ExportOptions) -> int:
    """Load the run on the CPU and write its ONNX graph."""
    options.check()
    trained = load_run(options.run, options.checkpoint, "cpu")
    out = export_onnx(trained, Path(options.out))
    print(
        f"wrote {out}: {trained.model_name}, {len(trained.vocabulary)} tags, "
        f"windows of {trained.spec.samples} samples at {trained.spec.sample_rate} Hz"
    )
    return 0
