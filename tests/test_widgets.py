"""The notebook widgets, driven without a browser (set ``.value``, ``click()``, read ``state``),
and once in a real browser (the last test)."""
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from cove import metrics
from cove.app import widgets
from cove.config import CoveConfig
from cove.correspondence import correspond


def shifted_features(F=4, C=8, H=12, W=12, shift=1, seed=0):
    """Unit features of a texture moving ``shift`` cells right per frame: (F, C, H, W)."""
    g = torch.Generator().manual_seed(seed)
    base = torch.nn.functional.normalize(torch.randn(C, H, W + F * shift, generator=g), dim=0)
    return torch.stack([base[:, :, f * shift : f * shift + W] for f in range(F)][::-1])  # content moves right


def frames_for(features, size=48):
    F = features.shape[0]
    rng = np.random.default_rng(0)
    return rng.integers(0, 255, (F, size, size, 3), dtype=np.uint8)


def test_frame_viewer_slider_changes_the_picture():
    clips = {"a": np.zeros((3, 8, 8, 3), np.uint8), "b": np.full((3, 8, 8, 3), 50, np.uint8)}
    clips["b"][2] = 200
    panel = widgets.frame_viewer(clips, scale=2)
    before = panel.images["frames"].value
    panel.controls["frame"].value = 2
    assert panel.state["frame"] == 2 and panel.images["frames"].value != before
    assert panel.error is None and panel.controls["frame"].continuous_update is False


def test_window_explorer_finds_the_shifted_token_and_follows_l():
    feats = shifted_features()
    panel = widgets.window_explorer(feats, frames_for(feats), window=5, point=(4, 6))
    n_next = 6 * 12 + 5  # the texture moved one cell right
    assert int(panel.state["top"][0]) == n_next and panel.state["full_best"] == n_next
    assert panel.state["similarity"].shape == (25,)
    panel.controls["window"].value = 3
    assert panel.state["similarity"].shape == (9,) and panel.state["window"] == 3
    panel.controls["x"].value = 0  # border: the window is shifted inward, still l*l cells
    assert panel.state["index"].min() >= 0 and len(set(panel.state["index"].tolist())) == 9
    assert panel.error is None


