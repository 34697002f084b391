"""The editing pipeline: correspondence, DDIM inversion, guided denoising (paper Sec. 3-4).

    # 1. check inputs            frames uint8 (F, H, W, 3), prompts, config
    # 2. correspondence          stages 1-3, once: Correspondence (F, N, F, K)
    # 3. encode                  latents (F, c, h, w)
    # 4. DDIM inversion          source prompt, no guidance, processors on, PnP features saved
    # 5. edit mask (optional)    source vs target noise predictions (DiffEdit): (F, h, w)
    # 6. denoising               target prompt, classifier-free guidance, processors on, PnP
    #                            injection during the first ``pnp_steps`` steps; with a mask,
    #                            the source's inverted latents put back outside it every step
    # 7. decode                  uint8 (F, H, W, 3)

Inversion runs ``inversion_steps`` (100) steps; denoising runs ``denoise_steps`` (50) and starts
from the inverted latent at the timestep nearest its first one (with DDIM's default
"leading" spacing the 50-step timesteps are a subset of the 100-step ones, so this is exact).
PnP features are saved at the inversion timestep nearest each denoising timestep.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field, replace

import numpy as np
import torch
from diffusers import DDIMScheduler

from .config import CoveConfig
from .correspondence import Correspondence, correspond, flow_correspondence
from .extras.masking import blend, edit_mask, mask_scores
from .extras.p2p import token_map
from .features import attention_grids_at, extract_features, feature_grid
from .processors import AttentionState, cove_attention, pnp_layers
from .sd import (
    check_fits,
    check_frames,
    check_prompts,
    check_size,
    decode_latents,
    encode_frames,
    encode_text,
    pnp_store_for,
)
from .window import fit_window


@dataclass
class EditResult:
    """What :func:`edit_video` returns.

    frames: uint8 (F, H, W, 3) edited clip; correspondence: (F, N, F, K) or None (per-frame,
    spatiotemporal); latents: inverted latents (F, c, h, w) the edit started from; timings:
    seconds per stage; config: the CoveConfig used; mask: the edit mask (F, h, w) of 0 / 1 on
    the latent grid, or None (``config.extras.mask_threshold`` unset).
    """

    frames: np.ndarray
    correspondence: Correspondence | None
    latents: torch.Tensor
    timings: dict[str, float]
    config: CoveConfig
    prompt: str = ""
    source_prompt: str = ""
    extras: dict = field(default_factory=dict)
    mask: torch.Tensor | None = None


def ddim_scheduler(pipe) -> DDIMScheduler:
    """A DDIM scheduler with the pipeline's noise schedule (COVE uses DDIM whatever the pipe has)."""
    return DDIMScheduler.from_config(pipe.scheduler.config)


def _alpha(scheduler: DDIMScheduler, t: int) -> torch.Tensor:
    return scheduler.alphas_cumprod[t] if t >= 0 else scheduler.final_alpha_cumprod


