"""How well a model draws what the last frame never showed, one chunk after a clean start.

    python benchmarks/unseen_probe.py --models minwm-default runs/v2/stage1/model --data runs/probe_data/latents

On held-out clips (start frame + one chunk), every model predicts the chunk in one step (x0 at
t = 1000, the shipped sampler) against the clean start; the error is split by the blank warp's
validity into pixels the start frame showed and pixels it did not. Beside the models, two
free references for the unseen pixels: mid-grey (what a network that adds nothing to a blank
warp draws) and each row's mean colour over the frame's seen pixels (a smear that knows the
horizon). A model that draws the world should beat the row mean there.
"""

from __future__ import annotations

import argparse

import torch

from minwm_env.models import build_preset, load_model
from minwm_train.data import LatentClips
from minwm_train.stages.common import conditions, prompt_state, residual_references, teacher_forcing_layout


def _pixels(codec, latents):
    return codec.unpack(latents)  # (B, 3, T, H, W) in [-1, 1]


@torch.no_grad()
def one_step(model, batch):
    """The model's one-step prediction of frames 1.. given the clean start (B, C, F - 1, h, w)."""
    clean = batch["latents"]
    batch_size, _, num_frames = clean.shape[:3]
    noise = torch.randn(clean[:, :, 1:].shape, generator=torch.Generator().manual_seed(0))
    sigma = torch.ones(batch_size, num_frames - 1)
    x, timestep, positions, mask, conds, split, reference = teacher_forcing_layout(
        model, clean, noise, sigma, model.settings.chunk_frames, batch)
    out = model.backbone(x, timestep, positions, prompt_state(model, batch, batch_size), frame_mask=mask,
                         conditions=conds, reference=reference)
    return out[:, :, split:]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", required=True)
    parser.add_argument("--data", required=True, help="encoded held-out clips (space-to-depth latents)")
    parser.add_argument("--num-clips", type=int, default=64)
    args = parser.parse_args()
    data = LatentClips(args.data, 5)
    batch = data.batch(torch.arange(min(args.num_clips, len(data))))
    probe = build_preset("default-v2")  # its blank warp gives every clip's validity
    clean = batch["latents"]
    sources = torch.zeros(clean.shape[2], dtype=torch.long)
    validity = residual_references(probe, clean, sources, batch)[:, 192:, 1:]
    seen = _pixels(probe.codec, validity * 2.0)[:, :1] > 0.5  # (B, 1, T, H, W): pack scaled by the codec's 2
    truth = _pixels(probe.codec, clean[:, :, 1:])
    row_mean = (truth * seen).sum(-1, keepdim=True) / seen.sum(-1, keepdim=True).clamp_min(1)
    candidates = {"mid-grey": torch.zeros_like(truth), "row mean of seen pixels": row_mean.expand_as(truth)}
    for name in args.models:
        model = load_model(name, sampler_timesteps=(1000.0,))
        candidates[name] = _pixels(model.codec, one_step(model, batch))
    unseen = ~seen
    print(f"{len(clean)} clips, {float(unseen.float().mean()):.1%} of predicted pixels unseen")
    print(f"{'candidate':40s} {'seen MSE':>10s} {'unseen MSE':>11s}")
    for name, frames in candidates.items():
        error = (frames - truth).square().mean(1, keepdim=True)
        seen_mse = float(error[seen].mean()) if name not in ("mid-grey", "row mean of seen pixels") else float("nan")
        print(f"{name:40s} {seen_mse:10.4f} {float(error[unseen].mean()):11.4f}")


if __name__ == "__main__":
    main()
