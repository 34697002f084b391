"""ShapesWorld: determinism, captions, masks, exact ground truth, edits, photo clips, errors."""
import re
from dataclasses import replace

import numpy as np
import pytest

from cove import world
from cove.tiny.data import SCENE_FRAMES, sample_training_clips, sample_training_images
from cove.world import (
    BACKGROUNDS,
    COLOURS,
    DEMO_EDIT,
    SHAPES,
    VOCABULARY,
    Scene,
    ShapeObject,
    demo_scene,
    edit,
    photo_clip,
    random_scene,
    render,
    textures,
)
from cove.world import clip as render_mod
from cove.world import scene as scene_mod

SEEDS = range(6)


def _erode(mask, r=1):
    """Pixels whose (2r+1)^2 neighbourhood lies in the mask, (..., H, W)."""
    out = mask.copy()
    for dy in range(-r, r + 1):
        for dx in range(-r, r + 1):
            out &= np.roll(np.roll(mask, dy, -2), dx, -1)
    out[..., :r, :] = out[..., -r:, :] = False
    out[..., :, :r] = out[..., :, -r:] = False
    return out


def _nearest(frame, pos):
    """frame (H, W, 3) at the pixel nearest to positions (..., 2) -> (..., 3)."""
    H, W = frame.shape[:2]
    x = np.clip(np.rint(pos[..., 0]).astype(int), 0, W - 1)
    y = np.clip(np.rint(pos[..., 1]).astype(int), 0, H - 1)
    return frame[y, x]


def _translating_square(v=(3.0, 2.0), pan=(0.0, 0.0), frames=5):
    """A red square moving by exactly v pixels per frame, no rotation or scaling."""
    start = (20.0, 24.0)
    end = (start[0] + v[0] * (frames - 1), start[1] + v[1] * (frames - 1))
    obj = ShapeObject("red", "square", start=start, end=end, diameter=(20.0, 20.0))
    return Scene((obj,), "sand", frames=frames, size=64, camera=(10.0, 30.0), pan=pan)


# --- determinism and captions -------------------------------------------------------------

def test_random_scene_and_render_are_deterministic():
    a, b = random_scene(7, frames=4, size=48), random_scene(7, frames=4, size=48)
    assert a == b
    assert np.array_equal(render(a).frames, render(b).frames)
    assert random_scene(8, frames=4, size=48) != a
    imgs1, caps1 = sample_training_images(12, seed=3)
    imgs2, caps2 = sample_training_images(12, seed=3)
    imgs3, _ = sample_training_images(12, seed=4)
    assert np.array_equal(imgs1, imgs2) and caps1 == caps2
    assert not np.array_equal(imgs1, imgs3)


def test_training_clips_are_consecutive_frames_of_one_moving_scene():
    imgs, caps, objects = sample_training_clips(3, 4, seed=5, masks=True)
    assert imgs.shape == (12, 64, 64, 3) and objects.shape == (12, 64, 64) and len(caps) == 3
    again, caps_again = sample_training_clips(3, 4, seed=5)
    assert np.array_equal(imgs, again) and caps == caps_again  # seeded; masks change nothing else
    for k, caption in enumerate(caps):  # each clip: 4 consecutive frames of a random 8-frame scene
        clip = imgs[4 * k:4 * k + 4]
        scenes = [render(random_scene(s, frames=SCENE_FRAMES)) for s in _clip_seeds(5, 3)]
        matches = [(c, f) for c, r in enumerate(scenes) for f in range(SCENE_FRAMES - 3)
                   if np.array_equal(r.frames[f:f + 4], clip)]
        assert matches and scenes[matches[0][0]].caption == caption
    assert not np.array_equal(imgs[0], imgs[1])  # the frames move


def _clip_seeds(seed, n):
    """The scene seeds ``sample_training_clips(n, ..., seed)`` draws (a scene seed, then a first frame, per clip)."""
    rng = np.random.default_rng(seed)
    seeds = []
    for _ in range(n):
        seeds.append(int(rng.integers(2**62)))
        rng.integers(SCENE_FRAMES)
    return seeds


def test_clip_shapes_and_sizes():
    clip = render(random_scene(1, frames=5, size=40, n_objects=2))
    assert clip.frames.shape == (5, 40, 40, 3) and clip.frames.dtype == np.uint8
    assert clip.masks.shape == (5, 2, 40, 40) and clip.masks.dtype == bool
    imgs, caps = sample_training_images(5, seed=0, size=32)
    assert imgs.shape == (5, 32, 32, 3) and imgs.dtype == np.uint8 and len(caps) == 5


