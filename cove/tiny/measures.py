"""cove-tiny's measurements on ShapesWorld, each an importable function (the gate,
``python -m cove.tiny.quality``, runs them; notebooks and tests reuse them):

a. ``measure_prompt_following``  text-to-image: colour, shape and background followed
   (judge: ``cove.eval.judge.judge_image``); ``measure_shape_retention``: the shape judged after
   SDEdit of true renders at several strengths.
b. ``measure_reconstruction``    DDIM inversion then reconstruction of 8-frame clips (PSNR).
c. ``measure_edits``             the gate's edits (``edit_tasks``: background swaps and recolours,
   camera pans included), judged frame by frame and scored against the true edits
   (``score_task``), per attention mode, including COVE on the true correspondence
   (``true_correspondence``).
d. ``measure_correspondence``    PCK within 4 px of diffusion features vs OpenCV optical flow.
e. probes: ``measure_feature_pck`` (per decoder block and t), ``measure_attention_entropy``,
   ``measure_cga_change`` (how far CGA can move the tokens spatial-temporal attention gives).
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import time
from contextlib import contextmanager

import numpy as np
import torch

from .. import metrics, world
from ..eval import judge
from .presets import PROMPT_GUIDANCE, PROMPT_STEPS, edit_config, edit_negative, edit_negative_prompt

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


# ---------------------------------------------------------------------------------------------
# d. correspondence accuracy
# ---------------------------------------------------------------------------------------------


def measure_correspondence(pipe, n_clips: int = 3, seed: int = 0, *, frames: int = 8, config=None,
                           photo: str | None = "chelsea", pixels: float = 4.0) -> dict:
    """PCK within ``pixels`` of the frame of diffusion-feature vs optical-flow correspondence,
    on the grid of the config's feature layer (features at its ``feature_t``).

    Returns:
        {"diffusion": mean PCK, "flow": mean PCK, "per_clip": [{"clip", "diffusion", "flow",
         "diffusion_by_offset", "flow_by_offset"}], "grid": (H, W), "pixels", "threshold" (in
         cells of the grid), "layer", "t"}.
    """
    from ..config import CoveConfig
    from ..correspondence import correspond, flow_correspondence
    from ..features import default_feature_layer, extract_features

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
        threshold = pixels * grid[1] / size
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
        "pixels": pixels,
        "threshold": pixels * grid[1] / size if grid else None,
        "layer": config.feature_layer or default_feature_layer(pipe.unet),
        "t": config.feature_t,
    }


# ---------------------------------------------------------------------------------------------
# e. the gate's edits: background swaps and recolours, judged frame by frame
# ---------------------------------------------------------------------------------------------

EDIT_KINDS = ("background", "colour")
PAN_SPEED = (1.0, 2.5)  # pixels per frame at 64 x 64 of the clips with a camera pan


def true_correspondence(clip, grid: tuple[int, int], k: int = 1):
    """The exact correspondence of a ShapesWorld clip on a ``(H, W)`` token grid: COVE with
    perfect matches.

    For every token ``n`` of frame ``i`` and every frame ``j``, the ``k`` cells nearest to
    where the point under that token's centre is in frame ``j`` (``Clip.ground_truth``), nearest
    first; a point hidden in frame ``j`` (behind an object, or out of the frame) keeps its
    predicted position, clamped inside the grid, with score 0. Pass it to
    ``cove.edit_video(..., correspondence=...)``: the flicker left is what the model's
    attention leaves, not the correspondence.

    Returns:
        ``cove.Correspondence`` with index ``(F, N, F, k)`` (``index[i, n, i, 0] = n``) and
        score ``(F, N, F, k)``: 1 where the point is visible in frame ``j``, else 0.
    """
    from ..correspondence import Correspondence, index_dtype

    H, W = grid
    if k < 1 or k > H * W:
        raise ValueError(f"k must lie in 1..{H * W}, got {k}")
    positions, visible = clip.ground_truth(grid=(H, W))  # (F, N, F, 2) cell coordinates, (F, N, F)
    positions = np.clip(positions, 0, [W - 1, H - 1])
    if k == 1:
        nearest = np.rint(positions).astype(np.int64)
        index = (nearest[..., 1] * W + nearest[..., 0])[..., None]  # (F, N, F, 1)
    else:  # the k nearest cells of each position, ties by the lower index
        r = int(np.ceil(np.sqrt(k))) + 1  # candidates in a (2r+1)^2 neighbourhood
        offsets = np.stack(np.meshgrid(np.arange(-r, r + 1), np.arange(-r, r + 1)), -1).reshape(-1, 2)
        base = np.rint(positions).astype(np.int64)[..., None, :] + offsets  # (F, N, F, M, 2)
        base = np.clip(base, 0, [W - 1, H - 1])
        flat = base[..., 1] * W + base[..., 0]  # (F, N, F, M)
        distance = np.linalg.norm(base - positions[..., None, :], axis=-1) + flat * 1e-9
        distance = np.where(_repeated(flat), np.inf, distance)  # a clamped cell counts once
        order = np.argsort(distance, axis=-1, kind="stable")[..., :k]
        index = np.take_along_axis(flat, order, -1)  # (F, N, F, k)
    F, N = positions.shape[:2]
    own = np.arange(F)
    index[own, :, own, :] = np.arange(N)[:, None]  # itself in its own frame
    score = np.repeat(visible[..., None].astype(np.float32), k, -1)
    score[own, :, own, :] = 1.0
    return Correspondence(index=torch.from_numpy(index).to(index_dtype(N)), score=torch.from_numpy(score),
                          grid=(H, W))


def _repeated(flat: np.ndarray) -> np.ndarray:
    """True where a value repeats an earlier one along the last axis."""
    order = np.argsort(flat, axis=-1, kind="stable")
    ranked = np.take_along_axis(flat, order, -1)
    dup = np.zeros(flat.shape, bool)
    dup_sorted = np.concatenate([np.zeros(flat.shape[:-1] + (1,), bool), ranked[..., 1:] == ranked[..., :-1]], -1)
    np.put_along_axis(dup, order, dup_sorted, -1)
    return dup


def edit_tasks(n: int, seed: int = 0, *, frames: int = 8, size: int = 64) -> list[dict]:
    """``n`` edits of ShapesWorld clips: background swaps and recolours in turn, every other
    pair of them under a camera pan (``PAN_SPEED`` pixels per frame, random direction).

    Clips come from seeds ``seed, seed + 1, ...``; the gate uses seed 0, the validation of
    ``cove.tiny.presets.edit_config`` seed 1000. A background swap picks another background;
    a recolour picks the object that moves most and a colour no object of the scene has, so
    the judge reading that colour means the edit landed.

    Returns:
        [{"kind": "background" | "colour", "source", "target" (phrases), "source_prompt",
          "target_prompt", "clip" (the source ``Clip``), "truth" (the true edited ``Clip``),
          "object": the edited object's index or None, "pan": pixels per frame}].
    """
    tasks = []
    for e in range(n):
        rng = np.random.default_rng(seed * 7919 + e)
        kind = EDIT_KINDS[e % 2]
        panned = (e // 2) % 2 == 0
        speed = rng.uniform(*PAN_SPEED) * size / 64 if panned else 0.0
        angle = rng.uniform(0, 2 * np.pi)
        pan = (speed * np.cos(angle), speed * np.sin(angle))
        scene = world.random_scene(seed * 1000 + e, frames=frames, size=size, pan=pan)
        if kind == "background":
            choices = [b for b in world.BACKGROUNDS if b != scene.background]
            source, target = f"on {scene.background}", f"on {choices[rng.integers(len(choices))]}"
            o = None
        else:
            o = int(np.argmax([_travel(obj) for obj in scene.objects]))
            obj = scene.objects[o]
            used = {other.colour for other in scene.objects}
            choices = [c for c in world.COLOURS if c not in used]
            source, target = obj.phrase, f"{choices[rng.integers(len(choices))]} {obj.shape}"
        truth = world.render(world.edit(scene, source, target))
        tasks.append({"kind": kind, "source": source, "target": target, "source_prompt": scene.caption,
                      "target_prompt": truth.caption, "clip": world.render(scene), "truth": truth,
                      "object": o, "pan": float(np.hypot(*pan))})
    return tasks


def landed_frames(frames: np.ndarray, task: dict) -> np.ndarray:
    """Per frame, does the judge (``cove.eval.judge.judge_image``) read the edit's target? bool (F,).

    A background swap lands where the judged background is the target's; a recolour where
    some judged object has the target colour (a colour no object of the source clip has)."""
    verdicts = []
    for frame in frames:
        judged = judge.judge_image(frame)
        if task["kind"] == "background":
            verdicts.append(judged["background"] == task["target"].split()[-1])
        else:
            colour = task["target"].split()[0]
            verdicts.append(any(c == colour for c, _ in judged["objects"]))
    return np.array(verdicts, bool)


EDIT_MODES = ("per-frame", "spatiotemporal", "cove", "cove-true")


def score_task(frames: np.ndarray, task: dict) -> dict:
    """The gate's figures of one edited clip (uint8 (F, H, W, 3)) against its task.

    Returns:
        {"landed": share of frames whose target the judge reads, "warp_error" (flicker along
         the true motion), "truth_warp_error" (the true edit's), "warp_to_truth" (their ratio),
         "static", "static_kind" ("fixed" to the image, "faint" or None), "static_where" (the
         regions judged static: "background", "objects"), "still_to_motion"
         and "change_to_truth" (``cove.eval.metrics.motion_following``'s "static", "kind",
         "ratio" and "change"), "psnr" against the true edit}.
    """
    clip, truth = task["clip"], task["truth"]
    warp = metrics.warp_error(frames, clip)
    truth_warp = metrics.warp_error(truth.frames, clip)
    following = metrics.motion_following(frames, clip, truth.frames)
    return {"landed": float(landed_frames(frames, task).mean()), "warp_error": warp,
            "truth_warp_error": truth_warp, "warp_to_truth": warp / truth_warp if truth_warp > 0 else math.nan,
            "static": following["static"], "static_kind": following["kind"],
            "static_where": [name for name, region in following["regions"].items() if region["static"]],
            "still_to_motion": following["ratio"], "change_to_truth": following["change"],
            "psnr": metrics.psnr(frames, truth.frames)}


LANDED = 0.9  # an edit lands where the judge reads its target on at least this share of its frames


def summarise_edits(rows: list[dict], landed: float = LANDED) -> dict:
    """Figures over edits (``score_task`` rows): "landed_edits" (share of edits landing on at
    least ``landed`` of their frames), "landed" (mean share of frames), "warp_error" and "psnr"
    (means), "warp_to_truth" (median) and "worst_warp_to_truth", "static_edits" (count) and
    of them "fixed_edits" and "faint_edits" (``score_task``'s "static_kind")."""
    ratios = [r["warp_to_truth"] for r in rows]
    return {"landed_edits": float(np.mean([r["landed"] >= landed for r in rows])),
            "landed": _mean([r["landed"] for r in rows]),
            "warp_error": _mean([r["warp_error"] for r in rows]),
            "warp_to_truth": float(np.nanmedian(ratios)) if rows else math.nan,
            "worst_warp_to_truth": float(np.nanmax(ratios)) if rows else math.nan,
            "static_edits": int(sum(bool(r["static"]) for r in rows)),
            "fixed_edits": int(sum(r.get("static_kind") == "fixed" for r in rows)),
            "faint_edits": int(sum(r.get("static_kind") == "faint" for r in rows)),
            "psnr": _mean([r["psnr"] for r in rows]),
            "worst_landed": float(min(r["landed"] for r in rows)) if rows else math.nan}


def static_count(figures: dict) -> str:
    """``summarise_edits``' static edits as text, "2 (1 fixed, 1 faint)"; the count alone where
    it is 0 or the kinds were not recorded."""
    n = figures["static_edits"]
    kinds = [f"{figures[f'{kind}_edits']} {kind}" for kind in ("fixed", "faint") if figures.get(f"{kind}_edits")]
    return f"{n} ({', '.join(kinds)})" if n and kinds else f"{n}"


def measure_edits(pipe, tasks: list[dict], *, config=None, modes=("per-frame", "spatiotemporal", "cove"),
                  seed: int = 0, negative: str | None = None, log=None, return_frames: bool = False) -> dict:
    """Edit every task with ``cove.edit_video`` in each mode and score it (``score_task``).

    Modes: the attentions ``"per-frame"``, ``"spatiotemporal"``, ``"cove"``, and ``"cove-true"``
    (COVE on the clip's exact correspondence, ``true_correspondence`` with the config's K: the
    ceiling of what correspondence can give this model). ``negative``: the negative prompt's
    policy (``presets.NEGATIVES``: "empty" or "source", the task's source prompt; ``None``:
    ``presets.edit_negative()``).

    Returns:
        {"edits": ["kind: source -> target"], "config", "negative", "static_rule" (the name of
         ``motion_following``'s rule, ``metrics.MOTION_FOLLOWING_RULE``), mode: {``summarise_edits``,
         "per_edit": [rows], "seconds": mean per edit}, "truth_warp_error": mean,
         "cove_to_spatiotemporal" / "spatiotemporal_to_per_frame" / "true_to_per_frame":
         ratios of mean warp errors where both modes ran} (+ "frames": {mode: [uint8 clips]}).
    """
    from ..features import feature_grid
    from ..pipeline import edit_video

    config = config or edit_config()
    negative = edit_negative() if negative is None else negative
    edit_negative_prompt("", negative)  # a policy it does not know fails before any work
    result: dict = {"edits": [f"{t['kind']}: {t['source']} -> {t['target']}" for t in tasks],
                    "pans": [t["pan"] for t in tasks], "negative": negative,
                    "config": config.to_dict(), "static_rule": metrics.MOTION_FOLLOWING_RULE}
    frames_out = {}
    for mode in modes:
        if mode not in EDIT_MODES:
            raise ValueError(f"mode: expected one of {', '.join(EDIT_MODES)}, got {mode!r}")
        variant = dataclasses.replace(config, attention="cove" if mode == "cove-true" else mode)
        rows, seconds, frames_out[mode] = [], [], []
        for task in tasks:
            clip = task["clip"]
            corr = None
            if mode == "cove-true":
                grid = feature_grid(pipe, clip.frames.shape[1:3], config.feature_layer)  # diffusion's grid
                corr = true_correspondence(clip, grid, k=config.k)
            edit = edit_video(pipe, clip.frames, task["target_prompt"], source_prompt=task["source_prompt"],
                              negative_prompt=edit_negative_prompt(task["source_prompt"], negative), config=variant,
                              generator=torch.Generator("cpu").manual_seed(seed), correspondence=corr)
            seconds.append(edit.timings["total"])
            rows.append(score_task(edit.frames, task))
            frames_out[mode].append(edit.frames)
            if log:
                log(f"[edits] {mode} {result['edits'][len(rows) - 1]}: landed {rows[-1]['landed']:.2f}, "
                    f"warp {rows[-1]['warp_error']:.2f} ({rows[-1]['warp_to_truth']:.2f}x truth)"
                    f"{', STATIC (' + rows[-1]['static_kind'] + ')' if rows[-1]['static'] else ''} ({seconds[-1]:.0f} s)")
        result[mode] = {**summarise_edits(rows), "seconds": _mean(seconds), "per_edit": rows}
    result["truth_warp_error"] = _mean([metrics.warp_error(t["truth"].frames, t["clip"]) for t in tasks])
    for name, a, b in (("cove_to_spatiotemporal", "cove", "spatiotemporal"),
                       ("spatiotemporal_to_per_frame", "spatiotemporal", "per-frame"),
                       ("cove_to_per_frame", "cove", "per-frame"),
                       ("true_to_per_frame", "cove-true", "per-frame")):
        if a in result and b in result:
            result[name] = result[a]["warp_error"] / result[b]["warp_error"]
    if return_frames:
        result["frames"] = frames_out
    return result


# ---------------------------------------------------------------------------------------------
# f. probes: where the model's features and attention stand
# ---------------------------------------------------------------------------------------------


def decoder_blocks(unet) -> list[str]:
    """The UNet's decoder blocks, coarsest first: ``["up_blocks.0", ...]``."""
    return [f"up_blocks.{b}" for b in range(len(unet.up_blocks))]


def measure_feature_pck(pipe, n_clips: int = 3, seed: int = 0, *, frames: int = 8,
                        layers: list[str] | None = None, ts=(50, 261, 500), pixels: float = 4.0,
                        window: int = 9, k: int = 3) -> dict:
    """PCK within ``pixels`` of the frame of diffusion-feature correspondence, per decoder block
    and timestep: where the model's features carry correspondence.

    Each block's output (``cove.features.extract_features(layer=...)``) is matched with
    ``cove.correspondence.correspond`` on its own grid (window fitted to it) and scored against
    the clips' true motion; ``pixels`` is converted to cells of that grid, so blocks of
    different resolutions are judged by the same distance in the frame.

    Returns:
        {"pck": {layer: {t: PCK}}, "grid": {layer: [H, W]}, "pixels", "best": [layer, t, PCK]}
        (t as text keys).
    """
    from ..correspondence import correspond
    from ..features import extract_features
    from ..window import fit_window

    size = _image_size(pipe)
    layers = layers or decoder_blocks(pipe.unet)
    clips = _clips(n_clips, seed, frames, size)
    table: dict = {layer: {} for layer in layers}
    grids: dict = {}
    for layer in layers:
        for t in ts:
            scores = []
            for clip in clips:
                features = extract_features(pipe, clip.frames, t=t, layer=layer,
                                            generator=torch.Generator("cpu").manual_seed(seed))  # (F, C, H, W)
                grid = tuple(features.shape[-2:])
                corr = correspond(features, window=fit_window(window, grid), k=k)
                positions, visible = clip.ground_truth(grid=grid)
                scores.append(metrics.pck(corr, positions, visible, pixels * grid[1] / size))
            grids[layer] = list(grid)
            table[layer][str(t)] = _mean(scores)
    best = max(((layer, int(t), v) for layer, row in table.items() for t, v in row.items()),
               key=lambda item: item[2])
    return {"pck": table, "grid": grids, "pixels": pixels, "best": list(best)}


def _noised(pipe, clip, place: int, t: int, seed: int):
    """The clip's frames noised to ``t`` (noise seeded by ``seed`` and the clip's ``place``, each
    frame its own) and its caption's embedding, one per frame: ``(noisy (F, c, h, w), text)``."""
    from ..sd import encode_frames, encode_text

    latents = encode_frames(pipe, clip.frames)  # (F, c, h, w)
    noise = torch.randn(latents.shape, generator=torch.Generator("cpu").manual_seed(seed + place))
    noisy = pipe.scheduler.add_noise(latents, noise.to(latents), torch.tensor([t]))
    return noisy, encode_text(pipe, [clip.caption]).expand(len(latents), -1, -1)


@contextmanager
def _forward_hooks(modules, hook):
    """``hook`` as a forward hook on each of ``modules`` while the block runs."""
    handles = [m.register_forward_hook(hook) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _self_attention_inputs(pipe, clips, t: int, seed: int):
    """For each clip: ``(clip, [(attn, hidden)])``, the input ``hidden`` ``(F, N, C)`` of every
    self-attention module ``attn`` (``attn1``) in one UNet call on the clip's frames noised to
    ``t`` (the clip's caption as the text; noise seeded by ``seed`` and the clip's place), read
    by forward pre-hooks that are removed when the iteration ends. Iterate under
    ``torch.no_grad()``."""
    unet = pipe.unet
    modules = {name: m for name, m in unet.named_modules() if name.endswith("attn1")}
    captured: list = []

    def pre(module, args, kwargs):
        captured.append((module, (args[0] if args else kwargs["hidden_states"]).detach()))

    handles = [m.register_forward_pre_hook(pre, with_kwargs=True) for m in modules.values()]
    try:
        for c, clip in enumerate(clips):
            noisy, text = _noised(pipe, clip, c, t, seed)
            captured.clear()
            unet(noisy, t, text)
            yield clip, list(captured)
    finally:
        for handle in handles:
            handle.remove()


def measure_attention_entropy(pipe, n_clips: int = 2, seed: int = 0, *, frames: int = 4, ts=(261, 500)) -> dict:
    """How sharply the model's self-attention looks: entropy of the attention weights over
    the keys, divided by log(keys) (1 = uniform, 0 = one key), per attention grid and t.

    One UNet call per t on the clips' frames noised to t (the clips' captions as the text);
    forward pre-hooks on every self-attention module (``attn1``) read its input, and the
    weights ``softmax(q k^T * scale)`` per head are recomputed from the module's own ``to_q``,
    ``to_k``, ``heads`` and ``scale``. Averaged over heads, queries, frames and the modules of
    a grid.

    Returns:
        {"entropy": {t: {"HxW": normalised entropy}}, "heads": {"HxW": [heads, head dim]}}.
    """
    clips = _clips(n_clips, seed, frames, _image_size(pipe))
    result: dict = {"entropy": {}, "heads": {}}
    with torch.no_grad():
        for t in ts:
            sums: dict = {}
            for _, inputs in _self_attention_inputs(pipe, clips, t, seed):
                for attn, hidden in inputs:  # (F, N, C)
                    n = hidden.shape[1]
                    side = int(round(math.sqrt(n)))
                    q, k = attn.to_q(hidden), attn.to_k(hidden)  # (F, N, C)
                    d = q.shape[-1] // attn.heads
                    q = q.view(len(q), n, attn.heads, d).transpose(1, 2)  # (F, h, N, d)
                    k = k.view(len(k), n, attn.heads, d).transpose(1, 2)
                    probs = (q @ k.transpose(-1, -2) * attn.scale).softmax(-1)  # (F, h, N, N)
                    entropy = -(probs * probs.clamp_min(1e-30).log()).sum(-1) / math.log(n)
                    key = f"{side}x{side}"
                    total, count = sums.get(key, (0.0, 0))
                    sums[key] = (total + float(entropy.mean()), count + 1)
                    result["heads"][key] = [attn.heads, d]
            result["entropy"][str(t)] = {key: total / count for key, (total, count) in sorted(sums.items())}
    return result


def measure_cga_change(pipe, n_clips: int = 2, seed: int = 0, *, frames: int = 4, ts=(50, 261, 500),
                       k: int = 3) -> dict:
    """How much correspondence-guided attention can change this model's tokens: the ceiling
    of what COVE adds over spatial-temporal attention, per attention grid and t.

    One UNet call per t on the clips' frames noised to t (their captions as the text); forward
    pre-hooks on every self-attention module (``attn1``) read its input. From the module's own
    ``to_q``, ``to_k``, ``to_v`` and ``heads``: the spatial-temporal attention output ``x``
    ``(F, N, C)``, then CGA on it along the clip's true correspondence on that grid
    (``true_correspondence``, ``k`` cells a frame): ``y = guided_attention(x, x, x, index)``.

    Returns:
        {"change": {t: {"HxW": mean over tokens of |y - x| / |x|}},
        "spread": {t: {"HxW": mean over tokens of |x - mean_n x| / |x|}}, "k"}: ``change`` near 0
        means CGA leaves the tokens as they are; ``spread`` near 0 means spatial-temporal
        attention already gives every token of a frame nearly the same output (near-uniform
        attention averages the whole clip), so no regrouping of those outputs can move them.
    """
    from ..attention import guided_attention
    from ..processors import spatiotemporal_attention

    def ratio(a, b):  # (F, N, C) each: mean over tokens of |a| / |b|
        return float((a.norm(dim=-1) / b.norm(dim=-1).clamp_min(1e-12)).mean())

    clips = _clips(n_clips, seed, frames, _image_size(pipe))
    result: dict = {"change": {}, "spread": {}, "k": k}
    with torch.no_grad():
        for t in ts:
            sums: dict = {}
            for clip, inputs in _self_attention_inputs(pipe, clips, t, seed):
                index_of: dict = {}
                for attn, hidden in inputs:  # (F, N, C)
                    f, n, _ = hidden.shape
                    side = int(round(math.sqrt(n)))
                    if side not in index_of:
                        index_of[side] = true_correspondence(clip, (side, side), k).index.to(hidden.device)
                    q, key, v = attn.to_q(hidden), attn.to_k(hidden), attn.to_v(hidden)  # (F, N, C)
                    d = q.shape[-1] // attn.heads
                    q, key, v = (x.view(f, n, attn.heads, d).transpose(1, 2) for x in (q, key, v))
                    x = spatiotemporal_attention(q, key, v, f).transpose(1, 2).reshape(f, n, -1)  # (F, N, C)
                    y = guided_attention(x, x, x, index_of[side], attn.heads)  # (F, N, C)
                    grid = f"{side}x{side}"
                    change, spread, count = sums.get(grid, (0.0, 0.0, 0))
                    sums[grid] = (change + ratio(y - x, x), spread + ratio(x - x.mean(1, keepdim=True), x),
                                  count + 1)
            result["change"][str(t)] = {g: a / n for g, (a, _, n) in sorted(sums.items())}
            result["spread"][str(t)] = {g: b / n for g, (_, b, n) in sorted(sums.items())}
    return result


ANCHOR_T = 50  # the probes' anchored clip gain: each clip's first frame at this t (``measure_clip_gain``)


def measure_clip_gain(pipe, n_clips: int = 4, seed: int = 0, *, frames: int = 4, ts=(261, 500),
                      anchor_t: int | None = None) -> dict:
    """Whether the model uses the other frames of a clip: its training loss on clips predicted
    frame by frame against under spatial-temporal attention, per t.

    Each frame of each clip is noised to ``t`` with its own noise (seeded by ``seed``, the clip
    and the frame), so another frame holds the same content under different noise; the loss is
    the mean squared error of the v-prediction (the training target) with the clips' captions.
    With ``anchor_t``, each clip's first frame is noised to ``anchor_t`` instead (a far less
    noisy frame, as ``train --clip-t anchor`` trains on) and the loss counts the other frames
    only: how much the model gains where another frame shows the content almost clean.

    Returns:
        {"per_frame": {t: loss}, "spatiotemporal": {t: loss}, "gain": {t: 1 - spatiotemporal /
        per_frame}}: a gain above 0 means attending across frames lowers the loss (what a model
        trained on clips learns), below 0 that the other frames only blur each frame's own attention.
    """
    from ..processors import AttentionState, cove_attention
    from ..sd import encode_frames, encode_text

    if anchor_t is not None and not 0 <= anchor_t < pipe.scheduler.config.num_train_timesteps:
        raise ValueError(f"anchor_t: expected None or a timestep from 0 to "
                         f"{pipe.scheduler.config.num_train_timesteps - 1}, got {anchor_t!r}")
    clips = _clips(n_clips, seed, frames, _image_size(pipe))
    unet, state = pipe.unet, AttentionState(frames=frames, mode="spatiotemporal")
    scored = slice(None) if anchor_t is None else slice(1, None)  # the frames the loss counts
    result: dict = {"per_frame": {}, "spatiotemporal": {}, "gain": {}}
    with torch.no_grad():
        for t in ts:
            sums = {"per_frame": 0.0, "spatiotemporal": 0.0}
            for c, clip in enumerate(clips):
                latents = encode_frames(pipe, clip.frames)  # (F, c, h, w)
                gen = torch.Generator("cpu").manual_seed(seed * 7919 + 31 * c + t)
                noise = torch.randn(latents.shape, generator=gen).to(latents)
                step = torch.full((len(latents),), t, dtype=torch.long)
                if anchor_t is not None:
                    step[0] = anchor_t
                noisy = pipe.scheduler.add_noise(latents, noise, step)
                target = pipe.scheduler.get_velocity(latents, noise, step).float()[scored]
                text = encode_text(pipe, [clip.caption]).expand(len(latents), -1, -1)
                sums["per_frame"] += float(((unet(noisy, step, text).sample.float()[scored] - target) ** 2).mean())
                with cove_attention(unet, state):
                    sums["spatiotemporal"] += float(
                        ((unet(noisy, step, text).sample.float()[scored] - target) ** 2).mean())
            pf, st = sums["per_frame"] / len(clips), sums["spatiotemporal"] / len(clips)
            result["per_frame"][str(t)], result["spatiotemporal"][str(t)] = pf, st
            result["gain"][str(t)] = 1 - st / pf
    return result


def measure_attention_leverage(pipe, n_clips: int = 2, seed: int = 0, *, frames: int = 4, ts=(50, 261, 500),
                               k: int = 3) -> dict:
    """How far self-attention moves the model's prediction: the change ``|e' - e| / |e|`` of
    the UNet's output ``e`` when its self-attention changes, per t (and attention grid).

    One set of UNet calls per t and clip, on the clip's frames each noised to t with its own
    noise (seeded by ``seed`` and the clip's place; the clip's caption as the text):

    - ``zeroed``: every self-attention output (``attn1``) on that grid set to 0, against the
      model as it is: what the prediction owes to self-attention there;
    - ``spatiotemporal``: spatial-temporal attention against frame-by-frame attention: what
      seeing the other frames changes;
    - ``cove_true``: COVE along the clip's true correspondence on that grid
      (``true_correspondence``, ``k`` cells a frame) against spatial-temporal attention: the
      most CGA on that grid can move the prediction, the ceiling of what COVE adds.

    Returns:
        {"zeroed": {t: {"HxW": change}}, "spatiotemporal": {t: change},
        "cove_true": {t: {"HxW": change}}, "k"}, each averaged over the clips.
    """
    from ..processors import AttentionState, cove_attention

    unet = pipe.unet
    attn1 = [m for name, m in unet.named_modules() if name.endswith("attn1")]
    clips = _clips(n_clips, seed, frames, _image_size(pipe))
    sums: dict = {}  # (key, t, grid or None) -> sum over clips

    def add(key, value):
        sums[key] = sums.get(key, 0.0) + value

    def change(a, b) -> float:
        return float((a.float() - b.float()).norm() / b.float().norm().clamp_min(1e-12))

    def zero_on(n: int):  # silences the modules of n tokens
        return lambda module, args, output: torch.zeros_like(output) if output.shape[1] == n else output

    with torch.no_grad():
        for t in ts:
            for c, clip in enumerate(clips):
                noisy, text = _noised(pipe, clip, c, t, seed)
                tokens: set = set()
                with _forward_hooks(attn1, lambda module, args, output: tokens.add(output.shape[1])):
                    base = unet(noisy, t, text).sample  # (F, c, h, w)
                sides = sorted({int(round(math.sqrt(n))) for n in tokens}, reverse=True)
                for side in sides:
                    with _forward_hooks(attn1, zero_on(side * side)):
                        add(("zeroed", t, f"{side}x{side}"), change(unet(noisy, t, text).sample, base))
                with cove_attention(unet, AttentionState(frames=frames, mode="spatiotemporal")):
                    spatiotemporal = unet(noisy, t, text).sample
                add(("spatiotemporal", t, None), change(spatiotemporal, base))
                for side in sides:
                    state = AttentionState(frames=frames, mode="cove",
                                           correspondence=true_correspondence(clip, (side, side), k))
                    with cove_attention(unet, state):
                        add(("cove_true", t, f"{side}x{side}"), change(unet(noisy, t, text).sample, spatiotemporal))
    result: dict = {"zeroed": {}, "spatiotemporal": {}, "cove_true": {}, "k": k}
    for (key, t, grid), total in sorted(sums.items(), key=lambda item: (item[0][0], item[0][1], item[0][2] or "")):
        if grid is None:
            result[key][str(t)] = total / len(clips)
        else:
            result[key].setdefault(str(t), {})[grid] = total / len(clips)
    return result
