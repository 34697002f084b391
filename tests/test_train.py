"""cove-tiny's training script: its schedule, its loss weights, and that a resumed run equals an
uninterrupted one."""
from __future__ import annotations

import math

import pytest
import torch
from safetensors.torch import load_file

from cove import world
from cove.tiny import train
from cove.tiny.model import MAX_TOKENS, build_pipeline
from cove.tiny.tokenizer import build_clip_tokenizer


def test_default_schedule_is_the_shipped_cycles():
    args = train._parse([])
    assert args.cycles == train.CYCLES and args.steps == sum(train.CYCLES)
    assert train._parse(["--steps", "500"]).cycles == (500,)
    assert train._parse(["--cycles", "300,200"]).steps == 500


def test_lr_warms_up_decays_and_restarts():
    args = train._parse(["--cycles", "1000,500", "--lr", "1e-3", "--warmup", "10", "--restart-lr", "0.5"])
    lr = [train._lr(s, args) for s in range(1500)]
    assert lr[0] == pytest.approx(1e-4) and lr[9] == pytest.approx(1e-3)  # linear warm-up
    assert all(a >= b for a, b in zip(lr[9:1000], lr[10:1000]))  # cosine decay, monotone
    assert lr[999] == pytest.approx(1e-4, rel=1e-2)  # ... to 10% of the peak
    assert lr[1000] == pytest.approx(5e-5) and lr[1009] == pytest.approx(5e-4)  # restart at half
    assert lr[1499] == pytest.approx(5e-5, rel=1e-2)
    # one cycle of 4000 steps is the schedule the first cove-tiny cycle ran
    one = train._parse(["--steps", "4000"])
    old = lambda s: 3e-4 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * (s - 100) / 3900)))  # noqa: E731
    assert train._lr(2000, one) == pytest.approx(old(2000))


@pytest.mark.parametrize("bad", ["", "0", "10,-1", "ten"])
def test_bad_cycles_are_refused_in_one_line(bad, capsys):
    with pytest.raises(SystemExit):
        train._parse(["--cycles", bad])
    assert "expected positive step counts" in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["0", "3,4"])
def test_bad_steps_are_refused_in_one_line(bad, capsys):
    with pytest.raises(SystemExit):
        train._parse(["--steps", bad])
    assert "argument --steps: expected" in capsys.readouterr().err


def test_object_weight_is_per_cycle():
    assert train._parse([]).object_weight == train.OBJECT_WEIGHTS
    assert len(train.OBJECT_WEIGHTS) == len(train.CYCLES)
    assert train._parse(["--steps", "500"]).object_weight == (1.0,)
    assert train._parse(["--cycles", "3,2", "--object-weight", "4"]).object_weight == (4.0, 4.0)
    assert train._parse(["--cycles", "3,2", "--object-weight", "1,4"]).object_weight == (1.0, 4.0)


@pytest.mark.parametrize("argv, message", [
    (["--object-weight", "0"], "expected positive numbers"),
    (["--object-weight", "nan"], "expected positive numbers"),
    (["--object-weight", "a,b"], "expected positive numbers"),
    (["--cycles", "3,2,1", "--object-weight", "1,4"], "expected one value or one per cycle (3), got 2"),
])
def test_bad_object_weight_is_refused_in_one_line(argv, message, capsys):
    with pytest.raises(SystemExit):
        train._parse(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("python -m cove.tiny.train: error:")


def test_object_weights_cover_objects_and_their_outline():
    objects = torch.zeros(1, 1, 16, 16)
    objects[0, 0, 6:8, 6:8] = 1  # one object, exactly latent cell (3, 3) of an 8x8 grid
    w = train.object_weights(objects, (8, 8), 4.0)
    assert w.shape == (1, 1, 8, 8)
    expected = torch.ones(8, 8)
    expected[2:5, 2:5] = 4.0  # the cell and its 8 neighbours
    torch.testing.assert_close(w[0, 0], expected)
    objects[0, 0, 6, 6] = 0
    objects[0, 0, 9, 9] = 1  # a single pixel of cell (4, 4) is enough
    assert w[0, 0, 5, 5] == 1 and train.object_weights(objects, (8, 8), 4.0)[0, 0, 5, 5] == 4
    assert torch.equal(train.object_weights(objects, (8, 8), 1.0), torch.ones(1, 1, 8, 8))


def test_weighted_loss():
    g = torch.Generator().manual_seed(0)
    pred, target = torch.randn(2, 3, 4, 4, generator=g), torch.randn(2, 3, 4, 4, generator=g)
    mse = torch.nn.functional.mse_loss(pred, target)
    torch.testing.assert_close(train.loss_fn(pred, target, torch.ones(2, 1, 4, 4)), mse)
    torch.testing.assert_close(train.loss_fn(pred, target, torch.full((2, 1, 4, 4), 3.0)), mse)
    w = torch.ones(2, 1, 4, 4)
    w[1] = 0.0 + 1e-30  # (almost) all the weight on the first image
    torch.testing.assert_close(train.loss_fn(pred, target, w),
                               torch.nn.functional.mse_loss(pred[:1], target[:1]), rtol=1e-5, atol=1e-6)


def _unet(folder):
    return load_file(folder / "unet" / "diffusion_pytorch_model.safetensors")


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    common = ["--cycles", "2,1", "--object-weight", "1,4", "--batch", "2", "--warmup", "1", "--save-every", "1"]
    whole = _unet(train.train([*common, "--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1")]))
    train.train([*common, "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"), "--stop-at", "2"])
    resumed = _unet(train.train([*common, "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"), "--resume"]))
    assert whole.keys() == resumed.keys()
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    fresh = build_pipeline(build_clip_tokenizer(world.VOCABULARY, tmp_path / "tok", max_length=MAX_TOKENS)).unet
    assert any(not torch.equal(v, whole[k]) for k, v in fresh.state_dict().items()), "training changed nothing"
