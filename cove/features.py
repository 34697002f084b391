"""Stage 1: diffusion features (paper Sec. 3.1).

For each frame: encode to a latent z_i, add forward noise at timestep t,

    z_i^t = sqrt(abar_t) z_i + sqrt(1 - abar_t) eps                (``cove.sd.noise_latents``)

run the UNet once, read a decoder block's output F_i with a forward hook, and L2-normalise it
along channels so that dot products are cosine similarities. One map per frame, computed once.
The hook stops the UNet right after the block (nothing downstream is computed), so the cost is
about half a UNet pass; no diffusers ``forward`` is copied.
"""
from __future__ import annotations

import re

import torch

from .sd import device_dtype, encode_frames, encode_text, noise_latents


class _Stop(Exception):
    """Raised by the hook to end the UNet forward once the feature is captured."""


def latent_side(unet) -> int:
    """Side of the (square) latent grid the UNet was configured for (64 for SD 2.1-base)."""
    size = unet.config.sample_size
    return size if isinstance(size, int) else size[0]


def attention_grids(unet) -> dict[str, int]:
    """Side of the token grid of every self-attention, from the UNet config (square latents).

    Returns {block name: grid side}, e.g. SD 2.1: {'down_blocks.0': 64, ..., 'up_blocks.3': 64}.
    """
    cfg = unet.config
    side = latent_side(unet)
    n = len(cfg.block_out_channels)
    grids = {}
    for d, kind in enumerate(cfg.down_block_types):
        if "CrossAttn" in kind or "Attn" in kind:
            grids[f"down_blocks.{d}"] = side // 2**d
    for u, kind in enumerate(cfg.up_block_types):
        if "CrossAttn" in kind or "Attn" in kind:
            grids[f"up_blocks.{u}"] = side // 2 ** (n - 1 - u)
    return grids


def block_output_grid(unet, name: str) -> int:
    """Side of the output grid of ``up_blocks.u`` (its upsampler included)."""
    cfg = unet.config
    side = latent_side(unet)
    n, u = len(cfg.up_block_types), int(name.split(".")[1])
    return side if u == n - 1 else side // 2 ** (n - 2 - u)


def default_feature_layer(unet) -> str:
    """The decoder block whose output grid equals the highest-resolution attention grid.

    SD 2.1 (64x64 latents): attention at 64, 32, 16 -> ``up_blocks.3`` (64x64, 320 channels),
    matching the paper's C = 320. When several up blocks output that grid, the last one wins.
    """
    grids = attention_grids(unet)
    if not grids:
        raise ValueError("the UNet has no attention blocks; pass layer=... explicitly")
    best = max(grids.values())
    names = [f"up_blocks.{u}" for u in range(len(unet.config.up_block_types))
             if block_output_grid(unet, f"up_blocks.{u}") == best]
    if not names:
        raise ValueError(f"no up block outputs the {best}x{best} grid; pass layer=... explicitly")
    return names[-1]


def layer_grid(unet, name: str) -> int:
    """Side of the output grid of the UNet module ``name`` at the UNet's own latent size (square
    latents): a block (``up_blocks.u``, ``down_blocks.d``, ``mid_block``; samplers included) or
    a module inside one (the grid it works on). A one-line ValueError for any other name."""
    cfg, side = unet.config, latent_side(unet)
    n = len(cfg.block_out_channels)
    parts = name.split(".")
    try:
        if parts[0] == "mid_block":
            return side // 2 ** (n - 1)
        level = int(parts[1])
        sampler = len(parts) > 2 and parts[2] in ("upsamplers", "downsamplers")
        if parts[0] == "up_blocks":
            inner = side // 2 ** (n - 1 - level)  # the grid the block works on before its upsampler
            return block_output_grid(unet, name) if len(parts) == 2 or sampler else inner
        if parts[0] == "down_blocks":
            inner = side // 2**level
            last = level == n - 1  # the last down block has no downsampler
            return inner // 2 if (len(parts) == 2 or sampler) and not last else inner
    except (IndexError, ValueError):
        pass
    raise ValueError(f"layer {name!r}: expected a UNet block (up_blocks.u, down_blocks.d, mid_block) "
                     "or a module inside one")


