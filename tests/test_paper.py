"""``cove bench paper``: its job list, its tables, and a whole run on a tiny model."""
import importlib.util
import json
import math
from pathlib import Path

import pytest

from cove.app import batch, cli
from cove.app.demo import DEMO_CONFIG
from cove.config import CoveConfig
from cove.eval import paper
from cove.recommended import negative_prompt
from cove.tiny.presets import edit_negative

ROOT = Path(__file__).resolve().parents[1]


def test_small_suite_job_list(tmp_path):
    listing = paper.paper_jobs("small", "cove-tiny")
    names = [job["name"] for job in listing["jobs"]]
    assert len(names) == len(set(names)) == 3 * 13  # per clip: 5 + 3 edits, 4 + 1 correspondences
    assert {n.split("-", 1)[1] for n in names} == {
        "per-frame", "st", "cove-k1", "cove-k3", "cove-k5", "cove-k3-l3", "cove-k3-l5", "cove-k3-l15",
        "corr-l3", "corr-l5", "corr-l9", "corr-l15", "corr-flow"}  # l = 9 is Table 2's K = 3; all pairs l = 15
    layer = DEMO_CONFIG.feature_layer  # the suite's edits read up_blocks.0: 16 x 16 x 128
    assert paper.all_pairs_window("cove-tiny", layer) == 15 and paper.feature_shape("cove-tiny", layer) == (16, 128)
    assert paper.feature_shape("cove-tiny", "up_blocks.1") == (32, 64)  # the suite's layer sets its grid
    with pytest.raises(ValueError, match="expected a decoder block up_blocks.u of cove-tiny"):
        paper.feature_shape("cove-tiny", "up_blocks.7")
    jobs = batch.check_jobs(listing["defaults"], listing["jobs"], tmp_path, tmp_path)  # no model loads
    assert all(job.config == CoveConfig(**{**DEMO_CONFIG.__dict__, "attention": job.config.attention,
                                            "k": job.config.k, "window": job.config.window})
               for job in jobs if job.task == "edit")
    edit = next(job for job in jobs if job.name == "c0-cove-k3")
    assert edit.source_prompt == listing["clips"][0]["caption"]
    assert edit.negative_prompt == negative_prompt(edit.source_prompt, edit_negative())  # cove-tiny's preset
    assert edit.prompt != edit.source_prompt and edit.edit is not None
    assert len({job.world for job in jobs}) == 3
    with pytest.raises(ValueError, match="suite must be one of"):
        paper.paper_jobs("huge")


def row(name, **values):
    return {"name": name, "status": "done", **values}


def test_tables_mean_spread_and_verdicts():
    rows = []
    for c, (st, k1, k3) in enumerate([(2.0, 1.8, 1.5), (3.0, 2.9, 2.5)]):
        rows += [row(f"c{c}-per-frame", warp_error=4.0, psnr=20.0, attribute_accuracy=0.5),
                 row(f"c{c}-st", warp_error=st), row(f"c{c}-cove-k1", warp_error=k1),
                 row(f"c{c}-cove-k3", warp_error=k3, truth_warp_error=0.5), row(f"c{c}-cove-k5", warp_error=k3)]
        for l, pck in ((3, 0.5), (5, 0.7), (9, 0.8), (15, 0.8)):
            rows.append(row(f"c{c}-corr-l{l}", pck=pck, pck_objects=pck - 0.1, pck_background=pck,
                            **{"time.correspond.correspondence": 0.01 * l}))
        rows.append(row(f"c{c}-corr-flow", pck=0.9, pck_objects=0.9, pck_background=0.9))
    rows.append({"name": "c0-cove-k3-l3", "status": "failed", "warp_error": 99.0})  # failed: not counted
    tables = paper.tables(rows, 2, 9, 8, (16, 128))
    t2 = {r["setting"]: r for r in tables["table2"]["rows"]}
    assert t2["COVE K=3"]["warp error"] == pytest.approx(2.0)
    assert t2["COVE K=3"]["warp error sd"] == pytest.approx(math.sqrt(0.5))  # sample spread of 1.5, 2.5
    assert t2["COVE K=3"]["paper: motion smoothness"] == 0.9892 and t2["per-frame"]["clips"] == 2
    assert "on 2 of 2 clips" in tables["table2"]["note"] and "does not show" not in tables["table2"]["note"]
    t4 = tables["table4"]["rows"]
    assert [r["window l"] for r in t4] == [3, 5, 9, 15, "all pairs"] and t4[-1]["l used"] == 15
    assert t4[0]["edit warp error"] != t4[0]["edit warp error"]  # nan: its only edit failed
    assert t4[2]["GFLOP"] == pytest.approx(2 * 7 * 256 * 81 * 128 / 1e9) and t4[2]["paper GFLOP"] == 4.03
    assert "on 2 of 2 clips" in tables["table4"]["note"]
    t5 = tables["table5"]
    assert [r["method"] for r in t5["rows"]] == ["optical flow", "diffusion features"]
    assert "on 0 of 2 clips" in t5["note"] and "does not show the paper's effect" in t5["note"]
    assert all(t["plot"][0] in t["rows"][0] and t["plot"][1] in t["rows"][0] for t in tables.values())


def load_hook():
    spec = importlib.util.spec_from_file_location("cove_docs", ROOT / "docs" / "hooks" / "cove_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_bench_paper_runs_on_a_tiny_model(tiny_folder, tmp_path, capsys, monkeypatch):
    """The whole command on a tiny suite: a batch, the JSON with machine and commit, and the
    docs hook drawing its three tables and plots; a second run resumes (nothing to redo)."""
    monkeypatch.setitem(paper.SUITES, "small", {"clips": 2, "frames": 2})
    tiny = CoveConfig(inversion_steps=1, denoise_steps=1, pnp_steps=1, guidance_scale=3.0)
    monkeypatch.setattr(paper, "edit_settings", lambda model, suite: (tiny, False))
    out = tmp_path / "docs" / "benchmarks_paper_cpu.json"
    argv = ["bench", "paper", "--model", str(tiny_folder), "--work", str(tmp_path / "work"), "-o", str(out)]
    assert cli.main(argv) == 0, capsys.readouterr().err
    printed = capsys.readouterr().out
    assert "Table 2" in printed and f"wrote {out}" in printed
    result = json.loads(out.read_text())
    assert result["machine"]["commit"] and result["machine"]["devices"] == ["cpu"] and result["failed"] == 0
    assert result["job_minutes"] > 0 and result["cpu_minutes"] > 0
    assert len(result["jobs"]) == 2 * 13 and all(r["status"] == "done" for r in result["jobs"])
    assert set(result["sections"]) == {"table2", "table4", "table5"}
    for section in result["sections"].values():
        assert section["rows"] and ("shows on this model" in section["note"] or "does not show" in section["note"])
    assert (tmp_path / "work" / "jobs.yaml").is_file() and (tmp_path / "work" / "results.csv").is_file()
    markdown = load_hook().one_benchmark_markdown(out.parent, out.name)
    for title in ("Table 2: K", "Table 4: window size l", "Table 5: correspondence accuracy"):
        assert f"### {title}" in markdown
    assert markdown.count("<svg") == 3 and "| COVE K=3 |" in markdown and "paper GFLOP" in markdown
    assert cli.main(argv) == 0
    assert "26 jobs, 26 complete already" in capsys.readouterr().err
