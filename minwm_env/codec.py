"""Latent codecs: pixels ↔ the latent space the backbone denoises.

:class:`WanVAECodec` wraps ``diffusers.AutoencoderKLWan`` (causal 3D convs, 8× spatial and
4× temporal compression) with Wan's per-channel latent normalisation, and decodes a stream
chunk by chunk with the VAE's causal-conv feature cache: pushing latents in pieces gives the
same frames as decoding the whole latent clip at once (docs/design.md §4).

Frames are float tensors in [-1, 1], shaped (B, 3, T, H, W); ``to_uint8`` converts for envs.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from diffusers import AutoencoderKLWan
from diffusers.models.autoencoders.autoencoder_kl_wan import WanCausalConv3d, WanRMS_norm, unpatchify

from .integrity import check_finite, weight_files, write_manifest


def to_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(B, 3, T, H, W) in [-1, 1] → (B, T, H, W, 3) uint8."""
    return ((frames.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8).permute(0, 2, 3, 4, 1)


def from_uint8(frames: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) uint8 → (..., 3, H, W) float in [-1, 1]."""
    return frames.movedim(-1, -3).float() / 127.5 - 1


def check_clip(frames: torch.Tensor, temporal_factor: int) -> None:
    """Frames must be (B, 3, T, H, W) with T = 1 + temporal_factor·k."""
    if frames.ndim != 5 or frames.shape[1] != 3:
        raise ValueError(f"frames must be (B, 3, T, H, W), got {tuple(frames.shape)}")
    if (frames.shape[2] - 1) % temporal_factor:
        raise ValueError(f"frame count must be 1 + {temporal_factor}k, got {frames.shape[2]}")


def latent_size(height: int, width: int, spatial_factor: int) -> tuple[int, int]:
    if height % spatial_factor or width % spatial_factor:
        raise ValueError(f"frame size {height}x{width} must be divisible by {spatial_factor}")
    return height // spatial_factor, width // spatial_factor


def _rms_norm_forward(self: WanRMS_norm, x: torch.Tensor) -> torch.Tensor:
    """WanRMS_norm's computation, L2-normalising over channels with a sum of squares.

    diffusers calls ``F.normalize`` over the channel dimension of a channel-first tensor,
    which PyTorch's CPU kernels reduce ~15× slower than ``square().sum()`` (measured 21.9 vs
    1.8 ms at (8, 8, 4, 64, 64)); it was half of decoding time. Same formula and epsilon,
    equal within float rounding (6e-8).
    """
    dim = 1 if self.channel_first else -1
    if x.dtype in (torch.float16, torch.bfloat16):
        # the sum of squares accumulates in float32 without a float32 copy of x (at 480×832 the
        # decoder's last stage is 0.57 GiB in float32: benchmarks/memory_plan.py), then scales x
        # in its own dtype, as diffusers' F.normalize does for a half input
        norm = torch.linalg.vector_norm(x, dim=dim, keepdim=True, dtype=torch.float32)
        normalized = x * norm.clamp_min(1e-12).reciprocal().to(x.dtype)
    else:
        normalized = x * torch.rsqrt(x.square().sum(dim, keepdim=True).clamp_min(1e-24))
    return normalized * self.scale * self.gamma + self.bias


def speed_up_vae(vae: AutoencoderKLWan) -> AutoencoderKLWan:
    """Swap in faster, numerically equivalent forwards (weights and state dict untouched)."""
    for module in vae.modules():
        if isinstance(module, WanRMS_norm):
            module.forward = _rms_norm_forward.__get__(module)
    return vae


class DiffusersVAECodec:
    """What every codec around a diffusers VAE (``self.vae``) shares: the module that holds its
    weights and its folder format."""

    vae: torch.nn.Module

    @property
    def module(self) -> torch.nn.Module:
        """The nn.Module holding the codec's weights (moved, cast and frozen with the model)."""
        return self.vae

    def save(self, folder) -> None:
        """``folder/vae/``: diffusers' format plus the sha256 manifest of its weights."""
        self.vae.save_pretrained(Path(folder) / "vae", safe_serialization=True)
        write_manifest(Path(folder) / "vae", weight_files(Path(folder) / "vae"))


