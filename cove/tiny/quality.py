"""Quality gate of the embedded model ``cove-tiny`` on ShapesWorld.

Run ``python -m cove.tiny.quality [--model DIR] [--settings NAME] [--out docs/quality.json] [--quick]``: it runs
the measurements of ``cove.tiny.measures``, prints a table and writes the figures, the gates,
the probes and the machine they were measured on as JSON. The gates (``GATES``):

1. edits land: on the gate's background swaps and recolours (``measures.edit_tasks``, seed 0,
   half under a camera pan), COVE's target is read on >= 90% of the frames of >= 90% of the
   edits; text-to-image draws the asked colour, shape and background >= 90% of the time;
2. edits are steady: COVE's warp error <= 1.5x the true edited clip's (median over edits),
   and no edit is a static artifact, fixed to the image or faint (``cove.metrics.motion_following``);
3. COVE's claims: diffusion PCK within 4 px >= 0.85 at the model's feature layer and t;
   COVE's warp error <= 0.8x spatial-temporal attention's, which is <= per-frame editing's;
4. no regression: DDIM inversion + reconstruction >= 30 dB.

Probes without a gate: shape retention under SDEdit, PCK per decoder block and t, attention
entropy per grid, CGA's change, the clip gain (and with one frame almost clean, ``anchored_clip_gain``),
how far self-attention moves the prediction
(``measures.measure_attention_leverage``), and the edits under COVE on the true correspondence
(``cove-true``).
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from ..eval import metrics
from ..eval.bench import jsonable, machine_info
from ..recommended import read_settings
from .measures import (
    ANCHOR_T,
    EDIT_MODES,
    LANDED,
    edit_tasks,
    measure_attention_entropy,
    measure_attention_leverage,
    measure_cga_change,
    measure_clip_gain,
    measure_correspondence,
    measure_edits,
    measure_feature_pck,
    measure_prompt_following,
    measure_reconstruction,
    measure_shape_retention,
    static_count,
    summarise_edits,
)
from .settings import CANDIDATES, candidate_config, candidate_negative

# gate -> (">=" or "<=", threshold)
GATES = {
    "prompt_following.colour": (">=", 0.90),
    "prompt_following.shape": (">=", 0.90),
    "prompt_following.background": (">=", 0.90),
    "prompt_following.all": (">=", 0.90),
    "edits.cove.landed_edits": (">=", 0.90),
    "edits.cove.warp_to_truth": ("<=", 1.5),
    "edits.cove.static_edits": ("<=", 0),
    "correspondence.diffusion": (">=", 0.85),
    "edits.cove_to_spatiotemporal": ("<=", 0.8),
    "edits.spatiotemporal_to_per_frame": ("<=", 1.0),
    "reconstruction.psnr": (">=", 30.0),
}


# ---------------------------------------------------------------------------------------------
# the gate
# ---------------------------------------------------------------------------------------------


def _lookup(results: dict, dotted: str):
    value = results
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


def check_gates(results: dict) -> dict:
    """{gate: {"value", "threshold", "passed"}} for every gate whose figure was measured."""
    gates = {}
    for name, (op, threshold) in GATES.items():
        value = _lookup(results, name)
        if value is None:
            continue
        met = value >= threshold if op == ">=" else value <= threshold
        gates[name] = {"value": value, "op": op, "threshold": threshold,
                       "passed": bool(not math.isnan(value) and met)}
    return gates


EDIT_GATES = ("edits.cove.landed_edits", "edits.cove.warp_to_truth", "edits.cove.static_edits")


def ship_verdict(candidate: dict, shipped: dict) -> dict:
    """Whether a candidate's figures (``quality.json`` of an export) may replace the shipped
    model's: it must be at least as good on every edit gate (``EDIT_GATES``) and better on one,
    and every gate the shipped model passes it must pass too; two records whose edits were judged
    static by other rules (``static_rule``) are not compared. Returns {"ships": bool, "why":
    [reasons it does not], "gates": {gate: {"candidate", "shipped", "better"}}} (``better`` is
    None where either side was not measured; a gate the candidate did not measure blocks it)."""
    mine, theirs = check_gates(candidate), check_gates(shipped)
    gates, why = {}, []
    rules = static_rule(candidate), static_rule(shipped)
    if None not in rules and rules[0] != rules[1]:
        why.append(f"static edits judged by other rules ({rules[0]!r} against {rules[1]!r}): measure the "
                   f"{'shipped model' if rules[1] != metrics.MOTION_FOLLOWING_RULE else 'candidate'}'s edits again")
    for name, (op, _) in GATES.items():
        a, b = mine.get(name), theirs.get(name)
        better = None
        if a is not None and b is not None and not (math.isnan(a["value"]) or math.isnan(b["value"])):
            better = a["value"] > b["value"] if op == ">=" else a["value"] < b["value"]
            better = better if a["value"] != b["value"] else None
        gates[name] = {"candidate": a and a["value"], "shipped": b and b["value"], "better": better}
        if a is None:
            if name in EDIT_GATES or (b is not None and b["passed"]):
                why.append(f"{name} not measured")
        elif b is not None and b["passed"] and not a["passed"]:
            why.append(f"{name} fails ({a['value']:g}; the shipped model passes with {b['value']:g})")
    edit = [gates[name]["better"] for name in EDIT_GATES]
    why += [f"{name} worse ({gates[name]['candidate']:g} against {gates[name]['shipped']:g})"
            for name, b in zip(EDIT_GATES, edit) if b is False]
    if not any(edit) and not why:
        why.append("no edit gate better than the shipped model's")
    return {"ships": not why, "why": why, "gates": gates, "paired": paired_edits(candidate, shipped)}


def paired_edits(candidate: dict, shipped: dict, mode: str = "cove", landed: float = LANDED,
                 resamples: int = 2000, seed: int = 0) -> dict | None:
    """The two models' edits side by side, edit by edit: on the edits both land (target read on
    at least ``landed`` of the frames), the candidate's flicker over the shipped model's
    (``warp_to_truth`` per edit; their median and a 90% bootstrap interval of that median over
    ``resamples`` draws of those edits), how many are lower, higher and equal, and which edits
    only one of them lands. The gate's median flicker runs over every edit, so an edit that one
    model lands and the other leaves unchanged counts against the one that lands it; this reads
    flicker where both changed the clip. It informs; ``ship_verdict`` decides by the gates.

    ``None`` when either side lacks the mode's per-edit rows or the two did not edit the same
    edits; an edit whose flicker ratio is not finite is not paired. Returns {"mode", "edits": n,
    "both_landed", "ratio": median or NaN, "interval": [low, high] or None (fewer than 2 edits),
    "lower", "higher", "equal", "only_candidate", "only_shipped": [edit names]}."""
    rows = [_per_edit(record, mode) for record in (candidate, shipped)]
    names = (candidate.get("edits") or {}).get("edits")
    if not rows[0] or not rows[1] or names is None or names != (shipped.get("edits") or {}).get("edits") or not (
            len(rows[0]) == len(rows[1]) == len(names)):
        return None
    lands = [[r["landed"] >= landed for r in side] for side in rows]
    both = [i for i, (a, b) in enumerate(zip(*lands))
            if a and b and all(math.isfinite(side[i]["warp_to_truth"]) for side in rows)]
    ratios = np.array([rows[0][i]["warp_to_truth"] / rows[1][i]["warp_to_truth"] for i in both])
    interval = None
    if len(ratios) >= 2:
        draws = np.random.default_rng(seed).integers(0, len(ratios), (resamples, len(ratios)))
        interval = [float(v) for v in np.quantile(np.median(ratios[draws], axis=1), (0.05, 0.95))]
    return {"mode": mode, "edits": len(names), "both_landed": len(both),
            "ratio": float(np.median(ratios)) if len(ratios) else math.nan, "interval": interval,
            "lower": int((ratios < 1).sum()), "higher": int((ratios > 1).sum()), "equal": int((ratios == 1).sum()),
            "only_candidate": [n for n, a, b in zip(names, *lands) if a and not b],
            "only_shipped": [n for n, a, b in zip(names, *lands) if b and not a]}


def pool_edits(records: list[dict], mode: str = "cove") -> dict:
    """Several quality records' edits (of one model and settings, on other seeds: other edits)
    as one record of all of them: {"edits": {"edits": ["seed S: name"], mode: summarise_edits
    of every per-edit row, with "per_edit"}}, which ``paired_edits`` and ``check_gates`` read
    like a gate's. Raises ``ValueError`` where a record lacks the mode's per-edit rows, where
    the records differ in model, edit settings or static rule (``static_rule``), or where two
    share a seed (the same edits)."""
    def measured(record):
        edits = record.get("edits") or {}
        return record.get("model"), edits.get("config"), edits.get("negative")

    if len({repr(measured(r)) for r in records}) > 1:
        raise ValueError("pool_edits: the records were measured with other models or edit settings")
    rules = {static_rule(r) for r in records}
    if len(rules) > 1:
        raise ValueError(f"pool_edits: the records judge static edits by other rules: {sorted(map(str, rules))}")
    seeds = [r.get("seed") for r in records]
    if len(set(seeds)) < len(seeds):
        raise ValueError(f"pool_edits: expected records of different seeds, got seeds {seeds}")
    names, rows = [], []
    for record in records:
        per_edit = _per_edit(record, mode)
        if not per_edit:
            raise ValueError(f"pool_edits: a record of seed {record.get('seed')!r} has no {mode} per-edit rows")
        names += [f"seed {record.get('seed')}: {name}" for name in record["edits"]["edits"]]
        rows += per_edit
    return {"edits": {"edits": names, "static_rule": rules.pop(), mode: {**summarise_edits(rows), "per_edit": rows}}}


def static_rule(record: dict) -> str | None:
    """The rule a quality record's edits were judged static by (``metrics.MOTION_FOLLOWING_RULE``
    when measured now; "pairs" for records measured before rules were named); ``None`` without
    edits."""
    edits = record.get("edits")
    return None if not edits else edits.get("static_rule", "pairs")


def _per_edit(record: dict, mode: str) -> list[dict] | None:
    """A quality record's per-edit rows of ``mode`` (``None`` where it has none)."""
    return ((record.get("edits") or {}).get(mode) or {}).get("per_edit")


