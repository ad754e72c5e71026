"""`Tagger.from_pretrained("musicnn-mtt").predict(path)`: tag audio with musicnn's
published weights, as `musicnn.extractor` does (see frontend.py), without TensorFlow.

`predict` returns the record that `tag --out` writes (tagtrain.inference.tagging.Tagged):
path, model, seconds, window_seconds, windows, top, vocabulary, probabilities (mean of
the taggram over windows, full vector), windows_s ([start, end] of each window in seconds)
and taggram (sigmoid per 3 s window); `features` gives the official named layers per
window. The windows are the official front end's (log-mel of the whole file, cut every 187
frames); the forwards and the average over windows are the one predictor's
(tagtrain.inference.predict.WindowPredictor), as for `tag --run`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from pipelines.core.audio import AudioRejected, load_audio
from pipelines.core.errors import UserError
from tagtrain.inference.predict import WindowPredictor, average
from tagtrain.inference.tagging import Tagged, TooShort, too_short
from tagtrain.models.musicnn_tf import CONV_ALGORITHMS, set_conv_algorithm
from tagtrain.pretrained import frontend
from tagtrain.pretrained.musicnn import load_pretrained, pretrained_spec

# A window is 187 frames: files shorter than this have no window (the official extractor
# fails on them); they are reported, not padded.
MIN_SECONDS = (frontend.WINDOW_FRAMES - 1) * frontend.HOP / frontend.SAMPLE_RATE
__all__ = ["MIN_SECONDS", "Tagger", "TooShort"]


class Tagger:
    def __init__(
        self,
        name: str,
        model: torch.nn.Module,
        vocabulary: list[str],
        batch_size: int = 32,
        compression: str = "numpy1",
    ):
        if compression not in frontend.COMPRESSIONS:
            raise UserError(f"compression must be one of {frontend.COMPRESSIONS}")
        self.compression = compression
        self.name = name
        self.model = model
        self.vocabulary = vocabulary
        self.batch_size = batch_size

    @classmethod
    def from_pretrained(
        cls,
        name: str,
        device: str = "cpu",
        batch_size: int = 32,
        compression: str = "numpy1",
        conv_algorithm: str = "fast",
    ) -> Tagger:
        """`name`: musicnn-mtt, musicnn-msd, vgg-mtt or vgg-msd; `compression`: the
        front end's "numpy1" (default, as published) or "numpy2" (frontend.py);
        `conv_algorithm`: "fast" (default: fewer multiply-adds, equal up to rounding) or
        "direct" (the graph's literal convolutions; docs/FIDELITY.md)."""
        pretrained_spec(name)
        if conv_algorithm not in CONV_ALGORITHMS:
            raise UserError(f"conv_algorithm must be one of {', '.join(CONV_ALGORITHMS)}")
        model, vocabulary = load_pretrained(name)
        set_conv_algorithm(model, conv_algorithm)
        return cls(name, model.to(device), vocabulary, batch_size, compression)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def predictor(self) -> WindowPredictor:
        """Log-mel windows [N, 96, 187] (numpy) -> the network, `batch_size` per forward."""
        device = self.device
        return WindowPredictor(
            self.model, lambda b: torch.from_numpy(b).to(device), None, self.batch_size
        )

    def windows(self, path: str | Path) -> tuple[np.ndarray, list[int]]:
        """The model input [windows, 96, 187] of a file and each window's first frame."""
        return self._decode(path)[:2]

    def _decode(self, path: str | Path) -> tuple[np.ndarray, list[int], float]:
        try:
            # No length cap: a user tags what they hand us (prepare's cap guards jobs).
            decoded = load_audio(
                Path(path).read_bytes(),
                frontend.SAMPLE_RATE,
                min_seconds=0.0,
                max_decode_seconds=None,
            )
        except AudioRejected as exc:
            raise UserError(f"{path}: {exc}") from None
        log_mel = frontend.official_log_mel(decoded.pcm, self.compression)
        starts = frontend.window_starts(len(log_mel))
        if not starts:
            raise too_short(path, decoded.seconds, MIN_SECONDS)
        return frontend.cut_windows(log_mel, starts), starts, decoded.seconds

    def features(self, batch: np.ndarray) -> dict[str, np.ndarray]:
        """The model's named layers (and `taggram`) for a window batch [N, 96, 187]."""
        parts: dict[str, list[np.ndarray]] = {}
        for out in self.predictor.batches(batch, self.model.features):
            out["taggram"] = torch.sigmoid(out["logits"])
            for key, value in out.items():
                parts.setdefault(key, []).append(value.float().cpu().numpy())
        return {k: np.concatenate(v) for k, v in parts.items()}

    def taggram(self, batch: np.ndarray) -> np.ndarray:
        """Sigmoid outputs [N, tags] of a window batch, `batch_size` windows per forward."""
        return self.predictor.taggram(batch)

    def tagged(self, path, taggram: np.ndarray, starts: list[int], seconds: float) -> Tagged:
        windows_s = [list(w) for w in frontend.window_seconds(starts)]
        window_seconds = frontend.WINDOW_FRAMES * frontend.HOP / frontend.SAMPLE_RATE
        return Tagged(
            str(path), self.name, seconds, window_seconds, list(self.vocabulary), taggram,
            windows_s, average(taggram),
        )  # fmt: skip

    def predict(self, path: str | Path, top: int = 10) -> dict:
        batch, starts, seconds = self._decode(path)
        return self.tagged(path, self.taggram(batch), starts, seconds).record(top)

    def predict_many(
        self, paths: Iterable[str | Path], prefetch: int = 2, top: int = 10
    ) -> Iterator[tuple[Path, dict | Exception]]:
        """`tagged_many` with `predict`'s records."""
        for path, result in self.tagged_many(paths, prefetch):
            yield path, result if isinstance(result, Exception) else result.record(top)

    def tagged_many(
        self, paths: Iterable[str | Path], prefetch: int = 2
    ) -> Iterator[tuple[Path, Tagged | Exception]]:
        """(path, Tagged) per file in order, or (path, the UserError/OSError) for a file
        that cannot be tagged. The next files are decoded and featurised on `prefetch`
        threads while the current batch runs (decoding and the convolutions release the
        GIL), and the windows of consecutive files share forwards of up to `batch_size`
        windows. Each window is computed independently, so the records are those of
        `predict` (up to the convolutions' summation order for other batch sizes)."""
        paths = [Path(p) for p in paths]
        with ThreadPoolExecutor(max(1, prefetch)) as pool:
            pending = [pool.submit(self._decode, p) for p in paths[: prefetch + 1]]
            queued = []  # (path, windows, starts, seconds) waiting for a forward
            for i, path in enumerate(paths):
                if i + prefetch + 1 < len(paths):
                    pending.append(pool.submit(self._decode, paths[i + prefetch + 1]))
                try:
                    queued.append((path, *pending[i].result()))
                except (UserError, OSError) as exc:
                    yield from self._flush(queued)
                    queued = []
                    yield path, exc
                    continue
                pending[i] = None  # its windows now live in `queued` only
                if sum(len(q[1]) for q in queued) >= self.batch_size:
                    yield from self._flush(queued)
                    queued = []
            yield from self._flush(queued)

    def _flush(self, queued: list) -> Iterator[tuple[Path, Tagged]]:
        if not queued:
            return
        taggrams = self.taggram(np.concatenate([q[1] for q in queued]))
        ends = np.cumsum([len(q[1]) for q in queued])
        for (path, _, starts, seconds), end in zip(queued, ends):
            yield path, self.tagged(path, taggrams[end - len(starts) : end], starts, seconds)
