"""cove-tiny's measurements on ShapesWorld, each an importable function (the gate,
``python -m cove.tiny.quality``, runs them; notebooks and tests reuse them):

a. ``measure_prompt_following``  text-to-image: colour, shape and background followed
   (judge: ``cove.eval.judge.judge_image``); ``measure_shape_retention``: the shape judged after
   SDEdit of true renders at several strengths.
b. ``measure_reconstruction``    DDIM inversion then reconstruction of 8-frame clips (PSNR).
c. ``measure_edit``              colour edit of a moving object, COVE vs per-frame, against the
   ground-truth edited clip (``cove.eval.scoring``).
d. ``measure_correspondence``    PCK@1 cell of diffusion features vs OpenCV optical flow.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time

import numpy as np
import torch

from .. import metrics, world
from ..eval import judge
from .presets import PROMPT_GUIDANCE, PROMPT_STEPS, edit_config, edit_negative_prompt

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def single_object_prompts(n: int | None = None, seed: int = 0) -> list[str]:
    """Captions "a {colour} {shape} on {background}" of every combination, or n sampled from them.

    Sampling (n < all) is seeded and spreads over the combinations without repeats.
    """
    prompts = [
        _caption(colour, shape, background)
        for colour, shape, background in itertools.product(world.COLOURS, world.SHAPES, world.BACKGROUNDS)
    ]
    if n is None or n >= len(prompts):
        return prompts
    order = np.random.default_rng(seed).permutation(len(prompts))[:n]
    return [prompts[i] for i in sorted(order)]


def _caption(colour: str, shape: str, background: str) -> str:
    article = "an" if colour[0] in "aeiou" else "a"
    return f"{article} {colour} {shape} on {background}"


def _to_uint8(images) -> np.ndarray:
    """Pipeline output in [0, 1] (float np / PIL list) -> uint8 (B, H, W, 3)."""
    if isinstance(images, list):
        return np.stack([np.asarray(image.convert("RGB")) for image in images])
    images = np.asarray(images)
    if images.dtype == np.uint8:
        return images
    return (np.clip(images, 0, 1) * 255).round().astype(np.uint8)


def _mean(values) -> float:
    values = [v for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return float(np.mean(values)) if values else math.nan


# ---------------------------------------------------------------------------------------------
# a. prompt following
# ---------------------------------------------------------------------------------------------


def generate(pipe, prompts: list[str], *, seed: int = 0, steps: int = 25, guidance_scale: float = 7.5,
             batch_size: int = 16) -> np.ndarray:
    """Text-to-image with diffusers' own call, in batches. Returns uint8 (B, H, W, 3)."""
    images = []
    for start in range(0, len(prompts), batch_size):
        batch = prompts[start : start + batch_size]
        generator = torch.Generator("cpu").manual_seed(seed + start)
        output = pipe(batch, num_inference_steps=steps, guidance_scale=guidance_scale,
                      generator=generator, output_type="np")
        images.append(_to_uint8(output.images))
    return np.concatenate(images)


def measure_prompt_following(pipe, n: int | None = 96, seed: int = 0, *, steps: int = PROMPT_STEPS,
                             guidance_scale: float = PROMPT_GUIDANCE, batch_size: int = 16,
                             return_images: bool = False) -> dict:
    """Share of generated images whose colour, shape, background and all three follow the prompt.

    Args:
        pipe: a StableDiffusionPipeline (``cove.load_pipeline("cove-tiny")``).
        n: prompts; ``None`` or >= all combinations uses every colour x shape x background.

    Returns:
        {"colour", "shape", "background", "all": fractions, "n", "seconds", "failures": [...]}
        (+ "images" uint8 (n, H, W, 3) and "prompts" with ``return_images``).
    """
    prompts = single_object_prompts(n, seed)
    start = time.perf_counter()
    images = generate(pipe, prompts, seed=seed, steps=steps, guidance_scale=guidance_scale,
                      batch_size=batch_size)
    seconds = time.perf_counter() - start
    checks = [judge.prompt_followed(image, prompt) for image, prompt in zip(images, prompts)]
    result = {key: float(np.mean([c[key] for c in checks])) for key in ("colour", "shape", "background", "all")}
    result.update(n=len(prompts), steps=steps, guidance_scale=guidance_scale, seconds=round(seconds, 2))
    result["failures"] = [
        {"prompt": p, "judged": _judged(judge.judge_image(image))}
        for p, image, c in zip(prompts, images, checks) if not c["all"]
    ]
    if return_images:
        result.update(images=images, prompts=prompts)
    return result


