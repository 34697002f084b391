"""``cove batch``: job lists checked before any work, one process or two giving the same table,
a killed run resuming, a failing job recorded while the others go on."""
import csv
import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from cove.app import batch, cli, io
from cove.config import CoveConfig

ROOT = Path(__file__).resolve().parents[1]
# Columns that depend on the run (time, memory, which process), not on the job.
RUN_COLUMNS = ("seconds", "cpu_s", "peak_mb", "process", "correspondence_mb")
ENOSPC_REPORT = ("Error writing '{path}': [out#0/mp4 @ 0x42c85880] Error writing trailer: No space left on "
                 "device\n[out#0/mp4 @ 0x42c85880] Error closing file: No space left on device\n")


def env():
    """The environment of a child process: this checkout's cove first."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}


def write_jobs(folder: Path, model, jobs, **defaults) -> Path:
    path = folder / "jobs.yaml"
    path.write_text(yaml.safe_dump({"defaults": {"model": str(model), "frames": 3, "inversion_steps": 2,
                                                 "denoise_steps": 2, "guidance_scale": 3.0, **defaults},
                                    "jobs": jobs}))
    return path


def three_jobs():
    edit = {"clip": {"world": 1}, "edit": "green star -> yellow star"}
    return [{"name": "cove", **edit, "k": 2, "window": 3},
            {"name": "st", **edit, "attention": "spatiotemporal", "seed": 5},
            {"name": "corr", "task": "correspond", "clip": {"world": 2}, "window": 5}]


def table(out: Path) -> list[dict]:
    with open(out / "results.csv") as handle:
        return list(csv.DictReader(handle))


def same_results(a: list[dict], b: list[dict]) -> bool:
    keep = [k for k in a[0] if k not in RUN_COLUMNS and not k.startswith("time.")]
    return [[r[k] for k in keep] for r in a] == [[r[k] for k in keep] for r in b]


# ---------------------------------------------------------------------------- the job list


def test_job_list_merges_defaults_and_resolves_clips(tmp_path):
    frames = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    clip = io.write_video(tmp_path / "clips" / "walk.gif", frames)
    listing = tmp_path / "lists" / "jobs.yaml"
    listing.parent.mkdir()
    listing.write_text(yaml.safe_dump({
        "defaults": {"denoise_steps": 10, "extras": {"strength": 0.5}, "engine.frame_chunk": 2},
        "jobs": [{"clip": "../clips/walk.gif", "prompt": "a red star", "k": 5},
                 {"name": "w", "clip": {"world": 1}, "edit": "green star -> yellow star", "extras.strength": 0.8}],
    }))
    first, second = batch.read_jobs(listing, tmp_path / "out")
    assert first.name == "001" and first.clip == str(clip) and first.config.k == 5
    assert (first.config.denoise_steps, first.config.pnp_steps) == (10, 8)  # PnP keeps its share, as cove edit
    assert first.config.extras.strength == 0.5 and first.config.engine.frame_chunk == 2
    assert second.config.extras.strength == 0.8 and second.world == 1 and second.clip is None
    assert (second.prompt, second.source_prompt) == ("a yellow star on sand", "a green star on sand")
    assert first.inputs_hash != second.inputs_hash
    clip.write_bytes(clip.read_bytes() + b"\0")  # the clip's bytes are part of the inputs' hash
    assert batch.read_jobs(listing, tmp_path / "out")[0].inputs_hash != first.inputs_hash
    jsonl = tmp_path / "jobs.jsonl"
    jsonl.write_text('{"defaults": {"frames": 2}}\n\n{"clip": {"world": 4}, "prompt": "x", "name": "a"}\n')
    (job,) = batch.read_jobs(jsonl, tmp_path / "out")
    assert (job.name, job.frames, job.world) == ("a", 2, 4)


def test_settings_model_starts_a_job_from_the_models_own(tiny_folder, tmp_path):
    """``settings: model``: the keys a job leaves unset, and its negative prompt, come from the
    model folder's cove_settings.json; ``paper`` (the default) ignores it."""
    from dataclasses import replace

    from cove.config import Extras
    from cove.recommended import write_settings

    own = CoveConfig(inversion_steps=4, denoise_steps=10, pnp_steps=10, feature_t=50, extras=Extras(strength=0.5))
    write_settings(tiny_folder, own, "source", "a test's")
    listing = tmp_path / "jobs.yaml"
    listing.write_text(yaml.safe_dump({"defaults": {"model": str(tiny_folder), "settings": "model"}, "jobs": [
        {"clip": {"world": 1}, "edit": "green star -> yellow star"},
        {"clip": {"world": 1}, "edit": "green star -> yellow star", "k": 1, "denoise_steps": 5,
         "negative_prompt": "blurry"},
        {"clip": {"world": 1}, "edit": "green star -> yellow star", "settings": "paper"}]}))
    mine, given, paper = batch.read_jobs(listing, tmp_path / "out")
    assert mine.config == own and mine.negative_prompt == mine.source_prompt == "a green star on sand"
    assert (given.config.k, given.config.denoise_steps, given.config.pnp_steps, given.config.feature_t) == (1, 5, 5, 50)
    assert given.negative_prompt == "blurry"
    assert paper.config == CoveConfig() and paper.negative_prompt == ""
    assert len({mine.inputs_hash, given.inputs_hash, paper.inputs_hash}) == 3
    write_settings(tiny_folder, replace(own, extras=Extras(p2p_steps=5)), "source", "a test's")
    listing.write_text(yaml.safe_dump({"jobs": [{"model": str(tiny_folder), "settings": "model", "clip": {"world": 1},
                                                 "prompt": "x", "source_prompt": ""}]}))
    with pytest.raises(ValueError, match="extras.p2p_steps needs a source_prompt"):  # the model's word swap
        batch.read_jobs(listing, tmp_path / "out")


