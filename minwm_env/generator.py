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

from . import camera
from .backbones import KVCache, PromptState
from .conditioning import ActionSpec, FrameConditions, camera_action_spec
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
    c2w: torch.Tensor | None = None  # (B, chunk_frames, 4, 4) float64 camera poses, when actions are camera deltas
    actions: torch.Tensor | None = None  # (B, chunk_frames, d) the validated actions of the chunk


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
    """Autoregressive, streaming generation from a :class:`~minwm_env.models.WorldModel`.

    Actions: ``next_chunk(actions)`` takes one action per latent frame, (B, chunk_frames, d),
    in the model's action space (:attr:`action_spec`: the model's own, else camera deltas).
    When the action space is camera deltas the generator composes them into camera poses
    (the episode's first frame is the identity; the action of frame k moves the camera from
    frame k−1 to k) and hands poses and actions to the model's branches. A model without
    conditioning branches ignores actions, but poses are still tracked.
    """

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
        if settings.restart_context and not hasattr(model.codec, "restart_latent"):
            raise ValueError(f"restart_context needs a codec with restart_latent (space-to-depth); this model's "
                             f"codec is {type(model.codec).__name__}")
        self.num_branches = 1 if self.sampler.guidance_scale == 1.0 else 2
        self.cache: KVCache = model.backbone.new_cache(
            batch_size=batch_size * self.num_branches, latent_height=self.latent_height,
            latent_width=self.latent_width, window_frames=self.window_frames, sink_frames=self.sink_frames,
            max_new_frames=self.chunk_frames)
        config = model.backbone.conditioning_config
        self.action_spec: ActionSpec = config.action_spec or camera_action_spec()
        self.tracks_camera = self.action_spec.names == camera.DELTA_NAMES
        if config.uses_camera and not self.tracks_camera:
            raise ValueError(f"camera conditioning ({config.camera}) needs camera-delta actions, the model's "
                             f"action space is {list(self.action_spec.names)}")
        if settings.warp_reference and not self.tracks_camera:
            raise ValueError(f"warp_reference needs camera poses from camera-delta actions, the model's action "
                             f"space is {list(self.action_spec.names)}")
        self._conditioned = model.backbone.conditioning is not None
        self._prompt: PromptState | None = None
        self._generators: list[torch.Generator] = []
        self._pending: tuple[torch.Tensor, torch.Tensor, FrameConditions | None] | None = None
        self._stream = None
        self.next_position = 0
        self.c2w = torch.eye(4, dtype=torch.float64).repeat(batch_size, 1, 1)  # pose of the last frame
        self._reference: torch.Tensor | None = None  # (B, C, 1, h, w) the last clean latent frame

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
              decode: bool = True, start_latents: torch.Tensor | None = None) -> torch.Tensor | None:
        """Start an episode. Row i of the batch draws its noise from seed[i] (an int seed s
        gives rows s, s+1, ...). A start image becomes the first clean latent frame in the
        cache; its decoded reconstruction (B, 3, 1, H, W) is returned when ``decode``.
        ``start_latents`` (B, C, 1, h, w) gives that first frame already encoded."""
        if image is not None and start_latents is not None:
            raise ValueError("give a start image or start latents, not both")
        if start_latents is not None:
            expected = (self.batch_size, self.model.backbone.latent_channels, 1, self.latent_height, self.latent_width)
            if tuple(start_latents.shape) != expected:
                raise ValueError(f"start_latents must have shape {expected}, got {tuple(start_latents.shape)}")
        if image is not None:
            self._check_image(image)
        prompt = self._prompt_state(prompt_embeds, negative_prompt_embeds)  # validates before any state changes
        self._generators = [torch.Generator().manual_seed(s) for s in _seeds(seed, self.batch_size)]
        self._prompt = prompt
        self.cache.reset()
        self._pending = None
        self._stream = self.model.codec.stream()
        self.next_position = 0
        self.c2w = torch.eye(4, dtype=torch.float64).repeat(self.batch_size, 1, 1)
        self._reference = torch.zeros(self.batch_size, *self.latent_shape[:1], 1, *self.latent_shape[2:],
                                      device=self.model.device, dtype=self.model.dtype)
        if image is None and start_latents is None:
            return None
        if start_latents is not None:
            latent = start_latents.to(self.model.device, self.model.dtype)
        else:
            latent = self.model.codec.encode_image(image.to(self.model.device)).to(self.model.dtype)
        neutral = self.action_spec.neutral().expand(self.batch_size, 1, -1)
        self._write_cache(latent, torch.tensor([0]), self._conditions(self.c2w[:, None], neutral))
        self._reference = latent
        self.next_position = 1
        frames = self._stream.push(latent)  # the decoder's causal state must start from the image
        return frames if decode else None

    @torch.no_grad()
    def reset_rows(self, rows: Sequence[int], seeds: Sequence[int], images: torch.Tensor,
                   decode: bool = True) -> torch.Tensor | None:
        """Restart some rows of the batch from start images (len(rows), 3, H, W) while the others
        continue (a vector env's independent resets). Each restarted row then evolves exactly
        as a fresh single-row generator seeded alike would (up to float rounding: its frames
        sit at later absolute positions, and RoPE is relative only up to rounding)."""
        rows = [int(r) for r in rows]
        if self._prompt is None or self._stream is None:
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
        self._flush_pending()  # the other rows' last chunk goes into the cache before rows change
        branch_rows = [r + b * self.batch_size for b in range(self.num_branches) for r in rows]
        self.cache.reset_rows(branch_rows)
        for r, seed in zip(rows, seeds):
            self._generators[r] = torch.Generator().manual_seed(int(seed))
        self.c2w[rows] = torch.eye(4, dtype=torch.float64)
        latent = self.model.codec.encode_image(images.to(self.model.device)).to(self.model.dtype)
        position = torch.tensor([max(self.next_position - 1, 0)])
        neutral = self.action_spec.neutral().expand(len(rows), 1, -1)
        conditions = self._conditions(self.c2w[rows][:, None], neutral)
        latents = latent.repeat(self.num_branches, 1, 1, 1, 1)
        self.model.backbone(latents, torch.zeros(latents.shape[0], 1, device=latents.device), position,
                            self._prompt.select(branch_rows), kv_cache=self.cache.rows(branch_rows),
                            cache_write=True, conditions=conditions)
        if self.next_position == 0:
            self.next_position = 1
        self._reference[rows] = latent
        frames = self._stream.reset_rows(rows, latent)
        return frames if decode else None

    def _flush_pending(self) -> None:
        if self._pending is not None:
            self._write_cache(*self._pending)
            self._pending = None

    def _conditions(self, c2w: torch.Tensor, actions: torch.Tensor) -> FrameConditions | None:
        """Per-frame conditions for the model's branches, repeated for guidance branches."""
        if not self._conditioned:
            return None
        device = self.model.device
        batch, frames = actions.shape[:2]
        intrinsics = torch.tensor(self.model.settings.intrinsics, dtype=torch.float32).expand(batch, frames, 4)
        conditions = FrameConditions(camera.invert_pose(c2w).float().to(device), intrinsics.to(device),
                                     actions.to(device))
        return conditions.repeat(self.num_branches) if self.num_branches > 1 else conditions

    def _write_cache(self, latents: torch.Tensor, positions: torch.Tensor, conditions: FrameConditions | None) -> None:
        latents = latents.repeat(self.num_branches, 1, 1, 1, 1)
        timestep = torch.zeros(latents.shape[0], latents.shape[2], device=latents.device)
        self.model.backbone(latents, timestep, positions, self._prompt, kv_cache=self.cache, cache_write=True,
                            conditions=conditions)

    def _chunk_reference(self, c2w: torch.Tensor) -> torch.Tensor:
        """The residual reference of the chunk's frames, posed ``c2w`` (B, chunk, 4, 4): the last
        clean frame, reprojected into each frame's camera for a ``warp_reference`` model."""
        if not self.model.settings.warp_reference:
            return self._reference
        previous = torch.cat([self.c2w[:, None], c2w[:, :-1]], dim=1)
        intrinsics = torch.tensor(self.model.settings.intrinsics, dtype=torch.float64).expand(*c2w.shape[:2], 4)
        return self.model.residual_reference(self._reference, self.c2w[:, None], previous, c2w, intrinsics)

    def _predict(self, positions: torch.Tensor, conditions: FrameConditions | None, reference: torch.Tensor):
        backbone = self.model.backbone
        reference = reference.repeat(self.num_branches, 1, 1, 1, 1)  # once per chunk, not per sampler step

        def predict(x: torch.Tensor, sigma: float, with_uncond: bool):
            if with_uncond != (self.num_branches == 2):
                raise ValueError("the sampler's guidance changed after the generator was built")
            x_in = x.repeat(self.num_branches, 1, 1, 1, 1)
            timestep = torch.full((x_in.shape[0], x_in.shape[2]), sigma * 1000.0, device=x.device)
            out = backbone(x_in, timestep, positions, self._prompt, kv_cache=self.cache, conditions=conditions,
                           reference=reference)
            return (out[: x.shape[0]], out[x.shape[0]:]) if with_uncond else (out, None)

        return predict

    def _chunk_actions(self, actions) -> torch.Tensor:
        """Validate (B, chunk_frames, d) actions (None: the neutral action) before any state changes."""
        expected = (self.batch_size, self.chunk_frames, self.action_spec.dim)
        if actions is None:
            return self.action_spec.neutral().expand(*expected).clone()
        actions = self.action_spec.validate(actions)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must have shape {expected} (batch, latent frames of a chunk, "
                             f"{list(self.action_spec.names)}), got {tuple(actions.shape)}")
        return actions

    def _chunk_poses(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, chunk, 4, 4) c2w of the chunk's frames; the episode's frame 0 stays the identity."""
        if not self.tracks_camera:
            return self.c2w[:, None].expand(-1, self.chunk_frames, -1, -1).clone()
        steps = camera.delta_to_matrix(actions.double())
        if self.next_position == 0:
            steps[:, 0] = torch.eye(4, dtype=torch.float64)
        poses, pose = [], self.c2w
        for i in range(self.chunk_frames):
            pose = pose @ steps[:, i]
            poses.append(pose)
        return torch.stack(poses, dim=1)

    @torch.no_grad()
    def next_chunk(self, actions: torch.Tensor | None = None, decode: bool = True, on_step=None) -> ChunkOutput:
        """Generate the next chunk under ``actions`` (B, chunk_frames, d); see the class doc.
        ``on_step(i, sigma, x)`` is handed to the sampler (to record ODE trajectories)."""
        if self._prompt is None:
            raise RuntimeError("call reset() before next_chunk()")
        actions = self._chunk_actions(actions)
        c2w = self._chunk_poses(actions)
        conditions = self._conditions(c2w, actions)
        timings: dict[str, float] = {}
        device = self.model.device
        with timed(timings, "time/chunk_s", device):
            with timed(timings, "time/cache_s", device):
                self._flush_pending()
            positions = torch.arange(self.next_position, self.next_position + self.chunk_frames)
            with timed(timings, "time/denoise_s", device):
                noise = randn_rows((self.batch_size, *self.latent_shape), self._generators, device, self.model.dtype)
                predict = self._predict(positions, conditions, self._chunk_reference(c2w))
                latents = self.sampler.sample(predict, noise,
                                              self.model.backbone.prediction_type, self._generators, on_step)
            frames = None
            if decode:
                with timed(timings, "time/decode_s", device):
                    frames = self._stream.push(latents)
        if self.model.settings.restart_context:
            # the next chunk's context: the last RGB frame as a start image, at its own position
            anchor = self.model.codec.restart_latent(latents)
            neutral = self.action_spec.neutral().expand(self.batch_size, 1, -1)
            self._pending = (anchor, positions[-1:], self._conditions(c2w[:, -1:], neutral))
            self._reference = anchor
        else:
            self._pending = (latents, positions, conditions)
            self._reference = latents[:, :, -1:]
        self.next_position += self.chunk_frames
        self.c2w = c2w[:, -1]
        return ChunkOutput(latents, frames, positions.tolist(), timings,
                           c2w if self.tracks_camera else None, actions)


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
