"""The edit mask and latent blending (cove.extras.masking, DiffEdit) on a tiny seeded SD pipeline."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch

from cove import CoveConfig
from cove.config import Extras
from cove.extras.masking import blend, edit_mask, fill_holes, mask_scores
from cove.pipeline import edit_video
from cove.sd import encode_frames, encode_text

FAST = CoveConfig(inversion_steps=4, denoise_steps=2, pnp_steps=1, window=5, k=2, extras=Extras(mask_samples=2))


def test_edit_mask_threshold_and_dilation():
    scores = torch.zeros(2, 8, 8)
    scores[0, 4, 4] = 1.0
    scores[0, 0, 7] = 0.5
    scores[1, 2, 3] = 0.3  # under the threshold: frame 1 stays empty
    mask = edit_mask(scores, threshold=0.4, dilate=0)
    assert mask.shape == (2, 8, 8) and mask.dtype == torch.float32
    assert mask.sum() == 2 and mask[0, 4, 4] == 1 and mask[0, 0, 7] == 1
    grown = edit_mask(scores, threshold=0.4, dilate=1)
    assert grown[0, 3:6, 3:6].sum() == 9 and grown[0, 0:2, 6:8].sum() == 4  # clipped at the border
    assert grown.sum() == 13 and grown[1].sum() == 0


def test_fill_holes_fills_enclosed_cells_only():
    mask = torch.zeros(3, 8, 8)
    mask[0, 1:6, 1:6] = 1
    mask[0, 2:4, 2:5] = 0  # a hole of 6 cells
    mask[1] = mask[0]
    mask[1, 3, 5] = 0  # the hole opens to the right: no longer a hole
    mask[2, 0:3, 0:3] = 1
    mask[2, 0, 0] = 0  # in the corner, on the border: reachable, so kept
    filled = fill_holes(mask)
    assert filled.shape == mask.shape and filled.dtype == mask.dtype
    assert filled[0, 1:6, 1:6].sum() == 25 and filled[0].sum() == 25
    torch.testing.assert_close(filled[1], mask[1])
    torch.testing.assert_close(filled[2], mask[2])
    diagonal = torch.zeros(1, 5, 5)
    diagonal[0, 1, 2] = diagonal[0, 2, 1] = diagonal[0, 2, 3] = diagonal[0, 3, 2] = 1
    assert fill_holes(diagonal)[0, 2, 2] == 1  # outside cells connect through edges, not corners
    scores = torch.zeros(1, 8, 8)
    scores[0, 1:6, 1:6] = 1.0
    scores[0, 3, 3] = 0.1
    assert edit_mask(scores, threshold=0.4, dilate=0)[0, 3, 3] == 0
    assert edit_mask(scores, threshold=0.4, dilate=0, fill=True)[0, 3, 3] == 1


def test_blend_takes_edited_inside_and_source_outside():
    edited, source = torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    mask = torch.zeros(2, 8, 8)
    mask[0, :4] = 1
    out = blend(edited, source, mask)
    assert out.shape == (2, 4, 8, 8)
    assert (out[0, :, :4] == 1).all() and (out[0, :, 4:] == 0).all() and (out[1] == 0).all()


def test_mask_scores_shape_range_and_seed(tiny_pipe, tiny_clip):
    z = encode_frames(tiny_pipe, tiny_clip)  # (4, 4, 16, 16)
    src = encode_text(tiny_pipe, ["a red star"]).expand(4, -1, -1)
    tgt = encode_text(tiny_pipe, ["a green star"]).expand(4, -1, -1)
    a = mask_scores(tiny_pipe, z, src, tgt, samples=2, generator=torch.Generator().manual_seed(0))
    b = mask_scores(tiny_pipe, z, src, tgt, samples=2, generator=torch.Generator().manual_seed(0))
    c = mask_scores(tiny_pipe, z, src, tgt, samples=2, generator=torch.Generator().manual_seed(1))
    assert a.shape == (4, 16, 16) and a.min() >= 0
    torch.testing.assert_close(a.flatten(1).amax(1), torch.ones(4))  # each frame scaled to max 1
    torch.testing.assert_close(a, b)
    assert (a - c).abs().max() > 0
    same = mask_scores(tiny_pipe, z, src, src, samples=1)
    assert same.abs().max() == 0  # the same prompt changes nothing (and does not divide by 0)


def test_edit_keeps_the_source_latents_outside_the_mask(tiny_pipe, tiny_clip):
    config = replace(FAST, extras=replace(FAST.extras, mask_threshold=0.5, mask_dilate=0))
    last = {}
    res = edit_video(tiny_pipe, tiny_clip, "a green star", source_prompt="a red star", config=config,
                     callback=lambda info: last.update(info) if info["phase"] == "denoise" else None)
    z = encode_frames(tiny_pipe, tiny_clip)
    mask = res.mask
    assert mask.shape == (4, 16, 16) and set(mask.unique().tolist()) == {0.0, 1.0}
    assert 0 < mask.mean() < 1 and "mask" in res.timings
    outside = (mask == 0)[:, None].expand_as(z)  # (F, c, h, w)
    torch.testing.assert_close(last["latents"][outside], z[outside], rtol=0, atol=0)
    assert (last["latents"][~outside] - z[~outside]).abs().max() > 0.01  # edited inside
    plain = edit_video(tiny_pipe, tiny_clip, "a green star", source_prompt="a red star", config=FAST)
    assert plain.mask is None and "mask" not in plain.timings
    assert np.abs(plain.frames.astype(int) - res.frames).max() > 0


def test_mask_needs_a_different_source_prompt(tiny_pipe, tiny_clip):
    config = replace(FAST, extras=replace(FAST.extras, mask_threshold=0.4))
    for source in ("", "a green star "):
        with pytest.raises(ValueError, match="needs a source_prompt"):
            edit_video(tiny_pipe, tiny_clip, "a green star", source_prompt=source, config=config)


@pytest.mark.parametrize("kwargs, match", [
    (dict(mask_threshold=0.0), "mask_threshold"), (dict(mask_threshold=1.0), "mask_threshold"),
    (dict(mask_t=1000), "mask_t"), (dict(mask_samples=0), "mask_samples"), (dict(mask_dilate=-1), "mask_dilate"),
])
def test_mask_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        CoveConfig(extras=Extras(**kwargs))
