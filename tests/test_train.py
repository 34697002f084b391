"""cove-tiny's training script: its schedule, its loss weights, and that a resumed run equals an
uninterrupted one."""
from __future__ import annotations

import json
import math
import shutil

import pytest
import torch
from safetensors.torch import load_file

from cove import world
from cove.tiny import train
from cove.tiny.model import MAX_TOKENS, build_pipeline, design_of
from cove.tiny.tokenizer import build_clip_tokenizer


def test_default_schedule_is_the_shipped_cycles():
    args = train._parse([])
    assert args.cycles == train.CYCLES and args.steps == sum(train.CYCLES)
    assert train._parse(["--steps", "500"]).cycles == (500,)
    assert train._parse(["--cycles", "300,200"]).steps == 500


def test_the_shipped_weights_were_trained_with_the_default_recipe():
    """``python -m cove.tiny.train`` with no options is what trained cove/tiny/weights."""
    info = json.loads((train.WEIGHTS / "training.json").read_text())
    args = train._parse([])
    assert tuple(info["cycles"]) == args.cycles and info["steps"] == info["stopped_at"] == args.steps
    assert tuple(info["object_weight"]) == args.object_weight and tuple(info["mid_t"]) == args.mid_t
    assert tuple(info["mid_t_range"]) == args.mid_t_range
    assert (info["batch"], info["lr"], info["seed"], info["ema"]) == (args.batch, args.lr, args.seed, args.ema)
    assert info["restart_lr"] == args.restart_lr
    # a run that went on from an export (its checkpoint lost) started where the recipe restarts
    # from the EMA weights, so the uninterrupted default run gives the same weights
    restarts = [sum(args.cycles[:k]) for k, flag in enumerate(args.ema_restart) if flag]
    assert info.get("start_at", 0) in [0, *restarts]
    assert info.get("ema_restart", list(args.ema_restart)) == list(args.ema_restart)


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


