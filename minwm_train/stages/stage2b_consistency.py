"""Stage 2b: causal consistency distillation, the alternative to 2a (docs/design.md §7).

    minwm-train stage2b --preset tiny --model runs/stage1/model --teacher runs/stage1/model \\
        --data ... --out runs/stage2b

On a ``cd_grid_steps`` grid, each chunk gets a grid point t (one per chunk, diffusion
forcing); the frozen teacher takes one Euler step with CFG ``cd_guidance`` from t to the next
point t′; the student's x0 at t is regressed onto an EMA copy of the student's x0 at t′ (at
t′ = 0 the teacher's step itself). All three run in the stage-1 layout with the clean
ground truth as causal context.
"""

from __future__ import annotations

import copy

import torch

from minwm_env import flow

from .common import (SingleModelStage, build_model, guided_prediction, prompt_state, randn,
                     teacher_forcing_layout)


class CausalConsistencyStage(SingleModelStage):
    name = "stage2b"
    few_step = True

    def __init__(self, config, device):
        super().__init__(config, device)
        self.teacher = build_model(config, config.teacher or config.model, device, trainable=False)
        self.target = copy.deepcopy(self.model.backbone).requires_grad_(False).eval()
        self.grid = flow.euler_sigmas(config.cd_grid_steps, config.shift).float()

    def modules(self):
        return {"backbone": self.model.backbone, "target": self.target}

    @torch.no_grad()
    def after_update(self, optimizer, step):
        decay = self.config.cd_target_ema
        for target, online in zip(self.target.parameters(), self.model.backbone.parameters()):
            target.mul_(decay).add_(online.detach(), alpha=1 - decay)

    def loss(self, optimizer, batch, step, generator):
        config, backbone = self.config, self.model.backbone
        clean = batch["latents"]
        batch_size, _, num_frames = clean.shape[:3]
        chunk = config.chunk_frames
        num_chunks = (num_frames - 1) // chunk
        j = torch.randint(config.cd_grid_steps, (batch_size, num_chunks), generator=generator).repeat_interleave(chunk, 1)
        sigma, sigma_next = self.grid[j].to(clean.device), self.grid[j + 1].to(clean.device)
        noise = randn(clean[:, :, 1:].shape, generator, clean.device)
        x_t = flow.add_noise(clean[:, :, 1:], noise, sigma)
        with torch.no_grad():
            x, timestep, positions, mask, all_conds, split, reference = teacher_forcing_layout(
                self.model, clean, x_t, sigma, chunk, batch)
            out = guided_prediction(self.teacher, x, timestep, positions, batch, config.cd_guidance, frame_mask=mask,
                                    conds=all_conds, reference=reference)[:, :, split:]
            velocity = flow.to_velocity(out, x_t, sigma, self.teacher.backbone.prediction_type)
            x_next = x_t + flow.expand_sigma(sigma_next - sigma, x_t) * velocity  # one Euler step of the teacher
            x2, timestep2, _, _, _, _, _ = teacher_forcing_layout(self.model, clean, x_next, sigma_next, chunk, batch)
            target_out = self.target(x2, timestep2, positions, prompt_state(self.model, batch, batch_size),
                                     frame_mask=mask, conditions=all_conds, reference=reference)[:, :, split:]
            safe_sigma = sigma_next.clamp_min(1e-6)
            target_x0 = flow.to_x0(target_out, x_next, safe_sigma, backbone.prediction_type)
            target_x0 = torch.where(flow.expand_sigma(sigma_next, x_next) == 0, x_next, target_x0)
        prediction = backbone(x, timestep, positions, prompt_state(self.model, batch, batch_size), frame_mask=mask,
                              conditions=all_conds, reference=reference)[:, :, split:]
        estimate = flow.to_x0(prediction, x_t, sigma, backbone.prediction_type)
        loss = (estimate.float() - target_x0.float()).square().mean()
        return loss, {"loss/consistency": loss.detach()}