def paired_text(p: dict | None) -> str:
    """``paired_edits``' figures as one line, or why there are none."""
    if p is None:
        return "edit by edit: nothing to pair (a file without COVE's per-edit rows, or two files of different edits)"
    if not p["both_landed"]:
        shared = "none of them lands on both models"
    else:
        interval = ("" if p["interval"] is None else
                    f", 90% bootstrap interval {p['interval'][0]:.2f}-{p['interval'][1]:.2f}")
        shared = (f"on the {p['both_landed']} both models land, the candidate's flicker is {p['ratio']:.2f}x "
                  f"the shipped model's (median of the per-edit ratios{interval}), lower on {p['lower']}, "
                  f"higher on {p['higher']}, equal on {p['equal']}")
    only = "; ".join(f"only the {who} lands {len(names)}" + (f" ({', '.join(names)})" if names else "")
                     for who, names in (("candidate", p["only_candidate"]), ("shipped model", p["only_shipped"])))
    return f"edit by edit ({p['mode']}, {p['edits']} edits): {shared}; {only}"


def format_table(results: dict) -> str:
    """The figures as a plain-text table."""
    lines = [f"{'measure':<44}{'value':>10}{'gate':>8}  ok"]
    gates = results.get("gates", {})

    def row(name, value, digits=3):
        gate = gates.get(name)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        shown = "nan" if missing else f"{value:.{digits}f}"
        threshold = f"{gate['op']}{gate['threshold']:g}" if gate else ""
        passed = ("yes" if gate["passed"] else "NO") if gate else ""
        lines.append(f"{name:<44}{shown:>10}{threshold:>8}  {passed}")

    pf = results.get("prompt_following")
    if pf:
        for key in ("colour", "shape", "background", "all"):
            row(f"prompt_following.{key}", pf[key])
    rec = results.get("reconstruction")
    if rec:
        row("reconstruction.psnr", rec["psnr"], 2)
    edits = results.get("edits")
    if edits:
        for mode in EDIT_MODES:
            if mode in edits:
                for key, digits in (("landed_edits", 3), ("landed", 3), ("warp_error", 2), ("warp_to_truth", 2),
                                    ("worst_warp_to_truth", 2), ("static_edits", 0), ("fixed_edits", 0),
                                    ("faint_edits", 0), ("psnr", 2)):
                    if key in edits[mode]:
                        row(f"edits.{mode}.{key}", edits[mode][key], digits)
        if "truth_warp_error" in edits:
            row("edits.truth_warp_error", edits["truth_warp_error"], 2)
        for key in ("cove_to_spatiotemporal", "spatiotemporal_to_per_frame", "cove_to_per_frame",
                    "true_to_per_frame"):
            if key in edits:
                row(f"edits.{key}", edits[key])
    retention = results.get("shape_retention")
    if retention:
        for strength, value in retention["shape"].items():
            row(f"shape_retention.shape.{strength}", value)
    corr = results.get("correspondence")
    if corr:
        for key in ("diffusion", "flow", "photo_diffusion", "photo_flow"):
            row(f"correspondence.{key}", corr[key])
    probes = results.get("probes")
    if probes:
        for layer, by_t in probes["feature_pck"]["pck"].items():
            for t, value in by_t.items():
                row(f"probes.feature_pck.{layer}.t{t}", value)
        for t, by_grid in probes["attention_entropy"]["entropy"].items():
            for grid, value in by_grid.items():
                row(f"probes.attention_entropy.t{t}.{grid}", value)
        for key in ("change", "spread"):
            for t, by_grid in probes.get("cga_change", {}).get(key, {}).items():
                for grid, value in by_grid.items():
                    row(f"probes.cga_{key}.t{t}.{grid}", value)
        for t, value in probes.get("clip_gain", {}).get("gain", {}).items():
            row(f"probes.clip_gain.t{t}", value)
        for t, value in probes.get("anchored_clip_gain", {}).get("gain", {}).items():
            row(f"probes.anchored_clip_gain.t{t}", value)
        leverage = probes.get("attention_leverage", {})
        for t, value in leverage.get("spatiotemporal", {}).items():
            row(f"probes.leverage_spatiotemporal.t{t}", value)
        for key in ("zeroed", "cove_true"):
            for t, by_grid in leverage.get(key, {}).items():
                for grid, value in by_grid.items():
                    row(f"probes.leverage_{key}.t{t}.{grid}", value)
    return "\n".join(lines)


