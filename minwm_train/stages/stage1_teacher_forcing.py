"""Stage 1: autoregressive diffusion with teacher forcing (docs/design.md §7).

    minwm-train stage1 --preset tiny --model runs/stage0/model --data ... --out runs/stage1

The input is [clean ground-truth latents at t = 0 ; a noisy copy with one sigma per chunk]
under the block-causal mask: noisy chunk c attends to the clean chunks before it and to
itself, so it learns to denoise given a clean past, exactly what streaming with a KV cache
provides at inference (the equivalence is tested in minwm_env). The loss is on the noisy half.
"""

from __future__ import annotations

from minwm_env import flow

from .common import SingleModelStage, chunk_sigmas, prompt_state, randn, squared_error, teacher_forcing_layout


class TeacherForcingStage(SingleModelStage):
    name = "stage1"

    def layout(self, batch, generator):
        """The stage-1 forward inputs and the regression target of the noisy half."""
        backbone = self.model.backbone
        clean = batch["latents"]
        batch_size, _, num_frames = clean.shape[:3]
        noise = randn(clean[:, :, 1:].shape, generator, clean.device)
        sigma = chunk_sigmas(batch_size, num_frames, self.config.chunk_frames, generator, self.config.shift)
        noisy = flow.add_noise(clean[:, :, 1:], noise, sigma.to(clean.device))
        inputs = teacher_forcing_layout(self.model, clean, noisy, sigma, self.config.chunk_frames, batch)
        target = flow.training_target(clean[:, :, 1:], noise, backbone.prediction_type)
        return inputs, target

    def loss(self, optimizer, batch, step, generator):
        (x, timestep, positions, mask, conds, split, reference), target = self.layout(batch, generator)
        prediction = self.model.backbone(x, timestep, positions, prompt_state(self.model, batch, x.shape[0]),
                                         frame_mask=mask, conditions=conds, reference=reference)
        loss = squared_error(self.model, prediction[:, :, split:], target, reference[:, :, split:],
                             self.config.unseen_weight)
        return loss, {"loss/flow": loss.detach()}

