"""The loader, checkpoint and evaluate rows of `bench/scale.py` (issue 31, scale-B).

- planning an epoch: what the trainer does before its first read (the card, the index's
  member ranges, the epoch's global order and this rank's batches), for rank 0 of 1 and
  of 8 ranks (sample-level partitioning: every rank orders the whole epoch, then takes
  its share, so no real DDP is needed to measure rank 0 of 8);
- the first batch: the same from nothing, then the trainer's persistent loader workers
  (`LoaderPool`, 2 workers: the cores this bench has) up to the first batch, with the
  RSS and USS (private memory) of the largest worker at that moment;
- the loader state a checkpoint holds (`training.state.training_state`'s `loader`:
  positions and geometry, `torch.save`d as `run.checkpoint` does) after 3 batches, its
  bytes, and the time to resume from it in a fresh loader (checkpoint loaded with
  weights_only, positions decoded, card and index read again) to the first batch;
- evaluate's aggregation: `predict_split` (the one path evaluate and validation use) over
  batches of 4 windows per track, an identity model on synthetic logits of 50 tags, then
  the registry's macro scores (`tag_scores`); and one bootstrap resample (evaluate's
  default is 1000 of them);
- `predictions.parquet` of evaluate (`write_predictions`) for the corpus's N tracks;
- the report's evaluation section built from evaluate's outputs (metrics.json,
  per_tag.csv, predictions.parquet; written once per corpus, in another process, so its
  memory is not the row's).

Every time is the least of the harness's repeats; each repeat starts with the index cache
cleared (a trainer reads the index once per process).
"""

from __future__ import annotations

import io
import multiprocessing
import shutil
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
from scale_corpus import Corpus, Row

MODEL = "short_chunk_resnet"  # reads mel crops (the corpus stores a mel)
BATCH, WORKERS, SHUFFLE_BUFFER, TAGS = 16, 2, 256, 50
EVAL_WINDOWS, EVAL_BATCH = 4, 1024
PLAN_REPEATS = 3
AGGREGATE_REPEATS = 3  # aggregate_and_score's, as PLAN_REPEATS
BOOTSTRAP_MORE = 4  # resamples timed beyond the first (bootstrap_resample)


# --- the loader --------------------------------------------------------------------------


def _fresh_index() -> None:
    """Forget the index this process read (a trainer reads it once per process)."""
    from tagtrain.loader import index

    index._cached_index.cache_clear()


def _plan_stream(corpus: Corpus, world: int, workers: int = 0, resume=None):
    """What `TrainingData.open` and its first `reader` do before reading: the card, the
    input plan, the split's shards, the checks, and the epoch's stream (its order)."""
    from tagtrain import loader
    from tagtrain.models.registry import get_entry

    data = str(corpus.dataset)
    card = loader.load_card(data)
    plan = loader.plan_input(card, get_entry(MODEL).input_spec)
    shards = loader.split_shards(card, data, "train")
    cfg = loader.LoaderConfig(
        batch_size=BATCH, workers=workers, shuffle_buffer=SHUFFLE_BUFFER, seed=0, rank=0,
        world=world,
    )  # fmt: skip
    loader.check_enough_shards(shards, cfg, "train")
    stream = loader.ShardStream(shards, plan, card["vocabulary"], cfg, epoch=0, resume=resume)
    if not stream.sample_level:
        raise RuntimeError("the corpus's index has no member ranges: not what prepare writes")
    return stream


def plan_epoch(world: int):
    def row(corpus: Corpus) -> dict:
        # The least of 3 plans at every size: the harness repeats only rows under 1 s,
        # which would compare a warm least-of-5 at 100k with one cold plan at 1M.
        times = []
        for _ in range(PLAN_REPEATS):
            _fresh_index()
            start = time.perf_counter()
            stream = _plan_stream(corpus, world)
            times.append(time.perf_counter() - start)
        return {"seconds": min(times), "batches": len(stream.sample_batches)}

    return row


def _worker_memory() -> dict:
    """RSS and USS (MB) of the largest loader worker process (children of this one)."""
    import psutil

    rss = uss = 0.0
    for child in psutil.Process().children(recursive=True):
        with_uss = child.memory_full_info()
        rss, uss = max(rss, with_uss.rss / 2**20), max(uss, with_uss.uss / 2**20)
    return {"worker_rss_mb": rss, "worker_uss_mb": uss}


