"""The streaming generator: chunk-by-chunk autoregressive generation with a KV cache.

    model = load_model("tiny")
    gen = StreamingGenerator(model)                 # few-step sampler from the model settings
    first = gen.reset(seed=0, image=start_image)    # optional start image (B, 3, H, W) in [-1, 1]
    out = gen.next_chunk()                          # out.latents, out.frames, out.timings

Each step draws noise for ``chunk_frames`` latent frames, denoises them with the sampler
against the cache of earlier clean frames, and decodes them with the VAE's streaming decoder.
What a chunk is conditioned on and what it leaves in the cache (the clean write, deferred to
the start of the next step so a chunk's frames come out as early as possible) is the shared
streaming step of :mod:`minwm_env.streaming` (docs/design.md §6).

:func:`generate_clip` is the bidirectional baseline: one sampler run over a whole clip.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .backbones import KVCache, PromptState
from .conditioning import ActionSpec
from .models import WorldModel
from .samplers import EulerSampler, FewStepSampler, Sampler, randn_rows, row_generators
from .streaming import guidance_prompt


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextmanager
def timed(timings: dict[str, float], key: str, device: torch.device):
    """Add the wall time of the block to ``timings[key]`` (synchronising CUDA around it)."""
    _sync(device)
    start = time.perf_counter()
    yield
    _sync(device)
    timings[key] = timings.get(key, 0.0) + time.perf_counter() - start


@dataclass
class ChunkOutput:
    latents: torch.Tensor  # (B, C, chunk_frames, h, w), normalised latents
    frames: torch.Tensor | None  # (B, 3, T, H, W) in [-1, 1], or None when not decoded
    frame_positions: list[int]  # latent frame positions of this chunk
    timings: dict[str, float] = field(default_factory=dict)  # seconds: time/denoise_s, time/cache_s, ...
    c2w: torch.Tensor | None = None  # (B, chunk_frames, 4, 4) float64 camera poses, when actions are camera deltas
    actions: torch.Tensor | None = None  # (B, chunk_frames, d) the validated actions of the chunk


class StreamingGenerator:
    """Autoregressive, streaming generation from a :class:`~minwm_env.models.WorldModel`.

    Actions: ``next_chunk(actions)`` takes one action per latent frame, (B, chunk_frames, d),
    in the model's action space (:attr:`action_spec`: the model's own, else camera deltas).
    When the action space is camera deltas the generator composes them into camera poses
    (the episode's first frame is the identity; the action of frame k moves the camera from
    frame k−1 to k) and hands poses and actions to the model's branches. A model without
    conditioning branches ignores actions, but poses are still tracked.

    What a chunk is conditioned on and what it leaves in the cache is decided by the
    :class:`~minwm_env.streaming.ChunkStream` in :attr:`stream` (shared with training's
    rollouts); this class adds the noise seeds, guidance prompts, VAE decoding and timings.

    ``static_shapes`` gives the stream a static cache (every chunk's forwards have the same
    shapes); ``compile`` (None, a torch.compile mode such as "reduce-overhead" for CUDA graphs,
    or a backend such as "aot_eager") compiles the backbone's streaming forward on top of it.
    """

    def __init__(self, model: WorldModel, sampler: Sampler | None = None, *, batch_size: int = 1,
                 chunk_frames: int | None = None, window_frames: int | None = None, sink_frames: int | None = None,
                 memory_frames: int | None = None, static_shapes: bool = False, compile=None,
                 fold_writes: bool = True):
        settings = model.settings
        self.model = model
        self.sampler = sampler or default_sampler(settings)
        self.batch_size = batch_size
        self.num_branches = 1 if self.sampler.guidance_scale == 1.0 else 2
        self.stream = model.stream(batch_size=batch_size, num_branches=self.num_branches,
                                  chunk_frames=chunk_frames, window_frames=window_frames, sink_frames=sink_frames,
                                  memory_frames=memory_frames, static_shapes=static_shapes, compile=compile,
                                  fold_writes=fold_writes)
        self.chunk_frames = self.stream.chunk_frames
        self.action_spec: ActionSpec = self.stream.action_spec
        self.tracks_camera = self.stream.tracks_camera
        self.cache: KVCache = self.stream.cache
        self._generators: list[torch.Generator] = []
        self._decoder = None

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return self.stream.latent_shape

    @property
    def c2w(self) -> torch.Tensor:
        """(B, 4, 4) float64 camera-to-world pose of the last frame."""
        return self.stream.c2w

    @property
    def next_position(self) -> int:
        return self.stream.next_position

    def _check_image(self, image: torch.Tensor) -> None:
        height, width = self.model.settings.height, self.model.settings.width
        if not isinstance(image, torch.Tensor) or not image.is_floating_point():
            raise TypeError(f"image must be a float tensor (B, 3, H, W) in [-1, 1], got {type(image).__name__}"
                            f"{'' if not isinstance(image, torch.Tensor) else ' of dtype ' + str(image.dtype)}")
        expected = (self.batch_size, 3, height, width)
        if tuple(image.shape) != expected:
            raise ValueError(f"image must have shape {expected}, got {tuple(image.shape)}")
        if not torch.isfinite(image).all():
            raise ValueError("image contains NaN or inf")

    def _prompt_state(self, prompt_embeds, negative_prompt_embeds) -> PromptState:
        device, dtype = self.model.device, self.model.dtype

        def embeds(value):
            if value is None:
                return None
            value = value.to(device=device, dtype=dtype)
            if value.ndim == 2:
                value = value.unsqueeze(0)
            if value.shape[0] == 1 and self.batch_size > 1:
                value = value.expand(self.batch_size, -1, -1)
            if value.shape[0] != self.batch_size:
                raise ValueError(f"prompt embeddings have batch {value.shape[0]}, the generator has {self.batch_size}")
            return value

        branches = [embeds(prompt_embeds)] + ([embeds(negative_prompt_embeds)] if self.num_branches == 2 else [])
        with torch.no_grad():
            return guidance_prompt(self.model.backbone, branches, self.batch_size)

    @torch.no_grad()
    def reset(self, seed: int | Sequence[int] | None = None, image: torch.Tensor | None = None,
              prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
              decode: bool = True, start_latents: torch.Tensor | None = None) -> torch.Tensor | None:
        """Start an episode. Row i of the batch draws its noise from seed[i] (an int seed s
        gives rows s, s+1, ...). A start image becomes the first clean latent frame in the
        cache; its decoded reconstruction (B, 3, 1, H, W) is returned when ``decode``.
        ``start_latents`` (B, C, 1, h, w) gives that first frame already encoded."""
        if image is not None and start_latents is not None:
            raise ValueError("give a start image or start latents, not both")
        if start_latents is not None:
            expected = (self.batch_size, self.model.backbone.latent_channels, 1, *self.latent_shape[2:])
            if tuple(start_latents.shape) != expected:
                raise ValueError(f"start_latents must have shape {expected}, got {tuple(start_latents.shape)}")
        if image is not None:
            self._check_image(image)
        prompt = self._prompt_state(prompt_embeds, negative_prompt_embeds)  # validates before any state changes
        generators = row_generators(seed, self.batch_size)
        latent = start_latents
        if image is not None:
            latent = self.model.codec.encode_image(image.to(self.model.device)).to(self.model.dtype)
        self._generators = generators
        self._decoder = self.model.codec.stream()
        self.stream.begin(prompt, latent)
        if latent is None:
            return None
        frames = self._decoder.push(self.stream.reference)  # the decoder's causal state must start from the image
        return frames if decode else None

    @torch.no_grad()
    def reset_rows(self, rows: Sequence[int], seeds: Sequence[int], images: torch.Tensor,
                   decode: bool = True) -> torch.Tensor | None:
        """Restart some rows of the batch from start images (len(rows), 3, H, W) while the others
        continue (a vector env's independent resets). Each restarted row then evolves exactly
        as a fresh single-row generator seeded alike would (up to float rounding: its frames
        sit at later absolute positions, and RoPE is relative only up to rounding)."""
        rows = [int(r) for r in rows]
        if self.stream.prompt is None or self._decoder is None:
            raise RuntimeError("call reset() once before reset_rows()")
        if len(set(rows)) != len(rows) or not all(0 <= r < self.batch_size for r in rows):
            raise ValueError(f"rows must be distinct indices in [0, {self.batch_size}), got {rows}")
        if len(seeds) != len(rows):
            raise ValueError(f"got {len(seeds)} seeds for {len(rows)} rows")
        height, width = self.model.settings.height, self.model.settings.width
        expected = (len(rows), 3, height, width)
        if not isinstance(images, torch.Tensor) or not images.is_floating_point() or tuple(images.shape) != expected:
            raise ValueError(f"images must be a float tensor of shape {expected} in [-1, 1]")
        if not torch.isfinite(images).all():
            raise ValueError("images contain NaN or inf")
        latent = self.model.codec.encode_image(images.to(self.model.device)).to(self.model.dtype)
        self.stream.begin_rows(rows, latent)
        for r, seed in zip(rows, seeds):
            self._generators[r] = torch.Generator().manual_seed(int(seed))
        frames = self._decoder.reset_rows(rows, latent)
        return frames if decode else None

    def flush(self) -> None:
        """Write the last chunk into the cache now (otherwise the next chunk does it first)."""
        self.stream.flush()

    @torch.no_grad()
    def next_chunk(self, actions: torch.Tensor | None = None, decode: bool = True, on_step=None) -> ChunkOutput:
        """Generate the next chunk under ``actions`` (B, chunk_frames, d); see the class doc.
        ``on_step(i, sigma, x)`` is handed to the sampler (to record ODE trajectories)."""
        if self.stream.prompt is None:
            raise RuntimeError("call reset() before next_chunk()")
        plan = self.stream.plan(actions)
        timings: dict[str, float] = {}
        device = self.model.device
        with timed(timings, "time/chunk_s", device):
            with timed(timings, "time/cache_s", device):
                if not self.stream.can_fold(plan):  # folded, the write costs part of the first forward
                    self.stream.flush()
            with timed(timings, "time/denoise_s", device):
                noise = randn_rows((self.batch_size, *self.latent_shape), self._generators, device, self.model.dtype)
                latents = self.stream.denoise(plan, self.sampler, noise, self._generators, on_step=on_step)
            frames = None
            if decode:
                with timed(timings, "time/decode_s", device):
                    frames = self._decoder.push(latents)
        self.stream.commit(plan, latents)
        return ChunkOutput(latents, frames, plan.positions.tolist(), timings,
                           plan.c2w if self.tracks_camera else None, plan.actions)


def default_sampler(settings) -> Sampler:
    """The sampler a model's settings name (``ModelSettings.sampler``)."""
    if settings.sampler == "euler":
        return EulerSampler(num_steps=len(settings.sampler_timesteps), shift=settings.shift, guidance_scale=1.0)
    return FewStepSampler(timesteps=settings.sampler_timesteps, shift=settings.shift)


@torch.no_grad()
def generate_clip(model: WorldModel, sampler: Sampler | None = None, *, num_latent_frames: int, batch_size: int = 1,
                  seed: int = 0, prompt_embeds: torch.Tensor | None = None,
                  negative_prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional baseline: denoise a whole clip at once (full attention), Wan's way."""
    sampler = sampler or EulerSampler()
    backbone = model.backbone
    latent_h, latent_w = model.codec.latent_size(model.settings.height, model.settings.width)
    shape = (batch_size, backbone.latent_channels, num_latent_frames, latent_h, latent_w)
    generators = row_generators(seed, batch_size)
    branches = [prompt_embeds] + ([negative_prompt_embeds] if sampler.guidance_scale != 1.0 else [])
    prompt = guidance_prompt(backbone, [None if e is None else e.to(model.device, model.dtype) for e in branches],
                             batch_size)
    positions = torch.arange(num_latent_frames)

    def predict(x, sigma, with_uncond):
        x_in = torch.cat([x, x]) if with_uncond else x
        timestep = torch.full((x_in.shape[0], num_latent_frames), sigma * 1000.0, device=x.device)
        out = backbone(x_in, timestep, positions, prompt)
        return (out[:batch_size], out[batch_size:]) if with_uncond else (out, None)

    noise = randn_rows(shape, generators, model.device, model.dtype)
    return sampler.sample(predict, noise, backbone.prediction_type, generators)
