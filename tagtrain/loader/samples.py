"""One sample from its raw tar members to (input crop, label vector), or a counted reject.

Nothing here trusts a shard. The JSON member is size-bounded and parsed with any failure
(including RecursionError for deep nesting) caught; it must be an object whose `labels`
are integers in range (no bools, no floats) or whose `tags` are strings. The `.npy`
member's header is read first and refused unless its dtype, shape and byte size fit the
card's feature configuration; only then are its bytes viewed as an array (no copy, no
allocation from a claimed shape). The crops a model receives must be finite: only they are
checked, since a value outside them never reaches the model, and a crop is an eighth of a
30 s mel already in cache where the whole member, read a window ahead, is not. Every
failure becomes `SampleRejected(reason, detail)`, which the stream counts by reason and
skips.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Mapping, Sequence

import numpy as np
from numpy.lib import format as npy_format

from pipelines.core.errors import first_line
from tagtrain.loader.input_plan import InputPlan
from tagtrain.loader.shuffle import stable_int

MAX_JSON_BYTES = 1 << 20  # per-sample metadata: labels, tags, provenance
_NPY_DTYPES = {
    "mel.npy": ("float16", "float32", "float64"),
    "harm.npy": ("float16", "float32", "float64"),
    "pcm.npy": ("int16",),
}


class SampleRejected(Exception):
    """A sample that cannot be used: `reason` is a short fixed word used for counting."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


def parse_meta(data) -> dict:
    if len(data) > MAX_JSON_BYTES:
        raise SampleRejected("json", f"{len(data)} bytes (over {MAX_JSON_BYTES})")
    try:
        meta = json.loads(bytes(data))  # (a view of the shard: json reads bytes only)
    except (ValueError, RecursionError, OverflowError) as exc:
        raise SampleRejected("json", f"{type(exc).__name__}: {first_line(exc, 100)}") from None
    if not isinstance(meta, dict):
        raise SampleRejected("json", f"a JSON {type(meta).__name__}, not an object")
    return meta


def label_vector(meta: Mapping, tag_index: Mapping[str, int], size: int) -> np.ndarray:
    """The multi-hot label vector from `labels` (indices) or else `tags` (names)."""
    labels = meta.get("labels")
    if labels is None:
        tags = meta.get("tags", [])
        if not isinstance(tags, list) or not all(isinstance(t, str) for t in tags):
            raise SampleRejected("labels", "tags must be a list of strings")
        labels = [tag_index[t] for t in tags if t in tag_index]
    elif not isinstance(labels, list) or not all(type(v) is int and 0 <= v < size for v in labels):
        raise SampleRejected("labels", f"labels must be integers in 0..{size - 1}")
    y = np.zeros(size, dtype=np.float32)
    y[np.asarray(labels, dtype=np.int64)] = 1.0
    return y


def expected_leading_shape(member: str, features: Mapping) -> tuple[int, ...]:
    """The shape before the time axis that a member must have under `features`."""
    if member == "mel.npy":
        return (int(features["n_mels"]),)
    if member == "harm.npy":
        return (int(features["harmonics"]), int(features["harmonic_bands"]))
    return ()


# The version 1.0 header numpy.save writes for a C-order array, e.g.
# "{'descr': '<f2', 'fortran_order': False, 'shape': (128, 1818), }" padded with spaces:
# matched whole, it is parsed without numpy's literal_eval (a quarter of a mel sample's
# decoding); any other header goes to numpy's parser.
_SAVED_HEADER = re.compile(
    rb"\{'descr': '([<>|][a-z][0-9]{1,2})', 'fortran_order': False, "
    rb"'shape': \(([0-9]{1,12}(?:, [0-9]{1,12})*),?\), \} *\n"
)


def read_npy_header(data) -> tuple[np.dtype, tuple[int, ...], int]:
    """(dtype, shape, data offset) of an .npy member, from its header alone."""
    if data[:8] == b"\x93NUMPY\x01\x00" and len(data) >= 10:
        end = 10 + int.from_bytes(data[8:10], "little")
        saved = _SAVED_HEADER.fullmatch(data, 10, end)
        if saved:
            shape = tuple(int(n) for n in saved[2].split(b", "))
            return np.dtype(saved[1].decode()), shape, end
    stream = io.BytesIO(data)
    try:
        version = npy_format.read_magic(stream)
        if version == (1, 0):
            header = npy_format.read_array_header_1_0(stream)
        elif version == (2, 0):
            header = npy_format.read_array_header_2_0(stream)
        else:
            raise ValueError(f"npy format {version}")
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError) as exc:
        raise SampleRejected("npy_header", first_line(exc, 100)) from None
    shape, fortran_order, dtype = header
    if fortran_order or dtype.hasobject:
        raise SampleRejected("npy_header", "Fortran order or object dtype")
    return dtype, tuple(shape), stream.tell()


