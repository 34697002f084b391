"""Equal-budget comparison of cove-tiny designs: ``python -m cove.tiny.compare``.

Trains each design of ``cove.tiny.model.DESIGNS`` named in ``--designs`` for the same CPU
minutes with ``cove.tiny.train`` (one cosine cycle of ``--steps`` steps, stopped by the budget),
in turns of about ``--interval`` CPU minutes taken design by design (the least trained next), so
that an interrupted comparison has given every design about the same time. A design's first
turn runs ``--interval`` wall-clock minutes; later turns run the steps that take ``--interval``
CPU minutes at the CPU seconds per step measured in the turn before. After every turn it records a point of that
design's learning curve:

- ``loss``: the mean training loss of the turn (``train``'s log);
- ``prompt``: prompt following on fixed validation prompts
  (``cove.tiny.measures.measure_prompt_following``, seed 7);
- ``pck``: PCK of the diffusion features' top-1 correspondence on fixed ShapesWorld clips
  (``cove.features.extract_features`` at t = 261, ``cove.correspondence.correspond``,
  ``cove.metrics.pck``), at 1 cell of the feature grid and at 4 pixels (one cell of 16x16).

CPU minutes are the process CPU time of the training turns (one thread: about the wall time
on an idle machine, less on a shared one). Writes ``DIR/curves.json`` and ``DIR/curves.png``;
each design trains in ``DIR/<design>/`` (checkpoint, log, exported pipeline). Rerunning the
same command continues from there; a larger ``--minutes`` extends the comparison.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import metrics, world
from ..correspondence import correspond
from ..extras.flow import flow_correspondence
from ..features import extract_features
from . import measures, train
from .model import DESIGNS, MAX_TOKENS, build_pipeline
from .tokenizer import build_clip_tokenizer

PROMPT_SEED = 7  # validation prompts (the quality gate uses seed 0)
CLIP_SEED = 100  # validation clips


def _parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m cove.tiny.compare", description=__doc__.split("\n")[0])
    p.add_argument("--minutes", type=train._minutes, required=True, help="CPU minutes of training per design")
    p.add_argument("--designs", type=_designs, default=("a", "b"),
                   help=f"comma-separated names of cove.tiny.model.DESIGNS ({', '.join(DESIGNS)}); default a,b")
    p.add_argument("--work", type=Path, required=True, help="folder for checkpoints, curves.json, curves.png")
    p.add_argument("--interval", type=train._minutes, default=5.0, help="CPU minutes of training between points")
    p.add_argument("--steps", type=int, default=4000, help="length of the cosine learning-rate cycle")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompts", type=int, default=12, help="validation prompts per point")
    p.add_argument("--sample-steps", type=int, default=20, help="DDIM steps of the validation images")
    p.add_argument("--clips", type=int, default=3, help="validation clips for the feature PCK")
    p.add_argument("--frames", type=int, default=8, help="frames per validation clip")
    p.add_argument("--threads", type=int, default=1)
    return p.parse_args(argv)


def _designs(text: str) -> tuple[str, ...]:
    return train._list(text, str, lambda v: v in DESIGNS, f"design names ({', '.join(DESIGNS)})")


def _tokenizer():
    with tempfile.TemporaryDirectory() as folder:  # the same ids as train's
        return build_clip_tokenizer(world.VOCABULARY, Path(folder), max_length=MAX_TOKENS)


def load_checkpoint(design: str, checkpoint: Path, tokenizer):
    """The pipeline of a ``train`` checkpoint, with its EMA weights (what ``train`` exports)."""
    pipe = build_pipeline(tokenizer, design=design)
    state = torch.load(checkpoint, map_location="cpu")
    params = list(pipe.unet.parameters()) + list(pipe.text_encoder.parameters())
    with torch.no_grad():
        for p, e in zip(params, state["ema"]):
            p.copy_(e)
    pipe.unet.eval(), pipe.text_encoder.eval()
    return pipe, state["step"]


def validation_clips(n: int, frames: int) -> list:
    return [world.render(world.random_scene(CLIP_SEED + k, frames=frames)) for k in range(n)]


def feature_pck(pipe, clips) -> dict:
    """Mean PCK of the features' top-1 correspondence (window 9, K 3) over ``clips``: at 1 cell
    of the feature grid (``cell``) and at 4 pixels (``px4``); ``grid`` (H, W)."""
    cell, px4 = [], []
    for clip in clips:
        feats = extract_features(pipe, clip.frames, t=261, generator=torch.Generator().manual_seed(0))
        H, W = feats.shape[-2:]  # feats (F, C, H, W)
        pos, vis = clip.ground_truth(grid=(H, W))  # (F, N, F, 2), (F, N, F)
        corr = correspond(feats, window=9, k=3)
        cell.append(metrics.pck(corr, pos, vis, 1.0))
        px4.append(metrics.pck(corr, pos, vis, 4.0 * W / clip.frames.shape[2]))
    return {"cell": float(np.mean(cell)), "px4": float(np.mean(px4)), "grid": [H, W]}


def flow_pck(clips) -> float:
    """OpenCV flow's PCK at 4 pixels (16x16 grid, 1 cell) on the same clips: a reference line."""
    out = []
    for clip in clips:
        pos, vis = clip.ground_truth(grid=(16, 16))
        out.append(metrics.pck(flow_correspondence(clip.frames, (16, 16)), pos, vis, 1.0))
    return float(np.mean(out))


