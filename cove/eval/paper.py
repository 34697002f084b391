"""``cove bench paper``: the paper's Tables 2, 4 and 5 on ShapesWorld, run as one ``cove batch``.

ShapesWorld knows each clip's true edit and true motion, so the tables measure what the paper
could only judge: the edit's flicker along the true motion (warp error), its PSNR against the
true edit, the share of the object recoloured, and the correspondence's PCK.

- Table 2 (K): per-frame editing, spatial-temporal attention only, COVE with K = 1, 3, 5;
- Table 4 (window): COVE's correspondence with l = 3, 5, 9, 15 and all pairs (the largest
  window, the whole feature grid): search time, memory, PCK, and the edit's warp error;
- Table 5 (correspondence accuracy): PCK of diffusion features against optical flow on the
  same grid, over all tokens, the objects' and the background's.

Each setting on each clip is one job of a ``cove batch`` list (``WORK/jobs.yaml``; a job two
tables share runs once), so the benchmark resumes where it stopped and runs on every process
``accelerate launch`` starts::

    cove bench paper                                                   # small suite, cove-tiny
    accelerate launch --num_processes 8 -m cove.app.cli bench paper --suite full --model DIR

The JSON (machine, commit, the three tables with the paper's figures beside, every job's row)
is what the docs' benchmarks page draws.
"""
from __future__ import annotations

import math
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from .bench import dumps, jsonable, machine_info

# small: cove-tiny on two CPU cores in about a quarter of an hour (20 CPU minutes); full: meant for GPUs.
SUITES = {"small": {"clips": 3, "frames": 8}, "full": {"clips": 10, "frames": 32}}
TABLE2 = (  # (setting, config overrides)
    ("per-frame", {"attention": "per-frame"}),
    ("spatial-temporal only", {"attention": "spatiotemporal"}),
    ("COVE K=1", {"attention": "cove", "k": 1}),
    ("COVE K=3", {"attention": "cove", "k": 3}),
    ("COVE K=5", {"attention": "cove", "k": 5}),
)
WINDOWS = (3, 5, 9, 15, None)  # None: all pairs
DEFAULT_K = 3
# The paper's figures (Stable Diffusion 2.1; shared/PAPER.md).
PAPER_TABLE2 = {  # VBench subject consistency, motion smoothness (23 videos)
    "spatial-temporal only": (0.9431, 0.9049),
    "COVE K=1": (0.9637, 0.9817),
    "COVE K=3": (0.9731, 0.9892),
    "COVE K=5": (0.9745, 0.9886),
}
PAPER_TABLE4 = {3: (0.448, 11), 9: (4.03, 14), 15: (11.2, 18), None: (241, 32)}  # GFLOP, GB (A100, 20 frames)
PAPER_TABLE5 = {"optical flow": 0.87, "diffusion features": 0.92}  # PCK, 10 hand-labelled videos


# ---------------------------------------------------------------------------- the job list


def feature_shape(model: str, layer: str | None = None) -> tuple[int, int]:
    """``(side, C)`` of the model's feature map at its own frame size, read from the UNet's
    config without loading weights: of the decoder block ``layer`` (``up_blocks.u``), or with
    ``None`` of the default one (the largest self-attention grid): (16, 128) for cove-tiny,
    (64, 320) for SD 2.1."""
    from diffusers import UNet2DConditionModel

    from ..features import default_feature_layer, layer_grid
    from ..loading import check_model

    config = UNet2DConditionModel.load_config(str(check_model(model)), subfolder="unet")
    unet = SimpleNamespace(config=SimpleNamespace(**config))
    layer = layer or default_feature_layer(unet)
    if not re.fullmatch(r"up_blocks\.\d+", layer) or int(layer.split(".")[1]) >= len(config["up_block_types"]):
        raise ValueError(f"layer: expected a decoder block up_blocks.u of {model}, got {layer!r}")
    block = int(layer.split(".")[1])
    return layer_grid(unet, layer), list(reversed(config["block_out_channels"]))[block]


def all_pairs_window(model: str, layer: str | None = None) -> int:
    """The window that covers the whole feature grid of ``layer`` (``feature_shape``): the largest
    odd side that fits (``cove.window.fit_window``), 15 on cove-tiny's 16 x 16 grid, 63 on SD
    2.1's 64 x 64."""
    from ..window import fit_window

    side, _ = feature_shape(model, layer)
    return fit_window(2 * side + 1, (side, side))


def edit_settings(model: str, suite: str):
    """``(CoveConfig, uses the source prompt as the negative prompt)`` of the suite's edits: the
    model's recommended settings (``cove.recommended.read_settings``: cove-tiny's presets, the
    paper's for a model without a ``cove_settings.json``); on cove-tiny the small suite halves
    the steps as the demo does."""
    from ..recommended import read_settings

    settings = read_settings(model)
    if model == "cove-tiny" and suite == "small":
        from ..app.demo import DEMO_CONFIG

        return DEMO_CONFIG, settings.negative == "source"
    return settings.config, settings.negative == "source"


