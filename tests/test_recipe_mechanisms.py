"""What the recipes ask of the trainer takes effect (issue 28, item 2): SpecAugment masks
with counts, widths and a probability; MAEST's balanced epoch sample (weights, counts,
DDP/worker partitioning, mid-epoch resume); plateau halving and Nesterov in the
schedules; the run's standardisation in the input plan; a required split variant; and
`init_checkpoint: required` with `--init FILE` (a PaSST/MAEST-layout checkpoint)."""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import io
import json
import types

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from tagtrain.__main__ import main
from tagtrain.commands.train import KILL_AT_STEP_ENV, Schedule
from tagtrain.loader import split_shards
from tagtrain.loader.index import SampleRef
from tagtrain.loader.input_plan import with_standardize
from tagtrain.loader.partition import EpochSample, epoch_order, rank_batches
from tagtrain.models.registry import create_model, get_entry
from tagtrain.run.config import ConfigError, RunConfig
from tagtrain.run.runtime import Runtime
from tagtrain.training.callbacks import SpecMask, TagBalance, spec_mask
from tagtrain.training.data import TrainingData, check_split_variant, epoch_sample
from tagtrain.training.patchout import PatchoutObjective, PatchoutOptions
from tests import shardkit
from tests.test_train import logged_steps, trainer_cli

ERROR = "python -m tagtrain: error: "