def _turn_loss(log: Path, after: int, upto: int) -> float:
    """Mean logged loss of steps ``after`` <= s < ``upto`` (0-based; the last entry of a step wins)."""
    losses = {}
    if log.exists():
        for line in log.read_text().splitlines():
            entry = json.loads(line)
            if after <= entry["step"] < upto:
                losses[entry["step"]] = entry["loss"]
    return float(np.mean(list(losses.values()))) if losses else math.nan


def _checkpoint_step(args, design: str) -> int:
    checkpoint = args.work / design / "checkpoint.pt"
    return torch.load(checkpoint, map_location="cpu")["step"] if checkpoint.exists() else 0


def _unrecorded_minutes(args, design: str, curve: dict, step0: int) -> float:
    """Training time of the steps a killed turn left in the checkpoint beyond the last point:
    at the last point's seconds per step, or (no point yet) the wall time its log spans."""
    step = _checkpoint_step(args, design)
    if step <= step0:
        return 0.0
    if curve["points"]:
        return (step - step0) * curve["points"][-1]["seconds_per_step"] / 60
    log = args.work / design / "log.jsonl"
    times = [json.loads(line)["time"] for line in log.read_text().splitlines()] if log.exists() else []
    return (max(times) - min(times)) / 60 if len(times) > 1 else 0.0


def _train_args(args, design: str, limit: list[str]) -> list[str]:
    work = args.work / design
    return ["--design", design, "--work", str(work), "--out", str(work / "pipeline"),
            "--steps", str(args.steps), "--batch", str(args.batch), "--seed", str(args.seed),
            "--threads", str(args.threads), "--save-every", "10", "--resume", *limit]


def _turn_limit(minutes: float, curve: dict, before: int) -> list[str]:
    """train's stopping option for a turn of ``minutes`` CPU minutes: the steps that take at the
    last point's CPU seconds per step (``--stop-at``), or for a first turn ``--minutes``
    (wall-clock)."""
    if not curve["points"]:
        return ["--minutes", f"{minutes:.6g}"]
    steps = max(1, round(60 * minutes / curve["points"][-1]["seconds_per_step"]))
    return ["--stop-at", str(before + steps)]


