"""Issue 24: never lose a user's file, refuse what cannot fit, validate up front, cache, determinism."""
import os
import struct
import zlib
from dataclasses import fields

import numpy as np
import pytest
import torch

import cove.cache
import cove.loading
import cove.sd
from cove import CoveConfig, edit_video
from cove.app import cli, io
from cove.app.checks import check_outputs
from cove.cache import Cache
from cove.config import EngineOptions, Extras
from cove.correspondence import correspond, window_similarity
from cove.sd import PIXEL_BUDGET, check_device, check_fits, estimate_edit_memory


def clip(F=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(F, size, size, 3), dtype=np.uint8)


def error_lines(capsys):
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def snapshot(folder):
    """{relative path: bytes} of every file under ``folder``."""
    return {p.relative_to(folder): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(autouse=True)
def cache_in_tmp(tmp_path_factory, monkeypatch):
    monkeypatch.setenv("COVE_CACHE", str(tmp_path_factory.mktemp("cove-cache")))


@pytest.fixture
def no_work(monkeypatch):
    """Fail the test if a command loads a model or decodes frames."""
    def refuse(*args, **kwargs):
        raise AssertionError("work started before the inputs were checked")

    monkeypatch.setattr(cove.loading, "load_pipeline", refuse)
    monkeypatch.setattr(io, "read_video", refuse)


def refused(capsys, argv, folder, expect: str):
    """Run the CLI; it must exit 2 with one line containing ``expect`` and change no file."""
    before = snapshot(folder)
    assert cli.main(argv) == 2
    lines = error_lines(capsys)
    assert len(lines) == 1 and lines[0].startswith("cove") and expect in lines[0], lines
    assert snapshot(folder) == before


# ---------------------------------------------------------------------------- output paths


def test_output_onto_the_input_is_refused(tmp_path, capsys, monkeypatch, no_work):
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"not decoded: the paths are checked from headers only")
    monkeypatch.setattr(io, "probe", lambda path: (4, 32, 32))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "link.mp4").symlink_to(source)
    os.link(source, tmp_path / "hard.mp4")
    for out in ("clip.mp4", "./clip.mp4", str(source), "sub/../clip.mp4", "link.mp4", "hard.mp4"):
        refused(capsys, ["edit", "clip.mp4", "-p", "x", "-o", out], tmp_path, "would overwrite the input")
        refused(capsys, ["correspond", "clip.mp4", "-o", out], tmp_path, "would overwrite the input")
    # a derived output (the side-by-side) onto the input
    side = tmp_path / "e_side_by_side.mp4"
    side.write_bytes(b"the input")
    refused(capsys, ["edit", str(side), "-p", "x", "-o", "e.mp4"], tmp_path, "a derived output")
    # the tensors .pt next to the output onto an input: a folder input with its files
    frames = tmp_path / "frames"
    frames.mkdir()
    (frames / "0.png").write_bytes(b"png")
    (frames / "notes.gif").write_bytes(b"not a frame, but the user's file")
    refused(capsys, ["correspond", str(frames), "-o", str(frames / "notes.gif")], tmp_path, "would overwrite")


def test_existing_output_needs_overwrite(tmp_path, capsys):
    source = io.write_video(tmp_path / "pan.gif", clip(F=2, size=32))
    out = tmp_path / "vis.mp4"
    out.write_bytes(b"earlier result")
    argv = ["correspond", str(source), "-o", str(out), "--source", "flow"]
    refused(capsys, argv, tmp_path, "exists; pass --overwrite")
    assert cli.main(argv + ["--overwrite"]) == 0
    assert io.read_video(out).shape[0] == 2


