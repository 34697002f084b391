"""Choose cove-tiny's edit settings on validation edits: ``python -m cove.tiny.settings``.

Each candidate of ``CANDIDATES`` (a name and overrides of ``cove.tiny.presets.edit_config``)
edits the same validation edits (``cove.tiny.measures.edit_tasks`` from seed 1000: background
swaps and recolours, half under a camera pan; the quality gate's come from seed 0), scored by
``cove.tiny.measures.score_task``. The rule (``choose``): a candidate that turns any edit into
a static artifact (fixed to the image, or faint: ``cove.eval.metrics.motion_following``) is
rejected; of the rest, the one whose edits land on the most frames wins,
then the lower median flicker against the true edit. Writes every candidate's mean and worst
figures, per edit, and the verdict as JSON (``--out``, default ``docs/edit_settings.json``).

With ``--write``, the feature layer and t are measured first (``choose_features``: PCK within
4 px on validation clips, every decoder block and ``FEATURE_TS``), every candidate edits with
them, and the chosen settings go into the model folder's ``cove_settings.json``
(``cove.recommended``): what ``cove.tiny.presets.edit_config`` reads for cove-tiny, so a model
ships with the settings measured on it.

With ``--add-to RECORD`` only the candidates an earlier run's record lacks (or ``--only``'s) edit,
with the record's feature layer and t; they join the record and the verdict is chosen again
over all, so a new candidate costs minutes, not the hour of all of them.
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
from ..eval.metrics import MOTION_FOLLOWING_RULE
from .measures import edit_tasks, measure_edits, static_count
from .presets import edit_config, edit_negative

VALIDATION_SEED = 1000  # the gate's edits come from seed 0
FEATURE_CLIPS = 6  # validation clips (VALIDATION_SEED) the feature layer and t are measured on
FEATURE_TS = (10, 25, 50, 100, 261)
FEATURE_TOLERANCE = 0.01  # PCK within this of the best counts as the best

# name -> overrides of edit_config(): top-level fields, "extras" as a dict of Extras fields, and
# "negative" (a policy of presets.NEGATIVES; default presets.edit_negative())
MASK = {"mask_threshold": 0.4, "mask_dilate": 0, "mask_fill_holes": True}
# Every candidate but "edit_config" (the model's own settings, whatever they are) names all the
# fields the candidates vary, so a name means the same settings on every model and after every
# --write. "strength 0.5 set": strength 0.5, guidance 6 against the source prompt, PnP in every
# step run, ResNet features at every t, the word swap in every step (cove-tiny's settings until
# PnP for 12 steps was chosen). "strength 0.8 set": strength 0.8, guidance 3 against the empty
# prompt, PnP in every step run, its ResNet features only below t = 300. Their variants change
# one thing.
NO_MASK = {"mask_threshold": None, "mask_dilate": 1, "mask_fill_holes": False}
EARLY = {"guidance_scale": 6.0, "negative": "source", "pnp_steps": 25,
         "extras": {"strength": 0.5, "pnp_resnet_max_t": None, "p2p_steps": 25, **NO_MASK}}
LATE = {"guidance_scale": 3.0, "negative": "empty", "pnp_steps": 25,
        "extras": {"strength": 0.8, "pnp_resnet_max_t": 300, "p2p_steps": 25, **NO_MASK}}


def _variant(base: dict, **changes) -> dict:
    """``base`` with ``changes`` (top-level fields, "negative", and "extras" merged into its extras)."""
    extras = {**base["extras"], **changes.pop("extras", {})}
    return {**base, **changes, "extras": extras}


def _late(**changes) -> dict:
    """``LATE`` with ``changes``."""
    return _variant(LATE, **changes)


CANDIDATES: dict[str, dict] = {
    "edit_config": {},
    "strength 0.5 set": EARLY,
    # chosen for cove-tiny-a among the first 12 candidates (docs/edit_settings_cove_tiny_a.json holds it)
    "guidance 7.5, no word swap": _variant(EARLY, guidance_scale=7.5, extras={"p2p_steps": 0}),
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
    # PnP's features injected in the first n denoising steps run only (of the 20 that strength 0.8
    # runs; strength 0.5 runs 12, so PnP for 12 steps there is the strength 0.5 set)
    "strength 0.8 set, PnP for 12 steps": _late(pnp_steps=12),
    "strength 0.8 set, PnP for 6 steps": _late(pnp_steps=6),
    "strength 0.8 set, no PnP": _late(pnp_steps=0),
    # the two that leave different edits faint together: PnP for 12 steps draws the background
    # swaps, the mask keeps a recolour's background the source's
    "strength 0.8 set, PnP for 12 steps, edit mask": _late(pnp_steps=12, extras=MASK),
    "strength 0.8 set, PnP for 12 steps, edit mask grown 1 px": _late(pnp_steps=12, extras={**MASK, "mask_dilate": 1}),
}


def candidate_config(overrides: dict, base=None):
    """``base`` (default ``edit_config()``) with a candidate's overrides ({"extras": {...}}
    replaces Extras fields; "negative" is not a config field: ``candidate_negative``)."""
    base = base or edit_config()
    extras = dataclasses.replace(base.extras, **overrides.get("extras", {}))
    fields = {k: v for k, v in overrides.items() if k not in ("extras", "negative")}
    return dataclasses.replace(base, extras=extras, **fields)


def candidate_negative(overrides: dict) -> str:
    """A candidate's negative-prompt policy (``presets.NEGATIVES``)."""
    return overrides.get("negative") or edit_negative()


