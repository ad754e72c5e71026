"""The MAEST downstream probe: how much tagging a set of embeddings supports
(`python -m tagtrain probe --embeddings EMB.parquet --data OUT`).

An MLP with one hidden layer (512 units, ReLU, dropout 0.5) is trained with AdamW on the
train-split embeddings (standardised with the train split's mean and std), the epoch with
the best validation score of `--select` (a registered metric, tagtrain.inference.metrics,
by default ROC-AUC; or the loss) is kept, and every registered metric's macro score on the
test split is reported (printed, and written as JSON next to the embeddings or to
`--out`). Defaults follow MAEST's probe (hidden 512, dropout 0.5, AdamW 1e-4, weight decay
1e-3, batch 128) and the paper's schedule (`--schedule paper`): 30 epochs, the rate
"exponentially raised to its maximum value during the first 10 epochs" (PaSST's
exp(-5 (1 - e/10)^2) ramp, the shape MAEST's own training uses), "kept constant", then
"linearly reduced" over the last `--rampdown-epochs` (10) to `--final-lr-factor` (0.01)
x the rate at the last epoch. The text lost the constant length and the final value; 10
and 0.01 split the 30 epochs evenly and match MAEST's training ramp. `--schedule
constant` keeps the rate flat (what this probe did before, for 60 epochs).

The embeddings file is what `python -m tagtrain embed` writes: one row per track with
key, split, tags and embedding (a list of floats). Labels are the tags in the dataset
card's vocabulary order (`--data`: a directory or URL prefix holding dataset.json); rows
without a split or tags column take them from the dataset's index.parquet by key.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from torch import nn

from pipelines.core.card import CardError
from pipelines.core.errors import UserError, first_line
from pipelines.core.flags import setting
from tagtrain.inference.metrics import METRICS, bce_on_probabilities, tag_scores
from tagtrain.loader import load_card
from tagtrain.loader.index import multi_hot, read_index
from tagtrain.run.runtime import resolve_device

LOSS = "loss"
ROLES = ("train", "valid", "test")
SCHEDULES = ("paper", "constant")


def selections() -> tuple[str, ...]:
    """What `--select` may name: every registered metric, or the loss."""
    return (*METRICS, LOSS)


class ProbeError(UserError, ValueError):
    """Embeddings or settings the probe cannot use; the message is one line."""


@dataclass
class Embeddings:
    keys: list[str]
    splits: list[str]
    tags: list[list[str]]
    x: np.ndarray  # [tracks, dim] float32

    def split(self, name: str) -> np.ndarray:
        return np.array([s == name for s in self.splits])


def load_embeddings(path: str | Path, data: str, options: dict | None = None) -> Embeddings:
    import pyarrow.parquet as pq

    path = Path(path)
    if not path.is_file():
        raise ProbeError(f"no embeddings file at {path}")
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001
        raise ProbeError(f"{path} is not a readable Parquet file: {type(exc).__name__}") from None
    missing = [c for c in ("key", "embedding") if c not in table.column_names]
    if missing:
        raise ProbeError(f"{path} has no {' or '.join(missing)} column (write it with `embed`)")
    keys = [str(k) for k in table.column("key").to_pylist()]
    rows = table.column("embedding").to_pylist()
    dims = {len(r) for r in rows if r is not None}
    if len(dims) != 1 or any(r is None for r in rows):
        raise ProbeError(f"{path}: embeddings must all have one length, found {sorted(dims)}")
    x = np.asarray(rows, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ProbeError(f"{path} holds non-finite embeddings")
    columns = {c: table.column(c).to_pylist() for c in ("split", "tags") if c in table.column_names}
    if len(columns) < 2:
        index = read_index(data, options).select(["key", "split", "tags"]).to_pylist()
        by_key = {r["key"]: r for r in index}
        absent = [k for k in keys if k not in by_key]
        if absent:
            raise ProbeError(f"{len(absent)} key(s) of {path} are not in {data}, e.g. {absent[0]}")
        for c in ("split", "tags"):
            columns.setdefault(c, [by_key[k][c] for k in keys])
    tags = [list(t or []) for t in columns["tags"]]
    return Embeddings(keys, [str(s) for s in columns["split"]], tags, x)


@dataclass
class ProbeConfig:
    hidden: int = setting(512, "hidden units of the MLP")
    dropout: float = setting(0.5, "dropout after the hidden layer")
    lr: float = setting(1e-4, "AdamW learning rate")
    weight_decay: float = setting(1e-3, "AdamW weight decay")
    batch_size: int = setting(128, "tracks per batch")
    epochs: int = setting(30, "epochs")
    schedule: str = setting(
        "paper",
        "learning rate per epoch: paper (exp warm-up, constant, linear down) or constant",
        choices=SCHEDULES,
    )
    warmup_epochs: int = setting(10, "paper schedule: epochs of exponential warm-up")
    rampdown_epochs: int = setting(10, "paper schedule: last epochs of linear decrease")
    final_lr_factor: float = setting(0.01, "paper schedule: rate at the last epoch / --lr")
    select: str = setting(
        "roc_auc", "validation criterion of the kept epoch: a registered metric's name or loss"
    )
    seed: int = setting(0, "seed of initialisation and shuffles")
    device: str = setting("auto", "auto, cpu, cuda or cuda:N")

    def validate(self) -> ProbeConfig:
        if self.hidden < 1 or self.batch_size < 1 or self.epochs < 1:
            raise ProbeError("--hidden, --batch-size and --epochs must be at least 1")
        if not 0 <= self.dropout < 1:
            raise ProbeError(f"--dropout must be in [0, 1), got {self.dropout}")
        if self.lr <= 0 or self.weight_decay < 0:
            raise ProbeError("--lr must be positive and --weight-decay not negative")
        if self.select not in selections():
            raise ProbeError(f"--select must be one of {', '.join(selections())}")
        if self.schedule not in SCHEDULES:
            raise ProbeError(f"--schedule must be one of {', '.join(SCHEDULES)}")
        if min(self.warmup_epochs, self.rampdown_epochs) < 0:
            raise ProbeError("--warmup-epochs and --rampdown-epochs must not be negative")
        if self.schedule == "paper" and self.warmup_epochs + self.rampdown_epochs > self.epochs:
            raise ProbeError(
                f"--warmup-epochs + --rampdown-epochs ({self.warmup_epochs} + "
                f"{self.rampdown_epochs}) exceed --epochs {self.epochs}"
            )
        if not 0 < self.final_lr_factor <= 1:
            raise ProbeError(f"--final-lr-factor must be in (0, 1], got {self.final_lr_factor}")
        return self


def probe_lr(epoch: int, cfg: ProbeConfig) -> float:
    """The learning rate of 0-based `epoch`: the paper's ramp, or `cfg.lr` throughout."""
    if cfg.schedule == "constant":
        return cfg.lr
    factor = 1.0
    if epoch < cfg.warmup_epochs:
        factor = math.exp(-5.0 * (1.0 - epoch / cfg.warmup_epochs) ** 2)
    into_rampdown = epoch - (cfg.epochs - cfg.rampdown_epochs) + 1
    if into_rampdown > 0:  # reaches final_lr_factor at the last epoch
        factor *= 1.0 - (1.0 - cfg.final_lr_factor) * into_rampdown / cfg.rampdown_epochs
    return cfg.lr * factor