def _assert_refused(argv, message, capsys):
    """``argv`` ends the parse with a one-line error that contains ``message``."""
    with pytest.raises(SystemExit):
        train._parse(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("python -m cove.tiny.train: error:")


@pytest.mark.parametrize("argv, message", [
    (["--object-weight", "0"], "expected positive numbers"),
    (["--object-weight", "nan"], "expected positive numbers"),
    (["--object-weight", "a,b"], "expected positive numbers"),
    (["--cycles", "3,2,1", "--object-weight", "1,4"], "expected one value or one per cycle (3), got 2"),
])
def test_bad_object_weight_is_refused_in_one_line(argv, message, capsys):
    _assert_refused(argv, message, capsys)


def test_mid_t_is_per_cycle_and_off_outside_the_shipped_recipe():
    args = train._parse([])
    assert args.mid_t == train.MID_TS and len(train.MID_TS) == len(train.CYCLES)
    assert args.mid_t_range == train.MID_T_RANGE
    assert train._parse(["--steps", "500"]).mid_t == (0.0,)
    assert train._parse(["--cycles", "3,2", "--mid-t", "0.5"]).mid_t == (0.5, 0.5)
    args = train._parse(["--cycles", "3,2", "--mid-t", "0,1", "--mid-t-range", "100,200"])
    assert args.mid_t == (0.0, 1.0) and args.mid_t_range == (100, 200)


@pytest.mark.parametrize("argv, message", [
    (["--mid-t", "1.5"], "argument --mid-t: expected shares between 0 and 1 separated by commas, got '1.5'"),
    (["--mid-t", "-0.1"], "argument --mid-t: expected shares between 0 and 1"),
    (["--mid-t", "nan"], "argument --mid-t: expected shares between 0 and 1"),
    (["--mid-t", "half"], "argument --mid-t: expected shares between 0 and 1"),
    (["--cycles", "3,2,1", "--mid-t", "0,1"], "--mid-t: expected one value or one per cycle (3), got 2"),
    (["--mid-t-range", "700,300"], "argument --mid-t-range: expected LO,HI with 0 <= LO < HI <= 1000"),
    (["--mid-t-range", "0,1001"], "argument --mid-t-range: expected LO,HI with 0 <= LO < HI <= 1000"),
    (["--mid-t-range", "300"], "argument --mid-t-range: expected LO,HI with 0 <= LO < HI <= 1000, got '300'"),
])
def test_bad_mid_t_is_refused_in_one_line(argv, message, capsys):
    _assert_refused(argv, message, capsys)


def test_ema_restart_is_per_cycle_and_off_outside_the_shipped_recipe():
    args = train._parse([])
    assert args.ema_restart == train.EMA_RESTARTS and len(train.EMA_RESTARTS) == len(train.CYCLES)
    assert train._parse(["--steps", "500"]).ema_restart == (0,)
    assert train._parse(["--cycles", "3,2", "--ema-restart", "0,1"]).ema_restart == (0, 1)


@pytest.mark.parametrize("argv, message", [
    (["--ema-restart", "2"], "argument --ema-restart: expected 0 or 1 separated by commas, got '2'"),
    (["--ema-restart", "yes"], "argument --ema-restart: expected 0 or 1 separated by commas"),
    (["--cycles", "3,2,1", "--ema-restart", "0,1"], "--ema-restart: expected one value or one per cycle (3), got 2"),
])
def test_bad_ema_restart_is_refused_in_one_line(argv, message, capsys):
    _assert_refused(argv, message, capsys)


def test_draw_noise_moves_a_share_of_the_timesteps_to_the_mid_range():
    shape = (4000, 3, 2, 2)
    plain_t = torch.randint(0, 1000, shape[:1], generator=torch.Generator().manual_seed(3))
    t, eps = train.draw_noise(torch.Generator().manual_seed(3), shape, 1000)
    assert torch.equal(t, plain_t) and eps.shape == shape  # off: plain uniform sampling, as before
    t2, eps2 = train.draw_noise(torch.Generator().manual_seed(3), shape, 1000, 0.5, (250, 750))
    assert torch.equal(eps2, eps)  # the same noise; only some timesteps move
    moved = t2 != t
    assert ((t2[moved] >= 250) & (t2[moved] < 750)).all()
    inside = ((t2 >= 250) & (t2 < 750)).float().mean().item()
    assert inside == pytest.approx(0.5 + 0.5 * 0.5, abs=0.03)  # half drawn there, plus uniform hits
    t3, _ = train.draw_noise(torch.Generator().manual_seed(3), shape, 1000, 1.0, (100, 110))
    assert t3.min() >= 100 and t3.max() < 110


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
    common = ["--cycles", "2,1", "--object-weight", "1,4", "--mid-t", "0,0.5", "--batch", "2", "--warmup", "1", "--save-every", "1"]
    # the uninterrupted run renders its batches in two worker processes, the other in itself
    whole = _unet(train.train([*common, "--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1"),
                               "--workers", "2"]))
    train.train([*common, "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"), "--stop-at", "2"])
    resumed = _unet(train.train([*common, "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2"), "--resume"]))
    assert whole.keys() == resumed.keys()
    info = json.loads((tmp_path / "o1" / "training.json").read_text())
    assert info["mid_t"] == [0.0, 0.5] and info["mid_t_range"] == list(train.MID_T_RANGE)
    for key in whole:
        torch.testing.assert_close(resumed[key], whole[key], rtol=0, atol=0, msg=key)
    fresh = build_pipeline(build_clip_tokenizer(world.VOCABULARY, tmp_path / "tok", max_length=MAX_TOKENS)).unet
    assert any(not torch.equal(v, whole[k]) for k, v in fresh.state_dict().items()), "training changed nothing"


def test_worker_processes_render_the_same_batches(tmp_path):
    args = train._parse(["--batch", "3", "--seed", "4"])
    tokenizer = build_clip_tokenizer(world.VOCABULARY, tmp_path / "tok", max_length=MAX_TOKENS)
    here = list(train.batches(range(5, 8), args, tokenizer))
    args.workers = 2
    there = list(train.batches(range(5, 8), args, tokenizer))
    assert len(here) == len(there) == 3
    for a, b in zip(here, there):
        for x, y in zip(a, b):
            assert torch.equal(x, y)
    x, ids, objects = here[0]
    assert x.shape == (3, 3, 64, 64) and ids.shape == (3, MAX_TOKENS) and objects.shape == (3, 1, 64, 64)
    assert x.dtype == objects.dtype == torch.uint8  # a quarter of floats' bytes between processes
    assert not torch.equal(here[0][0], here[1][0])  # each step its own images
    for got, want in zip(train.to_training(here[0]), train.batch(5, args, tokenizer)):
        assert torch.equal(got, want)  # made floats on arrival: what batch gives
    xf, _, objects_f = train.batch(5, args, tokenizer)
    assert xf.dtype == objects_f.dtype == torch.float32 and xf.min() >= -1 and xf.max() <= 1
    assert set(objects_f.unique().tolist()) <= {0.0, 1.0} and objects_f.sum() > 0


