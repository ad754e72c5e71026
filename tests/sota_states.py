"""Seeded reference state dicts and inputs for the sota import golden (numpy + torch only,
so scripts/golden/make_sota_golden.py and tests/test_import_weights.py build the same
tensors from the same key/shape table).

Every tensor is drawn in the table's (the reference state dict's) order from one numpy
generator, at scales that keep a deep network's activations finite and informative:
He-scaled weights (std sqrt(2 / fan_in)), batch/layer-norm scales 1 + 0.1 N(0, 1),
biases and running means 0.1 N(0, 1), running variances and the harmonic Q uniform in
[0.5, 1.5), batch counters an integer. Inputs: dB values ~ N(0, 1) (as power, the
reference converts them to dB itself), PCM 0.1 N(0, 1).
"""

from __future__ import annotations

import math

import numpy as np
import torch

STATE_SEED = 20
INPUT_SEED = 21


def seeded_tensor(rng: np.random.Generator, key: str, shape, dtype: str) -> torch.Tensor:
    shape = tuple(int(s) for s in shape)
    if dtype == "int64":
        return torch.tensor(int(rng.integers(1, 10_000)), dtype=torch.int64).reshape(shape)
    if key.endswith(("running_var", "bw_Q")):
        value = 0.5 + rng.random(shape)
    elif len(shape) >= 2:
        fan_in = math.prod(shape[1:])
        value = rng.standard_normal(shape) * math.sqrt(2.0 / fan_in)
    elif key.endswith("weight"):
        value = 1.0 + 0.1 * rng.standard_normal(shape)
    else:
        value = 0.1 * rng.standard_normal(shape)
    return torch.from_numpy(np.asarray(value, dtype=np.float32))


def seeded_state(table, seed: int = STATE_SEED) -> dict[str, torch.Tensor]:
    """table: [(key, shape, dtype name)] in the reference state dict's order."""
    rng = np.random.default_rng(seed)
    return {key: seeded_tensor(rng, key, shape, dtype) for key, shape, dtype in table}


def seeded_input(kind: str, shape, seed: int = INPUT_SEED) -> torch.Tensor:
    """kind 'power' (a mel or STFT power whose dB is N(0, 1)) or 'pcm'."""
    rng = np.random.default_rng(seed)
    values = rng.standard_normal(tuple(shape))
    if kind == "power":
        values = 10.0 ** (values / 10.0)
    elif kind == "pcm":
        values = 0.1 * values
    else:
        raise ValueError(f"unknown input kind {kind!r}")
    return torch.from_numpy(values.astype(np.float32))


def to_db(power: torch.Tensor) -> torch.Tensor:
    """torchaudio's AmplitudeToDB for power (ref 1, amin 1e-10, no top_db), which is also
    our `compress(..., "db")`."""
    return 10.0 * torch.log10(torch.clamp(power, min=1e-10))
