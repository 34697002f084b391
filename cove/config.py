"""One frozen configuration for the whole method; variants via ``dataclasses.replace``.

``CoveConfig`` holds the paper's settings at top level, each default citing the part of the
paper (``shared/PAPER.md`` restates it) it comes from. Two labelled groups hold the rest:
``engine`` (:class:`EngineOptions`: where PnP injects, memory chunking) and ``extras``
(:class:`Extras`: options beyond the paper, all off by default)::

    CoveConfig(k=5)                                                  # a paper setting
    CoveConfig(extras=Extras(strength=0.5, p2p_steps=25))            # beyond the paper
    replace(config, extras=replace(config.extras, mask_threshold=0.4))
"""
from __future__ import annotations

import numbers
import types
import typing
from dataclasses import asdict, dataclass, field, fields, is_dataclass, replace

import numpy as np

ATTENTION_MODES = ("cove", "spatiotemporal", "per-frame")
PNP_STORES = ("auto", "host", "device", "recompute")
CORRESPONDENCE_SOURCES = ("diffusion", "flow")

# Allowed values of the settings, by field name: (test, what the message says it must be).
# A field keeps its limit wherever it is declared (checked by ``check_fields``); ``None`` is
# allowed exactly where the declared type allows it.
LIMITS = {
    "attention": (lambda v: v in ATTENTION_MODES, f"be one of {ATTENTION_MODES}"),
    "correspondence": (lambda v: v in CORRESPONDENCE_SOURCES, f"be one of {CORRESPONDENCE_SOURCES}"),
    "inversion_steps": (lambda v: v >= 1, "be >= 1"),
    "denoise_steps": (lambda v: v >= 1, "be >= 1"),
    "k": (lambda v: v >= 1, "be >= 1"),
    "feature_ensemble": (lambda v: v >= 1, "be >= 1"),
    "window": (lambda v: v >= 1 and v % 2 == 1, "be odd so that it has a centre (1, 3, 5, ...)"),
    "pnp_steps": (lambda v: v >= 0, "be >= 0"),
    "p2p_steps": (lambda v: v >= 0, "be >= 0"),
    "guidance_scale": (lambda v: 0 <= v < float("inf"), "be finite and >= 0"),
    "strength": (lambda v: 0.0 < v <= 1.0, "lie in (0, 1]"),
    "merge_ratio": (lambda v: 0.0 <= v <= 1.0, "lie in [0, 1]"),
    "pnp_store": (lambda v: v in PNP_STORES, f"be one of {PNP_STORES}"),
    "feature_t": (lambda v: 0 <= v < 1000, "lie in 0..999"),
    "mask_t": (lambda v: 0 <= v < 1000, "lie in 0..999"),
    "mask_threshold": (lambda v: 0.0 < v < 1.0, "be None or lie in (0, 1)"),
    "pnp_resnet_max_t": (lambda v: 0 < v <= 1000, "be None or lie in 1..1000"),
    "mask_samples": (lambda v: v >= 1, "be >= 1"),
    "mask_dilate": (lambda v: v >= 0, "be >= 0"),
    "frame_chunk": (lambda v: v >= 1, "be None or >= 1"),
    "token_chunk": (lambda v: v >= 1, "be None or >= 1"),
}


def _matches(value, kind) -> bool:
    """Whether ``value`` has the declared type ``kind`` (int, float, str, bool, ``X | None``,
    ``tuple[str, ...]``). bool is not an int here, and an int is a float."""
    origin = typing.get_origin(kind)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, k) for k in typing.get_args(kind))
    if kind is type(None):
        return value is None
    if origin is tuple:
        args = typing.get_args(kind)
        return isinstance(value, tuple) and all(_matches(v, args[0]) for v in value) \
            if len(args) == 2 and args[1] is Ellipsis else isinstance(value, tuple)
    if kind in (int, float):  # numpy scalars count; bool does not
        number = numbers.Integral if kind is int else numbers.Real
        return isinstance(value, number) and not isinstance(value, (bool, np.bool_))
    if isinstance(kind, type):
        return isinstance(value, kind)
    return True  # a type this check does not know: leave it to the code that uses it


def _type_name(kind) -> str:
    return getattr(kind, "__name__", None) or str(kind).replace("typing.", "")