def describe_candidates(base=None) -> str:
    """Every candidate's name and its settings in words (``ModelSettings.describe``), one
    candidate a paragraph: what ``python -m cove.tiny.settings --list`` prints. ``base``
    (default ``edit_config()``) is what the overrides apply to."""
    from ..recommended import ModelSettings

    return "\n\n".join(
        f"{name}:\n  {ModelSettings(candidate_config(o, base), candidate_negative(o), name).describe()}"
        for name, o in CANDIDATES.items())


def choose(results: dict) -> dict:
    """The verdict over {name: ``measure_edits`` mode figures}: {"chosen": name or None,
    "rejected": {name: why}} (static artifacts reject; then most frames landed, lower median
    warp error against the true edit)."""
    rejected = {name: f"static edits: {static_count(r)}" for name, r in results.items() if r["static_edits"]}
    kept = [name for name in results if name not in rejected]
    ranked = sorted(kept, key=lambda n: (-results[n]["landed"], _finite(results[n]["warp_to_truth"])))
    return {"chosen": ranked[0] if ranked else None, "ranking": ranked, "rejected": rejected}


def choose_features(pck: dict, tolerance: float = FEATURE_TOLERANCE) -> dict:
    """The feature layer and t from ``measures.measure_feature_pck``'s result: of the (block,
    t) pairs whose PCK lies within ``tolerance`` of the best, the one with the largest t (then
    the higher PCK). Returns {"layer", "t", "pck", "best": [layer, t, PCK]}."""
    best = max(v for row in pck["pck"].values() for v in row.values())
    near = [(int(t), v, layer) for layer, row in pck["pck"].items() for t, v in row.items() if v >= best - tolerance]
    t, value, layer = max(near, key=lambda item: (item[0], item[1]))
    return {"layer": layer, "t": t, "pck": value, "best": pck["best"]}


def measure_features(pipe, *, n_clips: int = FEATURE_CLIPS, seed: int = VALIDATION_SEED, ts=FEATURE_TS,
                     frames: int = 8) -> dict:
    """PCK within 4 px per decoder block and t on validation clips, and ``choose_features``'
    choice: {"pck": ``measure_feature_pck``'s result, "chosen": ``choose_features``'}."""
    from .measures import measure_feature_pck

    pck = measure_feature_pck(pipe, n_clips, seed, frames=frames, ts=ts)
    return {"clips": n_clips, "seed": seed, "pck": pck, "chosen": choose_features(pck)}


def _finite(value: float) -> float:
    return math.inf if value is None or math.isnan(value) else value