def _judged(judgement: dict) -> str:
    objects = " and ".join(f"{c} {s}" for c, s in judgement["objects"]) or "nothing"
    return f"{objects} on {judgement['background']}"


def shape_clips(n: int, seed: int = 0, *, size: int = 64, min_area: float = 0.03) -> list:
    """The first ``n`` one-object, one-frame ShapesWorld clips from ``seed`` on whose object covers
    at least ``min_area`` of the frame (so that a judge has a shape to judge)."""
    clips, s = [], seed
    while len(clips) < n:
        clip = world.render(world.random_scene(s, frames=1, size=size, n_objects=1))
        s += 1
        if clip.masks[0, 0].mean() >= min_area:
            clips.append(clip)
    return clips


SHAPE_RETENTION_STRENGTHS = (0.1, 0.2, 0.3, 0.5, 1.0)


def measure_shape_retention(pipe, n: int = 32, seed: int = 0, *,
                            strengths: tuple[float, ...] = SHAPE_RETENTION_STRENGTHS,
                            steps: int = PROMPT_STEPS, guidance_scale: float = PROMPT_GUIDANCE) -> dict:
    """Does the denoiser keep a shape it is handed? SDEdit (Meng et al., ICLR 2022) of true renders.

    Each one-object render is noised to ``strength`` of the schedule and denoised with its own
    caption (diffusers' ``StableDiffusionImg2ImgPipeline`` on the same components); the shape
    judge (``cove.judge.judge_image``) then reads the object's shape. At strength 1 this is
    text-to-image; at small strengths the noisy input still shows the shape, so a model that
    loses it there fails at denoising, not at reading the prompt. No gate: a diagnostic of where
    cove-tiny's blobs come from.

    Returns:
        {"n", "steps", "guidance_scale", "clean": shape judged right on the renders themselves,
         "shape": {strength: fraction right}, "psnr": {strength: dB against the render},
         "seconds"}; strengths are keys as text ("0.5").
    """
    from diffusers import StableDiffusionImg2ImgPipeline

    i2i = StableDiffusionImg2ImgPipeline(**pipe.components)
    i2i.set_progress_bar_config(disable=True)
    clips = shape_clips(n, seed, size=_image_size(pipe))
    renders = np.stack([clip.frames[0] for clip in clips])  # (n, H, W, 3)
    truth = [clip.scene.objects[0].shape for clip in clips]

    def right(images) -> float:
        judged = [judge.judge_image(image)["objects"] for image in images]
        return float(np.mean([bool(o) and o[0][1] == shape for o, shape in zip(judged, truth)]))

    x = torch.from_numpy(renders).permute(0, 3, 1, 2).float() / 127.5 - 1  # (n, 3, H, W)
    x = x.to(pipe.device)
    start = time.perf_counter()
    result: dict = {"n": n, "steps": steps, "guidance_scale": guidance_scale, "clean": right(renders),
                    "shape": {}, "psnr": {}}
    for strength in strengths:
        out = i2i([clip.caption for clip in clips], image=x, strength=strength, num_inference_steps=steps,
                  guidance_scale=guidance_scale, generator=torch.Generator("cpu").manual_seed(seed),
                  output_type="np").images
        out = _to_uint8(out)
        result["shape"][f"{strength:g}"] = right(out)
        result["psnr"][f"{strength:g}"] = metrics.psnr(renders, out)
    result["seconds"] = round(time.perf_counter() - start, 2)
    return result


# ---------------------------------------------------------------------------------------------
# b. inversion + reconstruction
# ---------------------------------------------------------------------------------------------


def _clips(n_clips: int, seed: int, frames: int, size: int, n_objects: int | None = None):
    return [world.render(world.random_scene(seed + c, frames=frames, size=size, n_objects=n_objects))
            for c in range(n_clips)]