def test_unwritable_output_folder_is_refused_first(tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.setattr(io, "probe", lambda path: (4, 32, 32))
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"x")
    (tmp_path / "a_file").write_text("x")
    refused(capsys, ["edit", str(source), "-p", "x", "-o", str(tmp_path / "a_file" / "e.mp4")], tmp_path,
            "is a file, not a folder")

    def read_only(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr("tempfile.TemporaryFile", read_only)
    refused(capsys, ["edit", str(source), "-p", "x", "-o", str(tmp_path / "new" / "e.mp4")], tmp_path,
            f"folder {tmp_path} is not writable")


def test_check_outputs_duplicates_and_folders(tmp_path):
    with pytest.raises(ValueError, match="same file"):
        check_outputs([tmp_path / "a.mp4", tmp_path / "b" / ".." / "a.mp4"], [])
    with pytest.raises(ValueError, match="is a folder"):
        check_outputs([tmp_path], [])
    assert check_outputs([tmp_path / "x" / "y.mp4"], [tmp_path / "in.mp4"]) == [tmp_path / "x" / "y.mp4"]
    assert not (tmp_path / "x").exists()  # checking creates nothing


@pytest.mark.parametrize("fps", ["0", "-1", "nan", "inf", "abc"])
def test_bad_fps_refused_before_work(tmp_path, capsys, no_work, fps):
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"x")
    refused(capsys, ["edit", str(source), "-p", "x", "--fps", fps], tmp_path, "--fps")


def test_write_all_names_the_users_path(tmp_path):
    (tmp_path / "a_file").write_text("x")
    target = tmp_path / "a_file" / "e.mp4"
    with pytest.raises(OSError, match=f"cannot write {target}") as error:
        io.write_all({target: clip(F=1, size=16)}, fps=8)
    assert "pending" not in str(error.value)
    with pytest.raises(ValueError, match="fps must be a finite number > 0"):
        io.write_all({tmp_path / "b.mp4": clip(F=1, size=16)}, fps=float("nan"))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


# ---------------------------------------------------------------------------- devices


@pytest.mark.parametrize("device", ["gpu9", "cuda:99", "cpu:3", "tpu"])
def test_bad_devices(tmp_path, capsys, no_work, device):
    with pytest.raises(ValueError, match="available: cpu"):
        check_device(device)
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"x")
    refused(capsys, ["edit", str(source), "-p", "x", "--device", device], tmp_path, "available: cpu")
    refused(capsys, ["demo", "-o", str(tmp_path / "demo"), "--device", device], tmp_path, "available")


def test_load_pipeline_bad_device_is_one_line():
    with pytest.raises(ValueError, match=r"unknown device 'gpu9'; available: cpu"):
        cove.loading.load_pipeline("cove-tiny", device="gpu9")
    with pytest.raises(ValueError, match="not available here"):
        cove.loading.load_pipeline("cove-tiny", device="cuda:99" if torch.cuda.device_count() < 99 else "mps")
    assert check_device(None) == torch.device("cpu") and check_device("cpu") == torch.device("cpu")


# ---------------------------------------------------------------------------- sizes


