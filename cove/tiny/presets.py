"""cove-tiny's recommended settings: what the demo, the notebooks and the quality gate use.

Chosen on validation seeds (prompts seed 7, clips seed 100), never on the gate's; the
comparison that chose them is in docs/method/tiny.md.
"""
from __future__ import annotations

from dataclasses import replace

# Text to image: 50 DDIM steps at guidance 3.
PROMPT_STEPS = 50
PROMPT_GUIDANCE = 3.0


# What cove-tiny's edits take as the negative prompt: "source" (the source prompt, so that
# guidance pulls along "target minus source") or "empty" (plain classifier-free guidance). At
# strength 0.8 "source" extrapolates a background swap past its target (sand -> stone goes on to
# black); "empty" lands more edits there but freezes one: docs/method/tiny.md.
NEGATIVES = ("source", "empty")
EDIT_NEGATIVE = "source"


def edit_negative_prompt(source_prompt: str, negative: str = EDIT_NEGATIVE) -> str:
    """The negative prompt cove-tiny edits with under the policy ``negative`` (``NEGATIVES``):
    "" for "empty", ``source_prompt`` for "source"."""
    if negative not in NEGATIVES:
        raise ValueError(f"negative: expected one of {', '.join(NEGATIVES)}, got {negative!r}")
    return source_prompt if negative == "source" else ""


def edit_config(**overrides):
    """The ``CoveConfig`` cove-tiny edits with, with ``overrides`` applied (``dataclasses.replace``).

    The last half of a 25-step schedule (strength 0.5) after 50 inversion steps, PnP injection
    and prompt-to-prompt's word swap in every step run, guidance 6 with the source prompt as
    the negative prompt (``edit_negative_prompt``), no edit mask. Chosen by
    ``python -m cove.tiny.settings`` on 12 validation edits (``docs/edit_settings.json``): the
    only candidate that froze none of them. Strength 0.8 at guidance 3 against the empty
    prompt lands more of them but draws one background (bricks) fixed to the image while the
    camera pans. Correspondence comes from ``up_blocks.0`` at t = 50:
    on 6 validation clips (seed 1000) its PCK within 4 px is 0.83 at t = 10, 25 and 50 (the
    largest t within 0.01 of the best is kept), 0.78 at 100 and 0.52 at SD's 261. The block is
    named rather than left to ``default_feature_layer``, which picks the last block on the
    finest attention grid: for a model with attention at 32x32 (training design ``a``) that is
    the block next to the output, whose PCK is below 0.3 at every t.
    """
    from ..config import CoveConfig, Extras

    config = CoveConfig(inversion_steps=50, denoise_steps=25, pnp_steps=25, guidance_scale=6.0, feature_t=50,
                        feature_layer="up_blocks.0",
                        extras=Extras(strength=0.5, p2p_steps=25, mask_threshold=None))
    return replace(config, **overrides)
