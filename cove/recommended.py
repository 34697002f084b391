"""A model's recommended settings: the ``cove_settings.json`` its folder holds.

The settings that edit well differ from model to model (cove-tiny edits with the last half of a
25-step schedule and reads its features at t = 50, where the paper's are for Stable Diffusion:
the whole 50-step schedule, t = 261). A model folder in diffusers format may carry its own,
measured on validation edits::

    {
      "config": {"feature_t": 50, "feature_layer": "up_blocks.0", "extras.strength": 0.5},
      "negative": "source",
      "chosen_by": "python -m cove.tiny.settings ..."
    }

``config`` holds overrides of ``CoveConfig()`` (flat keys, as job lists write them:
``cove.config.config_from_overrides``); ``negative`` is the negative-prompt policy
(:data:`NEGATIVES`); ``chosen_by`` says how they were measured. A model without the file
(a hub id, a folder without it) has the paper's settings and the empty negative prompt.

cove-tiny's file ships with its weights, so a new model ships with its own settings:
``cove.tiny.presets.edit_config`` is ``recommended_config("cove-tiny")``. What starts from a
model's file: ``cove edit`` and ``cove correspond --settings model``, job lists with
``settings: model``, ``python -m cove.tiny.quality --settings model`` and the feature explorer.
``python -m cove.tiny.settings --write`` measures and writes one.
"""
from __future__ import annotations

import functools
import json
from dataclasses import dataclass, replace
from pathlib import Path

from .config import CoveConfig, config_from_overrides, overrides_of

SETTINGS_FILE = "cove_settings.json"
# The negative prompt an edit takes: "source" (the source prompt, so that guidance pulls along
# "target minus source") or "empty" (plain classifier-free guidance).
NEGATIVES = ("source", "empty")
PAPER = "the paper's (no cove_settings.json)"


@dataclass(frozen=True)
class ModelSettings:
    """A model's recommended settings: ``config``, the negative-prompt policy ``negative``,
    how they were chosen, and the file they came from (``None``: the paper's)."""

    config: CoveConfig
    negative: str
    chosen_by: str
    path: Path | None = None

    def describe(self) -> str:
        """The settings in one line of words, e.g. "50 inversion steps, the last 20 of 25
        denoising steps (strength 0.8), PnP injection in the first 12 of them, ...": what a
        notebook prints instead of quoting numbers that a new ``--write`` would change."""
        c, x = self.config, self.config.extras
        run = c.denoise_steps_run
        steps = (f"the last {run} of {c.denoise_steps} denoising steps (strength {x.strength:g})"
                 if run < c.denoise_steps else f"{c.denoise_steps} denoising steps")
        pnp, swap = min(c.pnp_steps, run), min(x.p2p_steps, run)
        injection = ("no PnP injection" if pnp == 0 else
                     f"PnP injection in {'every step' if pnp == run else f'the first {pnp} of them'}")
        if pnp and x.pnp_resnet_max_t is not None:
            injection += f" (its ResNet features only below t = {x.pnp_resnet_max_t})"
        words = ("no word swap" if swap == 0 else
                 f"prompt-to-prompt's word swap in {'every step' if swap == run else f'the first {swap} steps'}")
        mask = "no edit mask" if x.mask_threshold is None else f"an edit mask at threshold {x.mask_threshold:g}"
        if x.mask_threshold is not None:
            mask += (f" grown by {x.mask_dilate} cell{'s' if x.mask_dilate != 1 else ''}" if x.mask_dilate else ", not grown")
            mask += ", its holes filled" if x.mask_fill_holes else ""
        layer = c.feature_layer or "the default feature layer"
        return (f"{c.inversion_steps} inversion steps, {steps}, {injection}, {words}, guidance "
                f"{c.guidance_scale:g} against the {'empty' if self.negative == 'empty' else 'source'} prompt, "
                f"{mask}, correspondence from {layer} at t = {c.feature_t}")


def paper_settings() -> ModelSettings:
    """The paper's settings (``CoveConfig()``) and the empty negative prompt: what a model
    without a ``cove_settings.json`` has."""
    return ModelSettings(CoveConfig(), "empty", PAPER)


def negative_prompt(source_prompt: str, negative: str) -> str:
    """The negative prompt under the policy ``negative`` (:data:`NEGATIVES`): ``""`` for
    "empty", ``source_prompt`` for "source"."""
    if negative not in NEGATIVES:
        raise ValueError(f"negative: expected one of {', '.join(NEGATIVES)}, got {negative!r}")
    return source_prompt if negative == "source" else ""


def model_folder(model) -> Path | None:
    """The folder ``model`` loads from: ``"cove-tiny"``, a folder, or a loaded pipeline (the
    folder it came from); ``None`` for a hub id (its settings are the paper's)."""
    from .loading import TINY, TINY_PATH

    if not isinstance(model, (str, Path)):  # a pipeline
        model = getattr(getattr(model, "config", None), "_name_or_path", "") or ""
    if str(model) == TINY:
        return TINY_PATH
    path = Path(model)
    return path if str(model) and path.is_dir() else None


def read_settings(model) -> ModelSettings:
    """The recommended settings of ``model`` (a name, a folder or a pipeline): its folder's
    ``cove_settings.json``, else the paper's. A file that is not valid JSON, has unknown keys or
    a bad value is a one-line ValueError naming it."""
    folder = model_folder(model)
    path = None if folder is None else folder / SETTINGS_FILE
    if path is None or not path.is_file():
        return paper_settings()
    stat = path.stat()
    return _read(path, stat.st_mtime_ns, stat.st_size)  # read again when the file changes


@functools.lru_cache(maxsize=16)
def _read(path: Path, _mtime_ns: int, _size: int) -> ModelSettings:
    try:
        data = json.loads(path.read_text())
        if not isinstance(data, dict) or not isinstance(data.get("config", {}), dict):
            raise ValueError('expected {"config": {...}, "negative": ..., "chosen_by": ...}')
        unknown = sorted(set(data) - {"config", "negative", "chosen_by"})
        if unknown:
            raise ValueError(f"unknown keys {unknown}; expected config, negative, chosen_by")
        config = config_from_overrides(data.get("config", {}))
        negative = data.get("negative", "empty")
        negative_prompt("", negative)  # a policy it does not know
        return ModelSettings(config, negative, str(data.get("chosen_by", "")), path)
    except ValueError as error:  # json.JSONDecodeError is one
        raise ValueError(f"{path}: {str(error).splitlines()[0]}") from None


def recommended_config(model, **overrides) -> CoveConfig:
    """``read_settings(model).config`` with ``overrides`` applied (``dataclasses.replace``)."""
    return replace(read_settings(model).config, **overrides)


def write_settings(folder, config: CoveConfig, negative: str, chosen_by: str) -> Path:
    """Write ``folder/cove_settings.json``: ``config`` as overrides of ``CoveConfig()``, the
    negative-prompt policy and how they were chosen. Returns the file's path."""
    negative_prompt("", negative)
    folder = Path(folder)
    if not (folder / "model_index.json").is_file():
        raise ValueError(f"{folder} is not a diffusers pipeline folder (no model_index.json)")
    path = folder / SETTINGS_FILE
    data = {"config": overrides_of(config), "negative": negative, "chosen_by": chosen_by}
    path.write_text(json.dumps(data, indent=2) + "\n")
    return path
