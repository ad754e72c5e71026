"""Checkpoints, run configs and their outputs as untrusted input (issue 29, items 2, 4, 5
and the full disk of 12): a run never says how to reach storage, a crafted checkpoint is
refused with one line before anything is built, non-finite weights are refused on import
and on load, `tag --json` never prints a bare NaN, and a full disk at a checkpoint save
says so. The checkpoints are a few KB, built here."""

from __future__ import annotations

import contextlib
import errno
import http.server
import io
import json
import math
import threading
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from tagtrain.inference.trained_run import load_run
from tagtrain.models.registry import create_model
from tagtrain.pretrained.imported_run import input_plan
from tagtrain.run import checkpoint as ckpt
from tagtrain.run.config import RunConfig, build_run_config
from tagtrain.run.directory import RunDir

MODEL = "short_chunk_cnn"
TAGS = ["rock", "calm", "drums"]


def cli(*args: str) -> tuple[int, str, str]:
    """`python -m tagtrain ARGS` in this process: (status, stdout, stderr)."""
    from tagtrain.__main__ import main

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            status = main(list(args))
        except SystemExit as exc:
            status = exc.code
    return status, out.getvalue(), err.getvalue()


def make_run(out: Path, width: float = 0.125, **config) -> Path:
    """A run directory as training leaves it: config.json and best.pt (a small model)."""
    model = create_model(MODEL, len(TAGS), seed=0, width=width)
    cfg = RunConfig(model=MODEL, width=width, out=str(out), data="demo")
    saved = json.dumps({**json.loads(cfg.to_json()), **config})
    payload = {
        "model": model.state_dict(),
        "config": saved,
        "model_name": MODEL,
        "width": width,
        "model_setup": {},
        "vocabulary": list(TAGS),
        "card_checksum": "",
        "input_plan": input_plan(model.input_spec),
        "normalisation": {"mean": None, "std": None},
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / RunDir.CONFIG).write_text(saved + "\n")
    ckpt.save_checkpoint(out / RunDir.BEST, payload)
    return out


def tamper(run: Path, change) -> Path:
    """The run's best.pt after `change(payload)` (the crafted checkpoint)."""
    state = torch.load(run / RunDir.BEST, weights_only=True)
    change(state)
    torch.save(state, run / RunDir.BEST)
    return run


def one_line(status: int, err: str) -> str:
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1, err
    return lines[0]


# --- item 2: storage options come from the user only ---------------------------------


class Recorder(http.server.ThreadingHTTPServer):
    """An S3 stand-in on the loopback that records each request and answers 404."""

    def __init__(self):
        self.requests: list[tuple[str, str, str]] = []
        recorder = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def answer(self):
                auth = self.headers.get("Authorization", "")
                recorder.requests.append((self.command, self.path, auth))
                self.send_response(404)
                self.send_header("Content-Length", "0")
                self.end_headers()

            do_GET = do_HEAD = do_PUT = do_POST = answer

            def log_message(self, *args):
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def close(self):
        self.shutdown()
        self.server_close()


@pytest.fixture
def servers():
    user, hostile = Recorder(), Recorder()
    yield user, hostile
    user.close()
    hostile.close()


def test_a_run_cannot_send_the_users_requests_to_its_own_endpoint(servers, tmp_path, monkeypatch):
    """A checkpoint (and its config.json) naming an endpoint of its own: `evaluate --run
    ck --data s3://...` sends the user's signed requests where the user's environment
    says, never to the checkpoint's server."""
    user, hostile = servers
    options = {"s3": {"endpoint_url": hostile.url, "client_kwargs": {"endpoint_url": hostile.url}}}
    run = make_run(tmp_path / "ck", storage_options=options, s3_endpoint_url=hostile.url)
    monkeypatch.setenv("AWS_ENDPOINT_URL", user.url)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "USERKEYID")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "user-secret")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    status, _, err = cli(
        "evaluate", "--run", str(run), "--data", "s3://private-bucket/ds", "--split", "test",
        "--device", "cpu", "--workers", "0", "--bootstrap", "0",
    )  # fmt: skip
    one_line(status, err)  # no dataset there: the user's server answers 404
    assert hostile.requests == []
    paths = [request[1] for request in user.requests]
    assert paths and all(p.startswith("/private-bucket") for p in paths), paths
    assert all("Credential=USERKEYID/" in request[2] for request in user.requests)
    loaded = load_run(run, device="cpu")
    assert loaded.config.storage_options == {} and loaded.config.s3_endpoint_url == ""


