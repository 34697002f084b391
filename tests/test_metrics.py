"""Tests of cove.metrics: PCK, warp error, PSNR, edit fidelity and the ShapesWorld judge."""
import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from cove import metrics, world
from cove.eval import judge

# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _translation_truth(F, H, W, shift=(1, 0)):
    """Ground truth of a grid translated by ``shift`` cells per frame: positions, visible, index."""
    y, x = np.meshgrid(np.arange(H), np.arange(W), indexing="ij")
    start = np.stack([x, y], -1).reshape(H * W, 2).astype(float)  # (N, 2)
    step = np.array(shift, float)
    offset = (np.arange(F)[None, :] - np.arange(F)[:, None])[:, None, :, None]  # (F, 1, F, 1) j - i
    positions = start[None, :, None, :] + offset * step  # (F, N, F, 2)
    visible = (
        (positions[..., 0] >= 0) & (positions[..., 0] <= W - 1)
        & (positions[..., 1] >= 0) & (positions[..., 1] <= H - 1)
    )  # (F, N, F)
    clipped = np.clip(np.rint(positions), 0, [W - 1, H - 1]).astype(np.int64)
    index = clipped[..., 1] * W + clipped[..., 0]  # (F, N, F)
    return positions, visible, index


class _Corr:
    """Duck-typed Correspondence (index (F, N, F, K), grid)."""

    def __init__(self, index, grid):
        self.index, self.grid = index, grid


# ---------------------------------------------------------------------------------------------
# PCK
# ---------------------------------------------------------------------------------------------


def test_pck_is_one_for_ground_truth_and_zero_for_wrong_matches():
    F, H, W = 4, 6, 7
    positions, visible, index = _translation_truth(F, H, W)
    index_k = torch.from_numpy(np.repeat(index[..., None], 3, -1))  # (F, N, F, K)
    assert metrics.pck(_Corr(index_k, (H, W)), positions, visible) == 1.0
    assert metrics.pck(index, positions, visible, grid=(H, W)) == 1.0
    assert metrics.pck(torch.from_numpy(index), positions, visible, grid=(H, W)) == 1.0
    # every match three rows away (cyclically) is wrong
    wrong = (index + 3 * W) % (H * W)
    assert metrics.pck(wrong, positions, visible, grid=(H, W)) == 0.0
    # all matches at token 0 are right only where the truth is within 1 cell of (0, 0)
    zero = np.zeros_like(index)
    near = (np.linalg.norm(positions, axis=-1) <= 1) & visible
    near[np.arange(F), :, np.arange(F)] = False
    counted = visible.copy()
    counted[np.arange(F), :, np.arange(F)] = False
    assert metrics.pck(zero, positions, visible, grid=(H, W)) == pytest.approx(near.sum() / counted.sum())


