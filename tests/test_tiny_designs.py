"""cove-tiny's candidate architectures and the equal-budget comparison harness."""
from __future__ import annotations

import json
import math

import pytest
import torch
from diffusers import UNet2DConditionModel
from diffusers.models.attention_processor import Attention

from cove import world
from cove.features import attention_grids, default_feature_layer
from cove.loading import TINY_PATH
from cove.tiny import compare, train
from cove.tiny.model import DESIGNS, MAX_TOKENS, build_pipeline, design_of, unet_config
from cove.tiny.tokenizer import build_clip_tokenizer

CANDIDATES = [name for name in DESIGNS if name != "shipped"]


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    return build_clip_tokenizer(world.VOCABULARY, tmp_path_factory.mktemp("tok"), max_length=MAX_TOKENS)


def test_the_default_design_is_the_shipped_one(tokenizer):
    shipped = UNet2DConditionModel.load_config(TINY_PATH / "unet")
    assert all(shipped[k] == (list(v) if isinstance(v, tuple) else v) for k, v in unet_config().items())
    pipe = build_pipeline(tokenizer, seed=0)
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.attention_head_dim == 32
    with pytest.raises(ValueError, match="expected one of"):
        build_pipeline(tokenizer, design="c")


@pytest.mark.parametrize("name", CANDIDATES)
def test_candidate_heads_have_dimension_32_to_64_and_attend_at_full_resolution(name, tokenizer):
    pipe = build_pipeline(tokenizer, seed=0, design=name)
    attns = [m for m in pipe.unet.modules() if isinstance(m, Attention)]
    assert attns
    for attn in attns:
        dim = attn.to_q.out_features // attn.heads
        assert 32 <= dim <= 64 and attn.heads * dim == attn.to_q.out_features, (name, attn.heads, dim)
    side = DESIGNS[name].latent_side
    assert max(attention_grids(pipe.unet).values()) == side  # CGA can act at the latent's grid
    assert pipe.vae_scale_factor == DESIGNS[name].factor
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    z = pipe.vae.encode(x).latent_dist.mean  # (2, 3 f^2, 64 / f, 64 / f)
    assert z.shape == (2, DESIGNS[name].latent_channels, side, side)
    torch.testing.assert_close(pipe.vae.decode(z).sample, x)
    with torch.no_grad():
        out = pipe.unet(z, torch.tensor([10, 500]), torch.zeros(2, MAX_TOKENS, 64)).sample
    assert out.shape == z.shape
    assert default_feature_layer(pipe.unet)


def test_train_refuses_to_resume_another_design(tmp_path, capsys):
    base = ["--work", str(tmp_path / "w"), "--out", str(tmp_path / "o"), "--steps", "2", "--batch", "2",
            "--threads", "1", "--stop-at", "1"]
    train.train(base + ["--design", "a"])
    assert json.loads((tmp_path / "o" / "training.json").read_text())["design"] == "a"
    assert train.main(base + ["--design", "b", "--resume"]) == 2
    assert "holds design 'a'" in capsys.readouterr().err


def test_design_of_names_the_architecture_a_folder_holds(tmp_path, tokenizer, capsys):
    for name in DESIGNS:
        build_pipeline(tokenizer, seed=0, design=name).save_pretrained(tmp_path / name)
        assert design_of(tmp_path / name) == name
    assert design_of(TINY_PATH) in DESIGNS
    config = json.loads((tmp_path / "a" / "unet" / "config.json").read_text())
    (tmp_path / "odd" / "unet").mkdir(parents=True)
    (tmp_path / "odd" / "unet" / "config.json").write_text(json.dumps({**config, "layers_per_block": 3}))
    with pytest.raises(ValueError, match="holds no cove-tiny design"):
        design_of(tmp_path / "odd")
    with pytest.raises(ValueError, match="expected a cove-tiny pipeline folder"):
        design_of(tmp_path / "nowhere")
    # --init from a folder of another design says which design it holds
    capsys.readouterr()  # saving's progress bars
    argv = ["--init", str(tmp_path / "a"), "--design", "b", "--steps", "1", "--batch", "2",
            "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].endswith("the folder holds design 'a' (--design)")


def test_compare_records_curves_and_resumes(tmp_path):
    common = ["--designs", "a,b", "--work", str(tmp_path), "--interval", "0.002", "--batch", "2",
              "--steps", "50", "--prompts", "1", "--sample-steps", "2", "--clips", "1", "--frames", "3"]
    first = compare.compare(["--minutes", "0.002"] + common)
    assert set(first["designs"]) == {"a", "b"}
    for name, curve in first["designs"].items():
        assert len(curve["points"]) == 1 and curve["points"][0]["step"] >= 1
        assert curve["unet_parameters"] > 1e6
    spent = max(c["points"][0]["cpu_minutes"] for c in first["designs"].values())  # >= 1 step each
    budget = spent + 0.002
    again = compare.compare(["--minutes", f"{budget}"] + common)  # a larger budget goes on
    for name, curve in again["designs"].items():
        one, *more = curve["points"]  # as many turns as each design takes to reach the budget
        assert one == first["designs"][name]["points"][0] and more
        for before, after in zip(curve["points"], more):
            assert after["step"] > before["step"] and after["cpu_minutes"] > before["cpu_minutes"]
        assert more[-1]["cpu_minutes"] >= budget - 1e-3  # stops once the budget is spent, not before
        assert all(p["cpu_minutes"] < budget - 1e-3 for p in curve["points"][:-1])
        last = more[-1]
        assert 0 <= last["prompt"]["all"] <= 1 and 0 <= last["pck"]["px4"] <= 1 and math.isfinite(last["loss"])
    assert json.loads((tmp_path / "curves.json").read_text())["designs"] == again["designs"]
    assert (tmp_path / "curves.png").stat().st_size > 1000
    assert 0 <= again["reference"]["flow_pck_px4"] <= 1
