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
    state mutated since (docs/design.md §2).
    """

    freqs_cos: torch.Tensor  # (1, L, 1, head_dim) float32
    freqs_sin: torch.Tensor  # (1, L, 1, head_dim) float32
    attention_mask: torch.Tensor | None  # (L, L_keys) bool, True = may attend; full-sequence mode
    kv_cache: "KVCache | KVCacheRows | None"  # streaming mode
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

    def select(self, rows: list[int]) -> "PromptState":
        return PromptState([k[rows] for k in self.keys], [v[rows] for v in self.values])

    def repeat(self, times: int) -> "PromptState":
        return PromptState([k.repeat(times, 1, 1, 1) for k in self.keys], [v.repeat(times, 1, 1, 1) for v in self.values])

    @staticmethod
    def cat(states: "list[PromptState]") -> "PromptState":
        num_layers = len(states[0].keys)
        return PromptState([torch.cat([s.keys[i] for s in states]) for i in range(num_layers)],
                           [torch.cat([s.values[i] for s in states]) for i in range(num_layers)])


class KVCache:
    """Self-attention keys (after RoPE) and values of the context frames, for every layer.

    Holds, per batch row, the first ``sink_frames`` frames ever written in the row's episode
    plus its most recent ``window_frames`` others (a rolling window), so each chunk costs the
    same however long the stream runs. Buffers are allocated once; a forward's own K/V are
    placed after the row's context so attention reads one slice, and ``commit`` keeps them
    (write passes) or leaves them to be overwritten (denoising passes).

    Rows are independent episodes: :meth:`reset_rows` restarts some of them and
    :meth:`rows` gives a view on a subset (to write one row's start frame). Rows holding
    different numbers of frames attend through a key mask; in lockstep (the usual case) no
    mask is needed and every operation is one batched slice.

    With ``memory_frames`` > 0 the buffers also hold, in front of the context, up to that many
    *memory* frames per row: past frames retrieved by place for the chunk being denoised
    (docs/design.md §6, view memory in the cache). They are written by a forward through
    :meth:`memory_writer` (each frame attends to itself alone), replaced whenever the retrieval
    changes, read only by forwards through :meth:`reading_memory` (denoising passes; clean
    writes see the causal context alone) and never evicted by the rolling window. A row's
    ``m`` memory frames sit right before its context, so in lockstep a reading forward still
    attends to one contiguous slice.

    With ``static`` a forward that keeps no gradient attends through :meth:`static_step`
    instead: to the whole preallocated buffer, under a key mask of the valid slots, its new K/V
    written at their slots by index tensors. Every such forward of a given kind (frames, rows)
    then has the same tensor shapes, whatever the cache holds, so ``torch.compile`` with
    ``dynamic=False`` (and CUDA graphs) captures it once; ``compile`` names how
    (:func:`compile_streaming`), read by the backbone. The layout and the bookkeeping are
    the same as without it, so both kinds of forward may share one cache.
    """

    def __init__(self, *, num_layers: int, batch_size: int, num_heads: int, head_dim: int,
                 tokens_per_frame: int, window_frames: int, sink_frames: int, max_new_frames: int,
                 device: torch.device | str, dtype: torch.dtype, streams: tuple[str, ...] = ("main",),
                 memory_frames: int = 0, static: bool = False, compile=None):
        if window_frames < 1:
            raise ValueError(f"window_frames must be >= 1, got {window_frames}")
        if sink_frames < 0:
            raise ValueError(f"sink_frames must be >= 0, got {sink_frames}")
        if memory_frames < 0:
            raise ValueError(f"memory_frames must be >= 0, got {memory_frames}")
        self.num_layers = num_layers
        self.batch_size = batch_size
        self.tokens_per_frame = tokens_per_frame
        self.window_frames = window_frames
        self.sink_frames = sink_frames
        self.max_new_frames = max_new_frames
        self.memory_frames = memory_frames
        self.base = memory_frames * tokens_per_frame  # the context starts here, the memory ends here
        capacity = (memory_frames + sink_frames + window_frames + max_new_frames) * tokens_per_frame
        shape = (batch_size, num_heads, capacity, head_dim)
        # One stream per attention that caches: "main" (self-attention), "prope" (camera branch).
        self.streams = {name: ([torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)],
                               [torch.zeros(shape, device=device, dtype=dtype) for _ in range(num_layers)])
                        for name in streams}
        self.row_positions: list[list[int]] = [[] for _ in range(batch_size)]  # cached frames per row, in order
        self.num_frames_written = [0] * batch_size
        self.memory_counts = [0] * batch_size  # memory frames each row holds now
        self.capacity = capacity
        self.static = static or compile is not None
        self.compile = compile  # None: eager; else the torch.compile mode or backend (compile_streaming)
        if compile is not None:
            # CUDA graphs keep the buffers' addresses and write into them in place
            for keys, values in self.streams.values():
                for buf in keys + values:
                    torch._dynamo.mark_static_address(buf)

    # -- bookkeeping ---------------------------------------------------------------------------
    @property
    def frame_positions(self) -> list[int]:
        """Positions of row 0's cached frames (all rows, in lockstep)."""
        return self.row_positions[0]

    @property
    def num_frames(self) -> int:
        return len(self.row_positions[0])

    def reset(self) -> None:
        self.reset_rows(range(self.batch_size))

    def reset_rows(self, rows) -> None:
        for r in rows:
            self.row_positions[r] = []
            self.num_frames_written[r] = 0
            self.memory_counts[r] = 0

    def rows(self, rows) -> "KVCacheRows":
        return KVCacheRows(self, list(rows))

    def _check(self, key: torch.Tensor, rows: list[int]) -> None:
        if key.shape[2] > self.max_new_frames * self.tokens_per_frame:
            raise ValueError(f"a streaming forward may hold at most {self.max_new_frames} frames "
                             f"({self.max_new_frames * self.tokens_per_frame} tokens), got {key.shape[2]} tokens")
        if key.shape[0] != len(rows):
            raise ValueError(f"cache batch is {len(rows)}, forward batch is {key.shape[0]}")

    # -- attention -----------------------------------------------------------------------------
    def extend(self, layer: int, key: torch.Tensor, value: torch.Tensor, stream: str = "main",
               rows: list[int] | None = None, memory: bool = False):
        """Place a forward's K/V (b, heads, L_new, D) after each row's context.

        Returns (keys, values, key_mask): context + new for the forward's rows (preceded by the
        rows' memory frames when ``memory``), and None or a (b, 1, 1, L_keys) bool mask of the
        valid slots when rows hold different numbers of frames.
        """
        all_rows = rows is None
        rows = list(range(self.batch_size)) if all_rows else rows
        self._check(key, rows)
        if stream not in self.streams:
            raise ValueError(f"this cache has streams {list(self.streams)}, not {stream!r}")
        keys, values = self.streams[stream][0][layer], self.streams[stream][1][layer]
        tpf, new, base = self.tokens_per_frame, key.shape[2], self.base
        lengths = [len(self.row_positions[r]) * tpf for r in rows]
        recalled = [self.memory_counts[r] * tpf if memory else 0 for r in rows]
        training = torch.is_grad_enabled() and (key.requires_grad or value.requires_grad)
        if len(set(lengths)) == 1 and len(set(recalled)) == 1:  # lockstep: one slice for all rows
            start, first = base + lengths[0], base - recalled[0]
            index = slice(None) if all_rows else rows
            keys[index, :, start:start + new] = key.detach()
            values[index, :, start:start + new] = value.detach()
            if training:
                # Training through a cached rollout (stage 3): the buffer is overwritten later, so
                # hand autograd a fresh tensor instead of a view of it.
                return (torch.cat([keys[index, :, first:start], key], dim=2),
                        torch.cat([values[index, :, first:start], value], dim=2), None)
            return keys[index, :, first:start + new], values[index, :, first:start + new], None
        for i, (r, length) in enumerate(zip(rows, lengths)):
            keys[r, :, base + length:base + length + new] = key[i].detach()
            values[r, :, base + length:base + length + new] = value[i].detach()
        first, end = base - max(recalled), base + max(lengths) + new
        out_keys, out_values = keys[rows, :, first:end], values[rows, :, first:end]
        if training:
            out_keys, out_values = out_keys.clone(), out_values.clone()
            for i, length in enumerate(lengths):
                out_keys[i, :, base - first + length:base - first + length + new] = key[i]
                out_values[i, :, base - first + length:base - first + length + new] = value[i]
        slots = torch.arange(first, end, device=key.device)[None, :]
        starts = base - torch.tensor(recalled, device=key.device)[:, None]
        ends = base + torch.tensor(lengths, device=key.device)[:, None] + new
        mask = (slots >= starts) & (slots < ends)
        return out_keys, out_values, mask[:, None, None, :]

    def static_step(self, num_new: int, *, token_mask: torch.Tensor | None = None, memory: bool = False,
                    device: torch.device | str | None = None) -> "StaticStep | None":
        """What a forward of ``num_new`` tokens (all rows) attends to in static mode, or None (not
        static, or a forward that may keep gradients: it takes :meth:`extend`'s path).

        The mask of the valid slots (a row's memory frames when ``memory``, its context, the
        forward's own slots) and the slots to write are tensors built here from the bookkeeping,
        before the forward, so a compiled forward holds no Python state. ``token_mask``
        (num_new, keys) is a streaming frame mask expanded to tokens, over [the cache's frames ;
        the forward's] (rows in lockstep): the forward's own frames then see what it allows."""
        if not self.static or torch.is_grad_enabled():
            return None
        if num_new > self.max_new_frames * self.tokens_per_frame:
            raise ValueError(f"a streaming forward may hold at most {self.max_new_frames} frames "
                             f"({self.max_new_frames * self.tokens_per_frame} tokens), got {num_new} tokens")
        tpf, base = self.tokens_per_frame, self.base
        lengths = torch.tensor([len(p) * tpf for p in self.row_positions])
        recalled = torch.tensor(self.memory_counts) * tpf if memory else torch.zeros_like(lengths)
        starts = base + lengths  # (b,) where each row's new K/V go
        index = starts[:, None] + torch.arange(num_new)  # (b, num_new)
        slots = torch.arange(self.capacity)
        if token_mask is None:
            valid = (slots >= base - recalled[:, None]) & (slots < (starts + num_new)[:, None])  # (b, capacity)
            mask = valid[:, None, None, :]
        else:
            keys = int(lengths[0]) + num_new
            if len(set(lengths.tolist())) != 1 or recalled.any() or token_mask.shape != (num_new, keys):
                raise ValueError(f"a streaming frame_mask must cover the cache's frames and the forward's "
                                 f"({keys} keys, rows in lockstep), got {tuple(token_mask.shape)}")
            mask = torch.zeros(num_new, self.capacity, dtype=torch.bool, device=token_mask.device)
            mask[:, base:base + keys] = token_mask
            mask = mask[None, None]
        return StaticStep(self.streams, index.to(device), mask.to(device), self.compile)

    def kept_after_commit(self, num_new: int) -> torch.Tensor:
        """(frames held + num_new,) bool: which of [the frames row 0 holds ; num_new more] a commit
        of the new ones keeps (the first ``sink_frames``, then the last ``window_frames``): the
        rule of :meth:`commit`, for a forward that must see the cache as the commit will leave it."""
        total = self.num_frames + num_new
        kept = torch.zeros(total, dtype=torch.bool)
        num_sink = min(self.sink_frames, total)
        kept[:num_sink] = True
        kept[max(num_sink, total - self.window_frames):] = True
        return kept

    def commit(self, frame_positions: list[int], rows: list[int] | None = None) -> None:
        """Keep the frames the last forward placed, then evict beyond sink + window, per row."""
        rows = list(range(self.batch_size)) if rows is None else rows
        tpf = self.tokens_per_frame
        moves: dict[tuple[int, int, int], list[int]] = {}
        for r in rows:
            self.row_positions[r] = self.row_positions[r] + list(frame_positions)
            self.num_frames_written[r] += len(frame_positions)
            count = len(self.row_positions[r])
            num_sink = min(self.sink_frames, count)
            excess = count - num_sink - self.window_frames
            if excess > 0:
                moves.setdefault((num_sink, excess, count), []).append(r)
                self.row_positions[r] = self.row_positions[r][:num_sink] + self.row_positions[r][num_sink + excess:]
        for (num_sink, excess, count), moved in moves.items():
            index = slice(None) if len(moved) == self.batch_size else moved
            keep_from, keep_to = self.base + (num_sink + excess) * tpf, self.base + count * tpf
            for keys, values in self.streams.values():
                for buf in keys + values:
                    # Source and destination overlap: copy through a temporary.
                    buf[index, :, self.base + num_sink * tpf: keep_to - excess * tpf] = \
                        buf[index, :, keep_from:keep_to].clone()

    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for keys, values in self.streams.values() for t in keys + values)

    def frozen(self, memory: bool = False) -> "FrozenContext":
        """A read-only copy of the context as it is now (rows in lockstep), for a forward whose
        gradient is taken later: gradient checkpointing recomputes the forward during backward,
        by which time this cache holds later chunks (the pitfall of docs/design.md §2). With
        ``memory`` the rows' memory frames come first, as a reading forward sees them."""
        counts = {len(positions) for positions in self.row_positions}
        recalled = {self.memory_counts[r] if memory else 0 for r in range(self.batch_size)}
        if len(counts) != 1 or len(recalled) != 1:
            raise ValueError(f"a frozen context needs rows in lockstep, the rows hold {sorted(counts)} frames and "
                             f"{sorted(recalled)} memory frames")
        first, end = self.base - recalled.pop() * self.tokens_per_frame, self.base + counts.pop() * self.tokens_per_frame
        return FrozenContext({name: ([k[:, :, first:end].clone() for k in keys], [v[:, :, first:end].clone() for v in values])
                              for name, (keys, values) in self.streams.items()})

    # -- memory frames -------------------------------------------------------------------------
    def memory_writer(self, counts: list[int]) -> "MemoryWriter":
        """The cache a forward over ``memory_frames`` frames per row (one clean pass) writes the
        memory through: row r keeps the *last* ``counts[r]`` of them (put a row's padding first)."""
        if len(counts) != self.batch_size or any(not 0 <= c <= self.memory_frames for c in counts):
            raise ValueError(f"counts must give 0..{self.memory_frames} memory frames for each of the "
                             f"{self.batch_size} rows, got {list(counts)}")
        return MemoryWriter(self, list(counts))

    def reading_memory(self) -> "MemoryReader":
        """This cache as a denoising forward that also attends to the memory frames sees it."""
        return MemoryReader(self)

    def clear_memory(self, rows=None) -> None:
        for r in range(self.batch_size) if rows is None else rows:
            self.memory_counts[r] = 0


