"""How often ``metrics.motion_following`` calls an edit static, on clips whose answer is known.

Every edit task of seeds 0, 1000, 2000 and 3000 (``measures.edit_tasks``, 12 each) is scored
against clips made from its true edit:

* moving with the scene, but not drawn as the truth: one object (the recoloured one, or the
  first) at 60%, 70%, 80% or 120% of its size, or shifted by 2 pixels (on the still-camera
  edits, where only the objects move): none should read static;
* static: the true edit's first frame held, with and without pixel noise (every edit), and, on
  the pans, the objects moving over a background held at its first frame, flattened to its mean
  colour, or half of each: all should read static.

``python benchmarks/static-rule/check.py`` writes ``static_rule.json`` beside it; with
``--commit C`` it judges with ``motion_following`` as it was at commit C (``git show``), under
that commit's name in the JSON, so two rules can be set side by side.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np

from cove import world
from cove.eval import metrics
from cove.tiny import measures

SEEDS = (0, 1000, 2000, 3000)
SIZES = (0.6, 0.7, 0.8, 1.2)


def rule_at(commit: str):
    """``motion_following`` as it was at ``commit`` of this repository."""
    source = subprocess.check_output(["git", "show", f"{commit}:cove/eval/metrics.py"], text=True,
                                     cwd=Path(__file__).resolve().parents[2])
    module = types.ModuleType(f"metrics_{commit}")
    module.__dict__["__package__"] = "cove.eval"
    exec(compile(source, f"{commit}:cove/eval/metrics.py", "exec"), module.__dict__)
    return module.motion_following


def variants(task) -> dict[str, np.ndarray]:
    """uint8 (F, H, W, 3) clips made from the task's true edit, by name."""
    truth = task["truth"]
    scene, index = truth.scene, task["object"] if task["object"] is not None else 0
    out = {}
    if task["pan"] == 0:
        for name, change in [(f"object at {s:.0%}", s) for s in SIZES] + [("object shifted 2 px", "shift")]:
            objects = list(scene.objects)
            o = objects[index]
            objects[index] = (dataclasses.replace(o, start=(o.start[0] + 2, o.start[1] + 2), end=(o.end[0] + 2, o.end[1] + 2))
                              if change == "shift" else
                              dataclasses.replace(o, diameter=(o.diameter[0] * change, o.diameter[1] * change)))
            out[name] = world.render(dataclasses.replace(scene, objects=tuple(objects))).frames
    held = np.repeat(truth.frames[:1], len(truth.frames), 0)
    out["first frame held"] = held
    noise = np.random.default_rng(0).integers(-12, 13, held.shape)
    out["first frame held, pixel noise"] = np.clip(held + noise, 0, 255).astype(np.uint8)
    if task["pan"] > 0:
        empty = world.render(dataclasses.replace(scene, objects=(), caption_order=None)).frames
        on_object = truth.masks.any(1)[..., None]
        mean = empty.mean((0, 1, 2), keepdims=True)
        out["background held"] = np.where(on_object, truth.frames, empty[:1])
        out["background flat"] = np.where(on_object, truth.frames, mean.astype(np.uint8))
        out["background half held, half flat"] = np.where(on_object, truth.frames,
                                                          (0.5 * empty[:1] + 0.5 * mean).astype(np.uint8))
    return out


def check(rule) -> dict:
    """{clip name: {"static": count, "of": edits, "should": "moving" | "static"}}."""
    table: dict = {}
    for seed in SEEDS:
        for task in measures.edit_tasks(12, seed):
            for name, frames in variants(task).items():
                row = table.setdefault(name, {"static": 0, "of": 0,
                                              "should": "static" if "held" in name or "flat" in name else "moving"})
                row["static"] += bool(rule(frames, task["clip"], task["truth"].frames)["static"])
                row["of"] += 1
    return table


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--commit", help="judge with motion_following as it was at this commit")
    parser.add_argument("--out", default=str(Path(__file__).with_name("static_rule.json")))
    args = parser.parse_args(argv)
    out = Path(args.out)
    record = json.loads(out.read_text()) if out.exists() else {}
    name = args.commit or metrics.MOTION_FOLLOWING_RULE
    record[name] = check(rule_at(args.commit) if args.commit else metrics.motion_following)
    out.write_text(json.dumps(record, indent=2) + "\n")
    for clip, row in record[name].items():
        print(f"{name}: {clip}: static on {row['static']} of {row['of']} (should read {row['should']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