def _first_batches(stream, count: int):
    """(reader, the first `count` batches, committed, seconds to the first, worker memory
    then): through a persistent worker pool, as the trainer reads with --workers."""
    from tagtrain import loader

    # The harness's row process was spawned, which makes spawn its children's default
    # too: loader workers would each import torch again (5 s). `python -m tagtrain`
    # forks them (Linux's default), so the row does.
    multiprocessing.set_start_method("fork", force=True)

    pool = loader.LoaderPool(stream)
    reader = loader.EpochReader(stream, pool=pool)
    start = time.perf_counter()
    batches, first, memory = [], None, {}
    for batch in reader:
        if first is None:
            first = time.perf_counter() - start
            memory = _worker_memory()
        reader.commit(batch)
        batches.append(batch)
        if len(batches) == count:
            break
    return reader, pool, batches, first, memory


def first_batch(world: int):
    def row(corpus: Corpus) -> dict:
        _fresh_index()
        start = time.perf_counter()
        stream = _plan_stream(corpus, world, WORKERS)
        reader, pool, batches, first, memory = _first_batches(stream, 1)
        seconds = time.perf_counter() - start  # the plan, then the workers' first batch
        reader.close()
        pool.close()
        return {"seconds": seconds, "plan_s": seconds - first, **memory}

    return row


# --- the loader state in a checkpoint ------------------------------------------------------


def _geometry(stream) -> dict:
    """`TrainingData.geometry` for this stream's config (no epoch sample)."""
    c = stream.cfg
    return {"world": c.world, "workers": c.slots, "shuffle_buffer": c.shuffle_buffer,
            "batch_size": c.batch_size, "seed": c.seed, "epoch_samples": 0, "balance": "none"}  # fmt: skip


def loader_state(corpus: Corpus) -> dict:
    """The loader entry of a checkpoint after 3 consumed batches (its bytes as
    torch.save writes it), then a fresh loader resumed from it to its first batch."""
    import torch

    from tagtrain import loader

    _fresh_index()
    stream = _plan_stream(corpus, 1, WORKERS)
    reader, pool, batches, _, _ = _first_batches(stream, 3)
    positions = reader.encoded_positions()[None]  # [world, workers, width], as gathered
    reader.close()
    pool.close()
    buffer = io.BytesIO()
    torch.save({"loader": {"positions": positions.cpu(), **_geometry(stream)}}, buffer)
    state = buffer.getvalue()
    seen = {k for b in batches for k in b.keys}

    _fresh_index()  # a resumed run is a new process
    start = time.perf_counter()
    payload = torch.load(io.BytesIO(state), weights_only=True)
    rows = loader.resume_rows(payload["loader"]["positions"], 0)
    resumed = _plan_stream(corpus, 1, WORKERS, resume=loader.decode_positions(rows))
    reader, pool, after, first, _ = _first_batches(resumed, 1)
    seconds = time.perf_counter() - start
    reader.close()
    pool.close()
    if seen & set(after[0].keys):
        raise RuntimeError("the resumed epoch gave a sample consumed before the checkpoint")
    return {"seconds": seconds, "bytes": len(state), "first_batch_s": first}


# --- evaluate and the report ---------------------------------------------------------------