class MemoryWriter:
    """The cache seen by the forward that writes memory frames (:meth:`KVCache.memory_writer`):
    the frames' K/V go into the memory slots, and each frame attends to itself alone, so a
    frame's K/V depend on it, its position, its camera and the prompt, not on its neighbours."""

    def __init__(self, cache: KVCache, counts: list[int]):
        self.cache, self.counts = cache, counts

    def extend(self, layer, key, value, stream="main"):
        cache = self.cache
        tpf = cache.tokens_per_frame
        if key.shape[0] != cache.batch_size or key.shape[2] != cache.memory_frames * tpf:
            raise ValueError(f"a memory write holds {cache.memory_frames} frames ({cache.memory_frames * tpf} "
                             f"tokens) for each of the {cache.batch_size} rows, got {tuple(key.shape[:3])}")
        keys, values = cache.streams[stream][0][layer], cache.streams[stream][1][layer]
        keys[:, :, :cache.base] = key.detach()
        values[:, :, :cache.base] = value.detach()
        frame = torch.arange(key.shape[2], device=key.device) // tpf
        return key, value, (frame[:, None] == frame[None, :])[None, None]

    def commit(self, frame_positions):
        self.cache.memory_counts = list(self.counts)


class MemoryReader:
    """A :class:`KVCache` as denoising forwards see it when they also read its memory frames."""

    def __init__(self, cache: KVCache):
        self.cache = cache

    def extend(self, layer, key, value, stream="main"):
        return self.cache.extend(layer, key, value, stream, memory=True)

    def static_step(self, num_new: int, *, token_mask=None, device=None) -> "StaticStep | None":
        return self.cache.static_step(num_new, token_mask=token_mask, memory=True, device=device)

    def commit(self, frame_positions):
        raise RuntimeError("a memory-reading forward denoises, it does not write: write through the KVCache")

    def frozen(self) -> "FrozenContext":
        return self.cache.frozen(memory=True)


