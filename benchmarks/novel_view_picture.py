"""The novel-view picture of the model card: a 120° turn on a held-out layout, model above truth.

    python benchmarks/novel_view_picture.py --out docs/images/minwm_default_turn120.png

Rolls the shipped model and the ground truth along the novel-view suite's ``turn_120`` path
(minwm_env/eval/generation.py) from the same rendered start, and writes the start and the last
frame of every step, the model's row above the truth's, scaled up for viewing.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import imageio.v3 as iio
import numpy as np

from minwm_env.envs.ground_truth import GroundTruthEnv
from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.eval.generation import novel_view_path
from minwm_env.eval.rollout import paired_rollout
from minwm_env.models import load_model
from minwm_env.rollout import contact_sheet
from minwm_env.samplers import EulerSampler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="minwm-default", help="shipped model, preset or model folder")
    parser.add_argument("--scene", default="room")
    parser.add_argument("--scene-seed", type=int, default=100, help="a held-out layout (training used 0..99)")
    parser.add_argument("--seed", type=int, default=1, help="path seed")
    parser.add_argument("--steps", type=int, default=10, help="steps of 12° (10: 120°)")
    parser.add_argument("--scale", type=int, default=2, help="pixel upscaling of the picture")
    parser.add_argument("--sampler-steps", type=int, default=0,
                        help="0: the model's own sampler; N: N-step Euler (for a model not distilled yet)")
    parser.add_argument("--out", default="outputs/turn120.png")
    args = parser.parse_args()
    truth = GroundTruthEnv(scene=args.scene, scene_seed=args.scene_seed, obs_mode="chunk")
    sampler = None
    if args.sampler_steps:
        sampler = EulerSampler(num_steps=args.sampler_steps, shift=load_model(args.model).settings.shift,
                               guidance_scale=1.0)
    model = WorldModelEnv(model=args.model, obs_mode="chunk", sampler=sampler)
    path = novel_view_path(truth.unwrapped.scene, "turn_120", args.steps * 4, seed=args.seed)
    model_run, truth_run = paired_rollout(model, truth, path, seed=args.seed, keep="last")
    rows = [np.repeat(np.repeat(run.last_frames(), args.scale, 1), args.scale, 2) for run in (model_run, truth_run)]
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    iio.imwrite(args.out, contact_sheet(rows))
    print(f"wrote {args.out}: start + {args.steps} steps, model (top) vs truth (bottom)")


if __name__ == "__main__":
    main()
