"""A disk cache of what an edit computes from the clip alone: its correspondence and its inversion.

Both depend on the frames, the model and a few settings, never on the target prompt, so a
second prompt on the same clip reuses them and skips stages 1-3 and DDIM inversion::

    cache = Cache()                      # $COVE_CACHE, else ~/.cache/cove
    edit_video(pipe, frames, "a green star", cache=cache)
    edit_video(pipe, frames, "a blue star", cache=cache)   # no feature pass, no inversion

An entry is keyed by a SHA-256 of (the frames' bytes, the model's identity and weights'
fingerprint, its dtype and device type, the scheduler, the frame size, the settings it
depends on, the generator's state). Each file carries a digest of its contents: a truncated or
corrupt entry is detected, deleted and rebuilt. Files are written atomically (temporary file,
then rename), so an interrupted run leaves no partial entry.
"""
from __future__ import annotations

import hashlib
import io
import json
import os
import tempfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from .correspondence import Correspondence

MAGIC = b"cove-cache-1\n"
# Settings each entry depends on (CoveConfig fields); chunk sizes never change a result.
CORRESPONDENCE_SETTINGS = ("correspondence", "feature_t", "feature_layer", "feature_prompt",
                           "feature_ensemble", "window", "k")
INVERSION_SETTINGS = CORRESPONDENCE_SETTINGS + (
    "attention", "merge_ratio", "inversion_steps", "denoise_steps", "strength", "pnp_steps",
    "pnp_resnets", "pnp_attentions", "pnp_resnet_max_t", "p2p_steps")


def default_root() -> Path:
    """``$COVE_CACHE`` if set, else ``~/.cache/cove``."""
    return Path(os.environ.get("COVE_CACHE") or Path.home() / ".cache" / "cove")


def frames_hash(frames: np.ndarray) -> str:
    """SHA-256 of a uint8 ``(F, H, W, 3)`` clip's shape and bytes."""
    digest = hashlib.sha256(repr(frames.shape).encode())
    digest.update(np.ascontiguousarray(frames).tobytes())
    return digest.hexdigest()


def model_identity(pipe) -> dict:
    """What identifies a pipeline's results: its name, classes, dtype, device type, scheduler,
    parameter count and a fingerprint of the first and last tensor of each model."""
    digest, count = hashlib.sha256(), 0
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        params = list(module.parameters())
        count += sum(p.numel() for p in params)
        for p in params[:1] + params[-1:]:  # cove-tiny's VAE has no parameters
            digest.update(p.detach().float().cpu().numpy().tobytes())
    p = next(pipe.unet.parameters())
    return {"name": str(getattr(pipe.config, "_name_or_path", "")), "unet": type(pipe.unet).__name__,
            "vae": type(pipe.vae).__name__, "dtype": str(p.dtype), "device": p.device.type,
            "scheduler": dict(pipe.scheduler.config), "parameters": count, "weights": digest.hexdigest()}


def generator_state(generator) -> str | None:
    return None if generator is None else hashlib.sha256(generator.get_state().numpy().tobytes()).hexdigest()


