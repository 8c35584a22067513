"""The motion estimator's noise floor: its errors on ground-truth renders, per kind of motion.

    python -m minwm_env.eval.motion_floor --layouts 100 101 --num-starts 96      # about a minute

Every R_dist, T_dist or adherence error of a model sits on top of this floor: for each motion
(one chunk of 16 frames, 4 latent frames of the same delta, as the suites command them) the
camera is placed at random free starts in the ``room`` scene, the truth's frames are rendered
and :func:`~minwm_env.eval.motion.estimate_motion` is scored against the command. The
numbers in :mod:`minwm_env.eval.motion`'s docstring come from this script.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np
import torch

from .. import camera
from ..cli import arg, parse
from ..world.paths import random_start, rgb_frame_poses
from ..world.renderer import WorldRenderer
from ..world.scenes import make_scene
from .evaluator import commanded_motion, motion_errors
from .motion import estimate_motion

# per-latent-frame deltas [dx, dy, dz, yaw, pitch, roll]: 12° and/or 0.32 units over a step of 4
MOTIONS = {"yaw": (0, 0, 0, 3.0, 0, 0), "pitch": (0, 0, 0, 0, 3.0, 0), "strafe": (0.08, 0, 0, 0, 0, 0),
           "forward": (0, 0, 0.08, 0, 0, 0), "back": (0, 0, -0.08, 0, 0, 0), "forward_turn": (0, 0, 0.08, 3.0, 0, 0),
           "strafe_turn": (0.08, 0, 0, -3.0, 0, 0), "forward_slow": (0, 0, 0.04, 0, 0, 0)}


@dataclass
class Args:
    """Score the motion estimator on rendered ground-truth steps."""

    layouts: tuple[int, ...] = arg((100,), "layout seeds of the room scene")
    num_starts: int = arg(48, "random starts per motion and layout")
    motions: tuple[str, ...] = arg(tuple(MOTIONS), "motions to score", choices=list(MOTIONS))
    seed: int = arg(1234, "seed of the starts")


class _Uniform:
    def __init__(self, seed: int):
        self.rng = np.random.default_rng(seed)

    def uniform(self, low: float, high: float) -> float:
        return float(self.rng.uniform(low, high))


def step_frames(renderer: WorldRenderer, scene, delta, rng: _Uniform, chunk_frames: int = 4,
                temporal_factor: int = 4) -> tuple[np.ndarray, np.ndarray]:
    """One step of ``chunk_frames`` latent frames of ``delta`` from a random free start: its
    frames (1 + chunk_frames·temporal_factor, H, W, 3) and actions (chunk_frames, 6)."""
    deltas = torch.tensor(delta, dtype=torch.float64).expand(chunk_frames, 6)
    relative = torch.cat([torch.eye(4, dtype=torch.float64)[None], camera.compose_deltas(deltas)])
    for _ in range(100):
        start = random_start(scene, rng)
        if all(scene.is_free(p[0, 3], p[1, 3], 0.3) for p in start @ relative.numpy()):
            break
    poses = start @ rgb_frame_poses(relative, temporal_factor).numpy()
    return np.stack([renderer.render(p) for p in poses]), deltas.numpy()


def score(layout: int, motion: str, num_starts: int, seed: int) -> dict:
    """Rotation and translation direction errors (degrees) of the estimates, and the failures."""
    scene = make_scene("room", layout)
    renderer = WorldRenderer(scene, 64, 64)
    rng, rotation, direction, failures = _Uniform(seed), [], [], 0
    try:
        for _ in range(num_starts):
            frames, actions = step_frames(renderer, scene, MOTIONS[motion], rng)
            error, direction_error = motion_errors(estimate_motion(frames, renderer.intrinsics),
                                                   commanded_motion(actions))
            if error is None:
                failures += 1
                continue
            rotation.append(error)
            if direction_error is not None:
                direction.append(direction_error)
    finally:
        renderer.close()
    return {"rotation_deg": np.array(rotation), "direction_deg": np.array(direction), "failures": failures}


def main(argv=None) -> None:
    args = parse(Args, argv)
    for layout in args.layouts:
        for motion in args.motions:
            result = score(layout, motion, args.num_starts, args.seed)
            errors, directions = result["rotation_deg"], result["direction_deg"]
            line = (f"room/{layout} {motion:13s} rotation error median {np.median(errors):5.2f}° mean "
                    f"{np.mean(errors):5.2f}° max {errors.max():5.1f}° over 10°: {np.sum(errors > 10):2d} | "
                    f"failures {result['failures']:2d}/{args.num_starts}")
            if len(directions):
                line += f" | direction error median {np.median(directions):5.1f}° mean {np.mean(directions):5.1f}°"
            print(line, flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
