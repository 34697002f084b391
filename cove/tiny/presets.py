"""cove-tiny's recommended settings: what the demo, the notebooks and the quality gate use.

Chosen on validation seeds (prompts seed 7, clips seed 100), never on the gate's; the
comparison that chose them is in docs/method/tiny.md.
"""
from __future__ import annotations

from dataclasses import replace

# Text to image: 50 DDIM steps at guidance 3.
PROMPT_STEPS = 50
PROMPT_GUIDANCE = 3.0


def edit_negative_prompt(source_prompt: str) -> str:
    """The negative prompt cove-tiny edits with: the source prompt, so that guidance pulls
    along "target minus source" rather than "target minus empty"."""
    return source_prompt


def edit_config(**overrides):
    """The ``CoveConfig`` cove-tiny edits with, with ``overrides`` applied (``dataclasses.replace``).

    The last half of a 25-step schedule (strength 0.5) after 50 inversion steps, PnP injection
    and prompt-to-prompt's word swap in every step run, guidance 12 with the source prompt as
    the negative prompt (``edit_negative_prompt``), and the edit mask at threshold 0.4, not
    grown, holes filled.
    """
    from ..config import CoveConfig, Extras

    config = CoveConfig(inversion_steps=50, denoise_steps=25, pnp_steps=25, guidance_scale=12.0,
                        extras=Extras(strength=0.5, p2p_steps=25, mask_threshold=0.4, mask_dilate=0,
                                      mask_fill_holes=True))
    return replace(config, **overrides)
