"""Small helpers around a diffusers Stable Diffusion pipeline: frames, text, latents.

Frames are ``uint8 (F, H, W, 3)`` numpy at the boundary and float ``[-1, 1]`` ``(F, 3, H, W)``
inside (house rule 7). Everything runs on the pipeline's UNet device and dtype.
"""
from __future__ import annotations

import numpy as np
import torch


def device_dtype(pipe) -> tuple[torch.device, torch.dtype]:
    p = next(pipe.unet.parameters())
    return p.device, p.dtype


def frame_size(pipe) -> int:
    """Side of the square frames the pipeline was trained on (512 for SD 2.1 base):
    ``unet.config.sample_size * vae_scale_factor``."""
    return int(pipe.unet.config.sample_size * pipe.vae_scale_factor)


def size_multiple(pipe) -> int:
    """Image sides must be multiples of this so that every UNet level has an integer grid."""
    levels = len(pipe.unet.config.down_block_types)
    return int(pipe.vae_scale_factor * 2 ** (levels - 1))


def check_frames(frames, name: str = "frames") -> np.ndarray:
    """Return ``frames`` (a numpy array or torch tensor) as a ``uint8 (F, H, W, 3)`` numpy array,
    or raise a one-line ValueError naming ``name``."""
    if isinstance(frames, torch.Tensor):
        frames = frames.detach().cpu().numpy()
    if not isinstance(frames, np.ndarray):
        raise ValueError(f"{name} must be a numpy array uint8 (F, H, W, 3), got {type(frames).__name__}")
    if frames.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 (F, H, W, 3), got dtype {frames.dtype}")
    if frames.ndim != 4 or frames.shape[-1] != 3 or min(frames.shape[:3]) < 1:
        raise ValueError(f"{name} must be uint8 (F, H, W, 3) with F, H, W >= 1, got shape {frames.shape}")
    return frames


# How ``check_prompts`` names the prompts and the options that need a source prompt.
PROMPT_NAMES = {"prompt": "prompt", "source_prompt": "source_prompt", "negative_prompt": "negative_prompt",
                "mask": "config.extras.mask_threshold", "p2p": "config.extras.p2p_steps"}


def check_prompts(prompt, source_prompt="", negative_prompt="", *, mask: bool = False, p2p: bool = False,
                  names: dict[str, str] = PROMPT_NAMES) -> None:
    """Raise a one-line ValueError unless the prompts are strings and ``source_prompt`` serves the
    options that read it: the edit mask (``mask``) is where the source and target prompts
    disagree, so it needs a source prompt that differs from ``prompt``; the word swap (``p2p``)
    reuses the source prompt's words, so it needs one. ``names``: how the message names the
    prompts and options (the ``cove`` command passes its flags)."""
    for key, value in (("prompt", prompt), ("source_prompt", source_prompt), ("negative_prompt", negative_prompt)):
        if not isinstance(value, str):
            raise ValueError(f"{names[key]}: expected a string, got {type(value).__name__}")
    if mask and source_prompt.strip() in ("", prompt.strip()):
        raise ValueError(f"{names['mask']} needs a {names['source_prompt']} that describes the input and "
                         f"differs from {names['prompt']} (the mask is where the two disagree)")
    if p2p and not source_prompt.strip():
        raise ValueError(f"{names['p2p']} needs a {names['source_prompt']} that describes the input (its "
                         f"words' cross-attention maps are what the edit prompt's words reuse)")


def to_tensor(frames, device=None, dtype=torch.float32) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> float (F, 3, H, W) in [-1, 1]."""
    x = torch.from_numpy(check_frames(frames).copy())
    x = x.permute(0, 3, 1, 2).to(device=device, dtype=torch.float32) / 127.5 - 1  # (F, 3, H, W)
    return x.to(dtype)


def to_frames(x: torch.Tensor) -> np.ndarray:
    """float (F, 3, H, W) in [-1, 1] -> uint8 (F, H, W, 3)."""
    x = ((x.detach().float().clamp(-1, 1) + 1) * 127.5).round()
    return x.permute(0, 2, 3, 1).to(torch.uint8).cpu().numpy()  # (F, H, W, 3)


def check_size(pipe, frames: np.ndarray) -> None:
    f = pipe.vae_scale_factor
    _, h, w, _ = frames.shape
    if h % f or w % f or h // f < 8 or w // f < 8:
        raise ValueError(
            f"frame size {h}x{w} must be a multiple of {f} and at least {8 * f} "
            f"(this model works best at {frame_size(pipe)}x{frame_size(pipe)})"
        )


def noise_latents(pipe, latents: torch.Tensor, t: int, generator: torch.Generator | None = None) -> torch.Tensor:
    """Clean latents (F, c, h, w) -> float32 noisy latents at timestep ``t`` (DDPM forward process):

        z_t = sqrt(abar_t) z_0 + sqrt(1 - abar_t) eps,    eps ~ N(0, I) from ``generator``

    The noise is drawn on the generator's device (CPU without one), so a seed gives the same
    noise whatever device the model is on.
    """
    abar = pipe.scheduler.alphas_cumprod[t].to(device=latents.device, dtype=torch.float32)
    noise = torch.randn(latents.shape, generator=generator, dtype=torch.float32,
                        device=generator.device if generator is not None else "cpu")
    return abar.sqrt() * latents.float() + (1 - abar).sqrt() * noise.to(latents.device)


@torch.no_grad()
def encode_text(pipe, prompts: list[str]) -> torch.Tensor:
    """Prompts -> text embeddings (B, L, D), as the pipeline's own ``encode_prompt`` does."""
    device, dtype = device_dtype(pipe)
    tok = pipe.tokenizer(prompts, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    cfg = pipe.text_encoder.config
    mask = tok.attention_mask.to(device) if getattr(cfg, "use_attention_mask", False) else None
    emb = pipe.text_encoder(tok.input_ids.to(device), attention_mask=mask)[0]  # (B, L, D)
    return emb.to(dtype)


@torch.no_grad()
def encode_frames(pipe, frames, *, batch_size: int = 8) -> torch.Tensor:
    """uint8 (F, H, W, 3) -> latents (F, c, H/f, W/f), scaled by the VAE's scaling factor.

    The posterior *mean* is used (deterministic), as inversion papers do.
    """
    frames = check_frames(frames)
    check_size(pipe, frames)
    device, dtype = device_dtype(pipe)
    vae_dtype = pipe.vae.dtype
    out = []
    for chunk in np.array_split(frames, max(1, int(np.ceil(len(frames) / batch_size)))):
        x = to_tensor(chunk, device, vae_dtype)  # (f, 3, H, W)
        out.append(pipe.vae.encode(x).latent_dist.mean)
    z = torch.cat(out) * pipe.vae.config.scaling_factor  # (F, c, h, w)
    return z.to(dtype)


@torch.no_grad()
def decode_latents(pipe, latents: torch.Tensor, *, batch_size: int = 8) -> np.ndarray:
    """latents (F, c, h, w) -> uint8 frames (F, H, W, 3)."""
    vae_dtype = pipe.vae.dtype
    out = []
    for z in latents.split(batch_size):
        x = pipe.vae.decode(z.to(vae_dtype) / pipe.vae.config.scaling_factor).sample
        out.append(to_frames(x))
    return np.concatenate(out)
