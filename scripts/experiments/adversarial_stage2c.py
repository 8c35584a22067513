"""Experiment (issue 18, not part of the pipeline): stage 2c with an adversarial term on what
the model draws, to see whether a discriminator can push never-seen pixels from a smear towards
walls and floors.

    MINWM_THREADS=2 python scripts/experiments/adversarial_stage2c.py --model runs/default-v4g/stage2c/model \
        --data runs/default_data --out runs/adv2c --steps 600 --adv-weight 0.05

What differs from the session-11 attempts (docs/default_model.md, *Where v5.1 still fails*):
the discriminator is conditioned on each frame's validity (the warp's seen mask) and its hinge
loss is weighted, patch by patch, by the share of never-seen pixels, so the seen part (the
same in the truth and in the model's output, up to the warp's error) no longer dilutes it; it
is wider (64/128 channels), and takes two updates a step. The generator's term is on the
one-step output (x0 at sigma 1, as the shipped model samples) of the learnt chunk; the
regression of stage 2c stays.
"""

from __future__ import annotations

import argparse
import sys

import minwm_env  # noqa: F401  (before torch: its thread defaults)
import torch
import torch.nn.functional as F
from torch import nn

from minwm_train.config import preset_config
from minwm_train.data import LatentClips
from minwm_train.engine import Trainer
from minwm_train.stages.common import prompt_state, randn, teacher_forcing_layout
from minwm_train.stages.stage2c_rollout import SelfRolloutStage


class PatchCritic(nn.Module):
    """RGB + validity (4 channels, 64 × 64) → one logit per 4 × 4-pixel cell (16 × 16)."""

    def __init__(self, width: int = 64):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(4, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 2 * width, 3, 1, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(2 * width, 1, 3, 1, 1))

    def forward(self, frames: torch.Tensor, validity: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([frames, validity * 2 - 1], dim=1))[:, 0]


class AdversarialRolloutStage(SelfRolloutStage):
    name = "stage2c"

    def __init__(self, config, device, adv_weight: float, critic_lr: float, critic_updates: int):
        super().__init__(config, device)
        self.critic = PatchCritic().to(device)
        self.adv_weight, self.critic_lr, self.critic_updates = adv_weight, critic_lr, critic_updates
        self.stash = None

    def modules(self):
        return {"backbone": self.model.backbone, "critic": self.critic}

    def param_groups(self):
        return {"model": {"params": list(self.model.backbone.parameters())},
                "critic": {"params": list(self.critic.parameters()), "lr": self.critic_lr, "betas": (0.5, 0.999)}}

    def updates(self, step):
        return ["model"] + ["critic"] * self.critic_updates

    def _frames(self, latents):  # (B, C, F, h, w) → (B·4F, 3, H, W)
        rgb = self.model.codec.unpack(latents)
        return rgb.transpose(1, 2).flatten(0, 1)

    def _validity(self, reference):
        codec = self.model.codec
        packed = reference[:, codec.latent_channels:] * codec.scale
        return codec.unpack(packed).transpose(1, 2).flatten(0, 1).clamp(0, 1)  # (B·4F, 1, H, W)

    @staticmethod
    def _weights(validity):  # share of never-seen pixels of each logit's 4 × 4 cell
        return F.avg_pool2d(1 - validity, 4)[:, 0]

    def loss(self, optimizer, batch, step, generator):
        if optimizer == "critic":
            fake, real, validity = self.stash
            weights = self._weights(validity)
            total = weights.sum().clamp_min(1.0)
            hinge = (F.relu(1 - self.critic(real, validity)) + F.relu(1 + self.critic(fake, validity))) * weights
            loss = hinge.sum() / total
            return loss, {"loss/critic": loss.detach(), "adv/unseen_share": weights.mean()}
        window, _ = self.learnt_window(batch, generator)
        regression, logs = super(SelfRolloutStage, self).loss(optimizer, window, step, generator)
        # the one-step sample the shipped model draws: x0 from pure noise at sigma 1
        clean = window["latents"]
        noise = randn(clean[:, :, 1:].shape, generator, clean.device)
        sigma = torch.ones(clean.shape[0], clean.shape[2] - 1)
        x, timestep, positions, mask, conds, split, reference = teacher_forcing_layout(
            self.model, clean, noise, sigma, self.config.chunk_frames, window)
        x0 = self.model.backbone(x, timestep, positions, prompt_state(self.model, window, x.shape[0]),
                                 frame_mask=mask, conditions=conds, reference=reference)[:, :, split:]
        fake = self._frames(x0)
        validity = self._validity(reference[:, :, split:]).detach()
        real = self._frames(clean[:, :, 1:]).detach()
        self.stash = (fake.detach(), real, validity)
        weights = self._weights(validity)
        adversarial = -(self.critic(fake, validity) * weights).sum() / weights.sum().clamp_min(1.0)
        loss = regression + self.adv_weight * adversarial
        return loss, {**logs, "loss/adversarial": adversarial.detach()}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--data", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=600)
    parser.add_argument("--lr", type=float, default=5e-5)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--adv-weight", type=float, default=0.05)
    parser.add_argument("--critic-lr", type=float, default=2e-4)
    parser.add_argument("--critic-updates", type=int, default=2)
    args = parser.parse_args(argv)
    config = preset_config("default-v4g", "stage2c", model=args.model, data=args.data, out=args.out,
                           steps=args.steps, lr=args.lr, batch_size=args.batch_size, tensorboard=False,
                           checkpoint_every=100)
    device = torch.device("cpu")
    data = LatentClips(config.data, config.num_latent_frames)
    stage = AdversarialRolloutStage(config, device, args.adv_weight, args.critic_lr, args.critic_updates)
    Trainer(config, stage, data).run(resume=True)
    print(f"model: {args.out}/model", file=sys.stderr)


if __name__ == "__main__":
    main()
