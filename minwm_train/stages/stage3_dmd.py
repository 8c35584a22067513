"""Stage 3: asymmetric distribution matching distillation with self-rollout (DESIGN.md §6).

    minwm-train stage3 --preset tiny --model runs/stage2a/model --teacher runs/stage0/model \\
        --data ... --out runs/stage3

Three models: the few-step causal generator (from stage 2), the frozen bidirectional real
score (stage 0, CFG ``dmd_real_guidance``) and a trained fake score initialised from it
(conditional only). Each step the generator rolls out ``dmd_rollout_chunks`` chunks on its own
KV cache from the clip's start frame (Self-Forcing's self-rollout): every chunk stops at a
random exit step of the few-step schedule and only that step keeps its gradient; the clean
cache writes run without gradient. Critic step: flow matching of the fake score on the
generator's samples. Generator step (one per ``dmd_critic_updates`` critic steps, DMD2's
two time-scale rule): at a random critic time t the generator's sample moves along
``(x0_fake − x0_real)`` normalised by ``mean |x − x0_real|`` (DMD2 eq. 7); "asymmetric": a
causal generator distilled by a bidirectional teacher.
"""

from __future__ import annotations

from pathlib import Path

import torch

from minwm_env import camera, flow

from .common import (build_model, conditions, export_model, guided_prediction, prompt_state, randn, sample_sigmas,
                     start_reference, student_sigmas)
from ..engine import Stage


