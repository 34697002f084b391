"""The diffusers attention processor that turns an image UNet into COVE's video UNet.

Installed on every self-attention (``attn1``) with ``unet.set_attn_processor`` by the
:func:`cove_attention` context manager, which always restores the original processors. What
the processor does, per call, on hidden states (B, N, C) holding G groups of F frames
(G = 2 with classifier-free guidance: unconditional then conditional):

1. plug-and-play (PnP, Tumanyan et al. 2023, as FLATTEN uses it): while inverting, save this
   layer's Q and K at the timesteps the edit will use; while editing, replace Q and K by them;
2. spatial-temporal attention: each token of frame i attends to the tokens of *all* F frames
   (the "inflated" UNet of PAPER.md; ``"per-frame"`` mode keeps plain per-image attention);
3. correspondence-guided attention (COVE, Eqs. 11-14), in the layers whose grid equals the
   correspondence grid: Q = K = V = the spatial-temporal output before ``to_out``, each token
   attending to its (F-1)*K corresponding tokens, merged first (Sec. 3.3).

With ``AttentionState.token_map`` set, every cross-attention (``attn2``) gets
:class:`CrossAttnMapProcessor` too: prompt-to-prompt's word swap (``cove.extras.p2p``).

The processor holds no globals: all state arrives through an :class:`AttentionState`.
"""
from __future__ import annotations

from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as nnf

from .attention import guided_attention
from .correspondence import Correspondence
from .merging import merge_count


@dataclass
class AttentionState:
    """Everything the processors and PnP hooks read; one object per edit.

    Args:
        frames: F, frames per group in the batch.
        mode: "cove" | "spatiotemporal" | "per-frame".
        correspondence: index (F, N, F, K) on the feature grid (needed for "cove").
        merge_ratio: temporal token merging ratio inside CGA.
        frame_chunk: query frames per spatial-temporal attention call and per CGA block
            (None: all frames in spatial-temporal attention, CGA's own memory bound).
        token_chunk: tokens per CGA block (None: CGA's own memory bound,
            ``cove.attention.block_rows``).
        cga_fused: how CGA computes a block without merging (``guided_attention``'s ``fused``):
            ``True`` scaled_dot_product_attention, ``False`` the per-head products, ``None`` the
            faster on the device (measured once per shape on CUDA).
        pnp_store: where saved PnP features live: "device" (beside the model), "host" (CPU
            memory, moved to the device when injected) or "recompute" (the pipeline recomputes
            them from the inverted latents at each PnP step; only one step is ever stored).
        pnp_attentions / pnp_resnets: module names whose Q, K / outputs are saved and injected.
        resnet_max_t: ResNet outputs are saved and injected only at timesteps (``key``) below
            this; ``None``: at every PnP step.
        token_map: (L,) long, prompt-to-prompt's word swap: for each token of the edit prompt,
            the source prompt's token whose cross-attention map it takes (-1: its own);
            ``None`` leaves cross-attention alone (``cove.extras.p2p.token_map``).
        cross_max_tokens: maps are kept only in cross-attention layers of at most this many
            image tokens (prompt-to-prompt's reference code stores up to 32x32 too): on SD at
            512 px the 64x64 layers would need ~25 MB per layer, step and 8 frames.
        phase: None, "save" (inversion) or "inject" (editing) of PnP; set by the pipeline per step.
        cross_phase: the same for the cross-attention maps of prompt-to-prompt.
        key: the current timestep (the store's key); set by the pipeline per step.
    """

    frames: int
    mode: str = "cove"
    correspondence: Correspondence | None = None
    merge_ratio: float = 0.0
    frame_chunk: int | None = None
    token_chunk: int | None = None
    cga_fused: bool | None = None
    pnp_attentions: frozenset[str] = frozenset()
    pnp_resnets: frozenset[str] = frozenset()
    pnp_store: str = "device"
    resnet_max_t: int | None = None
    token_map: torch.Tensor | None = None
    cross_max_tokens: int = 32 * 32
    phase: str | None = None
    cross_phase: str | None = None
    key: int | None = None
    store: dict = field(default_factory=dict)
    calls: Counter = field(default_factory=Counter)
    _index: dict = field(default_factory=dict, repr=False)

    @property
    def cga_grid(self) -> tuple[int, int] | None:
        c = self.correspondence
        return tuple(c.grid) if (self.mode == "cove" and c is not None) else None

    def index_on(self, device) -> torch.Tensor:
        """The correspondence index (F, N, F, K) on ``device``, moved there once per edit."""
        key = str(device)
        if key not in self._index:
            self._index[key] = self.correspondence.index.to(device)
        return self._index[key]

    def keep(self, saved: torch.Tensor) -> torch.Tensor:
        """A tensor to store for PnP: detached, and on the CPU with ``pnp_store="host"``."""
        return saved.detach().to("cpu") if self.pnp_store == "host" else saved.detach()