class Cache:
    """Correspondence and inversion entries under ``root`` (default :func:`default_root`).

    Args:
        root: the cache folder (created on the first write).
        max_entry_bytes: an entry larger than this is not stored (the plug-and-play store of
            Stable Diffusion at 512 px holds gigabytes); it is recomputed instead.
    """

    def __init__(self, root=None, *, max_entry_bytes: int = 2**31):
        self.root = Path(root) if root is not None else default_root()
        self.max_entry_bytes = max_entry_bytes
        self.hits, self.misses = [], []

    def key(self, kind: str, **parts) -> str:
        text = json.dumps({"kind": kind, **parts}, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:32]

    def path(self, kind: str, key: str) -> Path:
        return self.root / kind / f"{key}.pt"

    def load(self, kind: str, key: str):
        """The payload stored under ``key``, or ``None`` (missing; a corrupt entry is deleted)."""
        path = self.path(kind, key)
        try:
            blob = path.read_bytes()
        except OSError:  # missing or unreadable: compute
            return None
        head, digest, body = blob[:len(MAGIC)], blob[len(MAGIC):len(MAGIC) + 64], blob[len(MAGIC) + 64:]
        try:
            if head != MAGIC or digest != hashlib.sha256(body).hexdigest().encode():
                raise ValueError("checksum")
            return torch.load(io.BytesIO(body), weights_only=True)
        except Exception:  # truncated, corrupt or unreadable by this torch: rebuild
            path.unlink(missing_ok=True)
            return None

    def save(self, kind: str, key: str, payload) -> bool:
        """Store ``payload`` (tensors, dicts, tuples, numbers) atomically; ``False`` if too large
        or the folder cannot be written."""
        buffer = io.BytesIO()
        torch.save(payload, buffer)
        body = buffer.getvalue()
        if len(body) > self.max_entry_bytes:
            return False
        path = self.path(kind, key)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=".", suffix=".tmp", dir=path.parent)
        except OSError:  # an unwritable cache costs time, never the edit
            return False
        try:
            with os.fdopen(fd, "wb") as file:
                file.write(MAGIC + hashlib.sha256(body).hexdigest().encode() + body)
            os.replace(tmp, path)
        except OSError:
            return False
        finally:
            Path(tmp).unlink(missing_ok=True)
        return True

    def _parts(self, pipe, frames, config, names) -> dict:
        flat = {**asdict(config), **asdict(config.engine), **asdict(config.extras)}  # one namespace
        settings = {name: flat[name] for name in names}
        return {"frames": frames_hash(frames), "model": model_identity(pipe), "settings": settings}

    def correspondence(self, pipe, frames, config, generator, compute):
        """``compute()`` -> ``(Correspondence, timings)``, or the stored one; on a hit the
        generator is left in the state computing would have left it in."""
        key = self.key("correspondence", seed=generator_state(generator),
                       **self._parts(pipe, frames, config, CORRESPONDENCE_SETTINGS))
        entry = self.load("correspondence", key)
        if entry is not None:
            self.hits.append("correspondence")
            if generator is not None:
                generator.set_state(entry["generator"])
            device = next(pipe.unet.parameters()).device
            corr = Correspondence(entry["index"].to(device), entry["score"].to(device), tuple(entry["grid"]))
            return corr, {"correspondence (cached)": 0.0}
        self.misses.append("correspondence")
        corr, timings = compute()
        self.save("correspondence", key, {
            "index": corr.index.cpu(), "score": corr.score.cpu(), "grid": tuple(corr.grid),
            "generator": generator.get_state() if generator is not None else None})
        return corr, timings

    def inversion(self, pipe, frames, config, source_prompt: str, state, compute):
        """``compute()`` -> the inversion trajectory ``{t: latents}``, or the stored one; the
        features inversion saves for the edit (``state.store``: plug-and-play, prompt-to-prompt)
        are restored with it."""
        corr = state.correspondence
        matches = None if corr is None else hashlib.sha256(corr.index.cpu().numpy().tobytes()).hexdigest()
        key = self.key("inversion", source_prompt=source_prompt, matches=matches,
                       **self._parts(pipe, frames, config, INVERSION_SETTINGS))
        entry = self.load("inversion", key)
        device = next(pipe.unet.parameters()).device
        if entry is not None:
            self.hits.append("inversion")
            state.store.update({tuple(k): _to(v, device) for k, v in entry["store"]})
            return {int(t): x.to(device) for t, x in entry["trajectory"].items()}
        self.misses.append("inversion")
        trajectory = compute()
        self.save("inversion", key, {
            "trajectory": {int(t): x.cpu() for t, x in trajectory.items()},
            "store": [(list(k), _to(v, "cpu")) for k, v in state.store.items()]})
        return trajectory


def _to(value, device):
    """A tensor or a tuple of tensors on ``device``."""
    if isinstance(value, (tuple, list)):
        return tuple(v.to(device) for v in value)
    return value.to(device)


def measure_saving(root, *, model: str = "cove-tiny", prompts=None) -> dict:
    """Seconds of a first edit of the ShapesWorld demo clip (empty cache) and of a second prompt
    on it with and without the cache (cove-tiny's edit settings). ``python -m cove.cache DIR``."""
    import time

    from . import world
    from .eval.bench import machine_info
    from .loading import load_pipeline
    from .pipeline import edit_video
    from .tiny.presets import edit_config, edit_negative_prompt

    pipe = load_pipeline(model)
    clip = world.render(world.demo_scene())
    source = clip.caption
    prompts = prompts or [source.replace("red", "green"), source.replace("red", "yellow")]
    cache, seconds = Cache(root), {}

    def run(name, prompt, cache):
        start = time.perf_counter()
        result = edit_video(pipe, clip.frames, prompt, source_prompt=source, config=edit_config(),
                            negative_prompt=edit_negative_prompt(source), cache=cache,
                            generator=torch.Generator().manual_seed(0))
        seconds[name] = round(time.perf_counter() - start, 2)
        return result

    run("first prompt, empty cache", prompts[0], cache)
    cached = run("second prompt, cache", prompts[1], cache)
    plain = run("second prompt, no cache", prompts[1], None)
    return {"seconds": seconds, "hits": cache.hits, "identical": bool(np.array_equal(cached.frames, plain.frames)),
            "frames": list(clip.frames.shape[:3]), "prompts": prompts, "machine": machine_info()}


if __name__ == "__main__":
    import sys

    from .eval.bench import dumps

    print(dumps(measure_saving(sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="cove-cache-"))))
