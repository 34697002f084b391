"""Engine tests on a tiny seeded SD pipeline: parity, processors, features, loading, errors."""
from __future__ import annotations

import re
from dataclasses import replace

import numpy as np
import pytest
import torch

import cove
from cove import CoveConfig
from cove.config import EngineOptions, Extras
from cove.features import attention_grids_at, default_feature_layer, extract_features, feature_grid, layer_grid
from cove.pipeline import (
    ddim_scheduler,
    denoise,
    denoise_timesteps,
    edit_video,
    invert,
    predicted_x0,
    start_latents,
)
from cove.processors import (
    AttentionState,
    CoveAttnProcessor,
    cove_attention,
    self_attention_names,
)
from cove.sd import encode_frames, encode_text

FAST = CoveConfig(inversion_steps=4, denoise_steps=2, pnp_steps=1, window=5, k=2)


def test_parity_with_diffusers_pipeline(tiny_pipe):
    """per-frame attention, no injection: our denoising == StableDiffusionPipeline's."""
    pipe = tiny_pipe
    saved = pipe.scheduler
    pipe.scheduler = ddim_scheduler(pipe)
    try:
        lat = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(1))
        cond = encode_text(pipe, ["a red star"]).expand(3, -1, -1)
        uncond = encode_text(pipe, [""]).expand(3, -1, -1)
        cfg = CoveConfig(attention="per-frame", denoise_steps=5, pnp_steps=0, guidance_scale=7.5)
        ours = denoise(pipe, lat, cond, uncond, config=cfg)
        ref = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, latents=lat.clone(),
                   num_inference_steps=5, guidance_scale=7.5, output_type="latent",
                   height=32, width=32).images
    finally:
        pipe.scheduler = saved
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    assert ref.abs().max() > 0.1  # a real denoising happened


def test_processor_runs_and_originals_restored(tiny_pipe):
    unet = tiny_pipe.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    state = AttentionState(frames=2, mode="spatiotemporal")
    lat = torch.randn(2, 4, 16, 16)
    text = encode_text(tiny_pipe, [""]).expand(2, -1, -1)
    with pytest.raises(RuntimeError, match="boom"):
        with cove_attention(unet, state) as procs:
            assert sum(isinstance(p, CoveAttnProcessor) for p in procs.values()) == len(self_attention_names(unet))
            unet(lat, 10, text)
            raise RuntimeError("boom")
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before
    assert not any(isinstance(p, CoveAttnProcessor) for p in unet.attn_processors.values())
    # every self-attention layer ran exactly once in the forward
    assert all(state.calls[n] == 1 for n in self_attention_names(unet))


