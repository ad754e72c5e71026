"""`explain --run R FILE --tag T [--tag T2 ...] [--out heat.png]`: which
moments of a track drive a tag's prediction, for the attention models (CNNSA, the Music
Tagging Transformers), in the spirit of Won et al. 2019's heat maps.

Two curves over time, one value per token (CNNSA: 8 frames = 0.128 s; the transformer:
4 frames = 0.093 s; Won et al. 2019's own models: one frame = 0.016 s on the mel, 243
samples = 0.015 s on raw audio):

- attention: how much the [CLS] token of the last layer attends to each token (mean over
  heads; the curve sums to 1 per window). Model-wide, not per tag.
- contribution (per tag): the evidence that moment alone carries. `--mask-layers last`
  (the default, Won et al. 2019: "We manually changed the attention score of the last
  attention layer ... as 1 and set other parts as 0"): the earlier layers attend as
  trained, and in the last layer every query attends to that one token only (as the
  reference's vismodel.py `ManualAttentionVisualizer`: a one-hot attention row); minus
  the logit when the last layer attends to [CLS] alone (a constant per tag). `--mask-layers all` (what explain did
  before): attention in every layer may see only [CLS] and that one token, minus the logit
  when it sees [CLS] alone, so no other moment leaks in through the earlier layers.
  Positive where the moment speaks for the tag, negative where it speaks against it.
  (Hiding one token instead says little when the tag's sound repeats over many tokens:
  the others carry the same evidence.)

A track longer than the model's input is explained window by window (the windows `tag`
uses: `TrackWindows`, through the one `WindowPredictor`, in float32) and the curves are
joined. The figure shows the mel spectrogram, the tag x time
heat map of contributions and the curves; `--json FILE` writes the numbers.
"""

from __future__ import annotations

import json
import sys
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipelines.core.audio import AudioRejected
from pipelines.core.features import FeatureConfig, log_mel
from pipelines.core.flags import setting
from tagtrain.inference.predict import WindowPredictor, average, decode_windows, pcm_input
from tagtrain.inference.trained_run import CHECKPOINTS, RunError, TrainedRun, load_run

MASK_LAYERS = ("last", "all")


@dataclass
class ExplainOptions:
    file: str = setting("", "an audio file", positional=True, metavar="FILE")
    run: str = setting("", "run directory of an attention model", required=True)
    tag: list[str] = setting([], "a tag (repeatable)", repeat=True, required=True)
    out: str | None = setting(None, "write the heat map here (PNG)")
    json: str | None = setting(None, "write the curves here (JSON)", metavar="FILE")
    checkpoint: str = setting("best", "checkpoint of the run", choices=tuple(CHECKPOINTS))
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")
    mask_layers: str = setting(
        "last",
        "contribution: attention set to one token in the last layer (the paper) or in all",
        choices=MASK_LAYERS,
    )


def explainable(model: torch.nn.Module) -> bool:
    return all(hasattr(model, name) for name in ("tokens", "from_tokens", "token_frames"))


def seconds_per_token(model: torch.nn.Module, spec) -> float:
    """A waveform model says how many samples a token covers; a mel model, how many frames."""
    samples = getattr(model, "token_samples", None)
    if samples is not None:
        return samples / spec.sample_rate
    return model.token_frames * spec.hop / spec.sample_rate


def display_mel(device_input, window: torch.Tensor, spec) -> np.ndarray:
    """The mel shown above the curves: the model's own input, or for a waveform model a
    96-band log-mel of the window (for the eye only)."""
    x = device_input.raw(window)
    if spec.kind == "pcm":
        cfg = FeatureConfig(
            sample_rate=spec.sample_rate, n_fft=512, hop=256, n_mels=96,
            f_max=spec.sample_rate / 2,
        )  # fmt: skip
        x = log_mel(x.float().cpu(), cfg)
    return x[0].float().cpu().numpy()


