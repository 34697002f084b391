"""``cove batch``: many edits (or correspondences) from one job list, on one process or many.

    cove batch jobs.yaml -o runs/batch                                  # one process
    accelerate launch -m cove.app.batch jobs.yaml -o runs/batch         # the processes accelerate starts

A job list is YAML (or JSONL: one job per line, an optional first line ``{"defaults": {...}}``)::

    defaults:                        # every job's starting point; a job's own keys win
      model: cove-tiny
      settings: model                # unset settings: the model's own (default: paper)
      inversion_steps: 20            # CoveConfig overrides: top level,
      extras.strength: 0.5           # extras.* and engine.* (dotted, or nested dicts)
    jobs:
      - clip: clips/dog.mp4          # a video, a .gif or a folder of frames (relative to the list)
        prompt: a cat walking
        source_prompt: a dog walking
      - clip: {world: 3}             # a ShapesWorld clip: scored against its exact ground truth
        edit: red star -> yellow star   # the true edit; its caption is the prompt
        k: 5
      - clip: {world: 3}
        task: correspond             # the correspondence only (``cove correspond``)
        correspondence: flow

Steps:

1. read and check every job before any model loads, with ``cove edit``'s checks and one-line
   errors (``cove.app.checks``, the ``CoveConfig`` validators, ``cove.sd.check_prompts``);
2. skip the jobs whose manifest is complete (same inputs' hash); every process has read the
   same states before any starts;
3. each process claims the next pending job from the shared list (an exclusive claim file,
   so no two processes run a job or write a file twice), runs it with the job's own seed, and
   writes its outputs under ``OUT/jobs/<name>/`` and then, last and atomically, its
   ``manifest.json`` (inputs' hash, config, versions, metrics, timings, peak memory); a
   failing job is recorded with its error and the others go on;
4. the main process gathers every manifest into ``OUT/results.csv`` and ``OUT/results.json``.
"""
from __future__ import annotations

import csv
import dataclasses
import difflib
import hashlib
import io as stdio
import json
import math
import os
import re
import sys
import time
import traceback
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

import numpy as np

from ..config import CoveConfig, EngineOptions, Extras, config_from_overrides

TASKS = ("edit", "correspond")
JOB_KEYS = ("name", "task", "clip", "prompt", "source_prompt", "negative_prompt", "edit", "model", "settings",
            "frames", "size", "seed", "fps")
SETTINGS = ("paper", "model")  # what unset CoveConfig keys default to (``cove edit --settings``)
CONFIG_KEYS = tuple(f.name for f in dataclasses.fields(CoveConfig) if f.name not in ("engine", "extras")) \
    + tuple(f"engine.{f.name}" for f in dataclasses.fields(EngineOptions)) \
    + tuple(f"extras.{f.name}" for f in dataclasses.fields(Extras))
DEFAULTS = {"task": "edit", "prompt": "", "source_prompt": None, "negative_prompt": None, "edit": None,
            "model": "cove-tiny", "settings": "paper", "frames": None, "size": None, "seed": 0, "fps": 8.0}
WORLD_FRAMES = 8  # frames of a ShapesWorld clip unless the job says
# How ``check_prompts`` names a job's keys.
PROMPT_KEYS = {"prompt": "prompt", "source_prompt": "source_prompt", "negative_prompt": "negative_prompt",
               "mask": "extras.mask_threshold", "p2p": "extras.p2p_steps"}
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
MANIFEST = "manifest.json"


# ---------------------------------------------------------------------------- the job list


@dataclass(frozen=True)
class Job:
    """One checked job of a list. ``clip`` is a resolved path, or ``None`` for a ShapesWorld
    clip of seed ``world``; ``edit`` the true ShapesWorld edit ``(source, target)`` phrases."""

    index: int
    name: str
    task: str
    clip: str | None
    world: int | None
    prompt: str
    source_prompt: str
    negative_prompt: str
    edit: tuple[str, str] | None
    model: str
    frames: int | None
    size: int | None
    seed: int
    fps: float
    config: CoveConfig
    inputs_hash: str = ""

    def spec(self) -> dict:
        """What the job's result depends on (its inputs' hash covers this and the clip's bytes)."""
        return {"task": self.task, "clip": self.clip if self.world is None else {"world": self.world},
                "prompt": self.prompt, "source_prompt": self.source_prompt,
                "negative_prompt": self.negative_prompt, "edit": list(self.edit) if self.edit else None,
                "model": self.model, "frames": self.frames, "size": self.size, "seed": self.seed,
                "fps": self.fps, "config": self.config.to_dict()}


