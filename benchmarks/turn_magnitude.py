"""How far a model turns the image on pure turns, next to the truth (phase correlation).

    python benchmarks/turn_magnitude.py --model minwm-default --scene room --scene-seed 100

From rendered starts in a layout (``--scene-seed``; training used layouts 0..99), the model and
the ground truth take the same pure turns (``--yaw`` degrees per latent frame, left and right
alternately by start) for ``--steps`` steps. The horizontal image shift between the last frames
of consecutive steps is measured by phase correlation (OpenCV, Hann window, frames upscaled 4×);
the truth's shift is what the command means in pixels. Reports per step the median shift of
each and their ratio: 1 is a model that turns as far as it is told, 0 one that stands still.
A second, independent check on minwm-eval's rotation error (features + essential matrix).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from minwm_env.cli import arg, parse
from minwm_env.envs.world_model import WorldModelEnv
from minwm_env.eval.rollout import env_layout, ground_truth_like, paired_rollout
from minwm_env.world.paths import random_start


@dataclass
class Args:
    """Image shift per step on pure turns: model vs truth."""

    model: str = arg("minwm-default", "shipped model name, preset or model folder")
    scene: str = arg("room", "scene kind")
    scene_seed: int = arg(100, "scene layout (training used 0..99)")
    num_starts: int = arg(6, "rendered start poses")
    steps: int = arg(6, "turning steps per start")
    yaw: float = arg(3.0, "degrees per latent frame")
    seed: int = arg(0, "seed of the starts and the model's noise")
    json: str | None = arg(None, "write the figures here")


def horizontal_shift(a: np.ndarray, b: np.ndarray, upscale: int = 4) -> float:
    """Pixels (at the frames' own size) that content moves right from ``a`` to ``b``."""
    def gray(frame):
        image = cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY).astype(np.float64)
        return cv2.resize(image, None, fx=upscale, fy=upscale, interpolation=cv2.INTER_CUBIC)

    window = cv2.createHanningWindow(gray(a).shape[::-1], cv2.CV_64F)
    (dx, _), _ = cv2.phaseCorrelate(gray(a), gray(b), window)
    return dx / upscale


def main(argv=None) -> None:
    args = parse(Args, argv)
    model = WorldModelEnv(model=args.model, obs_mode="chunk", start_scene=args.scene)
    truth = ground_truth_like(model, args.scene, args.scene_seed)
    chunk = env_layout(model).chunk_frames
    rng = random.Random(args.seed)
    shifts = {"model": [], "truth": []}
    for i in range(args.num_starts):
        sign = 1 if i % 2 == 0 else -1
        deltas = np.zeros((args.steps * chunk, 6), np.float32)
        deltas[:, 3] = sign * args.yaw
        model_run, truth_run = paired_rollout(model, truth, deltas, start_pose=random_start(truth.unwrapped.scene, rng),
                                              seed=args.seed + i, keep="last")
        raw = {name: [horizontal_shift(run.last_frames()[k], run.last_frames()[k + 1]) for k in range(args.steps)]
               for name, run in (("model", model_run), ("truth", truth_run))}
        direction = np.sign(np.median(raw["truth"]))  # the truth says which way the command moves the image
        for name in shifts:
            shifts[name].append([direction * v for v in raw[name]])
    model_shift, truth_shift = np.median(shifts["model"], axis=0), np.median(shifts["truth"], axis=0)
    print(f"{args.model} on {args.scene} layout {args.scene_seed}: image shift per step (px; + is the way the truth moves)")
    print("step   " + " ".join(f"{k + 1:6d}" for k in range(args.steps)))
    print("model  " + " ".join(f"{v:6.2f}" for v in model_shift))
    print("truth  " + " ".join(f"{v:6.2f}" for v in truth_shift))
    ratio = float(np.median(np.asarray(shifts["model"]) / np.asarray(shifts["truth"])))
    print(f"median ratio model/truth over all steps: {ratio:.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps({**vars(args), "model_shift_px": shifts["model"],
                                               "truth_shift_px": shifts["truth"], "median_ratio": ratio}, indent=2) + "\n")


if __name__ == "__main__":
    main()