def spatiotemporal_attention(q, k, v, frames: int, *, frame_chunk: int | None = None):
    """Every token of every frame attends to the tokens of all frames of its group.

    Args:
        q, k, v: (B, heads, N, d) with B = G * F, frames of a group consecutive.
        frames: F.
        frame_chunk: query frames per SDPA call (bounds memory; same result).

    Returns:
        (B, heads, N, d). Profiles (``torch.profiler``) show it as the range
        ``cove::spatiotemporal_attention``.
    """
    b, h, n, d = q.shape
    g = b // frames
    with torch.profiler.record_function("cove::spatiotemporal_attention"):  # a range in profiles
        k = k.view(g, frames, h, n, d).transpose(1, 2).reshape(g, h, frames * n, d)  # (G, h, F*N, d)
        v = v.view(g, frames, h, n, d).transpose(1, 2).reshape(g, h, frames * n, d)  # (G, h, F*N, d)
        q = q.view(g, frames, h, n, d)  # (G, F, h, N, d)
        step = frame_chunk or frames
        out = []
        for f0 in range(0, frames, step):
            qc = q[:, f0:f0 + step].transpose(1, 2).reshape(g, h, -1, d)  # (G, h, f*N, d)
            out.append(nnf.scaled_dot_product_attention(qc, k, v).view(g, h, -1, n, d))  # (G, h, f, N, d)
        return torch.cat(out, 2).transpose(1, 2).reshape(b, h, n, d)  # (B, h, N, d)


def _tokens(attn, hidden_states, temb):
    """A processor's input as tokens (B, N, C): spatial norm, and (B, C, H, W) flattened."""
    if attn.spatial_norm is not None:
        hidden_states = attn.spatial_norm(hidden_states, temb)
    if hidden_states.ndim == 4:
        batch, channel, height, width = hidden_states.shape
        hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
    return hidden_states


def _output(attn, hidden_states, residual):
    """``to_out``, back to the input's layout (``residual``'s), residual and rescale, as diffusers."""
    hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))  # (B, N, C)
    if residual.ndim == 4:
        hidden_states = hidden_states.transpose(-1, -2).reshape(residual.shape)
    if attn.residual_connection:
        hidden_states = hidden_states + residual
    return hidden_states / attn.rescale_output_factor


class _Processor:
    """A diffusers attention processor of one named layer (``...attn1`` / ``...attn2``) that
    reads the edit's :class:`AttentionState`."""

    def __init__(self, name: str, state: AttentionState):
        self.name = name  # e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn1"
        self.state = state


