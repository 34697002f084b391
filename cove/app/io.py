"""Reading, preparing and writing clips: ``uint8 (F, H, W, 3)`` numpy arrays at the boundary.

* :func:`read_video` reads an ``.mp4`` (any container ffmpeg reads), a ``.gif`` or a folder of
  ``.png`` / ``.jpg`` frames.
* :func:`prepare_frames` centre-crops, resizes and subsamples a clip for a diffusion model
  (sides a multiple of 8 for Stable Diffusion's VAE).
* :func:`write_video` writes ``.mp4`` or ``.gif`` atomically, :func:`write_atomic` any file,
  :func:`write_all` several files all or none: a failed write (a full disk) leaves no file and
  is one ``OSError``, ``cannot write <path>: <reason>``.
* :func:`side_by_side` puts clips next to each other, optionally under small labels.

ffmpeg: the ``ffmpeg`` on ``PATH`` if there is one, else the binary shipped in the
``imageio-ffmpeg`` wheel (a declared dependency), so no system install is needed.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
import warnings
from pathlib import Path

import cv2
import numpy as np
from PIL import Image, ImageDraw, ImageFont, ImageSequence

from ..sd import check_frames

VIDEO_SUFFIXES = (".mp4", ".mov", ".m4v", ".avi", ".mkv", ".webm")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg")
WRITE_SUFFIXES = (".mp4", ".gif")


# ---------------------------------------------------------------------------- ffmpeg


def ffmpeg_path() -> str:
    """The ffmpeg executable: ``ffmpeg`` from ``PATH``, else imageio-ffmpeg's bundled binary."""
    found = shutil.which("ffmpeg")
    if found:
        return found
    import imageio_ffmpeg

    return imageio_ffmpeg.get_ffmpeg_exe()


def _mediapy():
    """mediapy, pointed at a working ffmpeg (done on every call: cheap, and robust to resets)."""
    import mediapy

    mediapy.set_ffmpeg(ffmpeg_path())
    return mediapy


# ---------------------------------------------------------------------------- headers

# Largest frame read, in pixels: PIL's decompression-bomb limit (about 89 Mpx), for every format.
MAX_FRAME_PIXELS = Image.MAX_IMAGE_PIXELS or 89_478_485


def _natural_key(path: Path) -> list:
    """Sort ``frame2.png`` before ``frame10.png``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", path.name)]


def _frame_files(folder: Path) -> list[Path]:
    files = sorted((p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES),
                   key=_natural_key)
    if not files:
        raise ValueError(f"folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} frames")
    return files


def _open_image(path: Path):
    """A PIL image with only its header read; a decompression bomb or an unreadable file ->
    a one-line ValueError naming the file."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(path)
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ValueError(f"{path} declares more than {MAX_FRAME_PIXELS:,} pixels per frame "
                             "(too large to decode safely)") from None
        except (OSError, SyntaxError, ValueError) as error:
            raise ValueError(f"cannot read image {path}: {_first_line(error)}") from None
    if image.width * image.height > MAX_FRAME_PIXELS:
        image.close()
        raise ValueError(f"{path} declares {image.width}x{image.height} pixels, more than "
                         f"{MAX_FRAME_PIXELS:,} per frame")
    return image


def _first_line(error: BaseException) -> str:
    return (str(error).strip() or type(error).__name__).splitlines()[0]


def _probe_ffmpeg(path: Path) -> tuple[int | None, int, int]:
    import imageio_ffmpeg

    reader = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = next(reader)
    except (OSError, RuntimeError, StopIteration) as error:
        report = str(error)
        if "Stream" in report and "Video:" not in report:
            raise ValueError(f"{path} holds no video stream") from None
        lines = [line.strip() for line in report.splitlines()
                 if line.strip() and "Could not load meta" not in line and not line.startswith("===")]
        reason = next((line for line in lines if path.name in line or "Invalid" in line), "not a video")
        reason = re.sub(r"^(\[[^\]]*\]\s*)+", "", reason)  # ffmpeg's "[in#0 @ 0x...]" prefix
        raise ValueError(f"cannot decode video {path}: {reason}") from None
    finally:
        reader.close()
    width, height = meta["size"]
    if width * height > MAX_FRAME_PIXELS:
        raise ValueError(f"{path} declares {width}x{height} pixels, more than {MAX_FRAME_PIXELS:,} per frame")
    fps, duration = meta.get("fps") or 0, meta.get("duration") or 0
    return (max(1, round(fps * duration)) if fps and duration else None), height, width


