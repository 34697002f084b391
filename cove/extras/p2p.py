"""Prompt-to-prompt's word swap (Hertz et al. 2023; not in the COVE paper).

A colour edit ("an orange circle" -> "a purple circle") often recolours the wrong object or
bleeds into the next one: the new word's cross-attention finds its own place in the image.
Prompt-to-prompt keeps the *source* prompt's cross-attention maps for the first denoising
steps and only swaps the words' values, so the new colour word attends exactly where the old
one did. This module aligns the two prompts' tokens (``token_map``) and shows the maps
(``cross_attention_maps``, ``token_index``); ``cove.processors.CrossAttnMapProcessor`` saves
and applies them (``CoveConfig.extras.p2p_steps``).
"""
from __future__ import annotations

from difflib import SequenceMatcher

import torch


def token_map(tokenizer, source_prompt: str, prompt: str) -> torch.Tensor:
    """For each token of ``prompt``, the token of ``source_prompt`` whose map it takes.

    Tokens are aligned by ``difflib.SequenceMatcher`` over the padded token ids: equal runs map
    one to one, and a replaced run of the same length (a swapped word) maps one to one too;
    tokens inserted by the edit (or replaced by a run of another length) keep their own map (-1).

    Args:
        tokenizer: the pipeline's tokenizer (padding to ``model_max_length``).

    Returns:
        (L,) long, indices into the source prompt's L tokens, -1 for "own map".
    """
    length = tokenizer.model_max_length
    ids = [tokenizer(p, padding="max_length", max_length=length, truncation=True).input_ids
           for p in (source_prompt, prompt)]
    mapping = torch.full((length,), -1, dtype=torch.long)
    for op, s0, s1, t0, t1 in SequenceMatcher(None, ids[0], ids[1], autojunk=False).get_opcodes():
        if op == "equal" or (op == "replace" and s1 - s0 == t1 - t0):
            mapping[t0:t1] = torch.arange(s0, s1)
    return mapping


def token_index(tokenizer, prompt: str, word: str) -> int:
    """Position of ``word``'s first token in ``prompt``'s token ids (what a map is indexed by).

    "a red star on grass", "red" -> 2 (after <bos> and "a"). Raises ValueError if the word is
    not in the prompt.
    """
    ids = tokenizer(prompt, truncation=True, max_length=tokenizer.model_max_length).input_ids
    wanted = tokenizer(word, add_special_tokens=False).input_ids
    for start in range(len(ids) - len(wanted) + 1):
        if wanted and ids[start:start + len(wanted)] == wanted:
            return start
    raise ValueError(f"expected a word of the prompt {prompt!r}, got {word!r}")


@torch.no_grad()
def cross_attention_maps(pipe, latents: torch.Tensor, prompt: str, *, t: int = 400,
                         generator: torch.Generator | None = None, max_tokens: int = 32 * 32) -> torch.Tensor:
    """Where each token of ``prompt`` is read: the UNet's cross-attention maps at timestep ``t``.

    The clean latents are noised to ``t`` (``cove.sd.noise_latents``) and run through the UNet
    once with the maps saved (the same processor the word swap uses); the maps of the layers on
    the largest grid of at most ``max_tokens`` image tokens are averaged over heads and layers.

    Args:
        latents: (F, c, h, w) clean latents (``cove.sd.encode_frames``).

    Returns:
        (F, L, gh, gw) float32; every cell's maps sum to 1 over the L tokens.
    """
    from ..processors import AttentionState, cove_attention
    from ..sd import encode_text, noise_latents

    f, _, h, w = latents.shape
    length = pipe.tokenizer.model_max_length
    state = AttentionState(frames=f, mode="per-frame", token_map=torch.arange(length),
                           cross_max_tokens=max_tokens, cross_phase="save", key=t)
    x = noise_latents(pipe, latents, t, generator).to(latents.dtype)
    text = encode_text(pipe, [prompt]).expand(f, -1, -1)  # (F, L, D)
    with cove_attention(pipe.unet, state):
        pipe.unet(x, t, text)
    maps = list(state.store.values())  # (F*heads, N, L) per layer
    if not maps:
        raise ValueError(f"no cross-attention layer has at most {max_tokens} image tokens")
    n = max(m.shape[1] for m in maps)
    stride = round((h * w / n) ** 0.5)
    gh, gw = h // stride, w // stride
    mean = torch.stack([m.float().view(f, -1, n, length).mean(1) for m in maps if m.shape[1] == n]).mean(0)
    return mean.transpose(1, 2).reshape(f, length, gh, gw)  # (F, L, gh, gw)