class StaticStep:
    """One static-mode forward's view of a :class:`KVCache` (:meth:`KVCache.static_step`): its
    K/V go to the precomputed slots and attention reads every slot under the precomputed mask.
    Nothing here depends on how many frames the cache holds except tensor values."""

    def __init__(self, streams, index: torch.Tensor, mask: torch.Tensor, compile=None):
        self.streams = streams
        self.index = index  # (b, L_new) int64 slots of the forward's tokens
        self.mask = mask  # (b, 1, 1, capacity) or (1, 1, L_new, capacity) bool, True = may attend
        self.compile = compile

    def extend(self, layer, key, value, stream="main"):
        keys, values = self.streams[stream][0][layer], self.streams[stream][1][layer]
        index = self.index[:, None, :, None].expand(-1, key.shape[1], -1, key.shape[3])
        keys.scatter_(2, index, key.to(keys.dtype))
        values.scatter_(2, index, value.to(values.dtype))
        return keys, values, self.mask

    def commit(self, frame_positions):
        raise RuntimeError("a static step is one forward's view: commit through the KVCache")


def compile_streaming(function, spec):
    """``torch.compile`` of ``function`` with static shapes, as ``spec`` names it: a mode
    ("default", "reduce-overhead": CUDA graphs, "max-autotune", "max-autotune-no-cudagraphs") or
    else a backend (a name such as "aot_eager", or a callable)."""
    modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
    if isinstance(spec, str) and spec in modes:
        return torch.compile(function, mode=spec, dynamic=False, fullgraph=True)
    return torch.compile(function, backend=spec, dynamic=False, fullgraph=True)


