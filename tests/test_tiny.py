"""The embedded model cove-tiny: offline loading, inversion/reconstruction, correspondence."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import cove
from cove import metrics, world
from cove.config import CoveConfig
from cove.correspondence import correspond
from cove.eval import judge
from cove.features import extract_features
from cove.loading import TINY_PATH
from cove.pipeline import edit_video, reconstruct
from cove.tiny import measures
from cove.tiny.settings import CANDIDATES, candidate_config


def masked_config(**overrides) -> CoveConfig:
    """The edit settings the mask, word-swap and ResNet-injection figures below were measured
    with: the "strength 0.5 set" of ``cove.tiny.settings`` (the last half of a 25-step schedule,
    PnP in every step) at guidance 12, with the edit mask at threshold 0.4, not grown, holes
    filled."""
    base = dataclasses.replace(candidate_config(CANDIDATES["strength 0.5 set"]), guidance_scale=12.0)
    extras = dataclasses.replace(base.extras, mask_threshold=0.4, mask_dilate=0, mask_fill_holes=True)
    return dataclasses.replace(base, extras=extras, **overrides)

# Floors a little under what cove-tiny measured on this machine (docs/quality.json has the
# full figures); a broken model, loader or inversion falls far below them.
RECONSTRUCTION_PSNR = 24.0  # 25 steps: measured 28.8 dB (100 steps, the gate: 37.8 dB)
# demo clip, PCK within 4 px: at the paper's t = 261 on the default layer measured 0.46; at the
# model's own feature settings (its cove_settings.json: up_blocks.0, t = 50) 0.68
FEATURE_PCK = {"paper": 0.30, "own": 0.55}


@pytest.fixture(scope="module")
def pipe():
    return cove.load_pipeline("cove-tiny")


def test_weights_are_shipped_small_and_offline(pipe):
    size = sum(p.stat().st_size for p in TINY_PATH.rglob("*") if p.is_file())
    assert size <= 30 * 2**20, f"cove-tiny weights are {size / 2**20:.1f} MB"
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.vae_scale_factor == 2 and pipe.unet.config.sample_size == 32
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_vae_is_lossless(pipe):
    frames = world.render(world.demo_scene()).frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = pipe.vae.encode(x).latent_dist.mean
    assert z.shape == (8, 12, 32, 32)
    torch.testing.assert_close(pipe.vae.decode(z).sample, x)


def test_inversion_then_reconstruction_returns_the_clip(pipe):
    clip = world.render(world.random_scene(3, frames=4))
    out = reconstruct(pipe, clip.frames, prompt=clip.caption, config=CoveConfig(inversion_steps=25))
    assert out.shape == clip.frames.shape
    assert metrics.psnr(out, clip.frames) >= RECONSTRUCTION_PSNR


def test_features_track_a_shapesworld_clip(pipe):
    """cove-tiny's features carry correspondence at the paper's setting (default layer, t = 261)
    and better at the model's own (``cove.recommended``: the layer and t measured on validation
    clips); optical flow does better on these clips (docs/quality.json)."""
    from cove.features import feature_grid
    from cove.recommended import recommended_config

    clip = world.render(world.demo_scene())
    own = recommended_config(pipe)
    settings = {"paper": (261, None), "own": (own.feature_t, own.feature_layer)}
    for name, (t, layer) in settings.items():
        feats = extract_features(pipe, clip.frames, t=t, layer=layer, generator=torch.Generator().manual_seed(0))
        grid = feature_grid(pipe, clip.frames.shape[1:3], layer)
        assert feats.shape[0] == 8 and tuple(feats.shape[-2:]) == grid
        gt_pos, gt_vis = clip.ground_truth(grid=grid)
        pck = metrics.pck(correspond(feats, window=9, k=3), gt_pos, gt_vis, threshold=4.0 * grid[1] / 64)
        assert pck >= FEATURE_PCK[name], (name, t, layer, pck)
    # identical frames: every token finds itself
    same = correspond(feats[:1].expand(3, -1, -1, -1).contiguous(), window=9, k=3)
    n = torch.arange(feats.shape[-2] * feats.shape[-1])
    assert bool((same.index[0, :, 1, 0] == n).all())


def test_the_denoiser_keeps_a_shape_it_is_handed_at_low_noise(pipe):
    """SDEdit of true renders at strength 0.2 keeps the judged shape (measured 11 of 12, as on
    the renders themselves; at strength 1, plain text-to-image, 10 of 12: docs/quality.json)."""
    r = measures.measure_shape_retention(pipe, 12, seed=0, strengths=(0.2, 1.0), steps=20)
    assert r["clean"] >= 0.9
    assert r["shape"]["0.2"] >= 0.75 and r["psnr"]["0.2"] >= 24.0, r
    assert r["shape"]["1"] >= 0.5, r  # 12 judged shapes; chance is 0.25


def test_generation_follows_the_background(pipe):
    """Backgrounds and colours follow the prompt (measured 100% / 100%); shapes only about half of
    the time (55%, chance is 25%: docs/quality.json), so they are not asserted here."""
    prompts = ["a red circle on snow", "a blue square on grass"]
    images = pipe(prompts, num_inference_steps=20, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    images = (images * 255).round().astype(np.uint8)
    judged = [judge.prompt_followed(im, p) for im, p in zip(images, prompts)]
    assert all(j["background"] and j["colour"] for j in judged), judged


def test_source_caption_as_negative_prompt_keeps_the_background(pipe):
    """The "source" negative-prompt policy of the strength 0.5 set: guidance away from the source
    caption changes the background less than guidance away from "" (measured on these two edits, 10
    steps, no mask: background PSNR 23.9 dB against 19.6 dB; with the 12000-step model, on the 6
    validation clips at strength 0.7, guidance 7.5, 50/25 steps: 25.2 against 21.2 dB, with 65%
    against 40% of the object recoloured)."""
    base = masked_config()
    config = dataclasses.replace(base, attention="per-frame", inversion_steps=20, denoise_steps=10,
                                 extras=dataclasses.replace(base.extras, mask_threshold=None))
    background = {"": [], "source": []}
    for seed in (0, 1):
        clip = measures.moving_clips(1, seed, frames=4)[0]
        task = measures.colour_edit_task(clip, seed)
        for negative in background:
            edit = edit_video(pipe, clip.frames, task["target_prompt"], source_prompt=task["source_prompt"],
                              negative_prompt=task["source_prompt"] if negative else "", config=config,
                              generator=torch.Generator().manual_seed(0))
            fidelity = metrics.edit_fidelity(edit.frames, task["truth"], task["mask"], task["target_colour"])
            background[negative].append(fidelity["background_psnr"])
    assert np.mean(background["source"]) >= np.mean(background[""]) + 2.0, background


def test_edit_mask_finds_the_object_and_keeps_the_background(pipe):
    """DiffEdit's mask (cove.extras.masking) on the demo clip, red star -> yellow star, as
    ``masked_config`` makes it (not grown, holes filled): it covers the latent cells inside the
    star (measured: 96% of them; 77% of all the cells the star touches, its outline being partly background), marking
    4.7% of all cells, and blending outside it keeps the background (measured on 4 frames, 10
    steps: 30.1 dB against 22.9 dB)."""
    clip = world.render(world.demo_scene(frames=4))
    source, target = world.DEMO_EDIT
    truth = world.render(world.edit(clip.scene, source, target))
    star = next(o for o, obj in enumerate(truth.scene.objects) if obj.phrase == target)
    config = masked_config(attention="per-frame", inversion_steps=20, denoise_steps=10)
    background = {}
    for threshold in (None, config.extras.mask_threshold):
        edit = edit_video(pipe, clip.frames, truth.caption, source_prompt=clip.caption,
                          negative_prompt=clip.caption,
                          config=dataclasses.replace(config, extras=dataclasses.replace(config.extras,
                                                                                       mask_threshold=threshold)),
                          generator=torch.Generator().manual_seed(0))
        fidelity = metrics.edit_fidelity(edit.frames, truth.frames, truth.masks[:, star], target.split()[0])
        background[threshold] = fidelity["background_psnr"]
    mask = edit.mask > 0  # (F, 32, 32)
    star_pixels = torch.from_numpy(truth.masks[:, star]).float()[:, None]  # (F, 1, 64, 64)
    cells = torch.nn.functional.adaptive_avg_pool2d(star_pixels, 32)[:, 0] == 1  # (F, 32, 32): inside
    assert (mask & cells).sum() >= 0.9 * cells.sum() and mask.float().mean() <= 0.2
    assert background[config.extras.mask_threshold] >= background[None] + 3.0, background


def test_word_swap_recolours_more_of_the_object(pipe):
    """Prompt-to-prompt's word swap (cove.extras.p2p), ``masked_config`` otherwise: the new colour
    lands on more of the named object (measured on these four 4-frame edits, 10 steps: 98%, 9%,
    59% and 87% of the object recoloured, against 91%, 4%, 10% and 86% without it; on the 18
    validation clips at the gate's 50/25 steps, 69% against 51% at 19200 training steps)."""
    config = masked_config(attention="per-frame", inversion_steps=20, denoise_steps=10)
    swap = config.denoise_steps  # every step run
    recoloured = {0: [], swap: []}
    for seed in range(4):
        clip = measures.moving_clips(1, seed, frames=4)[0]
        task = measures.colour_edit_task(clip, seed)
        for steps in recoloured:
            edit = edit_video(pipe, clip.frames, task["target_prompt"], source_prompt=task["source_prompt"],
                              negative_prompt=task["source_prompt"],
                              config=dataclasses.replace(config, extras=dataclasses.replace(config.extras,
                                                                                           p2p_steps=steps)),
                              generator=torch.Generator().manual_seed(0))
            fidelity = metrics.edit_fidelity(edit.frames, task["truth"], task["mask"], task["target_colour"])
            recoloured[steps].append(fidelity["attribute_accuracy"])
    with_swap, without = np.array(recoloured[swap]), np.array(recoloured[0])
    assert (with_swap >= without - 0.02).all() and with_swap.mean() >= without.mean() + 0.08, recoloured


def test_late_resnet_injection_lets_a_far_colour_change_land(pipe):
    """PnP's ResNet features carry colour in this pixel-space model: injected at every step
    (``masked_config``) they hold a green triangle half-way to blue; injected only below t = 250
    (``pnp_resnet_max_t``) the blue lands (a validation clip, 4 frames, the gate's 50/25 steps:
    measured 58% against 76% of the object blue, PSNR 25.4 against 26.1 dB; 59% against 82% with
    the mask grown by a cell, as the gate had it before). Not a default: near changes overshoot
    (docs/method/tiny.md)."""
    config = masked_config(attention="per-frame")
    clip = measures.moving_clips(6, 200, frames=4)[1]
    task = measures.colour_edit_task(clip, 201)
    assert (task["source"], task["target"]) == ("green triangle", "blue triangle")
    scores = {}
    for max_t in (None, 250):
        edit = edit_video(pipe, clip.frames, task["target_prompt"], source_prompt=task["source_prompt"],
                          negative_prompt=task["source_prompt"],
                          config=dataclasses.replace(config, extras=dataclasses.replace(config.extras,
                                                                                       pnp_resnet_max_t=max_t)),
                          generator=torch.Generator().manual_seed(200))
        scores[max_t] = metrics.edit_fidelity(edit.frames, task["truth"], task["mask"], task["target_colour"])
    assert config.extras.pnp_resnet_max_t is None
    assert scores[250]["attribute_accuracy"] >= scores[None]["attribute_accuracy"] + 0.15, scores
    assert scores[250]["psnr"] >= scores[None]["psnr"], scores
