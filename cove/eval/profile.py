"""``cove bench profile``: where one denoising step's time goes, COVE against spatial-temporal
attention alone.

One UNet call (classifier-free guidance's two groups of ``F`` frames, no PnP injection) of a
COVE edit and one of a spatial-temporal edit, on ``cove bench speed``'s pipeline
(SD-2.1-base's architecture with random weights, ``speed.build_pipeline``), each after an
untimed warm-up call, run once plainly (the step time) and once under ``torch.profiler``. The
attention functions mark themselves with ``torch.profiler.record_function`` ranges,
``cove::spatiotemporal_attention`` (``cove.processors.spatiotemporal_attention``) and
``cove::guided_attention`` (``cove.attention.guided_attention``), so the time inside each is
read off the profile. The correspondence is ``correspond`` of random unit features on the
CGA grid (a step's cost does not depend on which tokens match), with ``CoveConfig``'s window,
``K`` and merge ratio.

Output: a JSON (``-o``) with, per mode, the step time, the time inside each ``cove::`` range
(CPU time, and device time on CUDA) and the top operators by self device time (self CPU
time on the CPU); the ratio of the step times; the machine. A text table beside it (``.txt``).
"""
from __future__ import annotations

from pathlib import Path

import torch

from .bench import dumps, machine_info

RANGES = ("cove::spatiotemporal_attention", "cove::guided_attention")
MODES = ("spatiotemporal", "cove")


def step_inputs(pipe, frames: int, size: int, seed: int = 0) -> dict:
    """One guided denoising step's UNet inputs for ``frames`` frames of ``size`` pixels square:
    ``latents`` ``(2F, 4, h, w)``, ``t``, ``text`` ``(2F, L, D)`` (unconditional then
    conditional) and the ``Correspondence`` ``(F, N, F, K)`` on the CGA grid."""
    from ..config import CoveConfig
    from ..correspondence import correspond
    from ..features import feature_grid
    from ..sd import encode_text
    from ..window import fit_window

    device, dtype = pipe.device, pipe.unet.dtype
    g = torch.Generator().manual_seed(seed)
    side = size // pipe.vae_scale_factor
    latents = torch.randn(2 * frames, pipe.unet.config.in_channels, side, side, generator=g)
    with torch.no_grad():
        text = torch.cat([encode_text(pipe, [""]).expand(frames, -1, -1),
                          encode_text(pipe, ["a watercolor painting of a car"]).expand(frames, -1, -1)])
    config = CoveConfig()
    grid = feature_grid(pipe, (size, size))
    features = torch.randn(frames, 64, *grid, generator=g)  # (F, C, H, W)
    features = features / features.norm(dim=1, keepdim=True)
    corr = correspond(features.to(device), fit_window(config.window, grid), config.k)
    return {"latents": latents.to(device, dtype), "t": 501, "text": text, "correspondence": corr,
            "merge_ratio": config.merge_ratio}


def _sync(device) -> None:
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def profile_step(pipe, mode: str, inputs: dict, top: int = 15) -> dict:
    """One UNet call in attention ``mode`` after a warm-up call: ``{"step ms", "ranges": {name:
    {"calls", "cpu ms", "device ms"}}, "top ops": [{"op", "self ms", "calls"}], "profiled step
    ms"}``; device times on CUDA (else 0), and the top ops ranked by self device time on CUDA,
    by self CPU time elsewhere."""
    import time

    from torch.profiler import ProfilerActivity, profile

    from ..processors import AttentionState, cove_attention

    device = pipe.device
    cuda = device.type == "cuda"
    state = AttentionState(frames=inputs["latents"].shape[0] // 2, mode=mode,
                           correspondence=inputs["correspondence"] if mode == "cove" else None,
                           merge_ratio=inputs["merge_ratio"])

    def step():
        pipe.unet(inputs["latents"], inputs["t"], inputs["text"])
        _sync(device)

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with torch.no_grad(), cove_attention(pipe.unet, state):
        step()  # warm-up: kernels, allocator
        start = time.perf_counter()
        step()
        plain = time.perf_counter() - start
        with profile(activities=activities) as prof:
            start = time.perf_counter()
            step()
            profiled = time.perf_counter() - start
    events = [e for e in prof.events() if e.device_type == torch.autograd.DeviceType.CPU]
    ranges = {}
    for name in RANGES:
        hits = [e for e in events if e.name == name]
        ranges[name] = {"calls": len(hits), "cpu ms": sum(e.cpu_time_total for e in hits) / 1e3,
                        "device ms": sum(e.device_time_total for e in hits) / 1e3 if cuda else 0.0}
    own = "self_device_time_total" if cuda else "self_cpu_time_total"
    ops = [e for e in prof.key_averages()
           if e.device_type == torch.autograd.DeviceType.CPU and not e.key.startswith(("cove::", "ProfilerStep"))]
    ops = sorted(ops, key=lambda e: getattr(e, own), reverse=True)[:top]
    return {"step ms": plain * 1e3, "profiled step ms": profiled * 1e3, "ranges": ranges,
            "top ops": [{"op": e.key, "self ms": getattr(e, own) / 1e3, "calls": e.count} for e in ops]}