def run(pipe, *, names=tuple(CANDIDATES), n: int = 12, frames: int = 8, attention: str = "per-frame",
        seed: int = VALIDATION_SEED, features: dict | None = None,
        log=functools.partial(print, flush=True)) -> dict:
    """Edit the validation edits with every named candidate in one attention mode; with
    ``features`` (``measure_features``' result) every candidate reads its chosen layer and t."""
    tasks = edit_tasks(n, seed, frames=frames)
    base = _base(features)
    names = distinct(names, base)
    out: dict = {"machine": machine_info(pipe), "seed": seed, "edits": n, "frames": frames,
                 "attention": attention, "static_rule": MOTION_FOLLOWING_RULE, "features": features,
                 "candidates": {}}
    for name in names:
        start = time.perf_counter()
        config = candidate_config(CANDIDATES[name], base)
        r = measure_edits(pipe, tasks, config=config, modes=(attention,), seed=0,
                          negative=candidate_negative(CANDIDATES[name]))
        row = {**r[attention], "config": r["config"], "negative": r["negative"],
               "truth_warp_error": r["truth_warp_error"],
               "edits": r["edits"]}
        out["candidates"][name] = row
        log(f"[settings] {name}: landed {row['landed']:.2f} (worst {row['worst_landed']:.2f}, edits landing "
            f"{row['landed_edits']:.2f}), warp/truth median {row['warp_to_truth']:.2f} (worst "
            f"{row['worst_warp_to_truth']:.2f}), static {static_count(row)} "
            f"({time.perf_counter() - start:.0f} s)")
    out["verdict"] = choose(out["candidates"])
    return out


def distinct(names, base=None) -> tuple:
    """``names`` without "edit_config" where another of them holds the same settings (config on
    ``base`` and negative): after a ``--write`` the model's settings are a named candidate, and
    the record names them so."""
    def settings(name):
        return candidate_config(CANDIDATES[name], base).to_dict(), candidate_negative(CANDIDATES[name])

    if "edit_config" in names and any(settings(n) == settings("edit_config") for n in names if n != "edit_config"):
        return tuple(n for n in names if n != "edit_config")
    return tuple(names)


def add_to(record: dict, result: dict) -> dict:
    """``record`` (an earlier ``run``'s result) with ``result``'s candidates added and the verdict
    chosen again over all; ``"added"`` lists each addition's candidates and machine. A one-line
    ValueError when the two differ in seed, edits, frames, attention, static rule (a record
    without one was judged by ``"pairs"``) or features, or share a candidate."""
    rules = {key: r.get("static_rule", "pairs") for key, r in (("record", record), ("result", result))}
    if rules["record"] != rules["result"]:
        raise ValueError(f"the record judged static edits by the rule {rules['record']!r}, this run by "
                         f"{rules['result']!r}; measure the record again")
    for key in ("seed", "edits", "frames", "attention", "features"):
        if record.get(key) != result.get(key):
            raise ValueError(f"the record's {key} ({record.get(key)!r:.60}) differ from this run's "
                             f"({result.get(key)!r:.60}); add only candidates measured alike")
    shared = sorted(set(record["candidates"]) & set(result["candidates"]))
    if shared:
        raise ValueError(f"the record already holds {', '.join(shared)}")
    out = {**record, "candidates": {**record["candidates"], **result["candidates"]},
           "added": [*record.get("added", []), {"candidates": list(result["candidates"]), "machine": result["machine"]}]}
    out["verdict"] = choose(out["candidates"])
    return out


def lacking(record: dict, base=None) -> tuple:
    """The candidates of ``CANDIDATES`` that ``record`` lacks ("edit_config" only when no
    candidate holds its settings)."""
    names = distinct(tuple(record["candidates"]) + tuple(n for n in CANDIDATES if n not in record["candidates"]), base)
    return tuple(n for n in names if n not in record["candidates"])