@pytest.mark.parametrize("argv, message", [
    (["--workers", "-1"], "argument --workers: expected a whole number >= 0, got '-1'"),
    (["--workers", "two"], "argument --workers: expected a whole number >= 0"),
    (["--minutes", "0"], "argument --minutes: expected a positive number of minutes, got '0'"),
    (["--minutes", "inf"], "argument --minutes: expected a positive number of minutes"),
    (["--init", "/nonexistent/cove-tiny"], "--init: expected a pipeline folder with unet/ and text_encoder/"),
    (["--start-at", "19200"], "--start-at: expected --init too (the weights of step 19200), got no --init"),
    (["--init", str(train.WEIGHTS), "--steps", "3", "--start-at", "3"],
     "--start-at: expected a step from 0 to 2 (the schedule's length is 3), got 3"),
    (["--init", str(train.WEIGHTS), "--start-at", "-1"], "--start-at: expected a step from 0 to"),
])
def test_bad_gpu_options_are_refused_in_one_line(argv, message, capsys):
    _assert_refused(argv, message, capsys)


def test_minutes_stops_cleanly_and_resume_goes_on(tmp_path):
    common = ["--steps", "3", "--batch", "2", "--warmup", "1", "--save-every", "100",
              "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")]
    out = train.train([*common, "--minutes", "1e-9"])  # spent after the first step
    info = json.loads((out / "training.json").read_text())
    assert info["stopped_at"] == 1 and info["steps"] == 3
    assert torch.load(tmp_path / "w" / "checkpoint.pt")["step"] == 1  # saved although save-every is 100
    train.train([*common, "--resume"])
    assert json.loads((out / "training.json").read_text())["stopped_at"] == 3
    assert torch.load(tmp_path / "w" / "checkpoint.pt")["step"] == 3


def test_init_copies_a_pipeline_folders_weights(tmp_path):
    tokenizer = build_clip_tokenizer(world.VOCABULARY, tmp_path / "tok", max_length=MAX_TOKENS)
    pipe = build_pipeline(tokenizer, seed=3, design=design_of(train.WEIGHTS))
    train.init_weights(pipe.unet, pipe.text_encoder, train.WEIGHTS)
    shipped = _unet(train.WEIGHTS)
    for key, value in pipe.unet.state_dict().items():
        assert torch.equal(value, shipped[key]), key
    text = load_file(train.WEIGHTS / "text_encoder" / "model.safetensors")
    assert all(torch.equal(v, text[k]) for k, v in pipe.text_encoder.state_dict().items())


def test_init_from_a_foreign_folder_is_one_line_and_writes_nothing(tmp_path, capsys):
    from safetensors.torch import save_file

    foreign = tmp_path / "foreign"
    shutil.copytree(train.WEIGHTS, foreign)
    state = _unet(foreign)
    state["conv_in.weight"] = torch.zeros(8, 12, 3, 3)  # another architecture's first layer
    save_file(state, foreign / "unet" / "diffusion_pytorch_model.safetensors")
    work, out = tmp_path / "work", tmp_path / "out"
    argv = ["--init", str(foreign), "--steps", "1", "--batch", "2", "--work", str(work), "--out", str(out)]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("python -m cove.tiny.train: error: --init:")
    assert "does not hold cove-tiny's architecture" in err[0] and "conv_in.weight" in err[0]
    assert not work.exists() and not out.exists()