def test_training_images_with_object_masks():
    imgs, caps = sample_training_images(16, seed=2)
    imgs_m, caps_m, objects = sample_training_images(16, seed=2, masks=True)
    assert np.array_equal(imgs, imgs_m) and caps == caps_m  # asking for masks changes nothing else
    assert objects.shape == (16, 64, 64) and objects.dtype == bool
    assert objects.any(axis=(1, 2)).all() and not objects.all(axis=(1, 2)).any()
    palette = np.array(list(COLOURS.values()))  # (6, 3)
    for img, mask in zip(imgs_m, objects):
        inner = mask[1:-1, 1:-1] & mask[:-2, 1:-1] & mask[2:, 1:-1] & mask[1:-1, :-2] & mask[1:-1, 2:]
        px = img[1:-1, 1:-1][inner].astype(int)  # (P, 3): pixels well inside an object
        assert len(px) and (np.abs(px[:, None] - palette[None]).max(-1).min(-1) <= 1).all()


def test_caption_matches_scene():
    pattern = re.compile(r"^an? (\w+) (\w+)( and an? (\w+) (\w+))? on (\w+)$")
    for seed in range(40):
        scene = random_scene(seed)
        m = pattern.match(scene.caption)
        assert m, scene.caption
        named = [(m[1], m[2])] + ([(m[4], m[5])] if m[3] else [])
        assert sorted(named) == sorted((o.colour, o.shape) for o in scene.objects)
        assert m[6] == scene.background and len(set(named)) == len(named)
        assert set(scene.caption.split()) <= set(VOCABULARY)
        assert render(scene).caption == scene.caption
    assert {len(random_scene(s).objects) for s in range(40)} == {1, 2}
    assert len(random_scene(0, n_objects=2).objects) == 2
    assert demo_scene().caption == "a red star and a blue circle on grass"
    assert set(edit(demo_scene(), "red", "orange").caption.split()) <= set(VOCABULARY)


def test_vocab_sizes_and_colour_distances():
    assert len(COLOURS) >= 6 and SHAPES == ("circle", "square", "triangle", "star")
    assert len(BACKGROUNDS) >= 4
    cols = np.array(list(COLOURS.values()), float)  # (6, 3)
    pair = np.linalg.norm(cols[:, None] - cols[None], axis=-1)
    assert pair[~np.eye(len(cols), dtype=bool)].min() >= 100
    rng = np.random.default_rng(0)
    wx, wy = rng.uniform(0, 2000, (2, 20000))
    for name in BACKGROUNDS:
        tex = textures.texture(name, wx, wy, 64)  # (20000, 3)
        assert np.linalg.norm(tex[:, None] - cols[None], axis=-1).min() >= 100, name


def _patch_margins(name, n=100, patch=12, search=8, seed=0):
    """For n random background patches (patch x patch pixels at 64 x 64, rounded to uint8):
    the RMS difference to the best shift within +-``search`` pixels that lies >= 2 pixels away
    (Chebyshev), and whether no shift matches as well as the true position, (n,) each."""
    rng = np.random.default_rng(seed)
    P, S = patch, search
    g = np.arange(P + 2 * S, dtype=float)
    dy, dx = np.mgrid[-S:S + 1, -S:S + 1]
    far = (np.maximum(np.abs(dx), np.abs(dy)) >= 2).ravel()
    margins, unique = np.empty(n), np.empty(n, bool)
    for k in range(n):
        x0, y0 = rng.uniform(-3000, 3000, 2).round()
        y, x = np.meshgrid(g + y0, g + x0, indexing="ij")
        img = np.rint(textures.texture(name, x, y, 64))  # (P + 2S, P + 2S, 3)
        windows = np.lib.stride_tricks.sliding_window_view(img, (P, P), (0, 1))  # (2S+1, 2S+1, 3, P, P)
        ref = img[S:S + P, S:S + P].transpose(2, 0, 1)  # (3, P, P)
        ssd = ((windows - ref) ** 2).mean((2, 3, 4)).ravel()  # ((2S+1)^2,)
        margins[k], unique[k] = np.sqrt(ssd[far].min()), (ssd > 0).sum() == ssd.size - 1
    return margins, unique


