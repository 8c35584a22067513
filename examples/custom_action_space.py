"""Train a conditioner for your own action space on a frozen backbone, then save and reload it.

    python examples/custom_action_space.py --steps 60 --out outputs/diff_drive_conditioner

The toy data makes the clip's brightness follow the robot's forward speed v, so only an
action-aware model can fit it; the backbone's weights never change.
"""

from dataclasses import dataclass

import torch

from minwm_env import flow
from minwm_env.cli import arg, parse
from minwm_env.conditioning import ConditioningConfig, FrameConditions, diff_drive_action_spec
from minwm_env.models import load_model
from minwm_env.threads import configure_process


@dataclass
class Args:
    """Train an action conditioner on a frozen tiny backbone."""

    steps: int = arg(60, "optimiser steps")
    batch: int = arg(8, "clips per step")
    lr: float = arg(3e-3, "Adam learning rate")
    out: str = arg("outputs/diff_drive_conditioner", "where to save the conditioner")


def main() -> None:
    args = parse(Args)
    configure_process()  # torch was imported before minwm_env: the package picks the threads here
    spec = diff_drive_action_spec()
    model = load_model("tiny", conditioning=ConditioningConfig(action_spec=spec, action_hidden_dim=64))
    backbone = model.backbone
    backbone.transformer.requires_grad_(False)
    backbone.train()
    optimizer = torch.optim.Adam(backbone.conditioning.parameters(), lr=args.lr)
    prompt = backbone.encode_prompt(backbone.null_prompt_embeds(args.batch))
    generator = torch.Generator().manual_seed(0)
    channels, frames, size = backbone.latent_channels, 2, 8
    for step in range(args.steps):
        unit = torch.rand(args.batch, frames, spec.dim, generator=generator) * 2 - 1
        actions = spec.validate(unit * torch.tensor(spec.high))
        x0 = (actions[..., 0] / spec.high[0]).view(args.batch, 1, frames, 1, 1).expand(-1, channels, -1, size, size)
        noise = torch.randn(x0.shape, generator=generator)
        sigma = torch.rand(args.batch, 1, generator=generator).expand(-1, frames)
        prediction = backbone(flow.add_noise(x0, noise, sigma), sigma * 1000, torch.arange(frames), prompt,
                              conditions=FrameConditions(actions=actions))
        loss = (prediction - flow.training_target(x0, noise, backbone.prediction_type)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 10 == 0 or step == args.steps - 1:
            print(f"step {step:3d}  loss {loss.item():.4f}")
    model.save_conditioning(args.out)
    reloaded = load_model("tiny", conditioning=args.out)
    same = all(torch.equal(a, b) for a, b in zip(backbone.conditioning.state_dict().values(),
                                                  reloaded.backbone.conditioning.state_dict().values()))
    print(f"saved to {args.out}; reloaded identically: {same}")


if __name__ == "__main__":
    main()