class CoveAttnProcessor(_Processor):
    """Self-attention processor: PnP, spatial-temporal attention and CGA (see module doc).

    Reads like diffusers' ``AttnProcessor2_0``; only the marked steps differ.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        state = self.state
        state.calls[self.name] += 1
        residual, hidden_states = hidden_states, _tokens(attn, hidden_states, temb)  # (B, N, C)
        b, n, _ = hidden_states.shape
        if b % state.frames:
            raise ValueError(f"batch {b} is not a multiple of the clip's {state.frames} frames")
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        query, key, value = attn.to_q(hidden_states), attn.to_k(context), attn.to_v(context)

        # 1. plug-and-play: save Q, K while inverting, inject them while editing
        if self.name in state.pnp_attentions and state.phase is not None:
            slot = ("attn", self.name, state.key)
            if state.phase == "save":
                state.store[slot] = (state.keep(query), state.keep(key))  # (F, N, C) each
            elif state.phase == "inject" and slot in state.store:
                q_saved, k_saved = (x.to(query.device, query.dtype) for x in state.store[slot])
                query = q_saved.repeat(b // q_saved.shape[0], 1, 1)  # (B, N, C)
                key = k_saved.repeat(b // k_saved.shape[0], 1, 1)  # (B, N, C)

        heads = attn.heads
        d = key.shape[-1] // heads
        query = query.view(b, -1, heads, d).transpose(1, 2)  # (B, h, N, d)
        key = key.view(b, -1, heads, d).transpose(1, 2)  # (B, h, N, d)
        value = value.view(b, -1, heads, d).transpose(1, 2)  # (B, h, N, d)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        # 2. spatial-temporal attention over all frames (or plain per-frame attention)
        if state.mode == "per-frame" or state.frames == 1:
            hidden_states = nnf.scaled_dot_product_attention(query, key, value)  # (B, h, N, d)
        else:
            hidden_states = spatiotemporal_attention(query, key, value, state.frames,
                                                     frame_chunk=state.frame_chunk)
        hidden_states = hidden_states.transpose(1, 2).reshape(b, n, heads * d)  # (B, N, C)

        # 3. correspondence-guided attention where the grid matches (Q = K = V)
        grid = state.cga_grid
        if grid is not None and grid[0] * grid[1] == n and state.frames > 1:
            state.calls["cga"] += 1
            index = state.index_on(hidden_states.device)  # (F, N, F, K)
            groups = hidden_states.view(b // state.frames, state.frames, n, -1)  # (G, F, N, C)
            hidden_states = torch.cat([
                guided_attention(x, x, x, index, heads, merge_ratio=state.merge_ratio,
                                 token_chunk=state.token_chunk, frame_chunk=state.frame_chunk,
                                 fused=state.cga_fused)
                for x in groups
            ]).to(query.dtype)  # (B, N, C)

        return _output(attn, hidden_states, residual)


class CrossAttnMapProcessor(_Processor):
    """Cross-attention processor of prompt-to-prompt's word swap (Hertz et al. 2023).

    While inverting with the source prompt it saves each layer's attention maps
    (F*heads, N, L); while editing it gives the conditional group's maps those saved maps,
    re-indexed by ``state.token_map`` so that a swapped word ("purple") attends where the
    word it replaces ("orange") attended. Otherwise it is diffusers' ``AttnProcessor``.
    """

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None,
                 temb=None, *args, **kwargs):
        state = self.state
        residual, hidden_states = hidden_states, _tokens(attn, hidden_states, temb)  # (B, N, C)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        b = hidden_states.shape[0]
        attention_mask = attn.prepare_attention_mask(attention_mask, context.shape[1], b)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))  # (B*h, N, d)
        key = attn.head_to_batch_dim(attn.to_k(context))  # (B*h, L, d)
        value = attn.head_to_batch_dim(attn.to_v(context))  # (B*h, L, d)
        probs = attn.get_attention_scores(query, key, attention_mask)  # (B*h, N, L)
        slot = ("cross", self.name, state.key)
        kept = query.shape[1] <= state.cross_max_tokens
        if kept and state.cross_phase == "save":
            state.store[slot] = probs.detach()  # (F*h, N, L)
        elif kept and state.cross_phase == "inject" and slot in state.store:
            state.calls["p2p"] += 1
            saved = state.store[slot].to(probs.dtype)  # (F*h, N, L)
            rows = saved.shape[0]  # the conditional group is the last F*h rows
            if probs.shape[0] % rows or state.token_map.shape[0] != probs.shape[-1]:
                raise ValueError(f"{self.name}: saved maps {tuple(saved.shape)} and token map "
                                 f"{tuple(state.token_map.shape)} do not fit this call's {tuple(probs.shape)}")
            mapped = state.token_map.to(probs.device)  # (L,)
            own = mapped < 0
            swapped = saved[..., mapped.clamp(min=0)]  # (F*h, N, L)
            swapped[..., own] = probs[-rows:][..., own]
            probs = torch.cat([probs[:-rows], swapped])
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))  # (B, N, C)
        return _output(attn, hidden_states, residual)


def self_attention_names(unet) -> list[str]:
    """Names of the self-attention modules (``...attn1``) in the UNet, in forward order."""
    return [name[: -len(".processor")] for name in unet.attn_processors if name.endswith("attn1.processor")]


def pnp_layers(unet, resnets=None, attentions=None) -> tuple[frozenset[str], frozenset[str]]:
    """PnP's injection points; ``None`` = Tumanyan et al.'s choice, scaled to the UNet.

    ResNet: the second ResNet of the second decoder block (``up_blocks.1.resnets.1`` on SD);
    attention: every self-attention of the decoder from its second block on.
    """
    modules = dict(unet.named_modules())
    if resnets is None:
        blocks = unet.up_blocks
        resnets = ("up_blocks.1.resnets.1",) if len(blocks) > 1 and len(blocks[1].resnets) > 1 else ()
    if attentions is None:
        attentions = tuple(n for n in self_attention_names(unet)
                           if n.startswith("up_blocks.") and int(n.split(".")[1]) >= 1)
    for name in (*resnets, *attentions):
        if name not in modules:
            raise ValueError(f"PnP layer {name!r} is not a module of this UNet")
    return frozenset(resnets), frozenset(attentions)


@contextmanager
def cove_attention(unet, state: AttentionState):
    """Install :class:`CoveAttnProcessor` on every self-attention and the PnP ResNet hooks.

    The original processors are restored and the hooks removed on exit, also on exceptions::

        with cove_attention(pipe.unet, state):
            pipe.unet(latents, t, text)
    """
    originals = unet.attn_processors
    def processor(name, proc):
        if name.endswith("attn1.processor"):
            return CoveAttnProcessor(name[: -len(".processor")], state)
        if name.endswith("attn2.processor") and state.token_map is not None:
            return CrossAttnMapProcessor(name[: -len(".processor")], state)
        return proc

    processors = {name: processor(name, proc) for name, proc in originals.items()}
    handles = []

    def resnet_hook(name):
        def hook(_module, _inputs, output):
            slot = ("resnet", name, state.key)
            if state.resnet_max_t is not None and (state.key is None or state.key >= state.resnet_max_t):
                return output
            if state.phase == "save":
                state.store[slot] = state.keep(output)  # (F, C, h, w)
            elif state.phase == "inject" and slot in state.store:
                saved = state.store[slot].to(output.device, output.dtype)
                return saved.repeat(output.shape[0] // saved.shape[0], 1, 1, 1)
            return output
        return hook

    try:
        unet.set_attn_processor(dict(processors))  # diffusers pops from the dict it is given
        for name in sorted(state.pnp_resnets):
            handles.append(unet.get_submodule(name).register_forward_hook(resnet_hook(name)))
        yield processors
    finally:
        for handle in handles:
            handle.remove()
        unet.set_attn_processor(dict(originals))


def attention_flops(frames: int, tokens: int, channels: int, k: int, merge_ratio: float) -> dict:
    """Multiply-adds of one self-attention layer per group, per mode (for the notebooks).

    spatial-temporal: F*N queries x F*N keys; CGA: F*N queries x (F-1)*K (merged) keys.
    """
    t = (frames - 1) * k
    t_merged = t - merge_count(t, merge_ratio)
    return {
        "per-frame": 2 * frames * tokens * tokens * channels,
        "spatiotemporal": 2 * frames * tokens * frames * tokens * channels,
        "cga": 2 * frames * tokens * t_merged * channels,
    }