def _read_record(path: Path) -> dict:
    """An earlier run's JSON, or a one-line ValueError that says what was expected."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise ValueError(f"expected a record written by python -m cove.tiny.settings, got {path} ({error})") from None
    if not isinstance(record, dict) or not {"candidates", "seed", "edits", "frames", "attention"} <= set(record):
        raise ValueError(f"expected a record written by python -m cove.tiny.settings, got {path} (no candidates)")
    unknown = sorted(set(record["candidates"]) - set(CANDIDATES))
    if unknown:
        raise ValueError(f"{path} holds candidates the code no longer names: {', '.join(unknown)}")
    return record


def _base(features: dict | None):
    """``edit_config()``, reading the feature layer and t ``measure_features`` chose if given."""
    if features is None:
        return edit_config()
    return edit_config(feature_layer=features["chosen"]["layer"], feature_t=features["chosen"]["t"])


def chosen_settings(result: dict):
    """``(CoveConfig, negative policy, chosen_by)`` of ``run``'s verdict, for
    ``cove.recommended.write_settings``; a one-line ValueError when every candidate was rejected."""
    name = result["verdict"]["chosen"]
    if name is None:
        raise ValueError(f"every candidate was rejected ({'; '.join(f'{n}: {why}' for n, why in result['verdict']['rejected'].items())}); "
                         "nothing to write")
    row = result["candidates"][name]
    config = candidate_config(CANDIDATES[name], _base(result.get("features")))
    date = max(m.get("date", "") for m in [result["machine"], *(a["machine"] for a in result.get("added", []))])
    chosen_by = (f"python -m cove.tiny.settings --write ({date[:10]}): "
                 f"'{name}' of {len(result['candidates'])} candidates on {result['edits']} validation edits "
                 f"(seed {result['seed']}, {result['attention']}): frames landed {row['landed']:.2f}, median "
                 f"warp error {row['warp_to_truth']:.2f}x the true edit's, none static")
    features = result.get("features")
    if features:
        f = features["chosen"]
        chosen_by += (f"; features: PCK within 4 px {f['pck']:.2f} at {f['layer']}, t = {f['t']} on "
                      f"{features['clips']} validation clips (seed {features['seed']}; the largest t within "
                      f"{FEATURE_TOLERANCE} of the best, {f['best'][2]:.2f} at {f['best'][0]}, t = {f['best'][1]})")
    return config, row["negative"], chosen_by


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cove.tiny.settings", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/edit_settings.json", help="where to write the JSON figures")
    parser.add_argument("--model", default="cove-tiny", help="cove-tiny or a folder of an export")
    parser.add_argument("--edits", type=int, default=12, help="validation edits (at least 12)")
    parser.add_argument("--frames", type=int, default=8, help="frames a clip")
    parser.add_argument("--attention", default="per-frame", choices=("per-frame", "spatiotemporal", "cove"),
                        help="the edits' attention mode")
    parser.add_argument("--only", nargs="+", choices=list(CANDIDATES), metavar="NAME",
                        help="candidates to measure, by name (--list prints them; default: all, or with "
                             "--add-to those the record lacks)")
    parser.add_argument("--add-to", type=Path, metavar="RECORD",
                        help="an earlier run's JSON (same edits, frames and attention): measure only candidates "
                             "it lacks, add them and choose again over all (--write reuses its feature layer and t)")
    parser.add_argument("--list", action="store_true", help="print every candidate's name and settings, and exit")
    parser.add_argument("--write", action="store_true",
                        help="measure the feature layer and t first, and write the chosen settings into the "
                             "model folder's cove_settings.json")
    args = parser.parse_args(argv)
    if args.list:
        print(describe_candidates())
        return 0
    if args.edits < 12:
        parser.error(f"--edits: expected at least 12 validation edits, got {args.edits}")
    from ..loading import check_model, load_pipeline
    from ..recommended import write_settings

    folder = Path(check_model(args.model))
    if args.write and not folder.is_dir():
        parser.error(f"--write: expected a model folder to write into, got {args.model}")
    names, record = tuple(args.only or CANDIDATES), None
    if args.add_to:
        try:
            record = _read_record(args.add_to)
        except ValueError as error:
            parser.error(f"--add-to: {error}")
        asked = {"edits": args.edits, "frames": args.frames, "attention": args.attention}
        differ = [f"{k} {record[k]} (asked {v})" for k, v in asked.items() if record[k] != v]
        if differ:
            parser.error(f"--add-to: the record was measured with {', '.join(differ)}")
        if args.write and not record.get("features"):
            parser.error("--add-to with --write: expected a record written with --write (it holds no feature layer and t)")
        measured = sorted(set(names) & set(record["candidates"]))
        if args.only and measured:
            parser.error(f"--add-to: the record already holds {', '.join(measured)}")
        names = names if args.only else lacking(record, _base(record.get("features")))
        if not names:
            parser.error("--add-to: the record holds every candidate; nothing to measure")
    pipe = load_pipeline(args.model)
    if record is not None:
        features = record.get("features")
    else:
        features = measure_features(pipe, frames=args.frames) if args.write else None
    result = run(pipe, names=names, n=args.edits, frames=args.frames, attention=args.attention,
                 features=features)
    if record is not None:
        result = add_to(record, result)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(result, 4), indent=2) + "\n")
    print(f"chosen: {result['verdict']['chosen']}; wrote {out}")
    if args.write:
        try:
            chosen = chosen_settings(result)
        except ValueError as error:
            parser.exit(2, f"{parser.prog}: error: {error}\n")
        print(f"wrote {write_settings(folder, *chosen)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
