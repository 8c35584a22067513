"""HunyuanVideo-1.5's VAE as a latent codec, with an exact streaming decode (issue 20).

:class:`HunyuanVAECodec` wraps ``diffusers.AutoencoderKLHunyuanVideo15`` (32 latent channels,
16× spatial and 4× temporal compression at full size) with the interface of
:class:`~minwm_env.codec.WanVAECodec`: ``encode``/``encode_image``/``decode``, ``latent_size``,
``normalize``/``denormalize``, ``stream()``, ``module`` and ``save``. Latents are scaled as the
HunyuanVideo-1.5 pipelines do: ``latent = raw · scaling_factor`` (one scalar, no mean).

:class:`HunyuanDecodeStream` decodes latent frames chunk by chunk. It walks diffusers' own
decoder submodules (convolutions, norms, attention projections) in the decoder's order and keeps
every piece of state between chunks in this object, not in the VAE:

- each causal 3D convolution (``HunyuanVideo15CausalConv3d``) pads time with 2 copies of its
  input's first frame ("replicate"); the stream does that on the first chunk and afterwards
  prepends the last 2 input frames it kept from the previous chunk;
- the mid-block attention is frame-causal in diffusers (a token of latent frame t sees every
  token of frames 0..t), so the stream keeps each past frame's keys and values and a new
  frame's queries read them: exact. Exact means the cache grows by one latent frame per frame;
  ``attention_window`` bounds it to the last N latent frames (exact for the first N frames of a
  stream, an approximation afterwards);
- the temporal upsamplers treat the clip's first frame apart (upsampled in space only: latent 0
  → 1 RGB frame, every later latent → 4), which the stream applies only to its first chunk.

Concatenating a stream's outputs equals ``vae.decode`` of all the latents at once (float32,
tested ≤ 1e-5 at a tiny config, chunks of 1, 2 and 3 latent frames).

diffusers 0.42's whole-clip ``encode``/``decode`` of this VAE fail for a batch of more than one
video (its attention mask is (B, L, L), which attention reads as (heads, L, L)); the codec
encodes and decodes whole clips one row at a time; the stream handles batches itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from diffusers import AutoencoderKLHunyuanVideo15
from diffusers.models.autoencoders.autoencoder_kl_hunyuanvideo15 import HunyuanVideo15CausalConv3d

from .codec import DiffusersVAECodec, check_clip, latent_size


def check_latents(latents: torch.Tensor, channels: int) -> None:
    """Latents must be (B, channels, n ≥ 1, h, w)."""
    if latents.ndim != 5:
        raise ValueError(f"latents must be (B, C, n, h, w), got shape {tuple(latents.shape)}")
    if latents.shape[1] != channels:
        raise ValueError(f"latents must have {channels} channels, got {latents.shape[1]} "
                         f"(shape {tuple(latents.shape)})")
    if latents.shape[2] < 1:
        raise ValueError(f"latents must hold at least one latent frame, got {latents.shape[2]}")


class HunyuanVAECodec(DiffusersVAECodec):
    """Encode start images and stream-decode latents with an ``AutoencoderKLHunyuanVideo15``.

    ``attention_window``: None keeps every past latent frame for the decoder's mid-block
    attention (exact, memory and time grow with the stream); N keeps the last N.
    """

    kind = "hunyuan15-vae"

    def __init__(self, vae: AutoencoderKLHunyuanVideo15, attention_window: int | None = None):
        if attention_window is not None and attention_window < 1:
            raise ValueError(f"attention_window must be a positive number of latent frames or None, "
                             f"got {attention_window}")
        self.vae = vae
        config = vae.config
        self.latent_channels = config.latent_channels
        self.spatial_factor = vae.spatial_compression_ratio
        self.temporal_factor = vae.temporal_compression_ratio
        self.scaling_factor = float(config.scaling_factor)
        self.attention_window = attention_window
        for conv in vae.decoder.modules():
            if isinstance(conv, HunyuanVideo15CausalConv3d):
                _check_streamable(conv)

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        """The VAE's raw latents → the scaled latents the transformer denoises."""
        return latents * self.scaling_factor

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents / self.scaling_factor

    def latent_size(self, height: int, width: int) -> tuple[int, int]:
        return latent_size(height, width, self.spatial_factor)

    @property
    def _param(self) -> torch.Tensor:
        return next(self.vae.parameters())

    @torch.no_grad()
    def encode(self, frames: torch.Tensor) -> torch.Tensor:
        """(B, 3, T, H, W) in [-1, 1] with T = 1 + 4k → scaled latents (B, C, 1 + k, h, w)."""
        check_clip(frames, self.temporal_factor)
        self.latent_size(frames.shape[3], frames.shape[4])
        frames = frames.to(device=self._param.device, dtype=self._param.dtype)
        raw = torch.cat([self.vae.encode(row).latent_dist.mode() for row in frames.split(1)])
        return self.normalize(raw)

    def encode_image(self, image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [-1, 1] → one scaled latent frame (B, C, 1, h, w)."""
        if image.ndim != 4:
            raise ValueError(f"image must be (B, 3, H, W), got shape {tuple(image.shape)}")
        return self.encode(image.unsqueeze(2))

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Decode a whole latent clip at once (diffusers' own path, one row at a time)."""
        check_latents(latents, self.latent_channels)
        z = self.denormalize(latents.to(device=self._param.device, dtype=self._param.dtype))
        return torch.cat([self.vae.decode(row).sample for row in z.split(1)])

    def stream(self) -> "HunyuanDecodeStream":
        return HunyuanDecodeStream(self)

    @staticmethod
    def describes(folder) -> bool:
        """Whether ``folder/vae/config.json`` names diffusers' HunyuanVideo-1.5 VAE."""
        path = Path(folder) / "vae" / "config.json"
        try:
            name = json.loads(path.read_text()).get("_class_name")
        except (OSError, json.JSONDecodeError):
            return False
        return name == AutoencoderKLHunyuanVideo15.__name__

    @classmethod
    def load(cls, folder, attention_window: int | None = None) -> "HunyuanVAECodec":
        """The codec of a model folder's ``vae/`` (checked like every weights folder)."""
        from .models import load_component  # (models imports the codecs)
        return cls(load_component(Path(folder) / "vae", AutoencoderKLHunyuanVideo15), attention_window)


def _check_streamable(conv: HunyuanVideo15CausalConv3d) -> None:
    """The stream reproduces convolutions of stride 1 whose padding is all in front in time."""
    inner = conv.conv
    front, back = conv.time_causal_padding[4:6]
    if (inner.stride != (1, 1, 1) or inner.dilation != (1, 1, 1) or inner.padding != (0, 0, 0) or back != 0
            or front != inner.kernel_size[0] - 1 or conv.pad_mode not in ("replicate", "constant")):
        raise ValueError(f"cannot stream a causal conv with stride {inner.stride}, dilation {inner.dilation}, "
                         f"padding {conv.time_causal_padding} and pad mode {conv.pad_mode!r}")


class _AttentionState:
    """One attention layer's past: keys and values per (row, slot) and where each slot sits.

    ``keys``/``values`` are (B, S, h·w, C); ``frame`` (B, S) is the row's latent-frame index of
    each slot, -1 where the slot holds nothing for that row (a row restarted by ``reset_rows``
    does not see the slots written before its restart).
    """

    def __init__(self, keys: torch.Tensor, values: torch.Tensor, frame: torch.Tensor):
        self.keys, self.values, self.frame = keys, values, frame


class HunyuanDecodeStream:
    """Decodes latent frames as they arrive, carrying the decoder's causal state between pushes.

    The first latent frame decodes to 1 RGB frame, every later one to ``temporal_factor``.
    Rows are independent streams decoded in one batch; :meth:`reset_rows` restarts some rows
    from a new first latent frame while the others continue.
    """

    def __init__(self, codec: HunyuanVAECodec):
        self.codec = codec
        self.attention_window = codec.attention_window
        self.num_latent_frames = 0
        self._convs: dict[torch.nn.Module, torch.Tensor] = {}  # causal conv → its last input frames
        self._attention: dict[torch.nn.Module, _AttentionState] = {}
        self._row_frames: torch.Tensor | None = None  # (B,) latent frames each row has seen
        self._shape: tuple[int, int, int] | None = None  # (B, h, w) of the stream

    # -- the public calls ------------------------------------------------------------------

    @torch.no_grad()
    def push(self, latents: torch.Tensor) -> torch.Tensor:
        """latents (B, C, n, h, w), scaled → frames (B, 3, T, H, W) in [-1, 1]; T = 1 + 4(n−1)
        for the stream's first push, 4n afterwards."""
        check_latents(latents, self.codec.latent_channels)
        batch, _, count, h, w = latents.shape
        if self._shape is not None and (batch, h, w) != self._shape:
            raise ValueError(f"this stream decodes (batch, h, w) = {self._shape}; got {(batch, h, w)}: "
                             f"start a new stream for other videos")
        param = self.codec._param
        z = self.codec.denormalize(latents.to(device=param.device, dtype=param.dtype))
        if self._row_frames is None:
            self._shape = (batch, h, w)
            self._row_frames = torch.zeros(batch, dtype=torch.long, device=param.device)
        frames = self._decoder(z, first=self.num_latent_frames == 0)
        self.num_latent_frames += count
        self._row_frames += count
        self._evict()
        return frames.clamp(-1.0, 1.0)

    @torch.no_grad()
    def reset_rows(self, rows, first_latents: torch.Tensor) -> torch.Tensor:
        """Restart ``rows`` from one latent frame each (len(rows), C, 1, h, w); returns their
        decoded first frames (len(rows), 3, 1, H, W). Other rows are untouched."""
        if self.num_latent_frames == 0:
            raise RuntimeError("reset_rows needs a stream that has started: push the first frames of all rows")
        rows = list(rows)
        check_latents(first_latents, self.codec.latent_channels)
        batch, h, w = self._shape
        count, _, length, *size = first_latents.shape
        if (count, length, tuple(size)) != (len(rows), 1, (h, w)):
            raise ValueError(f"first_latents must be ({len(rows)}, C, 1, {h}, {w}), got {tuple(first_latents.shape)}")
        if len(set(rows)) != len(rows) or not all(0 <= r < batch for r in rows):
            raise ValueError(f"rows must be distinct indices below {batch}, got {rows}")
        fresh = HunyuanDecodeStream(self.codec)
        frames = fresh.push(first_latents)
        index = torch.tensor(rows, device=self._row_frames.device)
        for conv, kept in self._convs.items():
            kept[index] = fresh._convs[conv].to(kept.dtype)
        for layer, mine in self._attention.items():
            theirs = fresh._attention[layer]
            # The restarted rows get a new slot holding their first frame; their older slots
            # are emptied, and the other rows leave the new slot empty.
            mine.keys = torch.cat([mine.keys, mine.keys.new_zeros(mine.keys[:, :1].shape)], dim=1)
            mine.values = torch.cat([mine.values, mine.values.new_zeros(mine.values[:, :1].shape)], dim=1)
            mine.frame = torch.cat([mine.frame, mine.frame.new_full((batch, 1), -1)], dim=1)
            mine.keys[index, -1:] = theirs.keys.to(mine.keys.dtype)
            mine.values[index, -1:] = theirs.values.to(mine.values.dtype)
            mine.frame[index] = -1
            mine.frame[index, -1] = 0
        self._row_frames[index] = 1
        self._evict()
        return frames

    def cached_frames(self) -> int:
        """Latent-frame slots held by the mid-block attention cache (what grows without a window)."""
        return max((state.keys.shape[1] for state in self._attention.values()), default=0)

    # -- the decoder, walked submodule by submodule ------------------------------------------

    def _decoder(self, z: torch.Tensor, first: bool) -> torch.Tensor:
        decoder = self.codec.vae.decoder
        x = self._conv(decoder.conv_in, z) + z.repeat_interleave(decoder.repeat, dim=1)
        x = self._mid_block(decoder.mid_block, x)
        for block in decoder.up_blocks:
            for resnet in block.resnets:
                x = self._resnet(resnet, x)
            for upsampler in block.upsamplers or ():
                x = self._upsample(upsampler, x, first)
        x = decoder.conv_act(decoder.norm_out(x))
        return self._conv(decoder.conv_out, x)

    def _conv(self, conv: HunyuanVideo15CausalConv3d, x: torch.Tensor) -> torch.Tensor:
        """A causal conv over this chunk's frames, its time padding taken from the last chunk."""
        depth = conv.time_causal_padding[4]
        if depth == 0:
            return conv.conv(F.pad(x, conv.time_causal_padding, mode=conv.pad_mode))
        before = self._convs.get(conv)
        if before is None:  # the stream's first frames: pad as the whole-clip forward does
            start = x[:, :, :1] if conv.pad_mode == "replicate" else torch.zeros_like(x[:, :, :1])
            before = start.expand(-1, -1, depth, -1, -1)
        padded = torch.cat([before, x], dim=2)
        self._convs[conv] = padded[:, :, -depth:].clone()
        space = (*conv.time_causal_padding[:4], 0, 0)
        return conv.conv(F.pad(padded, space, mode=conv.pad_mode))

    def _resnet(self, block, x: torch.Tensor) -> torch.Tensor:
        h = self._conv(block.conv1, block.nonlinearity(block.norm1(x)))
        h = self._conv(block.conv2, block.nonlinearity(block.norm2(h)))
        return h + (x if block.conv_shortcut is None else block.conv_shortcut(x))

    def _mid_block(self, block, x: torch.Tensor) -> torch.Tensor:
        x = self._resnet(block.resnets[0], x)
        for attention, resnet in zip(block.attentions, block.resnets[1:]):
            if attention is not None:
                x = self._attend(attention, x)
            x = self._resnet(resnet, x)
        return x

    def _upsample(self, layer, x: torch.Tensor, first: bool) -> torch.Tensor:
        """diffusers' HunyuanVideo15Upsample on a chunk: its first-frame rule only for frame 0
        of the stream (a later chunk's first frame is an ordinary frame)."""
        h = self._conv(layer.conv, x)
        unpack = layer._dcae_upsample_rearrange  # (B, r1·r2·r3·c, f, h, w) → (B, c, r1·f, r2·h, r3·w)
        if not layer.add_temporal_upsample:
            return unpack(h, 1, 2, 2) + unpack(x.repeat_interleave(layer.repeats, dim=1), 1, 2, 2)
        out = unpack(h[:, :, 1:] if first else h, 2, 2, 2)
        out = out + unpack(x[:, :, 1:] if first else x, 2, 2, 2).repeat_interleave(layer.repeats, dim=1)
        if not first:
            return out
        head = unpack(h[:, :, :1], 1, 2, 2)
        head = head[:, :head.shape[1] // 2] + unpack(x[:, :, :1], 1, 2, 2).repeat_interleave(layer.repeats // 2, dim=1)
        return torch.cat([head, out], dim=2)

    def _attend(self, layer, x: torch.Tensor) -> torch.Tensor:
        """Frame-causal attention over the kept past frames and this chunk's frames."""
        batch, channels, count, h, w = x.shape
        y = layer.norm(x)

        def tokens(proj):  # (B, C, n, h, w) → (B, n, h·w, C)
            return proj(y).flatten(3).permute(0, 2, 3, 1)

        query, key, value = tokens(layer.to_q), tokens(layer.to_k), tokens(layer.to_v)
        new_frames = self._row_frames[:, None] + torch.arange(count, device=x.device)  # (B, n)
        state = self._attention.get(layer)
        if state is not None:
            key = torch.cat([state.keys, key.to(state.keys.dtype)], dim=1)
            value = torch.cat([state.values, value.to(state.values.dtype)], dim=1)
            key_frames = torch.cat([state.frame, new_frames], dim=1)
        else:
            key_frames = new_frames
        past = key.shape[1] - count
        outs = []
        for i in range(count):
            # Frame i of the chunk sees every kept slot and the chunk's frames 0..i.
            slots = past + i + 1
            seen = key_frames[:, :slots]
            visible = seen >= 0
            if self.attention_window is not None:
                visible &= seen > new_frames[:, i:i + 1] - self.attention_window
            mask = None if bool(visible.all()) else visible.repeat_interleave(h * w, dim=1)[:, None, None, :]
            outs.append(F.scaled_dot_product_attention(
                query[:, i:i + 1].flatten(1, 2)[:, None], key[:, :slots].flatten(1, 2)[:, None],
                value[:, :slots].flatten(1, 2)[:, None], attn_mask=mask))
        out = torch.cat(outs, dim=2).view(batch, count, h, w, channels).permute(0, 4, 1, 2, 3)
        self._attention[layer] = _AttentionState(key, value, key_frames)
        return layer.proj_out(out) + x

    def _evict(self) -> None:
        """Drop the attention slots no row will read again (none without a window but those
        emptied for every row by restarts)."""
        for state in self._attention.values():
            useless = state.frame < 0
            if self.attention_window is not None:
                useless |= state.frame <= self._row_frames[:, None] - self.attention_window
            keep = ~useless.all(dim=0)
            if not bool(keep.all()):
                state.keys, state.values, state.frame = state.keys[:, keep], state.values[:, keep], state.frame[:, keep]