class WanVAECodec(DiffusersVAECodec):
    """Encode start images and stream-decode latents with an ``AutoencoderKLWan``."""

    kind = "wan-vae"

    def __init__(self, vae: AutoencoderKLWan):
        self.vae = speed_up_vae(vae)
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
        return latent_size(height, width, self.spatial_factor)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] with T = 1 + 4k → normalised latents (B, C, 1 + k, h, w)."""
        check_clip(frames, self.temporal_factor)
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

    @torch.no_grad()
    def _cache_shapes(self, latent_hw: tuple[int, int]) -> list[tuple[int, ...]]:
        """Shapes of every decoder cache entry once a stream is past its first frame (probed once)."""
        cache = getattr(self, "_shape_probe", {})
        if latent_hw not in cache:
            probe = WanDecodeStream(self)
            dtype = next(self.vae.parameters()).dtype
            device = next(self.vae.parameters()).device
            probe.push(torch.zeros(1, self.latent_channels, 2, *latent_hw, device=device, dtype=dtype))
            cache[latent_hw] = [None if e is None else tuple(e.shape) for e in probe._feat_cache]
            self._shape_probe = cache
        return cache[latent_hw]


class WanDecodeStream:
    """Decodes latent frames as they arrive, carrying the causal-conv cache between pushes.

    The first latent frame decodes to 1 RGB frame, every later one to ``temporal_factor``.
    Rows are independent streams decoded in one batch; :meth:`reset_rows` restarts some rows
    from a new first latent frame while the others continue.
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

    def _materialize(self, latent_hw: tuple[int, int]) -> None:
        """Bring every row's decoder state to one canonical form so rows can be spliced.

        After a stream's first frame the causal convs cache 1 frame instead of 2 and the
        temporal upsamplers hold a "Rep" marker. A 1-frame cache equals a 2-frame cache with a
        zero frame in front (the conv zero-pads what the cache lacks), and "Rep" equals a
        2-frame zero cache; both rewrites leave the decoded frames unchanged (tested).
        """
        shapes = None
        for i, entry in enumerate(self._feat_cache):
            if isinstance(entry, str):
                shapes = shapes or self.codec._cache_shapes(latent_hw)
                batch = next(e.shape[0] for e in self._feat_cache if isinstance(e, torch.Tensor))
                reference = next(e for e in self._feat_cache if isinstance(e, torch.Tensor))
                self._feat_cache[i] = reference.new_zeros((batch, *shapes[i][1:]))
            elif isinstance(entry, torch.Tensor) and entry.shape[2] < 2:
                self._feat_cache[i] = torch.cat([entry.new_zeros(entry[:, :, :2 - entry.shape[2]].shape), entry], dim=2)

    @torch.no_grad()
    def reset_rows(self, rows: list[int], first_latents: torch.Tensor) -> torch.Tensor:
        """Restart ``rows`` from one latent frame each (len(rows), C, 1, h, w); returns their
        decoded first frames (len(rows), 3, 1, H, W). Other rows are untouched."""
        if self.num_latent_frames == 0:
            raise RuntimeError("reset_rows needs a stream that has started: push the first frames of all rows")
        fresh = WanDecodeStream(self.codec)
        frames = fresh.push(first_latents)
        latent_hw = tuple(first_latents.shape[-2:])
        fresh._materialize(latent_hw)
        self._materialize(latent_hw)
        index = torch.tensor(rows)
        for mine, theirs in zip(self._feat_cache, fresh._feat_cache):
            if mine is None and theirs is None:  # a conv the decoder never runs
                continue
            if not isinstance(mine, torch.Tensor) or not isinstance(theirs, torch.Tensor) or mine.shape[1:] != theirs.shape[1:]:
                raise RuntimeError("decoder states of the rows differ in form; cannot splice rows")
            mine[index] = theirs.to(mine.dtype)
        return frames