def load_tiny(device=None, model: str = "cove-tiny"):
    """``cove.load_pipeline(model)`` (cove-tiny or a training export's folder) with a clear
    error when the weights are missing."""
    from ..loading import load_pipeline

    try:
        return load_pipeline(model, device=device)
    except (FileNotFoundError, OSError) as error:
        raise SystemExit(
            f"cove-tiny weights could not be loaded ({error}); train them with "
            "`python -m cove.tiny.train` or reinstall cove"
        ) from error


def _headline(figures: dict) -> str:
    """The top-level numbers of one part, e.g. "colour 0.958, shape 0.917"."""
    shown = []
    for key, value in figures.items():
        if isinstance(value, dict) and "landed_edits" in value:  # an attention mode of the edits
            shown.append(f"{key} landed {value['landed']:.2f} warp {value['warp_error']:.2f} "
                         f"({value['warp_to_truth']:.2f}x truth) static {static_count(value)}")
        elif key == "shape" and isinstance(value, dict):  # shape retention per strength
            shown.append("shape " + " ".join(f"{s}: {v:.2f}" for s, v in value.items()))
        elif isinstance(value, float) and key not in ("total_seconds", "seconds", "guidance_scale", "threshold"):
            shown.append(f"{key} {value:.3f}")
    return ", ".join(shown)