def mlp(in_features: int, n_classes: int, hidden: int, dropout: float) -> nn.Sequential:
    """MAEST's probe: Linear -> ReLU -> Dropout -> Linear (logits)."""
    return nn.Sequential(
        nn.Linear(in_features, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, n_classes)
    )


def _predict(model: nn.Module, x: torch.Tensor) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        return torch.sigmoid(model(x)).cpu().double().numpy()


def _score(select: str, y: np.ndarray, p: np.ndarray) -> float:
    """Higher is better; NaN when the split has no evaluable tag."""
    if select == LOSS:
        return -bce_on_probabilities(y, p)
    return METRICS[select].goodness(tag_scores(y, p).macro[select])


def _finite(value: float) -> float | None:
    """JSON has no NaN: an undefined figure is null."""
    return float(value) if math.isfinite(value) else None


@dataclass
class ProbeResult:
    best_epoch: int  # 1-based
    valid: dict
    test: dict
    history: list[dict]


def _fit(model, t: dict, targets: torch.Tensor, y: dict, cfg) -> tuple[int, list[dict]]:
    """Train `model` on t["train"], keep the weights of the best epoch on t["valid"]; (that
    epoch, the history)."""
    gen = torch.Generator().manual_seed(cfg.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()
    best_score, best_epoch, best_state, history = -math.inf, 0, None, []
    n = t["train"].shape[0]
    for epoch in range(cfg.epochs):
        for group in optimizer.param_groups:
            group["lr"] = probe_lr(epoch, cfg)
        model.train()
        order = torch.randperm(n, generator=gen).to(targets.device)
        total = 0.0
        for start in range(0, n, cfg.batch_size):
            idx = order[start : start + cfg.batch_size]
            loss = loss_fn(model(t["train"][idx]), targets[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += float(loss.detach()) * len(idx)
        score = _score(cfg.select, y["valid"], _predict(model, t["valid"]))
        lr = optimizer.param_groups[0]["lr"]
        history.append(
            {"epoch": epoch + 1, "lr": lr, "train_loss": total / n, cfg.select: _finite(score)}
        )
        if best_state is None or (math.isfinite(score) and score > best_score):
            best_score, best_epoch = score, epoch + 1
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    model.load_state_dict(best_state)
    return best_epoch, history


def train_probe(
    x: dict[str, np.ndarray], y: dict[str, np.ndarray], cfg: ProbeConfig
) -> ProbeResult:
    """Train on x["train"], select on x["valid"], report on x["test"] (standardised with
    the train split's statistics)."""
    device = resolve_device(cfg.device)
    mean = x["train"].mean(axis=0)
    std = x["train"].std(axis=0) + 1e-6
    t = {k: torch.from_numpy((v - mean) / std).float().to(device) for k, v in x.items()}
    targets = torch.from_numpy(y["train"]).to(device)
    with torch.random.fork_rng(devices=[]):
        # Dropout draws from torch's global generator: seeded here too, so --seed fixes the
        # whole probe, and the caller's generator is left as it was.
        torch.manual_seed(cfg.seed)
        model = mlp(t["train"].shape[1], y["train"].shape[1], cfg.hidden, cfg.dropout).to(device)
        best_epoch, history = _fit(model, t, targets, y, cfg)
    results = {}
    for split in ROLES[1:]:
        p = _predict(model, t[split])
        s = tag_scores(y[split], p)
        results[split] = {
            "tracks": int(len(p)),
            **{name: _finite(value) for name, value in s.macro.items()},
            "loss": _finite(bce_on_probabilities(y[split], p)),
            "evaluated_tags": s.evaluated_tags,
            "skipped_tags": s.skipped_tags,
        }
    return ProbeResult(best_epoch, results["valid"], results["test"], history)


def probe(
    embeddings: str | Path,
    data: str,
    cfg: ProbeConfig,
    splits: tuple[str, str, str] = ("train", "valid", "test"),
    options: dict | None = None,
) -> dict:
    """Load, train, evaluate; the report as a plain dict."""
    card = load_card(data, options)
    vocabulary = [str(t) for t in card["vocabulary"]]
    emb = load_embeddings(embeddings, data, options)
    x, y = {}, {}
    for role, name in zip(ROLES, splits):
        mask = emb.split(name)
        if not mask.any():
            have = ", ".join(sorted(set(emb.splits)))
            raise ProbeError(f"the embeddings have no {role} split {name!r} (they have: {have})")
        x[role] = emb.x[mask]
        y[role] = multi_hot([t for t, m in zip(emb.tags, mask) if m], vocabulary)
    result = train_probe(x, y, cfg.validate())
    return {
        "embeddings": str(embeddings),
        "data": data,
        "dim": int(emb.x.shape[1]),
        "tags": len(vocabulary),
        "splits": dict(zip(ROLES, splits)),
        "tracks": {role: int(len(v)) for role, v in x.items()},
        "config": asdict(cfg),
        "best_epoch": result.best_epoch,
        "valid": result.valid,
        "test": result.test,
        "history": result.history,
    }


@dataclass
class ProbeOptions(ProbeConfig):
    """The probe command's options: its inputs, output and splits, and the MLP's settings."""

    embeddings: str = setting(None, "Parquet written by `embed`", required=True)
    data: str = setting(None, "the dataset (directory or URL prefix)", required=True)
    out: str | None = setting(None, "report JSON (default: EMB.probe.json)")
    train_split: str = setting("train", "train split")
    val_split: str = setting("valid", "val split")
    test_split: str = setting("test", "test split")

    def config(self) -> ProbeConfig:
        return ProbeConfig(**{f.name: getattr(self, f.name) for f in fields(ProbeConfig)})


def _fmt(value: float | None) -> str:
    return "n/a" if value is None or not math.isfinite(value) else f"{value:.4f}"


def _scores(result: dict, prefix: str = "") -> str:
    return "  ".join(f"{prefix}{m.label} {_fmt(result.get(m.name))}" for m in METRICS.values())


def run_probe(options: ProbeOptions) -> Path:
    """Probe the embeddings, write the report JSON and print its summary; its path."""
    cfg = options.config()
    splits = (options.train_split, options.val_split, options.test_split)
    try:
        cfg.validate()
        report = probe(options.embeddings, options.data, cfg, splits)
    except CardError as exc:
        raise ProbeError(first_line(exc)) from None
    out = Path(options.out) if options.out else Path(options.embeddings).with_suffix(".probe.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    t, v, tracks = report["test"], report["valid"], report["tracks"]
    print(
        f"probe on {report['dim']}-d embeddings, {len(report['history'])} epochs, "
        f"tracks train/valid/test {tracks['train']}/{tracks['valid']}/{tracks['test']}"
    )
    print(f"  best epoch {report['best_epoch']} by validation {cfg.select}: {_scores(v)}")
    print(
        f"  test: {_scores(t, 'macro ')} over {t['evaluated_tags']} tag(s) "
        f"({t['skipped_tags']} without positives and negatives skipped)"
    )
    print(f"  report: {out}")
    return out
