"""A revisit, in pictures: look away and back on a held-out layout, the model without and with
its view memory above the truth.

    python benchmarks/revisit_picture.py --out docs/images/minwm_default_revisit.png

The path turns ``--steps`` steps one way and as many back (``--degrees`` a step), so the truth's
last frame is its first. Rows: the model with ``memory=False``, with ``memory=True``, the truth;
columns: the start and the last frame of every step, scaled up for viewing.
"""

from __future__ import annotations

import argparse
import random
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from minwm_env.envs.ground_truth import GroundTruthEnv
from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.eval import metrics
from minwm_env.eval.rollout import paired_rollout
from minwm_env.rollout import contact_sheet
from minwm_env.world.paths import random_start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minwm-default", help="shipped model, preset or model folder")
    parser.add_argument("--scene", default="room")
    parser.add_argument("--scene-seed", type=int, default=100, help="a held-out layout (training used 0..99)")
    parser.add_argument("--seed", type=int, default=3, help="start pose and noise seed")
    parser.add_argument("--steps", type=int, default=5, help="steps away (and as many back)")
    parser.add_argument("--degrees", type=float, default=12.0, help="turn per step (at most 24: 6° a latent frame)")
    parser.add_argument("--scale", type=int, default=2, help="pixel upscaling of the picture")
    parser.add_argument("--out", default="outputs/revisit.png")
    args = parser.parse_args()
    truth = GroundTruthEnv(scene=args.scene, scene_seed=args.scene_seed, obs_mode="chunk")
    turn = np.array([0.0, 0, 0, args.degrees / 4, 0, 0])
    deltas = np.repeat(np.array([turn] * args.steps + [-turn] * args.steps), 4, axis=0)  # per latent frame
    start = random_start(truth.unwrapped.scene, random.Random(args.seed))
    rows = []
    for memory in (False, True):
        env = WorldModelEnv(model=args.model, obs_mode="chunk", memory=memory)
        model_run, truth_run = paired_rollout(env, truth, deltas, start_pose=start, seed=args.seed, keep="last")
        frames, truth_frames = model_run.last_frames(), truth_run.last_frames()
        psnr = float(metrics.psnr(frames[-1:], truth_frames[-1:])[0])
        print(f"memory={memory}: last frame {psnr:.1f} dB from the truth")
        rows.append(frames)
        env.close()
    rows.append(truth_frames)
    rows = [np.repeat(np.repeat(r, args.scale, 1), args.scale, 2) for r in rows]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, contact_sheet(rows))
    print(f"wrote {args.out}: start + {2 * args.steps} steps; rows: no memory, memory, truth")


if __name__ == "__main__":
    main()
