"""Writing outputs when the disk is full: one line naming the file and the reason, exit 2, no
partial file, for ``cove edit``, ``cove correspond`` and ``cove demo``.

The commands run in a child process whose file-size limit (``RLIMIT_FSIZE``) is a few hundred
bytes, so every real write past it fails inside the OS, for ffmpeg, torch and Python alike
(``File too large``, the same path as ``No space left on device``); the message of a full disk
itself is checked on ffmpeg's own report."""
import errno
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from cove import world
from cove.app import io

ROOT = Path(__file__).resolve().parents[1]
LIMIT = 512  # bytes: smaller than any clip, tensor file or JSON the commands write


def limited():
    """In the child: writes past LIMIT bytes fail with EFBIG instead of killing the process."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (LIMIT, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))


def run_limited(argv, cwd):
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]),
           "COVE_CACHE": str(Path(cwd) / "cache")}
    return subprocess.run([sys.executable, "-m", "cove.app.cli", *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600, preexec_fn=limited)


@pytest.fixture(scope="module")
def clip_file(tmp_path_factory):
    folder = tmp_path_factory.mktemp("clip")
    return io.write_video(folder / "stars.gif", world.render(world.demo_scene(frames=3)).frames)


@pytest.mark.parametrize("command", ["edit", "correspond", "demo"])
def test_full_disk_is_one_line_and_leaves_nothing(clip_file, tmp_path, command):
    out = tmp_path / "out"
    argv = {
        "edit": ["edit", str(clip_file), "-p", "a yellow star and a blue circle on grass", "--no-cache",
                 "--attention", "per-frame", "--inversion-steps", "2", "--denoise-steps", "1", "-q",
                 "-o", str(out / "edited.mp4")],
        "correspond": ["correspond", str(clip_file), "-o", str(out / "matches.mp4"), "--window", "3"],
        "demo": ["demo", "--quick", "-o", str(out)],
    }[command]
    done = run_limited(argv, tmp_path)
    lines = [line for line in done.stderr.splitlines() if line.strip() and "%|" not in line]
    assert done.returncode == 2, done.stderr[-2000:]
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert lines[0].startswith(f"cove: error: cannot write {out}{os.sep}")
    assert lines[0].endswith(f": {os.strerror(errno.EFBIG)}")
    assert not out.exists() or list(out.rglob("*")) == []  # no partial, pending or temporary file


def test_ffmpegs_full_disk_report_names_the_file(tmp_path, monkeypatch):
    mediapy = io._mediapy()

    def no_space(path, images, **kwargs):  # what mediapy raises when ffmpeg runs out of space
        Path(path).write_bytes(b"partial")
        raise RuntimeError(f"Error writing '{path}': [out#0/mp4 @ 0x42c85880] Error writing trailer: No space "
                           "left on device\n[out#0/mp4 @ 0x42c85880] Error closing file: No space left on device\n")

    monkeypatch.setattr(mediapy, "write_video", no_space)
    frames = np.zeros((2, 16, 16, 3), np.uint8)
    target = tmp_path / "out.mp4"
    with pytest.raises(OSError, match=f"^cannot write {target}: No space left on device$") as error:
        io.write_video(target, frames)
    assert error.value.errno == errno.ENOSPC
    with pytest.raises(OSError, match=f"^cannot write {target}: No space left on device$"):
        io.write_all({tmp_path / "a.gif": frames, target: frames}, fps=8)
    assert list(tmp_path.iterdir()) == []


def test_write_reason():
    assert io.write_reason(OSError(errno.ENOSPC, "No space left on device")) == (errno.ENOSPC, "No space left on device")
    assert io.write_reason(RuntimeError("x\n[out#0/mp4 @ 0x1] [aost#0:0] Conversion failed!\n")) == \
        (None, "Conversion failed!")
    assert io.write_reason(RuntimeError("Error writing '/tmp/.x.tmp.mp4': ")) == (None, "RuntimeError, no reason given")