def png_header(width, height) -> bytes:
    """A PNG whose header declares ``width x height`` (its data is one empty row)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0")) + chunk(b"IEND", b"")


def gif_header(tmp_path, width, height):
    path = tmp_path / "small.gif"
    io.write_video(path, clip(F=2, size=8))
    data = bytearray(path.read_bytes())
    data[6:10] = struct.pack("<HH", width, height)  # logical screen size
    path.unlink()
    return bytes(data)


@pytest.mark.parametrize("kind", ["png", "gif"])
def test_decompression_bombs_are_clean_errors(tmp_path, capsys, kind, monkeypatch):
    monkeypatch.setattr(cove.loading, "load_pipeline", lambda *a, **k: pytest.fail("model loaded"))
    if kind == "png":
        (tmp_path / "frames").mkdir()
        (tmp_path / "frames" / "0.png").write_bytes(png_header(30000, 30000))
        path = tmp_path / "frames"
    else:
        path = tmp_path / "bomb.gif"
        path.write_bytes(gif_header(tmp_path, 30000, 30000))
    with pytest.raises(ValueError, match="pixels per frame"):
        io.read_video(path)
    with pytest.raises(ValueError, match="pixels per frame"):
        io.probe(path)
    refused(capsys, ["edit", str(path), "-p", "x", "-o", str(tmp_path / "e.mp4")], tmp_path, "pixels per frame")


def test_pixel_budget_from_headers_before_loading(tmp_path, capsys, no_work, monkeypatch):
    monkeypatch.setattr(io, "probe", lambda path: (5, 64, 64))
    source = tmp_path / "clip.mp4"
    source.write_bytes(b"x")
    refused(capsys, ["edit", str(source), "-p", "x", "--size", "8192"], tmp_path, "over the budget")
    # a folder of 8000x8000 frames at full size (correspond --source flow keeps the size)
    monkeypatch.setattr(io, "probe", lambda path: (3, 8000, 8000))
    refused(capsys, ["correspond", str(source), "-o", str(tmp_path / "c.mp4"), "--source", "flow"], tmp_path,
            "over the budget")
    # an edit resizes to the model's size: a large stored size alone is no reason to refuse
    with pytest.raises(AssertionError, match="work started"):
        cli.main(["edit", str(source), "-p", "x", "-o", str(tmp_path / "e.mp4")])


def test_edit_video_refuses_huge_frames(tiny_pipe):
    huge = np.broadcast_to(np.zeros((1, 1, 1, 3), np.uint8), (2, 8192, 8192, 3))  # no memory behind it
    with pytest.raises(ValueError, match="over the budget"):
        edit_video(tiny_pipe, huge, "x")


def test_memory_estimate_names_the_estimate_and_the_knobs(tiny_pipe):
    config = CoveConfig()
    base = estimate_edit_memory(tiny_pipe, 8, 32, 32, config)
    assert base["peak"] >= base["weights"] > 0
    assert estimate_edit_memory(tiny_pipe, 16, 32, 32, config)["peak"] > base["peak"]
    assert estimate_edit_memory(tiny_pipe, 8, 64, 64, config)["peak"] > base["peak"]
    chunked = estimate_edit_memory(tiny_pipe, 8, 32, 32, CoveConfig(engine=EngineOptions(frame_chunk=1, token_chunk=16)))
    assert chunked["attention"] < base["attention"] and chunked["guided attention"] < base["guided attention"]
    per_frame = estimate_edit_memory(tiny_pipe, 8, 32, 32, CoveConfig(attention="per-frame"))
    assert per_frame["peak"] < base["peak"] and per_frame["correspondence"] == 0
    assert check_fits(tiny_pipe, 8, 32, 32, config) == base
    with pytest.raises(ValueError) as error:
        check_fits(tiny_pipe, 8, 32, 32, config, budget=base["peak"] // 2)
    message = str(error.value)
    assert "\n" not in message and "needs about" in message and "MiB" in message
    for knob in ("--size", "--frames", "frame_chunk", "token_chunk", "per-frame"):
        assert knob in message
    with pytest.raises(ValueError, match="over the budget"):
        check_fits(tiny_pipe, 1, 8192 * 2, 8192, config)
    assert PIXEL_BUDGET == 2**26


def test_memory_estimate_counts_the_pnp_store_where_it_lives(tiny_pipe, monkeypatch):
    """The device holds the whole store, on a CPU the host's too (the same memory), one step
    of it when recomputed, and none of a CUDA edit's host store."""
    import cove.sd as sd

    def estimate(store, steps=4):
        config = CoveConfig(denoise_steps=8, pnp_steps=steps, engine=EngineOptions(pnp_store=store))
        return estimate_edit_memory(tiny_pipe, 8, 32, 32, config)

    device = estimate("device")
    assert device["pnp store"] > 0 and estimate("host") == device == estimate("auto")
    recompute = estimate("recompute")
    assert recompute["pnp store"] == device["pnp store"] // 4  # 1 of 4 steps held
    assert device["peak"] - recompute["peak"] == device["pnp store"] * 3 // 4
    assert estimate("device", steps=0)["pnp store"] == 0
    monkeypatch.setattr(type(tiny_pipe.unet), "device", property(lambda self: torch.device("cuda")))
    monkeypatch.setattr("cove.attention.free_memory", lambda device: 2**34)  # 16 GiB free
    assert estimate("device")["peak"] - estimate("host")["peak"] == device["pnp store"]
    assert estimate("host")["pnp store"] == 0