def test_pck_threshold_and_visibility():
    F, H, W = 3, 5, 5
    positions, visible, index = _translation_truth(F, H, W, shift=(0, 0))
    x, y = index % W, index // W
    one_off = y * W + np.clip(x + 1, 0, W - 1)  # one cell to the right (or on the truth at the border)
    diagonal = np.clip(y + 1, 0, H - 1) * W + np.clip(x + 1, 0, W - 1)  # sqrt(2) cells away
    assert metrics.pck(one_off, positions, visible, 1.0, grid=(H, W)) == 1.0
    assert metrics.pck(one_off, positions, visible, 0.5, grid=(H, W)) == pytest.approx(1 / 5)
    assert metrics.pck(diagonal, positions, visible, 1.0, grid=(H, W)) < 1.0
    assert metrics.pck(diagonal, positions, visible, 1.5, grid=(H, W)) == 1.0
    # wrong matches where the point is hidden do not count
    hidden = np.zeros_like(visible)
    hidden[:, : H * W // 2] = True
    broken = index.copy()
    broken[:, H * W // 2 :] = (index[:, H * W // 2 :] + 2 * W) % (H * W)
    assert metrics.pck(broken, positions, visible & hidden, grid=(H, W)) == 1.0
    assert metrics.pck(broken, positions, visible, grid=(H, W)) < 0.7
    assert math.isnan(metrics.pck(index, positions, np.zeros_like(visible), grid=(H, W)))


def test_pck_self_pairs_and_offsets():
    F, H, W = 4, 4, 4
    positions, visible, index = _translation_truth(F, H, W, shift=(0, 0))
    wrong_self = index.copy()
    wrong_self[np.arange(F), :, np.arange(F)] = (index[np.arange(F), :, np.arange(F)] + 2 * W) % (H * W)
    assert metrics.pck(wrong_self, positions, visible, grid=(H, W)) == 1.0
    assert metrics.pck(wrong_self, positions, visible, grid=(H, W), exclude_self=False) == pytest.approx(0.75)
    # break only the pairs two frames apart
    far = index.copy()
    i, j = np.nonzero(np.abs(np.arange(F)[:, None] - np.arange(F)[None, :]) == 2)
    far[i, :, j] = (index[i, :, j] + 2 * W) % (H * W)
    by_offset = metrics.pck_by_offset(far, positions, visible, grid=(H, W))
    assert sorted(by_offset) == [1, 2, 3]
    assert by_offset[1] == 1.0 and by_offset[3] == 1.0 and by_offset[2] == 0.0
    assert 0 in metrics.pck_by_offset(far, positions, visible, grid=(H, W), exclude_self=False)


def test_pck_rejects_bad_shapes():
    positions, visible, index = _translation_truth(2, 3, 3)
    with pytest.raises(ValueError, match="grid"):
        metrics.pck(index, positions, visible)
    with pytest.raises(ValueError, match="tokens"):
        metrics.pck(index, positions, visible, grid=(2, 3))
    with pytest.raises(ValueError, match="gt_positions"):
        metrics.pck(index, positions[:, :4], visible, grid=(3, 3))


# ---------------------------------------------------------------------------------------------
# warp error
# ---------------------------------------------------------------------------------------------


def _translated_clip(F=4, H=20, W=24, seed=0):
    """A random texture translated by one pixel per frame (exact, no interpolation) + its truth."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (H, W + F, 3), dtype=np.uint8)
    frames = np.stack([texture[:, F - i : F - i + W] for i in range(F)])  # (F, H, W, 3) moves right
    positions, visible, _ = _translation_truth(F, H, W, shift=(1, 0))
    return frames, positions, visible


def test_warp_error_zero_for_consistent_clip_and_positive_for_flicker():
    frames, positions, visible = _translated_clip()
    assert metrics.warp_error(frames, positions, visible) == pytest.approx(0.0, abs=1e-9)
    flicker = frames.astype(int)
    flicker[1::2] += 20
    flicker = np.clip(flicker, 0, 255).astype(np.uint8)
    error = metrics.warp_error(flicker, positions, visible)
    assert 10 < error < 21
    per_pair = metrics.warp_error(flicker, positions, visible, reduce=False)
    assert per_pair.shape == (3,) and (per_pair > 10).all()
    # motion in the wrong direction is not consistent
    assert metrics.warp_error(frames, positions[:, :, ::-1], visible[:, :, ::-1]) > 30


def test_warp_error_bilinear_half_pixel():
    # a horizontal ramp; the truth says every pixel moved half a pixel: sampling is bilinear
    ramp = np.tile((np.arange(16) * 10).astype(np.uint8)[None, :, None], (8, 1, 3))  # (H, W, 3)
    frames = np.stack([ramp, ramp])  # (2, H, W, 3)
    positions, visible, _ = _translation_truth(2, 8, 16, shift=(0.5, 0))
    assert not visible[0, 15, 1]  # the last column leaves the image and does not count
    assert metrics.warp_error(frames, positions, visible) == pytest.approx(5.0)


# ---------------------------------------------------------------------------------------------
# PSNR and edit fidelity
# ---------------------------------------------------------------------------------------------


def test_psnr_known_values():
    a = np.full((2, 4, 4, 3), 100, np.uint8)
    assert metrics.psnr(a, a) == math.inf
    b = a + 1
    assert metrics.psnr(a, b) == pytest.approx(20 * math.log10(255))
    c = a.copy()
    c[0, 0, 0] = 110  # one pixel off by 10: MSE = 100 / 32
    assert metrics.psnr(a, c) == pytest.approx(10 * math.log10(255**2 * 32 / 100))
    mask = np.zeros((2, 4, 4), bool)
    mask[1] = True
    assert metrics.psnr(a, c, mask) == math.inf
    assert metrics.psnr(a, c, ~mask) < metrics.psnr(a, c)
    with pytest.raises(ValueError):
        metrics.psnr(a, a[0])


def test_edit_fidelity_synthetic():
    palette = {"red": (220, 30, 30), "green": (30, 200, 40), "blue": (30, 60, 220)}
    target = np.full((2, 8, 8, 3), 128, np.uint8)
    mask = np.zeros((2, 8, 8), bool)
    mask[:, 2:5, 2:5] = True
    target[mask] = palette["green"]
    perfect = metrics.edit_fidelity(target, target, mask, "green", palette=palette)
    assert perfect["psnr"] == perfect["background_psnr"] == perfect["object_psnr"] == math.inf
    assert perfect["attribute_accuracy"] == 1.0
    edited = target.copy()
    edited[0][mask[0]] = palette["red"]  # first frame not edited
    edited[:, 0, 0] = 0
    result = metrics.edit_fidelity(edited, target, mask, (30, 200, 40), palette=palette)
    assert result["attribute_accuracy"] == pytest.approx(0.5)
    assert result["object_psnr"] < 15 and result["background_psnr"] > 20
    assert result["psnr"] < result["background_psnr"]


def test_edit_fidelity_rejects_mismatched_shapes():
    frames = np.zeros((2, 8, 8, 3), np.uint8)
    with pytest.raises(ValueError, match="object_mask"):
        metrics.edit_fidelity(frames, frames, np.zeros((2, 8, 7), bool), (0, 0, 0), palette={"k": (0, 0, 0)})


# ---------------------------------------------------------------------------------------------
# with ShapesWorld
# ---------------------------------------------------------------------------------------------

from cove.eval.bench import jsonable  # noqa: E402
from cove.tiny import measures, presets, quality  # noqa: E402


def test_warp_error_of_a_rendered_clip_is_small_and_flicker_raises_it():
    clip = world.render(world.random_scene(1, frames=4))
    error = metrics.warp_error(clip.frames, clip)
    assert 0 < error < 3  # anti-aliasing and bilinear resampling of the texture only
    positions, visible = clip.ground_truth(grid=clip.frames.shape[1:3])  # pixel level
    assert metrics.warp_error(clip.frames, positions, visible) == pytest.approx(error)
    flicker = clip.frames.astype(int)
    flicker[1::2] += 15
    assert metrics.warp_error(np.clip(flicker, 0, 255).astype(np.uint8), clip) > error + 8


def test_edit_fidelity_of_the_ground_truth_edit_is_perfect():
    clip = world.render(world.demo_scene(frames=4))
    task = measures.colour_edit_task(clip, 0)
    assert task["source"] in clip.caption and task["target"] in task["target_prompt"]
    perfect = metrics.edit_fidelity(task["truth"], task["truth"], task["mask"], task["target_colour"])
    assert perfect == {"psnr": math.inf, "background_psnr": math.inf, "object_psnr": math.inf,
                       "attribute_accuracy": 1.0}
    # the unedited clip has the right background (up to the anti-aliased outline just outside
    # the mask) but the wrong colour
    unedited = metrics.edit_fidelity(clip.frames, task["truth"], task["mask"], task["target_colour"])
    assert unedited["attribute_accuracy"] == 0.0 and unedited["background_psnr"] > 35
    assert unedited["object_psnr"] < 15


def test_parse_caption():
    assert judge.parse_caption("a red star and an orange circle on grass") == {
        "objects": [("red", "star"), ("orange", "circle")], "background": "grass"}
    assert judge.parse_caption("squares on snow") == {"objects": [(None, "square")], "background": "snow"}


def test_judge_is_accurate_on_single_object_renders():
    # random frames of moving scenes: rotation, scale, partly outside the frame
    correct = {"colour": 0, "shape": 0, "background": 0, "all": 0}
    n = 100
    for seed in range(n):
        scene = world.random_scene(seed, frames=8, n_objects=1)
        image = world.render(scene).frames[seed % 8]
        followed = judge.prompt_followed(image, scene.caption)
        for key in correct:
            correct[key] += followed[key]
    accuracy = {key: value / n for key, value in correct.items()}
    assert min(accuracy.values()) >= 0.95, accuracy


def test_judge_tolerates_blur():
    # generated images have softer outlines than renders
    import cv2

    hits = 0
    for seed in range(200, 240):
        scene = world.random_scene(seed, frames=1, n_objects=1)
        image = cv2.GaussianBlur(world.render(scene).frames[0], (0, 0), 1.0)
        hits += judge.prompt_followed(image, scene.caption)["all"]
    assert hits >= 36


def test_prompt_followed_detects_wrong_colour_shape_and_background():
    scene = world.random_scene(3, frames=1, n_objects=1)
    image = world.render(scene).frames[0]
    obj = scene.objects[0]
    assert judge.prompt_followed(image, scene.caption)["all"]
    judged = judge.judge_image(image)
    assert judged["background"] == scene.background and judged["objects"] == [(obj.colour, obj.shape)]
    other_colour = next(c for c in world.COLOURS if c != obj.colour)
    other_shape = next(s for s in world.SHAPES if s != obj.shape)
    other_background = next(b for b in world.BACKGROUNDS if b != scene.background)
    wrong = judge.prompt_followed(image, f"a {other_colour} {obj.shape} on {scene.background}")
    assert wrong == {"colour": False, "shape": True, "background": True, "all": False}
    wrong = judge.prompt_followed(image, f"a {obj.colour} {other_shape} on {other_background}")
    assert wrong == {"colour": True, "shape": False, "background": False, "all": False}
    # an empty background follows no object prompt
    empty = world.render(world.Scene((), scene.background, frames=1)).frames[0]
    assert judge.judge_image(empty)["objects"] == []
    assert not judge.prompt_followed(empty, scene.caption)["colour"]


# ---------------------------------------------------------------------------------------------
# the quality gate's pure parts
# ---------------------------------------------------------------------------------------------


def test_quality_prompts_gates_and_table():
    prompts = measures.single_object_prompts()
    assert len(prompts) == len(world.COLOURS) * len(world.SHAPES) * len(world.BACKGROUNDS)
    assert "an orange circle on sand" in prompts
    sample = measures.single_object_prompts(12, seed=0)
    assert len(set(sample)) == 12 and set(sample) <= set(prompts)
    assert sample == measures.single_object_prompts(12, seed=0)
    results = {"prompt_following": {"colour": 1.0, "shape": 0.95, "background": 0.5, "all": 0.5},
               "reconstruction": {"psnr": 31.0}}
    results["edits"] = {"cove": {"warp_to_truth": 1.6, "static_edits": 0, "landed_edits": 0.95},
                        "cove_to_spatiotemporal": 0.7, "spatiotemporal_to_per_frame": 1.01}
    gates = quality.check_gates(results)
    assert gates["reconstruction.psnr"]["passed"] and not gates["prompt_following.background"]["passed"]
    assert "correspondence.diffusion" not in gates  # not measured
    passed = {name: gate["passed"] for name, gate in gates.items() if name.startswith("edits.")}
    assert passed == {"edits.cove.landed_edits": True, "edits.cove.warp_to_truth": False,  # <= 1.5
                      "edits.cove.static_edits": True, "edits.cove_to_spatiotemporal": True,
                      "edits.spatiotemporal_to_per_frame": False}
    results["gates"] = gates
    table = quality.format_table(results)
    assert "prompt_following.background" in table and "NO" in table
    assert jsonable({"a": math.nan, "b": np.float32(1.5), "c": (math.inf,)}) == {
        "a": None, "b": 1.5, "c": ["inf"]}


def test_quality_update_keeps_the_parts_not_measured_again(tmp_path):
    previous = {"model": "cove-tiny", "seed": 0, "quick": False,
                "prompt_following": {"colour": 1.0, "shape": 0.5, "background": 1.0, "all": 0.5, "total_seconds": 9},
                "edit": {"cove": {}, "total_seconds": 5},  # a part that no longer exists
                "reconstruction": {"psnr": 20.0, "total_seconds": 3}, "gates": {}}
    merged = quality.merge(previous, {"reconstruction": {"psnr": 35.0, "total_seconds": 1}, "gates": {}})
    assert "edit" not in merged and merged["prompt_following"] == previous["prompt_following"]
    assert merged["gates"]["reconstruction.psnr"]["passed"] and not merged["gates"]["prompt_following.shape"]["passed"]
    out = tmp_path / "q.json"
    out.write_text(json.dumps({**previous, "seed": 3}))
    with pytest.raises(SystemExit, match="measured with"):
        quality.main(["--out", str(out), "--update", "--only", "reconstruction"])
    with pytest.raises(SystemExit, match="cannot read"):
        quality.main(["--out", str(tmp_path / "missing.json"), "--update"])


def test_quality_writes_after_every_part(tmp_path, monkeypatch):
    """A run cut short (a GPU call's timeout) keeps the parts it finished, with their gates."""
    monkeypatch.setattr(quality, "load_tiny", lambda device=None, model="cove-tiny": object())
    monkeypatch.setattr(quality, "machine_info", lambda pipe: {"date": "today", "commit": "abc"})
    monkeypatch.setattr(quality, "measure_reconstruction", lambda pipe, n, seed: {"psnr": 35.0})

    def cut(*args, **kwargs):
        raise KeyboardInterrupt  # the run stops in this part (a timeout, Ctrl-C)

    monkeypatch.setattr(quality, "measure_correspondence", cut)
    out = tmp_path / "q.json"
    with pytest.raises(KeyboardInterrupt):
        quality.main(["--out", str(out), "--only", "reconstruction", "correspondence"])
    saved = json.loads(out.read_text())
    assert saved["reconstruction"]["psnr"] == 35.0 and "correspondence" not in saved
    assert saved["gates"]["reconstruction.psnr"]["passed"] and saved["reconstruction"]["measured"]["commit"] == "abc"


def test_quality_settings_choose_the_edits_config(tmp_path, monkeypatch):
    """--settings edits with a candidate of cove.tiny.settings (an export's own settings), records
    its name, and --update refuses figures measured with other settings."""
    from cove.tiny.settings import CANDIDATES, candidate_config
    monkeypatch.setattr(quality, "load_tiny", lambda device=None, model="cove-tiny": object())
    monkeypatch.setattr(quality, "machine_info", lambda pipe: {"date": "today", "commit": "abc"})
    seen = []
    monkeypatch.setattr(quality, "measure_edits",  # records what it edited with, as measures.measure_edits does
                        lambda pipe, tasks, config, negative, **kw: seen.append((config, negative))
                        or {"config": config.to_dict(), "negative": negative})
    name = "guidance 7.5, no word swap"
    out = tmp_path / "q.json"
    quality.main(["--out", str(out), "--only", "edits", "--settings", name])
    assert seen == [(candidate_config(CANDIDATES[name]), "source")] and seen[0][0].guidance_scale == 7.5
    assert seen[0][0].extras.p2p_steps == 0 and json.loads(out.read_text())["settings"] == name
    # --update keeps a part measured with other settings only where the settings do not change it
    monkeypatch.setattr(quality, "measure_reconstruction", lambda pipe, n, seed: {"psnr": 35.0})
    with pytest.raises(SystemExit, match="edits were measured with other edit settings than 'edit_config' "
                                         r"\(the file names 'guidance 7.5, no word swap'\); measure them too"):
        quality.main(["--out", str(out), "--update", "--only", "reconstruction"])
    quality.main(["--out", str(out), "--update", "--only", "reconstruction", "--settings", name])
    # the name alone is not enough: edits recorded with another config are refused under the same name
    saved = json.loads(out.read_text())
    out.write_text(json.dumps({**saved, "edits": {**saved["edits"], "negative": "empty"}}))
    with pytest.raises(SystemExit, match="other edit settings"):
        quality.main(["--out", str(out), "--update", "--only", "reconstruction", "--settings", name])
    quality.main(["--out", str(out), "--update", "--only", "edits"])  # the other settings' edits, replaced
    saved = json.loads(out.read_text())
    assert saved["settings"] == "edit_config" and saved["reconstruction"]["psnr"] == 35.0
    assert seen[-1] == (presets.edit_config(), presets.edit_negative())
    with pytest.raises(ValueError, match="settings must be 'model' or one of"):
        quality.run(settings="guidance 99", pipe=object())


def test_quality_settings_model_reads_the_export_folders_own(tmp_path, monkeypatch, tiny_folder):
    """--settings model: an export's edits take its folder's cove_settings.json (config and
    negative-prompt policy); on cove-tiny that is edit_config."""
    from cove.config import CoveConfig, Extras
    from cove.recommended import write_settings
    from cove.tiny.presets import edit_config, edit_negative

    monkeypatch.setattr(quality, "load_tiny", lambda device=None, model="cove-tiny": object())
    monkeypatch.setattr(quality, "machine_info", lambda pipe: {"date": "today", "commit": "abc"})
    seen = []
    monkeypatch.setattr(quality, "measure_edits",
                        lambda pipe, tasks, config, negative, **kw: seen.append((config, negative)) or {})
    own = CoveConfig(feature_t=25, feature_layer="up_blocks.1", extras=Extras(strength=0.6))
    write_settings(tiny_folder, own, "empty", "a test's")
    out = tmp_path / "q.json"
    quality.main(["--out", str(out), "--only", "edits", "--model", str(tiny_folder), "--settings", "model"])
    quality.main(["--out", str(tmp_path / "t.json"), "--only", "edits", "--settings", "model"])
    assert seen == [(own, "empty"), (edit_config(), edit_negative())]
    assert json.loads(out.read_text())["settings"] == "model"


def test_quality_ship_verdict_needs_better_edits_and_no_new_failure(tmp_path, capsys):
    def figures(landed, warp, static=0, psnr=35.0, pck=0.9):
        return {"edits": {"cove": {"landed_edits": landed, "warp_to_truth": warp, "static_edits": static}},
                "reconstruction": {"psnr": psnr}, "correspondence": {"diffusion": pck}}

    shipped = figures(0.3, 3.3)
    assert quality.ship_verdict(figures(0.4, 3.0), shipped)["ships"]
    assert quality.ship_verdict(figures(0.3, 3.0, pck=0.8), figures(0.3, 3.3, pck=0.7))["ships"]  # both fail it
    assert "correspondence.diffusion fails" in quality.ship_verdict(figures(0.3, 3.0, pck=0.8), shipped)["why"][0]
    worse = quality.ship_verdict(figures(0.4, 3.7), shipped)
    assert not worse["ships"] and worse["why"] == ["edits.cove.warp_to_truth worse (3.7 against 3.3)"]
    assert worse["gates"]["edits.cove.landed_edits"]["better"] is True
    assert quality.ship_verdict(shipped, shipped)["why"] == ["no edit gate better than the shipped model's"]
    regressed = quality.ship_verdict(figures(0.4, 3.0, psnr=25.0), shipped)
    assert not regressed["ships"] and regressed["why"][0].startswith("reconstruction.psnr fails")
    partial = {k: v for k, v in figures(0.4, 3.0).items() if k != "reconstruction"}
    assert quality.ship_verdict(partial, shipped)["why"] == ["reconstruction.psnr not measured"]
    static = quality.ship_verdict(figures(0.5, 3.0, static=1), shipped)
    assert not static["ships"] and "edits.cove.static_edits fails" in static["why"][0]
    judged_now = figures(0.4, 3.0)
    judged_now["edits"]["static_rule"] = metrics.MOTION_FOLLOWING_RULE
    assert quality.static_rule(judged_now) == "regions" and quality.static_rule(shipped) == "pairs"
    assert quality.static_rule({"edits": None}) is None
    other_rules = quality.ship_verdict(judged_now, shipped)  # static counts of two rules do not compare
    assert not other_rules["ships"] and other_rules["why"] == [
        "static edits judged by other rules ('regions' against 'pairs'): measure the shipped model's edits again"]
    for name, value in (("candidate.json", figures(0.4, 3.0)), ("shipped.json", shipped)):
        (tmp_path / name).write_text(json.dumps(value))
    args = ["--compare", str(tmp_path / "candidate.json"), "--out", str(tmp_path / "shipped.json")]
    assert quality.main(args) == 0 and "ships in place of" in capsys.readouterr().out
    (tmp_path / "candidate.json").write_text(json.dumps({**figures(0.4, 3.0), "model": "runs/gpu-export",
                                                         "settings": "strength 0.8 set"}))
    assert quality.main(args) == 0
    assert ("candidate runs/gpu-export with strength 0.8 set; shipped cove-tiny with edit_config"
            in capsys.readouterr().out)
    with pytest.raises(SystemExit, match="cannot read"):
        quality.main(["--compare", str(tmp_path / "missing.json"), "--out", str(tmp_path / "shipped.json")])


def test_quality_compare_pairs_the_edits_both_models_land(tmp_path, capsys):
    names = ["colour: a -> b", "background: c -> d", "colour: e -> f", "background: g -> h", "colour: i -> j"]

    def figures(landed, warp):  # per edit: share of frames landed, flicker over the true edit's
        rows = [{"landed": a, "warp_to_truth": w, "warp_error": w, "static": False, "psnr": 20.0}
                for a, w in zip(landed, warp)]
        return {"edits": {"edits": names, "cove": {"per_edit": rows}}}

    candidate = figures([1.0, 0.9, 1.0, 1.0, 0.5], [2.0, 3.0, 4.0, 9.0, 1.0])
    shipped = figures([1.0, 1.0, 0.8, 1.0, 1.0], [4.0, 3.0, 1.0, 6.0, 5.0])
    paired = quality.paired_edits(candidate, shipped)
    # both land edits 0, 1 and 3: ratios 0.5, 1.0, 1.5; edit 2 only the candidate, edit 4 only the shipped model
    assert paired["both_landed"] == 3 and paired["ratio"] == 1.0
    assert (paired["lower"], paired["higher"], paired["equal"]) == (1, 1, 1)
    assert paired["only_candidate"] == ["colour: e -> f"] and paired["only_shipped"] == ["colour: i -> j"]
    low, high = paired["interval"]
    assert 0.5 <= low <= paired["ratio"] <= high <= 1.5 and low < high
    assert quality.paired_edits(candidate, shipped) == paired  # seeded
    assert quality.ship_verdict(candidate, shipped)["paired"] == paired
    assert quality.paired_edits(candidate, {"edits": {**shipped["edits"], "edits": names[::-1]}}) is None
    assert quality.paired_edits(candidate, {"edits": {}}) is None
    alone = quality.paired_edits(figures([1.0] * 5, [2.0] * 5), figures([0.0] * 5, [1.0] * 5))
    assert alone["both_landed"] == 0 and math.isnan(alone["ratio"]) and alone["interval"] is None
    assert "none of them lands on both models" in quality.paired_text(alone)
    assert quality.paired_text(None).startswith("edit by edit: nothing to pair")
    other = {**figures([1.0] * 5, [3.0] * 5), "seed": 1}  # five more edits of the same model, another seed
    pooled = quality.pool_edits([{**candidate, "seed": 0}, other])
    assert pooled["edits"]["edits"][0] == "seed 0: colour: a -> b" and len(pooled["edits"]["edits"]) == 10
    assert pooled["edits"]["cove"]["landed_edits"] == 0.9 and pooled["edits"]["cove"]["warp_to_truth"] == 3.0
    with pytest.raises(ValueError, match="different seeds"):
        quality.pool_edits([other, other])
    with pytest.raises(ValueError, match="other models or edit settings"):
        quality.pool_edits([{**candidate, "seed": 0}, {**other, "model": "runs/gpu-export"}])
    with pytest.raises(ValueError, match="no cove per-edit rows"):
        quality.pool_edits([{"edits": {}, "seed": 2}])
    assert pooled["edits"]["static_rule"] == "pairs"  # records without a rule's name
    with pytest.raises(ValueError, match="other rules"):
        quality.pool_edits([{**candidate, "seed": 0}, {**other, "edits": {**other["edits"], "static_rule": "regions"}}])
    unmeasured = quality.paired_edits(figures([1.0] * 5, [math.nan, 2.0, 2.0, 2.0, 2.0]), figures([1.0] * 5, [1.0] * 5))
    assert unmeasured["both_landed"] == 4 and unmeasured["ratio"] == 2.0
    for name, value in (("candidate.json", candidate), ("shipped.json", shipped)):
        (tmp_path / name).write_text(json.dumps(value))
    quality.main(["--compare", str(tmp_path / "candidate.json"), "--out", str(tmp_path / "shipped.json")])
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("edit by edit"))
    assert ("on the 3 both models land, the candidate's flicker is 1.00x the shipped model's" in line
            and "only the candidate lands 1 (colour: e -> f); only the shipped model lands 1 (colour: i -> j)" in line)


def test_quality_moving_clips_move():
    for frames in (2, 4):
        clips = measures.moving_clips(2, seed=0, frames=frames, size=32)
        for clip in clips:
            task = measures.colour_edit_task(clip)
            travel = max(measures._travel(o) for o in clip.scene.objects)
            assert travel >= 0.5 * (frames - 1) and task["mask"].shape == clip.frames.shape[:3]
    with pytest.raises(ValueError, match="clips moving"):
        measures.moving_clips(1, frames=4, min_speed=100.0, max_tries=5)


def _truth_correspondence(clip, grid):
    return measures.true_correspondence(clip, grid)


def test_quality_prompt_following_counts_the_judges_verdicts(tiny_pipe, monkeypatch):
    """Constructed verdicts -> known shares: colour right on all 4, shape on the first only,
    background on the 1st and 3rd; "all" on the first only; the other 3 are the failures."""
    prompts = measures.single_object_prompts(4, seed=0)

    def verdict(image, prompt):
        i = prompts.index(prompt)
        checks = {"colour": True, "shape": i == 0, "background": i % 2 == 0}
        return {**checks, "all": all(checks.values())}

    monkeypatch.setattr(measures.judge, "prompt_followed", verdict)
    result = measures.measure_prompt_following(tiny_pipe, 4, seed=0, steps=2, batch_size=2, return_images=True)
    assert result["images"].shape == (4, 32, 32, 3) and result["images"].dtype == np.uint8
    assert result["prompts"] == prompts and result["n"] == 4
    assert {k: result[k] for k in ("colour", "shape", "background", "all")} == {
        "colour": 1.0, "shape": 0.25, "background": 0.5, "all": 0.25}
    assert [f["prompt"] for f in result["failures"]] == prompts[1:]


def test_quality_correspondence_pck_of_known_correspondences(tiny_pipe, monkeypatch):
    """The figures are PCK against the clips' true motion: the ground-truth correspondence in
    place of the diffusion one scores 1; optical flow scores what ``metrics.pck`` gives it."""
    from cove import correspondence
    from cove.extras.flow import flow_correspondence

    grid = (16, 16)
    clips = [world.render(world.random_scene(0, frames=3, size=32)),
             world.photo_clip("chelsea", frames=3, size=32, seed=0)]
    truths = iter([_truth_correspondence(clip, grid) for clip in clips])
    monkeypatch.setattr(correspondence, "correspond", lambda features, window, k: next(truths))
    corr = measures.measure_correspondence(tiny_pipe, 1, seed=0, frames=3)
    assert corr["grid"] == [16, 16] and [row["clip"] for row in corr["per_clip"]] == ["shapes/0", "photo/chelsea"]
    assert corr["diffusion"] == 1.0 and corr["photo_diffusion"] == 1.0
    flow = [metrics.pck(flow_correspondence(clip.frames, grid), *clip.ground_truth(grid=grid), 2.0)
            for clip in clips]  # 4 px of a 32-pixel frame: 2 cells of 16x16
    assert (corr["flow"], corr["photo_flow"]) == pytest.approx(flow)
    assert corr["per_clip"][0]["diffusion_by_offset"] == {1: 1.0, 2: 1.0}
    assert sorted(corr["per_clip"][0]["flow_by_offset"]) == [1, 2]


def test_correspondence_pck_of_the_demo_is_one_for_the_truth_and_lower_when_frozen():
    from cove.app.demo import correspondence_pck

    clip = world.render(world.demo_scene(frames=4))
    truth = _truth_correspondence(clip, (16, 16))
    assert correspondence_pck(truth, clip) == 1.0
    frozen = truth.index.clone()
    frozen[:] = torch.arange(256)[None, :, None, None]  # every token stays where it is
    positions, visible = clip.ground_truth(grid=(16, 16))
    still = np.linalg.norm(positions - positions[np.arange(4), :, np.arange(4)][:, :, None], axis=-1) <= 1.0
    off = ~np.eye(4, dtype=bool)[:, None, :] & visible  # (F, N, F): other frames, visible
    expected = still[off].mean()
    frozen_corr = type(truth)(index=frozen, score=truth.score, grid=(16, 16))
    assert correspondence_pck(frozen_corr, clip) == pytest.approx(expected) and expected < 1.0


def test_quality_shape_clips_hold_one_visible_object():
    clips = measures.shape_clips(5, seed=2, size=32, min_area=0.05)
    assert len(clips) == 5 and [c.frames.shape for c in clips] == [(1, 32, 32, 3)] * 5
    assert all(len(c.scene.objects) == 1 and c.masks[0, 0].mean() >= 0.05 for c in clips)
    assert [c.scene.seed for c in clips] == [c.scene.seed for c in measures.shape_clips(5, seed=2, size=32, min_area=0.05)]


def test_quality_shape_retention_counts_the_judged_shapes(tiny_pipe, monkeypatch):
    """A judge that always answers the first clip's shape: every share is the fraction of clips
    with that shape, on the renders and after SDEdit alike."""
    clips = measures.shape_clips(4, 0, size=32)
    shapes = [clip.scene.objects[0].shape for clip in clips]
    monkeypatch.setattr(measures.judge, "judge_image",
                        lambda image: {"objects": [("red", shapes[0])], "background": "grass"})
    r = measures.measure_shape_retention(tiny_pipe, 4, seed=0, strengths=(0.5, 1.0), steps=2)
    share = shapes.count(shapes[0]) / 4
    assert r["n"] == 4 and r["clean"] == share and r["shape"] == {"0.5": share, "1": share}
    assert list(r["psnr"]) == ["0.5", "1"] and all(math.isfinite(v) and v > 0 for v in r["psnr"].values())
    table = quality.format_table({"shape_retention": r, "gates": {}})
    assert "shape_retention.shape.0.5" in table and "shape_retention.shape.1" in table


def test_quality_reconstruction_and_edits_run_on_a_tiny_pipeline(tiny_pipe):
    from cove import CoveConfig

    fast = CoveConfig(inversion_steps=2, denoise_steps=2, pnp_steps=1, window=5)
    rec = measures.measure_reconstruction(tiny_pipe, 1, seed=0, frames=2, config=fast)
    assert len(rec["per_clip"]) == 1 and rec["psnr"] == rec["per_clip"][0] and rec["steps"] == 2
    tasks = measures.edit_tasks(2, seed=0, frames=2, size=32)
    edits = measures.measure_edits(tiny_pipe, tasks, config=fast, modes=measures.EDIT_MODES, return_frames=True)
    for mode in measures.EDIT_MODES:
        row = edits[mode]
        assert set(row) >= {"landed_edits", "landed", "warp_error", "warp_to_truth", "static_edits", "psnr"}
        assert len(row["per_edit"]) == 2 and edits["frames"][mode][0].shape == (2, 32, 32, 3)
        assert row["warp_error"] > edits["truth_warp_error"]  # an untrained model flickers
    assert edits["config"] == fast.to_dict() and edits["negative"] == presets.edit_negative()  # recorded with the figures
    assert edits["static_rule"] == metrics.MOTION_FOLLOWING_RULE
    assert edits["edits"][0].startswith("background: on ") and edits["edits"][1].startswith("colour: ")
    assert edits["cove_to_spatiotemporal"] == edits["cove"]["warp_error"] / edits["spatiotemporal"]["warp_error"]
    with pytest.raises(ValueError, match="mode: expected one of"):
        measures.measure_edits(tiny_pipe, tasks, config=fast, modes=("cove-flow",))
    with pytest.raises(ValueError, match="negative: expected one of source, empty"):
        measures.measure_edits(tiny_pipe, tasks, config=fast, negative="the target")


def test_edit_tasks_alternate_kinds_pan_in_pairs_and_the_judge_reads_the_truth():
    tasks = measures.edit_tasks(12, seed=1000)
    assert [t["kind"] for t in tasks] == ["background", "colour"] * 6
    assert [t["pan"] > 0 for t in tasks] == [True, True, False, False] * 3
    assert measures.edit_tasks(12, seed=1000)[5]["target"] == tasks[5]["target"]  # deterministic
    assert {t["target"] for t in tasks} != {t["target"] for t in measures.edit_tasks(12, seed=0)}
    for task in tasks[:4]:
        if task["kind"] == "colour":  # a colour no object of the source has
            assert task["target"].split()[0] not in {o.colour for o in task["clip"].scene.objects}
        assert measures.landed_frames(task["truth"].frames, task).all()
        assert not measures.landed_frames(task["clip"].frames, task).any()
        row = measures.score_task(task["truth"].frames, task)
        assert row["landed"] == 1.0 and row["warp_to_truth"] == 1.0 and not row["static"]
        assert row["static_kind"] is None and row["change_to_truth"] == 1.0


def test_static_edits_are_counted_by_kind():
    task = measures.edit_tasks(1, seed=1000)[0]  # a background swap under a camera pan
    truth = task["truth"].frames
    rows = [measures.score_task(frames, task) for frames in
            (truth, np.repeat(truth[:1], len(truth), 0), (truth * 0.1).astype(np.uint8), np.zeros_like(truth))]
    assert [r["static_kind"] for r in rows] == [None, "fixed", "faint", "faint"]
    assert rows[0]["static_where"] == [] and "background" in rows[1]["static_where"]
    figures = measures.summarise_edits(rows)
    assert (figures["static_edits"], figures["fixed_edits"], figures["faint_edits"]) == (3, 1, 2)
    assert measures.static_count(figures) == "3 (1 fixed, 2 faint)"
    assert measures.static_count(measures.summarise_edits(rows[:1])) == "0"
    assert measures.static_count({"static_edits": 2}) == "2"  # a record from before the kinds


def test_motion_following_tells_a_frozen_pattern_from_a_moving_one():
    task = measures.edit_tasks(1, seed=1000)[0]  # a background swap under a camera pan
    truth, clip = task["truth"].frames, task["clip"]
    moving = metrics.motion_following(truth, clip, truth)
    frozen = metrics.motion_following(np.repeat(truth[:1], len(truth), 0), clip, truth)
    assert not moving["static"] and moving["kind"] is None and moving["ratio"] > 2 and moving["pixels"] > 1000
    assert moving["change"] == 1.0  # the reference changes as much as itself
    assert frozen["static"] and frozen["kind"] == "fixed" and frozen["still"] == 0.0 and frozen["along"] > 1.0
    black = metrics.motion_following(np.zeros_like(truth), clip, truth)  # a saturated edit: 0 both ways
    assert black["static"] and black["kind"] == "faint" and black["along"] == black["still"] == 0.0
    assert black["reference_still"] > 10 and black["change"] == 0.0
    faint = metrics.motion_following((truth * 0.1).astype(np.uint8), clip, truth)  # moves, but barely changes
    assert faint["static"] and faint["kind"] == "faint" and faint["ratio"] > 2
    assert faint["change"] == pytest.approx(0.1, abs=0.02)
    assert not metrics.motion_following((truth * 0.1).astype(np.uint8), clip, truth, faint=0.05)["static"]
    still_scene = measures.edit_tasks(4, seed=1000)[2]["clip"]  # no pan: only the objects move
    flat = np.full_like(still_scene.frames, 128)
    nothing = metrics.motion_following(flat, still_scene, flat)  # nothing visibly moves
    assert nothing["pixels"] == 0 and not nothing["static"] and math.isnan(nothing["ratio"])
    with pytest.raises(ValueError, match="same shape"):
        metrics.motion_following(truth[:2], clip, truth)
    with pytest.raises(ValueError, match="ShapesWorld Clip"):
        metrics.motion_following(truth, clip.frames, truth)
    with pytest.raises(ValueError, match="gap"):
        metrics.motion_following(truth, clip, truth, gap=len(truth))
    with pytest.raises(ValueError, match="tolerance >= 0"):
        metrics.motion_following(truth, clip, truth, tolerance=-1)


def _resized(task, scale):
    """The true edit with the edited object drawn ``scale`` times its size: it moves as the truth does."""
    scene = task["truth"].scene
    objects = list(scene.objects)
    o = objects[task["object"]]
    objects[task["object"]] = dataclasses.replace(o, diameter=(o.diameter[0] * scale, o.diameter[1] * scale))
    return world.render(dataclasses.replace(scene, objects=tuple(objects))).frames


def test_motion_following_forgives_an_edited_object_of_another_size_but_not_one_left_behind():
    task = measures.edit_tasks(4, seed=1000)[3]  # a recolour, no pan: only the objects move
    assert task["kind"] == "colour" and task["pan"] == 0.0
    clip, truth = task["clip"], task["truth"].frames
    for scale in (0.6, 0.8, 1.2):  # moves with the scene, drawn smaller or larger than the truth
        following = metrics.motion_following(_resized(task, scale), clip, truth)
        assert not following["static"] and following["ratio"] > 1.5, scale
        assert following["regions"]["objects"]["judged"] and not following["regions"]["background"]["judged"]
    held = np.repeat(truth[:1], len(truth), 0)  # the recoloured object stays where it was
    assert metrics.motion_following(held, clip, truth)["static"]
    noisy = np.clip(held + np.random.default_rng(0).integers(-12, 13, held.shape), 0, 255).astype(np.uint8)
    assert metrics.motion_following(noisy, clip, truth)["static"]  # pixel noise is no motion
    assert metrics.motion_following(truth, clip, truth, gap=1)["kind"] is None


def test_motion_following_judges_the_background_apart_from_the_objects():
    task = measures.edit_tasks(1, seed=1000)[0]  # a background swap under a camera pan
    truth = task["truth"]
    empty = world.render(dataclasses.replace(truth.scene, objects=(), caption_order=None)).frames
    on_object = truth.masks.any(1)[..., None]  # (F, H, W, 1)
    held_background = np.where(on_object, truth.frames, empty[:1])  # the objects move, the ground stays put
    following = metrics.motion_following(held_background, task["clip"], truth.frames)
    assert following["kind"] == "fixed" and following["regions"]["background"]["kind"] == "fixed"
    assert following["regions"]["objects"]["kind"] is None
    flat = np.where(on_object, truth.frames, empty.mean((0, 1, 2), keepdims=True).astype(np.uint8))
    assert metrics.motion_following(flat, task["clip"], truth.frames)["kind"] == "faint"




def test_true_correspondence_is_the_clips_motion():
    clip = measures.edit_tasks(1, seed=1000)[0]["clip"]
    positions, visible = clip.ground_truth(grid=(16, 16))
    one, three = measures.true_correspondence(clip, (16, 16)), measures.true_correspondence(clip, (16, 16), k=3)
    assert one.index.shape == (8, 256, 8, 1) and three.index.shape == (8, 256, 8, 3)
    assert metrics.pck(one, positions, visible, 0.75) == 1.0  # the nearest cell: within sqrt(2)/2
    assert torch.equal(three.index[..., :1], one.index)  # nearest first
    off = ~torch.eye(8, dtype=torch.bool)[:, None, :].expand(8, 256, 8)
    idx = three.index.long()
    assert bool((idx[..., 0] != idx[..., 1])[off].all() and (idx[..., 1] != idx[..., 2])[off].all())
    assert bool((idx[:, :, :, 0][~off] == torch.arange(256).repeat(8)).all())
    assert torch.equal(one.score[..., 0][off], torch.from_numpy(visible).float()[off])
    with pytest.raises(ValueError, match="k must lie"):
        measures.true_correspondence(clip, (16, 16), k=0)


def test_edit_video_takes_a_precomputed_correspondence(tiny_pipe):
    from cove import CoveConfig
    from cove.pipeline import edit_video

    clip = world.render(world.random_scene(0, frames=2, size=32))
    fast = CoveConfig(inversion_steps=2, denoise_steps=2, pnp_steps=1)
    truth = measures.true_correspondence(clip, (16, 16))
    result = edit_video(tiny_pipe, clip.frames, clip.caption, config=fast, correspondence=truth)
    assert result.correspondence is truth and "features" not in result.timings
    # any grid where the UNet attends: CGA acts in the 8x8 layers
    coarse = edit_video(tiny_pipe, clip.frames, clip.caption, config=fast,
                        correspondence=measures.true_correspondence(clip, (8, 8)))
    assert coarse.correspondence.grid == (8, 8) and not np.array_equal(coarse.frames, result.frames)
    with pytest.raises(ValueError, match=r"correspondence: expected a grid where the UNet attends \(16x16, 8x8\), "
                                         r"got 4x4"):
        edit_video(tiny_pipe, clip.frames, clip.caption, config=fast,
                   correspondence=measures.true_correspondence(clip, (4, 4)))
    longer = world.render(world.random_scene(0, frames=3, size=32))
    with pytest.raises(ValueError, match=r"correspondence: expected index \(F, N, F, K\) = \(2, 256, 2, K\) on the "
                                         r"grid 16x16, got \(3, 256, 3, 1\)"):
        edit_video(tiny_pipe, clip.frames, clip.caption, config=fast,
                   correspondence=measures.true_correspondence(longer, (16, 16)))
    with pytest.raises(ValueError, match="must be a cove.Correspondence"):
        edit_video(tiny_pipe, clip.frames, clip.caption, config=fast, correspondence=truth.index)


def test_edit_settings_reject_static_artifacts_then_rank_by_landing():
    from cove.tiny import settings

    figures = {"a": {"static_edits": 1, "fixed_edits": 0, "faint_edits": 1, "landed": 1.0, "warp_to_truth": 1.0},
               "b": {"static_edits": 0, "landed": 0.5, "warp_to_truth": 1.2},
               "c": {"static_edits": 0, "landed": 0.5, "warp_to_truth": 1.1},
               "d": {"static_edits": 0, "landed": 0.4, "warp_to_truth": 0.5}}
    verdict = settings.choose(figures)
    assert verdict["chosen"] == "c" and verdict["ranking"] == ["c", "b", "d"]
    assert verdict["rejected"] == {"a": "static edits: 1 (1 faint)"}
    overrides = {"guidance_scale": 5.0, "extras": {"p2p_steps": 0}, "negative": "source"}
    config = settings.candidate_config(overrides)
    assert config.guidance_scale == 5.0 and config.extras.p2p_steps == 0
    assert config.extras.mask_threshold == settings.edit_config().extras.mask_threshold
    assert settings.candidate_negative(overrides) == "source" and settings.candidate_negative({}) == settings.edit_negative()
    assert all(settings.candidate_negative(o) in presets.NEGATIVES for o in settings.CANDIDATES.values())
    late = settings.candidate_config(settings.CANDIDATES["strength 0.8 set, edit mask"])  # a variant keeps the set
    assert (late.guidance_scale, late.extras.strength, late.extras.pnp_resnet_max_t) == (3.0, 0.8, 300)
    assert late.extras.mask_threshold == settings.MASK["mask_threshold"]
    assert presets.edit_negative_prompt("a red star on sand") == ""  # the shipped policy: "empty"
    assert presets.edit_negative_prompt("a red star on sand", "source") == "a red star on sand"
    with pytest.raises(ValueError, match="negative: expected one of source, empty, got 'target'"):
        presets.edit_negative_prompt("a red star on sand", "target")
    with pytest.raises(SystemExit):
        settings.main(["--edits", "4"])  # fewer than 12 validation edits


def test_edit_settings_run_edits_with_each_candidates_negative_prompt(monkeypatch):
    from cove.tiny import settings

    seen = []

    def fake_edits(pipe, tasks, config, modes, seed, negative):
        seen.append((config.guidance_scale, config.extras.strength, negative, len(tasks)))
        figures = {"static_edits": 0, "landed": config.extras.strength, "landed_edits": 0.5, "worst_landed": 0.0,
                   "warp_to_truth": 2.0, "worst_warp_to_truth": 3.0}
        return {modes[0]: figures, "config": config.to_dict(), "negative": negative, "truth_warp_error": 1.0,
                "edits": []}

    monkeypatch.setattr(settings, "measure_edits", fake_edits)
    monkeypatch.setattr(settings, "machine_info", lambda pipe: {})
    out = settings.run(object(), names=("edit_config", "strength 0.5 set", "strength 0.8 set"), log=lambda line: None)
    shipped = settings.edit_config()
    assert seen == [(shipped.guidance_scale, shipped.extras.strength, settings.edit_negative(), 12),
                    (6.0, 0.5, "source", 12), (3.0, 0.8, "empty", 12)]
    assert out["candidates"]["strength 0.8 set"]["negative"] == "empty"
    assert out["verdict"]["ranking"][-1] == "strength 0.5 set"  # fewest frames landed


def test_edit_settings_choose_the_largest_t_near_the_best_feature_pck():
    from cove.tiny import settings

    pck = {"pck": {"up_blocks.0": {"10": 0.83, "50": 0.825, "100": 0.78, "261": 0.52},
                   "up_blocks.1": {"10": 0.80, "50": 0.70, "100": 0.60, "261": 0.819}},
           "best": ["up_blocks.0", 10, 0.83]}
    assert settings.choose_features(pck) == {"layer": "up_blocks.0", "t": 50, "pck": 0.825, "best": pck["best"]}
    assert settings.choose_features(pck, tolerance=0.02)["t"] == 261  # within 0.02: up_blocks.1 at 261
    assert settings.choose_features(pck, tolerance=0.0)["t"] == 10


def test_edit_settings_write_the_chosen_ones_into_the_model_folder(tiny_folder, tmp_path, capsys, monkeypatch):
    """``--write``: the feature layer and t measured on validation clips, every candidate edits
    with them, and the chosen settings land in the folder's cove_settings.json, read back by
    cove.recommended as the model's. The edits' figures are given (a random model turns every
    edit static; the edits themselves are measure_edits', tested above)."""
    from cove.recommended import SETTINGS_FILE, read_settings
    from cove.tiny import settings

    seen, static = [], {"count": 0}

    def given_edits(pipe, tasks, config, modes, seed, negative):
        seen.append((config.feature_layer, config.feature_t, len(tasks)))
        figures = {"static_edits": static["count"], "landed": 0.75, "landed_edits": 0.5, "worst_landed": 0.0,
                   "warp_to_truth": 2.0, "worst_warp_to_truth": 3.0}
        return {modes[0]: figures, "config": config.to_dict(), "negative": negative, "truth_warp_error": 1.0,
                "edits": []}

    monkeypatch.setattr(settings, "measure_edits", given_edits)
    report = tmp_path / "settings.json"
    argv = ["--model", str(tiny_folder), "--out", str(report), "--frames", "2", "--only", "edit_config",
            "strength 0.8 set"]
    static["count"] = 1
    with pytest.raises(SystemExit) as stop:  # every candidate has a static edit: nothing is written
        settings.main(argv + ["--write"])
    assert stop.value.code == 2 and "every candidate was rejected" in capsys.readouterr().err
    assert not (tiny_folder / SETTINGS_FILE).exists() and report.exists()
    static["count"], seen[:] = 0, []
    settings.main(argv + ["--write"])
    result = json.loads(report.read_text())
    chosen = result["features"]["chosen"]
    assert result["features"]["clips"] == settings.FEATURE_CLIPS and result["verdict"]["chosen"] == "edit_config"
    assert set(result["features"]["pck"]["pck"]["up_blocks.0"]) == {str(t) for t in settings.FEATURE_TS}
    assert seen == [(chosen["layer"], chosen["t"], 12)] * 2  # every candidate reads the chosen features
    written = read_settings(tiny_folder)
    assert written.path == tiny_folder / SETTINGS_FILE and f"wrote {written.path}" in capsys.readouterr().out
    assert written.config == settings.edit_config(feature_layer=chosen["layer"], feature_t=chosen["t"])
    assert written.negative == settings.edit_negative() and "'edit_config' of 2 candidates on 12" in written.chosen_by
    assert f"at {chosen['layer']}, t = {chosen['t']}" in written.chosen_by
    with pytest.raises(SystemExit):
        settings.main(["--model", "org/some-model", "--write"])  # no folder to write into


def test_edit_settings_add_candidates_to_a_record(tiny_folder, tmp_path, capsys, monkeypatch):
    """``--add-to``: only the candidates a record lacks edit, with the record's feature layer and
    t; they join it, the verdict is chosen again over all (and ``--write`` writes its choice);
    the record itself is not modified; bad records and mismatched runs stop before any edit."""
    from cove.recommended import read_settings
    from cove.tiny import settings

    seen, static = [], {"strength 0.8 set": 1}

    def given_edits(pipe, tasks, config, modes, seed, negative):
        name = next(n for n in settings.CANDIDATES if n != "edit_config" and
                    settings.candidate_config(settings.CANDIDATES[n], settings.edit_config(
                        feature_layer=config.feature_layer, feature_t=config.feature_t)) == config)
        seen.append((name, config.feature_layer, config.feature_t))
        figures = {"static_edits": static.get(name, 0), "faint_edits": static.get(name, 0), "landed": 0.75,
                   "landed_edits": 0.5, "worst_landed": 0.0, "warp_to_truth": 2.0, "worst_warp_to_truth": 3.0}
        return {modes[0]: figures, "config": config.to_dict(), "negative": negative, "truth_warp_error": 1.0,
                "edits": []}

    monkeypatch.setattr(settings, "measure_edits", given_edits)
    record = tmp_path / "record.json"
    base = ["--model", str(tiny_folder), "--frames", "2"]
    with pytest.raises(SystemExit):  # its one candidate is static: rejected, nothing written
        settings.main(base + ["--out", str(record), "--only", "strength 0.8 set", "--write"])
    features = json.loads(record.read_text())["features"]
    before, seen[:] = record.read_text(), []
    capsys.readouterr()
    monkeypatch.setattr(settings, "measure_features", lambda *a, **k: pytest.fail("the record's features are reused"))
    merged_path = tmp_path / "merged.json"
    settings.main(base + ["--out", str(merged_path), "--add-to", str(record), "--only", "strength 0.5 set", "--write"])
    merged = json.loads(merged_path.read_text())
    assert seen == [("strength 0.5 set", features["chosen"]["layer"], features["chosen"]["t"])]
    assert list(merged["candidates"]) == ["strength 0.8 set", "strength 0.5 set"] and merged["features"] == features
    assert merged["verdict"]["chosen"] == "strength 0.5 set" and "strength 0.8 set" in merged["verdict"]["rejected"]
    assert [a["candidates"] for a in merged["added"]] == [["strength 0.5 set"]] and record.read_text() == before
    written = read_settings(tiny_folder)
    assert "'strength 0.5 set' of 2 candidates on 12" in written.chosen_by and written.config.extras.strength == 0.5
    # without --only: every candidate the record lacks ("edit_config" only where no candidate holds it)
    lacking = settings.lacking(merged, settings._base(features))
    assert set(lacking) == set(settings.CANDIDATES) - {"strength 0.8 set", "strength 0.5 set"} - {"edit_config"}
    assert settings.lacking({"candidates": dict.fromkeys(settings.CANDIDATES)}) == ()
    for argv, message in [
            (["--add-to", str(record), "--only", "strength 0.8 set"], "the record already holds strength 0.8 set"),
            (["--add-to", str(record), "--frames", "3"], "the record was measured with frames 2 (asked 3)"),
            (["--add-to", str(tmp_path / "none.json")], "expected a record written by python -m cove.tiny.settings"),
            (["--add-to", str(tiny_folder / "model_index.json")], "(no candidates)")]:
        seen[:] = []
        with pytest.raises(SystemExit) as stop:
            settings.main(["--model", str(tiny_folder), "--frames", "2", "--out", str(tmp_path / "x.json"), *argv])
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert stop.value.code == 2 and message in err and not seen and not (tmp_path / "x.json").exists(), err
    plain = tmp_path / "plain.json"
    settings.main(base + ["--out", str(plain), "--only", "strength 0.5 set"])  # measured without --write
    with pytest.raises(SystemExit):
        settings.main(base + ["--out", str(tmp_path / "x.json"), "--add-to", str(plain), "--write"])
    assert "expected a record written with --write" in capsys.readouterr().err
    with pytest.raises(ValueError, match="the record's seed"):
        settings.add_to(merged, {**merged, "seed": 7, "candidates": {}})
    with pytest.raises(ValueError, match="already holds strength 0.5 set"):
        settings.add_to(merged, merged)
    assert merged["static_rule"] == metrics.MOTION_FOLLOWING_RULE
    older = {k: v for k, v in merged.items() if k != "static_rule"}  # measured before rules were named
    with pytest.raises(ValueError, match="judged static edits by the rule 'pairs'"):
        settings.add_to(older, {**merged, "candidates": {}})


def test_probes_pck_per_block_and_attention_entropy(tiny_pipe):
    pck = measures.measure_feature_pck(tiny_pipe, 1, frames=2, ts=(261,))
    blocks = measures.decoder_blocks(tiny_pipe.unet)
    assert list(pck["pck"]) == blocks and all(0 <= v["261"] <= 1 for v in pck["pck"].values())
    assert pck["best"][0] in blocks and pck["grid"][blocks[-1]][0] >= pck["grid"][blocks[0]][0]
    entropy = measures.measure_attention_entropy(tiny_pipe, 1, frames=2, ts=(261,))
    values = entropy["entropy"]["261"]
    assert values and all(0 < v <= 1 + 1e-6 for v in values.values())
    for heads, dim in entropy["heads"].values():
        assert heads >= 1 and dim >= 1
    attn = [m for name, m in tiny_pipe.unet.named_modules() if name.endswith("attn1")]
    saved = [m.to_q.weight.detach().clone() for m in attn]
    try:
        with torch.no_grad():
            for m in attn:
                m.to_q.weight.zero_()  # q = bias only: the same logit for every key -> uniform
                if m.to_q.bias is not None:
                    m.to_q.bias.zero_()
        uniform = measures.measure_attention_entropy(tiny_pipe, 1, frames=2, ts=(261,))
    finally:
        with torch.no_grad():
            for m, w in zip(attn, saved):
                m.to_q.weight.copy_(w)
    assert all(v == pytest.approx(1.0, abs=1e-5) for v in uniform["entropy"]["261"].values())


def test_probe_cga_change_vanishes_under_uniform_attention(tiny_pipe):
    """CGA regroups spatial-temporal attention's outputs: where that attention is uniform every
    token gets the clip's mean value, so neither the outputs' spread nor CGA's change is left."""
    probe = measures.measure_cga_change(tiny_pipe, 1, frames=3, ts=(261,), k=2)
    entropy = measures.measure_attention_entropy(tiny_pipe, 1, frames=3, ts=(261,))
    assert probe["k"] == 2 and set(probe["change"]["261"]) == set(entropy["entropy"]["261"])
    assert all(0 < v < 10 for v in probe["change"]["261"].values())
    assert all(0 < v < 10 for v in probe["spread"]["261"].values())
    attn = [m for name, m in tiny_pipe.unet.named_modules() if name.endswith("attn1")]
    saved = [m.to_q.weight.detach().clone() for m in attn]
    try:
        with torch.no_grad():
            for m in attn:
                m.to_q.weight.zero_()
        uniform = measures.measure_cga_change(tiny_pipe, 1, frames=3, ts=(261,), k=2)
    finally:
        with torch.no_grad():
            for m, w in zip(attn, saved):
                m.to_q.weight.copy_(w)
    assert all(v < 1e-4 for key in ("change", "spread") for v in uniform[key]["261"].values())


def test_probe_clip_gain_compares_the_loss_with_and_without_the_other_frames(tiny_pipe):
    """The gain is 1 - (loss under spatial-temporal attention) / (loss frame by frame): nonzero
    where the other frames change the prediction, exactly 0 where self-attention adds nothing."""
    probe = measures.measure_clip_gain(tiny_pipe, 1, frames=3, ts=(261, 500))
    assert set(probe) == {"per_frame", "spatiotemporal", "gain"} and set(probe["gain"]) == {"261", "500"}
    for t, gain in probe["gain"].items():
        assert probe["per_frame"][t] > 0 and probe["spatiotemporal"][t] > 0
        assert gain == pytest.approx(1 - probe["spatiotemporal"][t] / probe["per_frame"][t])
        assert gain != 0  # a random model's attention over three frames is not its attention over one
    assert measures.measure_clip_gain(tiny_pipe, 1, frames=3, ts=(261,)) == \
        measures.measure_clip_gain(tiny_pipe, 1, frames=3, ts=(261,))  # seeded
    out = [m.to_out[0] for name, m in tiny_pipe.unet.named_modules() if name.endswith("attn1")]
    saved = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in out]
    try:
        with torch.no_grad():
            for m in out:  # self-attention adds nothing to its residual
                m.weight.zero_()
                m.bias.zero_()
        silent = measures.measure_clip_gain(tiny_pipe, 1, frames=3, ts=(261,))
    finally:
        with torch.no_grad():
            for m, (w, b) in zip(out, saved):
                m.weight.copy_(w)
                m.bias.copy_(b)
    assert silent["gain"]["261"] == 0 and silent["per_frame"]["261"] == silent["spatiotemporal"]["261"]


def test_probe_clip_gain_with_an_anchor_frame_scores_the_other_frames(tiny_pipe):
    """With ``anchor_t`` the first frame is far less noisy and only the other frames are
    scored: a different loss from the plain probe at the same t; a bad anchor is refused."""
    plain = measures.measure_clip_gain(tiny_pipe, 1, frames=3, ts=(500,))
    anchored = measures.measure_clip_gain(tiny_pipe, 1, frames=3, ts=(500,), anchor_t=50)
    assert set(anchored) == {"per_frame", "spatiotemporal", "gain"}
    assert anchored["per_frame"]["500"] > 0 and anchored["per_frame"]["500"] != plain["per_frame"]["500"]
    assert anchored["gain"]["500"] == pytest.approx(
        1 - anchored["spatiotemporal"]["500"] / anchored["per_frame"]["500"])
    assert anchored["gain"]["500"] != 0
    with pytest.raises(ValueError, match="anchor_t: expected None or a timestep from 0 to 999, got 1000"):
        measures.measure_clip_gain(tiny_pipe, 1, frames=3, ts=(500,), anchor_t=1000)


def test_probe_attention_leverage_is_how_far_self_attention_moves_the_prediction(tiny_pipe):
    """Silencing a grid's self-attention, seeing the other frames and CGA along the true motion
    each move the UNet's output of a random model; with every self-attention output projected
    to zero none of them moves it at all."""
    probe = measures.measure_attention_leverage(tiny_pipe, 1, frames=3, ts=(261,), k=2)
    entropy = measures.measure_attention_entropy(tiny_pipe, 1, frames=3, ts=(261,))
    assert set(probe) == {"zeroed", "spatiotemporal", "cove_true", "k"} and probe["k"] == 2
    grids = set(entropy["entropy"]["261"])
    assert set(probe["zeroed"]["261"]) == grids and set(probe["cove_true"]["261"]) == grids
    assert all(0 < v < 10 for key in ("zeroed", "cove_true") for v in probe[key]["261"].values())
    assert 0 < probe["spatiotemporal"]["261"] < 10
    assert measures.measure_attention_leverage(tiny_pipe, 1, frames=3, ts=(261,), k=2) == probe  # seeded
    out = [m.to_out[0] for name, m in tiny_pipe.unet.named_modules() if name.endswith("attn1")]
    saved = [(m.weight.detach().clone(), m.bias.detach().clone()) for m in out]
    try:
        with torch.no_grad():
            for m in out:
                m.weight.zero_()
                m.bias.zero_()
        silent = measures.measure_attention_leverage(tiny_pipe, 1, frames=3, ts=(261,), k=2)
    finally:
        with torch.no_grad():
            for m, (w, b) in zip(out, saved):
                m.weight.copy_(w)
                m.bias.copy_(b)
    assert silent["spatiotemporal"]["261"] == 0
    assert all(v == 0 for key in ("zeroed", "cove_true") for v in silent[key]["261"].values())


# ---------------------------------------------------------------------------------------------
# edit then score (cove.eval.scoring)
# ---------------------------------------------------------------------------------------------


def test_score_clip_of_the_truth_and_of_the_source():
    from cove.eval.scoring import edited_object, fidelity, score_clip

    clip = world.render(world.demo_scene(frames=4))
    source, target = world.DEMO_EDIT
    truth = world.render(world.edit(clip.scene, source, target))
    o = edited_object(truth.scene, target)
    assert truth.scene.objects[o].phrase == target and edited_object(truth.scene, "purple moon") is None
    perfect = score_clip(truth.frames, motion=truth, truth=truth, target_phrase=target)
    assert perfect["warp_error"] == metrics.warp_error(truth.frames, truth) < 3
    assert perfect["attribute_accuracy"] == 1.0 and perfect["psnr"] == math.inf
    unedited = score_clip(clip.frames, truth=truth, target_phrase=target)
    assert "warp_error" not in unedited and unedited["attribute_accuracy"] == 0.0
    background = fidelity(clip.frames, truth)  # no phrase: frame and background PSNR only
    assert set(background) == {"psnr", "background_psnr"} and background["background_psnr"] > background["psnr"]


def test_score_edit_scores_the_edit_it_runs(tiny_pipe):
    from cove import CoveConfig
    from cove.eval.scoring import score_clip, score_edit
    from cove.pipeline import edit_video

    clip = world.render(world.random_scene(0, frames=2, size=32))
    task = measures.colour_edit_task(clip, 0)
    config = CoveConfig(inversion_steps=2, denoise_steps=2, pnp_steps=1, window=5)
    result, scores = score_edit(tiny_pipe, clip.frames, task["target_prompt"], source_prompt=task["source_prompt"],
                                config=config, seed=3, motion=clip, truth=task["truth_clip"],
                                target_phrase=task["target"])
    again = edit_video(tiny_pipe, clip.frames, task["target_prompt"], source_prompt=task["source_prompt"],
                       config=config, generator=torch.Generator().manual_seed(3))
    assert np.array_equal(result.frames, again.frames)
    assert scores == score_clip(again.frames, motion=clip, truth=task["truth_clip"], target_phrase=task["target"])
    assert set(scores) == {"warp_error", "psnr", "background_psnr", "object_psnr", "attribute_accuracy"}


def test_quality_probes_record_the_anchored_clip_gain(tiny_pipe):
    """``cove.tiny.quality``'s probes part holds the clip gain with each clip's first frame at
    t = 50, per t, and its table prints it."""
    from cove.tiny import quality

    results = quality.run(quick=True, parts=("probes",), pipe=tiny_pipe, log=lambda *args: None)
    anchored = results["probes"]["anchored_clip_gain"]
    assert set(anchored["gain"]) == {str(t) for t in quality.ANCHORED_TS}
    assert anchored == measures.measure_clip_gain(tiny_pipe, 2, 0, ts=quality.ANCHORED_TS,
                                                  anchor_t=quality.ANCHOR_T)
    assert "probes.anchored_clip_gain.t500" in quality.format_table(results)


def test_the_paired_figures_the_docs_quote_are_the_records():
    """tiny.md and the benchmarks page quote cove-tiny-a's paired flicker against the shipped model."""
    root = Path(__file__).resolve().parents[1] / "docs"
    records = [json.loads((root / name).read_text())  # the shipped model with its settings of the comparison
               for name in ("quality_cove_tiny_a_own_settings.json", "quality_pnp_for_12_steps.json")]
    paired = quality.paired_edits(*records)
    ratio, (low, high) = f"{paired['ratio']:.2f}", (f"{v:.2f}" for v in paired["interval"])
    for page in ("method/tiny.md", "benchmarks.md"):
        text = " ".join((root / page).read_text().split())
        assert f"on those {paired['both_landed']} edits is {ratio}×" in text or \
            f"on the {paired['both_landed']} edits both models land, its flicker is {ratio}×" in text, page
        assert f"interval {low}–{high}" in text, page


def test_the_pooled_figures_the_docs_quote_are_the_records():
    """tiny.md and the benchmarks page quote cove-tiny-a against the shipped model on 36 edits."""
    root = Path(__file__).resolve().parents[1]
    extra = root / "benchmarks" / "cove-tiny-a-vs-shipped"

    def pooled(name):  # the gate's edits (seed 0) and 24 more
        return quality.pool_edits([json.loads((extra / f"{name}_{seed}.json").read_text()) for seed in (0, 2000, 3000)])

    a, shipped = pooled("a"), pooled("shipped")
    mine, theirs = a["edits"]["cove"], shipped["edits"]["cove"]
    paired = quality.paired_edits(a, shipped)
    tiny = " ".join((root / "docs" / "method" / "tiny.md").read_text().split())
    bench = " ".join((root / "docs" / "benchmarks.md").read_text().split())
    assert (f"36 edits in all: cove-tiny-a lands {mine['landed_edits']:.0%} of them (the shipped model "
            f"{theirs['landed_edits']:.0%}) and {mine['landed']:.0%} of their frames ({theirs['landed']:.0%})") in tiny
    assert (f"its median flicker is {mine['warp_to_truth']:.2f}× the true edit's ({theirs['warp_to_truth']:.2f}×), "
            f"and {paired['ratio']:.2f}× the shipped model's on the {paired['both_landed']} edits both land "
            f"(90% bootstrap interval {paired['interval'][0]:.2f}–{paired['interval'][1]:.2f})") in tiny
    assert (f"but {mine['static_edits']} of its edits are static ({theirs['static_edits']}), and "
            f"{mine['fixed_edits']} of those {mine['static_edits']} are patterns fixed to the image") in tiny
    assert theirs["fixed_edits"] == 0 and theirs["faint_edits"] == theirs["static_edits"]
    assert (f"its median flicker is {mine['warp_to_truth']:.2f}× the true edit's against the shipped model's "
            f"{theirs['warp_to_truth']:.2f}×, but {mine['fixed_edits']} of its edits are patterns fixed") in bench
    assert not quality.ship_verdict(a, shipped)["ships"]


def test_the_static_rule_figures_the_docs_quote_are_the_record():
    """tiny.md quotes benchmarks/static-rule/static_rule.json: both rules on clips whose answer is known."""
    root = Path(__file__).resolve().parents[1]
    record = json.loads((root / "benchmarks" / "static-rule" / "static_rule.json").read_text())
    now, before = record[metrics.MOTION_FOLLOWING_RULE], record["0a31491"]
    for clip, row in now.items():  # today's rule is right on every clip
        assert row["static"] == (row["of"] if row["should"] == "static" else 0), clip
    tiny = " ".join((root / "docs" / "method" / "tiny.md").read_text().split())
    sizes = ", ".join(f"{s}: {before[f'object at {s}'.replace(':', '')]['static']}"
                      for s in ("60%", "80%", "120%"))
    assert (f"read as static on {before['object at 70%']['static']} of {before['object at 70%']['of']} by "
            f"the earlier rule (at {sizes}, shifted by 2 pixels: {before['object shifted 2 px']['static']})") in tiny
    held = [before[f"background {k}"]["static"] for k in ("held", "flat", "half held, half flat")]
    assert f"(the earlier: {held[0]}, {held[1]} and {held[2]} of {before['background held']['of']})" in tiny
    assert f"every one of the {now['first frame held']['of']} edits held at its first frame" in tiny



def test_the_regions_figures_the_docs_quote_are_the_records():
    """tiny.md quotes cove-tiny-a's gate edits judged by today's static rule (COVE's rows)."""
    root = Path(__file__).resolve().parents[1]
    folder = root / "benchmarks" / "cove-tiny-a-vs-shipped" / "regions"
    a, shipped = (json.loads((folder / f"{name}_0.json").read_text()) for name in ("a", "shipped"))
    gate = json.loads((root / "docs" / "quality_pnp_for_12_steps.json").read_text())
    assert shipped["edits"]["cove"] == gate["edits"]["cove"]  # the gate's record then, COVE's rows
    assert quality.static_rule(a) == quality.static_rule(shipped) == metrics.MOTION_FOLLOWING_RULE
    static = [(name, row["static_kind"], row["static_where"])
              for name, row in zip(a["edits"]["edits"], a["edits"]["cove"]["per_edit"]) if row["static"]]
    assert static == [("background: on bricks -> on snow", "faint", ["background"])]
    circle = a["edits"]["edits"].index("colour: purple circle -> yellow circle")
    assert not a["edits"]["cove"]["per_edit"][circle]["static"]
    theirs = shipped["edits"]["cove"]
    assert theirs["static_edits"] == theirs["faint_edits"] == 2
    verdict = quality.ship_verdict(a, shipped)
    assert any(why.startswith("edits.cove.warp_to_truth worse") for why in verdict["why"])
    tiny = " ".join((root / "docs" / "method" / "tiny.md").read_text().split())
    assert ("one other edit, bricks → snow, is faint in its background, against the shipped model's two "
            "faint edits") in tiny


def test_the_gate_figures_the_docs_quote_are_the_records():
    """tiny.md's paragraph on the gate's edits quotes docs/quality.json (the shipped settings)
    against docs/quality_pnp_for_12_steps.json (the same without the mask)."""
    root = Path(__file__).resolve().parents[1]
    gate, before = (json.loads((root / "docs" / name).read_text())["edits"]
                    for name in ("quality.json", "quality_pnp_for_12_steps.json"))
    tiny = " ".join((root / "docs" / "method" / "tiny.md").read_text().split())
    whole = {name: sum(r["landed"] == 1 for r in e["cove"]["per_edit"]) for name, e in (("now", gate), ("before", before))}
    now, then = gate["cove"], before["cove"]
    assert (f"the shipped settings with COVE land {whole['now']} of the 12 edits on every frame "
            f"({now['landed_edits']:.0%}; {now['landed']:.0%} of all frames), against {whole['before']} "
            f"({then['landed_edits']:.0%}; {then['landed']:.0%}) with PnP for 12 steps without the mask") in tiny
    assert f"at a median flicker of {now['warp_to_truth']:.2f}× the true edit's ({then['warp_to_truth']:.2f}×;" in tiny
    snow = gate["edits"].index("background: on stone -> on snow")
    row, old = now["per_edit"][snow], then["per_edit"][snow]
    assert (f"stone → snow lands on {round(8 * row['landed'])} of its 8 frames ({round(8 * old['landed'])} without the "
            f"mask) and flickers {row['warp_to_truth']:.1f}× the true edit's ({old['warp_to_truth']:.1f}×)") in tiny
    static = [(name, r["static_kind"]) for name, r in zip(gate["edits"], now["per_edit"]) if r["static"]]
    assert static == [("colour: purple circle -> yellow circle", "faint")] and "fails, by one" in tiny
    assert all(gate[m]["static_edits"] == 1 for m in ("per-frame", "spatiotemporal", "cove", "cove-true"))
    ratios = [gate[a]["warp_error"] / gate[b]["warp_error"] for a, b in
              (("cove", "spatiotemporal"), ("spatiotemporal", "per-frame"), ("cove-true", "per-frame"))]
    assert (f"COVE's flicker is {ratios[0]:.2f}× spatial-temporal attention's, spatial-temporal attention's "
            f"{ratios[1]:.2f}× per-frame editing's, and COVE on the true correspondence also {ratios[2]:.2f}×") in tiny
    readme = (root / "README.md").read_text()
    figures = " / ".join(f"{gate[m]['warp_error']:.2f}" for m in ("cove", "spatiotemporal", "per-frame", "cove-true"))
    assert f"| {figures} / {gate['truth_warp_error']:.2f} |" in readme
    assert f"| {now['landed']:.0%} / {now['landed_edits']:.0%} |" in readme
