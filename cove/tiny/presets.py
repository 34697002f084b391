"""cove-tiny's recommended settings: what the demo, the notebooks and the quality gate use.

Chosen on validation seeds (prompts seed 7, clips seed 100; edits seed 1000), never on the
gate's; the comparison that chose them is in docs/method/tiny.md. The edit settings live in the
weights folder's ``cove_settings.json`` (``cove.recommended``), so they ship with the weights.
"""
from __future__ import annotations

from dataclasses import replace

from ..recommended import NEGATIVES, negative_prompt  # noqa: F401  (NEGATIVES: the policies)

# Text to image: 50 DDIM steps at guidance 3.
PROMPT_STEPS = 50
PROMPT_GUIDANCE = 3.0


def tiny_settings():
    """cove-tiny's recommended settings (``cove.recommended.ModelSettings``): the
    ``cove_settings.json`` that ships with its weights. A one-line FileNotFoundError when the
    weights folder lacks it."""
    from ..loading import TINY_PATH
    from ..recommended import SETTINGS_FILE, read_settings

    settings = read_settings(TINY_PATH)
    if settings.path is None:
        raise FileNotFoundError(f"cove-tiny's settings are missing: expected {TINY_PATH / SETTINGS_FILE} "
                                "(`python -m cove.tiny.settings --write FOLDER` writes one)")
    return settings


def edit_negative() -> str:
    """The negative-prompt policy cove-tiny edits with (``cove.recommended.NEGATIVES``); the
    shipped one is "empty", the empty prompt. "source" (the source prompt) makes guidance pull
    along "target minus source": at strength 0.5 that keeps the background, at strength 0.8 it
    extrapolates a background swap past its target (sand -> stone goes on to black):
    docs/method/tiny.md."""
    return tiny_settings().negative


def edit_negative_prompt(source_prompt: str, negative: str | None = None) -> str:
    """The negative prompt cove-tiny edits with under the policy ``negative``
    (``cove.recommended.NEGATIVES``; default :func:`edit_negative`): "" for "empty",
    ``source_prompt`` for "source"."""
    return negative_prompt(source_prompt, edit_negative() if negative is None else negative)


def edit_config(**overrides):
    """The ``CoveConfig`` cove-tiny edits with (its weights' ``cove_settings.json``), with
    ``overrides`` applied (``dataclasses.replace``).

    Chosen by ``python -m cove.tiny.settings`` on 12 validation edits (``docs/edit_settings.json``;
    ``tiny_settings().chosen_by`` says how); the shipped ones ("strength 0.8 set, PnP for 12
    steps, edit mask grown 1 px"): the last 20 steps of a 25-step schedule (strength 0.8) after
    50 inversion steps, PnP injection in the first 12 of them (t = 761 ... 321; its ResNet
    features only below t = 300, so only attention's queries and keys are injected),
    prompt-to-prompt's word swap in every step, guidance 3 against the empty negative prompt,
    an edit mask (``cove.extras.masking``: threshold 0.4, grown by 1 pixel, its holes filled),
    and correspondence from ``up_blocks.0`` at t = 50. The feature block is
    measured and named rather than left to ``default_feature_layer``, which picks the last
    block on the finest attention grid: for a model with attention at 32x32 (training design
    ``a``) that is the block next to the output, whose PCK is below 0.3 at every t.
    """
    return replace(tiny_settings().config, **overrides)