def run(*, arch: str = "small", device: str = "cpu", dtype=torch.float32, frames: int = 2,
        size: int = 64, top: int = 15) -> dict:
    """Both modes' profiles (``profile_step``) of one step on ``speed.build_pipeline(arch)``,
    the ratio of their step times and the machine."""
    from ..attention import cga_ways
    from .speed import build_pipeline

    pipe = build_pipeline(arch, device, dtype, init_on_device=True)
    inputs = step_inputs(pipe, frames, size)
    modes = {mode: profile_step(pipe, mode, inputs, top) for mode in MODES}
    return {"machine": {**machine_info(pipe), "device": str(device), "dtype": str(dtype).replace("torch.", "")},
            "settings": {"arch": arch, "frames": frames, "size": size, "grid": list(inputs["correspondence"].grid),
                         "k": inputs["correspondence"].k, "merge_ratio": inputs["merge_ratio"],
                         "ranked by": "self device time" if torch.device(device).type == "cuda" else "self CPU time"},
            "modes": modes, "cga ways": cga_ways(),
            "step ratio cove / spatiotemporal": modes["cove"]["step ms"] / modes["spatiotemporal"]["step ms"]}


def table(result: dict) -> str:
    """``run``'s result as plain-text tables: the steps and ranges, then each mode's top ops."""
    m, s = result["machine"], result["settings"]
    lines = [f"cove bench profile: {s['arch']}, {m['device']} {m['dtype']}, F={s['frames']}, "
             f"{s['size']}x{s['size']} (CGA grid {s['grid'][0]}x{s['grid'][1]}, K={s['k']}, "
             f"merge {s['merge_ratio']}); {m.get('gpu', m['cpu'])}", ""]
    lines.append(f"{'mode':<16}{'step ms':>10}" + "".join(f"{r + ' cpu/dev ms':>46}" for r in RANGES))
    for mode, p in result["modes"].items():
        cells = "".join(f"{p['ranges'][r]['cpu ms']:>36.2f}/{p['ranges'][r]['device ms']:<9.2f}" for r in RANGES)
        lines.append(f"{mode:<16}{p['step ms']:>10.2f}{cells}")
    lines += [f"step ratio cove / spatiotemporal: {result['step ratio cove / spatiotemporal']:.3f}", ""]
    for mode, p in result["modes"].items():
        lines.append(f"top ops by {s['ranked by']}, {mode} (profiled step {p['profiled step ms']:.2f} ms)")
        lines += [f"  {o['self ms']:>10.3f} ms {o['calls']:>6}x  {o['op']}" for o in p["top ops"]]
        lines.append("")
    return "\n".join(lines)


def write(result: dict, path) -> tuple[Path, Path]:
    """The JSON at ``path`` and ``table(result)`` beside it (``.txt``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(result, digits=4))
    text = path.with_suffix(".txt")
    text.write_text(table(result))
    return path, text


def add_command(bench_commands) -> None:
    """Register ``profile`` on the ``cove bench`` subparsers."""
    p = bench_commands.add_parser(
        "profile", help="torch.profiler of one denoising step, COVE vs spatial-temporal attention",
        description="Profile one UNet call of a COVE edit and of a spatial-temporal edit; writes JSON "
                    "and a text table beside it.")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "fp32", "fp16"), default=None,
                   help="default: float32 on cpu, float16 on cuda")
    p.add_argument("--arch", choices=("sd21", "small"), default=None, help="default: small on cpu, sd21 on cuda")
    p.add_argument("--frames", type=int, default=None, help="F, at least 2 (default: cpu 2, cuda 8)")
    p.add_argument("--size", type=int, default=None, help="frame side in pixels, a multiple of 64 "
                                                          "(default: cpu 64, cuda 512)")
    p.add_argument("-o", "--output", default=None, help="JSON path (default: runs/profile_<cpu|cuda>.json)")
    p.set_defaults(run=main)


def main(args) -> int:
    cuda = args.device.startswith("cuda")
    frames, size = args.frames or (8 if cuda else 2), args.size or (512 if cuda else 64)
    if frames < 2:
        raise ValueError(f"--frames: expected an integer >= 2, got {frames}")
    if size < 64 or size % 64:
        raise ValueError(f"--size: expected a positive multiple of 64, got {size}")
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device: expected a visible device, got cuda without CUDA")
    dtype = torch.float16 if (args.dtype or ("fp16" if cuda else "fp32")) in ("fp16", "float16") else torch.float32
    path = Path(args.output or f"runs/profile_{'cuda' if cuda else 'cpu'}.json")
    result = run(arch=args.arch or ("sd21" if cuda else "small"), device=args.device, dtype=dtype,
                 frames=frames, size=size)
    json_path, text_path = write(result, path)
    for mode, p in result["modes"].items():
        inside = ", ".join(f"{r} {p['ranges'][r]['device ms' if cuda else 'cpu ms']:.1f} ms" for r in RANGES)
        print(f"{mode}: step {p['step ms']:.1f} ms; {inside}")
    print(f"step ratio cove / spatiotemporal: {result['step ratio cove / spatiotemporal']:.3f}")
    print(f"wrote {json_path} and {text_path}")
    return 0
