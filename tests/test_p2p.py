"""Prompt-to-prompt's word swap (cove.extras.p2p, CrossAttnMapProcessor) on a tiny seeded SD pipeline."""
from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from diffusers.models.attention_processor import Attention, AttnProcessor

from cove import CoveConfig
from cove.config import Extras
from cove.extras.p2p import cross_attention_maps, token_index, token_map
from cove.pipeline import edit_video
from cove.processors import AttentionState, CrossAttnMapProcessor, cove_attention
from cove.sd import encode_frames

FAST = CoveConfig(inversion_steps=4, denoise_steps=2, pnp_steps=1, window=5, k=2)


def _ids(tokenizer, prompt):
    return tokenizer(prompt, padding="max_length", max_length=tokenizer.model_max_length).input_ids


def test_token_map_swapped_word_keeps_its_place(tiny_pipe):
    tok = tiny_pipe.tokenizer
    mapping = token_map(tok, "a red star on grass", "a green star on grass")
    assert mapping.shape == (tok.model_max_length,) and mapping.dtype == torch.long
    assert mapping.tolist() == list(range(tok.model_max_length))  # one word for one word
    source, target = _ids(tok, "a red star on grass"), _ids(tok, "a green star on grass")
    swapped = [j for j in range(len(target)) if source[mapping[j]] != target[j]]
    assert swapped == [2]  # <bos> a [green] star on grass <eos> ...: only the colour word differs


def test_token_map_inserted_word_keeps_its_own_map(tiny_pipe):
    tok = tiny_pipe.tokenizer
    mapping = token_map(tok, "a star on grass", "a red star on grass").tolist()
    # <bos> a red star on grass: the inserted "red" has no counterpart; the words after it shift
    assert mapping[:6] == [0, 1, -1, 2, 3, 4]
    source, target = _ids(tok, "a star on grass"), _ids(tok, "a red star on grass")
    assert all(source[m] == target[j] for j, m in enumerate(mapping) if m >= 0)


def _attention(seed=0):
    torch.manual_seed(seed)
    return Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4).eval()


def test_processor_without_maps_is_diffusers_attention():
    attn = _attention()
    x, context = torch.randn(3, 10, 8), torch.randn(3, 5, 6)
    state = AttentionState(frames=3, token_map=torch.arange(5))
    expected = AttnProcessor()(attn, x, context)
    torch.testing.assert_close(CrossAttnMapProcessor("attn2", state)(attn, x, context), expected)


def test_processor_injects_the_saved_maps_reindexed():
    attn = _attention()
    f, n, length = 2, 10, 5
    x_source, source = torch.randn(f, n, 8), torch.randn(f, length, 6)
    mapping = torch.tensor([0, 2, 1, -1, 4])  # swap tokens 1 and 2, keep token 3's own map
    state = AttentionState(frames=f, token_map=mapping, key=7, cross_phase="save")
    proc = CrossAttnMapProcessor("attn2", state)
    proc(attn, x_source, source)
    saved = state.store[("cross", "attn2", 7)]  # (F*h, N, L)
    assert saved.shape == (f * 2, n, length)
    torch.testing.assert_close(saved.sum(-1), torch.ones(f * 2, n))

    # guided batch: unconditional group first (left alone), conditional group last (maps swapped)
    x, context = torch.randn(2 * f, n, 8), torch.randn(2 * f, length, 6)
    state.cross_phase = "inject"
    out = proc(attn, x, context)
    q = attn.head_to_batch_dim(attn.to_q(x))
    k, v = attn.head_to_batch_dim(attn.to_k(context)), attn.head_to_batch_dim(attn.to_v(context))
    own = attn.get_attention_scores(q, k)  # (2F*h, N, L)
    probs = own.clone()
    probs[f * 2:, :, [0, 1, 2, 4]] = saved[:, :, [0, 2, 1, 4]]
    expected = attn.to_out[0](attn.batch_to_head_dim(torch.bmm(probs, v)))
    torch.testing.assert_close(out, expected)
    assert state.calls["p2p"] == 1
    torch.testing.assert_close(out[:f], AttnProcessor()(attn, x, context)[:f])  # unconditional as is