def _image_size(pipe) -> int:
    from ..sd import frame_size

    return int(frame_size(pipe))


def measure_reconstruction(pipe, n_clips: int = 3, seed: int = 0, *, frames: int = 8, config=None,
                           prompt: str | None = None) -> dict:
    """PSNR of DDIM inversion then reconstruction (``cove.pipeline.reconstruct``) of clips.

    Args:
        config: its ``inversion_steps`` are walked both ways (default CoveConfig: 100).
        prompt: the text condition of both passes; ``None`` = each clip's caption.

    Returns:
        {"psnr": mean dB over clips, "per_clip": [dB], "seconds": [s], "steps"}.
    """
    from ..config import CoveConfig
    from ..pipeline import reconstruct

    config = config or CoveConfig()
    size = _image_size(pipe)
    per_clip, seconds = [], []
    for clip in _clips(n_clips, seed, frames, size):
        start = time.perf_counter()
        out = reconstruct(pipe, clip.frames, prompt=clip.caption if prompt is None else prompt, config=config)
        seconds.append(round(time.perf_counter() - start, 2))
        per_clip.append(metrics.psnr(clip.frames, out))
    return {"psnr": _mean(per_clip), "per_clip": per_clip, "seconds": seconds, "steps": config.inversion_steps}


# ---------------------------------------------------------------------------------------------
# c. colour edit of a moving object
# ---------------------------------------------------------------------------------------------


def colour_edit_task(clip, seed: int = 0, *, index: int | None = None) -> dict:
    """A colour edit of one object of ``clip``: phrases, prompts and the ground-truth result.

    The object (``index``, default: the one that moves most) gets a random other colour that
    keeps the objects distinct.

    Returns:
        {"source", "target" (phrases), "source_prompt", "target_prompt", "target_colour",
         "truth" uint8 (F, H, W, 3), "mask" bool (F, H, W) of the object in the edited clip,
         "truth_clip" the ground-truth edited ``Clip``}.
    """
    scene = clip.scene
    o = int(np.argmax([_travel(obj) for obj in scene.objects])) if index is None else index
    obj = scene.objects[o]
    taken = {(other.colour, other.shape) for other in scene.objects}
    choices = [c for c in world.COLOURS if (c, obj.shape) not in taken]
    new = choices[int(np.random.default_rng(seed).integers(len(choices)))]
    source, target = f"{obj.colour} {obj.shape}", f"{new} {obj.shape}"
    truth = world.render(world.edit(scene, source, target))
    return {
        "source": source,
        "target": target,
        "source_prompt": clip.caption,
        "target_prompt": truth.caption,
        "target_colour": new,
        "truth": truth.frames,
        "mask": truth.masks[:, o],
        "truth_clip": truth,
    }


def _travel(obj) -> float:
    """Pixels an object's centre moves between the first and last frame."""
    (x0, y0), (x1, y1) = obj.pose(0.0)[:2], obj.pose(1.0)[:2]
    return float(np.hypot(x1 - x0, y1 - y0))


def moving_clips(n_clips: int, seed: int = 0, *, frames: int = 8, size: int = 64, min_speed: float = 1.0,
                 max_tries: int = 1000):
    """The first ``n_clips`` ShapesWorld clips from ``seed`` on with an object moving at least
    ``min_speed`` pixels per frame on average (at 64 x 64; scaled with size / 64)."""
    clips = []
    for s in range(seed, seed + max_tries):
        scene = world.random_scene(s, frames=frames, size=size)
        if max(_travel(o) for o in scene.objects) >= min_speed * (frames - 1) * size / 64:
            clips.append(world.render(scene))
            if len(clips) == n_clips:
                return clips
    raise ValueError(f"found {len(clips)} of {n_clips} clips moving >= {min_speed} px/frame in {max_tries} seeds")