@dataclass
class Explanation:
    tags: list[str]
    probability: np.ndarray  # [tags], mean over windows
    attention: np.ndarray  # [tokens]
    contribution: np.ndarray  # [tags, tokens]
    seconds_per_token: float
    mel: np.ndarray  # [n_mels, frames], the model's input before normalisation
    seconds: float

    def peak_seconds(self, i: int) -> float:
        return (int(np.argmax(self.contribution[i])) + 0.5) * self.seconds_per_token

    def to_json(self) -> dict:
        return {
            "tags": self.tags,
            "probability": self.probability.round(6).tolist(),
            "seconds_per_token": self.seconds_per_token,
            "attention": self.attention.round(6).tolist(),
            "contribution": self.contribution.round(6).tolist(),
            "peak_seconds": [round(self.peak_seconds(i), 3) for i in range(len(self.tags))],
        }


def _drop_key_mask(module, args, kwargs):
    """Forward pre-hook: the layer attends over every token whatever mask it is given."""
    if len(args) > 1:
        args = (args[0], None, *args[2:])
    if "key_mask" in kwargs:
        kwargs = {**kwargs, "key_mask": None}
    return args, kwargs


@contextmanager
def masking(model, mask_layers: str):
    """While inside, a key mask given to the model reaches the layers `mask_layers` names:
    every layer ("all"), or the last one only ("last"; the earlier ones drop it)."""
    if mask_layers not in MASK_LAYERS:
        raise ValueError(f"mask_layers must be one of {MASK_LAYERS}, not {mask_layers!r}")
    earlier = list(model.encoder.layers)[:-1] if mask_layers == "last" else []
    handles = [m.register_forward_pre_hook(_drop_key_mask, with_kwargs=True) for m in earlier]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


@torch.no_grad()
def explain_window(
    model, x: torch.Tensor, tag_index: list[int], batch: int = 64, mask_layers: str = "last"
):
    """One model input [1, ...] -> (attention [N], contribution [tags, N], probability)."""
    tokens = model.tokens(x)
    logits, maps = model.from_tokens(tokens, return_attention=True)
    attention = maps[-1][0, :, 0, 1:].mean(dim=0).float()
    attention = attention / attention.sum().clamp_min(1e-12)
    n = tokens.shape[1] - 1
    only_cls = torch.zeros(1, n + 1, dtype=torch.bool, device=tokens.device)
    only_cls[:, 0] = True
    # The paper's last-layer score is 1 on the token and 0 elsewhere, [CLS] included;
    # masking every layer keeps [CLS] visible so each layer has its own summary to update.
    with_cls = mask_layers == "all"
    evidence = []
    with masking(model, mask_layers):
        floor = model.from_tokens(tokens, key_mask=only_cls).float()[0, tag_index]
        for start in range(0, n, batch):
            rows = torch.arange(start, min(start + batch, n), device=tokens.device)
            mask = only_cls.repeat(len(rows), 1)
            mask[:, 0] = with_cls
            mask[torch.arange(len(rows)), rows + 1] = True  # +1: [CLS] comes first
            out = model.from_tokens(tokens.expand(len(rows), -1, -1), key_mask=mask)
            evidence.append(out.float()[:, tag_index])
    contribution = (torch.cat(evidence) - floor[None, :]).T
    probability = torch.sigmoid(logits.float())[0, tag_index]
    return attention.cpu().numpy(), contribution.cpu().numpy(), probability.cpu().numpy()


def _join(parts: list[np.ndarray], keep: list[int]) -> np.ndarray:
    """Concatenate per-window curves along the last axis, keeping `keep[i]` leading
    tokens of window i (the last window overlaps the one before it)."""
    return np.concatenate([p[..., -k:] if k < p.shape[-1] else p for p, k in zip(parts, keep)], -1)


