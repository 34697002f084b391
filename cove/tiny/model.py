"""cove-tiny: a small text-to-image diffusion model in diffusers' own classes.

Layout (chosen so that cove-tiny has the *same structure* as Stable Diffusion, scaled down):

    image (3, 64, 64) in [-1, 1]
      --PixelShuffleVAE.encode-->  "latent" (12, 32, 32)   lossless space-to-depth, factor 2
      --UNet2DConditionModel-->    a convolutional 32x32 level, then self- and cross-attention
                                   (a small CLIP text model) at 16x16 and 8x8
      --PixelShuffleVAE.decode-->  image (3, 64, 64)

Why factor 2 and a convolution-only top level: every latent channel is a channel of pixel
noise the UNet must remove, and its top level must be several times wider than the latent to
do so. A first cove-tiny with factor 4 (48 channels at 16x16 into a 64-channel top level)
trained to blurry blobs under heavy per-pixel noise. At factor 2 a 32-channel 32x32 level
does the per-pixel work for the same compute, and the attention layers (where COVE acts, and
the CPU cost of attention grows with the square of the token count) stay at 16x16 and 8x8.

The "VAE" is an exact reshape (``torch.nn.functional.pixel_unshuffle``), so the model is a
pixel-space diffusion model: a noisy latent decoded is literally the noisy image. It is a
``ModelMixin``/``ConfigMixin`` so the folder is an ordinary diffusers pipeline folder.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as nnf
from diffusers import DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from transformers import CLIPTextConfig, CLIPTextModel

IMAGE_SIZE = 64
FACTOR = 2
MAX_TOKENS = 16


@dataclass
class _LatentDist:
    """The slice of diffusers' ``DiagonalGaussianDistribution`` API pipelines use (zero variance)."""

    mean: torch.Tensor

    def sample(self, generator=None) -> torch.Tensor:
        return self.mean

    def mode(self) -> torch.Tensor:
        return self.mean


@dataclass
class _EncoderOutput:
    latent_dist: _LatentDist


@dataclass
class _DecoderOutput:
    sample: torch.Tensor


class PixelShuffleVAE(ModelMixin, ConfigMixin):
    """Lossless space-to-depth autoencoder: (B, 3, H, W) <-> (B, 3*f*f, H/f, W/f).

    ``block_out_channels`` only exists because diffusers pipelines read
    ``2 ** (len(vae.config.block_out_channels) - 1)`` as the VAE scale factor; its length is
    ``log2(factor) + 1``. ``scaling_factor`` is 1: pixels in [-1, 1] are the latents.
    """

    @register_to_config
    def __init__(self, factor: int = FACTOR, in_channels: int = 3, scaling_factor: float = 1.0,
                 block_out_channels: tuple[int, ...] = (3, 12)):
        super().__init__()
        if factor < 1 or factor & (factor - 1):
            raise ValueError(f"factor must be a power of two, got {factor}")
        if 2 ** (len(block_out_channels) - 1) != factor:
            raise ValueError("len(block_out_channels) must be log2(factor) + 1")
        # diffusers' loader expects a weights file in every model folder: keep one tiny,
        # persistent buffer (the factor itself; it also tells the module's device and dtype).
        self.register_buffer("factor_buffer", torch.tensor([float(factor)]))

    @property
    def latent_channels(self) -> int:
        return self.config.in_channels * self.config.factor**2

    def encode(self, x: torch.Tensor, return_dict: bool = True):
        z = nnf.pixel_unshuffle(x, self.config.factor)  # (B, 3*f*f, H/f, W/f)
        return _EncoderOutput(_LatentDist(z)) if return_dict else (_LatentDist(z),)

    def decode(self, z: torch.Tensor, return_dict: bool = True, generator=None):
        x = nnf.pixel_shuffle(z, self.config.factor)  # (B, 3, H, W)
        return _DecoderOutput(x) if return_dict else (x,)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x).latent_dist.mean).sample


