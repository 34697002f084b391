"""`cove bench speed` at toy sizes, and the bounded-memory paths against the plain ones."""
import json

import numpy as np
import pytest
import torch

from cove import CoveConfig, edit_video
from cove.app.cli import build_parser
from cove.config import EngineOptions
from cove.eval import speed

TOY = {"frames": 3, "grid": (10, 10), "channels": 16, "heads": 2, "layer_frames": 3}


def test_bench_speed_writes_valid_json(tmp_path):
    result = speed.run(arch="small", frames=(2,), size=64, steps=(1, 1), stores=("auto", "recompute"),
                       modes=("spatiotemporal", "cove"), shapes=TOY)
    data = json.loads(speed.write(result, tmp_path / "speed.json").read_text())
    assert set(data["sections"]) >= {"correspondence", "merging", "attention_layer", "edit", "edit_ratios"}
    assert data["machine"]["device"] == "cpu" and data["machine"]["matmul TFLOP/s"] > 0
    corr = data["sections"]["correspondence"]["rows"]
    assert corr[3]["identical matches"] is True and len(corr) == 4 and corr[3]["similarities in"] == "float32"
    assert "similarities in float32" in data["sections"]["correspondence"]["note"]
    agree = data["sections"]["correspondence_agreement"]
    assert {(r["features"], r["dtype"]) for r in agree["rows"]} == {("random", "float32"), ("smooth", "float32")}
    assert len(agree["rows"]) == 6 and all(r["matches"] == 3 * 100 * 3 * 3 for r in agree["rows"])
    assert all(r["differing"] == 0 for r in agree["rows"] if r["features"] == "random")
    assert "naive reference" in agree["note"]
    edits = data["sections"]["edit"]["rows"]
    assert {(r["mode"], r["pnp_store"]) for r in edits} == {(m, s) for m in ("spatiotemporal", "cove")
                                                            for s in ("auto", "recompute")}
    assert all(r["store used"] == "host" for r in edits if r["pnp_store"] == "auto")
    assert all(r["total s"] > 0 and "denoising MB" in r for r in edits)
    assert data["sections"]["merging"]["note"]
    assert data["sections"]["cga_ways"]["rows"] == [] and "SDPA" in data["sections"]["cga_ways"]["note"]
    layer = data["sections"]["attention_layer"]
    assert [r["mode"] for r in layer["rows"]][-2:] == ["cove, CGA by SDPA", "cove, CGA by products"]
    assert "by SDPA and" in layer["note"] and "the default way adds" in layer["note"]


def test_naive_correspond_is_the_same_computation():
    feats = speed._features(4, 8, (9, 7), "cpu", torch.float64)
    from cove.correspondence import correspond
    index, score = speed.naive_correspond(feats, 5, 2)
    c = correspond(feats, 5, 2)
    assert torch.equal(c.index.long(), index)
    torch.testing.assert_close(c.score, score)


def test_naive_correspond_sends_ties_to_the_lower_index():
    """Features from 4 vectors of +-1/2 entries: similarities are exact multiples of 1/4 and
    nearly every window holds ties, which must go as in ``correspond``."""
    from cove.correspondence import correspond
    g = torch.Generator().manual_seed(12)
    palette = torch.tensor([[1, 1, 1, 1, 0, 0, 0, 0], [1, -1, 0, 0, 1, 1, 0, 0],
                            [0, 0, 1, -1, 0, 1, 1, 0], [-1, 0, 0, 1, 0, 0, 1, 1]]) / 2  # (4, C)
    features = palette[torch.randint(0, 4, (4, 7, 9), generator=g)].permute(0, 3, 1, 2)  # (F, C, H, W)
    index, _ = speed.naive_correspond(features, 5, 4)
    assert torch.equal(correspond(features, 5, 4).index.long(), index)


def test_smooth_features_are_unit_and_smooth():
    x = speed.smooth_features(2, 16, (16, 16), "cpu", torch.float32)
    torch.testing.assert_close(x.norm(dim=1), torch.ones(2, 16, 16))
    neighbour = (x[..., 1:] * x[..., :-1]).sum(1).mean()  # cosine of horizontal neighbours
    assert neighbour > 0.9 > (speed._features(2, 16, (16, 16), "cpu", torch.float32)[..., 1:]
                              * speed._features(2, 16, (16, 16), "cpu", torch.float32)[..., :-1]).sum(1).abs().mean()


def test_sd21_architecture_from_config():
    unet, vae, text = speed.sd21_parts("small", vocab=32)
    attn = unet.up_blocks[3].attentions[0].transformer_blocks[0].attn1
    assert attn.heads == 1 and attn.to_q.out_features == 32
    assert len(unet.down_blocks) == 4 and vae.config.latent_channels == 4
    with pytest.raises(ValueError, match="arch"):
        speed.sd21_parts("sd15")


def test_cli_registers_bench_speed_and_chunk_flags():
    args = build_parser().parse_args(["bench", "speed", "--frames", "2,3", "--device", "cpu"])
    assert args.run is speed.main and args.frames == "2,3"
    edit = build_parser().parse_args(["edit", "in.gif", "-p", "x", "--token-chunk", "64", "--frame-chunk", "2"])
    assert (edit.token_chunk, edit.frame_chunk) == (64, 2)


def test_pnp_store_off_the_device_gives_the_same_edit(tiny_pipe):
    frames = (np.random.default_rng(0).random((3, 32, 32, 3)) * 255).astype(np.uint8)
    out = {}
    for store in ("device", "host", "recompute", "auto"):
        config = CoveConfig(inversion_steps=4, denoise_steps=2, pnp_steps=2, window=5, k=2, merge_ratio=0.5,
                            engine=EngineOptions(pnp_store=store))
        out[store] = edit_video(tiny_pipe, frames, "a red star", config=config,
                                generator=torch.Generator().manual_seed(0)).frames
    assert np.array_equal(out["device"], out["host"]) and np.array_equal(out["device"], out["auto"])
    assert np.abs(out["device"].astype(int) - out["recompute"]).max() <= 1


def test_auto_store_is_the_host_on_the_cpu(tiny_pipe):
    """``pnp_store_for``: "auto" (the default) is the host on the CPU; a named store stays.
    (On CUDA it is the device where the store fits: tests/test_cuda.py.)"""
    from cove.sd import pnp_store_for

    assert EngineOptions().pnp_store == "auto"
    for store, expected in (("auto", "host"), ("host", "host"), ("device", "device"), ("recompute", "recompute")):
        config = CoveConfig(engine=EngineOptions(pnp_store=store))
        assert pnp_store_for(tiny_pipe, 3, 32, 32, config) == expected


def test_bad_pnp_store_raises():
    with pytest.raises(ValueError, match="pnp_store"):
        EngineOptions(pnp_store="disk")


def test_docs_render_the_speed_sections():
    import importlib.util
    from pathlib import Path
    spec = importlib.util.spec_from_file_location("cove_docs", Path(__file__).parents[1] / "docs/hooks/cove_docs.py")
    hook = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hook)
    data = {"machine": {"cpu": "x"}, "sections": {"merging": {
        "note": "one line", "rows": [{"merge_ratio": 0.0, "s": 1.0}, {"merge_ratio": 0.5, "s": 1.5}],
        "plot": ["merge_ratio", "s"]}}}
    text = hook.sections_markdown(data)
    assert "### merging" in text and "one line" in text and "<svg" in text and "| merge_ratio | s |" in text