@pytest.mark.parametrize("name", BACKGROUNDS)
def test_a_background_patch_has_one_true_match(name):
    """Backgrounds are not periodic: a 12 x 12 patch differs from every other position within
    +-8 pixels that is >= 2 pixels away by >= 4 grey levels RMS (90% of patches). The former
    sin-based textures failed this on grass, snow, sand and bricks (0%, 0%, 0%, 28%)."""
    margins, unique = _patch_margins(name)
    assert unique.all()
    assert (margins >= 4).mean() >= 0.9, np.quantile(margins, [0.1, 0.5])


def test_objects_stay_in_frame_and_mostly_unoccluded():
    for seed in range(6):
        scene = random_scene(seed, n_objects=2, frames=6)
        clip = render(scene)
        for k, obj in enumerate(scene.objects):
            single = replace(scene, objects=(obj,), caption_order=None)
            alone = render(single).masks[:, 0]  # (F, H, W)
            for f in range(scene.frames):
                unit = obj.pose(scene.time(f))[2]
                area = (scene_mod.SDF[obj.shape](*np.meshgrid(*[np.linspace(-2, 2, 401)] * 2)) < 0
                        ).mean() * 16 * unit**2  # full area in pixels
                assert alone[f].sum() >= 0.65 * area
                assert clip.masks[f, k].sum() >= 0.55 * alone[f].sum()
            d = np.array(obj.diameter)
            assert (d >= 14).all() and (d <= 26).all()


# --- masks -------------------------------------------------------------------------------

def test_masks_match_colours():
    for seed in SEEDS:
        scene = random_scene(seed, frames=3)
        clip = render(scene)
        assert (clip.masks.sum(1) <= 1).all()  # visible masks are disjoint
        cols = np.array([COLOURS[o.colour] for o in scene.objects])  # (O, 3)
        for k in range(len(scene.objects)):
            core = _erode(clip.masks[:, k])  # (F, H, W)
            assert core.any()
            assert (clip.frames[core] == cols[k]).all()
        far = ~_erode(~clip.masks.any(1), 0) | _erode(~clip.masks.any(1), 2)  # (F, H, W)
        far &= ~clip.masks.any(1)
        rgb = clip.frames[far].astype(float)  # (M, 3)
        assert np.linalg.norm(rgb[:, None] - cols[None], axis=-1).min() > 60


# --- ground truth ------------------------------------------------------------------------

def test_track_hand_checked_translation():
    clip = render(_translating_square(v=(3.0, 2.0), pan=(2.0, -1.0)))
    pos, vis = clip.track(0, 2)  # (64, 64, 2), (64, 64)
    assert pos.shape == (64, 64, 2) and vis.shape == (64, 64)
    assert np.allclose(pos[24, 20], (26.0, 28.0)) and vis[24, 20]  # square centre: +2 v
    assert np.allclose(pos[5, 50], (46.0, 7.0)) and vis[5, 50]  # background: -2 pan
    assert np.allclose(pos[5, 1], (-3.0, 7.0)) and not vis[5, 1]  # left the frame
    # the background point that ends under the square is occluded there
    assert np.allclose(pos[30, 28], (24.0, 32.0)) and not vis[30, 28]
    # grid 16 x 16: cell centre (5, 6) = pixel (21.5, 25.5), inside the square
    gpos, gvis = clip.track(0, 4, grid=(16, 16))  # (16, 16, 2)
    assert np.allclose(gpos[6, 5], (5 + 12 / 4, 6 + 8 / 4)) and gvis[6, 5]
    assert np.allclose(gpos[0, 15], (15 - 8 / 4, 0 + 4 / 4)) and gvis[0, 15]


def test_ground_truth_shapes_identity_and_grid_consistency():
    clip = render(random_scene(2, frames=4, n_objects=2))
    pos, vis = clip.ground_truth(grid=(8, 8))
    assert pos.shape == (4, 64, 4, 2) and vis.shape == (4, 64, 4)
    gy, gx = np.divmod(np.arange(64), 8)
    for i in range(4):
        assert np.allclose(pos[i, :, i], np.stack([gx, gy], -1)) and vis[i, :, i].all()
    full_pos, full_vis = clip.ground_truth()
    same_pos, same_vis = clip.ground_truth(grid=(64, 64))
    assert full_pos.shape == (4, 4096, 4, 2)
    assert np.allclose(full_pos, same_pos) and np.array_equal(full_vis, same_vis)
    p, v = clip.track(1, 3, grid=(8, 8))
    assert np.allclose(p.reshape(-1, 2), pos[1, :, 3]) and np.array_equal(v.reshape(-1),
                                                                         vis[1, :, 3])


