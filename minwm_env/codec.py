"""Latent codecs: pixels ↔ the latent space the backbone denoises.

:class:`WanVAECodec` wraps ``diffusers.AutoencoderKLWan`` (causal 3D convs, 8× spatial and
4× temporal compression) with Wan's per-channel latent normalisation, and decodes a stream
chunk by chunk with the VAE's causal-conv feature cache: pushing latents in pieces gives the
same frames as decoding the whole latent clip at once (DESIGN.md §4).

Frames are float tensors in [-1, 1], shaped (B, 3, T, H, W); ``to_uint8`` converts for envs.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, unpatchify


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] → (B, T, H, W, 3) uint8."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)


def from_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 → (..., 3, H, W) float in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1


class WanVAECodec:
    """Encode start images and stream-decode latents with an ``AutoencoderKLWan``."""

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = vae
        config = vae.config
        self.latent_channels = config.z_dim
        self.spatial_factor = vae.spatial_compression_ratio
        self.temporal_factor = 2 ** sum(config.temperal_downsample)
        self._num_decoder_convs = sum(isinstance(m, WanCausalConv3d) for m in vae.decoder.modules())

    def _stats(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        config = self.vae.config
        mean = torch.tensor(config.latents_mean, device=like.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        std = torch.tensor(config.latents_std, device=like.device, dtype=torch.float32).view(1, -1, 1, 1, 1)
        return mean, std

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents)
        return ((latents.float() - mean) / std).to(latents.dtype)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        mean, std = self._stats(latents)
        return (latents.float() * std + mean).to(latents.dtype)

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        if height % self.spatial_factor or width % self.spatial_factor:
            raise ValueError(f"frame size {height}x{width} must be divisible by {self.spatial_factor}")
        return height // self.spatial_factor, width // self.spatial_factor

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] with T = 1 + 4k → normalised latents (B, C, 1 + k, h, w)."""
        if frames.ndim != 5 or frames.shape[1] != 3:
            raise ValueError(f"frames must be (B, 3, T, H, W), got {tuple(frames.shape)}")
        if (frames.shape[2] - 1) % self.temporal_factor:
            raise ValueError(f"frame count must be 1 + {self.temporal_factor}k, got {frames.shape[2]}")
        dtype = next(self.vae.parameters()).dtype
        latents = self.vae.encode(frames.to(dtype)).latent_dist.mode()
        return self.normalize(latents)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → one normalised latent frame (B, C, 1, h, w)."""
        return self.encode(image.unsqueeze(2))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a whole latent clip at once (diffusers' own path)."""
        return self.vae.decode(self.denormalize(latents)).sample

    def stream(self) -> "WanDecodeStream":
        return WanDecodeStream(self)


class WanDecodeStream:
    """Decodes latent frames as they arrive, carrying the causal-conv cache between pushes.

    The first latent frame decodes to 1 RGB frame, every later one to ``temporal_factor``.
    """

    def __init__(self, codec: WanVAECodec):
        self.codec = codec
        self._feat_cache: list = [None] * codec._num_decoder_convs
        self.num_latent_frames = 0

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, n, h, w), normalised → frames (B, 3, T, H, W) in [-1, 1]."""
        vae = self.codec.vae
        z = self.codec.denormalize(latents).to(next(vae.parameters()).dtype)
        x = vae.post_quant_conv(z)  # a 1×1×1 conv: no temporal state
        outs = []
        for i in range(x.shape[2]):
            out = vae.decoder(x[:, :, i:i + 1], feat_cache=self._feat_cache, feat_idx=[0],
                              first_chunk=self.num_latent_frames == 0)
            self.num_latent_frames += 1
            outs.append(out)
        frames = torch.cat(outs, dim=2)
        if vae.config.patch_size is not None:
            frames = unpatchify(frames, patch_size=vae.config.patch_size)
        return frames.clamp(-1.0, 1.0)