def cli(*args: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        try:
            status = main(list(args))
        except SystemExit as exc:
            status = exc.code
    return status, err.getvalue()


def one_line(status, stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith(ERROR), stderr
    return lines[0]


# --- masks -----------------------------------------------------------------------------


def masked_spans(row: torch.Tensor) -> int:
    """Masked columns (all zero) of one [F, T] example's time axis."""
    return int((row == 0).all(dim=0).sum())


def test_masks_have_counts_widths_and_a_probability():
    torch.manual_seed(0)
    x = torch.ones(400, 96, 200)
    one = spec_mask(x, 8, 8)  # one mask of each kind, widths in [0, 8)
    many = spec_mask(x, 8, 8, freq_count=5, time_count=20, p=0.5)
    time_one = [masked_spans(r) for r in one]
    time_many = [masked_spans(r) for r in many]
    freq_many = [int((r == 0).all(dim=1).sum()) for r in many]
    assert max(time_one) <= 7
    assert max(time_many) <= 20 * 7 and max(time_many) > 7  # several spans per example
    assert max(freq_many) <= 5 * 7 and max(freq_many) > 7
    untouched = sum(bool((r == 1).all()) for r in many)
    assert 150 < untouched < 250  # p = 0.5 of 400 examples (a masked one: ~1 in 10^4 whole)
    masked = [t for t in time_many if t]
    assert sum(masked) / len(masked) > 40  # ~20 spans of mean width 3.5, minus overlaps
    assert torch.equal(spec_mask(x, 8, 8, 5, 20, p=0.0), x)


def test_the_patchout_objective_masks_with_the_options_counts_and_probability():
    options = PatchoutOptions(
        freq_mask=8, time_mask=8, freq_mask_count=5, time_mask_count=20, mask_p=0.25,
        mixup_alpha=0, swa_start=0,
    )  # fmt: skip
    ctx = types.SimpleNamespace(model=None, cfg=None, vocabulary=[])
    masks = [c for c in PatchoutObjective(options, "patchout_tiny").callbacks(ctx)]
    mask = next(c for c in masks if isinstance(c, SpecMask))
    assert (mask.freq, mask.time, mask.freq_count, mask.time_count, mask.p) == (8, 8, 5, 20, 0.25)
    off = dataclasses.replace(options, mask_p=0.0)
    assert not any(
        isinstance(c, SpecMask) for c in PatchoutObjective(off, "patchout_tiny").callbacks(ctx)
    )
    with pytest.raises(ConfigError, match="mask_p must be in"):
        dataclasses.replace(options, mask_p=1.5).validate("patchout_tiny")


# --- the balanced epoch sample ---------------------------------------------------------


def skewed_tracks(n=1000, rare=50):
    """Track keys and tags: `rare` tracks with a rare tag, all with a common one."""
    return {f"t{i:04d}": (["rare", "common"] if i < rare else ["common"]) for i in range(n)}


def test_the_balanced_sample_draws_rare_tag_tracks_more_often_than_uniform():
    tracks = skewed_tracks()
    balance = TagBalance.from_tags(list(tracks.values()), ["rare", "common"])
    weights = {k: sum(balance.tag_weights[["rare", "common"].index(t)] for t in tags)
               for k, tags in tracks.items()}  # fmt: skip
    assert weights["t0000"] == pytest.approx(1 / 50 + 1 / 1000)  # inverse label frequency
    refs = [[SampleRef(0, k, (("json", 512, 1),)) for k in tracks]]
    drawn = {"uniform": collections.Counter(), "balanced": collections.Counter()}
    for epoch in range(20):
        for name, sample in (
            ("uniform", EpochSample(200)),
            ("balanced", EpochSample(200, weights)),
        ):
            order = epoch_order(refs, ["s0"], seed=3, epoch=epoch, block=16, sample=sample)
            keys = [r.key for r in order]
            assert len(keys) == len(set(keys)) == 200  # without replacement, N a epoch
            drawn[name].update(keys)
    rare = {k for k in tracks if "rare" in tracks[k]}
    uniform_rare = sum(drawn["uniform"][k] for k in rare) / (20 * 200)
    balanced_rare = sum(drawn["balanced"][k] for k in rare) / (20 * 200)
    assert 0.02 < uniform_rare < 0.08  # ~5%: the rare tag's share of the tracks
    assert balanced_rare > 0.15  # weight 0.021 vs 0.001 each: ~20 of the 200 draws
    again = epoch_order(refs, ["s0"], 3, 7, 16, EpochSample(200, weights))
    assert again == epoch_order(refs, ["s0"], 3, 7, 16, EpochSample(200, weights))
    assert again != epoch_order(refs, ["s0"], 3, 8, 16, EpochSample(200, weights))
    total = len(again)  # ranks partition the sample like any epoch
    used = [i for r in range(4) for a, b in rank_batches(total, 0, 5, 4, r) for i in range(a, b)]
    assert sorted(used) == list(range(200))


@pytest.fixture(scope="module")
def skewed_dataset(tmp_path_factory):
    """A dataset whose index gives one tag to 4 of its 24 train tracks."""
    out = tmp_path_factory.mktemp("skewed")
    card = shardkit.make_dataset(out, {"train": [8, 8, 8], "valid": [4]}, seed=11)
    table = pq.read_table(out / "index.parquet")
    train = sorted(
        k for k, s in zip(table["key"].to_pylist(), table["split"].to_pylist()) if s == "train"
    )
    rare = set(train[:4])
    tags = [["tone_a"] if k in rare else ["tone_b"] for k in table["key"].to_pylist()]
    table = table.set_column(table.column_names.index("tags"), "tags", pa.array(tags))
    pq.write_table(table, out / "index.parquet")
    return out, card, rare


def test_epoch_samples_weights_come_from_the_index_and_whole_shard_datasets_refuse(
    skewed_dataset, tmp_path
):
    out, card, rare = skewed_dataset
    cfg = RunConfig(data=str(out), model="m", epoch_samples=6, balance="inverse_frequency")
    shards = split_shards(card, str(out), "train")
    sample = epoch_sample(cfg, card, shards, {})
    assert sample.size == 6 and len(sample.weights) == 24
    assert [sample.weights[k] for k in sorted(rare)] == pytest.approx([1 / 4] * 4)
    common = [w for k, w in sample.weights.items() if k not in rare]
    assert common == pytest.approx([1 / 20] * 20)
    assert epoch_sample(dataclasses.replace(cfg, balance="none"), card, shards, {}).weights is None
    with pytest.raises(ConfigError, match="balance inverse_frequency weights the epoch sample"):
        RunConfig(data="d", model="m", balance="inverse_frequency").validate()
    plain = tmp_path / "plain"
    card2 = shardkit.make_dataset(
        plain, {"train": [4, 4], "valid": [2]}, seed=1, member_index=False
    )
    shards2 = split_shards(card2, str(plain), "train")
    with pytest.raises(ConfigError, match="member byte ranges"):
        epoch_sample(dataclasses.replace(cfg, data=str(plain)), card2, shards2, {})


SAMPLED = [
    "--model", "short_chunk_cnn", "--width", "0.125", "--batch-size", "2", "--workers", "2",
    "--shuffle-buffer", "4", "--val-chunks", "1", "--no-progress", "--log-samples",
    "--epochs", "2", "--checkpoint-every", "1", "--epoch-samples", "12",
    "--balance", "inverse_frequency",
]  # fmt: skip


def test_a_balanced_epoch_sample_trains_and_resumes_mid_epoch_exactly(skewed_dataset, tmp_path):
    out, card, rare = skewed_dataset
    whole = tmp_path / "whole"
    done = trainer_cli("--data", str(out), "--out", str(whole), *SAMPLED)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "epoch sample: 12 of 24 training tracks per epoch" in done.stdout
    steps = logged_steps(whole)
    assert len(steps) == 12  # 12 tracks of 24 per epoch, batches of 2: 6 steps an epoch
    epochs = [[k for e, _, keys in steps if e == n for k in keys] for n in (0, 1)]
    assert all(len(keys) == len(set(keys)) == 12 for keys in epochs)
    assert epochs[0] != epochs[1]
    assert sum(k in rare for keys in epochs for k in keys) >= 6  # uniform: 4 of 24 = 4 expected
    run = tmp_path / "killed"
    killed = trainer_cli(
        "--data", str(out), "--out", str(run), *SAMPLED, env={KILL_AT_STEP_ENV: "9"}
    )
    assert killed.returncode == -9, killed.stderr[-2000:]
    resumed = trainer_cli("--out", str(run), "--resume", "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert logged_steps(run) == steps  # the same keys at every step, in order


# --- schedules -------------------------------------------------------------------------


def test_plateau_halving_halves_the_rate_after_n_epochs_without_improvement():
    cfg = RunConfig(data="d", model="m", schedule="early_stop", patience=7, plateau_halving=2)
    schedule = Schedule(cfg)
    losses = [0.9, 0.8, 0.85, 0.86, 0.7, 0.75, 0.76, 0.77, 0.78, 0.79, 0.8]
    events = []
    for epoch, loss in enumerate(losses):
        schedule.observe(epoch, loss)
        events.append((schedule.after_epoch(epoch), schedule.lr))
    # halved after 2, 2, 4 and 6 epochs in a row without improvement
    assert [e for e, _ in events] == [
        None, None, None, "halve", None, None, "halve", None, "halve", None, "halve",
    ]  # fmt: skip
    assert events[-1][1] == pytest.approx(1e-4 / 16)
    off = Schedule(dataclasses.replace(cfg, plateau_halving=0))
    for epoch, loss in enumerate(losses):
        off.observe(epoch, loss)
        assert off.after_epoch(epoch) is None
    assert off.lr == 1e-4


def test_a_halving_that_early_stopping_preempts_is_refused():
    cfg = RunConfig(data="d", model="m", schedule="early_stop", patience=75, plateau_halving=75)
    with pytest.raises(ConfigError, match="plateau_halving 75 never takes effect: patience 75"):
        cfg.validate()
    # No early stop (the reference of Pons et al.: 600 epochs), or a later one: it halves.
    for patience in (0, 76):
        dataclasses.replace(cfg, patience=patience).validate()
    no_stop = Schedule(dataclasses.replace(cfg, patience=0, plateau_halving=2))
    for epoch, loss in enumerate([0.5, 0.6, 0.6, 0.6, 0.6]):
        no_stop.observe(epoch, loss)
        no_stop.after_epoch(epoch)
    assert not no_stop.stopped and no_stop.lr == pytest.approx(1e-4 / 4)


def test_sgd_nesterov_is_a_setting():
    params = [torch.nn.Parameter(torch.zeros(1))]
    for nesterov in (True, False):
        cfg = RunConfig(data="d", model="m", adam_epochs=0, sgd_nesterov=nesterov)
        optimiser = Schedule(cfg).make_optimizer(params)
        assert isinstance(optimiser, torch.optim.SGD)
        assert optimiser.defaults["nesterov"] is nesterov


# --- input, dataset, initialisation ----------------------------------------------------


def test_standardize_reaches_the_input_plan_and_the_device_input(skewed_dataset):
    out, card, _ = skewed_dataset
    rt = Runtime.start("cpu", "fp32")
    spec = get_entry("short_chunk_cnn").input_spec  # stores its mel: the card's statistics
    cfg = RunConfig(data=str(out), model="short_chunk_cnn", workers=0, batch_size=2)
    x = torch.randn(2, spec.n_mels, 8) * 3 + 5
    mean = torch.tensor(card["mel_stats"]["mean"])[:, None]
    std = torch.tensor(card["mel_stats"]["std"]).clamp_min(1e-5)[:, None]
    outputs = {}
    for standardize in ("", "none", "band", "global"):
        data = TrainingData.open(dataclasses.replace(cfg, standardize=standardize), spec, None, rt)
        outputs[standardize] = (data.plan.standardize, data.device_input(x))
        data.close()
    assert outputs[""][0] == spec.standardize  # the model's own
    assert outputs["none"][0] == "none" and torch.equal(outputs["none"][1], x)
    assert outputs["band"][0] == "band"
    torch.testing.assert_close(outputs["band"][1], (x - mean) / std)
    g_mean = float(mean.mean())
    g_std = float((std.square() + mean.square()).mean() - g_mean**2) ** 0.5
    assert outputs["global"][0] == "global"
    torch.testing.assert_close(outputs["global"][1], (x - g_mean) / g_std, rtol=1e-4, atol=1e-4)


def test_global_standardize_takes_the_card_statistics_over_all_bands():
    spec = get_entry("short_chunk_cnn").input_spec
    from tagtrain.loader.input_plan import InputPlan

    plan = InputPlan(
        "mel", "mel.npy", 10, True, None, spec.features.to_dict(), (1.0, 3.0), (1.0, 1.0)
    )
    global_ = with_standardize(plan, "global")
    assert global_.standardize == "global"
    assert global_.global_stats == pytest.approx((2.0, 2.0**0.5))  # E[x^2] = 6, mean 2
    with pytest.raises(Exception, match="needs the card's mel_stats"):
        with_standardize(dataclasses.replace(plan, mean=None, std=None), "global")


def test_a_required_split_variant_refuses_another_in_one_line(skewed_dataset):
    out, card, _ = skewed_dataset
    cfg = RunConfig(data=str(out), model="m", split_variant="full")
    with pytest.raises(
        ConfigError, match="unrecorded split variant; this run needs split_variant full"
    ):
        check_split_variant(card, cfg)
    check_split_variant({**card, "manifest": {"split_variant": "full"}}, cfg)
    with pytest.raises(ConfigError, match="prepared from the clean split variant"):
        check_split_variant({**card, "manifest": {"split_variant": "clean"}}, cfg)
    check_split_variant(card, dataclasses.replace(cfg, split_variant=""))  # any
    status, err = cli(
        "train", "--data", str(out), "--model", "short_chunk_cnn", "--split-variant", "full",
        "--out", str(out / "never"),
    )  # fmt: skip
    assert "split_variant full" in one_line(status, err)


def test_init_checkpoint_required_refuses_to_start_without_init(tmp_path):
    required = PatchoutOptions(init_checkpoint="required")
    with pytest.raises(ConfigError, match="give --init FILE"):
        required.check_init("", resume=False)
    required.check_init("maest.pt", resume=False)
    required.check_init("", resume=True)  # a resumed run was initialised when it began
    PatchoutOptions().check_init("", resume=False)  # optional
    status, err = cli(
        "train-patchout", "--data", str(tmp_path), "--model", "patchout_tiny",
        "--init-checkpoint", "required",
    )  # fmt: skip
    assert "init_checkpoint: required" in one_line(status, err)


def test_train_patchout_with_the_maest_recipe_and_no_init_exits_2(tmp_path):
    status, err = cli("train-patchout", "--recipe", "maest_10s", "--data", str(tmp_path))
    assert "give --init FILE" in one_line(status, err)


def passt_file(path, model):
    """`model`'s tensors under PaSST's names, in a Lightning-like container."""
    from tagtrain.pretrained.importers.maest import reference_key

    state = {reference_key(k): v for k, v in model.state_dict().items()}
    torch.save({"state_dict": state}, path)
    return path


def test_init_file_loads_a_passt_layout_checkpoint_checked(tmp_path):
    from tagtrain.pretrained.importers.common import WeightsImportError
    from tagtrain.pretrained.importers.maest import init_from_checkpoint_file

    source = create_model("patchout_tiny", 5, seed=1)
    path = passt_file(tmp_path / "passt.pt", source)
    model = create_model("patchout_tiny", 7, seed=2)
    line = init_from_checkpoint_file(model, "patchout_tiny", str(path), list("abcdefg"))
    assert "new 7-tag head" in line
    theirs = source.state_dict()
    for key, value in model.state_dict().items():
        if key.startswith("encoder.") or key.startswith("patch_embed"):
            assert torch.equal(value, theirs[key]), key
    broken = torch.load(path, weights_only=True)["state_dict"]
    broken.pop(next(k for k in broken if k.startswith("blocks.0.")))
    torch.save(broken, tmp_path / "broken.pt")
    with pytest.raises(WeightsImportError):
        init_from_checkpoint_file(model, "patchout_tiny", str(tmp_path / "broken.pt"), ["a"])
    with pytest.raises(WeightsImportError, match="initialises patchout models"):
        init_from_checkpoint_file(
            create_model("short_chunk_cnn", 2, seed=0), "short_chunk_cnn", str(path), ["a", "b"]
        )
    with pytest.raises(WeightsImportError, match="no such checkpoint file"):
        init_from_checkpoint_file(model, "patchout_tiny", str(tmp_path / "none.pt"), ["a"])


def test_config_json_records_the_new_settings():
    cfg = RunConfig(
        data="d", model="m", eval_chunks=8, eval_window="moving", epoch_samples=10,
        balance="inverse_frequency", standardize="band", split_variant="full",
        plateau_halving=3, sgd_nesterov=False,
    ).validate()  # fmt: skip
    saved = json.loads(cfg.to_json())
    assert saved["eval_chunks"] == 8 and cfg.evaluation_chunks() == 8
    assert RunConfig(val_chunks=4).evaluation_chunks() == 4
    for name, value in (("balance", "weighted"), ("standardize", "z"), ("eval_window", "x")):
        with pytest.raises(ConfigError, match=f"{name} must be one of"):
            dataclasses.replace(cfg, **{name: value}).validate()


def test_a_runs_standardize_is_what_evaluation_applies(skewed_dataset, tmp_path):
    from tagtrain.commands.train import train
    from tagtrain.inference.trained_run import load_run, open_split

    out, card, _ = skewed_dataset
    run = tmp_path / "run"
    cfg = RunConfig(
        data=str(out), model="short_chunk_cnn", width=0.125, batch_size=4, workers=0,
        val_chunks=1, epochs=1, max_steps_per_epoch=2, progress=False, out=str(run),
        standardize="global",
    )  # fmt: skip
    train(cfg)
    trained = load_run(run, "last", "cpu")
    plan = open_split(trained, str(out), "valid").plan
    assert plan.standardize == "global" != get_entry("short_chunk_cnn").input_spec.standardize
    assert plan.global_stats == pytest.approx(trained.plan.global_stats)


def test_loss_balance_reads_old_patchout_json_and_refuses_a_second_balancing():
    from tagtrain.training.patchout import PatchoutTrainer

    old = PatchoutOptions.from_settings({"balance": "tags"}, "patchout.json")
    assert old.loss_balance == "tags"  # runs saved before --balance became the epoch sample's
    cfg = RunConfig(data="d", model="patchout_tiny", epoch_samples=10, balance="inverse_frequency")
    with pytest.raises(ConfigError, match="choose one"):
        PatchoutTrainer(cfg, PatchoutOptions(loss_balance="tags"))


def test_two_ranks_partition_the_same_epoch_sample(skewed_dataset, tmp_path):
    """DDP: every rank draws the same sample (a function of seed and epoch) and takes its
    own batches of it: together each epoch's 12 tracks once, as one rank sees them."""
    from tests.conftest import train_two_ranks
    from tests.test_train import ENV

    out, _, _ = skewed_dataset
    one = tmp_path / "one"
    alone = trainer_cli("--data", str(out), "--out", str(one), *SAMPLED)
    assert alone.returncode == 0, alone.stderr[-2000:]
    run = tmp_path / "two"
    args = ["train", "--data", str(out), "--out", str(run), *SAMPLED]
    args[args.index("--workers") + 1] = "1"
    train_two_ranks(args, ENV)
    ranks = [logged_steps(run, r) for r in (0, 1)]
    for epoch in (0, 1):
        keys = [[k for e, _, ks in steps if e == epoch for k in ks] for steps in ranks]
        assert len(keys[0]) == len(keys[1]) == 6 and not set(keys[0]) & set(keys[1])
        single = {k for e, _, ks in logged_steps(one) if e == epoch for k in ks}
        assert set(keys[0]) | set(keys[1]) == single
