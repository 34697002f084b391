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


# ---------------------------------------------------------------------------- devices and sizes

# Largest clip an edit accepts, in pixels over all frames after resizing (F * H * W): 256
# frames at 512x512, 64 at 1024x1024. Checked before any decoding.
PIXEL_BUDGET = 2**26


def available_devices() -> list[str]:
    """The devices torch can use here: ``["cpu", "cuda:0", ...]`` (and ``"mps"`` on Apple)."""
    names = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        names.append("mps")
    return names


def check_device(device) -> torch.device:
    """``None`` -> cpu; a name or ``torch.device`` that exists here -> ``torch.device``; else a
    one-line ValueError naming the available devices."""
    available = available_devices()
    if device is None:
        return torch.device("cpu")
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError, ValueError):
        raise ValueError(f"unknown device {device!r}; available: {', '.join(available)}") from None
    index = 0 if resolved.index is None else resolved.index
    ok = {"cpu": resolved.index in (None, 0), "cuda": index < torch.cuda.device_count(),
          "mps": "mps" in available and index == 0}.get(resolved.type, False)
    if not ok:
        raise ValueError(f"device {str(resolved)!r} is not available here; available: {', '.join(available)}")
    return resolved


def device_memory(device) -> int:
    """Total memory in bytes of ``device``: the GPU's for cuda, the machine's RAM otherwise."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device.index or 0).total_memory)
    import os

    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def format_bytes(n: float) -> str:
    """``3.2e9`` -> ``"3.0 GiB"``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def estimate_edit_memory(pipe, frames: int, height: int, width: int, config) -> dict[str, int]:
    """Estimated peak bytes of ``cove.edit_video`` on the pipeline's device, by part.

    An order-of-magnitude model of the largest tensors alive at once (attention scores are
    assumed tiled by SDPA, never materialised): the weights; the UNet's activations and skip
    connections at the latent grid ``h x w`` for ``G`` (2 with guidance) groups of ``F`` frames;
    the spatial-temporal attention's keys and values over all frames (queries and outputs per
    ``frame_chunk``); correspondence-guided attention's block of gathered keys and values
    (``token_chunk`` / ``frame_chunk``, else ``cove.attention.block_rows`` from the device);
    the plug-and-play store of Q, K (``pnp_steps`` steps; in the peak only where it lives on
    the device: not a CUDA edit's host store, one step when recomputed); the correspondence
    ``(F, N, F, K)``; the VAE decoder at full resolution (8 frames at a time).

    Returns:
        ``{"weights", "unet", "attention", "guided attention", "pnp store", "correspondence",
        "vae", "peak"}`` in bytes on the device.
    """
    unet, vae = pipe.unet, pipe.vae
    cfg = unet.config
    F, G = frames, (2 if config.guidance_scale > 1 else 1)
    b = next(unet.parameters()).element_size()
    f = pipe.vae_scale_factor
    n0 = (height // f) * (width // f)  # tokens of the finest latent grid
    chans = list(cfg.block_out_channels)
    levels = len(chans)
    cross = ["CrossAttn" in t for t in cfg.down_block_types]
    grids = [n0 // 4**level for level in range(levels)]  # tokens per level
    weights = sum(p.numel() * p.element_size()
                  for m in (unet, vae, pipe.text_encoder) for p in m.parameters())
    # skip connections of every level + a working set of ~6 tensors at the finest level
    skips = sum((cfg.layers_per_block + 1) * c * n for c, n in zip(chans, grids))
    unet_bytes = G * F * b * (skips + 6 * chans[0] * n0)
    attn_level = next((i for i, c in enumerate(cross) if c), 0)
    c_a, n_a = chans[attn_level], grids[attn_level]
    fc = F if config.attention == "per-frame" else (config.engine.frame_chunk or F)
    kv = 2 * F * n_a * c_a if config.attention != "per-frame" else 0
    attention = G * b * (3 * F * n_a * c_a + kv + 2 * fc * n_a * c_a)
    guided = corr = 0
    if config.attention == "cove" and F > 1:
        from .attention import block_rows, free_memory, row_bytes

        T, heads = (F - 1) * config.k, cfg.attention_head_dim  # diffusers: the number of heads
        heads = heads[attn_level] if isinstance(heads, (list, tuple)) else heads
        per_query = row_bytes(T, c_a, heads, b)  # gathered keys, values and products of one query
        chunks = (config.engine.frame_chunk, config.engine.token_chunk)
        rows = (block_rows(F, n_a, T, free=free_memory(unet.device), row_bytes=per_query)
                if chunks == (None, None) else min(chunks[0] or F, F) * min(chunks[1] or n_a, n_a))
        guided = rows * per_query  # one block of queries at a time (cove.attention)
        corr = F * n_a * F * config.k * (8 + 4) + min(2**26, F * n_a * 81 * c_a) * 4
    per_step = _pnp_step_bytes(pipe, frames, height, width)
    pnp = min(config.pnp_steps, config.denoise_steps) * per_step
    store = _pnp_store(pipe, pnp, config)
    on_device = (0 if store == "host" and unet.device.type == "cuda"  # the store sits in host memory
                 else min(per_step, pnp) if store == "recompute" else pnp)
    vae_c = getattr(vae.config, "block_out_channels", [128])[0]
    vae_b = next((p.element_size() for p in vae.parameters()), b)
    vae_bytes = 4 * min(F, 8) * vae_c * height * width * vae_b
    parts = {"weights": weights, "unet": unet_bytes, "attention": attention,
             "guided attention": guided, "pnp store": on_device, "correspondence": corr, "vae": vae_bytes}
    parts["peak"] = weights + on_device + corr + max(unet_bytes + attention + guided, vae_bytes)
    return {k: int(v) for k, v in parts.items()}


def _pnp_step_bytes(pipe, frames: int, height: int, width: int) -> int:
    """Bytes PnP saves per injected step: Q and K of the decoder's self-attentions from its
    second block on."""
    cfg = pipe.unet.config
    b = next(pipe.unet.parameters()).element_size()
    n0 = (height // pipe.vae_scale_factor) * (width // pipe.vae_scale_factor)
    chans, levels = list(cfg.block_out_channels), len(cfg.block_out_channels)
    up_chans, up_grids = chans[::-1], [n0 // 4**level for level in range(levels)][::-1]
    up_cross = ["CrossAttn" in t for t in cfg.up_block_types]
    return sum((cfg.layers_per_block + 1) * 2 * frames * up_grids[i] * up_chans[i] * b
               for i in range(1, levels) if up_cross[i])


def _pnp_store(pipe, store_bytes: int, config) -> str:
    from .attention import free_memory

    store = config.engine.pnp_store
    if store != "auto":
        return store
    free = free_memory(pipe.unet.device)  # None off CUDA
    return "device" if free is not None and store_bytes <= free // 4 else "host"


def pnp_store_for(pipe, frames: int, height: int, width: int, config) -> str:
    """Where an edit keeps PnP's saved features: ``config.engine.pnp_store``, with ``"auto"``
    made ``"device"`` on CUDA when the whole store (Q and K of ``pnp_steps`` steps) fits in a
    quarter of the device's free memory (``torch.cuda.mem_get_info``), else ``"host"``
    (on the CPU both are the same memory)."""
    steps = min(config.pnp_steps, config.denoise_steps)
    return _pnp_store(pipe, steps * _pnp_step_bytes(pipe, frames, height, width), config)


def check_fits(pipe, frames: int, height: int, width: int, config, *, budget: int | None = None) -> dict:
    """Refuse (one-line ValueError) an edit over :data:`PIXEL_BUDGET` pixels or whose estimated
    peak memory (:func:`estimate_edit_memory`) exceeds the device's memory (or ``budget``
    bytes). Returns the estimate."""
    pixels = frames * height * width
    knobs = "reduce --size or --frames"
    if pixels > PIXEL_BUDGET:
        raise ValueError(f"{frames} frames of {height}x{width} are {pixels:,} pixels, over the budget "
                         f"of {PIXEL_BUDGET:,}; {knobs}")
    estimate = estimate_edit_memory(pipe, frames, height, width, config)
    device = next(pipe.unet.parameters()).device
    limit = device_memory(device) if budget is None else budget
    if estimate["peak"] > limit:
        parts = ", ".join(f"{k} {format_bytes(v)}" for k, v in estimate.items()
                          if k != "peak" and v > 0.1 * estimate["peak"])
        raise ValueError(
            f"this edit needs about {format_bytes(estimate['peak'])} on {device} ({parts}) but it has "
            f"{format_bytes(limit)}; {knobs}, or lower frame_chunk / token_chunk, pnp_steps, "
            "or use --attention per-frame, float16 or a larger device"
        )
    return estimate
