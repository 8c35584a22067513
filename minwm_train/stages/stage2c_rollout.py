"""Stage 2c: self-rollout fine-tuning of the few-step student, against exposure bias.

    minwm-train stage2c --preset default --model runs/default/stage2a/model --data ... --out runs/default/stage2c

Teacher forcing (stage 1) and ODE pairs (stage 2a) only ever show the model a clean ground-truth
context. Streaming, it continues from its own frames instead, and small errors compound: on the
default model's space-to-depth latent they grow into 4×4 block patterns within a few chunks
(docs/default_model.md). Here the model first generates 1 .. ``rollout_context_chunks`` chunks
(drawn per step) of each clip itself, with its own few-step sampler and no gradient, exactly as the env streams;
then it learns the next chunk from its own last frame: that chunk of the ground truth, noised as
in stage 1, is regressed with the generated frame as the clean context (and as the residual
reference). The target is the truth, so the model learns to pull a drifting context back
(scheduled sampling / DAgger for world models). A fraction ``rollout_clean_fraction`` of the
clips keeps the ground-truth context, so the clean-context skill stays.

Clips need ``1 + (rollout_context_chunks + 1) · chunk_frames`` latent frames. The learnt chunk
sees one context frame, the generated one: exactly what the default model streams with (a
one-frame window); a model with a longer window still learns from it, with less context than
it will have.
"""

from __future__ import annotations

import torch

from minwm_env import camera
from minwm_env.generator import StreamingGenerator
from minwm_env.samplers import FewStepSampler
from minwm_env.streaming import context_frame

from .common import rollout_actions
from .stage1_teacher_forcing import TeacherForcingStage


class SelfRolloutStage(TeacherForcingStage):
    name = "stage2c"
    few_step = True

    def __init__(self, config, device):
        super().__init__(config, device)
        if not 0.0 <= config.rollout_clean_fraction <= 1.0:
            raise ValueError(f"rollout_clean_fraction must be in [0, 1], got {config.rollout_clean_fraction}")

    def needed_frames(self) -> int:
        return 1 + (self.config.rollout_context_chunks + 1) * self.config.chunk_frames

    @torch.no_grad()
    def rollout_context(self, batch: dict, generator: torch.Generator, num_chunks: int) -> torch.Tensor:
        """The model's own last latent frame after ``num_chunks`` chunks streamed by the env's
        generator under the clip's actions: (B, C, 1, h, w). The stream stays in
        :attr:`last_stream` (its view memory fills the next chunk's reference)."""
        config, latents = self.config, batch["latents"]
        chunk = config.chunk_frames
        sampler = FewStepSampler(timesteps=tuple(config.student_timesteps), shift=config.shift)
        stream = StreamingGenerator(self.model, sampler, batch_size=latents.shape[0], chunk_frames=chunk,
                                    memory_frames=config.rollout_memory_frames)
        stream.reset(seed=int(torch.randint(2**31 - 1, (1,), generator=generator)), start_latents=latents[:, :, :1],
                     decode=False)
        actions = rollout_actions(self.model, batch, 1 + num_chunks * chunk)
        for c in range(num_chunks):
            step_actions = None if actions is None else actions[:, 1 + c * chunk:1 + (c + 1) * chunk]
            out = stream.next_chunk(step_actions, decode=False)
        self.last_stream = stream
        return out.latents[:, :, -1:].to(latents.dtype)

    @torch.no_grad()
    def memory_reference(self, batch: dict, context: torch.Tensor, num_chunks: int) -> torch.Tensor:
        """The learned chunk's reference as the env streams it with a view memory: ``context``
        (B, C, 1, h, w) warped into the chunk's cameras (the clip's poses) and filled from the
        rollout's memory → (B, C', chunk, h, w)."""
        chunk, model = self.config.chunk_frames, self.model
        first = num_chunks * chunk
        c2w = camera.invert_pose(batch["w2c"][:, first:first + 1 + chunk].double())  # the episode's frame
        intrinsics = batch["intrinsics"][:, first + 1:first + 1 + chunk].double()
        memory = self.last_stream.stream.memory
        return model.residual_reference(context, c2w[:, :1], c2w[:, :-1], c2w[:, 1:], intrinsics, memory,
                                        model.settings.memory_k)

    def window(self, batch: dict, context: torch.Tensor, num_chunks: int) -> dict:
        """The one-chunk clip the model learns after ``num_chunks`` streamed ones: ``context``
        first, then the truth's next chunk, with poses relative to the context frame and a zero
        action for it (as in the data)."""
        first = num_chunks * self.config.chunk_frames
        frames = slice(first, first + 1 + self.config.chunk_frames)
        out = {"latents": torch.cat([context, batch["latents"][:, :, first + 1:frames.stop]], dim=2),
               "intrinsics": batch["intrinsics"][:, frames]}
        w2c = batch["w2c"][:, frames].double()
        out["w2c"] = (w2c @ camera.invert_pose(w2c[:, :1]).to(w2c.device)).float()  # w2c_j · c2w_context
        if "actions" in batch:
            actions = batch["actions"][:, frames].clone()
            actions[:, 0] = 0
            out["actions"] = actions
        if "prompt_embeds" in batch:
            out["prompt_embeds"] = batch["prompt_embeds"]
        return out

    def learnt_window(self, batch: dict, generator: torch.Generator) -> tuple[dict, torch.Tensor]:
        """The step's rollout (1 .. ``rollout_context_chunks`` chunks, drawn) and the one-chunk
        clip the model then learns (:meth:`window`, with the memory's reference when the rollout
        keeps one) → (that clip, the squared error of the generated context against the truth's)."""
        latents = batch["latents"]
        if latents.shape[2] < self.needed_frames():
            raise ValueError(f"stage2c with rollout_context_chunks={self.config.rollout_context_chunks} needs clips "
                             f"of {self.needed_frames()} latent frames, got {latents.shape[2]} (num_latent_frames)")
        num_chunks = int(torch.randint(1, self.config.rollout_context_chunks + 1, (1,), generator=generator))
        generated = self.rollout_context(batch, generator, num_chunks)
        first = num_chunks * self.config.chunk_frames
        keep_truth = torch.rand(latents.shape[0], generator=generator) < self.config.rollout_clean_fraction
        context = torch.where(keep_truth.view(-1, 1, 1, 1, 1).to(latents.device), latents[:, :, first:first + 1],
                              generated)
        context = context_frame(self.model, context)  # the context the model streams with (restarted or not)
        window = self.window(batch, context, num_chunks)
        if self.config.rollout_memory_frames:
            window["reference"] = self.memory_reference(batch, context, num_chunks)
        return window, (generated - latents[:, :, first:first + 1]).float().square().mean()

    def loss(self, optimizer, batch, step, generator):
        window, drift = self.learnt_window(batch, generator)
        loss, logs = super().loss(optimizer, window, step, generator)
        return loss, {**logs, "rollout/context_mse": drift}
