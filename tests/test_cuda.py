"""The device path against the CPU: correspondence, CGA and a two-step edit in float16.

Run on ``COVE_TEST_DEVICE`` (default ``"cuda"``; skipped where CUDA is absent);
``COVE_TEST_DEVICE=cpu`` runs the same checks on the CPU. The reference is always the CPU: in
float32, or for the correspondence of float16 features those same features (their
similarities are exact in float64 on every device, so the matches and scores are equal).
"""
import copy
import os

import numpy as np
import pytest
import torch

from cove import CoveConfig, edit_video
from cove.attention import guided_attention
from cove.correspondence import correspond
from cove.eval.speed import naive_correspond

DEVICE = torch.device(os.environ.get("COVE_TEST_DEVICE", "cuda"))
pytestmark = pytest.mark.skipif(DEVICE.type == "cuda" and not torch.cuda.is_available(),
                                reason="COVE_TEST_DEVICE is cuda and CUDA is not available")
MODES = ("cove", "spatiotemporal", "per-frame")


def unit_features(F=4, C=64, H=32, W=32, seed=0):
    """Random ``(F, C, H, W)`` features, L2-normalised over ``C``, on the CPU in float32."""
    x = torch.randn(F, C, H, W, generator=torch.Generator().manual_seed(seed))
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("search", ["tiled", "allpairs"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_correspond_on_the_device_equals_the_cpu(search, dtype):
    features = unit_features()
    cpu = correspond(features, window=9, k=3, search="tiled")
    device = correspond(features.to(DEVICE, dtype), window=9, k=3, search=search).to("cpu")
    if dtype == torch.float32:
        expected = cpu
        torch.testing.assert_close(device.score, expected.score, rtol=0, atol=1e-3)
    else:  # float16 features are compared in float64, exactly, on either device
        expected = correspond(features.to(dtype), window=9, k=3, search="tiled")
        assert torch.equal(device.score, expected.score)
    assert torch.equal(device.index, expected.index) and device.score.dtype == dtype
    agree = (device.index == cpu.index).float().mean()  # float16 rounding moves few matches
    assert agree > 0.97


def test_half_window_search_equals_allpairs():
    features = unit_features(seed=1).to(DEVICE, torch.float16)
    c = correspond(features, window=9, k=3)  # "auto": the device's own search
    index, score = naive_correspond(features.double(), 9, 3)  # exact similarities
    assert torch.equal(c.index.long(), index)
    assert torch.equal(c.score, score.half())


@pytest.mark.parametrize("merge_ratio", [0.0, 0.5])
def test_guided_attention_in_half_equals_the_cpu(merge_ratio):
    """Without merging every output is close; with it, float16 rounding of near-equal key
    similarities may change which keys a few queries merge, so 99% of the queries must be."""
    F, N, C, heads = 4, 256, 64, 4
    g = torch.Generator().manual_seed(2)
    x = torch.randn(F, N, C, generator=g)
    index = torch.randint(0, N, (F, N, F, 3), generator=g)
    index[torch.arange(F), :, torch.arange(F)] = torch.arange(N)[:, None]
    expected = guided_attention(x, x, x, index, heads, merge_ratio=merge_ratio)
    out = guided_attention(x.to(DEVICE, torch.float16), x.to(DEVICE, torch.float16),
                           x.to(DEVICE, torch.float16), index.to(DEVICE, torch.int16), heads,
                           merge_ratio=merge_ratio)
    close = ((out.float().cpu() - expected).abs() <= 2e-2).all(dim=-1)  # (F, N) per query
    assert close.all() if merge_ratio == 0 else close.float().mean() >= 0.99, close.float().mean()


@pytest.mark.parametrize("fused", [True, False])
def test_both_ways_of_cga_in_half_equal_the_cpu(fused, monkeypatch):
    """SDPA and the per-head products on the device, and the default way, which CUDA measures
    once per shape (``fused_is_faster``) and the CPU does not."""
    import cove.attention as attention

    monkeypatch.setattr(attention, "CGA_CHOICES", {})
    F, N, C, heads = 4, 256, 64, 4
    g = torch.Generator().manual_seed(3)
    x = torch.randn(F, N, C, generator=g)
    index = torch.randint(0, N, (F, N, F, 3), generator=g)
    expected = guided_attention(x, x, x, index, heads)
    xd, idx = x.to(DEVICE, torch.float16), index.to(DEVICE, torch.int16)
    for way in (fused, None):
        out = guided_attention(xd, xd, xd, idx, heads, fused=way)
        torch.testing.assert_close(out.float().cpu(), expected, rtol=0, atol=2e-2)
    assert len(attention.CGA_CHOICES) == (1 if DEVICE.type == "cuda" else 0)


def moving_clip():
    """uint8 (4, 32, 32, 3): conftest's ``tiny_clip`` (a blocky texture moving 2 px a frame)."""
    rng = np.random.default_rng(0)
    big = np.kron(rng.random((8, 8, 3)), np.ones((6, 6, 1)))  # (48, 48, 3)
    return (np.stack([big[8:40, 8 + 2 * i:40 + 2 * i] for i in range(4)]) * 255).astype(np.uint8)


@pytest.fixture(scope="module")
def edits(tiny_pipe):
    """Two-step edits of the tiny clip in every mode: ``{mode: ((frames, latent) on the CPU in
    float32, (frames, latent) on the device in float16)}``, ``latent`` the last denoised one."""
    device_pipe = copy.deepcopy(tiny_pipe).to(DEVICE, torch.float16)

    def run(pipe, mode):
        seen = []
        config = CoveConfig(inversion_steps=2, denoise_steps=2, pnp_steps=2, window=5, k=2,
                            attention=mode)
        frames = edit_video(pipe, moving_clip(), "a green star on grass", config=config,
                            generator=torch.Generator().manual_seed(0),
                            callback=lambda step: seen.append(step["latents"])).frames
        return frames, seen[-1].float().cpu()  # uint8 (F, H, W, 3), (F, c, h, w)

    return {mode: (run(tiny_pipe, mode), run(device_pipe, mode)) for mode in MODES}


def frame_diff(a, b):
    """``(mean, max)`` absolute difference of two uint8 clips, in grey levels."""
    d = np.abs(a.astype(np.int16) - b.astype(np.int16))
    return d.mean(), d.max()


def latent_diff(a, b):
    """Relative L2 difference of two latents."""
    return ((a - b).norm() / a.norm()).item()


# float16 on the CPU: frames 0.22 / 2 grey levels, latents 0.004 apart; between modes the frames
# of this tiny random pipe differ by 0.3-0.7 / 2-4 grey levels only, but COVE's latents are
# 0.013-0.015 from the other modes' (per-frame and spatial-temporal: 0.0066)
LATENT_TOLERANCE = 0.008


@pytest.mark.parametrize("mode", MODES)
def test_two_step_edit_in_half_equals_the_cpu(edits, mode):
    (cpu, cpu_latent), (device, device_latent) = edits[mode]
    mean, worst = frame_diff(cpu, device)
    assert mean <= 1 and worst <= 8, (mean, worst)
    assert latent_diff(cpu_latent, device_latent) <= LATENT_TOLERANCE


def test_the_tolerance_tells_cove_from_the_other_modes(edits):
    """Another mode's output fails the latent tolerance that the float16 edits meet."""
    for other in MODES[1:]:
        assert latent_diff(edits["cove"][0][1], edits[other][0][1]) > LATENT_TOLERANCE, other


def test_host_store_gives_the_device_store_edit(tiny_pipe, tmp_path):
    """The PnP store on the host gives exactly the edit of the store kept on the device; so
    do an edit whose host store was written to the cache and read back, and the default
    store ("auto"), which is the device on CUDA where the store fits and the host on the CPU."""
    from cove.cache import Cache
    from cove.config import EngineOptions
    from cove.sd import pnp_store_for

    pipe = copy.deepcopy(tiny_pipe).to(DEVICE, torch.float16)
    assert pnp_store_for(pipe, 4, 32, 32, CoveConfig()) == ("device" if DEVICE.type == "cuda" else "host")
    out, reread = {}, Cache(tmp_path)
    for name, store, cache in (("device", "device", None), ("host", "host", Cache(tmp_path)),
                               ("host, from the cache", "host", reread), ("auto", "auto", None)):
        config = CoveConfig(inversion_steps=3, denoise_steps=2, pnp_steps=2, window=5, k=2,
                            engine=EngineOptions(pnp_store=store))
        out[name] = edit_video(pipe, moving_clip(), "a green star on grass", config=config, cache=cache,
                               generator=torch.Generator().manual_seed(0)).frames
    assert np.array_equal(out["device"], out["host"])
    assert np.array_equal(out["device"], out["host, from the cache"]) and "inversion" in reread.hits
    assert np.array_equal(out["device"], out["auto"])