def test_guided_attention_estimate_is_one_block_of_queries(tiny_pipe, monkeypatch):
    """CGA holds one block of queries' gathered keys at a time: linear in the block's rows, and
    by default on CUDA within a quarter of the free memory (one row at least)."""
    def guided(**chunks):
        config = CoveConfig(engine=EngineOptions(**chunks))
        return estimate_edit_memory(tiny_pipe, 16, 32, 32, config)["guided attention"]

    one = guided(frame_chunk=1, token_chunk=1)
    assert one > 0 and guided(frame_chunk=1, token_chunk=3) == 3 * one == guided(frame_chunk=3, token_chunk=1)
    monkeypatch.setattr(type(tiny_pipe.unet), "device", property(lambda self: torch.device("cuda")))
    for free in (2**16, 2**22, 2**40):
        monkeypatch.setattr("cove.attention.free_memory", lambda device, free=free: free)
        assert one <= guided() <= max(one, free // 4)
    assert guided() == guided(frame_chunk=16)  # 1 TiB free: every query in one block


def test_memory_refusal_before_decoding(tiny_folder, tmp_path, capsys, monkeypatch):
    source = io.write_video(tmp_path / "walk.gif", clip(F=3, size=32))
    monkeypatch.setattr(cove.sd, "device_memory", lambda device: 2**20)  # a 1 MiB device
    monkeypatch.setattr(io, "read_video", lambda *a, **k: pytest.fail("frames decoded"))
    refused(capsys, ["edit", str(source), "-p", "x", "--model", str(tiny_folder)], tmp_path,
            "this edit needs about")


def test_frames_are_resized_one_at_a_time(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(3):
        Image.fromarray(clip(F=1, size=48, seed=i)[0]).save(folder / f"{i}.png")
    seen, prepare = [], io.prepare_frames

    def recording(frames, *args, **kwargs):
        seen.append(frames.shape)
        return prepare(frames, *args, **kwargs)

    monkeypatch.setattr(io, "prepare_frames", recording)
    frames = io.read_video(folder, size=16, num_frames=2)
    assert frames.shape == (2, 16, 16, 3)
    assert seen == [(1, 48, 48, 3)] * 3  # each frame resized as it is decoded


def test_truncated_frame_names_the_file(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i in range(2):
        Image.fromarray(clip(F=1, size=32, seed=i)[0]).save(folder / f"{i}.png")
    data = (folder / "1.png").read_bytes()
    (folder / "1.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match=r"1\.png"):
        io.read_video(folder)


def test_audio_only_video_says_no_video_stream(tmp_path):
    import subprocess

    path = tmp_path / "audio.mp4"
    subprocess.run([io.ffmpeg_path(), "-y", "-loglevel", "error", "-f", "lavfi", "-i",
                    "sine=frequency=440:duration=0.5", str(path)], check=True)
    with pytest.raises(ValueError, match="holds no video stream"):
        io.read_video(path)


def test_probe_reads_headers(tmp_path):
    io.write_video(tmp_path / "a.mp4", clip(F=4, size=32))
    io.write_video(tmp_path / "a.gif", clip(F=3, size=16))
    assert io.probe(tmp_path / "a.mp4") == (4, 32, 32)
    assert io.probe(tmp_path / "a.gif") == (3, 16, 16)


# ---------------------------------------------------------------------------- API validation


@pytest.mark.parametrize("kwargs, match", [
    ({"k": 2.5}, "k must be int"), ({"window": "9"}, "window must be int"),
    ({"window": 4}, "window must be odd"), ({"k": True}, "k must be int"),
    ({"attention": 3}, "attention must be str"), ({"guidance_scale": float("nan")}, "guidance_scale must"),
    ({"pnp_resnets": ["up_blocks.1.resnets.1"]}, "pnp_resnets must be tuple"),
    ({"frame_chunk": 0}, "frame_chunk must be None or >= 1"), ({"mask_fill_holes": 1}, "mask_fill_holes must be bool"),
])
def test_config_validates_types_and_ranges(kwargs, match):
    (name,) = kwargs  # each group of CoveConfig validates its own fields
    group = next(g for g in (CoveConfig, EngineOptions, Extras) if name in {f.name for f in fields(g)})
    with pytest.raises(ValueError, match=match):
        group(**kwargs)


def test_config_accepts_numpy_numbers():
    config = CoveConfig(k=np.int64(2), guidance_scale=3, extras=Extras(strength=np.float32(0.5)))
    assert config.k == 2


def unit(*shape, seed=0):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


def test_correspond_refuses_what_it_cannot_score():
    features = unit(3, 4, 6, 6)
    with pytest.raises(ValueError, match="unit L2 norm"):
        correspond(features * 30, window=3, k=2)
    nan = features.clone()
    nan[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN or Inf"):
        correspond(nan, window=3, k=2)
    with pytest.raises(ValueError, match="torch.Tensor"):
        correspond(features.numpy(), window=3, k=2)
    with pytest.raises(ValueError, match="floating-point"):
        correspond(features.long(), window=3, k=2)
    with pytest.raises(ValueError, match="window must be an int"):
        correspond(features, window=3.0, k=2)
    scores = correspond(torch.nn.functional.normalize(features * 30, dim=1), window=3, k=2).score
    assert scores.max() <= 1 + 1e-5  # the hint's normalisation gives cosine scores


def test_window_similarity_accepts_only_tensors():
    target = unit(4, 6, 6)[None][0]
    centre = torch.zeros(2, 2, dtype=torch.long)
    with pytest.raises(ValueError, match="query must be a torch.Tensor"):
        window_similarity(np.zeros((2, 4), np.float32), target, centre, 3)
    with pytest.raises(ValueError, match="centre must be an integer"):
        window_similarity(torch.zeros(2, 4), target, centre.float(), 3)


# ---------------------------------------------------------------------------- cache, Ctrl-C, determinism


FAST = CoveConfig(inversion_steps=3, denoise_steps=3, pnp_steps=2, window=3, k=2)


def seeded():
    return torch.Generator().manual_seed(0)


def test_cache_reuses_rebuilds_and_keys(tiny_pipe, tmp_path):
    frames, cache = clip(F=3, size=32), Cache(tmp_path / "cache")
    plain = edit_video(tiny_pipe, frames, "a red star", config=FAST, generator=seeded())
    first = edit_video(tiny_pipe, frames, "a red star", config=FAST, generator=seeded(), cache=cache)
    assert cache.misses == ["correspondence", "inversion"] and cache.hits == []
    second = edit_video(tiny_pipe, frames, "a green star", config=FAST, generator=seeded(), cache=cache)
    assert cache.hits == ["correspondence", "inversion"]  # another prompt: nothing recomputed
    again = edit_video(tiny_pipe, frames, "a red star", config=FAST, generator=seeded(), cache=cache)
    assert np.array_equal(plain.frames, first.frames) and np.array_equal(plain.frames, again.frames)
    fresh = edit_video(tiny_pipe, frames, "a green star", config=FAST, generator=seeded())
    assert np.array_equal(second.frames, fresh.frames)
    entries = sorted((tmp_path / "cache").rglob("*.pt"))
    assert len(entries) == 2
    # corrupt one entry, truncate the other: both detected and rebuilt
    data = bytearray(entries[0].read_bytes())
    data[-10] ^= 0xFF
    entries[0].write_bytes(bytes(data))
    entries[1].write_bytes(entries[1].read_bytes()[:100])
    cache.hits.clear(), cache.misses.clear()
    rebuilt = edit_video(tiny_pipe, frames, "a red star", config=FAST, generator=seeded(), cache=cache)
    assert cache.misses == ["correspondence", "inversion"]
    assert np.array_equal(rebuilt.frames, plain.frames)
    assert sorted((tmp_path / "cache").rglob("*.pt")) == entries
    # settings the inversion depends on, and the source prompt, change the key
    cache.hits.clear(), cache.misses.clear()
    edit_video(tiny_pipe, frames, "a red star", source_prompt="a star", config=FAST, generator=seeded(),
               cache=cache)
    assert cache.misses == ["inversion"] and cache.hits == ["correspondence"]
    assert not list((tmp_path / "cache").rglob("*.tmp"))


def test_default_cache_location(monkeypatch, tmp_path):
    monkeypatch.setenv("COVE_CACHE", str(tmp_path / "c"))
    assert Cache().root == tmp_path / "c"
    monkeypatch.delenv("COVE_CACHE")
    assert Cache().root == cove.cache.default_root() == cove.cache.Path.home() / ".cache" / "cove"


def test_ctrl_c_restores_processors_and_leaves_no_cache_entry(tiny_pipe, tmp_path):
    originals = {name: type(p) for name, p in tiny_pipe.unet.attn_processors.items()}
    cache = Cache(tmp_path / "cache")

    def interrupt(info):
        if info["phase"] == "invert" and info["i"] == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        edit_video(tiny_pipe, clip(F=3, size=32), "x", config=FAST, generator=seeded(), callback=interrupt,
                   cache=cache)
    assert {name: type(p) for name, p in tiny_pipe.unet.attn_processors.items()} == originals
    assert [p.parent.name for p in (tmp_path / "cache").rglob("*") if p.is_file()] == ["correspondence"]


def test_cli_ctrl_c_leaves_no_partial_file(tiny_folder, tmp_path, capsys, monkeypatch):
    source = io.write_video(tmp_path / "walk.gif", clip(F=3, size=32))

    def interrupt(self, info):
        if info["phase"] == "denoise":
            raise KeyboardInterrupt

    monkeypatch.setattr(cli.PhaseProgress, "__call__", interrupt)
    before = snapshot(tmp_path)
    argv = ["edit", str(source), "-p", "x", "--model", str(tiny_folder), "--inversion-steps", "2",
            "--denoise-steps", "2", "--window", "3", "-o", str(tmp_path / "out" / "e.mp4")]
    assert cli.main(argv) == 130
    assert error_lines(capsys) == ["cove: interrupted"]
    assert snapshot(tmp_path) == before and not (tmp_path / "out").exists()


def test_same_seed_same_frames(tiny_pipe):
    frames = clip(F=3, size=32, seed=3)
    config = CoveConfig(inversion_steps=3, denoise_steps=3, pnp_steps=2, window=3, k=2,
                        extras=Extras(mask_threshold=0.3, mask_samples=2))
    a = edit_video(tiny_pipe, frames, "a red star", source_prompt="a green star", config=config,
                   generator=seeded())
    b = edit_video(tiny_pipe, frames, "a red star", source_prompt="a green star", config=config,
                   generator=seeded())
    assert np.array_equal(a.frames, b.frames) and torch.equal(a.correspondence.index, b.correspondence.index)
    c = edit_video(tiny_pipe, frames, "a red star", source_prompt="a green star", config=config,
                   generator=torch.Generator().manual_seed(1))
    assert not torch.equal(c.correspondence.score, a.correspondence.score)  # the seed is used


def test_model_identity_distinguishes_weights_and_allows_parameterless_parts(tiny_pipe):
    from types import SimpleNamespace

    from cove.cache import model_identity

    fake = SimpleNamespace(unet=tiny_pipe.unet, vae=torch.nn.Identity(), text_encoder=tiny_pipe.text_encoder,
                           scheduler=tiny_pipe.scheduler, config=tiny_pipe.config)
    first = model_identity(fake)  # a VAE without parameters, as cove-tiny's
    weight = next(tiny_pipe.unet.parameters())
    kept = weight.detach().clone()
    with torch.no_grad():
        weight.add_(1.0)
    try:
        assert model_identity(fake)["weights"] != first["weights"]
    finally:
        with torch.no_grad():
            weight.copy_(kept)
    assert model_identity(fake) == first


def test_cache_never_fails_an_edit(tmp_path):
    (tmp_path / "a_file").write_text("x")
    cache = Cache(tmp_path / "a_file" / "cache")  # cannot be created
    assert cache.save("inversion", "k", {"x": torch.ones(2)}) is False
    assert cache.load("inversion", "k") is None
    good = Cache(tmp_path / "c")
    assert good.save("inversion", "k", {"x": torch.ones(2)})
    assert torch.equal(good.load("inversion", "k")["x"], torch.ones(2))
    path = good.path("inversion", "k")
    blob = path.read_bytes()
    body = b"not a torch file"
    import hashlib

    path.write_bytes(blob[:len(cove.cache.MAGIC)] + hashlib.sha256(body).hexdigest().encode() + body)  # valid digest, bad body
    assert good.load("inversion", "k") is None and not path.exists()
    assert not Cache(tmp_path / "c", max_entry_bytes=10).save("inversion", "k", {"x": torch.ones(100)})