class DMDStage(Stage):
    name = "stage3"

    def __init__(self, config, device):
        super().__init__(config, device)
        if config.teacher is None:
            raise ValueError("stage3 needs --teacher: the bidirectional stage-0 model (the real score)")
        self.generator_model = build_model(config, config.model, device)
        self.real = build_model(config, config.teacher, device, trainable=False)
        self.fake = build_model(config, config.teacher, device)
        self.sigmas = student_sigmas(config)
        self.rollout_stats: dict[str, int] = {}

    def modules(self):
        return {"generator": self.generator_model.backbone, "fake": self.fake.backbone}

    def param_groups(self):
        return {"generator": {"params": list(self.generator_model.backbone.parameters())},
                "critic": {"params": list(self.fake.backbone.parameters()),
                           "lr": self.config.dmd_critic_lr or self.config.lr}}

    def updates(self, step):
        ratio = self.config.dmd_critic_updates
        return ["critic"] + (["generator"] if step % ratio == ratio - 1 else [])

    def ema_module(self):
        return self.generator_model.backbone

    def rollout(self, batch: dict, generator: torch.Generator, with_grad: bool) -> torch.Tensor:
        """Self-rollout of the few-step generator: (B, C, 1 + chunks·chunk_frames, h, w), the start
        frame first. With ``with_grad`` only each chunk's exit step is differentiable."""
        model, config = self.generator_model, self.config
        backbone = model.backbone
        start = batch["latents"][:, :, :1]
        batch_size, channels, _, height, width = start.shape
        chunk, num_chunks = config.chunk_frames, config.dmd_rollout_chunks
        num_frames = 1 + chunk * num_chunks
        if batch["latents"].shape[2] < num_frames:
            raise ValueError(f"dmd_rollout_chunks={num_chunks} needs clips of {num_frames} latent frames")
        conds = conditions(model, batch, slice(0, num_frames))
        prompt = prompt_state(model, batch, batch_size)
        cache = backbone.new_cache(batch_size=batch_size, latent_height=height, latent_width=width,
                                   window_frames=model.settings.window_frames, sink_frames=model.settings.sink_frames,
                                   max_new_frames=chunk)
        stats = {"forwards": 0, "grad_forwards": 0}
        with torch.no_grad():
            backbone(start, torch.zeros(batch_size, 1, device=start.device), torch.tensor([0]), prompt, kv_cache=cache,
                     cache_write=True, conditions=None if conds is None else conds.frames(slice(0, 1)))
        outputs = [start]
        reference, reference_index = start, 0
        for c in range(num_chunks):
            frames = slice(1 + c * chunk, 1 + (c + 1) * chunk)
            positions = torch.arange(frames.start, frames.stop)
            part = None if conds is None else conds.frames(frames)
            # the same on every process and micro-batch of a step: under FSDP every process must
            # run the same number of forwards through the sharded generator
            exit_step = int(torch.randint(len(self.sigmas), (1,), generator=self.shared_generator or generator))
            x = randn((batch_size, channels, chunk, height, width), generator, start.device)
            chunk_reference = self._chunk_reference(batch, reference, reference_index, frames)
            for i in range(exit_step + 1):
                keep_grad = with_grad and i == exit_step
                with torch.set_grad_enabled(keep_grad):
                    sigma = self.sigmas[i]
                    timestep = torch.full((batch_size, chunk), sigma * 1000, device=start.device)
                    x0 = flow.to_x0(backbone(x, timestep, positions, prompt, kv_cache=cache, conditions=part,
                                             reference=chunk_reference), x, sigma, backbone.prediction_type)
                stats["forwards"] += 1
                stats["grad_forwards"] += int(keep_grad)
                if i < exit_step:
                    x = flow.add_noise(x0.detach(), randn(x0.shape, generator, x0.device), self.sigmas[i + 1])
            outputs.append(x0)
            reference, reference_index = x0.detach()[:, :, -1:], frames.stop - 1
            with torch.no_grad():  # the context the next chunk sees: the clean sample, no gradient
                backbone(x0.detach(), torch.zeros(batch_size, chunk, device=start.device), positions, prompt,
                         kv_cache=cache, cache_write=True, conditions=part)
        self.rollout_stats = stats
        return torch.cat(outputs, dim=2)

    def _chunk_reference(self, batch: dict, reference: torch.Tensor, reference_index: int, frames: slice):
        """The residual reference of a rolled-out chunk: the last clean frame (index
        ``reference_index`` of the clip), reprojected for a ``warp_reference`` generator."""
        model = self.generator_model
        if not model.settings.warp_reference:
            return reference
        c2w = camera.invert_pose(batch["w2c"].double())
        previous = c2w[:, frames.start - 1:frames.stop - 1]
        return model.residual_reference(reference, c2w[:, reference_index:reference_index + 1], previous,
                                        c2w[:, frames], batch["intrinsics"][:, frames])

    def _noised(self, sample, generator):
        """The critic's view: frames 1.. noised to one random t in [min, max] (shifted) per clip."""
        batch_size, _, num_frames = sample.shape[:3]
        config = self.config
        sigma = sample_sigmas((batch_size, 1), generator, config.shift, config.dmd_min_timestep / 1000,
                              config.dmd_max_timestep / 1000).expand(-1, num_frames).clone().to(sample.device)
        sigma[:, 0] = 0
        noise = randn(sample.shape, generator, sample.device)
        return flow.add_noise(sample, noise, sigma), sigma, noise

    def loss(self, optimizer, batch, step, generator):
        num_frames = 1 + self.config.chunk_frames * self.config.dmd_rollout_chunks
        positions = torch.arange(num_frames)
        conds = conditions(self.fake, batch, slice(0, num_frames))
        if optimizer == "critic":
            with torch.no_grad():
                sample = self.rollout(batch, generator, with_grad=False)
            x_t, sigma, noise = self._noised(sample, generator)
            prediction = self.fake.backbone(x_t, sigma * 1000, positions, prompt_state(self.fake, batch, x_t.shape[0]),
                                            conditions=conds, reference=start_reference(self.fake, sample, batch))
            target = flow.training_target(sample, noise, self.fake.backbone.prediction_type)
            loss = (prediction[:, :, 1:].float() - target[:, :, 1:].float()).square().mean()
            return loss, {"loss/critic": loss.detach()}
        sample = self.rollout(batch, generator, with_grad=True)
        x_t, sigma, _ = self._noised(sample, generator)
        with torch.no_grad():
            real = guided_prediction(self.real, x_t, sigma * 1000, positions, batch, self.config.dmd_real_guidance,
                                     conds=conds, reference=start_reference(self.fake, sample, batch))
            real_x0 = flow.to_x0(real, x_t, sigma.clamp_min(1e-6), self.real.backbone.prediction_type)
            fake = self.fake.backbone(x_t, sigma * 1000, positions, prompt_state(self.fake, batch, x_t.shape[0]),
                                      conditions=conds, reference=start_reference(self.fake, sample, batch))
            fake_x0 = flow.to_x0(fake, x_t, sigma.clamp_min(1e-6), self.fake.backbone.prediction_type)
            weight = (sample - real_x0).abs().mean(dim=(1, 2, 3, 4), keepdim=True).clamp_min(1e-6)
            gradient = (fake_x0 - real_x0) / weight
        # d(loss)/d(sample) is the DMD gradient (up to the mean's constant): x moves towards the real score.
        loss = 0.5 * (sample[:, :, 1:].float() - (sample - gradient).detach()[:, :, 1:].float()).square().mean()
        return loss, {"loss/dmd": loss.detach(), "dmd/grad_abs": gradient.abs().mean()}

    def export(self, folder: Path, ema_state, model=None):
        export_model(model or self.generator_model, folder, ema_state,
                     sampler_timesteps=tuple(self.config.student_timesteps))
