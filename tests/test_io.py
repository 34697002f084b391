"""cove.app.io: round trips through mp4 / gif / frame folders, preparation, errors, atomic writes."""
import os

import numpy as np
import pytest
from PIL import Image

from cove.app import io


def moving_square(F=6, H=48, W=64, seed=0):
    """uint8 (F, H, W, 3): a red square moving right over a smooth noisy background."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    ramp = (60 + 40 * x / W + 20 * y / H)[..., None] + rng.integers(-3, 4, size=(H, W, 3))
    background = ramp.clip(0, 255).astype(np.uint8)  # (H, W, 3) smooth, so codecs keep it
    frames = np.repeat(background[None], F, axis=0)  # (F, H, W, 3)
    for f in range(F):
        frames[f, 12:28, 4 + 4 * f : 20 + 4 * f] = (230, 30, 30)
    return frames


def test_mp4_round_trip(tmp_path):
    frames = moving_square()
    path = io.write_video(tmp_path / "clip.mp4", frames, fps=8)
    back = io.read_video(path)
    assert back.shape == frames.shape and back.dtype == np.uint8
    # lossy codec: close on average, and the square is where it was in every frame
    assert np.abs(back.astype(int) - frames).mean() < 8
    for f in range(len(frames)):
        assert back[f, 16:24, 8 + 4 * f : 16 + 4 * f, 0].mean() > 180
    assert io.read_video(path, max_frames=2).shape == (2, 48, 64, 3)


def test_gif_round_trip(tmp_path):
    frames = moving_square(F=5)
    io.write_video(tmp_path / "clip.gif", frames, fps=10)
    back = io.read_video(tmp_path / "clip.gif")
    assert back.shape == frames.shape
    assert np.abs(back.astype(int) - frames).mean() < 10
    square = back[np.arange(5), 20, 10 + 4 * np.arange(5)]  # (F, 3) pixel inside the square
    assert (square[:, 0] > 180).all() and (square[:, 1:] < 80).all()


def test_folder_natural_order_and_input_untouched(tmp_path):
    frames = moving_square(F=11)
    folder = tmp_path / "frames"
    folder.mkdir()
    for f in range(11):  # f2.png must come before f10.png
        Image.fromarray(frames[f]).save(folder / f"f{f}.png")
    (folder / "notes.txt").write_text("not a frame")
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    back = io.read_video(folder)
    assert np.array_equal(back, frames)  # png is lossless
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before


def test_read_with_size_crops_square(tmp_path):
    frames = moving_square(H=48, W=64)
    io.write_video(tmp_path / "clip.gif", frames)
    assert io.read_video(tmp_path / "clip.gif", size=32).shape == (6, 32, 32, 3)


def test_prepare_frames_shapes_and_spacing():
    frames = moving_square(F=10, H=48, W=64)
    frames[:, 0, 0, 0] = np.arange(10)  # tag each frame
    out = io.prepare_frames(frames, size=24, num_frames=4)
    assert out.shape == (4, 24, 24, 3) and out.dtype == np.uint8
    assert np.array_equal(io.frame_indices(10, 4), [0, 3, 6, 9])
    assert io.prepare_frames(frames, size=(16, 32)).shape == (10, 16, 32, 3)
    kept = io.prepare_frames(frames[:, :45, :61], size=None)  # crop to multiples of 8
    assert kept.shape == (10, 40, 56, 3)
    untagged = io.prepare_frames(frames, size=None, num_frames=3)
    assert list(untagged[:, 0, 0, 0]) == [0, 4, 9]  # 48x64 already multiples of 8: no crop


def test_prepare_frames_centre_crop_keeps_the_middle():
    frames = np.zeros((1, 32, 96, 3), np.uint8)
    frames[:, :, 32:64] = 255  # the central square is white, the sides black
    out = io.prepare_frames(frames, size=32)
    assert out.min() == 255


def test_side_by_side_shapes():
    a, b = moving_square(F=4, H=48, W=64), moving_square(F=4, H=24, W=16)
    out = io.side_by_side(a, b)
    assert out.shape == (4, 48, 64 + 32, 3)  # b resized to height 48
    assert np.array_equal(out[:, :, :64], a)
    labelled = io.side_by_side(a, a, labels=["source", "edited"])
    bar = io.label_height(48)
    assert bar == 12 and io.label_height(512) == 28
    assert labelled.shape == (4, 48 + bar, 128, 3)
    assert np.array_equal(labelled[:, bar:, 64:], a)
    assert labelled[:, :bar].max() > 200  # white text drawn in the bar


@pytest.mark.parametrize(
    "bad, match",
    [
        (np.zeros((2, 8, 8, 3), np.float32), "uint8"),
        (np.zeros((8, 8, 3), np.uint8), r"\(F, H, W, 3\)"),
        (np.zeros((2, 8, 8, 4), np.uint8), r"\(F, H, W, 3\)"),
        ([[0]], "numpy array"),
    ],
)
def test_bad_frames_raise_and_leave_no_file(tmp_path, bad, match):
    with pytest.raises(ValueError, match=match):
        io.write_video(tmp_path / "out" / "clip.mp4", bad)
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    with pytest.raises(ValueError, match=match):
        io.side_by_side(bad)


def test_failing_write_leaves_no_file(tmp_path, monkeypatch):
    frames = moving_square(F=2)
    (tmp_path / "clip.mp4").write_bytes(b"old")

    class Boom(RuntimeError):
        pass

    def explode(path, images, **kwargs):
        open(path, "wb").write(b"partial")
        raise Boom("disk full")

    monkeypatch.setattr(io._mediapy(), "write_video", explode)
    with pytest.raises(OSError, match=f"^cannot write {tmp_path / 'clip.mp4'}: disk full$"):
        io.write_video(tmp_path / "clip.mp4", frames)
    assert sorted(os.listdir(tmp_path)) == ["clip.mp4"]  # no temporary file left
    assert (tmp_path / "clip.mp4").read_bytes() == b"old"  # the previous file is intact


def test_read_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="no such"):
        io.read_video(tmp_path / "missing.mp4")
    (tmp_path / "clip.txt").write_text("hello")
    with pytest.raises(ValueError, match="expected a folder of frames or one of"):
        io.read_video(tmp_path / "clip.txt")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="holds no"):
        io.read_video(tmp_path / "empty")
    (tmp_path / "broken.mp4").write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match="cannot decode"):
        io.read_video(tmp_path / "broken.mp4")
    with pytest.raises(ValueError, match=".mp4 or .gif"):
        io.write_video(tmp_path / "clip.avi", moving_square(F=1))
    with pytest.raises(ValueError, match="multiple of 8"):
        io.prepare_frames(moving_square(), size=30)


def test_ffmpeg_is_found():
    assert os.access(io.ffmpeg_path(), os.X_OK)


def test_ffmpeg_from_path_first_then_bundled(tmp_path, monkeypatch):
    import imageio_ffmpeg

    monkeypatch.setenv("PATH", str(tmp_path))  # no ffmpeg on PATH: the wheel's binary
    assert io.ffmpeg_path() == imageio_ffmpeg.get_ffmpeg_exe()
    (tmp_path / "ffmpeg").symlink_to(imageio_ffmpeg.get_ffmpeg_exe())  # an ffmpeg on PATH wins
    assert io.ffmpeg_path() == str(tmp_path / "ffmpeg")
    io.write_video(tmp_path / "clip.mp4", moving_square(F=2))
    assert io.read_video(tmp_path / "clip.mp4").shape == (2, 48, 64, 3)


def test_written_files_get_ordinary_permissions(tmp_path):
    umask = os.umask(0o022)
    try:
        for name in ("clip.mp4", "clip.gif"):
            path = io.write_video(tmp_path / name, moving_square(F=2))
            assert path.stat().st_mode & 0o777 == 0o644  # not mkstemp's 0600
    finally:
        os.umask(umask)