def test_start_at_goes_on_with_the_schedule_from_the_init_weights(tmp_path):
    """A run whose checkpoint is lost goes on from its exported weights at the step they stopped at."""
    design = design_of(train.WEIGHTS)
    out = train.train(["--init", str(train.WEIGHTS), "--start-at", "2", "--cycles", "2,1", "--batch", "2",
                       "--warmup", "1", "--design", design, "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    info = json.loads((out / "training.json").read_text())
    assert (info["start_at"], info["stopped_at"], info["init"]) == (2, 3, str(train.WEIGHTS))
    logged = [json.loads(line)["step"] for line in (tmp_path / "w" / "log.jsonl").read_text().splitlines()]
    assert logged == [2]  # one step: the last of the schedule, the second cycle's first
    assert torch.load(tmp_path / "w" / "checkpoint.pt")["step"] == 3
    trained, shipped = _unet(out), _unet(train.WEIGHTS)
    fresh = build_pipeline(build_clip_tokenizer(world.VOCABULARY, tmp_path / "tok", max_length=MAX_TOKENS),
                           design=design).unet
    moved = sum((trained[k] - shipped[k]).abs().sum() for k in shipped)
    apart = sum((v - shipped[k]).abs().sum() for k, v in fresh.state_dict().items())
    assert 0 < moved < 0.01 * apart  # one small step away from the weights it started from


def test_ema_restart_equals_init_from_the_export_at_that_step(tmp_path):
    """An uninterrupted run with --ema-restart gives the weights of a run that stopped at the
    restart, exported, and went on with --init from that export and --start-at."""
    common = ["--cycles", "2,1", "--mid-t", "0,0.5", "--batch", "2", "--warmup", "1"]
    whole = train.train([*common, "--ema-restart", "0,1", "--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1")])
    first = train.train([*common, "--stop-at", "2", "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2")])
    then = train.train([*common, "--ema-restart", "0,1", "--init", str(first), "--start-at", "2",
                        "--work", str(tmp_path / "w3"), "--out", str(tmp_path / "o3")])
    plain = train.train([*common, "--work", str(tmp_path / "w4"), "--out", str(tmp_path / "o4")])
    whole, then, plain = _unet(whole), _unet(then), _unet(plain)
    for key in whole:
        torch.testing.assert_close(then[key], whole[key], rtol=0, atol=0, msg=key)
    assert any(not torch.equal(whole[k], plain[k]) for k in plain), "--ema-restart changed nothing"
    assert json.loads((tmp_path / "o1" / "training.json").read_text())["ema_restart"] == [0, 1]


def test_bf16_autocast_trains(tmp_path):
    common = ["--steps", "1", "--batch", "2", "--warmup", "1"]
    fp32 = _unet(train.train([*common, "--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1")]))
    out = train.train([*common, "--bf16", "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2")])
    bf16 = _unet(out)
    assert json.loads((out / "training.json").read_text())["bf16"] is True
    assert all(torch.isfinite(v).all() for v in bf16.values())
    assert any(not torch.equal(bf16[k], fp32[k]) for k in fp32), "autocast changed nothing"


def test_mid_t_reaches_the_training_step(tmp_path):
    common = ["--steps", "1", "--batch", "2", "--warmup", "1"]
    plain = _unet(train.train([*common, "--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1")]))
    late = _unet(train.train([*common, "--mid-t", "1", "--mid-t-range", "990,1000",
                              "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2")]))
    assert any(not torch.equal(late[k], plain[k]) for k in plain), "--mid-t changed nothing"