def test_spatiotemporal_differs_from_per_frame_and_chunks_agree(tiny_pipe):
    unet = tiny_pipe.unet
    lat = torch.randn(3, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = encode_text(tiny_pipe, [""]).expand(3, -1, -1)
    outs = {}
    for mode, chunk in [("per-frame", None), ("spatiotemporal", None), ("spatiotemporal", 1)]:
        with torch.no_grad(), cove_attention(unet, AttentionState(frames=3, mode=mode, frame_chunk=chunk)):
            outs[mode, chunk] = unet(lat, 10, text).sample
    with torch.no_grad():
        plain = unet(lat, 10, text).sample
    torch.testing.assert_close(outs["per-frame", None], plain, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(outs["spatiotemporal", 1], outs["spatiotemporal", None], rtol=1e-4, atol=1e-5)
    assert (outs["spatiotemporal", None] - plain).abs().max() > 1e-3
    # a single frame's spatial-temporal attention is its own attention: frame 0 alone
    with torch.no_grad(), cove_attention(unet, AttentionState(frames=1, mode="spatiotemporal")):
        single = unet(lat[:1], 10, text[:1]).sample
    torch.testing.assert_close(single, plain[:1], rtol=1e-4, atol=1e-5)


def test_edit_video_modes_run_cga_only_in_cove(tiny_pipe, tiny_clip):
    calls = {}
    for mode in ("cove", "spatiotemporal", "per-frame"):
        seen = []
        res = edit_video(tiny_pipe, tiny_clip, "a green star", config=replace(FAST, attention=mode),
                         callback=seen.append)
        assert res.frames.shape == tiny_clip.shape and res.frames.dtype == np.uint8
        assert [s["phase"] for s in seen] == ["invert"] * 3 + ["denoise"] * 2
        assert {"inversion", "denoising", "total"} <= set(res.timings)
        calls[mode] = res.extras["calls"].get("cga", 0)
        assert (res.correspondence is not None) == (mode == "cove")
    # CGA runs in the 16x16 self-attention layers only: 3 layers x 5 UNet calls (3 inversion steps:
    # 1, 251, 501 = the first denoising timestep; then 2 denoising steps, one CFG batch each)
    assert calls == {"cove": 3 * 5, "spatiotemporal": 0, "per-frame": 0}


def test_edit_video_pnp_injection_changes_result(tiny_pipe, tiny_clip):
    a = edit_video(tiny_pipe, tiny_clip, "a green star", config=replace(FAST, pnp_steps=0)).frames
    b = edit_video(tiny_pipe, tiny_clip, "a green star", config=replace(FAST, pnp_steps=2)).frames
    assert np.abs(a.astype(int) - b).max() > 0


def test_resnet_injection_only_below_max_t(tiny_pipe):
    """The ResNet hook saves and injects only at keys (timesteps) below ``resnet_max_t``."""
    name = "up_blocks.1.resnets.1"
    state = AttentionState(frames=2, mode="per-frame", pnp_resnets=frozenset({name}), resnet_max_t=300)
    lat = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    text = encode_text(tiny_pipe, [""]).expand(2, -1, -1)
    with cove_attention(tiny_pipe.unet, state):
        state.phase = "save"
        for key in (501, 1):
            state.key = key
            tiny_pipe.unet(lat, key, text)
    assert set(state.store) == {("resnet", name, 1)}


def test_pnp_resnet_max_t_selects_the_injected_steps(tiny_pipe, tiny_clip):
    """Keys 501 and 1 are injected (2 steps, pnp_steps=2): max_t 1000 injects both (= None, PnP),
    max_t 1 neither (= no ResNet injection), max_t 300 only the last step (a third result)."""
    def edit(max_t=None, engine=EngineOptions()):
        config = replace(FAST, attention="per-frame", pnp_steps=2, engine=engine,
                         extras=Extras(pnp_resnet_max_t=max_t))
        return edit_video(tiny_pipe, tiny_clip, "a green star", config=config).frames.astype(int)

    every, never = edit(), edit(engine=EngineOptions(pnp_resnets=()))
    assert np.abs(every - never).max() > 0
    assert np.array_equal(edit(1000), every)
    assert np.array_equal(edit(1), never)
    late = edit(300)
    assert np.abs(late - every).max() > 0 and np.abs(late - never).max() > 0


def test_negative_prompt_is_the_unconditional_side(tiny_pipe, tiny_clip):
    def edit(config, **kwargs):  # the same feature noise, hence the same correspondence, each time
        return edit_video(tiny_pipe, tiny_clip, "a green star", config=config,
                          generator=torch.Generator().manual_seed(0), **kwargs)

    guided = replace(FAST, guidance_scale=7.5)
    plain = edit(replace(FAST, guidance_scale=1.0)).frames
    # eps_u + s (eps_c - eps_u) with eps_u = eps_c: guidance has nothing to amplify
    same = edit(guided, negative_prompt="a green star")
    assert np.abs(same.frames.astype(int) - plain).max() <= 1
    assert same.extras["negative_prompt"] == "a green star"
    other = edit(guided, negative_prompt="a red circle").frames
    assert np.abs(other.astype(int) - plain).max() > 10
    with pytest.raises(ValueError, match="negative_prompt: expected a string"):
        edit(FAST, negative_prompt=None)


def test_flow_guided_edit_uses_the_flow_correspondence(tiny_pipe, tiny_clip, monkeypatch):
    """correspondence="flow": every CGA call gathers along the optical-flow correspondence."""
    from cove import processors
    from cove.extras.flow import flow_correspondence

    used = []

    def spy(q, k, v, index, *args, **kwargs):
        used.append(index.clone())
        return guided(q, k, v, index, *args, **kwargs)

    guided = processors.guided_attention
    monkeypatch.setattr(processors, "guided_attention", spy)
    res = edit_video(tiny_pipe, tiny_clip, "a star", config=replace(FAST, correspondence="flow"))
    flow = flow_correspondence(tiny_clip, (16, 16))
    torch.testing.assert_close(res.correspondence.index, flow.index)
    # one call per guidance group: 3 layers x (3 inversion steps x 1 + 2 denoising steps x 2 groups)
    assert res.extras["calls"]["cga"] == 15 and len(used) == 21
    assert all(torch.equal(index, flow.index) for index in used)
    # the diffusion-feature correspondence of the same clip is another one
    diffusion = edit_video(tiny_pipe, tiny_clip, "a star", config=FAST).correspondence
    assert not torch.equal(diffusion.index[..., :1], flow.index)


def test_inversion_trajectory_and_start(tiny_pipe, tiny_clip):
    cfg = CoveConfig(inversion_steps=10, denoise_steps=5)
    z = encode_frames(tiny_pipe, tiny_clip)
    traj = invert(tiny_pipe, z, config=cfg)
    # the 5-step schedule starts at 801: the 10-step inversion walks 1, 101, ..., 801 and stops
    assert sorted(traj) == list(range(1, 802, 100))
    assert start_latents(tiny_pipe, traj, cfg) is traj[801]


def test_strength_runs_the_tail_of_the_schedule(tiny_pipe, tiny_clip):
    cfg = CoveConfig(inversion_steps=10, denoise_steps=5, extras=Extras(strength=0.6))
    assert denoise_timesteps(tiny_pipe, cfg) == [401, 201, 1]  # the last 60% of 5 steps
    assert denoise_timesteps(tiny_pipe, replace(cfg, extras=Extras(strength=1.0))) == [801, 601, 401, 201, 1]
    assert denoise_timesteps(tiny_pipe, replace(cfg, extras=Extras(strength=0.01))) == [1]  # at least one step
    z = encode_frames(tiny_pipe, tiny_clip)
    traj = invert(tiny_pipe, z, config=cfg)
    assert sorted(traj) == [1, 101, 201, 301, 401]  # inversion stops at the start
    assert start_latents(tiny_pipe, traj, cfg) is traj[401]
    steps = []
    half = replace(FAST, extras=Extras(strength=0.5))
    res = edit_video(tiny_pipe, tiny_clip, "a star", config=half,
                     callback=lambda info: steps.append((info["phase"], info["t"])))
    assert [t for phase, t in steps if phase == "denoise"] == denoise_timesteps(tiny_pipe, half)
    assert res.frames.shape == tiny_clip.shape


def test_features_shape_norm_and_determinism(tiny_pipe, tiny_clip):
    assert default_feature_layer(tiny_pipe.unet) == "up_blocks.1"
    f1 = extract_features(tiny_pipe, tiny_clip, generator=torch.Generator().manual_seed(0))
    f2 = extract_features(tiny_pipe, tiny_clip, generator=torch.Generator().manual_seed(0))
    assert f1.shape == (4, 32, 16, 16) and feature_grid(tiny_pipe, (32, 32)) == (16, 16)
    torch.testing.assert_close(f1.norm(dim=1), torch.ones(4, 16, 16))
    torch.testing.assert_close(f1, f2)
    f3 = extract_features(tiny_pipe, tiny_clip, ensemble=2, generator=torch.Generator().manual_seed(0))
    assert (f3 - f1).abs().max() > 0
    coarse = extract_features(tiny_pipe, tiny_clip, layer="up_blocks.0.resnets.0")
    assert coarse.shape[-1] == 8


def _grids_seen(unet, names: list[str]) -> dict[str, int]:
    """The side of the output of each module of ``names`` in one forward pass of ``unet``."""
    seen, handles = {}, []
    for name in names:
        def hook(_module, _inputs, output, name=name):
            out = output[0] if isinstance(output, tuple) else getattr(output, "sample", output)
            seen[name] = out.shape[-1]
        handles.append(unet.get_submodule(name).register_forward_hook(hook))
    side = unet.config.sample_size
    try:
        with torch.no_grad():
            unet(torch.zeros(1, unet.config.in_channels, side, side), torch.tensor([10]),
                 torch.zeros(1, 77, unet.config.cross_attention_dim))
    finally:
        for handle in handles:
            handle.remove()
    return seen


@pytest.mark.parametrize("arch", ["tiny", "cove-tiny a", "sd21 small"])
def test_layer_grid_is_the_grid_each_module_outputs(arch, tiny_pipe, tmp_path):
    if arch == "tiny":
        unet = tiny_pipe.unet
    elif arch == "cove-tiny a":
        from cove import world
        from cove.tiny.model import MAX_TOKENS, build_pipeline
        from cove.tiny.tokenizer import build_clip_tokenizer

        unet = build_pipeline(build_clip_tokenizer(world.VOCABULARY, tmp_path, max_length=MAX_TOKENS),
                              design="a").unet
    else:
        from cove.eval.speed import sd21_parts

        unet = sd21_parts("small")[0]
    pattern = r"((up|down)_blocks\.\d+|mid_block)(\.(resnets|attentions|upsamplers|downsamplers)\.\d+)?"
    blocks = [n for n, _ in unet.named_modules() if re.fullmatch(pattern, n)]  # blocks and their parts
    seen = _grids_seen(unet, blocks)
    assert len(seen) == len(blocks) > 10
    assert {n: layer_grid(unet, n) for n in blocks} == seen
    with pytest.raises(ValueError, match="expected a UNet block"):
        layer_grid(unet, "conv_in")


def test_feature_grid_follows_the_layer_and_attention_grids_list_where_cga_can_act(tiny_pipe):
    assert feature_grid(tiny_pipe, (32, 32)) == feature_grid(tiny_pipe, (32, 32), "up_blocks.1") == (16, 16)
    assert feature_grid(tiny_pipe, (32, 48), "up_blocks.0") == (16, 24)  # after its upsampler
    assert feature_grid(tiny_pipe, (32, 32), "up_blocks.0.resnets.0") == (8, 8)
    assert attention_grids_at(tiny_pipe, (32, 48)) == [(16, 24), (8, 12)]
    from cove.eval.speed import build_pipeline

    sd = build_pipeline("small")
    assert attention_grids_at(sd, (512, 512)) == [(64, 64), (32, 32), (16, 16)]
    assert feature_grid(sd, (512, 512)) == (64, 64)


def test_features_hook_removed_and_unet_untouched(tiny_pipe, tiny_clip):
    module = tiny_pipe.unet.get_submodule("up_blocks.1")
    extract_features(tiny_pipe, tiny_clip)
    assert not module._forward_hooks


@pytest.mark.parametrize("kwargs, match", [
    (dict(t=1000), "t must lie"), (dict(layer="up_blocks.9"), "not a UNet module"), (dict(ensemble=0), "ensemble"),
])
def test_features_bad_input(tiny_pipe, tiny_clip, kwargs, match):
    with pytest.raises(ValueError, match=match):
        extract_features(tiny_pipe, tiny_clip, **kwargs)


@pytest.mark.parametrize("frames, match", [
    (np.zeros((2, 32, 32, 3), np.float32), "uint8"), (np.zeros((2, 32, 32), np.uint8), "uint8"),
    (np.zeros((2, 31, 32, 3), np.uint8), "multiple"), (np.zeros((2, 8, 8, 3), np.uint8), "at least"),
])
def test_edit_video_bad_frames(tiny_pipe, frames, match):
    with pytest.raises(ValueError, match=match):
        edit_video(tiny_pipe, frames, "a star", config=FAST)


@pytest.mark.parametrize("make, match", [
    (lambda: CoveConfig(attention="magic"), "attention must be"), (lambda: CoveConfig(window=4), "odd"),
    (lambda: CoveConfig(k=0), "k must"), (lambda: CoveConfig(pnp_steps=-1), "pnp_steps"),
    (lambda: CoveConfig(merge_ratio=1.5), "merge_ratio"), (lambda: CoveConfig(correspondence="x"), "correspondence"),
    (lambda: Extras(strength=0.0), "strength"), (lambda: Extras(strength=1.5), "strength"),
    (lambda: Extras(pnp_resnet_max_t=0), "pnp_resnet_max_t"), (lambda: Extras(pnp_resnet_max_t=1001), "pnp_resnet_max_t"),
    (lambda: EngineOptions(frame_chunk=0), "frame_chunk"), (lambda: CoveConfig(extras={"strength": 0.5}), "extras must be"),
])
def test_config_validation(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_load_pipeline_from_folder_roundtrip(tiny_pipe, tmp_path, tiny_clip):
    tiny_pipe.save_pretrained(tmp_path / "sd")
    pipe = cove.load_pipeline(tmp_path / "sd")
    assert type(pipe).__name__ == "StableDiffusionPipeline"
    a = extract_features(pipe, tiny_clip, generator=torch.Generator().manual_seed(0))
    b = extract_features(tiny_pipe, tiny_clip, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a, b)


@pytest.mark.parametrize("model, match", [("not-a-model", "hub id"), ("./missing", "hub id")])
def test_load_pipeline_bad_names(model, match):
    with pytest.raises(ValueError, match=match):
        cove.load_pipeline(model)


def test_load_pipeline_folder_without_index(tmp_path):
    with pytest.raises(ValueError, match="model_index.json"):
        cove.load_pipeline(tmp_path)


def test_config_reads_as_the_paper_and_groups_the_rest():
    config = CoveConfig()
    assert (config.inversion_steps, config.denoise_steps, config.pnp_steps) == (100, 50, 40)
    assert (config.feature_t, config.window, config.k) == (261, 9, 3)
    assert config.merge_ratio == 0.0  # the paper's 0.5 costs time here: docs/method/merging.md
    assert config.extras == Extras() and config.extras.strength == 1.0 and config.extras.p2p_steps == 0
    assert config.extras.mask_threshold is None and config.engine.pnp_resnets is None
    variant = replace(config, k=5, extras=replace(config.extras, strength=0.5))
    assert (variant.k, variant.extras.strength, config.extras.strength) == (5, 0.5, 1.0)
    d = variant.to_dict()
    assert d["k"] == 5 and d["extras"]["strength"] == 0.5 and d["engine"]["frame_chunk"] is None


def test_with_denoise_steps_keeps_the_share_of_pnp_steps():
    assert CoveConfig().with_denoise_steps(10).pnp_steps == 8  # the paper's 40 of 50
    assert CoveConfig().with_denoise_steps(25).pnp_steps == 20
    assert CoveConfig(denoise_steps=25, pnp_steps=25).with_denoise_steps(10).pnp_steps == 10  # all stays all
    assert CoveConfig(pnp_steps=0).with_denoise_steps(10).pnp_steps == 0
    config = CoveConfig(k=5).with_denoise_steps(3)
    assert (config.denoise_steps, config.pnp_steps, config.k) == (3, 2, 5)
    with pytest.raises(ValueError, match="denoise_steps must be >= 1"):
        CoveConfig().with_denoise_steps(0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_predicted_x0_recovers_the_clean_latent(tiny_pipe, prediction_type):
    """x_t = sqrt(a) x0 + sqrt(1 - a) eps; the model output (eps, or v = sqrt(a) eps - sqrt(1 - a) x0)
    gives x0 back."""
    from diffusers import DDIMScheduler

    scheduler = DDIMScheduler.from_config(tiny_pipe.scheduler.config, prediction_type=prediction_type)
    g = torch.Generator().manual_seed(0)
    x0, eps = torch.randn(2, 4, 8, 8, generator=g), torch.randn(2, 4, 8, 8, generator=g)
    t = 601
    a = scheduler.alphas_cumprod[t]
    x_t = a.sqrt() * x0 + (1 - a).sqrt() * eps
    output = eps if prediction_type == "epsilon" else a.sqrt() * eps - (1 - a).sqrt() * x0
    torch.testing.assert_close(predicted_x0(scheduler, output, x_t, t), x0, rtol=1e-4, atol=1e-4)


def test_callback_passes_the_predicted_clean_latent(tiny_pipe, tiny_clip):
    """``denoised`` is the x0 of each step: inverting, the step's latent is DDIM's renoising of
    it; denoising, it is diffusers' ``pred_original_sample``, which ends near the result."""
    seen = []
    edit_video(tiny_pipe, tiny_clip, "a green star", config=replace(FAST, attention="per-frame"),
               callback=lambda info: seen.append({k: v.clone() if torch.is_tensor(v) else v
                                                 for k, v in info.items()}))
    scheduler = ddim_scheduler(tiny_pipe)
    inv = [s for s in seen if s["phase"] == "invert"]
    assert [s["t"] for s in inv] == [1, 251, 501]
    a_from, a_to = scheduler.alphas_cumprod[1], scheduler.alphas_cumprod[251]  # step 1: t 1 -> 251
    x_prev, d = inv[0]["latents"], inv[1]["denoised"]
    eps = (x_prev - a_from.sqrt() * d) / (1 - a_from).sqrt()
    torch.testing.assert_close(inv[1]["latents"], a_to.sqrt() * d + (1 - a_to).sqrt() * eps, rtol=1e-4, atol=1e-4)
    last = [s for s in seen if s["phase"] == "denoise"][-1]
    assert last["denoised"].shape == last["latents"].shape
    a = scheduler.alphas_cumprod[0]  # DDIM's final step (set_alpha_to_one=False) lands at abar_0
    assert (last["latents"] - a.sqrt() * last["denoised"]).abs().max() < 0.2
    assert (inv[1]["denoised"] - inv[1]["latents"]).abs().max() > 0.1  # x0 is not the noisy latent