def test_correspondence_explorer_k_slider_and_pck():
    feats = shifted_features()
    corr = correspond(feats, window=5, k=3)
    F, N = corr.frames, 12 * 12
    # ground truth of the shift: token (x, y) of frame i is at (x + j - i, y) in frame j
    cells = torch.stack([torch.arange(N) % 12, torch.arange(N) // 12], -1).float()  # (N, 2)
    offset = (torch.arange(F)[None, :] - torch.arange(F)[:, None]).float()  # (F, F)
    pos = cells[None, :, None].repeat(F, 1, F, 1)  # (F, N, F, 2)
    pos[..., 0] += offset[:, None, :]
    visible = (pos[..., 0] >= 0) & (pos[..., 0] < 12)
    panel = widgets.correspondence_explorer(frames_for(feats), {"diffusion": corr}, gt=(pos, visible),
                                            point=(3, 3))
    assert panel.state["positions"]["diffusion"].shape == (F, 3, 2)
    assert panel.state["pck"]["diffusion"] == pytest.approx(metrics.pck(corr, pos, visible))
    assert panel.state["pck"]["diffusion"] > 0.9
    panel.controls["k"].value = 1
    assert panel.state["positions"]["diffusion"].shape == (F, 1, 2)
    assert torch.equal(panel.state["positions"]["diffusion"][1, 0], torch.tensor([4.0, 3.0]))


def test_point_picker_click_keys_and_static_copy():
    """A click (the message ipyevents sends) picks the cell under it in that frame; arrow keys
    and [ ] move the point; similarity heatmap and distance to the truth follow."""
    feats = shifted_features()
    corr = correspond(feats, window=5, k=3)
    F, N = corr.frames, 12 * 12
    cells = torch.stack([torch.arange(N) % 12, torch.arange(N) // 12], -1).float()
    offset = (torch.arange(F)[None, :] - torch.arange(F)[:, None]).float()
    pos = cells[None, :, None].repeat(F, 1, F, 1)
    pos[..., 0] += offset[:, None, :]
    gt = (pos.numpy(), ((pos[..., 0] >= 0) & (pos[..., 0] < 12)).numpy())
    panel = widgets.correspondence_explorer(frames_for(feats), {"features": corr}, gt=gt, features=feats,
                                            point=(3, 3))
    assert panel.state["heat"].shape == (F, 12, 12) and panel.state["heat"][0, 3, 3] == pytest.approx(1.0)
    assert panel.state["distance"]["features"] == pytest.approx(0.0)  # the shift is found exactly
    (target,) = [p for p in panel.pickable if p.frame == 2]
    x0, y0, x1, y1 = target.box
    click = {"type": "click", "dataX": x0 + 7.5 / 12 * (x1 - x0), "dataY": y0 + 4.5 / 12 * (y1 - y0)}
    updates = panel.updates
    panel.events._handle_mouse_msg(None, click, [])  # what the browser sends on a click
    assert panel.error is None and (panel.state["frame"], panel.state["token"]) == (2, 4 * 12 + 7)
    assert panel.updates == updates + 1  # three controls set, one redraw
    assert torch.equal(panel.state["positions"]["features"][3, 0], torch.tensor([8.0, 4.0]))
    panel.events._handle_mouse_msg(None, {"type": "keydown", "key": "ArrowUp"}, [])
    panel.events._handle_mouse_msg(None, {"type": "keydown", "key": "]"}, [])
    assert (panel.state["frame"], panel.state["token"]) == (3, 3 * 12 + 7)
    panel.events._handle_mouse_msg(None, {"type": "click", "dataX": 1, "dataY": 1}, [])  # margin
    assert panel.state["frame"] == 3 and panel.error is None
    bundle = panel._repr_mimebundle_()
    assert "application/vnd.jupyter.widget-view+json" in bundle
    assert "data:image/png;base64," in bundle["text/html"] and "token n = 43" in bundle["text/html"]


def test_attention_explorer_weights_sum_to_one_and_skip_own_frame():
    feats = shifted_features(F=3)
    corr = correspond(feats, window=5, k=2)
    tokens = feats.flatten(2).transpose(1, 2)  # (F, N, C)
    panel = widgets.attention_explorer(tokens, tokens, corr.index, frames_for(feats), grid=(12, 12),
                                       frame=1, point=(5, 5))
    maps = panel.state["maps"]
    assert maps.shape == (3, 12, 12) and np.all(maps[1] == 0)
    assert maps.sum() == pytest.approx(1.0, abs=1e-5)
    assert "times the uniform 1/4" in panel.status.value and panel.images["attention"].value[:4] == b"\x89PNG"
    (target,) = [p for p in panel.pickable if p.frame == 0]
    x0, y0, x1, y1 = target.box
    panel.pick(x0 + 2.5 / 12 * (x1 - x0), y0 + 9.5 / 12 * (y1 - y0))
    assert (panel.state["frame"], panel.state["token"]) == (0, 9 * 12 + 2)
    panel.controls["merge_ratio"].value = 0.5
    assert panel.state["merge_ratio"] == 0.5 and panel.state["maps"].sum() == pytest.approx(1.0, abs=1e-5)


def test_merge_explorer_counts_follow_the_ratio():
    feats = shifted_features(F=5)
    corr = correspond(feats, window=5, k=3)
    tokens = feats.flatten(2).transpose(1, 2)  # (F, N, C)
    panel = widgets.merge_explorer(tokens, corr.index, frames_for(feats), grid=(12, 12), ratio=0.0)
    assert panel.state["tokens"] == 12 and panel.state["kept"] == 12  # (F-1)*K = 4*3
    assert panel.state["keys"] == ["not merged (12 tokens)"]
    panel.controls["ratio"].value = 0.5
    assert panel.state["merged_away"] == 6 and len(np.unique(panel.state["groups"])) == 6
    merged = sum(int(k.split(": ")[1].split()[0]) for k in panel.state["keys"] if k.startswith("key"))
    alone = [int(k.split("(")[1].split()[0]) for k in panel.state["keys"] if k.startswith("not")]
    assert merged + sum(alone) == 12  # every gathered token is in the legend once
    (target,) = [p for p in panel.pickable if p.frame == 2]  # a click picks a token of frame 2
    x0, y0, x1, y1 = target.box
    panel.pick(x0 + 4.5 / 12 * (x1 - x0), y0 + 7.5 / 12 * (y1 - y0))
    assert (panel.state["frame"], panel.state["token"]) == (2, 7 * 12 + 4)


def test_feature_explorer_recomputes_on_t_and_layer(tiny_pipe, tiny_clip):
    panel = widgets.feature_explorer(tiny_pipe, tiny_clip, t=261)
    first = panel.state["features"]
    assert first.shape[0] == len(tiny_clip) and panel.state["colours"].dtype == np.uint8
    panel.controls["t"].value = 900
    assert panel.state["t"] == 900 and not torch.allclose(panel.state["features"], first)
    panel.controls["layer"].value = widgets.decoder_layers(tiny_pipe)[0]
    assert panel.error is None and panel.state["layer"] == "up_blocks.0"


def test_feature_explorer_starts_at_the_models_own_feature_settings(tiny_folder, tiny_clip):
    from cove import load_pipeline
    from cove.recommended import write_settings

    pipe = load_pipeline(tiny_folder)
    panel = widgets.feature_explorer(pipe, tiny_clip)  # no settings file: the paper's t, SD's convention layer
    assert (panel.state["t"], panel.state["layer"]) == (261, widgets.decoder_layers(pipe)[-1])
    write_settings(tiny_folder, CoveConfig(feature_t=50, feature_layer="up_blocks.0"), "empty", "")
    panel = widgets.feature_explorer(pipe, tiny_clip)
    assert (panel.state["t"], panel.state["layer"]) == (50, "up_blocks.0")
    assert widgets.feature_explorer(pipe, tiny_clip, t=100).state["t"] == 100  # what is given wins


def test_edit_panel_runs_on_click_scores_and_shows_errors(tiny_pipe):
    from cove import world

    scene = world.demo_scene(frames=3, size=32)
    clip, truth = world.render(scene), world.render(world.edit(scene, *world.DEMO_EDIT))
    config = CoveConfig(inversion_steps=2, denoise_steps=2, pnp_steps=1, window=5)
    panel = widgets.edit_panel(tiny_pipe, clip.frames, prompt=truth.caption, source_prompt=clip.caption,
                               config=config, clip=clip, truth=truth, target_phrase=world.DEMO_EDIT[1])
    assert panel.state["runs"] == []  # nothing runs before the button is pressed
    panel.controls["run"].click()
    assert panel.error is None, panel.status.value
    (row,) = panel.state["runs"]
    assert row["attention"] == "cove" and np.isfinite(row["flicker (warp error)"])
    assert "fidelity psnr" in row and panel.state["result"].frames.shape == clip.frames.shape
    assert panel.images["result"].value  # the picture is drawn
    panel.controls["window"].value, panel.controls["k"].value = 1, 3  # K > l*l: a ValueError
    panel.controls["run"].click()
    assert isinstance(panel.error, ValueError) and "ValueError" in panel.status.value
    assert len(panel.state["runs"]) == 1
    panel.controls["window"].value, panel.controls["negative"].value = 5, clip.caption
    panel.controls["run"].click()
    assert panel.error is None and panel.state["runs"][-1]["negative"] == clip.caption
    assert panel.state["result"].extras["negative_prompt"] == clip.caption
    assert panel.state["result"].mask is None and panel.state["runs"][-1]["mask"] == "-"
    panel.controls["mask"].value = 0.4  # the edit mask
    panel.controls["run"].click()
    assert panel.error is None and panel.state["runs"][-1]["mask"] == 0.4
    assert panel.state["result"].mask.shape == (3, 16, 16)
    assert panel.state["runs"][-1]["p2p"] == 0 and "p2p" not in panel.state["result"].extras["calls"]
    panel.controls["p2p"].value = 2  # prompt-to-prompt's word swap
    panel.controls["run"].click()
    assert panel.error is None and panel.state["runs"][-1]["p2p"] == 2
    assert panel.state["result"].extras["calls"]["p2p"] > 0
    assert panel.state["runs"][-1]["ResNet t <"] == "-"  # PnP's: every PnP step
    panel.controls["resnet_t"].value = 250
    panel.controls["run"].click()
    assert panel.error is None and panel.state["runs"][-1]["ResNet t <"] == 250
    assert panel.state["result"].config.extras.pnp_resnet_max_t == 250


def test_panel_guard_keeps_and_clears_the_error():
    import ipywidgets

    panel = widgets.Panel({}, {})
    assert isinstance(panel, ipywidgets.VBox)  # a panel is a widget: it nests in other layouts
    panel.guarded(lambda: 1 / 0)()
    assert isinstance(panel.error, ZeroDivisionError) and "ZeroDivisionError" in panel.status.value
    panel.guarded(lambda: None)()
    assert panel.error is None


def test_quickstart_in_jupyterlab_and_headless_chromium():
    """End to end in a real browser (.ci/browser_check.py): JupyterLab runs the quickstart,
    a slider is moved and a frame of the point picker is clicked, each changing its picture;
    the screenshot is kept in artifacts/. Skipped without Chromium, except in CI (CI=true)."""
    import importlib.util
    import os

    missing = [name for name, ok in [("/usr/bin/chromium", Path("/usr/bin/chromium").exists()),
                                     ("playwright", importlib.util.find_spec("playwright") is not None)] if not ok]
    if missing and os.environ.get("CI") != "true":
        pytest.skip(f"browser check needs {' and '.join(missing)} (apt-get install chromium; pip install playwright)")
    assert not missing, f"CI=true: the browser check is mandatory, but {' and '.join(missing)} is missing"
    root = Path(__file__).resolve().parents[1]
    shot = root / "artifacts" / "browser_check.png"
    shot.unlink(missing_ok=True)
    result = subprocess.run([sys.executable, str(root / ".ci" / "browser_check.py")], cwd=root,
                            capture_output=True, text=True, timeout=1560)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    assert "browser check passed" in result.stdout and shot.stat().st_size > 10_000
    assert "a click picked a new point" in result.stdout