def check_fields(config) -> None:
    """Check every field of a config dataclass against its declared type and :data:`LIMITS`;
    raise a one-line ValueError naming the first field that is wrong. Nested dataclasses
    check themselves."""
    hints = typing.get_type_hints(type(config))
    for f in fields(config):
        value, kind = getattr(config, f.name), hints.get(f.name)
        if is_dataclass(value):
            continue
        if kind is not None and not _matches(value, kind):
            raise ValueError(f"{f.name} must be {_type_name(kind)}, got {value!r} ({type(value).__name__})")
        test, text = LIMITS.get(f.name, (None, ""))
        if test is not None and value is not None and not test(value):
            raise ValueError(f"{f.name} must {text}, got {value!r}")


@dataclass(frozen=True)
class EngineOptions:
    """Engine knobs (not in the paper).

    pnp_resnets / pnp_attentions: module names whose ResNet outputs / self-attention Q, K are
        injected; ``None`` = PnP's choice (``up_blocks.1.resnets.1``; every self-attention of
        ``up_blocks[1:]``); ``()`` = none.
    frame_chunk: spatial-temporal attention and CGA process this many query frames at once
        (bounds memory on long clips; same result); ``None`` = all frames (CGA bounds itself).
    token_chunk: correspondence-guided attention processes this many tokens at once (same
        result); ``None``: blocks about the size of the layer's keys (``cove.attention.block_rows``).
    pnp_store: where PnP's saved features live between inversion and denoising: ``"host"`` (CPU
        memory), ``"device"``, ``"recompute"`` (recomputed from the inverted latents at each PnP
        step, as PnP's reference code does: one more UNet pass per PnP step, no store that grows
        with the steps), or ``"auto"`` (the default): ``"device"`` on a GPU where the store fits
        in a quarter of its free memory (no copies to and from the host), else ``"host"``
        (``cove.sd.pnp_store_for``).
    """

    pnp_resnets: tuple[str, ...] | None = None
    pnp_attentions: tuple[str, ...] | None = None
    frame_chunk: int | None = None
    token_chunk: int | None = None
    pnp_store: str = "auto"

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class Extras:
    """Options beyond the paper; the defaults switch every one of them off.

    strength: SDEdit (diffusers' img2img): the fraction of the denoising schedule that is run.
        1.0 (the paper) inverts to the noisiest timestep and denoises all ``denoise_steps``;
        0.6 inverts only to the timestep 60% of the way and runs the last 60% of the steps,
        which keeps more of the source (layout, background).
    pnp_resnet_max_t: PnP's ResNet outputs are injected only at denoising timesteps below this
        (``None``: at every PnP step, as PnP); the Q, K injection is not affected. Where a
        model's ResNet features carry colour (cove-tiny), late injection lets a far colour
        change land (docs/method/tiny.md).
    mask_threshold: ``None`` regenerates whole frames; a number in (0, 1) keeps the source
        outside an edit mask (``cove.extras.masking``, DiffEdit): cells where the source and
        target prompts' noise predictions differ by more than this share of the frame's
        largest difference, grown by ``mask_dilate`` cells. Needs a source prompt that
        describes the input and differs from the prompt.
    mask_fill_holes: also take into the mask the cells it encloses
        (``cove.extras.masking.fill_holes``).
    mask_t / mask_samples: the timestep the mask's noise predictions are made at, and how many
        noises they are averaged over.
    p2p_steps: prompt-to-prompt's word swap (``cove.extras.p2p``): during the first
        ``p2p_steps`` denoising steps every word of the prompt takes the cross-attention map
        its counterpart in the source prompt had while inverting; 0 leaves cross-attention
        alone. Needs a source prompt.
    """

    strength: float = 1.0
    pnp_resnet_max_t: int | None = None
    mask_threshold: float | None = None
    mask_t: int = 400
    mask_samples: int = 4
    mask_dilate: int = 1
    mask_fill_holes: bool = False
    p2p_steps: int = 0

    def __post_init__(self) -> None:
        check_fields(self)