BAD_LISTS = [
    ("jobs: []", "holds no jobs"),
    (": bad: [", "not valid YAML"),
    ("- {clip: {world: 1}, prompt: x, windw: 3}", "job 1: unknown key 'windw' (did you mean 'window'?)"),
    ("- {clip: {world: 1}, prompt: x}\n- {clip: {world: 1}, prompt: x, k: 0}", "job 2: k must be >= 1, got 0"),
    ("- {clip: nowhere.mp4, prompt: x}", "no such video, gif or frame folder"),
    ("- {clip: {world: 1}, prompt: x, source_prompt: '', extras.mask_threshold: 0.4}",
     "extras.mask_threshold needs a source_prompt"),
    ("- {clip: {world: 1}, edit: 'red circle -> blue circle'}", "expected a phrase of the caption"),
    ("- {clip: {world: 1}, prompt: x, model: nothing}", "model must be 'cove-tiny'"),
    ("- {clip: {world: 1}, prompt: x, seed: '1'}", "seed: expected an integer"),
    ("- {name: a b, clip: {world: 1}, prompt: x}", "job 1 (a b): name: expected letters"),
    ("- {name: a, clip: {world: 1}, prompt: x}\n- {name: a, clip: {world: 2}, prompt: y}", "is also job 1's"),
    ("defaults: {engine: {frame_chunk: 0}}\njobs: [{clip: {world: 1}, prompt: x}]", "frame_chunk must be"),
    ("- {clip: {world: 1}, extras.mask_dilate: 0, prompt: x}", "expected extras.mask_threshold too"),
    ("- {clip: {world: 1}, extras: {mask_fill_holes: true}, prompt: x}", "expected extras.mask_threshold too"),
    ("- {clip: {world: 1}, prompt: x, settings: own}", "settings: expected one of ('paper', 'model')"),
]


@pytest.mark.parametrize("text, message", BAD_LISTS)
def test_bad_job_list_is_one_line_before_any_work(tmp_path, capsys, monkeypatch, text, message):
    import cove.loading

    def refuse(*args, **kwargs):
        raise AssertionError("a model loaded before the job list was checked")

    monkeypatch.setattr(cove.loading, "load_pipeline", refuse)
    (tmp_path / "jobs.yaml").write_text(text)
    assert cli.main(["batch", str(tmp_path / "jobs.yaml"), "-o", str(tmp_path / "out")]) == 2
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("cove: error:") and message in lines[0], lines
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------- running


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_give_the_table_of_one(tiny_folder, tmp_path, capsys):
    """accelerate's launcher with two CPU processes (gloo) against one process, both with one
    torch thread: the same metrics and the same output frames, job by job."""
    jobs = write_jobs(tmp_path, tiny_folder, three_jobs())
    threads = torch.get_num_threads()
    try:
        assert cli.main(["batch", str(jobs), "-o", str(tmp_path / "one"), "--threads", "1"]) == 0
    finally:
        torch.set_num_threads(threads)
    err = capsys.readouterr().err
    assert sum("done in" in line for line in err.splitlines()) == 3  # one line per finished job
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
              "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
              "--main_process_port", str(free_port()), "-m", "cove.app.batch", str(jobs), "-o", str(tmp_path / "two")]
    done = subprocess.run(launch, env=env(), capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "two" / "results.json").read_text())
    assert report["processes"] == 2
    one, two = table(tmp_path / "one"), table(tmp_path / "two")
    assert [r["name"] for r in one] == ["cove", "st", "corr"] and {r["status"] for r in two} == {"done"}
    assert same_results(one, two)
    assert float(one[0]["pck"]) >= 0 and float(one[0]["warp_error"]) > 0 and one[2]["pck_objects"] != ""
    assert not list((tmp_path / "two" / "jobs").glob("*/.claim-*"))  # claims are cleaned up


