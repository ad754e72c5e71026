"""Faithfulness to the papers' reference code: exact parameter counts and the structural
facts a faithful model must keep (docs/FIDELITY.md). A regression to an unfaithful
default fails here."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipelines.core.features import FeatureConfig
from tagtrain.models.attention import BertLayer, PreNormLayer
from tagtrain.models.registry import count_parameters, create_model, get_entry

torch.set_num_threads(2)

# Exact counts at 50 tags, from the reference implementations.
FAITHFUL_PARAMS = {
    "musicnn": 784_300,  # sota-music-tagging-models Musicnn (dataset='mtat')
    "musicnn_128": 784_300,  # the timbral filter heights are fixed from 96 bands
    "cnnsa": 10_521_652,
    "music_tagging_transformer": 4_567_732,  # teacher.ckpt
    "music_tagging_transformer_small": 1_108_852,  # compact_student.ckpt
    # Table 4 student (conv 64 / attention 64) without the q/k/v bias the reference lacks;
    # 488,628 is the same model with that bias (4 layers x 3 x 64).
    "music_tagging_transformer_student": 487_860,
    "fcn": 447_732,
    "crnn": 394_100,
    # Won et al. 2019's own models at the reference code's widths
    # (minzwon/self-attention-music-tagging, README settings: conv_channels 16,
    # attention_channels 512, 2 layers, 8 heads); the default names follow Table 1.
    "won2019_spec_reference": 6_882_452,
    "won2019_wave_reference": 6_718_178,
    # Pons et al. 2018 (jordipons/music-audio-tagging-at-scale-models, models.py).
    "pons_spec": 5_926_198,
    "pons_wave": 5_379_126,
}


@pytest.mark.parametrize("name", sorted(FAITHFUL_PARAMS))
def test_exact_parameter_count(name):
    model = create_model(name, 50, seed=None)
    assert count_parameters(model) == FAITHFUL_PARAMS[name]
    assert get_entry(name).reference_params == FAITHFUL_PARAMS[name]


def test_musicnn_is_the_seed000_reimplementation():
    model = create_model("musicnn", 50)
    timbral = [m for m in model.front if hasattr(m, "conv") and m.conv.weight.dim() == 4]
    temporal = [m for m in model.front if hasattr(m, "conv") and m.conv.weight.dim() == 3]
    assert [m.conv.kernel_size for m in timbral] == [(67, 7), (38, 7)]
    assert [m.conv.out_channels for m in timbral] == [204, 204]
    assert [m.conv.kernel_size[0] for m in temporal] == [129, 65, 33]
    assert [m.conv.out_channels for m in temporal] == [51, 51, 51]
    # The temporal filters see the mean over frequency: a band-permuted input gives the
    # same temporal features, which a max-pooled 2-D filter would not guarantee.
    model.eval()
    x = torch.randn(1, 1, 96, 188)
    perm = x[:, :, torch.randperm(96)]
    for conv in temporal:
        assert torch.allclose(conv(x), conv(perm), atol=1e-5)
    # BN before ReLU: every output of a front-end filter is >= 0 (ReLU last).
    assert all((conv(x) >= 0).all() for conv in model.front)
    assert model(torch.randn(2, 96, 188)).shape == (2, 50)


def test_cnnsa_cls_is_fixed_seeded_and_there_are_no_positions():
    model = create_model("cnnsa", 50)
    names = [n for n, _ in model.named_parameters()]
    assert not any("cls" in n or "pos" in n for n in names)
    expected = np.random.RandomState(0).random_sample(256).astype(np.float32)
    assert torch.equal(model.cls, torch.from_numpy(expected))
    assert model.cls.min() >= 0 and model.cls.max() < 1
    # Two models built with different seeds share the [CLS] vector.
    assert torch.equal(create_model("cnnsa", 50, seed=1).cls, model.cls)
    layers = model.encoder.layers
    assert len(layers) == 2 and all(isinstance(layer, BertLayer) for layer in layers)
    layer = layers[0]
    assert layer.heads == 8 and layer.intermediate.out_features == 1024
    assert layer.hidden_dropout.p == 0.4 and layer.attention_dropout.p == 0.5
    assert layer.query.bias is not None  # BERT's projections have a bias
    # No positional information: permuting the frame tokens leaves the [CLS] output alone.
    model.eval()
    with torch.no_grad():
        tokens = model.tokens(torch.randn(1, 128, 300))
        shuffled = torch.cat([tokens[:, :1], tokens[:, 1:].flip(1)], dim=1)
        assert torch.allclose(model.encoder(tokens)[:, 0], model.encoder(shuffled)[:, 0], atol=1e-5)


@pytest.mark.parametrize(
    "name",
    [
        "music_tagging_transformer",
        "music_tagging_transformer_small",
        "music_tagging_transformer_student",
    ],
)
def test_transformer_has_no_qkv_bias_and_no_attention_dropout(name):
    model = create_model(name, 50)
    layers = model.encoder.layers
    assert len(layers) == 4 and all(isinstance(layer, PreNormLayer) for layer in layers)
    for layer in layers:
        assert layer.qkv.bias is None
    # In training mode the attention probabilities are not dropped: rows still sum to 1.
    model.train()
    _, maps = model.attention(torch.randn(2, 128, 431))
    assert torch.allclose(maps[-1].sum(-1), torch.ones(()), atol=1e-5)
    # The head is LayerNorm + Linear without dropout, as the reference's mlp_head.
    assert model.dropout.p == 0.0


def test_student_sizes_are_both_selectable():
    small = create_model("music_tagging_transformer_small", 50)
    student = create_model("music_tagging_transformer_student", 50)
    assert small.front[0].conv1.out_channels == 128 and small.embed_dim == 64
    assert student.front[0].conv1.out_channels == 64 and student.embed_dim == 64


def test_standardisation_is_what_each_paper_does():
    for name in (
        "fcn",
        "crnn",
        "musicnn",
        "cnnsa",
        "short_chunk_resnet",
        "music_tagging_transformer",
    ):
        spec = get_entry(name).input_spec
        assert spec.standardize == "none", name
        # ... and the model carries its own learned input batch-norm.
        assert isinstance(create_model(name, 50).input.bn, nn.BatchNorm2d)
    for seconds in (5, 10, 20, 30):
        spec = get_entry(f"maest_{seconds}s").input_spec
        assert spec.standardize == "global"
        assert spec.global_stats == pytest.approx((2.06755686098554, 2 * 1.268292820667291))


@pytest.mark.parametrize("name", ["fcn_128", "crnn_128", "musicnn_128"])
def test_128_band_variants_run_at_128_bands(name):
    model = create_model(name, 50).eval()
    spec = model.input_spec
    assert spec.n_mels == 128 and get_entry(name).input_spec.n_mels == 128
    with torch.no_grad():
        assert model(torch.randn(1, 128, spec.frames)).shape == (1, 50)


@pytest.mark.parametrize(
    ("name", "seconds"),
    [("pons_spec_3s", 3.0), ("pons_wave_3s", 3.0), ("pons_spec", 15.0), ("pons_wave", 15.0)],
)
def test_pons_models_at_3_and_15_seconds(name, seconds):
    model = create_model(name, 50, width=0.25).eval()
    spec = model.input_spec
    assert spec.seconds == seconds and get_entry(name).input_spec.seconds == seconds
    x = torch.randn(1, spec.samples) if spec.kind == "pcm" else torch.randn(1, 96, spec.frames)
    with torch.no_grad():
        assert model(x).shape == (1, 50)


@pytest.mark.parametrize(
    ("seconds", "columns", "patchout"), [(5, 30, 15), (10, 61, 30), (20, 124, 60), (30, 186, 90)]
)
def test_maest_lengths_and_time_patchout(seconds, columns, patchout):
    model = create_model(f"maest_{seconds}s", 400, seed=None, width=0.125)
    assert model.input_spec.samples // 256 + 1 == seconds * 16000 // 256
    assert model.grid == (9, columns)
    assert model.time_patchout == patchout and model.freq_patchout == 0


def passt_layout(model, rows: int, cols: int) -> dict:
    """A checkpoint in PaSST's layout made from `model`, with PaSST's larger position
    tables (128 bands: 12 rows; 998 frames: 99 columns) and its two heads."""
    from tagtrain.pretrained.patchout_init import _BLOCK_PARTS, _TOP

    own = model.state_dict()
    back = {ours: theirs for theirs, ours in _TOP.items()}
    state = {}
    for name, value in own.items():
        if name.startswith("classifier."):
            continue
        if name in back:
            state[back[name]] = value.clone()
            continue
        layer, part = name.split(".", 3)[2], name.split(".", 3)[3]
        theirs = next(k for k, v in _BLOCK_PARTS.items() if v == part)
        state[f"blocks.{layer}.{theirs}"] = value.clone()
    dim = own["cls_token"].shape[-1]
    freq = torch.randn(1, dim, rows, 1)
    freq[:, :, : own["freq_pos"].shape[2]] = own["freq_pos"]
    state["freq_new_pos_embed"] = freq
    state["time_new_pos_embed"] = torch.randn(1, dim, 1, cols)
    state["head.0.weight"], state["head.1.weight"] = torch.ones(dim), torch.zeros(527, dim)
    state["head_dist.weight"] = torch.zeros(527, dim)
    return state


def test_maest_initialises_strictly_from_a_passt_checkpoint(tmp_path):
    from tagtrain.pretrained.patchout_init import CheckpointError, load_passt_weights

    source = create_model("patchout_tiny", 527, seed=1)
    path = tmp_path / "passt.pt"
    state = passt_layout(source, rows=12, cols=99)
    torch.save({"state_dict": {f"net.{k}": v for k, v in state.items()}}, path)
    target = create_model("patchout_tiny", 50, seed=2)
    fresh = load_passt_weights(target, path)
    assert fresh == [
        "classifier.linear.bias",
        "classifier.linear.weight",
        "classifier.norm.bias",
        "classifier.norm.weight",
    ]
    ours = target.state_dict()
    assert torch.equal(
        ours["encoder.layers.0.self_attn.in_proj_weight"], state["blocks.0.attn.qkv.weight"]
    )

    # As MAEST's checkpoint_filter_fn: both tables resized (bicubic) to the reference grid
    # of a 96 x 625 input (96 // 10 = 9 rows, 625 // 10 = 62 columns), of which the
    # reference's forward uses the first 61 (the patches); golden-tested against the
    # reference in tests/test_import_weights_transformers.py.
    def resized(table, size):
        return F.interpolate(table, size=size, mode="bicubic", align_corners=False)

    assert torch.equal(ours["freq_pos"], resized(state["freq_new_pos_embed"], (9, 1)))
    assert torch.equal(ours["time_pos"], resized(state["time_new_pos_embed"], (1, 62))[..., :61])
    # A 30 s model has more columns than PaSST's 99: resized to 187, 186 used.
    longer = create_model("patchout_tiny", 50, seed=2, seconds=30.0)
    load_passt_weights(longer, path)
    assert longer.time_pos.shape[-1] == 186
    expected = resized(state["time_new_pos_embed"], (1, 187))[..., :186]
    assert torch.equal(longer.time_pos.detach(), expected)

    bad = dict(state)
    bad["blocks.0.attn.extra"] = torch.zeros(1)
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match="unexpected tensor 'blocks.0.attn.extra'"):
        load_passt_weights(target, path)
    bad = {k: v for k, v in state.items() if k != "blocks.1.mlp.fc2.weight"}
    torch.save(bad, path)
    with pytest.raises(CheckpointError, match="no tensor 'blocks.1.mlp.fc2.weight'"):
        load_passt_weights(target, path)
    torch.save({**state, "pos_embed": torch.zeros(1, 3, 96)}, path)
    with pytest.raises(CheckpointError, match="plain ViT/DeiT"):
        load_passt_weights(target, path)
    torch.save(passt_layout(create_model("patchout_small", 527), 12, 99), path)
    with pytest.raises(CheckpointError, match="unexpected tensor 'blocks.4.attn.qkv.weight'"):
        load_passt_weights(target, path)  # 6 blocks into 4
    torch.save(passt_layout(create_model("patchout_tiny", 527, width=2.0), 12, 99), path)
    with pytest.raises(CheckpointError, match=r"'freq_new_pos_embed' has shape \(1, 192, 9, 1\)"):
        load_passt_weights(target, path)  # 192 dimensions into 96


# --- recipes ----------------------------------------------------------------------------

TABLE2_MODELS = {
    "fcn",
    "fcn_128",
    "musicnn",
    "musicnn_128",
    "crnn",
    "crnn_128",
    "samplecnn",
    "samplecnn_se",
    "cnnsa",
    "hcnn",
    "short_chunk_cnn",
    "short_chunk_resnet",
}


def test_every_paper_setting_has_a_recipe():
    from tagtrain.recipes import load_recipe, recipe_names

    recipes = {name: load_recipe(name) for name in recipe_names()}
    table2 = {r["train"]["model"] for n, r in recipes.items() if n.startswith("won2020_")}
    assert table2 == TABLE2_MODELS
    assert {"won2019_cnnsa", "won2021_teacher", "won2021_ke", "won2021_kd"} <= set(recipes)
    for front in ("spec", "wave"):
        for secs in (3, 15):
            r = recipes[f"pons2018_{front}_{secs}s"]
            assert get_entry(r["train"]["model"]).input_spec.seconds == secs
    for secs in (5, 10, 20, 30):
        r = recipes[f"maest_{secs}s"]
        assert r["command"] == "patchout" and r["train"]["model"] == f"maest_{secs}s"
        assert r["train"]["lr"] == 2e-5 and r["train"]["epochs"] == 130
        assert r["prepare"]["log_scale"] == "log10_1p" and r["prepare"]["n_mels"] == 96
    for name, r in recipes.items():
        assert r["cite"] and r["train"].get("select", "val_loss") in ("val_loss", "roc_auc"), name
        # What prepare computes is the model's own features: FeatureConfig fields.
        spec = get_entry(r["train"]["model"]).input_spec
        assert r["prepare"]["sample_rate"] == spec.sample_rate
        fields = {k: v for k, v in r["prepare"].items() if k != "features"}
        assert fields == spec.card_requirements(), name
        assert FeatureConfig.from_fields(fields)
    assert recipes["won2019_cnnsa"]["train"]["select"] == "roc_auc"
    seed000 = recipes["won2020_fcn"]
    assert seed000["train"]["epochs"] == 200 and seed000["train"]["val_chunks"] == 16
    assert seed000["train"]["eval_chunks"] == 16 and seed000["train"]["sgd_nesterov"] is True
    teacher = recipes["won2021_teacher"]["train"]
    assert (teacher["lr"], teacher["weight_decay"], teacher["schedule"]) == (
        1e-4,
        0.0,
        "early_stop",
    )
    assert recipes["won2021_kd"]["train"]["model"] == "music_tagging_transformer_student"


def test_a_bad_recipe_is_one_clear_line(tmp_path, capsys):
    from tagtrain.__main__ import main
    from tagtrain.recipes import RecipeError, load_recipe

    bad = tmp_path / "bad.yaml"
    bad.write_text("cite: x\ncommand: train\ntrain: {model: fcn, epoch: 3}\n")
    with pytest.raises(RecipeError, match="recipe bad: train.epoch is not implemented"):
        load_recipe(str(bad))
    bad.write_text("cite: x\ncommand: train\ntrain: {model: fcn, batch_size: many}\n")
    with pytest.raises(RecipeError, match="batch_size"):
        load_recipe(str(bad))
    bad.write_text("cite: x\ncommand: train\ntrain: {model: fcn, select: f1}\n")
    with pytest.raises(RecipeError, match="select"):
        load_recipe(str(bad))
    # A recipe's prepare settings are checked against FeatureConfig: names and values.
    bad.write_text("cite: x\ncommand: train\ntrain: {model: fcn}\nprepare: {nmels: 64}\n")
    with pytest.raises(RecipeError, match="prepare.nmels is not implemented"):
        load_recipe(str(bad))
    bad.write_text("cite: x\ncommand: train\ntrain: {model: fcn}\nprepare: {f_max: 9000}\n")
    with pytest.raises(RecipeError, match="f_max"):
        load_recipe(str(bad))
    bad.write_text("cite: x\ncommand: train\ntrain: {model: fcn}\nprepare: {n_mels: 64}\n")
    assert load_recipe(str(bad))["prepare"]["n_mels"] == 64
    assert main(["recipes", "--show", "nope"]) == 2
    assert "unknown recipe 'nope'" in capsys.readouterr().err
    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert "won2020_musicnn_128" in listed and "maest_30s" in listed


def test_won2019_models_are_the_papers_own():
    from tagtrain.models.won2019 import sinusoid_positions

    spec_model, wave_model = create_model("won2019_spec", 50), create_model("won2019_wave", 50)
    assert spec_model.input_spec.frames == 256 and spec_model.input_spec.n_mels == 96
    assert spec_model.input_spec.standardize == "none"
    assert wave_model.input_spec.samples == 65_610
    front = spec_model.front
    assert isinstance(front.input_bn, nn.BatchNorm2d)  # the reference's input batch-norm
    heights = [s.block[0].kernel_size for s in front.shapes[:6]]
    assert heights == [(86, 7), (86, 3), (86, 1), (38, 7), (38, 3), (38, 1)]
    assert [s.block[0].kernel_size[0] for s in front.shapes[6:]] == [165, 129, 65, 33]
    # conv -> BN -> ReLU in every front-end layer (not the TF models' ReLU -> BN).
    for block in [s.block for s in front.shapes] + [front.project]:
        assert [type(m) for m in block][1:] in (
            [nn.BatchNorm2d, nn.ReLU],
            [nn.BatchNorm1d, nn.ReLU],
        )
    assert front.project[0].in_channels == 29 * 8 and front.project[0].out_channels == 512
    lee = [m for m in wave_model.front.layers.modules() if isinstance(m, nn.Conv1d)]
    assert [(c.out_channels, c.kernel_size[0], c.stride[0]) for c in lee] == [
        (128, 3, 3),
        (128, 3, 1),
        (128, 3, 1),
        (256, 3, 1),
        (256, 3, 1),
        (512, 7, 1),
    ]  # fmt: skip  (Table 1; the reference's 16, 16, 32, 32, 32: won2019_wave_reference)
    for model, steps in ((spec_model, 256), (wave_model, 270)):
        layers = model.encoder.layers
        assert len(layers) == 2 and all(isinstance(layer, BertLayer) for layer in layers)
        assert layers[0].heads == 8 and layers[0].intermediate.out_features == 2048
        assert layers[0].hidden_dropout.p == 0.4 and layers[0].attention_dropout.p == 0.4
        assert model.dropout.p == 0.5
        names = [n for n, _ in model.named_parameters()]
        assert not any("cls" in n or "pos" in n for n in names)  # fixed, not learned
        expected = np.random.RandomState(0).random_sample(512).astype(np.float32)
        assert torch.equal(model.cls, torch.from_numpy(expected))
        x = torch.zeros(1, 96, 256) if model is spec_model else torch.zeros(1, 65_610)
        model.eval()
        with torch.no_grad():
            assert model.tokens(x).shape == (1, steps + 1, 512)
    table = sinusoid_positions(257, 512)
    assert torch.equal(table[0], torch.zeros(512))  # [CLS] gets no position
    j = torch.arange(512)
    angle = 5 / torch.pow(10000.0, 2 * (j // 2).double() / 512)
    expected = torch.where(j % 2 == 0, torch.sin(angle), torch.cos(angle)).float()
    torch.testing.assert_close(table[5], expected)
    # The encoder sees [CLS] + front-end steps plus exactly that table (no learned part).
    small = create_model("won2019_spec", 50, width=0.125).eval()
    with torch.no_grad():
        mel = torch.randn(1, 96, 64)
        steps = small.front(mel).transpose(1, 2)
        plain = torch.cat([small.cls.expand(1, 1, -1), steps], dim=1)
        added = small.tokens(mel) - plain
        torch.testing.assert_close(added[0], sinusoid_positions(65, small.embed_dim))
        assert added[0, 1:].abs().sum() > 0


def test_won2019_recipes_follow_the_reference_solver():
    from tagtrain.recipes import load_recipe, recipe_settings
    from tagtrain.run.config import RunConfig, apply
    from tagtrain.training.schedules import Schedule

    for name in ("won2019_spec", "won2019_wave"):
        recipe = load_recipe(name)
        train = recipe["train"]
        assert train["model"] == name and train["schedule"] == "adam_sgd"
        # solver.py: Adam 1e-4 for 60 epochs, then SGD 1e-3 (Nesterov), /10 after 20 and 40.
        assert (train["lr"], train["adam_epochs"], train["sgd_lr"]) == (1e-4, 60, 1e-3)
        assert train["sgd_drop_after"] == [20, 40] and train["batch_size"] == 16
        assert train["val_chunks"] == 16 and train["eval_chunks"] == 16
        assert train["adam_weight_decay"] == 0.0 and train["weight_decay"] == 1e-4
        assert train["reload_best"] is False
        settings = recipe_settings(name, "train")[0]
        assert settings["select"] == "roc_auc" and settings["reload_best"] is False
        # The optimisers the run gets: Adam without weight decay, then SGD with 1e-4.
        schedule = Schedule(apply(RunConfig(), {**settings, "data": "-"}, name).validate())
        params = [nn.Parameter(torch.zeros(1))]
        adam = schedule.make_optimizer(params)
        assert isinstance(adam, torch.optim.Adam) and adam.defaults["weight_decay"] == 0.0
        assert [schedule.after_epoch(e) for e in range(59, 61)] == ["switch", None]
        sgd = schedule.make_optimizer(params)
        assert isinstance(sgd, torch.optim.SGD) and sgd.defaults["weight_decay"] == 1e-4
        assert sgd.defaults["nesterov"] and sgd.defaults["lr"] == 1e-3
    seed000 = recipe_settings("won2020_fcn", "train")[0]
    assert seed000["reload_best"] is True and seed000.get("adam_weight_decay") is None
    prepare = load_recipe("won2019_spec")["prepare"]
    assert (prepare["n_mels"], prepare["hop"], prepare["log_scale"]) == (96, 256, "db")
    assert load_recipe("won2019_wave")["prepare"]["features"] == "pcm"


def test_pons_models_feed_the_input_unnormalised_as_the_reference():
    # music-audio-tagging-at-scale-models: no batch-norm or standardisation before the
    # first convolutions (musicnn-training's input batch-norm is the option "batchnorm").
    # The paper's zero-mean unit-var spectrogram ("band") is the spectrogram default.
    for name in ("pons_spec", "pons_spec_3s"):
        assert create_model(name, 50).input_spec.standardize == "band", name
    for name, options in (
        ("pons_spec", {"input_norm": "none"}), ("pons_spec_3s", {"input_norm": "none"}),
        ("pons_wave", {}), ("pons_wave_3s", {}),
    ):  # fmt: skip
        model = create_model(name, 50, **options)
        assert model.input_spec.standardize == "none", name
        first = next(m for m in model.front.modules() if isinstance(m, (nn.Conv1d, nn.Conv2d)))
        before = []
        for m in model.front.modules():
            if m is first:
                break
            before.append(m)
        assert not any(isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)) for m in before), name
    mel = torch.full((2, 96, 40), 3.0) + torch.randn(2, 96, 40)
    plain = create_model("pons_spec", 5, width=0.125, input_norm="none").eval()
    with torch.no_grad():  # no input normalisation: a constant offset changes the output
        assert not torch.allclose(plain(mel), plain(mel + 2.0), atol=1e-4)
    bn = create_model("pons_spec", 50, input_norm="batchnorm")
    assert isinstance(bn.front.input_bn, nn.BatchNorm2d)
    assert count_parameters(bn) == FAITHFUL_PARAMS["pons_spec"] + 2
    assert create_model("pons_spec_3s", 50, input_norm="band").input_spec.standardize == "band"
    with pytest.raises(ValueError, match="input_norm"):
        create_model("pons_spec", 50, input_norm="layer")


def test_maest_teacher_student_is_the_references_separated_setup():
    from types import SimpleNamespace

    import torch.nn.functional as F

    from tagtrain.models.patchout import PatchoutTransformer
    from tagtrain.recipes import load_recipe
    from tagtrain.run.config import ConfigError
    from tagtrain.training.callbacks import TeacherTargets, hard_teacher_targets, mixup
    from tagtrain.training.objectives import Supervised
    from tagtrain.training.patchout import PatchoutOptions

    # discogs/dataset.py: sigmoid(teacher logits) > 0.45, else the most probable tag alone.
    logits = torch.logit(torch.tensor([[0.5, 0.46, 0.2], [0.3, 0.44, 0.1]]))
    assert hard_teacher_targets(logits, 0.45).tolist() == [[1, 1, 0], [0, 1, 0]]
    tiny = dict(dim=96, layers=1, heads=3, seconds=2.0, time_patchout=0)
    torch.manual_seed(0)
    student = PatchoutTransformer(4, distilled_type="separated", **tiny)
    plain = PatchoutTransformer(4, **tiny)
    assert count_parameters(student) - count_parameters(plain) == 96 * 4 + 4  # head_dist
    with pytest.raises(ValueError, match="separated"):
        plain.set_distillation_output(True)
    mel = torch.randn(3, 96, 125)
    student.eval()
    with torch.no_grad():  # inference: the CLS head alone (MAEST's predict_labels)
        stack = student.embed(mel)
        cls = student.classifier.linear(student.classifier.norm(stack[:, :96]))
        torch.testing.assert_close(student(mel), cls)
    student.train().set_distillation_output(True)
    teacher = PatchoutTransformer(4, **tiny).eval()
    y = torch.tensor([[1.0, 0, 0, 1], [0, 1, 0, 0], [0, 0, 1, 0]])
    trainer = SimpleNamespace(
        data=SimpleNamespace(device_input=lambda x: x), rt=SimpleNamespace(
            device=torch.device("cpu"), autocast=contextlib.nullcontext),
        callbacks=[TeacherTargets(teacher, 0.45)], net=student,
    )  # fmt: skip
    torch.manual_seed(1)
    loss = Supervised().loss(trainer, SimpleNamespace(x=mel, y=y))
    torch.manual_seed(1)
    both = student(mel)
    with torch.no_grad():
        target = hard_teacher_targets(teacher(mel), 0.45)
    expected = (
        F.binary_cross_entropy_with_logits(both[:, :4], y)
        + F.binary_cross_entropy_with_logits(both[:, 4:], target)
    ) / 2  # models/module.py TeacherStudentModule: (standard + teacher) / 2
    torch.testing.assert_close(loss, expected)
    # Mixup (after TeacherTargets) mixes labels and teacher targets with one lambda/partner.
    torch.manual_seed(2)
    _, mixed, _ = mixup(mel, torch.cat([y, target], 1), None, 0.3)
    torch.manual_seed(2)
    _, mixed_y, _ = mixup(mel, y, None, 0.3)
    torch.testing.assert_close(mixed[:, :4], mixed_y)
    with pytest.raises(ConfigError, match="give --teacher"):
        PatchoutOptions().validate("maest_30s_ts")
    with pytest.raises(ConfigError, match="teacher-student model"):
        PatchoutOptions(teacher="runs/t").validate("maest_30s")
    recipe = load_recipe("maest_30s_ts")
    assert recipe["train"]["batch_size"] == 4 and recipe["train"]["lr"] == 2e-5
    assert recipe["patchout"]["time_patchout"] == 90
    assert recipe["patchout"]["teacher_threshold"] == 0.45
    assert get_entry("maest_30s_ts").input_spec == get_entry("maest_30s").input_spec
