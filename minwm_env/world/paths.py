"""Plausible, seedable camera paths through a scene that never pass through walls or objects.

A path is a start pose in the world plus one delta per latent frame made of minWM's key
steps (0.08 units or 3°), so every path is also a minWM pose string. Kinds:

``walk`` (forward, turning away from obstacles), ``turn`` (rotate in place), ``look_around``
(pan left/right and tilt up/down, back to level), ``out_and_back`` (walk out, then back along
the same line to the exact start), ``zigzag`` (repeated direction changes), ``stand_still``,
and ``mixed`` (a random sequence of the others).
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import torch

from .. import camera
from ..pose_strings import KEY_DELTAS, format_pose_string
from .renderer import look_pose
from .scenes import Scene

PATH_KINDS = ("walk", "turn", "look_around", "out_and_back", "zigzag", "stand_still", "mixed")
_STEPS = {key: camera.delta_to_matrix(torch.tensor(value, dtype=torch.float64)).numpy()
          for key, value in KEY_DELTAS.items()}


@dataclass
class CameraPath:
    kind: str
    start_c2w: np.ndarray  # (4, 4) OpenCV camera-to-world in the scene's world frame
    deltas: torch.Tensor  # (N, 6) float64, one per latent frame after the first
    pose_string: str

    @property
    def num_latent_frames(self) -> int:
        return self.deltas.shape[0] + 1

    def relative_c2w(self) -> torch.Tensor:
        """(N + 1, 4, 4) poses relative to the start (pose 0 = identity)."""
        return camera.compose_deltas(self.deltas)

    def world_c2w(self) -> np.ndarray:
        return self.start_c2w @ self.relative_c2w().numpy()


class _Walker:
    """Appends key steps while the camera stays in free space."""

    def __init__(self, scene: Scene, start: np.ndarray, margin: float, max_pitch_deg: float = 30.0):
        self.scene, self.pose, self.margin = scene, start.copy(), margin
        self.keys: list[str] = []
        self.pitch = 0.0
        self.max_pitch = max_pitch_deg

    def _ok(self, pose: np.ndarray) -> bool:
        x, y, z = pose[:3, 3]
        return self.scene.is_free(x, y, self.margin) and 0.15 < z < self.scene.wall_height - 0.15

    def add(self, key: str, count: int, budget: int) -> int:
        """Take up to ``count`` steps of ``key`` (stopping before a collision); returns the number taken."""
        taken = 0
        pitch_step = KEY_DELTAS[key][4]
        limit = min(count, budget - len(self.keys))
        while taken < limit:
            if abs(self.pitch + pitch_step) > self.max_pitch + 1e-9:
                break
            pose = self.pose @ _STEPS[key]
            if not self._ok(pose):
                break
            self.pose, self.pitch = pose, self.pitch + pitch_step
            self.keys.append(key)
            taken += 1
        return taken

    def openness(self, yaw_steps: int, probe: float = 1.0) -> float:
        """Clearance a little way ahead after turning ``yaw_steps`` of 3° (negative: left)."""
        turn = camera.delta_to_matrix(torch.tensor([0, 0, 0, 3.0 * yaw_steps, 0, 0], dtype=torch.float64)).numpy()
        pose = self.pose @ turn
        ahead = pose[:3, 3] + probe * pose[:3, 2]
        return self.scene.clearance(ahead[0], ahead[1])


def random_start(scene: Scene, rng: random.Random, clearance: float = 0.7) -> np.ndarray:
    for _ in range(1000):
        x = rng.uniform(-scene.half_extent, scene.half_extent)
        y = rng.uniform(-scene.half_extent, scene.half_extent)
        if scene.clearance(x, y) >= clearance:
            return look_pose(x, y, scene.camera_height, rng.uniform(0, 360))
    raise RuntimeError(f"no free start position with clearance {clearance} in scene {scene.name}")


def _walk(w: _Walker, rng: random.Random, budget: int) -> None:
    while len(w.keys) < budget:
        if w.add("w", rng.randint(4, 16), budget) == 0 or rng.random() < 0.25:
            options = [s for s in range(-40, 41, 5) if s != 0]
            best = max(options, key=lambda s: w.openness(s) + rng.random() * 0.3)
            w.add("l" if best > 0 else "j", abs(best), budget)


def _turn(w: _Walker, rng: random.Random, budget: int) -> None:
    w.add(rng.choice("lj"), budget, budget)


def _look_around(w: _Walker, rng: random.Random, budget: int) -> None:
    while len(w.keys) < budget:
        pan = rng.randint(5, 20)
        first = rng.choice("lj")
        w.add(first, pan, budget)
        w.add("j" if first == "l" else "l", 2 * pan, budget)
        tilt = rng.randint(2, 8)
        up = rng.choice("ik")
        w.add(up, tilt, budget)
        w.add("k" if up == "i" else "i", tilt, budget)  # back to level
        if len(w.keys) < budget and w.add("stay", 0, budget) == 0 and rng.random() < 0.3:
            w.add("stay", rng.randint(1, 4), budget)


def _out_and_back(w: _Walker, rng: random.Random, budget: int) -> None:
    """Turn towards open space, walk out, walk back, turn back: the last pose is the first."""
    turn_key, turned = rng.choice("lj"), 0
    while w.openness(turned if turn_key == "l" else -turned) < 0.6 and turned < 60:
        turned += 10
    turned = min(turned, max(0, (budget - 2) // 4))
    w.add(turn_key, turned, budget)
    out_key, back_key = rng.choice([("w", "s"), ("a", "d"), ("d", "a")])
    taken = w.add(out_key, (budget - len(w.keys) - turned) // 2, budget)
    w.add(back_key, taken, budget)
    w.add("j" if turn_key == "l" else "l", turned, budget)
    w.add("stay", budget, budget)


def _zigzag(w: _Walker, rng: random.Random, budget: int) -> None:
    pairs = [("a", "d"), ("l", "j"), ("i", "k")]
    first, second = rng.choice(pairs)
    while len(w.keys) < budget:
        span = rng.randint(2, 6)
        moved = w.add(first, span, budget) + w.add(second, span, budget)
        if moved == 0:
            first, second = rng.choice(pairs[1:])
        if rng.random() < 0.3:
            w.add("w", rng.randint(1, 4), budget)


def _stand_still(w: _Walker, rng: random.Random, budget: int) -> None:
    w.add("stay", budget, budget)


_KINDS = {"walk": _walk, "turn": _turn, "look_around": _look_around, "out_and_back": _out_and_back,
          "zigzag": _zigzag, "stand_still": _stand_still}


def random_path(scene: Scene, num_latent_frames: int, kind: str | None = None, seed: int = 0,
                margin: float = 0.3) -> CameraPath:
    """A path of ``num_latent_frames`` poses (``num_latent_frames - 1`` deltas) of the given kind
    (random when None), reproducible from ``seed``."""
    if num_latent_frames < 1:
        raise ValueError(f"num_latent_frames must be >= 1, got {num_latent_frames}")
    rng = random.Random(f"path-{scene.name}-{scene.seed}-{seed}")
    kind = kind or rng.choice(PATH_KINDS)
    if kind not in PATH_KINDS:
        raise ValueError(f"unknown path kind {kind!r}; kinds: {list(PATH_KINDS)}")
    budget = num_latent_frames - 1
    start = random_start(scene, rng)
    walker = _Walker(scene, start, margin)
    if kind == "mixed":
        while len(walker.keys) < budget:
            part = rng.choice([k for k in _KINDS if k not in ("stand_still", "out_and_back")])
            _KINDS[part](walker, rng, min(budget, len(walker.keys) + rng.randint(8, 24)))
    else:
        _KINDS[kind](walker, rng, budget)
    if len(walker.keys) < budget:  # boxed in: wait
        walker.add("stay", budget, budget)
    deltas = torch.tensor([KEY_DELTAS[k] for k in walker.keys], dtype=torch.float64).reshape(-1, 6)
    pose_string = format_pose_string(deltas) if len(walker.keys) else ""
    return CameraPath(kind, start, deltas, pose_string)


def rgb_frame_poses(relative_c2w: torch.Tensor, temporal_factor: int = 4) -> torch.Tensor:
    """Per-latent-frame poses (N + 1, 4, 4) → per-RGB-frame poses (1 + factor·N, 4, 4).

    Between latent frames k−1 and k the camera moves by the fraction j/factor of that frame's
    delta (j = 1..factor); at j = factor it is exactly latent frame k's pose.
    """
    relative_c2w = torch.as_tensor(relative_c2w, dtype=torch.float64)
    deltas = camera.poses_to_deltas(relative_c2w)
    poses = [relative_c2w[0]]
    for k in range(deltas.shape[0]):
        for j in range(1, temporal_factor + 1):
            if j == temporal_factor:
                poses.append(relative_c2w[k + 1])
            else:
                poses.append(relative_c2w[k] @ camera.delta_to_matrix(deltas[k] * (j / temporal_factor)))
    return torch.stack(poses)


