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

import cove
from cove import world
from cove.eval.bench import dumps, machine_info
from cove.eval.speed import build_pipeline
from cove.processors import self_attention_names

SIZE, FRAMES = 64, 4  # 64x64 frames: 8x8 latents, an 8x8 feature grid


def main(out: Path = Path(__file__).with_suffix(".json")) -> dict:
    start = time.perf_counter()
    pipe = build_pipeline("sd21", "cpu")  # the architecture `cove bench speed` measures
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