PARTS = ("prompt", "shape_retention", "reconstruction", "edits", "correspondence", "probes")
PART_KEYS = {"prompt": "prompt_following"}  # a part's key in the results, where it differs from its name
SETTINGS_PARTS = ("edits", "correspondence")  # the parts whose figures depend on the edit settings (config, negative)


OWN = "model"  # --settings: the model folder's own cove_settings.json (cove.recommended)
ANCHORED_TS = (500, 750)  # the anchored clip gain: the others' loss at these t, the first frame at ANCHOR_T


def _probes(pipe, n_clips: int, seed: int) -> dict:
    return {"feature_pck": measure_feature_pck(pipe, n_clips, seed),
            "attention_entropy": measure_attention_entropy(pipe, min(n_clips, 2), seed),
            "cga_change": measure_cga_change(pipe, min(n_clips, 2), seed),
            "clip_gain": measure_clip_gain(pipe, n_clips + 1, seed),
            "anchored_clip_gain": measure_clip_gain(pipe, n_clips + 1, seed, ts=ANCHORED_TS, anchor_t=ANCHOR_T),
            "attention_leverage": measure_attention_leverage(pipe, min(n_clips, 2), seed)}


def edit_settings(model: str, settings: str):
    """The edits' (config, negative-prompt policy) under ``--settings``: the model folder's own
    ``cove_settings.json`` for ``"model"``, else a candidate of ``cove.tiny.settings``."""
    if settings == OWN:
        own = read_settings(model)
        return own.config, own.negative
    return candidate_config(CANDIDATES[settings]), candidate_negative(CANDIDATES[settings])