def _slug(text: str) -> str:
    return text.lower().replace("spatial-temporal only", "st").replace("cove k=", "cove-k").replace(" ", "-")


def paper_jobs(suite: str = "small", model: str = "cove-tiny", seed: int = 0) -> dict:
    """The job list of the suite: ``{"defaults": {...}, "jobs": [...], "clips": [...]}``.

    Clips: the first moving ShapesWorld clips from ``seed`` on (``cove.tiny.measures.moving_clips``),
    each with a colour edit of its fastest object (``colour_edit_task``). Jobs are named
    ``c<clip>-<setting>``; the l = 9 edit is Table 2's COVE K=3, the all-pairs window the l = 15
    one where the grid is 16 cells (one job each).
    """
    from ..tiny.measures import colour_edit_task, moving_clips

    if suite not in SUITES:
        raise ValueError(f"suite must be one of {tuple(SUITES)}, got {suite!r}")
    size = SUITES[suite]
    config, negative_is_source = edit_settings(model, suite)
    all_pairs = all_pairs_window(model, config.feature_layer)  # on the grid its edits use
    defaults = {"model": model, "frames": size["frames"], "seed": seed, **config.to_dict()}
    jobs, clips = [], []
    for c, clip in enumerate(moving_clips(size["clips"], seed, frames=size["frames"])):
        task = colour_edit_task(clip, seed + c)
        world = {"world": int(clip.scene.seed)}
        edit = {"clip": world, "edit": f"{task['source']} -> {task['target']}",
                "negative_prompt": task["source_prompt"] if negative_is_source else ""}
        clips.append({"clip": c, "world": world["world"], "caption": clip.caption, "edit": edit["edit"]})
        names = {}
        for setting, overrides in TABLE2:
            names[setting] = f"c{c}-{_slug(setting)}"
            jobs.append({"name": names[setting], **edit, **overrides})
        for window in sorted({all_pairs if w is None else w for w in WINDOWS}):
            if window != config.window:  # config.window: Table 2's COVE K=3
                jobs.append({"name": f"c{c}-cove-k3-l{window}", **edit, "attention": "cove", "k": DEFAULT_K,
                             "window": window})
            jobs.append({"name": f"c{c}-corr-l{window}", "task": "correspond", "clip": world, "k": DEFAULT_K,
                         "window": window, "correspondence": "diffusion"})
        jobs.append({"name": f"c{c}-corr-flow", "task": "correspond", "clip": world, "correspondence": "flow"})
    return {"defaults": jsonable(defaults), "jobs": jobs, "clips": clips}


# ---------------------------------------------------------------------------- the tables