@dataclass(frozen=True)
class Design:
    """A cove-tiny architecture: the pixel fold ``factor`` and the UNet's levels.

    block_out_channels: channels per level, the first at the latent's full resolution.
    attention: True for a level with self- and cross-attention (CrossAttn blocks).
    heads: attention heads per level; diffusers' ``attention_head_dim`` is read as this *count*
    (the head dimension is channels / heads).
    """

    factor: int
    block_out_channels: tuple[int, ...]
    attention: tuple[bool, ...]
    heads: int | tuple[int, ...]
    layers_per_block: int = 2
    cross_attention_dim: int = 64
    norm_num_groups: int = 16

    @property
    def latent_channels(self) -> int:
        return 3 * self.factor**2

    @property
    def latent_side(self) -> int:
        return IMAGE_SIZE // self.factor

    def unet_config(self) -> dict:
        down = tuple("CrossAttnDownBlock2D" if a else "DownBlock2D" for a in self.attention)
        up = tuple("CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(self.attention))
        return dict(
            sample_size=self.latent_side, in_channels=self.latent_channels,
            out_channels=self.latent_channels, down_block_types=down, up_block_types=up,
            block_out_channels=self.block_out_channels, layers_per_block=self.layers_per_block,
            attention_head_dim=self.heads, cross_attention_dim=self.cross_attention_dim,
            norm_num_groups=self.norm_num_groups,
        )


DESIGNS: dict[str, Design] = {
    # The shipped model: 12 x 32 x 32, a convolutional 32x32 level, attention at 16x16 and 8x8.
    # attention_head_dim=32 is read by diffusers as 32 heads (of dimension 2 and 4); kept so
    # that the shipped weights load and behave identically.
    "shipped": Design(2, (32, 64, 128), (False, True, True), 32),
    # (a) the same fold and widths with heads of dimension 32, and attention at 32x32 too: the
    # latent's full resolution, where CGA acts.
    "a": Design(2, (32, 64, 128), (True, True, True), (1, 2, 4)),
    # (b) folded 4x4: 48 x 16 x 16, a 128-channel top level for 48 channels of pixel noise,
    # attention at 16x16 (full resolution), 8x8 and 4x4 with heads of dimension 64; one layer
    # per down block (two per up block) keeps it trainable on a CPU.
    "b": Design(4, (128, 128, 128), (True, True, True), (2, 2, 2), layers_per_block=1,
                norm_num_groups=32),
}


def unet_config(design: str = "shipped") -> dict:
    """The UNet of a design (``DESIGNS``). The shipped one: a 32x32 convolutional level, then
    16x16 and 8x8 levels with self-attention and cross-attention to the text (6.1M parameters)."""
    return _design(design).unet_config()


def _design(name: str) -> Design:
    if name not in DESIGNS:
        raise ValueError(f"design: expected one of {', '.join(DESIGNS)}, got {name!r}")
    return DESIGNS[name]


def design_of(folder) -> str:
    """The name in ``DESIGNS`` of the architecture a pipeline folder holds (``unet/config.json``:
    every field a design sets must match), or a one-line ValueError."""
    path = Path(folder) / "unet" / "config.json"
    if not path.is_file():
        raise ValueError(f"expected a cove-tiny pipeline folder with {path}, it is missing")
    config = json.loads(path.read_text())
    same = lambda a, b: list(a) == list(b) if isinstance(a, (list, tuple)) else a == b  # noqa: E731
    for name, design in DESIGNS.items():
        if all(key in config and same(value, config[key]) for key, value in design.unet_config().items()):
            return name
    raise ValueError(f"{folder} holds no cove-tiny design ({', '.join(DESIGNS)})")


def _fold_channels(factor: int) -> tuple[int, ...]:
    """``PixelShuffleVAE.block_out_channels`` for a fold: (3, 12, ...) of length log2(factor) + 1."""
    return tuple(3 * 4**k for k in range(factor.bit_length()))


def text_config(vocab_size: int, bos: int, eos: int) -> CLIPTextConfig:
    return CLIPTextConfig(
        vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, max_position_embeddings=MAX_TOKENS, bos_token_id=bos,
        eos_token_id=eos, pad_token_id=eos, projection_dim=64,
    )


def scheduler() -> DDIMScheduler:
    """DDPM's linear schedule, DDIM sampling, v-prediction, predicted x0 clipped to [-1, 1].

    Why v (Salimans & Ho 2022) and not epsilon: the "latent" holds 48 channels of
    incompressible pixel noise, and an epsilon model must reproduce it almost exactly at high
    noise (eps ~ x_t); a first cove-tiny trained that way had an error there amplified
    1/sqrt(abar) ~ 50x in the predicted x0 and sampled noise. With v = sqrt(abar) eps -
    sqrt(1 - abar) x0 the high-noise target is ~ -x0, and eps = sqrt(abar) v + sqrt(1 - abar) x_t
    stays exact where inversion needs it.
    """
    return DDIMScheduler(
        num_train_timesteps=1000, beta_start=1e-4, beta_end=0.02, beta_schedule="linear",
        clip_sample=True, clip_sample_range=1.0, set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction",
    )


def build_pipeline(tokenizer, *, seed: int = 0, design: str = "shipped") -> StableDiffusionPipeline:
    """Fresh (untrained, seeded) cove-tiny components assembled as a StableDiffusionPipeline;
    ``design`` names one of ``DESIGNS`` (default: the shipped architecture)."""
    d = _design(design)
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**d.unet_config())
    text_encoder = CLIPTextModel(text_config(len(tokenizer), tokenizer.bos_token_id,
                                             tokenizer.eos_token_id))
    return StableDiffusionPipeline(
        vae=PixelShuffleVAE(d.factor, block_out_channels=_fold_channels(d.factor)), text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
        scheduler=scheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False,
    )
