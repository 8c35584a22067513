"""What every causal backbone adapter provides, and the pieces they share.

An adapter wraps a pretrained bidirectional video transformer (diffusers' Wan now, an MMDiT
such as HunyuanVideo-1.5 later) and runs it block-causally over chunks of latent frames:

* ``encode_prompt`` turns prompt embeddings into a :class:`PromptState` computed once per
  episode (Wan: each layer's cross-attention K/V; an MMDiT: the text tokens' joint-attention
  K/V). Nothing here assumes cross-attention.
* ``new_cache`` makes a :class:`KVCache` sized from the model config.
* ``forward`` denoises ``F`` latent frames at explicit frame positions and per-frame
  timesteps, either in full-sequence mode with a frame-level mask (training, oracles) or in
  streaming mode against a KV cache, optionally writing the frames into it (the clean
  ``t = 0`` pass over a finished chunk).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import nn


class AttentionContext(NamedTuple):
    """Per-forward state for the self-attention processors.

    It travels in the slot diffusers uses for the rotary embedding (the only per-forward
    argument the Wan block hands to ``attn1``), so it is an explicit argument of every block
    call: gradient checkpointing re-runs a block with the very same context, never with
    state mutated since (DESIGN.md §2).
    """

    freqs_cos: torch.Tensor  # (1, L, 1, head_dim) float32
    freqs_sin: torch.Tensor  # (1, L, 1, head_dim) float32
    attention_mask: torch.Tensor | None  # (L, L_keys) bool, True = may attend; full-sequence mode
    kv_cache: "KVCache | None"  # streaming mode
    cache_write: bool  # keep this forward's K/V in the cache once it is done
    prope: "object | None" = None  # conditioning.PRoPEInputs when the camera branch is PRoPE


@dataclass
class PromptState:
    """Prompt conditioning computed once per episode: per-layer keys and values."""

    keys: list[torch.Tensor]  # each (B, heads, L_text, head_dim)
    values: list[torch.Tensor]

    @property
    def batch_size(self) -> int:
        return self.keys[0].shape[0]

    def repeat(self, times: int) -> "PromptState":
        return PromptState([k.repeat(times, 1, 1, 1) for k in self.keys], [v.repeat(times, 1, 1, 1) for v in self.values])

    @staticmethod
    def cat(states: "list[PromptState]") -> "PromptState":
        num_layers = len(states[0].keys)
        return PromptState([torch.cat([s.keys[i] for s in states]) for i in range(num_layers)],
                           [torch.cat([s.values[i] for s in states]) for i in range(num_layers)])


class KVCache:
    """Self-attention keys (after RoPE) and values of the context frames, for every layer.

    Holds the first ``sink_frames`` frames ever written for the whole episode plus the most
    recent ``window_frames`` others (a rolling window), so each chunk costs the same however
    long the stream runs. Buffers are allocated once; a forward's own K/V are placed after the
    context so attention reads one contiguous slice, and ``commit`` keeps them (write passes)
    or leaves them to be overwritten (denoising passes).
    """

    def __init__(self, *, num_layers: int, batch_size: int, num_heads: int, head_dim: int,
                 tokens_per_frame: int, window_frames: int, sink_frames: int, max_new_frames: int,
                 device: torch.device | str, dtype: torch.dtype, streams: tuple[str, ...] = ("main",)):
        if window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {window_frames}")
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.tokens_per_frame = tokens_per_frame
        self.window_frames = window_frames
        self.sink_frames = sink_frames
        self.max_new_frames = max_new_frames
        capacity = (sink_frames + window_frames + max_new_frames) * tokens_per_frame
        shape = (batch_size, num_heads, capacity, head_dim)
        # One stream per attention that caches: "main" (self-attention), "prope" (camera branch).
        self.streams = {name: ([torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)],
                               [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)])
                        for name in streams}
        self.frame_positions: list[int] = []  # positions of the cached frames, in buffer order
        self.num_frames_written = 0

    @property
    def num_frames(self) -> int:
        return len(self.frame_positions)

    def reset(self) -> None:
        self.frame_positions = []
        self.num_frames_written = 0

    def extend(self, layer: int, key: torch.Tensor, value: torch.Tensor,
               stream: str = "main") -> tuple[torch.Tensor, torch.Tensor]:
        """Place a forward's K/V (B, heads, L_new, D) after the context; return context + new."""
        start = self.num_frames * self.tokens_per_frame
        end = start + key.shape[2]
        if key.shape[2] > self.max_new_frames * self.tokens_per_frame:
            raise ValueError(f"a streaming forward may hold at most {self.max_new_frames} frames "
                             f"({self.max_new_frames * self.tokens_per_frame} tokens), got {key.shape[2]} tokens")
        if key.shape[0] != self.batch_size:
            raise ValueError(f"cache batch is {self.batch_size}, forward batch is {key.shape[0]}")
        if stream not in self.streams:
            raise ValueError(f"this cache has streams {list(self.streams)}, not {stream!r}")
        keys, values = self.streams[stream][0][layer], self.streams[stream][1][layer]
        keys[:, :, start:end] = key.detach()
        values[:, :, start:end] = value.detach()
        if torch.is_grad_enabled() and (key.requires_grad or value.requires_grad):
            # Training through a cached rollout (stage 3): the buffer is overwritten later, so
            # hand autograd a fresh tensor instead of a view of it.
            return torch.cat([keys[:, :, :start], key], dim=2), torch.cat([values[:, :, :start], value], dim=2)
        return keys[:, :, :end], values[:, :, :end]

    def commit(self, frame_positions: list[int]) -> None:
        """Keep the frames the last forward placed, then evict beyond sink + window."""
        self.frame_positions = self.frame_positions + list(frame_positions)
        self.num_frames_written += len(frame_positions)
        num_sink = min(self.sink_frames, self.num_frames)
        excess = self.num_frames - num_sink - self.window_frames
        if excess <= 0:
            return
        tpf = self.tokens_per_frame
        keep_from, keep_to = (num_sink + excess) * tpf, self.num_frames * tpf
        for keys, values in self.streams.values():
            for buf in keys + values:
                # Source and destination overlap: copy through a temporary.
                buf[:, :, num_sink * tpf: keep_to - excess * tpf] = buf[:, :, keep_from:keep_to].clone()
        self.frame_positions = self.frame_positions[:num_sink] + self.frame_positions[num_sink + excess:]

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for keys, values in self.streams.values() for t in keys + values)


