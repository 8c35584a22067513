"""The streaming generator: chunk-by-chunk autoregressive generation with a KV cache.

    model = load_model("tiny")
    gen = StreamingGenerator(model)                 # few-step sampler from the model settings
    first = gen.reset(seed=0, image=start_image)    # optional start image (B, 3, H, W) in [-1, 1]
    out = gen.next_chunk()                          # out.latents, out.frames, out.timings

Each step draws noise for ``chunk_frames`` latent frames, denoises them with the sampler
against the cache of earlier clean frames, and decodes them with the VAE's streaming decoder.
The finished chunk is written into the cache by a clean (t = 0) pass, deferred to the start
of the next step so a chunk's frames come out as early as possible (DESIGN.md §4).

:func:`generate_clip` is the bidirectional baseline: one sampler run over a whole clip.
"""

from __future__ import annotations

import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Sequence

import torch

from .backbones import KVCache, PromptState
from .models import WorldModel
from .samplers import EulerSampler, FewStepSampler, Sampler, randn_rows


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


def _seeds(seed: int | Sequence[int] | None, batch_size: int) -> list[int]:
    if seed is None:
        seed = secrets.randbits(62)
    if isinstance(seed, int):
        return [seed + i for i in range(batch_size)]
    seeds = [int(s) for s in seed]
    if len(seeds) != batch_size:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch_size}")
    return seeds


