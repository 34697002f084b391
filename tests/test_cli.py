"""The ``cove`` command line (edit, correspond, demo) and the demo it runs."""
import json
import math

import numpy as np
import pytest
import torch

from cove.app import cli, correspond, io
from cove.config import CoveConfig
from cove.sd import frame_size


def textured_clip(F=4, size=64, shift=8, seed=0):
    """uint8 (F, size, size, 3): a smooth random texture panned left by ``shift`` px per frame."""
    import cv2

    rng = np.random.default_rng(seed)
    big = rng.integers(0, 256, size=(size // 4, (size + shift * F) // 4, 3)).astype(np.uint8)
    big = cv2.resize(big, (big.shape[1] * 4, big.shape[0] * 4), interpolation=cv2.INTER_CUBIC)
    return np.stack([big[:, f * shift : f * shift + size] for f in range(F)])  # (F, H, W, 3)


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path_factory, monkeypatch):
    """`cove edit` caches by default: never in the user's home during tests."""
    monkeypatch.setenv("COVE_CACHE", str(tmp_path_factory.mktemp("cove-cache")))


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


# ---------------------------------------------------------------------------- parsing, errors


def test_help_and_version(capsys):
    assert cli.main(["--help"]) == 0
    assert "edit" in capsys.readouterr().out
    for command in ("edit", "correspond", "demo", "batch"):
        assert cli.main([command, "--help"]) == 0
        assert f"usage: cove {command}" in capsys.readouterr().out
    assert cli.main(["--version"]) == 0
    assert cli.main(["frobnicate"]) == 2  # argparse usage error, not an exception


@pytest.mark.parametrize("command", [["edit", "-p", "a dog"], ["correspond", "-o", "x.mp4"]])
def test_missing_input_is_one_line_error(tmp_path, capsys, monkeypatch, command):
    monkeypatch.chdir(tmp_path)
    missing = tmp_path / "missing.mp4"
    assert cli.main([command[0], str(missing), *command[1:]]) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("cove: error:") and "missing.mp4" in lines[0]
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_bad_extensions_are_one_line_errors(tmp_path, capsys):
    clip = io.write_video(tmp_path / "clip.gif", textured_clip(F=2))
    assert cli.main(["edit", str(clip), "-p", "x", "-o", str(tmp_path / "out.avi")]) == 2
    assert error_lines(capsys) == [f"cove: error: output {tmp_path / 'out.avi'} must end in .mp4 or .gif"]
    (tmp_path / "notes.txt").write_text("hi")
    assert cli.main(["edit", str(tmp_path / "notes.txt"), "-p", "x"]) == 2
    (line,) = error_lines(capsys)
    assert line.startswith("cove: error: cannot read 'notes.txt'")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.gif", "notes.txt"]


def test_config_from_args_scales_pnp_steps():
    parser = cli.build_parser()
    args = parser.parse_args(["edit", "in.mp4", "-p", "x", "--denoise-steps", "10", "--k", "5"])
    config = cli.config_from_args(args)
    assert (config.denoise_steps, config.pnp_steps, config.k) == (10, 8, 5)
    assert config.inversion_steps == CoveConfig().inversion_steps
    assert config.extras.strength == 1.0
    assert cli.config_from_args(parser.parse_args(["edit", "in.mp4", "-p", "x", "--strength", "0.6"])).extras.strength == 0.6
    with pytest.raises(ValueError, match="strength must lie"):
        cli.config_from_args(parser.parse_args(["edit", "in.mp4", "-p", "x", "--strength", "2"]))
    args = parser.parse_args(["edit", "in.mp4", "-p", "x", "--window", "4"])
    with pytest.raises(ValueError, match="window must be odd"):
        cli.config_from_args(args)


def test_config_from_args_pnp_resnet_max_t():
    parser = cli.build_parser()
    edit = ["edit", "in.mp4", "-p", "a green star"]
    assert cli.config_from_args(parser.parse_args(edit)).extras.pnp_resnet_max_t is None  # PnP's
    assert cli.config_from_args(parser.parse_args(edit + ["--pnp-resnet-max-t", "250"])).extras.pnp_resnet_max_t == 250
    with pytest.raises(ValueError, match="pnp_resnet_max_t must be None or lie in 1..1000"):
        cli.config_from_args(parser.parse_args(edit + ["--pnp-resnet-max-t", "0"]))


def test_config_from_args_mask_threshold():
    parser = cli.build_parser()
    edit = ["edit", "in.mp4", "-p", "a green star"]
    assert cli.config_from_args(parser.parse_args(edit)).extras.mask_threshold is None  # the paper
    args = parser.parse_args(edit + ["--source-prompt", "a red star", "--mask-threshold", "0.4"])
    assert cli.config_from_args(args).extras.mask_threshold == 0.4
    for source in ([], ["--source-prompt", "a green star"]):
        with pytest.raises(ValueError, match="--mask-threshold needs a --source-prompt"):
            cli.config_from_args(parser.parse_args(edit + source + ["--mask-threshold", "0.4"]))
    with pytest.raises(ValueError, match="mask_threshold must"):
        args = parser.parse_args(edit + ["--source-prompt", "a red star", "--mask-threshold", "1.5"])
        cli.config_from_args(args)
    args = parser.parse_args(edit + ["--source-prompt", "a red star", "--mask-threshold", "0.4"])
    config = cli.config_from_args(args)
    assert (config.extras.mask_dilate, config.extras.mask_fill_holes) == (1, False)  # the engine's defaults
    args = parser.parse_args(edit + ["--source-prompt", "a red star", "--mask-threshold", "0.4",
                                     "--mask-dilate", "0", "--mask-fill-holes"])
    config = cli.config_from_args(args)
    assert (config.extras.mask_dilate, config.extras.mask_fill_holes) == (0, True)  # cove-tiny's gate
    for extra in (["--mask-dilate", "0"], ["--mask-fill-holes"]):
        with pytest.raises(ValueError, match="expected --mask-threshold too"):
            cli.config_from_args(parser.parse_args(edit + ["--source-prompt", "a red star"] + extra))
    with pytest.raises(ValueError, match="mask_dilate must be >= 0"):
        cli.config_from_args(parser.parse_args(edit + ["--source-prompt", "a red star", "--mask-threshold",
                                                       "0.4", "--mask-dilate", "-1"]))


def test_config_from_args_p2p_steps():
    parser = cli.build_parser()
    edit = ["edit", "in.mp4", "-p", "a green star"]
    assert cli.config_from_args(parser.parse_args(edit)).extras.p2p_steps == 0  # the paper
    args = parser.parse_args(edit + ["--source-prompt", "a red star", "--p2p-steps", "10"])
    assert cli.config_from_args(args).extras.p2p_steps == 10
    with pytest.raises(ValueError, match="--p2p-steps needs a --source-prompt"):
        cli.config_from_args(parser.parse_args(edit + ["--p2p-steps", "10"]))
    with pytest.raises(ValueError, match="p2p_steps must be >= 0"):
        cli.config_from_args(parser.parse_args(edit + ["--source-prompt", "a red star", "--p2p-steps", "-1"]))


def test_default_output_paths(tmp_path):
    assert cli.default_output("clips/dog.mp4").as_posix() == "clips/dog_edited.mp4"
    assert cli.default_output("clips/dog").as_posix() == "clips/dog_edited.mp4"
    assert cli.sibling(tmp_path / "e.mp4", "side_by_side") == tmp_path / "e_side_by_side.mp4"


def test_write_all_is_all_or_nothing(tmp_path):
    good = textured_clip(F=2)
    (tmp_path / "a.gif").write_bytes(b"old")
    with pytest.raises(ValueError, match="uint8"):
        io.write_all({tmp_path / "a.gif": good, tmp_path / "b.gif": good.astype(np.float32)}, fps=8)
    assert [p.name for p in tmp_path.iterdir()] == ["a.gif"]  # no new or pending file
    assert (tmp_path / "a.gif").read_bytes() == b"old"  # an earlier output is kept
    io.write_all({tmp_path / "a.gif": good, tmp_path / "b.gif": good}, fps=8)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.gif", "b.gif"]
    assert io.read_video(tmp_path / "a.gif").shape == good.shape


def test_phase_progress_one_bar_per_phase():
    import io as stdio

    sink = stdio.StringIO()
    progress = cli.PhaseProgress({"invert": 3, "denoise": 2}, file=sink)
    counts = []
    for phase, steps in (("invert", 3), ("denoise", 2)):
        for i in range(steps):
            progress({"phase": phase, "i": i, "t": 0, "latents": None})
        counts.append((progress.phase, progress.bar.n, progress.bar.total))
    progress.close()
    assert counts == [("invert", 3, 3), ("denoise", 2, 2)]
    assert "invert" in sink.getvalue() and "3/3" in sink.getvalue() and "2/2" in sink.getvalue()


# ---------------------------------------------------------------------------- correspond


def test_query_grid_and_drawing():
    tokens = correspond.query_grid((16, 16), points=4)
    assert len(tokens) == 16 and len(set(tokens.tolist())) == 16
    from cove.correspondence import Correspondence

    F, H, W = 3, 8, 8
    index = torch.arange(H * W)[None, :, None, None].repeat(F, 1, F, 1)  # (F, N, F, 1) identity
    identity = Correspondence(index, torch.ones(F, H * W, F, 1), (H, W))
    frames = np.full((F, 32, 32, 3), 128, np.uint8)
    drawn = correspond.draw_correspondence(frames, identity, points=4, min_side=64)
    assert drawn.shape == (F, 64, 64, 3)
    assert (drawn != 128).any(axis=-1).any(axis=(1, 2)).all()  # points drawn in every frame
    assert np.array_equal(drawn[0], drawn[2])  # identity matches: the same marks everywhere


def test_correspond_flow_tracks_a_pan(tmp_path, capsys):
    clip = textured_clip(F=4, size=64, shift=8)  # 8 px per frame = 1 cell of an 8x8 grid
    io.write_video(tmp_path / "pan.gif", clip)
    out = tmp_path / "vis" / "pan.mp4"
    assert cli.main(["correspond", str(tmp_path / "pan.gif"), "-o", str(out), "--source", "flow"]) == 0
    saved = torch.load(out.with_suffix(".pt"))
    F, N = 4, 64
    assert saved["index"].shape == (F, N, F, 1) and saved["grid"] == (8, 8)
    # interior tokens of frame 0 move one cell left per frame
    x0 = torch.arange(N) % 8
    interior = (x0 >= 4) & (x0 <= 6) & (torch.arange(N) // 8 >= 1) & (torch.arange(N) // 8 <= 6)
    x1 = saved["index"][0, :, 1, 0] % 8
    assert ((x0 - x1)[interior] == 1).float().mean() > 0.8
    assert io.read_video(out).shape[0] == F
    assert "wrote" in capsys.readouterr().out


# ---------------------------------------------------------------------------- end to end on a tiny model


def test_edit_end_to_end(tiny_pipe, tiny_folder, tmp_path, capsys):
    clip = textured_clip(F=5, size=48, shift=4)
    source = io.write_video(tmp_path / "in" / "walk.gif", clip)
    before = source.read_bytes()
    argv = ["edit", str(source), "-p", "a red star", "--model", str(tiny_folder), "--frames", "3",
            "--inversion-steps", "2", "--denoise-steps", "2", "--guidance", "3", "--window", "3"]
    assert cli.main(argv) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    out, side = tmp_path / "in" / "walk_edited.mp4", tmp_path / "in" / "walk_edited_side_by_side.mp4"
    edited = io.read_video(out)
    size = frame_size(tiny_pipe)  # unet.config.sample_size * vae_scale_factor
    assert edited.shape == (3, size, size, 3)
    both = io.read_video(side)
    assert both.shape[0] == 3 and both.shape[2] == 2 * size and both.shape[1] > size
    assert "timings:" in captured.out and "total" in captured.out
    assert "invert" in captured.err and "denoise" in captured.err  # progress bars per phase
    assert source.read_bytes() == before  # the input is untouched


def record_edit_video(monkeypatch) -> dict:
    """The keyword arguments ``cove edit`` passes to ``edit_video`` (which still runs)."""
    import cove.pipeline

    seen, original = {}, cove.pipeline.edit_video

    def recording(*args, **kwargs):
        seen.update(kwargs)
        return original(*args, **kwargs)

    monkeypatch.setattr(cove.pipeline, "edit_video", recording)
    return seen


def test_edit_passes_source_and_negative_prompts(tiny_folder, tmp_path, monkeypatch):
    seen = record_edit_video(monkeypatch)
    source = io.write_video(tmp_path / "walk.gif", textured_clip(F=2, size=32))
    argv = ["edit", str(source), "-p", "a green star", "--source-prompt", "a red star", "--negative-prompt",
            "a red star", "--model", str(tiny_folder), "--attention", "per-frame", "--inversion-steps", "2",
            "--denoise-steps", "2", "--quiet"]
    assert cli.main(argv) == 0
    assert seen["source_prompt"] == "a red star" and seen["negative_prompt"] == "a red star"


def test_edit_failure_leaves_no_output(tiny_folder, tmp_path, capsys, monkeypatch):
    source = io.write_video(tmp_path / "walk.gif", textured_clip(F=3, size=32))
    mediapy = io._mediapy()
    write = mediapy.write_video

    def full_disk(path, images, **kwargs):  # the edited clip is written, ffmpeg fails on the side-by-side
        if "side_by_side" in str(path):
            raise RuntimeError(f"Error writing '{path}': [out#0/mp4 @ 0x1] Error writing trailer: "
                               "No space left on device\nsecond line")
        return write(path, images, **kwargs)

    monkeypatch.setattr(mediapy, "write_video", full_disk)
    argv = ["edit", str(source), "-p", "x", "--model", str(tiny_folder), "--attention", "per-frame",
            "--inversion-steps", "2", "--denoise-steps", "2", "-o", str(tmp_path / "out" / "e.mp4")]
    assert cli.main(argv) == 2
    side = tmp_path / "out" / "e_side_by_side.mp4"
    assert error_lines(capsys)[-1:] == [f"cove: error: cannot write {side}: No space left on device"]
    assert list((tmp_path / "out").iterdir()) == []  # the finished first clip is removed too


def test_correspond_diffusion_end_to_end(tiny_folder, tmp_path):
    source = io.write_video(tmp_path / "walk.gif", textured_clip(F=3, size=32))
    out = tmp_path / "corr.mp4"
    argv = ["correspond", str(source), "-o", str(out), "--model", str(tiny_folder),
            "--k", "2", "--window", "3"]
    assert cli.main(argv) == 0
    saved = torch.load(out.with_suffix(".pt"))
    H, W = saved["grid"]
    assert saved["index"].shape == (3, H * W, 3, 2) and saved["score"].shape == (3, H * W, 3, 2)
    assert saved["index"].max() < H * W
    assert io.read_video(out).shape[0] == 3


def test_feature_options_reach_the_correspondence(tiny_pipe, tiny_folder, tmp_path):
    """--feature-t and --feature-layer: the saved matches are those of the library's stages 1-3
    at that t and block, and differ from the defaults' on this clip."""
    from cove.correspondence import correspond as correspond_features
    from cove.features import extract_features
    from cove.loading import load_pipeline

    frames = textured_clip(F=3, size=32)
    source = io.write_video(tmp_path / "walk.gif", frames)
    saved = {}
    for name, extra in {"default": [], "t50": ["--feature-t", "50", "--feature-layer", "up_blocks.0"]}.items():
        out = tmp_path / f"{name}.mp4"
        argv = ["correspond", str(source), "-o", str(out), "--model", str(tiny_folder), "--k", "2", "--window", "3"]
        assert cli.main(argv + extra) == 0
        saved[name] = torch.load(out.with_suffix(".pt"))
    pipe = load_pipeline(str(tiny_folder))
    clip = io.read_video(source)  # (F, H, W, 3) as the command read it
    features = extract_features(pipe, clip, t=50, layer="up_blocks.0", generator=torch.Generator().manual_seed(0))
    expected = correspond_features(features, window=3, k=2)
    assert torch.equal(saved["t50"]["index"], expected.index.cpu())
    assert not torch.equal(saved["t50"]["index"], saved["default"]["index"])
    args = cli.build_parser().parse_args(["edit", "in.mp4", "-p", "x", "--feature-t", "50", "--feature-layer", "up_blocks.0"])
    config = cli.config_from_args(args)
    assert (config.feature_t, config.feature_layer) == (50, "up_blocks.0")
    assert cli.config_from_args(cli.build_parser().parse_args(["edit", "in.mp4", "-p", "x"])).feature_t == 261


def test_settings_model_starts_from_the_models_own(tiny_folder, tmp_path, monkeypatch):
    """--settings model: unset options take the model folder's cove_settings.json (and its
    negative-prompt policy); given options still win; --settings paper (the default) ignores it."""
    from cove.config import Extras
    from cove.recommended import write_settings
    from cove.tiny.presets import edit_config

    parser = cli.build_parser()
    edit = ["edit", "in.mp4", "-p", "a green star", "--model", str(tiny_folder)]
    model = ["--settings", "model", "--source-prompt", "a red star"]
    assert cli.config_from_args(parser.parse_args(edit + model)) == CoveConfig()  # no file: the paper's
    own = CoveConfig(inversion_steps=3, denoise_steps=2, pnp_steps=2, k=2, window=3, feature_t=50,
                          feature_layer="up_blocks.0", attention="per-frame", extras=Extras(strength=0.5, p2p_steps=1))
    write_settings(tiny_folder, own, "source", "a test's")
    assert cli.config_from_args(parser.parse_args(edit + model)) == own
    assert cli.negative_from_args(parser.parse_args(edit + model)) == "a red star"
    given = cli.config_from_args(parser.parse_args(edit + model + ["--k", "1", "--strength", "1", "--p2p-steps", "0"]))
    assert (given.k, given.extras.strength, given.extras.p2p_steps, given.feature_t) == (1, 1.0, 0, 50)
    assert cli.negative_from_args(parser.parse_args(edit + model + ["--negative-prompt", "blurry"])) == "blurry"
    paper = parser.parse_args(edit + ["--source-prompt", "a red star"])
    assert cli.config_from_args(paper) == CoveConfig() and cli.negative_from_args(paper) == ""
    with pytest.raises(ValueError, match=r"the model's settings \(cove_settings.json: extras.p2p_steps = 1\) read the "
                                         "source prompt; expected --source-prompt"):
        cli.config_from_args(parser.parse_args(edit + ["--settings", "model"]))
    tiny = ["edit", "in.mp4", "-p", "a green star", "--settings", "model", "--source-prompt", "a red star"]
    assert cli.config_from_args(parser.parse_args(tiny)) == edit_config()  # cove-tiny's presets
    # the whole command: the edit runs with the model's settings
    seen = record_edit_video(monkeypatch)
    source = io.write_video(tmp_path / "walk.gif", textured_clip(F=2, size=32))
    assert cli.main(["edit", str(source), "-p", "a green star", "--model", str(tiny_folder), "--quiet"] + model) == 0
    assert seen["config"] == own and seen["negative_prompt"] == "a red star"


def test_correspond_settings_model_reads_the_models_features(tiny_folder, tmp_path):
    from cove.recommended import write_settings

    source = io.write_video(tmp_path / "walk.gif", textured_clip(F=3, size=32))
    write_settings(tiny_folder, CoveConfig(k=2, window=3, feature_t=50, feature_layer="up_blocks.0"), "empty", "")
    saved = {}
    for name, extra in {"model": ["--settings", "model"],
                        "given": ["--k", "2", "--window", "3", "--feature-t", "50", "--feature-layer", "up_blocks.0"],
                        "paper": []}.items():
        out = tmp_path / f"{name}.mp4"
        assert cli.main(["correspond", str(source), "-o", str(out), "--model", str(tiny_folder)] + extra) == 0
        saved[name] = torch.load(out.with_suffix(".pt"))
    assert torch.equal(saved["model"]["index"], saved["given"]["index"]) and saved["model"]["window"] == 3
    assert saved["paper"]["index"].shape[-1] == CoveConfig().k != 2


# ---------------------------------------------------------------------------- demo


def test_demo_quick(tmp_path, capsys):
    out_dir = tmp_path / "demo"
    assert cli.main(["demo", "-o", str(out_dir), "--quick"]) == 0
    printed = capsys.readouterr().out
    assert "COVE" in printed and "per-frame" in printed and "demo done in" in printed
    names = {"source.mp4", "edited.mp4", "per_frame.mp4", "side_by_side.mp4", "strip.png", "metrics.json"}
    assert {p.name for p in out_dir.iterdir()} == names
    summary = json.loads((out_dir / "metrics.json").read_text())
    F, H, W = summary["frames"]
    assert io.read_video(out_dir / "edited.mp4").shape == (F, H, W, 3)
    from PIL import Image

    from cove.app.demo import DISPLAY_SCALE, STRIP_SCALE

    assert io.read_video(out_dir / "side_by_side.mp4").shape[2] == 4 * W * DISPLAY_SCALE
    strip = np.asarray(Image.open(out_dir / "strip.png").convert("RGB"))  # every second frame, three columns
    column = STRIP_SCALE * W
    assert strip.shape[1] == 3 * column and strip.shape[0] > (F + 1) // 2 * STRIP_SCALE * H
    edited = io.read_video(out_dir / "edited.mp4")  # COVE's column, bottom-aligned under the labels
    bottom = strip[-STRIP_SCALE * H:, 2 * column:]
    assert np.abs(bottom[::STRIP_SCALE, ::STRIP_SCALE].astype(int) - edited[2 * ((F - 1) // 2)]).mean() < 8
    for name in ("source", "per_frame", "cove", "ground_truth"):
        assert math.isfinite(summary["metrics"][name]["warp_error"])
    # the ground truth is its own reference: infinite PSNR, stored as the string "inf"
    assert summary["metrics"]["ground_truth"]["psnr"] == "inf"
    # PCK of the edit's correspondence and of optical flow on the same clip and grid, recomputed
    import cove
    from cove import world
    from cove.app.demo import QUICK_CONFIG, QUICK_FRAMES, SEED, correspondence_pck
    from cove.extras.flow import flow_correspondence
    from cove.pipeline import compute_correspondence

    clip = world.render(world.demo_scene(frames=QUICK_FRAMES))
    grid = tuple(summary["pck"]["grid"])
    flow = correspondence_pck(flow_correspondence(clip.frames, grid), clip)
    corr, _ = compute_correspondence(cove.load_pipeline("cove-tiny"), clip.frames, QUICK_CONFIG,
                                     torch.Generator("cpu").manual_seed(SEED))
    assert summary["pck"]["flow"] == pytest.approx(flow) and summary["pck"]["diffusion"] == pytest.approx(
        correspondence_pck(corr, clip))
    assert summary["config"]["attention"] == "cove" and summary["quick"] is True
    assert summary["timings"]["edit cove"] > 0 and summary["machine"]["torch"] == torch.__version__


def test_format_summary_handles_missing_values():
    from cove.app.demo import format_summary
    from cove.eval.bench import jsonable

    metrics = {"warp_error": 1.5, "psnr": float("inf"), "background_psnr": 30.0,
               "object_psnr": float("nan"), "attribute_accuracy": np.float64(0.5)}
    summary = jsonable({
        "frames": [8, 64, 64], "edit": ["red star", "yellow star"], "prompt": "a yellow star",
        "quick": False, "metrics": {"cove": metrics},
        "pck": {"diffusion": 0.9, "flow": 0.8, "grid": [16, 16]},
        "timings": {"edit cove": 1.0, "edit per-frame": 2.0, "total": 4.0}, "machine": {"device": "cpu"},
    })
    assert summary["metrics"]["cove"]["psnr"] == "inf" and summary["metrics"]["cove"]["object_psnr"] is None
    json.dumps(summary, allow_nan=False)  # strict JSON
    text = format_summary(summary)
    (cove_line,) = [line for line in text.splitlines() if line.split()[:1] == ["COVE"] and "demo" not in line]
    assert cove_line.split()[1:] == ["1.50", "-", "30.00", "-", "0.50"]
    assert "diffusion features 0.900, optical flow 0.800" in text


# ---------------------------------------------------------------------------- fuzz: malformed inputs


def malformed_inputs(folder):
    """{name: path} of broken clips, each one way a user's file can be wrong."""
    import shutil
    import struct
    import subprocess
    import zlib

    from PIL import Image

    def png_declaring(width, height):
        def chunk(kind, data):
            return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
                + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b""))

    good = io.write_video(folder / "good.gif", textured_clip(F=3, size=32))
    cases = {"empty.mp4": b"", "noise.mp4": np.random.default_rng(0).bytes(4096), "text.gif": b"GIF? no",
             "truncated.gif": good.read_bytes()[:300], "notes.txt": b"hello"}
    paths = {}
    for name, data in cases.items():
        (folder / name).write_bytes(data)
        paths[name] = folder / name
    subprocess.run([io.ffmpeg_path(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=0.3", str(folder / "audio.mp4")], check=True)
    paths["audio.mp4"] = folder / "audio.mp4"
    bomb = bytearray(good.read_bytes())
    bomb[6:10] = struct.pack("<HH", 30000, 30000)
    (folder / "bomb.gif").write_bytes(bytes(bomb))
    paths["bomb.gif"] = folder / "bomb.gif"
    for name, files in {
        "empty_folder": {},
        "bomb_folder": {"0.png": png_declaring(30000, 30000)},
        "zero_byte_frame": {"0.png": b""},
        "mixed_sizes": {"0.png": (16, 16), "1.png": (24, 16)},
        "truncated_frame": {"0.png": (32, 32), "1.png": "truncated"},
        "folder.mp4": {},
    }.items():
        sub = folder / name
        sub.mkdir()
        for file, content in files.items():
            if isinstance(content, bytes):
                (sub / file).write_bytes(content)
            else:
                shape = content if isinstance(content, tuple) else (32, 32)
                Image.fromarray(textured_clip(F=1, size=max(shape))[0][: shape[0], : shape[1]]).save(sub / file)
                if content == "truncated":
                    data = (sub / file).read_bytes()
                    (sub / file).write_bytes(data[: len(data) // 2])
        paths[name] = sub
    shutil.copy(good, folder / "existing.mp4")
    return good, paths


def test_fuzz_malformed_files_and_arguments(tiny_folder, tmp_path, capsys, monkeypatch):
    """Every malformed file or argument: exit 2, one line on stderr, no traceback, no new file,
    input bytes unchanged."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    good, broken = malformed_inputs(work)
    model = ["--model", str(tiny_folder)]
    runs = [["edit", str(path), "-p", "x", *model] for path in broken.values()]
    runs += [["correspond", str(path), "-o", "c.mp4", "--source", "flow"] for path in broken.values()]
    edit = ["edit", str(good), "-p", "a red star", *model]
    bad_arguments = [
        ["--fps", "0"], ["--fps", "nan"], ["--fps", "-3"], ["--fps", "abc"], ["--size", "0"], ["--size", "-5"],
        ["--size", "abc"], ["--size", "8192"], ["--frames", "0"], ["--k", "0"], ["--k", "2.5"], ["--window", "4"],
        ["--strength", "2"], ["--strength", "0"], ["--merge-ratio", "1.5"], ["--guidance", "nan"],
        ["--device", "gpu9"], ["--device", "cuda:99"], ["--dtype", "float64"], ["--attention", "foo"],
        ["--model", "./nowhere"], ["--model", "nothing"], ["-o", str(good)], ["-o", "./good.gif"],
        ["-o", "out.avi"], ["-o", "existing.mp4"], ["--mask-threshold", "0.4"], ["--pnp-resnet-max-t", "0"],
        ["--inversion-steps", "0"], ["--p2p-steps", "3"], ["--frobnicate"], ["-o", "good_side_by_side.mp4"],
        ["-o", "work"], ["--feature-t", "1000"], ["--feature-t", "-1"], ["--feature-t", "abc"],
        ["--feature-layer", "up_blocks.9"], ["--feature-layer", "nothing"],
    ]
    runs += [edit + extra for extra in bad_arguments]
    runs += [["edit", str(good)], ["correspond", str(good)], ["correspond", str(good), "-o", "good.gif"],
             ["correspond", str(good), "-o", "c.mp4", "--grid", "4", "4"],
             ["correspond", str(good), "-o", "c.mp4", "--source", "nope"], ["demo", "--device", "gpu9"],
             ["correspond", str(good), "-o", "c.mp4", "--source", "flow", "--feature-t", "50"],
             ["correspond", str(good), "-o", "c.mp4", *model, "--feature-layer", "up_blocks.9"],
             ["correspond", str(good), "-o", "c.mp4", *model, "--feature-t", "1000"]]
    (work / "good_side_by_side.mp4").symlink_to(good)  # a derived output that is the input
    before = snapshot_bytes(work)
    for argv in runs:
        code = cli.main(argv)
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, (argv, code, err)
        assert lines[0].startswith("cove"), (argv, err)
        assert snapshot_bytes(work) == before, argv  # no new file, inputs unchanged


def snapshot_bytes(folder):
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}