class FrozenContext:
    """Context K/V that forwards read and never change (:meth:`KVCache.frozen`)."""

    def __init__(self, streams: dict[str, tuple[list[torch.Tensor], list[torch.Tensor]]]):
        self.streams = streams

    def extend(self, layer, key, value, stream="main"):
        keys, values = self.streams[stream]
        return torch.cat([keys[layer], key], dim=2), torch.cat([values[layer], value], dim=2), None

    def commit(self, frame_positions):
        raise RuntimeError("a frozen context cannot be written: write through the KVCache it was taken from")


class KVCacheRows:
    """A view of some rows of a :class:`KVCache` (same API), for forwards on a sub-batch."""

    def __init__(self, cache: KVCache, rows: list[int]):
        self.cache, self.rows_index = cache, rows

    def extend(self, layer, key, value, stream="main"):
        return self.cache.extend(layer, key, value, stream, self.rows_index)

    def commit(self, frame_positions):
        self.cache.commit(frame_positions, self.rows_index)


def causal_frame_mask(positions: torch.Tensor, block_ids: torch.Tensor, *, noisy: torch.Tensor | None = None,
                      window_frames: int | None = None, sink_frames: int = 0,
                      memory: torch.Tensor | None = None, reads_memory: torch.Tensor | None = None) -> torch.Tensor:
    """Frame-level mask (F, F), True where query frame i may attend to key frame j.

    A frame sees the clean frames of earlier blocks (chunks) and the frames of its own block
    with the same noisiness. ``noisy`` marks the noisy copy in teacher forcing (stage 1:
    [clean GT ; noisy GT], the noisy chunk attends to clean chunks before it and to itself).
    With ``window_frames`` only earlier frames within that many positions of the block start,
    plus the first ``sink_frames`` positions, stay visible: exactly what :class:`KVCache` keeps.

    ``memory`` (F,) bool marks retrieved memory frames (what :meth:`KVCache.memory_writer`
    holds): each sees itself alone, and only the frames marked ``reads_memory`` (default: the
    noisy ones) see them, whatever the window; other frames never see them.
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
    mask = earlier | same
    if memory is None:
        return mask
    memory = torch.as_tensor(memory, dtype=torch.bool)
    readers = noisy if reads_memory is None else torch.as_tensor(reads_memory, dtype=torch.bool)
    mask = mask & ~memory[None, :] & ~memory[:, None]
    return mask | (memory[None, :] & readers[:, None] & ~memory[:, None]) | torch.diag(memory)


def expand_frame_mask(frame_mask: torch.Tensor, tokens_per_frame: int) -> torch.Tensor:
    """Frame-level (F, F) mask → token-level (F·T, F·T) mask."""
    return frame_mask.repeat_interleave(tokens_per_frame, 0).repeat_interleave(tokens_per_frame, 1)


class CausalBackbone(nn.Module, ABC):
    """The adapter boundary every backbone implements (see the module docstring)."""

    prediction_type: str
    text_length: int | None = None
    """Prompts are zero-padded to this many tokens, as the pretrained text encoder's outputs were
    (Wan: UMT5's 512), because a backbone without a text mask attends to the padding and its
    count changes the output; None: the backbone masks padding, any length gives the same."""

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
                  sink_frames: int, max_new_frames: int, memory_frames: int = 0) -> KVCache: ...

    @abstractmethod
    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, frame_positions: torch.Tensor,
                prompt: PromptState, *, kv_cache: KVCache | None = None, cache_write: bool = False,
                frame_mask: torch.Tensor | None = None, conditions=None,
                reference: torch.Tensor | None = None) -> torch.Tensor:
        """hidden_states (B, C, F, H, W) noisy latents; timestep (B, F) in [0, 1000];
        frame_positions (F,) integer positions; conditions: per-frame camera/actions
        (:class:`minwm_env.conditioning.FrameConditions`) when the model is conditioned;
        reference: the latent a residual model's output is added to; returns the raw
        prediction (B, C, F, H, W)."""