@dataclass(frozen=True)
class CoveConfig:
    """Settings of a COVE edit: the paper's at top level, then ``engine`` and ``extras``.

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
            (FLATTEN-style reading of Sec. 4.1: 40 of 50); more than ``denoise_steps`` means
            all. :meth:`with_denoise_steps` keeps its share when the steps change.
        guidance_scale: classifier-free guidance (Sec. 4.1 does not state it; prior code uses
            7.5 to 20).
        feature_t / feature_layer / feature_prompt / feature_ensemble: stage 1 (Sec. 3.1:
            t = 261; layer ``None`` = the decoder block whose output grid equals the
            highest-resolution self-attention grid, ``up_blocks.3`` on SD 2.1).
        correspondence: ``"diffusion"`` (COVE) or ``"flow"`` (OpenCV optical flow, K = 1,
            the comparison of Fig. 1; ``cove.extras.flow``).
        engine: :class:`EngineOptions`, the engine's knobs.
        extras: :class:`Extras`, the options beyond the paper (all off by default).
    """

    # Setting (Sec. 4.1)
    attention: str = "cove"
    inversion_steps: int = 100
    denoise_steps: int = 50
    pnp_steps: int = 40
    guidance_scale: float = 7.5
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
    merge_ratio: float = 0.0  # the paper's 0.5 costs time on CPU: docs/method/merging.md
    # Not in the paper: the engine's knobs, and the options beyond the paper
    engine: EngineOptions = field(default_factory=EngineOptions)
    extras: Extras = field(default_factory=Extras)

    def __post_init__(self) -> None:
        if not isinstance(self.engine, EngineOptions):
            raise ValueError(f"engine must be a cove.config.EngineOptions, got {type(self.engine).__name__}")
        if not isinstance(self.extras, Extras):
            raise ValueError(f"extras must be a cove.config.Extras, got {type(self.extras).__name__}")
        check_fields(self)

    @property
    def denoise_steps_run(self) -> int:
        """How many of the ``denoise_steps`` an edit runs: the last ``max(1, round(strength *
        denoise_steps))`` (all of them at strength 1)."""
        return max(1, round(self.extras.strength * self.denoise_steps))

    def with_denoise_steps(self, steps: int) -> "CoveConfig":
        """This config with ``steps`` denoising steps and ``pnp_steps`` rescaled to the same
        share of the schedule (the paper's 40 of 50 -> 8 of 10), rounded, at most ``steps``."""
        if steps < 1:
            raise ValueError(f"denoise_steps must be >= 1, got {steps}")
        pnp = min(steps, round(self.pnp_steps * steps / self.denoise_steps))
        return replace(self, denoise_steps=steps, pnp_steps=pnp)

    def to_dict(self) -> dict:
        """The settings as a JSON-ready dict; ``engine`` and ``extras`` as nested dicts."""
        return asdict(self)


def config_from_overrides(overrides: dict, base: CoveConfig | None = None) -> CoveConfig:
    """``base`` (default ``CoveConfig()``) with flat overrides applied: ``{"k": 5,
    "engine.frame_chunk": 4, "extras.strength": 0.5}``. An unknown key or a bad value is a
    one-line ValueError (the validators')."""
    base = base or CoveConfig()
    groups = {"engine": base.engine, "extras": base.extras}
    top, part = {}, {group: {} for group in groups}
    for key, value in overrides.items():
        group, _, name = key.rpartition(".")
        owner = groups.get(group, base) if group else base
        if group not in ("", *groups) or name not in {f.name for f in fields(owner)} or is_dataclass(getattr(owner, name)):
            raise ValueError(f"unknown setting {key!r}: expected a CoveConfig field, engine.<field> or extras.<field>")
        (part[group] if group else top)[name] = tuple(value) if isinstance(value, list) else value
    return replace(base, **top, **{group: replace(groups[group], **part[group]) for group in groups})


def overrides_of(config: CoveConfig, base: CoveConfig | None = None) -> dict:
    """The flat overrides that turn ``base`` (default ``CoveConfig()``) into ``config``:
    ``config_from_overrides(overrides_of(c, b), b) == c``. Tuples come back as lists (JSON)."""
    base = base or CoveConfig()
    out = {}
    for f in fields(config):
        value, default = getattr(config, f.name), getattr(base, f.name)
        if is_dataclass(value):
            out.update({f"{f.name}.{k}": v for k, v in overrides_of(value, default).items()})
        elif value != default:
            out[f.name] = list(value) if isinstance(value, tuple) else value
    return out