def explain_file(
    run: TrainedRun, path: Path, tags: list[str], mask_layers: str = "last"
) -> Explanation:
    model, spec = run.model, run.spec
    if not explainable(model):
        raise RunError(
            f"explain needs an attention model (cnnsa, won2019_*, music_tagging_transformer*), "
            f"not {run.model_name}"
        )
    index = [run.vocabulary.index(t) for t in tags]
    windows, seconds = decode_windows(path, spec.sample_rate, spec.samples)
    device_input = pcm_input(run)
    # One window per forward, no autocast: the curves in float32.
    predictor = WindowPredictor(model, device_input, None, batch_size=1)
    per_window = predictor.batches(
        windows, lambda x: explain_window(model, x, index, mask_layers=mask_layers)
    )
    attention, contribution, probability, mels, keep = [], [], [], [], []
    for i, (a, c, p) in enumerate(per_window):
        attention.append(a)
        contribution.append(c)
        probability.append(p)
        mels.append(display_mel(device_input, windows[i : i + 1], spec))
        keep.append(max(1, round(len(a) * windows.new_samples(i) / spec.samples)))
    frames_keep = [
        max(1, round(m.shape[-1] * k / len(a))) for m, k, a in zip(mels, keep, attention)
    ]
    return Explanation(
        tags=tags,
        probability=average(np.stack(probability)),
        attention=_join(attention, keep),
        contribution=_join(contribution, keep),
        seconds_per_token=seconds_per_token(model, spec),
        mel=_join(mels, frames_keep),
        seconds=seconds,
    )


def plot(explanation: Explanation, out: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    e = explanation
    end = e.contribution.shape[1] * e.seconds_per_token
    fig, axes = plt.subplots(3, 1, figsize=(10, 7), sharex=True, height_ratios=[3, 1.2, 2])
    axes[0].imshow(
        e.mel, origin="lower", aspect="auto", cmap="magma", extent=(0, end, 0, e.mel.shape[0])
    )
    axes[0].set(ylabel="mel band", title=title)
    axes[1].imshow(
        e.contribution,
        aspect="auto",
        cmap="coolwarm",
        interpolation="nearest",
        extent=(0, end, len(e.tags) - 0.5, -0.5),
        vmin=-np.abs(e.contribution).max(),
        vmax=np.abs(e.contribution).max(),
    )
    labels = [f"{tag} (p={p:.2f})" for tag, p in zip(e.tags, e.probability)]
    axes[1].set(yticks=range(len(e.tags)), yticklabels=labels)
    t = (np.arange(e.contribution.shape[1]) + 0.5) * e.seconds_per_token
    for name, curve in zip(e.tags, e.contribution):
        axes[2].plot(t, curve, label=f"{name}: evidence")
    scale = np.abs(e.contribution).max() / max(e.attention.max(), 1e-12)
    axes[2].plot(t, e.attention * scale, color="gray", lw=1, label="attention (scaled)")
    axes[2].set(xlabel="time (s)", ylabel="evidence (logit)")
    axes[2].legend(loc="upper right", fontsize="small")
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)


def explain(options: ExplainOptions) -> int:
    """Explain the tags on the file: a line per tag, the heat map, the curves' JSON."""
    try:
        path = Path(options.file)
        if not path.is_file():
            raise RunError(f"no such file: {path}")
        trained = load_run(options.run, options.checkpoint, options.device)
        unknown = [t for t in options.tag if t not in trained.vocabulary]
        if unknown:
            raise RunError(
                f"unknown tag(s) {', '.join(unknown)}; the run knows: "
                f"{', '.join(trained.vocabulary)}"
            )
        explanation = explain_file(trained, path, options.tag, options.mask_layers)
    except AudioRejected as exc:
        print(f"error: {options.file}: {exc}", file=sys.stderr)
        return 1
    for i, tag in enumerate(explanation.tags):
        print(
            f"{tag}: p={explanation.probability[i]:.3f}, strongest at "
            f"{explanation.peak_seconds(i):.2f} s"
        )
    if options.out:
        plot(explanation, Path(options.out), f"{path.name} ({trained.model_name})")
        print(f"heat map: {options.out}")
    if options.json:
        Path(options.json).write_text(json.dumps(explanation.to_json(), indent=2))
    return 0
