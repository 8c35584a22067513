"""Rolling envs out along camera paths, a model and the ground truth side by side.

A "model" here is anything with the env API of ``minwm/World-v0``: the world-model env, the
ground-truth env itself (it must then score perfectly), or a wrapper of either. Both sides
start from the same ground-truth pose: the truth renders its start view there, and a world
model continues from that rendered image.

    truth = gym.make("minwm/GroundTruth-v0", scene="room", width=64, height=64)
    path = random_path(truth.unwrapped.scene, 1 + 4 * 8, "walk", seed=0)
    model_run, truth_run = paired_rollout(model_env, truth, path, seed=0)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import gymnasium as gym
import numpy as np

from ..envs.ground_truth import GroundTruthEnv
from ..envs.world_model import WorldModelEnv
from ..world.paths import CameraPath


@dataclass
class EnvLayout:
    """What both sides of a comparison must agree on."""

    height: int
    width: int
    chunk_frames: int  # latent frames (actions) per step
    frames_per_chunk: int  # RGB frames per step


def env_layout(env: gym.Env) -> EnvLayout:
    inner = env.unwrapped
    if isinstance(inner, GroundTruthEnv):
        return EnvLayout(inner.renderer.height, inner.renderer.width, inner.chunk_frames, inner.frames_per_chunk)
    if isinstance(inner, WorldModelEnv):
        world = inner._world
        if world.spec.dim != 6 or not world.generator.tracks_camera:
            raise ValueError(f"evaluation moves a camera: the model's actions must be camera deltas "
                             f"[dx, dy, dz, yaw, pitch, roll], got {list(world.spec.names)}")
        if inner.obs_mode == "latent":
            raise ValueError("evaluation compares decoded frames: make the world-model env with obs_mode 'frame' or "
                             "'chunk', not 'latent'")
        return EnvLayout(world.height, world.width, world.chunk_frames, world.frames_per_chunk)
    raise TypeError(f"cannot evaluate {type(inner).__name__}: expected minwm/World-v0 or minwm/GroundTruth-v0 "
                    "(or a wrapper of one)")


def ground_truth_like(env: gym.Env, scene: str = "room", scene_seed: int = 0) -> GroundTruthEnv:
    """A ground-truth env with the same frame size and chunking as ``env`` (without the
    registration's time limit: drift runs for hundreds of steps)."""
    layout = env_layout(env)
    return GroundTruthEnv(scene=scene, scene_seed=scene_seed, width=layout.width, height=layout.height,
                          chunk_frames=layout.chunk_frames,
                          temporal_factor=layout.frames_per_chunk // layout.chunk_frames, obs_mode="chunk")


def chunk_path(deltas, chunk_frames: int) -> np.ndarray:
    """(N, 6) per-latent-frame deltas → (K, chunk_frames, 6) float32 step actions; the last
    step is padded with 'stay' (zero) deltas."""
    deltas = np.asarray(deltas, dtype=np.float32).reshape(-1, 6)
    pad = (-len(deltas)) % chunk_frames
    return np.concatenate([deltas, np.zeros((pad, 6), np.float32)]).reshape(-1, chunk_frames, 6)


@dataclass
class Rollout:
    """One env's frames along a path. ``chunks`` holds every RGB frame of every step
    ``(K, frames_per_chunk, H, W, 3)``, or only each step's last frame ``(K, 1, H, W, 3)``
    when rolled out with ``keep="last"``."""

    start: np.ndarray  # (H, W, 3) the frame the env started from
    chunks: np.ndarray
    actions: np.ndarray  # (K, chunk_frames, 6)
    poses: np.ndarray  # (K, 4, 4) the env's reported c2w after each step, relative to the start
    latency_s: np.ndarray  # (K,)

    @property
    def num_chunks(self) -> int:
        return len(self.chunks)

    def last_frames(self) -> np.ndarray:
        """(1 + K, H, W, 3): the start frame and each step's last frame."""
        return np.concatenate([self.start[None], self.chunks[:, -1]])

    def all_frames(self) -> np.ndarray:
        """(1 + K·F, H, W, 3): the start frame and every frame after it, in order."""
        return np.concatenate([self.start[None], self.chunks.reshape(-1, *self.start.shape)])

    def step_frames(self, k: int) -> np.ndarray:
        """(1 + F, H, W, 3): step k's frames preceded by the frame before them (the motion of step k)."""
        before = self.start if k == 0 else self.chunks[k - 1, -1]
        return np.concatenate([before[None], self.chunks[k]])


def reset_at(env: gym.Env, start_pose: np.ndarray, start_image: np.ndarray, seed: int | None = None):
    """Reset ``env`` at a ground-truth start: the truth (and its wrappers) takes the pose, a world
    model takes the image rendered there (``start_image`` may be replaced, e.g. by an
    out-of-distribution image, to test recovery)."""
    if isinstance(env.unwrapped, GroundTruthEnv):
        return env.reset(seed=seed, options={"start_pose": start_pose})
    return env.reset(seed=seed, options={"image": start_image})


def rollout(env: gym.Env, actions: np.ndarray, start_pose: np.ndarray, start_image: np.ndarray, *,
            seed: int | None = None, keep: str = "all",
            before_step: Callable[[int, gym.Env], None] | None = None) -> Rollout:
    """Reset ``env`` at the start and take the (K, chunk_frames, 6) step actions.

    ``before_step(k, env)`` runs before step k (e.g. to perturb a model's cache).
    """
    if keep not in ("all", "last"):
        raise ValueError(f"keep must be 'all' or 'last', got {keep!r}")
    _, info = reset_at(env, start_pose, start_image, seed)
    start = np.asarray(info["frames"])[-1]
    chunks, poses, latency = [], [], []
    for k, action in enumerate(actions):
        if before_step is not None:
            before_step(k, env)
        _, _, _, _, info = env.step(action)
        if info.get("frames") is None:
            raise ValueError(f"{type(env.unwrapped).__name__} returned no frames (latent observations?)")
        frames = np.asarray(info["frames"])
        chunks.append(frames if keep == "all" else frames[-1:])
        poses.append(np.asarray(info["pose"], dtype=np.float64))
        latency.append(float(info["latency_s"]))
    return Rollout(start, np.stack(chunks), np.asarray(actions), np.stack(poses), np.asarray(latency))


def render_start(truth: gym.Env, start_pose: np.ndarray) -> np.ndarray:
    _, info = truth.reset(options={"start_pose": start_pose})
    return np.asarray(info["frames"])[-1]


def paired_rollout(model: gym.Env, truth: gym.Env, path: CameraPath | np.ndarray, *, start_pose=None,
                   seed: int | None = 0, keep: str = "all", start_image: np.ndarray | None = None,
                   before_step=None) -> tuple[Rollout, Rollout]:
    """The model and the truth along the same path, from the same start pose.

    ``path`` is a :class:`CameraPath` or (N, 6) per-latent-frame deltas with ``start_pose``.
    ``start_image`` replaces the rendered start view given to a world model (the truth
    always starts from its own rendering).
    """
    layout_model, layout_truth = env_layout(model), env_layout(truth)
    if layout_model != layout_truth:
        raise ValueError(f"the model and the truth must have the same frame size and chunking, got {layout_model} "
                         f"and {layout_truth}")
    if isinstance(path, CameraPath):
        deltas, start_pose = path.deltas.numpy(), path.start_c2w
    else:
        deltas = np.asarray(path)
        if start_pose is None:
            raise ValueError("give start_pose with raw deltas (or pass a CameraPath)")
    actions = chunk_path(deltas, layout_model.chunk_frames)
    rendered = render_start(truth, start_pose)
    truth_run = rollout(truth, actions, start_pose, rendered, keep=keep)
    model_run = rollout(model, actions, start_pose, rendered if start_image is None else start_image, seed=seed,
                        keep=keep, before_step=before_step)
    return model_run, truth_run


class IgnoreActions(gym.Wrapper):
    """A model that ignores its actions: the ground truth of a fixed action instead of the
    one given (by default standing still). Real rendered frames — the reference for what
    poor action adherence looks like."""

    def __init__(self, env: gym.Env, action=(0, 0, 0, 0, 0, 0)):
        super().__init__(env)
        action = np.asarray(action, dtype=np.float32)
        if not env.action_space.contains(action):
            raise ValueError(f"the fixed action must lie in the env's action space {env.action_space}, got {action}")
        self.fixed_action = action

    def step(self, action):
        return self.env.step(self.fixed_action)


__all__ = ["EnvLayout", "IgnoreActions", "Rollout", "chunk_path", "env_layout", "ground_truth_like",
           "paired_rollout", "render_start", "reset_at", "rollout"]
