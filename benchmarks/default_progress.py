"""Track the default model's training: one-step estimates on held-out rendered clips.

    python benchmarks/default_progress.py --checkpoint runs/default/stage0/checkpoints/step-002000

Loads a stage checkpoint (EMA weights when present) into the ``default`` architecture, renders
held-out clips (a seed never used for training data), and reports per latent frame the PSNR
of the model's x0 estimate from pure noise (frames 1..4 at t = 1000, frame 0 the clean start)
against the truth, next to the repeat-the-start-frame baseline, with the true actions and with
the mirrored (negated) actions. A quick, honest signal between full ``minwm-eval`` runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import safetensors.torch
import torch

from minwm_env import camera, flow
from minwm_env.cli import arg, parse
from minwm_env.codec import from_uint8
from minwm_env.conditioning import ConditioningConfig, FrameConditions, camera_action_spec
from minwm_env.models import load_model
from minwm_env.world.paths import random_path, rgb_frame_poses
from minwm_env.world.renderer import WorldRenderer
from minwm_env.world.scenes import SCENE_NAMES, make_scene


@dataclass
class Args:
    """One-step progress of the default model against the repeat-start-frame baseline."""

    checkpoint: str = arg("", "a stage checkpoint folder (step-NNNNNN)")
    num_clips: int = arg(32, "held-out clips")
    seed: int = arg(999, "held-out seed (training data uses seed 0)")
    json: str | None = arg(None, "write the figures here")


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a - b) ** 2).mean().item()
    return float("inf") if mse == 0 else 10 * np.log10(4.0 / mse)  # frames in [-1, 1]: peak-to-peak 2


def main(argv=None) -> None:
    args = parse(Args, argv)
    folder = Path(args.checkpoint)
    model = load_model("default", conditioning=ConditioningConfig(action_spec=camera_action_spec()))
    state = safetensors.torch.load_file(folder / ("ema.safetensors" if (folder / "ema.safetensors").is_file()
                                                  else "modules.safetensors"))
    state = {k.removeprefix("backbone/"): v for k, v in state.items()}
    model.backbone.load_state_dict(state)
    model.backbone.eval()
    codec = model.codec
    rng = np.random.default_rng(args.seed)
    clips, actions = [], []
    for i in range(args.num_clips):
        scene = make_scene(SCENE_NAMES[i % len(SCENE_NAMES)], int(rng.integers(100, 1000)))
        path = random_path(scene, 5, None, seed=int(rng.integers(1 << 30)))
        renderer = WorldRenderer(scene, 64, 64)
        clips.append(renderer.render_many(path.start_c2w @ rgb_frame_poses(path.relative_c2w()).numpy()))
        actions.append(torch.cat([torch.zeros(1, 6), path.deltas.float()]))
        renderer.close()
    frames = from_uint8(torch.from_numpy(np.stack(clips))).permute(0, 2, 1, 3, 4)  # (N, 3, 17, 64, 64)
    latents = codec.encode(frames)
    actions = torch.stack(actions)
    intrinsics = torch.tensor(model.settings.intrinsics).expand(len(clips), 5, 4)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(0))
    x_t = latents.clone()
    x_t[:, :, 1:] = noise[:, :, 1:]
    timestep = torch.full((len(clips), 5), 1000.0)
    timestep[:, 0] = 0
    prompt = model.backbone.encode_prompt(model.backbone.null_prompt_embeds(len(clips)))
    result = {"checkpoint": str(folder), "num_clips": len(clips)}
    with torch.no_grad():
        for name, acts in (("true", actions), ("mirrored", -actions)):
            c2w = camera.compose_deltas(acts[:, 1:])  # (N, 5, 4, 4), frame 0 the identity
            reference = model.residual_reference(latents[:, :, :1], c2w[:, :1], c2w[:, [0, 0, 1, 2, 3]], c2w,
                                                 intrinsics)
            out = model.backbone(x_t, timestep, torch.arange(5), prompt, reference=reference,
                                 conditions=FrameConditions(camera.invert_pose(c2w).float(), intrinsics, acts))
            estimate = codec.decode(flow.to_x0(out, x_t, timestep / 1000, model.backbone.prediction_type))
            result[f"psnr_{name}"] = [psnr(estimate[:, :, 4 * k], frames[:, :, 4 * k]) for k in range(1, 5)]
            if name == "true" and model.settings.warp_reference:  # the warp alone, no network
                warped = codec.decode(reference)
                result["psnr_warp_only"] = [psnr(warped[:, :, 4 * k], frames[:, :, 4 * k]) for k in range(1, 5)]
    result["psnr_repeat_start"] = [psnr(frames[:, :, 0], frames[:, :, 4 * k]) for k in range(1, 5)]
    for key in ("psnr_true", "psnr_mirrored", "psnr_warp_only", "psnr_repeat_start"):
        if key not in result:
            continue
        print(f"{key:18s} " + " ".join(f"{v:6.2f}" for v in result[key]) + "   (RGB frames 4, 8, 12, 16)")
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