def probe(path) -> tuple[int | None, int, int]:
    """``(F, H, W)`` of a clip from its headers, without decoding any pixels (``F`` is ``None``
    when a video container does not say). Raises a one-line ValueError for a missing or
    unreadable input, a video without a video stream, frames of different sizes in a folder,
    or frames over :data:`MAX_FRAME_PIXELS`."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"no such video, gif or frame folder: {path}")
    suffix = path.suffix.lower()
    if path.is_dir():
        sizes = {}
        for file in _frame_files(path):
            with _open_image(file) as image:
                sizes.setdefault((image.height, image.width), file.name)
        if len(sizes) != 1:
            raise ValueError(f"frames in {path} must all have the same size, got "
                             + ", ".join(f"{h}x{w} ({name})" for (h, w), name in sorted(sizes.items())))
        ((height, width),) = sizes
        return len(_frame_files(path)), height, width
    if suffix == ".gif":
        with _open_image(path) as image:
            return getattr(image, "n_frames", 1), image.height, image.width
    if suffix in VIDEO_SUFFIXES:
        return _probe_ffmpeg(path)
    expected = ", ".join(VIDEO_SUFFIXES + (".gif",))
    raise ValueError(f"cannot read {path.name!r}: expected a folder of frames or one of {expected}")


# ---------------------------------------------------------------------------- reading


def _decoded(image, where: str) -> np.ndarray:
    try:
        return np.asarray(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
    except (OSError, SyntaxError, ValueError) as error:  # truncated or corrupt data
        raise ValueError(f"cannot decode {where}: {_first_line(error)}") from None


def _iter_frames(path: Path):
    """Yield uint8 ``(H, W, 3)`` frames one at a time; a corrupt frame -> ValueError naming it."""
    if path.is_dir():
        for file in _frame_files(path):
            with _open_image(file) as image:
                yield _decoded(image, str(file))
    elif path.suffix.lower() == ".gif":
        with _open_image(path) as gif:
            for i, frame in enumerate(ImageSequence.Iterator(gif)):
                yield _decoded(frame, f"frame {i} of {path}")
    else:
        media = _mediapy()
        try:
            with media.VideoReader(path) as reader:
                yield from (np.asarray(image[..., :3], dtype=np.uint8) for image in reader)
        except RuntimeError as error:  # ffmpeg's multi-line report: keep its last line
            last = str(error).strip().splitlines()[-1] if str(error).strip() else "unknown error"
            raise ValueError(f"cannot decode video {path}: {last}") from None


def read_video(path, *, max_frames: int | None = None, size=None, num_frames: int | None = None,
               multiple: int = 8) -> np.ndarray:
    """Read a clip as ``uint8 (F, H, W, 3)``, decoding (and resizing) one frame at a time.

    Important args:
        path: a video file (``.mp4``, ``.mov``, ``.avi``, ``.mkv``, ``.webm``), a ``.gif``, or
            a folder of ``.png`` / ``.jpg`` / ``.jpeg`` frames (natural sort order:
            ``2.png`` before ``10.png``).
        max_frames: keep only the first ``max_frames`` frames (stops decoding early).
        size: ``None`` keeps the frames as stored; otherwise each frame goes through
            :func:`prepare_frames` as it is decoded (an int: centre-crop to a square then
            resize to ``size x size``; ``(H, W)``: centre-crop to that aspect ratio then resize).
        num_frames: then keep this many evenly spaced frames (``None``: all).
        multiple: required divisor of the sides with ``size`` (8 for Stable Diffusion's VAE).

    Headers are checked first (:func:`probe`): a decompression bomb or a video without a
    video stream is refused before any pixel is decoded. The input is only read, never modified.
    """
    path = Path(path)
    if max_frames is not None and max_frames < 1:
        raise ValueError(f"max_frames must be None or >= 1, got {max_frames}")
    _, height, width = probe(path)
    frames = []
    for frame in _iter_frames(path):
        if max_frames is not None and len(frames) >= max_frames:
            break
        if frame.shape[:2] != (height, width):
            raise ValueError(f"{path}: frame {len(frames)} is {frame.shape[0]}x{frame.shape[1]}, "
                             f"the first is {height}x{width}")
        frames.append(frame if size is None else prepare_frames(frame[None], size, multiple=multiple)[0])
    if not frames:
        raise ValueError(f"video {path} holds no frames")
    frames = np.stack(frames)  # (F, H', W', 3)
    return frames[frame_indices(len(frames), num_frames)]


# ---------------------------------------------------------------------------- preparing


def _centre_crop(frames: np.ndarray, aspect: float) -> np.ndarray:
    """Largest centred crop of ``(F, H, W, 3)`` frames with width / height == ``aspect``."""
    _, H, W, _ = frames.shape
    if W / H > aspect:  # too wide: trim the sides
        w = max(1, round(H * aspect))
        x0 = (W - w) // 2
        return frames[:, :, x0 : x0 + w]
    h = max(1, round(W / aspect))  # too tall: trim top and bottom
    y0 = (H - h) // 2
    return frames[:, y0 : y0 + h]


def _resize(frames: np.ndarray, height: int, width: int) -> np.ndarray:
    """Resize ``(F, H, W, 3)`` frames: area averaging to shrink, bicubic to enlarge."""
    _, H, W, _ = frames.shape
    if (H, W) == (height, width):
        return frames
    interpolation = cv2.INTER_AREA if height * width < H * W else cv2.INTER_CUBIC
    return np.stack([cv2.resize(f, (width, height), interpolation=interpolation) for f in frames])


def frame_indices(total: int, count: int | None) -> np.ndarray:
    """``count`` evenly spaced frame indices in ``0 .. total - 1`` (first and last included)."""
    if count is None or count >= total:
        return np.arange(total)
    if count < 1:
        raise ValueError(f"number of frames must be >= 1, got {count}")
    return np.round(np.linspace(0, total - 1, count)).astype(int)


def prepare_frames(frames, size=512, num_frames: int | None = None, *, multiple: int = 8) -> np.ndarray:
    """Crop, resize and subsample a clip for a diffusion model.

    Args:
        frames: uint8 ``(F, H, W, 3)``.
        size: an int ``S``: centre-crop to a square, resize to ``(S, S)``; a pair ``(H', W')``:
            centre-crop to that aspect ratio, resize to it; ``None``: no resize, only crop
            each side down to a multiple of ``multiple``. Sides must be multiples of
            ``multiple`` (8 for Stable Diffusion's VAE).
        num_frames: keep this many evenly spaced frames (``None``: all).
        multiple: required divisor of the output sides.

    Returns:
        uint8 ``(F', H', W', 3)`` with ``F' = min(F, num_frames)``.
    """
    frames = check_frames(frames)
    frames = frames[frame_indices(len(frames), num_frames)]  # (F', H, W, 3)
    _, H, W, _ = frames.shape
    if size is None:
        height, width = H // multiple * multiple, W // multiple * multiple
        if height == 0 or width == 0:
            raise ValueError(f"frames must be at least {multiple}x{multiple} pixels, got {H}x{W}")
        y0, x0 = (H - height) // 2, (W - width) // 2
        return np.ascontiguousarray(frames[:, y0 : y0 + height, x0 : x0 + width])
    height, width = (size, size) if np.isscalar(size) else tuple(size)
    height, width = int(height), int(width)
    if height < multiple or width < multiple or height % multiple or width % multiple:
        raise ValueError(f"size must be a positive multiple of {multiple}, got {height}x{width}")
    frames = _centre_crop(frames, width / height)
    return np.ascontiguousarray(_resize(frames, height, width))


# ---------------------------------------------------------------------------- writing

# The OS's reasons a write fails for lack of room or rights, as ffmpeg also reports them.
WRITE_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS, errno.EACCES, errno.EIO)


def publish(tmp, path) -> None:
    """Rename a finished temporary file onto ``path`` with ordinary permissions.

    ``tempfile.mkstemp`` creates files readable by their owner only (0600); the published file
    gets what a plain ``open(path, "w")`` would give (0666 minus the umask).
    """
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)


def write_reason(error: BaseException) -> tuple[int | None, str]:
    """``(errno, reason)`` of a failed write: the OS's reason ("No space left on device") where
    the error carries or quotes one, else the error's last line (ffmpeg's ``[out#0/mp4 @ 0x...]``
    prefixes removed)."""
    code, reason, text = getattr(error, "errno", None), getattr(error, "strerror", None), str(error)
    if reason:
        return code, reason
    for known in WRITE_ERRNOS:
        if os.strerror(known) in text:
            return known, os.strerror(known)
    text = re.sub(r"^Error writing '.*?':\s*", "", text)  # mediapy's preamble names the temporary file
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return code, re.sub(r"^(\[[^\]]*\]\s*)+", "", lines[-1]) if lines else f"{type(error).__name__}, no reason given"


def _probe_write(path: Path) -> tuple[int, str] | None:
    """Why writing more into the file ``path`` fails, found by appending 1 MiB to it (``None``:
    it does not fail). ffmpeg does not always say why it could not write."""
    try:
        with open(path, "ab") as handle:
            handle.write(bytes(1 << 20))
            handle.flush()
            os.fsync(handle.fileno())
    except OSError as error:
        return error.errno, error.strerror or str(error)
    return None


def write_failure(path, error: BaseException) -> OSError:
    """The one-line OSError ``cannot write <path>: <reason>`` (:func:`write_reason`) of a failed
    write; its ``errno`` is the OS's code where known."""
    code, reason = write_reason(error)
    failure = OSError(f"cannot write {path}: {reason}")
    failure.errno = code
    return failure


def _write_gif(path: Path, frames: np.ndarray, fps: float) -> None:
    images = [Image.fromarray(f) for f in frames]
    duration = max(20, round(1000 / fps))  # ms per frame; browsers clamp faster gifs
    images[0].save(
        path, format="GIF", save_all=True, append_images=images[1:], duration=duration, loop=0
    )


def _write_clip(path: Path, frames: np.ndarray, fps: float) -> None:
    """Encode checked uint8 (F, H, W, 3) frames into ``path`` by its suffix (.gif or .mp4)."""
    if path.suffix.lower() == ".gif":
        _write_gif(path, frames, fps)
        return
    try:
        _mediapy().write_video(path, frames, fps=fps)
    except RuntimeError as error:  # ffmpeg's report of a failed write (a full disk, ...)
        code, reason = write_reason(error)
        if code is None:
            code, reason = _probe_write(path) or (None, reason)
        raise (OSError(code, reason) if code else OSError(reason)) from None


def _check_clip(path: Path, frames, fps) -> np.ndarray:
    if path.suffix.lower() not in WRITE_SUFFIXES:
        raise ValueError(f"cannot write {path.name!r}: expected a path ending in .mp4 or .gif")
    if not (isinstance(fps, (int, float)) and 0 < fps < float("inf")):
        raise ValueError(f"fps must be a finite number > 0, got {fps!r}")
    return check_frames(frames)


def write_atomic(path, write) -> Path:
    """Create the file ``path`` atomically: ``write(tmp)`` fills a temporary file in the same
    folder, which is renamed onto ``path`` once complete.

    Any failure of the write (a full disk, a quota, a read-only folder) is one OSError,
    ``cannot write <path>: <reason>`` (:func:`write_failure`), and leaves neither a partial nor
    a temporary file; an earlier file at ``path`` is kept. Missing parent folders are created.
    Returns ``path``.
    """
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{path.suffix}", dir=path.parent)
        os.close(fd)
        tmp = Path(name)
        write(tmp)
        publish(tmp, path)
    except OSError as error:
        raise write_failure(path, error) from None
    finally:
        if tmp is not None:
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
    return path


def write_video(path, frames, fps: float = 8) -> Path:
    """Write uint8 ``(F, H, W, 3)`` frames to ``path`` (``.mp4`` or ``.gif``), atomically
    (:func:`write_atomic`): a failing write leaves neither a partial file nor a stale temporary
    one. Missing parent folders are created. Returns ``path``.
    """
    path = Path(path)
    frames = _check_clip(path, frames, fps)
    return write_atomic(path, lambda tmp: _write_clip(tmp, frames, fps))


def write_all(outputs: dict, fps: float = 8) -> None:
    """Write every output, all or none.

    Args:
        outputs: ``{path: what}``; ``what`` is uint8 (F, H, W, 3) frames, written as a clip by
            the path's suffix (.mp4 or .gif), or a function ``write(path)`` that writes any
            other file (JSON, tensors).
        fps: frame rate of the clips.

    Each output first goes to a hidden ``.pending`` file next to its target; only when every
    one is written are they renamed into place. On failure the pending files are removed,
    earlier files at the target paths are left as they were, and the error is one OSError
    naming the user's path (``cannot write <path>: <reason>``).
    """
    writers = {}
    for path, what in outputs.items():  # every clip checked before anything is written
        path = Path(path)
        if callable(what):
            writers[path] = what
        else:
            frames = _check_clip(path, what, fps)
            writers[path] = lambda tmp, frames=frames: _write_clip(tmp, frames, fps)
    pending = []
    try:
        for path, write in writers.items():
            tmp = path.with_name(f".{path.stem}.pending-{os.getpid()}{path.suffix}")
            pending.append((tmp, path))
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                write(tmp)
            except OSError as error:  # name the user's path, not the pending file
                raise write_failure(path, error) from None
        for tmp, path in pending:
            try:
                os.replace(tmp, path)
            except OSError as error:
                raise write_failure(path, error) from None
    finally:
        for tmp, _ in pending:
            with contextlib.suppress(OSError):  # e.g. the folder is a file: nothing was written
                tmp.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- side by side


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # scalable when Pillow has FreeType
    except (TypeError, OSError):
        return ImageFont.load_default()


def label_bar(text: str, width: int, height: int) -> np.ndarray:
    """A dark ``uint8 (height, width, 3)`` bar with ``text`` in white, clipped to fit."""
    bar = Image.new("RGB", (width, height), (24, 24, 24))
    draw = ImageDraw.Draw(bar)
    font = _font(max(8, height - 4))
    while text and draw.textlength(text, font=font) > width - 4:
        text = text[:-2] + "…" if len(text) > 1 else ""
    draw.text((2, height // 2), text, fill=(255, 255, 255), font=font, anchor="lm")
    return np.asarray(bar)


def label_height(height: int) -> int:
    """Height of the label bar over clips of ``height`` pixels: 12 to 28 pixels."""
    return int(np.clip(height // 10, 12, 28))


def side_by_side(*clips, labels=None) -> np.ndarray:
    """Concatenate clips along width: ``(F, H, W_1 + ... + W_n, 3)``.

    Every clip is uint8 ``(F, H_i, W_i, 3)`` with the same ``F``; clips whose height differs
    from the first are resized to its height (aspect kept). With ``labels`` (one string per
    clip) a bar of ``label_height(H)`` pixels with the label is stacked on top of each clip,
    so the output height is ``H + bar``.
    """
    if not clips:
        raise ValueError("side_by_side needs at least one clip")
    clips = [check_frames(c, name=f"clip {i}") for i, c in enumerate(clips)]
    F, H = clips[0].shape[:2]
    if any(len(c) != F for c in clips):
        raise ValueError(f"clips must have the same number of frames, got {[len(c) for c in clips]}")
    if labels is not None and len(labels) != len(clips):
        raise ValueError(f"expected one label per clip ({len(clips)}), got {len(labels)}")
    resized = []
    for c in clips:
        h, w = c.shape[1:3]
        resized.append(c if h == H else _resize(c, H, max(1, round(w * H / h))))
    if labels is not None:
        bar_h = label_height(H)
        bars = [label_bar(str(t), c.shape[2], bar_h) for t, c in zip(labels, resized)]  # (bar, W_i, 3)
        resized = [
            np.concatenate([np.broadcast_to(b, (F, *b.shape)), c], axis=1)  # (F, bar + H, W_i, 3)
            for b, c in zip(bars, resized)
        ]
    return np.concatenate(resized, axis=2)  # (F, H', W_total, 3)
