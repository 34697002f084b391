"""Train cove-tiny on ShapesWorld: ``python -m cove.tiny.train``.

Reproduces the shipped weights (``cove/tiny/weights``): seeded, prints progress, resumable
(``--resume``: a checkpoint is written every ``--save-every`` steps). Standard DDPM training
(Ho et al. 2020, Algorithm 1) with classifier-free guidance dropout (Ho & Salimans 2022):

    x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,   loss = || v - v_theta(x_t, t, c) ||^2,
    v = sqrt(abar_t) eps - sqrt(1 - abar_t) x_0      (v-prediction, Salimans & Ho 2022)

with the caption c replaced by "" 10% of the time, and an exponential moving average of the
weights (the EMA is what is shipped). ``--object-weight`` weights the squared error on latent
cells that touch an object (about 16% of cells) by w instead of 1, per cycle, normalised by the
sum of the weights: with w = 1 it is the plain mean. ``--mid-t`` draws a share of each batch's
timesteps from ``--mid-t-range`` (default 250-750, where a shape is decided), per cycle.
``--ema-restart`` starts a cycle from the EMA weights with fresh optimizer moments, per cycle:
what a run does that goes on from an exported pipeline (``--init FOLDER --start-at STEP``)
because its checkpoint was lost, so the uninterrupted run gives the same weights.
Batches are rendered on the fly from a per-step seed, so a resumed run sees exactly the data
the uninterrupted run would have seen. A step whose gradients are not finite is skipped (the
weights and AdamW's moments stay as they were, the EMA takes its step toward those weights; the
log marks it ``"skipped"``, ``training.json`` counts them); after ``MAX_SKIPPED_RUN`` such steps
in a row the run stops and exports what it has.

For a GPU (``--device cuda``): ``--workers N`` renders the batches in N processes (the same
batches, bit for bit), ``--bf16`` runs the forward pass under bfloat16 autocast (CUDA's fp32
matrix products use TF32 in any case), ``--minutes M`` stops cleanly (checkpoint and export)
before a time limit, and ``--init FOLDER`` starts from a pipeline folder's weights (the shipped
ones, or an earlier export) when there is no checkpoint to resume. docs/method/tiny.md has the
recipe for a lent GPU's 10-minute commands. ``--design`` trains another architecture of
``cove.tiny.model.DESIGNS`` (``python -m cove.tiny.compare`` compares them).

``--clips S`` renders a share S of each batch as clips of ``--clip-frames F`` consecutive frames
(the world's motion and camera pans) and predicts them under spatial-temporal attention (every
token attends to every frame of its clip, as in an edit): a clip's frames are noised
independently, so attending to the same content in the other frames is what lowers the loss,
and each frame draws its own timestep (``--clip-t each``: a less noisy frame helps a noisier
one), the clip shares one (``--clip-t shared``, as in an edit), or each draws its own and the
first frame's is cut to a quarter (``--clip-t anchor``: one far less noisy frame per clip).
"""
from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from .. import world
from .data import SCENE_FRAMES, sample_training_clips, sample_training_images
from .measures import ANCHOR_T
from .model import DESIGNS, MAX_TOKENS, build_pipeline, design_of
from .tokenizer import build_clip_tokenizer

WEIGHTS = Path(__file__).parent / "weights"
# The shipped weights: a 4000-step cycle, then warm restarts for 4400, 3600, 3600, 3600 and 3600
# more (one CPU session each), the last three drawing half of each batch's timesteps from MID_T_RANGE.
CYCLES = (4000, 4400, 3600, 3600, 3600, 3600)
# Loss weight on object cells, per cycle of CYCLES.
OBJECT_WEIGHTS = (1.0, 1.0, 1.0, 1.0, 1.0, 1.0)
# Share of each batch with timesteps from MID_T_RANGE (where shapes are decided), per cycle of CYCLES.
MID_TS = (0.0, 0.0, 0.0, 0.5, 0.5, 0.5)
MID_T_RANGE = (250, 750)
# Per cycle of CYCLES: 1 where the cycle starts from the EMA weights with fresh optimizer moments.
# The sixth did: its session went on from the fifth's export (--init, --start-at 19200), the
# fifth's checkpoint having been lost with its machine.
EMA_RESTARTS = (0, 0, 0, 0, 0, 1)
# --fit-minutes: the rate of the steps between these two (counted from the first step of the run)
# sets the last cycle's length; the first steps (compilation, cudnn's search) are left out.
FIT_STRETCH = (20, 60)
CLIP_TS = ("each", "shared", "anchor")
ANCHOR_SHARE = 4  # --clip-t anchor: a clip's first frame takes 1/ANCHOR_SHARE of its drawn timestep
# a step whose gradients are not finite is skipped (the weights and AdamW's moments unchanged); this many
# in a row, the run stops and exports what it has
MAX_SKIPPED_RUN = 20


