"""Stage 3: asymmetric distribution matching distillation with self-rollout (docs/design.md §7).

    minwm-train stage3 --preset tiny --model runs/stage2a/model --teacher runs/stage0/model \\
        --data ... --out runs/stage3

Three models: the few-step causal generator (from stage 2), the frozen bidirectional real
score (stage 0, CFG ``dmd_real_guidance``) and a trained fake score initialised from it
(conditional only). Each step the generator rolls out ``dmd_rollout_chunks`` chunks on its own
KV cache from the clip's start frame under the clip's actions (Self-Forcing's self-rollout),
through the env's own streaming step (:mod:`minwm_env.streaming`: the same references,
restarted contexts and cache writes as ``env.step``): every chunk stops at a random exit step
of the few-step schedule and only that step keeps its gradient; the clean cache writes run
without gradient. Critic step: flow matching of the fake score on the
generator's samples. Generator step (one per ``dmd_critic_updates`` critic steps, DMD2's
two time-scale rule): at a random critic time t the generator's sample moves along
``(x0_fake − x0_real)`` normalised by ``mean |x − x0_real|`` (DMD2 eq. 7); "asymmetric": a
causal generator distilled by a bidirectional teacher.
"""

from __future__ import annotations

from pathlib import Path

import torch

from minwm_env import flow
from minwm_env.samplers import FewStepSampler, randn_rows, row_generators

from .common import (build_model, conditions, export_model, guided_prediction, prompt_state, randn, rollout_actions,
                     sample_sigmas, start_reference, student_sigmas)
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

    def rollout(self, batch: dict, generator: torch.Generator, with_grad: bool,
                exit_steps: list[int] | None = None) -> torch.Tensor:
        """Self-rollout of the few-step generator: (B, C, 1 + chunks·chunk_frames, h, w), the start
        frame first. It streams exactly as the env does (the shared :class:`ChunkStream`: same
        conditions, references, restarted contexts and cache writes) under the clip's actions;
        each chunk stops at its exit step (random unless ``exit_steps`` gives them), and with
        ``with_grad`` only that step is differentiable."""
        model, config = self.generator_model, self.config
        start = batch["latents"][:, :, :1]
        batch_size = start.shape[0]
        chunk, num_chunks = config.chunk_frames, config.dmd_rollout_chunks
        num_frames = 1 + chunk * num_chunks
        if batch["latents"].shape[2] < num_frames:
            raise ValueError(f"dmd_rollout_chunks={num_chunks} needs clips of {num_frames} latent frames")
        actions = rollout_actions(model, batch, num_frames)
        # separate clean writes: a chunk exiting at its first step cannot fold its write (that
        # forward keeps the gradient), and a rollout must give the same numbers with and without
        # gradients, bit for bit
        stream = model.stream(batch_size=batch_size, chunk_frames=chunk, fold_writes=False)
        stream.begin(prompt_state(model, batch, batch_size), start)
        generators = row_generators(int(torch.randint(2**31 - 1, (1,), generator=generator)), batch_size)
        outputs = [start]
        for c in range(num_chunks):
            if exit_steps is None:
                # the same on every process and micro-batch of a step: under FSDP every process must
                # run the same number of forwards through the sharded generator
                exit_step = int(torch.randint(len(self.sigmas), (1,), generator=self.shared_generator or generator))
            else:
                exit_step = exit_steps[c]
            # stopping at the exit step = sampling with the schedule's first exit_step + 1 timesteps
            sampler = FewStepSampler(timesteps=tuple(config.student_timesteps[:exit_step + 1]), shift=config.shift)
            plan = stream.plan(None if actions is None else actions[:, 1 + c * chunk:1 + (c + 1) * chunk])
            noise = randn_rows((batch_size, *stream.latent_shape), generators, start.device, start.dtype)
            x0 = stream.denoise(plan, sampler, noise, generators, grad=with_grad)
            outputs.append(x0)
            stream.commit(plan, x0)
        self.rollout_stats = {"forwards": stream.num_forwards, "grad_forwards": stream.num_grad_forwards}
        return torch.cat(outputs, dim=2)

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
