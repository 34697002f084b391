"""Quality gate of the embedded model ``cove-tiny`` on ShapesWorld.

Run ``python -m cove.tiny.quality [--out docs/quality.json] [--quick]``: it runs the
measurements of ``cove.tiny.measures``, prints a table and writes the figures, the gates and
the machine they were measured on as JSON. Gates: prompt following (colour, shape, background,
all) >= 0.90; reconstruction PSNR >= 30 dB; the colour edit (COVE) recolours >= 90% of the
object at PSNR >= 25 dB. Shape retention and correspondence PCK are reported without a gate.
"""
from __future__ import annotations

import argparse
import functools
import json
import math
import sys
import time
from pathlib import Path

from ..eval.bench import jsonable, machine_info
from .measures import (
    measure_correspondence,
    measure_edit,
    measure_prompt_following,
    measure_reconstruction,
    measure_shape_retention,
)

GATES = {
    "prompt_following.colour": 0.90,
    "prompt_following.shape": 0.90,
    "prompt_following.background": 0.90,
    "prompt_following.all": 0.90,
    "reconstruction.psnr": 30.0,
    "edit.cove.attribute_accuracy": 0.90,
    "edit.cove.psnr": 25.0,
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
    for name, threshold in GATES.items():
        value = _lookup(results, name)
        if value is None:
            continue
        gates[name] = {"value": value, "threshold": threshold,
                       "passed": bool(not math.isnan(value) and value >= threshold)}
    return gates


def format_table(results: dict) -> str:
    """The figures as a plain-text table."""
    lines = [f"{'measure':<44}{'value':>10}{'gate':>8}  ok"]
    gates = results.get("gates", {})

    def row(name, value, digits=3):
        gate = gates.get(name)
        missing = value is None or (isinstance(value, float) and math.isnan(value))
        shown = "nan" if missing else f"{value:.{digits}f}"
        threshold = f"{gate['threshold']:g}" if gate else ""
        passed = ("yes" if gate["passed"] else "NO") if gate else ""
        lines.append(f"{name:<44}{shown:>10}{threshold:>8}  {passed}")

    pf = results.get("prompt_following")
    if pf:
        for key in ("colour", "shape", "background", "all"):
            row(f"prompt_following.{key}", pf[key])
    rec = results.get("reconstruction")
    if rec:
        row("reconstruction.psnr", rec["psnr"], 2)
    edit = results.get("edit")
    if edit:
        for attention in ("cove", "per-frame", "spatiotemporal"):
            if attention in edit:
                for key in ("psnr", "background_psnr", "object_psnr"):
                    row(f"edit.{attention}.{key}", edit[attention][key], 2)
                row(f"edit.{attention}.attribute_accuracy", edit[attention]["attribute_accuracy"])
                row(f"edit.{attention}.warp_error", edit[attention]["warp_error"], 2)
        row("edit.truth_warp_error", edit["truth_warp_error"], 2)
    retention = results.get("shape_retention")
    if retention:
        for strength, value in retention["shape"].items():
            row(f"shape_retention.shape.{strength}", value)
    corr = results.get("correspondence")
    if corr:
        for key in ("diffusion", "flow", "photo_diffusion", "photo_flow"):
            row(f"correspondence.pck.{key}", corr[key])
    return "\n".join(lines)


def load_tiny(device=None):
    """``cove.load_pipeline("cove-tiny")`` with a clear error when the weights are missing."""
    from ..loading import load_pipeline

    try:
        return load_pipeline("cove-tiny", device=device)
    except (FileNotFoundError, OSError) as error:
        raise SystemExit(
            f"cove-tiny weights could not be loaded ({error}); train them with "
            "`python -m cove.tiny.train` or reinstall cove"
        ) from error


def _headline(figures: dict) -> str:
    """The top-level numbers of one part, e.g. "colour 0.958, shape 0.917"."""
    shown = []
    for key, value in figures.items():
        if isinstance(value, dict) and "psnr" in value:  # an attention mode of the edit
            shown.append(f"{key} psnr {value['psnr']:.2f} attr {value['attribute_accuracy']:.3f}")
        elif key == "shape" and isinstance(value, dict):  # shape retention per strength
            shown.append("shape " + " ".join(f"{s}: {v:.2f}" for s, v in value.items()))
        elif isinstance(value, float) and key not in ("total_seconds", "seconds", "guidance_scale", "threshold"):
            shown.append(f"{key} {value:.3f}")
    return ", ".join(shown)


PARTS = ("prompt", "shape_retention", "reconstruction", "edit", "correspondence")


def run(*, quick: bool = False, seed: int = 0, device=None, parts=PARTS, pipe=None,
        log=functools.partial(print, flush=True)) -> dict:
    """Measure every part on cove-tiny; returns the results with "machine" and "gates"."""
    pipe = pipe if pipe is not None else load_tiny(device)
    n_prompts, n_clips = (12, 1) if quick else (96, 3)
    results: dict = {"quick": quick, "seed": seed, "machine": machine_info(pipe)}
    steps = {
        "prompt": ("prompt_following", lambda: measure_prompt_following(pipe, n_prompts, seed)),
        "shape_retention": ("shape_retention", lambda: measure_shape_retention(pipe, n_prompts // 3, seed)),
        "reconstruction": ("reconstruction", lambda: measure_reconstruction(pipe, n_clips, seed)),
        "edit": ("edit", lambda: measure_edit(pipe, n_clips, seed)),
        "correspondence": ("correspondence", lambda: measure_correspondence(pipe, n_clips, seed)),
    }
    for part in parts:
        key, measure = steps[part]
        start = time.perf_counter()
        log(f"[quality] {key} ...")
        results[key] = measure()
        results[key]["total_seconds"] = round(time.perf_counter() - start, 2)
        log(f"[quality] {key}: {_headline(results[key])} ({results[key]['total_seconds']:.0f} s)")
    results["gates"] = check_gates(results)
    return results


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cove.tiny.quality", description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="docs/quality.json", help="where to write the JSON figures")
    parser.add_argument("--quick", action="store_true", help="12 prompts (4 renders) and 1 clip per measure")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None, help="torch device (default: the loader's choice)")
    parser.add_argument("--only", nargs="+", choices=PARTS, default=list(PARTS))
    args = parser.parse_args(argv)
    results = run(quick=args.quick, seed=args.seed, device=args.device, parts=tuple(args.only))
    print(format_table(results))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(jsonable(results, 4), indent=2) + "\n")
    print(f"wrote {out}")
    failed = [name for name, gate in results["gates"].items() if not gate["passed"]]
    if failed:
        print(f"gates failed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
