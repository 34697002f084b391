"""The ``cove`` command: edit a clip, look at its correspondence, or run the demo.

    cove edit clip.mp4 -p "a green star and a blue circle on grass"
    cove correspond clip.mp4 -o matches.mp4
    cove demo -o cove-demo
    cove batch jobs.yaml -o runs/batch      (accelerate launch -m cove.app.batch ... on several)

Heavy libraries (torch, diffusers) load inside the commands so that ``cove --help`` is quick.
Errors the user can fix (missing input, bad size, bad option value) print one line,
``cove: error: <message>``, and exit with status 2, before any model is loaded or frame decoded
(``cove.app.checks``: the device, the input's headers, the outputs, the pixel budget; the peak
memory once the model is known). An output never replaces an input, nor an existing file
without ``--overwrite``. Outputs are written only at the end, each atomically, so a failed or
interrupted run leaves no partial file behind. ``cove edit`` caches the correspondence and
inversion of a clip (``cove.cache``; ``--no-cache``).
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path

from .. import __version__
from ..config import (
    ATTENTION_MODES,
    CORRESPONDENCE_SOURCES,
    CoveConfig,
    config_from_overrides,
)
from ..sd import check_prompts
from .checks import check_input, check_output, fit_or_refuse
from .common import (
    base_settings,
    default_output,
    format_timings,
    load_frames_for,
    make_generator,
    or_default,
    sibling,
    torch_dtype,
)
from .correspond import cmd_correspond

DTYPES = ("float32", "float16", "bfloat16")
# How errors name the prompts and the options that need a source prompt (``cove.sd.check_prompts``).
PROMPT_FLAGS = {"prompt": "--prompt", "source_prompt": "--source-prompt", "negative_prompt": "--negative-prompt",
                "mask": "--mask-threshold", "p2p": "--p2p-steps"}


# ---------------------------------------------------------------------------- helpers


class PhaseProgress:
    """A ``callback`` for ``cove.edit_video``: one tqdm bar per phase (``invert``, ``denoise``).

    Args:
        totals: expected steps per phase, e.g. ``{"invert": 100, "denoise": 50}``.
        disable: no bars at all (``--quiet``).
    """

    def __init__(self, totals: dict[str, int], *, disable: bool = False, file=None):
        self.totals, self.disable, self.file = dict(totals), disable, file or sys.stderr
        self.phase, self.bar = None, None

    def __call__(self, info: dict) -> None:
        phase = info.get("phase", "step")
        if phase != self.phase:
            self.close()
            from tqdm.auto import tqdm

            self.phase = phase
            self.bar = tqdm(
                total=self.totals.get(phase), desc=f"{phase:>8}", unit="step",
                disable=self.disable, file=self.file, leave=True, dynamic_ncols=True,
            )
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        self.phase, self.bar = None, None


# ``cove edit``'s options -> the CoveConfig settings they set (``cove.config.config_from_overrides``).
FLAG_SETTINGS = {"attention": "attention", "k": "k", "window": "window", "merge_ratio": "merge_ratio",
                 "inversion_steps": "inversion_steps", "pnp_steps": "pnp_steps", "guidance": "guidance_scale",
                 "feature_t": "feature_t", "feature_layer": "feature_layer", "strength": "extras.strength",
                 "mask_threshold": "extras.mask_threshold", "mask_dilate": "extras.mask_dilate",
                 "p2p_steps": "extras.p2p_steps", "pnp_resnet_max_t": "extras.pnp_resnet_max_t",
                 "token_chunk": "engine.token_chunk", "frame_chunk": "engine.frame_chunk"}


def config_from_args(args) -> CoveConfig:
    """The ``CoveConfig`` of ``cove edit``'s options: unset options keep the paper's defaults, or
    with ``--settings model`` the model's own (``base_settings``); without --pnp-steps, a new
    --denoise-steps keeps PnP's share of the steps (``CoveConfig.with_denoise_steps``)."""
    settings = base_settings(args)
    base = settings.config
    if args.denoise_steps is not None:
        base = base.with_denoise_steps(args.denoise_steps)  # the options below may still set pnp_steps
    default = base.extras
    p2p_steps, mask_threshold = or_default(args.p2p_steps, default.p2p_steps), or_default(args.mask_threshold, default.mask_threshold)
    if settings.path is not None and not args.source_prompt.strip():
        inherited = [f"extras.{name} = {value}" for name, value, flag in
                     (("p2p_steps", p2p_steps, args.p2p_steps), ("mask_threshold", mask_threshold, args.mask_threshold))
                     if flag is None and value]
        if inherited:
            raise ValueError(f"the model's settings ({settings.path.name}: {', '.join(inherited)}) read the source "
                             "prompt; expected --source-prompt describing the input (or --settings paper)")
    check_prompts(args.prompt, args.source_prompt, or_default(args.negative_prompt, ""),
                  mask=mask_threshold is not None, p2p=bool(p2p_steps), names=PROMPT_FLAGS)
    if (args.mask_dilate is not None or args.mask_fill_holes) and mask_threshold is None:
        raise ValueError("--mask-dilate and --mask-fill-holes shape the edit mask; "
                         "expected --mask-threshold too")
    given = {key: getattr(args, flag) for flag, key in FLAG_SETTINGS.items() if getattr(args, flag) is not None}
    if args.mask_fill_holes:
        given["extras.mask_fill_holes"] = True
    return config_from_overrides(given, base)