def test_tracked_colours_are_consistent():
    for seed in SEEDS:
        scene = random_scene(seed, frames=5)
        clip = render(scene)
        fr = clip.frames.astype(int)
        for i, j in [(0, 4), (2, 1), (4, 0)]:
            pos, vis = clip.track(i, j)
            core = _erode(clip.masks[i], 2).any(0)  # object interiors of frame i
            got = _nearest(fr[j], pos)  # (H, W, 3)
            exact = (got == fr[i]).all(-1)[core & vis]  # rounding may hit an occluder's edge
            assert exact.mean() > 0.97
            diff = np.abs(render_mod.bilinear(fr[j].astype(float), pos[..., 0], pos[..., 1])
                          - fr[i]).max(-1)  # (H, W)
            bg = vis & _erode(~clip.masks[i].any(0), 3)
            assert np.median(diff[bg]) <= 6 and (diff[bg] > 40).mean() < 0.03


def test_visibility_matches_masks():
    """Visible tracked points land on their own surface; hidden in-frame ones on another."""
    for scene in [demo_scene()] + [random_scene(s, n_objects=2) for s in SEEDS]:
        clip, motion = render(scene), render_mod._SceneMotion(scene)
        for i, j in [(0, 4), (4, 0), (7, 3)]:
            pos, vis = clip.track(i, j)
            x, y = render_mod.pixel_grid(64)
            own = motion.labels(i, x, y)  # (H, W) surface label in frame i
            there = motion.labels(j, pos[..., 0], pos[..., 1])  # label at the tracked point
            inside = render_mod.in_frame(pos[..., 0], pos[..., 1], (64, 64))
            assert (there[vis] == own[vis]).all()
            assert (there[inside & ~vis] > own[inside & ~vis]).all()
    clip = render(demo_scene())
    pos, vis = clip.track(0, 4)
    hidden = clip.masks[0, 0] & ~vis  # circle points of frame 0 hidden in frame 4
    assert 0.15 < hidden.sum() / clip.masks[0, 0].sum() < 0.4  # the star covers part of it
    x, y = np.rint(pos[_erode(hidden)]).astype(int).T
    assert clip.masks[4, 1][y, x].all()  # ... and they lie under the star there


# --- edits -------------------------------------------------------------------------------

def test_colour_edit_changes_only_the_object():
    for scene in [demo_scene()] + [random_scene(s, n_objects=2) for s in SEEDS]:
        obj = scene.objects[-1]
        new = next(c for c in COLOURS if c != obj.colour
                   and (c, obj.shape) not in {(o.colour, o.shape) for o in scene.objects})
        edited = render(edit(scene, obj.phrase, f"{new} {obj.shape}"))
        clip = render(scene)
        assert np.array_equal(edited.masks, clip.masks)
        x, y = render_mod.pixel_grid(64)
        outside = np.stack([scene_mod.object_sd(obj, obj.pose(scene.time(f)), x, y) >= 0.5
                            for f in range(scene.frames)])  # (F, H, W) zero coverage
        assert (outside | clip.masks[:, -1]).mean() < 1  # a fringe exists between the two
        assert np.array_equal(edited.frames[outside], clip.frames[outside])
        core = _erode(clip.masks[:, -1])
        assert (edited.frames[core] == COLOURS[new]).all()
        words = lambda c: re.sub(r"\ban? ", "", c)  # noqa: E731 - drop the articles
        assert words(edited.caption) == words(scene.caption).replace(obj.phrase,
                                                                     f"{new} {obj.shape}")
    ed = edit(demo_scene(), *DEMO_EDIT)
    assert ed.caption == "a yellow star and a blue circle on grass"