def _stats(values) -> tuple[float, float]:
    """Mean and sample standard deviation of the finite values (``nan`` when there are none;
    spread 0 for one value)."""
    values = [float(v) for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    if not values:
        return math.nan, math.nan
    return float(np.mean(values)), float(np.std(values, ddof=1)) if len(values) > 1 else 0.0


def _by_name(rows) -> dict:
    return {row["name"]: row for row in rows if row.get("status") == "done"}


def _values(done: dict, clips: int, name: str, key: str) -> list:
    return [done.get(f"c{c}-{name}", {}).get(key) for c in range(clips)]


def _fewer(a: list, b: list) -> tuple[int, int]:
    """On how many clips ``a < b``, out of the clips both have."""
    pairs = [(x, y) for x, y in zip(a, b) if isinstance(x, (int, float)) and isinstance(y, (int, float))]
    return sum(x < y for x, y in pairs), len(pairs)


def _verdict(paper: str, here: str, shown: bool) -> str:
    return (f"Paper: {paper} Here: {here} "
            + ("The paper's effect shows on this model." if shown else
               "**This model does not show the paper's effect.**"))


def table2(rows, clips: int) -> dict:
    """Table 2 (K) from the batch's rows: per setting, mean and spread over clips."""
    done = _by_name(rows)
    out = []
    for setting, _ in TABLE2:
        slug = _slug(setting)
        row = {"setting": setting}
        for key, label in (("warp_error", "warp error"), ("psnr", "PSNR"), ("attribute_accuracy", "recoloured")):
            row[label], row[f"{label} sd"] = _stats(_values(done, clips, slug, key))
        row["seconds"] = _stats(_values(done, clips, slug, "seconds"))[0]
        row["clips"] = sum(v is not None for v in _values(done, clips, slug, "warp_error"))
        paper = PAPER_TABLE2.get(setting)
        row["paper: subject consistency"], row["paper: motion smoothness"] = paper if paper else (None, None)
        out.append(row)
    truth = _stats(_values(done, clips, "cove-k3", "truth_warp_error"))[0]
    better, total = _fewer(_values(done, clips, "cove-k3", "warp_error"), _values(done, clips, "st", "warp_error"))
    k1, k3 = out[2]["warp error"], out[3]["warp error"]
    note = _verdict(
        "correspondence-guided attention makes edits more consistent than spatial-temporal "
        "attention alone (motion smoothness 0.9049 -> 0.9892), K = 3 more than K = 1.",
        f"COVE K=3 flickers less than spatial-temporal attention alone on {better} of {total} clips "
        f"(warp error {out[3]['warp error']:.3f} vs {out[1]['warp error']:.3f}; K=1 {k1:.3f}; the true "
        f"edit's own {truth:.3f}).", total > 0 and better == total and k3 <= k1)
    return {"title": "Table 2: K, the matches per frame", "note": note, "rows": out,
            "plot": ["setting", "warp error"]}


def table4(rows, clips: int, all_pairs: int, config_window: int, frames: int, feature: tuple[int, int]) -> dict:
    """Table 4 (window size) from the batch's rows; ``GFLOP`` is the search's work on this
    model's feature map for ``frames`` frames, ``feature`` = (grid side, channels), counted as
    the paper counts it (one direction: ``cove.eval.bench.correspondence_gflop``; the search
    runs both)."""
    from .bench import correspondence_gflop

    done = _by_name(rows)
    side, channels = feature
    out = []
    for window in WINDOWS:
        l = all_pairs if window is None else window
        edit = "cove-k3" if l == config_window else f"cove-k3-l{l}"
        corr = f"corr-l{l}"
        row = {"window l": "all pairs" if window is None else l, "l used": l,
               "GFLOP": correspondence_gflop(frames, (side, side), channels, l)}
        row["search s"] = _stats(_values(done, clips, corr, "time.correspond.correspondence"))[0]
        row["features s"] = _stats(_values(done, clips, corr, "time.correspond.features"))[0]
        row["memory MB"] = _stats(_values(done, clips, corr, "correspondence_mb"))[0]
        row["PCK"], row["PCK sd"] = _stats(_values(done, clips, corr, "pck"))
        row["edit warp error"], row["edit warp error sd"] = _stats(_values(done, clips, edit, "warp_error"))
        row["edit peak MB"] = _stats(_values(done, clips, edit, "peak_mb"))[0]
        paper = PAPER_TABLE4.get(window)
        row["paper GFLOP"], row["paper GB"] = paper if paper else (None, None)
        out.append(row)
    fewer, total = _fewer(_values(done, clips, "corr-l3", "pck"), _values(done, clips, f"corr-l{config_window}", "pck"))
    times = [row["search s"] for row in out[:4]]
    note = _verdict(
        "the search costs grow with l (0.448 / 4.03 / 11.2 / 241 GFLOP for l = 3 / 9 / 15 / all) "
        "and l = 3 loses fast motion.",
        f"l = 3 finds fewer true matches than l = {config_window} on {fewer} of {total} clips "
        f"(PCK {out[0]['PCK']:.3f} vs {out[2]['PCK']:.3f}); search time for l = 3 / 5 / 9 / 15: "
        + " / ".join(f"{t * 1000:.1f}" for t in times) + " ms"
        + (f"; all pairs is l = {all_pairs} on this model's grid." if all_pairs in WINDOWS else "."),
        total > 0 and fewer == total)
    return {"title": "Table 4: window size l", "note": note, "rows": out, "plot": ["window l", "PCK"]}


def table5(rows, clips: int, config_window: int) -> dict:
    """Table 5 (correspondence accuracy) from the batch's rows."""
    done = _by_name(rows)
    out = []
    for method, name in (("optical flow", "corr-flow"), ("diffusion features", f"corr-l{config_window}")):
        row = {"method": method}
        for key, label in (("pck", "PCK"), ("pck_objects", "PCK objects"), ("pck_background", "PCK background")):
            row[label], row[f"{label} sd"] = _stats(_values(done, clips, name, key))
        row["paper PCK"] = PAPER_TABLE5[method]
        out.append(row)
    better, total = _fewer(_values(done, clips, "corr-flow", "pck"),
                           _values(done, clips, f"corr-l{config_window}", "pck"))
    note = _verdict(
        "diffusion features match more points than optical flow (PCK 0.92 vs 0.87).",
        f"diffusion features beat optical flow on {better} of {total} clips (PCK {out[1]['PCK']:.3f} vs "
        f"{out[0]['PCK']:.3f}; objects {out[1]['PCK objects']:.3f} vs {out[0]['PCK objects']:.3f}, "
        f"background {out[1]['PCK background']:.3f} vs {out[0]['PCK background']:.3f}).",
        total > 0 and better == total)
    return {"title": "Table 5: correspondence accuracy", "note": note, "rows": out, "plot": ["method", "PCK"]}


def tables(rows, clips: int, config_window: int, frames: int, feature: tuple[int, int]) -> dict:
    """The three tables (``{"table2", "table4", "table5"}``, each ``{"title", "note", "rows",
    "plot"}``) from the rows of the batch's results table; ``feature``: (grid side, channels)
    of the model's feature map."""
    from ..window import fit_window

    all_pairs = fit_window(2 * feature[0] + 1, (feature[0], feature[0]))
    return {"table2": table2(rows, clips),
            "table4": table4(rows, clips, all_pairs, config_window, frames, feature),
            "table5": table5(rows, clips, config_window)}


# ---------------------------------------------------------------------------- running it


def run(*, suite: str = "small", model: str = "cove-tiny", work="runs/bench-paper", device=None,
        dtype=None, seed: int = 0, log=None) -> dict:
    """Build the suite's job list, run it with ``cove batch`` (``cove.app.batch.run``) and make
    the tables. Returns the JSON-ready result on the main process, ``{}`` on the others."""
    import yaml

    from ..app import batch, io

    work = Path(work)
    start = time.perf_counter()
    listing = paper_jobs(suite, model, seed)
    jobs = batch.check_jobs(listing["defaults"], listing["jobs"], work, work, str(work / "jobs.yaml"))
    if batch.process_state(device)[0].is_main_process:  # the list the run can be resumed from
        io.write_atomic(work / "jobs.yaml", lambda path: Path(path).write_text(
            yaml.safe_dump({"defaults": listing["defaults"], "jobs": listing["jobs"]}, sort_keys=False)))
    result = batch.run(jobs, work, device=device, dtype=dtype, log=log)
    if not result:
        return {}
    config, _ = edit_settings(model, suite)
    rows = result["rows"]
    devices = sorted({str(row.get("device")) for row in rows if row.get("device")})
    return jsonable({
        "machine": {**machine_info(), "devices": devices, "processes": result.get("processes")},
        "suite": suite, "model": model, "frames": SUITES[suite]["frames"], "clips": listing["clips"],
        "config": config.to_dict(), "work": str(work), "failed": result["failed"],
        # this run's wall time; the jobs' own (a resumed run reuses finished jobs), and their CPU time
        "minutes": (time.perf_counter() - start) / 60,
        "job_minutes": sum(row.get("seconds") or 0.0 for row in rows) / 60,
        "cpu_minutes": sum(row.get("cpu_s") or 0.0 for row in rows) / 60,
        "sections": tables(rows, len(listing["clips"]), config.window, SUITES[suite]["frames"],
                           feature_shape(model, config.feature_layer)),
        "jobs": rows,
    })


def add_command(bench_commands) -> None:
    """Register ``paper`` on the ``cove bench`` subparsers."""
    p = bench_commands.add_parser(
        "paper", help="the paper's Tables 2, 4 and 5 on ShapesWorld (runs cove batch)",
        description="Tables 2 (K), 4 (window) and 5 (correspondence accuracy) on ShapesWorld clips "
                    "with exact ground truth; writes JSON for the docs' benchmarks page.")
    p.add_argument("--suite", choices=tuple(SUITES), default="small",
                   help="small: 3 clips of 8 frames (cove-tiny on two CPU cores: about 15 min); "
                        "full: 10 clips of 32 frames (GPUs)")
    p.add_argument("--model", default="cove-tiny", help="cove-tiny, or any SD 1.x/2.x diffusers folder or hub id")
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N on one process (default: accelerate's)")
    p.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None)
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads per process")
    p.add_argument("--work", type=Path, default=None,
                   help="the batch's folder: job outputs and manifests, resumable "
                        "(default: runs/bench-paper-<suite>)")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="JSON path (default: docs/benchmarks_paper_<cpu|cuda>.json)")
    p.set_defaults(run=main)


def main(args) -> int:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run(suite=args.suite, model=args.model, work=args.work or Path(f"runs/bench-paper-{args.suite}"),
                 device=args.device, dtype=args.dtype)
    if not result:
        return 0
    from ..app import io

    cuda = any(d.startswith("cuda") for d in result["machine"]["devices"])
    path = args.output or Path(f"docs/benchmarks_paper_{'cuda' if cuda else 'cpu'}.json")
    io.write_atomic(path, lambda tmp: Path(tmp).write_text(dumps(result, digits=4)))
    for section in result["sections"].values():
        print(f"{section['title']}: {section['note']}")
    print(f"{result['failed']} jobs failed" if result["failed"] else
          f"done in {result['minutes']:.1f} min; the jobs took {result['job_minutes']:.1f} min "
          f"({result['cpu_minutes']:.1f} CPU min)")
    print(f"wrote {path}")
    return 1 if result["failed"] else 0

