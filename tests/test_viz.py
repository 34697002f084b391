"""Pure plotting helpers of cove.app.viz: shapes, dtypes and properties that can fail."""
import numpy as np
import pytest
import torch

from cove.app import viz


def _features(seed=0, F=3, C=8, H=5, W=6):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(F, C, H, W, generator=g)


def test_pca_rgb_shape_dtype_and_range():
    rgb = viz.pca_rgb(_features())
    assert rgb.shape == (3, 5, 6, 3) and rgb.dtype == np.uint8
    assert rgb.min() == 0 and rgb.max() == 255  # stretched to the full range per component


def test_pca_rgb_same_feature_same_colour_across_frames():
    f = _features()
    f[2, :, 1, 1] = f[0, :, 3, 4]  # the same surface point seen in frames 0 and 2
    rgb = viz.pca_rgb(f)
    assert np.array_equal(rgb[2, 1, 1], rgb[0, 3, 4])


def test_pca_rgb_first_component_follows_dominant_direction():
    # tokens vary along one direction only: channel 0 of the colour must be monotone in it
    F, C, H, W = 1, 4, 1, 10
    direction = torch.tensor([1.0, 2.0, 0.0, -1.0])
    amount = torch.linspace(-1, 1, W)
    f = (amount[None, :] * direction[:, None]).reshape(F, C, H, W)
    red = viz.pca_rgb(f, clip=0.0)[0, 0, :, 0].astype(int)
    assert np.all(np.diff(red) > 0) or np.all(np.diff(red) < 0)


def test_pca_rgb_accepts_fewer_than_three_channels_and_rejects_bad_shape():
    rgb = viz.pca_rgb(np.random.default_rng(0).normal(size=(2, 2, 3, 3)))
    assert rgb.shape == (2, 3, 3, 3) and np.all(rgb[..., 2] == 0)
    with pytest.raises(ValueError, match="F, C, H, W"):
        viz.pca_rgb(np.zeros((3, 4, 5)))


def test_cell_pixel_round_trip_and_convention():
    grid, size = (16, 16), (64, 64)
    cells = np.array([[0.0, 0.0], [15.0, 3.0], [7.25, 9.5]])
    assert np.allclose(viz.pixel_to_cell(viz.cell_to_pixel(cells, grid, size), grid, size), cells)
    # centre of cell (0, 0) is the centre of the first 4x4 pixel block
    assert np.allclose(viz.cell_to_pixel([0.0, 0.0], grid, size), [2.0, 2.0])
    # non-square grid: x scales with W, y with H
    assert np.allclose(viz.cell_to_pixel([1.0, 1.0], (8, 16), (64, 64)), [6.0, 12.0])


def test_upsample_nearest_keeps_cells_as_blocks():
    heat = np.arange(6, dtype=float).reshape(2, 3)
    up = viz.upsample(heat, (4, 6))
    assert up.shape == (4, 6)
    assert np.array_equal(up[::2, ::2], heat) and np.array_equal(up[1::2, 1::2], heat)
    with pytest.raises(ValueError, match="integer multiple"):
        viz.upsample(heat, (5, 6))


def test_colourise_is_monotone_in_brightness_and_nan_is_black():
    heat = np.array([0.0, 0.5, 1.0, np.nan])
    rgb = viz.colourise(heat, cmap="gray")
    assert rgb.shape == (4, 3) and rgb.dtype == np.uint8
    assert rgb[0, 0] < rgb[1, 0] < rgb[2, 0] and np.all(rgb[3] == 0)


def test_overlay_leaves_nan_cells_untouched_and_tints_others():
    image = np.full((8, 8, 3), 100, np.uint8)
    heat = np.full((2, 2), np.nan)
    heat[0, 1] = 1.0
    out = viz.overlay(image, heat, alpha=0.5)
    assert np.array_equal(out[4:, :], image[4:, :]) and np.array_equal(out[:4, :4], image[:4, :4])
    assert not np.array_equal(out[:4, 4:], image[:4, 4:])