def measure_edit(pipe, n_clips: int = 3, seed: int = 0, *, frames: int = 8, config=None,
                 attentions=("cove", "per-frame"), return_frames: bool = False) -> dict:
    """Colour edit of a moving object with ``cove.edit_video``, scored against the ground truth.

    For each attention mode: mean over clips of ``cove.eval.scoring.score_edit``'s scores
    (psnr, background_psnr, object_psnr, attribute_accuracy, and warp_error along the source
    clip's motion: flicker, [0, 255]); the ground-truth edit's own warp error is reported as
    the floor.
    """
    from ..eval.scoring import score_edit

    config = config or edit_config()
    size = _image_size(pipe)
    clips = moving_clips(n_clips, seed, frames=frames, size=size)
    tasks = [colour_edit_task(clip, seed + c) for c, clip in enumerate(clips)]
    result: dict = {"edits": [f"{t['source']} -> {t['target']}" for t in tasks],
                    "negative_prompt": "the source prompt", "config": config.to_dict()}
    result["truth_warp_error"] = _mean([metrics.warp_error(t["truth"], clip) for t, clip in zip(tasks, clips)])
    outputs = {}
    for attention in attentions:
        rows, outputs[attention] = [], []
        variant = dataclasses.replace(config, attention=attention)
        for clip, task in zip(clips, tasks):
            edit, row = score_edit(pipe, clip.frames, task["target_prompt"], source_prompt=task["source_prompt"],
                                   negative_prompt=edit_negative_prompt(task["source_prompt"]), config=variant,
                                   seed=seed, motion=clip, truth=task["truth_clip"], target_phrase=task["target"])
            row["seconds"] = round(edit.timings["total"], 2)
            rows.append(row)
            outputs[attention].append(edit.frames)
        result[attention] = {key: _mean([r[key] for r in rows]) for key in rows[0]}
        result[attention]["per_clip"] = rows
    if return_frames:
        result["frames"] = outputs
        result["truth"] = [t["truth"] for t in tasks]
    return result


# ---------------------------------------------------------------------------------------------
# d. correspondence accuracy
# ---------------------------------------------------------------------------------------------


def measure_correspondence(pipe, n_clips: int = 3, seed: int = 0, *, frames: int = 8, config=None,
                           photo: str | None = "chelsea", threshold: float = 1.0) -> dict:
    """PCK@``threshold`` cells of diffusion-feature vs optical-flow correspondence, same grid.

    Returns:
        {"diffusion": mean PCK, "flow": mean PCK, "per_clip": [{"clip", "diffusion", "flow",
         "diffusion_by_offset", "flow_by_offset"}], "grid": (H, W), "threshold"}.
    """
    from ..config import CoveConfig
    from ..correspondence import correspond, flow_correspondence
    from ..features import extract_features

    config = config or CoveConfig()
    size = _image_size(pipe)
    named = [(f"shapes/{seed + c}", clip) for c, clip in enumerate(_clips(n_clips, seed, frames, size))]
    if photo:
        named.append((f"photo/{photo}", world.photo_clip(photo, frames=frames, size=size, seed=seed)))
    rows, grid = [], None
    for name, clip in named:
        features = extract_features(pipe, clip.frames, t=config.feature_t, layer=config.feature_layer,
                                    prompt=config.feature_prompt, ensemble=config.feature_ensemble,
                                    generator=torch.Generator("cpu").manual_seed(seed))  # (F, C, H, W)
        grid = tuple(features.shape[-2:])
        diffusion = correspond(features, window=config.window, k=config.k)
        flow = flow_correspondence(clip.frames, grid=grid)
        positions, visible = clip.ground_truth(grid=grid)  # (F, N, F, 2), (F, N, F)
        rows.append({
            "clip": name,
            "diffusion": metrics.pck(diffusion, positions, visible, threshold),
            "flow": metrics.pck(flow, positions, visible, threshold),
            "diffusion_by_offset": metrics.pck_by_offset(diffusion, positions, visible, threshold),
            "flow_by_offset": metrics.pck_by_offset(flow, positions, visible, threshold),
        })
    shapes = [r for r in rows if r["clip"].startswith("shapes/")]
    return {
        "diffusion": _mean([r["diffusion"] for r in shapes]),
        "flow": _mean([r["flow"] for r in shapes]),
        "photo_diffusion": _mean([r["diffusion"] for r in rows if r["clip"].startswith("photo/")]),
        "photo_flow": _mean([r["flow"] for r in rows if r["clip"].startswith("photo/")]),
        "per_clip": rows,
        "grid": list(grid) if grid else None,
        "threshold": threshold,
    }