def test_fit_minutes_sets_the_last_cycle_from_the_measured_rate(tmp_path, monkeypatch):
    monkeypatch.setattr(train, "FIT_STRETCH", (1, 2))
    out = train.train(["--cycles", "2,1000", "--batch", "1", "--warmup", "1", "--minutes", "0.5", "--fit-minutes",
                       "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    info = json.loads((out / "training.json").read_text())
    assert info["cycles"][0] == 2 and info["cycles"][1] != 1000  # fitted to the 30 seconds
    assert info["steps"] == sum(info["cycles"]) and info["stopped_at"] <= info["steps"]
    args = train._parse(["--cycles", "5,100", "--warmup", "2"])
    assert train.fit_last_cycle(args, 10, rate=2.0, seconds_left=10.0) == 31 and args.cycles == (5, 26)
    assert train.fit_last_cycle(args, 10, rate=0.0, seconds_left=10.0) == 12  # at least one step on
    with pytest.raises(SystemExit):
        train._parse(["--fit-minutes"])  # needs --minutes


def test_echo_reuses_each_rendered_batch(tmp_path):
    args = train._parse(["--batch", "2", "--echo", "3"])
    tokenizer = build_clip_tokenizer(world.VOCABULARY, tmp_path / "tok", max_length=MAX_TOKENS)
    got = [b[0] for b in train.echoed(range(2, 7), args, tokenizer)]  # steps 2..6: batches 0, 1, 1, 1, 2
    plain = [b[0] for b in train.batches(range(0, 3), args, tokenizer)]
    for x, i in zip(got, (0, 1, 1, 1, 2)):
        assert torch.equal(x, plain[i])


def test_init_grows_a_larger_design_from_the_shipped_weights(tmp_path):
    """Design a over the shipped weights: every shipped tensor copied, the new attention blocks
    start as the identity, so the UNet computes what the shipped one does."""
    from cove.tiny.quality import load_tiny

    tokenizer = build_clip_tokenizer(world.VOCABULARY, tmp_path / "tok", max_length=MAX_TOKENS)
    pipe = build_pipeline(tokenizer, seed=1, design="a")
    new = train.init_weights(pipe.unet, pipe.text_encoder, train.WEIGHTS)
    assert new and all("attentions" in k for k in new)
    shipped = load_tiny("cpu").unet
    x, t = torch.randn(2, 12, 32, 32, generator=torch.Generator().manual_seed(0)), torch.tensor([10, 500])
    cond = torch.randn(2, MAX_TOKENS, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = pipe.unet(x, t, cond).sample, shipped(x, t, cond).sample
    # the 16x16 / 8x8 attention now has heads of dimension 32 instead of 2-4: outputs differ,
    # but far less than from a fresh model's
    fresh = build_pipeline(tokenizer, seed=1, design="a").unet
    with torch.no_grad():
        apart = (fresh(x, t, cond).sample - theirs).abs().mean()
    assert (ours - theirs).abs().mean() < 0.5 * apart


def test_probe_every_writes_the_attention_curves_and_changes_no_weight(tmp_path, monkeypatch):
    common = ["--steps", "3", "--batch", "2", "--warmup", "1"]
    probed = train.train([*common, "--probe-every", "2", "--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1")])
    plain = train.train([*common, "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2")])
    probed, plain = _unet(probed), _unet(plain)
    for key in plain:  # the probe draws from its own generators and leaves the modules training
        torch.testing.assert_close(probed[key], plain[key], rtol=0, atol=0, msg=key)
    lines = [json.loads(line) for line in (tmp_path / "w1" / "probes.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [2, 3]  # every 2 steps, and the last
    for line in lines:
        assert set(line["entropy"]) == set(line["cga_change"]) == set(line["spread"]) == {"16x16", "8x8"}
        assert all(0 < v <= 1 + 1e-6 for v in line["entropy"].values())
        assert all(v > 0 for v in line["cga_change"].values())
        assert set(line["clip_gain"]) == {"261", "500"} and set(line["cove_true_moves"]) == {"16x16", "8x8"}
        assert set(line["anchored_clip_gain"]) == {"500"} and line["anchored_clip_gain"]["500"] != 0
        assert line["spatiotemporal_moves"] > 0 and all(v > 0 for v in line["cove_true_moves"].values())
    assert not (tmp_path / "w2" / "probes.jsonl").exists()
    assert json.loads((tmp_path / "o1" / "training.json").read_text())["probe_every"] == 2

    def broken(pipe, seed=0):
        raise RuntimeError("no device")

    monkeypatch.setattr(train, "probe_attention", broken)  # a failing probe costs the run nothing
    out = train.train([*common, "--probe-every", "1", "--work", str(tmp_path / "w3"), "--out", str(tmp_path / "o3")])
    assert json.loads((out / "training.json").read_text())["stopped_at"] == 3
    assert (tmp_path / "w3" / "probes.jsonl").read_text() == ""


@pytest.mark.parametrize("argv, message", [
    (["--clips", "1.5"], "argument --clips: expected a share between 0 and 1, got '1.5'"),
    (["--clip-frames", "1"], "argument --clip-frames: expected a whole number from 2 to 8, got '1'"),
    (["--clip-frames", "9"], "argument --clip-frames: expected a whole number from 2 to 8, got '9'"),
    (["--clip-t", "mixed"], "argument --clip-t: invalid choice: 'mixed'"),
    (["--clips", "0.1", "--batch", "8"], "--clips: 0.1 of a batch of 8 is less than one clip of 4 frames"),
])
def test_bad_clip_options_are_refused_in_one_line(argv, message, capsys):
    _assert_refused(argv, message, capsys)


def test_a_batch_with_clips_keeps_its_single_frames_and_adds_whole_clips(tmp_path):
    tokenizer = build_clip_tokenizer(world.VOCABULARY, tmp_path / "tok", max_length=MAX_TOKENS)
    plain = train._parse(["--batch", "4", "--seed", "2", "--uncond", "0"])
    mixed = train._parse(["--batch", "10", "--clips", "0.6", "--clip-frames", "3", "--seed", "2", "--uncond", "0"])
    assert train.clip_count(mixed) == 2  # 6 of 10 images: two clips of 3, four single frames
    x, ids, objects = train.batch(7, mixed, tokenizer)
    x4, ids4, objects4 = train.batch(7, plain, tokenizer)
    assert x.shape == (10, 3, 64, 64) and ids.shape == (10, MAX_TOKENS) and objects.shape == (10, 1, 64, 64)
    assert torch.equal(x[:4], x4) and torch.equal(ids[:4], ids4)  # the same single frames as without clips
    for first in (4, 7):  # a clip's frames share its caption and move
        assert all(torch.equal(ids[first], ids[first + f]) for f in (1, 2))
        assert not torch.equal(x[first], x[first + 1])
    dropped = train._parse(["--batch", "8", "--clips", "1", "--clip-frames", "2", "--uncond", "0.5"])
    ids = train.batch(0, dropped, tokenizer)[1]
    empty = tokenizer([""], padding="max_length", max_length=MAX_TOKENS, return_tensors="pt").input_ids[0]
    gone = [bool(torch.equal(row, empty)) for row in ids]
    assert gone[0::2] == gone[1::2] and any(gone) and not all(gone)  # dropped for the whole clip
    assert train.batch(1, train._parse(["--batch", "3"]), tokenizer)[0].shape[0] == 3  # no clips: as before


def test_clip_timesteps_share_or_anchor_a_clips_timesteps():
    t = torch.tensor([5, 6, 10, 11, 12, 20, 21, 22])
    assert train.clip_timesteps(t, 2, 3).tolist() == [5, 6, 10, 10, 10, 20, 20, 20]
    assert train.clip_timesteps(t, 2, 3, "shared").tolist() == [5, 6, 10, 10, 10, 20, 20, 20]
    assert train.clip_timesteps(t, 2, 3, "each").tolist() == t.tolist()
    anchored = train.clip_timesteps(t, 2, 3, "anchor")  # first frame of each clip: a quarter of its t
    assert anchored.tolist() == [5, 6, 10 // 4, 11, 12, 20 // 4, 21, 22]
    with pytest.raises(ValueError, match="mode: expected one of each, shared, anchor"):
        train.clip_timesteps(t, 2, 3, "both")


def test_predict_attends_across_the_frames_of_a_clip_only(tmp_path):
    """Clips are predicted under spatial-temporal attention: a frame's output depends on the
    other frames of its clip, not on other clips or single frames; single frames see only themselves."""
    tokenizer = build_clip_tokenizer(world.VOCABULARY, tmp_path / "tok", max_length=MAX_TOKENS)
    unet = build_pipeline(tokenizer, seed=3, design="a").unet.eval()
    g = torch.Generator().manual_seed(0)
    zt, cond = torch.randn(6, 12, 32, 32, generator=g), torch.randn(6, MAX_TOKENS, 64, generator=g)
    t = torch.tensor([100, 200, 300, 300, 400, 400])  # two singles, then two clips of two frames
    with torch.no_grad():
        base = train.predict(unet, zt, t, cond, singles=2, frames=2)
        alone = torch.cat([unet(zt[k:k + 1], t[k:k + 1], cond[k:k + 1]).sample for k in range(6)])
        moved = zt.clone()
        moved[3] += torch.randn(12, 32, 32, generator=g)  # the second frame of the first clip
        out = train.predict(unet, moved, t, cond, singles=2, frames=2)
    torch.testing.assert_close(base[:2], alone[:2], rtol=1e-4, atol=1e-5)  # singles: their own attention
    assert (base[2:] - alone[2:]).abs().max() > 1e-3  # clips: not frame by frame
    assert (out[2] - base[2]).abs().max() > 1e-3  # a frame sees the other frame of its clip
    torch.testing.assert_close(out[4:], base[4:], rtol=1e-5, atol=1e-6)  # and nothing of another clip
    torch.testing.assert_close(out[:2], base[:2], rtol=1e-5, atol=1e-6)
    assert all(type(p).__name__ != "CoveAttnProcessor" for p in unet.attn_processors.values())  # restored


def test_training_with_clips_records_them_and_differs_from_single_frames(tmp_path):
    common = ["--steps", "2", "--batch", "4", "--warmup", "1", "--design", "a"]
    single = _unet(train.train([*common, "--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1")]))
    out = train.train([*common, "--clips", "1", "--clip-frames", "2", "--clip-t", "shared",
                       "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2")])
    clips = _unet(out)
    info = json.loads((out / "training.json").read_text())
    assert (info["clips"], info["clip_frames"], info["clip_t"], info["clips_per_batch"]) == (1.0, 2, "shared", 2)
    assert all(torch.isfinite(v).all() for v in clips.values())
    assert any(not torch.equal(clips[k], single[k]) for k in single), "--clips changed nothing"


def _poisoned_loss(monkeypatch, bad):
    """``train.loss_fn`` made NaN at the calls numbered in ``bad`` (a set, or None for every call)."""
    plain, calls = train.loss_fn, []

    def poisoned(pred, target, weights):
        calls.append(len(calls))
        loss = plain(pred, target, weights)
        return loss * float("nan") if bad is None or calls[-1] in bad else loss
    monkeypatch.setattr(train, "loss_fn", poisoned)


def test_a_step_with_gradients_not_finite_is_skipped(tmp_path, monkeypatch):
    _poisoned_loss(monkeypatch, {1})  # step 1's loss made NaN, steps 0 and 2 as they are
    out = train.train(["--steps", "3", "--batch", "2", "--warmup", "1",
                       "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2")])
    assert all(torch.isfinite(v).all() for v in _unet(out).values())
    lines = [json.loads(line) for line in (tmp_path / "w2" / "log.jsonl").read_text().splitlines()]
    assert [line.get("skipped", False) for line in lines] == [False, True, False]
    assert math.isnan(lines[1]["loss"])
    info = json.loads((out / "training.json").read_text())
    assert info["skipped_steps"] == 1 and "stopped" not in info
    state = torch.load(tmp_path / "w2" / "checkpoint.pt")
    assert all(v["step"].item() == 2 for v in state["opt"]["state"].values())  # AdamW took two steps


def test_a_skipped_step_leaves_the_weights_as_they_were(tmp_path, monkeypatch):
    common = ["--steps", "2", "--batch", "2", "--warmup", "1"]
    one = train.train([*common, "--stop-at", "1", "--work", str(tmp_path / "w1"), "--out", str(tmp_path / "o1")])
    _poisoned_loss(monkeypatch, {1})
    out = train.train([*common, "--work", str(tmp_path / "w2"), "--out", str(tmp_path / "o2")])
    first, both = torch.load(tmp_path / "w1" / "checkpoint.pt"), torch.load(tmp_path / "w2" / "checkpoint.pt")
    for a, b in zip(first["params"], both["params"]):
        assert torch.equal(a, b)
    # the EMA of unchanged weights: step 1 decays toward the same parameters
    decay = min(train._parse([]).ema, 2 / 11)
    for e1, e2, p in zip(first["ema"], both["ema"], first["params"]):
        torch.testing.assert_close(e2, decay * e1 + (1 - decay) * p)
    assert json.loads((out / "training.json").read_text())["skipped_steps"] == 1


def test_a_run_whose_gradients_stay_not_finite_stops_and_exports(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(train, "MAX_SKIPPED_RUN", 3)
    _poisoned_loss(monkeypatch, None)
    out = train.train(["--steps", "50", "--batch", "1", "--warmup", "1",
                       "--work", str(tmp_path / "w"), "--out", str(tmp_path / "o")])
    info = json.loads((out / "training.json").read_text())
    assert info["stopped"] == "gradients not finite" and info["stopped_at"] == 11  # the log point at step 10
    assert info["skipped_steps"] == 11
    assert all(torch.isfinite(v).all() for v in _unet(out).values())
    assert "gradients not finite at the last 11 steps: stopping after step 11" in capsys.readouterr().out