def _parse(argv=None):
    p = argparse.ArgumentParser(prog="python -m cove.tiny.train", description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, default=WEIGHTS, help="pipeline folder to write")
    p.add_argument("--design", choices=tuple(DESIGNS), default="shipped",
                   help="architecture (cove.tiny.model.DESIGNS); default the shipped one")
    p.add_argument("--work", type=Path, default=Path("runs/cove-tiny"), help="checkpoints, log")
    p.add_argument("--cycles", type=_cycles, default=CYCLES,
                   help="learning-rate cycles, comma-separated step counts (warm restarts); "
                        f"default {','.join(map(str, CYCLES))} (the shipped weights)")
    p.add_argument("--steps", type=_cycle, default=None, help="one cycle of this many steps instead of --cycles")
    p.add_argument("--object-weight", type=_weights, default=None,
                   help="loss weight on latent cells that touch an object, one per cycle or one for all; "
                        "default the shipped recipe's with the default cycles, else 1")
    p.add_argument("--mid-t", type=_shares, default=None,
                   help="share of each batch whose timesteps are drawn from --mid-t-range instead of "
                        "all of them, one per cycle or one for all; default the shipped recipe's with the default cycles, else 0")
    p.add_argument("--mid-t-range", type=_t_range, default=MID_T_RANGE,
                   help=f"timesteps LO,HI (LO <= t < HI) for --mid-t; default {MID_T_RANGE[0]},{MID_T_RANGE[1]}")
    p.add_argument("--ema-restart", type=_flags, default=None,
                   help="1 for a cycle that starts from the EMA weights with fresh optimizer moments "
                        "(what --init from an export and --start-at do), one per cycle or one for all; "
                        "default the shipped recipe's with the default cycles, else 0")
    p.add_argument("--restart-lr", type=float, default=0.5, help="peak lr of later cycles, as a fraction of --lr")
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--ema", type=float, default=0.999)
    p.add_argument("--uncond", type=float, default=0.1, help="caption dropout for CFG")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save-every", type=int, default=100)
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--device", default="cpu")
    p.add_argument("--workers", type=_count, default=0,
                   help="processes that render the batches (0: the training process itself); same batches")
    p.add_argument("--bf16", action="store_true", help="forward pass under bfloat16 autocast (for GPUs)")
    p.add_argument("--echo", type=_positive_int, default=1,
                   help="data echoing: each rendered batch serves this many steps, each with its own "
                        "timesteps and noise (for a GPU that outruns the renderer); default 1")
    p.add_argument("--fit-minutes", action="store_true",
                   help="with --minutes: after a measured stretch of steps, set the last cycle's length "
                        "so that its cosine ends when the minutes are spent (recorded in training.json)")
    p.add_argument("--export-dtype", choices=("float32", "float16"), default="float32",
                   help="dtype of the exported weights (float16 halves the files; the loader upcasts)")
    p.add_argument("--probe-every", type=_count, default=0,
                   help="every N steps and at the end, probe the attention (train.probe_attention: entropy, "
                        "CGA's change, the clip gain plain and with a frame almost clean, how far attention "
                        "moves the prediction) into "
                        "WORK/probes.jsonl; 0 (default): never")
    p.add_argument("--clips", type=_share, default=0.0,
                   help="share of each batch rendered as clips, predicted under spatial-temporal attention")
    p.add_argument("--clip-frames", type=_clip_frames, default=4, help=f"frames of a clip (2 to {SCENE_FRAMES})")
    p.add_argument("--clip-t", choices=CLIP_TS, default="each",
                   help="each frame of a clip its own timestep; one timestep per clip; or each its own "
                        "with the first frame's cut to a quarter (anchor: a less noisy frame in every clip)")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--init", type=Path, default=None,
                   help="pipeline folder (unet/, text_encoder/) whose weights start a run that has no checkpoint")
    p.add_argument("--start-at", type=int, default=0,
                   help="with --init: the step of the schedule it starts at (the step those weights "
                        "stopped at, when their checkpoint is lost; the optimizer's moments start afresh)")
    p.add_argument("--stop-at", type=int, default=None,
                   help="stop after this step and export (the schedule still spans all cycles)")
    p.add_argument("--minutes", type=_minutes, default=None,
                   help="stop after the step that passes this many minutes, checkpoint and export "
                        "(--resume goes on from there)")
    args = p.parse_args(argv)
    if args.init is not None and not all((args.init / part).is_dir() for part in ("unet", "text_encoder")):
        p.error(f"--init: expected a pipeline folder with unet/ and text_encoder/, got {str(args.init)!r}")
    if args.steps is not None:
        args.cycles = args.steps
    args.steps = sum(args.cycles)
    if args.clips and clip_count(args) == 0:
        p.error(f"--clips: {args.clips:g} of a batch of {args.batch} is less than one clip of "
                f"{args.clip_frames} frames; expected a larger share or --batch")
    if args.fit_minutes and args.minutes is None:
        p.error("--fit-minutes: expected --minutes too (the time the schedule is fitted to)")
    if args.start_at and args.init is None:
        p.error(f"--start-at: expected --init too (the weights of step {args.start_at}), got no --init")
    if not 0 <= args.start_at < args.steps:
        p.error(f"--start-at: expected a step from 0 to {args.steps - 1} (the schedule's length is "
                f"{args.steps}), got {args.start_at}")
    if args.object_weight is None:
        args.object_weight = OBJECT_WEIGHTS if args.cycles == CYCLES else (1.0,)
    if args.mid_t is None:
        args.mid_t = MID_TS if args.cycles == CYCLES else (0.0,)
    if args.ema_restart is None:
        args.ema_restart = EMA_RESTARTS if args.cycles == CYCLES else (0,)
    for name in ("object_weight", "mid_t", "ema_restart"):
        values = getattr(args, name)
        if len(values) == 1:
            setattr(args, name, values * len(args.cycles))
        elif len(values) != len(args.cycles):
            p.error(f"--{name.replace('_', '-')}: expected one value or one per cycle ({len(args.cycles)}), "
                    f"got {len(values)}")
    return args