def checked_array(data, member: str, features: Mapping) -> np.ndarray:
    """The member's array (a read-only view of `data`: bytes, or a view of a mapped
    shard), refused unless its header fits `features` and its bytes (its values are the
    caller's to check: `all_finite` on what it uses)."""
    dtype, shape, offset = read_npy_header(data)
    if dtype.name not in _NPY_DTYPES[member]:
        raise SampleRejected("dtype", f"{member} has dtype {dtype.name}")
    lead = expected_leading_shape(member, features)
    if len(shape) != len(lead) + 1 or shape[:-1] != lead or shape[-1] <= 0:
        raise SampleRejected("shape", f"{member} has shape {shape}, expected {lead} + (time,)")
    need = int(np.prod(shape, dtype=np.float64)) * dtype.itemsize
    if need != len(data) - offset:
        raise SampleRejected(
            "shape", f"{member} header claims {need} bytes, holds {len(data) - offset}"
        )
    return np.frombuffer(data, dtype=dtype, offset=offset).reshape(shape)


_HALF_EXPONENT = 0x7C00


def all_finite(array: np.ndarray) -> bool:
    """`np.isfinite(array).all()`. A float16 array (what prepare stores) is checked on its
    bits: a half is NaN or Inf exactly when its five exponent bits are all set, and this
    integer test runs ~20x faster than numpy's float16 isfinite, which was half of the
    loader's CPU per mel sample."""
    if array.dtype.kind == "f" and array.dtype.itemsize == 2:
        bits = array.view(array.dtype.str.replace("f", "u"))  # same byte order
        return bool(array.size == 0 or (bits & _HALF_EXPONENT).max() != _HALF_EXPONENT)
    return bool(np.isfinite(array).all())


def crop_offsets(
    span: int, key: str, plan: InputPlan, train: bool, seed: int, epoch: int, chunks: int
):
    """Where crops of the plan's length start in a track `span` frames/samples longer.

    Training: a random crop per (seed, epoch, track), for chunk-level and song-level
    models alike (FCN/CRNN in their reference code too). Evaluation: `chunks` evenly
    spaced crops for every model; one crop is the centre (chunk-level) or the start
    (song-level, whose input is the track's opening as long as the model sees)."""
    if train:
        return [stable_int("crop", seed, epoch, key) % (span + 1)]
    if chunks > 1:
        return np.linspace(0, span, chunks).round().astype(int).tolist()
    return [span // 2 if plan.chunk_level else 0]


class SampleDecoder:
    """(x, y) from a raw sample {"__key__", "json", member: bytes} for one plan and epoch."""

    def __init__(self, plan: InputPlan, vocabulary: Sequence[str], cfg, epoch: int):
        self.plan = plan
        self.size = len(vocabulary)
        self.tag_index = {t: i for i, t in enumerate(vocabulary)}
        self.cfg = cfg
        self.epoch = epoch

    def __call__(self, raw: Mapping) -> tuple[np.ndarray, np.ndarray]:
        member = self.plan.member
        for name in ("json", member):
            if not isinstance(raw.get(name), bytes | bytearray | memoryview):
                raise SampleRejected("missing_member", f"no {name}")
        y = label_vector(parse_meta(raw["json"]), self.tag_index, self.size)
        array = checked_array(raw[member], member, self.plan.features)
        x = self.crops(array, raw.get("__key__", "?"))
        if x.dtype.kind == "f" and not all_finite(x):
            raise SampleRejected("non_finite", f"{member} holds NaN or Inf in the crop")
        return x, y

    def crops(self, array: np.ndarray, key: str) -> np.ndarray:
        length, total = self.plan.length, array.shape[-1]
        if total < length:
            pad = [(0, 0)] * (array.ndim - 1) + [(0, length - total)]
            fill = 0 if self.plan.member == "pcm.npy" else array.min()
            array = np.pad(array, pad, constant_values=fill)
            total = length
        cfg = self.cfg
        offsets = crop_offsets(
            total - length, key, self.plan, cfg.train, cfg.seed, self.epoch, cfg.eval_chunks
        )
        chunks = [array[..., o : o + length] for o in offsets]
        # A copy: the array is a read-only view of the member's bytes.
        return np.array(chunks[0], order="C") if cfg.train else np.stack(chunks)
