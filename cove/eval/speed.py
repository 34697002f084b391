"""``cove bench speed``: time and peak memory of COVE at Stable Diffusion's shapes.

Sections of the JSON it writes (each ``{"note", "rows"}``; the docs' benchmarks page draws
them):

- ``correspondence``: ``correspond`` vs the naive all-pairs search (every token against every
  token of the next frame, then the same windows, top-K and chaining) on the same random
  features, and whether the matches are identical;
- ``correspondence_agreement``: how many matches of the tiled search, the all-pairs product
  and the naive reference differ (``cove.correspondence.match_agreement``), on random and on
  spatially smooth features, in float32 and in the run's dtype;
- ``merging``: ``guided_attention`` with merge ratio 0 and 0.5;
- ``attention_layer``: one SD self-attention layer of the 64x64 level (320 channels, 5 heads)
  in each attention mode, CGA's blocks against the whole-layer gather, and CGA computed by
  ``scaled_dot_product_attention`` against the per-head products;
- ``edit``: whole edits per attention mode, frame count and PnP store, per-stage time and peak
  memory, with the paper's Table 3 beside them; ``estimate`` extrapolates the peak linearly in
  ``F`` (the PnP store off the device and CGA's blocks keep it linear).

The SD-2.1-base architecture is built from its public config with random weights (timings do
not depend on weight values); ``--arch small`` is the same architecture with narrow layers,
for CPUs and tests. Peak memory is ``torch.cuda.max_memory_allocated`` on CUDA and the growth
of the process's peak resident memory (``VmHWM``) on CPU.
"""
from __future__ import annotations

import tempfile
import time
from contextlib import contextmanager, nullcontext
from pathlib import Path

import numpy as np
import torch

from .bench import correspondence_gflop, dumps, machine_info

PAPER_TABLE3 = [  # 10 frames, RTX 3090, Stable Diffusion 2.1 (paper, Table 3)
    {"setting": "spatial-temporal", "minutes": 2.2, "GB": 9},
    {"setting": "+ CGA", "minutes": 2.7, "GB": 14},
    {"setting": "+ CGA + merging", "minutes": 2.4, "GB": 11},
]


def sd21_parts(arch: str = "sd21", vocab: int = 49408):
    """UNet, VAE and text encoder of SD-2.1-base (public config), randomly initialised.

    ``arch="small"``: the same blocks with 1/10 of the channels (for CPUs and tests).
    """
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    if arch not in ("sd21", "small"):
        raise ValueError(f"arch must be 'sd21' or 'small', got {arch!r}")
    big = arch == "sd21"
    width = (320, 640, 1280, 1280) if big else (32, 64, 128, 128)
    text = 1024 if big else 64
    unet = UNet2DConditionModel(
        sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=width,
        down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
        attention_head_dim=[5, 10, 20, 20] if big else [1, 2, 4, 4],  # SD2: the number of heads
        cross_attention_dim=text, use_linear_projection=True, norm_num_groups=32 if big else 8,
    )
    vae = AutoencoderKL(
        in_channels=3, out_channels=3, latent_channels=4, layers_per_block=2, sample_size=512,
        block_out_channels=(128, 256, 512, 512) if big else (16, 32, 64, 64),
        down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
        norm_num_groups=32 if big else 8,
    )
    encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=vocab, hidden_size=text, intermediate_size=4 * text, num_hidden_layers=23 if big else 2,
        num_attention_heads=16 if big else 2, max_position_embeddings=77, hidden_act="gelu",
        projection_dim=512 if big else 64,
    ))
    return unet, vae, encoder