def _flat(entry: dict, where: str) -> dict:
    """``{"extras": {"strength": 0.5}}`` -> ``{"extras.strength": 0.5}``."""
    out = {}
    for key, value in entry.items():
        if key in ("engine", "extras") and isinstance(value, dict):
            out.update({f"{key}.{k}": v for k, v in value.items()})
        elif not isinstance(key, str):
            raise ValueError(f"{where}: keys must be text, got {key!r}")
        else:
            out[key] = value
    return out


def _unknown(key: str) -> str:
    close = difflib.get_close_matches(key, JOB_KEYS + CONFIG_KEYS, n=1)
    return f"unknown key {key!r}" + (f" (did you mean {close[0]!r}?)" if close else "")


def build_config(overrides: dict, base: CoveConfig | None = None) -> CoveConfig:
    """A ``CoveConfig`` from ``{"k": 5, "engine.frame_chunk": 4, "extras.strength": 0.5}`` over
    ``base`` (default: the paper's ``CoveConfig()``; its validators give the one-line errors).
    As ``cove edit --denoise-steps``, a new ``denoise_steps`` without ``pnp_steps`` keeps PnP's
    share of the steps."""
    base = base or CoveConfig()
    config = config_from_overrides(overrides, base)
    if "denoise_steps" in overrides and "pnp_steps" not in overrides:
        config = replace(config, pnp_steps=base.with_denoise_steps(config.denoise_steps).pnp_steps)
    mask_shape = [k for k in ("extras.mask_dilate", "extras.mask_fill_holes")
                  if k in overrides and overrides[k] != getattr(base.extras, k.split(".")[1])]
    if mask_shape and config.extras.mask_threshold is None:
        raise ValueError(f"{' and '.join(mask_shape)} shape the edit mask; expected extras.mask_threshold too")
    return config


def _check_type(key: str, value, kind, allow_none: bool = False):
    if value is None and allow_none:
        return None
    ok = isinstance(value, kind) and not (kind in (int, (int, float)) and isinstance(value, bool))
    if not ok:
        name = {int: "an integer", str: "text", (int, float): "a number"}.get(kind, str(kind))
        raise ValueError(f"{key}: expected {name}, got {value!r}")
    return value


def _parse_edit(text) -> tuple[str, str]:
    if not isinstance(text, str) or text.count("->") != 1:
        raise ValueError(f"edit: expected 'source phrase -> target phrase' (e.g. 'red star -> yellow star'), got {text!r}")
    source, target = (part.strip() for part in text.split("->"))
    return source, target