def test_a_run_saves_and_resumes_no_storage_settings(tmp_path):
    """config.json and checkpoints record the data's URL, not how to reach it; --resume
    and a recipe take none from what they read."""
    cfg = RunConfig(
        model=MODEL, data="s3://bucket/ds", s3_endpoint_url="http://127.0.0.1:9",
        storage_options={"s3": {"key": "K", "secret": "S"}},
    )  # fmt: skip
    saved = json.loads(cfg.to_json())
    assert "storage_options" not in saved and "s3_endpoint_url" not in saved
    assert saved["data"] == "s3://bucket/ds"
    hostile = {"storage_options": {"s3": {"endpoint_url": "http://127.0.0.1:9"}},
               "s3_endpoint_url": "http://127.0.0.1:9"}  # fmt: skip
    out = tmp_path / "run"
    out.mkdir()
    (out / RunDir.CONFIG).write_text(json.dumps({"model": MODEL, "data": "d", **hostile}))
    resumed, _ = build_run_config("train", {"out": str(out)}, resume=True)
    assert resumed.effective_storage_options() == {}
    from_recipe, _ = build_run_config(
        "train", {"data": "d", "model": MODEL}, recipe={"epochs": 3, **hostile}
    )
    assert from_recipe.effective_storage_options() == {} and from_recipe.epochs == 3
    mine, _ = build_run_config(
        "train", {"out": str(out), "s3_endpoint_url": "http://127.0.0.1:8"}, resume=True
    )
    assert mine.effective_storage_options() == {"s3": {"endpoint_url": "http://127.0.0.1:8"}}


# --- item 4: a crafted config or plan is refused before anything is built ------------


def _set_config(**values):
    def change(state):
        state["config"] = json.dumps({**json.loads(state["config"]), **values})

    return change


def _set_plan(path: tuple[str, ...], value):
    def change(state):
        target = state["input_plan"]
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value

    return change


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (_set_config(width=40.0), "width must be in (0, 4], got 40.0"),
        (_set_config(width=math.inf), "width must be in (0, 4], got inf"),
        (_set_config(width=math.nan), "width must be in (0, 4], got nan"),
        (_set_config(model="no_such_model"), "unknown model 'no_such_model'"),
        (_set_plan(("features", "sample_rate"), 2_000_000_000), "sample_rate 2000000000 Hz"),
        (_set_plan(("kind",), "hologram"), "input plan kind 'hologram' is not one of"),
        (_set_plan(("length",), 10**12), "input plan length 1000000000000 is over 600 s"),
        (_set_plan(("features", "n_mels"), 10**7), "input plan n_mels 10000000 is over 2048"),
        (_set_plan(("mean",), [math.nan] * 128), "mean holds a value that is not a finite"),
        (lambda s: s.update(vocabulary=[f"t{i}" for i in range(200_000)]), "1 to 100000 tags"),
    ],
    ids=["width40", "inf", "nan", "model", "rate", "kind", "length", "n_mels", "mean", "tags"],
)
def test_a_crafted_checkpoint_is_one_line_before_anything_is_built(
    tmp_path, monkeypatch, change, named
):
    run = tamper(make_run(tmp_path / "run"), change)
    built = []
    import tagtrain.inference.trained_run as trained_run

    def spy(*args, **kwargs):
        built.append(args)
        return create_model(*args, **kwargs)

    monkeypatch.setattr(trained_run, "create_model", spy)
    status, _, err = cli("evaluate", "--run", str(run), "--data", str(tmp_path), "--device", "cpu")
    assert named in one_line(status, err)
    assert built == []


def test_the_parameter_count_is_bounded_by_the_registry(tmp_path):
    from tagtrain.inference import run_checks

    bound = run_checks.parameter_bound(MODEL)
    assert bound == run_checks.PARAMETER_HEADROOM * 3_687_348  # the registry's reference
    cfg = RunConfig(model=MODEL, width=4.0)
    run_checks.check_parameter_count(cfg, 50, "run")  # the widest width: within the bound
    with pytest.raises(ckpt.CheckpointError, match="parameters, over its bound"):
        run_checks.check_parameter_count(cfg, 2_000_000, "run")  # a huge output layer
    assert load_run(make_run(tmp_path / "ok"), device="cpu").vocabulary == TAGS


# --- item 5: non-finite weights and NaN in JSON ---------------------------------------


def _poison(value: float):
    def change(state):
        name = next(k for k, v in state["model"].items() if v.is_floating_point())
        state["model"][name] = state["model"][name].clone().fill_(value)

    return change


@pytest.mark.parametrize("value", [math.nan, math.inf])
def test_loading_a_run_with_non_finite_weights_is_one_line_naming_the_tensor(tmp_path, value):
    run = tamper(make_run(tmp_path / "run"), _poison(value))
    weights = torch.load(run / RunDir.BEST, weights_only=True)["model"]
    first = next(k for k, v in weights.items() if v.is_floating_point())
    clip = tmp_path / "x.wav"
    sf.write(clip, np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 5), 16000)
    status, _, err = cli("tag", str(clip), "--run", str(run), "--device", "cpu", "--json")
    line = one_line(status, err)
    assert f"tensor {first} holds NaN or infinite values" in line