class SpaceToDepthCodec(torch.nn.Module):
    """A fixed, lossless latent: pixels rearranged, not compressed (issue 11's measured choice).

    Each latent frame packs ``temporal_factor`` RGB frames (latent frame k ↔ RGB frames
    4k-3 .. 4k; latent 0 holds frame 0 repeated) and each latent pixel a ``spatial_factor``²
    block of RGB pixels: 64×64 RGB → 16×16 latents of 3·16·4 = 192 channels. Latents are the
    pixels in [-1, 1] times ``scale``. Decoding is a reshape, so a stream has no state beyond
    "has the first frame been seen".
    """

    kind = "space-to-depth"

    def __init__(self, spatial_factor: int = 4, temporal_factor: int = 4, scale: float = 2.0):
        super().__init__()
        self.spatial_factor, self.temporal_factor = spatial_factor, temporal_factor
        self.latent_channels = 3 * spatial_factor ** 2 * temporal_factor
        # A (frozen) parameter rather than a float so the codec has a device and a dtype.
        self.scale = torch.nn.Parameter(torch.tensor(float(scale)), requires_grad=False)

    @property
    def module(self) -> torch.nn.Module:
        return self

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return latent_size(height, width, self.spatial_factor)

    def pack(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, 4n, H, W) → (B, C, n, h, w); other channel counts pack alike (a 1-channel
        validity mask → (B, C / 3, n, h, w), each value where its pixel's colours go)."""
        batch, channels, count, height, width = frames.shape
        f = self.spatial_factor
        x = torch.nn.functional.pixel_unshuffle(frames.transpose(1, 2).reshape(batch * count, channels, height, width), f)
        x = x.reshape(batch, count // self.temporal_factor, self.temporal_factor * channels * f * f, height // f,
                      width // f)
        return (x.transpose(1, 2) * self.scale).to(frames.dtype)

    def unpack(self, latents: torch.Tensor) -> torch.Tensor:
        """(B, C, n, h, w) → (B, 3, 4n, H, W) (other channel counts unpack alike, see :meth:`pack`)."""
        batch, packed, count, h, w = latents.shape
        f = self.spatial_factor
        channels = packed // (self.temporal_factor * f * f)
        x = (latents.float() / self.scale).transpose(1, 2).reshape(batch * count * self.temporal_factor, channels * f * f,
                                                                   h, w)
        x = torch.nn.functional.pixel_shuffle(x, f).reshape(batch, count * self.temporal_factor, channels, h * f, w * f)
        return x.transpose(1, 2).clamp(-1, 1)

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        check_clip(frames, self.temporal_factor)
        self.latent_size(frames.shape[3], frames.shape[4])
        first = frames[:, :, :1].expand(-1, -1, self.temporal_factor, -1, -1)
        return self.pack(torch.cat([first, frames[:, :, 1:]], dim=2).to(self.scale.dtype))

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        return self.encode(image.unsqueeze(2))

    @torch.no_grad()
    def restart_latent(self, latents: torch.Tensor) -> torch.Tensor:
        """The last RGB frame of the last latent frame of ``latents`` (B, C, n, h, w), encoded as
        a start image (B, C, 1, h, w): a clip's first latent frame holds one frame repeated,
        the others four different ones. Pixels are clamped to [-1, 1] on the way."""
        last = self.unpack(latents[:, :, -1:])[:, :, -1]
        return self.encode_image(last.to(self.scale.dtype)).to(latents.dtype)

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        frames = self.unpack(latents)
        return frames[:, :, self.temporal_factor - 1:]  # latent 0 decodes to frame 0 alone

    def stream(self) -> "SpaceToDepthStream":
        return SpaceToDepthStream(self)

    def save(self, folder) -> None:
        config = {"kind": self.kind, "spatial_factor": self.spatial_factor, "temporal_factor": self.temporal_factor,
                  "scale": float(self.scale)}
        (Path(folder) / "codec.json").write_text(json.dumps(config, indent=2) + "\n")

    @classmethod
    def load(cls, folder) -> "SpaceToDepthCodec":
        path = Path(folder) / "codec.json"
        try:
            config = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a readable codec description ({err})") from err
        if config.pop("kind", None) != cls.kind:
            raise ValueError(f"{path} does not describe a {cls.kind} codec")
        codec = cls(**config)
        check_finite(codec.state_dict(), path)  # its one weight, the scale, lives in the JSON
        return codec


class SpaceToDepthStream:
    """Streaming decode of a :class:`SpaceToDepthCodec` (stateless but for the first frame)."""

    def __init__(self, codec: SpaceToDepthCodec):
        self.codec = codec
        self.num_latent_frames = 0

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        frames = self.codec.unpack(latents)
        if self.num_latent_frames == 0:
            frames = frames[:, :, self.codec.temporal_factor - 1:]
        self.num_latent_frames += latents.shape[2]
        return frames

    @torch.no_grad()
    def reset_rows(self, rows: list[int], first_latents: torch.Tensor) -> torch.Tensor:
        if self.num_latent_frames == 0:
            raise RuntimeError("reset_rows needs a stream that has started: push the first frames of all rows")
        return self.codec.decode(first_latents)


def load_codec(folder: Path, vae_attention_window: int | None = None):
    """The codec saved in a model folder: ``vae/`` (the Wan or the HunyuanVideo-1.5 VAE, its
    files checked like the transformer's: manifest and finite tensors) or ``codec.json``
    (space-to-depth). ``vae_attention_window`` bounds the HunyuanVideo-1.5 decoder's attention
    cache (:class:`~minwm_env.hunyuan_vae.HunyuanVAECodec`)."""
    if (folder / "codec.json").is_file():
        return SpaceToDepthCodec.load(folder)
    from .hunyuan_vae import HunyuanVAECodec  # (hunyuan_vae imports this module)
    if HunyuanVAECodec.describes(folder):
        return HunyuanVAECodec.load(folder, vae_attention_window)
    from .models import load_component  # (avoids an import cycle)
    return WanVAECodec(load_component(folder / "vae", AutoencoderKLWan))