def build_pipeline(arch: str = "sd21", device: str = "cpu", dtype=torch.float32, seed: int = 0, *,
                   init_on_device: bool = False):
    """A ``StableDiffusionPipeline`` of SD-2.1-base's architecture with random weights (no
    download); checks that the 64x64 self-attention has 64-dim heads, as SD 2.1's.

    ``init_on_device``: create and initialise the weights on ``device`` itself (seconds on a
    GPU instead of a CPU's initialisation of SD 2.1's 1.3 B parameters); the random weights
    then come from ``device``'s generator, so they differ from the CPU's."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    from ..tiny.tokenizer import build_clip_tokenizer

    torch.manual_seed(seed)
    words = ["a", "red", "green", "car", "on", "road", "watercolor", "painting", "of"]
    tokenizer = build_clip_tokenizer(words, tempfile.mkdtemp(prefix="cove-speed-"), max_length=77)
    with torch.device(device) if init_on_device else nullcontext():
        unet, vae, encoder = sd21_parts(arch, vocab=len(tokenizer))
    encoder.config.bos_token_id, encoder.config.eos_token_id = tokenizer.bos_token_id, tokenizer.eos_token_id
    attn = unet.up_blocks[3].attentions[0].transformer_blocks[0].attn1  # the 64x64 level
    if arch == "sd21" and (attn.heads != 5 or attn.to_q.out_features // attn.heads != 64):
        raise RuntimeError(f"not SD 2.1's attention: {attn.heads} heads of {attn.to_q.out_features // attn.heads}")
    scheduler = DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear",
                              clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device, dtype)


# -- measuring --------------------------------------------------------------------------------


def _rss_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


@contextmanager
def measure(device):
    """``with measure(device) as m: ...`` -> ``m["s"]`` seconds, ``m["MB"]`` peak memory above
    the start (CUDA: allocated; CPU: resident, from ``/proc/self``)."""
    device = torch.device(device)
    out = {}
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident size
        except OSError:
            pass
        base = _rss_mb("VmRSS")
    start = time.perf_counter()
    yield out
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        out["MB"] = (torch.cuda.max_memory_allocated(device) - base) / 2**20
    else:
        out["MB"] = _rss_mb("VmHWM") - base
    out["s"] = time.perf_counter() - start


def _features(frames, channels, grid, device, dtype, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(frames, channels, *grid, generator=g)
    return (x / x.norm(dim=1, keepdim=True)).to(device, dtype)  # (F, C, H, W)


def naive_correspond(features, window: int, k: int):
    """All-pairs baseline: every token against every token of the next (previous) frame, then
    the same windows, top-K and chaining as ``correspond``, ties to the lower token index (a
    stable sort of each row-major window). Returns ``(index, score)``, each ``(F, N, F, K)``."""
    from ..correspondence import correspond

    F, C, H, W = features.shape
    _ = correspond(features[:1], window, k)  # validates the arguments
    from ..window import grid_cells, window_indices

    cells = window_indices(grid_cells((H, W), features.device), window, (H, W))  # (N, l*l)
    index = torch.arange(H * W, device=features.device)[None, :, None, None].repeat(F, 1, F, k)
    score = torch.ones(F, H * W, F, k, dtype=features.dtype, device=features.device)
    steps = {}
    for a, b in [(i, i + 1) for i in range(F - 1)] + [(i + 1, i) for i in range(F - 1)]:
        sim = features[a].flatten(1).T @ features[b].flatten(1)  # (N, N) every pair of tokens
        top, pick = sim.gather(1, cells).sort(dim=-1, descending=True, stable=True)  # (N, l*l) window
        top, pick = top[:, :k], pick[:, :k]  # (N, K): equal scores keep the lower index first
        steps[a, b] = (cells.gather(1, pick), top)
    for i in range(F):  # the chains, one frame at a time
        for step in (1, -1):
            current = torch.arange(H * W, device=features.device)
            j = i + step
            while 0 <= j < F:
                found, top = steps[j - step, j]
                index[i, :, j], score[i, :, j] = found[current], top[current]
                current = found[current, 0]
                j += step
    return index, score


def bench_correspondence(device, dtype, frames=10, grid=(64, 64), channels=320, window=9, k=3, repeats=3):
    """``correspond`` with each search (tiled windows, all-pairs product) against
    ``naive_correspond`` on the same random unit features: best time of ``repeats`` interleaved
    runs each after a warm-up, peak memory, FLOPs, and whether the matches agree."""
    from ..correspondence import correspond, similarity_dtype

    feats = _features(frames, channels, grid, device, dtype)
    runs = {"tiled": lambda: correspond(feats, window, k, search="tiled"),
            "allpairs": lambda: correspond(feats, window, k, search="allpairs"),
            "naive": lambda: naive_correspond(feats.to(similarity_dtype(dtype, device)), window, k)}
    best, found = {}, {}
    for name, fn in runs.items():
        fn()  # warm-up: plans, kernels, allocator
    for _ in range(repeats):  # interleaved, best of `repeats`: a shared machine's noise hits all
        for name, fn in runs.items():
            with measure(device) as m:
                found[name] = fn()
            old = best.get(name, {"s": float("inf"), "MB": 0.0})
            best[name] = {"s": min(old["s"], m["s"]), "MB": max(old["MB"], m["MB"])}
    naive_index = found["naive"][0]
    same = all(torch.equal(found[n].index.long(), naive_index) for n in ("tiled", "allpairs"))
    work = 2 * correspondence_gflop(frames, grid, channels, window)
    allpairs = 2 * 2 * (frames - 1) * (grid[0] * grid[1]) ** 2 * channels / 1e9
    auto = "allpairs" if torch.device(device).type == "cuda" else "tiled"
    return [{"method": "correspond, tiled windows", "s": best["tiled"]["s"], "MB": best["tiled"]["MB"], "GFLOP": work},
            {"method": "correspond, all-pairs product", "s": best["allpairs"]["s"], "MB": best["allpairs"]["MB"],
             "GFLOP": allpairs},
            {"method": "naive all-pairs", "s": best["naive"]["s"], "MB": best["naive"]["MB"], "GFLOP": allpairs},
            {"method": f"speed-up (auto = {auto})", "s": best["naive"]["s"] / best[auto]["s"],
             "identical matches": same,
             "similarities in": str(similarity_dtype(dtype, device)).replace("torch.", ""),
             "shape": f"F={frames}, {grid[0]}x{grid[1]}, C={channels}, l={window}, K={k}, {str(dtype).replace('torch.', '')}"}]


def smooth_features(frames, channels, grid, device, dtype, seed=0, factor=8):
    """Unit ``(F, C, H, W)`` features that vary slowly in space: random ``(F, C, H/factor,
    W/factor)`` upsampled bilinearly, so that neighbouring cells are nearly equal (and those
    the upsampling replicates at the borders exactly equal), as in diffusion features."""
    g = torch.Generator().manual_seed(seed)
    low = torch.randn(frames, channels, max(2, grid[0] // factor), max(2, grid[1] // factor), generator=g)
    x = torch.nn.functional.interpolate(low, size=grid, mode="bilinear", align_corners=False)  # (F, C, H, W)
    return (x / x.norm(dim=1, keepdim=True)).to(device, dtype)


def bench_agreement(device, dtype, frames=10, grid=(64, 64), channels=320, window=9, k=3):
    """``match_agreement`` of the tiled search, the all-pairs product and ``naive_correspond``
    (the reference), pair by pair, on random and on spatially smooth unit features, in float32
    and in ``dtype``. All three compare in ``similarity_dtype`` (float64 for half features, whose
    similarities are then exact) and send ties to the lower index, so what can differ are
    near-ties within the rounding of float32 dot products, in float32 only."""
    from ..correspondence import Correspondence, correspond, match_agreement, similarity_dtype

    rows = []
    for kind, make in (("random", _features), ("smooth", smooth_features)):
        for dt in dict.fromkeys((torch.float32, dtype)):  # float32, then the run's dtype if other
            feats = make(frames, channels, grid, device, dt)
            found = {search: correspond(feats, window, k, search=search) for search in ("tiled", "allpairs")}
            found["naive"] = Correspondence(*naive_correspond(feats.to(similarity_dtype(dt, device)), window, k), grid)
            for a, b in (("tiled", "naive"), ("allpairs", "naive"), ("tiled", "allpairs")):
                rows.append({"features": kind, "dtype": str(dt).replace("torch.", ""), "pair": f"{a} vs {b}",
                             **match_agreement(found[a], found[b])})
    return rows


def agreement_note(rows) -> str:
    """One line on ``bench_agreement``'s rows: the differing matches of each search against
    the reference."""
    parts = [f"{r['pair'].split(' vs ')[0]} {r['features']} {r['dtype']}: {r['differing']}"
             for r in rows if r["pair"].endswith("naive")]
    return (f"Matches differing from the naive reference (of {rows[0]['matches']} each; only ties "
            "within float32 rounding can differ, half features being compared exactly in float64): "
            + ", ".join(parts) + ".")


def bench_merging(device, dtype, frames=10, grid=(64, 64), channels=320, heads=5, k=3):
    from ..attention import guided_attention

    N = grid[0] * grid[1]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(frames, N, channels, generator=g).to(device, dtype)
    index = torch.randint(0, N, (frames, N, frames, k), generator=g).to(device, torch.int16)
    rows = []
    for ratio in (0.0, 0.5):
        guided_attention(x, x, x, index, heads, merge_ratio=ratio)  # warm-up
        with measure(device) as m:
            guided_attention(x, x, x, index, heads, merge_ratio=ratio)
        rows.append({"merge_ratio": ratio, "s": m["s"], "MB": m["MB"],
                     "shape": f"F={frames}, N={N}, C={channels}, {heads} heads, K={k}"})
    rows.append({"merge_ratio": "0.5 / 0", "s": rows[1]["s"] / rows[0]["s"], "MB": rows[1]["MB"] / max(rows[0]["MB"], 1e-9)})
    return rows


def merging_note(rows) -> str:
    """One line on ``bench_merging``'s rows that says which way the figures go."""
    time, memory = rows[2]["s"], rows[2]["MB"]
    verdict = ("the matching costs more time than it saves" if time > 1 else
               "it saves time here" if memory <= 1 else "it saves time but costs memory")
    return (f"Merging half of CGA's keys takes {time:.2f}x the time of no merging and {memory:.2f}x "
            f"its memory: {verdict}.")


