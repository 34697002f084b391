"""Choose cove-tiny's edit settings on validation edits: ``python -m cove.tiny.settings``.

Each candidate of ``CANDIDATES`` (a name and overrides of ``cove.tiny.presets.edit_config``)
edits the same validation edits (``cove.tiny.measures.edit_tasks`` from seed 1000: background
swaps and recolours, half under a camera pan; the quality gate's come from seed 0), scored by
``cove.tiny.measures.score_task``. The rule (``choose``): a candidate that turns any edit into
a static artifact is rejected; of the rest, the one whose edits land on the most frames wins,
then the lower median flicker against the true edit. Writes every candidate's mean and worst
figures, per edit, and the verdict as JSON (``--out``, default ``docs/edit_settings.json``).
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import math
import sys
import time
from pathlib import Path

from ..eval.bench import jsonable, machine_info
from .measures import edit_tasks, measure_edits
from .presets import EDIT_NEGATIVE, edit_config

VALIDATION_SEED = 1000  # the gate's edits come from seed 0

# name -> overrides of edit_config(): top-level fields, "extras" as a dict of Extras fields, and
# "negative" (a policy of presets.NEGATIVES; default presets.EDIT_NEGATIVE)
MASK = {"mask_threshold": 0.4, "mask_dilate": 0, "mask_fill_holes": True}
# "strength 0.8 set": strength 0.8, guidance 3 against the empty prompt, PnP's ResNet features
# only below t = 300 (the word swap as edit_config's); its variants change one thing
LATE = {"guidance_scale": 3.0, "negative": "empty", "extras": {"strength": 0.8, "pnp_resnet_max_t": 300}}


def _late(**changes) -> dict:
    """``LATE`` with ``changes`` (top-level fields, "negative", and "extras" merged into its extras)."""
    extras = {**LATE["extras"], **changes.pop("extras", {})}
    return {**LATE, **changes, "extras": extras}


CANDIDATES: dict[str, dict] = {
    "edit_config": {},
    # an export's own settings (cove-tiny-a, docs/edit_settings_cove_tiny_a.json)
    "guidance 7.5, no word swap": {"guidance_scale": 7.5, "extras": {"p2p_steps": 0}},
    "strength 0.8 set": _late(),
    "strength 0.8 set, guidance 1.5": _late(guidance_scale=1.5),
    "strength 0.8 set, guidance 4.5": _late(guidance_scale=4.5),
    "strength 0.8 set, strength 0.65": _late(extras={"strength": 0.65}),
    "strength 0.8 set, strength 1": _late(extras={"strength": 1.0}),
    "strength 0.8 set, ResNet at every t": _late(extras={"pnp_resnet_max_t": None}),
    "strength 0.8 set, ResNet below t = 200": _late(extras={"pnp_resnet_max_t": 200}),
    "strength 0.8 set, no word swap": _late(extras={"p2p_steps": 0}),
    "strength 0.8 set, edit mask": _late(extras=MASK),
    "strength 0.8 set, the source prompt as negative": _late(negative="source"),
}


def candidate_config(overrides: dict):
    """``edit_config`` with a candidate's overrides ({"extras": {...}} replaces Extras fields;
    "negative" is not a config field: ``candidate_negative``)."""
    base = edit_config()
    extras = dataclasses.replace(base.extras, **overrides.get("extras", {}))
    fields = {k: v for k, v in overrides.items() if k not in ("extras", "negative")}
    return dataclasses.replace(base, extras=extras, **fields)


def candidate_negative(overrides: dict) -> str:
    """A candidate's negative-prompt policy (``presets.NEGATIVES``)."""
    return overrides.get("negative", EDIT_NEGATIVE)


def choose(results: dict) -> dict:
    """The verdict over {name: ``measure_edits`` mode figures}: {"chosen": name or None,
    "rejected": {name: why}} (static artifacts reject; then most frames landed, lower median
    warp error against the true edit)."""
    rejected = {name: f"{r['static_edits']} static edit(s)" for name, r in results.items() if r["static_edits"]}
    kept = [name for name in results if name not in rejected]
    ranked = sorted(kept, key=lambda n: (-results[n]["landed"], _finite(results[n]["warp_to_truth"])))
    return {"chosen": ranked[0] if ranked else None, "ranking": ranked, "rejected": rejected}


def _finite(value: float) -> float:
    return math.inf if value is None or math.isnan(value) else value


def run(pipe, *, names=tuple(CANDIDATES), n: int = 12, frames: int = 8, attention: str = "per-frame",
        seed: int = VALIDATION_SEED, log=functools.partial(print, flush=True)) -> dict:
    """Edit the validation edits with every named candidate in one attention mode."""
    tasks = edit_tasks(n, seed, frames=frames)
    out: dict = {"machine": machine_info(pipe), "seed": seed, "edits": n, "frames": frames,
                 "attention": attention, "candidates": {}}
    for name in names:
        start = time.perf_counter()
        config = candidate_config(CANDIDATES[name])
        r = measure_edits(pipe, tasks, config=config, modes=(attention,), seed=0,
                          negative=candidate_negative(CANDIDATES[name]))
        row = {**r[attention], "config": r["config"], "negative": r["negative"],
               "truth_warp_error": r["truth_warp_error"],
               "edits": r["edits"]}
        out["candidates"][name] = row
        log(f"[settings] {name}: landed {row['landed']:.2f} (worst {row['worst_landed']:.2f}, edits landing "
            f"{row['landed_edits']:.2f}), warp/truth median {row['warp_to_truth']:.2f} (worst "
            f"{row['worst_warp_to_truth']:.2f}), static {row['static_edits']} "
            f"({time.perf_counter() - start:.0f} s)")
    out["verdict"] = choose(out["candidates"])
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cove.tiny.settings", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/edit_settings.json")
    parser.add_argument("--model", default="cove-tiny", help="cove-tiny or a folder of an export")
    parser.add_argument("--edits", type=int, default=12)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--attention", default="per-frame", choices=("per-frame", "spatiotemporal", "cove"))
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), default=list(CANDIDATES))
    args = parser.parse_args(argv)
    if args.edits < 12:
        parser.error(f"--edits: expected at least 12 validation edits, got {args.edits}")
    from ..loading import load_pipeline

    pipe = load_pipeline(args.model)
    result = run(pipe, names=tuple(args.only), n=args.edits, frames=args.frames, attention=args.attention)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(result, 4), indent=2) + "\n")
    print(f"chosen: {result['verdict']['chosen']}; wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
