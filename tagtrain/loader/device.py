"""On the training device: a loader batch becomes the model's input."""

from __future__ import annotations

import torch

from pipelines.core.features import harmonic_tensor, log_mel
from tagtrain.loader.input_plan import InputPlan


class DeviceInput:
    """Turns a loader batch into the model's input on the device: PCM to float (and to
    the model's mel/harmonic tensor when the plan says so), then the plan's
    standardisation of a mel/harmonic input: "band" (per-band mean/std, the card's or
    estimated: `set_stats`), "global" (one mean/std pair) or "none".
    Evaluation batches [B, chunks, ...] are flattened to [B * chunks, ...]."""

    def __init__(self, plan: InputPlan, device: torch.device, mean=None, std=None):
        self.plan = plan
        self.device = device
        self.features = plan.feature_config
        mean = mean if mean is not None else plan.mean
        std = std if std is not None else plan.std
        self.set_stats(mean, std)

    def set_stats(self, mean, std) -> None:
        if mean is None or std is None:
            self.mean = self.std = None
            return
        self.mean = torch.as_tensor(mean, dtype=torch.float32, device=self.device)[:, None]
        self.std = torch.as_tensor(std, dtype=torch.float32, device=self.device).clamp_min(1e-5)[
            :, None
        ]

    def raw(self, x: torch.Tensor) -> torch.Tensor:
        """Un-normalised model input (float32 on the device)."""
        x = x.to(self.device, non_blocking=True)
        if self.plan.member == "pcm.npy":
            x = x.float() / 32767.0
            if self.plan.device_feature == "mel":
                x = log_mel(x, self.features)
            elif self.plan.device_feature == "harm":
                x = harmonic_tensor(x, self.features)
            return x
        return x.float()

    def __call__(self, x: torch.Tensor, chunked: bool = False) -> torch.Tensor:
        if chunked:
            x = x.reshape(-1, *x.shape[2:])
        x = self.raw(x)
        standardize = getattr(self.plan, "standardize", "band")
        if standardize == "global" and self.plan.kind in ("mel", "harm"):
            mean, std = self.plan.global_stats
            x = (x - mean) / max(std, 1e-5)
        elif standardize == "band" and self.mean is not None and self.plan.kind == "mel":
            x = (x - self.mean) / self.std
        return x


def estimate_mel_stats(reader_batches, device_input: DeviceInput, max_batches: int = 8):
    """Per-band mean/std from a few batches, for cards without usable mel_stats."""
    total, total_sq, count = None, None, 0
    for i, batch in enumerate(reader_batches):
        if i >= max_batches:
            break
        mel = device_input.raw(batch.x).double()  # [B, n_mels, frames]
        s, sq = mel.sum(dim=(0, 2)), mel.square().sum(dim=(0, 2))
        total = s if total is None else total + s
        total_sq = sq if total_sq is None else total_sq + sq
        count += mel.shape[0] * mel.shape[2]
    if not count:
        return None, None
    mean = total / count
    std = (total_sq / count - mean.square()).clamp_min(0).sqrt()
    return mean.float().tolist(), std.float().tolist()