def bench_layer(device, dtype, frames=8, grid=(64, 64), channels=320, heads=5, k=3):
    """One SD self-attention layer (``attn1`` of the 64x64 level) with classifier-free
    guidance's two groups, per attention mode; CGA in blocks (default: its way of computing
    chosen by ``cove.attention.fused_is_faster``), whole (one block), and each way forced:
    ``scaled_dot_product_attention`` and the per-head products."""
    from diffusers.models.attention_processor import Attention

    from ..correspondence import Correspondence
    from ..processors import AttentionState, CoveAttnProcessor

    torch.manual_seed(0)
    attn = Attention(query_dim=channels, heads=heads, dim_head=channels // heads).to(device, dtype)
    N = grid[0] * grid[1]
    g = torch.Generator().manual_seed(0)
    hidden = torch.randn(2 * frames, N, channels, generator=g).to(device, dtype)  # (G*F, N, C)
    index = torch.randint(0, N, (frames, N, frames, k), generator=g).to(torch.int16)
    corr = Correspondence(index, torch.ones(index.shape), grid)
    rows = []
    for label, mode, chunk, fused in [("per-frame", "per-frame", None, None),
                                      ("spatiotemporal", "spatiotemporal", None, None),
                                      ("cove (blocks)", "cove", None, None), ("cove (one block)", "cove", N, None),
                                      ("cove, CGA by SDPA", "cove", None, True),
                                      ("cove, CGA by products", "cove", None, False)]:
        state = AttentionState(frames=frames, mode=mode, correspondence=corr, token_chunk=chunk, cga_fused=fused)
        proc = CoveAttnProcessor("attn1", state)
        times, peak = [], 0.0
        with torch.no_grad():
            proc(attn, hidden)  # warm-up
            for _ in range(3):
                with measure(device) as m:
                    proc(attn, hidden)
                times.append(m["s"])
                peak = max(peak, m["MB"])
        rows.append({"mode": label, "s": min(times), "MB": peak})
    for row in rows:
        row["MB / per-frame"] = row["MB"] / max(rows[0]["MB"], 1e-9)
    return rows


def layer_note(rows) -> str:
    """One sentence on ``bench_layer``'s rows: CGA's own time (the cove layer's less the
    spatial-temporal one's) by each way of computing it, and the default's."""
    by = {r["mode"]: r["s"] for r in rows}
    st = by["spatiotemporal"]
    cga = {name: (by[f"cove{suffix}"] - st) * 1e3 for name, suffix in
           (("default", " (blocks)"), ("SDPA", ", CGA by SDPA"), ("products", ", CGA by products"))}
    faster = "SDPA" if cga["SDPA"] <= cga["products"] else "the per-head products"
    return (f"CGA itself adds {cga['SDPA']:.2f} ms by SDPA and {cga['products']:.2f} ms by the per-head "
            f"products ({faster} faster) to the spatial-temporal layer's {st * 1e3:.2f} ms; "
            f"the default way adds {cga['default']:.2f} ms.")


def _edit_stages(pipe, clip, mode, store, config, stage=None):
    """One edit of ``clip`` (uint8 (F, H, W, 3)) in attention ``mode``; each stage's seconds
    and peak MB into ``stage`` (a dict) when given."""
    from ..pipeline import compute_correspondence, denoise, invert, start_latents
    from ..processors import AttentionState, pnp_layers
    from ..sd import decode_latents, encode_frames, encode_text, pnp_store_for

    device, F = pipe.device, len(clip)
    store = pnp_store_for(pipe, F, *clip.shape[1:3], config)  # "auto" made "device" or "host"
    stage = {} if stage is None else stage
    corr = None
    if mode == "cove":
        with measure(device) as stage["correspondence"]:
            corr, t = compute_correspondence(pipe, clip, config, torch.Generator().manual_seed(0))
    with measure(device) as stage["encode"]:
        latents = encode_frames(pipe, clip)
    resnets, attentions = pnp_layers(pipe.unet)
    state = AttentionState(frames=F, mode=mode, correspondence=corr, merge_ratio=config.merge_ratio,
                           pnp_attentions=attentions, pnp_resnets=resnets, pnp_store=store)
    with measure(device) as stage["inversion"]:
        trajectory = invert(pipe, latents, config=config, state=state)
    text = encode_text(pipe, ["a watercolor painting of a car"]).expand(F, -1, -1)
    empty = encode_text(pipe, [""]).expand(F, -1, -1)
    source = ({**trajectory, -1: latents}, empty) if store == "recompute" else None
    with measure(device) as stage["denoising"]:
        x0 = denoise(pipe, start_latents(pipe, trajectory, config), text, empty,
                     config=config, state=state, pnp_source=source)
    with measure(device) as stage["decode"]:
        decode_latents(pipe, x0)
    state.store.clear()
    return stage


def edit_flops(pipe, clip, mode, store, config) -> float:
    """Floating-point operations of one whole edit (``torch.utils.flop_counter``: matrix
    products, convolutions and attention kernels; 2 per multiply-add)."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        _edit_stages(pipe, clip, mode, store, config)
    return float(counter.get_total_flops())


def bench_edit(pipe, frames_list, size, modes, stores, steps, flops: bool = False):
    """Whole edits: per-stage seconds and peak MB per mode, frame count and PnP store, after one
    untimed warm-up edit (kernel selection, allocator, caches). With ``flops``: the edit's
    floating-point operations (counted in a separate, untimed run) and the achieved TFLOP/s."""
    from ..config import CoveConfig, EngineOptions
    from ..sd import pnp_store_for

    device = pipe.device
    inv, den = steps

    def config_for(mode, store):
        return CoveConfig(attention=mode, inversion_steps=inv, denoise_steps=den,
                          pnp_steps=max(1, round(0.8 * den)), engine=EngineOptions(pnp_store=store))

    rng = np.random.default_rng(0)
    warm = (rng.random((min(frames_list), size, size, 3)) * 255).astype(np.uint8)
    for mode in modes:  # warm-up: every mode's kernels once, untimed
        _edit_stages(pipe, warm[:2], mode, stores[0], config_for(mode, stores[0]))
    rows = []
    for F in frames_list:
        clip = (np.random.default_rng(0).random((F, size, size, 3)) * 255).astype(np.uint8)
        for mode in modes:
            for store in stores:
                config = config_for(mode, store)
                row, stage = {"frames": F, "mode": mode, "pnp_store": store}, {}
                if store == "auto":
                    row["store used"] = pnp_store_for(pipe, F, size, size, config)
                with measure(device) as total:
                    _edit_stages(pipe, clip, mode, store, config, stage)
                for name, m in stage.items():
                    row[f"{name} s"], row[f"{name} MB"] = m["s"], m["MB"]
                row["total s"], row["peak MB"] = total["s"], total["MB"]
                if flops:
                    row["TFLOP"] = edit_flops(pipe, clip, mode, store, config) / 1e12
                    row["TFLOP/s"] = row["TFLOP"] / total["s"]
                rows.append(row)
    return rows


def edit_ratios(rows) -> list[dict]:
    """COVE over spatial-temporal (time, peak) per frame count and store, and the peak MB
    extrapolated linearly to 128 frames from the two largest frame counts: of the whole edit,
    and of the UNet stages alone (inversion, denoising), since the VAE's stages stop growing
    at its batch of 8 frames (``cove.sd.encode_frames`` / ``decode_latents``)."""
    out = []
    by = {(r["frames"], r["mode"], r["pnp_store"]): r for r in rows}
    for (F, mode, store), r in by.items():
        base = by.get((F, "spatiotemporal", store))
        if mode == "cove" and base:
            out.append({"frames": F, "pnp_store": store, "time cove / st": r["total s"] / base["total s"],
                        "peak cove / st": r["peak MB"] / max(base["peak MB"], 1e-9)})
    for (mode, store) in sorted({(m, s) for _, m, s in by}):
        pts = sorted((F, r["peak MB"], max(r["inversion MB"], r["denoising MB"]))
                     for (F, m, s), r in by.items() if (m, s) == (mode, store))
        if len(pts) >= 2:
            (f0, m0, u0), (f1, m1, u1) = pts[-2], pts[-1]
            slope, unet = (m1 - m0) / (f1 - f0), (u1 - u0) / (f1 - f0)
            out.append({"mode": mode, "pnp_store": store, "MB per frame": slope,
                        "estimate MB at 128 frames": m1 + slope * (128 - f1),
                        "UNet stages MB per frame": unet,
                        "UNet stages MB at 128 frames": u1 + unet * (128 - f1)})
    return out


def matmul_tflops(device, dtype, n: int = 4096) -> float:
    """Measured dense matmul throughput (TFLOP/s) of ``device`` in ``dtype``."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    a @ a
    with measure(device) as m:
        for _ in range(5):
            a @ a
    return 5 * 2 * n**3 / m["s"] / 1e12


def run(*, arch="small", device="cpu", dtype=torch.float32, frames=(2, 3), size=128,
        steps=(2, 2), modes=("per-frame", "spatiotemporal", "cove"), stores=("host",),
        parts=("correspondence", "merging", "layer", "edit"), shapes=None, memory_frames=(),
        out=None) -> dict:
    """All sections; ``shapes`` overrides the SD shapes of the component benchmarks (for
    tests): ``{"frames", "grid", "channels", "heads", "layer_frames"}``. ``memory_frames``:
    frame counts whose spatial-temporal and COVE edits are measured with 2 + 2 steps (peak
    memory at long clips). ``out``: a JSON path rewritten after every section, so a run cut
    short keeps what it measured."""
    s = {"frames": 10, "grid": (64, 64), "channels": 320, "heads": 5, "layer_frames": 8, **(shapes or {})}
    result = {"machine": {**machine_info(), "device": str(device), "dtype": str(dtype).replace("torch.", ""),
                          "matmul TFLOP/s": matmul_tflops(device, dtype, 1024 if device == "cpu" else 8192)},
              "sections": {}}
    sec = result["sections"]

    def done():
        if out is not None:
            write(result, out)

    if "correspondence" in parts:
        rows = bench_correspondence(device, dtype, s["frames"], s["grid"], s["channels"])
        sec["correspondence"] = {"rows": rows, "plot": ["method", "s"], "note": (
            f"correspond's choice on this device ({rows[3]['method'].split('= ')[1].rstrip(')')}) is "
            f"{rows[3]['s']:.1f}x faster than the naive all-pairs search on the same features; "
            f"tiled {rows[0]['s'] * 1e3:.1f} ms, all-pairs product {rows[1]['s'] * 1e3:.1f} ms; "
            f"similarities in {rows[3]['similarities in']}; identical matches: {rows[3]['identical matches']}.")}
        done()
        rows = bench_agreement(device, dtype, s["frames"], s["grid"], s["channels"])
        sec["correspondence_agreement"] = {"rows": rows, "note": agreement_note(rows)}
        done()
    if "merging" in parts:
        rows = bench_merging(device, dtype, s["frames"], s["grid"], s["channels"], s["heads"])
        sec["merging"] = {"rows": rows, "plot": ["merge_ratio", "s"], "note": merging_note(rows)}
        done()
    if "layer" in parts:
        rows = bench_layer(device, dtype, s["layer_frames"], s["grid"], s["channels"], s["heads"])
        sec["attention_layer"] = {"rows": rows, "plot": ["mode", "MB"], "note": (
            f"A cove-mode 64x64 layer at F={s['layer_frames']} peaks at "
            f"{rows[2]['MB / per-frame']:.2f}x the per-frame layer's memory with CGA in blocks, "
            f"{rows[3]['MB / per-frame']:.2f}x with one block. " + layer_note(rows))}
        done()
    if "edit" in parts:
        pipe = build_pipeline(arch, device, dtype)
        rows = bench_edit(pipe, frames, size, modes, stores, steps, flops=True)
        ceiling = result["machine"]["matmul TFLOP/s"]
        for row in rows:
            row["share of matmul ceiling"] = row["TFLOP/s"] / ceiling
        best = max(rows, key=lambda r: r["TFLOP/s"])
        sec["edit"] = {"rows": rows, "plot": ["mode", "total s"], "note": (
            f"Whole edits, {arch} architecture, {size}x{size}, {steps[0]} inversion and "
            f"{steps[1]} denoising steps, after a warm-up edit; at best {best['TFLOP/s']:.1f} "
            f"TFLOP/s ({best['share of matmul ceiling']:.0%} of the measured matmul ceiling, "
            f"{best['mode']}, F={best['frames']}).")}
        sec["edit_ratios"] = {"rows": edit_ratios(rows), "note": (
            "COVE over spatial-temporal attention alone, and the peak extrapolated linearly to "
            "128 frames (whole edit, and the UNet stages alone: the VAE stops growing at its "
            "8-frame batch).")}
        sec["paper_table3"] = {"rows": PAPER_TABLE3, "note": "The paper's Table 3, for comparison."}
        from ..attention import cga_ways

        ways = cga_ways()
        sec["cga_ways"] = {"rows": ways, "note": (
            "How CGA computed each shape in this run (cove.attention.fused_is_faster: measured on "
            "CUDA, SDPA on the CPU without measuring)." if ways else
            "CGA used SDPA without measuring (not CUDA).")}
        done()
        if memory_frames:
            rows = bench_edit(pipe, memory_frames, size, ("spatiotemporal", "cove"), stores[:1], (2, 2))
            sec["edit_memory"] = {"rows": rows, "plot": ["frames", "peak MB"], "note": (
                f"Long clips, {size}x{size}, 2 inversion and 2 denoising steps: peak memory measured "
                "at " + ", ".join(map(str, memory_frames)) + " frames.")}
            done()
    return result


def write(result: dict, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(result, digits=4))
    return path


def add_command(commands):
    """Register ``bench speed`` on the ``cove`` CLI's subparsers; returns the ``bench`` subparsers."""
    bench = commands.add_parser("bench", help="measure cove", description="Benchmarks of cove.")
    sub = bench.add_subparsers(dest="bench", metavar="BENCH", required=True)
    p = sub.add_parser("speed", help="time and peak memory at Stable Diffusion's shapes",
                       description="Per-stage time and peak memory; writes JSON for the docs' benchmarks page.")
    p.add_argument("--arch", choices=("sd21", "small"), default=None,
                   help="SD-2.1-base architecture with random weights, or the same with narrow layers "
                        "(default: small on cpu, sd21 on cuda)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", choices=("float32", "float16", "fp32", "fp16"), default=None,
                   help="default: float32 on cpu, float16 on cuda")
    p.add_argument("--frames", default=None, help="comma-separated frame counts of the edits (default: cpu 2,3; cuda 10,32)")
    p.add_argument("--size", type=int, default=None, help="frame side in pixels (default: cpu 128; cuda 512)")
    p.add_argument("--steps", default=None, help="inversion,denoising steps (default: cpu 2,2; cuda 100,50, the paper's)")
    p.add_argument("--memory-frames", default=None,
                   help="comma-separated frame counts whose peak memory is measured with 2+2 steps "
                        "(spatial-temporal and COVE; e.g. 64,128 on a GPU)")
    p.add_argument("--stores", default="host,recompute", help="PnP stores to compare, of auto, host, device, recompute (default: host,recompute)")
    p.add_argument("--parts", default="correspondence,merging,layer,edit", help="sections to run")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument("-o", "--output", default=None,
                   help="JSON path (default: docs/benchmarks_speed_<cpu|cuda>.json)")
    p.set_defaults(run=main)
    return sub


def _ints(text: str) -> tuple[int, ...]:
    values = tuple(int(v) for v in text.split(","))
    if not values or min(values) < 1:
        raise ValueError(f"expected comma-separated positive integers, got {text!r}")
    return values


def main(args) -> int:
    cuda = args.device.startswith("cuda")
    if cuda and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is visible")
    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"float16": torch.float16, "fp16": torch.float16}.get(args.dtype or ("fp16" if cuda else "fp32"), torch.float32)
    path = Path(args.output or f"docs/benchmarks_speed_{'cuda' if cuda else 'cpu'}.json")
    result = run(arch=args.arch or ("sd21" if cuda else "small"), device=args.device, dtype=dtype,
                 frames=_ints(args.frames or ("10,32" if cuda else "2,3")), size=args.size or (512 if cuda else 128),
                 steps=_ints(args.steps or ("100,50" if cuda else "2,2")), stores=tuple(args.stores.split(",")),
                 parts=tuple(args.parts.replace("attention_layer", "layer").split(",")),
                 memory_frames=_ints(args.memory_frames) if args.memory_frames else (),
                 out=path)  # written after every section
    write(result, path)  # also when no section ran
    for name, section in result["sections"].items():
        print(f"{name}: {section['note']}")
    print(f"wrote {path}")
    return 0
