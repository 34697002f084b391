"""The embedded model cove-tiny: offline loading, inversion/reconstruction, correspondence."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import cove
from cove import metrics, world
from cove.config import CoveConfig
from cove.correspondence import correspond
from cove.features import extract_features
from cove.loading import TINY_PATH
from cove.pipeline import reconstruct

# Floors a little under what cove-tiny measured on this machine (docs/quality.json has the
# full figures); a broken model, loader or inversion falls far below them.
RECONSTRUCTION_PSNR = 26.0  # 25 steps: measured 28.7 dB (100 steps, the gate: 40.2 dB)
FEATURE_PCK = 0.45  # measured 0.60 on the demo clip with up_blocks.0 at t = 0


@pytest.fixture(scope="module")
def pipe():
    return cove.load_pipeline("cove-tiny")


def test_weights_are_shipped_small_and_offline(pipe):
    size = sum(p.stat().st_size for p in TINY_PATH.rglob("*") if p.is_file())
    assert size <= 30 * 2**20, f"cove-tiny weights are {size / 2**20:.1f} MB"
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    assert pipe.vae_scale_factor == 4 and pipe.unet.config.sample_size == 16
    assert pipe.scheduler.config.prediction_type == "v_prediction"


def test_vae_is_lossless(pipe):
    frames = world.render(world.demo_scene()).frames
    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float() / 127.5 - 1
    z = pipe.vae.encode(x).latent_dist.mean
    assert z.shape == (8, 48, 16, 16)
    torch.testing.assert_close(pipe.vae.decode(z).sample, x)


def test_inversion_then_reconstruction_returns_the_clip(pipe):
    clip = world.render(world.random_scene(3, frames=4))
    out = reconstruct(pipe, clip.frames, prompt=clip.caption, config=CoveConfig(inversion_steps=25))
    assert out.shape == clip.frames.shape
    assert metrics.psnr(out, clip.frames) >= RECONSTRUCTION_PSNR


def test_features_track_a_shapesworld_clip(pipe):
    """cove-tiny's features carry correspondence, at its best setting (up_blocks.0, t = 0).

    At the paper's default (the last 16x16 block, t = 261) they do not (PCK ~0.05 vs optical
    flow ~0.97, docs/quality.json): cove-tiny's top level mostly models pixel noise.
    """
    clip = world.render(world.demo_scene())
    feats = extract_features(pipe, clip.frames, t=0, layer="up_blocks.0",
                             generator=torch.Generator().manual_seed(0))
    assert feats.shape == (8, 128, 16, 16)
    corr = correspond(feats, window=9, k=3)
    gt_pos, gt_vis = clip.ground_truth(grid=(16, 16))
    pck = metrics.pck(corr, gt_pos, gt_vis, threshold=1.0)
    assert pck >= FEATURE_PCK, pck
    # identical frames: every token finds itself
    same = correspond(feats[:1].expand(3, -1, -1, -1).contiguous(), window=9, k=3)
    n = torch.arange(256)
    assert bool((same.index[0, :, 1, 0] == n).all())


def test_generation_follows_the_background(pipe):
    """Backgrounds follow the prompt (measured 100%); colours and shapes do not yet reliably
    (52% / 18%, docs/quality.json), so they are not asserted here."""
    prompts = ["a red circle on snow", "a blue square on grass"]
    images = pipe(prompts, num_inference_steps=20, guidance_scale=5.0,
                  generator=torch.Generator().manual_seed(0), output_type="np").images
    images = (images * 255).round().astype(np.uint8)
    judged = [metrics.prompt_followed(im, p) for im, p in zip(images, prompts)]
    assert all(j["background"] for j in judged), judged