def _point(args, design: str, curve: dict, tokenizer, clips) -> dict:
    """Train ``design`` for one turn and evaluate its checkpoint."""
    spent = curve["points"][-1]["cpu_minutes"] if curve["points"] else 0.0
    step0 = curve["points"][-1]["step"] if curve["points"] else 0
    spent += _unrecorded_minutes(args, design, curve, step0)
    turn = max(min(args.interval, args.minutes - spent), 1e-3)
    before = _checkpoint_step(args, design)
    if before >= args.steps:
        raise ValueError(f"design {design} finished its {args.steps}-step schedule within the budget; "
                         "rerun with a larger --steps")
    cpu, wall = time.process_time(), time.time()
    train.train(_train_args(args, design, _turn_limit(turn, curve, before)))
    cpu, wall = (time.process_time() - cpu) / 60, (time.time() - wall) / 60
    tick = time.time()
    pipe, step = load_checkpoint(design, args.work / design / "checkpoint.pt", tokenizer)
    prompt = measures.measure_prompt_following(pipe, args.prompts, PROMPT_SEED, steps=args.sample_steps)
    point = {
        "step": step, "cpu_minutes": spent + cpu,
        "wall_minutes": (curve["points"][-1]["wall_minutes"] if curve["points"] else 0.0) + wall,
        "seconds_per_step": 60 * cpu / max(step - before, 1),
        "loss": _turn_loss(args.work / design / "log.jsonl", step0, step),
        "prompt": {k: prompt[k] for k in ("colour", "shape", "background", "all")},
        "pck": feature_pck(pipe, clips),
    }
    point["eval_seconds"] = round(time.time() - tick, 1)
    return point


def compare(argv=None) -> dict:
    args = _parse(argv)
    torch.set_num_threads(args.threads)
    args.work.mkdir(parents=True, exist_ok=True)
    path = args.work / "curves.json"
    curves = json.loads(path.read_text()) if path.exists() else {"designs": {}}
    tokenizer = _tokenizer()
    clips = validation_clips(args.clips, args.frames)
    curves["config"] = {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}
    curves.setdefault("reference", {"flow_pck_px4": flow_pck(clips)})
    for design in args.designs:
        if design not in curves["designs"]:
            pipe = build_pipeline(tokenizer, design=design)
            curves["designs"][design] = {
                "unet_parameters": sum(p.numel() for p in pipe.unet.parameters()),
                "text_parameters": sum(p.numel() for p in pipe.text_encoder.parameters()),
                "points": []}
    while True:  # one turn per design that has budget left, the least trained first
        left = [d for d in args.designs if _spent(curves, d) < args.minutes - 1e-3]
        if not left:
            break
        design = min(left, key=lambda d: _spent(curves, d))
        curves["designs"][design]["points"].append(_point(args, design, curves["designs"][design], tokenizer, clips))
        _write(curves, args.work)
        print(f"{design}: {json.dumps(curves['designs'][design]['points'][-1])}", flush=True)
    _write(curves, args.work)
    return curves


def _spent(curves: dict, design: str) -> float:
    points = curves["designs"][design]["points"]
    return points[-1]["cpu_minutes"] if points else 0.0


def _write(curves: dict, work: Path) -> None:
    tmp = work / "curves.json.tmp"
    tmp.write_text(json.dumps(curves, indent=1))
    tmp.replace(work / "curves.json")
    plot(curves, work / "curves.png")


def plot(curves: dict, path: Path) -> None:
    """Loss, prompt following ("all" solid, "shape" dashed) and feature PCK (4 px) against CPU
    minutes, one colour per design; OpenCV flow's PCK as a grey line."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(13, 3.6))
    for design, curve in curves["designs"].items():
        pts = curve["points"]
        if not pts:
            continue
        x = [p["cpu_minutes"] for p in pts]
        label = f"{design} ({curve['unet_parameters'] / 1e6:.1f}M)"
        line, = axes[0].plot(x, [p["loss"] for p in pts], "o-", label=label)
        axes[1].plot(x, [p["prompt"]["all"] for p in pts], "o-", color=line.get_color(), label=label)
        axes[1].plot(x, [p["prompt"]["shape"] for p in pts], "o--", color=line.get_color(), alpha=0.6)
        axes[2].plot(x, [p["pck"]["px4"] for p in pts], "o-", color=line.get_color(), label=label)
    flow = curves.get("reference", {}).get("flow_pck_px4")
    if flow is not None:
        axes[2].axhline(flow, color="grey", lw=1, label="OpenCV flow")
    for ax, title in zip(axes, ("training loss", "prompt following (all; shape dashed)", "feature PCK (4 px)")):
        ax.set_title(title)
        ax.set_xlabel("CPU minutes of training")
        ax.legend(fontsize=8)
    axes[1].set_ylim(-0.02, 1.02), axes[2].set_ylim(-0.02, 1.02)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None) -> int:
    try:
        compare(argv)
    except ValueError as error:
        print(f"python -m cove.tiny.compare: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