def test_draw_points_marks_the_pixel_and_skips_outside():
    image = np.zeros((10, 10, 3), np.uint8)
    out = viz.draw_points(image, [[2.5, 7.5], [50.0, 50.0]], colours=(255, 0, 0), radius=0)
    assert np.array_equal(out[7, 2], [255, 0, 0])
    assert (out.sum(-1) > 0).sum() == 1  # the second point is outside: nothing drawn
    assert image.sum() == 0  # the input is not modified


def test_draw_box_outline_only():
    out = viz.draw_box(np.zeros((10, 10, 3), np.uint8), (2, 2, 7, 7), colour=(9, 9, 9))
    assert np.all(out[2, 2:7] == 9) and np.all(out[6, 2:7] == 9) and np.all(out[2:7, 2] == 9)
    assert np.all(out[3:6, 3:6] == 0)


def test_scatter_grid_places_values_at_token_indices():
    grid = viz.scatter_grid([1.0, 2.0], [0, 5], (2, 3))
    assert grid[0, 0] == 1.0 and grid[1, 2] == 2.0 and np.isnan(grid).sum() == 4


def test_montage_and_enlarge_shapes():
    a = np.zeros((3, 4, 5, 3), np.uint8)
    m = viz.montage([a, a[:2]], pad=1)
    assert m.shape == (2 * 4 + 3, 3 * 5 + 4, 3)
    assert viz.enlarge(a, 3).shape == (3, 12, 15, 3)
    with pytest.raises(ValueError, match="same size|must be"):
        viz.montage([[np.zeros((4, 5, 3), np.uint8), np.zeros((5, 5, 3), np.uint8)]])


def test_attention_maps_put_weights_on_matched_cells():
    grid = (2, 2)  # 3 frames, K = 2
    index = np.array([[0, 1], [3, 3], [2, 0]])  # the query's matches in frames 0, 1, 2
    weights = np.array([0.1, 0.2, 0.3, 0.4])  # frame 0 is the query's own: frames 1 and 2
    maps = viz.attention_maps(weights, index, frame=0, grid=grid)
    assert maps.shape == (3, 2, 2) and np.all(maps[0] == 0)
    assert np.isclose(maps[1, 1, 1], 0.3)  # both matches in frame 1 are cell 3: they add up
    assert np.isclose(maps[2, 1, 0], 0.3) and np.isclose(maps[2, 0, 0], 0.4)
    assert np.isclose(maps.sum(), 1.0)
    with pytest.raises(ValueError, match="F-1"):
        viz.attention_maps(np.ones(3), index, frame=0, grid=grid)


def test_merge_groups_merges_identical_tokens_and_keeps_count():
    rng = np.random.default_rng(0)
    tokens = rng.normal(size=(6, 4))
    tokens[1] = tokens[0]  # A-token 0 and B-token 1 are the same point
    groups = viz.merge_groups(tokens, r=1)
    assert groups[0] == groups[1]
    assert len(np.unique(groups)) == 5  # T - r
    assert len(np.unique(viz.merge_groups(tokens, r=0))) == 6  # r = 0: nothing merges


def test_to_png_round_trip():
    from io import BytesIO

    from PIL import Image

    image = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    assert np.array_equal(np.asarray(Image.open(BytesIO(viz.to_png(image)))), image)
    with pytest.raises(ValueError, match="uint8"):
        viz.to_png(image.astype(float))


def test_similarity_maps_are_cosines_of_one_token():
    feats = torch.nn.functional.normalize(torch.randn(3, 6, 5, 4, generator=torch.Generator().manual_seed(0)), dim=1)
    maps = viz.similarity_maps(feats, 1, (2, 3))
    assert maps.shape == (3, 5, 4) and maps[1, 3, 2] == pytest.approx(1.0)
    assert maps[2, 0, 1] == pytest.approx(float(feats[1, :, 3, 2] @ feats[2, :, 0, 1]), abs=1e-6)
    with pytest.raises(ValueError, match=r"\(F, C, H, W\)"):
        viz.similarity_maps(feats[0], 0, (0, 0))


