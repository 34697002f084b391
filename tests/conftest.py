"""Shared fixtures: a tiny, seeded Stable Diffusion pipeline built from configs (no hub).

Same layout as SD 1.x/2.x, scaled down: AutoencoderKL with scale factor 2 (32x32 images ->
4x16x16 latents), a UNet with self-attention at 16x16 (in its last up block, like SD's 64x64)
and 8x8, a CLIP text model and a locally built CLIP tokenizer.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel

from cove.tiny.tokenizer import build_clip_tokenizer

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def make_tiny_pipe(folder, seed: int = 0) -> StableDiffusionPipeline:
    tokenizer = build_clip_tokenizer(["a", "red", "green", "star", "circle", "on", "grass"], folder,
                                     max_length=12)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=4, out_channels=4, layers_per_block=1,
        block_out_channels=(32, 64), down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D"), cross_attention_dim=32,
        attention_head_dim=8, norm_num_groups=8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(16, 32),
        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8, sample_size=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=32, intermediate_size=37, num_hidden_layers=2,
        num_attention_heads=4, max_position_embeddings=12, bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id,
    ))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
                                   unet=unet, scheduler=scheduler, safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="session")
def tiny_pipe(tmp_path_factory):
    """A tiny StableDiffusionPipeline on CPU in float32 (32x32 frames, 16x16 feature grid)."""
    return make_tiny_pipe(tmp_path_factory.mktemp("tiny_tokenizer"))


@pytest.fixture
def tiny_folder(tiny_pipe, tmp_path_factory):
    """``tiny_pipe`` saved as a diffusers folder (what ``--model`` and job lists name)."""
    folder = tmp_path_factory.mktemp("models") / "tiny"
    tiny_pipe.save_pretrained(folder)
    return folder


@pytest.fixture
def tiny_clip():
    """uint8 (4, 32, 32, 3): a smooth random texture translated by 2 pixels per frame."""
    rng = np.random.default_rng(0)
    base = rng.random((8, 8, 3))
    big = np.kron(base, np.ones((6, 6, 1)))  # (48, 48, 3) blocky texture
    frames = np.stack([big[8:40, 8 + 2 * i:40 + 2 * i] for i in range(4)])
    return (frames * 255).astype(np.uint8)


def pytest_collection_modifyitems(session, config, items):
    """The docs build runs last, after nbval has run the notebooks (``testpaths``): it publishes
    the executed copies that ``notebooks/conftest.py`` writes to ``artifacts/notebooks/`` as each
    notebook finishes, and checks that their pages show outputs."""
    last = [item for item in items if item.nodeid.endswith("test_docs.py::test_mkdocs_build_strict_offline")]
    items[:] = [item for item in items if item not in last] + last