def negative_from_args(args) -> str:
    """--negative-prompt, else the policy of the settings the command starts from
    (``cove.recommended.negative_prompt``: the paper's is empty)."""
    from ..recommended import negative_prompt

    if args.negative_prompt is not None:
        return args.negative_prompt
    return negative_prompt(args.source_prompt, base_settings(args).negative)


# ---------------------------------------------------------------------------- cove edit


def cmd_edit(args) -> int:
    from . import io

    out = check_output(args.output or default_output(args.input))
    side = sibling(out, "side_by_side")
    config, negative = config_from_args(args), negative_from_args(args)
    count = check_input(args, [out, side], args.size)  # before loading a model
    timings = {}
    start = time.perf_counter()
    from ..cache import Cache
    from ..loading import load_pipeline
    from ..pipeline import denoise_timesteps, edit_video, inversion_timesteps

    pipe = load_pipeline(args.model, device=args.device, dtype=torch_dtype(args.dtype))
    fit_or_refuse(pipe, count, args, config)  # before decoding a frame
    timings["load model"] = time.perf_counter() - start

    tick = time.perf_counter()
    frames = load_frames_for(pipe, args)  # (F, H, W, 3)
    timings["read video"] = time.perf_counter() - tick
    F, H, W, _ = frames.shape
    print(f"cove edit: {F} frames of {H}x{W}, model {args.model}, {args.settings}'s settings, attention {config.attention}")

    progress = PhaseProgress(
        {"invert": len(inversion_timesteps(pipe, config)), "denoise": len(denoise_timesteps(pipe, config))}, disable=args.quiet
    )
    tick = time.perf_counter()
    try:
        result = edit_video(
            pipe, frames, args.prompt, source_prompt=args.source_prompt, negative_prompt=negative,
            config=config, callback=progress, generator=make_generator(pipe, args.seed),
            cache=None if args.no_cache else Cache(),
        )
    finally:
        progress.close()
    timings["edit"] = time.perf_counter() - tick
    timings.update({f"  {k}": v for k, v in result.timings.items() if k != "total"})  # its stages

    tick = time.perf_counter()
    labels = ["source", f"{config.attention}: {args.prompt}"]
    both = io.side_by_side(frames, result.frames, labels=labels)  # (F, H + bar, 2W, 3)
    io.write_all({out: result.frames, side: both}, fps=args.fps)
    timings["write"] = time.perf_counter() - tick
    timings["total"] = time.perf_counter() - start
    print(f"wrote {out}\nwrote {side}")
    print("timings:\n" + format_timings(timings))
    return 0


# ---------------------------------------------------------------------------- cove demo


def cmd_demo(args) -> int:
    from ..sd import check_device
    from .demo import format_summary, run_demo

    check_device(args.device)
    start = time.perf_counter()
    summary = run_demo(args.output, quick=args.quick, device=args.device)
    print(format_summary(summary))
    print(f"demo done in {time.perf_counter() - start:.1f} s; outputs in {args.output}")
    return 0


# ---------------------------------------------------------------------------- parser


