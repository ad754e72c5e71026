"""`import-weights --from ssmtt|maest|passt`: reference checkpoints -> our models, proven
equal to the reference implementations.

tests/fixtures/transformers_golden.{json,npz} come from scripts/golden/
make_transformer_golden.py, which ran the reference classes themselves (Music Tagging
Transformer, MAEST, PaSST; fetched snapshots, commits in the JSON) filled by
`tests.reference_states.seeded_state`, and recorded their state dicts' keys and shapes and
their outputs on seeded inputs. Here the same checkpoints are rebuilt from those keys,
converted, loaded strictly into our models and run on the same inputs.

Tolerance: float32 throughout, same weights and inputs; only the order of summation
differs (einsum vs matmul, fused attention). Measured: 3e-7 on the transformers' sigmoid
probabilities, 2e-6 on MAEST's logits and 3e-6 on its block-5 embeddings (values up to
~9, through 6-12 blocks of 768). Tolerances 1e-5 and 1e-4 absolute: loose enough for
that, far tighter than any wrong mapping (a swapped q/k/v, a position table taken from
the wrong end or cropped instead of resized, a missed layer), which moves outputs by
1e-2 or more (`test_a_wrong_mapping_fails_the_ssmtt_golden`).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.core.features import mel_filterbank
from tagtrain.models.registry import create_model, get_entry
from tagtrain.pretrained.importers import WeightsImportError, importer
from tests.reference_states import seeded_input, seeded_state

FIXTURES = Path(__file__).parent / "fixtures"
GOLDEN = json.loads((FIXTURES / "transformers_golden.json").read_text())["cases"]
ARRAYS = dict(np.load(FIXTURES / "transformers_golden.npz"))
SSMTT = importer("ssmtt")
MAEST = importer("maest")
TEACHER = "music_tagging_transformer"
FRONT_END_PREFIXES = ("spec.", "melspectrogram.")


def reference_state(case: str) -> dict[str, torch.Tensor]:
    return with_front_end(seeded_state(GOLDEN[case]["keys"], GOLDEN[case]["seed"]), case)


def with_front_end(state: dict[str, torch.Tensor], case: str) -> dict[str, torch.Tensor]:
    """The seeded torchaudio buffers (`*.window`, `*.mel_scale.fb`) replaced by what
    torchaudio computes for the case's model (our front end's values for its InputSpec:
    tests/test_front_end_reference.py), as in a real checkpoint. The golden inputs come
    after the front end, so the outputs do not depend on them."""
    keys = [k for k in state if k.startswith(FRONT_END_PREFIXES)]
    if not keys:
        return state
    spec = get_entry(case).input_spec
    for key in keys:
        if key.endswith(".window"):
            state[key] = torch.hann_window(spec.n_fft)
        elif key.endswith(".mel_scale.fb"):
            state[key] = mel_filterbank(
                spec.sample_rate, spec.n_fft, spec.n_mels, spec.f_min, spec.f_max,
                spec.mel_scale, spec.mel_norm,
            ).T.clone()  # fmt: skip
    return state


def reference_input(case: str) -> torch.Tensor:
    return seeded_input(GOLDEN[case]["input"], GOLDEN[case]["input_seed"])


def ssmtt_checkpoint(name: str) -> dict[str, torch.Tensor]:
    """As the reference's train.py saves it: `PLModel.state_dict()`, the network under
    `network.`, a student's teacher under `teacher_network.`."""
    state = {f"network.{k}": v for k, v in reference_state(name).items()}
    if name != TEACHER:
        state |= {f"teacher_network.{k}": v for k, v in reference_state(TEACHER).items()}
    return state


def loaded(name: str, state: dict[str, torch.Tensor], n_classes: int) -> torch.nn.Module:
    model = create_model(name, n_classes, seed=None)
    model.load_state_dict(state, strict=True)
    return model.eval()


def close(ours: torch.Tensor, reference: np.ndarray, atol: float) -> None:
    ours = ours.detach().numpy()
    assert ours.shape == reference.shape
    np.testing.assert_allclose(ours, reference, rtol=0, atol=atol)


@pytest.mark.parametrize("name", sorted(SSMTT.MODELS))
def test_ssmtt_checkpoint_gives_the_reference_probabilities(name):
    model = loaded(name, SSMTT.convert(ssmtt_checkpoint(name), name), 50)
    with torch.no_grad():
        probabilities = torch.sigmoid(model(reference_input(name)))
    close(probabilities, ARRAYS[f"{name}.probabilities"], atol=1e-5)