def _epsilon(scheduler, output, sample, t):
    """Model output -> predicted noise, for epsilon- and v-prediction models."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return output
    a = _alpha(scheduler, t).to(sample)
    if kind == "v_prediction":
        return a.sqrt() * output + (1 - a).sqrt() * sample
    raise ValueError(f"prediction_type {kind!r} is not supported (epsilon or v_prediction)")


def clean_latent(eps, sample, a):
    """The clean latent ``x0`` predicted from ``sample`` at noise level ``a`` (= abar_t) and its
    predicted noise (DDIM, Song et al. 2021, Eq. 12):

        x0 = (x_t - sqrt(1 - a) eps) / sqrt(a)
    """
    return (sample - (1 - a).sqrt() * eps) / a.sqrt()


def predicted_x0(scheduler, output, sample, t: int) -> torch.Tensor:
    """Model output (epsilon or v) at timestep ``t`` -> the predicted clean latent ``x0``."""
    a = _alpha(scheduler, t).to(sample.device, torch.float32)
    return clean_latent(_epsilon(scheduler, output, sample, t).float(), sample.float(), a).to(sample.dtype)


def ddim_invert_step(eps, sample, a_from, a_to):
    """One deterministic DDIM step from noise level a_from to a_to (Song et al. 2021, Eq. 12, eta=0).

        x0 = clean_latent(eps, x, a_from);   x' = sqrt(a_to) x0 + sqrt(1 - a_to) eps
    """
    return a_to.sqrt() * clean_latent(eps, sample, a_from) + (1 - a_to).sqrt() * eps


def guided_output(pipe, latents: torch.Tensor, t, text: torch.Tensor, guidance_scale: float) -> torch.Tensor:
    """The UNet's output at ``t`` with classifier-free guidance, ``out_u + s (out_c - out_u)``.

    Args:
        latents: (F, c, h, w).
        text: (G*F, L, D): G = 2, the unconditional then the conditional embeddings (guided),
            or G = 1, one embedding per frame (no guidance).

    Returns:
        (F, c, h, w).
    """
    groups = text.shape[0] // latents.shape[0]
    out = pipe.unet(torch.cat([latents] * groups), t, text).sample  # (G*F, c, h, w)
    if groups == 1:
        return out
    out_u, out_c = out.chunk(2)
    return out_u + guidance_scale * (out_c - out_u)


def _timesteps(scheduler: DDIMScheduler, steps: int) -> list[int]:
    scheduler.set_timesteps(steps)
    return [int(t) for t in scheduler.timesteps]  # descending


def denoise_timesteps(pipe, config: CoveConfig) -> list[int]:
    """The DDIM timesteps an edit denoises through, descending (50 steps: 981, 961, ..., 1).

    With ``config.extras.strength`` s < 1 only the last ``config.denoise_steps_run`` of them.
    """
    steps = _timesteps(ddim_scheduler(pipe), config.denoise_steps)
    return steps[len(steps) - config.denoise_steps_run:]


def inversion_timesteps(pipe, config: CoveConfig) -> list[int]:
    """The DDIM timesteps inversion walks, ascending (100 steps: 1, 11, ..., 981), up to the one
    nearest the first denoising timestep: further inversion would never be used."""
    steps = _timesteps(ddim_scheduler(pipe), config.inversion_steps)[::-1]
    return steps[:steps.index(_nearest(steps, denoise_timesteps(pipe, config)[0])) + 1]


def _nearest(values: list[int], t: int) -> int:
    return min(values, key=lambda v: (abs(v - t), v))


def _state(pipe, frames: int, config: CoveConfig, corr, source_prompt: str, prompt: str, *,
           size: tuple[int, int]) -> AttentionState:
    """The processors' state of an edit of ``frames`` frames of ``size`` (H, W) pixels."""
    engine, extras = config.engine, config.extras
    resnets, attentions = pnp_layers(pipe.unet, engine.pnp_resnets, engine.pnp_attentions)
    return AttentionState(
        token_map=token_map(pipe.tokenizer, source_prompt, prompt) if extras.p2p_steps else None,
        frames=frames, mode=config.attention, correspondence=corr, merge_ratio=config.merge_ratio,
        frame_chunk=engine.frame_chunk, token_chunk=engine.token_chunk,
        pnp_attentions=attentions if config.pnp_steps else frozenset(),
        pnp_resnets=resnets if config.pnp_steps else frozenset(), resnet_max_t=extras.pnp_resnet_max_t,
        pnp_store=pnp_store_for(pipe, frames, *size, config),
    )


