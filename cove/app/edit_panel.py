"""Notebook 06's edit panel: the full COVE edit behind a Run button, scored and tabulated,
and ``predict_clean``, what one denoising step aims at."""
from __future__ import annotations

from dataclasses import replace

import ipywidgets
import torch

from . import viz
from .panel import Panel, image, slider, table_html


def predict_clean(pipe, latents, t: int, prompt: str, *, state=None, guidance_scale: float = 7.5):
    """One denoising evaluation: the clean frames the model predicts from ``latents`` at ``t``.

    ``cove.pipeline.predicted_x0`` of ``cove.pipeline.guided_output`` (classifier-free
    guidance), the UNet running under ``cove.processors.cove_attention(state)``
    (``state=None``: plain per-frame attention). Used by notebook 04 to compare one step with
    and without correspondence-guided attention.

    Args:
        latents: ``(F, c, h, w)`` noisy latents at timestep ``t``.

    Returns:
        uint8 ``(F, H, W, 3)``.
    """
    from ..pipeline import ddim_scheduler, guided_output, predicted_x0
    from ..processors import AttentionState, cove_attention
    from ..sd import decode_latents, encode_text

    F = latents.shape[0]
    state = state or AttentionState(frames=F, mode="per-frame")
    text = torch.cat([encode_text(pipe, [""]), encode_text(pipe, [prompt])]).repeat_interleave(F, 0)  # (2F, L, D)
    with torch.no_grad(), cove_attention(pipe.unet, state):
        out = guided_output(pipe, latents, t, text, guidance_scale)  # (F, c, h, w)
    return decode_latents(pipe, predicted_x0(ddim_scheduler(pipe), out, latents, t))


# 06: the full edit behind a button
# ---------------------------------------------------------------------------------------------