def test_processor_skips_layers_above_the_token_limit():
    attn = _attention()
    state = AttentionState(frames=2, token_map=torch.arange(5), key=3, cross_phase="save", cross_max_tokens=9)
    CrossAttnMapProcessor("attn2", state)(attn, torch.randn(2, 10, 8), torch.randn(2, 5, 6))
    assert state.store == {}


def test_cove_attention_installs_cross_processors_only_with_a_token_map(tiny_pipe):
    unet = tiny_pipe.unet
    before = {k: type(v) for k, v in unet.attn_processors.items()}
    with cove_attention(unet, AttentionState(frames=2)):
        assert not any(isinstance(p, CrossAttnMapProcessor) for p in unet.attn_processors.values())
    with cove_attention(unet, AttentionState(frames=2, token_map=torch.arange(12))):
        crossed = [k for k, p in unet.attn_processors.items() if isinstance(p, CrossAttnMapProcessor)]
        assert crossed and all(k.endswith("attn2.processor") for k in crossed)
    assert {k: type(v) for k, v in unet.attn_processors.items()} == before  # restored


def test_edit_with_p2p_reuses_the_source_maps(tiny_pipe, tiny_clip):
    config = replace(FAST, extras=Extras(p2p_steps=2))

    def edit(config):
        return edit_video(tiny_pipe, tiny_clip, "a green star", source_prompt="a red star", config=config,
                          generator=torch.Generator().manual_seed(0))

    res, plain = edit(config), edit(FAST)
    layers = sum(1 for k in tiny_pipe.unet.attn_processors if k.endswith("attn2.processor"))
    assert res.extras["calls"]["p2p"] == 2 * layers  # every cross-attention, both steps
    assert "p2p" not in plain.extras["calls"]
    assert res.frames.shape == plain.frames.shape and np.abs(res.frames.astype(int) - plain.frames).max() > 0
    np.testing.assert_array_equal(res.frames, edit(config).frames)


def test_p2p_needs_a_source_prompt(tiny_pipe, tiny_clip):
    with pytest.raises(ValueError, match="p2p_steps needs a source_prompt"):
        edit_video(tiny_pipe, tiny_clip, "a green star", source_prompt=" ", config=replace(FAST, extras=Extras(p2p_steps=2)))
    with pytest.raises(ValueError, match="p2p_steps must be >= 0"):
        CoveConfig(extras=Extras(p2p_steps=-1))


def test_token_index(tiny_pipe):
    tok = tiny_pipe.tokenizer
    assert token_index(tok, "a red star on grass", "red") == 2
    assert token_index(tok, "a red star on grass", "grass") == 5
    with pytest.raises(ValueError, match="expected a word of the prompt"):
        token_index(tok, "a red star on grass", "green")


def test_cross_attention_maps(tiny_pipe, tiny_clip):
    z = encode_frames(tiny_pipe, tiny_clip)  # (4, 4, 16, 16)
    maps = cross_attention_maps(tiny_pipe, z, "a red star", generator=torch.Generator().manual_seed(0))
    assert maps.shape == (4, tiny_pipe.tokenizer.model_max_length, 16, 16) and maps.dtype == torch.float32
    torch.testing.assert_close(maps.sum(1), torch.ones(4, 16, 16))  # a distribution over tokens per cell
    again = cross_attention_maps(tiny_pipe, z, "a red star", generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(maps, again)
    coarse = cross_attention_maps(tiny_pipe, z, "a red star", max_tokens=8 * 8)
    assert coarse.shape == (4, tiny_pipe.tokenizer.model_max_length, 8, 8)
    with pytest.raises(ValueError, match="no cross-attention layer"):
        cross_attention_maps(tiny_pipe, z, "a red star", max_tokens=4)