@torch.no_grad()
def invert(pipe, latents: torch.Tensor, *, config: CoveConfig = CoveConfig(), prompt: str = "",
           state: AttentionState | None = None, callback=None) -> dict[int, torch.Tensor]:
    """DDIM inversion (no guidance): clean latents -> a trajectory of noisier latents.

    Args:
        latents: (F, c, h, w) clean latents (``cove.sd.encode_frames``).
        prompt: the inversion prompt (paper: empty).
        state: processors' state; if given, the UNet runs with :func:`cove_attention`, and PnP
            features (and, with ``state.token_map``, the prompt's cross-attention maps for
            ``config.extras.p2p_steps``) are saved at the inversion timesteps nearest the denoising ones.
        callback: called with {'phase': 'invert', 'i', 't', 'latents', 'denoised'} after each
            step; ``denoised`` is the clean latent (F, c, h, w) the step predicted.

    Returns:
        {timestep: latents (F, c, h, w)}: the inverted latent at each inversion timestep.
    """
    scheduler = ddim_scheduler(pipe)
    steps = inversion_timesteps(pipe, config)  # ascending: 1, 11, ..., 981
    chosen = denoise_timesteps(pipe, config)
    recompute = config.engine.pnp_store == "recompute"  # then denoise recomputes PnP's features
    wanted = {} if recompute else {_nearest(steps, t): t for t in chosen[:config.pnp_steps]}
    maps = state is not None and state.token_map is not None
    crossed = {_nearest(steps, t): t for t in chosen[:config.extras.p2p_steps]} if maps else {}
    ratio = scheduler.config.num_train_timesteps // config.inversion_steps
    f = latents.shape[0]
    cond = encode_text(pipe, [prompt]).expand(f, -1, -1)  # (F, L, D)
    state = state or AttentionState(frames=f, mode="per-frame")
    x, trajectory = latents, {}
    with cove_attention(pipe.unet, state):
        for i, t in enumerate(steps):
            state.phase = "save" if t in wanted else None
            state.cross_phase = "save" if t in crossed else None
            state.key = wanted.get(t, crossed.get(t))
            out = pipe.unet(x, t, cond).sample
            eps = _epsilon(scheduler, out, x, t).float()
            a_from = _alpha(scheduler, t - ratio).to(x.device, torch.float32)
            a_to = _alpha(scheduler, t).to(x.device, torch.float32)
            denoised = clean_latent(eps, x.float(), a_from)  # (F, c, h, w)
            x = ddim_invert_step(eps, x.float(), a_from, a_to).to(latents.dtype)
            trajectory[t] = x
            if callback is not None:
                callback({"phase": "invert", "i": i, "t": t, "latents": x,
                          "denoised": denoised.to(latents.dtype)})
    state.phase = state.cross_phase = state.key = None
    return trajectory


