"""One frozen configuration for the whole method; variants via ``dataclasses.replace``.

Every default cites the part of the paper (``shared/PAPER.md`` restates it) it comes from.
"""
from __future__ import annotations

from dataclasses import dataclass, fields

ATTENTION_MODES = ("cove", "spatiotemporal", "per-frame")
PNP_STORES = ("host", "device", "recompute")
CORRESPONDENCE_SOURCES = ("diffusion", "flow")


@dataclass(frozen=True)
class CoveConfig:
    """Settings of a COVE edit.

    Important args:
        attention: ``"cove"`` (spatial-temporal attention + correspondence-guided attention),
            ``"spatiotemporal"`` (the paper's "w/o CGA" row of Table 2) or ``"per-frame"``
            (plain image editing of each frame: the baseline).
        k: matches kept per other frame (Table 2: K = 3 is the default).
        window: side l of the sliding window (Sec. 3.2: l = 9).
        merge_ratio: temporal token merging ratio (Sec. 3.3: 50%); 0 (the default) disables
            merging: at CGA's sizes it costs time and saves no memory (docs/method/merging.md).

    Args to tinker with:
        inversion_steps / denoise_steps: DDIM steps (Sec. 4.1: 100 inversion, 50 denoising).
        pnp_steps: plug-and-play injection during the first ``pnp_steps`` denoising steps
            (FLATTEN-style reading of Sec. 4.1: 40 of 50); more than ``denoise_steps`` means all.
        strength: fraction of the denoising schedule that is run, as in diffusers' img2img
            (SDEdit): 1.0 (the paper) inverts to the noisiest timestep and denoises all
            ``denoise_steps``; 0.6 inverts only to the timestep 60% of the way and runs the last
            60% of the steps, which keeps more of the source (layout, background).
        guidance_scale: classifier-free guidance (not stated; prior code uses 7.5 to 20).
        feature_t / feature_layer / feature_prompt / feature_ensemble: stage 1 (Sec. 3.1:
            t = 261; layer ``None`` = the decoder block whose output grid equals the
            highest-resolution self-attention grid, ``up_blocks.3`` on SD 2.1).
        correspondence: ``"diffusion"`` (COVE) or ``"flow"`` (OpenCV optical flow, K = 1,
            the comparison of Fig. 1).
        pnp_resnets / pnp_attentions: module names whose ResNet outputs / self-attention
            Q, K are injected; ``None`` = PnP's choice (``up_blocks.1.resnets.1``; every
            self-attention of ``up_blocks[1:]``); ``()`` = none.
        pnp_resnet_max_t: the ResNet outputs are injected only at denoising timesteps below
            this (``None``: at every PnP step, as PnP); the Q, K injection is not affected.
            Where a model's ResNet features carry colour (cove-tiny, in pixel space),
            injecting them at the noisy steps, where colour is decided, holds the source
            colour; injecting them late lets a far colour change land (and can overshoot a
            near one: docs/method/tiny.md).
        frame_chunk: spatial-temporal attention and CGA process this many query frames at
            once (bounds memory on long clips); ``None`` = all frames (CGA bounds itself).
        token_chunk: correspondence-guided attention processes this many tokens at once
            (``None``: blocks about the size of the layer's keys, ``cove.attention.block_rows``).
        pnp_store: where PnP's saved features live between inversion and denoising:
            ``"host"`` (CPU memory, the default), ``"device"``, or ``"recompute"`` (recomputed
            from the inverted latents at each PnP step, as PnP's reference code does: one more
            UNet pass per PnP step, no store that grows with the steps).
        mask_threshold: ``None`` (the paper) regenerates whole frames; a number in (0, 1) keeps
            the source outside an edit mask (``cove.extras.masking``, DiffEdit): cells where the
            source and target prompts' noise predictions differ by more than this share of
            the frame's largest difference, grown by ``mask_dilate`` cells. Needs a source
            prompt that describes the input and differs from the prompt.
        mask_fill_holes: also take into the mask the cells it encloses (``cove.extras.masking.fill_holes``):
            inside a flat object the prompts can differ too little, and a ring-shaped mask
            would keep the source's colour in its middle.
        mask_t / mask_samples: the timestep the mask's noise predictions are made at, and how
            many noises they are averaged over.
        p2p_steps: prompt-to-prompt's word swap (``cove.extras.p2p``; not in the paper): during the
            first ``p2p_steps`` denoising steps every word of the prompt takes the
            cross-attention map its counterpart in the source prompt had while inverting, so a
            swapped word ("red" -> "green") lands on the object the old word named. 0 (the
            paper) leaves cross-attention alone; needs a source prompt.
    """

    # Setting (Sec. 4.1)
    attention: str = "cove"
    inversion_steps: int = 100
    denoise_steps: int = 50
    pnp_steps: int = 40
    guidance_scale: float = 7.5
    strength: float = 1.0
    # Stage 1: diffusion features (Sec. 3.1)
    feature_t: int = 261
    feature_layer: str | None = None
    feature_prompt: str = ""
    feature_ensemble: int = 1
    # Stages 2-3: sliding-window correspondence (Sec. 3.2)
    correspondence: str = "diffusion"
    window: int = 9
    k: int = 3
    # Stage 5: temporal token merging (Sec. 3.3)
    merge_ratio: float = 0.0
    # Engine knobs (not in the paper)
    pnp_resnets: tuple[str, ...] | None = None
    pnp_attentions: tuple[str, ...] | None = None
    pnp_resnet_max_t: int | None = None
    frame_chunk: int | None = None
    token_chunk: int | None = None
    pnp_store: str = "host"
    # Edit mask and latent blending (DiffEdit; not in the paper)
    mask_threshold: float | None = None
    mask_t: int = 400
    mask_samples: int = 4
    mask_dilate: int = 1
    mask_fill_holes: bool = False
    # Prompt-to-prompt word swap (Hertz et al. 2023; not in the paper)
    p2p_steps: int = 0

    def __post_init__(self) -> None:
        if self.attention not in ATTENTION_MODES:
            raise ValueError(f"attention must be one of {ATTENTION_MODES}, got {self.attention!r}")
        if self.pnp_store not in PNP_STORES:
            raise ValueError(f"pnp_store must be one of {PNP_STORES}, got {self.pnp_store!r}")
        if self.correspondence not in CORRESPONDENCE_SOURCES:
            raise ValueError(
                f"correspondence must be one of {CORRESPONDENCE_SOURCES}, got {self.correspondence!r}"
            )
        for name in ("inversion_steps", "denoise_steps", "window", "k", "feature_ensemble"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("pnp_steps", "p2p_steps"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 < self.strength <= 1.0:
            raise ValueError(f"strength must lie in (0, 1], got {self.strength}")
        if not 0.0 <= self.merge_ratio <= 1.0:
            raise ValueError(f"merge_ratio must lie in [0, 1], got {self.merge_ratio}")
        if self.window % 2 == 0:
            raise ValueError(f"window must be odd so that it has a centre, got {self.window}")
        if not 0 <= self.feature_t < 1000:
            raise ValueError(f"feature_t must lie in 0..999, got {self.feature_t}")
        if self.mask_threshold is not None and not 0.0 < self.mask_threshold < 1.0:
            raise ValueError(f"mask_threshold must be None or lie in (0, 1), got {self.mask_threshold}")
        if self.pnp_resnet_max_t is not None and not 0 < self.pnp_resnet_max_t <= 1000:
            raise ValueError(f"pnp_resnet_max_t must be None or lie in 1..1000, got {self.pnp_resnet_max_t}")
        if not 0 <= self.mask_t < 1000:
            raise ValueError(f"mask_t must lie in 0..999, got {self.mask_t}")
        if self.mask_samples < 1 or self.mask_dilate < 0:
            raise ValueError(f"mask_samples must be >= 1 and mask_dilate >= 0, "
                             f"got {self.mask_samples} and {self.mask_dilate}")
        for name in ("frame_chunk", "token_chunk"):
            value = getattr(self, name)
            if value is not None and value < 1:
                raise ValueError(f"{name} must be None or >= 1, got {value}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}
