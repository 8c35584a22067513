"""The streaming step: what a chunk is conditioned on, and what it leaves in the cache.

    stream = model.stream(batch_size=2)                  # a ChunkStream over a fresh KV cache
    stream.begin(prompt, start_latents)                  # frame 0: the start image, clean, at position 0
    plan = stream.plan(actions)                          # positions, poses, conditions, residual reference
    latents = stream.denoise(plan, sampler, noise, generators)
    stream.commit(plan, latents)                         # the chunk becomes the next chunk's context

Every autoregressive rollout goes through this one object: the env's
:class:`~minwm_env.generator.StreamingGenerator` (which adds noise seeds, guidance prompts, VAE
decoding and timings around it), stage 2c's rolled-out contexts and stage 3's self-rollout
(which keeps the gradient of one exit step, ``denoise(..., grad=True)``). So the decisions of
docs/design.md §6 are taken here and nowhere else:

- positions: chunk c of an episode started from an image holds latent frames
  ``1 + c·chunk .. (c+1)·chunk``; RoPE reads them from the cache's write order.
- poses: the actions are camera deltas composed onto the last frame's pose (frame 0 is the
  identity); a model with another action space keeps the camera still.
- conditions of the branches: w2c and the model's intrinsics per frame, and the actions.
- the residual reference: the last clean frame, reprojected into each new frame's camera
  for a ``warp_reference`` model (:meth:`WorldModel.residual_reference`).
- the context a finished chunk leaves: its latents written by a clean (t = 0) pass with the
  chunk's own conditions, or, with ``restart_context``, only its last RGB frame re-encoded as
  a start image, at the chunk's last position, with the neutral action.

- the view memory (``memory_frames``): past clean frames kept by place (:class:`ViewMemory`);
  each chunk retrieves up to ``memory_k`` of them that see what the last frame does not, and
  either fills the warped reference with their pixels (``memory_mode="reference"``) or writes
  their latents into the KV cache at their camera poses for the chunk to attend to
  (``"context"``, :meth:`ChunkStream.plan` and docs/design.md §6).

The clean write is deferred: ``commit`` records it and the next ``denoise`` (or ``flush``)
runs it, so a chunk's frames can be decoded and shown before the write costs anything. With
``fold_writes`` (the default, for backbones that support it) it is not a forward of its own:
the next chunk's first denoising forward carries the clean frames in front of the noisy ones,
under a mask that gives each exactly what the separate pass would (the clean frames see the
cache and themselves; the noisy ones see what the commit keeps, the clean frames and
themselves), and commits the clean part (:meth:`ChunkStream.predictor`).

With ``static_shapes`` the cache is static (:class:`~minwm_env.backbones.base.KVCache`): every
forward without gradients attends the whole preallocated buffer under a mask of the valid slots,
so each kind of forward (denoising, folded, clean write) has the same shapes at every chunk, and
``compile`` (a torch.compile mode such as "reduce-overhead", or a backend) compiles the
backbone's streaming forward once per kind (``dynamic=False``). The chunks are the same up to
float rounding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import torch

from . import camera
from .backbones import KVCache, PromptState, causal_frame_mask
from .conditioning import (ActionSpec, FrameConditions, camera_action_spec, is_minwm_label_spec,
                           minwm_action_labels)
from .memory import ViewMemory
from .samplers import Sampler
from .warp import warp_image

MEMORY_MODES = ("reference", "context")
MEMORY_POSITION = 0
"""The frame position (RoPE) of every memory frame in the cache: the episode's first position,
where the start frame (a sink) sits. A memory frame is told apart by its camera alone (its w2c
in the camera branch), not by when it was seen; one shared position also keeps a loaded frame's
K/V valid while the stream moves on, so it is rewritten only when the retrieval changes."""


def pad_prompts(embeds: list[torch.Tensor], length: int | None = None) -> list[torch.Tensor]:
    """Zero-pad prompt embeddings (B, L, D) to ``length`` tokens (None: the longest), so that
    guidance branches batch into one forward; a prompt longer than ``length`` is an error."""
    longest = max(e.shape[1] for e in embeds)
    if length is None:
        length = longest
    elif longest > length:
        raise ValueError(f"a prompt has {longest} tokens, this backbone takes at most {length} (its text encoder's "
                         f"length)")
    return [torch.nn.functional.pad(e, (0, 0, 0, length - e.shape[1])) for e in embeds]


def padded_prompt(backbone, embeds: torch.Tensor) -> torch.Tensor:
    """A prompt (B, L, D) zero-padded to the backbone's ``text_length``, so a prompt's output does
    not depend on what it is batched with (Wan attends to the padding: measured on the tiny
    model, 3 tokens padded to 5 move the output by 0.09, to 512 by 0.20)."""
    return pad_prompts([embeds], backbone.text_length)[0]


def guidance_prompt(backbone, embeds: Sequence[torch.Tensor | None], batch_size: int) -> PromptState:
    """The prompt state of one forward over guidance branches: branch i is ``embeds[i]``
    (B, L, D), the null prompt where it is None; rows ``i·B .. (i+1)·B − 1`` belong to branch i."""
    branches = [backbone.null_prompt_embeds(batch_size) if e is None else e for e in embeds]
    # real prompts go to the backbone's text length; the null prompt alone stays one zero token
    # (every token alike, so attending to 1 or to 512 of them gives the same output)
    length = backbone.text_length if any(e is not None for e in embeds) else None
    states = [backbone.encode_prompt(e) for e in pad_prompts(branches, length)]
    return type(states[0]).cat(states)  # a backbone's own prompt state (e.g. with a key mask) stays itself


def context_frame(model, latents: torch.Tensor) -> torch.Tensor:
    """(B, C, 1, h, w): the frame that a chunk ``latents`` (B, C, n, h, w) leaves as the next
    chunk's context and reference: its last latent frame, or with ``restart_context`` its last
    RGB frame encoded as a start image (the only kind of context frame a model trained on clip
    starts has seen)."""
    if model.settings.restart_context:
        return model.codec.restart_latent(latents)
    return latents[:, :, -1:]


@dataclass
class MemoryPlan:
    """The memory frames one chunk attends to in ``memory_mode="context"`` (:meth:`ChunkStream.plan`)."""

    latents: torch.Tensor  # (B, C, k, h, w) retrieved latent frames; a row's padding (zeros) first
    c2w: torch.Tensor  # (B, k, 4, 4) float64 their cameras (the identity on padding)
    counts: list[int]  # frames each row retrieved (its last counts[r] frames are real)
    key: torch.Tensor  # (B, k, 2) int64 (slot, add count) of each frame, (-1, -1) on padding: what was loaded


@dataclass
class ChunkPlan:
    """What one chunk is conditioned on (:meth:`ChunkStream.plan`)."""

    positions: torch.Tensor  # (chunk,) latent frame positions in the episode
    c2w: torch.Tensor  # (B, chunk, 4, 4) float64 camera-to-world of each frame
    actions: torch.Tensor  # (B, chunk, d) the validated actions
    conditions: FrameConditions | None  # the branches' inputs, one row per batch row; None without branches
    reference: torch.Tensor  # (B, C, 1 or chunk, h, w) what a residual backbone adds its output to
    memory: MemoryPlan | None = None  # memory frames to attend to ("context" memory); None: none
    generation: torch.Tensor | None = None  # (B, 1, H, W) resamplings per pixel of the chunk's last frame


class ChunkStream:
    """One batch of episodes streamed chunk by chunk over a KV cache (see the module doc).

    ``num_branches`` > 1 runs guidance branches in one forward: the cache and the prompt hold
    ``num_branches · batch_size`` rows, branch-major; everything else is per batch row.
    """

    def __init__(self, model, *, batch_size: int = 1, num_branches: int = 1, chunk_frames: int | None = None,
                 window_frames: int | None = None, sink_frames: int | None = None, memory_frames: int | None = None,
                 fold_writes: bool = True, static_shapes: bool = False, compile=None):
        settings = model.settings
        self.model = model
        self.batch_size = batch_size
        self.num_branches = num_branches
        self.chunk_frames = chunk_frames or settings.chunk_frames
        window_frames = window_frames or settings.window_frames
        sink_frames = settings.sink_frames if sink_frames is None else sink_frames
        self.latent_height, self.latent_width = model.codec.latent_size(settings.height, settings.width)
        if settings.restart_context and not hasattr(model.codec, "restart_latent"):
            raise ValueError(f"restart_context needs a codec with restart_latent (space-to-depth); this model's "
                             f"codec is {type(model.codec).__name__}")
        config = model.backbone.conditioning_config
        self.action_spec: ActionSpec = config.action_spec or camera_action_spec()
        # minWM's HunyuanVideo-1.5 with both PRoPE and action_in: the env takes camera deltas, the
        # poses go to PRoPE and each delta's 81-way label to the action branch (labels_from_deltas)
        self.labels_from_deltas = config.uses_camera and is_minwm_label_spec(config.action_spec)
        if self.labels_from_deltas:
            self.action_spec = camera_action_spec()
        self.tracks_camera = self.action_spec.names == camera.DELTA_NAMES
        if config.uses_camera and not self.tracks_camera:
            raise ValueError(f"camera conditioning ({config.camera}) needs camera-delta actions, the model's "
                             f"action space is {list(self.action_spec.names)}")
        if settings.warp_reference and not self.tracks_camera:
            raise ValueError(f"warp_reference needs camera poses from camera-delta actions, the model's action "
                             f"space is {list(self.action_spec.names)}")
        memory_frames = settings.memory_frames if memory_frames is None else memory_frames
        if memory_frames < 0:
            raise ValueError(f"memory_frames must be >= 0, got {memory_frames}")
        self.memory_mode = settings.memory_mode
        if self.memory_mode not in MEMORY_MODES:
            raise ValueError(f"memory_mode must be one of {MEMORY_MODES}, got {self.memory_mode!r}")
        in_cache = bool(memory_frames) and self.memory_mode == "context"
        if memory_frames and not in_cache and not (settings.warp_reference and self.tracks_camera):
            raise ValueError("a view memory in memory_mode='reference' fills the warped reference: it needs a "
                             "warp_reference model with camera-delta actions")
        if in_cache and not config.uses_camera:
            raise ValueError("a view memory in memory_mode='context' tells the model where each memory frame was "
                             "seen through camera conditioning; this model has none")
        # the clean write rides on the next chunk's first forward (module doc); a pending write is
        # at most one chunk (or one restart anchor), so such a forward holds two chunks
        self.fold_writes = fold_writes and getattr(model.backbone, "folds_writes", False)
        self.static_shapes = static_shapes or compile is not None
        self.compile = compile
        if self.static_shapes and not getattr(model.backbone, "static_shapes", False):
            raise ValueError(f"static_shapes and compile need a backbone that attends a static cache; "
                             f"{type(model.backbone).__name__} does not")
        static = dict(static=True, compile=compile) if self.static_shapes else {}
        self.cache: KVCache = model.backbone.new_cache(
            batch_size=batch_size * num_branches, latent_height=self.latent_height, latent_width=self.latent_width,
            window_frames=window_frames, sink_frames=sink_frames,
            max_new_frames=self.chunk_frames * (2 if self.fold_writes else 1),
            memory_frames=settings.memory_k if in_cache else 0, **static)
        # past clean frames by place (docs/design.md §6, memory); None: the last frame alone.
        # "reference" keeps RGB frames to warp, "context" latent frames to write into the cache.
        if not memory_frames:
            self.memory = None
        elif in_cache:
            self.memory = ViewMemory(batch_size, memory_frames, self.latent_height, self.latent_width,
                                     channels=model.backbone.latent_channels, device=model.device, dtype=model.dtype,
                                     grid_size=min(8, self.latent_height, self.latent_width))
        else:
            self.memory = ViewMemory(batch_size, memory_frames, settings.height, settings.width, device=model.device,
                                     dtype=torch.float32)
        self.memory_in_cache = in_cache
        self._loaded_memory: torch.Tensor | None = None  # MemoryPlan.key of what the cache's memory holds
        self.prompt: PromptState | None = None
        self.num_forwards = 0  # denoising forwards since begin(), and how many of them kept gradients
        self.num_grad_forwards = 0
        self.num_memory_writes = 0  # forwards that (re)wrote the cache's memory frames
        self._pending: tuple[torch.Tensor, torch.Tensor, FrameConditions | None] | None = None
        self._clear_episode()

    @property
    def latent_shape(self) -> tuple[int, int, int, int]:
        """(C, chunk_frames, h, w) of one chunk of one row."""
        return (self.model.backbone.latent_channels, self.chunk_frames, self.latent_height, self.latent_width)

    def _clear_episode(self) -> None:
        self.next_position = 0
        self.c2w = torch.eye(4, dtype=torch.float64).repeat(self.batch_size, 1, 1)  # pose of the last frame
        # (B, C, 1, h, w): the last clean frame, what the next chunk's residual reference is made of
        self.reference = torch.zeros(self.batch_size, self.model.backbone.latent_channels, 1, self.latent_height,
                                     self.latent_width, device=self.model.device, dtype=self.model.dtype)
        # (B, 1, H, W): how many resamplings each pixel of the last frame has been through (memory_sharpen)
        self.generation = torch.zeros(self.batch_size, 1, self.model.settings.height, self.model.settings.width,
                                      device=self.model.device)
        self.reference_depth = None  # (B, H, W): the depth net's depth of the reference's last RGB frame

    # -- episodes ------------------------------------------------------------------------------
    @torch.no_grad()
    def begin(self, prompt: PromptState, start_latents: torch.Tensor | None = None) -> None:
        """Start every row's episode: ``prompt`` for the whole stream (``num_branches · B`` rows)
        and, optionally, the start frame (B, C, 1, h, w), written clean at position 0 with the
        identity pose and the neutral action."""
        if prompt.batch_size != self.batch_size * self.num_branches:
            raise ValueError(f"the prompt has {prompt.batch_size} rows, the stream needs "
                             f"{self.batch_size * self.num_branches} ({self.num_branches} branches)")
        self.prompt = prompt
        self.cache.reset()
        self._loaded_memory = None
        self._pending = None
        self.num_forwards = self.num_grad_forwards = self.num_memory_writes = 0
        self._clear_episode()
        if self.memory is not None:
            self.memory.clear()
        if start_latents is None:
            return
        start = start_latents.to(self.model.device, self.model.dtype)
        self._write(start, torch.tensor([0]), self._start_conditions(self.batch_size), self.cache, self.prompt)
        self.reference = start
        self.next_position = 1
        self._remember(start, self.c2w)

    @torch.no_grad()
    def begin_rows(self, rows: list[int], start_latents: torch.Tensor) -> None:
        """Restart some rows from start frames (len(rows), C, 1, h, w) while the others go on: the
        row's start frame goes at the stream's current position (RoPE is relative, so the row
        then evolves as a fresh episode would, up to rounding)."""
        self.flush()  # the other rows' last chunk goes into the cache before rows change
        branch_rows = [r + b * self.batch_size for b in range(self.num_branches) for r in rows]
        self.cache.reset_rows(branch_rows)
        self._loaded_memory = None  # the restarted rows' memory frames are gone: reload at the next chunk
        self.c2w[rows] = torch.eye(4, dtype=torch.float64)
        start = start_latents.to(self.model.device, self.model.dtype)
        position = torch.tensor([max(self.next_position - 1, 0)])
        self._write(start, position, self._start_conditions(len(rows)), self.cache.rows(branch_rows),
                    self.prompt.select(branch_rows))
        self.next_position = max(self.next_position, 1)
        self.reference[rows] = start
        self.generation[rows] = 0
        if self.memory is not None:
            self.memory.clear(rows)
        self._remember(start, self.c2w[rows], rows)

    def _start_conditions(self, num_rows: int) -> FrameConditions | None:
        eye = torch.eye(4, dtype=torch.float64).expand(num_rows, 1, 4, 4)
        return self.conditions(eye, self.action_spec.neutral().expand(num_rows, 1, -1))

    # -- a chunk -------------------------------------------------------------------------------
    def check_actions(self, actions) -> torch.Tensor:
        """Validate (B, chunk_frames, d) actions (None: the neutral action) before any state changes."""
        expected = (self.batch_size, self.chunk_frames, self.action_spec.dim)
        if actions is None:
            return self.action_spec.neutral().expand(*expected).clone()
        actions = self.action_spec.validate(actions)
        if tuple(actions.shape) != expected:
            raise ValueError(f"actions must have shape {expected} (batch, latent frames of a chunk, "
                             f"{list(self.action_spec.names)}), got {tuple(actions.shape)}")
        return actions

    def poses(self, actions: torch.Tensor) -> torch.Tensor:
        """(B, chunk, 4, 4) c2w of the chunk's frames: camera deltas composed onto the last pose
        (the episode's frame 0 stays the identity); other action spaces keep the camera still."""
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

    def conditions(self, c2w: torch.Tensor, actions: torch.Tensor) -> FrameConditions | None:
        """The branches' per-frame inputs for frames posed ``c2w`` (B, F, 4, 4) under ``actions``."""
        if self.model.backbone.conditioning is None:
            return None
        if self.labels_from_deltas:
            actions = minwm_action_labels(actions.double())
        device = self.model.device
        batch, frames = actions.shape[:2]
        intrinsics = torch.tensor(self.model.settings.intrinsics, dtype=torch.float32).expand(batch, frames, 4)
        return FrameConditions(camera.invert_pose(c2w).float().to(device), intrinsics.to(device), actions.to(device))

    def plan(self, actions=None) -> ChunkPlan:
        """Everything the next chunk is conditioned on; validates ``actions``, changes nothing."""
        if self.prompt is None:
            raise RuntimeError("call begin() before planning a chunk")
        actions = self.check_actions(actions)
        c2w = self.poses(actions)
        positions = torch.arange(self.next_position, self.next_position + self.chunk_frames)
        previous = torch.cat([self.c2w[:, None], c2w[:, :-1]], dim=1)
        intrinsics = torch.tensor(self.model.settings.intrinsics, dtype=torch.float64).expand(*c2w.shape[:2], 4)
        fills = None if self.memory_in_cache else self.memory
        reference = self.model.residual_reference(self.reference, self.c2w[:, None], previous, c2w, intrinsics,
                                                  fills, self.model.settings.memory_k,
                                                  generation=self.generation if self.sharpens else None,
                                                  reference_depth=self.reference_depth)
        generation = None
        if self.sharpens:  # the chunk's last frame: what the network draws anew has not been resampled
            reference, (generation, validity) = reference
            generation = (generation * validity)[:, :, -1].to(self.generation.device, self.generation.dtype)
        memory = self._recall(c2w, intrinsics[:, 0]) if self.memory_in_cache else None
        return ChunkPlan(positions, c2w, actions, self.conditions(c2w, actions), reference, memory, generation)

    @property
    def sharpens(self) -> bool:
        """Whether the view memory sharpens the warp (``memory_sharpen``), tracking each pixel's resamplings."""
        settings = self.model.settings
        return (self.memory is not None and not self.memory_in_cache and settings.memory_sharpen is not None
                and settings.memory_k > 0)

    def _recall(self, c2w: torch.Tensor, intrinsics: torch.Tensor) -> MemoryPlan:
        """The memory frames of a chunk posed ``c2w`` (B, chunk, 4, 4) in ``memory_mode="context"``:
        up to ``memory_k`` stored latent frames that best see what the last frame does not (its
        warp's gaps, through the plane at ``warp_depth``, on the latent grid), so the frames the
        cache's window already holds are not fetched again."""
        memory, k = self.memory, self.model.settings.memory_k
        device = memory.device
        depth = self.model.settings.warp_depth
        seen = warp_image(torch.ones(self.batch_size, 1, memory.height, memory.width, device=device,
                                     dtype=torch.float64), self.c2w.to(device), c2w.to(device),
                          intrinsics.to(device), depth, fill="blank")  # (B, 1, chunk, h, w)
        found = memory.retrieve(c2w, intrinsics, k, depth, gaps=seen[:, 0] < memory.valid_threshold).indices
        # real frames last in each row (the cache keeps a row's last counts[r] frames)
        order = torch.sort((found >= 0).int(), dim=1, stable=True).indices
        found = found.gather(1, order)
        real = found >= 0
        slots = found.clamp(min=0)
        rows = torch.arange(self.batch_size, device=device)[:, None]
        latents = torch.where(real[:, :, None, None, None], memory.frames[rows, slots], 0)
        poses = torch.where(real[:, :, None, None], memory.c2w[rows, slots], torch.eye(4, dtype=torch.float64,
                                                                                         device=device))
        key = torch.stack([found, torch.where(real, memory.added_at[rows, slots], -1)], dim=-1)
        return MemoryPlan(latents.transpose(1, 2).to(self.model.dtype), poses.cpu(), real.sum(1).tolist(), key.cpu())

    @torch.no_grad()
    def _load_memory(self, plan: MemoryPlan) -> None:
        """Write ``plan``'s frames into the cache's memory slots (one clean forward, each frame on
        its own at :data:`MEMORY_POSITION` with its camera and the neutral action), unless the
        cache holds them already."""
        if self._loaded_memory is not None and torch.equal(self._loaded_memory, plan.key):
            return
        counts = plan.counts * self.num_branches
        if not any(counts):
            self.cache.clear_memory()
        else:
            k = plan.latents.shape[2]
            neutral = self.action_spec.neutral().expand(self.batch_size, k, -1)
            conditions = self.conditions(plan.c2w, neutral)
            if self.num_branches > 1:
                conditions = conditions.repeat(self.num_branches)
            latents = plan.latents.repeat(self.num_branches, 1, 1, 1, 1)
            timestep = torch.zeros(latents.shape[0], k, device=latents.device)
            positions = torch.full((k,), MEMORY_POSITION)
            self.model.backbone(latents, timestep, positions, self.prompt, kv_cache=self.cache.memory_writer(counts),
                                cache_write=True, conditions=conditions)
            self.num_memory_writes += 1
        self._loaded_memory = plan.key

    def predictor(self, plan: ChunkPlan, *, grad_step: int | None = None, fold: bool = False) -> Callable:
        """The sampler's ``predict(x, sigma, with_uncond)`` for ``plan``'s chunk against the cache.
        Only call number ``grad_step`` (counted from 0) keeps gradients (None: none does). With
        ``fold`` the first call also runs the pending clean write (:meth:`can_fold`)."""
        backbone = self.model.backbone
        branches = self.num_branches
        # built once per chunk, not at every sampler step
        conditions = None if plan.conditions is None else plan.conditions.repeat(branches)
        reference = plan.reference.repeat(branches, 1, 1, 1, 1)
        calls = [0]

        def predict(x: torch.Tensor, sigma: float, with_uncond: bool):
            if with_uncond != (branches == 2):
                raise ValueError(f"the sampler's guidance does not match the stream's {branches} prompt branch(es)")
            keep = grad_step is not None and calls[0] == grad_step
            calls[0] += 1
            x_in = x.repeat(branches, 1, 1, 1, 1)
            timestep = torch.full((x_in.shape[0], x_in.shape[2]), sigma * 1000.0, device=x.device)
            if fold and self._pending is not None:
                out = self._folded_forward(plan, x_in, timestep, conditions, reference)
            else:
                # a differentiable forward reads a frozen copy of the context: its backward (and
                # gradient checkpointing's recomputation) comes after later chunks changed the cache
                cache = self.cache.reading_memory() if plan.memory is not None else self.cache
                cache = cache.frozen() if keep else cache
                with torch.set_grad_enabled(keep):
                    out = backbone(x_in, timestep, plan.positions, self.prompt, kv_cache=cache,
                                   conditions=conditions, reference=reference)
            self.num_forwards += 1
            self.num_grad_forwards += int(keep)
            return (out[: x.shape[0]], out[x.shape[0]:]) if with_uncond else (out, None)

        return predict

    def can_fold(self, plan: ChunkPlan, grad_step: int | None = None) -> bool:
        """Whether the pending clean write can ride on ``plan``'s first denoising forward: a
        backbone that supports it, rows in lockstep (one mask for all), no memory frames in the
        cache (the write must not read them) and a first forward that keeps no gradient."""
        positions = {len(p) for p in self.cache.row_positions}
        return (self.fold_writes and self._pending is not None and plan.memory is None and len(positions) == 1
                and grad_step != 0)

    @torch.no_grad()
    def _folded_forward(self, plan: ChunkPlan, x_in: torch.Tensor, timestep: torch.Tensor,
                        conditions: FrameConditions | None, reference: torch.Tensor) -> torch.Tensor:
        """One forward over [the pending clean frames at t = 0 ; the noisy chunk], committing the
        clean part; returns the noisy chunk's prediction, the same as a separate clean pass
        followed by the denoising forward (the mask gives each part what it would have seen)."""
        latents, positions, written = self._pending
        num_clean, num_noisy = latents.shape[2], x_in.shape[2]
        branches = self.num_branches
        cache = self.cache
        total = cache.num_frames + num_clean
        own = causal_frame_mask(torch.cat([positions, plan.positions]),
                                torch.tensor([0] * num_clean + [1] * num_noisy))  # clean | noisy blocks
        mask = torch.cat([torch.ones(num_clean + num_noisy, cache.num_frames, dtype=torch.bool), own], dim=1)
        # the noisy chunk sees what the separate write would have left of [cache ; clean]
        mask[num_clean:, :total] &= cache.kept_after_commit(num_clean)
        x = torch.cat([latents.repeat(branches, 1, 1, 1, 1).to(x_in.dtype), x_in], dim=2)
        t = torch.cat([torch.zeros(x_in.shape[0], num_clean, device=x_in.device), timestep], dim=1)
        if conditions is not None:
            conditions = FrameConditions.cat([written.repeat(branches) if branches > 1 else written, conditions])
        frames = reference.expand(-1, -1, num_noisy, -1, -1)
        reference = torch.cat([torch.zeros_like(frames[:, :, :1]).expand(-1, -1, num_clean, -1, -1), frames], dim=2)
        out = self.model.backbone(x, t, torch.cat([positions, plan.positions]), self.prompt, kv_cache=cache,
                                  cache_write=True, write_frames=num_clean, frame_mask=mask.to(x.device),
                                  conditions=conditions, reference=reference)
        self._pending = None
        return out[:, :, num_clean:]

    def denoise(self, plan: ChunkPlan, sampler: Sampler, noise: torch.Tensor,
                generators: Sequence[torch.Generator] | None = None, *, grad: bool = False,
                on_step=None) -> torch.Tensor:
        """Denoise the chunk from ``noise`` (B, C, chunk, h, w) with ``sampler`` (re-noising from
        ``generators``, one per row). With ``grad`` the sampler's last forward keeps its
        gradient and every earlier one runs without (a few-step sampler cut at an exit step is
        a sampler with the schedule's first steps: DMD's self-rollout)."""
        grad_step = sampler.num_steps - 1 if grad else None
        fold = self.can_fold(plan, grad_step)
        if not fold:
            self.flush()
        if plan.memory is not None:
            self._load_memory(plan.memory)
        return sampler.sample(self.predictor(plan, grad_step=grad_step, fold=fold), noise,
                              self.model.backbone.prediction_type, generators, on_step)

    @torch.no_grad()
    def commit(self, plan: ChunkPlan, latents: torch.Tensor) -> None:
        """The chunk becomes context: its clean write is recorded (run by the next denoise or
        :meth:`flush`), the reference, the pose and the position move on. Never differentiable."""
        latents = latents.detach()
        if self.model.settings.restart_context:
            anchor = context_frame(self.model, latents)
            neutral = self.action_spec.neutral().expand(self.batch_size, 1, -1)
            self._pending = (anchor, plan.positions[-1:], self.conditions(plan.c2w[:, -1:], neutral))
            self.reference = anchor
        else:
            self._pending = (latents, plan.positions, plan.conditions)
            self.reference = context_frame(self.model, latents)
        self.next_position = int(plan.positions[-1]) + 1
        self.c2w = plan.c2w[:, -1]
        if plan.generation is not None:
            self.generation = plan.generation
        self._remember(latents, self.c2w, generations=plan.generation)

    def _remember(self, latents: torch.Tensor, c2w: torch.Tensor, rows: list[int] | None = None,
                  generations: torch.Tensor | None = None) -> None:
        """After the reference (of ``rows``, all by default) became ``latents``' (b, C, n, h, w)
        context frame, seen from ``c2w`` (b, 4, 4): store the frame the next warp reprojects in
        the memory, with its resamplings per pixel ``generations`` (b, 1, H, W; None: 0), and
        compute its depth once, for that warp and for the memory, when the warp uses the depth net."""
        settings = self.model.settings
        depth = image = None
        if settings.warp_reference and settings.warp_depth_source == "model":
            reference = self.reference if rows is None else self.reference[rows]
            factor = self.model.codec.temporal_factor
            image = self.model.codec.unpack(reference)[:, :, factor - 1]  # as warped_reference reads it
            depth = self.model.depth.depth(image)
            if rows is None:
                self.reference_depth = depth
            elif self.reference_depth is not None:
                self.reference_depth[rows] = depth
        if self.memory is None:
            return
        if self.memory_in_cache:
            self.memory.add(context_frame(self.model, latents)[:, :, 0], c2w, rows)
            return
        if image is None:
            image = self.model.codec.unpack(latents[:, :, -1:])[:, :, -1]  # (b, 3, H, W)
        self.memory.add(image.float(), c2w, rows, None if generations is None else generations[:, 0],
                        depths=depth, depth_net=None if depth is None else self.model.depth)

    @torch.no_grad()
    def flush(self) -> None:
        """Run the recorded clean write, if any."""
        if self._pending is not None:
            self._write(*self._pending, self.cache, self.prompt)
            self._pending = None

    def _write(self, latents: torch.Tensor, positions: torch.Tensor, conditions: FrameConditions | None, cache,
               prompt: PromptState) -> None:
        """The clean (t = 0) pass that writes ``latents`` (b, C, n, h, w) into ``cache``, once per branch."""
        latents = latents.repeat(self.num_branches, 1, 1, 1, 1)
        if conditions is not None and self.num_branches > 1:
            conditions = conditions.repeat(self.num_branches)
        timestep = torch.zeros(latents.shape[0], latents.shape[2], device=latents.device)
        with torch.no_grad():
            self.model.backbone(latents, timestep, positions, prompt, kv_cache=cache, cache_write=True,
                                conditions=conditions)
