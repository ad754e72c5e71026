"""What every importer shares: the error type, the strict renaming and the check of a
reference's front-end buffers against our front end."""

from __future__ import annotations

from collections.abc import Mapping

import torch

from pipelines.core.errors import UserError
from pipelines.core.features import MEL_NORMS, MEL_SCALES, mel_filterbank


class WeightsImportError(UserError):
    """A checkpoint that does not fit the model it is imported into (one line)."""


def rename_strict(
    source: Mapping[str, torch.Tensor],
    mapping: Mapping[str, str],
    target: Mapping[str, torch.Tensor],
    what: str,
) -> dict[str, torch.Tensor]:
    """Rename `source` (reference keys) by `mapping` (reference key -> our key) into a
    state dict with exactly `target`'s keys and shapes; `what` names the checkpoint in
    errors. The first key left over, missing or of another shape is the error."""
    for key in source:
        if key not in mapping:
            raise WeightsImportError(f"{what}: unexpected tensor {key!r} in the checkpoint")
    out: dict[str, torch.Tensor] = {}
    for ref_key, our_key in mapping.items():
        if ref_key not in source:
            raise WeightsImportError(f"{what}: the checkpoint has no tensor {ref_key!r}")
        if our_key not in target:
            raise WeightsImportError(f"{what}: the model has no tensor {our_key!r}")
        value = source[ref_key]
        if tuple(value.shape) != tuple(target[our_key].shape):
            raise WeightsImportError(
                f"{what}: {ref_key!r} has shape {tuple(value.shape)}, "
                f"the model's {our_key!r} needs {tuple(target[our_key].shape)}"
            )
        out[our_key] = value.to(target[our_key].dtype)
    for key in target:
        if key not in out:
            raise WeightsImportError(f"{what}: nothing in the checkpoint fills {key!r}")
    return out


# --- the reference's front-end buffers ------------------------------------------------------

# torchaudio's MelSpectrogram saves its window and mel filterbank with the weights. They
# are not weights of ours: our front end computes the model's input itself, so a
# checkpoint's buffers must be what that front end uses for the model's InputSpec. The
# filterbank tolerance is relative to its largest value: torchaudio builds it in float32,
# librosa (ours) in float64, and on the published sota checkpoints they differ by 1.1e-5
# of it (tests/test_front_end_reference.py); a different mel scale or norm differs by
# 0.99 of it, another f_min, f_max (even by 100 Hz) or sample rate by > 0.4.
FILTERBANK_RTOL = 1e-3
WINDOW_ATOL = 1e-6


def check_window(value: torch.Tensor, n_fft: int, key: str, what: str) -> None:
    """`value` must be the periodic Hann window of `n_fft` (torch.hann_window's default,
    what torchaudio uses and our STFT too)."""
    if tuple(value.shape) != (n_fft,):
        raise WeightsImportError(
            f"{what}: front-end tensor {key!r} has shape {tuple(value.shape)}, the model's "
            f"input (n_fft {n_fft}) needs {(n_fft,)}"
        )
    value = value.double()
    if _max_diff(value, torch.hann_window(n_fft, dtype=torch.float64)) <= WINDOW_ATOL:
        return
    symmetric = torch.hann_window(n_fft, periodic=False, dtype=torch.float64)
    kind = "a symmetric Hann window" if _max_diff(value, symmetric) <= WINDOW_ATOL else "a window"
    raise WeightsImportError(
        f"{what}: the checkpoint was trained on another front end: {key!r} is {kind}, "
        "ours is the periodic Hann window"
    )


def check_filterbank(value: torch.Tensor, spec, key: str, what: str) -> None:
    """`value` [n_fft/2+1, n_mels] (torchaudio's layout) must be our mel filterbank for
    `spec` (sample rate, n_fft, n_mels, f_min, f_max, mel_scale, mel_norm)."""
    shape = (spec.n_fft // 2 + 1, spec.n_mels)
    if tuple(value.shape) != shape:
        raise WeightsImportError(
            f"{what}: front-end tensor {key!r} has shape {tuple(value.shape)}, the model's "
            f"input needs {shape} (n_fft {spec.n_fft}, {spec.n_mels} mel bands)"
        )
    ours = (spec.mel_scale, spec.mel_norm)
    if _filterbank_matches(value, spec, *ours):
        return
    others = [(scale, norm) for scale in MEL_SCALES for norm in MEL_NORMS if (scale, norm) != ours]
    found = next((o for o in others if _filterbank_matches(value, spec, *o)), None)
    theirs = (
        f"mel_scale {found[0]}, mel_norm {found[1]}"
        if found
        else "another mel filterbank (sample rate, f_min/f_max or mel formula)"
    )
    raise WeightsImportError(
        f"{what}: the checkpoint was trained on another front end: {key!r} is {theirs}; "
        f"the model's input is mel_scale {ours[0]}, mel_norm {ours[1]}, "
        f"{spec.sample_rate} Hz, f {spec.f_min:g}-{spec.f_max:g} Hz"
    )


def _filterbank_matches(value: torch.Tensor, spec, mel_scale: str, mel_norm: str) -> bool:
    expected = mel_filterbank(
        spec.sample_rate, spec.n_fft, spec.n_mels, spec.f_min, spec.f_max, mel_scale, mel_norm
    ).T.double()
    scale = float(expected.abs().max())
    return _max_diff(value.double(), expected) <= FILTERBANK_RTOL * scale


def _max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def pop_mel_front_end(
    state: dict[str, torch.Tensor], window: str, fb: str, spec, what: str, required: bool
) -> None:
    """Check and remove a torchaudio MelSpectrogram's `window` and `fb` buffers from
    `state`; `required`: a checkpoint without them is refused (else they may be absent)."""
    for key in (window, fb):
        value = state.pop(key, None)
        if value is None:
            if required:
                raise WeightsImportError(f"{what}: the checkpoint has no front-end tensor {key!r}")
            continue
        if key == window:
            check_window(value, spec.n_fft, key, what)
        else:
            check_filterbank(value, spec, key, what)