def test_background_and_shape_edits():
    scene = demo_scene()
    clip = render(scene)
    snow = render(edit(scene, "on grass", "on snow"))
    assert snow.caption.endswith("on snow") and np.array_equal(snow.masks, clip.masks)
    core = _erode(clip.masks).any(1)
    assert np.array_equal(snow.frames[core], clip.frames[core])
    assert not np.array_equal(snow.frames[~core], clip.frames[~core])
    assert edit(scene, "grass", "sand").background == "sand"
    square = edit(scene, "star", "square")
    assert square.caption == "a red square and a blue circle on grass"
    assert square.objects[1].pose(0.5) == scene.objects[1].pose(0.5)  # same motion
    sq = render(square)
    assert not np.array_equal(sq.masks[:, 1], clip.masks[:, 1])
    alone = render(replace(scene, objects=scene.objects[:1], caption_order=None))  # unoccluded
    free = ~sq.masks[:, 1] & ~clip.masks[:, 1]  # (F, H, W) outside both top shapes
    assert np.array_equal(sq.masks[:, 0][free], alone.masks[:, 0][free])
    assert edit(scene, "blue", "purple").objects[0].colour == "purple"


def test_edit_errors():
    scene = demo_scene()
    for source, target in [("green star", "red star"), ("snow", "sand"), ("star", "red"),
                           ("red star", "pink star"), ("red star", "blue circle"), ("red", "")]:
        with pytest.raises(ValueError) as err:
            edit(scene, source, target)
        assert "\n" not in str(err.value)


# --- photos ------------------------------------------------------------------------------

@pytest.mark.parametrize("motion", world.PHOTO_MOTIONS)
def test_photo_clip_correspondences(motion):
    clip = photo_clip("astronaut", frames=6, size=48, motion=motion, seed=1)
    assert clip.frames.shape == (6, 48, 48, 3) and clip.masks.shape == (6, 0, 48, 48)
    assert np.array_equal(clip.frames, photo_clip("astronaut", frames=6, size=48,
                                                  motion=motion, seed=1).frames)
    fr = clip.frames.astype(float)
    pos, vis = clip.track(0, 5)
    assert 0.3 < vis.mean() <= 1.0
    tracked = np.abs(render_mod.bilinear(fr[5], pos[..., 0], pos[..., 1]) - fr[0])[vis].mean()
    still = np.abs(fr[5] - fr[0])[vis].mean()
    assert tracked < 4.0 and still > 4 * tracked
    x, y = render_mod.pixel_grid(48)
    x5, y5, _ = clip._motion.transfer(0, 5, x, y)
    x0, y0, _ = clip._motion.transfer(5, 0, x5, y5)  # an exact inverse: 0 -> 5 -> 0
    assert np.allclose(x0, x) and np.allclose(y0, y)
    gpos, gvis = clip.ground_truth(grid=(6, 6))
    assert gpos.shape == (6, 36, 6, 2) and gvis.shape == (6, 36, 6)


def test_photo_pan_is_a_constant_shift():
    clip = photo_clip("coffee", frames=5, motion="pan", seed=2)
    pos, _ = clip.track(1, 3)
    disp = pos - np.stack(np.meshgrid(np.arange(64.0), np.arange(64.0)), -1)  # (64, 64, 2)
    assert np.allclose(disp, disp[0, 0]) and np.linalg.norm(disp[0, 0]) > 3


# --- bad inputs --------------------------------------------------------------------------

@pytest.mark.parametrize("call", [
    lambda: random_scene(0, size=8),
    lambda: random_scene(0, frames=0),
    lambda: random_scene(0, n_objects=3),
    lambda: render(replace(demo_scene(), background="lava")),
    lambda: ShapeObject("pink", "star", (5, 5), (9, 9)),
    lambda: ShapeObject("red", "hexagon", (5, 5), (9, 9)),
    lambda: replace(demo_scene(), caption_order=(0, 0)),
    lambda: edit(demo_scene(), "green star", "red star"),
    lambda: photo_clip("moon"),
    lambda: photo_clip("chelsea", motion="shake"),
    lambda: photo_clip("chelsea", size=8),
    lambda: render(demo_scene()).track(0, 9),
    lambda: render(demo_scene()).track(0, 1, grid=(0, 4)),
    lambda: sample_training_images(2, 0, size=10),
    lambda: sample_training_clips(2, SCENE_FRAMES + 1, 0),
    lambda: sample_training_clips(-1, 2, 0),
])
def test_bad_inputs_raise_one_line_value_errors(call):
    with pytest.raises(ValueError) as err:
        call()
    assert "\n" not in str(err.value) and "expected" in str(err.value)
