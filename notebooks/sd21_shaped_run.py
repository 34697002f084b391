"""Record what ``cove.edit_video`` does on a Stable-Diffusion-2.1-shaped pipeline with random
weights, at a tiny size on CPU; notebook 07 shows the record when no GPU is present.

The UNet and the VAE have SD 2.1-base's exact configuration and the text encoder OpenCLIP
ViT-H's shape (1024 wide, 23 layers), all randomly initialised (seed 0): the edit is noise,
but the code path, the layers CGA runs in, the time and the memory are those of the real model
at this size. Usage: ``PYTHONPATH=. python notebooks/sd21_shaped_run.py`` (a few minutes) ->
``notebooks/sd21_shaped_run.json``.
"""
import json
import resource
import time
from pathlib import Path

import torch
from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from transformers import CLIPTextConfig, CLIPTextModel

import cove
from cove import world
from cove.eval.bench import dumps, machine_info
from cove.processors import self_attention_names
from cove.tiny.tokenizer import build_clip_tokenizer

SIZE, FRAMES = 64, 4  # 64x64 frames: 8x8 latents, an 8x8 feature grid


def sd21_shaped_pipe(folder: Path) -> StableDiffusionPipeline:
    torch.manual_seed(0)
    unet = UNet2DConditionModel(  # stabilityai/stable-diffusion-2-1-base unet/config.json
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2,
        block_out_channels=(320, 640, 1280, 1280), attention_head_dim=(5, 10, 20, 20),
        cross_attention_dim=1024, use_linear_projection=True,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3)
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, block_out_channels=(128, 256, 512, 512),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        layers_per_block=2, sample_size=768)
    tokenizer = build_clip_tokenizer(["a", "red", "yellow", "star", "and", "blue", "circle", "on", "grass"],
                                     folder, max_length=77)
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(tokenizer), hidden_size=1024, intermediate_size=4096, num_hidden_layers=23,
        num_attention_heads=16, max_position_embeddings=77, hidden_act="gelu",
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id))
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def main(out: Path = Path(__file__).with_suffix(".json")) -> dict:
    import tempfile

    start = time.perf_counter()
    pipe = sd21_shaped_pipe(Path(tempfile.mkdtemp()))
    built = time.perf_counter() - start
    clip = world.render(world.demo_scene(frames=FRAMES, size=SIZE))
    truth = world.render(world.edit(clip.scene, *world.DEMO_EDIT))
    config = cove.CoveConfig(inversion_steps=2, denoise_steps=2, pnp_steps=1, window=5)
    result = cove.edit_video(pipe, clip.frames, truth.caption, source_prompt=clip.caption, config=config,
                             generator=torch.Generator().manual_seed(0))
    grid = tuple(result.correspondence.grid)
    sizes = {}  # token count of every self-attention layer, from a hook on one UNet pass

    def hook(name):
        return lambda module, args, kwargs, output: sizes.__setitem__(name, args[0].shape[1] if args else
                                                                       kwargs["hidden_states"].shape[1])

    names = self_attention_names(pipe.unet)
    handles = [pipe.unet.get_submodule(n).register_forward_hook(hook(n), with_kwargs=True) for n in names]
    with torch.no_grad():
        pipe.unet(torch.zeros(1, 4, SIZE // 8, SIZE // 8), 10, torch.zeros(1, 77, 1024))
    for h in handles:
        h.remove()
    record = {
        "what": "cove.edit_video on a Stable-Diffusion-2.1-shaped pipeline with RANDOM weights (the edit "
                "itself is noise): the code path, layers, time and memory at a tiny size on CPU",
        "frames": FRAMES, "size": SIZE, "latents": [4, SIZE // 8, SIZE // 8], "feature_grid": list(grid),
        "config": {"inversion_steps": 2, "denoise_steps": 2, "pnp_steps": 1, "window": config.window,
                   "k": config.k, "merge_ratio": config.merge_ratio},
        "parameters_millions": {name: round(sum(p.numel() for p in getattr(pipe, name).parameters()) / 1e6, 1)
                                for name in ("unet", "vae", "text_encoder")},
        "self_attention_layers": len(names),
        "cga_layers": [n for n in names if sizes.get(n) == grid[0] * grid[1]],
        "cga_calls": int(result.extras["calls"].get("cga", 0)) if "calls" in result.extras else None,
        "seconds": {"build random weights": round(built, 1),
                    **{k: round(v, 2) for k, v in result.timings.items()}},
        "peak_memory_gb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, 2),
        "machine": machine_info(),
    }
    out.write_text(dumps(record))
    return record


if __name__ == "__main__":
    print(json.dumps(main(), indent=1)[:3000])