def clip_hash(path) -> str:
    """sha256 of a clip's bytes (a folder: of its files' names and bytes, in order)."""
    from .checks import input_files

    digest = hashlib.sha256()
    for file in input_files(path):
        digest.update(file.name.encode())
        with open(file, "rb") as handle:
            for block in iter(lambda: handle.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def make_job(entry: dict, index: int, base: Path, out: Path) -> Job:
    """Check one job (defaults already merged) and resolve it; a one-line ValueError
    (FileNotFoundError for a missing clip) on the first problem. Reads only headers."""
    from .. import world
    from ..loading import check_model
    from ..recommended import negative_prompt, paper_settings, read_settings
    from ..sd import check_prompts
    from .checks import check_input

    unknown = [k for k in entry if k not in JOB_KEYS and k not in CONFIG_KEYS]
    if unknown:
        raise ValueError(_unknown(unknown[0]))
    job = {**DEFAULTS, **{k: v for k, v in entry.items() if k in JOB_KEYS}}
    if job["settings"] not in SETTINGS:
        raise ValueError(f"settings: expected one of {SETTINGS}, got {job['settings']!r}")
    model = _check_type("model", job["model"], str)
    check_model(model)
    own = read_settings(model) if job["settings"] == "model" else paper_settings()
    config = build_config({k: v for k, v in entry.items() if k in CONFIG_KEYS}, own.config)
    name = _check_type("name", job.get("name", f"{index:03d}"), str)
    if not NAME.fullmatch(name):
        raise ValueError(f"name: expected letters, digits, '.', '_' or '-' (a folder name), got {name!r}")
    if job["task"] not in TASKS:
        raise ValueError(f"task: expected one of {TASKS}, got {job['task']!r}")
    for key in ("frames", "size"):
        if _check_type(key, job[key], int, allow_none=True) is not None and job[key] < 1:
            raise ValueError(f"{key}: expected an integer >= 1, got {job[key]}")
    seed = _check_type("seed", job["seed"], int)
    fps = _check_type("fps", job["fps"], (int, float))
    if not 0 < fps < math.inf:
        raise ValueError(f"fps: expected a finite number > 0, got {fps}")
    clip, seed_world, edit = job.get("clip"), None, None
    source_prompt = job["source_prompt"]
    prompt = _check_type("prompt", job["prompt"], str)
    if isinstance(clip, dict):  # a ShapesWorld clip
        if set(clip) != {"world"}:
            raise ValueError(f"clip: expected a path or {{world: SEED}}, got {clip!r}")
        seed_world = _check_type("clip.world", clip["world"], int)
        scene = world.random_scene(seed_world, frames=job["frames"] or WORLD_FRAMES, size=job["size"] or 64)
        if job["edit"] is not None:
            edit = _parse_edit(job["edit"])
            truth = world.edit(scene, *edit)  # checks the phrases against the caption
            prompt = prompt or truth.caption
        source_prompt = scene.caption if source_prompt is None else source_prompt
        clip = None
    elif isinstance(clip, str) and clip:
        if job["edit"] is not None:
            raise ValueError("edit: the true edit needs a ShapesWorld clip, {world: SEED}")
        clip = str((base / clip).resolve()) if not Path(clip).is_absolute() else clip
    else:
        raise ValueError(f"clip: expected a path or {{world: SEED}}, got {clip!r}")
    source_prompt = "" if source_prompt is None else source_prompt
    negative = job["negative_prompt"]
    negative = negative_prompt(source_prompt, own.negative) if negative is None else negative
    if job["task"] == "edit":
        if not prompt:
            raise ValueError("prompt: expected a target prompt (or, for a ShapesWorld clip, an edit)")
        check_prompts(prompt, source_prompt, negative, mask=config.extras.mask_threshold is not None,
                      p2p=config.extras.p2p_steps > 0, names=PROMPT_KEYS)
    elif config.attention == "cove" and job["frames"] == 1:
        raise ValueError("frames: a correspondence needs at least 2 frames")
    folder = out / "jobs" / name
    outputs = [folder / f for f in (("edited.mp4", "side_by_side.mp4") if job["task"] == "edit"
                                    else ("matches.mp4", "matches.pt"))]
    inputs_hash = hashlib.sha256()
    if clip is not None:  # the device, the clip's headers, outputs never onto the input
        args = SimpleNamespace(device="cpu", input=clip, overwrite=True, frames=job["frames"])
        check_input(args, outputs, job["size"])
        inputs_hash.update(clip_hash(clip).encode())
    made = Job(index=index, name=name, task=job["task"], clip=clip, world=seed_world, prompt=prompt,
               source_prompt=source_prompt, negative_prompt=negative, edit=edit, model=model,
               frames=job["frames"], size=job["size"], seed=seed, fps=float(fps), config=config)
    inputs_hash.update(json.dumps(made.spec(), sort_keys=True).encode())
    return replace(made, inputs_hash=inputs_hash.hexdigest())


def _entries(path: Path) -> tuple[dict, list]:
    """``(defaults, [job dicts])`` of a YAML or JSONL job list."""
    if path.suffix.lower() == ".jsonl":
        entries = []
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    entries.append(json.loads(line))
                except json.JSONDecodeError as error:
                    raise ValueError(f"{path} line {number}: not JSON ({error.msg})") from None
        defaults = {}
        if entries and isinstance(entries[0], dict) and set(entries[0]) == {"defaults"}:
            defaults = entries.pop(0)["defaults"]
        data = {"defaults": defaults, "jobs": entries}
    elif path.suffix.lower() in (".yaml", ".yml", ".json"):
        import yaml

        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark is not None else ""
            problem = getattr(error, "problem", None) or str(error).splitlines()[0]
            raise ValueError(f"{path}{where}: not valid YAML ({problem})") from None
        if isinstance(data, list):
            data = {"jobs": data}
    else:
        raise ValueError(f"job list {path.name!r}: expected a .yaml, .yml, .json or .jsonl file")
    if not isinstance(data, dict) or set(data) - {"defaults", "jobs"}:
        raise ValueError(f"{path}: expected a list of jobs, or 'defaults' and 'jobs'")
    defaults, jobs = data.get("defaults") or {}, data.get("jobs") or []
    if not isinstance(defaults, dict):
        raise ValueError(f"{path}: defaults must be a mapping of keys to values")
    if not isinstance(jobs, list) or not jobs:
        raise ValueError(f"{path} holds no jobs")
    return defaults, jobs


def check_jobs(defaults: dict, entries: list, base, out, where: str = "jobs") -> list[Job]:
    """Every job of a list, checked (:func:`make_job`) before any work: the first problem is one
    ValueError naming ``where`` (the list), the job's number and its name. Clip paths are
    relative to ``base``."""
    defaults = _flat(defaults, f"{where}: defaults")
    jobs, names = [], {}
    for i, entry in enumerate(entries, 1):
        label = f"{where}: job {i}"
        if not isinstance(entry, dict):
            raise ValueError(f"{label}: expected a mapping of keys to values, got {entry!r}")
        if isinstance(entry.get("name"), str):
            label += f" ({entry['name']})"
        try:
            job = make_job({**defaults, **_flat(entry, label)}, i, Path(base), Path(out))
        except (ValueError, OSError) as error:
            raise type(error)(f"{label}: {_one_line(error)}") from None
        if job.name in names:
            raise ValueError(f"{label}: name {job.name!r} is also job {names[job.name]}'s")
        names[job.name] = i
        jobs.append(job)
    return jobs


def read_jobs(path, out) -> list[Job]:
    """The checked jobs (:func:`check_jobs`) of the YAML or JSONL list at ``path``."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such job list: {path}")
    defaults, entries = _entries(path)
    return check_jobs(defaults, entries, path.parent, out, str(path))


# ---------------------------------------------------------------------------- one job


@dataclass
class Source:
    """A job's clip: uint8 (F, H, W, 3) ``frames``; for ShapesWorld, ``motion`` (the source
    ``Clip``, with its true motion), ``truth`` (the true edit) and ``target`` (its object's phrase)."""

    frames: np.ndarray
    motion: object = None
    truth: object = None
    target: str | None = None


def load_source(pipe, job: Job) -> Source:
    """The job's frames at the model's size (or the job's ``size``)."""
    from .. import world
    from ..sd import frame_size
    from .common import load_frames_for

    if job.world is None:
        return Source(load_frames_for(pipe, SimpleNamespace(input=job.clip, size=job.size, frames=job.frames)))
    scene = world.random_scene(job.world, frames=job.frames or WORLD_FRAMES, size=job.size or frame_size(pipe))
    clip = world.render(scene)
    if job.edit is None:
        return Source(clip.frames, motion=clip)
    return Source(clip.frames, motion=clip, truth=world.render(world.edit(scene, *job.edit)), target=job.edit[1])


def frames_hash(frames: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(frames).tobytes()).hexdigest()


def run_edit(pipe, job: Job, source: Source, folder: Path) -> dict:
    """Edit and score (``cove.eval.scoring.score_edit``); the edit's PCK and the true edit's own
    flicker where the clip has ground truth. Writes ``edited.mp4`` and ``side_by_side.mp4``."""
    from ..eval import metrics
    from ..eval.scoring import score_correspondence, score_edit
    from . import io

    result, scores = score_edit(pipe, source.frames, job.prompt, source_prompt=job.source_prompt,
                                negative_prompt=job.negative_prompt, config=job.config, seed=job.seed,
                                motion=source.motion, truth=source.truth, target_phrase=source.target)
    if source.truth is not None:
        scores["truth_warp_error"] = metrics.warp_error(source.truth.frames, source.motion)
    if source.motion is not None and result.correspondence is not None:
        scores.update(score_correspondence(result.correspondence, source.motion))
    tick = time.perf_counter()
    clips, labels = [source.frames, result.frames], ["source", f"{job.config.attention}: {job.prompt}"]
    if source.truth is not None:
        clips, labels = clips + [source.truth.frames], labels + ["ground truth"]
    io.write_all({folder / "edited.mp4": result.frames,
                  folder / "side_by_side.mp4": io.side_by_side(*clips, labels=labels)}, fps=job.fps)
    timings = {f"edit.{k}": v for k, v in result.timings.items()}
    return {"metrics": scores, "timings": {**timings, "write": time.perf_counter() - tick},
            "frames_sha256": frames_hash(result.frames), "outputs": ["edited.mp4", "side_by_side.mp4"]}


def run_correspond(pipe, job: Job, source: Source, folder: Path) -> dict:
    """Stages 1-3 (or optical flow on the same grid) as ``cove correspond``, with their time and
    peak memory; PCK against the true motion, objects and background apart, where there is one.
    Writes ``matches.mp4`` and ``matches.pt``."""
    import torch

    from ..eval.scoring import score_correspondence
    from ..eval.speed import measure
    from ..pipeline import compute_correspondence
    from ..window import fit_window
    from . import io
    from .correspond import correspondence_payload, draw_correspondence, write_tensors

    with measure(pipe.device) as used:
        corr, timings = compute_correspondence(pipe, source.frames, job.config,
                                               torch.Generator("cpu").manual_seed(job.seed))
    diffusion = job.config.correspondence == "diffusion"
    window = fit_window(job.config.window, corr.grid) if diffusion else None
    scores = {"correspondence_mb": used["MB"], "window_used": window}
    if source.motion is not None:
        scores.update(score_correspondence(corr, source.motion))
    tick = time.perf_counter()
    payload = correspondence_payload(corr, source.frames, job.config.correspondence, window)
    io.write_all({folder / "matches.mp4": draw_correspondence(source.frames, corr),
                  folder / "matches.pt": lambda path: write_tensors(path, payload)}, fps=job.fps)
    return {"metrics": scores, "timings": {**{f"correspond.{k}": v for k, v in timings.items()},
                                           "write": time.perf_counter() - tick},
            "frames_sha256": hashlib.sha256(corr.index.cpu().numpy().tobytes()).hexdigest(),
            "outputs": ["matches.mp4", "matches.pt"]}


TASK_RUNNERS = {"edit": run_edit, "correspond": run_correspond}


def versions() -> dict:
    import platform

    import diffusers
    import torch

    from .. import __version__

    found = {"cove": __version__, "python": platform.python_version(), "torch": torch.__version__,
             "diffusers": diffusers.__version__, "numpy": np.__version__}
    try:
        import accelerate

        found["accelerate"] = accelerate.__version__
    except ImportError:
        pass
    return found


def run_job(job: Job, pipe, folder: Path, process: int) -> dict:
    """Run one job on a loaded pipeline; returns its manifest (status ``done`` or ``failed``
    with a one-line ``error``). Never raises for a failing job (Ctrl-C still stops the run)."""
    from ..eval.speed import measure

    manifest = {"name": job.name, "index": job.index, "task": job.task, "status": "failed",
                "inputs_hash": job.inputs_hash, "job": job.spec(), "versions": versions(),
                "device": str(pipe.device) if pipe is not None else None, "process": process}
    start, cpu = time.perf_counter(), time.process_time()
    try:
        if pipe is None:
            raise RuntimeError("no pipeline")
        with measure(pipe.device) as used:
            tick = time.perf_counter()
            source = load_source(pipe, job)
            read = time.perf_counter() - tick
            done = TASK_RUNNERS[job.task](pipe, job, source, folder)
        manifest.update(done, status="done", peak_mb=used["MB"])
        manifest["timings"] = {"read": read, **done["timings"], "total": time.perf_counter() - start}
    except (ValueError, OSError) as error:
        manifest.update(error=_one_line(error), timings={"total": time.perf_counter() - start})
    except Exception as error:  # noqa: BLE001  recorded; the other jobs go on
        manifest.update(error=f"{type(error).__name__}: {_one_line(error)}", traceback=traceback.format_exc(),
                        timings={"total": time.perf_counter() - start})
    manifest["cpu_s"] = time.process_time() - cpu  # this process's CPU time, all threads: the work, whatever the load
    manifest["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return manifest


def write_manifest(folder: Path, manifest: dict) -> dict:
    """Write ``manifest.json`` atomically (``io.write_atomic``); a failed write turns the
    manifest into a failed one that names it (the run keeps it in memory)."""
    from ..eval.bench import dumps
    from . import io

    try:
        io.write_atomic(folder / MANIFEST, lambda tmp: Path(tmp).write_text(dumps(manifest)))
    except OSError as error:
        manifest = {**manifest, "status": "failed", "error": manifest.get("error") or _one_line(error)}
    return manifest


def read_manifest(folder: Path) -> dict | None:
    try:
        data = json.loads((folder / MANIFEST).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def complete(job: Job, folder: Path) -> dict | None:
    """The job's manifest if it is complete for these inputs (status ``done``, same hash)."""
    manifest = read_manifest(folder)
    if manifest and manifest.get("status") == "done" and manifest.get("inputs_hash") == job.inputs_hash:
        return manifest
    return None


def clear_leftovers(folder: Path) -> None:
    """Remove what a killed run may leave in a job's folder: its manifest, pending and
    temporary files (hidden names)."""
    if not folder.is_dir():
        return
    for path in folder.iterdir():
        if path.name == MANIFEST or (path.name.startswith(".") and (".pending-" in path.name or ".tmp" in path.name)):
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------------------- the results table

ROW_KEYS = ("name", "task", "status", "clip", "edit", "prompt", "model", "attention", "k", "window",
            "correspondence", "frames", "seed")


def results_row(manifest: dict) -> dict:
    """One flat row of the results table from a job's manifest."""
    spec = manifest.get("job", {})
    config = spec.get("config", {})
    clip = spec.get("clip")
    row = {"name": manifest.get("name"), "task": manifest.get("task"), "status": manifest.get("status"),
           "clip": f"world:{clip['world']}" if isinstance(clip, dict) else clip,
           "edit": " -> ".join(spec["edit"]) if spec.get("edit") else "", "prompt": spec.get("prompt"),
           "model": spec.get("model"), "attention": config.get("attention"), "k": config.get("k"),
           "window": config.get("window"), "correspondence": config.get("correspondence"),
           "frames": spec.get("frames"), "seed": spec.get("seed")}
    row.update(manifest.get("metrics") or {})
    row["seconds"] = (manifest.get("timings") or {}).get("total")
    row["cpu_s"] = manifest.get("cpu_s")
    row.update({f"time.{k}": v for k, v in (manifest.get("timings") or {}).items() if k != "total"})
    row.update(peak_mb=manifest.get("peak_mb"), device=manifest.get("device"), process=manifest.get("process"),
               frames_sha256=manifest.get("frames_sha256"), error=manifest.get("error", ""))
    return row


TAIL_KEYS = ("peak_mb", "device", "process", "frames_sha256", "error")


def columns_of(rows: list[dict]) -> list[str]:
    """The table's columns: the job's identity, its metrics, seconds and stage times, then
    peak memory, device, process, output hash and error."""
    seen: list[str] = []
    for row in rows:
        seen += [k for k in row if k not in seen]

    def group(key: str) -> int:
        if key in ROW_KEYS:
            return 0
        if key in TAIL_KEYS:
            return 3
        return 2 if key in ("seconds", "cpu_s") or key.startswith("time.") else 1

    return sorted(seen, key=lambda k: (group(k), ROW_KEYS.index(k) if k in ROW_KEYS else 0,
                                       TAIL_KEYS.index(k) if k in TAIL_KEYS else 0))


def csv_text(rows: list[dict]) -> str:
    """The results table as CSV text (empty cells for missing values)."""
    from ..eval.bench import jsonable

    columns = columns_of(rows)
    buffer = stdio.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in jsonable(rows):
        writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in columns})
    return buffer.getvalue()


# ---------------------------------------------------------------------------- processes


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def process_state(device: str | None):
    """accelerate's ``PartialState`` (on the CPU when asked or when there is no GPU) and this
    process's device: ``device`` on one process, else the one accelerate gives the process."""
    import torch
    from accelerate import PartialState

    from ..sd import check_device

    wanted = check_device(device) if device is not None else None
    cpu = (wanted is not None and wanted.type == "cpu") or not torch.cuda.is_available()
    state = PartialState(cpu=cpu)
    if wanted is not None and state.num_processes == 1:
        return state, wanted
    return state, state.device


def _run_id(state) -> str:
    """One id for this run, the same on every process (the main process draws it)."""
    import uuid

    ids = [uuid.uuid4().hex[:12] if state.is_main_process else None]
    if state.num_processes > 1:
        from accelerate.utils import broadcast_object_list

        broadcast_object_list(ids)
    return ids[0]


def claim(folder: Path, run: str) -> bool:
    """Take a job for this process: create ``.claim-<run>`` in its folder exclusively."""
    folder.mkdir(parents=True, exist_ok=True)
    try:
        os.close(os.open(folder / f".claim-{run}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return False
    return True


def drop_claims(out: Path, run: str | None = None) -> None:
    """Remove the claim files of run ``run`` (``None``: of every run) under ``out/jobs``."""
    for path in (out / "jobs").glob(f"*/.claim-{run or '*'}"):
        path.unlink(missing_ok=True)


class Progress:
    """One tqdm bar per process on a terminal, else one line per finished job."""

    def __init__(self, state, total: int, file=None):
        self.file, self.state, self.total = file or sys.stderr, state, total
        self.bar = None
        if self.file.isatty():
            from tqdm.auto import tqdm

            self.bar = tqdm(desc=f"process {state.process_index}", unit="job", position=state.process_index,
                            file=self.file, leave=True, dynamic_ncols=True)

    def __call__(self, job: Job, manifest: dict) -> None:
        seconds = (manifest.get("timings") or {}).get("total", 0.0)
        if self.bar is not None:
            self.bar.set_postfix_str(f"{job.name} {manifest['status']}")
            self.bar.update(1)
            return
        how = "done" if manifest["status"] == "done" else f"FAILED ({manifest.get('error', '')})"
        print(f"cove batch: job {job.index}/{self.total} {job.name} {how} in {seconds:.1f} s "
              f"(process {self.state.process_index})", file=self.file, flush=True)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def run(jobs: list[Job], out, *, device=None, dtype=None, log=None) -> dict:
    """Run ``jobs`` on this process's share, gather the results on the main process.

    Every process of an accelerate launch calls this with the same jobs. Returns, on the main
    process, ``{"rows", "failed", "skipped", "ran", "processes", "files": [csv, json]}``
    after writing ``OUT/results.csv`` and ``OUT/results.json``; on the others ``{}``.
    """
    from accelerate.utils import gather_object

    from ..eval.bench import dumps, jsonable, machine_info
    from ..loading import load_pipeline
    from . import io
    from .common import torch_dtype

    out = Path(out)
    state, device = process_state(device)
    log = log or (lambda text: print(text, file=sys.stderr, flush=True))
    run_id = _run_id(state)
    folders = {job.name: out / "jobs" / job.name for job in jobs}
    done = {job.name: complete(job, folders[job.name]) for job in jobs}  # read before anyone writes
    if state.is_main_process:
        drop_claims(out)  # of killed runs
        skipped = sum(m is not None for m in done.values())
        log(f"cove batch: {len(jobs)} jobs, {skipped} complete already, {state.num_processes} process(es)")
    state.wait_for_everyone()

    pipes, ran = {}, {}
    progress = Progress(state, len(jobs))
    try:
        for job in jobs:
            if done[job.name] is not None or not claim(folders[job.name], run_id):
                continue
            clear_leftovers(folders[job.name])
            key = (job.model, str(device), dtype)
            if key not in pipes:
                try:
                    pipes[key] = load_pipeline(job.model, device=device, dtype=torch_dtype(dtype))
                except Exception as error:  # noqa: BLE001  every job of this model fails with it
                    pipes[key] = error
            pipe = pipes[key]
            if isinstance(pipe, Exception):
                manifest = {"name": job.name, "index": job.index, "task": job.task, "status": "failed",
                            "inputs_hash": job.inputs_hash, "job": job.spec(), "versions": versions(),
                            "device": str(device), "process": state.process_index,
                            "error": f"cannot load model {job.model}: {_one_line(pipe)}", "timings": {"total": 0.0}}
            else:
                manifest = run_job(job, pipe, folders[job.name], state.process_index)
            ran[job.name] = write_manifest(folders[job.name], manifest)
            progress(job, ran[job.name])
    finally:
        progress.close()

    gathered = [ran]
    if state.num_processes > 1:
        import torch.distributed

        gathered = gather_object([ran])
        state.wait_for_everyone()
        torch.distributed.destroy_process_group()  # a clean exit for every process
    if not state.is_main_process:
        return {}
    merged = {name: manifest for part in gathered for name, manifest in part.items()}
    rows = []
    for job in jobs:
        manifest = merged.get(job.name) or done[job.name] or read_manifest(folders[job.name])
        rows.append(results_row(manifest) if manifest else {"name": job.name, "task": job.task,
                                                            "status": "not run", "error": "no process ran it"})
    drop_claims(out, run_id)
    table = csv_text(rows)
    report = {"jobs": len(jobs), "processes": state.num_processes, "machine": machine_info(),
              "rows": jsonable(rows)}
    files = [out / "results.csv", out / "results.json"]
    io.write_all({files[0]: lambda path: Path(path).write_text(table),
                  files[1]: lambda path: Path(path).write_text(dumps(report))})
    failed = sum(row["status"] != "done" for row in rows)
    return {"rows": rows, "failed": failed, "skipped": sum(m is not None for m in done.values()),
            "ran": len(merged), "processes": state.num_processes, "files": files}


# ---------------------------------------------------------------------------- the command


def add_arguments(parser) -> None:
    """``cove batch``'s options (also those of ``python -m cove.app.batch``)."""
    parser.add_argument("jobs", type=Path, help="the job list: .yaml / .yml / .json, or .jsonl (one job per line)")
    parser.add_argument("-o", "--output", type=Path, required=True,
                        help="output folder: jobs/<name>/ per job, results.csv and results.json")
    parser.add_argument("--device", default=None,
                        help="cpu, cuda or cuda:N on one process (default: the one accelerate gives "
                             "each process: its GPU, else the CPU)")
    parser.add_argument("--dtype", choices=("float32", "float16", "bfloat16"), default=None,
                        help="default: float32 on cpu, float16 on cuda")
    parser.add_argument("--threads", type=int, default=None, metavar="N",
                        help="torch CPU threads per process (default: torch's)")
    parser.add_argument("--check", action="store_true",
                        help="check the job list and say which jobs are complete; run nothing")


def cmd_batch(args) -> int:
    """Run a job list (``cove batch``): exit 0 when every job is done, 1 when some failed
    (each recorded in the results), 2 for a job list refused before any work."""
    jobs = read_jobs(args.jobs, args.output)
    if args.output.exists() and not args.output.is_dir():
        raise ValueError(f"output {args.output} is a file; expected a folder")
    from .checks import writable_folder

    writable_folder(args.output / "results.csv")
    if args.check:
        complete_now = [job.name for job in jobs if complete(job, args.output / "jobs" / job.name)]
        print(f"{args.jobs}: {len(jobs)} jobs checked, {len(complete_now)} complete already")
        return 0
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    result = run(jobs, args.output, device=args.device, dtype=args.dtype)
    if not result:
        return 0
    for path in result["files"]:
        print(f"wrote {path}")
    print(f"cove batch: {len(jobs)} jobs: {result['ran']} ran, {result['skipped']} skipped (complete), "
          f"{result['failed']} failed")
    return 1 if result["failed"] else 0


def main(argv: list[str] | None = None) -> int:
    """``python -m cove.app.batch`` (what ``accelerate launch -m`` runs): ``cove batch``."""
    from .cli import main as cove_main

    return cove_main(["batch", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