def pad_prompts(embeds: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero-pad prompt embeddings (B, L, D) to a common length, as Wan pads UMT5 tokens to 512,
    so conditional and unconditional branches batch into one forward."""
    length = max(e.shape[1] for e in embeds)
    return [torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[1])) for e in embeds]


class StreamingGenerator:
    """Autoregressive, streaming generation from a :class:`~minwm_env.models.WorldModel`."""

    def __init__(self, model: WorldModel, sampler: Sampler | None = None, *, batch_size: int = 1,
                 chunk_frames: int | None = None, window_frames: int | None = None, sink_frames: int | None = None):
        settings = model.settings
        self.model = model
        self.sampler = sampler or FewStepSampler(timesteps=settings.sampler_timesteps, shift=settings.shift)
        self.batch_size = batch_size
        self.chunk_frames = chunk_frames or settings.chunk_frames
        self.window_frames = window_frames or settings.window_frames
        self.sink_frames = settings.sink_frames if sink_frames is None else sink_frames
        self.latent_height, self.latent_width = model.codec.latent_size(settings.height, settings.width)
        self.num_branches = 1 if self.sampler.guidance_scale == 1.0 else 2
        self.cache: KVCache = model.backbone.new_cache(
            batch_size=batch_size * self.num_branches, latent_height=self.latent_height,
            latent_width=self.latent_width, window_frames=self.window_frames, sink_frames=self.sink_frames,
            max_new_frames=self.chunk_frames)
        self._prompt: PromptState | None = None
        self._generators: list[torch.Generator] = []
        self._pending: tuple[torch.Tensor, torch.Tensor] | None = None
        self._stream = None
        self.next_position = 0

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        return (self.model.backbone.latent_channels, self.chunk_frames, self.latent_height, self.latent_width)

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
        backbone = self.model.backbone
        device, dtype = self.model.device, self.model.dtype

        def embeds(value):
            if value is None:
                return backbone.null_prompt_embeds(self.batch_size)
            value = value.to(device=device, dtype=dtype)
            if value.ndim == 2:
                value = value.unsqueeze(0)
            if value.shape[0] == 1 and self.batch_size > 1:
                value = value.expand(self.batch_size, -1, -1)
            return value

        branches = [embeds(prompt_embeds)]
        if self.num_branches == 2:
            branches.append(embeds(negative_prompt_embeds))
        for value in branches:
            if value.shape[0] != self.batch_size:
                raise ValueError(f"prompt embeddings have batch {value.shape[0]}, the generator has {self.batch_size}")
        with torch.no_grad():
            return PromptState.cat([backbone.encode_prompt(b) for b in pad_prompts(branches)])

    @torch.no_grad()
    def reset(self, seed: int | Sequence[int] | None = None, image: torch.Tensor | None = None,
              prompt_embeds: torch.Tensor | None = None, negative_prompt_embeds: torch.Tensor | None = None,
              decode: bool = True) -> torch.Tensor | None:
        """Start an episode. Row i of the batch draws its noise from seed[i] (an int seed s
        gives rows s, s+1, ...). A start image becomes the first clean latent frame in the
        cache; its decoded reconstruction (B, 3, 1, H, W) is returned when ``decode``."""
        if image is not None:
            self._check_image(image)
        prompt = self._prompt_state(prompt_embeds, negative_prompt_embeds)  # validates before any state changes
        self._generators = [torch.Generator().manual_seed(s) for s in _seeds(seed, self.batch_size)]
        self._prompt = prompt
        self.cache.reset()
        self._pending = None
        self._stream = self.model.codec.stream()
        self.next_position = 0
        if image is None:
            return None
        latent = self.model.codec.encode_image(image.to(self.model.device)).to(self.model.dtype)
        self._write_cache(latent, torch.tensor([0]))
        self.next_position = 1
        return self._stream.push(latent) if decode else None

    def _write_cache(self, latents: torch.Tensor, positions: torch.Tensor) -> None:
        latents = latents.repeat(self.num_branches, 1, 1, 1, 1)
        timestep = torch.zeros(latents.shape[0], latents.shape[2], device=latents.device)
        self.model.backbone(latents, timestep, positions, self._prompt, kv_cache=self.cache, cache_write=True)

    def _predict(self, positions: torch.Tensor):
        backbone = self.model.backbone

        def predict(x: torch.Tensor, sigma: float, with_uncond: bool):
            if with_uncond != (self.num_branches == 2):
                raise ValueError("the sampler's guidance changed after the generator was built")
            x_in = x.repeat(self.num_branches, 1, 1, 1, 1)
            timestep = torch.full((x_in.shape[0], x_in.shape[2]), sigma * 1000.0, device=x.device)
            out = backbone(x_in, timestep, positions, self._prompt, kv_cache=self.cache)
            return (out[: x.shape[0]], out[x.shape[0]:]) if with_uncond else (out, None)

        return predict

    @torch.no_grad()
    def next_chunk(self, decode: bool = True) -> ChunkOutput:
        if self._prompt is None:
            raise RuntimeError("call reset() before next_chunk()")
        timings: dict[str, float] = {}
        device = self.model.device
        with timed(timings, "time/chunk_s", device):
            with timed(timings, "time/cache_s", device):
                if self._pending is not None:
                    self._write_cache(*self._pending)
                    self._pending = None
            positions = torch.arange(self.next_position, self.next_position + self.chunk_frames)
            with timed(timings, "time/denoise_s", device):
                noise = randn_rows((self.batch_size, *self.latent_shape), self._generators, device, self.model.dtype)
                latents = self.sampler.sample(self._predict(positions), noise, self.model.backbone.prediction_type,
                                              self._generators)
            frames = None
            if decode:
                with timed(timings, "time/decode_s", device):
                    frames = self._stream.push(latents)
        self._pending = (latents, positions)
        self.next_position += self.chunk_frames
        return ChunkOutput(latents, frames, positions.tolist(), timings)


@torch.no_grad()
def generate_clip(model: WorldModel, sampler: Sampler | None = None, *, num_latent_frames: int, batch_size: int = 1,
                  seed: int = 0, prompt_embeds: torch.Tensor | None = None,
                  negative_prompt_embeds: torch.Tensor | None = None) -> torch.Tensor:
    """Bidirectional baseline: denoise a whole clip at once (full attention), Wan's way."""
    sampler = sampler or EulerSampler()
    backbone = model.backbone
    latent_h, latent_w = model.codec.latent_size(model.settings.height, model.settings.width)
    shape = (batch_size, backbone.latent_channels, num_latent_frames, latent_h, latent_w)
    generators = [torch.Generator().manual_seed(s) for s in _seeds(seed, batch_size)]
    branches = [prompt_embeds if prompt_embeds is not None else backbone.null_prompt_embeds(batch_size)]
    if sampler.guidance_scale != 1.0:
        branches.append(negative_prompt_embeds if negative_prompt_embeds is not None
                        else backbone.null_prompt_embeds(batch_size))
    prompt = PromptState.cat([backbone.encode_prompt(b.to(model.device, model.dtype)) for b in pad_prompts(branches)])
    positions = torch.arange(num_latent_frames)

    def predict(x, sigma, with_uncond):
        x_in = torch.cat([x, x]) if with_uncond else x
        timestep = torch.full((x_in.shape[0], num_latent_frames), sigma * 1000.0, device=x.device)
        out = backbone(x_in, timestep, positions, prompt)
        return (out[:batch_size], out[batch_size:]) if with_uncond else (out, None)

    noise = randn_rows(shape, generators, model.device, model.dtype)
    return sampler.sample(predict, noise, backbone.prediction_type, generators)