def test_flicker_maps_average_to_the_warp_error():
    from cove import metrics, world

    clip = world.render(world.demo_scene(frames=3, size=32))
    noisy = np.clip(clip.frames + np.random.default_rng(0).integers(-20, 20, clip.frames.shape), 0, 255).astype(np.uint8)
    maps = viz.flicker_maps(noisy, clip)
    assert maps.shape == (2, 32, 32)
    assert np.nanmean(maps) == pytest.approx(metrics.warp_error(noisy, clip), rel=1e-6)
    with pytest.raises(ValueError, match="like the clip"):
        viz.flicker_maps(noisy[:2], clip)


def test_picker_figure_clicks_map_back_to_the_cells_drawn():
    from cove.app import plots

    frames = np.zeros((3, 32, 32, 3), np.uint8)
    figure = plots.PickerFigure(frames, (8, 8), ["a", "b"], 2, heat_label="similarity", truth=True)
    rows = {"a": np.zeros((3, 2, 2)), "b": np.ones((3, 1, 2))}
    png, panels = figure.draw((1, 2, 5), rows, heat=np.random.rand(3, 8, 8),
                              truth=(np.ones((3, 2)), np.array([True, True, False])))
    assert png[:4] == b"\x89PNG" and len(panels) == 6 and sorted({p.frame for p in panels}) == [0, 1, 2]
    for p in panels:  # the centre of cell (x, y) of each panel picks (frame, x, y)
        x0, y0, x1, y1 = p.box
        for cx, cy in [(0, 0), (7, 7), (3, 6)]:
            px, py = x0 + (cx + 0.5) / 8 * (x1 - x0), y0 + (cy + 0.5) / 8 * (y1 - y0)
            assert plots.pick(panels, px, py) == (p.frame, cx, cy)
    assert plots.pick(panels, 1, 1) is None  # the margin picks nothing
    legend = [t.get_text() for t in figure.legend.get_texts()]
    assert legend == ["query (clicked)", "match 1 (best)", "match 2", "true position"]
    figure.draw((1, 2, 5), {"a": np.zeros((3, 1, 2)), "b": np.ones((3, 1, 2))})  # K' = 1 shown
    assert [t.get_text() for t in figure.legend.get_texts()] == ["query (clicked)", "match 1", "true position"]


def test_merge_figure_labels_each_shared_key():
    from cove.app import plots

    frames = np.zeros((3, 32, 32, 3), np.uint8)
    positions = np.array([[1, 1], [2, 2], [3, 3], [4, 4]])
    frame_of, groups = np.array([1, 1, 2, 2]), np.array([0, 1, 0, 2])  # key 1 holds two tokens
    png, panels, legend = plots.merge_figure(frames, (8, 8), (0, 5, 5), positions, frame_of, groups, title="t")
    assert png[:4] == b"\x89PNG" and sorted(p.frame for p in panels) == [0, 1, 2]
    assert legend == ["key 1: 2 tokens, frames 1, 2", "not merged (2 tokens)"]


def test_maps_figure_is_a_labelled_png():
    from cove.app import plots

    png = plots.maps_figure({"a": np.random.rand(2, 8, 8), "b": np.full((2, 8, 8), np.nan)},
                            label="flicker", title="t", columns=["0 → 1", "1 → 2"])
    assert png[:4] == b"\x89PNG"


def test_window_figure_and_weights_figure_without_a_query_are_pngs():
    from cove.app import plots

    frames = np.zeros((2, 32, 32, 3), np.uint8)
    window = np.full((8, 8), np.nan)
    window[1:4, 2:5] = np.random.rand(3, 3)
    png = plots.window_figure(frames, (8, 8), (3, 2), (2, 1), 3, window, np.random.rand(8, 8), [[3, 2], [4, 3]])
    assert png[:4] == b"\x89PNG"
    png, panels = plots.weights_figure(np.zeros((3, 32, 32, 3), np.uint8), (8, 8), None, np.random.rand(3, 8, 8),
                                       label="d", title="t")
    assert png[:4] == b"\x89PNG" and [p.frame for p in panels] == [0, 1, 2]