def test_a_wrong_mapping_fails_the_ssmtt_golden():
    """The comparison can fail: the same checkpoint with one block's q, k and v rows rotated."""
    name = "music_tagging_transformer_student"
    state = ssmtt_checkpoint(name)
    qkv = "network.transformer.layers.0.0.fn.fn.to_qkv.weight"
    state[qkv] = state[qkv].roll(state[qkv].shape[0] // 3, dims=0)
    broken = loaded(name, SSMTT.convert(state, name), 50)
    with torch.no_grad():
        wrong = torch.sigmoid(broken(reference_input(name))).numpy()
    assert np.abs(wrong - ARRAYS[f"{name}.probabilities"]).max() > 1e-3


def test_maest_checkpoint_gives_the_reference_logits_and_embeddings():
    name = "maest_10s"
    state = reference_state(name)
    model = loaded(name, MAEST.convert(state, name), 400)
    x = reference_input(name)
    with torch.no_grad():
        stack = model.embed(x)
        logits = model.classifier(stack)
        block5 = model.embed(x, block=5)
    dim = model.dim
    close(logits, ARRAYS[f"{name}.logits"], atol=1e-4)
    close((stack[:, :dim] + stack[:, dim : 2 * dim]) / 2, ARRAYS[f"{name}.features"], atol=1e-4)
    close(block5, ARRAYS[f"{name}.block5"], atol=1e-4)
    # timm's ViT norms (eps 1e-6) and the head's PyTorch default: below the tolerance,
    # so pinned here.
    norms = [m for m in model.modules() if isinstance(m, torch.nn.LayerNorm)]
    assert {m.eps for m in norms if m is not model.classifier.norm} == {1e-6}
    assert model.classifier.norm.eps == 1e-5
    # The reference's tables have one column more than its patches (frames // 10); its
    # forward uses the first ones, so the surplus column never reaches the model.
    assert state["time_new_pos_embed"].shape[-1] == model.time_pos.shape[-1] + 1
    assert torch.equal(model.time_pos, state["time_new_pos_embed"][..., :-1])


def test_passt_checkpoint_becomes_maest_as_maest_converts_it():
    """A PaSST AudioSet checkpoint (12 x 99 tables, 527 classes) into maest_5s: MAEST's
    checkpoint_filter_fn resizes the tables bicubically to 9 x 31, its forward uses 30."""
    name = "passt_to_maest_5s"
    model = loaded("maest_5s", MAEST.convert(reference_state(name), "maest_5s"), 527)
    with torch.no_grad():
        logits = model(reference_input(name))
    close(logits, ARRAYS[f"{name}.logits"], atol=1e-4)


def one_line_error(convert, state, model, match: str) -> None:
    with pytest.raises(WeightsImportError, match=match) as caught:
        convert(state, model)
    assert "\n" not in str(caught.value)


def test_ssmtt_mismatches_are_one_line_errors_naming_the_tensor():
    student = ssmtt_checkpoint("music_tagging_transformer_small")
    extra = student | {"network.transformer.layers.0.0.fn.extra": torch.zeros(1)}
    one_line_error(SSMTT.convert, extra, "music_tagging_transformer_small",
                   "unexpected tensor 'transformer.layers.0.0.fn.extra'")  # fmt: skip
    missing = {k: v for k, v in student.items() if k != "network.frontend.layer2.bn_1.bias"}
    one_line_error(SSMTT.convert, missing, "music_tagging_transformer_small",
                   "no tensor 'frontend.layer2.bn_1.bias'")  # fmt: skip
    # The compact student's checkpoint is not the teacher: the first shape names both.
    one_line_error(SSMTT.convert, student, TEACHER,
                   r"'cls_token' has shape \(64,\), the model's 'cls' needs \(256,\)")  # fmt: skip
    window = student | {"network.spec.spectrogram.window": torch.zeros(512)}
    one_line_error(SSMTT.convert, window, "music_tagging_transformer_small", "n_fft 1024")
    # Buffers of another front end (Slaney filters; the reference's are torchaudio's HTK).
    slaney = mel_filterbank(22050, 1024, 128, 0.0, 11025.0, "slaney", "slaney").T
    other = student | {"network.spec.mel_scale.fb": slaney}
    one_line_error(SSMTT.convert, other, "music_tagging_transformer_small",
                   "another front end: 'spec.mel_scale.fb' is mel_scale slaney, mel_norm slaney")  # fmt: skip
    one_line_error(SSMTT.convert, student, "maest_10s", "--from ssmtt fills")


def test_maest_mismatches_are_one_line_errors_naming_the_tensor():
    state = reference_state("maest_10s")
    one_line_error(MAEST.convert, state | {"blocks.3.attn.extra": torch.zeros(1)}, "maest_10s",
                   "unexpected tensor 'blocks.3.attn.extra'")  # fmt: skip
    short = {k: v for k, v in state.items() if not k.startswith("blocks.11.")}
    one_line_error(MAEST.convert, short, "maest_10s", "no tensor 'blocks.11.")
    one_line_error(MAEST.convert, state | {"pos_embed": torch.zeros(1, 3, 8)}, "maest_10s",
                   "plain ViT/DeiT")  # fmt: skip
    hf = {"audio_spectrogram_transformer.embeddings.cls_token": torch.zeros(1, 1, 768), **state}
    one_line_error(MAEST.convert, hf, "maest_10s", "Hugging Face")
    one_line_error(MAEST.convert, state, "patchout_small", "fills")
    headless = {k: v for k, v in state.items() if not k.startswith("head.")}
    one_line_error(MAEST.convert, headless, "maest_10s", "'head.1.weight'")
    # MAEST's torchaudio filterbank is Slaney's; an HTK one is another front end.
    htk = state | {
        "melspectrogram.mel_scale.fb": mel_filterbank(16000, 512, 96, 0.0, 8000.0, "htk", "none").T
    }
    one_line_error(MAEST.convert, htk, "maest_10s", "is mel_scale htk, mel_norm none")


def test_maest_lightning_checkpoint_prefers_the_swa_weights():
    """MAEST's Lightning checkpoints hold `net.` and `net_swa.`; get_maest loads the SWA
    copy by default (`checkpoint_swa_weigts=True`)."""
    state = reference_state("maest_10s")
    other = seeded_state(GOLDEN["maest_10s"]["keys"], 99)
    lightning = {f"net_swa.{k}": v for k, v in state.items()}
    lightning |= {f"net.{k}": v for k, v in other.items()}
    ours = MAEST.convert(lightning, "maest_10s")
    assert torch.equal(ours["norm.weight"], state["norm.weight"])
    assert torch.equal(
        ours["encoder.layers.2.self_attn.in_proj_weight"], state["blocks.2.attn.qkv.weight"]
    )