def edit_panel(pipe, frames, *, prompt: str, source_prompt: str = "", negative_prompt: str = "", config=None,
               clip=None, truth=None, target_phrase: str | None = None, seed: int = 0, scale: int = 3) -> Panel:
    """The full COVE edit with its settings as widgets and a Run button.

    Each click runs ``cove.pipeline.edit_video`` with the chosen prompt, attention mode, ``K``,
    ``l``, merge ratio, steps, strength, edit-mask threshold (0: no mask), prompt-to-prompt
    steps (0: none; ``cove.extras.p2p``) and the timestep below which PnP's ResNet features are
    injected (1000: every PnP step; ``CoveConfig.extras.pnp_resnet_max_t``), then scores the
    result with ``cove.eval.scoring.score_edit``: flicker (``warp_error`` along ``clip``'s true
    motion, lower is better) and fidelity (PSNR and colour accuracy against the ground-truth
    edit ``truth``).
    Every run is added to a table, so runs can be compared (the paper's ablation in miniature).

    Args:
        frames: uint8 ``(F, H, W, 3)``; prompt / source_prompt / negative_prompt: initial prompts
            (``cove.edit_video``'s meaning; prompt and negative prompt are editable).
        config: starting ``CoveConfig`` (steps are taken from it).
        clip: the source ``world.Clip`` (its motion scores flicker); optional.
        truth: the ground-truth edited ``world.Clip``; optional. target_phrase: the edited
            object ("yellow star"), for colour accuracy.
    """
    from ..config import ATTENTION_MODES, CoveConfig
    from ..eval.scoring import score_edit
    from ..pipeline import denoise_timesteps, inversion_timesteps
    from .io import side_by_side

    w = ipywidgets
    frames = viz.to_numpy(frames)
    config = config or CoveConfig()
    controls = {
        "prompt": w.Text(value=prompt, description="prompt", layout=w.Layout(width="420px")),
        "negative": w.Text(value=negative_prompt, description="negative", layout=w.Layout(width="420px"),
                           placeholder="empty (the paper); the source prompt guides along target - source"),
        "attention": w.Dropdown(options=list(ATTENTION_MODES), value=config.attention, description="attention"),
        "k": slider("K", config.k, 1, 9),
        "window": slider("window l", config.window, 1, 15, step=2),
        "merge_ratio": slider("merge ratio", config.merge_ratio, 0.0, 1.0, step=0.05, kind="float"),
        "steps": slider("denoise steps", config.denoise_steps, 2, 50),
        "strength": slider("strength", config.extras.strength, 0.1, 1.0, step=0.05, kind="float"),
        "mask": slider("edit mask", config.extras.mask_threshold or 0.0, 0.0, 0.9, step=0.05, kind="float"),
        "p2p": slider("p2p steps", min(config.extras.p2p_steps, 50), 0, 50),
        "resnet_t": slider("ResNet t <", config.extras.pnp_resnet_max_t or 1000, 50, 1000, step=50),
        "run": w.Button(description="Run edit", button_style="primary", icon="play"),
    }
    progress = w.IntProgress(value=0, min=0, max=1, description="progress")
    frame = slider("frame", 0, 0, len(frames) - 1)
    runs = w.HTML()
    folded = ("window", "merge_ratio", "steps", "strength", "mask", "p2p", "resnet_t")
    panel = Panel(controls, {"result": image()}, extra=[progress, frame, runs], folded=folded,
                  folded_title="more settings: window l, merge ratio, steps, strength, edit mask, word swap, ResNet t")
    panel.state = {"runs": [], "result": None, "strip": None}

    def settings() -> CoveConfig:
        steps = controls["steps"].value
        extras = replace(
            config.extras, strength=controls["strength"].value,
            mask_threshold=controls["mask"].value or None,  # 0 = no mask (the paper)
            p2p_steps=controls["p2p"].value,  # 0 = cross-attention left alone (the paper)
            # 1000 = PnP's ResNet features injected at every PnP step (PnP's choice)
            pnp_resnet_max_t=controls["resnet_t"].value if controls["resnet_t"].value < 1000 else None,
        )
        return replace(
            config.with_denoise_steps(steps), attention=controls["attention"].value, k=controls["k"].value,
            window=controls["window"].value, merge_ratio=controls["merge_ratio"].value,
            inversion_steps=max(config.inversion_steps, steps), extras=extras,
        )

    def show_frame(*_):
        if panel.state["strip"] is not None:
            panel.show("result", panel.state["strip"][frame.value])

    def run():
        cfg = settings()
        total = len(inversion_timesteps(pipe, cfg)) + len(denoise_timesteps(pipe, cfg))
        progress.max, progress.value = total, 0
        panel.status.value = f"running {cfg.attention} ({total} steps)..."
        callback = lambda info: setattr(progress, "value", progress.value + 1)  # noqa: E731
        result, scores = score_edit(pipe, frames, controls["prompt"].value, source_prompt=source_prompt,
                                    negative_prompt=controls["negative"].value, config=cfg, seed=seed,
                                    motion=clip, truth=truth, target_phrase=target_phrase, callback=callback)
        row = {"run": len(panel.state["runs"]) + 1, "prompt": controls["prompt"].value,
               "negative": controls["negative"].value,
               "attention": cfg.attention, "K": cfg.k, "l": cfg.window, "merge": cfg.merge_ratio,
               "steps": cfg.denoise_steps, "mask": cfg.extras.mask_threshold or "-", "p2p": cfg.extras.p2p_steps,
               "ResNet t <": cfg.extras.pnp_resnet_max_t or "-", "seconds": result.timings["total"]}
        if "warp_error" in scores:
            row["flicker (warp error)"] = scores.pop("warp_error")
        row.update({f"fidelity {k_}": v for k_, v in scores.items()})
        clips = {"source": frames, f"run {row['run']}: {cfg.attention}": result.frames}
        if truth is not None:
            clips["ground truth"] = truth.frames
        clips = {k: viz.enlarge(v, scale) for k, v in clips.items()}
        panel.state["strip"] = side_by_side(*clips.values(), labels=list(clips))
        panel.state["runs"].append(row)
        panel.state["result"] = result
        runs.value = table_html(panel.state["runs"])
        show_frame()
        panel.status.value = f"run {row['run']} done in {row['seconds']:.1f} s"

    frame.observe(show_frame, names="value")
    controls["run"].on_click(panel.guarded(run))
    panel.status.value = "choose the settings and press Run edit"
    return panel