class Parser(argparse.ArgumentParser):
    """argparse with one-line usage errors (``cove edit: error: ...``), exit status 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message.splitlines()[0] if message else 'bad usage'}\n")


def _add_feature_options(p) -> None:
    defaults = CoveConfig()
    p.add_argument("--settings", choices=("paper", "model"), default="paper",
                   help="what unset options default to: the paper's settings, or the model's own, measured on it "
                        "(its folder's cove_settings.json; cove-tiny's: cove.tiny.presets.edit_config) "
                        "(default: paper)")
    p.add_argument("--feature-t", type=int, default=None, metavar="T",
                   help=f"noise level of the diffusion features, 0-999 (default: {defaults.feature_t}, the "
                        "paper's for Stable Diffusion; with --settings model the model's: 50 on cove-tiny)")
    p.add_argument("--feature-layer", default=None, metavar="NAME",
                   help="UNet block whose output is the features, e.g. up_blocks.0 (default: the last decoder "
                        "block on the finest attention grid: up_blocks.3 on SD 2.1; with --settings model the model's)")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < math.inf:
        raise argparse.ArgumentTypeError(f"expected a finite number > 0, got {text}")
    return value


def _add_model_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default="cove-tiny",
                   help="'cove-tiny' (embedded, 64x64), a diffusers folder or a hub id (default: cove-tiny)")
    p.add_argument("--frames", type=_positive_int, default=None, metavar="N",
                   help="keep N evenly spaced frames (default: all)")
    p.add_argument("--size", type=_positive_int, default=None, metavar="S",
                   help="centre-crop to a square and resize to SxS (default: the model's own size)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu)")
    p.add_argument("--dtype", choices=DTYPES, default=None, help="default: float32 on cpu, float16 on cuda")
    p.add_argument("--fps", type=_positive_float, default=8.0,
                   help="frame rate of the written videos (default: 8)")
    p.add_argument("--overwrite", action="store_true", help="replace existing outputs (never an input)")


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
        prog="cove",
        description="COVE: correspondence-guided consistent video editing (NeurIPS 2024).",
    )
    parser.add_argument("--version", action="version", version=f"cove {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    edit = commands.add_parser("edit", help="edit a clip with a text prompt",
                               description="Invert a clip and regenerate it with a new prompt.")
    edit.add_argument("input", help="a video (.mp4 ...), a .gif, or a folder of .png/.jpg frames")
    edit.add_argument("-p", "--prompt", required=True, help="the target prompt")
    edit.add_argument("--source-prompt", default="", help="a prompt describing the input (default: empty)")
    edit.add_argument("--negative-prompt", default=None,
                      help="the unconditional side of guidance (default: empty, or the model's policy with "
                           "--settings model; the source prompt guides along target minus source only)")
    edit.add_argument("-o", "--output", type=Path, default=None,
                      help="output .mp4 or .gif (default: <input stem>_edited.mp4 next to the input)")
    _add_model_options(edit)
    defaults = CoveConfig()
    edit.add_argument("--attention", choices=ATTENTION_MODES, default=None,
                      help=f"default: {defaults.attention}")
    edit.add_argument("--k", type=_positive_int, default=None, help=f"matches per frame (default: {defaults.k})")
    edit.add_argument("--window", type=_positive_int, default=None, help=f"window side l (default: {defaults.window})")
    edit.add_argument("--merge-ratio", type=float, default=None,
                      help="token merging ratio (default: 0, no merging; the paper: 0.5)")
    edit.add_argument("--token-chunk", type=_positive_int, default=None, metavar="N",
                      help="tokens per CGA block (default: blocks sized by CGA's memory bound)")
    edit.add_argument("--frame-chunk", type=_positive_int, default=None, metavar="N",
                      help="query frames per spatial-temporal attention call and CGA block (default: all)")
    _add_feature_options(edit)
    edit.add_argument("--inversion-steps", type=_positive_int, default=None, metavar="N",
                      help=f"DDIM inversion steps (default: {defaults.inversion_steps})")
    edit.add_argument("--denoise-steps", type=_positive_int, default=None, metavar="N",
                      help=f"DDIM denoising steps (default: {defaults.denoise_steps})")
    edit.add_argument("--pnp-steps", type=int, default=None, metavar="N",
                      help="denoising steps with plug-and-play injection (default: 80%% of --denoise-steps)")
    edit.add_argument("--pnp-resnet-max-t", type=int, default=None, metavar="T",
                      help="inject PnP's ResNet features only at denoising timesteps below T (1-1000), "
                           "so that early steps may change colour (default: every PnP step, as PnP)")
    edit.add_argument("--guidance", type=float, default=None, metavar="G",
                      help=f"classifier-free guidance scale (default: {defaults.guidance_scale})")
    edit.add_argument("--strength", type=float, default=None, metavar="S",
                      help=f"fraction of the denoising schedule run, (0, 1] (default: {defaults.extras.strength}, "
                           "the paper; lower keeps more of the source)")
    edit.add_argument("--mask-threshold", type=float, default=None, metavar="T",
                      help="keep the input outside an edit mask: where the source and target prompts' "
                           "noise predictions differ by more than T (0-1) of the frame's largest "
                           "difference (DiffEdit; needs --source-prompt; default: no mask, the paper)")
    edit.add_argument("--mask-dilate", type=int, default=None, metavar="N",
                      help=f"grow the edit mask by N cells (default: {defaults.extras.mask_dilate}; "
                           "cove-tiny's gate and demo: 0)")
    edit.add_argument("--mask-fill-holes", action="store_true",
                      help="also edit the cells the edit mask encloses (as cove-tiny's gate and demo do)")
    edit.add_argument("--p2p-steps", type=int, default=None, metavar="N",
                      help="prompt-to-prompt word swap: in the first N denoising steps each word of "
                           "--prompt reuses the cross-attention map of its counterpart in "
                           "--source-prompt (needs --source-prompt; default: 0, the paper)")
    edit.add_argument("--no-cache", action="store_true",
                      help="recompute the correspondence and the inversion instead of reusing them "
                           "from the cache ($COVE_CACHE, default ~/.cache/cove)")
    edit.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    edit.set_defaults(run=cmd_edit)

    corr = commands.add_parser("correspond", help="compute and draw a clip's correspondence",
                               description="Draw where a grid of frame-0 points goes in every frame; "
                                           "also save index/score (F, N, F, K) to OUT with suffix .pt.")
    corr.add_argument("input", help="a video (.mp4 ...), a .gif, or a folder of .png/.jpg frames")
    corr.add_argument("-o", "--output", type=Path, required=True, help="output .mp4 or .gif")
    _add_model_options(corr)
    corr.add_argument("--k", type=_positive_int, default=None, help=f"matches per frame (default: {defaults.k})")
    corr.add_argument("--window", type=_positive_int, default=None, help=f"window side l (default: {defaults.window})")
    _add_feature_options(corr)
    corr.add_argument("--source", choices=CORRESPONDENCE_SOURCES, default="diffusion",
                      help="diffusion features (COVE) or OpenCV optical flow (default: diffusion)")
    corr.add_argument("--grid", type=_positive_int, nargs=2, default=None, metavar=("H", "W"),
                      help="token grid for --source flow (default: frame size / 8)")
    corr.set_defaults(run=cmd_correspond)

    demo = commands.add_parser("demo", help="edit the bundled ShapesWorld clip and score it",
                               description="Edit the bundled clip with COVE and per-frame editing, "
                                           "write videos and metrics.json.")
    demo.add_argument("-o", "--output", default="cove-demo", help="output folder (default: cove-demo)")
    demo.add_argument("--quick", action="store_true", help="fewer steps (a smoke test, not a result)")
    demo.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cpu)")
    demo.set_defaults(run=cmd_demo)

    from .batch import add_arguments as add_batch_arguments
    from .batch import cmd_batch

    batch = commands.add_parser("batch", help="run a list of edits or correspondences (YAML / JSONL)",
                                description="Run every job of a list, skipping those already complete; "
                                            "with `accelerate launch -m cove.app.batch` on several processes.")
    add_batch_arguments(batch)
    batch.set_defaults(run=cmd_batch)

    from ..eval.paper import add_command as add_bench_paper
    from ..eval.profile import add_command as add_bench_profile
    from ..eval.speed import add_command as add_bench_speed

    bench = add_bench_speed(commands)  # `cove bench speed`, and the `bench` subcommands
    add_bench_paper(bench)
    add_bench_profile(bench)
    return parser


def _one_line(error: BaseException) -> str:
    text = str(error).strip() or type(error).__name__
    return text.splitlines()[0]


def _say(text: str) -> None:
    """An error line on stderr, once: under ``accelerate launch`` only the main process (rank 0)
    prints it, the others exit with the same status silently."""
    if os.environ.get("RANK", "0") == "0":
        print(text, file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the ``cove`` command line; returns the exit status (0 ok, 2 usage or input error)."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:  # --help, --version, or an argparse usage error
        return exit_.code if isinstance(exit_.code, int) else 2
    try:
        return args.run(args)
    except (ValueError, OSError) as error:  # FileNotFoundError is an OSError
        _say(f"cove: error: {_one_line(error)}")
        return 2
    except RuntimeError as error:  # the allocator's refusal, should the estimate be too low
        if "out of memory" not in str(error).lower():
            raise
        _say(f"cove: error: out of memory ({_one_line(error)}); reduce --size or --frames")
        return 2
    except KeyboardInterrupt:  # outputs are written atomically at the end: nothing partial
        _say("cove: interrupted")
        return 130


if __name__ == "__main__":
    sys.exit(main())