def _list(text: str, convert, ok, expected: str) -> tuple:
    """'a,b,c' -> (convert(a), ...), each passing ``ok``, or a one-line argparse error naming ``expected``."""
    try:
        values = tuple(convert(v) for v in str(text).split(","))
    except ValueError:
        values = ()
    if not values or not all(ok(v) for v in values):
        raise argparse.ArgumentTypeError(f"expected {expected} separated by commas, got {text!r}")
    return values


def _positive_list(text: str, convert, what: str) -> tuple:
    """'a,b,c' -> (convert(a), ...), all finite and > 0, or a one-line argparse error."""
    return _list(text, convert, lambda v: math.isfinite(v) and v > 0, f"positive {what}")


def _number(text: str, convert, ok, expected: str):
    """``convert(text)`` if it passes ``ok``, else a one-line argparse error naming ``expected``."""
    try:
        value = convert(text)
    except ValueError:
        value = None
    if value is None or not ok(value):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _count(text: str) -> int:
    return _number(text, int, lambda v: v >= 0, "a whole number >= 0")


def _positive_int(text: str) -> int:
    return _number(text, int, lambda v: v >= 1, "a whole number >= 1")


def _minutes(text: str) -> float:
    return _number(text, float, lambda v: math.isfinite(v) and v > 0, "a positive number of minutes")


def _weights(text: str) -> tuple[float, ...]:
    return _positive_list(text, float, "numbers")


def _shares(text: str) -> tuple[float, ...]:
    return _list(text, float, lambda v: 0 <= v <= 1, "shares between 0 and 1")


def _share(text: str) -> float:
    return _number(text, float, lambda v: 0 <= v <= 1, "a share between 0 and 1")


def _clip_frames(text: str) -> int:
    return _number(text, int, lambda v: 2 <= v <= SCENE_FRAMES, f"a whole number from 2 to {SCENE_FRAMES}")


def _flags(text: str) -> tuple[int, ...]:
    return _list(text, int, lambda v: v in (0, 1), "0 or 1")


def _t_range(text: str) -> tuple[int, int]:
    try:
        lo, hi = (int(v) for v in str(text).split(","))
    except ValueError:
        lo = hi = -1
    if not 0 <= lo < hi <= 1000:
        raise argparse.ArgumentTypeError(f"expected LO,HI with 0 <= LO < HI <= 1000, got {text!r}")
    return lo, hi


def _cycle(text: str) -> tuple[int, ...]:
    """``--steps N``: a single cycle; parsed like ``--cycles`` so a bad value gets the same error."""
    cycles = _cycles(text)
    if len(cycles) != 1:
        raise argparse.ArgumentTypeError(f"expected one positive step count, got {text!r}")
    return cycles


def _cycles(text: str) -> tuple[int, ...]:
    return _positive_list(text, int, "step counts")


def _cycle_at(step: int, cycles) -> tuple[int, int, int]:
    """(index, first step, length) of the cycle that ``step`` falls in (the last one past the end)."""
    start = 0
    for k, length in enumerate(cycles):
        if step < start + length or k == len(cycles) - 1:
            break
        start += length
    return k, start, length


def _lr(step: int, args) -> float:
    """Per cycle: linear warm-up, then cosine decay to 10% of the cycle's peak (warm restarts,
    Loshchilov & Hutter 2017). The first cycle peaks at ``lr``, later ones at ``restart_lr * lr``."""
    k, start, length = _cycle_at(step, args.cycles)
    peak, local = args.lr * (1.0 if k == 0 else args.restart_lr), step - start
    if local < args.warmup:
        return peak * (local + 1) / args.warmup
    progress = min(1.0, (local - args.warmup) / max(1, length - args.warmup))
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def clip_count(args) -> int:
    """Clips in each batch: ``--clips`` of ``--batch`` images, in whole clips of ``--clip-frames``."""
    return int(round(args.batch * args.clips / args.clip_frames))


