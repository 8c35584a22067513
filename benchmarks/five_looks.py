"""The five looks to take before believing a number: a world model's frames beside the truth's.

    python benchmarks/five_looks.py --models minwm-default runs/v7/ship --out outputs/looks

On one held-out layout (scene seed 100 by default; training used 0..99), every model and the
ground truth go along the same five paths from the same rendered start:

- ``turn120``: ten steps of 12° to one side (the novel-view suite's ``turn_120``): does what
  comes into view look like a room, or like a smear of the edge?
- ``approach``: a walk straight at an object: does it grow to its true size?
- ``orbit``: strafing around the nearest object while turning to keep it in view: does it stay
  where the truth keeps it, with parallax behind it?
- ``idle``: 100 steps of the zero action (frames at steps 0, 1, 5, 10, 25, 50, 75, 100): does
  the frame hold still, as the truth does?
- ``out_back``: five 12° steps away and five back (the revisit suite's short look): does the
  last frame come back to the first?

Writes one picture per look (``<look>.png``: a row per model in the order given, the truth's
row last, frames scaled up), and ``looks.md``, each model's PSNR against the truth on the last
frame of every look beside the free baseline of repeating the start frame. About a minute per
model on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import torch

from minwm_env.envs.ground_truth import GroundTruthEnv
from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.eval import metrics
from minwm_env.eval.generation import approach_path, novel_view_path, revisit_path
from minwm_env.eval.rollout import paired_rollout
from minwm_env.rollout import contact_sheet
from minwm_env.world.paths import CameraPath, random_start

LOOKS = ("turn120", "approach", "orbit", "idle", "out_back")
IDLE_SHOWN = (0, 1, 5, 10, 25, 50, 75, 100)


def look_path(look: str, scene, chunk_frames: int, seed: int, idle_steps: int = 100) -> CameraPath:
    """The camera path of one look, in latent frames (``chunk_frames`` to an env step)."""
    if look == "turn120":
        return novel_view_path(scene, "turn_120", 10 * chunk_frames, seed=seed)
    if look == "approach":
        return approach_path(scene, 6 * chunk_frames, seed=seed)[0]
    if look == "orbit":
        return novel_view_path(scene, "orbit", 10 * chunk_frames, seed=seed)
    if look == "idle":
        start = random_start(scene, random.Random(seed))
        return CameraPath("idle", start, torch.zeros(idle_steps * chunk_frames, 6, dtype=torch.float64), "stay")
    if look == "out_back":
        return revisit_path(scene, "short", "look", chunk_frames, seed=seed)
    raise ValueError(f"unknown look {look!r}; looks: {', '.join(LOOKS)}")


def shown(look: str, frames: np.ndarray) -> np.ndarray:
    """The frames a look's picture shows: the start and every step's last frame, or for
    ``idle`` the steps of ``IDLE_SHOWN`` that exist."""
    if look == "idle":
        return frames[[k for k in IDLE_SHOWN if k < len(frames)]]
    return frames


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["minwm-default"],
                        help="shipped model names, presets or model folders, one row each")
    parser.add_argument("--scene", default="room")
    parser.add_argument("--scene-seed", type=int, default=100, help="a held-out layout (training used 0..99)")
    parser.add_argument("--seed", type=int, default=1, help="path and noise seed")
    parser.add_argument("--looks", nargs="+", default=list(LOOKS), choices=LOOKS)
    parser.add_argument("--scale", type=int, default=2, help="pixel upscaling of the pictures")
    parser.add_argument("--out", default="outputs/looks")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    truth = GroundTruthEnv(scene=args.scene, scene_seed=args.scene_seed, obs_mode="chunk")
    models = [WorldModelEnv(model=name, obs_mode="chunk") for name in args.models]
    chunk_frames = models[0].unwrapped.world_model.settings.chunk_frames
    table = ["| look | " + " | ".join(args.models) + " | repeat start |", "|---|" + "---:|" * (len(models) + 1)]
    for look in args.looks:
        path = look_path(look, truth.unwrapped.scene, chunk_frames, args.seed)
        rows, scores, truth_frames = [], [], None
        for model in models:
            model_run, truth_run = paired_rollout(model, truth, path, seed=args.seed, keep="last")
            truth_frames = truth_run.last_frames()
            frames = model_run.last_frames()
            rows.append(shown(look, frames))
            scores.append(metrics.pooled_psnr(frames[-1:], truth_frames[-1:]))
        rows.append(shown(look, truth_frames))
        rows = [np.repeat(np.repeat(row, args.scale, 1), args.scale, 2) for row in rows]
        iio.imwrite(out / f"{look}.png", contact_sheet(rows))
        repeat = metrics.pooled_psnr(truth_frames[:1], truth_frames[-1:])
        table.append(f"| {look} | " + " | ".join(f"{s:.2f}" for s in scores) + f" | {repeat:.2f} |")
        print(f"{look}: last frame PSNR against the truth " + ", ".join(
            f"{name} {s:.2f} dB" for name, s in zip(args.models, scores)) + f" (repeat start {repeat:.2f})")
    (out / "looks.md").write_text(
        f"Last frame of each look against the truth, PSNR dB ({args.scene} layout {args.scene_seed}, "
        f"seed {args.seed}); pictures: <look>.png, a row per model, the truth last.\n\n" + "\n".join(table) + "\n")
    print(f"wrote {out}/looks.md and {', '.join(f'{look}.png' for look in args.looks)}")


if __name__ == "__main__":
    main()