def test_killed_run_redoes_only_unfinished_jobs(tiny_folder, tmp_path, capsys):
    jobs = write_jobs(tmp_path, tiny_folder, three_jobs())
    out = tmp_path / "out"
    child = subprocess.Popen([sys.executable, "-m", "cove.app.batch", str(jobs), "-o", str(out), "--threads", "1"],
                             env=env(), stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    try:
        for line in child.stderr:  # one line per finished job: kill the run right after the first
            if "done in" in line:
                child.send_signal(signal.SIGKILL)
                break
    finally:
        child.kill()
        child.wait()
    first = out / "jobs" / "cove" / "manifest.json"
    kept = first.read_bytes()
    assert json.loads(kept)["status"] == "done"
    assert not (out / "jobs" / "st" / "manifest.json").exists() and not (out / "results.csv").exists()
    assert cli.main(["batch", str(jobs), "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "1 complete already" in captured.err and "2 ran, 1 skipped" in captured.out
    assert [line.split()[4] for line in captured.err.splitlines() if "done in" in line] == ["st", "corr"]
    assert first.read_bytes() == kept  # the finished job was not redone
    assert [r["status"] for r in table(out)] == ["done"] * 3
    leftovers = [p.name for p in (out / "jobs").rglob(".*")]
    assert leftovers == []  # no claim, pending or temporary file


def test_failing_job_is_recorded_and_the_others_go_on(tiny_folder, tmp_path, capsys, monkeypatch):
    """A full disk while one job writes: that job fails with one line naming the file, leaves no
    output, and the others finish; the exit status says a job failed."""
    jobs = write_jobs(tmp_path, tiny_folder, [
        {"name": name, "task": "correspond", "clip": {"world": i}, "correspondence": "flow"}
        for i, name in enumerate(("a", "b", "c"))])
    out = tmp_path / "out"
    mediapy = io._mediapy()
    write = mediapy.write_video

    def full_disk(path, images, **kwargs):  # what mediapy raises when ffmpeg finds the disk full
        if Path(path).parent.name == "b":
            Path(path).write_bytes(b"partial")
            raise RuntimeError(ENOSPC_REPORT.format(path=path))
        return write(path, images, **kwargs)

    monkeypatch.setattr(mediapy, "write_video", full_disk)
    assert cli.main(["batch", str(jobs), "-o", str(out)]) == 1
    captured = capsys.readouterr()
    rows = {r["name"]: r for r in table(out)}
    assert [rows[n]["status"] for n in "abc"] == ["done", "failed", "done"]
    assert rows["b"]["error"] == f"cannot write {out / 'jobs' / 'b' / 'matches.mp4'}: No space left on device"
    assert sorted(p.name for p in (out / "jobs" / "b").iterdir()) == ["manifest.json"]  # nothing partial
    assert "b FAILED (cannot write" in captured.err and "1 failed" in captured.out
    assert json.loads((out / "jobs" / "b" / "manifest.json").read_text())["status"] == "failed"
    monkeypatch.setattr(mediapy, "write_video", write)  # the disk has room again: only b is redone
    assert cli.main(["batch", str(jobs), "-o", str(out)]) == 0
    assert "1 ran, 2 skipped" in capsys.readouterr().out


def test_results_row_of_a_manifest():
    manifest = {"name": "x", "task": "edit", "status": "done", "job": {
        "clip": {"world": 3}, "edit": ["red star", "blue star"], "prompt": "p", "model": "cove-tiny",
        "frames": 8, "seed": 0, "config": CoveConfig(k=5).to_dict()},
        "metrics": {"warp_error": 1.5}, "timings": {"read": 0.1, "edit.total": 2.0, "total": 2.5},
        "cpu_s": 4.0, "peak_mb": 10.0, "device": "cpu", "process": 1}
    row = batch.results_row(manifest)
    assert row["clip"] == "world:3" and row["edit"] == "red star -> blue star" and row["k"] == 5
    assert (row["warp_error"], row["seconds"], row["time.edit.total"]) == (1.5, 2.5, 2.0)
    columns = batch.columns_of([row, {**row, "pck": 0.5}])
    assert columns[:3] == ["name", "task", "status"] and columns[-1] == "error"
    assert columns.index("pck") < columns.index("seconds") < columns.index("peak_mb")