def test_import_weights_refuses_non_finite_tensors_naming_them(tmp_path, capsys):
    from tagtrain.__main__ import main
    from tests.test_import_weights import reference_state

    state = reference_state("fcn")
    name = sorted(k for k, v in state.items() if v.is_floating_point())[3]
    state[name] = state[name].clone()
    state[name].view(-1)[0] = math.nan
    path = tmp_path / "fcn.pth"
    torch.save(state, path)
    code = main(["import-weights", "--from", "sota", str(path), "--model", "fcn",
                 "--vocabulary", "mtt", "--out", str(tmp_path / "r")])  # fmt: skip
    _, err = capsys.readouterr()
    assert code == 2 and f"tensor {name} holds NaN" in one_line(code, err)
    assert not (tmp_path / "r" / RunDir.BEST).exists()


def test_tag_json_never_holds_a_bare_nan(tmp_path, monkeypatch):
    """A model whose outputs overflow to NaN (finite weights, a huge input): `tag --json`
    still prints valid JSON, the non-finite numbers as null."""
    import tagtrain.inference.tagging as tagging

    run = make_run(tmp_path / "run")
    clip = tmp_path / "x.wav"
    sf.write(clip, np.random.default_rng(0).uniform(-0.5, 0.5, 16000 * 5), 16000)
    loaded = tagging.load_run_from_args

    def overflowing(*args, **kwargs):
        trained = loaded(*args, **kwargs)
        _, bias = list(trained.model.named_parameters())[-1]
        with torch.no_grad():
            bias.fill_(math.nan)
        return trained

    monkeypatch.setattr(tagging, "load_run_from_args", overflowing)
    status, out, err = cli("tag", str(clip), "--run", str(run), "--device", "cpu", "--json")
    assert status == 0, err

    def refuse(constant):
        raise ValueError(f"bare {constant} in the JSON output")

    text = json.dumps(json.loads(out, parse_constant=refuse))
    assert "NaN" not in text and "null" in text


# --- item 12: a full disk at a checkpoint save ----------------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        OSError(errno.ENOSPC, "No space left on device"),
        RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 1234 vs 1100"),
    ],
    ids=["enospc", "torch"],
)
def test_a_full_disk_at_a_checkpoint_save_says_so_and_where(tmp_path, monkeypatch, failure):
    def full(obj, f, *args, **kwargs):
        Path(f).write_bytes(b"partial")
        raise failure

    monkeypatch.setattr(ckpt.torch, "save", full)
    target = tmp_path / "run" / "last.pt"
    target.parent.mkdir()
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(ckpt.CheckpointError) as caught:
        ckpt.save_checkpoint(target, {"step": 1})
    message = str(caught.value)
    assert "\n" not in message
    assert "disk" in message and str(target.parent) in message
    assert target.read_bytes() == b"the previous checkpoint"
    assert sorted(p.name for p in target.parent.iterdir()) == ["last.pt"]  # no temp file


# --- item 12: one bad index row costs one sample, not its batch ------------------------


def _read_by_samples(data_dir, card, batch_size: int):
    from tagtrain import loader
    from tagtrain.models.registry import get_entry

    shards = loader.split_shards(card, str(data_dir), "train")
    plan = loader.plan_input(card, get_entry(MODEL).input_spec)
    config = loader.LoaderConfig(
        batch_size=batch_size, shuffle_buffer=0, partition="samples", train=True, seed=1
    )
    reader = loader.EpochReader(loader.ShardStream(shards, plan, card["vocabulary"], config))
    batches = list(reader)
    reader.close()
    return batches, reader.stats


def test_one_bad_index_row_costs_one_sample_not_its_batch(tmp_path):
    """An index row whose offset points at another member (crafted, or one bad entry): the
    loader reads each member with its tar header, so it never yields the other bytes; only
    that sample is skipped, the other 7 of the batch (same shard, same request) are read."""
    import pyarrow.parquet as pq

    from tests import shardkit

    data = tmp_path / "data"
    # PCM stored too: the model reads a small part of each shard, by ranges (not whole).
    card = shardkit.make_dataset(data, {"train": [8]}, seconds=(1.0, 1.5), stored=("mel", "pcm"))
    table = pq.read_table(data / "index.parquet")
    rows = table.to_pylist()
    victim = rows[3]
    json_member = next(m for m in victim["members"] if m["name"].endswith(".json"))
    other = next(m for m in rows[4]["members"] if m["name"].endswith(".json"))
    json_member["offset"] = other["offset"]  # another sample's json, as big or not
    pq.write_table(type(table).from_pylist(rows, schema=table.schema), data / "index.parquet")

    batches, stats = _read_by_samples(data, card, batch_size=8)
    keys = [k for b in batches for k in b.keys]
    assert sorted(keys) == sorted(r["key"] for r in rows if r["key"] != victim["key"])
    assert stats.bad_by_reason == {"read_error": 1} and stats.shard_errors == 0
    assert stats.errors == [
        f"{victim['key']}: read_error: IndexMismatch: no member {json_member['name']!r} at "
        f"offset {other['offset']}"
    ]