def causal_frame_mask(positions: torch.Tensor, block_ids: torch.Tensor, *, noisy: torch.Tensor | None = None,
                      window_frames: int | None = None, sink_frames: int = 0) -> torch.Tensor:
    """Frame-level mask (F, F), True where query frame i may attend to key frame j.

    A frame sees the clean frames of earlier blocks (chunks) and the frames of its own block
    with the same noisiness. ``noisy`` marks the noisy copy in teacher forcing (stage 1:
    [clean GT ; noisy GT], the noisy chunk attends to clean chunks before it and to itself).
    With ``window_frames`` only earlier frames within that many positions of the block start,
    plus the first ``sink_frames`` positions, stay visible: exactly what :class:`KVCache` keeps.
    """
    positions = torch.as_tensor(positions)
    block_ids = torch.as_tensor(block_ids)
    if noisy is None:
        noisy = torch.zeros_like(block_ids, dtype=torch.bool)
    earlier = (block_ids[None, :] < block_ids[:, None]) & ~noisy[None, :]
    same = (block_ids[None, :] == block_ids[:, None]) & (noisy[None, :] == noisy[:, None])
    if window_frames is not None:
        block_start = torch.stack([positions[block_ids == b].min() for b in block_ids])
        in_window = (positions[None, :] >= block_start[:, None] - window_frames) | (positions[None, :] < sink_frames)
        earlier = earlier & in_window
    return earlier | same


def expand_frame_mask(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Frame-level (F, F) mask → token-level (F·T, F·T) mask."""
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


class CausalBackbone(nn.Module, ABC):
    """The adapter boundary every backbone implements (see the module docstring)."""

    prediction_type: str

    @property
    @abstractmethod
    def latent_channels(self) -> int: ...

    @property
    @abstractmethod
    def spatial_patch(self) -> tuple[int, int]: ...

    @abstractmethod
    def encode_prompt(self, prompt_embeds: torch.Tensor) -> PromptState: ...

    @abstractmethod
    def null_prompt_embeds(self, batch_size: int) -> torch.Tensor:
        """Embeddings used when no prompt is given (and as the unconditional branch)."""

    @abstractmethod
    def new_cache(self, *, batch_size: int, latent_height: int, latent_width: int, window_frames: int,
                  sink_frames: int, max_new_frames: int) -> KVCache: ...

    @abstractmethod
    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, frame_positions: torch.Tensor,
                prompt: PromptState, *, kv_cache: KVCache | None = None, cache_write: bool = False,
                frame_mask: torch.Tensor | None = None, conditions=None) -> torch.Tensor:
        """hidden_states (B, C, F, H, W) noisy latents; timestep (B, F) in [0, 1000];
        frame_positions (F,) integer positions; conditions: per-frame camera/actions
        (:class:`minwm_env.conditioning.FrameConditions`) when the model is conditioned;
        returns the raw prediction (B, C, F, H, W)."""