def run(*, quick: bool = False, seed: int = 0, device=None, parts=PARTS, pipe=None, model: str = "cove-tiny",
        modes=EDIT_MODES, settings: str = "edit_config", log=functools.partial(print, flush=True),
        after_part=None) -> dict:
    """Measure every part on cove-tiny (or the export ``model``); returns the results with
    "machine" and "gates". ``quick``: 12 prompts, 1 clip, 2 edits. ``settings``: the edits'
    settings, a name of ``cove.tiny.settings.CANDIDATES``, or ``"model"``: the model folder's
    own ``cove_settings.json`` (chosen on the validation edits, ``cove.recommended``).
    ``after_part(results)`` is called after each part with what is measured
    so far (its gates checked), so that a run cut short keeps it."""
    if settings not in CANDIDATES and settings != OWN:
        raise ValueError(f"settings must be {OWN!r} or one of {sorted(CANDIDATES)}, got {settings!r}")
    pipe = pipe if pipe is not None else load_tiny(device, model)
    n_prompts, n_clips, n_edits = (12, 1, 2) if quick else (96, 3, 12)
    config, negative = edit_settings(model, settings)
    results: dict = {"quick": quick, "seed": seed, "model": str(model), "settings": settings,
                     "machine": machine_info(pipe)}
    steps = {
        "prompt": ("prompt_following", lambda: measure_prompt_following(pipe, n_prompts, seed)),
        "shape_retention": ("shape_retention", lambda: measure_shape_retention(pipe, n_prompts // 3, seed)),
        "reconstruction": ("reconstruction", lambda: measure_reconstruction(pipe, n_clips, seed)),
        "edits": ("edits", lambda: measure_edits(pipe, edit_tasks(n_edits, seed), config=config, modes=modes,
                                                  seed=seed, negative=negative,
                                                  log=log)),
        "correspondence": ("correspondence", lambda: measure_correspondence(pipe, n_clips, seed, config=config)),
        "probes": ("probes", lambda: _probes(pipe, n_clips, seed)),
    }
    for part in parts:
        key, measure = steps[part]
        start = time.perf_counter()
        log(f"[quality] {key} ...")
        results[key] = measure()
        results[key]["total_seconds"] = round(time.perf_counter() - start, 2)
        results[key]["measured"] = {k: results["machine"][k] for k in ("date", "commit")}
        log(f"[quality] {key}: {_headline(results[key])} ({results[key]['total_seconds']:.0f} s)")
        if after_part is not None:
            after_part({**results, "gates": check_gates(results)})
    results["gates"] = check_gates(results)
    return results


def merge(previous: dict, results: dict) -> dict:
    """``previous`` figures with the parts measured in ``results`` replaced; the gates are
    checked again over the whole. Each part keeps its "measured" date and commit."""
    current = {PART_KEYS.get(part, part) for part in PARTS}
    kept = {k: v for k, v in previous.items()  # a part that no longer exists is dropped
            if k in current or not (isinstance(v, dict) and "total_seconds" in v)}
    merged = {**kept, **{k: v for k, v in results.items() if k != "gates"}}
    merged["gates"] = check_gates(merged)
    return merged


def _previous(out: Path, args) -> dict:
    """The figures of ``out`` that ``--update`` keeps, or a one-line exit when they cannot be
    merged (missing, unreadable, measured on another model, seed or size, or keeping a part that
    depends on the edit settings, ``SETTINGS_PARTS``, measured with other settings)."""
    try:
        previous = json.loads(out.read_text())
    except (OSError, ValueError) as error:
        raise SystemExit(f"--update: cannot read {out} ({error}); run without --update first") from None
    mine = {"model": str(args.model), "seed": args.seed, "quick": args.quick}
    absent = {"model": "cove-tiny", "settings": "edit_config"}
    theirs = {key: previous.get(key, absent.get(key)) for key in mine}
    if theirs != mine:
        raise SystemExit(f"--update: {out} was measured with {theirs}, not {mine}; run without --update")
    config, negative = edit_settings(args.model, args.settings)
    kept = {part: previous[part] for part in SETTINGS_PARTS if part not in args.only and part in previous}
    stale = [part for part, figures in kept.items() if not _measured_with(part, figures, config, negative)]
    if stale:
        parts = " and ".join(stale)
        raise SystemExit(f"--update: {out}'s {parts} were measured with other edit settings than {args.settings!r} "
                         f"(the file names {previous.get('settings', absent['settings'])!r}); measure them too "
                         f"(--only ... {' '.join(stale)}) or run without --update")
    return previous


def _measured_with(part: str, figures: dict, config, negative: str) -> bool:
    """Whether a settings-dependent part's figures were measured with ``config`` and
    ``negative``: the edits' recorded config and negative prompt, the correspondence's feature
    layer and t (the file's settings name is not enough: ``"model"`` reads a file that
    ``cove.tiny.settings --write`` rewrites)."""
    if part == "edits":
        return figures.get("config") == config.to_dict() and figures.get("negative") == negative
    return figures.get("t") == config.feature_t and config.feature_layer in (None, figures.get("layer"))


def _compare(candidate: Path, shipped: Path) -> int:
    figures = []
    for path in (candidate, shipped):
        try:
            figures.append(json.loads(path.read_text()))
        except (OSError, ValueError) as error:
            raise SystemExit(f"--compare: cannot read {path} ({error}); expected a quality JSON") from None
    verdict = ship_verdict(*figures)
    sides = [f"{side} {f.get('model', 'cove-tiny')} with {f.get('settings', 'edit_config')}"
             for side, f in zip(("candidate", "shipped"), figures)]
    print(f"{sides[0]}; {sides[1]} (a model ships with the settings its figures were measured with)")
    print(f"{'gate':<40}{'candidate':>11}{'shipped':>10}  better")
    for name, row in verdict["gates"].items():
        shown = ["-" if v is None else f"{v:.4g}" for v in (row["candidate"], row["shipped"])]
        better = {True: "yes", False: "NO", None: ""}[row["better"]]
        print(f"{name:<40}{shown[0]:>11}{shown[1]:>10}  {better}")
    print(paired_text(verdict["paired"]))
    print(f"{candidate} {'ships' if verdict['ships'] else 'does not ship'} in place of {shipped}"
          + ("" if verdict["ships"] else ": " + "; ".join(verdict["why"])))
    return 0 if verdict["ships"] else 1


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cove.tiny.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/quality.json", help="where to write the JSON figures")
    parser.add_argument("--quick", action="store_true", help="12 prompts (4 renders) and 1 clip per measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: the loader's choice)")
    parser.add_argument("--model", default="cove-tiny", help="cove-tiny or the folder of a training export")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--modes", nargs="+", choices=EDIT_MODES, default=list(EDIT_MODES),
                        help="the edits' attention modes (cove-true: COVE on the true correspondence)")
    parser.add_argument("--settings", choices=[OWN, *CANDIDATES], default="edit_config", metavar="NAME",
                        help="the edits' settings: 'model', the model folder's own cove_settings.json "
                             "(cove.recommended), or a name of cove.tiny.settings.CANDIDATES "
                             "(python -m cove.tiny.settings --list prints them; default edit_config)")
    parser.add_argument("--update", action="store_true",
                        help="keep the parts of --out that --only does not measure (same model, seed, size; "
                             "edits and correspondence only if measured with the same --settings)")
    parser.add_argument("--compare", metavar="CANDIDATE.json",
                        help="measure nothing: say whether the figures of CANDIDATE.json may ship in place "
                             "of --out's (exit 0 if they may)")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if args.compare:
        return _compare(Path(args.compare), out)
    previous = _previous(out, args) if args.update else {}

    def write(results: dict) -> dict:  # after every part, so that a run cut short keeps what it measured
        results = merge(previous, results) if previous else results
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(jsonable(results, 4), indent=2) + "\n")
        return results

    results = write(run(quick=args.quick, seed=args.seed, device=args.device, parts=tuple(args.only),
                        model=args.model, modes=tuple(args.modes), settings=args.settings,
                        after_part=write))
    print(format_table(results))
    print(f"wrote {out}")
    failed = [name for name, gate in results["gates"].items() if not gate["passed"]]
    if failed:
        print(f"gates failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
