"""Stage 0: camera- (or action-) conditioned bidirectional fine-tune (docs/design.md §7).

    minwm-train stage0 --preset tiny --data data/world/latents --out runs/stage0

Flow matching over whole clips with full attention: latent frame 0 (the start image) stays
clean, frames 1.. share one noise level per clip; the new conditioning branches start at
zero and learn with the backbone. The result is the bidirectional teacher (the real score of
stage 3) and the starting point of stage 1.
"""

from __future__ import annotations

import torch

from minwm_env import flow

from .common import SingleModelStage, conditions, prompt_state, randn, sample_sigmas, squared_error, start_reference


class BidirectionalStage(SingleModelStage):
    name = "stage0"

    def loss(self, optimizer, batch, step, generator):
        backbone = self.model.backbone
        x0 = batch["latents"]
        batch_size, _, num_frames = x0.shape[:3]
        noise = randn(x0.shape, generator, x0.device)
        sigma = sample_sigmas((batch_size, 1), generator, self.config.shift).expand(-1, num_frames).clone()
        sigma[:, 0] = 0  # the start frame is given
        x_t = flow.add_noise(x0, noise, sigma.to(x0.device))
        reference = start_reference(self.model, x0, batch)
        prediction = backbone(x_t, sigma.to(x0.device) * 1000, torch.arange(num_frames),
                              prompt_state(self.model, batch, batch_size), conditions=conditions(self.model, batch),
                              reference=reference)
        target = flow.training_target(x0, noise, backbone.prediction_type)
        loss = squared_error(self.model, prediction[:, :, 1:], target[:, :, 1:],
                             None if reference.shape[2] == 1 else reference[:, :, 1:], self.config.unseen_weight)
        return loss, {"loss/flow": loss.detach()}