def synthetic_labels(tracks: int, tags: int = TAGS, seed: int = 0) -> np.ndarray:
    """Multi-hot [tracks, tags] uint8, 1-4 tags per track, a few tags common (Zipf)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, tags + 1)
    drawn = rng.choice(tags, size=(tracks, 4), p=p / p.sum())
    keep = np.arange(4)[None, :] < rng.integers(1, 5, size=tracks)[:, None]
    labels = np.zeros((tracks, tags), dtype=np.uint8)
    rows = np.repeat(np.arange(tracks), 4).reshape(tracks, 4)
    labels[rows[keep], drawn[keep]] = 1
    return labels


class _WindowBatches:
    """An EpochReader's stand-in for `predict_split`: batches of EVAL_WINDOWS logit
    windows per track (a label's logit +2), the noise drawn once and reused. Each batch's
    labels and keys are made when it is built, so that a row timing `predict_split` times
    its aggregation, not this stand-in (they were half of it); only the windows (noise +
    labels: 800 MB at a million tracks, were they all kept) are made as batches are read."""

    def __init__(self, labels: np.ndarray):
        import torch

        from tagtrain.loader import LoaderStats

        self.stats = LoaderStats()
        noise = np.random.default_rng(1).standard_normal((EVAL_BATCH, EVAL_WINDOWS, TAGS))
        self.noise = torch.from_numpy(noise.astype(np.float32))
        self.batches = [
            (
                torch.from_numpy(labels[start : start + EVAL_BATCH].astype(np.float32)),
                [f"t{i:07d}" for i in range(start, min(start + EVAL_BATCH, len(labels)))],
            )
            for start in range(0, len(labels), EVAL_BATCH)
        ]

    def __iter__(self):
        from tagtrain.loader import Batch, WorkerPosition

        for y, keys in self.batches:
            x = self.noise[: len(y)] + 2.0 * y[:, None, :]
            yield Batch(x, y, keys, 0, WorkerPosition())

    def close(self) -> None:
        pass


class _OnDevice:
    """DeviceInput's stand-in: the windows flattened to the model's batch, on the CPU."""

    def __init__(self):
        import torch

        self.device = torch.device("cpu")

    def __call__(self, x, chunked: bool = False):
        return x.reshape(-1, x.shape[-1]) if chunked else x


def _window_batches(tracks: int) -> _WindowBatches:
    return _WindowBatches(synthetic_labels(tracks))


def _predict(reader: _WindowBatches):
    """`predict_split` of the stand-in batches: window aggregation, as evaluate runs it."""
    import torch

    from tagtrain.inference.predict import predict_split
    from tagtrain.run.runtime import DistEnv

    vocabulary = [f"tag{j:03d}" for j in range(TAGS)]
    return predict_split(torch.nn.Identity(), None, None, vocabulary, None, _OnDevice(),
                         DistEnv(), None, reader=reader)  # fmt: skip


def _predictions(tracks: int):
    return _predict(_window_batches(tracks))


def _one_thread() -> None:
    """Torch on one thread: on the two busy cores this bench shares, more threads made
    its per-batch ops 5x slower, and the row measures the work, not the contention."""
    import torch

    torch.set_num_threads(1)


def aggregate_and_score(corpus: Corpus) -> dict:
    """`predict_split`'s window aggregation, then `tag_scores`: each the least of
    AGGREGATE_REPEATS at every size (the harness repeats only rows under 1 s: it compared
    a warm least-of-5 at 100k with one cold run at 1M, whose fresh process page-faults
    every array in), on stand-in inputs made before the clock."""
    from tagtrain.inference.metrics import tag_scores

    _one_thread()
    reader = _window_batches(corpus.tracks)
    aggregate, metrics = [], []
    for _ in range(AGGREGATE_REPEATS):
        start = time.perf_counter()
        preds = _predict(reader)
        aggregate.append(time.perf_counter() - start)
        start = time.perf_counter()
        scores = tag_scores(preds.labels, preds.probs)
        metrics.append(time.perf_counter() - start)
        del preds  # before the next repeat's: one at a time, as evaluate holds them
        if not 0.6 < scores.roc_auc < 1.0:
            raise RuntimeError(f"macro ROC-AUC {scores.roc_auc}: the synthetic scores are wrong")
    figures = {"aggregate_s": min(aggregate), "metrics_s": min(metrics)}
    return {"seconds": sum(figures.values()), **figures}


def _seconds(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bootstrap_resample(corpus: Corpus) -> dict:
    """One of evaluate's --bootstrap resamples (default 1000) of the tracks: a call with
    1 + BOOTSTRAP_MORE resamples less one with 1, per resample. Each call sorts every
    tag's scores once, before its resamples: `first_resample_s` is the first call with
    one (that sort and one resample, in a cold process), what evaluate pays once; the two
    calls timed after it are warm alike, else the difference is mostly the first's page
    faults."""
    from tagtrain.inference.metrics import bootstrap_macro

    _one_thread()
    preds = _predictions(corpus.tracks)

    def call(resamples: int) -> float:
        return _seconds(lambda: bootstrap_macro(preds.labels, preds.probs, resamples))

    first = call(1)
    one, more = call(1), call(1 + BOOTSTRAP_MORE)
    # At least 0: at a few hundred tracks the difference is all noise.
    return {"seconds": max(more - one, 0.0) / BOOTSTRAP_MORE, "first_resample_s": first}


def _evaluation(preds, run_dir: Path):
    """An `Evaluation` of a stand-in run (what write_results reads of a TrainedRun)."""
    from tagtrain.inference.evaluation import Evaluation
    from tagtrain.inference.metrics import tag_scores

    vocabulary = [f"tag{j:03d}" for j in range(TAGS)]
    run = SimpleNamespace(
        vocabulary=vocabulary, location=str(run_dir), model_name=MODEL, dir=run_dir,
        checkpoint=run_dir / "best.pt", checkpoint_sha256="0" * 64, unscored_tags=[],
        config=SimpleNamespace(data="data"), name=run_dir.name,
    )  # fmt: skip
    scores = tag_scores(preds.labels, preds.probs)
    return Evaluation(run, "data", "test", EVAL_WINDOWS, preds.labels, preds.probs, scores,
                      preds.stats, preds.keys)  # fmt: skip


def predictions_parquet(corpus: Corpus) -> dict:
    from tagtrain.inference.evaluation import write_predictions

    _one_thread()
    evaluation = _evaluation(_predictions(corpus.tracks), Path("."))
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        path = Path(tmp) / "predictions.parquet"
        start = time.perf_counter()
        write_predictions(evaluation, path)
        return {"seconds": time.perf_counter() - start, "bytes": path.stat().st_size}


def _write_evaluated_run(tracks: int, run_dir: str) -> None:
    from tagtrain.inference.evaluation import write_results

    _one_thread()
    write_results(_evaluation(_predictions(tracks), Path(run_dir)))


def evaluated_run(corpus: Corpus) -> Path:
    """A run directory with evaluate's outputs for the corpus's N tracks, written once
    (in a spawned process: its memory is not the report row's)."""
    run_dir = corpus.root / "scale-b-run"
    if not (run_dir / "complete").is_file():
        shutil.rmtree(run_dir, ignore_errors=True)
        run_dir.mkdir(parents=True)
        process = multiprocessing.get_context("spawn").Process(
            target=_write_evaluated_run, args=(corpus.tracks, str(run_dir))
        )
        process.start()
        process.join()
        if process.exitcode:
            raise RuntimeError(f"writing evaluate's outputs: exit {process.exitcode}")
        (run_dir / "complete").write_text("")
    return run_dir


def report_section(corpus: Corpus) -> dict:
    from tagtrain.reporting.evaluation_section import evaluation_section

    run_dir = evaluated_run(corpus)
    card = {"vocabulary": [f"tag{j:03d}" for j in range(TAGS)]}
    start = time.perf_counter()
    html = evaluation_section(run_dir, card, [])
    if "PR curves need" in html:
        raise RuntimeError("the section did not read predictions.parquet")
    return {"seconds": time.perf_counter() - start, "html_bytes": len(html)}


_LOADER = ("torch", "pandas", "psutil", "tagtrain.loader", "tagtrain.models.registry")
_EVALUATE = ("torch", "pandas", "pyarrow.parquet", "tagtrain.inference.evaluation",
             "tagtrain.inference.predict")  # fmt: skip
_REPORT = (
    *_EVALUATE,
    "tagtrain.reporting.evaluation_section",
    "matplotlib.pyplot",
    "sklearn.metrics",
)
ROWS = [
    Row("loader: plan an epoch, 1 rank", plan_epoch(1), _LOADER),
    Row("loader: plan an epoch, rank 0 of 8", plan_epoch(8), _LOADER),
    Row("loader: first batch, 1 rank, 2 workers", first_batch(1), _LOADER),
    Row("loader: first batch, rank 0 of 8, 2 workers", first_batch(8), _LOADER),
    Row("loader state: checkpoint bytes, resume to first batch", loader_state, _LOADER),
    Row("evaluate: window aggregation + macro AUCs", aggregate_and_score, _EVALUATE),
    Row("evaluate: one bootstrap resample", bootstrap_resample, _EVALUATE),
    Row("evaluate: predictions.parquet", predictions_parquet, _EVALUATE),
    Row("report: evaluation section", report_section, _REPORT),
]