@torch.no_grad()
def denoise(pipe, latents: torch.Tensor, prompt_embeds: torch.Tensor,
            negative_embeds: torch.Tensor | None, *, config: CoveConfig = CoveConfig(),
            state: AttentionState | None = None, callback=None, mask: torch.Tensor | None = None,
            source: dict[int, torch.Tensor] | None = None,
            pnp_source: tuple[dict[int, torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """DDIM denoising with classifier-free guidance from noisy latents at the first timestep.

        eps = eps_u + s (eps_c - eps_u),    x_{t-1} = DDIM(eps, t, x_t)
        with a mask:  x_{t-1} <- m x_{t-1} + (1 - m) source[t-1]       (``cove.extras.masking.blend``)

    Args:
        latents: (F, c, h, w) at timestep ``denoise_timesteps(pipe, config)[0]``.
        prompt_embeds / negative_embeds: (F, L, D); ``negative_embeds=None`` disables guidance.
        state: processors' state; PnP injection during the first ``config.pnp_steps`` steps,
            the source's cross-attention maps (prompt-to-prompt) during the first
            ``config.extras.p2p_steps`` if ``state.token_map`` is set.
        callback: called with {'phase': 'denoise', 'i', 't', 'latents', 'denoised'} after each
            step; ``denoised`` is the clean latent (F, c, h, w) the step predicted (before
            any blending with the source).
        mask: (F, h, w) edit mask (``cove.extras.masking.edit_mask``); outside it the result is
            ``source``'s latent of the same timestep.
        source: {timestep: latents (F, c, h, w)}, the inversion trajectory (``invert``) plus
            the clean latents under key -1; needed with ``mask``.
        pnp_source: ``(trajectory with the clean latents under key -1, source prompt embeds
            (F, L, D))`` for ``config.engine.pnp_store == "recompute"``: before each PnP step the
            UNet reruns the inversion step nearest it, saving PnP's features for that step only.

    Returns:
        clean latents (F, c, h, w).
    """
    if mask is not None and source is None:
        raise ValueError("denoise: a mask needs the source trajectory to blend with (source=...)")
    scheduler = ddim_scheduler(pipe)
    scheduler.set_timesteps(config.denoise_steps, device=latents.device)
    timesteps = scheduler.timesteps[len(scheduler.timesteps) - len(denoise_timesteps(pipe, config)):]
    guided = negative_embeds is not None and config.guidance_scale > 1
    ratio = scheduler.config.num_train_timesteps // config.denoise_steps
    text = torch.cat([negative_embeds, prompt_embeds]) if guided else prompt_embeds  # (G*F, L, D)
    state = state or AttentionState(frames=latents.shape[0], mode="per-frame")
    if config.engine.pnp_store == "recompute" and config.pnp_steps and pnp_source is None:
        raise ValueError("denoise: pnp_store='recompute' needs the inversion (pnp_source=...)")
    x = latents
    with cove_attention(pipe.unet, state):
        for i, t in enumerate(timesteps):
            if config.engine.pnp_store == "recompute" and i < config.pnp_steps:
                _recompute_pnp(pipe, state, int(t), *pnp_source)
            state.phase = "inject" if i < config.pnp_steps else None
            state.cross_phase = "inject" if i < config.extras.p2p_steps else None
            state.key = int(t) if (state.phase or state.cross_phase) else None
            out = guided_output(pipe, x, t, text, config.guidance_scale)  # (F, c, h, w)
            if config.engine.pnp_store == "recompute":
                _drop(state.store, state.key)  # one step's features at a time
            step = scheduler.step(out, t, x, eta=0.0)
            x = step.prev_sample
            if mask is not None:
                x = blend(x, _source_latent(source, int(t) - ratio), mask)
            if callback is not None:
                callback({"phase": "denoise", "i": i, "t": int(t), "latents": x,
                          "denoised": step.pred_original_sample})
    state.phase = state.cross_phase = state.key = None
    return x


def _recompute_pnp(pipe, state: AttentionState, t: int, trajectory: dict[int, torch.Tensor],
                   embeds: torch.Tensor) -> None:
    """Save PnP's features for denoising timestep ``t`` by rerunning the inversion step nearest
    it: the UNet on that step's input latent (the previous trajectory entry; key -1 = clean)."""
    steps = sorted(k for k in trajectory if k >= 0)
    t_inv = _nearest(steps, t)
    earlier = [k for k in trajectory if k < t_inv]
    state.phase, state.cross_phase, state.key = "save", None, t
    pipe.unet(trajectory[max(earlier)], t_inv, embeds)


def _drop(store: dict, key) -> None:
    """Forget the PnP features (Q, K and ResNet outputs) saved for timestep ``key``."""
    for slot in [s for s in store if s[0] in ("attn", "resnet") and s[2] == key]:
        del store[slot]


def _source_latent(source: dict[int, torch.Tensor], t: int) -> torch.Tensor:
    """The source latent at timestep ``t``: the clean one (key -1) below 0, else the nearest."""
    if t < 0:
        return source[-1]
    return source[_nearest([k for k in source if k >= 0], t)]


def start_latents(pipe, trajectory: dict[int, torch.Tensor], config: CoveConfig) -> torch.Tensor:
    """The inverted latent at the inversion timestep nearest the first denoising timestep."""
    first = denoise_timesteps(pipe, config)[0]
    return trajectory[_nearest(list(trajectory), first)]


def compute_correspondence(pipe, frames, config: CoveConfig, generator=None) -> tuple[Correspondence, dict]:
    """Stages 1-3 (or optical flow) on the feature grid; returns it and its timings.

    The window is ``cove.window.fit_window(config.window, grid)``: it shrinks to a grid smaller
    than it."""
    timings = {}
    t0 = time.perf_counter()
    if config.correspondence == "flow":
        corr = flow_correspondence(frames, feature_grid(pipe, frames.shape[1:3], config.feature_layer))
        timings["correspondence"] = time.perf_counter() - t0
        return corr, timings
    feats = extract_features(pipe, frames, t=config.feature_t, layer=config.feature_layer,
                             prompt=config.feature_prompt, ensemble=config.feature_ensemble,
                             generator=generator)  # (F, C, H, W)
    timings["features"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    corr = correspond(feats, window=fit_window(config.window, feats.shape[-2:]), k=config.k)
    timings["correspondence"] = time.perf_counter() - t0
    return corr, timings


def check_correspondence(pipe, frames: np.ndarray, correspondence) -> None:
    """Raise a one-line ValueError unless ``correspondence`` is a :class:`Correspondence` of
    ``frames`` (F frames) on a grid where the UNet attends for their size
    (``cove.features.attention_grids_at``: CGA acts in the layers of that grid)."""
    if not isinstance(correspondence, Correspondence):
        raise ValueError(f"correspondence must be a cove.Correspondence, got {type(correspondence).__name__}")
    F = len(frames)
    grids = attention_grids_at(pipe, frames.shape[1:3])
    grid, shape = tuple(correspondence.grid), tuple(correspondence.index.shape)
    if grid not in grids:
        names = ", ".join(f"{h}x{w}" for h, w in grids)
        raise ValueError(f"correspondence: expected a grid where the UNet attends ({names}), got "
                         f"{grid[0]}x{grid[1]} (index {shape})")
    H, W = grid
    if len(shape) != 4 or shape[:3] != (F, H * W, F):
        raise ValueError(f"correspondence: expected index (F, N, F, K) = ({F}, {H * W}, {F}, K) on the "
                         f"grid {H}x{W}, got {shape}")


def edit_video(pipe, frames, prompt: str, *, source_prompt: str = "", negative_prompt: str = "",
               config: CoveConfig = CoveConfig(), callback=None,
               generator: torch.Generator | None = None, cache=None,
               correspondence: Correspondence | None = None) -> EditResult:
    """Edit a clip with a text prompt, consistently across frames (COVE).

    Important args:
        pipe: a Stable Diffusion pipeline (``cove.load_pipeline``).
        frames: uint8 (F, H, W, 3); H, W multiples of the VAE factor (64x64 for cove-tiny,
            512x512 for SD 2.1).
        prompt: the target prompt ("a green star on grass").
        source_prompt: prompt for inversion (paper: empty).
        negative_prompt: the unconditional side of classifier-free guidance (paper: empty).
            Passing the source prompt here guides along "target minus source" only, so what
            both prompts share (the background) is pulled nowhere.
        config: :class:`cove.CoveConfig` (``attention="cove" | "spatiotemporal" | "per-frame"``;
            ``extras.mask_threshold`` keeps the source outside an edit mask, see ``cove.extras.masking``).

    Args to tinker with:
        callback: called with {'phase', 'i', 't', 'latents', 'denoised'} after every step
            (``denoised``: the predicted clean latent, (F, c, h, w); decode it with
            ``cove.sd.decode_latents`` to see what the step aims at).
        generator: seeds the noise of the feature pass and of the edit mask (without one the
            mask's noise is seeded with 0; everything else is deterministic).
        cache: a :class:`cove.cache.Cache`: the correspondence and the inversion are loaded
            from it when this clip, model and settings were seen before, else computed and
            stored (``None``: always computed, nothing stored).
        correspondence: a precomputed :class:`Correspondence` on a grid where the UNet
            attends (``cove.features.attention_grids_at``; stages 1-3 give the grid of
            ``config.feature_layer``, ``cove.features.feature_grid``) used in place of them with
            ``attention="cove"``, e.g. the true motion of a ShapesWorld clip
            (``cove.tiny.measures.true_correspondence``): COVE with perfect matches.

    Returns:
        :class:`EditResult` with the edited frames, the correspondence, the inverted latents
        and per-stage timings.
    """
    # 1. check inputs
    frames = check_frames(frames)
    check_size(pipe, frames)
    if not isinstance(config, CoveConfig):
        raise ValueError(f"config must be a cove.CoveConfig, got {type(config).__name__}")
    extras = config.extras
    check_prompts(prompt, source_prompt, negative_prompt, mask=extras.mask_threshold is not None,
                  p2p=extras.p2p_steps > 0)
    check_fits(pipe, *frames.shape[:3], config)  # pixel budget and peak memory, before any work
    if correspondence is not None:
        check_correspondence(pipe, frames, correspondence)
    timings, t_start = {}, time.perf_counter()
    f = len(frames)
    # 2. correspondence (once)
    corr = None
    if config.attention == "cove" and f > 1 and correspondence is not None:
        corr = correspondence
    elif config.attention == "cove" and f > 1:
        stages = lambda: compute_correspondence(pipe, frames, config, generator)  # noqa: E731
        corr, t = stages() if cache is None else cache.correspondence(pipe, frames, config, generator, stages)
        timings.update(t)
    # 3. encode
    t0 = time.perf_counter()
    latents = encode_frames(pipe, frames)  # (F, c, h, w)
    timings["encode"] = time.perf_counter() - t0
    state = _state(pipe, f, config, corr, source_prompt, prompt, size=frames.shape[1:3])
    # 4. inversion (source prompt, no guidance), PnP features saved
    t0 = time.perf_counter()
    run = lambda: invert(pipe, latents, config=config, prompt=source_prompt, state=state,  # noqa: E731
                         callback=callback)
    trajectory = run() if cache is None else cache.inversion(pipe, frames, config, source_prompt, state, run)
    x_t = start_latents(pipe, trajectory, config)
    timings["inversion"] = time.perf_counter() - t0
    cond = encode_text(pipe, [prompt]).expand(f, -1, -1)  # (F, L, D)
    uncond = encode_text(pipe, [negative_prompt]).expand(f, -1, -1)  # (F, L, D)
    # 5. edit mask (optional): where the source and target prompts disagree
    mask = source = None
    if extras.mask_threshold is not None:
        t0 = time.perf_counter()
        noise = generator if generator is not None else torch.Generator("cpu").manual_seed(0)
        scores = mask_scores(pipe, latents, encode_text(pipe, [source_prompt]).expand(f, -1, -1), cond,
                             t=extras.mask_t, samples=extras.mask_samples, generator=noise)  # (F, h, w)
        mask = edit_mask(scores, threshold=extras.mask_threshold, dilate=extras.mask_dilate,
                         fill=extras.mask_fill_holes)
        source = {**trajectory, -1: latents}
        timings["mask"] = time.perf_counter() - t0
    # 6. denoising with guidance and PnP injection (and blending outside the mask)
    t0 = time.perf_counter()
    pnp_source = None
    if config.engine.pnp_store == "recompute" and config.pnp_steps:
        pnp_source = ({**trajectory, -1: latents}, encode_text(pipe, [source_prompt]).expand(f, -1, -1))
    x0 = denoise(pipe, x_t, cond, uncond, config=config, state=state, callback=callback,
                 mask=mask, source=source, pnp_source=pnp_source)
    timings["denoising"] = time.perf_counter() - t0
    # 7. decode
    t0 = time.perf_counter()
    out = decode_latents(pipe, x0)
    timings["decode"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    state.store.clear()
    return EditResult(frames=out, correspondence=corr, latents=x_t, timings=timings, config=config,
                      prompt=prompt, source_prompt=source_prompt,
                      extras={"calls": dict(state.calls), "negative_prompt": negative_prompt}, mask=mask)


def reconstruct(pipe, frames, *, prompt: str = "", config: CoveConfig = CoveConfig(),
                callback=None) -> np.ndarray:
    """DDIM inversion then reconstruction with the same prompt and no guidance (sanity check).

    Uses ``denoise_steps = inversion_steps`` so both walk the same timesteps. Returns uint8
    (F, H, W, 3) that should match ``frames`` closely (PSNR in ``cove.metrics.psnr``).
    """
    frames = check_frames(frames)
    config = replace(config, attention="per-frame", denoise_steps=config.inversion_steps,
                     pnp_steps=0, guidance_scale=1.0)
    latents = encode_frames(pipe, frames)
    trajectory = invert(pipe, latents, config=config, prompt=prompt, callback=callback)
    x_t = start_latents(pipe, trajectory, config)
    cond = encode_text(pipe, [prompt]).expand(len(frames), -1, -1)
    return decode_latents(pipe, denoise(pipe, x_t, cond, None, config=config, callback=callback))