def attention_grids_at(pipe, size: tuple[int, int]) -> list[tuple[int, int]]:
    """(H, W) token grids of the UNet's self-attention layers for frames of ``size`` (H_img,
    W_img), finest first: where CGA can act. cove-tiny at 64x64: [(16, 16), (8, 8)]; SD 2.1 at
    512x512: [(64, 64), (32, 32), (16, 16)] (its 8x8 level has attention in the mid block only,
    which CGA does not use)."""
    return [_at_size(pipe, g, size) for g in sorted(set(attention_grids(pipe.unet).values()), reverse=True)]


def _at_size(pipe, grid: int, size: tuple[int, int]) -> tuple[int, int]:
    """(H, W) for frames of ``size`` of a grid whose side is ``grid`` at the UNet's own latent size."""
    f = pipe.vae_scale_factor * latent_side(pipe.unet) // grid  # image pixels per cell
    return size[0] // f, size[1] // f


def feature_module(unet, layer: str | None = None):
    """The UNet module whose output is read as features: ``layer`` (e.g. ``"up_blocks.0"``),
    or :func:`default_feature_layer`'s when None. A one-line ValueError names the blocks when
    the UNet has no such module."""
    try:
        return unet.get_submodule(layer or default_feature_layer(unet))
    except AttributeError:
        blocks = [n for n, _ in unet.named_children() if re.match(r"(up|down|mid)_block", n)]
        raise ValueError(f"layer {layer!r} is not a UNet module (e.g. 'up_blocks.3'; {blocks})") from None


def feature_grid(pipe, size: tuple[int, int], layer: str | None = None) -> tuple[int, int]:
    """(H, W) of the feature map of ``layer`` (``extract_features``' grid) for frames of ``size``
    (H_img, W_img); ``None``: the default layer's, the highest-resolution attention grid: 64x64
    for SD 2.1 at 512x512, 16x16 for cove-tiny at 64x64. The grid of the correspondence a
    config computes: ``feature_grid(pipe, size, config.feature_layer)``."""
    grid = max(attention_grids(pipe.unet).values()) if layer is None else layer_grid(pipe.unet, layer)
    return _at_size(pipe, grid, size)


@torch.no_grad()
def extract_features(pipe, frames, *, t: int = 261, layer: str | None = None, prompt: str = "",
                     ensemble: int = 1, generator: torch.Generator | None = None,
                     batch_size: int = 8) -> torch.Tensor:
    """Diffusion features of each frame, L2-normalised over channels.

    Important args:
        pipe: a diffusers Stable Diffusion pipeline (SD 1.x/2.x, or cove-tiny).
        frames: uint8 (F, H, W, 3).
        t: noise timestep (paper: 261).
        layer: UNet module name whose output is the feature; ``None`` =
            :func:`default_feature_layer` (``up_blocks.3`` on SD 2.1).

    Args to tinker with:
        prompt: text condition of the pass (paper: not stated; empty by default).
        ensemble: average the features of this many noise draws before normalising.
        generator: torch.Generator for the noise (seeded -> deterministic features).
        batch_size: frames per UNet call.

    Returns:
        float32 (F, C, H, W) on the pipeline's device, unit norm along C.
    """
    if not 0 <= t < pipe.scheduler.config.num_train_timesteps:
        raise ValueError(f"t must lie in 0..{pipe.scheduler.config.num_train_timesteps - 1}, got {t}")
    if ensemble < 1:
        raise ValueError(f"ensemble must be >= 1, got {ensemble}")
    unet = pipe.unet
    module = feature_module(unet, layer)
    device, dtype = device_dtype(pipe)
    latents = encode_frames(pipe, frames)  # (F, c, h, w)
    cond = encode_text(pipe, [prompt])  # (1, L, D)
    captured = []

    def hook(_module, _inputs, output):
        captured.append(output[0] if isinstance(output, tuple) else output)
        raise _Stop

    handle = module.register_forward_hook(hook)
    try:
        total = None
        for _ in range(ensemble):
            zt = noise_latents(pipe, latents, t, generator)  # (F, c, h, w) at t
            maps = []
            for z in zt.to(dtype).split(batch_size):  # (b, c, h, w)
                captured.clear()
                try:
                    unet(z, torch.full((len(z),), t, device=device), cond.expand(len(z), -1, -1))
                except _Stop:
                    pass
                if not captured:
                    raise RuntimeError(f"layer {layer!r} did not run in the UNet forward")
                maps.append(captured[0].float())
            feats = torch.cat(maps)  # (F, C, H, W)
            total = feats if total is None else total + feats
    finally:
        handle.remove()
    return torch.nn.functional.normalize(total, dim=1)  # unit norm over C