def rendered_batch(step: int, args, tokenizer):
    """One step's batch as rendered, compact for moving between processes and to the device:
    images uint8 (B, 3, 64, 64), token ids (B, L) and object masks uint8 (B, 1, 64, 64) in {0, 1};
    seeded by step. ``to_training`` turns it into ``batch``'s floats.

    The first B - n F images are single frames, the last n F the frames of ``clip_count(args)``
    = n clips of F = ``--clip-frames`` frames, consecutive (a clip's frames share its caption,
    dropped for all of them at once). Without clips the batch is the same as before clips existed.
    """
    n, frames = clip_count(args), args.clip_frames
    images, captions, objects = sample_training_images(
        args.batch - n * frames, seed=args.seed * 1_000_003 + step, masks=True)
    rng = np.random.default_rng([args.seed, step])
    captions = ["" if rng.random() < args.uncond else c for c in captions]
    if n:
        clip_images, clip_captions, clip_objects = sample_training_clips(
            n, frames, seed=[args.seed, step, 1], masks=True)
        images, objects = np.concatenate([images, clip_images]), np.concatenate([objects, clip_objects])
        for caption in clip_captions:  # one dropout draw per clip
            captions += ["" if rng.random() < args.uncond else caption] * frames
    ids = tokenizer(captions, padding="max_length", max_length=MAX_TOKENS, truncation=True,
                    return_tensors="pt").input_ids
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()  # (B, 3, H, W) uint8
    return x, ids, torch.from_numpy(objects.view(np.uint8))[:, None]  # objects (B, 1, H, W) uint8


def to_training(rendered, device="cpu"):
    """``rendered_batch``'s tensors moved to ``device`` and made floats there: images (B, 3, 64,
    64) in [-1, 1], token ids (B, L), object masks (B, 1, 64, 64) in {0., 1.}. Moving uint8 is a
    quarter of the bytes of floats (worker processes, pinned memory, the copy to a GPU)."""
    x, ids, objects = (v.to(device, non_blocking=True) for v in rendered)
    return x.float() / 127.5 - 1, ids, objects.float()


def batch(step: int, args, tokenizer, device="cpu"):
    """Images (B, 3, 64, 64) in [-1, 1], token ids (B, L) and object masks (B, 1, 64, 64) as
    floats in {0, 1}, for one step: ``to_training(rendered_batch(step, ...), device)``."""
    return to_training(rendered_batch(step, args, tokenizer), device)


class _Batches(torch.utils.data.Dataset):
    """Step -> that step's ``rendered_batch`` (uint8), for rendering in worker processes."""

    def __init__(self, args, tokenizer):
        self.args, self.tokenizer = args, tokenizer

    def __len__(self) -> int:
        return self.args.steps

    def __getitem__(self, step: int):
        return rendered_batch(step, self.args, self.tokenizer)


def batches(steps: range, args, tokenizer):
    """The ``rendered_batch`` of each of ``steps`` in order (uint8, on the CPU), rendered here or
    (``args.workers`` > 0) by worker processes ahead of use; the same tensors either way."""
    if not args.workers:
        return (rendered_batch(step, args, tokenizer) for step in steps)
    loader = torch.utils.data.DataLoader(
        _Batches(args, tokenizer), batch_size=None, sampler=steps, num_workers=args.workers,
        prefetch_factor=4, pin_memory=torch.device(args.device).type == "cuda")
    return iter(loader)


def echoed(steps: range, args, tokenizer):
    """The rendered batch of every step of ``steps``: step ``s`` trains on rendered batch ``s // echo``
    (data echoing, Choi et al. 2019: a GPU that outruns the renderer reuses each batch ``echo``
    times, each step with its own timesteps and noise); ``echo`` = 1 is ``batches(steps)``."""
    echo = args.echo
    indices = range(steps.start // echo, (steps.stop - 1) // echo + 1) if len(steps) else range(0)
    rendered, held, held_index = batches(indices, args, tokenizer), None, None
    for step in steps:
        if step // echo != held_index:
            held, held_index = next(rendered), step // echo
        yield held


def fit_last_cycle(args, step: int, rate: float, seconds_left: float) -> int:
    """Set the last cycle's length so that the schedule ends after ``rate * seconds_left`` more
    steps (at least one past ``step`` and past the last cycle's warm-up); returns the new
    number of steps. ``args.cycles`` and ``args.steps`` are updated."""
    *before, _ = args.cycles
    first = sum(before)
    end = max(step + 2, first + args.warmup + 1, step + 1 + int(rate * seconds_left))
    args.cycles = (*before, end - first)
    args.steps = end
    return end


def init_weights(unet, text, folder: Path) -> list[str]:
    """Copy the UNet and text encoder weights of a saved pipeline folder into ``unet`` and
    ``text``; returns the names of the UNet tensors the folder does not hold.

    Every tensor of the folder must exist in the modules with the same shape (else a one-line
    ValueError). A UNet of a larger design may hold more: the layers it adds (design ``a``'s
    attention at 32x32 over the shipped weights) keep their seeded initialisation, except the
    output projection of each new attention block, zeroed so that the block starts as the
    identity (its residual) and the copied network's function is unchanged at the start.
    """
    from safetensors.torch import load_file

    new: list[str] = []
    for module, file in ((unet, folder / "unet" / "diffusion_pytorch_model.safetensors"),
                         (text, folder / "text_encoder" / "model.safetensors")):
        if not file.is_file():
            raise ValueError(f"--init: expected {file} (a cove-tiny pipeline folder), it is missing")
        state, own = load_file(file), module.state_dict()
        bad = sorted(k for k in state.keys() if k not in own or state[k].shape != own[k].shape)
        missing = sorted(own.keys() - state.keys())
        if bad or (missing and module is text):
            first = bad[0] if bad else missing[0]
            try:
                held = f"; the folder holds design {design_of(folder)!r} (--design)"
            except ValueError:
                held = ""
            raise ValueError(f"--init: {file} does not hold cove-tiny's architecture "
                             f"({len(bad) + len(missing)} tensors differ, first {first!r}){held}")
        module.load_state_dict(state, strict=False)
        new += missing
    with torch.no_grad():  # new attention blocks start as the identity
        for name, block in unet.named_modules():
            if hasattr(block, "proj_out") and f"{name}.proj_out.weight" in new:
                block.proj_out.weight.zero_()
                if block.proj_out.bias is not None:
                    block.proj_out.bias.zero_()
    return new


def draw_noise(gen: torch.Generator, shape: tuple, n_train: int, mid_t: float = 0.0,
               mid_range: tuple[int, int] = MID_T_RANGE) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (B,) and noise ``shape`` = (B, ...) for one step, from ``gen``, on its device.

    t is uniform over 0..n_train-1, except that a share ``mid_t`` of the batch (each image with
    that probability) draws it from ``mid_range`` (LO <= t < HI) instead: the noise levels
    where a shape is decided. With ``mid_t`` = 0 nothing more is drawn, so the timesteps and the
    noise are exactly those of plain uniform sampling.
    """
    device = gen.device
    t = torch.randint(0, n_train, shape[:1], generator=gen, device=device)
    eps = torch.randn(shape, generator=gen, device=device)
    if mid_t > 0:
        mid = torch.randint(*mid_range, shape[:1], generator=gen, device=device)
        t = torch.where(torch.rand(shape[:1], generator=gen, device=device) < mid_t, mid, t)
    return t, eps


def object_weights(objects: torch.Tensor, latent_hw: tuple[int, int], weight: float) -> torch.Tensor:
    """Per-cell loss weights (B, 1, h, w): ``weight`` on latent cells that overlap an object or
    touch one (one cell of dilation, so the outline counts), 1 elsewhere.

    objects: (B, 1, H, W) in {0, 1}, H and W multiples of h and w.
    """
    cells = torch.nn.functional.adaptive_max_pool2d(objects, latent_hw)  # (B, 1, h, w)
    cells = torch.nn.functional.max_pool2d(cells, 3, stride=1, padding=1)
    return 1 + (weight - 1) * cells


def clip_timesteps(t: torch.Tensor, singles: int, frames: int, mode: str = "shared") -> torch.Tensor:
    """The clips' timesteps under ``--clip-t mode`` from those drawn for every image (``each``
    keeps them): ``shared``, every frame of a clip takes its first frame's timestep; ``anchor``,
    the first frame of a clip takes ``t // ANCHOR_SHARE`` of its own (0-249 of 0-999), so that
    every clip holds one frame far less noisy than the others to copy from, where the content
    can be found only by following it through the motion.

    t: (B,) with the clips' frames after the first ``singles`` entries, ``frames`` per clip."""
    if mode not in CLIP_TS:
        raise ValueError(f"mode: expected one of {', '.join(CLIP_TS)}, got {mode!r}")
    clips = t[singles:].view(-1, frames)
    if mode == "shared":
        clips = clips[:, :1].expand(-1, frames)
    elif mode == "anchor":
        clips = torch.cat([clips[:, :1] // ANCHOR_SHARE, clips[:, 1:]], 1)
    return torch.cat([t[:singles], clips.reshape(-1)])


def predict(unet, zt: torch.Tensor, t: torch.Tensor, cond: torch.Tensor, singles: int, frames: int):
    """The UNet's output (B, C, h, w) for a batch of ``singles`` single frames followed by clips
    of ``frames`` frames: the singles with the UNet's own attention, the clips under
    spatial-temporal attention (``cove.processors``, as an edit's ``"spatiotemporal"`` mode).

    zt: (B, C, h, w); t: (B,); cond: (B, L, D)."""
    from ..processors import AttentionState, cove_attention

    parts = []
    if singles:
        parts.append(unet(zt[:singles], t[:singles], cond[:singles]).sample)
    if singles < zt.shape[0]:
        with cove_attention(unet, AttentionState(frames=frames, mode="spatiotemporal")):
            parts.append(unet(zt[singles:], t[singles:], cond[singles:]).sample)
    return torch.cat(parts) if len(parts) > 1 else parts[0]


def loss_fn(pred: torch.Tensor, target: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
    """Mean squared error; with ``weights`` (B, 1, h, w) the weighted mean over (B, C, h, w)."""
    if weights is None:
        return torch.nn.functional.mse_loss(pred, target)
    sq = (pred - target) ** 2  # (B, C, h, w)
    return (weights * sq).sum() / (weights.sum() * sq.shape[1])


def probe_attention(pipe, seed: int = 0) -> dict:
    """How sharply the model being trained attends, for the curves of a run: attention entropy
    (``measures.measure_attention_entropy``) and CGA's change and the outputs' spread
    (``measures.measure_cga_change``) at t = 261 on one 4-frame clip, per attention grid, and
    the clip gain (``measures.measure_clip_gain``: how much spatial-temporal attention lowers
    the loss on two 4-frame clips, at t = 261 and 500, and at 500 with each clip's first frame
    at ``measures.ANCHOR_T``: ``anchored_clip_gain``), and how far spatial-temporal attention
    and COVE along the true correspondence move the prediction at t = 261 on the first clip
    (``measures.measure_attention_leverage``, per grid for COVE). The UNet and text encoder are
    in eval mode meanwhile, and back in training mode after."""
    from .measures import (ANCHOR_T, measure_attention_entropy, measure_attention_leverage, measure_cga_change,
                           measure_clip_gain)

    modules = [m for m in (pipe.unet, pipe.text_encoder) if m.training]
    for m in modules:
        m.eval()
    try:
        entropy = measure_attention_entropy(pipe, 1, seed, frames=4, ts=(261,))["entropy"]["261"]
        cga = measure_cga_change(pipe, 1, seed, frames=4, ts=(261,))
        gain = measure_clip_gain(pipe, 2, seed, frames=4, ts=(261, 500))["gain"]
        anchored = measure_clip_gain(pipe, 2, seed, frames=4, ts=(500,), anchor_t=ANCHOR_T)["gain"]
        leverage = measure_attention_leverage(pipe, 1, seed, frames=4, ts=(261,))
    finally:
        for m in modules:
            m.train()
    return {"entropy": entropy, "cga_change": cga["change"]["261"], "spread": cga["spread"]["261"],
            "clip_gain": gain, "anchored_clip_gain": anchored, "spatiotemporal_moves": leverage["spatiotemporal"]["261"],
            "cove_true_moves": leverage["cove_true"]["261"]}


def train(argv=None) -> Path:
    args = _parse(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    # Adam's second moments and EMA differences become denormal floats as the loss falls;
    # CPUs handle those ~100x slower. Flushing them to zero changes nothing measurable.
    torch.set_flush_denormal(True)
    device = torch.device(args.device)
    if device.type == "cuda":  # TF32 matrix products: full speed on Ampere and later, fp32 range
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True  # fixed shapes: pick the fastest convolutions once
    with tempfile.TemporaryDirectory() as folder:  # the tokenizer is saved with the pipeline
        tokenizer = build_clip_tokenizer(world.VOCABULARY, Path(folder), max_length=MAX_TOKENS)
    pipe = build_pipeline(tokenizer, seed=args.seed, design=args.design)
    start, ckpt = 0, args.work / "checkpoint.pt"
    if args.init is not None and not (args.resume and ckpt.exists()):
        new = init_weights(pipe.unet, pipe.text_encoder, args.init)  # before anything is written
        start = args.start_at
        print(f"initialised from {args.init} at step {start}"
              + (f" ({len(new)} new tensors, new attention blocks start as the identity)" if new else ""),
              flush=True)
    args.work.mkdir(parents=True, exist_ok=True)
    unet, text = pipe.unet.to(device).train(), pipe.text_encoder.to(device).train()
    params = list(unet.parameters()) + list(text.parameters())
    ema = [p.detach().clone() for p in params]
    opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=0.01,
                            fused=device.type == "cuda")  # one kernel per step on a GPU
    # no loss scaling (the scale stays 1): the scaler skips the optimiser step where a gradient is
    # not finite, on the device (the fused AdamW reads its flag; no wait for the device a step)
    scaler = torch.amp.GradScaler(device.type, init_scale=1.0)
    abar = pipe.scheduler.alphas_cumprod.to(device)  # (1000,)
    if args.resume and ckpt.exists():
        state = torch.load(ckpt, map_location=device)
        if state.get("design", "shipped") != args.design:
            raise ValueError(f"--resume: {ckpt} holds design {state.get('design', 'shipped')!r}, "
                             f"expected {args.design!r} (--design)")
        for p, v in zip(params, state["params"]):
            p.data.copy_(v)
        for e, v in zip(ema, state["ema"]):
            e.copy_(v)
        opt.load_state_dict(state["opt"])
        start = state["step"]
        print(f"resumed at step {start}", flush=True)
    gen = torch.Generator(device=device)  # timesteps and noise drawn where they are used
    log = open(args.work / "log.jsonl", "a")
    probes = open(args.work / "probes.jsonl", "a") if args.probe_every else None
    t0, seen, pending, skipped, skipped_run, stopped = time.time(), 0, [], 0, 0, None
    last = min(args.steps, args.stop_at or args.steps)
    steps = range(start, last)
    fit_from, fit_at = (start + k for k in FIT_STRETCH)  # the steps whose rate fits the schedule
    stream, waited, held = echoed(steps, args, tokenizer), 0.0, None
    n_clips = clip_count(args)
    singles = args.batch - n_clips * args.clip_frames
    for step in steps:
        before = time.time()
        rendered = next(stream)
        waited += time.time() - before  # the time the training loop waits for the renderer
        if rendered is not held:  # a new rendered batch (an echoed one is on the device already)
            held, (x0, ids, objects) = rendered, to_training(rendered, device)  # moved as uint8, floats on the device
        cycle, first, _ = _cycle_at(step, args.cycles)
        if step == first and args.ema_restart[cycle]:  # from the EMA weights, as if --init from an export
            with torch.no_grad():
                for p, e in zip(params, ema):
                    p.copy_(e)
            opt.state.clear()  # fresh moments: AdamW builds them again at its next step
        gen.manual_seed(args.seed * 7919 + step)
        t, eps = draw_noise(gen, tuple(x0.shape), len(abar), args.mid_t[cycle], args.mid_t_range)
        if n_clips and args.clip_t != "each":
            t = clip_timesteps(t, singles, args.clip_frames, args.clip_t)
        z0 = pipe.vae.encode(x0).latent_dist.mean  # (B, 3 f^2, 64 / f, 64 / f): (B, 12, 32, 32) at f = 2
        eps = pipe.vae.encode(eps).latent_dist.mean  # same reshape of the noise
        a = abar[t].view(-1, 1, 1, 1)
        zt = a.sqrt() * z0 + (1 - a).sqrt() * eps
        v = a.sqrt() * eps - (1 - a).sqrt() * z0  # the v-prediction target
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=args.bf16):
            cond = text(ids)[0]  # (B, L, D)
            pred = predict(unet, zt, t, cond, singles, args.clip_frames)
        w = args.object_weight[cycle]
        weights = None if w == 1 else object_weights(objects, tuple(z0.shape[-2:]), w)
        loss = loss_fn(pred.float(), v, weights)
        for g in opt.param_groups:
            g["lr"] = _lr(step, args)
        opt.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(opt)
        norm = torch.nn.utils.clip_grad_norm_(params, 1.0)  # not finite where a gradient is not
        scaler.step(opt)  # skipped where a gradient is not finite
        scaler.update(1.0)
        decay = min(args.ema, (1 + step) / (10 + step))
        with torch.no_grad():
            torch._foreach_lerp_(ema, [p.detach() for p in params], 1 - decay)
        seen += 1
        pending.append((step, loss.detach(), torch.isfinite(norm), time.time()))
        if step == fit_from:
            mark = time.time()
        if args.fit_minutes and step == fit_at and step < last - 1:
            loss.item()  # wait for the device: the rate counts finished steps
            rate = (fit_at - fit_from) / (time.time() - mark)
            last = fit_last_cycle(args, step, rate, 60 * args.minutes - (time.time() - t0))
            print(f"--fit-minutes: {rate:.2f} steps/s, the last cycle now ends at step {last} "
                  f"(cycles {','.join(map(str, args.cycles))})", flush=True)
        out_of_time = args.minutes is not None and time.time() - t0 >= 60 * args.minutes
        if out_of_time and step < last - 1:
            print(f"--minutes {args.minutes:g} spent: stopping after step {step + 1}", flush=True)
            last = step + 1
        if step % 10 == 0 or step == last - 1:  # one wait for the device every 10 steps
            for s_, l_, ok, t_ in pending:  # every step logged
                entry = {"step": s_, "loss": l_.item(), "time": t_}
                if not ok.item():
                    entry["skipped"] = True  # not finite: the weights did not move
                    skipped, skipped_run = skipped + 1, skipped_run + 1
                else:
                    skipped_run = 0
                log.write(json.dumps(entry) + "\n")
            log.flush()
            pending.clear()
            rate = seen / (time.time() - t0)
            eta = (last - step - 1) / max(rate, 1e-9) / 60
            print(f"step {step:5d}/{last} loss {loss.item():.4f} lr {_lr(step, args):.2e} "
                  f"{rate:.2f} it/s ({rate * args.batch:.0f} images/s, {waited / (time.time() - t0):.0%} "
                  f"waiting for data) eta {eta:.0f} min"
                  + (f"; {skipped} steps skipped (gradients not finite)" if skipped else ""), flush=True)
            if skipped_run >= MAX_SKIPPED_RUN and step < last - 1:
                print(f"gradients not finite at the last {skipped_run} steps: stopping after step {step + 1}",
                      flush=True)
                last, stopped = step + 1, "gradients not finite"
        if probes is not None and ((step + 1) % args.probe_every == 0 or step == last - 1):
            try:  # a probe that fails must not cost the run: it says so and probing stops
                figures = probe_attention(pipe, args.seed)
            except Exception as error:  # noqa: BLE001
                print(f"probe failed at step {step + 1} ({type(error).__name__}: {error}); probing off",
                      flush=True)
                probes.close()
                probes = None
            else:
                probes.write(json.dumps({"step": step + 1, **figures}) + "\n")
                probes.flush()
                shown = {key: ", ".join(f"{g} {v:.3f}" for g, v in figures[key].items())
                         for key in ("entropy", "cga_change", "clip_gain", "anchored_clip_gain", "cove_true_moves")}
                print(f"probe at step {step + 1}: entropy {shown['entropy']}; CGA's change {shown['cga_change']}; "
                      f"clip gain at t {shown['clip_gain']}, with a frame at t {ANCHOR_T} {shown['anchored_clip_gain']}; "
                      f"the prediction moves "
                      f"{figures['spatiotemporal_moves']:.3f} under spatial-temporal attention, "
                      f"under COVE on the true correspondence {shown['cove_true_moves']}", flush=True)
        if (step + 1) % args.save_every == 0 or step == last - 1:
            torch.save({"params": [p.detach() for p in params], "ema": ema, "opt": opt.state_dict(),
                        "step": step + 1, "design": args.design}, ckpt.with_suffix(".tmp"))
            ckpt.with_suffix(".tmp").replace(ckpt)
        if step == last - 1:
            break
    with torch.no_grad():  # ship the EMA weights
        for p, e in zip(params, ema):
            p.data.copy_(e)
    unet.eval(), text.eval()
    from diffusers.utils import logging as dlogging

    verbosity = dlogging.get_verbosity()
    dlogging.set_verbosity_error()  # casting notes that concern running a pipeline, not saving one
    for module in (unet, text, pipe.vae):
        module.to("cpu", dtype=getattr(torch, args.export_dtype))
    dlogging.set_verbosity(verbosity)
    args.out.mkdir(parents=True, exist_ok=True)
    pipe.save_pretrained(args.out)
    elapsed = time.time() - t0
    info = {"design": args.design, "steps": args.steps, "cycles": list(args.cycles), "restart_lr": args.restart_lr,
            "object_weight": list(args.object_weight), "mid_t": list(args.mid_t),
            "mid_t_range": list(args.mid_t_range), "ema_restart": list(args.ema_restart),
            "stopped_at": last, "batch": args.batch, "lr": args.lr, "seed": args.seed, "ema": args.ema,
            "device": str(device), "machine": platform.platform(),
            "processor": platform.processor(), "torch": torch.__version__,
            "minutes": round(elapsed / 60, 1), "seconds": round(elapsed, 1),
            "images_per_second": round(seen * args.batch / max(elapsed, 1e-9), 1),
            "data_wait_share": round(waited / max(elapsed, 1e-9), 3),
            "rendered_images_per_second": round(seen * args.batch / args.echo / max(elapsed, 1e-9), 1),
            "workers": args.workers, "bf16": args.bf16, "echo": args.echo, "export_dtype": args.export_dtype,
            "probe_every": args.probe_every, "clips": args.clips, "clip_frames": args.clip_frames,
            "clip_t": args.clip_t, "clips_per_batch": n_clips, "skipped_steps": skipped}
    if stopped:
        info["stopped"] = stopped
    if args.init is not None:
        info["init"] = str(args.init)
        info["start_at"] = args.start_at
    (args.out / "training.json").write_text(json.dumps(info, indent=1))
    print(f"saved {args.out}", flush=True)
    return args.out


def main(argv=None) -> int:
    try:
        train(argv)
    except ValueError as error:  # bad input found after parsing (--init's folder): one line
        print(f"python -m cove.tiny.train: error: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
